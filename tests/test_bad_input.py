"""Every bad input gets one clear line, a non-zero exit, no traceback, nothing overwritten."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.io import write
from conftest import REPO, TINY_TRAIN, assert_clean_error, run_nnp, write_h5_subset

# Not in the "cli" xdist group: these spread over both workers (a worker that needs
# the trained_run fixture trains its own tiny model, ~20 s, instead of queueing).
pytestmark = [pytest.mark.slow]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train(*args, run_dir):
    return run_nnp("train", "data=demo", *TINY_TRAIN, f"hydra.run.dir={run_dir}", *args)


def test_missing_data_file(tmp_path):
    res = train("data.path=/no/such/file.h5", run_dir=tmp_path / "r")
    assert_clean_error(res, "/no/such/file.h5", "not found")


def test_missing_hdf5_key(tmp_path, tiny_h5):
    res = train(f"data.path={tiny_h5}", "data.energy_key=wb97x_dz.energy", run_dir=tmp_path / "r")
    assert_clean_error(res, str(tiny_h5), "wb97x_dz.energy")


def test_missing_forces_key(tmp_path, tiny_h5):
    res = train(f"data.path={tiny_h5}", "data.forces_key=nope.forces", run_dir=tmp_path / "r")
    assert_clean_error(res, "nope.forces")


def test_config_typo(tmp_path):
    res = train("model.hiden=3", run_dir=tmp_path / "r")
    assert_clean_error(res, "model.hiden")
    assert not (tmp_path / "r").exists()


def test_unknown_config_option(tmp_path):
    res = train("model=transformer9000", run_dir=tmp_path / "r")
    assert_clean_error(res, "transformer9000", "model")


def test_not_hdf5(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_text("this is not HDF5")
    res = train(f"data.path={bad}", run_dir=tmp_path / "r")
    assert_clean_error(res, str(bad))


def test_nan_energies_skipped_or_rejected(tmp_path):
    path = write_h5_subset(tmp_path / "nan.h5", groups=3, rows=10)
    with h5py.File(path, "r+") as f:
        name = sorted(f.keys())[0]
        e = f[name]["gfn2.energy"][()]
        e[2] = np.nan
        f[name]["gfn2.energy"][...] = e
    res = train(f"data.path={path}", "data.skip_nan=false", run_dir=tmp_path / "r1")
    assert_clean_error(res, str(path), name, "row 2")
    res = train(f"data.path={path}", "trainer.max_epochs=1", run_dir=tmp_path / "r2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "29 (1 skipped" in res.stdout.replace("\n", " ") or "1 skipped" in res.stdout


def test_empty_dataset(tmp_path):
    path = write_h5_subset(tmp_path / "empty.h5", groups=2, rows=5)
    with h5py.File(path, "r+") as f:
        for name in f:
            f[name]["gfn2.energy"][...] = np.nan
    res = train(f"data.path={path}", run_dir=tmp_path / "r")
    assert_clean_error(res, str(path), "empty")


def test_overlapping_atoms_in_data(tmp_path):
    frames = [Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [0.96, 0.01, 0]]) for _ in range(4)]
    for a in frames:
        a.info["energy"] = -10.0
        a.arrays["forces"] = np.zeros((3, 3))
    path = tmp_path / "overlap.extxyz"
    write(path, frames)
    res = train("data=ase", f"data.path={path}", run_dir=tmp_path / "r")
    assert_clean_error(res, str(path), "structure 0", "apart")


def test_existing_model_not_overwritten(trained_run):
    before = digest(trained_run / "model.pt")
    res = run_nnp("train", "data=demo", *TINY_TRAIN, f"hydra.run.dir={trained_run}")
    assert_clean_error(res, "already exists")
    assert digest(trained_run / "model.pt") == before


def test_unknown_element_in_predict(trained_run, tmp_path):
    path = tmp_path / "fe.xyz"
    write(path, Atoms("FeH", positions=[[0, 0, 0], [1.6, 0, 0]]))
    out = tmp_path / "out.extxyz"
    out.write_text("precious")
    # overwrite=true: the element check comes first, and a refused input writes nothing
    res = run_nnp("predict", f"ckpt={trained_run / 'model.pt'}", f"input={path}", f"output={out}", "overwrite=true")
    assert_clean_error(res, str(path), "Fe", "not known")
    assert out.read_text() == "precious"


def test_unknown_element_in_evaluate(trained_run, tmp_path):
    frames = [Atoms("FeH", positions=[[0, 0, 0], [1.6, 0, 0]]) for _ in range(3)]
    for a in frames:
        a.info["energy"] = -1.0
        a.arrays["forces"] = np.zeros((2, 3))
    path = tmp_path / "fe.extxyz"
    write(path, frames)
    res = run_nnp("evaluate", f"ckpt={trained_run / 'model.pt'}", "data=ase", f"data.path={path}", f"output={tmp_path / 'r.json'}")
    assert_clean_error(res, "Fe", "not known")


def test_overlapping_atoms_in_md_input(trained_run, tmp_path):
    path = tmp_path / "close.xyz"
    write(path, Atoms("CH4", positions=[[0, 0, 0], [0.05, 0, 0], [-1, 0, 0], [0, 1, 0], [0, 0, 1]]))
    res = run_nnp("md", f"ckpt={trained_run / 'model.pt'}", f"input={path}", f"output={tmp_path / 'md.extxyz'}")
    assert_clean_error(res, str(path), "atoms 0 and 1")
    assert not (tmp_path / "md.extxyz").exists()


def test_missing_model_file(tmp_path):
    res = run_nnp("predict", "ckpt=/no/model.pt", f"input={REPO / 'datasets/aspirin.xyz'}", f"output={tmp_path / 'o.xyz'}")
    assert_clean_error(res, "/no/model.pt")


def test_lightning_checkpoint_is_not_a_model(trained_run, tmp_path):
    res = run_nnp("predict", f"ckpt={trained_run / 'checkpoints/last.ckpt'}", f"input={REPO / 'datasets/aspirin.xyz'}",
                  f"output={tmp_path / 'o.xyz'}")
    assert_clean_error(res, "model.pt")


def test_missing_input_structure_file(trained_run, tmp_path):
    res = run_nnp("predict", f"ckpt={trained_run / 'model.pt'}", "input=/no/input.xyz", f"output={tmp_path / 'o.xyz'}")
    assert_clean_error(res, "/no/input.xyz", "not found")


def test_md_refuses_to_overwrite(trained_run, tmp_path):
    out = tmp_path / "md.extxyz"
    out.write_text("earlier trajectory")
    res = run_nnp("md", f"ckpt={trained_run / 'model.pt'}", f"input={REPO / 'datasets/aspirin.xyz'}", f"output={out}", "md.steps=2")
    assert_clean_error(res, "already exists")
    assert out.read_text() == "earlier trajectory"


def test_unknown_command():
    res = run_nnp("trian")
    assert_clean_error(res, "trian")
