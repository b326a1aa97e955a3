"""ANI: Behler-Parrinello atomic environment vectors + one MLP per element.

Smith, Isayev, Roitberg, Chem. Sci. 8, 3192 (2017). The default
hyperparameters (conf/model/ani.yaml) are those of ANI-1x: radial cutoff
5.2 Å with 16 shifts, angular cutoff 3.5 Å with 4 radial x 8 angular
shifts, eta_R = 16, eta_A = 8, zeta = 32, cosine cutoff, CELU(0.1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Dict, List

import torch
from ase.data import chemical_symbols
from torch import nn

from nnp import keys
from nnp.models.base import AtomisticModel
from nnp.nn import CosineCutoff, ElementwiseMLP


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
        first_center: int = 0,
        n_centers: int = -1,
    ) -> torch.Tensor:
        """species: (N,); pairs (2, P), vectors (P, 3) Å, distances (P,) Å.

        Returns the AEVs (n_centers, length) of atoms ``first_center`` ..
        ``first_center + n_centers - 1`` (default: all N atoms); ``pairs`` must
        then hold only pairs centred on those atoms (neighbors may be any atom).
        """
        n_atoms = species.shape[0] if n_centers < 0 else n_centers
        dtype = vectors.dtype
        i, j = pairs[0], pairs[1]
        if first_center != 0:
            i = i - first_center
        # Performance notes (CPU; same values to float tolerance as the textbook form):
        # - per-pair and per-triple terms are laid out feature-major, (n_features, P)
        #   and (n_features, T), so every elementwise op runs over long contiguous
        #   rows instead of rows of 4 to 32 (a 4x faster outer product, backward too);
        # - exp arguments are clamped at -80 (e^-80 ~ 2e-35): below about -87 the
        #   vectorized float32 exp falls back to a scalar path ~15x slower, and the
        #   terms dropped are far below float resolution.

        # Radial: 0.25 exp(-eta (r - Rs)^2) fc(r), summed per neighbor species.
        arg = (distances[None, :] - self.radial_shifts.to(dtype)[:, None]) ** 2 * (-self.radial_eta)
        radial = torch.exp(arg.clamp(min=-80.0)) * (0.25 * self.radial_cut(distances))[None, :]
        n_bins = n_atoms * self.n_species
        radial = torch.zeros((radial.shape[0], n_bins), dtype=dtype, device=radial.device).index_add(
            1, i * self.n_species + species[j], radial
        )
        radial = radial.t().reshape(n_atoms, self.radial_length)

        # Angular: every unordered pair of neighbors (j, k) of a center i.
        close = torch.nonzero(distances < self.angular_cutoff).flatten()
        centers = i[close]
        order = torch.argsort(centers, stable=True)
        close = close[order]
        centers = centers[order]
        counts = torch.bincount(centers, minlength=n_atoms)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(close.shape[0], device=close.device) - starts[centers]
        n_after = counts[centers] - 1 - rank
        first = torch.repeat_interleave(torch.arange(close.shape[0], device=close.device), n_after)
        group_start = torch.repeat_interleave(torch.cumsum(n_after, 0) - n_after, n_after)
        second = first + 1 + torch.arange(first.shape[0], device=close.device) - group_start
        # Per close pair, once: distance, unit vector (3, Pc), cutoff.
        d_close = distances[close]
        unit = (vectors[close] / d_close[:, None]).t()
        fc_close = self.angular_cut(d_close)
        # theta' = acos(0.95 cos theta) (0.95 keeps acos away from +-1, where its
        # derivative diverges, as TorchANI), and cos(theta' - s) expanded as
        # 0.95 cos(theta) cos(s) + sqrt(1 - (0.95 cos theta)^2) sin(s): no acos, no cos.
        cos_t = 0.95 * (unit[:, first] * unit[:, second]).sum(0)  # (T,)
        sin_t = torch.sqrt(1.0 - cos_t * cos_t)
        shifts = self.angle_shifts.to(dtype)
        f_angle = 0.5 + 0.5 * (torch.cos(shifts)[:, None] * cos_t[None, :] + torch.sin(shifts)[:, None] * sin_t[None, :])
        f_angle = torch.pow(f_angle, self.angular_zeta)  # (n_angle, T)
        mean_d = 0.5 * (d_close[first] + d_close[second])
        f_radial = torch.exp(
            -self.angular_eta * (mean_d[None, :] - self.angular_radial_shifts.to(dtype)[:, None]) ** 2
        ) * (2.0 * fc_close[first] * fc_close[second])[None, :]  # (n_ang_radial, T)
        # (n_ang_radial, n_angle, T) -> (n_ang_radial * n_angle, T): radial-major columns
        # (explicit sizes: with no triples, T = 0, reshape(-1, 0) is ambiguous)
        angular = (f_radial[:, None, :] * f_angle[None, :, :]).reshape(f_radial.shape[0] * f_angle.shape[0], f_angle.shape[1])
        neighbor_species = species[j[close]]
        sp = self.species_pair_index[neighbor_species[first], neighbor_species[second]]
        n_bins = n_atoms * self.n_species_pairs
        angular = torch.zeros((angular.shape[0], n_bins), dtype=dtype, device=angular.device).index_add(
            1, centers[first] * self.n_species_pairs + sp, angular
        )
        angular = angular.t().reshape(n_atoms, self.angular_length)
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
        # atoms per chunk for large inputs (a speed setting only; results are the same)
        self.chunk_atoms = 1024

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        species = inputs[keys.SPECIES]
        pairs = inputs[keys.PAIRS]
        vectors = inputs[keys.PAIR_VECTORS]
        distances = inputs[keys.PAIR_DISTANCES]
        n_atoms = species.shape[0]
        chunk = self.chunk_atoms
        if n_atoms <= chunk:
            return {keys.ATOMIC_ENERGY: self.networks(self.aev(species, pairs, vectors, distances), species)}
        # Large inputs, in chunks of atoms (AEV -> networks per chunk): the same
        # numbers, but every temporary stays cache-sized and below the size where
        # malloc maps fresh pages (page faults dominated large systems: 3.4x
        # faster at 30,000 atoms, and time grows linearly with N).
        i = pairs[0]
        if not bool((i[1:] >= i[:-1]).all()):
            order = torch.argsort(i, stable=True)
            pairs = pairs[:, order]
            vectors = vectors[order]
            distances = distances[order]
        ends: List[int] = torch.cumsum(torch.bincount(pairs[0], minlength=n_atoms), 0).tolist()
        energies: List[torch.Tensor] = []
        for start in range(0, n_atoms, chunk):
            stop = min(start + chunk, n_atoms)
            p0 = 0 if start == 0 else ends[start - 1]
            p1 = ends[stop - 1]
            features = self.aev(
                species, pairs[:, p0:p1], vectors[p0:p1], distances[p0:p1], start, stop - start
            )
            energies.append(self.networks(features, species[start:stop]))
        return {keys.ATOMIC_ENERGY: torch.cat(energies)}
