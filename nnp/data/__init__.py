"""Data: files -> datasets -> flat batches.

Readers convert units once, at load time, to eV and Å (see :mod:`nnp.units`).
"""

from nnp.data.collate import collate
from nnp.data.datasets import AtomsDataset
from nnp.data.open import open_dataset

__all__ = ["AtomsDataset", "collate", "open_dataset"]
