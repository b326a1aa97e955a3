"""Neighbor lists reused between MD steps (Verlet skin).

The list is built at ``cutoff + skin`` and kept while no atom has moved more
than ``skin / 2`` since the build (then every pair now closer than the cutoff
was closer than cutoff + skin at the build), and while the number of atoms,
the cell and the periodicity are unchanged. Each step only filters the kept
pairs to those closer than the cutoff, O(P), instead of binning all atoms
again: the model sees the same pairs as with a fresh list every step (their
order may differ: energies agree to float rounding).

Lists are built with ``vesin`` (a maintained C++ neighbor list) when it is
installed and the cell is periodic in all or no directions: it measured 2.5x
(aspirin) to 9x (2,000-atom Cu cell) faster than :func:`nnp.neighbors.neighbor_list`
here (benchmarks/skin_bench.py); otherwise with nnp's own.

Used by :class:`nnp.calculator.NNPCalculator` (``skin=``, ``md.skin`` in
``nnp md``); the pairs reach the potential through the batch keys
``keys.PAIRS`` and ``keys.PAIR_IMAGES`` (:func:`nnp.potential.pair_inputs`).
"""

from __future__ import annotations

import torch

from nnp.neighbors import Neighbors, neighbor_list


class SkinNeighborList:
    """Pairs within ``cutoff`` (Å) of one structure, from a list at ``cutoff + skin`` rebuilt only when needed."""

    def __init__(self, cutoff: float, skin: float):
        if skin < 0:
            raise ValueError(f"skin must be >= 0 Å, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.builds = 0  # how many times the list was built (for logs and benchmarks)
        self.calls = 0
        self._reference: torch.Tensor | None = None
        self._cell: torch.Tensor | None = None
        self._pbc: torch.Tensor | None = None
        self._wide: Neighbors | None = None
        self._shifts: torch.Tensor | None = None

    def _stale(self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> bool:
        ref = self._reference
        if ref is None or ref.shape != positions.shape or ref.dtype != positions.dtype:
            return True
        if not (torch.equal(cell, self._cell) and torch.equal(pbc, self._pbc)):
            return True
        moved = (positions - ref).pow(2).sum(-1).max() if positions.shape[0] else torch.zeros(())
        return bool(moved > (0.5 * self.skin) ** 2)

    def __call__(self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> Neighbors:
        """positions (N, 3) Å, cell (3, 3) Å, pbc (3,) -> both directions of every pair closer than the cutoff."""
        self.calls += 1
        positions = positions.detach()
        if self._stale(positions, cell, pbc):
            self._wide = build_neighbors(positions, cell, pbc, self.cutoff + self.skin)
            self._shifts = self._wide.images.to(positions.dtype) @ cell  # (P, 3) Å, fixed while the cell is
            self._reference = positions.clone()
            self._cell = cell.clone()
            self._pbc = pbc.clone()
            self.builds += 1
        wide = self._wide
        vectors = positions.index_select(0, wide.pairs[1]) - positions.index_select(0, wide.pairs[0]) + self._shifts
        keep = torch.nonzero(vectors.pow(2).sum(-1) < self.cutoff * self.cutoff).flatten()
        return Neighbors(wide.pairs[:, keep], wide.images[keep])


def build_neighbors(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float) -> Neighbors:
    """Both directions of every pair of one structure closer than ``cutoff``: vesin when it is
    installed and the structure is periodic in all or no directions, else nnp's cell list."""
    periodic = bool(pbc.all())
    if periodic or not bool(pbc.any()):
        try:
            import vesin
        except ImportError:
            vesin = None
        if vesin is not None:
            box = cell.detach().cpu().double().numpy() if periodic else torch.zeros(3, 3, dtype=torch.float64).numpy()
            points = positions.detach().cpu().double().numpy()
            i, j, shifts = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(points, box, periodic, quantities="ijS")
            device = positions.device
            pairs = torch.stack([torch.as_tensor(i, dtype=torch.long), torch.as_tensor(j, dtype=torch.long)]).to(device)
            return Neighbors(pairs, torch.as_tensor(shifts, dtype=torch.long).reshape(-1, 3).to(device))
    n = positions.shape[0]
    idx_m = torch.zeros(n, dtype=torch.long, device=positions.device)
    n_atoms = torch.tensor([n], device=positions.device)
    return neighbor_list(positions, idx_m, n_atoms, cell[None], pbc[None], cutoff)
