"""The dataset interface and the factory that opens one from a data config."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


class AtomsDataset(Dataset):
    """Structures with labels in eV/Å, read on demand.

    Besides ``__getitem__`` (a sample for :func:`nnp.data.collate`), every
    dataset answers cheap whole-dataset questions without reading coordinates,
    which splits and statistics use:

    - :meth:`energies` (n,) eV (NaN where a structure has no energy),
    - :meth:`numbers_of` the atomic numbers of structure ``i``,
    - :meth:`groups` (n,) int32 code of each structure's molecule/formula
      label, for grouped splits; :meth:`group_names` the labels, so that
      ``group_names()[groups()[i]]`` is structure ``i``'s label. Codes are
      ranks of the sorted labels: the same file gives the same codes.
    - :attr:`has_forces`, :attr:`path`, :attr:`n_skipped` (NaN rows dropped).
    """

    path: str
    has_forces: bool
    has_energy: bool
    n_skipped: int = 0

    def energies(self) -> np.ndarray:
        raise NotImplementedError

    def numbers_of(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def groups(self) -> np.ndarray:
        raise NotImplementedError

    def group_names(self) -> list[str]:
        raise NotImplementedError

    def elements(self) -> list[int]:
        """Sorted atomic numbers present in the dataset."""
        seen: set[int] = set()
        for i in self._composition_representatives():
            seen.update(int(z) for z in self.numbers_of(i))
        return sorted(seen)

    def _composition_representatives(self) -> list[int]:
        return list(range(len(self)))

    def n_atoms(self) -> np.ndarray:
        return np.array([len(self.numbers_of(i)) for i in range(len(self))], dtype=np.int64)

    def composition_matrix(self, indices: np.ndarray, species: list[int]) -> np.ndarray:
        """(len(indices), S) count of each species (atomic numbers ``species``) per structure."""
        col = {z: k for k, z in enumerate(species)}
        out = np.zeros((len(indices), len(species)))
        for r, i in enumerate(indices):
            for z in self.numbers_of(int(i)):
                if int(z) in col:
                    out[r, col[int(z)]] += 1
        return out


def encode_labels(labels: np.ndarray | list[str]) -> tuple[np.ndarray, list[str]]:
    """Labels (n,) -> (int32 codes (n,), sorted unique labels)."""
    names, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    return codes.astype(np.int32).reshape(-1), [str(v) for v in names]
