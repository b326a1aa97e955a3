"""A real LAMMPS drives nnp models (``make test-lammps``; skipped where LAMMPS is not installed).

- energies, forces and pressure (all six components) through ``fix external`` equal nnp's
  own calculator: copper, orthogonal and triclinic cells, and a molecule in a large box;
- atoms that LAMMPS sorts every step and wraps across the boundary keep their forces;
- ``nnp md md.engine=lammps`` NVE follows the same trajectory as ``md.engine=ase``
  (both velocity Verlet, same start) and conserves energy as well;
- NPT moves the volume of a cell the way its pressure pushes it;
- ``nnp lammps`` runs a user's script end to end.
"""

from __future__ import annotations

import json

import ase.data
import ase.io
import numpy as np
import pytest
from ase import units
from conftest import REPO, nnp_cli
from omegaconf import OmegaConf

from nnp import NNPCalculator
from nnp.errors import NNPError

try:
    from nnp.engines.lammps import open_lammps

    open_lammps().close()
except NNPError as err:
    pytest.skip(f"LAMMPS not installed ({err}): make test-lammps", allow_module_level=True)

from engine_helpers import cu_cell, cu_model, organic_model, run_md  # noqa: E402

from nnp.engines.lammps import LammpsDynamics, element_numbers  # noqa: E402
from nnp.lammps import read_script, run_script  # noqa: E402

EV_A3_TO_BAR = 1.0 / units.bar  # LAMMPS metal pressure unit


def lammps_script(tmp_path, atoms, body: str, elements) -> str:
    """A units-metal script reading ``atoms`` from a data file (ASE writes LAMMPS's frame)."""
    data = tmp_path / "atoms.data"
    ase.io.write(data, atoms, format="lammps-data", specorder=elements, masses=True, units="metal")
    boundary = "p p p" if atoms.pbc.all() else "s s s"
    return (f"units metal\natom_style atomic\nboundary {boundary}\natom_modify map array\nread_data {data}\n"
            "fix nnp all external pf/callback 1 1\nfix_modify nnp energy yes virial yes\n"
            "thermo_style custom step pe press pxx pyy pzz pxy pxz pyz vol\n" + body)


def by_tag(lmp, name: str) -> np.ndarray:
    n = int(lmp.get_natoms())
    tags = np.asarray(lmp.numpy.extract_atom("id")[:n])
    return np.asarray(lmp.numpy.extract_atom(name)[:n])[np.argsort(tags)]


def run_in_lammps(tmp_path, atoms, model, body="run 0\n", elements=("Cu",)):
    elements = list(elements)
    script = tmp_path / "in.lmp"
    script.write_text(lammps_script(tmp_path, atoms, body, elements))
    head, tail, _ = read_script(script, "nnp")
    calc = NNPCalculator(model)
    return run_script(calc, head, tail, element_numbers(elements, model.species), log=None, screen=False)


def nnp_reference(model, lmp, elements):
    """nnp's own energy, forces and stress for LAMMPS's current atoms (tag order, LAMMPS frame)."""
    from ase import Atoms

    from nnp.engines.lammps import box_cell

    cell, pbc, _ = box_cell(lmp)
    types = by_tag(lmp, "type")
    numbers = np.asarray([-1] + [ase.data.atomic_numbers[e] for e in elements])[types]
    atoms = Atoms(numbers=numbers, positions=by_tag(lmp, "x"), cell=cell if pbc.all() else None, pbc=bool(pbc.all()))
    atoms.calc = NNPCalculator(model)
    stress = atoms.get_stress(voigt=False) if pbc.all() else None
    return atoms.get_potential_energy(), atoms.get_forces(), stress


@pytest.mark.parametrize("triclinic", [False, True], ids=["orthogonal", "triclinic"])
def test_copper_energy_forces_pressure_match_nnp(tmp_path, triclinic):
    model = cu_model()
    lmp, coupling = run_in_lammps(tmp_path, cu_cell(triclinic), model)
    try:
        energy, forces, stress = nnp_reference(model, lmp, ["Cu"])
        assert float(lmp.get_thermo("pe")) == pytest.approx(energy, rel=1e-12, abs=1e-9)
        f = by_tag(lmp, "f")
        assert np.abs(f - forces).max() < 1e-9
        assert np.abs(forces).max() > 0.3  # forces large enough that an error would show
        # no velocities: the pressure is the virial's, P_ab = -sigma_ab
        for name, (a, b) in zip(("pxx", "pyy", "pzz", "pxy", "pxz", "pyz"), ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))):
            assert float(lmp.get_thermo(name)) == pytest.approx(-stress[a, b] * EV_A3_TO_BAR, rel=1e-6, abs=1e-3), name  # LAMMPS's eV/Å^3 -> bar differs from ASE's by 1e-7
        if triclinic:
            assert abs(float(lmp.extract_box()[2])) > 0.1  # LAMMPS really has a tilted box
    finally:
        lmp.close()


def test_molecule_in_a_large_box_matches_nnp(tmp_path):
    model = organic_model()
    atoms = ase.io.read(REPO / "datasets/aspirin.xyz")
    atoms.center(vacuum=15.0)
    atoms.pbc = True  # a large periodic box: no image within the cutoff, the molecule's own energy
    lmp, _ = run_in_lammps(tmp_path, atoms, model, elements=("H", "C", "O"))
    try:
        free = atoms.copy()
        free.pbc = False
        free.calc = NNPCalculator(model)
        assert float(lmp.get_thermo("pe")) == pytest.approx(free.get_potential_energy(), rel=1e-12)
        energy, forces, _ = nnp_reference(model, lmp, ["H", "C", "O"])
        assert np.abs(by_tag(lmp, "f") - forces).max() < 1e-9
    finally:
        lmp.close()


def test_sorted_and_wrapped_atoms_keep_their_forces(tmp_path):
    """LAMMPS sorts atoms every step and wraps them into the box; the callback matches them by tag."""
    model = cu_model()
    atoms = cu_cell()
    atoms.positions += atoms.cell.array.sum(0) * 0.45  # most atoms start outside the box
    body = ("atom_modify sort 1 1.0\nvelocity all create 3000 7 dist gaussian\n"
            "fix int all nve\ntimestep 0.002\nrun 40\n")
    lmp, coupling = run_in_lammps(tmp_path, atoms, model, body)
    try:
        image = by_tag(lmp, "image")
        assert (image != image[0]).any() or image[0] != (512 | 512 << 10 | 512 << 20)  # some atoms crossed
        _, forces, _ = nnp_reference(model, lmp, ["Cu"])
        assert np.abs(by_tag(lmp, "f") - forces).max() < 1e-9
        assert coupling.evaluations == 41
    finally:
        lmp.close()


@pytest.mark.parametrize("molecule", [False, True], ids=["copper", "aspirin"])
def test_lammps_nve_follows_the_ase_trajectory(tmp_path, molecule):
    if molecule:
        model, atoms = organic_model(), ase.io.read(REPO / "datasets/aspirin.xyz")
        extra = ("md.timestep_fs=0.25", "md.temperature_K=300")
    else:
        model, atoms = cu_model(), cu_cell(triclinic=True)
        extra = ()
    a_ase, s_ase, log_ase = run_md(tmp_path, atoms, model, "ase", *extra)
    a_lmp, s_lmp, log_lmp = run_md(tmp_path, atoms, model, "lammps", "md.engine=lammps", *extra)
    assert s_lmp["engine"] == "lammps" and s_lmp["steps_done"] == 60
    # same integrator, same start: the same trajectory (LAMMPS's and ASE's unit constants differ ~1e-7)
    assert np.abs(a_lmp.positions - a_ase.positions).max() < 1e-5
    np.testing.assert_allclose(log_lmp[:, 1:4], log_ase[:, 1:4], rtol=0, atol=1e-5 * len(atoms))
    frames = ase.io.read(tmp_path / "lammps.extxyz", ":")
    assert len(frames) == 7 and np.allclose(frames[0].cell.array, atoms.cell.array)
    etot = log_lmp[:, 3]
    assert np.ptp(etot) < 2 * np.ptp(log_ase[:, 3]) + 1e-6 * len(atoms)


@pytest.mark.parametrize("scale, barostat, thermostat", [
    (0.97, "mtk", "nose_hoover"), (1.03, "mtk", "nose_hoover"),  # fix npt
    (0.97, "mtk", "langevin"),  # fix nph + fix langevin
    (1.03, "berendsen", "berendsen"),  # fix press/berendsen + fix temp/berendsen
], ids=["compressed-npt", "expanded-npt", "compressed-nph-langevin", "expanded-berendsen"])
def test_lammps_npt_moves_volume_with_pressure(tmp_path, scale, barostat, thermostat):
    model = cu_model()
    atoms = cu_cell(scale=scale)
    atoms.calc = NNPCalculator(model)
    pressure_bar = -np.trace(atoms.get_stress(voigt=False)) / 3 * EV_A3_TO_BAR
    ref = cu_cell(scale=1.0)  # target: the pressure of the unscaled cell
    ref.calc = NNPCalculator(model)
    target = -np.trace(ref.get_stress(voigt=False)) / 3 * EV_A3_TO_BAR
    assert abs(pressure_bar - target) > 1000  # the cell is far from the target pressure
    out, summary, _ = run_md(tmp_path, atoms, model, "npt", "md.engine=lammps", "md.ensemble=npt",
                             f"md.pressure_bar={target}", f"md.thermostat={thermostat}", f"md.barostat={barostat}",
                             "md.temperature_K=50",
                             "md.steps=100")
    v0, v1 = atoms.get_volume(), out.get_volume()
    assert np.sign(v1 - v0) == np.sign(pressure_bar - target), (v0, v1, pressure_bar, target)


def test_nnp_lammps_runs_a_users_script(tmp_path, monkeypatch, capsys):
    model = cu_model()
    ckpt = tmp_path / "cu.pt"
    model.save(ckpt)
    script = tmp_path / "in.lmp"
    script.write_text(lammps_script(tmp_path, cu_cell(), "velocity all create 300 1\nfix int all nvt temp 300 300 0.1\n"
                                    "timestep 0.002\nthermo 5\nrun 10\nprint \"final_pe $(pe)\"\n", ["Cu"]))
    code, text = nnp_cli(monkeypatch, capsys, "lammps", f"ckpt={ckpt}", f"input={script}", "elements=[Cu]",
                         f"log={tmp_path / 'log.lammps'}")
    assert code == 0, text
    assert "11 model evaluations" in text
    assert "final_pe" in (tmp_path / "log.lammps").read_text()


def test_engine_summary_is_json(tmp_path):
    model = cu_model()
    _, summary, _ = run_md(tmp_path, cu_cell(), model, "s", "md.engine=lammps", "md.steps=3")
    assert json.loads((tmp_path / "s.json").read_text())["engine"] == "lammps"
    assert summary["steps_done"] == 3


def test_lammps_dynamics_refuses_slabs():
    atoms = cu_cell()
    atoms.pbc = [True, True, False]
    atoms.calc = NNPCalculator(cu_model())
    with pytest.raises(NNPError, match="some directions only"):
        LammpsDynamics(atoms, OmegaConf.create({"ensemble": "nve", "timestep_fs": 1.0}))
