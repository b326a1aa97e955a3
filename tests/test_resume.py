"""Runs that survive being stopped: automatic resume, signals (exit 75), atomic checkpoints, the
run directory rule, and the sbatch scripts' command lines. (A real Slurm: `make test-slurm`.)"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_TRAIN, error_line, nnp_cli

from nnp.errors import EXIT_RESUMABLE, NNPError
from nnp.training import resume
from nnp.training.checkpoints import AtomicCheckpointIO, checkpoint_problem
from nnp.training.signals import GracefulStop

TINY = [a for a in TINY_TRAIN if not a.startswith("trainer.max_epochs")] + ["evaluate_test=false"]


def last_val_loss(run_dir: Path) -> float:
    with open(run_dir / "csv" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val_loss")]
    return float(rows[-1]["val_loss"])


def test_sigterm_checkpoint_exit_75_refused_config_damaged_checkpoint_and_resume(tmp_path, tiny_h5, monkeypatch, capsys):
    """SIGTERM mid-epoch: checkpoint + exit 75; another config is refused naming its keys; a truncated
    last.ckpt is passed over for the previous one; the same command continues and finishes."""
    run_dir = tmp_path / "run"
    cmd = ["train", "data=demo", f"data.path={tiny_h5}", *TINY, f"hydra.run.dir={run_dir}"]
    original = GracefulStop.on_train_batch_end

    def signal_at_step_5(self, trainer, *args):
        if trainer.global_step == 5:  # epoch 1 of 3 batches each: last.ckpt (epoch 0) exists already
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal, through the installed handler
        return original(self, trainer, *args)

    monkeypatch.setattr(GracefulStop, "on_train_batch_end", signal_at_step_5)
    code, text = nnp_cli(monkeypatch, capsys, *cmd, "trainer.max_epochs=3")
    assert code == EXIT_RESUMABLE, text[-2000:]
    line = error_line(text)
    assert "SIGTERM" in line and "rerun the same command" in line and "step 5" in line
    last = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint_problem(last) is None
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 5
    assert not (run_dir / "model.pt").exists()
    monkeypatch.setattr(GracefulStop, "on_train_batch_end", original)

    # another config in the same run directory: refused, the differing key named, nothing touched
    code, text = nnp_cli(monkeypatch, capsys, *cmd, "trainer.max_epochs=3", "optim.lr=0.01")
    assert code == 2 and "optim.lr: 0.003 -> 0.01" in error_line(text)
    assert checkpoint_problem(last) is None

    # a last.ckpt cut short by hand: the previous one (end of epoch 0) is used instead
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    assert "truncated" in checkpoint_problem(last)
    code, text = nnp_cli(monkeypatch, capsys, *cmd, "trainer.max_epochs=4")  # longer: allowed
    assert code == 0, text[-3000:]
    flat = " ".join(text.split())
    assert "passed over a damaged checkpoint" in flat and "resuming from" in flat
    assert "last.ckpt.prev(epoch0,step3)" in "".join(text.split())  # rich wraps long paths
    assert (run_dir / "model.pt").is_file()
    assert (run_dir / "csv" / "metrics.part1.csv").is_file()


@pytest.mark.slow
def test_kill_9_then_the_same_command_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny_h5, monkeypatch, capsys):
    """kill -9 (no handler runs) at an arbitrary moment after the first checkpoint; the same command
    continues from the last end-of-epoch checkpoint with the same RNG state, so in deterministic mode
    the final validation loss equals an uninterrupted run's (tolerance: 1e-5 relative)."""
    args = ["data=demo", f"data.path={tiny_h5}", *TINY, "trainer.max_epochs=4", "trainer.deterministic=true",
            "data.batch_size=8"]
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "nnp.cli", "train", *args, f"hydra.run.dir={killed}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not (killed / "checkpoints" / "last.ckpt").exists() and proc.poll() is None and time.time() - t0 < 240:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "model.pt").exists()

    code, text = nnp_cli(monkeypatch, capsys, "train", *args, f"hydra.run.dir={killed}")
    assert code == 0, text[-3000:]
    assert "resuming from" in " ".join(text.split())
    whole = tmp_path / "whole"
    code, text = nnp_cli(monkeypatch, capsys, "train", *args, f"hydra.run.dir={whole}")
    assert code == 0, text[-3000:]
    assert last_val_loss(killed) == pytest.approx(last_val_loss(whole), rel=1e-5)


def test_atomic_checkpoint_keeps_the_previous_last(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "global_step": 3}, path)
    io.save_checkpoint({"epoch": 1, "global_step": 6}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 6
    assert torch.load(path.with_name("last.ckpt.prev"), weights_only=True)["global_step"] == 3
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    # every checkpoint damaged: one clear line naming them
    path.write_bytes(b"")
    path.with_name("last.ckpt.prev").write_bytes(b"PK\x03\x04 cut")
    with pytest.raises(NNPError, match="no usable checkpoint.*(empty file.*truncated|truncated.*empty file)"):
        resume.latest_checkpoint(tmp_path)


def test_run_directory_rule(tmp_path, monkeypatch):
    """Same config and data -> same folder, whatever the path, length or output name; another config
    or other data -> another; under Slurm the job id (array: job_task)."""
    from nnp.config.rundir import run_name

    data = tmp_path / "a.h5"
    data.write_bytes(b"x" * 5000)
    copy = tmp_path / "b.h5"
    copy.write_bytes(data.read_bytes())
    cfg = {"model": {"name": "ani", "hidden": [16]}, "data": {"path": str(data)}, "trainer": {"max_epochs": 3},
           "optim": {"lr": 1e-3}}
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    base = run_name(cfg)
    assert base.startswith("ani-")
    assert run_name({**cfg, "trainer": {"max_epochs": 9}, "data": {"path": str(copy)}}) == base
    assert run_name({**cfg, "optim": {"lr": 1e-2}}) != base
    other = tmp_path / "c.h5"
    other.write_bytes(b"y" * 5000)
    assert run_name({**cfg, "data": {"path": str(other)}}) != base
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert run_name(cfg) == "slurm-4242"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    assert run_name(cfg) == "slurm-4240_2"


def test_resume_false_needs_overwrite(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    AtomicCheckpointIO().save_checkpoint({"epoch": 0, "global_step": 1}, tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(NNPError, match="resume=false.*overwrite=true"):
        resume.decide({"resume": False}, tmp_path, tmp_path / "model.pt")
    plan = resume.decide({"resume": False, "overwrite": True}, tmp_path, tmp_path / "model.pt")
    assert plan.mode == "fresh" and plan.clean
    assert resume.decide({"resume": None}, tmp_path, tmp_path / "model.pt").mode == "auto"


def _script_command(script: str, tmp_path: Path, **env_vars: str) -> list[str]:
    """The `nnp train` arguments an sbatch script runs (srun and nnp replaced by echo)."""
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "srun").write_text('#!/bin/bash\nexec "$@"\n')
    (shim / "srun").chmod(0o755)
    env = dict(os.environ, PATH=f"{shim}:{os.environ['PATH']}", NNP="printf %s\\n", **env_vars)
    out = subprocess.run(["bash", str(REPO / "slurm" / script), "data=demo"], env=env, capture_output=True,
                         text=True, check=True).stdout
    lines = out.splitlines()
    return lines[lines.index("train") + 1:]


@pytest.mark.parametrize("script", ["train.sbatch", "train_cpu.sbatch", "ensemble.sbatch"])
def test_sbatch_scripts_parse_and_their_command_lines_compose(script, tmp_path):
    from nnp.cli import config_dir, register_resolvers
    from nnp.config.compose import check_command_line

    subprocess.run(["bash", "-n", str(REPO / "slurm" / script)], check=True)
    args = _script_command(script, tmp_path, SLURM_JOB_ID="77", SLURM_NTASKS_PER_NODE="2", SLURM_JOB_NUM_NODES="1",
                           SLURM_ARRAY_JOB_ID="70", SLURM_ARRAY_TASK_ID="3")
    register_resolvers()
    (cfg,) = check_command_line("train", args, config_dir())  # the schema checks of `nnp train`
    assert str(cfg.hydra.run.dir).endswith("slurm-70_3")  # keyed by the job (array task) id
    if script == "train.sbatch":
        assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2 and cfg.trainer.num_nodes == 1
