"""A real OpenMM runs nnp models through OpenMM-Torch (``make test-openmm``; skipped without OpenMM).

- the exported module (``nnp export format=openmm``) inside an OpenMM ``TorchForce`` gives nnp's
  energy and forces (Reference platform to 1e-9, CPU platform to float32 accumulation), for a
  triclinic copper cell and a molecule; a module written by the shipping torch (NNP_OPENMM_EXPORTED,
  made by ``make test-openmm`` with the main environment) loads and agrees too;
- ``nnp md md.engine=openmm`` NVE follows ``md.engine=ase``'s trajectory and conserves energy, NVT Langevin runs,
  NPT (Monte Carlo barostat) moves a compressed and an expanded cell's volume the way its pressure pushes,
  and keys OpenMM cannot honour are one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ase.io
import numpy as np
import pytest
from conftest import REPO

openmm = pytest.importorskip("openmm")
openmmtorch = pytest.importorskip("openmmtorch")

from engine_helpers import cu_cell, cu_model, organic_model, run_md  # noqa: E402
from openmm import unit as u  # noqa: E402

from nnp import NNPCalculator  # noqa: E402
from nnp.engines.openmm import EV_TO_KJ_MOL, export_openmm, reduced_box  # noqa: E402
from nnp.errors import NNPError  # noqa: E402


def openmm_energy_forces(path: Path, atoms, platform: str):
    """Energy (eV) and forces (eV/Å, ASE frame) of ``atoms`` from OpenMM with the module at ``path``."""
    periodic = bool(atoms.pbc.all())
    system = openmm.System()
    for m in atoms.get_masses():
        system.addParticle(float(m))
    force = openmmtorch.TorchForce(str(path))
    force.setUsesPeriodicBoundaryConditions(periodic)
    system.addForce(force)
    rot = np.eye(3)
    if periodic:
        box, rot = reduced_box(atoms.cell.array)
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*(v / 10.0)) for v in box])
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName(platform))
    context.setPositions((atoms.positions @ rot) / 10.0 * u.nanometer)
    state = context.getState(getEnergy=True, getForces=True)
    energy = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) / EV_TO_KJ_MOL
    forces = np.asarray(state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer)) / EV_TO_KJ_MOL / 10.0
    return energy, forces @ rot.T


@pytest.mark.parametrize("system", ["copper-triclinic", "aspirin"])
@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_openmm_energy_forces_equal_nnp(tmp_path, system, platform):
    if system == "aspirin":
        model, atoms = organic_model(energy_scale=0.02), ase.io.read(REPO / "datasets/aspirin.xyz")
    else:
        model, atoms = cu_model(), cu_cell(triclinic=True)
    path = tmp_path / "model_openmm.pt"
    export_openmm(model, atoms, path)
    energy, forces = openmm_energy_forces(path, atoms, platform)
    atoms.calc = NNPCalculator(model)
    e0, f0 = atoms.get_potential_energy(), atoms.get_forces()
    # Reference: double precision throughout; CPU: forces summed in float32
    rtol = 1e-9 if platform == "Reference" else 1e-6
    assert energy == pytest.approx(e0, rel=rtol)
    assert np.abs(forces - f0).max() < (1e-9 if platform == "Reference" else 1e-5) * max(1.0, np.abs(f0).max())


def test_module_written_by_the_shipping_torch_runs_in_openmm():
    folder = os.environ.get("NNP_OPENMM_EXPORTED")
    if not folder:
        pytest.skip("NNP_OPENMM_EXPORTED not set (make test-openmm exports with the main environment's torch)")
    folder = Path(folder)
    atoms = ase.io.read(folder / "system.extxyz")
    expected = json.loads((folder / "expected.json").read_text())
    energy, forces = openmm_energy_forces(folder / "model_openmm.pt", atoms, "Reference")
    assert energy == pytest.approx(expected["energy"], rel=1e-9)
    assert np.abs(forces - np.array(expected["forces"])).max() < 1e-8


def test_openmm_nve_conserves_energy_like_ase(tmp_path):
    model, atoms = cu_model(), cu_cell(triclinic=True)
    extra = ("md.timestep_fs=1.0", "md.steps=100", "md.temperature_K=600")
    _, s_ase, log_ase = run_md(tmp_path, atoms, model, "ase", *extra)
    _, s_omm, log_omm = run_md(tmp_path, atoms, model, "openmm", "md.engine=openmm", *extra)
    assert s_omm["engine"] == "openmm" and s_omm["steps_done"] == 100
    # the same velocity Verlet trajectory (OpenMM's leapfrog velocities shifted onto the step)
    np.testing.assert_allclose(log_omm[:, 1:4], log_ase[:, 1:4], rtol=0, atol=1e-5 * len(atoms))
    assert abs(s_omm["energy_drift_eV_per_atom_per_ps"]) < 1e-3


def test_openmm_nvt_langevin_and_refused_keys(tmp_path):
    model, atoms = cu_model(), cu_cell(triclinic=True)
    out, summary, _ = run_md(tmp_path, atoms, model, "nvt", "md.engine=openmm", "md.ensemble=nvt", "md.steps=20",
                             "md.timestep_fs=1.0")
    assert summary["steps_done"] == 20 and np.isfinite(out.get_potential_energy())
    assert np.allclose(out.cell.array, atoms.cell.array)  # the ASE frame is restored
    for keys, needle in ((("md.ensemble=npt", "md.barostat=mtk"), "OpenMM's NPT is Monte Carlo"),
                         (("md.ensemble=nvt", "md.thermostat=berendsen"), "md.thermostat=berendsen is not available in openmm")):
        with pytest.raises(NNPError, match=needle):
            run_md(tmp_path, atoms, model, "refused", "md.engine=openmm", "overwrite=true", *keys)



@pytest.mark.parametrize("target_bar", [1.0, 30000.0])
def test_openmm_npt_moves_the_volume_the_way_the_pressure_pushes(tmp_path, target_bar):
    """md.barostat=montecarlo (OpenMM's MonteCarloBarostat): a cell whose pressure (the model's
    virial plus the kinetic term at the starting temperature) is above the target grows, one
    below it shrinks. A weakly interacting model (energy_scale 0.5) keeps the pressure near the
    kinetic ~7 kbar at 600 K, between the two targets, and the atoms apart without a trained repulsion."""
    from ase import units

    from nnp.potential import Potential

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = Potential.build({"name": "schnet", "n_features": 16, "n_interactions": 2, "n_rbf": 12, "cutoff": 4.5},
                            [29], atomref=[-3.5], energy_scale=0.5).double()
    atoms = cu_cell()
    atoms.calc = NNPCalculator(model)
    temperature = 600.0
    pressure = -np.trace(atoms.get_stress(voigt=False)) / 3 + len(atoms) * units.kB * temperature / atoms.get_volume()
    push = pressure / units.bar - target_bar
    assert abs(push) > 3000.0  # far from the target: the direction is not noise
    out, summary, _ = run_md(tmp_path, atoms, model, f"npt{int(target_bar)}", "md.engine=openmm", "md.ensemble=npt",
                             "md.barostat=montecarlo", f"md.pressure_bar={target_bar}", "md.steps=300",
                             f"md.temperature_K={temperature}", "md.min_distance=0.1")
    assert summary["engine"] == "openmm" and summary["steps_done"] == 300
    change = out.get_volume() / atoms.get_volume() - 1.0
    assert np.sign(change) == np.sign(push) and abs(change) > 1e-3, (pressure / units.bar, change)
