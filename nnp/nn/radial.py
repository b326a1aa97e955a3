"""Radial basis expansions of interatomic distances."""

from __future__ import annotations

import math

import torch
from torch import nn


class GaussianRBF(nn.Module):
    """exp(-gamma (r - mu_k)^2) on n_rbf centres evenly spaced in [start, cutoff].

    gamma = 0.5 / width^2 with width = the spacing of the centres (SchNet).
    """

    def __init__(self, n_rbf: int, cutoff: float, start: float = 0.0):
        super().__init__()
        centers = torch.linspace(start, cutoff, n_rbf)
        width = float(centers[1] - centers[0]) if n_rbf > 1 else 1.0
        self.register_buffer("centers", centers)
        self.gamma = 0.5 / width**2
        self.n_rbf = n_rbf

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """r: (P,) Å -> (P, n_rbf)."""
        return torch.exp(-self.gamma * (r[:, None] - self.centers.to(r.dtype)) ** 2)


class BesselRBF(nn.Module):
    """sin(k pi r / rc) / r, k = 1..n_rbf (DimeNet/PaiNN radial basis)."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        self.register_buffer("freqs", torch.arange(1, n_rbf + 1) * math.pi / cutoff)
        self.n_rbf = n_rbf

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """r: (P,) Å, r > 0 -> (P, n_rbf)."""
        return torch.sin(r[:, None] * self.freqs.to(r.dtype)) / r[:, None]


def build_radial_basis(kind: str, n_rbf: int, cutoff: float) -> nn.Module:
    kinds = {"gaussian": GaussianRBF, "bessel": BesselRBF}
    if kind not in kinds:
        raise ValueError(f"unknown radial basis {kind!r}; choose one of {sorted(kinds)}")
    return kinds[kind](n_rbf, cutoff)
