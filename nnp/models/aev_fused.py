"""The AEV as one autograd node: a forward that keeps only its per-pair and per-triple geometry, and a closed-form backward.

Autograd of :meth:`nnp.models.aev.AEV._compute` keeps every intermediate of
the angular terms (tens of (32, triples) tensors per batch) and replays them
op by op in the backward pass. :class:`FusedAEV` instead computes the AEVs
without a graph and keeps only geometry, and its backward is the closed-form
vector-Jacobian product: on the compiled kernel (:mod:`nnp.models.aev_native`,
which keeps per-pair terms only and recomputes each triple's in the backward),
or, without a compiler, on torch ops: the geometry of
:meth:`~nnp.models.aev.AEV.forward_with_geometry` (no (32, triples) tensor) and
:meth:`~nnp.models.aev.AEV._vector_jacobian_many`, the closed form a committee
uses for all its members at once.

Double backward (training on forces, ``create_graph=True``): the backward then
differentiates the reference forward by autograd, on the saved pair vectors
(which carry their graph back to positions and strain), so the force-loss
gradients are those of the reference path. The fused path is the default of
every eager ANI model; TorchScript runs the reference forward
(``AEV.fused = False`` selects it in eager mode too, for the tests).
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch

import nnp.models.aev_native as aev_native


class FusedAEV(torch.autograd.Function):
    """AEVs (n_centers, length) of ``aev`` from pair vectors (P, 3) Å; distances are ``|vectors|``."""

    @staticmethod
    def forward(ctx: Any, aev, species: torch.Tensor, pairs: torch.Tensor, vectors: torch.Tensor,
                first_center: int, n_centers: int) -> torch.Tensor:
        features, ctx.state = describe(aev, species, pairs, vectors, first_center, n_centers)
        ctx.aev = aev
        ctx.args = (species, pairs, first_center, n_centers)
        ctx.save_for_backward(vectors)
        return features

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (vectors,) = ctx.saved_tensors
        aev = ctx.aev
        species, pairs, first_center, n_centers = ctx.args
        if torch.is_grad_enabled():
            # create_graph: the gradient must itself be differentiable (forces in a loss), with
            # respect to dE/dAEV and to the vectors: autograd of the reference forward
            with torch.enable_grad():
                v = vectors if vectors.requires_grad else vectors.detach().requires_grad_(True)
                features = aev._compute(species, pairs, v, torch.linalg.norm(v, dim=-1), first_center, n_centers, False)[0]
                (out,) = torch.autograd.grad([features], [v], [grad], create_graph=True)
            return None, None, None, out, None, None
        return None, None, None, pull_back(aev, ctx.state, grad), None, None


def describe(aev, species: torch.Tensor, pairs: torch.Tensor, vectors: torch.Tensor, first_center: int,
             n_centers: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """AEVs (n_centers, length) without a graph, and the state :func:`pull_back` needs: on the
    compiled kernel where it runs, else the torch geometry of the closed form."""
    vectors = vectors.detach()
    if aev_native.supports(aev, vectors):
        features, geometry = aev_native.forward(aev, species, pairs, vectors, first_center, n_centers)
        return features, {"native": True, "geometry": geometry}
    with torch.no_grad():
        distances = torch.linalg.norm(vectors, dim=-1)
        features, geometry = aev._compute(species, pairs, vectors, distances, first_center, n_centers, True)
    return features, {"native": False, "geometry": geometry, "vectors": vectors, "distances": distances}


def pull_back(aev, state: Dict[str, Any], grad: torch.Tensor) -> torch.Tensor:
    """dE/d(pair vectors) (P, 3) for ``grad`` = dE/dAEV (n_centers, length) of :func:`describe`'s AEVs."""
    if state["native"]:
        return aev_native.backward(aev, state["geometry"], grad)
    with torch.no_grad():
        g = grad.contiguous()[None]
        return aev._vector_jacobian_many(state["vectors"], state["distances"], g, state["geometry"], 0)[0].t()
