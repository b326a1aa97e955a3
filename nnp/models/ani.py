"""ANI: Behler-Parrinello atomic environment vectors + one MLP per element.

Smith, Isayev, Roitberg, Chem. Sci. 8, 3192 (2017). The default
hyperparameters (conf/model/ani.yaml) are those of ANI-1x: radial cutoff
5.2 Å with 16 shifts, angular cutoff 3.5 Å with 4 radial x 8 angular
shifts, eta_R = 16, eta_A = 8, zeta = 32, cosine cutoff, CELU(0.1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Dict

import torch
from ase.data import chemical_symbols
from torch import nn

from nnp import keys
from nnp.models.base import AtomisticModel
from nnp.nn import CosineCutoff, ElementwiseMLP, scatter_sum


def _default_shifts(start: float, stop: float, n: int) -> list[float]:
    return torch.linspace(start, stop, n + 1)[:-1].tolist()


class AEV(nn.Module):
    """Atomic environment vectors (radial + angular symmetry functions).

    Output (N, S * n_radial + S(S+1)/2 * n_ang_radial * n_ang_angle), where S
    is the number of species. Radial terms are summed per neighbor species,
    angular terms per unordered neighbor-species pair.
    """

    def __init__(
        self,
        n_species: int,
        radial_cutoff: float = 5.2,
        angular_cutoff: float = 3.5,
        radial_eta: float = 16.0,
        radial_shifts: Sequence[float] | None = None,
        angular_eta: float = 8.0,
        angular_zeta: float = 32.0,
        angular_radial_shifts: Sequence[float] | None = None,
        angular_sections: int = 8,
    ):
        super().__init__()
        if radial_shifts is None:
            radial_shifts = _default_shifts(0.9, radial_cutoff, 16)
        if angular_radial_shifts is None:
            angular_radial_shifts = _default_shifts(0.9, angular_cutoff, 4)
        theta = [(2 * k + 1) * math.pi / (2 * angular_sections) for k in range(angular_sections)]
        self.n_species = n_species
        self.radial_cutoff = float(radial_cutoff)
        self.angular_cutoff = float(angular_cutoff)
        self.radial_eta = float(radial_eta)
        self.angular_eta = float(angular_eta)
        self.angular_zeta = float(angular_zeta)
        self.register_buffer("radial_shifts", torch.tensor(list(radial_shifts)))
        self.register_buffer("angular_radial_shifts", torch.tensor(list(angular_radial_shifts)))
        self.register_buffer("angle_shifts", torch.tensor(theta))
        self.radial_cut = CosineCutoff(radial_cutoff)
        self.angular_cut = CosineCutoff(angular_cutoff)
        # Unordered species pair (a, b) -> column block of the angular AEV.
        pair_index = torch.zeros(n_species, n_species, dtype=torch.long)
        k = 0
        for a in range(n_species):
            for b in range(a, n_species):
                pair_index[a, b] = k
                pair_index[b, a] = k
                k += 1
        self.register_buffer("species_pair_index", pair_index)
        self.n_species_pairs = k
        self.radial_length = n_species * len(radial_shifts)
        self.angular_length = k * len(angular_radial_shifts) * len(theta)
        self.length = self.radial_length + self.angular_length

    def forward(
        self,
        species: torch.Tensor,
        pairs: torch.Tensor,
        vectors: torch.Tensor,
        distances: torch.Tensor,
    ) -> torch.Tensor:
        n_atoms = species.shape[0]
        dtype = vectors.dtype
        i, j = pairs[0], pairs[1]

        # Radial: 0.25 exp(-eta (r - Rs)^2) fc(r), summed per neighbor species.
        radial = 0.25 * torch.exp(
            -self.radial_eta * (distances[:, None] - self.radial_shifts.to(dtype)) ** 2
        ) * self.radial_cut(distances)[:, None]
        radial = scatter_sum(radial, i * self.n_species + species[j], n_atoms * self.n_species)
        radial = radial.reshape(n_atoms, self.radial_length)

        # Angular: every unordered pair of neighbors (j, k) of a center i.
        close = torch.nonzero(distances < self.angular_cutoff).flatten()
        close = close[torch.argsort(i[close], stable=True)]
        centers = i[close]
        counts = torch.bincount(centers, minlength=n_atoms)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(close.shape[0], device=close.device) - starts[centers]
        n_after = counts[centers] - 1 - rank
        first = torch.repeat_interleave(torch.arange(close.shape[0], device=close.device), n_after)
        group_start = torch.repeat_interleave(torch.cumsum(n_after, 0) - n_after, n_after)
        second = first + 1 + torch.arange(first.shape[0], device=close.device) - group_start
        p1 = close[first]
        p2 = close[second]
        d1 = distances[p1]
        d2 = distances[p2]
        cos = (vectors[p1] * vectors[p2]).sum(-1) / (d1 * d2)
        # 0.95 keeps acos away from +-1, where its derivative diverges (as TorchANI).
        angle = torch.acos(0.95 * cos)
        f_angle = ((1.0 + torch.cos(angle[:, None] - self.angle_shifts.to(dtype))) / 2.0) ** self.angular_zeta
        f_radial = torch.exp(
            -self.angular_eta * ((d1 + d2)[:, None] / 2.0 - self.angular_radial_shifts.to(dtype)) ** 2
        )
        fc = self.angular_cut(d1) * self.angular_cut(d2)
        # (T, n_ang_radial, n_angle) -> (T, n_ang_radial * n_angle)
        angular = 2.0 * (f_radial[:, :, None] * f_angle[:, None, :]).flatten(1) * fc[:, None]
        sp = self.species_pair_index[species[j[p1]], species[j[p2]]]
        angular = scatter_sum(angular, i[p1] * self.n_species_pairs + sp, n_atoms * self.n_species_pairs)
        angular = angular.reshape(n_atoms, self.angular_length)
        return torch.cat([radial, angular], dim=1)


class ANI(AtomisticModel):
    """AEV -> per-element MLP -> atomic energy (dimensionless; scaled by the potential)."""

    def __init__(
        self,
        species: Sequence[int],
        hidden: Sequence[int] = (160, 128, 96),
        hidden_per_element: Mapping[str, Sequence[int]] | None = None,
        activation: str = "celu",
        **aev_kwargs,
    ):
        """``hidden``: layer widths of each element's network; ``hidden_per_element``
        (element symbol -> widths) overrides it per element, as ANI-1x does."""
        super().__init__()
        n_species = len(species)
        self.aev = AEV(n_species, **aev_kwargs)
        self.n_species = n_species
        self.cutoff = max(self.aev.radial_cutoff, self.aev.angular_cutoff)
        overrides = dict(hidden_per_element or {})
        per_species = [
            [int(h) for h in overrides.get(chemical_symbols[z], hidden)] for z in species
        ]
        self.networks = ElementwiseMLP(n_species, self.aev.length, per_species, activation)

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        species = inputs[keys.SPECIES]
        features = self.aev(species, inputs[keys.PAIRS], inputs[keys.PAIR_VECTORS], inputs[keys.PAIR_DISTANCES])
        return {keys.ATOMIC_ENERGY: self.networks(features, species)}
