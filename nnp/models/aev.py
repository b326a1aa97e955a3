"""ANI's atomic environment vectors (AEVs): radial and angular symmetry functions.

The descriptor of :class:`nnp.models.ani.ANI` (Smith, Isayev, Roitberg, Chem.
Sci. 8, 3192 (2017)), with no trainable parameters; also its closed-form
vector-Jacobian product for several gradients at once, which a committee of
ANI models uses to get every member's forces from one descriptor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Dict, Tuple

import torch
from torch import nn

from nnp.nn import CosineCutoff


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
        # values per block of the K-fold triple terms in vector_jacobian_many (speed only)
        self.backward_block = 1 << 18
        # eager mode: one autograd node with the closed-form backward (nnp.models.aev_fused);
        # False: autograd through the forward's ops (the reference path; TorchScript's always)
        self.fused = True

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
        ``distances`` must be ``|vectors|`` (the fused path recomputes them from ``vectors``).
        """
        if self.fused and not torch.jit.is_scripting():
            fast = self._fused(species, pairs, vectors, first_center, n_centers)
            if fast is not None:
                return fast
        return self._compute(species, pairs, vectors, distances, first_center, n_centers, False)[0]

    @torch.jit.unused
    def _fused(
        self, species: torch.Tensor, pairs: torch.Tensor, vectors: torch.Tensor, first_center: int, n_centers: int
    ) -> torch.Tensor | None:
        """The fused path (:mod:`nnp.models.aev_fused`), or None where the reference path runs:
        in training mode (forces in the loss need the double backward, which the reference's
        autograd graph gives faster than differentiating the fused node's backward: measured
        5% slower), and for cutoffs other than ANI's cosine ones (the closed form assumes them;
        a test swaps in broken ones)."""
        import nnp.models.aev_native as aev_native
        from nnp.models.aev_fused import FusedAEV

        if type(self.radial_cut) is not CosineCutoff or type(self.angular_cut) is not CosineCutoff:
            return None
        if not vectors.requires_grad:  # no backward: only the kernel's forward is faster
            if aev_native.supports(self, vectors):
                return aev_native.forward(self, species, pairs, vectors, first_center, n_centers)[0]
            return None
        if self.training:
            return None
        return FusedAEV.apply(self, species, pairs, vectors, first_center, n_centers)

    def forward_with_geometry(
        self,
        species: torch.Tensor,
        pairs: torch.Tensor,
        vectors: torch.Tensor,
        distances: torch.Tensor,
        first_center: int = 0,
        n_centers: int = -1,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """:meth:`forward` (the same numbers as its reference path) and the per-pair and per-triple terms it used.

        The geometry dict (for :meth:`vector_jacobian_many`; feature-major like
        the forward): per pair ``centers`` (P,) local center index, ``radial_bins``
        (P,) row of the radial block (center * S + neighbor species), ``radial_arg``
        and ``radial_exp`` (n_radial, P) the (unclamped) exponent and exp of the
        clamped one; per close pair (d < angular cutoff) ``close`` (Pc,) its pair
        index, ``unit`` (3, Pc), ``fc_close`` (Pc,); per triple ``first``,
        ``second`` (T,) indices into the close pairs (``close_centers`` (Pc,) the
        close pairs' centers, sorted), ``species_pair`` (T,) the column block of the
        neighbors' species pair, ``cos`` (T,) 0.95 cos(theta), ``sin``
        (T,), ``angle_base`` (n_angle, T) 0.5 + 0.5 cos(theta' - theta_s),
        ``f_angle`` (n_angle, T) its zeta-th power, ``mean_d`` (T,),
        ``angular_exp`` (n_ang_radial, T); and ``n_centers`` (a 0-d tensor).
        """
        return self._compute(species, pairs, vectors, distances, first_center, n_centers, True)

    def _compute(
        self,
        species: torch.Tensor,
        pairs: torch.Tensor,
        vectors: torch.Tensor,
        distances: torch.Tensor,
        first_center: int,
        n_centers: int,
        keep: bool,
    ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The AEVs and, when ``keep``, the geometry (else an empty dict)."""
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
        radial_exp = torch.exp(arg.clamp(min=-80.0))
        radial = radial_exp * (0.25 * self.radial_cut(distances))[None, :]
        n_bins = n_atoms * self.n_species
        radial_bins = i * self.n_species + species[j]
        radial = torch.zeros((radial.shape[0], n_bins), dtype=dtype, device=radial.device).index_add(
            1, radial_bins, radial
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
        angle_base = 0.5 + 0.5 * (torch.cos(shifts)[:, None] * cos_t[None, :] + torch.sin(shifts)[:, None] * sin_t[None, :])
        if self.training and angle_base.requires_grad:
            # training keeps pow: the graph (and numbers) training has always used; squaring
            # measured no faster there (its double backward replays 5 products), faster elsewhere
            f_angle = torch.pow(angle_base, self.angular_zeta)  # (n_angle, T)
        else:
            f_angle = _power(angle_base, self.angular_zeta)
        mean_d = 0.5 * (d_close[first] + d_close[second])
        angular_exp = torch.exp(-self.angular_eta * (mean_d[None, :] - self.angular_radial_shifts.to(dtype)[:, None]) ** 2)
        f_radial = angular_exp * (2.0 * fc_close[first] * fc_close[second])[None, :]  # (n_ang_radial, T)
        # (n_ang_radial, n_angle, T) -> (n_ang_radial * n_angle, T): radial-major columns
        # (explicit sizes: with no triples, T = 0, reshape(-1, 0) is ambiguous)
        angular = (f_radial[:, None, :] * f_angle[None, :, :]).reshape(f_radial.shape[0] * f_angle.shape[0], f_angle.shape[1])
        neighbor_species = species[j[close]]
        sp = self.species_pair_index[neighbor_species[first], neighbor_species[second]]
        n_bins = n_atoms * self.n_species_pairs
        angular_bins = centers[first] * self.n_species_pairs + sp
        angular = torch.zeros((angular.shape[0], n_bins), dtype=dtype, device=angular.device).index_add(
            1, angular_bins, angular
        )
        angular = angular.t().reshape(n_atoms, self.angular_length)
        geometry: Dict[str, torch.Tensor] = {}
        if keep:
            geometry = {
                "centers": i,
                "radial_bins": radial_bins,
                "radial_arg": arg,
                "radial_exp": radial_exp,
                "close": close,
                "close_centers": centers,
                "unit": unit,
                "fc_close": fc_close,
                "first": first,
                "second": second,
                "species_pair": sp,
                "cos": cos_t,
                "sin": sin_t,
                "angle_base": angle_base,
                "f_angle": f_angle,
                "mean_d": mean_d,
                "angular_exp": angular_exp,
                "n_centers": torch.tensor(n_atoms),
            }
        return torch.cat([radial, angular], dim=1), geometry

    @torch.jit.unused
    def vector_jacobian_many(
        self,
        species: torch.Tensor,
        pairs: torch.Tensor,
        vectors: torch.Tensor,
        distances: torch.Tensor,
        g: torch.Tensor,
        first_center: int = 0,
        n_centers: int = -1,
        geometry: Dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """dE_k/d(pair vector) (K, P, 3) for K gradients ``g`` (K, n_centers, length) = dE_k/dAEV.

        The backward of :meth:`forward` (same arguments; ``distances`` must be
        ``|vectors|``: the result is the total derivative through both) for K
        energies at once, in closed form: the derivative factors of every pair
        and triple are computed once, and only their contractions with ``g``
        are K-fold. ``geometry``: :meth:`forward_with_geometry`'s, to skip
        recomputing it. Equal to autograd's vector-Jacobian product (the clamp of
        the radial exp argument at -80 has zero slope, as in autograd). No graph.
        """
        with torch.no_grad():
            if geometry is None:
                geometry = self.forward_with_geometry(species, pairs, vectors, distances, first_center, n_centers)[1]
            n = int(geometry["n_centers"])
            if g.dim() != 3 or g.shape[1] != n or g.shape[2] != self.length:
                raise ValueError(f"g has shape {tuple(g.shape)}; expected (K, {n}, {self.length})")
            return self._vector_jacobian_many(vectors, distances, g.contiguous(), geometry, 0).transpose(1, 2).contiguous()

    def _vector_jacobian_many(
        self, vectors: torch.Tensor, distances: torch.Tensor, g: torch.Tensor, geometry: Dict[str, torch.Tensor], row0: int
    ) -> torch.Tensor:
        """:meth:`vector_jacobian_many`, feature-major: (K, 3, P), with the gradients of center c
        in row ``row0 + c`` of the contiguous g (K, >= row0 + n_centers, L). Nothing requires grad."""
        n_k, width = g.shape[0], g.shape[2]
        dtype = g.dtype
        n_radial = self.radial_shifts.shape[0]
        n_ang_radial = self.angular_radial_shifts.shape[0]
        n_angle = self.angle_shifts.shape[0]
        n_cols = n_ang_radial * n_angle
        rows = row0 + int(geometry["n_centers"])
        if width != self.length or not g.is_contiguous() or g.shape[1] < rows:
            raise ValueError(f"g has shape {tuple(g.shape)}; expected a contiguous (K, >= {rows}, {self.length})")
        # Layout as in the forward: K-fold terms are (K, n_features, P) and (K, n_features, T),
        # so every product and every sum over features runs over long contiguous rows.
        flat = g.view(n_k, -1)  # g[k, row0 + c, col] = flat[k, (row0 + c) * L + col]

        # --- radial: R[c, s_j, r] += 0.25 e_r fc(d), e_r = exp(max(-eta (d - Rs_r)^2, -80)), so
        # dR/dd = 0.25 e_r (fc'(d) + fc(d) (-2 eta (d - Rs_r)) [0 where clamped]).
        d = distances
        rc = self.radial_cutoff
        inside = d < rc
        phase = d * (math.pi / rc)
        zero = torch.zeros_like(d)
        fc = torch.where(inside, 0.5 * (torch.cos(phase) + 1.0), zero)
        dfc = torch.where(inside, (-0.5 * math.pi / rc) * torch.sin(phase), zero)
        slope = (d[None, :] - self.radial_shifts.to(dtype)[:, None]) * (-2.0 * self.radial_eta)
        slope = torch.where(geometry["radial_arg"] >= -80.0, slope, torch.zeros_like(slope))
        d_radial = (0.25 * geometry["radial_exp"]) * (dfc[None, :] + fc[None, :] * slope)  # (n_radial, P)
        # c L + s_j n_radial, from the radial bin c S + s_j
        offsets = geometry["radial_bins"] * n_radial + geometry["centers"] * (width - self.radial_length) + row0 * width
        g_pairs = _gather_columns(flat, offsets, n_radial)  # (K, n_radial, P)
        dd = (g_pairs * d_radial[None]).sum(1)  # (K, P): dE/d(distance), radial part

        # --- angular: A[c, sp, r, s] += f_rad[r, t] f_ang[s, t] over the triples t = (a, b) of close pairs:
        # f_rad = exp(-eta_A (mean_d - Rs_r)^2) 2 fc(d_a) fc(d_b), f_ang = base_s^zeta,
        # base_s = 0.5 + 0.5 (cos(s) c + sin(s) sqrt(1 - c^2)), c = 0.95 u_a.u_b.
        close = geometry["close"]
        first = geometry["first"]
        second = geometry["second"]
        unit = geometry["unit"]  # (3, Pc)
        n_triples = first.shape[0]
        dv_close = torch.zeros((n_k, 3, close.shape[0]), dtype=dtype, device=g.device)
        if n_triples > 0:
            rca = self.angular_cutoff
            d_close = d[close]
            fc_close = geometry["fc_close"]
            dfc_close = (-0.5 * math.pi / rca) * torch.sin(d_close * (math.pi / rca))  # close pairs are all inside
            fa, fb = fc_close[first], fc_close[second]
            dfa, dfb = dfc_close[first], dfc_close[second]
            cos_t = geometry["cos"]
            shifts = self.angle_shifts.to(dtype)
            # d f_ang / dc (n_angle, T), with d sqrt(1 - c^2)/dc = -c / sqrt(1 - c^2), and
            # zeta base^(zeta - 1) as zeta f_ang / base: base > 0.02, as |theta' - theta_s| < pi - acos(0.95)
            d_base = 0.5 * (torch.cos(shifts)[:, None] - torch.sin(shifts)[:, None] * (cos_t / geometry["sin"])[None, :])
            d_angle = (geometry["f_angle"] / geometry["angle_base"]) * d_base * self.angular_zeta
            e_ang = geometry["angular_exp"]  # (n_ang_radial, T)
            f_rad = e_ang * (2.0 * fa * fb)[None, :]
            # d e_r / d(mean_d) / e_r, where d(mean_d)/d(d_a) = 1/2
            e_slope = e_ang * ((geometry["mean_d"][None, :] - self.angular_radial_shifts.to(dtype)[:, None]) * (-self.angular_eta))
            # g at each triple's columns (K, n_ang_radial, n_angle, T), contracted over the angle sections
            # with f_ang and d f_ang/dc (the only (K, 32, T) work), then over the radial shifts;
            # in blocks of triples, so that these temporaries stay cache-sized
            offsets = (geometry["close_centers"][first] + row0) * width + self.radial_length + geometry["species_pair"] * n_cols
            f_angle = geometry["f_angle"]
            x_cos = torch.empty((n_k, n_triples), dtype=dtype, device=g.device)  # dE/dc
            y1 = torch.empty_like(x_cos)  # sum over (r, s) of g e_r f_ang
            y2 = torch.empty_like(x_cos)  # the same with e_r's slope
            step = max(1, self.backward_block // (n_k * n_cols))
            for t0 in range(0, n_triples, step):
                t1 = min(t0 + step, n_triples)
                g_triples = _gather_columns(flat, offsets[t0:t1], n_cols).view(n_k, n_ang_radial, n_angle, t1 - t0)
                h = (g_triples * f_angle[None, None, :, t0:t1]).sum(2)  # (K, n_ang_radial, block)
                m = (g_triples * d_angle[None, None, :, t0:t1]).sum(2)
                x_cos[:, t0:t1] = (m * f_rad[None, :, t0:t1]).sum(1)
                y1[:, t0:t1] = (h * e_ang[None, :, t0:t1]).sum(1)
                y2[:, t0:t1] = (h * e_slope[None, :, t0:t1]).sum(1)
            # dE/d(d_a) = 2 fc_b (fc'_a y1 + fc_a y2), and d_b alike
            x_a = (2.0 * fb)[None, :] * (dfa[None, :] * y1 + fa[None, :] * y2)
            x_b = (2.0 * fa)[None, :] * (dfb[None, :] * y1 + fb[None, :] * y2)
            # dc/dv_a = 0.95 (u_b - (u_a.u_b) u_a) / d_a: w_a u_b plus -w_a (u_a.u_b) along u_a
            cos_ab = cos_t / 0.95
            w_a = x_cos * (0.95 / d_close[first])[None, :]
            w_b = x_cos * (0.95 / d_close[second])[None, :]
            dd_close = torch.zeros((n_k, close.shape[0]), dtype=dtype, device=g.device)
            dd_close = dd_close.index_add(1, first, x_a - w_a * cos_ab[None, :])
            dd_close = dd_close.index_add(1, second, x_b - w_b * cos_ab[None, :])
            dd = dd.index_add(1, close, dd_close)
            # (index_add over the last dim of 2-d views: several times faster than of (K, 3, T))
            flat_close = dv_close.view(n_k * 3, -1)
            flat_close.index_add_(1, first, (w_a[:, None, :] * unit[:, second][None]).reshape(n_k * 3, -1))
            flat_close.index_add_(1, second, (w_b[:, None, :] * unit[:, first][None]).reshape(n_k * 3, -1))
        direction = (vectors / d[:, None]).t().contiguous()  # (3, P)
        out = dd[:, None, :] * direction[None]
        if n_triples > 0:
            out.view(n_k * 3, -1).index_add_(1, close, dv_close.view(n_k * 3, -1))
        return out


def _power(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """``x ** exponent``; by repeated squaring for integer exponents up to 64 (zeta = 32: five
    multiplications, ~4x faster than pow's general path, and its backward is autograd's product rule)."""
    n = int(exponent)
    if float(n) != exponent or n < 1 or n > 64:
        return torch.pow(x, exponent)
    result = torch.ones_like(x)
    first = True
    while n > 0:
        if n & 1:
            result = x if first else result * x
            first = False
        n >>= 1
        if n > 0:
            x = x * x
    return result


def _gather_columns(flat: torch.Tensor, offsets: torch.Tensor, length: int) -> torch.Tensor:
    """(K, length, M): ``flat[:, o:o + length]`` for every offset o in ``offsets`` (M,), feature-major."""
    index = (offsets[None, :] + torch.arange(length, device=offsets.device)[:, None]).view(1, -1)
    # gather: about twice as fast as index_select along dim 1 here
    return torch.gather(flat, 1, index.expand(flat.shape[0], -1)).view(flat.shape[0], length, offsets.shape[0])
