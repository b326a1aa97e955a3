"""Coulomb: learned atomic charges and their electrostatic energy.

Charges. A small head (an MLP of :mod:`nnp.nn`) reads each atom's features
(``keys.ATOM_FEATURES`` of whatever model, with the atom's one-hot element)
and gives a raw charge q~_i. The rule that makes charges sum to the
structure's total charge Q_m (``keys.TOTAL_CHARGE``, e; 0 when absent) is the
uniform correction

    q_i = q~_i + (Q_m - sum_{j in m} q~_j) / n_m

(every atom of a structure shifted alike; smooth, size-extensive for separated
neutral fragments when each fragment's raw charges already sum to zero).

Energy: :mod:`nnp.terms.ewald`: erf-damped 1/r over all pairs of a molecule or
cluster, an Ewald sum for structures periodic in all three directions (chosen
per structure from its ``pbc``; partly periodic cells are refused). Outputs:
``keys.CHARGES`` (N,) e and ``keys.DIPOLE`` (M, 3) e Å = sum_i q_i r_i (for
periodic cells this depends on where the atoms are wrapped; it is meant for
molecules, which is what dipole labels exist for).
"""

from typing import Any, Dict, List

import torch
from torch import nn

from nnp import keys
from nnp.neighbors import _brute_force_batch
from nnp.nn import build_mlp, scatter_sum
from nnp.terms.base import EnergyTerm
from nnp.terms.ewald import damped_pairs_energy, ewald_energy


def neutralize(raw: torch.Tensor, idx_m: torch.Tensor, n_atoms: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Uniform correction: raw (N,) e -> charges (N,) whose sums per structure are ``total`` (M,)."""
    excess = total - scatter_sum(raw, idx_m, n_atoms.shape[0])
    return raw + (excess / n_atoms.to(raw.dtype))[idx_m]


class Coulomb(EnergyTerm):
    """Charge head + damped Coulomb (molecules) / Ewald (periodic cells)."""

    def __init__(
        self,
        n_species: int,
        n_features: int,
        hidden: List[int] = (32,),
        activation: str = "silu",
        damping: float = 1.0,
        ewald_cutoff: float = 8.0,
        ewald_accuracy: float = 1e-6,
        in_labels: bool = True,
    ):
        """``n_features``: the model's per-atom feature width; ``hidden``: the charge head's layer
        widths; ``damping``: sigma (Å) of erf(r / sigma) / r; ``ewald_cutoff``: real-space cutoff (Å)
        of the Ewald sum, at least 5 sigma; ``ewald_accuracy``: its relative accuracy."""
        super().__init__("coulomb", in_labels=True)
        from nnp.errors import NNPError
        from nnp.units import COULOMB_CONSTANT

        if damping <= 0 or ewald_cutoff < 5.0 * damping or not 0.0 < ewald_accuracy < 1.0:
            raise NNPError(
                f"terms.coulomb: need damping > 0, ewald_cutoff >= 5 damping and 0 < ewald_accuracy < 1 "
                f"(got {damping}, {ewald_cutoff}, {ewald_accuracy})"
            )
        self.n_species = int(n_species)
        self.hidden = [int(h) for h in hidden]
        self.activation = str(activation)
        self.damping = float(damping)
        self.ewald_cutoff = float(ewald_cutoff)
        self.ewald_accuracy = float(ewald_accuracy)
        self.k_e = float(COULOMB_CONSTANT)
        self.head = build_mlp(int(n_features) + self.n_species, self.hidden, 1, self.activation)

    @torch.jit.unused
    def settings(self) -> Dict[str, Any]:
        return {
            "hidden": list(self.hidden), "activation": self.activation, "damping": self.damping,
            "ewald_cutoff": self.ewald_cutoff, "ewald_accuracy": self.ewald_accuracy,
        }

    def charges(self, inputs: Dict[str, torch.Tensor], out: Dict[str, torch.Tensor]) -> torch.Tensor:
        """(N,) e, summing to each structure's total charge."""
        features = out[keys.ATOM_FEATURES]
        onehot = nn.functional.one_hot(inputs[keys.SPECIES], self.n_species).to(features.dtype)
        raw = self.head(torch.cat([features, onehot], dim=1)).squeeze(-1)
        n_atoms = inputs[keys.N_ATOMS]
        if keys.TOTAL_CHARGE in inputs:
            total = inputs[keys.TOTAL_CHARGE].to(raw.dtype)
        else:
            total = torch.zeros(n_atoms.shape[0], dtype=raw.dtype, device=raw.device)
        return neutralize(raw, inputs[keys.IDX_M], n_atoms, total)

    def forward(self, inputs: Dict[str, torch.Tensor], out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        q = self.charges(inputs, out)
        positions = inputs[keys.R]
        idx_m = inputs[keys.IDX_M]
        n_atoms = inputs[keys.N_ATOMS]
        n_structures = n_atoms.shape[0]
        pbc = inputs[keys.PBC]
        periodic = pbc.all(-1)
        if bool((pbc.any(-1) & ~periodic).any()):
            raise RuntimeError("coulomb: a structure is periodic in some directions only (need all three or none)")
        energy = torch.zeros(n_structures, dtype=q.dtype, device=q.device)
        if not bool(periodic.all()):
            # all pairs of every structure (the molecules' energies; periodic ones masked below)
            pairs = _brute_force_batch(positions.detach(), idx_m, n_atoms, float("inf"))
            molecular = damped_pairs_energy(q, positions, pairs, idx_m, n_structures, self.damping)
            energy = torch.where(periodic, energy, molecular)
        if bool(periodic.any()):
            starts = torch.cumsum(n_atoms, 0) - n_atoms
            cells = inputs[keys.CELL]
            parts: List[torch.Tensor] = []
            for m in range(n_structures):
                if bool(periodic[m]):
                    a, b = int(starts[m]), int(starts[m] + n_atoms[m])
                    parts.append(ewald_energy(q[a:b], positions[a:b], cells[m], self.damping, self.ewald_cutoff, self.ewald_accuracy))
                else:
                    parts.append(torch.zeros((), dtype=q.dtype, device=q.device))
            energy = torch.where(periodic, torch.stack(parts), energy)
        dipole = scatter_sum(q[:, None] * positions, idx_m, n_structures)
        return {"energy": self.k_e * energy, keys.CHARGES: q, keys.DIPOLE: dipole}
