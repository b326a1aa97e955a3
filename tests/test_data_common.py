"""Helpers shared by the data tests (no tests here): small ANI-1x-layout files, ../shared lookup."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HARTREE = 27.211386024367243  # ase.units.Hartree


def shared(name: str) -> Path:
    """A file of ../shared/data, or skip (a user's clone has no ../shared)."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


def molecule(numbers, rng: np.random.Generator, spacing: float = 1.4) -> np.ndarray:
    """(n, 3) positions of a random-ish molecule: jittered grid points, no two atoms closer than ~1 Å."""
    n = len(numbers)
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    return grid * spacing + rng.uniform(-0.15, 0.15, (n, 3))


def make_group(numbers, n_conf: int, rng: np.random.Generator, energy_per_atom: dict[int, float] | None = None):
    """Coordinates (c, n, 3) Å, energies (c,) Hartree and forces (c, n, 3) for one formula group."""
    numbers = np.asarray(numbers)
    ref = energy_per_atom or {1: -0.5, 6: -37.8, 7: -54.6, 8: -75.1}
    base = molecule(numbers, rng)
    coords = base + rng.normal(0, 0.03, (n_conf, len(numbers), 3))
    energy = sum(ref[int(z)] for z in numbers) + rng.normal(0, 0.01, n_conf)
    forces = rng.normal(0, 0.05, (n_conf, len(numbers), 3))
    return coords, energy, forces


def write_ani(path: Path, groups: dict[str, dict], chunked: bool = False, attrs: dict | None = None) -> Path:
    """Write ``{group path: {dataset: array}}`` (nested paths allowed) in the ANI-1x layout."""
    with h5py.File(path, "w") as f:
        for name, data in groups.items():
            g = f.require_group(name)
            for key, value in data.items():
                value = np.asarray(value)
                if chunked and value.ndim >= 1 and value.dtype.kind == "f":
                    g.create_dataset(key, data=value, chunks=(max(1, min(4, len(value))),) + value.shape[1:], compression="gzip")
                else:
                    g.create_dataset(key, data=value)
        f.attrs.update(attrs or {})
    return path


def small_ani_file(path: Path, seed: int = 0, chunked: bool = False, nested: bool = False, n_conf: int = 12) -> Path:
    """Four formula groups (one nested two levels deep if ``nested``), each with two molecules (smiles)."""
    rng = np.random.default_rng(seed)
    formulas = {"C1H4": [6, 1, 1, 1, 1], "H2O1": [8, 1, 1], "C2H6O1": [6, 6, 8, 1, 1, 1, 1, 1, 1], "C1H5N1": [6, 7, 1, 1, 1, 1, 1]}
    groups = {}
    for k, (name, numbers) in enumerate(formulas.items()):
        coords, energy, forces = make_group(numbers, n_conf, rng)
        smiles = np.array([f"mol{k}a".encode() if i % 3 else f"mol{k}b".encode() for i in range(n_conf)])
        key = f"by_size/n{len(numbers)}/{name}" if nested and k == 2 else name
        groups[key] = {
            "atomic_numbers": np.asarray(numbers, dtype=np.uint8),
            "coordinates": coords.astype(np.float32),
            "wb97x_dz.energy": energy,
            "wb97x_dz.forces": forces.astype(np.float32),
            "smiles": smiles,
        }
    return write_ani(path, groups, chunked=chunked)
