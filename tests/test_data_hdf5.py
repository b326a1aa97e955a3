"""HDF5 (ANI-1x layout) reader: values, fast paths, workers, and every kind of bad input."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch
from test_data_common import HARTREE, shared, small_ani_file, write_ani
from torch.utils.data import DataLoader, Subset

from nnp import keys
from nnp.data import collate, open_dataset
from nnp.data.hdf5 import HDF5Dataset
from nnp.errors import NNPError


def _cfg(path, **extra):
    cfg = {"format": "hdf5", "path": str(path), "energy_key": "wb97x_dz.energy", "forces_key": "wb97x_dz.forces",
           "group_key": "smiles", "units": {"energy": "hartree", "length": "angstrom"}}
    cfg.update(extra)
    return cfg


def _expected(path, ds: HDF5Dataset, i: int):
    group, row = ds.group_of(i)
    with h5py.File(path, "r") as f:
        g = f[group]
        return g["coordinates"][row], g["wb97x_dz.energy"][row] * HARTREE, g["wb97x_dz.forces"][row] * HARTREE


@pytest.mark.parametrize("chunked", [False, True], ids=["contiguous", "chunked-gzip"])
def test_values_match_file_flat_and_nested(tmp_path, chunked):
    path = small_ani_file(tmp_path / "a.h5", chunked=chunked, nested=True)
    ds = open_dataset(_cfg(path))
    assert len(ds) == 48 and ds.n_skipped == 0 and ds.has_forces
    assert "by_size/n9/C2H6O1" in ds.h5_groups  # nested group found
    assert (np.array(ds._offsets["coords"]) >= 0).all() != chunked  # pread fast path only for contiguous data
    assert ds.elements() == [1, 6, 7, 8]
    for i in (0, 13, 30, 47):
        xyz, e, f = _expected(path, ds, i)
        s = ds[i]
        np.testing.assert_allclose(s[keys.R], xyz, rtol=0, atol=1e-6)
        np.testing.assert_allclose(s[keys.ENERGY], e, rtol=1e-12)
        np.testing.assert_allclose(s[keys.FORCES], f, rtol=1e-6)
        assert s[keys.STRUCTURE_ID] == i and s[keys.R].dtype == np.float64


def test_getitems_order_duplicates_and_runs(tmp_path):
    path = small_ani_file(tmp_path / "a.h5")
    ds = open_dataset(_cfg(path))
    idx = [47, 3, 4, 5, 3, 20, 0, 46, 47]
    batch = ds.__getitems__(idx)
    assert [s[keys.STRUCTURE_ID] for s in batch] == idx
    for i, s in zip(idx, batch, strict=True):
        np.testing.assert_array_equal(s[keys.R], ds[i][keys.R])
    with pytest.raises(IndexError):
        ds.__getitems__([len(ds)])
    # contiguous and chunked files give identical samples
    ds2 = open_dataset(_cfg(small_ani_file(tmp_path / "c.h5", chunked=True)))
    for a, b in zip(batch, ds2.__getitems__(idx), strict=True):
        np.testing.assert_array_equal(a[keys.R], b[keys.R])
        np.testing.assert_array_equal(a[keys.FORCES], b[keys.FORCES])


def test_group_labels_are_integer_codes(tmp_path):
    ds = open_dataset(_cfg(small_ani_file(tmp_path / "a.h5")))
    codes, names = ds.groups(), ds.group_names()
    assert codes.dtype == np.int32 and len(codes) == len(ds)
    assert names == sorted(names) and len(names) == 8  # 4 formulas x 2 molecules
    group, row = ds.group_of(5)
    with h5py.File(ds.path, "r") as f:
        assert names[codes[5]] == f[group]["smiles"][row].decode()
    # without a label dataset, the formula group is the label
    by_formula = open_dataset(_cfg(ds.path, group_key=None))
    assert by_formula.group_names() == sorted(by_formula.h5_groups)


def test_units_declared_by_file(tmp_path):
    path = small_ani_file(tmp_path / "a.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["energy_unit"] = "hartree"
    cfg = _cfg(path)
    del cfg["units"]
    assert np.isclose(open_dataset(cfg).energy_factor, HARTREE)  # taken from the file
    with pytest.raises(NNPError, match="stores energy in hartree"):
        open_dataset(_cfg(path, units={"energy": "eV"}))


def test_pickle_drops_handles(tmp_path):
    ds = open_dataset(_cfg(small_ani_file(tmp_path / "a.h5", chunked=True)))
    ds[0]
    assert ds._file is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None and clone._fd == -1
    np.testing.assert_array_equal(clone[7][keys.R], ds[7][keys.R])


@pytest.mark.parametrize("chunked", [False, True], ids=["contiguous", "chunked-gzip"])
def test_dataloader_two_workers(tmp_path, chunked):
    ds = open_dataset(_cfg(small_ani_file(tmp_path / "a.h5", chunked=chunked)))
    ds[0]  # a handle opened in the parent must not be reused by the workers
    train = np.arange(0, len(ds), 2)
    loader = DataLoader(Subset(ds, train), batch_size=5, shuffle=True, collate_fn=collate, num_workers=2,
                        generator=torch.Generator().manual_seed(0))
    seen, energies = [], {}
    for batch in loader:
        ids = batch[keys.STRUCTURE_ID].tolist()
        seen += ids
        energies.update(zip(ids, batch[keys.ENERGY].tolist(), strict=True))
        assert batch[keys.R].shape == (int(batch[keys.N_ATOMS].sum()), 3)
    assert sorted(seen) == train.tolist()
    assert all(np.isclose(energies[i], ds.energies()[i]) for i in seen)


# ------------------------------------------------------------------ bad input
def _one_group(tmp_path, **override):
    rng = np.random.default_rng(1)
    from test_data_common import make_group

    numbers = [8, 1, 1]
    coords, energy, forces = make_group(numbers, 6, rng)
    data = {"atomic_numbers": np.array(numbers, np.uint8), "coordinates": coords, "wb97x_dz.energy": energy,
            "wb97x_dz.forces": forces}
    data.update(override)
    data = {k: v for k, v in data.items() if v is not None}
    return write_ani(tmp_path / "bad.h5", {"H2O1": data})


def test_truncated_file(tmp_path):
    path = small_ani_file(tmp_path / "a.h5")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NNPError, match=r"a\.h5: not a readable HDF5 file .*truncated"):
        open_dataset(_cfg(path))


def test_not_hdf5(tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(NNPError, match="x.h5: not a readable HDF5 file"):
        open_dataset(_cfg(path))


def test_group_missing_coordinates(tmp_path):
    path = _one_group(tmp_path, coordinates=None)
    with pytest.raises(NNPError, match=r"bad\.h5:/H2O1: group has no 'coordinates'"):
        open_dataset(_cfg(path))


def test_forces_shape_mismatch(tmp_path):
    path = _one_group(tmp_path, **{"wb97x_dz.forces": np.zeros((6, 2, 3))})
    with pytest.raises(NNPError, match=r"bad\.h5:/H2O1: 'wb97x_dz.forces' has shape \(6, 2, 3\) but 'coordinates' has \(6, 3, 3\)"):
        open_dataset(_cfg(path))


def test_energy_rows_mismatch(tmp_path):
    path = _one_group(tmp_path, **{"wb97x_dz.energy": np.zeros(5)})
    with pytest.raises(NNPError, match=r"H2O1: 'wb97x_dz.energy' has shape \(5,\)"):
        open_dataset(_cfg(path))


def test_coordinates_wrong_atom_count(tmp_path):
    path = _one_group(tmp_path, atomic_numbers=np.array([8, 1], np.uint8))
    with pytest.raises(NNPError, match=r"H2O1: 'coordinates' has shape \(6, 3, 3\), expected \(n_conf, 2, 3\)"):
        open_dataset(_cfg(path))


def test_missing_energy_key_names_group(tmp_path):
    path = _one_group(tmp_path)
    with pytest.raises(NNPError, match=r"H2O1: no energy dataset 'ccsd\(t\)_cbs.energy'"):
        open_dataset(_cfg(path, energy_key="ccsd(t)_cbs.energy"))


@pytest.mark.parametrize("what", ["energy", "forces", "coordinates"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_rows_skipped_or_rejected(tmp_path, what, value):
    rng = np.random.default_rng(1)
    from test_data_common import make_group

    coords, energy, forces = make_group([8, 1, 1], 6, rng)
    {"energy": energy, "forces": forces[3], "coordinates": coords[3]}[what][1 if what != "energy" else 3] = value
    path = write_ani(tmp_path / "nan.h5", {"H2O1": {"atomic_numbers": np.array([8, 1, 1]), "coordinates": coords,
                                                   "wb97x_dz.energy": energy, "wb97x_dz.forces": forces}})
    ds = open_dataset(_cfg(path))
    assert len(ds) == 5 and ds.n_skipped == 1 and ds.skipped[what] == 1
    assert 3 not in ds._row
    with pytest.raises(NNPError, match=rf"nan\.h5:/H2O1 row 3: NaN or infinite {what}"):
        open_dataset(_cfg(path, skip_nan=False))


def test_overlapping_atoms_name_group_and_row(tmp_path):
    rng = np.random.default_rng(1)
    from test_data_common import make_group

    coords, energy, forces = make_group([8, 1, 1], 6, rng)
    coords[4, 2] = coords[4, 0] + [0.1, 0.0, 0.0]
    path = write_ani(tmp_path / "o.h5", {"H2O1": {"atomic_numbers": np.array([8, 1, 1]), "coordinates": coords,
                                                 "wb97x_dz.energy": energy, "wb97x_dz.forces": forces}})
    with pytest.raises(NNPError, match=r"o\.h5:/H2O1 row 4: atoms 0 and 2 are 0.100 Å apart"):
        open_dataset(_cfg(path))
    assert len(open_dataset(_cfg(path, min_distance=0))) == 6  # the check can be turned off


def test_bad_atomic_numbers(tmp_path):
    path = _one_group(tmp_path, atomic_numbers=np.array([8, 0, 1], np.uint8))
    with pytest.raises(NNPError, match="H2O1: atomic number 0 out of range"):
        open_dataset(_cfg(path))


def test_all_rows_nan_is_empty(tmp_path):
    path = _one_group(tmp_path, **{"wb97x_dz.energy": np.full(6, np.nan)})
    with pytest.raises(NNPError, match="dataset is empty"):
        open_dataset(_cfg(path))


def test_element_outside_model_species():
    from nnp.potential import Potential

    pot = Potential.build({"name": "ani", "hidden": [4], "hidden_per_element": None}, [1, 6])
    with pytest.raises(NNPError, match="element.*O.*not known to this model"):
        pot.species_of(torch.tensor([1, 8]))


# ------------------------------------------------------------ reference data
@pytest.mark.shared
def test_shared_chno_matches_h5py():
    path = shared("chno-gfn2.h5")
    ds = open_dataset(_cfg(path, energy_key="gfn2.energy", forces_key="gfn2.forces"))
    assert len(ds) == 14760 and len(ds.group_names()) == 123
    rng = np.random.default_rng(0)
    idx = rng.choice(len(ds), 64, replace=False)
    with h5py.File(path, "r") as f:
        for s in ds.__getitems__(idx):
            group, row = ds.group_of(s[keys.STRUCTURE_ID])
            np.testing.assert_allclose(s[keys.FORCES], f[group]["gfn2.forces"][row] * HARTREE, rtol=1e-6)
