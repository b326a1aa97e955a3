"""nnp: neural network potentials from the command line.

Python entry points: :class:`nnp.Potential` (load/save, energies and forces)
and :class:`nnp.NNPCalculator` (an ASE calculator).
"""

__version__ = "0.1.0"


def __getattr__(name):  # lazy: keep `import nnp` (and the CLI's start) fast
    if name == "NNPCalculator":
        from nnp.calculator import NNPCalculator

        return NNPCalculator
    if name == "Potential":
        from nnp.potential import Potential

        return Potential
    raise AttributeError(name)


__all__ = ["NNPCalculator", "Potential", "__version__"]
