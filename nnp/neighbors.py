"""Neighbor pairs within a cutoff, for a flat batch of structures.

Contract: :func:`neighbor_list` returns :class:`Neighbors` with *both*
directions of every pair, and the integer cell image of the neighbor, so that

    r_ij = R[j] - R[i] + images[p] @ cell[m]        (Å)

Images are returned as integers (not Cartesian shifts) so the potential can
build Cartesian shifts differentiably from the cell (needed for stress).

Two backends, one contract:
- ``brute``: all intra-structure pairs at once, vectorized over the batch.
  Fastest for batches of small molecules (the training case).
- ``cells``: binning into cubes of edge >= cutoff, O(N); used for large or
  periodic structures. Periodic images are handled by wrapping atoms into the
  cell and adding ghost copies within the cutoff of the box.
Both are cross-checked against each other and a naive reference in the tests.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Neighbors(NamedTuple):
    pairs: torch.Tensor  # (2, P) int64: center i, neighbor j (global atom indices)
    images: torch.Tensor  # (P, 3) int64: cell image of j


# Structures with at most this many atoms use the batched brute-force path
# (P_candidates = sum n_m^2); larger ones use cell lists.
BRUTE_FORCE_MAX_ATOMS = 256


def _brute_force_batch(
    positions: torch.Tensor, idx_m: torch.Tensor, n_atoms: torch.Tensor, cutoff: float
) -> torch.Tensor:
    """All pairs i != j inside each structure with |r_ij| < cutoff -> (2, P)."""
    device = positions.device
    n_atoms = n_atoms.to(device)
    offsets = torch.cumsum(n_atoms, 0) - n_atoms  # first atom of each structure
    per_atom = n_atoms[idx_m]  # candidates per center
    n_atoms_total = positions.shape[0]
    i = torch.repeat_interleave(torch.arange(n_atoms_total, device=device), per_atom)
    block_start = torch.repeat_interleave(torch.cumsum(per_atom, 0) - per_atom, per_atom)
    local = torch.arange(i.shape[0], device=device) - block_start
    j = offsets[idx_m[i]] + local
    keep = i != j
    i = i[keep]
    j = j[keep]
    d2 = (positions[j] - positions[i]).pow(2).sum(-1)
    keep = d2 < cutoff * cutoff
    return torch.stack([i[keep], j[keep]])


def _cell_list_pairs(
    centers: torch.Tensor, sources: torch.Tensor, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """All (a, b) with |sources[b] - centers[a]| < cutoff, by spatial binning.

    centers: (n, 3), sources: (m, 3). Returns index tensors a (P,), b (P,).
    Includes a == b when the same point appears in both sets (caller filters).
    """
    device = centers.device
    lo = torch.minimum(centers.min(0).values, sources.min(0).values)
    cs = torch.floor((sources - lo) / cutoff).long()
    cc = torch.floor((centers - lo) / cutoff).long()
    dims = torch.maximum(cs.max(0).values, cc.max(0).values) + 1
    strides = torch.stack([dims[1] * dims[2], dims[2], torch.ones_like(dims[2])])
    lin_s = (cs * strides).sum(-1)
    order = torch.argsort(lin_s)
    cell_ids, counts = torch.unique_consecutive(lin_s[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts

    r = torch.arange(-1, 2, device=device)
    stencil = torch.cartesian_prod(r, r, r)  # (27, 3)
    # Candidates are generated for a chunk of centers at a time: the candidate
    # arrays (~27 cells' worth of atoms per center) stay cache-sized instead of
    # hundreds of MB at 10^4-10^5 atoms (2-3x faster there, same pairs).
    chunk = 4096
    a_out: list[torch.Tensor] = []
    b_out: list[torch.Tensor] = []
    for c0 in range(0, centers.shape[0], chunk):
        c1 = min(c0 + chunk, centers.shape[0])
        nb = cc[c0:c1, None, :] + stencil[None, :, :]  # (n, 27, 3)
        inside = ((nb >= 0) & (nb < dims)).all(-1)
        lin_nb = (nb * strides).sum(-1)
        pos = torch.searchsorted(cell_ids, lin_nb).clamp(max=cell_ids.shape[0] - 1)
        found = inside & (cell_ids[pos] == lin_nb)
        cnt = torch.where(found, counts[pos], torch.zeros_like(pos))
        st = starts[pos]

        cnt_flat = cnt.flatten()
        a = torch.repeat_interleave(
            torch.arange(c0, c1, device=device).repeat_interleave(27), cnt_flat
        )
        block_start = torch.repeat_interleave(torch.cumsum(cnt_flat, 0) - cnt_flat, cnt_flat)
        local = torch.arange(a.shape[0], device=device) - block_start
        b = order[torch.repeat_interleave(st.flatten(), cnt_flat) + local]
        d2 = (sources[b] - centers[a]).pow(2).sum(-1)
        keep = d2 < cutoff * cutoff
        a_out.append(a[keep])
        b_out.append(b[keep])
    return torch.cat(a_out), torch.cat(b_out)


def _single_structure(
    positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs (2, P) local to one structure and their integer images (P, 3)."""
    device = positions.device
    n = positions.shape[0]
    if not bool(pbc.any()):
        a, b = _cell_list_pairs(positions, positions, cutoff)
        keep = a != b
        pairs = torch.stack([a[keep], b[keep]])
        return pairs, torch.zeros((pairs.shape[1], 3), dtype=torch.long, device=device)

    dtype = positions.dtype
    inv = torch.linalg.inv(cell.to(torch.float64))
    frac = positions.to(torch.float64) @ inv
    # Wrap periodic directions into [0, 1) so a fixed set of images suffices.
    wrap = torch.where(pbc, torch.floor(frac), torch.zeros_like(frac))
    frac = frac - wrap
    wrapped = frac @ cell.to(torch.float64)
    # Images needed along k: cutoff over the spacing of lattice planes (1/|inv[:,k]|).
    n_img = torch.ceil(cutoff * torch.linalg.norm(inv, dim=0)).long()
    n_img = torch.where(pbc, n_img, torch.zeros_like(n_img))
    rng = [torch.arange(-int(n_img[k]), int(n_img[k]) + 1, device=device) for k in range(3)]
    shifts = torch.cartesian_prod(rng[0], rng[1], rng[2])  # (S, 3)
    ghost = (wrapped[None, :, :] + (shifts.to(torch.float64) @ cell.to(torch.float64))[:, None, :])
    ghost = ghost.reshape(-1, 3)
    ghost_atom = torch.arange(n, device=device).repeat(shifts.shape[0])
    ghost_img = shifts.repeat_interleave(n, 0)
    # Only ghosts within the cutoff of the box of real atoms can matter.
    lo = wrapped.min(0).values - cutoff
    hi = wrapped.max(0).values + cutoff
    near = ((ghost > lo) & (ghost < hi)).all(-1)
    ghost, ghost_atom, ghost_img = ghost[near], ghost_atom[near], ghost_img[near]

    a, b = _cell_list_pairs(wrapped.to(dtype), ghost.to(dtype), cutoff)
    j = ghost_atom[b]
    img = ghost_img[b]
    keep = (a != j) | (img != 0).any(-1)
    a, j, img = a[keep], j[keep], img[keep]
    # Undo the wrapping: r_j + S C - r_i in wrapped coordinates equals the
    # unwrapped vector with image S - w_j + w_i.
    wrap_l = wrap.long()
    img = img - wrap_l[j] + wrap_l[a]
    return torch.stack([a, j]), img


def neighbor_list(
    positions: torch.Tensor,
    idx_m: torch.Tensor,
    n_atoms: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    cutoff: float,
) -> Neighbors:
    """Neighbor pairs of a flat batch.

    positions: (N, 3) Å; idx_m: (N,); n_atoms: (M,); cell: (M, 3, 3) Å, rows
    are lattice vectors; pbc: (M, 3) bool. Returns both directions of every
    pair closer than ``cutoff`` (Å). No gradient flows through this function.
    """
    with torch.no_grad():
        positions = positions.detach()
        device = positions.device
        periodic = pbc.any(-1)
        # TorchScript cannot read module globals: scripted code uses this copy of
        # BRUTE_FORCE_MAX_ATOMS (a speed setting only; results are the same).
        max_brute = 256
        if not torch.jit.is_scripting():
            max_brute = BRUTE_FORCE_MAX_ATOMS
        small = n_atoms <= max_brute
        simple = ~periodic & small
        all_pairs: list[torch.Tensor] = []
        all_images: list[torch.Tensor] = []
        if bool(simple.all()):
            pairs = _brute_force_batch(positions, idx_m, n_atoms, cutoff)
            return Neighbors(pairs, torch.zeros((pairs.shape[1], 3), dtype=torch.long, device=device))
        if bool(simple.any()):
            # Brute force over the simple structures only, on their own atoms.
            atom_mask = simple[idx_m]
            sel = torch.nonzero(atom_mask).flatten()
            remap = torch.cumsum(simple.long(), 0) - 1
            sub = _brute_force_batch(positions[sel], remap[idx_m[sel]], n_atoms[simple], cutoff)
            pairs = sel[sub]
            all_pairs.append(pairs)
            all_images.append(torch.zeros((pairs.shape[1], 3), dtype=torch.long, device=device))
        offsets = torch.cumsum(n_atoms, 0) - n_atoms
        others: list[int] = torch.nonzero(~simple).flatten().tolist()
        for m in others:
            start = int(offsets[m])
            stop = start + int(n_atoms[m])
            p, img = _single_structure(positions[start:stop], cell[m], pbc[m], cutoff)
            all_pairs.append(p + start)
            all_images.append(img)
        if len(all_pairs) == 0:
            return Neighbors(
                torch.zeros((2, 0), dtype=torch.long, device=device),
                torch.zeros((0, 3), dtype=torch.long, device=device),
            )
        return Neighbors(torch.cat(all_pairs, 1), torch.cat(all_images, 0))
