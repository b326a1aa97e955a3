"""Stopping a training run on a signal without losing it.

:class:`GracefulStop` is a Lightning callback that turns signals into a
checkpoint and a clean stop:

- SIGTERM (a scheduler ending the job, ``kill``) and SIGINT (the first Ctrl-C):
  the signal handler only sets a flag; at the end of the training batch
  running at that moment, every rank agrees (one all-reduce), ``last.ckpt`` is
  written (atomically, :mod:`nnp.training.checkpoints`) and the fit stops with
  :class:`TrainingStopped`; ``nnp train`` then exits 75
  (:data:`nnp.errors.EXIT_RESUMABLE`). A second Ctrl-C stops at once (exit 130).
- under Slurm, the requeue signal (SIGUSR1, sent by ``#SBATCH --signal=USR1@120``
  before the time limit, or ``scancel --signal=USR1``): the same checkpoint,
  then rank 0 runs ``scontrol requeue <job>``; the requeued job (same job id,
  so the same run directory) resumes from it by itself.

Lightning's own Slurm handler saves its checkpoint inside the signal handler,
that is at any point of a training step (between backward and the optimizer
step, say), and leaves ``hpc_ckpt_N.ckpt`` files that are never removed; here
the checkpoint is always taken between two batches, into ``last.ckpt``.
Lightning's SLURMEnvironment is still used (ranks, nodes, addresses), with its
``auto_requeue`` off so that only this handler answers the signal.

Between the signal and the checkpoint, the batch in progress finishes; during
validation, the checkpoint waits for the next training batch (a signal during
the last validation lets the run finish normally). The ranks agree at batch
ends only: an extra collective in an epoch-end hook would meet Lightning's own
epoch-end collectives in a different order on different ranks.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytorch_lightning as pl

from nnp.errors import EXIT_INTERRUPTED, EXIT_RESUMABLE, NNPError


class TrainingStopped(NNPError):
    """The fit stopped on a signal; ``exit_code`` 75 with a checkpoint, 130 without."""

    exit_code = EXIT_RESUMABLE


def in_slurm_batch() -> bool:
    """True inside a Slurm job (batch or srun step) that Lightning treats as one."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


class GracefulStop(pl.Callback):
    """Checkpoint and stop at the next batch end after SIGTERM/SIGINT (and, under Slurm, SIGUSR1 + requeue)."""

    def __init__(self, ckpt_path: str | os.PathLike, slurm: bool = False):
        self.ckpt_path = Path(ckpt_path)
        self.slurm = slurm
        self.received: int | None = None

    # ---------------------------------------------------------------- handlers

    def signals(self) -> list[int]:
        sigs = [signal.SIGTERM, signal.SIGINT]
        if self.slurm:
            sigs.append(signal.SIGUSR1)
        return sigs

    def install(self) -> None:
        """Install the handlers (main thread only). Called at ``on_train_start``, after Lightning
        registered its own: these replace Lightning's SIGTERM handler (which would stop the fit at
        the epoch's end, or in validation, without a checkpoint), and Lightning's teardown puts
        back the handlers it found before the fit."""
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.signals():
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            # a second Ctrl-C: stop now, without a checkpoint
            raise TrainingStopped("interrupted twice: stopped without a checkpoint") from None
        self.received = signum

    # ---------------------------------------------------------------- Lightning

    def _agreed(self, trainer: pl.Trainer) -> bool:
        flag = self.received is not None
        if trainer.world_size > 1:  # a signal may reach one rank only: all must save and stop together
            flag = bool(trainer.strategy.reduce_boolean_decision(flag, all=False))
        return flag

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        self.install()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._agreed(trainer):
            self._stop(trainer)

    def _stop(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.ckpt_path)
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        signum = self.received or signal.SIGTERM
        name = signal.Signals(signum).name
        if self.slurm and signum == signal.SIGUSR1:
            requeued = requeue() if trainer.is_global_zero else None
            note = f"; Slurm job requeued ({requeued})" if requeued else ""
            raise TrainingStopped(f"{name} at {where}: checkpoint {self.ckpt_path}{note}; the requeued job continues from it")
        raise TrainingStopped(f"{name} at {where}: checkpoint {self.ckpt_path}; rerun the same command to continue")


def requeue() -> str:
    """``scontrol requeue`` this job (an array task by its array id); what happened, in words."""
    from nnp.config.rundir import slurm_job_name

    job = slurm_job_name()
    if not job:
        return "no Slurm job id"
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"scontrol requeue {job} failed: {err}"
    if done.returncode != 0:
        return f"scontrol requeue {job} failed: {(done.stderr or done.stdout).strip()}"
    return f"job {job}"


__all__ = ["EXIT_INTERRUPTED", "GracefulStop", "TrainingStopped", "in_slurm_batch", "requeue"]
