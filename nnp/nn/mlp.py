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
        # value_and_input_gradient: the most padded rows the stacked path may add (a speed setting)
        self.stack_waste_rows = 64

    def forward(self, features: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        """features: (N, F), species: (N,) in [0, n_species) -> (N,) outputs."""
        out = torch.zeros(features.shape[0], dtype=features.dtype, device=features.device)
        for s, net in enumerate(self.nets):
            idx = torch.nonzero(species == s).flatten()
            # Run every network, even on zero atoms: data-parallel training needs
            # each parameter in the graph on every rank, or gradient sync hangs.
            out = out.index_copy(0, idx, net(features.index_select(0, idx)).flatten())
        return out

    @torch.no_grad()
    def value_and_input_gradient(
        self, features: torch.Tensor, species: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Outputs (N,) and d(sum of outputs)/d(features) (N, F), by the chain rule written out
        (no autograd graph): inference only, where the graph's bookkeeping was a quarter of a
        small molecule's MD step (21 atoms: 2.9 -> 2.1 ms). None when an activation has no
        backward here (:func:`activation_backward`).

        Small inputs (a molecule in MD) run all elements at once on stacked weights
        (:meth:`_stacked`) when that pads fewer than ``stack_waste_rows`` rows: each torch op
        costs 10-20 us here whatever its size, and per element the chain takes ~25 of them
        (21 atoms of 3 elements: 2.0 -> 0.8 ms)."""
        counts = torch.bincount(species, minlength=len(self.nets))
        if len(self.nets) * int(counts.max()) - species.shape[0] <= self.stack_waste_rows:
            stacked = self._stacked(features, species, counts)
            if stacked is not None:
                return stacked
        out = features.new_zeros(features.shape[0])
        grad = torch.zeros_like(features)
        for s, net in enumerate(self.nets):
            idx = torch.nonzero(species == s).flatten()
            if idx.numel() == 0:
                continue
            h = features.index_select(0, idx)
            layers = list(net)
            saved: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
            for k in range(0, len(layers) - 1, 2):  # Linear, activation, ..., Linear
                z = nn.functional.linear(h, layers[k].weight, layers[k].bias)
                act = layers[k + 1]
                h = act(z)
                saved.append((act, z, h))
            last = layers[-1]
            value = nn.functional.linear(h, last.weight, last.bias).flatten()
            g = last.weight[0].expand(idx.numel(), -1)
            for k in range(len(saved) - 1, -1, -1):
                act, z, a = saved[k]
                g = activation_backward(act, g, z, a)
                if g is None:
                    return None
                g = g @ layers[2 * k].weight
            out.index_copy_(0, idx, value)
            grad.index_copy_(0, idx, g)
        return out, grad

    def _stacked(
        self, features: torch.Tensor, species: torch.Tensor, counts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """:meth:`value_and_input_gradient` with one batched product per layer for all elements:
        atoms go in per-element slots of a (S, n_max, F) block, and each element's weights are
        zero-padded to the widest element's (a zero-padded hidden unit is celu(0) = 0 and meets
        zero weights, so the sums are unchanged). None when the networks differ in depth."""
        layers = self._stacked_layers(features.dtype)
        if layers is None:
            return None
        n_species, n_max = len(self.nets), int(counts.max())
        order = torch.argsort(species, stable=True)
        sorted_species = species.index_select(0, order)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.empty_like(order)
        slot[order] = sorted_species * n_max + torch.arange(species.shape[0], device=species.device) - first[sorted_species]
        x = features.new_zeros(n_species * n_max, features.shape[1])
        x.index_copy_(0, slot, features)
        h = x.view(n_species, n_max, features.shape[1])
        saved: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
        for weight, bias, _, act in layers[:-1]:
            z = torch.baddbmm(bias, h, weight)
            h = act(z)
            saved.append((act, z, h))
        weight, bias, transposed, _ = layers[-1]
        value = torch.baddbmm(bias, h, weight).view(-1).index_select(0, slot)
        g = transposed.expand(n_species, n_max, -1)
        for k in range(len(saved) - 1, -1, -1):
            act, z, a = saved[k]
            g = activation_backward(act, g, z, a)
            if g is None:
                return None
            g = torch.bmm(g, layers[k][2])
        return value, g.reshape(n_species * n_max, features.shape[1]).index_select(0, slot)

    def _stacked_layers(self, dtype: torch.dtype) -> list | None:
        """Per layer ``(W (S, in, out), b (S, 1, out), W^T (S, out, in), activation)``, zero-padded
        to the widest element, cached until a parameter changes (in place or replaced)."""
        nets = [list(net) for net in self.nets]
        # (read directly: Module.parameters() took 0.5 ms per call, as long as the stacked networks)
        params = tuple(t for net in nets for layer in net[::2] for t in (layer.weight, layer.bias) if t is not None)
        key = (dtype,) + tuple((p._version, p.data_ptr()) for p in params)
        cached = self.__dict__.get("_stacked_cache")
        if cached is not None and cached[0] == key and all(a is b for a, b in zip(cached[1], params)):
            return cached[2]
        if len({len(net) for net in nets}) != 1:
            layers = None
        else:
            layers = []
            for k in range(0, len(nets[0]), 2):
                linears = [net[k] for net in nets]
                n_in, n_out = max(lin.in_features for lin in linears), max(lin.out_features for lin in linears)
                weight = torch.zeros(len(nets), n_in, n_out, dtype=dtype, device=linears[0].weight.device)
                bias = torch.zeros(len(nets), 1, n_out, dtype=dtype, device=weight.device)
                for s, lin in enumerate(linears):
                    weight[s, : lin.in_features, : lin.out_features] = lin.weight.detach().t()
                    if lin.bias is not None:
                        bias[s, 0, : lin.out_features] = lin.bias.detach()
                act = nets[0][k + 1] if k + 1 < len(nets[0]) else None
                layers.append((weight, bias, weight.transpose(1, 2).contiguous(), act))
        self.__dict__["_stacked_cache"] = (key, params, layers)
        return layers


def activation_backward(act: nn.Module, grad: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
    """``grad * act'(z)`` (``a = act(z)``) for the activations :func:`build_activation` makes, by the
    same aten backward kernels autograd runs (one fused pass each, and the same numbers); None for
    any other module."""
    aten = torch.ops.aten
    if isinstance(act, nn.CELU):
        # input scale 1 / float32(alpha), as autograd's formula for celu has it (tools/autograd/
        # derivatives.yaml): the same forces as the graph path, to the last bit
        return aten.elu_backward(grad, act.alpha, 1, 1.0 / float(torch.tensor(act.alpha, dtype=torch.float32)), False, z)
    if isinstance(act, nn.SiLU):
        return aten.silu_backward(grad, z)
    if isinstance(act, ShiftedSoftplus):
        return aten.softplus_backward(grad, z, 1.0, 20.0)  # nn.functional.softplus' defaults
    if isinstance(act, nn.Softplus):
        return aten.softplus_backward(grad, z, act.beta, act.threshold)
    if isinstance(act, nn.Tanh):
        return aten.tanh_backward(grad, a)
    if isinstance(act, nn.GELU):
        return aten.gelu_backward(grad, z, approximate=act.approximate)
    return None
