"""``nnp import torchani``: TorchANI's own energies and forces, reproduced.

The committed fixture (tests/data/make_torchani_fixture.py, run with TorchANI):
random-weight ANI-1x (2-member ensemble, TorchANI 2.x layout) and ANI-2x (legacy
layout) states, and TorchANI's energies and forces on perturbed molecules and a
triclinic periodic cell, in float64 and float32. The live test rebuilds them with
TorchANI's real network widths where TorchANI is installed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import REPO, error_line, nnp_cli

from nnp.committee import Committee, load_model
from nnp.data.collate import atoms_to_sample, collate
from nnp.inference import run_batch
from nnp.potential import FORMAT_VERSION
from nnp.units import energy_factor

DATA = REPO / "tests" / "data"
HARTREE = energy_factor("hartree")


def _structures(ref, kind: str):
    i = 0
    while f"{kind}/{i}/numbers" in ref:
        key = f"{kind}/{i}/"
        atoms = Atoms(numbers=ref[key + "numbers"], positions=ref[key + "positions"], cell=ref[key + "cell"], pbc=ref[key + "pbc"])
        yield key, atoms
        i += 1


def _compare(model_path: Path, ref, kind: str, dtype: str) -> int:
    """Energies and forces of the converted model against TorchANI's, structure by structure."""
    model = load_model(model_path)
    checked = 0
    for key, atoms in _structures(ref, kind):
        out = run_batch(model, collate([atoms_to_sample(atoms)]))
        energy = float(out["energy"][0]) / HARTREE
        forces = out["forces"].double().numpy() / HARTREE
        if dtype == "float64":
            assert abs(energy - float(ref[key + "energy"])) < 1e-9 * max(1.0, abs(energy)), (key, energy, ref[key + "energy"])
            assert np.abs(forces - ref[key + "forces"]).max() < 1e-8, key
            if key + "member_energy" in ref:
                members = out.get("member_energy")
                model_out = model(collate([atoms_to_sample(atoms)]) | {}, compute_forces=False) if members is None else None
                got = (model_out or out)["member_energy"].double().numpy()[:, 0] / HARTREE
                assert np.allclose(got, ref[key + "member_energy"], rtol=0, atol=1e-9), key
        else:
            assert abs(energy - float(ref[key + "energy32"])) < 2e-6 * max(1.0, abs(energy)), (key, energy, ref[key + "energy32"])
            assert np.abs(forces - ref[key + "forces32"]).max() < 1e-4, key
        checked += 1
    return checked


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_import_matches_torchani(dtype, tmp_path, monkeypatch, capsys):
    ref = np.load(DATA / "torchani_reference.npz")
    for kind, members in (("ani1x", 2), ("ani2x", 1)):
        out = tmp_path / f"{kind}.pt"
        code, text = nnp_cli(monkeypatch, capsys, "import", "torchani", str(DATA / f"torchani_{kind}.pt"), f"output={out}", f"dtype={dtype}")
        assert code == 0, text
        model = load_model(out)
        assert (isinstance(model, Committee) and model.n_members == members) or (members == 1 and not isinstance(model, Committee))
        assert _compare(out, ref, kind, dtype) == (5 if kind == "ani1x" else 6)
        payload = torch.load(out, weights_only=True)
        assert payload["version"] == FORMAT_VERSION
    ani2x = load_model(tmp_path / "ani2x.pt")
    assert ani2x.species == [1, 6, 7, 8, 9, 16, 17] and ani2x.cutoff == 5.1
    assert ani2x.model_config["angular_sections"] == 4 and ani2x.model_config["hidden_per_element"]["Cl"] == [6, 4, 3]


@pytest.mark.parametrize("make, needles", [
    (lambda p: None, ["missing.pt: file not found"]),
    (lambda p: p.write_bytes(b"not a torch file"), ["not a readable PyTorch file"]),
    (lambda p: torch.save({"weight": torch.zeros(3)}, p), ["entry 'weight' is not part of a TorchANI ANI model"]),
    (lambda p: torch.save(torch.nn.Linear(2, 2), p), ["holds Python objects, not only tensors"]),
])
def test_bad_import_file_is_one_line(make, needles, tmp_path, monkeypatch, capsys):
    path = tmp_path / "missing.pt"
    make(path)
    code, text = nnp_cli(monkeypatch, capsys, "import", "torchani", str(path), f"output={tmp_path / 'out.pt'}")
    line = error_line(text)
    assert code == 2, text
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "out.pt").exists()


def _torchani_python() -> str | None:
    """A Python where TorchANI imports: this one, or $NNP_TORCHANI_PYTHON (``make test-torchani``
    points it at the benchmark environment, benchmarks/.venvs/torchani)."""
    import sys

    try:
        import torchani  # noqa: F401

        return sys.executable
    except ImportError:
        return os.environ.get("NNP_TORCHANI_PYTHON") or None


@pytest.mark.slow
def test_live_torchani_full_size(tmp_path, monkeypatch, capsys):
    """TorchANI's real ANI-1x / ANI-2x network widths, random weights, built now by TorchANI."""
    python = _torchani_python()
    if python is None:
        pytest.skip("TorchANI does not import here: make test-torchani runs this in benchmarks/.venvs/torchani")
    res = subprocess.run([python, str(DATA / "make_torchani_fixture.py"), "--full", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "TORCHANI_NO_WARN_EXTENSIONS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    ref = np.load(tmp_path / "torchani_reference.npz")
    for kind in ("ani1x", "ani2x"):
        out = tmp_path / f"{kind}_nnp.pt"
        code, text = nnp_cli(monkeypatch, capsys, "import", "torchani", str(tmp_path / f"torchani_{kind}.pt"), f"output={out}", "dtype=float64")
        assert code == 0, text
        assert _compare(out, ref, kind, "float64") > 0


def test_shipped_ani2x_config_is_torchanis():
    """conf/model/ani2x.yaml holds the AEV constants an imported ANI-2x state has."""
    import yaml

    from nnp.interop.torchani import parse_state, read_state, to_potentials

    path = DATA / "torchani_ani2x.pt"
    imported = to_potentials(parse_state(read_state(path), str(path)), str(path))[0].model_config
    shipped = yaml.safe_load((REPO / "conf" / "model" / "ani2x.yaml").read_text())
    for key in ("radial_cutoff", "angular_cutoff", "radial_eta", "angular_eta", "angular_zeta", "angular_sections"):
        assert shipped[key] == pytest.approx(imported[key], rel=1e-6), key
    for key in ("radial_shifts", "angular_radial_shifts"):
        assert np.allclose(shipped[key], imported[key], rtol=1e-6), key
