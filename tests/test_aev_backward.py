"""The closed-form AEV backward (AEV.vector_jacobian_many) and the committee pass built on it.

Everything in float64 against autograd: the AEV's vector-Jacobian products for
K gradients at once, and a committee's per-member forces and strain gradients
with ``analytic_backward`` on and off, and against each member alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from nnp import keys
from nnp.committee import Committee
from nnp.model_inputs import pair_inputs
from nnp.potential import stress_from_strain_gradient
from tests.test_models import acetamide, batch_of, ethanol, make_potential, periodic_water

TOL = dict(rtol=1e-10, atol=1e-10)


def members_of(n: int = 3) -> list:
    return [make_potential("ani", torch.float64, seed=s) for s in range(n)]


def diamond() -> Atoms:
    atoms = bulk("C", "diamond", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=4)
    return atoms


def sparse_cluster() -> Atoms:
    """Pairs just inside and just beyond the angular cutoff (3.5 Å), and near the radial one (5.2 Å)."""
    positions = [
        [0.0, 0.0, 0.0],
        [3.48, 0.0, 0.0],  # 3.48: angular and radial
        [0.0, 3.53, 0.0],  # 3.53: radial only
        [0.1, 0.2, 5.17],  # ~5.18: radial only, near its cutoff
        [3.3, 0.5, 1.2],
        [-1.05, 0.3, -0.2],  # a bond, for ordinary triples
    ]
    return Atoms("COCNHH"[:6], positions=positions)


def structures(name: str) -> list[Atoms]:
    return {
        "molecules": [ethanol(), acetamide()],
        "diamond": [diamond()],
        "water_cell": [periodic_water()],
        "mixed": [ethanol(), diamond(), sparse_cluster()],
        "sparse": [sparse_cluster()],
        "tiny": [Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]]), Atoms("O"), Atoms("N")],
    }[name]


def pair_geometry(pot, batch):
    species = pot.species_of(batch[keys.Z])
    inputs, _, _ = pair_inputs(batch, species, pot.cutoff, False, False)
    return species, inputs[keys.PAIRS], inputs[keys.PAIR_VECTORS].detach()


def autograd_vjp(aev, species, pairs, vectors, g, first_center=0, n_centers=-1):
    """dE_k/d(vectors) (K, P, 3) by autograd, distances = |vectors| in the graph."""
    v = vectors.clone().requires_grad_(True)
    features = aev(species, pairs, v, torch.linalg.norm(v, dim=-1), first_center, n_centers)
    rows = []
    for k in range(g.shape[0]):
        (grad,) = torch.autograd.grad([features], [v], grad_outputs=[g[k]], retain_graph=True, allow_unused=True)
        rows.append(grad if grad is not None else torch.zeros_like(v))
    return torch.stack(rows)


# ------------------------------------------------------------- the AEV alone
@pytest.mark.parametrize("name", ["molecules", "water_cell", "diamond", "sparse", "tiny"])
def test_vector_jacobian_many_equals_autograd(name):
    aev = make_potential("ani", torch.float64).model.aev
    pot = make_potential("ani", torch.float64)
    species, pairs, vectors = pair_geometry(pot, batch_of(structures(name), torch.float64))
    g = torch.randn((4, species.shape[0], aev.length), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = aev.vector_jacobian_many(species, pairs, vectors, torch.linalg.norm(vectors, dim=-1), g)
    assert got.shape == (4, vectors.shape[0], 3)
    torch.testing.assert_close(got, autograd_vjp(aev, species, pairs, vectors, g), **TOL)


def test_hand_made_pairs_around_both_cutoffs():
    """Pairs exactly as given (no neighbor list): beyond the radial cutoff too, and clamped radial exps."""
    aev = make_potential("ani", torch.float64).model.aev
    species = torch.tensor([0, 1, 2, 3, 1, 0])
    rng = np.random.default_rng(5)
    lengths = [0.95, 1.4, 2.2, 3.45, 3.499, 3.501, 3.6, 4.6, 5.15, 5.199, 5.21, 5.6]
    i, j, vecs = [], [], []
    for center in range(6):
        for n, d in enumerate(lengths[center % 3 :: 2]):
            u = rng.normal(size=3)
            i.append(center)
            j.append((center + n + 1) % 6)
            vecs.append(d * u / np.linalg.norm(u))
    pairs = torch.tensor([i, j])
    vectors = torch.tensor(np.array(vecs))
    g = torch.randn((3, 6, aev.length), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = aev.vector_jacobian_many(species, pairs, vectors, torch.linalg.norm(vectors, dim=-1), g)
    want = autograd_vjp(aev, species, pairs, vectors, g)
    torch.testing.assert_close(got, want, **TOL)
    beyond = torch.linalg.norm(vectors, dim=-1) >= aev.radial_cutoff
    assert bool(beyond.any()) and float(got[:, beyond].abs().max()) == 0.0


def test_a_slice_of_centers():
    """first_center / n_centers: the rows of atoms a..b-1 from their own pairs, as the forward."""
    pot = make_potential("ani", torch.float64)
    aev = pot.model.aev
    species, pairs, vectors = pair_geometry(pot, batch_of([ethanol(), acetamide()], torch.float64))
    a, b = 4, 13
    keep = (pairs[0] >= a) & (pairs[0] < b)
    pairs, vectors = pairs[:, keep], vectors[keep]
    distances = torch.linalg.norm(vectors, dim=-1)
    g = torch.randn((2, b - a, aev.length), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    got = aev.vector_jacobian_many(species, pairs, vectors, distances, g, a, b - a)
    torch.testing.assert_close(got, autograd_vjp(aev, species, pairs, vectors, g, a, b - a), **TOL)
    # with the forward's own geometry: the same numbers, and the same AEVs
    features, geometry = aev.forward_with_geometry(species, pairs, vectors, distances, a, b - a)
    torch.testing.assert_close(features, aev(species, pairs, vectors, distances, a, b - a), **TOL)  # (compiled kernel)
    again = aev.vector_jacobian_many(species, pairs, vectors, distances, g, a, b - a, geometry=geometry)
    assert torch.equal(again, got)


def test_shuffled_pairs_in_chunks():
    """The ANI chunked path sorts unsorted pairs by center; the backward comes back in the input order."""
    pot = make_potential("ani", torch.float64)
    model = pot.model
    model.chunk_atoms = 5
    batch = batch_of([ethanol(), acetamide(), diamond()], torch.float64)
    species = pot.species_of(batch[keys.Z])
    inputs, _, _ = pair_inputs(batch, species, pot.cutoff, False, False)
    order = torch.randperm(inputs[keys.PAIRS].shape[1], generator=torch.Generator().manual_seed(3))
    vectors = inputs[keys.PAIR_VECTORS].detach()[order]
    shuffled = dict(inputs, **{keys.PAIRS: inputs[keys.PAIRS][:, order], keys.PAIR_VECTORS: vectors})
    shuffled[keys.PAIR_DISTANCES] = torch.linalg.norm(vectors, dim=-1)
    features, state = model.descriptors_with_geometry(shuffled)
    assert len(state["bounds"]) > 1 and state["order"].numel() > 0
    torch.testing.assert_close(features, torch.cat([c[2] for c in model.descriptor_chunks(shuffled)]), **TOL)
    g = torch.randn((3,) + tuple(features.shape), dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    got = model.descriptor_vector_jacobian_many(state, g).transpose(1, 2)  # (K, P, 3)
    v = vectors.clone().requires_grad_(True)
    chunked = dict(shuffled, **{keys.PAIR_VECTORS: v, keys.PAIR_DISTANCES: torch.linalg.norm(v, dim=-1)})
    out = torch.cat([c[2] for c in model.descriptor_chunks(chunked)])
    want = torch.stack([torch.autograd.grad([out], [v], grad_outputs=[g[k]], retain_graph=True)[0] for k in range(3)])
    torch.testing.assert_close(got, want, **TOL)


# ------------------------------------------------------------- the committee
def member_gradients(committee: Committee, batch: dict, analytic: bool) -> list[torch.Tensor]:
    """Per-member dE/d(positions) (K, N, 3) and dE/d(strain) (K, M, 3, 3) of the shared-descriptor pass."""
    committee.analytic_backward = analytic
    species = committee.species_of(batch[keys.Z])
    n_structures = batch[keys.N_ATOMS].shape[0]
    with torch.enable_grad():
        inputs, positions, strain = pair_inputs(batch, species, committee.cutoff, True, True)
        _, grads = committee._shared_descriptor_pass(
            inputs, species, batch[keys.IDX_M], n_structures, [positions, strain], True
        )
    return [g.detach() for g in grads]


@pytest.mark.parametrize("name", ["molecules", "diamond", "water_cell", "mixed", "tiny"])
def test_committee_analytic_equals_autograd_and_the_members(name):
    members = members_of(3)
    committee = Committee(members)
    assert committee.shared_descriptor and committee.analytic_backward
    batch = batch_of(structures(name), torch.float64)
    analytic = member_gradients(committee, dict(batch), True)
    autograd = member_gradients(committee, dict(batch), False)
    for a, b in zip(analytic, autograd):
        torch.testing.assert_close(a, b, **TOL)
    # the committee's outputs, both ways
    committee.analytic_backward = True
    new = {k: v.detach() for k, v in committee(dict(batch), compute_stress=True).items()}
    committee.analytic_backward = False
    old = {k: v.detach() for k, v in committee(dict(batch), compute_stress=True).items()}
    assert new.keys() == old.keys()
    for key in new:
        torch.testing.assert_close(new[key], old[key], equal_nan=True, **TOL)
    # each member alone (autograd through its own AEV)
    cell = batch[keys.CELL]
    for k, member in enumerate(members):
        alone = member(dict(batch), compute_stress=True)
        torch.testing.assert_close(new[keys.MEMBER_ENERGY][k], alone[keys.ENERGY].detach(), **TOL)
        torch.testing.assert_close(new[keys.MEMBER_FORCES][k], alone[keys.FORCES].detach(), **TOL)
        stress = stress_from_strain_gradient(analytic[1][k], cell)
        torch.testing.assert_close(stress, alone[keys.STRESS].detach(), equal_nan=True, **TOL)


@pytest.mark.parametrize("hidden", [[[16, 16], [12], [16, 16]], [[], []]])
def test_members_with_other_networks(hidden):
    """Members whose networks differ run member by member; single-layer networks run stacked."""
    members = [make_potential("ani", torch.float64, seed=k, hidden=h) for k, h in enumerate(hidden)]
    committee = Committee(members)
    assert committee.shared_descriptor
    batch = batch_of([ethanol(), diamond()], torch.float64)
    analytic = member_gradients(committee, dict(batch), True)
    autograd = member_gradients(committee, dict(batch), False)
    for a, b in zip(analytic, autograd):
        torch.testing.assert_close(a, b, **TOL)
    committee.analytic_backward = True
    out = committee(dict(batch))
    for k, member in enumerate(members):
        alone = member(dict(batch))
        torch.testing.assert_close(out[keys.MEMBER_ENERGY][k].detach(), alone[keys.ENERGY].detach(), **TOL)
        torch.testing.assert_close(out[keys.MEMBER_FORCES][k].detach(), alone[keys.FORCES].detach(), **TOL)


def test_committee_in_chunks():
    """Chunked AEVs (chunk_atoms small): the same per-member gradients as unchunked."""
    members = members_of(2)
    committee = Committee(members)
    batch = batch_of([ethanol(), acetamide(), diamond()], torch.float64)
    whole = member_gradients(committee, dict(batch), True)
    members[0].model.chunk_atoms = 7
    chunked = member_gradients(committee, dict(batch), True)
    chunked_autograd = member_gradients(committee, dict(batch), False)
    for a, b, c in zip(whole, chunked, chunked_autograd):
        torch.testing.assert_close(a, b, **TOL)
        torch.testing.assert_close(b, c, **TOL)


def test_more_than_1024_atoms():
    """Over chunk_atoms (set to 1024 here) atoms: the chunked path, against autograd and a lone molecule."""
    mol = ethanol()
    grid = [(x, y, z) for x in range(6) for y in range(5) for z in range(4)]  # 120 x 9 = 1080 atoms
    big = Atoms()
    for offset in grid:
        part = mol.copy()
        part.positions += 12.0 * np.array(offset)
        big += part
    assert len(big) > 1024
    committee = Committee(members_of(2))
    for member in committee.members:
        member.model.chunk_atoms = 1024
    batch = batch_of([big], torch.float64)
    analytic = member_gradients(committee, dict(batch), True)
    autograd = member_gradients(committee, dict(batch), False)
    torch.testing.assert_close(analytic[0], autograd[0], **TOL)
    # molecules 12 Å apart do not see each other: every copy has the lone molecule's forces
    lone = member_gradients(committee, batch_of([mol], torch.float64), True)[0]
    torch.testing.assert_close(analytic[0].view(2, len(grid), len(mol), 3), lone[:, None].expand(2, len(grid), len(mol), 3), **TOL)


def test_no_forces_needs_no_backward():
    committee = Committee(members_of(2))
    batch = batch_of([ethanol()], torch.float64)
    out = committee(dict(batch), compute_forces=False)
    committee.analytic_backward = False
    ref = committee(dict(batch), compute_forces=False)
    assert keys.FORCES not in out
    torch.testing.assert_close(out[keys.MEMBER_ENERGY].detach(), ref[keys.MEMBER_ENERGY].detach(), **TOL)


def test_water_molecule_sanity():
    """Forces sum to zero (translation invariance) on the analytic path."""
    committee = Committee(members_of(2))
    out = committee(batch_of([molecule("H2O"), ethanol()], torch.float64))
    forces = out[keys.MEMBER_FORCES].detach()
    assert float(forces[:, :3].sum(1).abs().max()) < 1e-12


def test_stacked_networks_follow_the_members(tmp_path):
    """The stacked copies of the members' weights follow in-place changes and new tensors; export still works."""
    from nnp.export import export_potential, load_exported

    members = members_of(2)
    committee = Committee(members)
    batch = batch_of([ethanol()], torch.float64)
    committee(dict(batch))
    with torch.no_grad():
        members[1].model.networks.nets[0][0].weight.mul_(1.5)  # in place
        members[0].model.networks.nets[1][2].bias = torch.nn.Parameter(torch.ones(16, dtype=torch.float64))  # replaced
    out = committee(dict(batch))
    for k, member in enumerate(members):
        alone = member(dict(batch))
        torch.testing.assert_close(out[keys.MEMBER_ENERGY][k].detach(), alone[keys.ENERGY].detach(), **TOL)
        torch.testing.assert_close(out[keys.MEMBER_FORCES][k].detach(), alone[keys.FORCES].detach(), **TOL)
    exported = load_exported(export_potential(committee, tmp_path / "c.ts"))
    torch.testing.assert_close(exported(dict(batch))[keys.FORCES], out[keys.FORCES].detach(), **TOL)
