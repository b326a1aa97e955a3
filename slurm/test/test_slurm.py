"""nnp's batch jobs under a real Slurm (run by slurm/test/run.sh, `make test-slurm`; not part of `make test`).

run.sh starts a one-node Slurm and exports SLURM_CONF, NNP_SLURM_WORK (a folder for the jobs)
and NNP_PYTHON (the interpreter with nnp). Every job runs the shipped sbatch scripts on the
shipped demo data with a small model.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("NNP_SLURM_WORK", "/nonexistent"))
PYTHON = os.environ.get("NNP_PYTHON", "python3")

pytestmark = pytest.mark.skipif(not os.environ.get("SLURM_CONF"), reason="needs the Slurm of slurm/test/run.sh")

TINY = [
    "data=demo", "model.hidden=[16,16]", "model.hidden_per_element=null", "data.batch_size=8",
    "data.split.train=64", "data.split.val=16", "data.split.test=16", "trainer.log_every_n_steps=1",
]


def env() -> dict[str, str]:
    return dict(os.environ, NNP=f"{PYTHON} -m nnp.cli", NNP_RUNS=str(WORK / "runs"), OMP_NUM_THREADS="1", COLUMNS="120")


def sbatch(script: str | Path, *args: str, options: tuple[str, ...] = ()) -> str:
    done = subprocess.run(["sbatch", "--parsable", f"--chdir={WORK}", *options, str(REPO / script), *args],
                          env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job(job_id: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def wait_for(test, what: str, timeout: float = 600, every: float = 1.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = test()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def finished(job_id: str) -> str:
    state = wait_for(lambda: (s := job(job_id).get("JobState")) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                                   "NODE_FAIL", "OUT_OF_MEMORY") and s,
                     f"job {job_id} to end")
    return state


def output(job_id: str) -> str:
    path = WORK / f"slurm-{job_id}.out"
    return path.read_text() if path.exists() else ""


def test_cpu_sbatch_trains_a_model():
    job_id = sbatch("slurm/train_cpu.sbatch", *TINY, "trainer.max_epochs=2")
    state = finished(job_id)
    assert state == "COMPLETED", output(job_id)[-3000:]
    assert (WORK / "runs" / f"slurm-{job_id}" / "model.pt").is_file(), output(job_id)[-3000:]


def test_preemption_signal_requeues_and_resumes():
    job_id = sbatch("slurm/train_cpu.sbatch", *TINY, "trainer.max_epochs=6")
    run_dir = WORK / "runs" / f"slurm-{job_id}"
    wait_for(lambda: (run_dir / "checkpoints" / "last.ckpt").exists(), "the first checkpoint", every=0.5)
    time.sleep(1)  # into the next epoch: the signal's checkpoint is taken between two batches
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, env=env())
    wait_for(lambda: int(job(job_id).get("Restarts", "0")) >= 1, "Restarts=1")
    state = finished(job_id)
    text = output(job_id)
    assert state == "COMPLETED", text[-4000:]
    assert "SIGUSR1 at epoch" in text and "requeued" in text, text[-4000:]
    assert "restart 1" in text, text[-4000:]  # SLURM_RESTART_COUNT in the requeued run
    resumed = re.search(r"resuming from \S+ \(epoch (\d+), step (\d+)\)", " ".join(text.split()))
    assert resumed and int(resumed.group(2)) > 0, text[-4000:]  # not from epoch 0
    assert (run_dir / "model.pt").is_file()
    assert list((run_dir / "csv").glob("metrics.part*.csv"))  # the first part's metrics kept


def test_two_task_srun_ddp_on_cpu():
    # slurm/train.sbatch as shipped, less its --gres line (this node has no GPU), 2 tasks of 1 CPU
    script = WORK / "train_2cpu.sbatch"
    script.write_text("".join(line for line in (REPO / "slurm/train.sbatch").read_text().splitlines(keepends=True)
                              if not line.startswith("#SBATCH --gres")))
    job_id = sbatch(script, *TINY, "trainer.accelerator=cpu", "trainer.max_epochs=1",
                    options=("--ntasks-per-node=2", "--cpus-per-task=1"))
    state = finished(job_id)
    text = output(job_id)
    assert state == "COMPLETED", text[-4000:]
    run_dir = WORK / "runs" / f"slurm-{job_id}"
    assert (run_dir / "model.pt").is_file(), text[-4000:]
    # 2 ranks shared the epoch: 64 training structures in batches of 8 per rank -> 4 optimizer steps (1 rank: 8)
    import torch

    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_submitit_sweep_of_two_members():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = WORK / "sweep"
    res = subprocess.run(
        [PYTHON, "-m", "nnp.cli", "train", "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}",
         "seed=0,1", *TINY, "trainer=cpu", "trainer.max_epochs=1", "evaluate_test=false"],
        cwd=WORK, env=env(), capture_output=True, text=True, timeout=900,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    for k in (0, 1):
        assert (sweep / str(k) / "model.pt").is_file(), (res.stdout + res.stderr)[-4000:]
