"""Shared fixtures: tiny data files made from the shipped demo set, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# pytest-xdist runs two workers on two cores: one thread each, or OpenMP
# spin-waiting across oversubscribed cores makes small systems ~20x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import h5py
import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
DEMO_H5 = REPO / "datasets" / "chno-mini.h5"


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test when that folder is absent (a user's clone)."""
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{path} not available (../shared is only beside CI and developer checkouts)")
    return path


def write_h5_subset(path: Path, groups: int = 6, rows: int = 10) -> Path:
    """A small ANI-1x-layout file: the first ``groups`` formulas x ``rows`` conformations of the demo set."""
    with h5py.File(DEMO_H5, "r") as src, h5py.File(path, "w") as out:
        for name in sorted(src.keys())[:groups]:
            g = out.create_group(name)
            g["atomic_numbers"] = src[name]["atomic_numbers"][()]
            for key in ("coordinates", "gfn2.energy", "gfn2.forces", "smiles"):
                g[key] = src[name][key][:rows]
    return path


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory) -> Path:
    return write_h5_subset(tmp_path_factory.mktemp("data") / "tiny.h5")


def run_nnp(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real command line (a fresh process, as a user would)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-m", "nnp.cli", *args], cwd=cwd or REPO, env=env,
        capture_output=True, text=True, timeout=timeout,
    )


# Small, fast model + data overrides for CLI tests.
TINY_TRAIN = [
    "model.hidden=[16,16]",
    "model.hidden_per_element=null",
    "data.batch_size=16",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "data.split.train=0.6",
    "data.split.val=0.2",
    "data.split.test=0.2",
]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_h5) -> Path:
    """A run directory trained for 2 epochs on the tiny file (shared by CLI tests)."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    res = run_nnp("train", "data=demo", f"data.path={tiny_h5}", *TINY_TRAIN, f"hydra.run.dir={run_dir}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return run_dir


def assert_clean_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    """Non-zero exit, no traceback, one error line naming what is wrong."""
    text = res.stdout + res.stderr
    assert res.returncode != 0, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def finite(x) -> bool:
    return x is not None and bool(np.isfinite(x))


def nnp_cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The real command line, in this process (no interpreter start-up): exit code, everything printed."""
    from nnp import cli

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # Hydra reads and rewrites sys.argv
    try:
        code = cli.main(list(args))
    except SystemExit as stop:  # a Hydra job exits with the error's exit code
        code = stop.code
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text, text[-3000:]
    return code, text


def error_line(text: str) -> str:
    """The one ``error:`` line of a command's output."""
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text[-3000:]
    return errors[0]
