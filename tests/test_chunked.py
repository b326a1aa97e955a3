"""Bounded-memory evaluation (nnp.nn.chunks, nnp.models.pair_gradient) against whole-system evaluation.

Large systems are evaluated in chunks of center atoms: ANI forward and
backward per chunk (no whole-system graph), message-passing models with each
block's per-pair work recomputed chunk by chunk in the backward pass. Here tiny
chunk sizes force many chunks on small systems; energies, forces, stress and
(for message passing) training gradients must equal the whole-system ones.
"""

from __future__ import annotations

import pytest
import torch
from test_models import NAMES, acetamide, batch_of, ethanol, make_potential, periodic_water

import nnp.model_inputs
import nnp.models.painn
import nnp.models.pair_gradient
import nnp.models.schnet
import nnp.nn.chunks
from nnp import keys
from nnp.neighbors import Neighbors
from nnp.nn import BesselRBF, CosineCutoff, GaussianRBF
from nnp.nn.chunks import center_chunks
from nnp.nn.filter_conv import FilterConvolution, filter_convolution, pair_ranges
from nnp.nn.mlp import ShiftedSoftplus
from nnp.nn.painn_messages import PaiNNMessages

F64 = torch.float64


def _set_small_chunks(pot) -> None:
    model = pot.model
    if hasattr(model, "chunk_atoms"):
        model.chunk_atoms = 3
        model.backward_chunk_above = 0
        model.closed_form = False  # autograd per chunk (the closed form: tests/test_closed_form.py)
    if hasattr(model, "pair_chunk"):
        model.pair_chunk = 7
        model.chunk_above = 7


def _set_whole(pot) -> None:
    model = pot.model
    if hasattr(model, "chunk_atoms"):
        model.chunk_atoms = 1 << 30
        model.closed_form = False
    if hasattr(model, "pair_chunk"):
        model.chunk_above = model.fused_above = 1 << 30


@pytest.fixture
def shuffled_pairs(monkeypatch):
    """Neighbor pairs in a random order (the chunked paths sort them by center and must undo it),
    and a count of the chunks evaluated."""
    original = nnp.model_inputs.neighbor_list
    calls = {"chunks": 0}

    def shuffled(*args):
        nbrs = original(*args)
        perm = torch.randperm(nbrs.pairs.shape[1], generator=torch.Generator().manual_seed(0))
        return Neighbors(nbrs.pairs[:, perm], nbrs.images[perm])

    def counting(*args):
        calls["chunks"] += 1
        return recomputed(*args)

    ani = nnp.models.pair_gradient._ani

    def counting_ani(model, inputs):
        out = ani(model, inputs)
        calls["chunks"] += 0 if out is None else 1
        return out

    def counting_conv(*args):
        calls["chunks"] += 1
        return conv(*args)

    def counting_messages(*args):
        calls["chunks"] += 1
        return messages(*args)

    recomputed = nnp.nn.chunks.recomputed
    conv = nnp.models.schnet.filter_convolution
    messages = nnp.models.painn.painn_messages
    monkeypatch.setattr(nnp.models.schnet, "filter_convolution", counting_conv)
    monkeypatch.setattr(nnp.models.painn, "painn_messages", counting_messages)
    monkeypatch.setattr(nnp.model_inputs, "neighbor_list", shuffled)
    monkeypatch.setattr(nnp.nn.chunks, "recomputed", counting)
    monkeypatch.setattr(nnp.models.pair_gradient, "_ani", counting_ani)
    return calls


@pytest.mark.parametrize("name", NAMES)
def test_chunked_inference_equals_whole_system(name, shuffled_pairs):
    pot = make_potential(name, F64).eval()
    water = periodic_water()
    water.rattle(0.05, seed=3)
    for structures in ([ethanol(), acetamide()], [water]):
        batch = batch_of(structures, F64)
        _set_whole(pot)
        whole = pot(batch, compute_stress=True)
        assert shuffled_pairs["chunks"] == 0
        _set_small_chunks(pot)
        chunked = pot(batch, compute_stress=True)
        assert shuffled_pairs["chunks"] > 0
        shuffled_pairs["chunks"] = 0
        for key in (keys.ENERGY, keys.FORCES, keys.ATOMIC_ENERGY):
            torch.testing.assert_close(chunked[key], whole[key], rtol=1e-10, atol=1e-10)
        periodic = batch[keys.PBC].all(-1)
        torch.testing.assert_close(chunked[keys.STRESS][periodic], whole[keys.STRESS][periodic], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["schnet", "painn", "hipnn"])
def test_recomputed_messages_train_like_whole_system(name, shuffled_pairs):
    """Chunked message passing keeps double backward: the force-loss gradient of every parameter is the same."""
    pot = make_potential(name, F64).train()
    batch = batch_of([ethanol(), acetamide()], F64)
    grads = []
    for setter in (_set_whole, _set_small_chunks):
        setter(pot)
        out = pot(batch, create_graph=True)
        loss = out[keys.ENERGY].pow(2).sum() + out[keys.FORCES].pow(2).sum()
        grads.append(torch.autograd.grad(loss, [p for p in pot.parameters() if p.requires_grad], allow_unused=True))
    assert shuffled_pairs["chunks"] > 1
    for a, b in zip(*grads):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_center_chunks_cover_every_pair_once():
    i = torch.tensor([0, 0, 0, 2, 2, 3, 5, 5, 5, 5, 5, 6])
    bounds = center_chunks(i, 8, 3)
    assert bounds[0][0] == 0 and bounds[-1][1] == 8 and bounds[-1][3] == i.shape[0]
    for (_, a1, _, p1), (b0, _, q0, _) in zip(bounds, bounds[1:]):
        assert a1 == b0 and p1 == q0
    for a0, a1, p0, p1 in bounds:
        assert bool(((i[p0:p1] >= a0) & (i[p0:p1] < a1)).all())
        assert a1 - a0 == 1 or p1 - p0 <= 3 + 5  # whole atoms; at most one atom's pairs beyond the target
    assert center_chunks(i, 8, 100) == [(0, 8, 0, i.shape[0])]  # fewer pairs than a chunk: one chunk


def _filter_parts(n_rbf=6, n_filters=5):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(n_rbf, n_filters), ShiftedSoftplus(), torch.nn.Linear(n_filters, n_filters))
    return net.to(F64), GaussianRBF(n_rbf, 3.0).to(F64), CosineCutoff(3.0).to(F64)


@pytest.mark.parametrize("kept", [0, 2])
@pytest.mark.parametrize("both", [False, True])
def test_filter_convolution_gradcheck(both, kept):
    """The analytic backward of SchNet's large-system convolution (h, distances and filter parameters), float64;
    ``kept`` chunks whose filters and slopes the forward pass kept (used when no parameter gradient is wanted)."""
    net, radial, cutoff = _filter_parts()
    i = torch.tensor([0, 0, 1, 2, 3, 3, 1])
    j = torch.tensor([1, 2, 3, 0, 1, 2, 2])
    h = torch.randn(4, 5, dtype=F64, requires_grad=True)
    r = (0.8 + 2.4 * torch.rand(7, dtype=F64)).requires_grad_()  # some beyond the 3 Å cutoff
    params = [p if kept == 0 else p.detach() for p in net.parameters()]
    spec = (net, radial, cutoff, i, j, both, pair_ranges(7, 3), kept)
    # (a kept chunk's cache is dropped after its first backward, so a second one recomputes: rounding differs)
    assert torch.autograd.gradcheck(lambda *t: FilterConvolution.apply(spec, *t), (h, r, *params), nondet_tol=1e-12)
    # and the sum itself: per pair h_j W(r_ij) to i (and h_i W(r_ij) to j)
    w = net(radial(r)) * cutoff(r)[:, None]
    ref = torch.zeros_like(h).index_add(0, i, h[j] * w)
    if both:
        ref = ref.index_add(0, j, h[i] * w)
    torch.testing.assert_close(filter_convolution(net, radial, cutoff, h, r, i, j, both, 2), ref)


def test_filter_convolution_forces_only_skip_parameter_gradients():
    """Gradients with respect to r alone (forces) equal those of a backward that also wants the parameters."""
    net, radial, cutoff = _filter_parts()
    i, j = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 2, 0, 1])
    h = torch.randn(3, 5, dtype=F64, requires_grad=True)
    r = torch.tensor([1.0, 1.5, 2.0, 2.5], dtype=F64, requires_grad=True)
    out = filter_convolution(net, radial, cutoff, h, r, i, j, True, 2, keep_pairs=2)
    (g_r,) = torch.autograd.grad(out.pow(2).sum(), [r], retain_graph=True)  # the kept chunk: no recomputation
    everything = torch.autograd.grad(out.pow(2).sum(), [r, *net.parameters()])
    torch.testing.assert_close(g_r, everything[0])
    assert all(g is not None and bool(g.abs().sum() > 0) for g in everything[1:])


@pytest.mark.parametrize("v_is_zero", [False, True])
def test_painn_messages_gradcheck(v_is_zero):
    """The analytic backward of PaiNN's large-system messages (phi, v, vectors, distances, filter), float64."""
    torch.manual_seed(2)
    n_rbf, f = 4, 3
    radial, cutoff = BesselRBF(n_rbf, 3.0).to(F64), CosineCutoff(3.0).to(F64)
    i = torch.tensor([0, 0, 1, 2, 3, 3, 1])
    j = torch.tensor([1, 2, 3, 0, 1, 2, 2])
    phi = torch.randn(4, 3 * f, dtype=F64, requires_grad=True)
    v = torch.randn(4, 3, f, dtype=F64, requires_grad=True)
    vectors = torch.randn(7, 3, dtype=F64)
    vectors = (vectors * (0.8 + 2.4 * torch.rand(7, 1, dtype=F64)) / vectors.norm(dim=1, keepdim=True)).requires_grad_()
    r = vectors.detach().norm(dim=1).requires_grad_()  # a separate input, as in the model
    weight = torch.randn(3 * f, n_rbf, dtype=F64, requires_grad=True)
    bias = torch.randn(3 * f, dtype=F64, requires_grad=True)
    spec = (radial, cutoff, i, j, v_is_zero, pair_ranges(7, 3))
    assert torch.autograd.gradcheck(lambda *t: PaiNNMessages.apply(spec, *t), (phi, v, vectors, r, weight, bias))


@pytest.mark.parametrize("name", ["schnet", "painn"])
def test_large_path_parameter_gradients_in_eval_mode(name, shuffled_pairs):
    """Eval mode, large-system path: the energy's parameter gradients equal the whole-system ones."""
    pot = make_potential(name, F64).eval()
    water = periodic_water()
    water.rattle(0.05, seed=4)
    grads = []
    for setter in (_set_whole, _set_small_chunks):
        setter(pot)
        energy = pot(batch_of([water], F64), compute_forces=False)[keys.ENERGY].sum()
        grads.append(torch.autograd.grad(energy, list(pot.parameters()), allow_unused=True))
    assert shuffled_pairs["chunks"] > 0
    for a, b in zip(*grads):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
