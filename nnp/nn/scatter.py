"""Scatter reductions over a flat batch, on torch's own index_add_."""

from __future__ import annotations

import torch


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` (E, ...) into ``dim_size`` bins given by ``index`` (E,).

    Returns (dim_size, ...). Differentiable (twice) with respect to ``src``.
    """
    out = torch.zeros((dim_size,) + src.shape[1:], dtype=src.dtype, device=src.device)
    return out.index_add(0, index, src)
