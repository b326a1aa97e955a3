"""A trained potential: species map + neighbor list + model + reference energies.

This is the one place where energies become forces (and stress), by autograd:

    E_m   = sum_{i in m} ( scale * model_i + E_ref[species_i] )     eV
    F_i   = -dE/dR_i                                               eV/Å
    sigma = (1/V) dE/d(strain)                                     eV/Å^3

Saved models are a plain dict of tensors and built-in types (see :func:`save`),
loadable with ``torch.load(weights_only=True)`` and rebuilt from their stored
architecture config: no pickled classes, no training config needed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn

from nnp import keys
from nnp.errors import NNPError
from nnp.models import AtomisticModel, build_model
from nnp.neighbors import neighbor_list
from nnp.nn import scatter_sum

FORMAT = "nnp.potential"
FORMAT_VERSION = 1


class Potential(nn.Module):
    """Energy, forces and stress of a flat batch (see :mod:`nnp.keys`)."""

    def __init__(
        self,
        model: AtomisticModel,
        model_config: Mapping[str, Any],
        species: Sequence[int],
        atomref: Sequence[float] | torch.Tensor | None = None,
        energy_scale: float = 1.0,
    ):
        super().__init__()
        self.model = model
        self.model_config = dict(model_config)
        self.species = [int(z) for z in species]
        self.cutoff = float(model.cutoff)
        table = torch.full((119,), -1, dtype=torch.long)
        for s, z in enumerate(self.species):
            table[z] = s
        self.register_buffer("species_table", table)
        if atomref is None:
            atomref = torch.zeros(len(self.species))
        self.register_buffer("atomref", torch.as_tensor(atomref, dtype=torch.get_default_dtype()).clone())
        self.register_buffer("energy_scale", torch.tensor(float(energy_scale)))

    # ----------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        model_config: Mapping[str, Any],
        species: Sequence[int],
        atomref: Sequence[float] | torch.Tensor | None = None,
        energy_scale: float = 1.0,
    ) -> Potential:
        species = sorted(int(z) for z in species)
        model = build_model(model_config, species)
        return cls(model, model_config, species, atomref, energy_scale)

    def species_of(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers (N,) -> species indices (N,); raises on unknown elements."""
        z = atomic_numbers.to(self.species_table.device)
        if bool(((z < 1) | (z > 118)).any()):
            raise NNPError(f"atomic numbers out of range 1..118: {sorted(set(z.tolist()))}")
        s = self.species_table[z]
        if bool((s < 0).any()):
            from ase.data import chemical_symbols

            unknown = sorted({chemical_symbols[int(v)] for v in z[s < 0].tolist()})
            known = [chemical_symbols[v] for v in self.species]
            raise NNPError(f"element(s) {', '.join(unknown)} not known to this model (species: {', '.join(known)})")
        return s

    # --------------------------------------------------------------- forward
    def forward(
        self,
        batch: Dict[str, torch.Tensor],
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Energies (M,) eV; forces (N, 3) eV/Å; stress (M, 3, 3) eV/Å^3.

        ``create_graph`` keeps the graph of the forces (training on forces).
        """
        species = self._species_index(batch[keys.Z])
        if torch.jit.is_scripting():
            # TorchScript has no enable_grad: forces need the caller's grad mode on (the default).
            return self._evaluate(batch, species, compute_forces, compute_stress, create_graph)
        with torch.enable_grad():
            return self._evaluate(batch, species, compute_forces, compute_stress, create_graph)

    def _species_index(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """:meth:`species_of`, with a plain TorchScript error path when scripted."""
        if torch.jit.is_scripting():
            z = atomic_numbers.to(self.species_table.device)
            if bool(((z < 1) | (z > 118)).any()):
                raise RuntimeError("atomic numbers out of range 1..118")
            s = self.species_table[z]
            if bool((s < 0).any()):
                raise RuntimeError("element not known to this model")
            return s
        return self.species_of(atomic_numbers)

    def _evaluate(
        self,
        batch: Dict[str, torch.Tensor],
        species: torch.Tensor,
        compute_forces: bool,
        compute_stress: bool,
        create_graph: bool,
    ) -> Dict[str, torch.Tensor]:
        """The body of :meth:`forward` (grad mode already on)."""
        positions = batch[keys.R]
        idx_m = batch[keys.IDX_M]
        n_atoms = batch[keys.N_ATOMS]
        n_structures = n_atoms.shape[0]
        cell = batch[keys.CELL].to(positions.dtype)
        pbc = batch[keys.PBC]
        nbrs = neighbor_list(positions, idx_m, n_atoms, cell, pbc, self.cutoff)
        if (compute_forces or compute_stress) and not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)
        unstrained = positions
        strain = torch.zeros_like(cell)
        if compute_stress:
            # Differentiate with respect to a homogeneous strain of atoms and cell.
            strain.requires_grad_(True)
            positions = positions + torch.einsum("ni,nij->nj", positions, strain[idx_m])
            cell = cell + torch.matmul(cell, strain)
        i, j = nbrs.pairs[0], nbrs.pairs[1]
        vectors = positions[j] - positions[i]
        if bool(pbc.any()):  # images are all zero without periodic cells: skip (P, 3, 3) work
            vectors = vectors + torch.einsum("pk,pkl->pl", nbrs.images.to(positions.dtype), cell[idx_m[i]])
        inputs = {
            keys.SPECIES: species,
            keys.PAIRS: nbrs.pairs,
            keys.PAIR_VECTORS: vectors,
            keys.PAIR_DISTANCES: torch.linalg.norm(vectors, dim=-1),
            keys.IDX_M: idx_m,
            keys.N_ATOMS: n_atoms,
        }
        out = self.model(inputs)
        atomic = self.energy_scale * out[keys.ATOMIC_ENERGY] + self.atomref[species]
        energy = scatter_sum(atomic, idx_m, n_structures)
        results: Dict[str, torch.Tensor] = {keys.ENERGY: energy, keys.ATOMIC_ENERGY: atomic}
        if keys.LAYER_ENERGY in out:
            # Hierarchical models: per-atom layer shares (N, L) -> per structure (M, L).
            # The atom reference energies are the one-body term, so they join
            # layer 0 and the layers sum to the energy.
            layers = scatter_sum(self.energy_scale * out[keys.LAYER_ENERGY], idx_m, n_structures)
            reference = scatter_sum(self.atomref[species], idx_m, n_structures)
            results[keys.LAYER_ENERGY] = torch.cat([layers[:, :1] + reference[:, None], layers[:, 1:]], dim=1)
        if compute_forces or compute_stress:
            wrt = [unstrained, strain] if compute_stress else [unstrained]
            grads = torch.autograd.grad(
                [energy.sum()], wrt, create_graph=create_graph, retain_graph=create_graph, allow_unused=True
            )
            if compute_forces:
                g = grads[0]
                results[keys.FORCES] = -g if g is not None else torch.zeros_like(unstrained)
            if compute_stress:
                g = grads[1]
                if g is None:
                    g = torch.zeros_like(strain)
                volume = torch.linalg.det(batch[keys.CELL].to(energy.dtype)).abs()
                results[keys.STRESS] = g / volume[:, None, None]
        return results

    # ------------------------------------------------------------- save/load
    def to_dict(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model_config": _plain(self.model_config),
            "species": list(self.species),
            "atomref": self.atomref.detach().cpu().clone(),
            "energy_scale": float(self.energy_scale),
            "cutoff": self.cutoff,
            "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom"},
            "dtype": str(self.atomref.dtype).replace("torch.", ""),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "metadata": _plain(dict(metadata or {})),
        }

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
        """Write a self-contained model file (atomically: temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.to_dict(metadata), tmp)
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> Potential:
        pot = cls.build(payload["model_config"], payload["species"], payload["atomref"], payload["energy_scale"])
        pot.model.load_state_dict(payload["state_dict"])
        dtype = getattr(torch, payload.get("dtype", "float32"))
        pot.metadata = dict(payload.get("metadata", {}))
        return pot.to(dtype)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Potential:
        path = Path(path)
        if not path.is_file():
            raise NNPError(f"{path}: model file not found")
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises many types for a bad file
            raise NNPError(f"{path}: not a readable nnp model file ({type(err).__name__})") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise NNPError(f"{path}: not an nnp model file (a Lightning checkpoint? use the run's model.pt)")
        if int(payload.get("version", 0)) > FORMAT_VERSION:
            raise NNPError(f"{path}: model format version {payload['version']} is newer than this nnp")
        return cls.from_dict(payload)


def _plain(obj: Any) -> Any:
    """Convert OmegaConf containers/tuples to plain dict/list for safe saving."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if hasattr(obj, "__iter__"):
        return [_plain(v) for v in obj]
    return str(obj)
