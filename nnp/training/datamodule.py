"""Lightning data module over a dataset and its saved split."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Subset

from nnp.data.collate import collate
from nnp.data.datasets import AtomsDataset
from nnp.data.pair_cache import PairCachedDataset


class AtomsDataModule(pl.LightningDataModule):
    def __init__(
        self,
        dataset: AtomsDataset,
        split: dict[str, np.ndarray],
        batch_size: int = 32,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        pair_cutoff: float | None = None,
        pair_cache_bytes: int = 256 << 20,
    ):
        super().__init__()
        self.dataset = dataset
        self.split = split
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        # pair_cutoff (Å, the model's): each structure's neighbor pairs found once and kept across
        # epochs (nnp.data.pair_cache), instead of searched in every step; None: searched every step
        self.source = dataset if pair_cutoff is None else PairCachedDataset(dataset, pair_cutoff, pair_cache_bytes)

    def _loader(self, part: str, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            # numpy indices: a list of millions of Python ints would be copied into every worker
            Subset(self.source, self.split[part]),
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)
