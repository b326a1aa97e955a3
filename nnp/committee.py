"""Committees: several potentials trained on the same data, and their spread.

Where the members disagree, a prediction is not to be trusted (ANI-1x chose
its training data by exactly this). A :class:`Committee` is called like a
:class:`~nnp.potential.Potential` on a flat batch and returns the committee
mean in the usual keys (``energy``, ``forces``, ``atomic_energy``, ``stress``)
and beside them (see :mod:`nnp.keys`):

- ``energy_std`` (M,) eV: the standard deviation of the members' energies;
- ``forces_std`` (N,) eV/Å: per atom, the root-mean-square deviation of the
  members' force vectors from the mean force, sqrt(mean_k |F_k - F_mean|^2);
- ``max_forces_std`` (M,) eV/Å: the largest ``forces_std`` of each structure;
- ``member_energy`` (K, M) and ``member_forces`` (K, N, 3): each member's own.

Spreads are population statistics over the K members (divided by K, not K-1)
times the committee's calibration factors (1 until ``nnp evaluate
calibrate=true`` fits them on held-out data).

Energy terms (:mod:`nnp.terms`): every member is a full potential, terms
included, so the mean, the spreads and the member outputs above include them;
``charges`` (N,) e and ``dipole`` (M, 3) e Å are the members' means and
``charges_std`` (N,) e the spread of the members' charges (population std).
Parameter-free terms that are the same in every member (zbl, d3) are computed
once; terms with weights (coulomb: each member's charge head) per member
(:mod:`nnp.committee_terms`).

Cost: the members share the neighbor list, and ANI members with the same
descriptor settings share the descriptor (the AEV has no trainable
parameters), so a committee is not K separate models.

Files: :func:`load_model` takes a model file, a committee file or a list of
model files; :meth:`Committee.save` writes one committee file (format
version 3, a plain dict loaded with ``weights_only=True``; each member's
entry stores its own terms and their weights).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from nnp import keys
from nnp.errors import NNPError
from nnp.model_file import FORMAT, FORMAT_VERSION, plain, read_model_file, short_repr
from nnp.model_inputs import pair_inputs, species_lookup
from nnp.nn import scatter_max
from nnp.potential import Potential, stress_from_strain_gradient

UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom"}


class Committee(nn.Module):
    """K potentials with the same species, cutoff, dtype and energy terms, evaluated together."""

    __jit_unused_properties__ = ["fitting"]

    def __init__(
        self,
        members: Sequence[Potential],
        calibration: Mapping[str, Any] | None = None,
        sources: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if len(members) == 0:
            raise NNPError("a committee needs at least one member model")
        sources = list(sources) if sources is not None else [f"member {k}" for k in range(len(members))]
        check_compatible(members, sources)
        first = members[0]
        self.members = nn.ModuleList(members)
        self.n_members = len(members)
        self.species = list(first.species)
        self.cutoff = float(first.cutoff)
        self.model_config = dict(first.model_config)
        self.sources = [str(s) for s in sources]
        self.register_buffer("species_table", first.species_table.clone())
        # Mean reference energies: consumers use them for offsets and for the dtype.
        self.register_buffer("atomref", torch.stack([m.atomref for m in members]).mean(0))
        # float64, as each member's own (the members sum their energies with them)
        self.register_buffer("atomref64", torch.stack([m.atomref64 for m in members]).mean(0), persistent=False)
        cal = dict(calibration or {})
        self.calibration: Dict[str, Any] = {
            "energy": float(cal.get("energy", 1.0)),
            "forces": float(cal.get("forces", 1.0)),
            "applied": bool(cal.get("applied", False)),
            "data": cal.get("data"),
        }
        # (2,) factors for (energy_std, forces_std): a buffer, so export keeps them.
        self.register_buffer(
            "std_scale", torch.tensor([self.calibration["energy"], self.calibration["forces"]], dtype=first.atomref.dtype)
        )
        self.metadata: Dict[str, Any] = dict(metadata or {})
        # Terms the same in every member (parameter-free: zbl, d3): one copy, computed once;
        # share_terms=False computes them in every member instead (to check and time against).
        from nnp.committee_terms import shared_term_settings
        from nnp.terms import build_terms

        info = {"species": self.species, "cutoff": self.cutoff, "n_atom_features": 0}
        shared = build_terms(shared_term_settings(members), info)
        self.shared_terms = nn.ModuleList(shared).to(device=first.atomref.device, dtype=first.atomref.dtype)
        self.shared_term_names: List[str] = [t.name for t in shared]
        self.share_terms = True
        self._fitting = False
        from nnp.committee_ani import shares_descriptor

        self.shared_descriptor = shares_descriptor(members)
        # ANI: the descriptor's backward for the K members' gradients in one
        # vmapped pass where autograd supports it; a loop otherwise.
        self.batched_backward = True
        # ANI: the descriptor's backward in closed form for all K gradients at once
        # (AEV.vector_jacobian_many); False: autograd through the AEV (above).
        self.analytic_backward = True

    def _apply(self, fn, recurse=True):
        """``atomref64`` follows the device, never the dtype (as :meth:`Potential._apply`)."""
        ref = self.atomref64
        super()._apply(fn, recurse)
        self.atomref64 = ref.to(device=self.atomref.device, dtype=torch.float64)
        return self

    # ------------------------------------------------------------- species
    def species_of(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Atomic numbers (N,) -> species indices (N,); raises on unknown elements."""
        return self.members[0].species_of(atomic_numbers)

    def _species_index(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return species_lookup(self.species_table, atomic_numbers)
        return self.species_of(atomic_numbers)

    # ------------------------------------------------------------- terms
    @property
    def fitting(self) -> bool:
        """True: terms not in the labels (d3 in_labels=false) are left out, in every member
        (as :attr:`Potential.fitting <nnp.potential.Potential>`; ``nnp evaluate`` sets it)."""
        return self._fitting

    @fitting.setter
    def fitting(self, value: bool) -> None:
        self._fitting = bool(value)
        for member in self.members:
            member.fitting = bool(value)

    # ------------------------------------------------------------- forward
    def forward(
        self,
        batch: Dict[str, torch.Tensor],
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Committee mean and spread; see the module docstring for the keys.

        ``create_graph`` is accepted for the Potential interface; committees are
        evaluated, not trained, so the graph of the forces is never kept.
        """
        species = self._species_index(batch[keys.Z])
        if torch.jit.is_scripting():
            return self._evaluate(batch, species, compute_forces, compute_stress)
        with torch.enable_grad():
            return self._evaluate(batch, species, compute_forces, compute_stress)

    def _evaluate(
        self, batch: Dict[str, torch.Tensor], species: torch.Tensor, compute_forces: bool, compute_stress: bool
    ) -> Dict[str, torch.Tensor]:
        idx_m = batch[keys.IDX_M]
        n_structures = batch[keys.N_ATOMS].shape[0]
        inputs, unstrained, strain = pair_inputs(batch, species, self.cutoff, compute_forces, compute_stress)
        wrt = [unstrained, strain] if compute_stress else [unstrained]
        need_grad = compute_forces or compute_stress
        # first, the terms every member shares (their backward keeps the pairs' graph for the members')
        shared, shared_grads = self._shared_terms(inputs, n_structures, wrt, need_grad)
        if not torch.jit.is_scripting() and self.shared_descriptor:
            per_member, grads = self._shared_descriptor_pass(inputs, species, idx_m, n_structures, wrt, need_grad)
        else:
            per_member, grads = self._member_by_member(inputs, species, idx_m, n_structures, wrt, need_grad)
        if len(shared) > 0:
            for w in range(len(grads)):
                grads[w] = grads[w] + shared_grads[w][None]
        energies = torch.stack([r[keys.ENERGY] for r in per_member])  # (K, M)
        if keys.ENERGY in shared:
            energies = energies + shared[keys.ENERGY][None]
        atomic = torch.stack([r[keys.ATOMIC_ENERGY] for r in per_member])  # (K, N)
        results: Dict[str, torch.Tensor] = {
            keys.ENERGY: energies.mean(0),
            keys.ATOMIC_ENERGY: atomic.mean(0),
            keys.ENERGY_STD: energies.std(0, unbiased=False) * self.std_scale[0],
            keys.MEMBER_ENERGY: energies,
        }
        if keys.LAYER_ENERGY in per_member[0]:
            results[keys.LAYER_ENERGY] = torch.stack([r[keys.LAYER_ENERGY] for r in per_member]).mean(0)
        # the members' own terms: their shares, charges, dipoles (means); the charges' spread
        for key in per_member[0].keys():
            if key.startswith(keys.TERM_ENERGY) or key == keys.CHARGES or key == keys.DIPOLE:
                stacked = torch.stack([r[key] for r in per_member])
                results[key] = stacked.mean(0)
                if key == keys.CHARGES:
                    results[keys.CHARGES_STD] = stacked.std(0, unbiased=False)
        for key, value in shared.items():
            if key != keys.ENERGY:
                results[key] = value
        if compute_forces:
            forces = -grads[0]  # (K, N, 3)
            mean = forces.mean(0)
            spread = torch.sqrt(((forces - mean) ** 2).sum(-1).mean(0)) * self.std_scale[1]
            results[keys.FORCES] = mean
            results[keys.MEMBER_FORCES] = forces
            results[keys.FORCES_STD] = spread
            results[keys.MAX_FORCES_STD] = scatter_max(spread, idx_m, n_structures)
        if compute_stress:
            cell = batch[keys.CELL].to(energies.dtype)
            results[keys.STRESS] = stress_from_strain_gradient(grads[-1].mean(0), cell)
        return results

    def _member_by_member(
        self,
        inputs: Dict[str, torch.Tensor],
        species: torch.Tensor,
        idx_m: torch.Tensor,
        n_structures: int,
        wrt: List[torch.Tensor],
        need_grad: bool,
    ) -> Tuple[List[Dict[str, torch.Tensor]], List[torch.Tensor]]:
        """Any architecture: each member on the shared pairs, then its own backward pass.

        Each backward starts from that member's own energies (not a stacked
        tensor, whose backward would visit every member's graph: K^2 work).
        """
        per_member: List[Dict[str, torch.Tensor]] = []
        skip = self.shared_term_names if self.share_terms else torch.jit.annotate(List[str], [])
        for member in self.members:
            out = member.model(inputs)
            r = member._energies(out, species, idx_m, n_structures)
            if len(member.terms) > 0:  # its own terms (coulomb), on its own features
                member._add_terms(inputs, out, r, skip)
            per_member.append(r)
        stacked: List[List[torch.Tensor]] = [[] for _ in wrt]
        if need_grad:
            n = len(per_member)
            for k in range(n):
                grads = torch.autograd.grad([per_member[k][keys.ENERGY].sum()], wrt, retain_graph=k < n - 1, allow_unused=True)
                for w in range(len(wrt)):
                    g = grads[w]
                    stacked[w].append(g if g is not None else torch.zeros_like(wrt[w]))
        out: List[torch.Tensor] = []
        for s in stacked:
            if len(s) > 0:
                out.append(torch.stack(s))
        return per_member, out

    def _shared_terms(
        self, inputs: Dict[str, torch.Tensor], n_structures: int, wrt: List[torch.Tensor], need_grad: bool
    ) -> Tuple[Dict[str, torch.Tensor], List[torch.Tensor]]:
        """The terms every member shares, once: ``energy`` (M,) eV and each term's share, and
        their gradients with respect to ``wrt`` (empty dict and list: no shared terms)."""
        results: Dict[str, torch.Tensor] = {}
        grads: List[torch.Tensor] = []
        if not self.share_terms or len(self.shared_terms) == 0:
            return results, grads
        energy = torch.zeros(n_structures, dtype=self.atomref.dtype, device=self.atomref.device)
        no_features: Dict[str, torch.Tensor] = {}  # shared terms read the geometry only
        for term in self.shared_terms:
            if term.in_labels or not self._fitting:
                share = term(inputs, no_features)["energy"].to(energy.dtype)
                energy = energy + share
                results[keys.TERM_ENERGY + term.name] = share
        results[keys.ENERGY] = energy
        if need_grad:
            for w in range(len(wrt)):
                grads.append(torch.zeros_like(wrt[w]))
            if energy.requires_grad:  # (not when no pair is near enough for zbl)
                found = torch.autograd.grad([energy.sum()], wrt, retain_graph=True, allow_unused=True)
                for w in range(len(wrt)):
                    g = found[w]
                    if g is not None:
                        grads[w] = g.detach()
        return results, grads

    @torch.jit.unused
    def _shared_descriptor_pass(
        self,
        inputs: Dict[str, torch.Tensor],
        species: torch.Tensor,
        idx_m: torch.Tensor,
        n_structures: int,
        wrt: List[torch.Tensor],
        need_grad: bool,
    ) -> Tuple[List[Dict[str, torch.Tensor]], List[torch.Tensor]]:
        """ANI members with one descriptor: see :mod:`nnp.committee_ani`."""
        from nnp.committee_ani import shared_descriptor_pass

        return shared_descriptor_pass(self, inputs, species, idx_m, n_structures, wrt, need_grad)

    # ----------------------------------------------------------- save/load
    def set_calibration(self, energy: float, forces: float, data: str | None) -> None:
        """Store std scale factors (from :func:`nnp.calibration.fit_scale` on held-out data)."""
        self.calibration.update(energy=float(energy), forces=float(forces), applied=True, data=data)
        self.std_scale.copy_(torch.tensor([float(energy), float(forces)], dtype=self.std_scale.dtype))

    def to_dict(self) -> dict[str, Any]:
        first = self.members[0]
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "kind": "committee",
            "species": list(self.species),
            "cutoff": self.cutoff,
            "units": dict(UNITS),
            "dtype": str(first.atomref.dtype).replace("torch.", ""),
            "members": [m.to_dict(getattr(m, "metadata", {})) for m in self.members],
            "sources": list(self.sources),
            "calibration": plain(self.calibration),
            "metadata": plain(self.metadata),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write one committee file (atomically: :func:`nnp.outputs.write_bytes`)."""
        import io

        from nnp.outputs import write_bytes

        buffer = io.BytesIO()  # serialized in memory: a disk error is then an OSError, not torch's RuntimeError
        torch.save(self.to_dict(), buffer)
        write_bytes(Path(path), buffer.getbuffer())

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any], source: str = "committee") -> Committee:
        members = payload.get("members")
        if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
            raise NNPError(f"{source}: committee file has no list of member models")
        pots = [Potential.from_dict(m, f"{source} (member {k})") for k, m in enumerate(members)]
        calibration = payload.get("calibration")
        calibration = {} if calibration is None else calibration
        if not isinstance(calibration, dict):
            raise NNPError(f"{source}: committee entry 'calibration' has the wrong type ({type(calibration).__name__})")
        for key in ("energy", "forces"):
            v = calibration.get(key, 1.0)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v > 0 and math.isfinite(v)):
                raise NNPError(f"{source}: calibration factor {key!r} must be a positive number, got {short_repr(v)}")
        if not isinstance(calibration.get("applied", False), bool) or not isinstance(calibration.get("data"), (str, type(None))):
            raise NNPError(f"{source}: committee entry 'calibration' has a wrongly typed 'applied' or 'data'")
        metadata = payload.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise NNPError(f"{source}: committee entry 'metadata' has the wrong type ({type(metadata).__name__})")
        # Errors name the file (the stored sources are the files the members came from).
        check_compatible(pots, [f"{source} (member {k})" for k in range(len(pots))])
        sources = payload.get("sources")
        if not (isinstance(sources, list) and len(sources) == len(pots) and all(isinstance(s, str) for s in sources)):
            sources = [f"{source} (member {k})" for k in range(len(pots))]
        return cls(pots, calibration, sources, metadata or {})


# TorchScript reads this attribute's type here (it may be an empty list; this module's
# annotations are strings, which TorchScript does not resolve)
Committee.__annotations__["shared_term_names"] = List[str]


def check_compatible(members: Sequence[Potential], sources: Sequence[str]) -> None:
    """Members must share species, cutoff, dtype (and units: every nnp file is eV/Å) and their
    energy terms (names, and the settings of parameter-free terms)."""
    from ase.data import chemical_symbols

    first, src0 = members[0], sources[0]

    def names(species):
        return ",".join(chemical_symbols[z] for z in species)

    for m, src in zip(members[1:], sources[1:]):
        if m.species != first.species:
            raise NNPError(
                f"{src}: species {names(m.species)} differ from {src0}'s {names(first.species)}"
                " (committee members must share species, cutoff, units and dtype)"
            )
        if abs(m.cutoff - first.cutoff) > 1e-9:
            raise NNPError(f"{src}: cutoff {m.cutoff} Å differs from {src0}'s {first.cutoff} Å (committee members must share the cutoff)")
        if m.atomref.dtype != first.atomref.dtype:
            dt = str(m.atomref.dtype).replace("torch.", "")
            dt0 = str(first.atomref.dtype).replace("torch.", "")
            raise NNPError(f"{src}: dtype {dt} differs from {src0}'s {dt0} (committee members must share the dtype)")
    from nnp.committee_terms import check_terms_compatible

    check_terms_compatible(members, sources)


def _check_units(payload: Mapping[str, Any], source: str) -> None:
    units = payload.get("units")
    if units is None:  # version 1 files: always eV / Å
        return
    if not isinstance(units, dict) or any(units.get(k) != v for k, v in UNITS.items()):
        raise NNPError(f"{source}: units {short_repr(units)} differ from nnp's {UNITS} (committee members must share units)")


def model_paths(spec: Any) -> list[str] | None:
    """A list of paths from a list / ListConfig / tuple, or None for a single path."""
    if isinstance(spec, (str, os.PathLike)):
        return None
    if isinstance(spec, Sequence) or hasattr(spec, "__iter__"):
        return [str(s) for s in spec]
    raise NNPError(f"ckpt={spec!r}: give a model file or a list of model files, e.g. ckpt=[a.pt,b.pt]")


def load_model(
    spec: str | os.PathLike | Sequence[str | os.PathLike], map_location: str | torch.device = "cpu"
) -> Potential | Committee:
    """A model file, a committee file, or a list of model files (a committee).

    Files in a list may themselves be committees: their members join the new
    committee (their calibration factors do not carry over: the new committee
    has not been calibrated).
    """
    paths = model_paths(spec)
    if paths is None:
        path = str(spec)
        payload = read_model_file(path, map_location)
        _check_units(payload, path)
        if payload.get("kind") == "committee":
            return Committee.from_dict(payload, path)
        return Potential.from_dict(payload, path)
    if not paths:
        raise NNPError("ckpt=[]: the list of model files is empty")
    if len(paths) == 1:
        return load_model(paths[0], map_location)
    members: list[Potential] = []
    sources: list[str] = []
    for path in paths:
        model = load_model(path, map_location)
        if isinstance(model, Committee):
            members.extend(model.members)
            sources.extend(f"{path} (member {k})" for k in range(model.n_members))
        else:
            members.append(model)
            sources.append(path)
    return Committee(members, sources=sources, metadata={"combined_from": paths})


def is_committee(model: Any) -> bool:
    return isinstance(model, Committee) or (hasattr(model, "n_members") and not isinstance(model, Potential))


def model_dtype(model: Potential | Committee) -> torch.dtype:
    return model.atomref.dtype


def member_count(model: Potential | Committee) -> int:
    return int(getattr(model, "n_members", 1))


__all__ = ["Committee", "load_model", "model_paths", "check_compatible", "is_committee", "model_dtype", "member_count"]
