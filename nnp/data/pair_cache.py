"""Each training structure's neighbor pairs, computed once and kept across epochs.

A training structure's pairs depend only on its positions, cell, periodicity
and the model's cutoff, none of which change between epochs, yet without a
cache the potential searches them in every step (:func:`nnp.neighbors.neighbor_list`).
:class:`PairCachedDataset` wraps a dataset: the first time a structure is
read it finds its pairs (both directions, integer cell images: the contract
of :mod:`nnp.neighbors`) and keeps them; :func:`nnp.data.collate.collate`
concatenates them into the batch keys ``keys.PAIRS`` / ``keys.PAIR_IMAGES``,
and :func:`nnp.potential.pair_inputs` then uses them instead of searching.

Only indices and images are cached: pair vectors are still computed from the
positions in every step (so forces, which differentiate through them, are
unchanged), and under the homogeneous strain that stress differentiates
against, ``r_ij = R'_j - R'_i + S C'`` with the same indices and images (the
strain is zero where it is evaluated, so the pair set is the one of the
unstrained structure, as without the cache).

Memory, per cached pair: 2 x int16 local atom indices (4 B; int32 above
32,767 atoms) and, for periodic structures only, 3 x int8 images (3 B; int32
when an image exceeds 127); plus about 250 B of Python/numpy overhead per
structure. The cache stops growing at ``max_bytes`` (later structures are
searched per step as before). With ``num_workers > 0`` each data worker holds
its own cache (workers are persistent, so it lives across epochs).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from nnp import keys
from nnp.neighbors import BRUTE_FORCE_MAX_ATOMS, neighbor_list

# numpy arrays + dict entry + tuple per cached structure (bytes, measured with sys.getsizeof)
ENTRY_OVERHEAD_BYTES = 250


def _smallest_int(values: np.ndarray, wide: type = np.int32) -> np.ndarray:
    """``values`` as int8/int16 when they fit (memory), else ``wide``."""
    if values.size == 0:
        return values.astype(np.int8)
    lo, hi = int(values.min()), int(values.max())
    for kind in (np.int8, np.int16):
        info = np.iinfo(kind)
        if info.min <= lo and hi <= info.max:
            return values.astype(kind)
    return values.astype(wide)


def structure_pairs(sample: dict[str, Any], cutoff: float) -> tuple[np.ndarray, np.ndarray | None]:
    """One structure's pairs closer than ``cutoff`` (Å), in compact form.

    Returns ``(pairs, images)``: (2, P) local atom indices (int16/int32) and
    (P, 3) integer cell images (int8/int32), or ``None`` when all images are
    zero (molecules). Same pairs as :func:`nnp.neighbors.neighbor_list`.
    """
    xyz = np.asarray(sample[keys.R], dtype=np.float64)
    n = xyz.shape[0]
    periodic = bool(np.asarray(sample[keys.PBC]).any())
    if not periodic and n <= BRUTE_FORCE_MAX_ATOMS:
        # a molecule: its distance matrix in numpy (~20 us for 21 atoms, 100x less than a
        # torch call per structure); row-major order = the order of the batched brute force
        d2 = np.square(xyz[None, :, :] - xyz[:, None, :]).sum(-1)
        np.fill_diagonal(d2, np.inf)
        return np.stack(np.nonzero(d2 < cutoff * cutoff)).astype(np.int16), None
    positions = torch.tensor(xyz)
    cell = torch.tensor(np.asarray(sample[keys.CELL], dtype=np.float64)).reshape(1, 3, 3)
    pbc = torch.tensor(np.asarray(sample[keys.PBC], dtype=bool)).reshape(1, 3)
    nbrs = neighbor_list(positions, torch.zeros(n, dtype=torch.long), torch.tensor([n]), cell, pbc, cutoff)
    pairs = nbrs.pairs.numpy()
    pairs = pairs.astype(np.int16) if n <= np.iinfo(np.int16).max else pairs.astype(np.int32)
    images = nbrs.images.numpy()
    if not images.any():
        return pairs, None
    return pairs, _smallest_int(images)


class PairCachedDataset(Dataset):
    """``dataset`` whose samples also carry their neighbor pairs at ``cutoff`` (Å), found once per structure.

    Sample keys added: ``keys.PAIRS`` (2, P) local indices and, for periodic
    structures, ``keys.PAIR_IMAGES`` (P, 3). ``max_bytes`` bounds the cache.
    """

    def __init__(self, dataset: Dataset, cutoff: float, max_bytes: int = 256 << 20):
        self.dataset = dataset
        self.max_bytes = int(max_bytes)
        self.cutoff = float(cutoff)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self.nbytes = 0  # bytes held by the cached arrays + ENTRY_OVERHEAD_BYTES per structure
        self.hits = 0
        self.misses = 0

    def set_cutoff(self, cutoff: float) -> None:
        """Use pairs at ``cutoff`` (Å) from now on: a different cutoff empties the cache."""
        if float(cutoff) != self.cutoff:
            self._cache.clear()
            self.nbytes = 0
            self.cutoff = float(cutoff)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        key = int(index)
        entry = self._cache.get(key)
        if entry is None:
            self.misses += 1
            entry = structure_pairs(sample, self.cutoff)
            size = entry[0].nbytes + (0 if entry[1] is None else entry[1].nbytes) + ENTRY_OVERHEAD_BYTES
            if self.nbytes + size <= self.max_bytes:
                self._cache[key] = entry
                self.nbytes += size
        else:
            self.hits += 1
        sample[keys.PAIRS] = entry[0]
        if entry[1] is not None:
            sample[keys.PAIR_IMAGES] = entry[1]
        return sample

    def __getattr__(self, name: str):
        # the wrapped dataset's whole-dataset questions (energies, n_atoms, ...) stay available
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def collate_pairs(samples, n_atoms: np.ndarray) -> dict[str, torch.Tensor]:
    """Cached pairs of ``samples`` -> batch ``{PAIRS: (2, P), PAIR_IMAGES: (P, 3)}`` int64, global atom indices;
    ``{}`` unless every sample carries pairs (then the potential searches them itself)."""
    if not samples or not all(keys.PAIRS in s for s in samples):
        return {}
    counts = [s[keys.PAIRS].shape[1] for s in samples]
    # one concatenation and one add (not one per sample): this replaces a ~2 ms search per batch
    pairs = np.concatenate([s[keys.PAIRS] for s in samples], axis=1).astype(np.int64)
    pairs += np.repeat(np.cumsum(n_atoms) - n_atoms, counts)
    images = np.zeros((pairs.shape[1], 3), dtype=np.int64)
    if any(keys.PAIR_IMAGES in s for s in samples):
        ends = np.cumsum(counts)
        for s, end, count in zip(samples, ends, counts):
            if keys.PAIR_IMAGES in s:
                images[end - count:end] = s[keys.PAIR_IMAGES]
    return {keys.PAIRS: torch.from_numpy(pairs), keys.PAIR_IMAGES: torch.from_numpy(images)}
