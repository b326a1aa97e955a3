"""Energy terms (:mod:`nnp.terms`) in a committee: which are computed once, which per member.

Every member of a committee is a full potential, terms included, and the
committee's mean, spreads and member outputs are those of the members' full
energies. Two kinds of term:

- shared: parameter-free terms (``zbl``, ``d3``) with the same settings and
  buffers in every member give every member the same energy, so the committee
  builds one copy from the members' settings and computes it once (its energy
  is added to each member's, its gradient to each member's forces and stress);
- per member: terms with weights (``coulomb``: each member's own charge head)
  run in each member's pass, on that member's features.

Members must list the same terms, with the same settings for the parameter-free
ones (:func:`check_terms_compatible`). The ANI fast path
(:mod:`nnp.committee_ani`) computes the per-member terms on the shared AEVs with
:func:`terms_on_shared_features`, so their gradients join the closed-form
backward of the AEV.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Dict, List

import torch

from nnp import keys
from nnp.errors import NNPError


def _is_parameter_free(term: torch.nn.Module) -> bool:
    return len(list(term.parameters())) == 0


def check_terms_compatible(members: Sequence[Any], sources: Sequence[str]) -> None:
    """One NNPError naming the member whose term names (or a parameter-free term's settings) differ from the first's."""
    first, src0 = members[0], sources[0]
    names0 = [t.name for t in first.terms]
    settings0 = {t.name: (t.settings(), t.in_labels) for t in first.terms}
    for m, src in zip(members[1:], sources[1:]):
        names = [t.name for t in m.terms]
        if names != names0:
            raise NNPError(
                f"{src}: energy terms [{', '.join(names) or 'none'}] differ from {src0}'s [{', '.join(names0) or 'none'}]"
                " (committee members must have the same terms)"
            )
        for term in m.terms:
            if (term.settings(), term.in_labels) != settings0[term.name] and _is_parameter_free(term):
                raise NNPError(
                    f"{src}: terms.{term.name} settings {term.settings()} differ from {src0}'s {settings0[term.name][0]}"
                    " (committee members must share the settings of parameter-free terms)"
                )


def shared_term_settings(members: Sequence[Any]) -> Dict[str, Any]:
    """Name -> settings of the terms that are the same in every member (parameter-free, equal
    settings and buffers): the committee computes these once."""
    shared: Dict[str, Any] = {}
    for term in members[0].terms:
        same = True
        for m in members[1:]:
            other = next((t for t in m.terms if t.name == term.name), None)
            if other is None or not (_is_parameter_free(term) and _is_parameter_free(other)):
                same = False
                break
            a, b = term.state_dict(), other.state_dict()
            if term.settings() != other.settings() or a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
                same = False
                break
        if same and _is_parameter_free(term):
            shared[term.name] = dict(term.settings())
    return shared


def terms_on_shared_features(
    committee,
    inputs: Dict[str, torch.Tensor],
    features: torch.Tensor,
    per_member: List[Dict[str, torch.Tensor]],
    g: torch.Tensor,
    wrt: List[torch.Tensor],
    need_grad: bool,
) -> List[torch.Tensor]:
    """Add each member's own terms (those not shared) to ``per_member`` in place, reading the
    shared per-atom features (N, L) (ANI: the AEV, what the members' charge heads read).

    With ``need_grad``: each term energy's gradient with respect to the features is added to
    ``g`` (K, N, L) in place (it then goes through the AEV's backward with the networks'),
    and its explicit gradient with respect to ``wrt`` (positions, strain: the term's pair
    geometry) is returned, stacked (K, ...) per entry of ``wrt``. Empty list: no such terms.
    """
    skip = committee.shared_term_names if committee.share_terms else []
    own = [any(t.name not in skip for t in member.terms) for member in committee.members]
    if not any(own):  # (a committee without terms, or with shared ones only: nothing to do)
        return []
    explicit: List[List[torch.Tensor]] = [[] for _ in wrt]
    for k, member in enumerate(committee.members):
        if not own[k]:
            for w, x in enumerate(wrt):
                explicit[w].append(torch.zeros_like(x))
            continue
        leaf = features.detach().requires_grad_(need_grad)
        r = per_member[k]
        member._add_terms(inputs, {keys.ATOM_FEATURES: leaf}, r, skip)
        if need_grad:
            # the networks' part of r[ENERGY] is detached: this is the terms' gradient alone
            grads = torch.autograd.grad([r[keys.ENERGY].sum()], [leaf] + list(wrt), retain_graph=True, allow_unused=True)
            if grads[0] is not None:
                g[k] += grads[0]
            for w, x in enumerate(wrt):
                explicit[w].append(grads[1 + w] if grads[1 + w] is not None else torch.zeros_like(x))
        per_member[k] = {key: v.detach() for key, v in r.items()}
    if not need_grad:
        return []
    return [torch.stack(e) for e in explicit]


__all__ = ["check_terms_compatible", "shared_term_settings", "terms_on_shared_features"]
