"""Neighbor-list backends cross-checked against a naive reference and ase.neighborlist.

The contract (nnp.neighbors): both directions of every pair, integer images, and
r_ij = R[j] - R[i] + images @ cell[m] shorter than the cutoff. Every test compares
the *set* of (i, j, image) triples, so ordering is free but nothing may be missing
or doubled.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from nnp import neighbors as nb
from nnp.neighbors import neighbor_list

CUTOFF = 5.2


# ----------------------------------------------------------------- helpers
def _batch(structures: list[Atoms], dtype=torch.float64) -> dict[str, torch.Tensor]:
    n_atoms = torch.tensor([len(a) for a in structures])
    return {
        "positions": torch.from_numpy(np.concatenate([a.positions for a in structures])).to(dtype),
        "idx_m": torch.repeat_interleave(torch.arange(len(structures)), n_atoms),
        "n_atoms": n_atoms,
        "cell": torch.from_numpy(np.stack([a.cell.array for a in structures])).to(dtype),
        "pbc": torch.from_numpy(np.stack([a.pbc for a in structures])),
    }


def _run(structures: list[Atoms], cutoff: float = CUTOFF, dtype=torch.float64) -> set[tuple]:
    b = _batch(structures, dtype)
    out = neighbor_list(b["positions"], b["idx_m"], b["n_atoms"], b["cell"], b["pbc"], cutoff)
    pairs, images = out.pairs, out.images
    assert pairs.dtype == torch.long and images.dtype == torch.long
    assert pairs.shape[0] == 2 and images.shape == (pairs.shape[1], 3)
    # the contract's vector is shorter than the cutoff for every returned pair
    idx_m = b["idx_m"]
    vec = (
        b["positions"][pairs[1]]
        - b["positions"][pairs[0]]
        + torch.einsum("pk,pkl->pl", images.to(dtype), b["cell"][idx_m[pairs[0]]])
    )
    if vec.shape[0]:
        assert float(vec.norm(dim=1).max()) < cutoff
        assert bool((idx_m[pairs[0]] == idx_m[pairs[1]]).all()), "pair crosses structures"
    triples = {
        (int(i), int(j), *map(int, s)) for (i, j), s in zip(pairs.t().tolist(), images.tolist(), strict=True)
    }
    assert len(triples) == pairs.shape[1], "duplicate pairs"
    return triples


def _naive(structures: list[Atoms], cutoff: float = CUTOFF) -> set[tuple]:
    """Every (i, j, S) with |R_j - R_i + S C| < cutoff, S enumerated far enough to
    cover unwrapped positions too (no wrapping, no binning: nothing to get wrong)."""
    out: set[tuple] = set()
    start = 0
    for atoms in structures:
        pos = atoms.positions
        cell = atoms.cell.array
        n = len(atoms)
        ranges = []
        for k in range(3):
            if atoms.pbc[k]:
                inv = np.linalg.inv(cell)
                spacing = 1.0 / np.linalg.norm(inv[:, k])
                frac = pos @ inv
                spread = np.ptp(frac[:, k]) if n else 0.0
                reach = int(np.ceil(cutoff / spacing + spread)) + 1
                ranges.append(range(-reach, reach + 1))
            else:
                ranges.append(range(0, 1))
        for s in itertools.product(*ranges):
            shift = np.asarray(s, dtype=float) @ cell
            d = pos[None, :, :] + shift - pos[:, None, :]  # (i, j, 3)
            close = np.linalg.norm(d, axis=-1) < cutoff
            if s == (0, 0, 0):
                np.fill_diagonal(close, False)
            for i, j in zip(*np.nonzero(close), strict=True):
                out.add((start + int(i), start + int(j), *s))
        start += n
    return out


def _ase(structures: list[Atoms], cutoff: float = CUTOFF) -> set[tuple]:
    out: set[tuple] = set()
    start = 0
    for atoms in structures:
        i, j, s = ase_neighbor_list("ijS", atoms, cutoff)
        out.update((start + int(a), start + int(b), *map(int, c)) for a, b, c in zip(i, j, s, strict=True))
        start += len(atoms)
    return out


def _rng_molecule(n: int, seed: int, density: float = 0.1) -> Atoms:
    """n atoms at random in a cube of the given number density (atoms/Å^3), no cell."""
    rng = np.random.default_rng(seed)
    edge = (n / density) ** (1 / 3)
    return Atoms("C" * n, positions=rng.uniform(0, edge, (n, 3)))


def _periodic(n: int, cell, seed: int, pbc=True, unwrap: int = 0) -> Atoms:
    """Random atoms in a periodic cell; ``unwrap`` > 0 moves each atom by up to that
    many random lattice vectors (positions outside the cell, as MD leaves them)."""
    rng = np.random.default_rng(seed)
    cell = np.asarray(cell, dtype=float)
    frac = rng.uniform(0, 1, (n, 3))
    if unwrap:
        frac = frac + rng.integers(-unwrap, unwrap + 1, (n, 3)) * np.asarray(pbc, dtype=float)
    return Atoms("Cu" * n, scaled_positions=frac, cell=cell, pbc=pbc)


# ------------------------------------------------------------------- tests
def test_small_molecules_brute_force_matches_naive():
    mols = [molecule(name) for name in ("CH4", "C6H6", "CH3CH2OH", "H2O", "C2H6")]
    for a in mols:
        a.positions += np.random.default_rng(0).normal(0, 0.05, a.positions.shape)
    assert _run(mols) == _naive(mols)
    assert _run(mols, cutoff=1.2) == _naive(mols, cutoff=1.2)


def test_single_atom_and_isolated_atoms_give_no_pairs():
    far = Atoms("HH", positions=[[0, 0, 0], [0, 0, 50]])
    assert _run([Atoms("H", positions=[[0, 0, 0]]), far]) == set()


def test_large_molecule_cell_list_matches_naive_and_ase():
    big = _rng_molecule(nb.BRUTE_FORCE_MAX_ATOMS + 300, seed=1)
    ref = _naive([big])
    assert len(ref) > 0
    assert _run([big]) == ref
    assert _run([big]) == _ase([big])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixed_batch_matches_naive(dtype):
    """Small molecules (brute force), a large cluster and periodic cells in one batch."""
    structures = [
        molecule("CH3CH2OH"),
        _rng_molecule(nb.BRUTE_FORCE_MAX_ATOMS + 50, seed=2),
        molecule("C6H6"),
        bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3)),
        _periodic(20, np.diag([6.0, 7.0, 8.0]), seed=3),
    ]
    assert _run(structures, dtype=dtype) == _naive(structures)


def test_periodic_copper_matches_ase():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3))
    cu.rattle(0.05, seed=4)
    assert _run([cu]) == _ase([cu]) == _naive([cu])


@pytest.mark.parametrize(
    "cell",
    [
        np.diag([2.5, 2.5, 2.5]),  # edge < cutoff / 2: three images each way
        np.diag([1.9, 3.0, 11.0]),  # anisotropic, some directions need several images
        [[3.0, 0.0, 0.0], [2.6, 2.2, 0.0], [1.0, 1.2, 2.4]],  # skewed triclinic
    ],
    ids=["tiny-cubic", "anisotropic", "triclinic"],
)
def test_small_cells_needing_many_images(cell):
    atoms = _periodic(3, cell, seed=5)
    ref = _naive([atoms])
    assert _run([atoms]) == ref
    assert _run([atoms]) == _ase([atoms])
    # every atom sees many periodic copies of itself
    assert any(i == j for i, j, *_ in ref)


@pytest.mark.parametrize("cell", [np.diag([7.0, 8.0, 9.0]), [[5.0, 0, 0], [2.0, 5.0, 0], [1.0, 1.5, 5.5]]])
def test_unwrapped_positions(cell):
    """Positions several cells away from the box: images must compensate exactly."""
    atoms = _periodic(12, cell, seed=6, unwrap=3)
    assert (atoms.get_scaled_positions(wrap=False) > 1).any()
    ref = _naive([atoms])
    assert _run([atoms]) == ref
    assert _run([atoms]) == _ase([atoms])


def test_partial_periodicity_slab():
    atoms = _periodic(15, np.diag([4.0, 5.0, 20.0]), seed=7, pbc=[True, True, False], unwrap=2)
    ref = _naive([atoms])
    assert _run([atoms]) == ref == _ase([atoms])
    assert all(t[4] == 0 for t in ref), "no images along a non-periodic direction"


def test_pairs_are_symmetric():
    atoms = _periodic(10, [[4.0, 0, 0], [1.0, 4.5, 0], [0.5, 0.5, 4.2]], seed=8, unwrap=1)
    triples = _run([atoms])
    for i, j, *s in triples:
        assert (j, i, *(-np.asarray(s))) in triples
