"""Shared building blocks: cutoff functions, radial bases, scatter ops, MLPs."""

from nnp.nn.cutoff import CosineCutoff, PolynomialCutoff, build_cutoff
from nnp.nn.mlp import ElementwiseMLP, ShiftedSoftplus, build_activation, build_mlp
from nnp.nn.radial import BesselRBF, GaussianRBF, InverseGaussianRBF, build_radial_basis
from nnp.nn.scatter import halve_pairs, pair_halves, scatter_max, scatter_sum

__all__ = [
    "CosineCutoff",
    "PolynomialCutoff",
    "build_cutoff",
    "BesselRBF",
    "GaussianRBF",
    "InverseGaussianRBF",
    "build_radial_basis",
    "scatter_max",
    "scatter_sum",
    "halve_pairs",
    "pair_halves",
    "ElementwiseMLP",
    "build_mlp",
    "build_activation",
    "ShiftedSoftplus",
]
