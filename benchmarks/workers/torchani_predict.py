"""The ``nnp predict`` job written with TorchANI, as a user would: read extxyz with ASE, energies and
forces in batches of 256 (padded, TorchANI's layout), write extxyz with ASE (runs in benchmarks/.venvs/torchani).

    python torchani_predict.py INPUT OUTPUT [jit]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ase.io  # noqa: E402
import torch  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from torchani_worker import build, energy_forces  # noqa: E402


def main(inp: str, out: str, jit: bool) -> None:
    frames = ase.io.read(inp, index=":")
    symbols = sorted({s for a in frames for s in a.get_chemical_symbols()})
    model = build(symbols, jit=jit)
    for start in range(0, len(frames), 256):
        chunk = frames[start:start + 256]
        n = max(len(a) for a in chunk)
        species = torch.full((len(chunk), n), -1, dtype=torch.long)
        coords = torch.zeros((len(chunk), n, 3))
        for k, a in enumerate(chunk):
            species[k, :len(a)] = torch.from_numpy(a.numbers)
            coords[k, :len(a)] = torch.from_numpy(a.positions)
        energies, forces = energy_forces(model, species, coords)
        energies, forces = energies.detach().double().numpy(), forces.detach().double().numpy()
        for k, a in enumerate(chunk):
            a.calc = SinglePointCalculator(a, energy=float(energies[k]), forces=forces[k, :len(a)])
    ase.io.write(out, frames, format="extxyz")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], len(sys.argv) > 3 and sys.argv[3] == "jit")
