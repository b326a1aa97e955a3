"""A trained potential: species map + neighbor list + model + reference energies.

This is the one place where energies become forces (and stress), by autograd:

    E_m   = sum_{i in m} ( scale * model_i + E_ref[species_i] ) + sum_t E_t,m   eV
    F_i   = -dE/dR_i                                               eV/Å
    sigma = (1/V) dE/d(strain)                                     eV/Å^3

Saved models are a plain dict of tensors and built-in types (see :meth:`Potential.save`;
the format and its checks: :mod:`nnp.model_file`), loadable with
``torch.load(weights_only=True)`` and rebuilt from their stored architecture
config: no pickled classes, no training config needed. Neighbor pairs and
model inputs: :mod:`nnp.model_inputs`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from nnp import keys
from nnp.errors import NNPError
from nnp.model_file import (
    FORMAT,
    FORMAT_VERSION,
    POTENTIAL_ENTRIES,
    check_entries,
    first_line,
    plain,
    read_model_file,
    short_repr,
)
from nnp.model_inputs import pair_inputs, species_lookup
from nnp.models import AtomisticModel, build_model
from nnp.nn import scatter_sum
from nnp.terms import EnergyTerm, build_terms


def stress_from_strain_gradient(grad: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """dE/d(strain) (M, 3, 3) eV -> stress (M, 3, 3) eV/Å^3; NaN for structures without a cell.

    Per structure, so a batch that mixes periodic and non-periodic structures
    gives every periodic one its stress (a zero volume would otherwise divide to inf).
    """
    volume = torch.linalg.det(cell).abs()
    safe = torch.where(volume > 0, volume, torch.ones_like(volume))
    stress = grad / safe[:, None, None]
    return torch.where((volume > 0)[:, None, None], stress, torch.full_like(stress, float("nan")))


class Potential(nn.Module):
    """Energy, forces and stress of a flat batch (see :mod:`nnp.keys`)."""

    def __init__(
        self,
        model: AtomisticModel,
        model_config: Mapping[str, Any],
        species: Sequence[int],
        atomref: Sequence[float] | torch.Tensor | None = None,
        energy_scale: float = 1.0,
        terms: Sequence[EnergyTerm] = (),
    ):
        """``terms``: energy terms added to the model's energy (:mod:`nnp.terms`)."""
        super().__init__()
        self.model = model
        self.terms = nn.ModuleList(terms)
        # True while training: terms whose energy is not in the labels (in_labels=false) are left out
        self.fitting = False
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
        # The same reference energies in float64 whatever the network's dtype (kept so by _apply):
        # at ~-10^3 eV per atom, float32 would round each by ~1e-4 eV and a 10^4-atom sum by ~1 eV.
        # Not persistent: the file stores them as "atomref" (see to_dict).
        self.register_buffer("atomref64", torch.as_tensor(atomref, dtype=torch.float64).clone(), persistent=False)

    @torch.jit.unused
    def set_atomref(self, values) -> None:
        """Replace the atom reference energies (eV, per species): the float64 copy used in the
        energy sums and the buffer in the model's dtype."""
        values = torch.as_tensor(values, dtype=torch.float64, device=self.atomref.device)
        with torch.no_grad():
            self.atomref64 = values.clone()
            self.atomref.copy_(values.to(self.atomref.dtype))

    def _apply(self, fn, recurse=True):
        """``.to()``, ``.float()``, ``.cuda()``...: ``atomref64`` follows the device, never the dtype."""
        ref = self.atomref64
        super()._apply(fn, recurse)
        self.atomref64 = ref.to(device=self.atomref.device, dtype=torch.float64)
        return self

    # ----------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        model_config: Mapping[str, Any],
        species: Sequence[int],
        atomref: Sequence[float] | torch.Tensor | None = None,
        energy_scale: float = 1.0,
        terms: Mapping[str, Any] | None = None,
    ) -> Potential:
        """``terms``: term name -> settings (the ``terms`` config; see :func:`nnp.terms.build_terms`)."""
        species = sorted(int(z) for z in species)
        model = build_model(model_config, species)
        info = {"species": species, "cutoff": float(model.cutoff), "n_atom_features": int(getattr(model, "n_atom_features", 0))}
        return cls(model, model_config, species, atomref, energy_scale, build_terms(terms, info))

    def species_of(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers (N,) -> species indices (N,); raises on unknown elements.

        The last answer is kept for the same tensor, unchanged (an MD step's batch keeps its
        atomic numbers): five small ops and two syncs per step otherwise."""
        last = self.__dict__.get("_last_species")
        if last is not None and last[0] is atomic_numbers and last[1] == atomic_numbers._version and last[2] is self.species_table:
            return last[3]
        species = self._lookup_species(atomic_numbers)
        self.__dict__["_last_species"] = (atomic_numbers, atomic_numbers._version, self.species_table, species)
        return species

    def _lookup_species(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """:meth:`species_of` without its cache."""
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
            return species_lookup(self.species_table, atomic_numbers)
        return self.species_of(atomic_numbers)

    def _geometry(
        self,
        batch: Dict[str, torch.Tensor],
        species: torch.Tensor,
        compute_forces: bool,
        compute_stress: bool,
    ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """:func:`pair_inputs` at this potential's cutoff."""
        return pair_inputs(batch, species, self.cutoff, compute_forces, compute_stress)

    def _energies(self, out: Dict[str, torch.Tensor], species: torch.Tensor, idx_m: torch.Tensor, n_structures: int) -> Dict[str, torch.Tensor]:
        """Model output -> atomic energies (N,) and energies (M,) in eV (+ layer shares)."""
        # The network's share in its own dtype; reference energies and the sums over atoms in float64.
        atomic = (self.energy_scale * out[keys.ATOMIC_ENERGY]).to(torch.float64) + self.atomref64[species]
        energy = scatter_sum(atomic, idx_m, n_structures)
        results: Dict[str, torch.Tensor] = {keys.ENERGY: energy, keys.ATOMIC_ENERGY: atomic}
        if keys.LAYER_ENERGY in out:
            # Hierarchical models: per-atom layer shares (N, L) -> per structure (M, L).
            # The atom reference energies are the one-body term, so they join
            # layer 0 and the layers sum to the energy.
            layers = scatter_sum((self.energy_scale * out[keys.LAYER_ENERGY]).to(torch.float64), idx_m, n_structures)
            reference = scatter_sum(self.atomref64[species], idx_m, n_structures)
            results[keys.LAYER_ENERGY] = torch.cat([layers[:, :1] + reference[:, None], layers[:, 1:]], dim=1)
        return results

    def _evaluate(
        self,
        batch: Dict[str, torch.Tensor],
        species: torch.Tensor,
        compute_forces: bool,
        compute_stress: bool,
        create_graph: bool,
    ) -> Dict[str, torch.Tensor]:
        """The body of :meth:`forward` (grad mode already on)."""
        inputs, unstrained, strain = self._geometry(batch, species, compute_forces, compute_stress)
        if not torch.jit.is_scripting():
            if not self.training and not create_graph and (compute_forces or compute_stress):
                chunked = self._evaluate_by_centers(batch, species, inputs, unstrained, strain, compute_forces, compute_stress)
                if chunked is not None:
                    return chunked
        out = self.model(inputs)
        results = self._energies(out, species, batch[keys.IDX_M], batch[keys.N_ATOMS].shape[0])
        if len(self.terms) > 0:
            self._add_terms(inputs, out, results)
        energy = results[keys.ENERGY]
        if compute_forces or compute_stress:
            wrt = [unstrained, strain] if compute_stress else [unstrained]
            grads = torch.autograd.grad(
                [energy.sum()], wrt, create_graph=create_graph, retain_graph=create_graph, allow_unused=True
            )
            self._add_forces_and_stress(results, grads, batch, unstrained, strain, compute_forces, compute_stress)
        return results

    def _add_terms(
        self, inputs: Dict[str, torch.Tensor], out: Dict[str, torch.Tensor], results: Dict[str, torch.Tensor],
        skip: List[str] | None = None,
    ) -> None:
        """Add each term's energy (M,) to ``results[keys.ENERGY]``; record it as
        ``keys.TERM_ENERGY + name`` and whatever else a term returns (charges, dipole).
        ``skip``: names of terms left out (a committee computes its shared ones once)."""
        energy = results[keys.ENERGY]
        for term in self.terms:
            # (TorchScript unrolls this loop: no `continue`)
            if (term.in_labels or not self.fitting) and (skip is None or term.name not in skip):
                extra = term(inputs, out)
                share = extra["energy"].to(energy.dtype)
                energy = energy + share
                results[keys.TERM_ENERGY + term.name] = share
                for key, value in extra.items():
                    if key != "energy":
                        results[key] = value
        results[keys.ENERGY] = energy

    def term_settings(self) -> Dict[str, Any]:
        """Term name -> settings, as stored in the model file (empty without terms)."""
        return {term.name: term.settings() for term in self.terms}

    @torch.jit.unused
    def _evaluate_by_centers(
        self,
        batch: Dict[str, torch.Tensor],
        species: torch.Tensor,
        inputs: Dict[str, torch.Tensor],
        unstrained: torch.Tensor,
        strain: torch.Tensor,
        compute_forces: bool,
        compute_stress: bool,
    ) -> Dict[str, torch.Tensor] | None:
        """Inference with bounded memory for models with a chunked path (:mod:`nnp.models.pair_gradient`):
        the model gives dE/d(pair vectors) chunk by chunk of centers; forces follow by scattering
        it onto each pair's two atoms, stress by autograd through the pair vectors. None when the
        model has no such path."""
        from nnp.models.pair_gradient import energy_and_pair_gradient

        if len(getattr(self, "terms", ())) > 0:  # energy terms beside the model need the whole-graph path
            return None
        chunked = energy_and_pair_gradient(self.model, inputs)
        if chunked is None:
            return None
        out, grad = chunked
        results = self._energies(out, species, batch[keys.IDX_M], batch[keys.N_ATOMS].shape[0])
        if not compute_stress:
            # r_ij = R_j - R_i (+ images @ cell): dE/dR_j += dE/dr_ij, dE/dR_i -= dE/dr_ij, scattered
            # directly (autograd's engine for these two index ops was ~6% of a small molecule's MD step)
            pairs = inputs[keys.PAIRS]
            g = (grad * self.energy_scale).to(unstrained.dtype)
            gradient = torch.zeros_like(unstrained, requires_grad=False).index_add_(0, pairs[1], g).index_add_(0, pairs[0], g, alpha=-1)
            self._add_forces_and_stress(results, [gradient], batch, unstrained, strain, compute_forces, False)
            return results
        wrt = [unstrained, strain] if compute_stress else [unstrained]
        # (dE/dr_ij . r_ij summed, not grad_outputs=: autograd's check of those imports torch.fx, 2 s)
        grads = torch.autograd.grad([(inputs[keys.PAIR_VECTORS] * (grad * self.energy_scale)).sum()], wrt, allow_unused=True)
        self._add_forces_and_stress(results, grads, batch, unstrained, strain, compute_forces, compute_stress)
        return results

    def _add_forces_and_stress(
        self,
        results: Dict[str, torch.Tensor],
        grads: List[torch.Tensor | None],
        batch: Dict[str, torch.Tensor],
        unstrained: torch.Tensor,
        strain: torch.Tensor,
        compute_forces: bool,
        compute_stress: bool,
    ) -> None:
        """Forces -dE/dR and stress from the gradients with respect to [positions(, strain)]."""
        if compute_forces:
            g = grads[0]
            results[keys.FORCES] = -g if g is not None else torch.zeros_like(unstrained)
        if compute_stress:
            g = grads[1]
            if g is None:
                g = torch.zeros_like(strain)
            results[keys.STRESS] = stress_from_strain_gradient(g, batch[keys.CELL].to(results[keys.ENERGY].dtype))

    # ------------------------------------------------------------- save/load
    def to_dict(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": "potential",
            "model_config": plain(self.model_config),
            "species": list(self.species),
            "atomref": self.atomref64.detach().cpu().clone(),  # float64 (readers cast it to their dtype)
            "energy_scale": float(self.energy_scale),
            "cutoff": self.cutoff,
            "units": {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom"},
            "dtype": str(self.atomref.dtype).replace("torch.", ""),
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "terms": plain(self.term_settings()),
            "terms_state_dict": {k: v.detach().cpu().clone() for k, v in self.terms.state_dict().items()},
            "metadata": plain(dict(metadata or {})),
        }

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
        """Write a self-contained model file (atomically: :func:`nnp.outputs.write_bytes`)."""
        import io

        from nnp.outputs import write_bytes

        buffer = io.BytesIO()  # serialized in memory: a disk error is then an OSError, not torch's RuntimeError
        torch.save(self.to_dict(metadata), buffer)
        write_bytes(path, buffer.getbuffer())

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any], source: str = "model") -> Potential:
        """Rebuild from :meth:`to_dict`'s payload; a malformed payload raises one NNPError naming ``source``."""
        check_entries(payload, POTENTIAL_ENTRIES, source)
        terms = payload.get("terms") or {}  # files before version 3 have none
        if not isinstance(terms, dict) or not isinstance(payload.get("terms_state_dict") or {}, dict):
            raise NNPError(f"{source}: model file entry 'terms' has the wrong type ({type(terms).__name__})")
        try:
            pot = cls.build(payload["model_config"], payload["species"], payload["atomref"], payload["energy_scale"], terms)
        except NNPError as err:
            raise NNPError(f"{source}: entry 'model_config': {first_line(err)}") from None
        except Exception as err:  # a constructor fed wrongly typed values raises anything
            raise NNPError(f"{source}: entry 'model_config' does not build a model ({type(err).__name__}: {first_line(err)})") from None
        try:
            missing, unexpected = pot.model.load_state_dict(payload["state_dict"], strict=False)
        except NNPError as err:
            raise NNPError(f"{source}: {first_line(err)}") from None
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            raise NNPError(f"{source}: weights do not fit the stored architecture ({first_line(err)})") from None
        if missing or unexpected:
            what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
            raise NNPError(f"{source}: state_dict does not match the stored architecture ({what})")
        try:
            pot.terms.load_state_dict(payload.get("terms_state_dict") or {}, strict=True)
        except (RuntimeError, ValueError, TypeError, KeyError) as err:
            raise NNPError(f"{source}: entry 'terms_state_dict' does not fit the stored terms ({first_line(err)})") from None
        dtype = payload.get("dtype", "float32")
        if not isinstance(dtype, str) or dtype not in ("float32", "float64"):
            raise NNPError(f"{source}: entry 'dtype' is {short_repr(dtype)}; expected float32 or float64")
        metadata = payload.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise NNPError(f"{source}: model file entry 'metadata' has the wrong type ({type(metadata).__name__})")
        pot.metadata = dict(metadata or {})
        pot = pot.to(getattr(torch, dtype))
        # built in the default dtype (float32): set the stored values again in the file's dtype,
        # or a float64 model would lose ~1e-4 eV of a -2000 eV reference energy on every load
        pot.set_atomref(payload["atomref"])
        pot.energy_scale.fill_(float(payload["energy_scale"]))
        return pot

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Potential:
        """Load a single-model file (a committee file: :func:`nnp.committee.load_model`)."""
        payload = read_model_file(path, map_location)
        if payload.get("kind", "potential") != "potential":
            raise NNPError(f"{path}: a {payload.get('kind')} file, not a single model (load it with nnp.committee.load_model)")
        return cls.from_dict(payload, str(path))
