"""Inputs of the whole-command predict benchmark: ~20,000 small CHNO molecules as extxyz and HDF5, and an ANI-1x-sized model.

    python benchmarks/predict_data.py OUTDIR [N]

The molecules are ``datasets/chno-mini.h5`` (1,152 conformations) repeated until N, each copy
shifted by a small random displacement so no two structures are identical.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make(outdir: Path, n: int = 20000, seed: int = 0) -> dict[str, Path]:
    import ase
    import ase.io
    import h5py
    import torch

    from nnp.potential import Potential

    outdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with h5py.File(REPO / "datasets/chno-mini.h5", "r") as f:
        groups = [(np.asarray(f[k]["atomic_numbers"][()], np.int64), np.asarray(f[k]["coordinates"][()], np.float64)) for k in f]
    h5 = outdir / f"chno-{n}.h5"
    xyz = outdir / f"chno-{n}.extxyz"
    per = -(-n // sum(len(c) for _, c in groups))
    frames, written = [], 0
    with h5py.File(h5, "w") as f:
        f.attrs["length_unit"] = "angstrom"
        f.attrs["energy_unit"] = "eV"
        for k, (z, c) in enumerate(groups):
            take = min(len(c) * per, n - written)
            if take <= 0:
                break
            coords = np.concatenate([c] * per)[:take] + rng.normal(0, 0.01, (take, len(z), 3))
            g = f.create_group(f"g{k:03d}")
            g["atomic_numbers"] = z.astype(np.uint8)
            g["coordinates"] = coords
            frames += [ase.Atoms(numbers=z, positions=p) for p in coords]
            written += take
    ase.io.write(xyz, frames, format="extxyz")
    model = outdir / "ani.pt"
    import yaml

    cfg = yaml.safe_load((REPO / "conf/model/ani.yaml").read_text())
    torch.manual_seed(0)
    Potential.build(cfg, [1, 6, 7, 8]).save(model)
    return {"h5": h5, "extxyz": xyz, "model": model}


if __name__ == "__main__":
    print(make(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 20000))
