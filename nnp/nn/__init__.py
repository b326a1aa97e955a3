"""Shared building blocks: cutoff functions, radial bases, scatter ops, MLPs."""

from nnp.nn.cutoff import CosineCutoff, PolynomialCutoff, build_cutoff
from nnp.nn.radial import BesselRBF, GaussianRBF, InverseGaussianRBF, build_radial_basis
from nnp.nn.scatter import scatter_sum
from nnp.nn.mlp import ElementwiseMLP, build_mlp, build_activation, ShiftedSoftplus

__all__ = [
    "CosineCutoff",
    "PolynomialCutoff",
    "build_cutoff",
    "BesselRBF",
    "GaussianRBF",
    "InverseGaussianRBF",
    "build_radial_basis",
    "scatter_sum",
    "ElementwiseMLP",
    "build_mlp",
    "build_activation",
    "ShiftedSoftplus",
]
