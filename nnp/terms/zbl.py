"""ZBL: the universal screened nuclear repulsion (Ziegler, Biersack, Littmark 1985).

    E = 1/2 sum_{i != j} k_e Z_i Z_j / r_ij * phi(r_ij / a_ij) * s(r_ij)        eV
    a_ij = 0.46850 Å / (Z_i^0.23 + Z_j^0.23)
    phi(x) = 0.18175 e^{-3.19980 x} + 0.50986 e^{-0.94229 x} + 0.28022 e^{-0.40290 x} + 0.02817 e^{-0.20162 x}

``s(r)`` switches the repulsion off between ``inner * (R_i + R_j)`` and
``outer * (R_i + R_j)``, with R the covalent radii of ASE (Cordero 2008), by
the C2 polynomial :func:`~nnp.terms.base.smooth_step`: below ``inner`` the
full repulsion, above ``outer`` nothing, so near-equilibrium bonds are left to
the network and only geometries the data never has (atoms nearly on top of
each other) are pushed apart. The pairs are the model's own (the switch ends
well inside every model cutoff; checked at build).
"""

from typing import Any, Dict, List

import torch

from nnp import keys
from nnp.nn import scatter_sum
from nnp.terms.base import EnergyTerm, smooth_step

ZBL_A0 = 0.46850  # Å (0.8854 bohr)
ZBL_COEFFS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)


class ZBL(EnergyTerm):
    """Screened nuclear repulsion on the model's pairs, switched off between inner and outer radii."""

    def __init__(self, species, cutoff: float, inner: float = 0.5, outer: float = 0.8, in_labels: bool = True):
        """``species``: sorted atomic numbers; ``cutoff``: the model's (Å); ``inner`` < ``outer``:
        fractions of the sum of two atoms' covalent radii where the switch starts and ends."""
        super().__init__("zbl", in_labels=True)
        from ase.data import covalent_radii

        from nnp.errors import NNPError
        from nnp.units import COULOMB_CONSTANT

        if not 0.0 <= inner < outer:
            raise NNPError(f"terms.zbl: need 0 <= inner < outer, got inner={inner}, outer={outer}")
        self.inner = float(inner)
        self.outer = float(outer)
        self.k_e = float(COULOMB_CONSTANT)
        self.a0 = ZBL_A0
        radii = [float(covalent_radii[z]) for z in species]
        widest = 2.0 * max(radii) * self.outer
        if widest >= cutoff:
            raise NNPError(f"terms.zbl.outer={outer}: the switch would end at {widest:.2f} Å, beyond the model cutoff {cutoff} Å")
        self.register_buffer("z", torch.tensor([float(z) for z in species]))
        self.register_buffer("radius", torch.tensor(radii))
        # Python floats, not buffers: exact in float64 whatever dtype the model was built in
        self.coeffs: List[float] = list(ZBL_COEFFS)
        self.exponents: List[float] = list(ZBL_EXPONENTS)

    @torch.jit.unused
    def settings(self) -> Dict[str, Any]:
        return {"inner": self.inner, "outer": self.outer}

    def forward(self, inputs: Dict[str, torch.Tensor], out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        species = inputs[keys.SPECIES]
        pairs = inputs[keys.PAIRS]
        r = inputs[keys.PAIR_DISTANCES]
        si, sj = species[pairs[0]], species[pairs[1]]
        rsum = (self.radius[si] + self.radius[sj]).to(r.dtype)
        r_in, r_out = self.inner * rsum, self.outer * rsum
        near = r < r_out  # only these pairs cost anything
        energy = torch.zeros(inputs[keys.N_ATOMS].shape[0], dtype=r.dtype, device=r.device)
        if bool(near.any()):
            idx = torch.nonzero(near).flatten()
            r = r.index_select(0, idx)
            si, sj = si.index_select(0, idx), sj.index_select(0, idx)
            zi, zj = self.z[si].to(r.dtype), self.z[sj].to(r.dtype)
            a = self.a0 / (zi.pow(0.23) + zj.pow(0.23))
            x = r / a
            phi = torch.zeros_like(x)
            for c, b in zip(self.coeffs, self.exponents):
                phi = phi + c * torch.exp(-b * x)
            switch = smooth_step((r - r_in.index_select(0, idx)) / (r_out - r_in).index_select(0, idx))
            pair = 0.5 * self.k_e * zi * zj / r * phi * switch  # half: both directions are listed
            centers = pairs[0].index_select(0, idx)
            energy = scatter_sum(pair, inputs[keys.IDX_M].index_select(0, centers), energy.shape[0])
        return {"energy": energy}
