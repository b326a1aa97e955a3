"""Checkpoints that a kill at any moment cannot damage, and the choice of one to resume from.

:class:`AtomicCheckpointIO` is Lightning's checkpoint writer with the rule of
:mod:`nnp.outputs`: each checkpoint is written to a hidden temporary file in
the same folder, flushed to disk, then renamed onto its name. Before
``last.ckpt`` is replaced, the previous one is kept as ``last.ckpt.prev`` (a
hard link: no copy), so that even a checkpoint damaged after the fact (a
full disk on another writer, a copy cut short) leaves one to fall back on.

:func:`checkpoint_problem` tells a readable checkpoint from a damaged one
without unpickling it: a torch checkpoint is a zip archive, and a truncated
or corrupted one fails its central directory or a member's CRC.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning import Callback

from nnp.errors import NNPError
from nnp.outputs import atomic_path

#: The checkpoint every epoch ends with, and the previous one, kept as a fallback.
LAST = "last.ckpt"
PREVIOUS = "last.ckpt.prev"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file, fsync, rename; the previous ``last.ckpt`` kept as ``last.ckpt.prev``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        import torch

        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
            if path.name == LAST and path.exists():
                keep_previous(path)


def training_plugins() -> list:
    """Lightning plugins of every ``nnp train``: the atomic checkpoint writer, and under Slurm
    Lightning's SLURMEnvironment with its own requeue handler off (:mod:`nnp.training.signals`
    answers the requeue signal with a checkpoint between two batches)."""
    import warnings

    from lightning_fabric.plugins.environments import SLURMEnvironment

    # where Slurm is installed but nnp runs outside a job (a login node, a workstation)
    warnings.filterwarnings("ignore", message=".*`srun` command is available on your system but is not used.*")
    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


class RandomState(Callback):
    """Keeps the random number generators' state in the checkpoint and restores it on resume, so that
    a run continued from an end-of-epoch checkpoint draws the same data order (and dropout, if any) as
    one that was never stopped. Stored as plain lists and tensors (loads with ``weights_only=True``)."""

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np
        import torch

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import random

        import numpy as np
        import torch

        if "torch" in state:
            torch.set_rng_state(state["torch"])
        if "numpy" in state:
            kind, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        if "python" in state:
            version, internal, gauss = state["python"]
            random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def keep_previous(path: Path) -> None:
    """Make ``path.prev`` the current ``path`` (a hard link, or a copy where links are not allowed),
    itself atomically: a kill leaves the old fallback or the new one, never half of one."""
    import shutil

    prev = path.with_name(path.name + ".prev")
    with atomic_path(prev) as tmp:
        try:
            os.link(path, tmp)
        except OSError:
            shutil.copyfile(path, tmp)


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a checkpoint to resume from (one phrase), or None when it reads whole."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty file"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and checks its CRC
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"damaged or truncated ({err})"
    if bad is not None:
        return f"damaged (member {bad} fails its checksum)"
    return None


def checkpoint_position(path: str | os.PathLike) -> tuple[int, int]:
    """(epoch, global step) stored in a Lightning checkpoint (memory-mapped: the weights are not read)."""
    import torch

    try:  # tensors and plain containers only: nothing in a checkpoint file is executed
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 (torch raises several types for a foreign pickle)
        raise NNPError(f"{path}: not a checkpoint nnp can read safely ({str(err).splitlines()[0]})") from None
    return int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))


__all__ = ["LAST", "PREVIOUS", "AtomicCheckpointIO", "RandomState", "training_plugins", "checkpoint_position", "checkpoint_problem", "keep_previous"]
