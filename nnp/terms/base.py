"""What every energy term is: a module on the flat batch that adds an energy per structure.

A term reads the potential's inputs (``keys.SPECIES``, ``keys.Z``, strained
``keys.R`` (N, 3) Å and ``keys.CELL`` (M, 3, 3) Å, ``keys.PBC``, ``keys.IDX_M``,
``keys.N_ATOMS``, ``keys.TOTAL_CHARGE`` (M,) e, and the model's pairs within
its cutoff) and the model's outputs (``keys.ATOM_FEATURES``), and returns
``{"energy": (M,) eV}`` plus whatever else it has to say (``keys.CHARGES``,
``keys.DIPOLE``). :class:`~nnp.potential.Potential` sums the energies, so
forces and stress (autograd through the strained positions and cell), export
and MD need nothing more.

``in_labels`` says whether the training labels contain the term: a term that
is not in the labels (``terms.d3.in_labels=false``) is left out while fitting
and added at inference. ``scriptable``: whether the term compiles to
TorchScript (``nnp export`` refuses models with a term that does not).
"""

# No ``from __future__ import annotations``: TorchScript reads these annotations.
from typing import Any, Dict

import torch
from torch import nn


class EnergyTerm(nn.Module):
    """Base class: subclasses set ``name`` and implement ``forward`` and :meth:`settings`."""

    name: str
    in_labels: bool
    scriptable: bool

    def __init__(self, name: str, in_labels: bool = True, scriptable: bool = True):
        super().__init__()
        self.name = name
        self.in_labels = bool(in_labels)
        self.scriptable = bool(scriptable)

    @torch.jit.unused
    def settings(self) -> Dict[str, Any]:
        """The term's parameters, as stored in the model file and given back to its builder."""
        raise NotImplementedError

    def forward(self, inputs: Dict[str, torch.Tensor], out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


def smooth_step(x: torch.Tensor) -> torch.Tensor:
    """1 for x <= 0, 0 for x >= 1, and 1 - 10x^3 + 15x^4 - 6x^5 between: C2 (forces and their
    derivative continuous) at both ends."""
    t = x.clamp(0.0, 1.0)
    return 1.0 - t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)
