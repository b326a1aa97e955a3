"""Radial filters whose distance derivative is carried forward (SchNet's training fast path).

A continuous filter W(r) (P, F) depends on one scalar per pair, the distance r.
Training on forces differentiates the energy twice: once for the forces
(dE/dr through the filter network) and once more for the parameter gradient of
the force loss (a double backward through the network). Here the slope dW/dr is
computed in the forward pass alongside W, as a dual number through the small
network (for y = act(x A + b): dy/dr = act'(x A + b) * (dx/dr A)), and
:class:`ByDistance` hands it to autograd: the forces then need no backward
through the filter network at all, and the loss gradient needs only a
first-order backward through the graph of W and dW/dr instead of a double
backward (no second derivatives of the activation, no gradient with respect
to the radial basis).

Same numbers as plain autograd (tests/test_filters.py checks energies, forces
and loss gradients against the reference path, and gradcheck/gradgradcheck of
:class:`ByDistance` in float64). One limit, why models use it in training mode
only: second derivatives with respect to positions (Hessians) miss the
filter's curvature, since W and dW/dr are computed from the detached distance.

PaiNN's filter is one linear layer on 21 basis functions: plain autograd through
it costs a (P, 21) product, less than carrying a (P, 3F) slope (measured 0.90x),
so PaiNN keeps the autograd path.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nnp.nn.mlp import ShiftedSoftplus


class ByDistance(torch.autograd.Function):
    """``w * scale[:, None]`` whose gradient with respect to ``r`` is ``sum_f grad_f * w_dot_f``.

    Inputs: r (P,) distances (the only path to the positions), w (P, F) the raw
    filter of the detached distance (its graph reaches the parameters only),
    w_dot (P, F) = d(w * scale)/dr, scale (P,) (the cutoff, no gradient).
    Differentiable twice: the backward is made of autograd operations on the
    saved w_dot, so the loss gradient reaches the parameters through it.
    """

    @staticmethod
    def forward(ctx, r: torch.Tensor, w: torch.Tensor, w_dot: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w_dot, scale)
        return w * scale[:, None]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w_dot, scale = ctx.saved_tensors
        grad_r = (grad * w_dot).sum(1) if ctx.needs_input_grad[0] else None
        grad_w = grad * scale[:, None] if ctx.needs_input_grad[1] else None
        return grad_r, grad_w, None, None


def activation_and_slope(act: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(act(z), act'(z)) for the activations :func:`supports_slope` accepts."""
    if isinstance(act, ShiftedSoftplus):
        return nn.functional.softplus(z) - math.log(2.0), torch.sigmoid(z)
    if isinstance(act, nn.Softplus):
        return nn.functional.softplus(z), torch.sigmoid(z)
    if isinstance(act, nn.SiLU):
        s = torch.sigmoid(z)
        return z * s, s * (1.0 + z * (1.0 - s))
    if isinstance(act, nn.Tanh):
        t = torch.tanh(z)
        return t, 1.0 - t * t
    raise TypeError(f"no slope for activation {type(act).__name__}")


def supports_slope(act: nn.Module) -> bool:
    if isinstance(act, nn.Softplus):
        return act.beta == 1.0
    return isinstance(act, (ShiftedSoftplus, nn.SiLU, nn.Tanh))


def has_value_and_derivative(*modules: nn.Module) -> bool:
    return all(callable(getattr(m, "value_and_derivative", None)) for m in modules)


def two_layer_filters(
    nets: list[nn.Sequential], radial: nn.Module, cutoff_fn: nn.Module, r: torch.Tensor
) -> list[torch.Tensor]:
    """Filters net(radial(r)) * cutoff(r) (P, F) of Linear -> act -> Linear nets, with dW/dr carried.

    The radial basis, the cutoff and their slopes are computed once for all nets.
    Two products per layer (values and slopes) rather than one over stacked
    inputs: the backward of a stack or split copies (P, F) gradients, and
    measured no faster.
    """
    rd = r.detach()
    rbf, drbf = radial.value_and_derivative(rd)
    fc, dfc = cutoff_fn.value_and_derivative(rd)
    out = []
    for net in nets:
        w, w_dot = filter_and_slope(net, rbf, drbf, fc, dfc)
        out.append(ByDistance.apply(r, w, w_dot, fc))
    return out


def filter_and_slope(
    net: nn.Sequential, rbf: torch.Tensor, drbf: torch.Tensor, fc: torch.Tensor, dfc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(w (P, F) before the cutoff, d(w fc)/dr (P, F)) of a Linear -> act -> Linear net on the basis rbf (P, n_rbf),
    from the basis' slope drbf and the cutoff fc, dfc (P,)."""
    w1 = net[0].weight.t()
    a, slope = activation_and_slope(net[1], torch.addmm(net[0].bias, rbf, w1))
    da = slope * torch.mm(drbf, w1)
    w2 = net[2].weight.t()
    w = torch.addmm(net[2].bias, a, w2)
    return w, torch.addcmul(torch.mm(da, w2) * fc[:, None], w, dfc[:, None])
