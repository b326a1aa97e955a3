"""The training loss of energies and forces, defined once.

    loss = energy_weight * mean_m  rho(dE_m)  +  forces_weight * mean_f  rho(dF_f)

``dE_m`` is structure m's energy error in eV, divided by its number of atoms
when ``per_atom_energy`` (the default), so the energy term does not grow with
molecule size. ``dF_f`` runs over every Cartesian force component in eV/Å
(``force_error="component"``, 3 N_atoms terms), or over atoms with
``|dF_i|`` the length of atom i's error vector (``force_error="vector"``,
N_atoms terms: for MSE this is 3x the component form). ``rho`` is the square
(``kind="mse"``) or the Huber function with ``huber_delta`` (eV or eV/Å):
``0.5 x^2`` for |x| <= delta, ``delta (|x| - 0.5 delta)`` beyond; note the
0.5 (torch's ``huber_loss``): with a large delta Huber is half the MSE.

How weights written for other toolkits translate (README, "Loss"):
SchNetPack ``loss_weight`` on ``MSELoss`` of total energy and force
components: ``per_atom_energy=false`` with the same weights; MACE's
``energy_weight``/``forces_weight`` (per-atom energy MSE, force-component
MSE): the same weights; TorchANI's force recipe (energy MSE / sqrt(N) in
Hartree, force coefficient on the per-atom sum of squared components): see
the README table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict

import torch

from nnp import keys

LOSS_KINDS = ("mse", "huber")
FORCE_ERRORS = ("component", "vector")


def _rho(x: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    """Per-term penalty of errors ``x`` (any shape): x^2 or Huber(x; delta)."""
    if kind == "mse":
        return x.pow(2)
    return torch.nn.functional.huber_loss(x, torch.zeros_like(x), reduction="none", delta=delta)


class EnergyForceLoss:
    """loss = w_E * mean rho(E error) + w_F * mean rho(F error); see the module docstring.

    The weights are plain attributes: :class:`nnp.training.schedules.LossStages`
    changes them from an epoch on. Also returns MAEs for logging (energy per
    structure and per atom in eV, force components in eV/Å).
    """

    def __init__(
        self,
        energy_weight: float = 1.0,
        forces_weight: float = 10.0,
        per_atom_energy: bool = True,
        kind: str = "mse",
        huber_delta: float = 0.01,
        force_error: str = "component",
        dipole_weight: float = 0.0,
        stress_weight: float = 0.0,
    ):
        """``dipole_weight``: weight of MSE(dipole components) in (e Å)^2, from the coulomb term's charges;
        ``stress_weight``: weight of MSE(stress components) in eV/Å^3, periodic structures with labels."""
        self.dipole_weight = float(dipole_weight)
        self.stress_weight = float(stress_weight)
        self.energy_weight = float(energy_weight)
        self.forces_weight = float(forces_weight)
        self.per_atom_energy = bool(per_atom_energy)
        self.kind = str(kind).lower()
        self.huber_delta = float(huber_delta)
        self.force_error = str(force_error).lower()
        if self.energy_weight < 0 or self.forces_weight < 0:
            raise ValueError("loss weights must be non-negative")
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"loss.kind={kind!r}: one of {', '.join(LOSS_KINDS)}")
        if self.force_error not in FORCE_ERRORS:
            raise ValueError(f"loss.force_error={force_error!r}: one of {', '.join(FORCE_ERRORS)}")
        if self.huber_delta <= 0:
            raise ValueError("loss.huber_delta must be > 0")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EnergyForceLoss:
        """From ``loss.*``; ``loss.stages`` is the schedule of these weights (nnp.training.schedules)."""
        return cls(**{k: v for k, v in cfg.items() if k != "stages"})

    @property
    def uses_forces(self) -> bool:
        return self.forces_weight > 0

    def energy_term(self, de: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
        """mean rho of the energy errors ``de`` (M,) eV; ``n_atoms`` (M,)."""
        return _rho(de / n_atoms if self.per_atom_energy else de, self.kind, self.huber_delta).mean()

    def forces_term(self, df: torch.Tensor) -> torch.Tensor:
        """mean rho of the force errors ``df`` (N, 3) eV/Å."""
        if self.force_error == "vector":
            if self.kind == "mse":
                return df.pow(2).sum(-1).mean()
            # the length of a zero vector has no gradient: add a tiny epsilon inside the root
            return _rho(torch.sqrt(df.pow(2).sum(-1) + 1e-12), self.kind, self.huber_delta).mean()
        return _rho(df, self.kind, self.huber_delta).mean()

    def __call__(
        self, pred: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        n = batch[keys.N_ATOMS].to(pred[keys.ENERGY].dtype)
        de = pred[keys.ENERGY] - batch[keys.ENERGY]
        loss = self.energy_weight * self.energy_term(de, n)
        metrics = {
            "energy_mae": de.abs().mean().detach(),
            "energy_per_atom_mae": (de / n).abs().mean().detach(),
        }
        if keys.FORCES in pred and keys.FORCES in batch:
            df = pred[keys.FORCES] - batch[keys.FORCES]
            if self.uses_forces:
                loss = loss + self.forces_weight * self.forces_term(df)
            metrics["forces_mae"] = df.abs().mean().detach()
        if keys.DIPOLE in pred and keys.DIPOLE in batch:  # models with the coulomb term, data.dipole_key
            dd = pred[keys.DIPOLE] - batch[keys.DIPOLE]
            if self.dipole_weight > 0:
                loss = loss + self.dipole_weight * dd.pow(2).mean()
            metrics["dipole_mae"] = dd.abs().mean().detach()
        loss = loss + self._stress_term(pred, batch, metrics)
        return loss, metrics

    @property
    def uses_stress(self) -> bool:
        return self.stress_weight > 0

    def _stress_term(self, pred: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor], metrics: Dict[str, torch.Tensor]) -> torch.Tensor:
        """stress_weight * MSE of the stress components (eV/Å^3) of structures with a stress label."""
        if keys.STRESS not in pred or keys.STRESS not in batch:
            return torch.zeros((), dtype=pred[keys.ENERGY].dtype, device=pred[keys.ENERGY].device)
        labelled = torch.isfinite(batch[keys.STRESS]).all(-1).all(-1)
        if not bool(labelled.any()):
            return torch.zeros((), dtype=pred[keys.ENERGY].dtype, device=pred[keys.ENERGY].device)
        ds = pred[keys.STRESS][labelled] - batch[keys.STRESS][labelled]
        metrics["stress_mae"] = ds.abs().mean().detach()
        return self.stress_weight * ds.pow(2).mean()
