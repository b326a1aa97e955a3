"""PaiNN: polarizable atom interaction neural network (equivariant messages).

Schütt, Unke, Gastegger, ICML 2021 (arXiv:2102.03150). Each atom carries
scalar features s (N, F) and vector features v (N, 3, F). Defaults
(conf/model/painn.yaml) are the paper's: 128 features, 3 interaction
blocks, 20 sine (Bessel) radial functions sin(n pi r / rc) / r with a cosine
cutoff at 5 Å, SiLU activations.

Message (per pair, cutoff-weighted filter W(r_ij)):
    ds_i = sum_j phi_s(s_j) W_s
    dv_i = sum_j v_j phi_vv(s_j) W_vv + r_ij/|r_ij| phi_vs(s_j) W_vs
Update (per atom, U and V mix vector channels):
    dv_i = a_vv(s_i, |V v_i|) U v_i
    ds_i = a_ss(s_i, |V v_i|) + a_sv(s_i, |V v_i|) <U v_i, V v_i>
The energy is read out from s only, so it is rotation invariant.
"""

from collections.abc import Sequence
from typing import Tuple

import torch
from torch import nn

from nnp import keys
from nnp.models.base import AtomisticModel, groups_by_prefix
from nnp.nn import (
    build_activation,
    build_cutoff,
    build_mlp,
    build_radial_basis,
    halve_pairs,
    scatter_sum,
)
from nnp.nn.chunks import center_chunks, chunked_pair_sum, pairs_within_budget, sort_pairs_by_center
from nnp.nn.painn_messages import painn_messages, painn_messages_supported


class PaiNNLayer(nn.Module):
    """One message + one update block: (s, v) -> (s, v)."""

    def __init__(self, n_features: int, n_rbf: int, activation: str, epsilon: float = 1e-8):
        super().__init__()
        f = n_features
        self.n_features = f
        self.epsilon = float(epsilon)
        self.phi = nn.Sequential(nn.Linear(f, f), build_activation(activation), nn.Linear(f, 3 * f))
        self.filter = nn.Linear(n_rbf, 3 * f)
        self.mix_uv = nn.Linear(f, 2 * f, bias=False)  # U and V stacked
        self.update = nn.Sequential(nn.Linear(2 * f, f), build_activation(activation), nn.Linear(f, 3 * f))

    def forward(
        self,
        s: torch.Tensor,
        v: torch.Tensor,
        radial: torch.Tensor,
        unit: torch.Tensor,
        i: torch.Tensor,
        j: torch.Tensor,
        v_is_zero: bool = False,
    ):
        """s: (N, F); v: (N, 3, F); radial: (P', n_rbf + 1) [rbf * fcut, fcut];
        unit: (P, 3) r_ij/|r_ij|. P' is P, or P / 2 when pairs are ordered as
        [half; reversed half] (:func:`nnp.nn.pair_halves`): the filter, a function
        of distance only, is then evaluated once per undirected pair.
        ``v_is_zero``: v is all zeros (first layer), so its message term vanishes."""
        ds, dv = self.messages(self.phi(s), v, self.filter_weights(radial), unit, i, j, s.shape[0], v_is_zero)
        return self.update_atoms(s + ds, dv if v_is_zero else v + dv)

    def filter_weights(self, radial: torch.Tensor) -> torch.Tensor:
        """[rbf fcut, fcut] (P', n_rbf + 1) -> filter(rbf) * fcut (P', 3F), as one product with [W; b]^T."""
        weight = torch.cat([self.filter.weight, self.filter.bias[:, None]], 1)
        return torch.mm(radial, weight.t())

    def messages(
        self,
        phi: torch.Tensor,
        v: torch.Tensor,
        w: torch.Tensor,
        unit: torch.Tensor,
        i: torch.Tensor,
        j: torch.Tensor,
        n_atoms: int,
        v_is_zero: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Summed messages (ds (n_atoms, F), dv (n_atoms, 3, F)) from phi(s) (N, 3F), filters w (P', 3F)."""
        f = self.n_features
        phi = phi.index_select(0, j)  # (P, 3F)
        if w.shape[0] == phi.shape[0]:
            x = phi * w
        else:
            x = (phi.view(2, w.shape[0], w.shape[1]) * w[None]).view(phi.shape)
        x_s, x_vv, x_vs = torch.split(x, f, dim=-1)
        dv = unit[:, :, None] * x_vs[:, None, :]  # (P, 3, F)
        if not v_is_zero:
            dv = dv + v.index_select(0, j) * x_vv[:, None, :]
        return scatter_sum(x_s, i, n_atoms), scatter_sum(dv, i, n_atoms)

    def update_atoms(self, s: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The per-atom update block (U and V mix vector channels)."""
        f = self.n_features
        uv = self.mix_uv(v)  # (N, 3, 2F)
        u_v, v_v = torch.split(uv, f, dim=-1)
        norm_v = torch.sqrt((v_v * v_v).sum(1) + self.epsilon)  # smooth at v = 0
        a = self.update(torch.cat([s, norm_v], dim=-1))
        a_vv, a_sv, a_ss = torch.split(a, f, dim=-1)
        v = v + a_vv[:, None, :] * u_v
        s = s + a_ss + a_sv * (u_v * v_v).sum(1)
        return s, v


class PaiNN(AtomisticModel):
    """Embedding -> PaiNN layers -> atom-wise MLP on scalars -> atomic energy (dimensionless)."""

    def __init__(
        self,
        species: Sequence[int],
        n_features: int = 128,
        n_interactions: int = 3,
        cutoff: float = 5.0,
        n_rbf: int = 20,
        radial_basis: str = "bessel",
        cutoff_fn: str = "cosine",
        activation: str = "silu",
        readout_hidden: Sequence[int] | None = None,
    ):
        """``readout_hidden``: widths of the output MLP (default ``[n_features // 2]``)."""
        super().__init__()
        self.n_species = len(species)
        self.cutoff = float(cutoff)
        self.n_features = int(n_features)
        self.n_atom_features = self.n_features
        hidden: list[int] = [int(h) for h in readout_hidden] if readout_hidden is not None else [n_features // 2]
        self.embedding = nn.Embedding(self.n_species, n_features)
        self.radial = build_radial_basis(radial_basis, n_rbf, cutoff)
        self.cutoff_fn = build_cutoff(cutoff_fn, cutoff)
        self.layers = nn.ModuleList(PaiNNLayer(n_features, n_rbf, activation) for _ in range(n_interactions))
        self.readout = build_mlp(n_features, hidden, 1, activation)
        # Above ``chunk_above`` pairs, where the whole-system graph would exceed
        # nnp.nn.chunks.GRAPH_BUDGET (measured ~25 KB of saved state per pair at 128 features and
        # 3 layers: ~0.12M pairs, ~2,900 atoms of a metal), messages are built in chunks of
        # ``pair_chunk`` pairs of whole center atoms and rebuilt in the backward pass
        # (nnp.nn.chunks): memory O(N F) instead of O(P F) (~15% more time). Memory settings only.
        self.pair_chunk = 1 << 14
        self.chunk_above = pairs_within_budget(4 * self.n_features * (16 * n_interactions + 1))
        # In eval mode, above ``fused_above`` pairs (~800 atoms of a metal), messages in chunks with
        # an analytic backward (nnp.nn.painn_messages): measured ~10-20% faster than the whole
        # graph at 1,000-2,000 Cu atoms, at a quarter to half of its memory.
        self.fused_above = 1 << 15

    @torch.jit.unused
    def parameter_groups(self) -> dict[str, list[str]]:
        """Groups for ``finetune.freeze``: embedding (species embedding), interactions (message + update blocks), readout (the output network on the scalars)."""
        return groups_by_prefix(self, {"embedding": "embedding", "interactions": "layers", "readout": "readout"})

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        species = inputs[keys.SPECIES]
        pairs = inputs[keys.PAIRS]
        i, j = pairs[0], pairs[1]
        vectors = inputs[keys.PAIR_VECTORS]
        distances = inputs[keys.PAIR_DISTANCES]
        if not torch.jit.is_scripting() and i.shape[0] > min(self.chunk_above, self.fused_above) and not self.training:
            if painn_messages_supported(self.radial, self.cutoff_fn):
                return self._forward_fused(species, i, j, vectors, distances)
        if not torch.jit.is_scripting() and i.shape[0] > self.chunk_above:
            return self._forward_chunked(species, i, j, vectors, distances)
        unit = vectors / distances[:, None]
        i, j, distances, perm = halve_pairs(i, j, vectors, distances, species.shape[0])
        if perm is not None:
            unit = unit.index_select(0, perm)
        fcut = self.cutoff_fn(distances)[:, None]
        radial = torch.cat([self.radial(distances) * fcut, fcut], 1)  # (P', n_rbf + 1)
        s = self.embedding(species)
        v = torch.zeros((s.shape[0], 3, self.n_features), dtype=s.dtype, device=s.device)
        first = True
        for layer in self.layers:
            s, v = layer(s, v, radial, unit, i, j, first)
            first = False
        return {keys.ATOMIC_ENERGY: self.readout(s).squeeze(-1), keys.ATOM_FEATURES: s}

    @torch.jit.unused
    def _forward_fused(
        self, species: torch.Tensor, i: torch.Tensor, j: torch.Tensor, vectors: torch.Tensor, distances: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` with messages in chunks and an analytic backward (nnp.nn.painn_messages; eval mode)."""
        s = self.embedding(species)
        v = torch.zeros((s.shape[0], 3, self.n_features), dtype=s.dtype, device=s.device)
        for k, layer in enumerate(self.layers):
            ds, dv = painn_messages(
                self.radial, self.cutoff_fn, layer.filter, layer.phi(s), v, vectors, distances, i, j, k == 0,
                self.pair_chunk,
            )
            s, v = layer.update_atoms(s + ds, v + dv)
        return {keys.ATOMIC_ENERGY: self.readout(s).squeeze(-1), keys.ATOM_FEATURES: s}

    @torch.jit.unused
    def _forward_chunked(
        self, species: torch.Tensor, i: torch.Tensor, j: torch.Tensor, vectors: torch.Tensor, distances: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` with each layer's messages in chunks of centers, recomputed in the backward."""
        perm = sort_pairs_by_center(i)
        if perm is not None:
            i, j, vectors, distances = i[perm], j[perm], vectors[perm], distances[perm]
        bounds = center_chunks(i, species.shape[0], self.pair_chunk)
        s = self.embedding(species)
        v = torch.zeros((s.shape[0], 3, self.n_features), dtype=s.dtype, device=s.device)
        for k, layer in enumerate(self.layers):
            ds, dv = chunked_pair_sum(
                self._chunk_messages, bounds, i, (layer, layer.phi(s), v, k == 0), (vectors, distances, j),
                (layer.filter, self.radial),
            )
            s, v = layer.update_atoms(s + ds, v + dv)
        return {keys.ATOMIC_ENERGY: self.readout(s).squeeze(-1), keys.ATOM_FEATURES: s}

    def _chunk_messages(
        self, layer: PaiNNLayer, phi: torch.Tensor, v: torch.Tensor, v_is_zero: bool, vectors: torch.Tensor,
        distances: torch.Tensor, j: torch.Tensor, i_local: torch.Tensor, n_local: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One chunk's summed messages (radial filters and unit vectors rebuilt from its pairs)."""
        fcut = self.cutoff_fn(distances)[:, None]
        w = layer.filter_weights(torch.cat([self.radial(distances) * fcut, fcut], 1))
        return layer.messages(phi, v, w, vectors / distances[:, None], i_local, j, n_local, v_is_zero)
