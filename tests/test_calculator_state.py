"""NNPCalculator's per-step shortcuts: its own change check and the reused batch.

The calculator compares atoms with ``np.array_equal`` instead of ASE's
``compare_atoms`` and, when only positions moved, reuses the last collated
batch with the new positions. Both must give exactly what the slow path gives.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase.calculators.calculator import compare_atoms
from test_models import ethanol, make_potential, periodic_water

from nnp.calculator import NNPCalculator


def _changed(atoms, what: str):
    new = atoms.copy()
    if what == "positions":
        new.positions[2] += [0.01, 0.0, 0.0]
    elif what == "numbers":
        new.numbers[0] = 8 if new.numbers[0] != 8 else 6
    elif what == "cell":
        new.cell = new.cell.array * 1.01 if new.cell.rank == 3 else np.eye(3) * 10.0
    elif what == "pbc":
        new.pbc = ~new.pbc
    elif what == "initial_charges":
        new.set_initial_charges(np.linspace(-0.1, 0.1, len(new)))
    elif what == "initial_magmoms":
        new.set_initial_magnetic_moments(np.ones(len(new)))
    return new


@pytest.mark.parametrize("structure", [ethanol, periodic_water])
@pytest.mark.parametrize("what", ["positions", "numbers", "cell", "pbc", "initial_charges", "initial_magmoms", None])
def test_check_state_matches_ase(structure, what):
    atoms = structure()
    calc = NNPCalculator(make_potential("ani"))
    atoms.calc = calc
    atoms.get_potential_energy()
    new = _changed(atoms, what) if what else atoms.copy()
    assert sorted(calc.check_state(new)) == sorted(compare_atoms(calc.atoms, new))
    assert (what in calc.check_state(new)) if what else calc.check_state(new) == []


def test_zero_charges_are_a_change_as_in_ase():
    """ASE counts setting an absent per-atom array, even to zeros, as a change."""
    atoms = ethanol()
    calc = NNPCalculator(make_potential("ani"))
    atoms.calc = calc
    atoms.get_potential_energy()
    new = atoms.copy()
    new.set_initial_charges(np.zeros(len(new)))
    assert calc.check_state(new) == ["initial_charges"] == compare_atoms(calc.atoms, new)


@pytest.mark.parametrize("name", ["ani", "schnet"])
@pytest.mark.parametrize("skin", [0.0, 1.0])
def test_reused_batch_gives_a_fresh_calculators_numbers(name, skin):
    """Steps that only move atoms reuse the batch; a total-charge change rebuilds it."""
    pot = make_potential(name)
    atoms = periodic_water()
    atoms.calc = NNPCalculator(pot, skin=skin)
    rng = np.random.default_rng(0)
    for _ in range(4):
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        fresh = atoms.copy()
        fresh.calc = NNPCalculator(pot)
        assert energy == pytest.approx(fresh.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(forces, fresh.get_forces(), atol=1e-5)
        np.testing.assert_allclose(stress, fresh.get_stress(), atol=1e-6)
    atoms.info["charge"] = 1
    assert "initial_charges" in atoms.calc.check_state(atoms)
