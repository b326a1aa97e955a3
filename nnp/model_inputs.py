"""From a flat batch to a model's inputs: species indices, neighbor pairs and pair vectors.

:func:`pair_inputs` also makes the leaves that forces and stress differentiate
against (positions, and a homogeneous strain of atoms and cell), so that
:mod:`nnp.potential` takes every force and stress from the energy by autograd.
A committee calls it once and feeds the same inputs to every member.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from nnp import keys
from nnp.neighbors import Neighbors, neighbor_list


def pair_inputs(
    batch: Dict[str, torch.Tensor],
    species: torch.Tensor,
    cutoff: float,
    compute_forces: bool,
    compute_stress: bool,
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Neighbor pairs and the model inputs of a batch (grad mode already on).

    Returns ``(inputs, positions, strain)``: the model inputs (see
    :class:`~nnp.models.AtomisticModel`), the (N, 3) positions leaf that forces
    differentiate against, and the (M, 3, 3) strain leaf for stress (zeros, not
    requiring grad, without stress). A committee calls this once and feeds the
    same inputs to every member.
    """
    positions = batch[keys.R]
    idx_m = batch[keys.IDX_M]
    n_atoms = batch[keys.N_ATOMS]
    cell = batch[keys.CELL].to(positions.dtype)
    pbc = batch[keys.PBC]
    if keys.PAIRS in batch:  # neighbors come with the batch (a skin list reused between MD steps)
        nbrs = Neighbors(batch[keys.PAIRS], batch[keys.PAIR_IMAGES])
    else:
        nbrs = neighbor_list(positions, idx_m, n_atoms, cell, pbc, cutoff)
    if (compute_forces or compute_stress) and not positions.requires_grad:
        positions = positions.detach().requires_grad_(True)
    unstrained = positions
    strain = torch.zeros_like(cell)
    if compute_stress:
        # Differentiate with respect to a homogeneous strain of atoms and cell.
        strain.requires_grad_(True)
        positions = positions + torch.einsum("ni,nij->nj", positions, strain[idx_m])
        cell = cell + torch.matmul(cell, strain)
    i, j = nbrs.pairs[0], nbrs.pairs[1]
    vectors = positions[j] - positions[i]
    if bool(pbc.any()):  # images are all zero without periodic cells: skip (P, 3, 3) work
        vectors = vectors + torch.einsum("pk,pkl->pl", nbrs.images.to(positions.dtype), cell[idx_m[i]])
    inputs = {
        keys.SPECIES: species,
        keys.PAIRS: nbrs.pairs,
        keys.PAIR_VECTORS: vectors,
        keys.PAIR_DISTANCES: torch.linalg.norm(vectors, dim=-1),
        keys.IDX_M: idx_m,
        keys.N_ATOMS: n_atoms,
        # what energy terms (nnp.terms) read besides the pairs: the strained geometry
        keys.Z: batch[keys.Z],
        keys.R: positions,
        keys.CELL: cell,
        keys.PBC: pbc,
    }
    if keys.TOTAL_CHARGE in batch:
        inputs[keys.TOTAL_CHARGE] = batch[keys.TOTAL_CHARGE]
    return inputs, unstrained, strain


def species_lookup(table: torch.Tensor, atomic_numbers: torch.Tensor) -> torch.Tensor:
    """Atomic numbers (N,) -> species indices (N,) through ``table`` (119,), -1 = unknown.

    The TorchScript path (plain RuntimeErrors); eager code raises NNPError
    naming the elements through :meth:`Potential.species_of`.
    """
    z = atomic_numbers.to(table.device)
    if bool(((z < 1) | (z > 118)).any()):
        raise RuntimeError("atomic numbers out of range 1..118")
    s = table[z]
    if bool((s < 0).any()):
        raise RuntimeError("element not known to this model")
    return s
