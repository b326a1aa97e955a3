"""Whether a run continues: automatic resume from the run directory's checkpoints.

The run directory itself comes from :mod:`nnp.config.rundir` (the same
command finds the same folder). :func:`decide` makes the plan: a run
directory that holds a checkpoint of the same config continues from it (each
committee member from its own, finished members kept); a checkpoint of a
different config is refused, naming the keys that differ (those of
:data:`~nnp.config.rundir.MAY_CHANGE` may change). ``resume=PATH`` resumes from
that file as before; ``resume=false`` starts over, and only together with
``overwrite=true`` when there is something to discard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnp.config.rundir import MAY_CHANGE, comparable, data_fingerprint, run_name, slurm_job_name  # noqa: F401
from nnp.errors import NNPError
from nnp.training.checkpoints import LAST, PREVIOUS, checkpoint_position, checkpoint_problem

# ------------------------------------------------------------------ checkpoints


def checkpoint_files(fit_dir: Path) -> list[Path]:
    """Checkpoints a fit in ``fit_dir`` may continue from: ``checkpoints/last.ckpt``, its
    previous version, and Lightning's ``hpc_ckpt_N.ckpt`` (a Slurm requeue signal)."""
    found = [fit_dir / "checkpoints" / LAST, fit_dir / "checkpoints" / PREVIOUS]
    found += sorted(fit_dir.glob("hpc_ckpt_*.ckpt"))
    return [p for p in found if p.exists()]


@dataclass
class Checkpoint:
    """The checkpoint a fit continues from, and what was skipped on the way."""

    path: Path
    epoch: int
    step: int
    skipped: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.path} (epoch {self.epoch}, step {self.step})"


def latest_checkpoint(fit_dir: Path) -> Checkpoint | None:
    """The newest readable checkpoint of ``fit_dir``; a damaged newer one is passed over and
    named in ``skipped``. None when there is none; NNPError when all of them are damaged."""
    files = sorted(checkpoint_files(fit_dir), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    skipped = []
    for path in files:
        problem = checkpoint_problem(path)
        if problem is None:
            epoch, step = checkpoint_position(path)
            return Checkpoint(path, epoch, step, skipped)
        skipped.append(f"{path}: {problem}")
    if skipped:
        raise NNPError(f"no usable checkpoint to resume from: {'; '.join(skipped)}; "
                       "delete them (or add resume=false overwrite=true) to start over")
    return None


def explicit_checkpoint(path: str) -> Checkpoint:
    """``resume=PATH``: that file, which must read whole."""
    problem = checkpoint_problem(path)
    if problem is not None:
        raise NNPError(f"resume={path}: {problem}")
    epoch, step = checkpoint_position(path)
    return Checkpoint(Path(path), epoch, step)


# ------------------------------------------------------------------ the decision


def config_differences(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each key both configs have and that differs (keys only one of them
    has, e.g. a setting added by a newer nnp, are not a difference)."""
    old, cur = comparable(saved), comparable(new)
    return [f"{k}: {old[k]!r} -> {cur[k]!r}" for k in sorted(old.keys() & cur.keys()) if old[k] != cur[k]]


@dataclass
class Plan:
    """What ``nnp train`` does with a run directory: ``fresh`` (start over, ``clean`` first),
    ``auto`` (continue each fit from its newest checkpoint) or ``explicit`` (``resume=PATH``)."""

    mode: str
    explicit: Checkpoint | None = None
    clean: bool = False


def _has_work(run_dir: Path) -> bool:
    fits = [run_dir, *sorted((run_dir / "members").glob("*"))]
    return any(checkpoint_files(d) for d in fits)


def decide(cfg: dict[str, Any], run_dir: Path, model_path: Path) -> Plan:
    """The plan for ``cfg`` (resolved, plain) in ``run_dir``; NNPError (one line) when it is refused."""
    resume, overwrite = cfg.get("resume"), bool(cfg.get("overwrite"))
    size = int((cfg.get("ensemble") or {}).get("size", 1))
    if isinstance(resume, str) and resume:
        if size > 1:
            raise NNPError("resume=PATH with ensemble.size > 1: rerun the same command without resume= "
                           "(a committee continues member by member from its run directory)")
        return Plan("explicit", explicit=explicit_checkpoint(resume))
    work = _has_work(run_dir)
    if resume is False:
        if (work or model_path.exists()) and not overwrite:
            raise NNPError(f"resume=false in {run_dir}, which holds a run: add overwrite=true to discard it and start over")
        return Plan("fresh", clean=work)
    if model_path.exists() and not overwrite:
        raise NNPError(f"{model_path} already exists (this run has finished): to train it longer, raise "
                       "trainer.max_epochs and add overwrite=true; to start over, resume=false overwrite=true; "
                       "or choose another hydra.run.dir")
    if not work:
        if resume is True:
            raise NNPError(f"resume=true: no checkpoint in {run_dir} to continue from")
        return Plan("fresh")
    saved_path = run_dir / "config.yaml"
    if saved_path.is_file():
        from omegaconf import OmegaConf

        saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=False)
        diff = config_differences(saved, cfg)
        if diff:
            raise NNPError(f"{run_dir} holds a checkpoint of another config ({'; '.join(diff)}): choose another "
                           "hydra.run.dir, or resume=false overwrite=true to start over")
    return Plan("auto")


def resume_point(plan: Plan, fit_dir: Path) -> str | None:
    """The checkpoint one fit (the run, or a committee member's folder) starts from, said on the console."""
    from nnp.report import console

    if plan.mode == "explicit":
        ckpt = plan.explicit
    elif plan.mode == "auto":
        ckpt = latest_checkpoint(fit_dir)
    else:
        return None
    if ckpt is None:
        return None
    for note in ckpt.skipped:
        console.print(f"[yellow]note:[/] passed over a damaged checkpoint: {note}")
    console.print(f"[bold]resuming[/] from {ckpt.describe()}")
    import warnings

    # Lightning's words for a resumed run, said above in ours (a mid-epoch checkpoint: README, Resume)
    for text in ("exists and is not empty", "ended before the epoch ended"):
        warnings.filterwarnings("ignore", message=f".*{text}.*")
    keep_metrics(fit_dir)
    return str(ckpt.path)


def keep_metrics(fit_dir: Path) -> None:
    """Lightning's CSV logger deletes ``csv/metrics.csv`` when it starts in a folder that has one:
    the metrics of the earlier part(s) are kept as ``csv/metrics.part1.csv``, ``part2``, ... (rank 0)."""
    from pytorch_lightning.utilities import rank_zero_only

    current = fit_dir / "csv" / "metrics.csv"
    if getattr(rank_zero_only, "rank", 0) != 0 or not current.is_file():
        return
    n = 1
    while (fit_dir / "csv" / f"metrics.part{n}.csv").exists():
        n += 1
    current.rename(fit_dir / "csv" / f"metrics.part{n}.csv")


def finished_member(plan: Plan, model_file: Path):
    """A committee member's saved model when the run continues and that member had finished, else None."""
    if plan.mode != "auto" or not model_file.is_file():
        return None
    from nnp.potential import Potential

    return Potential.load(model_file)


def clean_run(run_dir: Path) -> None:
    """Remove the checkpoints (and committee members) of an earlier run before starting over (rank 0)."""
    import shutil

    for fit_dir in [run_dir, *sorted((run_dir / "members").glob("*"))]:
        for path in checkpoint_files(fit_dir):
            path.unlink(missing_ok=True)
        for path in (fit_dir / "checkpoints").glob("*.ckpt"):
            path.unlink(missing_ok=True)
    shutil.rmtree(run_dir / "members", ignore_errors=True)


__all__ = [
    "MAY_CHANGE", "Checkpoint", "Plan", "checkpoint_files", "clean_run", "comparable", "config_differences",
    "data_fingerprint", "decide", "explicit_checkpoint", "finished_member", "resume_point", "latest_checkpoint", "run_name",
    "slurm_job_name",
]
