"""Data: files -> datasets -> flat batches.

Readers convert units once, at load time, to eV and Å (see :mod:`nnp.units`).
``open_dataset`` (every reader, h5py) is imported on first use (PEP 562), so that
``nnp predict`` on extxyz does not import h5py and the dataset readers at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nnp.data.collate import collate
from nnp.data.datasets import AtomsDataset

if TYPE_CHECKING:
    from nnp.data.open import open_dataset

__all__ = ["AtomsDataset", "collate", "open_dataset"]


def __getattr__(name: str):
    if name == "open_dataset":
        from nnp.data.open import open_dataset

        return open_dataset
    raise AttributeError(f"module 'nnp.data' has no attribute {name!r}")
