"""ANI: Behler-Parrinello atomic environment vectors + one MLP per element.

Smith, Isayev, Roitberg, Chem. Sci. 8, 3192 (2017). The default
hyperparameters (conf/model/ani.yaml) are those of ANI-1x: radial cutoff
5.2 Å with 16 shifts, angular cutoff 3.5 Å with 4 radial x 8 angular
shifts, eta_R = 16, eta_A = 8, zeta = 32, cosine cutoff, CELU(0.1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Dict, List, Tuple

import torch
from ase.data import chemical_symbols

from nnp import keys
from nnp.models.aev import AEV
from nnp.models.base import AtomisticModel
from nnp.nn import ElementwiseMLP


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
        self.n_atom_features = self.aev.length
        self.networks = ElementwiseMLP(n_species, self.aev.length, per_species, activation)
        # atoms per chunk for large inputs (a speed setting only; results are the same): 4096 measured
        # 11-14% faster than 1024 on 256-molecule batches (one chunk), and the same at 10^3-3·10^4 atoms
        self.chunk_atoms = 4096
        # inference with forces without autograd (nnp.models.pair_gradient); False: autograd's graph
        self.closed_form = True

    @torch.jit.unused
    def parameter_groups(self) -> Dict[str, List[str]]:
        """Groups for ``finetune.freeze``, over the networks of all elements: ``hidden``
        (every layer but the last), ``output`` (the last layer), and ``layer1``,
        ``layer2``, ... (the k-th linear layer of each network; the AEV has no parameters)."""
        groups: Dict[str, List[str]] = {"hidden": [], "output": []}
        for s, net in enumerate(self.networks.nets):
            linear = [k for k, layer in enumerate(net) if isinstance(layer, torch.nn.Linear)]
            for depth, k in enumerate(linear, start=1):
                names = [f"networks.nets.{s}.{k}.{p}" for p, _ in net[k].named_parameters()]
                groups["output" if depth == len(linear) else "hidden"] += names
                groups.setdefault(f"layer{depth}", []).extend(names)
        return groups

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        species = inputs[keys.SPECIES]
        energies: List[torch.Tensor] = []
        aevs: List[torch.Tensor] = []
        for start, stop, features in self.descriptor_chunks(inputs):
            energies.append(self.networks(features, species[start:stop]))
            aevs.append(features)
        # the AEVs are the per-atom features term heads read (nnp.terms: charges)
        return {keys.ATOMIC_ENERGY: torch.cat(energies), keys.ATOM_FEATURES: torch.cat(aevs)}

    def descriptor_chunks(self, inputs: Dict[str, torch.Tensor]) -> List[Tuple[int, int, torch.Tensor]]:
        """AEVs of atoms ``start:stop`` as ``(start, stop, features)``, in chunks of ``chunk_atoms``.

        One chunk for small inputs. Large inputs go in chunks of atoms: the same
        numbers, but every temporary stays cache-sized and below the size where
        malloc maps fresh pages (page faults dominated large systems: 3.4x faster
        at 30,000 atoms, and time grows linearly with N). A committee of ANI
        models computes these once and feeds them to every member's networks.
        """
        species = inputs[keys.SPECIES]
        pairs, vectors, distances, _, bounds = self._pair_chunks(inputs)
        if len(bounds) == 1:
            return [(0, species.shape[0], self.aev(species, pairs, vectors, distances))]
        chunks: List[Tuple[int, int, torch.Tensor]] = []
        for start, stop, p0, p1 in bounds:
            features = self.aev(species, pairs[:, p0:p1], vectors[p0:p1], distances[p0:p1], start, stop - start)
            chunks.append((start, stop, features))
        return chunks

    def _pair_chunks(
        self, inputs: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, List[Tuple[int, int, int, int]]]:
        """``(pairs, vectors, distances, order, bounds)``: the pairs, sorted by center when
        chunked (``order``: that permutation of the input pairs, empty when they are
        unchanged), and per chunk ``(start, stop, p0, p1)``: atoms ``start:stop`` and
        their pairs ``p0:p1``. One chunk, all pairs as given, for up to ``chunk_atoms`` atoms."""
        species = inputs[keys.SPECIES]
        pairs = inputs[keys.PAIRS]
        vectors = inputs[keys.PAIR_VECTORS]
        distances = inputs[keys.PAIR_DISTANCES]
        n_atoms = species.shape[0]
        chunk = self.chunk_atoms
        order = torch.zeros(0, dtype=torch.long, device=pairs.device)
        if n_atoms <= chunk:
            return pairs, vectors, distances, order, [(0, n_atoms, 0, pairs.shape[1])]
        i = pairs[0]
        if not bool((i[1:] >= i[:-1]).all()):
            order = torch.argsort(i, stable=True)
            pairs = pairs[:, order]
            vectors = vectors[order]
            distances = distances[order]
        ends: List[int] = torch.cumsum(torch.bincount(pairs[0], minlength=n_atoms), 0).tolist()
        bounds: List[Tuple[int, int, int, int]] = []
        for start in range(0, n_atoms, chunk):
            stop = min(start + chunk, n_atoms)
            p0 = 0 if start == 0 else ends[start - 1]
            p1 = ends[stop - 1]
            bounds.append((start, stop, p0, p1))
        return pairs, vectors, distances, order, bounds

    @torch.jit.unused
    def descriptors_with_geometry(self, inputs: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, Any]]:
        """All AEVs (N, length), as :meth:`descriptor_chunks` computes them, without a graph,
        and what :meth:`descriptor_vector_jacobian_many` needs for their backward."""
        species = inputs[keys.SPECIES]
        with torch.no_grad():
            pairs, vectors, distances, order, bounds = self._pair_chunks(inputs)
            vectors = vectors.detach()
            distances = distances.detach()
            features: List[torch.Tensor] = []
            geometries: List[Dict[str, torch.Tensor]] = []
            for start, stop, p0, p1 in bounds:
                f, geometry = self.aev.forward_with_geometry(
                    species, pairs[:, p0:p1], vectors[p0:p1], distances[p0:p1], start, stop - start
                )
                features.append(f)
                geometries.append(geometry)
        state = {"vectors": vectors, "distances": distances, "order": order, "bounds": bounds, "geometries": geometries}
        return (features[0] if len(features) == 1 else torch.cat(features)), state

    @torch.jit.unused
    def descriptor_vector_jacobian_many(self, state: Dict[str, Any], g: torch.Tensor) -> torch.Tensor:
        """dE_k/d(pair vector), feature-major (K, 3, P), in the input's pair order, for
        g (K, N, length) = dE_k/dAEV of the AEVs :meth:`descriptors_with_geometry`
        returned (chunk by chunk, like the forward; see :meth:`AEV.vector_jacobian_many`)."""
        vectors, distances = state["vectors"], state["distances"]
        bounds = state["bounds"]
        with torch.no_grad():
            g = g.contiguous()
            if len(bounds) == 1:
                out = self.aev._vector_jacobian_many(vectors, distances, g, state["geometries"][0], 0)
            else:
                out = torch.empty((g.shape[0], 3, vectors.shape[0]), dtype=g.dtype, device=g.device)
                for (start, _, p0, p1), geometry in zip(bounds, state["geometries"]):
                    out[:, :, p0:p1] = self.aev._vector_jacobian_many(vectors[p0:p1], distances[p0:p1], g, geometry, start)
            order = state["order"]
            if order.numel() > 0:  # back to the input's pair order
                rows = out.view(out.shape[0] * 3, -1)
                out = torch.empty_like(rows).index_copy_(1, order, rows).view(out.shape)
        return out
