"""Transfer learning: ``nnp train finetune.from=base.pt finetune.freeze=[...]``.

Train a model that already exists on new data (a more accurate level of theory,
a new chemical domain), keeping named parameter groups fixed, as ANI-1ccx was
made from ANI-1x. The base file fixes the architecture, species and cutoff; a
committee file fine-tunes each member and gives a committee.

- Groups: each architecture names its parameter groups
  (:meth:`nnp.models.base.AtomisticModel.parameter_groups`); frozen parameters get
  ``requires_grad=False`` and are left out of the optimizer, so they come out
  bit for bit as they went in.
- Atom reference energies: by default refitted on the new training split, as
  per-element offsets of what the base network does not already explain:
  ``atomref_new = atomref_base + argmin_d |E_new - E_base - C d|^2`` (C: the
  element counts). A new level of theory shifts mostly the atomic energies;
  the network's own contribution is kept, whatever convention the base used
  for its reference energies (least squares in nnp, GSAEs in TorchANI).
  ``finetune.refit_atomref=false`` keeps the base's.
- Lineage: the model file's metadata gains ``finetune``: the base's path and
  SHA-256, its kind, the member it came from, the frozen groups, whether the
  reference energies were refitted, and the base's own lineage (if any).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnp.errors import NNPError
from nnp.model_file import plain
from nnp.potential import Potential

#: The config group whose command-line overrides are compared with the base's architecture.
_MODEL = "model"


@dataclass
class Base:
    """A base model read from ``finetune.from``."""

    path: Path
    sha256: str
    kind: str  # "potential" or "committee"
    members: list[Potential]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def model_config(self) -> dict[str, Any]:
        return dict(self.members[0].model_config)

    @property
    def species(self) -> list[int]:
        return list(self.members[0].species)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex): the fingerprint lineage records."""
    from nnp.data.prepare.download import file_digests

    return file_digests(Path(path))["sha256"]


def load_base(path: str | Path) -> Base:
    """Read a model or committee file (one NNPError line for a missing or damaged one)."""
    from nnp.committee import Committee, load_model

    path = Path(str(path))
    if not path.is_file():
        raise NNPError(f"finetune.from={path}: model file not found")
    model = load_model(str(path))
    if isinstance(model, Committee):
        members = list(model.members)
        kind, metadata = "committee", dict(model.metadata)
    else:
        members, kind, metadata = [model], "potential", dict(getattr(model, "metadata", {}) or {})
    return Base(path=path, sha256=file_sha256(path), kind=kind, members=members, metadata=metadata)


def parameter_groups(potential: Potential) -> dict[str, list[str]]:
    """The named parameter groups of a potential's architecture (names as in ``potential.model``)."""
    try:
        return potential.model.parameter_groups()
    except (NotImplementedError, AttributeError):
        name = potential.model_config.get("name")
        raise NNPError(f"finetune.freeze: architecture {name!r} names no parameter groups") from None


def check_freeze(base: Base, freeze: Sequence[str]) -> None:
    """Every name in ``freeze`` must be a group of the base's architecture."""
    groups = parameter_groups(base.members[0])
    unknown = [g for g in freeze if g not in groups]
    if unknown:
        name = base.model_config.get("name")
        raise NNPError(
            f"finetune.freeze={unknown[0]}: not a parameter group of {name!r} models "
            f"(groups: {', '.join(groups)})"
        )


def overridden_model_keys(overrides: Sequence[str]) -> list[str]:
    """``model`` / ``model.KEY`` keys set on the command line (Hydra's task overrides)."""
    keys = []
    for text in overrides:
        key = text.split("=", 1)[0].lstrip("+~")
        if key == _MODEL or key.startswith(_MODEL + "."):
            keys.append(key)
    return keys


def check_model_overrides(model_cfg: Mapping[str, Any], base: Base, keys: Sequence[str]) -> None:
    """Refuse command-line model settings that differ from the base's architecture.

    The architecture comes from the base file; a ``model=`` or ``model.KEY=`` the
    user gave is accepted only where it agrees with it (it is then redundant).
    """
    stored = base.model_config
    for key in keys:
        leaf = "name" if key == _MODEL else key.split(".", 1)[1].split(".")[0]
        given, have = plain(model_cfg.get(leaf)), plain(stored.get(leaf))
        if given != have:
            shown = f"model={given}" if key == _MODEL else f"model.{leaf}={given}"
            raise NNPError(
                f"{shown}: finetune.from={base.path} fixes the architecture ({stored.get('name')}, "
                f"{leaf}={have}); leave model settings out when fine-tuning"
            )


def check_elements(elements: Sequence[int], base: Base, data_path: Any) -> None:
    """The new data's elements must all be known to the base model."""
    from ase.data import chemical_symbols

    unknown = [z for z in elements if z not in set(base.species)]
    if unknown:
        names = ", ".join(chemical_symbols[z] for z in unknown)
        known = ", ".join(chemical_symbols[z] for z in base.species)
        raise NNPError(
            f"{data_path}: element{'s' if len(unknown) > 1 else ''} {names} not in the base model "
            f"{base.path} (its elements: {known}); fine-tuning cannot add elements"
        )


def check_ensemble(base: Base, size: int) -> int:
    """The number of members to fine-tune: the base's (``ensemble.size`` 1 or equal to it)."""
    n = len(base.members)
    if size not in (1, n):
        what = f"a committee of {n}" if base.kind == "committee" else "a single model"
        raise NNPError(
            f"ensemble.size={size}: the base {base.path} is {what}; fine-tuning keeps its members "
            f"(leave ensemble.size at 1{f' or set it to {n}' if n > 1 else ''})"
        )
    return n


def freeze(potential: Potential, groups: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on the parameters of ``groups``; their names (sorted)."""
    table = parameter_groups(potential)
    names = sorted({n for g in groups for n in table[g]})
    params = dict(potential.model.named_parameters())
    for n in names:
        params[n].requires_grad_(False)
    return names


class _Residuals:
    """A dataset's composition with per-structure targets in place of its energies
    (what :func:`nnp.data.statistics.fit_atomref` reads)."""

    def __init__(self, dataset, energies: np.ndarray):
        self._dataset = dataset
        self._energies = energies
        self.path = getattr(dataset, "path", None)

    def __len__(self) -> int:
        return len(self._dataset)

    def energies(self) -> np.ndarray:
        return self._energies

    def composition_matrix(self, indices: np.ndarray, species: list[int]) -> np.ndarray:
        return self._dataset.composition_matrix(indices, species)


def refit_atomref(potential: Potential, dataset, indices: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, float]:
    """Reference energies (S,) eV for ``potential`` on ``dataset[indices]`` and the per-atom
    RMS (eV) of what they leave: the base's plus per-element offsets fitted to the
    difference between the labels and the base's prediction. Elements that no
    structure of ``indices`` contains keep the base's value."""
    from nnp.data.statistics import fit_atomref
    from nnp.inference import dataset_fetch, run_batches

    indices = np.asarray(indices, dtype=np.int64)
    labels = dataset.energies()
    predicted = np.full(len(dataset), np.nan)
    rows = iter(indices.tolist())
    for _, out in run_batches(potential, dataset_fetch(dataset, indices), len(indices), batch_size, forces=False):
        for e in out["energy"].double().tolist():
            predicted[next(rows)] = e
    residual = np.full(len(dataset), np.nan)
    residual[indices] = labels[indices] - predicted[indices]
    species = list(potential.species)
    counts = dataset.composition_matrix(indices[np.isfinite(residual[indices])], species).sum(0)
    present = [z for z, c in zip(species, counts) if c > 0]
    offsets, rms = fit_atomref(_Residuals(dataset, residual), indices, present)
    atomref = potential.atomref.detach().double().cpu().numpy().copy()
    for z, d in zip(present, offsets):
        atomref[species.index(z)] += d
    return atomref, rms


def lineage(base: Base, member: int | None, frozen_groups: Sequence[str], refit: bool) -> dict[str, Any]:
    """The ``finetune`` entry of a fine-tuned model's metadata."""
    source = base.members[member] if member is not None and base.kind == "committee" else None
    earlier = (getattr(source, "metadata", None) or {}).get("finetune") or (base.metadata or {}).get("finetune")
    entry: dict[str, Any] = {
        "base": str(base.path.resolve()),
        "base_sha256": base.sha256,
        "base_kind": base.kind,
        "frozen": list(frozen_groups),
        "refit_atomref": bool(refit),
    }
    if member is not None and base.kind == "committee":
        entry["base_member"] = int(member)
    if earlier:
        entry["base_lineage"] = earlier
    return entry


def describe_freeze(potential: Potential, frozen: Sequence[str]) -> str:
    """"N of M parameters trainable" text for the console."""
    total = sum(p.numel() for p in potential.parameters())
    trainable = sum(p.numel() for p in potential.parameters() if p.requires_grad)
    return f"{trainable:,} of {total:,} parameters trainable ({len(frozen)} tensors frozen)"


def prepare(cfg: Mapping[str, Any], overrides: Sequence[str]) -> Base | None:
    """The base model of ``finetune.from`` (None when not fine-tuning), checked against
    ``finetune.freeze`` and the command line's model settings before any work starts."""
    settings = cfg.get("finetune") or {}
    if not settings.get("from"):
        if settings.get("freeze"):
            raise NNPError("finetune.freeze is set but finetune.from is not: give the base model, finetune.from=base.pt")
        return None
    base = load_base(settings["from"])
    check_freeze(base, list(settings.get("freeze") or []))
    check_model_overrides(dict(cfg.get("model") or {}), base, overridden_model_keys(overrides))
    check_ensemble(base, int((cfg.get("ensemble") or {}).get("size", 1)))
    return base


def start_members(
    base: Base, dataset, train: np.ndarray, groups: Sequence[str], refit: bool, dtype: torch.dtype, batch_size: int = 64
) -> list[tuple[Potential, list[str]]]:
    """Each member of the base in ``dtype``, reference energies refitted on ``dataset[train]``
    (unless ``refit`` is false), ``groups`` frozen; with the frozen parameters' names."""
    out = []
    for member in base.members:
        member = member.to(dtype)
        if refit:
            atomref, _ = refit_atomref(member, dataset, train, batch_size)
            member.set_atomref(atomref)
        out.append((member, freeze(member, groups)))
    return out
