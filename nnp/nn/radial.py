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
        # Clamped at e^-80 (~2e-35, far below float resolution): float32 exp of
        # arguments below about -87 takes a scalar path ~15x slower on CPU, and
        # most of these arguments are (gamma ~ 50 /Å^2 for 50 centres on 5 Å).
        return torch.exp((-self.gamma * (r[:, None] - self.centers.to(r.dtype)) ** 2).clamp(min=-80.0))

    def value_and_derivative(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r: (P,) Å -> (basis (P, n_rbf), d basis / dr (P, n_rbf) 1/Å); zero slope where clamped, as autograd's."""
        d = r[:, None] - self.centers.to(r.dtype)
        arg = -self.gamma * d * d
        value = torch.exp(arg.clamp(min=-80.0))
        return value, torch.where(arg > -80.0, (-2.0 * self.gamma) * d * value, torch.zeros_like(value))


class BesselRBF(nn.Module):
    """sin(k pi r / rc) / r, k = 1..n_rbf (DimeNet/PaiNN radial basis)."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        self.register_buffer("freqs", torch.arange(1, n_rbf + 1) * math.pi / cutoff)
        self.n_rbf = n_rbf

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """r: (P,) Å, r > 0 -> (P, n_rbf)."""
        return torch.sin(r[:, None] * self.freqs.to(r.dtype)) / r[:, None]

    def value_and_derivative(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r: (P,) Å, r > 0 -> (basis (P, n_rbf), d basis / dr (P, n_rbf) 1/Å)."""
        kr = r[:, None] * self.freqs.to(r.dtype)
        inv_r = 1.0 / r[:, None]
        value = torch.sin(kr) * inv_r
        return value, (self.freqs.to(r.dtype) * torch.cos(kr) - value) * inv_r


class InverseGaussianRBF(nn.Module):
    """Gaussians in inverse distance, exp(-(1/r - 1/mu_k)^2 / (2 w_k^2)) (HIP-NN's sensitivities).

    Lubbers, Smith, Barros, J. Chem. Phys. 148, 241715 (2018). The n_rbf centres
    mu_k are evenly spaced in 1/r between 1/stop and 1/start (Å), so they are
    dense at short range; widths w_k (1/Å) are half that spacing. With
    ``trainable`` (HIP-NN's choice) centres and widths are learned. No cutoff
    is applied here; multiply by a cutoff function (HIP-NN uses cos^2, i.e.
    :class:`~nnp.nn.CosineCutoff`).
    """

    def __init__(self, n_rbf: int, cutoff: float, start: float = 0.75, stop: float | None = None, trainable: bool = True):
        super().__init__()
        stop = float(cutoff) if stop is None else float(stop)
        if not 0.0 < start < stop:
            raise ValueError(f"inverse Gaussian basis needs 0 < start < stop, got start={start}, stop={stop}")
        inv_centers = torch.linspace(1.0 / stop, 1.0 / start, n_rbf)
        spacing = float(inv_centers[1] - inv_centers[0]) if n_rbf > 1 else 1.0 / start
        inv_widths = torch.full((n_rbf,), 2.0 / spacing)  # 1 / w_k
        if trainable:
            self.inv_centers = nn.Parameter(inv_centers)
            self.inv_widths = nn.Parameter(inv_widths)
        else:
            self.register_buffer("inv_centers", inv_centers)
            self.register_buffer("inv_widths", inv_widths)
        self.n_rbf = n_rbf

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """r: (P,) Å, r > 0 -> (P, n_rbf)."""
        x = (1.0 / r[:, None] - self.inv_centers.to(r.dtype)) * self.inv_widths.to(r.dtype)
        return torch.exp(-0.5 * x * x)


def build_radial_basis(kind: str, n_rbf: int, cutoff: float) -> nn.Module:
    kinds = {"gaussian": GaussianRBF, "bessel": BesselRBF, "inverse_gaussian": InverseGaussianRBF}
    if kind not in kinds:
        raise ValueError(f"unknown radial basis {kind!r}; choose one of {sorted(kinds)}")
    return kinds[kind](n_rbf, cutoff)
