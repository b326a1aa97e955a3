"""Neighbor lists kept between MD steps with a skin (nnp.neighbor_skin) give the same results as new lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from test_models import ethanol, make_potential

from nnp import NNPCalculator
from nnp.neighbor_skin import SkinNeighborList, build_neighbors
from nnp.neighbors import neighbor_list

F64 = torch.float64


def _trajectory(atoms, steps: int, step_size: float, seed: int = 0):
    """Frames drifting by up to ``step_size`` Å per atom per step (a list rebuild every few steps)."""
    rng = np.random.default_rng(seed)
    velocity = rng.normal(size=(len(atoms), 3))
    velocity *= step_size / np.linalg.norm(velocity, axis=1, keepdims=True)
    for k in range(steps):
        frame = atoms.copy()
        frame.positions = atoms.positions + k * velocity + rng.normal(scale=0.01, size=velocity.shape)
        yield frame


@pytest.mark.parametrize("name", ["ani", "painn"])
def test_skin_reuse_gives_the_energies_of_new_lists(name):
    copper = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 1))
    copper.rattle(0.05, seed=1)
    copper.set_chemical_symbols(["C", "H", "N", "O"] * 4)  # elements the test model knows
    for start in (ethanol(), copper):
        pot = make_potential(name, F64).eval()
        fresh = NNPCalculator(pot)
        reused = NNPCalculator(pot, skin=0.6)
        for frame in _trajectory(start, steps=7, step_size=0.12):
            frame.calc = fresh
            e0, f0 = frame.get_potential_energy(), frame.get_forces()
            s0 = frame.get_stress() if frame.pbc.all() else None
            frame.calc = reused
            np.testing.assert_allclose(frame.get_potential_energy(), e0, rtol=1e-12, atol=1e-10)
            np.testing.assert_allclose(frame.get_forces(), f0, rtol=1e-10, atol=1e-10)
            if s0 is not None:
                np.testing.assert_allclose(frame.get_stress(), s0, rtol=1e-10, atol=1e-10)
        # reused between steps, and rebuilt once atoms moved more than half the skin
        assert 1 < reused.neighbors.builds < reused.neighbors.calls


def test_skin_list_rebuilds_when_cell_changes():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    nl = SkinNeighborList(3.0, 1.0)
    pos = torch.as_tensor(atoms.positions)
    cell = torch.as_tensor(atoms.cell.array)
    pbc = torch.ones(3, dtype=torch.bool)
    n0 = nl(pos, cell, pbc).pairs.shape[1]
    assert nl(pos, cell, pbc).pairs.shape[1] == n0 and nl.builds == 1
    assert nl(pos, cell * 1.05, pbc).pairs.shape[1] < n0 and nl.builds == 2


def test_vesin_lists_equal_nnp_lists():
    pytest.importorskip("vesin")
    atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 3, 2))  # a small triclinic cell: many images
    atoms.rattle(0.1, seed=2)
    for periodic in (True, False):
        atoms.pbc = periodic
        pos = torch.as_tensor(atoms.positions)
        cell = torch.as_tensor(atoms.cell.array)
        pbc = torch.as_tensor(atoms.pbc)
        ours = neighbor_list(pos, torch.zeros(len(atoms), dtype=torch.long), torch.tensor([len(atoms)]), cell[None], pbc[None], 4.0)
        theirs = build_neighbors(pos, cell, pbc, 4.0)
        key = lambda nb: sorted(zip(*nb.pairs.tolist(), *nb.images.t().tolist()))  # noqa: E731
        assert key(theirs) == key(ours)
