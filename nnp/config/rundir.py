"""The run directory rule: the default ``hydra.run.dir`` of ``nnp train`` (resolver ``${nnp_run_dir:}``).

- under Slurm, ``runs/slurm-<job id>`` (``runs/slurm-<array job id>_<task id>``
  for an array task): a requeued job keeps its job id, so it finds its run;
- elsewhere, ``runs/<model>-<hash>``: the hash of the resolved config without
  the keys that may change between a run and its continuation
  (:data:`MAY_CHANGE`: output and data paths, lengths of the run, logging),
  with a fingerprint of the data file's content (its size and the SHA-1 of its
  first and last MiB) in place of its path. The same command run again finds
  the same folder (and :mod:`nnp.training.resume` continues it); another
  config gets another folder.

Light on purpose (no torch, no Lightning): the CLI registers the resolver before every command.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

#: Keys that may differ between a run and its continuation (a longer run, another file name,
#: the same data at another path, more loader workers, quieter or louder output).
MAY_CHANGE = (
    "trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.min_epochs",
    "trainer.log_every_n_steps", "trainer.enable_progress_bar",
    "resume", "overwrite", "verbose", "evaluate_test", "model_file",
    "data.path", "data.split_file", "data.num_workers",
)
#: Bytes hashed from each end of the data file for its fingerprint.
_FINGERPRINT_BYTES = 1 << 20


# ------------------------------------------------------------------ run directory


def slurm_job_name() -> str | None:
    """``<job id>`` or ``<array job id>_<task id>`` of the Slurm job around us, or None."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def data_fingerprint(path: str | os.PathLike) -> str:
    """Size and SHA-1 of the first and last MiB of a file: cheap on a 5 GB file, and the same for a copy."""
    path = Path(path)
    try:
        size = path.stat().st_size
        h = hashlib.sha1(str(size).encode())
        with open(path, "rb") as fh:
            h.update(fh.read(_FINGERPRINT_BYTES))
            if size > _FINGERPRINT_BYTES:
                fh.seek(max(_FINGERPRINT_BYTES, size - _FINGERPRINT_BYTES))
                h.update(fh.read(_FINGERPRINT_BYTES))
    except OSError:
        return f"unreadable:{path}"  # the data check reports the file; the name only needs to be stable
    return h.hexdigest()


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        if node:
            return out
    return {prefix[:-1]: node}


def comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """The flat ``key: value`` view of a resolved config that decides whether a run may continue."""
    flat = _flatten({k: v for k, v in cfg.items() if k != "hydra"})
    return {k: v for k, v in flat.items() if k not in MAY_CHANGE}


def run_name(cfg: dict[str, Any]) -> str:
    """The default run folder's name for a resolved config (see the module docstring)."""
    job = slurm_job_name()
    if job:
        return f"slurm-{job}"
    key = comparable(cfg)
    key["data.fingerprint"] = data_fingerprint((cfg.get("data") or {}).get("path") or "")
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    model = str((cfg.get("model") or {}).get("name") or "run")
    return f"{model}-{digest}"


def run_name_resolver(*, _root_) -> str:
    """OmegaConf resolver ``${nnp_run_dir:}``: :func:`run_name` of the config it sits in."""
    from omegaconf import OmegaConf

    cfg = {k: OmegaConf.to_container(_root_[k], resolve=True) if OmegaConf.is_config(_root_[k]) else _root_[k]
           for k in _root_ if k != "hydra"}
    return run_name(cfg)


__all__ = ["MAY_CHANGE", "comparable", "data_fingerprint", "run_name", "run_name_resolver", "slurm_job_name"]
