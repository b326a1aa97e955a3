"""Reading input structures (predict, md) with the checks every command shares."""

from __future__ import annotations

import numpy as np

from nnp.data.ase_files import read_structures
from nnp.data.checks import check_min_distance
from nnp.errors import NNPError
from nnp.potential import Potential


def read_inputs(path: str, potential: Potential, min_distance: float = 0.5, index: str = ":"):
    """Structures of ``path`` (any ASE format), checked against the model.

    Raises NNPError naming the file and structure for unknown elements,
    non-finite coordinates or overlapping atoms.
    """
    import torch

    frames = read_structures(path)
    if index != ":":
        try:
            import ase.io

            sel = ase.io.read(path, index=index)
        except Exception as err:
            raise NNPError(f"{path}: cannot select structures {index!r} ({err})") from None
        frames = sel if isinstance(sel, list) else [sel]
    for k, atoms in enumerate(frames):
        where = f"{path}: structure {k}"
        if len(atoms) == 0:
            raise NNPError(f"{where}: no atoms")
        if not np.isfinite(atoms.positions).all():
            raise NNPError(f"{where}: NaN or infinite coordinates")
        try:
            potential.species_of(torch.as_tensor(atoms.numbers))
        except NNPError as err:
            raise NNPError(f"{where}: {err}") from None
        check_min_distance(atoms.positions, min_distance, where)
    return frames
