"""Splits (random / grouped, fractions / counts, saved and reloaded) and the streaming atomref fit."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_common import small_ani_file

from nnp.data import open_dataset
from nnp.data.datasets import AtomsDataset
from nnp.data.splits import fingerprint, load_split, make_split, save_split, split_sizes
from nnp.data.statistics import fit_atomref
from nnp.errors import NNPError

SPEC = {"train": 0.8, "val": 0.1, "test": 0.1}


def _groups(n: int, n_groups: int, seed: int = 0) -> np.ndarray:
    """Uneven group sizes, shuffled, as int codes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_groups, n) ** 2 % n_groups


def _assert_partition(split, n, complete=True):
    allidx = np.concatenate([split[p] for p in ("train", "val", "test")])
    assert len(np.unique(allidx)) == len(allidx)
    if complete:
        assert sorted(allidx.tolist()) == list(range(n))
    for p in split:
        assert np.all(np.diff(split[p]) > 0) and split[p].dtype == np.int64


@pytest.mark.parametrize("grouped", [False, True])
def test_same_seed_same_split(grouped):
    n = 5000
    groups = _groups(n, 300) if grouped else None
    a = make_split(n, SPEC, groups, seed=3)
    b = make_split(n, SPEC, groups, seed=3)
    c = make_split(n, SPEC, groups, seed=4)
    for p in a:
        np.testing.assert_array_equal(a[p], b[p])
    assert not np.array_equal(a["test"], c["test"])
    _assert_partition(a, n)


def test_grouped_split_is_leak_free_and_near_target():
    n = 20000
    groups = _groups(n, 700)
    split = make_split(n, SPEC, groups, seed=0)
    parts = [set(groups[split[p]].tolist()) for p in ("train", "val", "test")]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    biggest = np.bincount(groups).max()
    for p, frac in SPEC.items():
        assert abs(len(split[p]) - frac * n) <= biggest + 1, (p, len(split[p]))


def test_string_labels_and_codes_give_the_same_split():
    rng = np.random.default_rng(0)
    names = np.array([f"smiles-{k}" for k in range(50)])
    labels = names[rng.integers(0, 50, 1000)]
    uniq, codes = np.unique(labels, return_inverse=True)
    a = make_split(1000, SPEC, labels, seed=1)
    b = make_split(1000, SPEC, codes.astype(np.int32), seed=1)
    for p in a:
        np.testing.assert_array_equal(a[p], b[p])


def test_fractions_and_counts():
    assert split_sizes(1000, {"train": 0.8, "val": 0.1, "test": 0.1}) == {"train": 800, "val": 100, "test": 100}
    assert split_sizes(1000, {"train": None, "val": 50, "test": 25}) == {"train": 925, "val": 50, "test": 25}
    assert split_sizes(1000, {"train": 100, "val": 0.1, "test": 1}) == {"train": 100, "val": 100, "test": 1}
    assert split_sizes(1000, {"train": 0.5, "val": 0.1, "test": 0.1}) == {"train": 500, "val": 100, "test": 100}
    split = make_split(1000, {"train": 100, "val": 20, "test": 30}, seed=0)
    assert [len(split[p]) for p in ("train", "val", "test")] == [100, 20, 30]
    _assert_partition(split, 1000, complete=False)
    for bad, msg in [({"train": 0.8, "val": 0.3, "test": 0.1}, "sum to"), ({"val": 900, "test": 200}, "asks for"),
                     ({"val": -1}, "negative"), ({"val": "ten"}, "fraction"), ({"vals": 0.1}, "unknown"),
                     ({"val": 2.5}, "whole number")]:
        with pytest.raises(NNPError, match=msg):
            split_sizes(1000, bad)
    with pytest.raises(NNPError, match="training set empty"):
        make_split(10, {"train": None, "val": 0.5, "test": 0.5})


def test_save_load_roundtrip(tmp_path):
    groups = _groups(3000, 100)
    split = make_split(3000, SPEC, groups, seed=0)
    fp = fingerprint(groups)
    save_split(tmp_path / "split.npz", split, 3000, {"seed": 0}, fingerprint=fp)
    back = load_split(tmp_path / "split.npz", 3000, fingerprint=fp)
    for p in split:
        np.testing.assert_array_equal(split[p], back[p])
    with pytest.raises(NNPError, match="made for 3000 structures"):
        load_split(tmp_path / "split.npz", 2999)
    with pytest.raises(NNPError, match="different dataset"):
        load_split(tmp_path / "split.npz", 3000, fingerprint=fingerprint(groups[::-1]))
    with pytest.raises(NNPError, match="not found"):
        load_split(tmp_path / "nope.npz", 3000)
    with pytest.raises(NNPError, match="overlaps"):
        save_split(tmp_path / "bad.npz", {"train": np.array([0, 1]), "val": np.array([1]), "test": np.array([], int)}, 3, {})


def test_grouped_split_of_an_hdf5_dataset(tmp_path):
    ds = open_dataset({"format": "hdf5", "path": str(small_ani_file(tmp_path / "a.h5")),
                       "units": {"energy": "hartree"}})
    split = make_split(len(ds), {"train": 0.5, "val": 0.25, "test": 0.25}, ds.groups(), seed=0)
    names = ds.group_names()
    labels = {p: {names[c] for c in ds.groups()[split[p]]} for p in split}
    assert not (labels["train"] & labels["test"]) and not (labels["train"] & labels["val"])


# ------------------------------------------------------------------- atomref
class _Table(AtomsDataset):
    """In-memory dataset: compositions and energies only."""

    def __init__(self, numbers: list[np.ndarray], energies: np.ndarray):
        self._numbers, self._e = numbers, energies
        self.path, self.has_forces, self.has_energy = "table", False, True

    def __len__(self):
        return len(self._numbers)

    def energies(self):
        return self._e

    def numbers_of(self, i):
        return self._numbers[i]


def test_streaming_atomref_equals_dense_lstsq():
    rng = np.random.default_rng(0)
    species = [1, 6, 7, 8]
    true = np.array([-13.6, -1029.8, -1485.2, -2042.6])
    numbers = [rng.choice(species, size=rng.integers(3, 20), p=[0.5, 0.3, 0.1, 0.1]) for _ in range(3000)]
    comp = np.array([[np.sum(z == s) for s in species] for z in numbers], dtype=float)
    energies = comp @ true + rng.normal(0, 0.5, len(numbers))
    ds = _Table(numbers, energies)
    idx = np.arange(0, 3000, 2)
    ref, rms = fit_atomref(ds, idx, species, chunk=97)  # many chunks
    dense = np.linalg.lstsq(comp[idx], energies[idx], rcond=None)[0]
    np.testing.assert_allclose(ref, dense, rtol=1e-9, atol=1e-7)
    resid = (energies[idx] - comp[idx] @ dense) / comp[idx].sum(1)
    assert np.isclose(rms, np.sqrt(np.mean(resid**2)))
    # a species absent from the training rows would get 0 eV: refused, naming it (tests/test_data_checks.py)
    with pytest.raises(NNPError, match=r"F \(Z=9\) is in no structure of the training split"):
        fit_atomref(ds, idx, species + [9])


def test_atomref_on_hdf5_matches_dense(tmp_path):
    ds = open_dataset({"format": "hdf5", "path": str(small_ani_file(tmp_path / "a.h5")),
                       "units": {"energy": "hartree"}})
    species = ds.elements()
    idx = np.arange(len(ds))
    ref, _ = fit_atomref(ds, idx, species, chunk=7)
    comp = ds.composition_matrix(idx, species)
    dense = np.linalg.lstsq(comp, ds.energies(), rcond=None)[0]  # rank-deficient: min-norm both ways
    np.testing.assert_allclose(comp @ ref, comp @ dense, rtol=1e-9)
