"""D3(BJ) dispersion through the ``dftd3`` package (simple-dftd3; ``pip install 'nnp[d3]'``).

    E_disp = -sum_{i<j} sum_{n=6,8} s_n C_n^ij / (r_ij^n + (a1 R0_ij + a2)^n)   (+ three-body ATM, s9)

Grimme, Ehrlich, Goerigk, J. Comput. Chem. 32, 1456 (2011). The package
computes the energy, its analytic gradient and virial (Hartree, bohr; converted
here with :mod:`nnp.units`' ASE constants). It sits outside autograd, so a
custom autograd function hands its gradient back: forces and stress come out
of :class:`~nnp.potential.Potential` like every other term's. Second
derivatives through it are zero (it has no parameters, so training on forces
is unaffected); it does not compile to TorchScript, so ``nnp export`` refuses
models that have it (one line), rather than exporting them without it.

Parameters: ``functional`` names the package's BJ table entry (``pbe``,
``b3lyp``, ``wb97x``, ...); ``s6``, ``s8``, ``a1``, ``a2``, ``s9`` override it.
``in_labels``: true when the training labels already contain D3 (the network
then learns the rest; the term is in the prediction throughout), false when
they do not (the term is left out while fitting and added at inference).
Chosen over a TorchScript port (which needs the package's reference C6 tables)
because it is the reference itself and fast (about 0.07 ms for aspirin);
tests/test_terms.py checks the conversions: energy to 1e-6 eV, forces to the
package's gradient, stress to finite differences.
"""

from typing import Any, Dict

import numpy as np
import torch

from nnp import keys
from nnp.terms.base import EnergyTerm

INSTALL = "D3 dispersion needs the dftd3 package: pip install 'nnp[d3]'"
PARAMETERS = ("s6", "s8", "a1", "a2", "s9")


def damping_parameters(functional: str, overrides: Dict[str, Any]):
    """The package's ``RationalDampingParam`` for ``functional`` with ``overrides``; NNPError for a name it does not know."""
    from nnp.errors import NNPError

    try:
        from dftd3.interface import RationalDampingParam
    except ImportError:
        raise NNPError(INSTALL) from None
    given = {k: float(v) for k, v in overrides.items() if v is not None}
    try:
        if functional in (None, "", "none"):
            missing = [k for k in ("s8", "a1", "a2") if k not in given]
            if missing:
                raise NNPError(f"terms.d3: without a functional give s8, a1 and a2 (missing {', '.join(missing)})")
            return RationalDampingParam(**{"s6": 1.0, "s9": 1.0, **given})
        return RationalDampingParam(method=str(functional).lower(), **given)
    except RuntimeError as err:
        raise NNPError(f"terms.d3.functional={functional}: not in dftd3's D3(BJ) table ({err}); e.g. pbe, b3lyp, wb97x, or give s8, a1, a2") from None


class _Dispersion(torch.autograd.Function):
    """Energy (eV, scalar) of one structure by dftd3; backward: its gradient (and cell derivative)."""

    @staticmethod
    def forward(ctx, positions, cell, numbers, periodic, param):
        from ase.units import Bohr, Hartree
        from dftd3.interface import DispersionModel

        pos = positions.detach().cpu().double().numpy()
        lat = cell.detach().cpu().double().numpy()
        model = DispersionModel(numbers, pos / Bohr, lat / Bohr if periodic.any() else None, periodic if periodic.any() else None)
        res = model.get_dispersion(param, grad=True)
        gradient = torch.from_numpy(res["gradient"] * (Hartree / Bohr)).to(positions)
        if periodic.any():
            # dE/dcell at fixed Cartesian positions from the strain derivative W (the virial):
            # W = R^T g + cell^T G  ->  G = cell^-T (W - R^T g)
            virial = res["virial"] * Hartree
            g_cell = np.linalg.solve(lat.T, virial - pos.T @ (res["gradient"] * (Hartree / Bohr)))
            d_cell = torch.from_numpy(g_cell).to(cell)
        else:
            d_cell = torch.zeros_like(cell)
        ctx.save_for_backward(gradient, d_cell)
        return torch.tensor(res["energy"] * Hartree, dtype=positions.dtype, device=positions.device)

    @staticmethod
    def backward(ctx, grad):
        gradient, d_cell = ctx.saved_tensors
        return grad * gradient, grad * d_cell, None, None, None


class D3(EnergyTerm):
    """D3(BJ) dispersion per structure by the dftd3 package (not scriptable: export refuses it)."""

    def __init__(self, functional: str = "pbe", in_labels: bool = True, **overrides):
        super().__init__("d3", in_labels=in_labels, scriptable=False)
        from nnp.errors import NNPError

        unknown = sorted(set(overrides) - set(PARAMETERS))
        if unknown:
            raise NNPError(f"terms.d3: unknown setting {unknown[0]!r}; settings: functional, in_labels, {', '.join(PARAMETERS)}")
        self.functional = None if functional is None else str(functional)
        self.overrides = {k: (None if v is None else float(v)) for k, v in overrides.items()}
        self.param = damping_parameters(self.functional, self.overrides)

    @torch.jit.unused
    def settings(self) -> Dict[str, Any]:
        return {"functional": self.functional, "in_labels": self.in_labels, **self.overrides}

    @torch.jit.unused
    def forward(self, inputs: Dict[str, torch.Tensor], out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        positions, cells, pbc = inputs[keys.R], inputs[keys.CELL], inputs[keys.PBC]
        numbers = inputs[keys.Z].cpu().numpy()
        counts = inputs[keys.N_ATOMS].tolist()
        energies = []
        start = 0
        for m, n in enumerate(counts):
            periodic = pbc[m].cpu().numpy()
            energies.append(_Dispersion.apply(positions[start:start + n], cells[m], numbers[start:start + n], periodic, self.param))
            start += n
        return {"energy": torch.stack(energies)}
