"""Silent wrongs turned into errors: elements missing from the training split, cells that cannot be inverted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from conftest import TINY_TRAIN, assert_clean_error, run_nnp
from test_data_common import make_group, small_ani_file, write_ani

from nnp import keys
from nnp.data import collate, open_dataset
from nnp.data.checks import check_cell
from nnp.data.splits import fingerprint, save_split
from nnp.data.statistics import fit_atomref
from nnp.errors import NNPError
from nnp.neighbors import neighbor_list


# ------------------------------------------------ atom reference energies
def _ani(tmp_path):
    """Four formulas (12 rows each); N only in C1H5N1 (rows 36..47 in group order)."""
    ds = open_dataset({"format": "hdf5", "path": str(small_ani_file(tmp_path / "a.h5")), "units": {"energy": "hartree"}})
    return ds, ds.composition_matrix(np.arange(len(ds)), ds.elements())


def test_atomref_refuses_an_element_missing_from_the_training_split(tmp_path):
    ds, comp = _ani(tmp_path)
    species = ds.elements()
    without_n = np.flatnonzero(comp[:, species.index(7)] == 0)
    with pytest.raises(NNPError) as err:
        fit_atomref(ds, without_n, species)
    msg = str(err.value)
    assert msg.startswith(f"{ds.path}: element N (Z=7) in 12 of 48 structures is in no structure of the training split (36 structures)")
    assert "would be 0 eV" in msg and "data.split.by=group" in msg and "data.split.train" in msg and "\n" not in msg


def test_atomref_names_every_missing_element(tmp_path):
    ds, comp = _ani(tmp_path)
    species = ds.elements()
    only_water = np.flatnonzero(comp[:, species.index(6)] == 0)  # H2O1: no C, no N
    with pytest.raises(NNPError, match=r"elements C \(Z=6\) in 36 of 48 structures; N \(Z=7\) in 12 of 48 structures are in no structure"):
        fit_atomref(ds, only_water, species)


def test_atomref_structures_without_energy_do_not_count():
    """An element only in training rows whose energy is NaN has nothing to fit either."""

    class Table:
        path = "table"

        def __init__(self):
            self.numbers = [np.array([1, 1, 8]), np.array([1, 1, 8]), np.array([6, 1, 1, 1, 1]), np.array([1, 1])]
            self.e = np.array([-14.0, -14.1, np.nan, -1.0])

        def __len__(self):
            return len(self.numbers)

        def energies(self):
            return self.e

        def composition_matrix(self, idx, species):
            return np.array([[np.sum(self.numbers[i] == z) for z in species] for i in idx], dtype=float)

    with pytest.raises(NNPError, match=r"^table: element C \(Z=6\) in 1 of 4 structures is in no structure"):
        fit_atomref(Table(), np.arange(4), [1, 6, 8])


def test_atomref_with_every_element_present_still_fits(tmp_path):
    ds, comp = _ani(tmp_path)
    ref, rms = fit_atomref(ds, np.arange(len(ds)), ds.elements())
    assert np.isfinite(ref).all() and (ref != 0).all() and np.isfinite(rms)


@pytest.mark.slow
def test_train_stops_with_one_line_when_the_split_misses_an_element(tmp_path):
    """The message reaches the user of `nnp train` as one line (here a saved split leaves N out of training)."""
    rng = np.random.default_rng(0)
    groups = {}
    for name, numbers in {"H2O1": [8, 1, 1], "C1H4": [6, 1, 1, 1, 1], "C1H5N1": [6, 7, 1, 1, 1, 1, 1]}.items():
        coords, energy, forces = make_group(numbers, 10, rng)
        groups[name] = {"atomic_numbers": np.array(numbers, np.uint8), "coordinates": coords, "gfn2.energy": energy,
                        "gfn2.forces": forces, "smiles": np.array([name.encode()] * 10)}
    path = write_ani(tmp_path / "d.h5", groups)
    ds = open_dataset({"format": "hdf5", "path": str(path), "energy_key": "gfn2.energy", "forces_key": "gfn2.forces",
                       "units": {"energy": "hartree"}})
    has_n = ds.composition_matrix(np.arange(len(ds)), [7])[:, 0] > 0
    split = {"train": np.flatnonzero(~has_n)[:16], "val": np.flatnonzero(~has_n)[16:], "test": np.flatnonzero(has_n)}
    save_split(tmp_path / "split.npz", split, len(ds), {}, fingerprint=fingerprint(ds.groups(), ds.energies()))
    res = run_nnp("train", "data=demo", f"data.path={path}", f"data.split_file={tmp_path / 'split.npz'}", *TINY_TRAIN,
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_error(res, str(path), "N (Z=7)", "training split")


# ----------------------------------------------------------------- cells
def _frames(cell, pbc):
    frames = []
    for k in range(3):
        atoms = Atoms("OH2", positions=[[0.0, 0.0, 0.1 * k], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
        if k == 1:
            atoms.cell, atoms.pbc = cell, pbc
        atoms.calc = SinglePointCalculator(atoms, energy=-10.0 - k, forces=np.zeros((3, 3)))
        frames.append(atoms)
    return frames


def _ase_cfg(path):
    return {"format": "ase", "path": str(path)}


ZERO_VECTOR = {0: [[0, 0, 0], [0, 4, 0], [0, 0, 4]], 1: [[4, 0, 0], [0, 0, 0], [0, 0, 4]], 2: [[4, 0, 0], [0, 4, 0], [0, 0, 0]]}


@pytest.mark.parametrize("suffix", [".extxyz", ".db"])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_zero_cell_vector_rejected_at_read_time(tmp_path, suffix, k):
    path = tmp_path / f"zero{suffix}"
    write(path, _frames(ZERO_VECTOR[k], True))
    with pytest.raises(NNPError) as err:
        open_dataset(_ase_cfg(path))
    assert str(err.value) == (f"{path}: structure 1: cell vector {k} has zero length "
                              "(a structure periodic in any direction needs three non-zero cell vectors)")


def test_predict_and_md_inputs_are_checked_too(tmp_path):
    """`nnp predict` / `nnp md` read their input with read_structures: the same line instead of a traceback."""
    from nnp.data.ase_files import read_structures

    path = tmp_path / "input.extxyz"
    write(path, _frames(ZERO_VECTOR[1], True))
    with pytest.raises(NNPError, match=r"input\.extxyz: structure 1: cell vector 1 has zero length"):
        read_structures(str(path))


def test_slab_with_zero_vacuum_vector_says_why(tmp_path):
    path = tmp_path / "slab.extxyz"
    write(path, _frames(ZERO_VECTOR[2], [True, True, False]))
    with pytest.raises(NNPError, match=r"structure 1: cell vector 2 has zero length .*also along its non-periodic ones\)$"):
        open_dataset(_ase_cfg(path))


@pytest.mark.parametrize("cell", [[[4, 0, 0], [0, 4, 0], [4, 4, 0]], [[4, 0, 0], [8, 0, 0], [0, 0, 4]]], ids=["coplanar", "parallel"])
def test_singular_cell_rejected_at_read_time(tmp_path, cell):
    path = tmp_path / "singular.extxyz"
    write(path, _frames(cell, True))
    with pytest.raises(NNPError) as err:
        open_dataset(_ase_cfg(path))
    assert str(err.value) == f"{path}: structure 1: cell is singular (its three vectors lie in one plane or on one line)"


def test_non_finite_cell_rejected():
    with pytest.raises(NNPError, match="^f: structure 0: cell contains NaN or infinite values$"):
        check_cell(np.array([[4.0, 0, 0], [0, np.inf, 0], [0, 0, 4]]), [True] * 3, "f: structure 0")


def test_zero_cell_of_a_molecule_is_fine(tmp_path):
    """Non-periodic structures keep ASE's zero cell: the neighbor list never inverts it."""
    path = tmp_path / "molecules.extxyz"
    write(path, _frames(np.zeros((3, 3)), False))
    ds = open_dataset(_ase_cfg(path))
    assert len(ds) == 3 and not ds[1][keys.PBC].any()


def test_valid_cell_reads_and_reaches_the_neighbor_list(tmp_path):
    path = tmp_path / "box.extxyz"
    cell = [[4.0, 0, 0], [0.5, 4.5, 0], [0, 0, 5.0]]
    write(path, _frames(cell, True))
    ds = open_dataset(_ase_cfg(path))
    np.testing.assert_allclose(ds[1][keys.CELL], cell)
    batch = collate([ds[i] for i in range(len(ds))])
    nbrs = neighbor_list(batch[keys.R], batch[keys.IDX_M], batch[keys.N_ATOMS], batch[keys.CELL], batch[keys.PBC], 3.0)
    assert nbrs.pairs.shape[1] > 0


def test_the_check_matches_what_the_neighbor_list_needs():
    """Without the read-time check a zero cell vector ends in torch's matrix inverse (a traceback)."""
    pos = torch.tensor([[0.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64)
    cell = torch.tensor([ZERO_VECTOR[1]], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="singular"):
        neighbor_list(pos, torch.zeros(2, dtype=torch.long), torch.tensor([2]), cell, torch.tensor([[True] * 3]), 3.0)
    with pytest.raises(NNPError, match="cell vector 1 has zero length"):
        check_cell(cell[0].numpy(), [True] * 3, "x")


@pytest.mark.slow
def test_train_on_a_zero_cell_is_one_line(tmp_path):
    path = tmp_path / "zero.extxyz"
    write(path, _frames(ZERO_VECTOR[0], True))
    res = run_nnp("train", "data=ase", f"data.path={path}", *TINY_TRAIN, f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_error(res, str(path), "structure 1", "cell vector 0 has zero length")
