"""Simulations people run: NPT, relaxations, restartable MD, stress training, float64 energy bookkeeping.

- NPT (MTK and Berendsen barostats) grows a compressed copper cell and shrinks an expanded one
  (ASE's EMT as the potential: known equilibrium lattice constant 3.59 Å);
- a run cut by ``md.max_time`` (exit 75) and continued with ``md.restart=true`` gives the same
  log and trajectory as an uninterrupted run (NVE, Langevin with its random state, Nose-Hoover);
- ``nnp relax`` lowers the energy and reaches fmax on a molecule and on a strained cell, and
  reports a structure that does not converge (exit 3, everything written);
- ``loss.stress_weight`` trains on periodic stress labels (tests/data/cu-emt-tiny.extxyz, EMT)
  and ``evaluate`` reports stress errors;
- energies are summed in float64: the same weights in float32 and float64 on a 10^4-atom cell
  give totals within the network's own float32 rounding.
"""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from conftest import REPO, error_line, nnp_cli
from test_md_safety import aspirin, md_cfg, read_csv, small_model

from nnp import keys
from nnp.data.ase_files import AseDataset
from nnp.data.collate import atoms_to_sample, collate
from nnp.errors import EXIT_RESUMABLE, EXIT_SAFETY_STOP, NNPError
from nnp.md import simulate
from nnp.potential import Potential

CU_TINY = REPO / "tests/data/cu-emt-tiny.extxyz"


# ----------------------------------------------------------------------------- NPT
@pytest.mark.parametrize("barostat,steps", [("mtk", 30), ("berendsen", 10)])
def test_npt_grows_compressed_and_shrinks_expanded_cells(tmp_path, barostat, steps):
    """EMT copper (a0 = 3.59 Å) at 1 bar, 32 atoms: a cell at a = 3.45 Å expands, one at 3.75 Å
    contracts (measured, MTK after 30 steps: +5% and -5%; Berendsen after 10: +12% and -11%)."""
    for a, grows in ((3.45, True), (3.75, False)):
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(2)
        atoms.calc = EMT()
        v0 = atoms.get_volume()
        cfg = md_cfg(tmp_path, "md.ensemble=npt", f"md.barostat={barostat}", f"md.steps={steps}", "md.timestep_fs=2",
                     "md.barostat_time_fs=100", "md.compressibility_per_bar=1e-5", "md.temperature_K=100",
                     "md.min_distance=null", "md.write_interval=10", "md.log_interval=5", "overwrite=true")
        summary = simulate(atoms, cfg)
        v = summary["final_volume_A3"]
        assert (v > 1.02 * v0) if grows else (v < 0.98 * v0), (a, v0, v)
        rows = read_csv(tmp_path / "traj.csv")
        assert "volume_A3" in rows[0] and abs(float(rows[-1]["volume_A3"]) - v) < 1e-9
        assert (tmp_path / "traj.png").stat().st_size > 1000


def test_npt_refuses_molecules_and_a_foreign_thermostat(tmp_path):
    with pytest.raises(NNPError, match="periodic"):
        simulate(aspirin(), md_cfg(tmp_path, "md.ensemble=npt"))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.calc = EMT()
    with pytest.raises(NNPError, match="md.thermostat=berendsen with md.barostat=mtk"):
        simulate(atoms, md_cfg(tmp_path, "md.ensemble=npt", "md.thermostat=berendsen", "overwrite=true"))


# ----------------------------------------------------------------------------- restart
@pytest.mark.parametrize("ensemble,thermostat", [("nve", "langevin"), ("nvt", "langevin"), ("nvt", "nose_hoover")])
def test_cut_and_restarted_run_equals_uninterrupted_run(tmp_path, ensemble, thermostat):
    """md.max_time cuts after the first step (exit 75, restart file written); md.restart=true continues
    to md.steps: the same log rows and frames as one uninterrupted run, to float tolerance."""
    settings = ["md.steps=12", "md.write_interval=4", "md.log_interval=1", f"md.ensemble={ensemble}",
                f"md.thermostat={thermostat}", "md.restart=true"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    full.mkdir(), cut.mkdir()
    simulate(aspirin(), md_cfg(full, *settings))
    with pytest.raises(NNPError) as stop:
        simulate(aspirin(), md_cfg(cut, *settings, "md.max_time=1e-9"))
    assert stop.value.exit_code == EXIT_RESUMABLE and "md.restart=true" in str(stop.value)
    assert (cut / "traj.extxyz.restart.npz").is_file()
    first = json.loads((cut / "traj.json").read_text())
    assert 1 <= first["steps_done"] < 12
    summary = simulate(aspirin(), md_cfg(cut, *settings))
    assert summary["restarted_from_step"] == first["steps_done"] and summary["steps_done"] == 12
    a = np.loadtxt(full / "traj.csv", delimiter=",", skiprows=1)
    b = np.loadtxt(cut / "traj.csv", delimiter=",", skiprows=1)
    assert a.shape == b.shape == (13, 5)
    np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-9)
    fa, fb = ase.io.read(full / "traj.extxyz", ":"), ase.io.read(cut / "traj.extxyz", ":")
    assert [f.info["step"] for f in fb] == [0, 4, 8, 12] == [f.info["step"] for f in fa]
    for x, y in zip(fa, fb):
        np.testing.assert_allclose(y.positions, x.positions, atol=1e-10)
        np.testing.assert_allclose(y.get_momenta(), x.get_momenta(), atol=1e-10)
    assert (cut / "traj.png").is_file()


def test_restart_with_other_settings_is_refused(tmp_path):
    simulate(aspirin(), md_cfg(tmp_path, "md.steps=2"))
    with pytest.raises(NNPError, match="md.timestep_fs"):
        simulate(aspirin(), md_cfg(tmp_path, "md.steps=4", "md.restart=true", "md.timestep_fs=1.0"))


# ----------------------------------------------------------------------------- relax
def test_relax_cli_lowers_energy_and_reaches_fmax_then_reports_non_convergence(tmp_path, monkeypatch, capsys):
    model = tmp_path / "model.pt"
    small_model(energy_scale=1.0).save(model)
    start = ase.io.read(REPO / "datasets/aspirin.xyz")
    start.rattle(0.05, seed=1)
    inp = tmp_path / "start.extxyz"
    ase.io.write(inp, [start, start], format="extxyz")
    out = tmp_path / "relaxed.extxyz"
    code, text = nnp_cli(monkeypatch, capsys, "relax", f"ckpt={model}", f"input={inp}", f"output={out}",
                         "optimizer=bfgs", "fmax=0.05", "dtype=float64")
    assert code == 0, text
    relaxed = ase.io.read(out, ":")
    summary = json.loads(out.with_suffix(".json").read_text())
    assert len(relaxed) == 2 and summary["not_converged"] == []
    for atoms, r in zip(relaxed, summary["structures"]):
        assert atoms.info["relax_converged"] and r["energy_eV"] < r["energy_start_eV"] - 1e-3
        assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.05
    code, text = nnp_cli(monkeypatch, capsys, "relax", f"ckpt={model}", f"input={inp}", f"output={out}",
                         "optimizer=fire", "max_steps=2", "overwrite=true")
    assert code == EXIT_SAFETY_STOP
    assert "2 of 2 structures did not reach fmax" in error_line(text)
    assert [a.info["relax_converged"] for a in ase.io.read(out, ":")] == [False, False]


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_relax_strained_cell_reaches_fmax_and_equilibrium_lattice(optimizer):
    from nnp.relax import relax_one

    atoms = bulk("Cu", "fcc", a=3.75, cubic=True)
    atoms.rattle(0.03, seed=3)
    atoms.calc = EMT()
    r = relax_one(atoms, optimizer, fmax=0.005, max_steps=300, cell=True)
    assert r["converged"] and r["fmax_eV_A"] < 0.005 and r["energy_eV"] < r["energy_start_eV"] - 0.1
    assert np.abs(atoms.get_stress()).max() < 0.005 / atoms.get_volume() * len(atoms) * 2
    np.testing.assert_allclose(atoms.cell.lengths(), 3.59, atol=0.01)


# ----------------------------------------------------------------------------- stress labels
def test_stress_labels_train_and_are_reported():
    from nnp.evaluate import predict_dataset
    from nnp.training.loss import EnergyForceLoss

    ds = AseDataset(str(CU_TINY))
    assert all(keys.STRESS in ds[i] for i in range(len(ds)))
    mol = atoms_to_sample(ase.io.read(REPO / "datasets/aspirin.xyz"))
    mixed = collate([ds[0], {**mol, keys.ENERGY: 0.0}])
    assert torch.isfinite(mixed[keys.STRESS][0]).all() and torch.isnan(mixed[keys.STRESS][1]).all()

    torch.manual_seed(0)
    pot = Potential.build({"name": "schnet", "n_features": 16, "n_interactions": 1, "n_rbf": 8, "cutoff": 3.2},
                          [29], atomref=[0.0], energy_scale=0.1)
    batch = collate([ds[i] for i in range(8)])
    loss_fn = EnergyForceLoss(energy_weight=0.0, forces_weight=0.0, stress_weight=100.0)
    opt = torch.optim.Adam(pot.parameters(), lr=3e-2)
    maes = []
    for _ in range(20):
        pred = pot({k: (v.float() if v.is_floating_point() and k != keys.ENERGY else v) for k, v in batch.items()},
                   compute_stress=True, create_graph=True)
        loss, metrics = loss_fn(pred, batch)
        maes.append(float(metrics["stress_mae"]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert min(maes[-5:]) < 0.5 * maes[0], maes  # measured: 0.017 -> 0.003-0.008 eV/Å^3
    report = predict_dataset(pot, ds, np.arange(8), progress=False)["metrics"]
    pred = pot({k: (v.float() if v.is_floating_point() and k != keys.ENERGY else v) for k, v in batch.items()}, compute_stress=True)
    expected = float((pred[keys.STRESS].double() - batch[keys.STRESS]).abs().mean())
    assert report["stress_mae"] == pytest.approx(expected, rel=1e-5)
    assert report["stress_mae_GPa"] == pytest.approx(expected * 160.21766, rel=1e-5)


# ----------------------------------------------------------------------------- float64 bookkeeping
def test_float32_network_totals_on_ten_thousand_atoms_match_float64():
    """A 10^4-atom copper cell with a realistic reference energy (-1640.123456789 eV/atom, total
    -1.6e7 eV, where one float32 ulp is 2 eV): float32 and float64 runs of the same weights differ
    only by the network's own float32 rounding, ~eps32 x sum |network atomic energy|."""
    torch.manual_seed(1)
    cfg = {"name": "schnet", "n_features": 8, "n_interactions": 1, "n_rbf": 8, "cutoff": 3.0}
    pot64 = Potential.build(cfg, [29], atomref=[-1640.123456789], energy_scale=0.3).double()
    pot32 = Potential.build(cfg, [29], atomref=[-1640.123456789], energy_scale=0.3)
    pot32.load_state_dict(pot64.state_dict())
    pot32 = pot32.float()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((14, 14, 13))
    atoms.rattle(0.05, seed=0)
    assert len(atoms) > 10_000
    batch = collate([atoms_to_sample(atoms)])
    from nnp.inference import run_batch

    e64 = run_batch(pot64, batch, forces=False)
    e32 = run_batch(pot32, batch, forces=False)
    assert e32[keys.ENERGY].dtype == torch.float64
    network = (e64[keys.ATOMIC_ENERGY] + 1640.123456789).abs().sum()
    bound = 8 * float(np.finfo(np.float32).eps) * float(network)
    diff = abs(float(e32[keys.ENERGY][0]) - float(e64[keys.ENERGY][0]))
    assert diff < bound, (diff, bound)
    assert bound < 0.05  # what float32 sums of the reference energies alone would exceed (~1 eV)


def test_float32_nve_log_of_a_large_cell_resolves_below_float32_rounding_and_repeats(tmp_path):
    """A float32 model on 256 copper atoms (total -4.2e5 eV, where a float32 ulp is 0.03 eV): the
    logged total energy moves smoothly (spread about its fit far below one float32 ulp of the total,
    every row distinct), and a second run gives the same log, so its drift is reproducible."""
    torch.manual_seed(2)
    cfg = {"name": "schnet", "n_features": 8, "n_interactions": 1, "n_rbf": 8, "cutoff": 3.0}
    pot = Potential.build(cfg, [29], atomref=[-1640.123456789], energy_scale=0.3)
    logs = []
    for k in range(2):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(4)
        atoms.rattle(0.02, seed=0)
        from nnp import NNPCalculator

        atoms.calc = NNPCalculator(pot)
        run_dir = tmp_path / str(k)
        run_dir.mkdir()
        simulate(atoms, md_cfg(run_dir, "md.steps=10", "md.log_interval=1", "md.write_interval=10", "md.timestep_fs=1"))
        logs.append(np.loadtxt(run_dir / "traj.csv", delimiter=",", skiprows=1))
    a, b = logs
    np.testing.assert_array_equal(a, b)
    etot = a[:, 3]
    ulp = abs(float(np.spacing(np.float32(etot[0]))))
    assert ulp > 0.02
    residual = etot - np.polyval(np.polyfit(a[:, 0], etot, 1), a[:, 0])
    assert np.abs(residual).max() < 0.1 * ulp, (residual, ulp)
    assert len(np.unique(a[:, 1])) == len(a)  # potential energies: no float32 quantization
