"""Restartable ``nnp md``: the state a run needs to continue, in one file beside its output.

``md.steps`` is the total length of a run. Every ``md.write_interval`` steps, and
when ``md.max_time`` cuts the run, ``OUTPUT.restart.npz`` is written (atomically):
atomic numbers, positions (Å), momenta (ASE units), cell (Å), pbc, the step count,
and the integrator's own state where ASE keeps it in plain attributes (Nose-Hoover
chain and MTK barostat variables, a Langevin random generator's state). With
``md.restart=true`` the run continues from that step up to ``md.steps``: the
trajectory and CSV log are appended to (rows or frames written after the restart
point by a run killed without warning are dropped first), so the files read as one
uninterrupted run.
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from nnp.errors import EXIT_RESUMABLE, NNPError

#: Integrator sub-objects whose private numeric attributes are the thermostat/barostat state.
_STATE_OWNERS = ("", "_thermostat", "_barostat")


class RunCut(NNPError):
    """``md.max_time`` reached: the restart file is written; rerun with ``md.restart=true`` (exit 75)."""

    exit_code = EXIT_RESUMABLE


def restart_path(output: Path) -> Path:
    return output.with_name(output.name + ".restart.npz")


def parse_max_time(value: Any) -> float | None:
    """``md.max_time`` in seconds: null, a number of seconds, or "DD:HH:MM:SS" (as trainer.max_time)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not (math.isfinite(value) and value > 0):
            raise NNPError(f"md.max_time={value!r}: give seconds > 0, \"DD:HH:MM:SS\", or null")
        return float(value)
    m = re.fullmatch(r"(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})", str(value).strip())
    if not m:
        raise NNPError(f"md.max_time={value!r}: give seconds > 0, \"DD:HH:MM:SS\" (e.g. 00:23:50:00), or null")
    d, h, mi, s = (int(g) for g in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + s)


def _owners(dyn):
    for name in _STATE_OWNERS:
        obj = getattr(dyn, name, None) if name else dyn
        if obj is not None:
            yield name or "dyn", obj


def integrator_state(dyn) -> dict[str, np.ndarray]:
    """The integrator's private numeric attributes (thermostat/barostat variables) as arrays."""
    state: dict[str, np.ndarray] = {}
    for owner, obj in _owners(dyn):
        for attr, value in vars(obj).items():
            if attr.startswith("_") and not attr.startswith("__") and (
                isinstance(value, np.ndarray) and value.dtype.kind in "fiu"
                or isinstance(value, (float, int, np.floating)) and not isinstance(value, bool)
            ):
                state[f"state/{owner}/{attr}"] = np.asarray(value)
    rng = getattr(dyn, "rng", None)
    bit = getattr(rng, "bit_generator", None)
    if bit is not None:
        state["rng"] = np.array(json.dumps(bit.state, default=int))
    return state


def restore_integrator_state(dyn, data) -> None:
    owners = dict(_owners(dyn))
    for key in data.files:
        if key.startswith("state/"):
            _, owner, attr = key.split("/", 2)
            obj = owners.get(owner)
            if obj is not None and hasattr(obj, attr):
                old = getattr(obj, attr)
                value = data[key]
                setattr(obj, attr, value.copy() if isinstance(old, np.ndarray) else type(old)(value))
    rng = getattr(dyn, "rng", None)
    if "rng" in data.files and getattr(rng, "bit_generator", None) is not None:
        rng.bit_generator.state = json.loads(str(data["rng"]))


def write_restart(path: Path, atoms, dyn, step: int, meta: dict[str, Any]) -> None:
    from nnp.outputs import write_bytes

    buffer = io.BytesIO()
    np.savez(
        buffer, numbers=atoms.numbers, positions=atoms.positions, momenta=atoms.get_momenta(),
        cell=atoms.cell.array, pbc=atoms.pbc, step=np.array(step), meta=np.array(json.dumps(meta)),
        **integrator_state(dyn),
    )
    write_bytes(path, buffer.getbuffer())


class Restart:
    """A restart file read back: apply it to atoms (:meth:`apply_atoms`) and the integrator (:meth:`apply_dynamics`)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = np.load(path, allow_pickle=False)
            self.step = int(self.data["step"])
            self.meta = json.loads(str(self.data["meta"]))
        except Exception as err:  # numpy raises many types for a damaged file
            raise NNPError(f"{path}: not a readable nnp md restart file ({type(err).__name__})") from None

    def check(self, md) -> None:
        for key in ("ensemble", "timestep_fs"):
            if key in self.meta and str(self.meta[key]) != str(md.get(key)):
                raise NNPError(f"{self.path}: written by a run with md.{key}={self.meta[key]}, this one has "
                               f"md.{key}={md.get(key)} (continue with the same settings, or start anew without md.restart)")
        if int(md.steps) < self.step:
            raise NNPError(f"{self.path}: the run is already at step {self.step}, beyond md.steps={md.steps}")

    def apply_atoms(self, atoms) -> None:
        numbers = self.data["numbers"]
        if len(numbers) != len(atoms) or (numbers != atoms.numbers).any():
            raise NNPError(f"{self.path}: its atoms differ from the input's (another system?)")
        atoms.set_cell(self.data["cell"])
        atoms.pbc = self.data["pbc"]
        atoms.positions = self.data["positions"]
        atoms.set_momenta(self.data["momenta"])

    def apply_dynamics(self, dyn) -> None:
        restore_integrator_state(dyn, self.data)
        dyn.nsteps = self.step


def trim_log(path: Path, last_time_ps: float) -> list[list[float]]:
    """Rows of the CSV log at or before ``last_time_ps`` (numbers); later rows are removed from the file."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines(keepends=True)
    keep, rows = lines[:1], []
    for line in lines[1:]:
        try:
            row = [float(v) for v in line.strip().split(",")]
        except ValueError:
            break  # a half-written last row
        if row[0] > last_time_ps * (1 + 1e-12) + 1e-15:
            break
        keep.append(line)
        rows.append(row)
    if len(keep) != len(lines):
        path.write_text("".join(keep))
    return rows


def trim_trajectory(path: Path, last_step: int) -> None:
    """Drop frames written after ``last_step`` (frames carry ``step`` in their info)."""
    if not path.is_file():
        return
    import ase.io

    frames = ase.io.read(path, ":")
    kept = [f for f in frames if int(f.info.get("step", -1)) <= last_step]
    if len(kept) != len(frames):
        from nnp.md_watch import frame_text

        path.write_text("".join(frame_text(f) for f in kept))
