"""What ``nnp md`` watches every step: safety limits and a committee's uncertainty.

Every check is a function of the atoms (and the calculator's results) that
returns ``None`` or a :class:`Trip` saying which check tripped, on which atoms,
with which value, so each can be tested without running dynamics.

Safety (always on unless a limit is ``null``; non-finite values always stop):
  - non-finite positions, velocities, energy or forces;
  - largest |F| above ``md.max_force`` (eV/Å);
  - instantaneous temperature above ``md.max_temperature_K``;
  - two atoms closer than ``md.min_distance`` (Å): :class:`MinDistanceWatch`,
    O(N) per step through a Verlet list with a skin (periodic images included).

Uncertainty (committee models: ``max_forces_std`` in ``atoms.calc.results``):
  :class:`UncertaintyWatch` records it every step, writes frames above
  ``md.uncertainty.threshold`` to an extxyz file (``action=flag``) or stops the
  run at the first one (``action=stop``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nnp.errors import NNPError


@dataclass
class Trip:
    """A check that tripped: ``detail`` is the human-readable part of the one-line message."""

    step: int
    check: str  # "non_finite" | "max_force" | "max_temperature_K" | "min_distance" | "uncertainty"
    detail: str
    value: float | None = None
    limit: float | None = None
    atoms: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        value = self.value if self.value is None or math.isfinite(self.value) else str(self.value)
        return {"step": self.step, "reason": self.detail, "check": self.check, "value": value,
                "limit": self.limit, "atoms": self.atoms}


class Tripped(Exception):
    """Raised from inside the dynamics' observers to end the run; carries the :class:`Trip`."""

    def __init__(self, trip: Trip):
        super().__init__(trip.detail)
        self.trip = trip


# ----------------------------------------------------------------------------- settings


def _limit(value: Any, key: str, unit: str) -> float | None:
    """A number >= 0, or None for ``null``; anything else is one clear NNPError."""
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0:
        raise NNPError(f"{key}={value!r}: give a number >= 0 ({unit}), or null to turn it off")
    return float(value)


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NNPError(f"{key}={value!r}: give a whole number >= 1")
    return int(value)


@dataclass
class SafetyLimits:
    max_force: float | None = 50.0  # eV/Å
    max_temperature_K: float | None = 5000.0
    min_distance: float | None = 0.5  # Å

    @classmethod
    def from_config(cls, md) -> SafetyLimits:
        return cls(
            max_force=_limit(md.get("max_force", 50.0), "md.max_force", "eV/Å"),
            max_temperature_K=_limit(md.get("max_temperature_K", 5000.0), "md.max_temperature_K", "K"),
            min_distance=_limit(md.get("min_distance", 0.5), "md.min_distance", "Å"),
        )


@dataclass
class UncertaintySettings:
    threshold: float | None = None  # eV/Å
    action: str = "flag"
    output: Path | None = None
    min_interval: int = 10
    max_frames: int = 1000

    @classmethod
    def from_config(cls, md, trajectory: Path) -> UncertaintySettings:
        u = md.get("uncertainty") or {}
        action = str(u.get("action", "flag")).lower()
        if action not in ("flag", "stop"):
            raise NNPError(f"md.uncertainty.action={u.get('action')!r}: choose flag or stop")
        output = u.get("output")
        return cls(
            threshold=_limit(u.get("threshold"), "md.uncertainty.threshold", "eV/Å"),
            action=action,
            output=Path(str(output)) if output else trajectory.with_name(trajectory.stem + "_uncertain.extxyz"),
            min_interval=_count(u.get("min_interval", 10), "md.uncertainty.min_interval"),
            max_frames=_count(u.get("max_frames", 1000), "md.uncertainty.max_frames"),
        )


# ----------------------------------------------------------------------------- safety checks


def _atom_list(idx: np.ndarray, show: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in idx[:show])
    more = f" and {len(idx) - show} more" if len(idx) > show else ""
    return f"atom{'s' if len(idx) > 1 else ''} {shown}{more}"


def check_non_finite(step: int, positions: np.ndarray | None = None, velocities: np.ndarray | None = None,
                     energy: float | None = None, forces: np.ndarray | None = None) -> Trip | None:
    """Non-finite positions, velocities, forces or energy (always on)."""
    for what, arr in (("positions", positions), ("forces", forces), ("velocities", velocities)):
        # fast path: a sum is finite when every entry is (on overflow the rows below decide)
        if arr is None or math.isfinite(float(np.sum(arr))):
            continue
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        if len(bad):
            return Trip(step, "non_finite", f"non-finite {what} on {_atom_list(bad)}", atoms=[int(i) for i in bad[:20]])
    if energy is not None and not math.isfinite(energy):
        return Trip(step, "non_finite", f"non-finite energy ({energy})", value=float(energy))
    return None


def check_max_force(step: int, forces: np.ndarray, limit: float | None) -> Trip | None:
    if limit is None or len(forces) == 0:
        return None
    norms2 = np.einsum("ij,ij->i", forces, forces)
    k = int(np.argmax(norms2))
    f = math.sqrt(float(norms2[k]))
    if f <= limit:
        return None
    return Trip(step, "max_force", f"force {f:.4g} eV/Å on atom {k} exceeds md.max_force={limit:g}",
                value=f, limit=limit, atoms=[k])


def check_temperature(step: int, atoms, limit: float | None) -> Trip | None:
    if limit is None:
        return None
    from ase import units

    if not atoms.has("momenta"):
        return None
    p = atoms.get_momenta()
    ke = 0.5 * np.einsum("ij,ij->i", p, p) / atoms.get_masses()  # per atom (eV); einsum: no BLAS threads
    t = 2.0 * float(ke.sum()) / (atoms.get_number_of_degrees_of_freedom() * units.kB)  # as Atoms.get_temperature
    if t <= limit:
        return None
    k = int(np.argmax(ke))
    return Trip(step, "max_temperature_K",
                f"temperature {t:.4g} K exceeds md.max_temperature_K={limit:g} (hottest atom {k}: {ke[k]:.3g} eV kinetic)",
                value=t, limit=limit, atoms=[k])


class MinDistanceWatch:
    """Closest pair of atoms below ``limit`` Å, in O(N) per step.

    A Verlet list: all pairs within ``limit + skin`` (periodic images included,
    through the cell list of :func:`nnp.neighbors.neighbor_list`) are found once;
    each step measures only those, plus every atom's displacement since the
    list was built. The list is rebuilt when some atom has moved more than
    ``skin / 2`` (then a pair outside the list could have come within
    ``limit``), or the cell, pbc or number of atoms changed. Between rebuilds
    the result is exact, not an approximation.
    """

    def __init__(self, limit: float, skin: float | None = None):
        self.limit = float(limit)
        self.skin = float(skin) if skin is not None else max(1.0, self.limit)
        self.cutoff = self.limit + self.skin
        self.rebuilds = 0
        self._ref: np.ndarray | None = None

    def _build(self, atoms) -> None:
        import torch

        from nnp.neighbors import neighbor_list

        n = len(atoms)
        nb = neighbor_list(
            torch.as_tensor(atoms.positions, dtype=torch.float64), torch.zeros(n, dtype=torch.long),
            torch.tensor([n]), torch.as_tensor(atoms.cell.array, dtype=torch.float64)[None],
            torch.as_tensor(atoms.pbc)[None], self.cutoff,
        )
        i, j = nb.pairs.numpy()
        shifts = nb.images.numpy()
        keep = i < j  # each pair once; an atom and its own image (i == j) is a property of the cell, not the run
        self._i, self._j = i[keep], j[keep]
        self._cell = atoms.cell.array.copy()
        self._pbc = atoms.pbc.copy()
        self._offset = shifts[keep] @ self._cell  # Cartesian image offset of j (minimum image and beyond)
        self._ref = atoms.positions.copy()
        self.rebuilds += 1

    def _stale(self, atoms) -> bool:
        if self._ref is None or len(atoms) != len(self._ref):
            return True
        if not ((atoms.cell.array == self._cell).all() and (atoms.pbc == self._pbc).all()):
            return True
        disp = atoms.positions - self._ref
        return float(np.einsum("ij,ij->i", disp, disp).max(initial=0.0)) > (0.5 * self.skin) ** 2

    def closest(self, atoms) -> tuple[float, int, int] | None:
        """(distance, i, j) of the closest listed pair, or None when no pair is within the list's cutoff."""
        if self._stale(atoms):
            self._build(atoms)
        if len(self._i) == 0:
            return None
        pos = atoms.positions
        r = pos[self._j] - pos[self._i] + self._offset
        d2 = np.einsum("ij,ij->i", r, r)
        k = int(np.argmin(d2))
        return math.sqrt(float(d2[k])), int(self._i[k]), int(self._j[k])

    def check(self, step: int, atoms) -> Trip | None:
        found = self.closest(atoms)
        if found is None or found[0] >= self.limit:
            return None
        d, i, j = found
        return Trip(step, "min_distance", f"atoms {i} and {j} are {d:.3g} Å apart, closer than md.min_distance={self.limit:g}",
                    value=d, limit=self.limit, atoms=[i, j])


def current_results(atoms) -> dict:
    """The calculator's results for the atoms as they are, with energy and forces.

    The integrator has just evaluated them; ASE's own cache check (``allclose`` on
    every array) costs more than all the checks here, so compare positions directly
    and only call the calculator again when they differ.
    """
    calc = atoms.calc
    results = getattr(calc, "results", None) or {}
    ref = getattr(calc, "atoms", None)
    if (
        "forces" in results and "energy" in results and ref is not None and len(ref) == len(atoms)
        and (ref.positions == atoms.positions).all() and (ref.numbers == atoms.numbers).all()
        and (ref.cell.array == atoms.cell.array).all() and (ref.pbc == atoms.pbc).all()
    ):
        return results
    atoms.get_forces()
    atoms.get_potential_energy()
    return atoms.calc.results


class SafetyWatch:
    """All safety checks of one step, cheapest first; :meth:`check` returns the first that trips."""

    def __init__(self, limits: SafetyLimits):
        self.limits = limits
        self.distance = MinDistanceWatch(limits.min_distance) if limits.min_distance else None  # 0: no pair is closer

    def check(self, step: int, atoms) -> Trip | None:
        # the cause first: non-finite positions come from an earlier step, non-finite forces from the model
        # here (velocity Verlet then turns them into non-finite velocities within the same step)
        trip = check_non_finite(step, positions=atoms.positions)
        if trip:
            return trip
        results = current_results(atoms)
        forces = np.asarray(results["forces"])
        energy = float(results["energy"])
        return (
            check_non_finite(step, energy=energy, forces=forces,
                             velocities=atoms.get_velocities() if atoms.has("momenta") else None)
            or check_max_force(step, forces, self.limits.max_force)
            or check_temperature(step, atoms, self.limits.max_temperature_K)
            or (self.distance.check(step, atoms) if self.distance is not None else None)
        )


# ----------------------------------------------------------------------------- uncertainty


def uncertainty_of(results: dict) -> dict[str, Any] | None:
    """The committee's spread in a calculator's results, or None for a single model."""
    if "max_forces_std" not in results:
        return None
    out = {"max_forces_std": float(np.asarray(results["max_forces_std"]).reshape(-1)[0])}
    if "energy_std" in results:
        out["energy_std"] = float(np.asarray(results["energy_std"]).reshape(-1)[0])
    if "forces_std" in results:
        out["forces_std"] = np.asarray(results["forces_std"], dtype=float).reshape(-1)
    return out


def frame_text(atoms) -> str:
    """One extxyz frame as text, so that a file gets whole frames or none."""
    import ase.io

    buf = io.StringIO()
    ase.io.write(buf, atoms, format="extxyz")
    return buf.getvalue()


class FrameWriter:
    """Appends whole extxyz frames and flushes after each: the file stays readable if the run stops."""

    def __init__(self, path: Path, lazy: bool = False, append: bool = False):
        self.path = Path(path)
        self.frames = 0
        self.last_step: int | None = None
        self._mode = "a" if append else "w"
        self._fh = None if lazy else open(self.path, self._mode)

    def write(self, atoms, step: int) -> None:
        text = frame_text(atoms)
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, self._mode)
        self._fh.write(text)
        self._fh.flush()
        self.frames += 1
        self.last_step = step

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class UncertaintyWatch:
    """Records ``max_forces_std`` every step and acts on frames above the threshold."""

    def __init__(self, settings: UncertaintySettings, append: bool = False):
        self.settings = settings
        self.values: list[float] = []
        self.writer = FrameWriter(settings.output, lazy=True, append=append) if settings.output is not None else None

    @property
    def flagged(self) -> int:
        return self.writer.frames if self.writer is not None else 0

    def flagged_frame(self, atoms, step: int, unc: dict[str, Any]):
        frame = atoms.copy()  # positions (and momenta); no calculator: predictions are not labels
        frame.calc = None
        frame.info["step"] = step
        frame.info["max_forces_std"] = unc["max_forces_std"]
        if "energy_std" in unc:
            frame.info["energy_std"] = unc["energy_std"]
        if "forces_std" in unc and len(unc["forces_std"]) == len(atoms):
            frame.arrays["forces_std"] = unc["forces_std"].copy()
        return frame

    def observe(self, step: int, atoms, results: dict) -> Trip | None:
        unc = uncertainty_of(results)
        if unc is None:
            return None
        value = unc["max_forces_std"]
        self.values.append(value)
        s = self.settings
        if s.threshold is None or not value > s.threshold:
            return None
        due = self.flagged < s.max_frames and (
            self.writer.last_step is None or step - self.writer.last_step >= s.min_interval)
        if s.action == "stop" or due:
            self.writer.write(self.flagged_frame(atoms, step, unc), step)
        if s.action != "stop":
            return None
        worst = ""
        if "forces_std" in unc and len(unc["forces_std"]):
            worst = f" (atom {int(np.argmax(unc['forces_std']))})"
        return Trip(step, "uncertainty",
                    f"committee uncertainty max_forces_std {value:.4g} eV/Å{worst} exceeds "
                    f"md.uncertainty.threshold={s.threshold:g}; frame written to {s.output}",
                    value=value, limit=s.threshold,
                    atoms=[int(np.argmax(unc["forces_std"]))] if worst else [])

    def summary(self) -> dict[str, Any] | None:
        if not self.values:
            return None
        v = np.array(self.values)
        return {
            "threshold_eV_A": self.settings.threshold,
            "action": self.settings.action,
            "flagged_frames": self.flagged,
            "flagged_output": str(self.settings.output) if self.flagged else None,
            "max_forces_std_max_eV_A": float(v.max()),
            "max_forces_std_mean_eV_A": float(v.mean()),
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
