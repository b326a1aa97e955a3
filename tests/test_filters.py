"""Filters with dW/dr carried forward (nnp.nn.filters), the training fast path of SchNet.

Checked against the reference path (plain autograd through the filter network,
what eval mode and TorchScript use): energies, forces and the parameter
gradients of a force-and-energy training loss to float64 tolerance, on
molecules and a periodic cell; the autograd Function by gradcheck and
gradgradcheck; the basis and cutoff slopes against autograd; and the training backward restricted
to the parameters (nnp.training.backward) against a plain backward.
"""

from __future__ import annotations

import pytest
import torch
from test_models import acetamide, batch_of, ethanol, make_potential, periodic_water

from nnp import keys
from nnp.nn import BesselRBF, CosineCutoff, GaussianRBF, PolynomialCutoff
from nnp.nn.filters import ByDistance
from nnp.training.loss import EnergyForceLoss

F64 = torch.float64


def _labelled(structures, seed: int) -> dict[str, torch.Tensor]:
    batch = batch_of(structures, F64)
    g = torch.Generator().manual_seed(seed)
    batch[keys.ENERGY] = torch.randn(len(structures), generator=g, dtype=F64)
    batch[keys.FORCES] = torch.randn(batch[keys.R].shape, generator=g, dtype=F64)
    return batch


def _training_step(pot, batch, tangent: bool):
    pot.model.tangent_filters = tangent
    pred = pot(batch, compute_forces=True, create_graph=True)
    loss, _ = EnergyForceLoss()(pred, batch)
    params = [p for p in pot.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return pred, loss, {n: g for (n, _), g in zip(pot.named_parameters(), grads) if g is not None}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"activation": "tanh", "radial_basis": "bessel", "cutoff_fn": "polynomial"}, {"activation": "silu"}],
    ids=["ssp-gaussian-cosine", "tanh-bessel-polynomial", "silu"],
)
def test_tangent_filters_equal_reference(overrides):
    pot = make_potential("schnet", F64, **overrides).train()
    assert pot.model.tangent_filters
    water = periodic_water()
    water.rattle(0.05, seed=3)
    for k, structures in enumerate(([ethanol(), acetamide()], [water])):
        batch = _labelled(structures, k)
        ref, ref_loss, ref_grads = _training_step(pot, batch, tangent=False)
        fast, fast_loss, fast_grads = _training_step(pot, batch, tangent=True)
        torch.testing.assert_close(fast[keys.ENERGY], ref[keys.ENERGY], rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(fast[keys.FORCES], ref[keys.FORCES], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fast_loss, ref_loss, rtol=1e-10, atol=1e-12)
        assert fast_grads.keys() == ref_grads.keys()
        for key, g in ref_grads.items():
            torch.testing.assert_close(fast_grads[key], g, rtol=1e-8, atol=1e-10, msg=key)
        assert ref_grads["model.embedding.weight"].abs().max() > 0  # the comparison is not vacuous


def test_tangent_path_is_taken_in_training_only(monkeypatch):
    import nnp.nn.filters

    calls = {"n": 0}
    original = nnp.nn.filters.ByDistance.apply

    def counting(*args):
        calls["n"] += 1
        return original(*args)

    monkeypatch.setattr(nnp.nn.filters.ByDistance, "apply", counting)
    pot = make_potential("schnet", F64)
    batch = batch_of([ethanol()], F64)
    pot.eval()(batch)
    assert calls["n"] == 0
    pot.train()(batch, create_graph=True)
    assert calls["n"] == 2  # one per interaction block


def test_by_distance_gradcheck():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(5, generator=g, dtype=F64).requires_grad_(True)
    theta = torch.randn(4, generator=g, dtype=F64).requires_grad_(True)

    def f(r, theta):
        # w(r; theta) with its exact slope: the function's value and both derivatives are checked
        rd = r.detach()
        w = torch.sin(rd[:, None] * theta)
        w_dot_raw = theta * torch.cos(rd[:, None] * theta)
        scale = torch.exp(-rd)
        w_dot = w_dot_raw * scale[:, None] - w * scale[:, None]
        return ByDistance.apply(r, w, w_dot, scale)

    def reference(r, theta):
        return torch.sin(r[:, None] * theta) * torch.exp(-r)[:, None]

    assert torch.autograd.gradcheck(f, (r, theta))
    assert torch.autograd.gradgradcheck(lambda t: f(r, t), (theta,))
    # second order: d/dtheta of d(sum out * v)/dr equals the reference's
    v = torch.randn(5, 4, generator=g, dtype=F64)
    for fn in (f, reference):
        (gr,) = torch.autograd.grad((fn(r, theta) * v).sum(), r, create_graph=True)
        (gt,) = torch.autograd.grad(gr.pow(2).sum(), theta)
        if fn is f:
            fast = (gr.detach(), gt)
    torch.testing.assert_close(fast[0], gr.detach())
    torch.testing.assert_close(fast[1], gt)


@pytest.mark.parametrize(
    "module", [GaussianRBF(12, 5.0), BesselRBF(8, 5.0), CosineCutoff(5.0), PolynomialCutoff(5.0)],
    ids=["gaussian", "bessel", "cosine", "polynomial"],
)
def test_value_and_derivative_match_autograd(module):
    module = module.to(F64)
    r = torch.linspace(0.3, 5.5, 41, dtype=F64).requires_grad_(True)
    value, slope = module.value_and_derivative(r.detach())
    ref = module(r)
    torch.testing.assert_close(value, ref.detach())
    columns = ref.reshape(r.shape[0], -1)
    ref_slope = torch.stack(
        [torch.autograd.grad(columns[:, k].sum(), r, retain_graph=True)[0] for k in range(columns.shape[1])], 1
    )
    torch.testing.assert_close(slope.reshape(r.shape[0], -1), ref_slope)


def test_backward_to_parameters_equals_plain_backward():
    """The training backward (nnp.training.backward) skips d loss / d positions, not any parameter gradient."""
    from nnp.training.backward import backward_to_parameters

    pot = make_potential("painn", F64).train()
    batch = _labelled([ethanol(), acetamide()], 0)
    grads = []
    for restricted in (False, True):
        pot.zero_grad(set_to_none=True)
        loss, _ = EnergyForceLoss()(pot(batch, compute_forces=True, create_graph=True), batch)
        backward_to_parameters(loss, pot) if restricted else loss.backward()
        grads.append({n: p.grad.clone() for n, p in pot.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for key, g in grads[0].items():
        torch.testing.assert_close(grads[1][key], g, rtol=1e-12, atol=1e-14, msg=key)
