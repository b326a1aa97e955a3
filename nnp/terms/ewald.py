"""Electrostatics of point charges: damped 1/r for molecules, Ewald sums for periodic cells.

Pair potential (e, Å, eV; k_e = e^2 / 4 pi eps0 = 14.3996 eV Å):

    phi(r) = k_e erf(r / sigma) / r

the bare 1/r beyond a few ``sigma`` (the "damping" length) and finite
(2 k_e / (sigma sqrt(pi))) at r = 0, so it is smooth at short range and the
local network, not the charges, describes bonded neighbors.

Molecules and clusters (no periodic direction): all pairs of a structure.
Periodic cells (periodic in all three directions): the Ewald sum of the bare
1/r, minus the short-ranged difference k_e erfc(r / sigma) / r over real-space
pairs, which gives the same damped interaction summed over the whole lattice:

    E = k_e [ 1/2 sum'_{i,j,n} q_i q_j (erfc(alpha r) - erfc(r / sigma)) / r
             + (2 pi / V) sum_{k != 0} exp(-k^2 / 4 alpha^2) / k^2 |S(k)|^2
             - alpha / sqrt(pi) sum_i q_i^2  -  pi Q^2 / (2 V alpha^2) ]

with S(k) = sum_i q_i exp(i k.r_i) and Q the cell's total charge (the last
term is the uniform neutralizing background of a charged cell). alpha and the
reciprocal cutoff follow from the real-space cutoff and the accuracy:
alpha = sqrt(-ln eps) / r_c, k_c = 2 alpha sqrt(-ln eps). Everything is torch,
so forces and stress (through the strained cell) are autograd's and the term
scripts for ``nnp export``.
"""

import math
from typing import List

import torch

from nnp.neighbors import neighbor_list


def damped_pairs_energy(
    q: torch.Tensor, positions: torch.Tensor, pairs: torch.Tensor, idx_m: torch.Tensor, n_structures: int, sigma: float
) -> torch.Tensor:
    """sum_{i<j} q_i q_j erf(r_ij / sigma) / r_ij per structure (M,), in e^2/Å, over ``pairs`` (2, P)
    listing both directions (hence the 1/2)."""
    i, j = pairs[0], pairs[1]
    r = torch.linalg.norm(positions[j] - positions[i], dim=-1)
    pair = 0.5 * q[i] * q[j] * torch.erf(r / sigma) / r
    return torch.zeros(n_structures, dtype=q.dtype, device=q.device).index_add(0, idx_m[i], pair)


def ewald_parameters(cutoff: float, accuracy: float) -> List[float]:
    """[alpha (1/Å), reciprocal cutoff k_c (1/Å)] for a real-space cutoff (Å) and a relative accuracy."""
    s = math.sqrt(-math.log(accuracy))
    alpha = s / cutoff
    return [alpha, 2.0 * alpha * s]


def ewald_energy(
    q: torch.Tensor,
    positions: torch.Tensor,
    cell: torch.Tensor,
    sigma: float,
    cutoff: float,
    accuracy: float,
) -> torch.Tensor:
    """Damped Coulomb energy of one periodic cell (scalar, e^2/Å; multiply by k_e for eV).

    q: (n,) e; positions: (n, 3) Å; cell: (3, 3) Å, rows are lattice vectors.
    The real-space pairs (all images within ``cutoff``) come from
    :func:`nnp.neighbors.neighbor_list`; the k-vectors from the cell's lengths.
    """
    params = ewald_parameters(cutoff, accuracy)
    alpha, k_cut = params[0], params[1]
    n = positions.shape[0]
    idx = torch.zeros(n, dtype=torch.long, device=q.device)
    counts = torch.tensor([n], dtype=torch.long, device=q.device)
    pbc = torch.ones((1, 3), dtype=torch.bool, device=q.device)
    nbrs = neighbor_list(positions, idx, counts, cell[None], pbc, cutoff)
    i, j = nbrs.pairs[0], nbrs.pairs[1]
    vectors = positions[j] - positions[i] + nbrs.images.to(positions.dtype) @ cell
    r = torch.linalg.norm(vectors, dim=-1)
    real = 0.5 * (q[i] * q[j] * (torch.erfc(alpha * r) - torch.erfc(r / sigma)) / r).sum()
    # reciprocal space: k = 2 pi n B, B = inverse(cell)^T (rows: reciprocal vectors / 2 pi)
    volume = torch.linalg.det(cell).abs()
    recip = 2.0 * math.pi * torch.linalg.inv(cell).transpose(0, 1)
    lengths = torch.linalg.norm(cell.detach(), dim=1)
    grids: List[torch.Tensor] = []
    for d in range(3):
        m = int(math.ceil(k_cut * float(lengths[d]) / (2.0 * math.pi)))
        grids.append(torch.arange(-m, m + 1, device=q.device, dtype=positions.dtype))
    ns = torch.cartesian_prod(grids[0], grids[1], grids[2])
    kvec = ns @ recip
    k2 = (kvec * kvec).sum(-1)
    keep = (k2 > 1e-12) & (k2 <= k_cut * k_cut)
    kvec, k2 = kvec[keep], k2[keep]
    phase = positions @ kvec.transpose(0, 1)  # (n, K)
    s_re = (q[:, None] * torch.cos(phase)).sum(0)
    s_im = (q[:, None] * torch.sin(phase)).sum(0)
    reciprocal = (2.0 * math.pi / volume) * (torch.exp(-k2 / (4.0 * alpha * alpha)) / k2 * (s_re * s_re + s_im * s_im)).sum()
    self_energy = -alpha / math.sqrt(math.pi) * (q * q).sum()
    total = q.sum()
    background = -math.pi * total * total / (2.0 * volume * alpha * alpha)
    return real + reciprocal + self_energy + background
