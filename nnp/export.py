"""Export a potential as TorchScript, for use outside Python training.

The whole :meth:`nnp.potential.Potential.forward` is compiled with
``torch.jit.script``: species map, neighbor list (brute force and cell
lists, periodic or not), model, reference energies, and forces/stress by
autograd. The file is a standard TorchScript archive with the model's
metadata (species, cutoff, units, architecture config, dtype) stored beside
it as ``nnp_metadata.json``, so it runs without nnp installed::

    module = torch.jit.load("model.ts")              # Python, or torch::jit::load in C++
    out = module(batch)                               # batch: Dict[str, Tensor], see nnp.keys
    out["energy"], out["forces"]                      # (M,) eV, (N, 3) eV/Å

The batch is the flat batch of :func:`nnp.data.collate` (atomic numbers,
positions, idx_m, n_atoms, cell, pbc), in the exported dtype. Optional
arguments: ``compute_forces`` (default true), ``compute_stress``,
``create_graph``. TorchScript has no ``enable_grad``, so forces need the
caller's grad mode on (the default; not inside ``torch.no_grad()``).

CLI: ``nnp export ckpt=run/model.pt output=model.ts [dtype=float64] [check=true] [overwrite=true]``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnp import keys
from nnp.errors import NNPError
from nnp.model_file import plain
from nnp.outputs import check_writable, write_bytes
from nnp.potential import Potential
from nnp.report import console
from nnp.terms import check_scriptable

METADATA_FILE = "nnp_metadata.json"
EXPORT_FORMAT = "nnp.torchscript"

USAGE = """usage: nnp export ckpt=MODEL.pt [output=MODEL.ts] [dtype=float32|float64] [check=true|false] [overwrite=true]

Compile a saved nnp model (model.pt of a training run) to TorchScript, neighbor
list and forces included, loadable with torch.jit.load (Python) or
torch::jit::load (C++) without nnp.
  ckpt    the saved model (required); a committee: a committee file, or ckpt=[a.pt,b.pt]
  output  where to write (default: the (first) model path with suffix .ts)
  dtype   float32 or float64 (default: the model's own)
  check   compare the exported model with the original on a test structure (default: true)
  overwrite  replace an existing output file (default: false)
  format  torchscript (default), or openmm: an OpenMM-Torch TorchForce module for the
          elements (and cell, when periodic) of input=system.xyz: positions in nm, energy in kJ/mol"""


def export_potential(
    potential: Potential, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Script ``potential`` and write it to ``path`` (atomically); returns the path."""
    path = Path(path)
    check_scriptable(potential)
    try:
        scripted = torch.jit.script(potential)
    except Exception as err:  # the TorchScript compiler raises many types
        detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())[:300]
        raise NNPError(f"cannot compile this model to TorchScript: {detail}") from None
    info = {
        "format": EXPORT_FORMAT,
        "species": list(potential.species),
        "cutoff": potential.cutoff,
        "model_config": plain(potential.model_config),
        "dtype": str(potential.atomref.dtype).replace("torch.", ""),
        "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "stress": "eV/Angstrom^3"},
        "inputs": [keys.Z, keys.R, keys.IDX_M, keys.N_ATOMS, keys.CELL, keys.PBC],
        "metadata": dict(metadata or getattr(potential, "metadata", {}) or {}),
        # a committee's module returns the mean and, beside it, energy_std,
        # forces_std and max_forces_std (calibration factors included)
        "kind": "committee" if hasattr(potential, "n_members") else "potential",
        "n_members": int(getattr(potential, "n_members", 1)),
        "calibration": plain(getattr(potential, "calibration", None)),
    }
    buffer = io.BytesIO()  # in memory first: a disk error is then an OSError naming the file
    torch.jit.save(scripted, buffer, _extra_files={METADATA_FILE: json.dumps(info, default=str)})
    return write_bytes(path, buffer.getbuffer())


def _load(path: str | os.PathLike, map_location: str | torch.device) -> tuple[torch.jit.ScriptModule, dict]:
    path = Path(path)
    if not path.is_file():
        raise NNPError(f"{path}: exported model not found")
    files = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=files)
    except Exception as err:  # torch raises RuntimeError/ValueError/zipfile errors for a bad file
        raise NNPError(f"{path}: not a TorchScript file ({type(err).__name__})") from None
    try:
        info = json.loads(files[METADATA_FILE] or "{}")
    except json.JSONDecodeError:
        info = {}
    if info.get("format") != EXPORT_FORMAT:
        raise NNPError(f"{path}: a TorchScript file, but not one written by nnp export")
    return module, info


def load_exported(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load an exported potential; call it like :class:`~nnp.potential.Potential`."""
    return _load(path, map_location)[0]


def exported_metadata(path: str | os.PathLike) -> dict:
    """The metadata stored with an exported potential (species, cutoff, units, ...)."""
    return _load(path, "cpu")[1]


def sample_batch(species: list[int], dtype: torch.dtype, n_atoms: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small non-periodic structure of the given elements, atoms >= 1 Å apart."""
    rng = np.random.default_rng(seed)
    grid = np.array([[x, y, z] for x in range(2) for y in range(2) for z in range(2)], dtype=np.float64)
    positions = 1.3 * grid[:n_atoms] + rng.uniform(-0.1, 0.1, (min(n_atoms, 8), 3))
    numbers = np.array([species[k % len(species)] for k in range(len(positions))])
    n = len(numbers)
    return {
        keys.Z: torch.as_tensor(numbers, dtype=torch.long),
        keys.R: torch.as_tensor(positions, dtype=dtype),
        keys.IDX_M: torch.zeros(n, dtype=torch.long),
        keys.N_ATOMS: torch.tensor([n]),
        keys.CELL: torch.zeros((1, 3, 3), dtype=dtype),
        keys.PBC: torch.zeros((1, 3), dtype=torch.bool),
    }


def compare(
    potential: Potential, exported: torch.jit.ScriptModule, batch: Mapping[str, torch.Tensor]
) -> tuple[float, float]:
    """Largest |ΔE| and |ΔF| between the original and the exported model, each
    relative to the size of the original's values (at least 1 eV, 1 eV/Å)."""
    a = potential(dict(batch))
    b = exported(dict(batch))
    e, f = a[keys.ENERGY].detach(), a[keys.FORCES].detach()
    de = float((e - b[keys.ENERGY].detach()).abs().max()) / max(1.0, float(e.abs().max()))
    df = float((f - b[keys.FORCES].detach()).abs().max()) / max(1.0, float(f.abs().max()))
    return de, df


def main(argv: list[str] | None = None) -> int:
    """``nnp export ckpt=... output=...``; returns the exit code, raises NNPError on bad input."""
    from nnp.committee import load_model
    from nnp.config.options import ExportOptions, command_options

    args = command_options("nnp export", ExportOptions, argv, USAGE)
    if args is None:
        return 0
    if args.get("format") == "openmm":
        return export_for_openmm(args)
    ckpt = args["ckpt"]  # a model file, or a list of them (a committee)
    first = Path(ckpt if isinstance(ckpt, str) else ckpt[0])
    output = Path(args.get("output") or first.with_suffix(".ts"))
    models = [Path(c) for c in ([ckpt] if isinstance(ckpt, str) else ckpt)]
    if any(output.resolve() == m.resolve() for m in models):
        raise NNPError(f"export: output {output} would overwrite the model file")
    check_writable(output, bool(args.get("overwrite", False)))  # before loading and compiling
    potential = load_model(ckpt)
    dtype_name = args.get("dtype")
    if dtype_name:
        potential = potential.to(getattr(torch, dtype_name))
    export_potential(potential, output)
    console.print(f"wrote {output} (TorchScript; species {potential.species}, cutoff {potential.cutoff} Å)", markup=False)
    if args.get("check", True):
        dtype = potential.atomref.dtype
        de, df = compare(potential, load_exported(output), sample_batch(potential.species, dtype))
        tol = 1e-5 if dtype == torch.float32 else 1e-10
        if de > tol or df > tol:
            raise NNPError(f"export check failed: exported model differs (relative ΔE {de:.1e}, ΔF {df:.1e})")
        console.print(f"check: exported model matches the original (relative ΔE {de:.1e}, ΔF {df:.1e})")
    return 0


def export_for_openmm(args: dict[str, Any]) -> int:
    """``nnp export format=openmm input=system.xyz``: the model as an OpenMM-Torch module (nm, kJ/mol)."""
    import ase.io

    from nnp.committee import load_model
    from nnp.engines.openmm import export_openmm, load_openmm_module, module_energy_forces

    if not args.get("input"):
        raise NNPError("format=openmm needs input=SYSTEM (a structure file: its elements, and cell when periodic)")
    ckpt = args["ckpt"]
    first = Path(ckpt if isinstance(ckpt, str) else ckpt[0])
    output = Path(args.get("output") or first.with_name(first.stem + "_openmm.pt"))
    check_writable(output, bool(args.get("overwrite", False)))
    try:
        atoms = ase.io.read(str(args["input"]))
    except FileNotFoundError:
        raise NNPError(f"input={args['input']}: file not found") from None
    except Exception as err:  # ASE raises many types for an unreadable file
        raise NNPError(f"input={args['input']}: cannot read a structure ({type(err).__name__})") from None
    potential = load_model(ckpt)
    if args.get("dtype"):
        potential = potential.to(getattr(torch, args["dtype"]))
    export_openmm(potential, atoms, output)
    console.print(f"wrote {output} (OpenMM-Torch TorchForce module: {len(atoms)} atoms, "
                  f"{'periodic' if atoms.pbc.all() else 'no box'}; positions nm, energy kJ/mol)", markup=False)
    if args.get("check", True):
        from nnp.calculator import NNPCalculator

        energy, forces = module_energy_forces(load_openmm_module(output), atoms)
        atoms.calc = NNPCalculator(potential)
        e0, f0 = atoms.get_potential_energy(), atoms.get_forces()
        de = abs(energy - e0) / max(1.0, abs(e0))
        df = float(np.abs(forces - f0).max()) / max(1.0, float(np.abs(f0).max()))
        tol = 1e-5 if potential.atomref.dtype == torch.float32 else 1e-10
        if de > tol or df > tol:
            raise NNPError(f"export check failed: the OpenMM module differs (relative ΔE {de:.1e}, ΔF {df:.1e})")
        console.print(f"check: the OpenMM module matches the model on {args['input']} (relative ΔE {de:.1e}, ΔF {df:.1e})")
    return 0
