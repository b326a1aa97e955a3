"""Make the TorchANI fixture of ``nnp import torchani`` (runs where TorchANI is installed).

    benchmarks/.venvs/torchani/bin/python tests/data/make_torchani_fixture.py [--full] [--out DIR]

Builds TorchANI's ANI-1x and ANI-2x architectures with RANDOM weights (nothing is
downloaded): TorchANI's own AEV presets ("ani1x", "ani2x"), element orders
(H C N O; H C N O S F Cl), CELU(0.1) networks and GSAE self energies. Saves each
model's state the way users save them, and TorchANI's own energies and forces
(float64 and float32) on perturbed molecules and a triclinic periodic cell:

- ``torchani_ani1x.pt``: a 2-member ensemble, TorchANI 2.x ``state_dict()`` layout;
- ``torchani_ani2x.pt``: one network set, the legacy (TorchANI <= 2.2) layout of
  ``legacy_state_dict()``;
- ``torchani_reference.npz``: per model and structure: ``numbers``, ``positions``
  (Å), ``cell`` (Å, zeros for molecules), ``pbc``, and TorchANI's ``energy``
  (Hartree), ``forces`` (Hartree/Å) in float64 and ``energy32``, ``forces32`` in
  float32; ``member_energy`` (Hartree, float64) per ensemble member.

The committed fixture shrinks the element networks (the layer widths are the only
change; AEV constants, element order and layout are ANI-1x's and ANI-2x's) to keep
it small; ``--full`` keeps TorchANI's real widths (what the live test uses).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.build import molecule  # noqa: E402
from torchani.arch import Assembler  # noqa: E402
from torchani.utils import SYMBOLS_1X, SYMBOLS_2X  # noqa: E402

# Small widths per element (distinct per element, as in the real models).
SMALL = {
    "ani1x": {"H": (12, 8, 6), "C": (10, 8, 6), "N": (8, 6, 4), "O": (8, 6, 4)},
    "ani2x": {"H": (10, 8, 6), "C": (9, 8, 6), "N": (8, 6, 4), "O": (8, 6, 4), "S": (6, 4, 4), "F": (6, 5, 4), "Cl": (6, 4, 3)},
}
MOLECULES = {
    "ani1x": ["CH3CH2OH", "CH3NO2", "C6H6", "HCOOH"],
    "ani2x": ["CH3Cl", "CH3SH", "CF3CN", "C2H6SO", "HCOOH"],
}
CELL_MOLECULES = {"ani1x": ["H2O", "CH4", "NH3", "H2O"], "ani2x": ["H2O", "HCl", "SH2", "HF"]}


def build(kind: str, members: int, full: bool):
    symbols = SYMBOLS_1X if kind == "ani1x" else SYMBOLS_2X
    asm = Assembler(periodic_table_index=True)
    asm.set_symbols(symbols)
    asm.set_global_cutoff_fn("cosine")
    asm.set_aev_computer(radial=kind, angular=kind, strategy="pyaev")
    if full:
        asm.set_atomic_networks(ctor=kind)
    else:
        asm.set_atomic_networks(ctor="build", kwargs={"dims": SMALL[kind], "activation": "celu", "bias": True})
    asm.set_neighborlist("all_pairs")
    asm.set_gsaes_as_self_energies("wb97x-631gd")
    return asm.assemble(members)


def structures(kind: str, rng: np.random.Generator) -> list[Atoms]:
    out = []
    for name in MOLECULES[kind]:
        atoms = molecule(name)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        out.append(atoms)
    # a triclinic periodic cell with four small molecules in it (images within the cutoff)
    cell = np.array([[6.2, 0.0, 0.0], [0.9, 6.0, 0.0], [0.6, -0.7, 6.4]])
    box = Atoms(cell=cell, pbc=True)
    for k, name in enumerate(CELL_MOLECULES[kind]):
        m = molecule(name)
        m.rotate(rng.uniform(0, 360), rng.normal(size=3))
        m.positions += np.array([k % 2, (k // 2) % 2, k % 3 / 2.0]) @ cell / 2.0 + 1.0
        box += m
    box.positions += rng.normal(0.0, 0.05, box.positions.shape)
    out.append(box)
    return out


def evaluate(model, atoms: Atoms, dtype: torch.dtype, members: bool = False):
    model = model.to(dtype)
    numbers = torch.tensor(atoms.numbers, dtype=torch.long)[None]
    coords = torch.tensor(atoms.positions, dtype=dtype)[None].requires_grad_(True)
    kwargs = {}
    if atoms.pbc.any():
        kwargs = {"cell": torch.tensor(np.asarray(atoms.cell), dtype=dtype), "pbc": torch.tensor(atoms.pbc)}
    energy = model((numbers, coords), **kwargs).energies
    (grad,) = torch.autograd.grad(energy.sum(), coords)
    result = {"energy": energy.detach().double().numpy()[0], "forces": -grad.double().numpy()[0]}
    if members:
        values = model((numbers, coords.detach()), ensemble_values=True, **kwargs).energies
        result["member_energy"] = values.detach().double().numpy()[:, 0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="TorchANI's real network widths")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    reference: dict[str, np.ndarray] = {}
    for kind, n_members, legacy in (("ani1x", 2, False), ("ani2x", 1, True)):
        model = build(kind, n_members, args.full)  # assemble(1): one network set, not an ensemble
        state = model.legacy_state_dict() if legacy else model.state_dict()
        torch.save({k: v.detach().clone() for k, v in state.items()}, out / f"torchani_{kind}.pt")
        for i, atoms in enumerate(structures(kind, rng)):
            key = f"{kind}/{i}/"
            reference[key + "numbers"] = atoms.numbers
            reference[key + "positions"] = atoms.positions
            reference[key + "cell"] = np.asarray(atoms.cell)
            reference[key + "pbc"] = atoms.pbc
            r64 = evaluate(model, atoms, torch.float64, members=n_members > 1)
            r32 = evaluate(model, atoms, torch.float32)
            for name, value in r64.items():
                reference[key + name] = value
            reference[key + "energy32"] = r32["energy"]
            reference[key + "forces32"] = r32["forces"]
    np.savez_compressed(out / "torchani_reference.npz", **reference)
    for f in sorted(out.glob("torchani_*")):
        print(f"{f}: {f.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
