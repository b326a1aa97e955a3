"""Scatter reductions over a flat batch, on torch's own index_add_."""

from __future__ import annotations

import torch


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` (E, ...) into ``dim_size`` bins given by ``index`` (E,).

    Returns (dim_size, ...). Differentiable (twice) with respect to ``src``.
    """
    out = torch.zeros((dim_size,) + src.shape[1:], dtype=src.dtype, device=src.device)
    return out.index_add(0, index, src)


def pair_halves(i: torch.Tensor, j: torch.Tensor, vectors: torch.Tensor, n_atoms: int) -> torch.Tensor | None:
    """Order pairs as [canonical half; their reverses] when that is provably possible.

    Returns ``perm`` (P,) such that pairs ``perm[:H]`` have i < j and pair
    ``perm[H + k]`` is the reverse of pair ``perm[k]`` (indices swapped and
    vector exactly negated, hence the same geometric pair, same image), or
    ``None`` when the list is not of that form (e.g. several images of one
    (i, j), as in small periodic cells): callers then use all pairs.
    Any function of the distance alone is then the same for ``perm[k]`` and
    ``perm[H + k]`` and need only be evaluated on the first half.
    """
    n_pairs = i.shape[0]
    if n_pairs == 0 or n_pairs % 2 == 1:
        return None
    key = i * n_atoms + j
    sorted_key, order = torch.sort(key)
    if bool((sorted_key[1:] == sorted_key[:-1]).any()):
        return None  # one (i, j) with several images
    rev = j * n_atoms + i
    pos = torch.searchsorted(sorted_key, rev).clamp(max=n_pairs - 1)
    if not bool((sorted_key[pos] == rev).all()):
        return None
    partner = order[pos]
    vec = vectors.detach()
    if not bool((vec.index_select(0, partner) == -vec).all()):
        return None
    half = torch.nonzero(i < j).flatten()
    return torch.cat([half, partner.index_select(0, half)])


def halve_pairs(
    i: torch.Tensor, j: torch.Tensor, vectors: torch.Tensor, distances: torch.Tensor, n_atoms: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pairs reordered by :func:`pair_halves` for models whose filters depend on distance only.

    Returns (i, j, distances, perm): i, j (P,) in [half; reversed half] order and
    distances (P/2,) of the first half, so a radial filter W(r) is evaluated once
    per pair and shared by both directions. Without a valid halving: the inputs
    unchanged and perm None (filters then run on all P pairs).
    """
    perm = pair_halves(i, j, vectors, n_atoms)
    if perm is None:
        return i, j, distances, None
    return i.index_select(0, perm), j.index_select(0, perm), distances.index_select(0, perm[: perm.shape[0] // 2]), perm


def scatter_max(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Largest value of ``src`` (E,) in each of ``dim_size`` bins given by ``index`` (E,); 0 for empty bins.

    For non-negative quantities (spreads, norms), where 0 is the natural empty value.
    """
    out = torch.zeros(dim_size, dtype=src.dtype, device=src.device)
    return out.scatter_reduce(0, index, src, reduce="amax", include_self=True)
