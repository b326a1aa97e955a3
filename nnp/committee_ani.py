"""The shared-descriptor path of a committee of ANI models (eager only).

ANI's descriptor (the AEV) has no trainable parameters, so a committee of ANI
members with the same descriptor settings computes it once, runs the members'
element networks (stacked where their widths agree), and gets every member's
forces and virials from one closed-form vector-Jacobian product of the AEV
(:meth:`nnp.models.aev.AEV.vector_jacobian_many`). The autograd path
(``committee.analytic_backward = False``) is kept to check it against.
Functions take the :class:`~nnp.committee.Committee` they work for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from nnp import keys


def shared_descriptor_pass(
    committee,
    inputs: Dict[str, torch.Tensor],
    species: torch.Tensor,
    idx_m: torch.Tensor,
    n_structures: int,
    wrt: List[torch.Tensor],
    need_grad: bool,
) -> Tuple[List[Dict[str, torch.Tensor]], List[torch.Tensor]]:
    """ANI members with one descriptor: AEV once, K element networks, then per-member
    forces as J^T g_k with g_k = dE_k/dAEV (one backward through the networks for
    all members, then the AEV's backward for the K gradients: in closed form, or
    by autograd when ``analytic_backward`` is off)."""
    from nnp.committee_terms import terms_on_shared_features

    model = committee.members[0].model
    if committee.analytic_backward:
        if not need_grad:
            with torch.no_grad():
                chunks = model.descriptor_chunks(inputs)
            features = chunks[0][2] if len(chunks) == 1 else torch.cat([c[2] for c in chunks])
            per_member = member_networks(committee, features, species, idx_m, n_structures, False)[0]
            terms_on_shared_features(committee, inputs, features, per_member, features, wrt, False)
            return per_member, []
        features, state = model.descriptors_with_geometry(inputs)  # no graph
        per_member, g = member_networks(committee, features, species, idx_m, n_structures, True)
        # members' own terms (coulomb): their dE_k/dAEV joins g, their explicit gradient is added after
        explicit = terms_on_shared_features(committee, inputs, features, per_member, g, wrt, True)
        return per_member, with_explicit(analytic_descriptor_backward(committee, inputs, state, g, idx_m, wrt), explicit)
    chunks = model.descriptor_chunks(inputs)
    features = chunks[0][2] if len(chunks) == 1 else torch.cat([c[2] for c in chunks])
    # one leaf per member: one backward call then yields every member's dE_k/dAEV
    leaves = [features.detach().requires_grad_(need_grad) for _ in committee.members]
    per_member = [
        m._energies({keys.ATOMIC_ENERGY: m.model.networks(leaf, species)}, species, idx_m, n_structures)
        for m, leaf in zip(committee.members, leaves)
    ]
    if not need_grad:
        terms_on_shared_features(committee, inputs, features, per_member, features, wrt, False)
        return per_member, []
    total = torch.stack([r[keys.ENERGY].sum() for r in per_member]).sum()
    g = torch.stack(torch.autograd.grad([total], leaves))  # (K, N, L)
    per_member = [{k: v.detach() for k, v in r.items()} for r in per_member]
    explicit = terms_on_shared_features(committee, inputs, features, per_member, g, wrt, True)
    return per_member, with_explicit(descriptor_backward(committee, features, g, wrt), explicit)


def with_explicit(grads: List[torch.Tensor], explicit: List[torch.Tensor]) -> List[torch.Tensor]:
    """The members' gradients (K, ...) plus the explicit ones of their terms (none: unchanged)."""
    return [a + b for a, b in zip(grads, explicit)] if explicit else grads

def member_networks(
    committee, features: torch.Tensor, species: torch.Tensor, idx_m: torch.Tensor, n_structures: int, need_grad: bool
) -> Tuple[List[Dict[str, torch.Tensor]], torch.Tensor]:
    """Every member's element networks on the shared AEVs (N, L): per-member results, and
    g = dE_k/dAEV (K, N, L) (an empty tensor without ``need_grad``).

    The atoms of each species are gathered once for all members. Where the members'
    networks for a species have the same layers (always, for members of one
    architecture), they run stacked: the first layer as one matrix product of the
    shared features with the members' concatenated weights, the others as batched
    products over the members (fewer, larger operations: faster for small inputs),
    with the members' weights stacked again whenever they change; else member by member.
    The numbers are those of ``member.model.networks(features, species)`` (to
    rounding: the products are summed in another order).
    """
    n_atoms = features.shape[0]
    n_k = len(committee.members)
    index = [torch.nonzero(species == s).flatten() for s in range(committee.members[0].model.n_species)]
    atomic = [torch.zeros(n_atoms, dtype=features.dtype, device=features.device) for _ in range(n_k)]
    leaves: List[torch.Tensor] = []
    backward: List[Any] = []  # per leaf: (species, member or -1, stacked first-layer weights or None)
    for s, idx in enumerate(index):
        x = features.index_select(0, idx)
        nets = [m.model.networks.nets[s] for m in committee.members]
        plan = stacked_networks(committee, s, nets)
        if plan is None:  # member by member, one leaf each
            for k, net in enumerate(nets):
                leaf = x.detach().requires_grad_(need_grad)
                leaves.append(leaf)
                backward.append((s, k, None))
                # every network runs, even on zero atoms, as ElementwiseMLP does
                atomic[k] = atomic[k].index_copy(0, idx, net(leaf).flatten())
            continue
        weight, bias = plan[0][1], plan[0][2]  # (K, h, L), (K, h)
        with torch.no_grad():
            z = torch.addmm(bias.reshape(-1), x, weight.reshape(-1, weight.shape[2]).t())  # (n, K h)
        z.requires_grad_(need_grad)
        leaves.append(z)
        backward.append((s, -1, weight))
        h = z
        for kind, w, b, act in plan[1:]:
            if kind == "act":
                h = act(h)
                continue
            if h.dim() == 2:  # (n, K h) -> (K, n, h)
                h = h.view(h.shape[0], n_k, w.shape[2]).transpose(0, 1)
            h = torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
        if h.dim() == 2:  # a single linear layer
            h = h.view(h.shape[0], n_k, weight.shape[1]).transpose(0, 1)
        for k in range(n_k):
            atomic[k] = atomic[k].index_copy(0, idx, h[k].flatten())
    per_member = [
        m._energies({keys.ATOMIC_ENERGY: a}, species, idx_m, n_structures) for m, a in zip(committee.members, atomic)
    ]
    if not need_grad:
        return per_member, features.new_zeros(0)
    total = torch.stack([r[keys.ENERGY].sum() for r in per_member]).sum()
    grads = torch.autograd.grad([total], leaves, allow_unused=True)
    # every atom has one species: every row gets written
    g = torch.empty((n_k,) + tuple(features.shape), dtype=features.dtype, device=features.device)
    with torch.no_grad():
        for grad, leaf, (s, k, weight) in zip(grads, leaves, backward):
            idx = index[s]
            if grad is None:
                grad = torch.zeros_like(leaf)
            if weight is None:  # member k's dE/d(features of species s)
                g[k].index_copy_(0, idx, grad)
            else:  # dE/dz of the stacked first layer (n, K h) -> dE/d(features) (K, n, L)
                dz = grad.view(grad.shape[0], n_k, weight.shape[1]).transpose(0, 1)
                g.index_copy_(1, idx, torch.bmm(dz, weight))
    return [{key: v.detach() for key, v in r.items()} for r in per_member], g

def stacked_networks(committee, s: int, nets: List[nn.Module]) -> List[Tuple[str, Any, Any, Any]] | None:
    """:func:`_stacked_plan` of species ``s``, rebuilt only when a member's parameters
    changed (other tensors, or written in place: their version counters)."""
    key = tuple((p.data_ptr(), p._version) for net in nets for p in net.parameters())
    cache = committee.__dict__.setdefault("_stacked_cache", {})
    hit = cache.get(s)
    if hit is None or hit[0] != key:
        hit = (key, stacked_plan(nets))
        cache[s] = hit
    return hit[1]

def analytic_descriptor_backward(
    committee, inputs: Dict[str, torch.Tensor], state: Dict[str, Any], g: torch.Tensor, idx_m: torch.Tensor, wrt: List[torch.Tensor]
) -> List[torch.Tensor]:
    """J^T g_k in closed form: dE_k/d(pair vector) from the AEV, then positions and strain.

    The pair vectors are v = r_j - r_i + images @ cell, with atoms and cell both
    strained as x' = x + x @ strain (:func:`~nnp.potential.pair_inputs`), so at zero
    strain v' = v (1 + strain): dE/dr_j += dE/dv, dE/dr_i -= dE/dv, and
    dE/dstrain[a, b] = sum over the structure's pairs of v[a] dE/dv[b].
    """
    with torch.no_grad():
        dv = committee.members[0].model.descriptor_vector_jacobian_many(state, g)  # (K, 3, P)
        n_k = dv.shape[0]
        i, j = inputs[keys.PAIRS][0], inputs[keys.PAIRS][1]
        positions = wrt[0]
        # (index_add over the last dim of 2-d views: several times faster than of (K, 3, P))
        flat = dv.reshape(n_k * 3, -1)
        forces = torch.zeros((n_k * 3, positions.shape[0]), dtype=positions.dtype, device=positions.device)
        forces = forces.index_add(1, j, flat).index_add(1, i, flat, alpha=-1)
        grads = [forces.view(n_k, 3, -1).transpose(1, 2).contiguous()]  # (K, N, 3)
        if len(wrt) > 1:
            strain = wrt[1]
            vectors = inputs[keys.PAIR_VECTORS].detach().t()  # (3, P)
            outer = (vectors[None, :, None, :] * dv[:, None, :, :]).reshape(n_k, 9, -1)  # [k, 3a + b, p] = v_a dE/dv_b
            per_structure = torch.zeros((n_k * 9, strain.shape[0]), dtype=strain.dtype, device=strain.device)
            per_structure = per_structure.index_add(1, idx_m[i], outer.view(n_k * 9, -1))
            grads.append(per_structure.view(n_k, 9, -1).transpose(1, 2).reshape((n_k,) + tuple(strain.shape)))
    return grads

def descriptor_backward(committee, features: torch.Tensor, g: torch.Tensor, wrt: List[torch.Tensor]) -> List[torch.Tensor]:
    """J^T g_k for the K gradients g (K, N, L): one vmapped backward, or a loop."""
    n = g.shape[0]
    if committee.batched_backward:
        try:
            grads = torch.autograd.grad([features], wrt, grad_outputs=[g], is_grads_batched=True, allow_unused=True)
            return [x if x is not None else torch.zeros((n,) + tuple(w.shape), dtype=w.dtype) for x, w in zip(grads, wrt)]
        except RuntimeError:  # an op without a batching rule: the loop, from now on
            committee.batched_backward = False
    stacked: List[List[torch.Tensor]] = [[] for _ in wrt]
    for k in range(n):
        grads = torch.autograd.grad([features], wrt, grad_outputs=[g[k]], retain_graph=k < n - 1, allow_unused=True)
        for w in range(len(wrt)):
            x = grads[w]
            stacked[w].append(x if x is not None else torch.zeros_like(wrt[w]))
    return [torch.stack(s) for s in stacked]


def stacked_plan(nets: Sequence[nn.Module]) -> List[Tuple[str, Any, Any, Any]] | None:
    """The members' networks for one species as stacked layers, or None where they differ.

    Each network is ``Linear, activation, ..., Linear`` (:func:`nnp.nn.build_mlp`);
    returns per layer ``("linear", weight (K, out, in), bias (K, out) or None, None)``
    or ``("act", None, None, module)``, with detached copies of the members' own
    parameters (a committee is evaluated, not trained). The first layer is linear,
    with a bias.
    """
    first = nets[0]
    if not isinstance(first, nn.Sequential) or len(first) == 0 or not isinstance(first[0], nn.Linear):
        return None
    plan: List[Tuple[str, Any, Any, Any]] = []
    for i, layer in enumerate(first):
        others = [n[i] if isinstance(n, nn.Sequential) and len(n) == len(first) else None for n in nets]
        if isinstance(layer, nn.Linear):
            if not all(
                isinstance(o, nn.Linear) and o.weight.shape == layer.weight.shape and (o.bias is None) == (layer.bias is None)
                for o in others
            ):
                return None
            weight = torch.stack([o.weight.detach() for o in others])
            bias = None if layer.bias is None else torch.stack([o.bias.detach() for o in others])
            plan.append(("linear", weight, bias, None))
        elif len(list(layer.parameters())) == 0 and all(type(o) is type(layer) and repr(o) == repr(layer) for o in others):
            plan.append(("act", None, None, layer))  # elementwise, no parameters: one module serves all members
        else:
            return None
    if plan[0][2] is None:
        return None
    return plan


def shares_descriptor(members: Sequence[Any]) -> bool:
    """True when all members are ANI with identical descriptor settings (the AEV can be computed once)."""
    from nnp.models.ani import ANI

    if not all(isinstance(m.model, ANI) for m in members):
        return False
    first = members[0].model.aev
    ref = first.state_dict()
    for m in members[1:]:
        aev = m.model.aev
        if (aev.radial_eta, aev.angular_eta, aev.angular_zeta, aev.radial_cutoff, aev.angular_cutoff) != (
            first.radial_eta, first.angular_eta, first.angular_zeta, first.radial_cutoff, first.angular_cutoff
        ):
            return False
        other = aev.state_dict()
        if ref.keys() != other.keys() or not all(torch.equal(ref[k], other[k]) for k in ref):
            return False
    return True
