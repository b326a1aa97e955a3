"""Energies and dE/d(pair vectors) of local models, chunk by chunk of center atoms, without a whole-system graph.

For a model whose atomic energy E_i depends only on the pairs centred on atom
i (ANI: E_i = net(AEV_i), the AEV built from i's pairs), the gradient of the
total energy with respect to the pair vectors splits by center: dE/dr_p =
dE_{i(p)}/dr_p. So a chunk of centers can be evaluated forward and backward on
its own, its graph freed before the next chunk: memory stays proportional to
the chunk instead of the system (autograd's saved state of ANI is ~5 GB at
10^5 atoms; per chunk of 1,024 atoms it was ~50 MB). ANI's default is the closed
form (:func:`_ani_closed_form`): no graph at all, chunks of ``model.chunk_atoms``
(4,096) centers; 213 MB peak at 3·10^4 atoms in the benchmark. The potential turns the
pair-vector gradient into forces by scattering it onto the two atoms of each pair,
and into stress by one autograd step through r_ij = R_j - R_i + images @ cell
(:meth:`nnp.potential.Potential._evaluate_by_centers`).

Inference only: the energies come back detached (no gradient reaches the
parameters), so the potential uses this path in eval mode without
``create_graph``; training keeps the whole-graph path.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch

from nnp import keys
from nnp.models.ani import ANI


def energy_and_pair_gradient(
    model: torch.nn.Module, inputs: Dict[str, torch.Tensor]
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor] | None:
    """``(outputs, grad)``: the model's outputs (detached) and d(sum of atomic energies)/d(pair vectors) (P, 3).

    None when the model has no chunked path or the input fits in one chunk (then
    the whole-graph path is as lean and no slower).
    """
    if isinstance(model, ANI):
        return _ani(model, inputs)
    return None


#: Atoms above which ANI takes this path (a model's ``backward_chunk_above`` overrides it).
#: Below, the whole-graph path is used: it needs at most ~0.8 GB there (0.5 GB at 10^4
#: atoms) and measured 10-30% faster at 10^4 atoms on a loaded machine.
ANI_MIN_ATOMS = 16384


def _ani(model: ANI, inputs: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], torch.Tensor] | None:
    closed = _ani_closed_form(model, inputs)
    if closed is not None:
        return closed
    species = inputs[keys.SPECIES]
    if species.shape[0] <= getattr(model, "backward_chunk_above", ANI_MIN_ATOMS):
        return None
    pairs, vectors, _, order, bounds = model._pair_chunks(inputs)
    if len(bounds) < 2:
        return None
    vectors = vectors.detach()
    grad = torch.empty_like(vectors)
    energies = torch.empty(species.shape[0], dtype=vectors.dtype, device=vectors.device)
    with torch.enable_grad():
        for start, stop, p0, p1 in bounds:
            v = vectors[p0:p1].detach().requires_grad_(True)
            # distances from this chunk's vectors, so the gradient is the total one
            features = model.aev(species, pairs[:, p0:p1], v, torch.linalg.norm(v, dim=-1), start, stop - start)
            e = model.networks(features, species[start:stop])
            (g,) = torch.autograd.grad([e.sum()], [v])
            grad[p0:p1] = g
            energies[start:stop] = e.detach()
    if order.numel() > 0:  # back to the input's pair order
        grad = torch.empty_like(grad).index_copy_(0, order, grad)
    return {keys.ATOMIC_ENERGY: energies}, grad


def _ani_closed_form(model: ANI, inputs: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], torch.Tensor] | None:
    """ANI's energies and dE/d(pair vectors) with no autograd graph at all, at any size: per chunk
    of centers, the AEVs and their geometry (:func:`nnp.models.aev_fused.describe`), the element
    networks' outputs and input gradients by the chain rule written out
    (:meth:`nnp.nn.mlp.ElementwiseMLP.value_and_input_gradient`), and the AEV's closed-form
    vector-Jacobian product (:func:`nnp.models.aev_fused.pull_back`). The numbers of autograd's
    path to float tolerance (tests/test_closed_form.py); a 21-atom MD step took 5.7 ms on the
    autograd path, mostly its graph bookkeeping.

    None where that path does not apply: switched off (``model.closed_form = False``), the
    reference AEV selected (``aev.fused = False``),
    cutoffs other than ANI's cosine ones, or an activation without a closed-form slope."""
    from nnp.models.aev import CosineCutoff
    from nnp.models.aev_fused import describe, pull_back

    aev = model.aev
    if not getattr(model, "closed_form", True) or not aev.fused or type(aev.radial_cut) is not CosineCutoff or type(aev.angular_cut) is not CosineCutoff:
        return None
    species = inputs[keys.SPECIES]
    pairs, vectors, _, order, bounds = model._pair_chunks(inputs)
    grad = torch.empty_like(vectors, requires_grad=False)
    energies = torch.empty(species.shape[0], dtype=vectors.dtype, device=vectors.device)
    with torch.no_grad():
        for start, stop, p0, p1 in bounds:
            features, state = describe(aev, species, pairs[:, p0:p1], vectors[p0:p1], start, stop - start)
            nets = model.networks.value_and_input_gradient(features, species[start:stop])
            if nets is None:
                return None
            energies[start:stop], d_features = nets
            grad[p0:p1] = pull_back(aev, state, d_features)
    if order.numel() > 0:  # back to the input's pair order
        grad = torch.empty_like(grad).index_copy_(0, order, grad)
    return {keys.ATOMIC_ENERGY: energies}, grad
