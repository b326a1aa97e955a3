"""Weighted mean-squared error of energies and forces."""

from __future__ import annotations

from typing import Dict

import torch

from nnp import keys


class EnergyForceLoss:
    """loss = w_E * MSE(E) + w_F * MSE(F).

    E in eV (divided by the number of atoms when ``per_atom_energy``), F in
    eV/Å per Cartesian component. Also returns MAEs for logging.
    """

    def __init__(self, energy_weight: float = 1.0, forces_weight: float = 10.0, per_atom_energy: bool = True,
                 dipole_weight: float = 0.0, stress_weight: float = 0.0):
        """``dipole_weight``: weight of MSE(dipole components) in (e Å)^2, from the coulomb term's charges."""
        self.dipole_weight = float(dipole_weight)
        self.stress_weight = float(stress_weight)  # on MSE(stress components), eV/Å^3; periodic labels only
        self.energy_weight = float(energy_weight)
        self.forces_weight = float(forces_weight)
        self.per_atom_energy = bool(per_atom_energy)
        if self.energy_weight < 0 or self.forces_weight < 0:
            raise ValueError("loss weights must be non-negative")

    @property
    def uses_forces(self) -> bool:
        return self.forces_weight > 0

    def __call__(
        self, pred: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        n = batch[keys.N_ATOMS].to(pred[keys.ENERGY].dtype)
        de = pred[keys.ENERGY] - batch[keys.ENERGY]
        de_atom = de / n
        de_loss = de_atom if self.per_atom_energy else de
        loss = self.energy_weight * de_loss.pow(2).mean()
        metrics = {
            "energy_mae": de.abs().mean().detach(),
            "energy_per_atom_mae": de_atom.abs().mean().detach(),
        }
        if keys.FORCES in pred and keys.FORCES in batch:
            df = pred[keys.FORCES] - batch[keys.FORCES]
            if self.uses_forces:
                loss = loss + self.forces_weight * df.pow(2).mean()
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
