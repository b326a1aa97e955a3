"""``nnp predict`` on the dataset HDF5 layout and through the fast extxyz reader/writer."""

from __future__ import annotations

import ase.io
import h5py
import numpy as np
import pytest
from conftest import REPO, error_line, nnp_cli, write_h5_subset

from nnp.potential import Potential

TINY_ANI = {"name": "ani", "hidden": [8], "radial_cutoff": 3.0, "angular_cutoff": 2.5}


@pytest.fixture(scope="module")
def chno(tmp_path_factory):
    """A tiny CHNO model, 4 formulas x 5 conformations as HDF5 and the same structures as extxyz."""
    import torch

    d = tmp_path_factory.mktemp("predict_files")
    torch.manual_seed(0)
    Potential.build(TINY_ANI, [1, 6, 7, 8], atomref=[-13.6, -1029.8, -1484.3, -2041.8]).save(d / "model.pt")
    h5 = write_h5_subset(d / "in.h5", groups=4, rows=5)
    frames = []
    with h5py.File(h5, "r") as f:
        for name in sorted(f):
            z = f[name]["atomic_numbers"][()]
            frames += [ase.Atoms(numbers=z, positions=xyz) for xyz in f[name]["coordinates"][()].astype(np.float64)]
    ase.io.write(d / "in.extxyz", frames, format="extxyz")
    return d


def _predict(monkeypatch, capsys, model, inp, out, *extra):
    code, text = nnp_cli(monkeypatch, capsys, "predict", f"ckpt={model}", f"input={inp}", f"output={out}", *extra)
    assert code == 0, text[-2000:]


def test_hdf5_round_trip_equals_extxyz(chno, tmp_path, monkeypatch, capsys):
    model = chno / "model.pt"
    _predict(monkeypatch, capsys, model, chno / "in.h5", tmp_path / "out.h5")
    _predict(monkeypatch, capsys, model, chno / "in.extxyz", tmp_path / "out.extxyz", "fast_io=false")
    _predict(monkeypatch, capsys, model, chno / "in.extxyz", tmp_path / "by_formula.h5", "fast_io=false")
    ref = ase.io.read(tmp_path / "out.extxyz", index=":")
    with h5py.File(tmp_path / "out.h5", "r") as f, h5py.File(chno / "in.h5", "r") as src, h5py.File(tmp_path / "by_formula.h5", "r") as byf:
        assert (f.attrs["energy_unit"], f.attrs["length_unit"]) == ("eV", "angstrom")
        assert sorted(f) == sorted(src)  # the input's groups, rows in the same order
        k = 0
        for name in sorted(f):
            g = f[name]
            assert g["energy"].attrs["unit"] == "eV" and g["forces"].attrs["unit"] == "eV/angstrom"
            np.testing.assert_array_equal(g["atomic_numbers"][()], src[name]["atomic_numbers"][()])
            np.testing.assert_array_equal(g["coordinates"][()], src[name]["coordinates"][()].astype(np.float64))
            for row in range(len(g["energy"])):
                atoms = ref[k]
                assert g["energy"][row] == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
                np.testing.assert_allclose(g["forces"][row], atoms.get_forces(), atol=1e-6)  # extxyz keeps 8 decimals
                np.testing.assert_allclose(g["energies"][row], atoms.get_potential_energies(), atol=1e-6)
                k += 1
            # extxyz input grouped by formula: the same groups here, with each row's input position
            np.testing.assert_allclose(byf[name]["energy"][()], g["energy"][()], atol=1e-6)  # positions with 8 decimals
            np.testing.assert_array_equal(byf[name]["index"][()], np.arange(k - len(g["energy"]), k))
        assert k == len(ref)
    # HDF5 in, extxyz out: the same numbers as extxyz in
    _predict(monkeypatch, capsys, model, chno / "in.h5", tmp_path / "from_h5.extxyz")
    for a, b in zip(ase.io.read(tmp_path / "from_h5.extxyz", index=":"), ref):
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-8)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-6)


def _same_frames(fast, slow):
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell.array, b.cell.array)
        np.testing.assert_array_equal(a.pbc, b.pbc)
        assert set(a.info) == set(b.info) and set(a.arrays) == set(b.arrays)
        assert set(a.calc.results) == set(b.calc.results)
        for key, value in b.calc.results.items():
            np.testing.assert_array_equal(a.calc.results[key], value, err_msg=key)
        for key, value in b.info.items():
            assert a.info[key] == value, key


@pytest.mark.parametrize("case", ["molecules", "periodic"])
def test_fast_extxyz_equals_ase(case, chno, tmp_path, monkeypatch, capsys):
    """The bulk writer (and the C reader when ``extxyz`` is installed) against ASE's reader and writer."""
    import torch

    if case == "molecules":
        model, inp = chno / "model.pt", REPO / "datasets/molecules.extxyz"
    else:  # stress and a Lattice
        torch.manual_seed(0)
        model, inp = tmp_path / "cu.pt", REPO / "tests/data/cu-emt-tiny.extxyz"
        Potential.build(TINY_ANI, [29]).save(model)
    _predict(monkeypatch, capsys, model, inp, tmp_path / "fast.extxyz")
    _predict(monkeypatch, capsys, model, inp, tmp_path / "ase.extxyz", "fast_io=false")
    fast = ase.io.read(tmp_path / "fast.extxyz", index=":")
    slow = ase.io.read(tmp_path / "ase.extxyz", index=":")
    _same_frames(fast, slow)
    if case == "periodic":
        assert all("stress" in a.calc.results for a in fast)


def test_fast_reader_equals_ase_reader():
    pytest.importorskip("extxyz")
    from nnp.data import fast_extxyz
    from nnp.data.structure_block import StructureBlock

    for path in (REPO / "datasets/molecules.extxyz", REPO / "tests/data/cu-emt-tiny.extxyz"):
        fast = fast_extxyz.block_of(fast_extxyz.read_frames(str(path)), str(path))
        slow = StructureBlock.from_atoms(ase.io.read(path, index=":"))
        for key in ("numbers", "positions", "n_atoms", "cell", "pbc"):
            np.testing.assert_array_equal(getattr(fast, key), getattr(slow, key), err_msg=f"{path.name}: {key}")


def _bad_files(d):
    (d / "truncated.h5").write_bytes((REPO / "datasets/chno-mini.h5").read_bytes()[:3000])
    with h5py.File(d / "no_coords.h5", "w") as f:
        f.create_group("C1H4")["atomic_numbers"] = np.array([6, 1, 1, 1, 1], dtype=np.uint8)
    with h5py.File(d / "shape.h5", "w") as f:
        g = f.create_group("C1H4")
        g["atomic_numbers"] = np.array([6, 1, 1, 1, 1], dtype=np.uint8)
        g["coordinates"] = np.zeros((2, 4, 3))
    with h5py.File(d / "element.h5", "w") as f:
        g = f.create_group("Cl1H1")
        g["atomic_numbers"] = np.array([17, 1], dtype=np.uint8)
        g["coordinates"] = np.array([[[0, 0, 0], [1.3, 0, 0]]] * 2, dtype=np.float64)


@pytest.mark.parametrize(("name", "needle"), [
    ("truncated.h5", "truncated.h5"), ("no_coords.h5", "no group holds 'coordinates'"),
    ("shape.h5", "/C1H4: 'coordinates' has shape (2, 4, 3)"), ("element.h5", "/Cl1H1 row 0: element(s) Cl not known"),
])
def test_bad_hdf5_input_is_one_line(name, needle, chno, tmp_path, monkeypatch, capsys):
    _bad_files(tmp_path)
    out = tmp_path / "out.h5"
    code, text = nnp_cli(monkeypatch, capsys, "predict", f"ckpt={chno / 'model.pt'}", f"input={tmp_path / name}", f"output={out}")
    assert code == 2
    assert needle in error_line(text)
    assert not out.exists()


def test_hdf5_output_permutes_atoms_to_the_group_order(chno, tmp_path, monkeypatch, capsys):
    """Two orderings of one formula go into one group, in the first one's atom order, with the same numbers."""
    from ase.build import molecule

    a = molecule("CH3OH")
    b = a[[2, 3, 0, 1, 4, 5]]  # the same molecule, elements reordered (hydrogens in the same order)
    ase.io.write(tmp_path / "in.extxyz", [a, b])
    _predict(monkeypatch, capsys, chno / "model.pt", tmp_path / "in.extxyz", tmp_path / "out.h5")
    with h5py.File(tmp_path / "out.h5", "r") as f:
        g = f["C1H4O1"]
        np.testing.assert_array_equal(g["atomic_numbers"][()], a.numbers)
        np.testing.assert_allclose(g["coordinates"][1], g["coordinates"][0])
        np.testing.assert_allclose(g["forces"][1], g["forces"][0], atol=1e-5)
        assert g["energy"][1] == pytest.approx(g["energy"][0], abs=1e-6)
        np.testing.assert_array_equal(g["index"][()], [0, 1])
