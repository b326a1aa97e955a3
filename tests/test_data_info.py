"""`nnp data info`: counts, ranges and suspicious rows of small files, as JSON and as a table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.io import write
from test_data_common import HARTREE, make_group, shared, small_ani_file, write_ani

from nnp import cli


def _info(capsys, *args) -> dict:
    capsys.readouterr()
    assert cli.main(["data", "info", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _problem_file(path):
    rng = np.random.default_rng(0)
    coords, energy, forces = make_group([8, 1, 1], 20, rng)
    energy[4] = np.nan  # NaN label
    forces[7, 1] = [0.6, 0.0, 0.0]  # 0.6 Ha/Å = 16 eV/Å: large force
    coords[11, 2] = coords[11, 0] + [0.3, 0.0, 0.0]  # atoms 0.3 Å apart
    energy[15] += 2.0  # 54 eV off: energy outlier
    c2, e2, f2 = make_group([6, 1, 1, 1, 1], 30, rng)
    groups = {
        "H2O1": {"atomic_numbers": np.array([8, 1, 1]), "coordinates": coords, "wb97x_dz.energy": energy, "wb97x_dz.forces": forces},
        "big/C1H4": {"atomic_numbers": np.array([6, 1, 1, 1, 1]), "coordinates": c2, "wb97x_dz.energy": e2, "wb97x_dz.forces": f2},
    }
    return write_ani(path, groups)


def test_info_reports_problems(tmp_path, capsys):
    path = _problem_file(tmp_path / "p.h5")
    r = _info(capsys, str(path), "energy_unit=hartree")
    assert r["energy_key"] == "wb97x_dz.energy" and r["forces_key"] == "wb97x_dz.forces"  # auto-detected
    assert r["structures"] == 50 and r["groups"] == 2 and r["formulas"] == 2 and r["molecules"] is None
    assert r["elements"] == {"H": 20 * 2 + 30 * 4, "C": 30, "O": 20}
    assert r["atoms_per_structure"] == {"min": 3, "mean": pytest.approx((20 * 3 + 30 * 5) / 50), "max": 5}
    assert r["nan_rows"] == {"energy": 1, "forces": 0, "coordinates": 0}
    assert r["examples"]["nan_energy"][0] == {"group": "H2O1", "row": 4, "value": None} or r["examples"]["nan_energy"][0]["row"] == 4
    assert r["suspicious"]["large_forces"]["rows"] == 1 and r["examples"]["large_forces"][0]["row"] == 7
    assert r["forces_eV_per_A"]["max_norm"] == pytest.approx(np.linalg.norm([0.6, 0, 0]) * HARTREE, rel=1e-3)
    assert r["suspicious"]["close_atoms"]["rows"] == 1 and r["closest_distance_A"]["row"] == 11
    assert r["closest_distance_A"]["value"] == pytest.approx(0.3, abs=1e-6)
    assert r["suspicious"]["energy_outliers"]["rows"] == 1 and r["examples"]["energy_outliers"][0]["row"] == 15
    assert r["energy_eV"]["max"] < 0 and r["notes"] == []
    # without a unit the report says it assumed eV
    assert "assumed eV" in _info(capsys, str(path))["notes"][0]


def test_info_json_file_and_table(tmp_path, capsys):
    path = small_ani_file(tmp_path / "a.h5", nested=True)
    out = tmp_path / "info.json"
    capsys.readouterr()
    assert cli.main(["data", "info", str(path), f"json={out}", "energy_unit=hartree", "max_force=1"]) == 0
    table = capsys.readouterr().out
    assert "48 structures" in table and "molecules" in table and "wrote" in table
    r = json.loads(out.read_text())
    assert r["structures"] == 48 and r["molecules"] == 8 and r["group_key"] == "smiles"
    assert r["suspicious"]["large_forces"]["threshold_eV_per_A"] == 1.0
    # energy only
    r = _info(capsys, str(path), "forces_key=null")
    assert r["forces_key"] is None and r["forces_eV_per_A"] is None


def test_info_ase_file(tmp_path, capsys):
    frames = []
    for k in range(5):
        a = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [0, 0.96 + 0.01 * k, 0]])
        a.info["energy"] = -14.0 - 0.01 * k
        a.arrays["forces"] = np.full((3, 3), 0.1 * k)
        frames.append(a)
    path = tmp_path / "w.extxyz"
    write(path, frames)
    r = _info(capsys, str(path))
    assert r["format"] == "ase" and r["structures"] == 5 and r["elements"] == {"H": 10, "O": 5}
    assert r["energy_eV"]["min"] == pytest.approx(-14.04)


def test_info_bad_input(tmp_path, capsys):
    assert cli.main(["data", "info", str(tmp_path / "none.h5")]) == 2
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    assert cli.main(["data", "info", str(bad)]) == 2
    assert "not a readable HDF5 file" in capsys.readouterr().err
    assert cli.main(["data", "info", str(bad), "threshold=3"]) == 2
    assert cli.main(["data", "info", str(bad), "max_force=lots"]) == 2
    assert cli.main(["data", "frobnicate"]) == 2
    assert cli.main(["data", "--help"]) == 0 and "nnp data info FILE" in capsys.readouterr().out
    assert cli.main(["data", "prepare", "--help"]) == 0 and "nnp data prepare qm9" in capsys.readouterr().out
    assert cli.main(["data", "info", "--help"]) == 0
    assert "data" in cli.usage()


@pytest.mark.shared
def test_info_shared_chno(capsys):
    path = shared("chno-gfn2.h5")
    r = _info(capsys, str(path), "energy_unit=hartree")
    assert r["structures"] == 14760 and r["molecules"] == 123 and r["formulas"] == 99
    assert r["nan_rows"] == {"energy": 0, "forces": 0, "coordinates": 0}
    assert 15 < r["forces_eV_per_A"]["max_norm"] < 25  # README: largest component about 16 eV/Å
