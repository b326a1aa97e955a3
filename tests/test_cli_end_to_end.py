"""The four subcommands end to end through the real CLI, on a tiny shipped-data subset."""

from __future__ import annotations

import csv
import json

import ase.io
import numpy as np
import pytest
import torch
from conftest import REPO, finite, nnp_cli, run_nnp

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cli")]


def test_help():
    res = run_nnp("--help")
    assert res.returncode == 0
    for cmd in ("train", "evaluate", "predict", "md"):
        assert cmd in res.stdout


@pytest.mark.parametrize("cmd", ["train", "evaluate", "predict", "md"])
def test_subcommand_help(cmd):
    res = run_nnp(cmd, "--help")
    assert res.returncode == 0, res.stderr
    assert "Powered by Hydra" in res.stdout or "== Config ==" in res.stdout


def test_train_writes_run_directory(trained_run):
    for name in ("model.pt", "split.npz", "config.yaml", "test_report.json", "test_report.png",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt", "csv/metrics.csv"):
        assert (trained_run / name).exists(), name
    assert any((trained_run / "tensorboard").iterdir())
    # the model file is plain data: loads with weights_only=True
    payload = torch.load(trained_run / "model.pt", weights_only=True)
    assert payload["species"] == [1, 6, 7, 8]
    assert payload["units"]["energy"] == "eV"
    assert payload["cutoff"] == pytest.approx(5.2)
    assert len(payload["atomref"]) == 4
    with np.load(trained_run / "split.npz") as split:
        parts = [set(split[p].tolist()) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_evaluate_json_and_plot(trained_run, tmp_path):
    out = tmp_path / "report.json"
    res = run_nnp("evaluate", f"ckpt={trained_run / 'model.pt'}", "split=test", f"output={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.read_text())
    for key in ("energy_mae", "energy_rmse", "energy_per_atom_mae", "forces_mae", "forces_rmse"):
        assert finite(report[key]), key
    assert report["n_structures"] == 12  # 20% of 60
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "energy MAE" in res.stdout


def test_evaluate_whole_file_with_explicit_data(trained_run, tiny_h5, tmp_path):
    out = tmp_path / "all.json"
    res = run_nnp("evaluate", f"ckpt={trained_run / 'model.pt'}", "data=ani1x", f"data.path={tiny_h5}",
                  "data.energy_key=gfn2.energy", "data.forces_key=gfn2.forces", f"output={out}", "plot=false")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(out.read_text())["n_structures"] == 60


def test_predict_writes_energies_and_forces(trained_run, tmp_path):
    out = tmp_path / "pred.extxyz"
    res = run_nnp("predict", f"ckpt={trained_run / 'model.pt'}", f"input={REPO / 'datasets/molecules.extxyz'}", f"output={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    frames = ase.io.read(out, index=":")
    inputs = ase.io.read(REPO / "datasets/molecules.extxyz", index=":")
    assert len(frames) == len(inputs)
    from nnp import NNPCalculator

    calc = NNPCalculator(str(trained_run / "model.pt"))
    for a, ref in zip(frames, inputs):
        assert np.isfinite(a.get_potential_energy())
        assert a.get_forces().shape == (len(a), 3)
        ref.calc = calc  # batched prediction equals one-at-a-time through the calculator
        assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-4)
        np.testing.assert_allclose(a.get_forces(), ref.get_forces(), atol=1e-4)


def test_md_nve_log_and_drift(trained_run, tmp_path):
    out = tmp_path / "traj.extxyz"
    res = run_nnp("md", f"ckpt={trained_run / 'model.pt'}", f"input={REPO / 'datasets/aspirin.xyz'}", "md.ensemble=nve",
                  "md.steps=100", "md.timestep_fs=0.25", "md.temperature_K=300", "md.write_interval=20", f"output={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(ase.io.read(out, index=":")) == 6  # step 0 and every 20 steps
    with open(out.with_suffix(".csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["time_ps", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"]
    assert len(rows) == 11
    summary = json.loads(out.with_suffix(".json").read_text())
    assert finite(summary["energy_drift_eV_per_atom_per_ps"])
    assert "drift" in res.stdout


def test_md_nvt_langevin(trained_run, tmp_path):
    out = tmp_path / "nvt.extxyz"
    # a 2-epoch model at 500 K may bring two atoms closer than md.min_distance: not what this test is about
    res = run_nnp("md", f"ckpt={trained_run / 'model.pt'}", f"input={REPO / 'datasets/aspirin.xyz'}", "md.ensemble=nvt",
                  "md.steps=40", "md.temperature_K=500", "md.min_distance=null", f"output={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert out.exists()


def test_energy_only_training(tmp_path, tiny_h5):
    """QM9-style data without forces trains on energies alone."""
    run_dir = tmp_path / "eonly"
    res = run_nnp("train", "data=demo", f"data.path={tiny_h5}", "data.forces_key=null", *_tiny(), f"hydra.run.dir={run_dir}",
                  "trainer.max_epochs=1")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((run_dir / "test_report.json").read_text())
    assert finite(report["energy_mae"]) and report["forces_mae"] is None


def test_float64_training_and_grouped_split(tmp_path, tiny_h5):
    run_dir = tmp_path / "f64"
    res = run_nnp("train", "data=demo", f"data.path={tiny_h5}", *_tiny(), "dtype=float64", "data.split.by=group",
                  "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stderr[-2000:]
    payload = torch.load(run_dir / "model.pt", weights_only=True)
    assert payload["dtype"] == "float64"


def _tiny():
    from conftest import TINY_TRAIN

    return [a for a in TINY_TRAIN if not a.startswith("trainer.max_epochs")]


def test_data_parallel_on_two_cpu_processes(tmp_path, tiny_h5, monkeypatch, capsys):
    """trainer.strategy=ddp: Lightning re-launches `nnp train` for rank 1; one run directory results.
    Global batch = data.batch_size x processes: 2 processes of 18 structures match one process of 36
    (the whole training split: the same structures in every step) after one epoch: validation loss
    within 1e-4 relative. Energy-only data: a mean over structures is the same whether taken over
    the global batch or per rank and then averaged (equal halves); a force mean is per rank's atoms."""
    run_dir = tmp_path / "ddp"
    res = run_nnp("train", "data=demo", f"data.path={tiny_h5}", *_tiny(), "trainer.max_epochs=1", "trainer.devices=2",
                  "trainer.strategy=ddp", "data.batch_size=18", "data.forces_key=null", f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run_dir / "model.pt").exists() and (run_dir / "test_report.json").exists()
    assert not (REPO / "split.npz").exists() and not (REPO / "checkpoints").exists()
    one = tmp_path / "one"
    code, text = nnp_cli(monkeypatch, capsys, "train", "data=demo", f"data.path={tiny_h5}", *_tiny(), "trainer.max_epochs=1",
                         "data.batch_size=36", "data.forces_key=null", "evaluate_test=false", f"hydra.run.dir={one}")
    assert code == 0, text[-3000:]

    def val_loss(folder):
        with open(folder / "csv" / "metrics.csv") as fh:
            return [float(r["val_loss"]) for r in csv.DictReader(fh) if r.get("val_loss")][-1]

    assert val_loss(run_dir) == pytest.approx(val_loss(one), rel=1e-4)


@pytest.mark.parametrize("model,sizes", [
    ("schnet", ["model.n_features=16", "model.n_interactions=1"]),
    ("painn", ["model.n_features=16", "model.n_interactions=1"]),
    ("hipnn", ["model.n_features=16"]),
])
def test_every_architecture_through_the_cli(tmp_path, tiny_h5, model, sizes):
    run_dir = tmp_path / model
    res = run_nnp("train", "data=demo", f"data.path={tiny_h5}", f"model={model}", *sizes, "data.batch_size=16", "trainer=cpu",
                  "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "r.json"
    res = run_nnp("evaluate", f"ckpt={run_dir / 'model.pt'}", f"output={out}", "plot=false")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.read_text())
    assert finite(report["forces_mae"])
    if model == "hipnn":  # the hierarchy is reported: one mean energy per layer (1 + 2 interactions)
        layers = report["layer_energy_mean"]
        assert len(layers) == 3 and all(finite(v) for v in layers)
