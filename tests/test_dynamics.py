"""NVE dynamics through the ASE calculator conserves total energy; the calculator API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.io import read
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from conftest import REPO

from nnp import NNPCalculator, Potential
from nnp.md import energy_drift


def small_ani(seed: int = 0) -> Potential:
    torch.manual_seed(seed)
    cfg = {"name": "ani", "hidden": [32, 32], "hidden_per_element": None}
    return Potential.build(cfg, [1, 6, 7, 8], atomref=[-13.6, -1029.0, -1485.0, -2042.0], energy_scale=0.1)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nve_conserves_energy(dtype):
    atoms = read(REPO / "datasets/aspirin.xyz")
    atoms.calc = NNPCalculator(small_ani(), dtype=dtype)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    etot, times = [], []

    def record():
        etot.append(atoms.get_total_energy())
        times.append(dyn.nsteps * 0.25e-3)

    dyn.attach(record, interval=5)
    dyn.run(400)
    etot = np.array(etot)
    n = len(atoms)
    fluct = np.abs(etot - etot[0]).max() / n
    drift = abs(energy_drift(np.array(times), etot, n))
    ekin_scale = 1.5 * units.kB * 300  # eV/atom
    tol = 1e-4 if dtype == "float64" else 5e-4
    assert fluct < tol * ekin_scale / 0.0388, (fluct, drift)
    assert drift < 1e-3, drift


def test_calculator_matches_potential_and_per_atom_energies():
    atoms = read(REPO / "datasets/aspirin.xyz")
    pot = small_ani()
    atoms.calc = NNPCalculator(pot, dtype="float64")
    e = atoms.get_potential_energy()
    assert e == pytest.approx(atoms.get_potential_energies().sum(), rel=1e-10)
    # a rigid translation leaves the calculator's energy unchanged and forces sum to zero
    f = atoms.get_forces()
    np.testing.assert_allclose(f.sum(0), 0.0, atol=1e-8)
    atoms.positions += 3.0
    assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-8)


def test_save_load_round_trip_through_calculator(tmp_path):
    pot = small_ani(3)
    path = tmp_path / "model.pt"
    pot.save(path, {"note": "test"})
    payload = torch.load(path, weights_only=True)
    assert payload["metadata"]["note"] == "test"
    a = read(REPO / "datasets/aspirin.xyz")
    b = a.copy()
    a.calc = NNPCalculator(pot)
    b.calc = NNPCalculator(str(path))
    assert a.get_potential_energy() == b.get_potential_energy()
    np.testing.assert_array_equal(a.get_forces(), b.get_forces())
