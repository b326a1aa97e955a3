"""PaiNN's messages for large systems: chunk by chunk, with an analytic first-order backward.

Per pair (i <- j), with the cutoff-weighted filter w = [rbf(r) fcut, fcut] [W; b]^T (P, 3F)
split into three F-wide parts, and u = r_ij / |r_ij|:

    x = phi_j * w = (x_s, x_vv, x_vs)
    ds_i = sum_j x_s,    dv_i = sum_j u x_vs + v_j x_vv

:class:`PaiNNMessages` computes the sums chunk by chunk without a graph and
keeps only its inputs; the backward rebuilds each chunk's filters (one small
product) and forms the gradients directly, with gs = dL/d ds_i, gv = dL/d dv_i:

    dL/dx_s = gs_i,  dL/dx_vs = sum_c gv_ic u_c,  dL/dx_vv = sum_c gv_ic v_jc
    dL/du_c = sum_f gv_icf x_vs,f,   dL/dv_j += gv_i x_vv,   dL/dphi_j += dL/dx * w
    dL/dw = dL/dx * phi_j  -> the filter's weights, and r through rbf(r) fcut(r)

instead of a no-graph forward, a forward with graph and autograd's backward per
chunk (:mod:`nnp.nn.chunks`). First derivatives only (``once_differentiable``):
PaiNN uses it in eval mode; training keeps the recomputed path. Checked by a
float64 gradcheck and against the whole-system path (tests/test_chunked.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from nnp.nn.filter_conv import engine_wants, pair_ranges
from nnp.nn.filters import has_value_and_derivative


def painn_messages_supported(radial: nn.Module, cutoff_fn: nn.Module) -> bool:
    """Whether :func:`painn_messages` handles this radial basis and cutoff (both need value_and_derivative)."""
    return has_value_and_derivative(radial, cutoff_fn)


class PaiNNMessages(torch.autograd.Function):
    """(ds (N, F), dv (N, 3, F)) summed per center; see the module docstring.

    Inputs: ``spec`` (radial, cutoff_fn, i (P,), j (P,), v_is_zero, ranges), phi (N, 3F),
    v (N, 3, F), vectors (P, 3) Å, r (P,) Å (their lengths), filter weight (3F, n_rbf), bias (3F,).
    """

    @staticmethod
    def forward(ctx: Any, spec: tuple, phi: torch.Tensor, v: torch.Tensor, vectors: torch.Tensor, r: torch.Tensor,
                weight: torch.Tensor, bias: torch.Tensor):
        radial, cutoff_fn, i, j, v_is_zero, ranges = spec
        ctx.spec = spec
        ctx.param_nodes = [torch.autograd.graph.get_gradient_edge(p).node for p in (weight, bias) if p.requires_grad]
        ctx.save_for_backward(phi, v, vectors, r, weight, bias)
        f = phi.shape[1] // 3
        ds = phi.new_zeros(phi.shape[0], f)
        dv = phi.new_zeros(phi.shape[0], 3, f)
        for p0, p1 in ranges:
            rc, ic, jc = r[p0:p1], i[p0:p1], j[p0:p1]
            fc = cutoff_fn(rc)
            w = torch.addmm(fc[:, None] * bias, radial(rc) * fc[:, None], weight.t())
            x = phi.index_select(0, jc) * w
            ds.index_add_(0, ic, x[:, :f])
            m = (vectors[p0:p1] / rc[:, None])[:, :, None] * x[:, None, 2 * f:]
            if not v_is_zero:
                m.addcmul_(v.index_select(0, jc), x[:, None, f:2 * f])
            dv.index_add_(0, ic, m)
        return ds, dv

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gs: torch.Tensor, gv: torch.Tensor):
        radial, cutoff_fn, i, j, v_is_zero, ranges = ctx.spec
        phi, v, vectors, r, weight, bias = ctx.saved_tensors
        need = ctx.needs_input_grad
        need_phi, need_v, need_vec, need_r = need[1], need[2] and not v_is_zero, need[3], need[4]
        need_params = (need[5] or need[6]) and engine_wants(ctx.param_nodes)
        f = phi.shape[1] // 3
        grad_phi = torch.zeros_like(phi) if need_phi else None
        grad_v = torch.zeros_like(v) if need_v else None
        grad_vec = torch.zeros_like(vectors) if need_vec else None
        grad_r = torch.zeros_like(r) if need_r else None
        grad_w = torch.zeros_like(weight) if need_params else None
        grad_b = torch.zeros_like(bias) if need_params else None
        for p0, p1 in ranges:
            rc, ic, jc = r[p0:p1], i[p0:p1], j[p0:p1]
            rbf, drbf = radial.value_and_derivative(rc)
            fc, dfc = cutoff_fn.value_and_derivative(rc)
            rb = rbf * fc[:, None]
            w = torch.addmm(fc[:, None] * bias, rb, weight.t())  # (p, 3F)
            phi_j = phi.index_select(0, jc)
            u = vectors[p0:p1] / rc[:, None]
            gv_i = gv.index_select(0, ic)  # (p, 3, F)
            x_vv = phi_j[:, f:2 * f] * w[:, f:2 * f]
            x_vs = phi_j[:, 2 * f:] * w[:, 2 * f:]
            g_vs = (gv_i * u[:, :, None]).sum(1)  # sum_c gv_ic u_c (p, F) (bmm of 1x3 blocks: slower)
            if v_is_zero:
                g_vv = torch.zeros_like(g_vs)
            else:
                g_vv = (gv_i * v.index_select(0, jc)).sum(1)
                if need_v:
                    grad_v.index_add_(0, jc, gv_i * x_vv[:, None, :])
            g_x = torch.cat([gs.index_select(0, ic), g_vv, g_vs], 1)  # dL/dx (p, 3F)
            if need_phi:
                grad_phi.index_add_(0, jc, g_x * w)
            if need_vec or need_r:
                g_u = (gv_i * x_vs[:, None, :]).sum(2)  # sum_f gv_icf x_vs,f (p, 3)
            if need_vec:
                grad_vec[p0:p1] = g_u / rc[:, None]
            if need_r or need_params:
                g_w = g_x * phi_j  # dL/dw (p, 3F)
            if need_r:
                g_rb = torch.mm(g_w, weight)  # dL/d(rbf fcut) (p, n_rbf)
                g_fc = (g_rb * rbf).sum(1) + torch.mv(g_w, bias)
                grad_r[p0:p1] = (g_rb * drbf).sum(1) * fc + g_fc * dfc - (g_u * u).sum(1) / rc
            if need_params:
                grad_w.addmm_(g_w.t(), rb)
                grad_b.add_(torch.mv(g_w.t(), fc))
        return None, grad_phi, grad_v, grad_vec, grad_r, grad_w, grad_b


def painn_messages(
    radial: nn.Module, cutoff_fn: nn.Module, filter_layer: nn.Linear, phi: torch.Tensor, v: torch.Tensor,
    vectors: torch.Tensor, r: torch.Tensor, i: torch.Tensor, j: torch.Tensor, v_is_zero: bool, pairs_per_chunk: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ds (N, F), dv (N, 3, F)) of one PaiNN message block, chunks of ``pairs_per_chunk`` pairs."""
    spec = (radial, cutoff_fn, i, j, v_is_zero, pair_ranges(r.shape[0], pairs_per_chunk))
    return PaiNNMessages.apply(spec, phi, v, vectors, r, filter_layer.weight, filter_layer.bias)
