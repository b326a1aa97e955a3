"""What every engine shares: ASE's dynamics interface, the thermostat/barostat
choice, and results handed to the ASE atoms that ``nnp md`` watches.

``nnp md`` attaches its observers (checks, log, trajectory) to the dynamics
object and calls ``run(n)`` in chunks; an engine advances one step at a time
(:meth:`EngineDynamics.step`) and leaves ``atoms`` (positions, momenta, cell,
and the calculator's results for them) as they are at the end of that step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnp.errors import NNPError


@dataclass(frozen=True)
class Ensemble:
    """The agreed ``md.*`` keys an engine maps to its own integrators, thermostats and barostats."""

    ensemble: str  # nve | nvt | npt
    thermostat: str  # langevin | nose_hoover | berendsen
    barostat: str  # mtk | berendsen
    temperature_K: float
    pressure_bar: float
    timestep_fs: float
    friction_per_ps: float
    seed: int

    @classmethod
    def from_config(cls, md) -> Ensemble:
        ensemble = str(md.ensemble).lower()
        if ensemble == "langevin":  # nnp md's old name for nvt
            ensemble = "nvt"
        return cls(
            ensemble=ensemble,
            thermostat=str(md.get("thermostat", "langevin") or "langevin").lower(),
            barostat=str(md.get("barostat", "mtk") or "mtk").lower(),
            temperature_K=float(md.get("temperature_K", 300.0) or 0.0),
            pressure_bar=float(md.get("pressure_bar", 1.0) or 0.0),
            timestep_fs=float(md.timestep_fs),
            friction_per_ps=float(md.get("friction_per_ps", 10.0)),
            seed=int(md.get("seed", 0)),
        )

    def refuse(self, engine: str, what: str, instead: str) -> NNPError:
        """The one line for a choice an engine cannot honour."""
        return NNPError(f"md.engine={engine}: {what} is not available in {engine}; {instead}")


def unsupported_keys(md, engine: str, keys: dict[str, Any]) -> None:
    """Refuse ``md.<key>`` set to anything but its inert value (``keys``: name -> inert values)."""
    for key, inert in keys.items():
        value = md.get(key)
        if value not in inert:
            raise NNPError(f"md.{key}={value}: not supported with md.engine={engine} (leave it at {inert[0]!r})")


def hand_results(atoms, results: dict[str, Any]) -> None:
    """Give ``atoms``' calculator ``results`` for the atoms as they are now, so that
    ``atoms.get_forces()`` and :func:`nnp.md_watch.current_results` read them without
    evaluating the model again (the engine already did, at these positions)."""
    calc = atoms.calc
    calc.atoms = atoms.copy()
    calc.results = dict(results)


class EngineDynamics:
    """ASE's ``Dynamics`` observer interface over an engine that advances one step at a time.

    Observer semantics are ASE's: ``interval > 0`` calls every ``interval`` steps
    (step 0 included), ``interval <= 0`` only at step ``-interval``.
    """

    engine = "engine"

    def __init__(self, atoms):
        self.atoms = atoms
        self.nsteps = 0
        self.observers: list[tuple[Callable, int, tuple, dict]] = []

    def attach(self, function: Callable, interval: int = 1, *args, **kwargs) -> None:
        self.observers.append((function, interval, args, kwargs))

    def call_observers(self) -> None:
        for function, interval, args, kwargs in self.observers:
            if (interval > 0 and self.nsteps % interval == 0) or (interval <= 0 and self.nsteps == -interval):
                function(*args, **kwargs)

    def run(self, steps: int) -> bool:
        if self.nsteps == 0:
            self.call_observers()
        for _ in range(int(steps)):
            self.step()
            self.nsteps += 1
            self.call_observers()
        return True

    def get_time(self) -> float:
        return self.nsteps * self.dt_ase

    def step(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the engine (``nnp md`` is done with it)."""


def ase_velocities_per_ps(atoms) -> np.ndarray:
    """ASE velocities (Å per ASE time unit) -> Å/ps, (N, 3)."""
    from ase import units

    return atoms.get_velocities() * (1000.0 * units.fs)
