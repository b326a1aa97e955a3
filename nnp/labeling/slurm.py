"""Labeling as a Slurm job array (``labeler.executor=slurm``), through submitit.

A round's structures are cut into chunks of ``labeler.slurm.structures_per_task``;
each chunk is one task of a job array (``executor.map_array``). A task labels
its structures one after another with :func:`nnp.labeling.labels.label_one` and
appends each label, as it arrives, to its own journal file in the round's
journal folder (``<journal>.tasks/task-<first index>.jsonl``, same format as the
main journal). The command waits, collects each task when it ends, and writes
its labels into the main journal; a structure whose task ended without its label
(the job failed, hit its time limit, was cancelled or lost its node) is recorded
as failed with the job's id, state and reason, like a label that failed.

Resuming (the command was stopped while jobs were queued or running): labels
the tasks already wrote are taken from the task files, never computed again;
array tasks of the earlier run that Slurm still holds (pending or running, listed
in ``<journal>.jobs.json``) are reattached and waited for; only structures with
no result and no live job are submitted again. ``cluster=local|debug`` (submitit's
LocalExecutor / DebugExecutor, for trying this without a cluster) cannot reattach
jobs of a stopped run: their structures without a result are submitted again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from nnp.errors import NNPError
from nnp.labeling.labels import Label, _Journal, label_one, read_journal

INSTALL = "labeler.executor=slurm needs submitit: pip install 'nnp[slurm]'"

#: Slurm states in which a job may still produce its result.
_ALIVE = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "PREEMPTED", "READY", "UNKNOWN")


def task_dir(journal: Path) -> Path:
    """The folder where the array tasks write their labels."""
    return journal.parent / f"{journal.stem}.tasks"


def _jobs_file(journal: Path) -> Path:
    return journal.parent / f"{journal.stem}.jobs.json"


def _slurm(cfg: Mapping[str, Any]) -> dict[str, Any]:
    return dict(cfg.get("slurm") or {})


def check(cfg: Mapping[str, Any]) -> None:
    """Refuse, before any work, an executor that cannot run here (no submitit, no sbatch)."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise NNPError(INSTALL) from None
    cluster = _slurm(cfg).get("cluster", "slurm")
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise NNPError("labeler.executor=slurm: sbatch is not on PATH (run on a Slurm login node, or try "
                       "labeler.slurm.cluster=local on this machine)")


# ------------------------------------------------------------------- in the job


def label_chunk(cfg: Mapping[str, Any], chunk: list[tuple], out: str) -> int:
    """One array task: label ``chunk`` ((index, numbers, positions, cell, pbc) each), appending each
    label to the task file ``out`` as it arrives; labels already in ``out`` (a requeued task) are skipped.
    Returns the number of labels written."""
    path = Path(out)
    done = read_journal(path)
    log = _Journal(path)
    try:
        n = 0
        for args in chunk:
            if int(args[0]) in done:
                continue
            log.add(label_one(cfg, *args))
            n += 1
    finally:
        log.close()
    return n


# ------------------------------------------------------------------ in the command


def task_labels(journal: Path) -> dict[int, Label]:
    """Every label the array tasks wrote (all runs of this journal)."""
    out: dict[int, Label] = {}
    for path in sorted(task_dir(journal).glob("task-*.jsonl")):
        out.update(read_journal(path))
    return out


def _executor(cfg: Mapping[str, Any], journal: Path):
    import submitit

    s = _slurm(cfg)
    folder = Path(s.get("folder") or journal.parent / "slurm")
    cluster = s.get("cluster", "slurm")
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    cpus = int(s.get("cpus_per_task", 1))
    params: dict[str, Any] = {"timeout_min": int(s.get("time_min", 60)), "cpus_per_task": cpus,
                              "name": f"nnp-label-{cfg.get('name')}"}
    if cluster == "slurm":
        # one thread per cpu of the task: a labeler's library would otherwise take every core of the node
        params.update(slurm_array_parallelism=int(s.get("array_parallelism", 32)),
                      slurm_setup=[f"export OMP_NUM_THREADS={cpus} OPENBLAS_NUM_THREADS={cpus} MKL_NUM_THREADS={cpus}"])
        if s.get("partition"):
            params["slurm_partition"] = str(s["partition"])
        if s.get("mem"):
            params["slurm_mem"] = str(s["mem"])
        if s.get("additional"):
            params["slurm_additional_parameters"] = dict(s["additional"])
    ex.update_parameters(**params)
    return ex, folder, cluster


def _chunks(args: list[tuple], size: int) -> list[list[tuple]]:
    return [args[k:k + size] for k in range(0, len(args), max(1, size))]


def _squeue_state(job_id: str) -> str | None:
    """The job's state while Slurm holds it in its queue; None once it left (or squeue failed)."""
    try:
        res = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = res.stdout.split()
    return lines[0] if res.returncode == 0 and lines else None


def _ended(job, cluster: str) -> bool:
    """Whether the job ended. submitit asks sacct; where there is no accounting (sacct fails: state UNKNOWN)
    a job that left squeue without a result has ended too."""
    if job.done():
        return True
    if cluster == "slurm" and job.state == "UNKNOWN" and _squeue_state(job.job_id) is None:
        return True
    return False


def _why(job, cluster: str) -> str:
    """Why a task ended without some of its labels: the job's state and the last line of its error."""
    state = str(job.state)
    where = f"slurm job {job.job_id}{f' ({state})' if state not in ('UNKNOWN', 'unknown', '') else ''}"
    if not job.paths.result_pickle.exists():  # killed, timed out, node lost: no outcome (submitit would wait 15 s)
        lines = [x.strip() for x in (job.stderr() or "").splitlines() if x.strip()]
        return f"{where}: ended without a result{f'; last log line: {lines[-1][:200]}' if lines else ''}"
    try:
        err = job.exception()
    except Exception as e:  # submitit could not read the job's outcome
        err = e
    lines = [x.strip() for x in str(err or "").splitlines() if x.strip() and not x.startswith(("-----", "You can", "or at", "  -"))]
    return f"{where}: {lines[-1][:300] if lines else 'ended without its labels'}"


def _reattach(journal: Path, folder: Path, cluster: str, todo: set[int]) -> list[tuple[Any, list[int], Path]]:
    """Array tasks of an earlier run that Slurm still holds (pending or running) for structures in ``todo``."""
    path = _jobs_file(journal)
    if cluster != "slurm" or not path.exists():
        return []
    import submitit

    out = []
    for rec in json.loads(path.read_text()).get("jobs", []):
        indices = [k for k in rec["indices"] if k in todo]
        if not indices or _squeue_state(rec["job_id"]) not in _ALIVE:
            continue
        job = submitit.SlurmJob(folder=folder / "%j", job_id=rec["job_id"])
        out.append((job, indices, Path(rec["out"])))
    return out


def _record_jobs(journal: Path, jobs: list[tuple[Any, list[int], Path]], cluster: str) -> None:
    """The array tasks of this run and their structures, for a rerun to reattach."""
    from nnp.outputs import write_bytes

    jobs_json = [{"job_id": str(job.job_id), "indices": [int(k) for k in idx], "out": str(out)} for job, idx, out in jobs]
    write_bytes(_jobs_file(journal), json.dumps({"cluster": cluster, "jobs": jobs_json}, indent=1).encode())


def labels(cfg: Mapping[str, Any], args: list[tuple], journal: Path) -> Iterator[Label]:
    """Labels of ``args`` (structures with no label yet), computed by a job array, yielded task by task."""
    from nnp.report import console

    cfg = dict(cfg)
    s = _slurm(cfg)
    ex, folder, cluster = _executor(cfg, journal)
    todo = {int(a[0]) for a in args}
    jobs = _reattach(journal, folder, cluster, todo)
    held = {k for _, idx, _ in jobs for k in idx}
    if jobs:
        console.print(f"labels: reattached {len(jobs)} array task(s) of the earlier run still in Slurm "
                      f"({len(held)} structures)")
    submit = [a for a in args if int(a[0]) not in held]
    if submit:
        tasks = task_dir(journal)
        tasks.mkdir(parents=True, exist_ok=True)
        chunks = _chunks(submit, int(s.get("structures_per_task", 10)))
        outs = [str(tasks / f"task-{int(c[0][0]):06d}.jsonl") for c in chunks]
        new = ex.map_array(label_chunk, [cfg] * len(chunks), chunks, outs)
        jobs += [(job, [int(a[0]) for a in c], Path(o)) for job, c, o in zip(new, chunks, outs)]
        console.print(f"labels: {len(submit)} structures in {len(chunks)} {cluster} array task(s)"
                      f"{f' (job {new[0].job_id.split(chr(95))[0]})' if cluster == 'slurm' else ''}; "
                      f"logs in {folder}")
    _record_jobs(journal, jobs, cluster)
    poll = float(s.get("poll_s", 5.0))
    waiting = list(jobs)
    try:
        yield from _collect(waiting, cluster, poll)
    except KeyboardInterrupt:
        if cluster == "slurm":
            ids = sorted({str(job.job_id).split("_")[0] for job, _, _ in waiting})
            console.print(f"labels: stopped; the array tasks keep running in Slurm (scancel {' '.join(ids)} to stop "
                          "them): rerun the same command to collect them")
        raise


def _collect(waiting: list[tuple[Any, list[int], Path]], cluster: str, poll: float) -> Iterator[Label]:
    """Each task's labels once it ended; its structures without a label as failed, with the job's reason."""
    while waiting:
        still = []
        for job, idx, out in waiting:
            if not _ended(job, cluster):
                still.append((job, idx, out))
                continue
            got = read_journal(out) if out.exists() else {}
            why = None
            for k in idx:
                if k in got:
                    yield got[k]
                else:
                    why = why or _why(job, cluster)
                    yield Label(k, reason=why)
        waiting = still
        if waiting:
            time.sleep(poll)


def merge_finished(journal: Path, done: dict[int, Label], wanted: int) -> list[Label]:
    """Labels the array tasks wrote that the main journal lacks (the command stopped before collecting them)."""
    found = task_labels(journal)
    return [lb for k, lb in sorted(found.items()) if k not in done and 0 <= k < wanted]


__all__ = ["INSTALL", "check", "label_chunk", "labels", "merge_finished", "task_dir", "task_labels"]
