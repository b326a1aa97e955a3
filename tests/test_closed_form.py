"""ANI inference without autograd (nnp.models.pair_gradient._ani_closed_form): the element networks'
input gradients by the chain rule written out (nnp.nn.mlp), per element or on stacked weights,
and the AEV's closed-form backward. Checked against autograd's graph, against finite differences
of the energy, and for its caches."""

from __future__ import annotations

import pytest
import torch

import nnp.models.pair_gradient as pair_gradient
from nnp import keys
from nnp.nn.mlp import ElementwiseMLP, activation_backward, build_activation
from tests.test_aev_backward import diamond
from tests.test_models import acetamide, batch_of, ethanol, make_potential, periodic_water

F64 = torch.float64
ACTIVATIONS = ["celu", "silu", "ssp", "tanh", "softplus", "gelu"]


def autograd_nets(mlp: ElementwiseMLP, x: torch.Tensor, species: torch.Tensor):
    x = x.clone().requires_grad_(True)
    out = mlp(x, species)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), grad


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "per-element"])
def test_network_gradients_equal_autograd(activation, stacked):
    torch.manual_seed(0)
    # elements of different widths (zero-padded when stacked), one element absent from the input
    mlp = ElementwiseMLP(4, 12, [[8, 6], [5, 9], [7, 7], [3, 3]], activation).double()
    mlp.stack_waste_rows = 1 << 20 if stacked else -1
    x = torch.randn(30, 12, dtype=F64) * 3
    species = torch.randint(0, 3, (30,))
    value, grad = mlp.value_and_input_gradient(x, species)
    assert (mlp.__dict__.get("_stacked_cache") is not None) == stacked
    ref_value, ref_grad = autograd_nets(mlp, x, species)
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_slopes_match_finite_differences(activation):
    act = build_activation(activation).double()
    z = torch.linspace(-6, 6, 240, dtype=F64)  # (not 0 itself: CELU's curvature jumps there)
    h = 1e-6
    numeric = (act(z + h) - act(z - h)) / (2 * h)
    # (torch's CELU backward is ~1.5e-8 off in float64: it scales by the float32 alpha)
    slope = activation_backward(act, torch.ones_like(z), z, act(z))
    torch.testing.assert_close(slope, numeric, rtol=1e-7, atol=1e-9)


def test_networks_of_different_depths_run_per_element():
    mlp = ElementwiseMLP(2, 5, [[4], [4, 4]], "silu").double()
    x = torch.randn(6, 5, dtype=F64)
    species = torch.tensor([0, 1, 0, 1, 1, 0])
    value, grad = mlp.value_and_input_gradient(x, species)
    assert mlp.__dict__["_stacked_cache"][2] is None
    ref_value, ref_grad = autograd_nets(mlp, x, species)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_unknown_activation_falls_back_to_autograd():
    mlp = ElementwiseMLP(1, 3, [[4]], "silu").double()
    mlp.nets[0][1] = torch.nn.Hardtanh()
    assert mlp.value_and_input_gradient(torch.randn(2, 3, dtype=F64), torch.zeros(2, dtype=torch.long)) is None


def test_stacked_weights_follow_parameter_changes():
    """The stacked copy is rebuilt after an in-place update (an optimizer step, load_state_dict)."""
    mlp = ElementwiseMLP(2, 4, [[3], [3]], "tanh").double()
    x = torch.randn(5, 4, dtype=F64)
    species = torch.tensor([0, 1, 1, 0, 1])
    before = mlp.value_and_input_gradient(x, species)[0]
    other = ElementwiseMLP(2, 4, [[3], [3]], "tanh").double()
    mlp.load_state_dict(other.state_dict())
    after = mlp.value_and_input_gradient(x, species)[0]
    torch.testing.assert_close(after, autograd_nets(other, x, species)[0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("structures", [[ethanol(), acetamide()], [periodic_water(), diamond()]], ids=["molecules", "cells"])
def test_potential_equals_autograd_path(structures):
    pot = make_potential("ani", F64).eval()
    batch = batch_of(structures, F64)
    stress = bool(batch[keys.PBC].any())
    results = {}
    for closed in (False, True):
        pot.model.closed_form = closed
        results[closed] = pot(batch, compute_forces=True, compute_stress=stress)
    for key in [keys.ENERGY, keys.FORCES] + ([keys.STRESS] if stress else []):
        torch.testing.assert_close(results[True][key], results[False][key], rtol=1e-10, atol=1e-10)


def test_chunks_equal_one_pass_and_path_is_taken(monkeypatch):
    calls = []
    original = pair_gradient._ani_closed_form
    monkeypatch.setattr(pair_gradient, "_ani_closed_form", lambda m, i: calls.append(1) or original(m, i))
    pot = make_potential("ani", F64).eval()
    batch = batch_of([ethanol(), acetamide(), diamond()], F64)
    whole = pot(batch, compute_forces=True)
    pot.model.chunk_atoms = 4
    chunked = pot(batch, compute_forces=True)
    assert len(calls) == 2
    for key in (keys.ENERGY, keys.FORCES, keys.ATOMIC_ENERGY):
        torch.testing.assert_close(chunked[key], whole[key], rtol=1e-12, atol=1e-12)


def test_forces_are_the_energy_gradient():
    """Central differences of the energy the closed form computes (float64)."""
    pot = make_potential("ani", F64).eval()
    atoms = ethanol()
    batch = batch_of([atoms], F64)
    forces = pot(batch, compute_forces=True)[keys.FORCES]
    h = 1e-5
    for atom, axis in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        energies = []
        for sign in (1, -1):
            moved = {k: v.clone() for k, v in batch.items()}
            moved[keys.R][atom, axis] += sign * h
            energies.append(float(pot(moved, compute_forces=True)[keys.ENERGY][0]))
        numeric = -(energies[0] - energies[1]) / (2 * h)
        assert abs(float(forces[atom, axis]) - numeric) < 1e-6 * max(1.0, abs(numeric))


def test_no_atoms():
    mlp = ElementwiseMLP(2, 4, [[3], [3]], "celu").double()
    for waste in (64, -1):  # stacked and per element
        mlp.stack_waste_rows = waste
        value, grad = mlp.value_and_input_gradient(torch.zeros(0, 4, dtype=F64), torch.zeros(0, dtype=torch.long))
        assert value.shape == (0,) and grad.shape == (0, 4)
