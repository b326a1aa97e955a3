"""SchNet's continuous-filter convolution for large systems: filters chunk by chunk, analytic backward.

For inference on systems whose whole autograd graph would not fit in memory.
The convolution m_i = sum_j h_j * W(r_ij) (W = net(rbf(r)) * fcut(r), a
Linear -> act -> Linear filter network) is computed by :class:`FilterConvolution`
in chunks of pairs, each chunk's filters built, used and freed; only h (N, F)
and the distances are kept for the backward pass. The backward rebuilds each
chunk's filters once, with the activation's slope, and forms every gradient
from them directly:

    dL/dh_j   += g_i * W_ij                      (the transposed convolution)
    G_ij       = g_i * h_j                        (dL/dW_ij)
    dL/d raw   = G fcut,   da = (G fcut) W2,   dz = da * act'(z)
    dL/dr_ij   = sum_k dz_k (drbf/dr W1^T)_k + fcut'(r) sum_f G_f raw_f
    dL/dW2     = (G fcut)^T a,   dL/dW1 = dz^T rbf   (and the biases)

so a chunk costs one filter forward in the forward pass and one forward plus
the products of a first-order backward in the backward pass, instead of a
no-graph forward, a forward with graph and autograd's backward through it
(:mod:`nnp.nn.chunks`). Pairs come as undirected halves when the neighbor
list allows (:func:`nnp.nn.pair_halves`): each filter then serves both
directions, as in the whole-system path.

First derivatives only (``once_differentiable``): models use it in eval mode;
training on forces, which needs the double backward, keeps the recomputed
path of :mod:`nnp.nn.chunks`. Checked against the whole-system path and by a
float64 gradcheck (tests/test_chunked.py).
"""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from nnp.nn.filters import (
    activation_and_slope,
    filter_and_slope,
    has_value_and_derivative,
    supports_slope,
)

#: Bytes of filters and slopes (2 F floats per pair and block) the forward pass may keep for the
#: backward, over all blocks: below it the backward needs no filter network at all (as fast as
#: the whole-system graph, which keeps ~5x more); above it the remaining chunks are rebuilt.
KEEP_BUDGET = 3 << 30


def fused_filters_supported(filter_net: nn.Module, radial: nn.Module, cutoff_fn: nn.Module) -> bool:
    """Whether :func:`filter_convolution` handles this filter network (Linear -> act -> Linear)."""
    return (
        isinstance(filter_net, nn.Sequential) and len(filter_net) == 3
        and isinstance(filter_net[0], nn.Linear) and isinstance(filter_net[2], nn.Linear)
        and supports_slope(filter_net[1]) and has_value_and_derivative(radial, cutoff_fn)
    )


def pair_ranges(n_pairs: int, pairs_per_chunk: int) -> List[Tuple[int, int]]:
    """Contiguous ``(p0, p1)`` ranges of at most ``pairs_per_chunk`` pairs covering ``n_pairs``."""
    step = max(1, int(pairs_per_chunk))
    return [(p0, min(p0 + step, n_pairs)) for p0 in range(0, n_pairs, step)]


def engine_wants(nodes: list) -> bool:
    """Whether this backward pass reaches any of ``nodes`` (forces alone, autograd.grad with
    respect to positions, need no parameter gradients: ~10% of the backward saved)."""
    try:
        return any(torch._C._will_engine_execute_node(node) for node in nodes)
    except (AttributeError, RuntimeError):  # private API gone, or not answerable: compute them
        return True


class FilterConvolution(torch.autograd.Function):
    """sum_j h_j W(r_ij) per center, (N, F), with filters built chunk by chunk (see the module docstring).

    Inputs: ``spec`` (filter_net, radial, cutoff_fn, i (P,), j (P,), both, ranges),
    h (N, F), r (P,) Å, then the filter network's W1 (F, n_rbf), b1, W2 (F, F), b2.
    ``both``: each pair (i, j) also carries the reverse message h_i W(r_ij) to j.
    """

    @staticmethod
    def forward(ctx: Any, spec: tuple, h: torch.Tensor, r: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        net, radial, cutoff_fn, i, j, both, ranges, n_kept = spec
        ctx.spec = spec
        ctx.param_nodes = [torch.autograd.graph.get_gradient_edge(p).node for p in params if p.requires_grad]
        ctx.save_for_backward(h, r, *params)
        ctx.kept = []  # (w fc, d(w fc)/dr) of the first n_kept chunks (not saved tensors: no graph behind them)
        out = torch.zeros_like(h)
        for p0, p1 in ranges:
            rc = r[p0:p1]
            if len(ctx.kept) < n_kept:
                rbf, drbf = radial.value_and_derivative(rc)
                fc, dfc = cutoff_fn.value_and_derivative(rc)
                raw, w_dot = filter_and_slope(net, rbf, drbf, fc, dfc)
                w = raw * fc[:, None]
                ctx.kept.append((w, w_dot))
            else:
                w = net(radial(rc)) * cutoff_fn(rc)[:, None]
            ic, jc = i[p0:p1], j[p0:p1]
            out.index_add_(0, ic, h.index_select(0, jc) * w)
            if both:
                out.index_add_(0, jc, h.index_select(0, ic) * w)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor):
        net, radial, cutoff_fn, i, j, both, ranges, _ = ctx.spec
        kept, ctx.kept = ctx.kept, []  # freed now, not when the caller drops the outputs (a retained graph recomputes)
        h, r, w1, b1, w2, b2 = ctx.saved_tensors
        need_h, need_r = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        need_params = any(ctx.needs_input_grad[3:]) and engine_wants(ctx.param_nodes)
        grad_h = torch.zeros_like(h) if need_h else None
        grad_r = torch.empty_like(r) if need_r else None
        grads_p = [torch.zeros_like(p) for p in (w1, b1, w2, b2)] if need_params else None
        act = net[1]
        for k, (p0, p1) in enumerate(ranges):
            rc = r[p0:p1]
            ic, jc = i[p0:p1], j[p0:p1]
            if k < len(kept) and not need_params:  # filters and slopes kept from the forward pass
                w, w_dot = kept[k]
                g_i = g.index_select(0, ic)
                big_g = g_i * h.index_select(0, jc)
                if need_h:
                    grad_h.index_add_(0, jc, g_i * w)
                if both:
                    g_j = g.index_select(0, jc)
                    if need_h:
                        grad_h.index_add_(0, ic, g_j * w)
                    big_g.addcmul_(g_j, h.index_select(0, ic))
                if need_r:
                    grad_r[p0:p1] = (big_g * w_dot).sum(1)
                continue
            rbf, drbf = radial.value_and_derivative(rc)
            fc, dfc = cutoff_fn.value_and_derivative(rc)
            a, slope = activation_and_slope(act, torch.addmm(b1, rbf, w1.t()))
            raw = torch.addmm(b2, a, w2.t())  # (p, F) before the cutoff
            g_i = g.index_select(0, ic)
            if need_h:
                w = raw * fc[:, None]
                grad_h.index_add_(0, jc, g_i * w)
            if not (need_r or need_params):
                continue
            big_g = g_i * h.index_select(0, jc)  # dL/dW (p, F)
            if both:
                g_j = g.index_select(0, jc)
                if need_h:
                    grad_h.index_add_(0, ic, g_j * w)
                big_g.addcmul_(g_j, h.index_select(0, ic))
            g_raw = big_g * fc[:, None]
            dz = torch.mm(g_raw, w2) * slope  # dL/dz (p, F)
            if need_r:
                grad_r[p0:p1] = (torch.mm(dz, w1) * drbf).sum(1) + dfc * (big_g * raw).sum(1)
            if need_params:
                grads_p[0].addmm_(dz.t(), rbf)
                grads_p[1].add_(dz.sum(0))
                grads_p[2].addmm_(g_raw.t(), a)
                grads_p[3].add_(g_raw.sum(0))
        return (None, grad_h, grad_r, *(grads_p if need_params else [None] * 4))


def filter_convolution(
    filter_net: nn.Sequential, radial: nn.Module, cutoff_fn: nn.Module, h: torch.Tensor, r: torch.Tensor,
    i: torch.Tensor, j: torch.Tensor, both: bool, pairs_per_chunk: int, keep_pairs: int = 0,
) -> torch.Tensor:
    """m (N, F): m_i = sum over pairs (i, j) of h_j * W(r_ij), plus h_i * W(r_ij) to j when ``both``.

    h (N, F); r (P,) Å; i, j (P,). Memory: a few (pairs_per_chunk, F) temporaries
    beside the (N, F) inputs and outputs, plus, for the first ``keep_pairs`` pairs
    (whole chunks), W and dW/dr kept from the forward pass (2 F floats per pair):
    their backward is then two products per pair, no filter network.
    """
    ranges = pair_ranges(r.shape[0], pairs_per_chunk)
    if not (torch.is_grad_enabled() and r.requires_grad):
        keep_pairs = 0  # no forces wanted: nothing to keep slopes for
    spec = (filter_net, radial, cutoff_fn, i, j, both, ranges, int(keep_pairs) // max(1, int(pairs_per_chunk)))
    params = (filter_net[0].weight, filter_net[0].bias, filter_net[2].weight, filter_net[2].bias)
    return FilterConvolution.apply(spec, h, r, *params)
