"""The interface every architecture implements."""

# No ``from __future__ import annotations`` here: TorchScript reads the class
# annotations below as real types when it scripts a model.
from typing import Dict, List

import torch
from torch import nn


class AtomisticModel(nn.Module):
    """Maps atomic environments to per-atom energies.

    ``forward(inputs: Dict[str, Tensor]) -> Dict[str, Tensor]`` reads
    ``keys.SPECIES`` (N,), ``keys.PAIRS`` (2, P), ``keys.PAIR_VECTORS`` (P, 3),
    ``keys.PAIR_DISTANCES`` (P,), ``keys.IDX_M`` (N,), ``keys.N_ATOMS`` (M,),
    and returns at least ``keys.ATOMIC_ENERGY`` (N,): a dimensionless
    network output that the :class:`~nnp.potential.Potential` scales and
    shifts to eV. Models never compute forces; the potential does, once.

    Constructors take ``species`` (sorted atomic numbers) first, then their
    hyperparameters as keyword arguments (the model config minus ``name``).
    Attributes every model sets: ``cutoff`` (Å, the largest pair distance it
    reads) and ``n_species``. Models also return ``keys.ATOM_FEATURES`` (N, F),
    the per-atom features their energy is read from (F = ``n_atom_features``),
    which term heads read (the charges of :mod:`nnp.terms.coulomb`).
    """

    cutoff: float
    n_species: int
    n_atom_features: int

    @torch.jit.unused
    def parameter_groups(self) -> Dict[str, List[str]]:
        """Named groups of this architecture's parameters: group -> parameter names
        (as ``named_parameters()`` gives them). ``nnp train finetune.freeze=[...]``
        freezes groups by these names; groups may overlap, and together they cover
        every parameter. Each architecture overrides this."""
        raise NotImplementedError(f"{type(self).__name__} names no parameter groups")


def groups_by_prefix(model: nn.Module, prefixes: Dict[str, str]) -> Dict[str, List[str]]:
    """Parameter groups of ``model`` by the submodule each parameter lives in:
    group -> names of the parameters under ``prefixes[group]`` (a submodule path)."""
    names = [name for name, _ in model.named_parameters()]
    return {group: [n for n in names if n.startswith(prefix + ".")] for group, prefix in prefixes.items()}
