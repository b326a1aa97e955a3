"""Smooth cutoff functions f(r): 1 at r=0, 0 (with zero slope) at r >= cutoff."""

from __future__ import annotations

import math

import torch
from torch import nn


class CosineCutoff(nn.Module):
    """Behler's cosine cutoff, 0.5 (cos(pi r / rc) + 1) for r < rc, else 0.

    Value and first derivative vanish at rc (used by ANI and SchNet).
    """

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """r: (P,) distances in Å -> (P,) weights."""
        fc = 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0)
        return torch.where(r < self.cutoff, fc, torch.zeros_like(fc))

    def value_and_derivative(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r: (P,) Å -> (f (P,), df/dr (P,) 1/Å)."""
        k = math.pi / self.cutoff
        inside = r < self.cutoff
        zero = torch.zeros_like(r)
        fc = torch.where(inside, 0.5 * (torch.cos(r * k) + 1.0), zero)
        return fc, torch.where(inside, (-0.5 * k) * torch.sin(r * k), zero)


class PolynomialCutoff(nn.Module):
    """Polynomial envelope of Klicpera et al. (DimeNet), degree p (default 6).

    Smooth to order p at rc; used with Bessel bases (PaiNN, HIP-NN).
    """

    def __init__(self, cutoff: float, p: int = 6):
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = r / self.cutoff
        p = float(self.p)
        out = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * x.pow(self.p)
            + p * (p + 2.0) * x.pow(self.p + 1)
            - p * (p + 1.0) / 2.0 * x.pow(self.p + 2)
        )
        return torch.where(x < 1.0, out, torch.zeros_like(out))

    def value_and_derivative(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r: (P,) Å -> (f (P,), df/dr (P,) 1/Å)."""
        x = r / self.cutoff
        p = float(self.p)
        slope = (
            -p * (p + 1.0) * (p + 2.0) / 2.0 * x.pow(self.p - 1)
            + p * (p + 1.0) * (p + 2.0) * x.pow(self.p)
            - p * (p + 1.0) * (p + 2.0) / 2.0 * x.pow(self.p + 1)
        ) / self.cutoff
        inside = x < 1.0
        return torch.where(inside, self(r), torch.zeros_like(r)), torch.where(inside, slope, torch.zeros_like(r))


def build_cutoff(kind: str, cutoff: float) -> nn.Module:
    kinds = {"cosine": CosineCutoff, "polynomial": PolynomialCutoff}
    if kind not in kinds:
        raise ValueError(f"unknown cutoff function {kind!r}; choose one of {sorted(kinds)}")
    return kinds[kind](cutoff)
