"""Multilayer perceptrons and per-element networks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class ShiftedSoftplus(nn.Module):
    """softplus(x) - log 2: smooth, zero at zero (SchNet's activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.softplus(x) - math.log(2.0)


def build_activation(name: str) -> nn.Module:
    """Smooth activations only: forces need continuous second derivatives."""
    table = {
        "celu": lambda: nn.CELU(alpha=0.1),  # ANI's choice
        "silu": nn.SiLU,
        "ssp": ShiftedSoftplus,
        "shifted_softplus": ShiftedSoftplus,
        "tanh": nn.Tanh,
        "softplus": nn.Softplus,
        "gelu": nn.GELU,
    }
    if name not in table:
        raise ValueError(f"unknown or non-smooth activation {name!r}; choose one of {sorted(table)}")
    return table[name]()


def build_mlp(
    n_in: int, hidden: Sequence[int], n_out: int, activation: str, bias_out: bool = True
) -> nn.Sequential:
    """Linear -> act -> ... -> Linear(n_out), with no activation on the output."""
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), build_activation(activation)]
        width = h
    layers.append(nn.Linear(width, n_out, bias=bias_out))
    return nn.Sequential(*layers)


class ElementwiseMLP(nn.Module):
    """One network per species, applied to a flat list of atoms.

    Atoms are gathered by species with ``index_select`` and results written
    back with ``index_copy``, so each network sees one dense matrix.
    """

    def __init__(self, n_species: int, n_in: int, hidden: Sequence[Sequence[int]], activation: str):
        super().__init__()
        if len(hidden) != n_species:
            raise ValueError("hidden must list one layer-size sequence per species")
        self.nets = nn.ModuleList(build_mlp(n_in, h, 1, activation) for h in hidden)

    def forward(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """features: (N, F), species: (N,) in [0, n_species) -> (N,) outputs."""
        out = torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
        for s, net in enumerate(self.nets):
            idx = torch.nonzero(species == s).flatten()
            # Run every network, even on zero atoms: data-parallel training needs
            # each parameter in the graph on every rank, or gradient sync hangs.
            out = out.index_copy(0, idx, net(features.index_select(0, idx)).flatten())
        return out
