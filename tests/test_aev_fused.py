"""The fused AEV (one autograd node, closed-form backward; compiled kernel or torch ops) against the reference.

The reference is autograd through :meth:`nnp.models.aev.AEV._compute`'s ops
(``aev.fused = False``). Both backends of the fused path are checked: the
compiled kernel (:mod:`nnp.models.aev_native`, when a C compiler is present)
and the torch closed form it falls back to without one.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from ase import Atoms

from nnp import keys
from nnp.models import aev_native
from nnp.models.aev_fused import FusedAEV
from nnp.training.loss import EnergyForceLoss
from tests.test_aev_backward import diamond, pair_geometry, sparse_cluster
from tests.test_models import acetamide, batch_of, ethanol, make_potential, periodic_water

BACKENDS = ["native", "torch"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """The fused path on the compiled kernel (skipped without a C compiler) or on torch ops."""
    if request.param == "native":
        if aev_native.library() is None:
            pytest.skip("no compiled AEV kernel here (no C compiler)")
    else:
        monkeypatch.setattr(aev_native, "library", lambda: None)
    return request.param


def tiny() -> Atoms:
    """Five atoms of four elements: pairs inside and beyond the angular cutoff, a few dozen triples."""
    return Atoms("CHNOH", positions=[[0, 0, 0], [1.05, 0.1, 0], [-0.2, 1.4, 0.1], [0.3, -0.4, 1.3], [2.6, 1.9, -0.8]])


def fused_function(aev, species, pairs):
    return lambda v: FusedAEV.apply(aev, species, pairs, v, 0, -1)


def test_gradcheck_and_gradgradcheck(backend):
    pot = make_potential("ani", torch.float64)
    aev = pot.model.aev
    species, pairs, vectors = pair_geometry(pot, batch_of([tiny()], torch.float64))
    v = vectors.clone().requires_grad_(True)
    fn = fused_function(aev, species, pairs)
    assert torch.autograd.gradcheck(fn, (v,), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (v,), fast_mode=True)


@pytest.mark.parametrize("structures", [[ethanol(), acetamide()], [periodic_water(), diamond()], [sparse_cluster()]],
                         ids=["molecules", "cells", "sparse"])
def test_energy_forces_stress_equal_reference(backend, structures):
    pot = make_potential("ani", torch.float64).eval()
    batch = batch_of(structures, torch.float64)
    stress = bool(batch[keys.PBC].any())
    results = {}
    for fused in (False, True):
        pot.model.aev.fused = fused
        results[fused] = pot(batch, compute_forces=True, compute_stress=stress)
    for key in [keys.ENERGY, keys.FORCES] + ([keys.STRESS] if stress else []):
        torch.testing.assert_close(results[True][key], results[False][key], rtol=1e-10, atol=1e-10)


def test_float32_and_chunks_equal_reference(backend):
    """Float32 to float tolerance; chunks of centers (first_center > 0) through ANI's chunked descriptor."""
    pot = make_potential("ani", torch.float32).eval()
    pot.model.chunk_atoms = 7
    batch = batch_of([ethanol(), acetamide(), diamond()], torch.float32)
    results = {}
    for fused in (False, True):
        pot.model.aev.fused = fused
        results[fused] = pot(batch, compute_forces=True)
    torch.testing.assert_close(results[True][keys.ENERGY], results[False][keys.ENERGY], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(results[True][keys.FORCES], results[False][keys.FORCES], rtol=1e-4, atol=1e-4)


def test_training_gradients_equal_reference(backend):
    """Forces in the loss (double backward through the fused node's backward, as an eval-mode
    model gets it; training mode runs the reference path): the parameters' gradients agree."""
    pot = make_potential("ani", torch.float64).eval()
    batch = batch_of([ethanol(), periodic_water()], torch.float64)
    batch[keys.ENERGY] = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    batch[keys.FORCES] = torch.randn(batch[keys.R].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    loss_fn = EnergyForceLoss()
    grads = {}
    for fused in (False, True):
        pot.model.aev.fused = fused
        pot.zero_grad(set_to_none=True)
        loss, _ = loss_fn(pot(batch, compute_forces=True, create_graph=True), batch)
        loss.backward()
        grads[fused] = [p.grad.clone() for p in pot.parameters() if p.grad is not None]
    assert len(grads[True]) == len(grads[False]) > 0
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_which_path_runs(backend):
    """Eval mode with forces: the fused node; training mode: the reference graph; no gradient: no graph."""
    pot = make_potential("ani", torch.float64)
    aev = pot.model.aev
    species, pairs, vectors = pair_geometry(pot, batch_of([ethanol()], torch.float64))
    v = vectors.clone().requires_grad_(True)
    d = torch.linalg.norm(v, dim=-1)
    assert type(aev.eval()(species, pairs, v, d).grad_fn).__name__ == "FusedAEVBackward"
    assert type(aev.train()(species, pairs, v, d).grad_fn).__name__ != "FusedAEVBackward"
    plain = aev.eval()(species, pairs, vectors, d.detach())
    assert plain.grad_fn is None
    aev.fused = False
    torch.testing.assert_close(plain, aev(species, pairs, vectors, d.detach()), rtol=1e-12, atol=1e-12)


def test_torchscript_runs_the_reference_forward():
    """A scripted potential (export, MD with jit) takes the reference path: same energies and forces."""
    pot = make_potential("ani", torch.float64).eval()
    batch = batch_of([ethanol()], torch.float64)
    eager = pot(batch, compute_forces=True)
    scripted = torch.jit.script(pot)(batch, True)
    torch.testing.assert_close(scripted[keys.ENERGY], eager[keys.ENERGY], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scripted[keys.FORCES], eager[keys.FORCES], rtol=1e-10, atol=1e-10)


def test_without_a_compiler_it_says_so_once_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(aev_native, "_state", {"tried": False, "lib": None, "why": ""})
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("NNP_CACHE_DIR", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert aev_native.library() is None
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert aev_native.library() is None
    assert not again  # said once
    pot = make_potential("ani", torch.float64).eval()
    assert not aev_native.supports(pot.model.aev, torch.zeros(1, 3, dtype=torch.float64))
    forces = pot(batch_of([ethanol()], torch.float64), compute_forces=True)[keys.FORCES]
    assert torch.isfinite(forces).all()


def test_kernel_leaves_the_floating_point_environment_alone(backend):
    """The kernel is compiled with -ffast-math but not linked with it (crtfastmath would flush
    every denormal of the process to zero)."""
    aev_native.library()
    tiny_value = torch.tensor([1e-40], dtype=torch.float32)
    assert float(tiny_value * 1.0) > 0.0


def test_non_finite_vectors_propagate_like_the_reference(backend):
    """NaN in a pair vector: the kernel (built with -ffast-math) is bypassed, NaN reaches the AEV as in the reference."""
    pot = make_potential("ani", torch.float64).eval()
    aev = pot.model.aev
    species, pairs, vectors = pair_geometry(pot, batch_of([ethanol()], torch.float64))
    vectors = vectors.clone()
    vectors[3, 0] = float("nan")
    v = vectors.requires_grad_(True)
    fused = aev(species, pairs, v, torch.linalg.norm(v, dim=-1))
    aev.fused = False
    reference = aev(species, pairs, v, torch.linalg.norm(v, dim=-1))
    assert torch.equal(torch.isnan(fused), torch.isnan(reference)) and bool(torch.isnan(fused).any())
