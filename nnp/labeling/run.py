"""Running a labeler over structures: worker processes, a journal, failures recorded.

The journal (one JSON line per structure, appended and flushed with fsync as
each label arrives) is the record of what was labeled: rerunning with the same
journal labels only the structures it does not hold. A line cut short by a
kill is dropped on reading and that structure is labeled again (its label was
never recorded).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnp.errors import EXIT_RESUMABLE, NNPError


class LabelingStopped(NNPError):
    """A labeling worker process died (killed, out of memory, a crash in the method's library):
    the labels so far are in the journal; rerunning continues (exit code 75)."""

    exit_code = EXIT_RESUMABLE

#: Results kept beside energy and forces when a labeler provides them (tblite: charges e, dipole e·Å).
_EXTRA = ("charges", "dipole")


@dataclass
class Label:
    """The label of structure ``index``: energy eV, forces (n, 3) eV/Å, or ``reason`` it failed."""

    index: int
    energy: float | None = None
    forces: np.ndarray | None = None
    reason: str | None = None
    extra: dict | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def as_json(self) -> dict[str, Any]:
        if not self.ok:
            return {"index": self.index, "ok": False, "reason": self.reason}
        out = {"index": self.index, "ok": True, "energy": self.energy,
               "forces": None if self.forces is None else np.asarray(self.forces).tolist()}
        if self.extra:
            out["extra"] = {k: np.asarray(v).tolist() for k, v in self.extra.items()}
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Label:
        if not d.get("ok"):
            return cls(int(d["index"]), reason=str(d.get("reason")))
        forces = d.get("forces")
        return cls(int(d["index"]), float(d["energy"]), None if forces is None else np.asarray(forces, dtype=np.float64),
                   extra=d.get("extra"))


# ------------------------------------------------------------------ one label

_CALCULATORS: dict[str, Any] = {}  # per process: building a calculator can cost more than a label


def _calculator(cfg: Mapping[str, Any]):
    from nnp.registry import LABELERS

    key = json.dumps(cfg, sort_keys=True, default=str)
    calc = _CALCULATORS.get(key)
    if calc is None:
        calc = _CALCULATORS[key] = LABELERS.get(cfg.get("name"))(cfg)
    return calc


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"


def label_one(cfg: Mapping[str, Any], index: int, numbers, positions, cell, pbc) -> Label:
    """Energy and forces of one structure; any failure (an exception, no SCF convergence,
    a non-finite result) is a Label with its ``reason``, never an exception."""
    from ase import Atoms

    calc = _calculator(cfg)  # a labeler that cannot be built is the user's error: raised, not recorded
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    atoms.calc = calc
    try:
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), dtype=np.float64)
        extra = {k: np.asarray(calc.results[k]) for k in _EXTRA if k in getattr(calc, "results", {})}
    except Exception as err:  # the method failed on this structure (SCF, a calculator's own error)
        return Label(index, reason=_reason(err))
    if not math.isfinite(energy):
        return Label(index, reason=f"non-finite energy ({energy})")
    if forces.shape != (len(numbers), 3) or not np.isfinite(forces).all():
        return Label(index, reason="non-finite or misshaped forces")
    return Label(index, energy, forces, extra=extra or None)


#: One thread per labeling process, set in the environment the workers start with (before numpy or the
#: labeler's library loads). Measured, aspirin GFN2-xTB: 13 ms on 1 thread, 48-240 ms with the default
#: threads on a loaded machine.
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


def read_journal(path: str | os.PathLike) -> dict[int, Label]:
    """The labels recorded in a journal (missing: none). A last line cut short by a kill is dropped."""
    path = Path(path)
    if not path.exists():
        return {}
    out: dict[int, Label] = {}
    with open(path, "rb") as fh:
        data = fh.read()
    good_end = data.rfind(b"\n") + 1
    if good_end < len(data):  # a partial last line: cut it, so that appends start on a fresh line
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    for line in data[:good_end].splitlines():
        try:
            label = Label.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError):
            raise NNPError(f"{path}: a line is not a label record; the journal is damaged (move it away to relabel)") from None
        out[label.index] = label
    return out


class _Journal:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a")

    def add(self, label: Label) -> None:
        self._fh.write(json.dumps(label.as_json()) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


# ------------------------------------------------------------------- the run


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
