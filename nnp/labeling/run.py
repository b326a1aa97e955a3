"""Running a labeler over structures: worker processes, a journal, failures recorded.

The journal (one JSON line per structure, appended and flushed with fsync as
each label arrives) is the record of what was labeled: rerunning with the same
journal labels only the structures it does not hold. A line cut short by a
kill is dropped on reading and that structure is labeled again (its label was
never recorded).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nnp.errors import EXIT_RESUMABLE, NNPError
from nnp.labeling.labels import Label, _calculator, _Journal, label_one, read_journal  # noqa: F401 (re-exported)


class LabelingStopped(NNPError):
    """A labeling worker process died (killed, out of memory, a crash in the method's library):
    the labels so far are in the journal; rerunning continues (exit code 75)."""

    exit_code = EXIT_RESUMABLE

_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextmanager
def _one_thread_env():
    saved = {k: os.environ.get(k) for k in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------- the journal


def check_labeler(cfg: Mapping[str, Any]) -> None:
    """Refuse a labeler config that cannot work, before any other work (build it once)."""
    executor = str(cfg.get("executor", "local")).lower()
    if executor == "slurm":
        from nnp.labeling import slurm

        slurm.check(cfg)
    elif executor != "local":
        raise NNPError(f"labeler.executor={cfg.get('executor')!r}: choose local or slurm")
    _calculator(dict(cfg))


def label_structures(frames: Sequence, cfg: Mapping[str, Any], journal: str | os.PathLike, progress: bool = True) -> list[Label]:
    """Labels of ``frames`` (ASE Atoms), in order; those already in ``journal`` are not computed again.

    ``cfg`` is the labeler config; ``workers`` 0 labels in this process, N >= 1 in
    N processes (one OpenMP thread each); ``executor: slurm`` labels in a job array
    (:mod:`nnp.labeling.slurm`), whose tasks' finished labels also count as done.
    """
    from nnp.report import console

    cfg = dict(cfg)
    journal = Path(journal)
    done = read_journal(journal)
    slurm = str(cfg.get("executor", "local")).lower() == "slurm"
    if slurm:  # labels array tasks wrote before this command last stopped: into the journal, not computed again
        from nnp.labeling.slurm import merge_finished

        found = merge_finished(journal, done, len(frames))
        if found:
            log = _Journal(journal)
            try:
                for label in found:
                    log.add(label)
                    done[label.index] = label
            finally:
                log.close()
    todo = [k for k in range(len(frames)) if k not in done]
    if done:
        console.print(f"labels: {len(done)} of {len(frames)} already in {journal}; labeling the other {len(todo)}")
    workers = int(cfg.get("workers", 1))
    log = _Journal(journal)
    try:
        args = [(k, frames[k].numbers, frames[k].positions, frames[k].cell.array, frames[k].pbc) for k in todo]
        for label in _labels(cfg, args, workers, progress, journal if slurm else None):
            log.add(label)
            done[label.index] = label
    finally:
        log.close()
    return [done[k] for k in range(len(frames))]


def _labels(cfg: dict, args: list, workers: int, progress: bool, slurm_journal: Path | None = None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nnp.report import console

    name = f"labeling ({cfg.get('name')}{', ' + str(cfg['method']) if cfg.get('method') else ''})"
    with Progress(TextColumn(name), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  disable=not progress) as bar:
        task = bar.add_task("label", total=len(args))
        if slurm_journal is not None and args:
            from nnp.labeling import slurm

            for label in slurm.labels(cfg, args, slurm_journal):
                yield label
                bar.advance(task)
            return
        if workers <= 0 or len(args) <= 1:
            for a in args:
                yield label_one(cfg, *a)
                bar.advance(task)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        # spawn: the parent has torch's OpenMP threads running, which a forked child must not inherit
        with _one_thread_env():
            pool = ProcessPoolExecutor(max_workers=min(workers, len(args)), mp_context=multiprocessing.get_context("spawn"))
            try:
                futures = [pool.submit(label_one, cfg, *a) for a in args]
                for fut in as_completed(futures):
                    yield fut.result()
                    bar.advance(task)
            except BrokenProcessPool:
                raise LabelingStopped("a labeling worker process died (killed, out of memory or a crash in the "
                                      "labeler's library); the labels so far are kept: rerun the same command to continue") from None
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
