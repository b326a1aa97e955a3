"""SchNet: continuous-filter convolutions on interatomic distances.

Schütt, Sauceda, Kindermans, Tkatchenko, Müller, J. Chem. Phys. 148, 241722
(2018). Defaults (conf/model/schnet.yaml) are the paper's small-molecule
settings: 128 features, Gaussian expansion of distances (50 centres on
[0, cutoff]), cosine cutoff of 5 Å, shifted softplus; 3 interaction blocks
(the paper used 3 for MD17-sized training and 6 for QM9).

Per block (residual):  x_i <- x_i + f2out( sum_j in2f(x)_j * W(r_ij) ),
with the filter W(r) = Dense(ssp) -> Dense applied to the radial basis and
multiplied by the cutoff function, so a neighbor enters and leaves smoothly.
"""

from collections.abc import Sequence

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
from nnp.nn.filter_conv import KEEP_BUDGET, filter_convolution, fused_filters_supported
from nnp.nn.filters import has_value_and_derivative, supports_slope, two_layer_filters


class SchNetInteraction(nn.Module):
    """One interaction block: atom-wise -> cfconv -> atom-wise (N, F) -> (N, F) update."""

    def __init__(self, n_features: int, n_filters: int, n_rbf: int, activation: str):
        super().__init__()
        self.in2f = nn.Linear(n_features, n_filters, bias=False)
        self.filter_net = nn.Sequential(
            nn.Linear(n_rbf, n_filters), build_activation(activation), nn.Linear(n_filters, n_filters)
        )
        self.f2out = nn.Sequential(
            nn.Linear(n_filters, n_features), build_activation(activation), nn.Linear(n_features, n_features)
        )

    def forward(
        self, x: torch.Tensor, rbf: torch.Tensor, fcut: torch.Tensor, i: torch.Tensor, j: torch.Tensor
    ) -> torch.Tensor:
        """x: (N, F); rbf: (P', n_rbf); fcut: (P',); i, j: (P,) -> update (N, F).

        P' is P, or P / 2 when the pairs are ordered as [half; reversed half]
        (see :func:`nnp.nn.pair_halves`): W(r_ij) = W(r_ji) is then evaluated
        once per undirected pair and shared by both directions.
        """
        return self.convolve(x, self.filter_net(rbf) * fcut[:, None], i, j)

    def convolve(self, x: torch.Tensor, w: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """The block's update from its filters w (P', n_filters), cutoff applied."""
        h = self.in2f(x).index_select(0, j)  # (P, n_filters)
        if w.shape[0] == h.shape[0]:
            messages = h * w
        else:
            messages = (h.view(2, w.shape[0], w.shape[1]) * w[None]).view(h.shape)
        return self.f2out(scatter_sum(messages, i, x.shape[0]))


class SchNet(AtomisticModel):
    """Embedding -> interaction blocks -> atom-wise MLP -> atomic energy (dimensionless)."""

    def __init__(
        self,
        species: Sequence[int],
        n_features: int = 128,
        n_interactions: int = 3,
        cutoff: float = 5.0,
        n_rbf: int = 50,
        radial_basis: str = "gaussian",
        cutoff_fn: str = "cosine",
        activation: str = "ssp",
        n_filters: int | None = None,
        readout_hidden: Sequence[int] | None = None,
    ):
        """``n_filters`` defaults to ``n_features``; ``readout_hidden`` (layer widths of
        the output MLP) to ``[n_features // 2]``, as in the paper."""
        super().__init__()
        self.n_species = len(species)
        self.cutoff = float(cutoff)
        n_filters = int(n_filters or n_features)
        self.n_atom_features = int(n_features)
        hidden: list[int] = [int(h) for h in readout_hidden] if readout_hidden is not None else [n_features // 2]
        self.embedding = nn.Embedding(self.n_species, n_features)
        self.radial = build_radial_basis(radial_basis, n_rbf, cutoff)
        self.cutoff_fn = build_cutoff(cutoff_fn, cutoff)
        self.interactions = nn.ModuleList(
            SchNetInteraction(n_features, n_filters, n_rbf, activation) for _ in range(n_interactions)
        )
        self.readout = build_mlp(n_features, hidden, 1, activation)
        # Above ``chunk_above`` pairs, where the whole-system graph would exceed
        # nnp.nn.chunks.GRAPH_BUDGET (measured ~8 KB of saved state per pair at 128 filters and
        # 3 blocks: ~0.39M pairs, ~9,000 atoms of a metal), filters are built in chunks and no
        # per-pair graph is kept: memory O(N F) plus a bounded cache. In eval mode (single points, MD) by
        # nnp.nn.filter_conv: chunks of ``pair_chunk`` pairs, an analytic backward, filters and
        # slopes kept within nnp.nn.filter_conv.KEEP_BUDGET (~the whole-graph time; ~1.5x for
        # the chunks beyond it, rebuilt in the backward). In training mode (force training needs
        # the double backward) by chunks of centers recomputed in the backward pass
        # (nnp.nn.chunks), about 2.5x the time.
        # Memory settings only; results are the same.
        self.pair_chunk = 1 << 15
        self.chunk_above = pairs_within_budget(4 * n_filters * (5 * n_interactions + 1))
        # In eval mode, the nnp.nn.filter_conv path from ``fused_above`` pairs (~1,500 atoms of a
        # metal) up: measured the whole graph's time at half its memory (1,000 Cu atoms).
        self.fused_above = 1 << 16
        # Training on forces: filters with dW/dr carried forward (nnp.nn.filters), so the
        # loss gradient needs no double backward through the filter networks. Same results.
        self.tangent_filters = has_value_and_derivative(self.radial, self.cutoff_fn) and supports_slope(
            self.interactions[0].filter_net[1]
        ) if n_interactions > 0 else False

    @torch.jit.unused
    def parameter_groups(self) -> dict[str, list[str]]:
        """Groups for ``finetune.freeze``: embedding (species embedding), interactions (the interaction blocks, filters included), readout (the atom-wise output network)."""
        return groups_by_prefix(self, {"embedding": "embedding", "interactions": "interactions", "readout": "readout"})

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        species = inputs[keys.SPECIES]
        pairs = inputs[keys.PAIRS]
        i, j = pairs[0], pairs[1]
        distances = inputs[keys.PAIR_DISTANCES]
        if not torch.jit.is_scripting() and i.shape[0] > min(self.chunk_above, self.fused_above) and not self.training:
            if fused_filters_supported(self.interactions[0].filter_net, self.radial, self.cutoff_fn):
                return self._forward_fused(species, i, j, inputs[keys.PAIR_VECTORS], distances)
        if not torch.jit.is_scripting() and i.shape[0] > self.chunk_above:
            return self._forward_chunked(species, i, j, distances)
        i, j, distances, _ = halve_pairs(i, j, inputs[keys.PAIR_VECTORS], distances, species.shape[0])
        if not torch.jit.is_scripting() and self.training and self.tangent_filters and distances.requires_grad:
            return self._forward_tangent(species, i, j, distances)
        rbf = self.radial(distances)
        fcut = self.cutoff_fn(distances)
        x = self.embedding(species)
        for interaction in self.interactions:
            x = x + interaction(x, rbf, fcut, i, j)
        return {keys.ATOMIC_ENERGY: self.readout(x).squeeze(-1), keys.ATOM_FEATURES: x}

    @torch.jit.unused
    def _forward_tangent(
        self, species: torch.Tensor, i: torch.Tensor, j: torch.Tensor, distances: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` with the filters of :func:`nnp.nn.filters.two_layer_filters` (training)."""
        filters = two_layer_filters([it.filter_net for it in self.interactions], self.radial, self.cutoff_fn, distances)
        x = self.embedding(species)
        for interaction, w in zip(self.interactions, filters):
            x = x + interaction.convolve(x, w, i, j)
        return {keys.ATOMIC_ENERGY: self.readout(x).squeeze(-1), keys.ATOM_FEATURES: x}

    @torch.jit.unused
    def _forward_fused(
        self, species: torch.Tensor, i: torch.Tensor, j: torch.Tensor, vectors: torch.Tensor, distances: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` with filters built chunk by chunk and an analytic backward (eval mode, large systems)."""
        i, j, distances, perm = halve_pairs(i, j, vectors, distances, species.shape[0])
        both = perm is not None
        if both:  # one filter per undirected pair, messages both ways
            i, j = i[: distances.shape[0]], j[: distances.shape[0]]
        x = self.embedding(species)
        per_pair = len(self.interactions) * 2 * self.interactions[0].in2f.out_features * x.element_size()
        for interaction in self.interactions:
            summed = filter_convolution(
                interaction.filter_net, self.radial, self.cutoff_fn, interaction.in2f(x), distances, i, j, both,
                self.pair_chunk, KEEP_BUDGET // per_pair,
            )
            x = x + interaction.f2out(summed)
        return {keys.ATOMIC_ENERGY: self.readout(x).squeeze(-1), keys.ATOM_FEATURES: x}

    @torch.jit.unused
    def _forward_chunked(
        self, species: torch.Tensor, i: torch.Tensor, j: torch.Tensor, distances: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` with each block's filters in chunks of centers, recomputed in the backward."""
        perm = sort_pairs_by_center(i)
        if perm is not None:
            i, j, distances = i[perm], j[perm], distances[perm]
        bounds = center_chunks(i, species.shape[0], self.pair_chunk)
        x = self.embedding(species)
        for interaction in self.interactions:
            (summed,) = chunked_pair_sum(
                self._chunk_messages, bounds, i, (interaction, interaction.in2f(x)), (distances, j),
                (interaction.filter_net, self.radial),
            )
            x = x + interaction.f2out(summed)
        return {keys.ATOMIC_ENERGY: self.readout(x).squeeze(-1), keys.ATOM_FEATURES: x}

    def _chunk_messages(
        self, interaction: SchNetInteraction, h: torch.Tensor, distances: torch.Tensor, j: torch.Tensor,
        i_local: torch.Tensor, n_local: int,
    ) -> tuple[torch.Tensor]:
        """sum_j h_j W(r_ij) of ``n_local`` centers over one chunk's pairs (h = in2f(x), (N, F))."""
        w = interaction.filter_net(self.radial(distances)) * self.cutoff_fn(distances)[:, None]
        return (scatter_sum(h.index_select(0, j) * w, i_local, n_local),)
