"""nnp's batch jobs under a real Slurm (run by slurm/test/run.sh, `make test-slurm`; not part of `make test`).

run.sh starts a one-node Slurm and exports SLURM_CONF, NNP_SLURM_WORK (a folder for the jobs)
and NNP_PYTHON (the interpreter with nnp). Every job runs the shipped sbatch scripts on the
shipped demo data with a small model.
"""

from __future__ import annotations

import json
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


def _copper(n: int, seed: int, labeled: bool):
    import numpy as np
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.cluster import Icosahedron

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = Icosahedron("Cu", 2)
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        if labeled:
            a.calc = EMT()
            a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(), forces=a.get_forces())
        out.append(a)
    return out


def test_active_learning_labels_as_a_job_array():
    """`nnp active-learn labeler.executor=slurm`: a round's EMT labels as one Slurm job array (submitit);
    the rerun of the finished command labels nothing again."""
    pytest.importorskip("submitit")
    import ase.io

    work = WORK / "al"
    work.mkdir(parents=True, exist_ok=True)
    ase.io.write(work / "init.extxyz", _copper(10, 3, labeled=True))
    ase.io.write(work / "seed.extxyz", _copper(1, 9, labeled=False)[0])
    args = [
        PYTHON, "-m", "nnp.cli", "active-learn", "data=ase", f"data.path={work / 'init.extxyz'}", "data.split.train=0.7",
        "data.split.val=0.3", "data.split.test=0.0", f"seeds={work / 'seed.extxyz'}", "labeler=ase",
        "labeler.calculator=ase.calculators.emt:EMT", "labeler.executor=slurm", "labeler.slurm.partition=debug",
        "labeler.slurm.time_min=5", "labeler.slurm.structures_per_task=2", "labeler.slurm.poll_s=1",
        "model=ani", "model.hidden=[8]", "model.hidden_per_element=null", "ensemble.size=2", "rounds=1", "trainer=cpu",
        "trainer.max_epochs=1", "md.steps=24", "md.write_interval=4", "md.uncertainty.min_interval=4",
        "sampling.trajectories=1", "selection.max_per_round=3", f"hydra.run.dir={work / 'run'}",
    ]
    res = subprocess.run(args, cwd=work, env=env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    rnd = work / "run" / "round_000"
    jobs = json.loads((rnd / "labels.jobs.json").read_text())["jobs"]
    assert len(jobs) == 2 and sorted(k for j in jobs for k in j["indices"]) == [0, 1, 2]
    array = {j["job_id"].split("_")[0] for j in jobs}
    assert len(array) == 1 and all(re.fullmatch(r"\d+_\d+", j["job_id"]) for j in jobs)  # one array, two tasks
    assert job(jobs[0]["job_id"]).get("JobState") == "COMPLETED"
    labels = [json.loads(x) for x in (rnd / "labels.jsonl").read_text().splitlines()]
    assert sorted(x["index"] for x in labels) == [0, 1, 2] and all(x["ok"] for x in labels)
    rounds = json.loads((work / "run" / "rounds.json").read_text())["rounds"]
    assert [r["labels"] for r in rounds] == [10, 13] and rounds[0]["failed"] == 0
    # the finished command again: nothing submitted, nothing labeled
    res = subprocess.run(args, cwd=work, env=env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0 and "array task" not in res.stdout, (res.stdout + res.stderr)[-4000:]
    assert len((rnd / "labels.jsonl").read_text().splitlines()) == 3


def test_dead_array_task_is_recorded_and_not_relabeled(monkeypatch):
    """A task whose process dies on its 2nd structure: its first label is kept, the rest of its chunk is
    recorded as failed with the job's id (no sacct here: the job's end is seen in squeue), and a rerun
    submits nothing."""
    pytest.importorskip("submitit")
    from nnp.labeling import label_structures

    monkeypatch.syspath_prepend(str(REPO / "tests"))
    monkeypatch.setenv("PYTHONPATH", f"{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}")
    from al_labelers import count

    work = WORK / "dies"
    counter, journal = work / "count.txt", work / "labels.jsonl"
    cfg = {"name": "ase", "calculator": "al_labelers:CountingEMT", "workers": 1, "executor": "slurm",
           "kwargs": {"count_file": str(counter), "die_at": 2},
           "slurm": {"cluster": "slurm", "partition": "debug", "time_min": 5, "structures_per_task": 2, "poll_s": 1}}
    frames = _copper(4, 5, labeled=False)
    labels = label_structures(frames, cfg, journal, progress=False)
    assert [lb.ok for lb in labels] == [True, False, True, False] and count(counter) == 2, [lb.reason for lb in labels]
    assert re.match(r"slurm job \d+_\d+.*: ended without a result", labels[1].reason), labels[1].reason
    again = label_structures(frames, cfg, journal, progress=False)
    assert count(counter) == 2 and [lb.reason for lb in again] == [lb.reason for lb in labels]


def test_stopped_while_queued_reattaches(monkeypatch, capsys):
    """The command stops (Ctrl-C) while its array tasks run; the same call again reattaches to them,
    submits nothing, and every structure is labeled exactly once."""
    pytest.importorskip("submitit")
    from types import SimpleNamespace

    import nnp.labeling.slurm as slurm_labels
    from nnp.labeling import label_structures

    monkeypatch.syspath_prepend(str(REPO / "tests"))
    monkeypatch.setenv("PYTHONPATH", f"{REPO / 'tests'}:{os.environ.get('PYTHONPATH', '')}")
    from al_labelers import count

    work = WORK / "reattach"
    counter, journal = work / "count.txt", work / "labels.jsonl"
    cfg = {"name": "ase", "calculator": "al_labelers:CountingEMT", "workers": 1, "executor": "slurm",
           "kwargs": {"count_file": str(counter), "sleep_s": 8},
           "slurm": {"cluster": "slurm", "partition": "debug", "time_min": 5, "structures_per_task": 1, "poll_s": 1}}
    frames = _copper(3, 7, labeled=False)

    def ctrl_c(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(slurm_labels, "time", SimpleNamespace(sleep=ctrl_c))  # stop at the first wait
    with pytest.raises(KeyboardInterrupt):
        label_structures(frames, cfg, journal, progress=False)
    first = json.loads((work / "labels.jobs.json").read_text())["jobs"]
    assert len(first) == 3 and count(counter) == 0
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    capsys.readouterr()
    labels = label_structures(frames, cfg, journal, progress=False)
    out = capsys.readouterr().out
    assert "reattached 3 array task(s)" in out and "array task(s); logs" not in out, out
    assert all(lb.ok for lb in labels) and count(counter) == 3  # each structure labeled once
    assert json.loads((work / "labels.jobs.json").read_text())["jobs"] == first
