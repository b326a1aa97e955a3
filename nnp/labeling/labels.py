"""One label and the journal of labels: a labeler's result for one structure (energy,
forces, extras or the failure reason) and the append-only JSON-lines record of them,
shared by local worker processes (:mod:`nnp.labeling.run`) and Slurm array tasks
(:mod:`nnp.labeling.slurm`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nnp.errors import NNPError

#: Results kept beside energy and forces when a labeler provides them (tblite: charges e, dipole e·Å).
_EXTRA = ("charges", "dipole")


@dataclass
class Label:
    """The label of structure ``index``: energy eV, forces (n, 3) eV/Å, or ``reason`` it failed."""

    index: int
    energy: float | None = None
    forces: np.ndarray | None = None
    reason: str | None = None
    extra: dict | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def as_json(self) -> dict[str, Any]:
        if not self.ok:
            return {"index": self.index, "ok": False, "reason": self.reason}
        out = {"index": self.index, "ok": True, "energy": self.energy,
               "forces": None if self.forces is None else np.asarray(self.forces).tolist()}
        if self.extra:
            out["extra"] = {k: np.asarray(v).tolist() for k, v in self.extra.items()}
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Label:
        if not d.get("ok"):
            return cls(int(d["index"]), reason=str(d.get("reason")))
        forces = d.get("forces")
        return cls(int(d["index"]), float(d["energy"]), None if forces is None else np.asarray(forces, dtype=np.float64),
                   extra=d.get("extra"))


# ------------------------------------------------------------------ one label

_CALCULATORS: dict[str, Any] = {}  # per process: building a calculator can cost more than a label


def _calculator(cfg: Mapping[str, Any]):
    from nnp.registry import LABELERS

    key = json.dumps(cfg, sort_keys=True, default=str)
    calc = _CALCULATORS.get(key)
    if calc is None:
        calc = _CALCULATORS[key] = LABELERS.get(cfg.get("name"))(cfg)
    return calc


def _reason(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"


def label_one(cfg: Mapping[str, Any], index: int, numbers, positions, cell, pbc) -> Label:
    """Energy and forces of one structure; any failure (an exception, no SCF convergence,
    a non-finite result) is a Label with its ``reason``, never an exception."""
    from ase import Atoms

    calc = _calculator(cfg)  # a labeler that cannot be built is the user's error: raised, not recorded
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    atoms.calc = calc
    try:
        energy = float(atoms.get_potential_energy())
        forces = np.asarray(atoms.get_forces(), dtype=np.float64)
        extra = {k: np.asarray(calc.results[k]) for k in _EXTRA if k in getattr(calc, "results", {})}
    except Exception as err:  # the method failed on this structure (SCF, a calculator's own error)
        return Label(index, reason=_reason(err))
    if not math.isfinite(energy):
        return Label(index, reason=f"non-finite energy ({energy})")
    if forces.shape != (len(numbers), 3) or not np.isfinite(forces).all():
        return Label(index, reason="non-finite or misshaped forces")
    return Label(index, energy, forces, extra=extra or None)


#: One thread per labeling process, set in the environment the workers start with (before numpy or the
#: labeler's library loads). Measured, aspirin GFN2-xTB: 13 ms on 1 thread, 48-240 ms with the default
#: threads on a loaded machine.


def read_journal(path: str | os.PathLike) -> dict[int, Label]:
    """The labels recorded in a journal (missing: none). A last line cut short by a kill is dropped."""
    path = Path(path)
    if not path.exists():
        return {}
    out: dict[int, Label] = {}
    with open(path, "rb") as fh:
        data = fh.read()
    good_end = data.rfind(b"\n") + 1
    if good_end < len(data):  # a partial last line: cut it, so that appends start on a fresh line
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    for line in data[:good_end].splitlines():
        try:
            label = Label.from_json(json.loads(line))
        except (ValueError, KeyError, TypeError):
            raise NNPError(f"{path}: a line is not a label record; the journal is damaged (move it away to relabel)") from None
        out[label.index] = label
    return out


class _Journal:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a")

    def add(self, label: Label) -> None:
        self._fh.write(json.dumps(label.as_json()) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


# ------------------------------------------------------------------- the run
