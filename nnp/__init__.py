"""nnp: neural network potentials from the command line.

Python entry points: :class:`nnp.Potential` (load/save, energies and forces),
:class:`nnp.Committee` and :func:`nnp.load_model` (a model file, a committee
file or a list of files) and :class:`nnp.NNPCalculator` (an ASE calculator).
"""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: keep `import nnp` (and the CLI's start) fast
    if name == "NNPCalculator":
        from nnp.calculator import NNPCalculator

        return NNPCalculator
    if name == "Potential":
        from nnp.potential import Potential

        return Potential
    if name in ("Committee", "load_model"):
        from nnp import committee

        return getattr(committee, name)
    raise AttributeError(name)


__all__ = ["Committee", "NNPCalculator", "Potential", "load_model", "__version__"]
