"""The model file: its format name and version, and safe reading and checking of its entries.

A model file is a plain dict of tensors and built-in types written by
:meth:`nnp.potential.Potential.to_dict` (a committee's by :mod:`nnp.committee`),
read with ``torch.load(weights_only=True)``: nothing in it is unpickled as code.
Every entry is checked before use, so a damaged or hand-edited file gives one
line naming the file and the entry.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nnp.errors import NNPError

FORMAT = "nnp.potential"
#: Model file format versions (every change to the file bumps it; tests/data keeps
#: one file of each earlier version and loads it):
#: 1  single potential
#: 2  ``kind`` ("potential" | "committee"); committee files hold ``members`` (a list
#:    of version-2 potential dicts) and ``calibration`` (std scale factors)
#: 3  ``terms``: energy terms (:mod:`nnp.terms`), name -> settings (plain values), and
#:    ``terms_state_dict``: their weights (the coulomb charge head); both empty without terms
FORMAT_VERSION = 3


# Entries every single-model payload has, with their types (checked before use,
# so a damaged or hand-edited file gives one line, not a traceback).
POTENTIAL_ENTRIES: dict[str, type | tuple[type, ...]] = {
    "model_config": dict,
    "species": list,
    "atomref": torch.Tensor,
    "energy_scale": (float, int),
    "state_dict": dict,
}


def check_entries(payload: Mapping[str, Any], entries: Mapping[str, type | tuple[type, ...]], source: str) -> None:
    """Raise one NNPError naming ``source`` and the first missing or wrongly typed entry."""
    for key, types in entries.items():
        if key not in payload:
            raise NNPError(f"{source}: model file has no {key!r} entry")
        if not isinstance(payload[key], types) or isinstance(payload[key], bool):
            raise NNPError(f"{source}: model file entry {key!r} has the wrong type ({type(payload[key]).__name__})")
    species = payload.get("species")
    if isinstance(species, list) and not (
        species
        and all(isinstance(z, int) and not isinstance(z, bool) and 1 <= z <= 118 for z in species)
        and all(a < b for a, b in zip(species, species[1:]))
    ):
        raise NNPError(f"{source}: model file entry 'species' must list distinct atomic numbers 1..118 in increasing order")
    atomref = payload.get("atomref")
    if isinstance(atomref, torch.Tensor) and isinstance(species, list) and atomref.shape != (len(species),):
        raise NNPError(f"{source}: model file entry 'atomref' has shape {tuple(atomref.shape)}, expected ({len(species)},)")
    if isinstance(atomref, torch.Tensor) and not (atomref.is_floating_point() and torch.isfinite(atomref).all()):
        raise NNPError(f"{source}: model file entry 'atomref' must hold finite floating-point numbers")
    scale = payload.get("energy_scale")
    if isinstance(scale, (int, float)) and not (math.isfinite(scale) and scale > 0):
        raise NNPError(f"{source}: model file entry 'energy_scale' must be a positive number, got {scale!r}")


def read_model_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a model file's payload safely (``weights_only=True``) and check its header."""
    path = Path(path)
    if not path.is_file():
        raise NNPError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise NNPError(f"{path}: not a readable nnp model file ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NNPError(f"{path}: not an nnp model file (a Lightning checkpoint? use the run's model.pt)")
    version = payload.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise NNPError(f"{path}: model file has an invalid format version {short_repr(version)}")
    if version > FORMAT_VERSION:
        raise NNPError(f"{path}: model format version {version} is newer than this nnp (reads up to {FORMAT_VERSION})")
    kind = payload.get("kind", "potential")  # version 1 files are single potentials
    if not isinstance(kind, str) or kind not in ("potential", "committee"):
        raise NNPError(f"{path}: unknown model kind {short_repr(kind)}")
    return payload


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr`` on one line, shortened (for values read from a file: a tensor's repr spans lines)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def plain(obj: Any) -> Any:
    """Convert OmegaConf containers/tuples to plain dict/list for safe saving."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "items"):
        return {str(k): plain(v) for k, v in obj.items()}
    if hasattr(obj, "__iter__"):
        return [plain(v) for v in obj]
    return str(obj)
