"""Unit conversion, in one place.

Inside nnp everything is eV and Å (as in ASE). Files declare their units in
the data config (``data.units.energy`` / ``data.units.length``); readers call
:func:`energy_factor` / :func:`length_factor` once, at load time.
"""

from __future__ import annotations

from ase import units as _ase_units

from nnp.errors import NNPError

#: eV per unit of energy
ENERGY_UNITS: dict[str, float] = {
    "ev": 1.0,
    "mev": 1e-3,
    "hartree": _ase_units.Hartree,
    "ha": _ase_units.Hartree,
    "kcal/mol": _ase_units.kcal / _ase_units.mol,
    "kj/mol": _ase_units.kJ / _ase_units.mol,
    "ry": _ase_units.Rydberg,
}

#: Å per unit of length
LENGTH_UNITS: dict[str, float] = {
    "angstrom": 1.0,
    "a": 1.0,
    "bohr": _ase_units.Bohr,
    "nm": 10.0,
}

EV_TO_KCAL_MOL: float = 1.0 / ENERGY_UNITS["kcal/mol"]
#: GPa per eV/Å^3 (stress), about 160.2
EV_A3_TO_GPA: float = 1.0 / _ase_units.GPa


def energy_factor(unit: str) -> float:
    """Multiply a value in ``unit`` by this to get eV."""
    try:
        return ENERGY_UNITS[unit.strip().lower()]
    except KeyError:
        raise NNPError(
            f"unknown energy unit {unit!r}; choose one of {sorted(ENERGY_UNITS)}"
        ) from None


def length_factor(unit: str) -> float:
    """Multiply a value in ``unit`` by this to get Å."""
    try:
        return LENGTH_UNITS[unit.strip().lower()]
    except KeyError:
        raise NNPError(
            f"unknown length unit {unit!r}; choose one of {sorted(LENGTH_UNITS)}"
        ) from None

#: Coulomb's constant e^2 / (4 pi eps0) in eV Å (energies of point charges in e at distances in Å)
COULOMB_CONSTANT: float = _ase_units.Hartree * _ase_units.Bohr

#: LAMMPS unit styles nnp couples to (``nnp lammps``, ``nnp md md.engine=lammps``):
#: style -> (energy unit, length unit), names of ENERGY_UNITS / LENGTH_UNITS. Time and
#: mass are LAMMPS's own business (the script's timestep); other styles are refused.
LAMMPS_UNITS: dict[str, tuple[str, str]] = {
    "metal": ("ev", "angstrom"),
    "real": ("kcal/mol", "angstrom"),
    "electron": ("hartree", "bohr"),
}
