"""Benchmark inputs, written once to benchmarks/.cache/*.npz in a neutral layout.

Every framework reads the same arrays (Z, R, n_atoms, energy eV, forces eV/Å,
cell, pbc), so the comparison uses identical data. Sources:

- ``chno``: random conformations of /work/shared/data/chno-gfn2.h5 (Hartree -> eV)
- ``aspirin``: frames of /work/shared/data/aspirin-gfn2-500K.extxyz (``aspirin_md``: one)
- ``box_<n>``: about n atoms of CHNO molecules (random orientations) packed on a
  grid at liquid-like density (~0.09 atoms/Å^3), no cell
- ``cu_2000``: a rattled periodic fcc copper cell of 2,000 atoms
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
DATA = Path(os.environ.get("NNP_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
HARTREE_EV = 27.211386245988
MIN_DISTANCE = 1.6  # Å between atoms of different molecules in a box


def _save(name: str, structures: list[dict]) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    out = {
        "Z": np.concatenate([s["Z"] for s in structures]).astype(np.int64),
        "R": np.concatenate([s["R"] for s in structures]).astype(np.float64),
        "n_atoms": np.array([len(s["Z"]) for s in structures], dtype=np.int64),
        "cell": np.stack([s.get("cell", np.zeros((3, 3))) for s in structures]).astype(np.float64),
        "pbc": np.stack([s.get("pbc", np.zeros(3, dtype=bool)) for s in structures]),
    }
    if all("energy" in s for s in structures):
        out["energy"] = np.array([s["energy"] for s in structures], dtype=np.float64)
        out["forces"] = np.concatenate([s["forces"] for s in structures]).astype(np.float64)
    tmp = CACHE / f"{name}.tmp.npz"
    np.savez(tmp, **out)
    tmp.replace(CACHE / f"{name}.npz")


def chno_structures(count: int | None = None, seed: int = 0) -> list[dict]:
    import h5py

    rows = []
    with h5py.File(DATA / "chno-gfn2.h5", "r") as f:
        for name in sorted(f):
            g = f[name]
            z = np.asarray(g["atomic_numbers"], dtype=np.int64)
            xyz = np.asarray(g["coordinates"], dtype=np.float64)
            e = np.asarray(g["gfn2.energy"], dtype=np.float64) * HARTREE_EV
            frc = np.asarray(g["gfn2.forces"], dtype=np.float64) * HARTREE_EV
            smiles = np.asarray(g["smiles"])
            rows += [
                {"Z": z, "R": xyz[k], "energy": e[k], "forces": frc[k], "smiles": smiles[k]}
                for k in range(len(e))
            ]
    if count is not None:
        pick = np.random.default_rng(seed).permutation(len(rows))[:count]
        rows = [rows[k] for k in pick]
    return rows


def aspirin_structures(count: int = 512, seed: int = 0) -> list[dict]:
    from ase.io import read

    frames = read(DATA / "aspirin-gfn2-500K.extxyz", index=":")
    pick = np.random.default_rng(seed).permutation(len(frames))[:count]
    return [
        {"Z": frames[k].numbers.astype(np.int64), "R": frames[k].positions,
         "energy": frames[k].get_potential_energy(), "forces": frames[k].get_forces()}
        for k in pick
    ]


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def molecular_box(n_atoms: int, seed: int = 0, spacing: float = 4.4) -> dict:
    """About ``n_atoms`` atoms of small CHNO molecules on a cubic grid of ``spacing`` Å,
    each randomly rotated, none closer than MIN_DISTANCE to another molecule."""
    rng = np.random.default_rng(seed)
    pool, seen = [], set()
    for s in chno_structures():
        if s["smiles"] in seen:
            continue
        seen.add(s["smiles"])
        centred = s["R"] - s["R"].mean(0)
        if np.linalg.norm(centred, axis=1).max() <= 2.6 and len(s["Z"]) >= 4:
            pool.append((s["Z"], centred))
    mean_size = np.mean([len(z) for z, _ in pool])
    side = int(np.ceil((1.15 * n_atoms / mean_size) ** (1 / 3)))
    placed: dict[tuple, np.ndarray] = {}
    zs, rs, total = [], [], 0
    for point in np.ndindex(side, side, side):
        if total >= n_atoms:
            break
        centre = np.asarray(point, dtype=float) * spacing
        keys_near = [tuple(p + d - 1 for p, d in zip(point, off, strict=True)) for off in np.ndindex(3, 3, 3)]
        near = [placed[q] for q in keys_near if q in placed]
        near = np.concatenate(near) if near else np.zeros((0, 3))
        for _ in range(30):
            z, xyz = pool[rng.integers(len(pool))]
            xyz = xyz @ _random_rotation(rng).T + centre
            if len(near) == 0 or np.min(np.linalg.norm(xyz[:, None] - near[None], axis=-1)) > MIN_DISTANCE:
                placed[point] = xyz
                zs.append(z)
                rs.append(xyz)
                total += len(z)
                break
    return {"Z": np.concatenate(zs), "R": np.concatenate(rs)}


def copper(repeat=(5, 10, 10), seed: int = 0) -> dict:
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return {"Z": atoms.numbers.astype(np.int64), "R": atoms.positions, "cell": atoms.cell.array,
            "pbc": np.ones(3, dtype=bool)}


def ensure(names: list[str], log=print) -> None:
    """Write the named inputs that are not cached yet."""
    for name in names:
        if (CACHE / f"{name}.npz").is_file():
            continue
        log(f"[prepare] {name}")
        if name == "chno":
            _save(name, chno_structures(count=2048))
        elif name == "aspirin":
            _save(name, aspirin_structures())
        elif name == "aspirin_md":
            _save(name, aspirin_structures(count=1))
        elif name.startswith("box_"):
            _save(name, [molecular_box(int(name.split("_")[1]))])
        elif name == "cu_2000":
            _save(name, [copper()])
        else:
            raise ValueError(f"unknown benchmark input {name}")


if __name__ == "__main__":
    import sys

    ensure(sys.argv[1:] or ["chno", "aspirin", "box_3000", "cu_2000"])
