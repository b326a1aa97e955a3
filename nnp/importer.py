"""``nnp import FORMAT FILE output=OUT.pt``: another code's model as an nnp model file.

    nnp import torchani ani2x_state.pt output=ani2x.pt [dtype=float64] [overwrite=true]

The result is an ordinary nnp model file (a committee file for an ensemble), usable
everywhere a model is taken: ``predict``, ``evaluate``, ``md``, ``export``,
committees and ``nnp train finetune.from=``. Formats are named choices of
:data:`IMPORTERS` below (converters in :mod:`nnp.interop`; the registry lives with
this command so that :mod:`nnp.registry`, which the model layers import, never imports them back).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnp.errors import NNPError
from nnp.registry import Registry
from nnp.report import console

# builder(path, options) -> a Potential or Committee; options: the checked ``nnp import`` options
IMPORTERS = Registry("model format", "nnp import")


@IMPORTERS.register("torchani")
def _torchani(path, options: Mapping[str, Any]):
    import torch

    from nnp.interop.torchani import convert

    return convert(
        path, elements=options.get("elements"), activation=options.get("activation") or "celu",
        radial_cutoff=options.get("radial_cutoff"), angular_cutoff=options.get("angular_cutoff"),
        dtype=getattr(torch, options.get("dtype") or "float32"),
    )

USAGE = """usage: nnp import FORMAT FILE output=OUT.pt [overwrite=true] [dtype=float32|float64] [...]

Convert a model saved by another code into an nnp model file (a committee file for an ensemble).
formats:
  torchani  a TorchANI model's state_dict (ANI-1x, ANI-2x, ANI-1ccx, their ensembles, or your own
            ANI model with CELU networks), TorchANI 2.x or legacy layout; TorchANI is not needed
options:
  output          the nnp model file to write (required)
  overwrite       replace an existing output file (default: false)
  dtype           float32 (default, as TorchANI's weights) or float64
  elements        the element networks' order when the file does not name them, e.g. [H,C,N,O]
  activation      the networks' activation (default: celu, ANI's CELU(0.1))
  radial_cutoff, angular_cutoff   Å (default: from the evenly spaced AEV shifts, as TorchANI sets them)"""


def main(argv: list[str] | None = None) -> int:
    from nnp.config.options import ImportOptions, parse_options
    from nnp.outputs import check_writable

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        console.print(USAGE, markup=False, highlight=False)
        return 0
    fmt, rest = argv[0], argv[1:]
    if fmt not in IMPORTERS:
        raise NNPError(f"nnp import: unknown format {fmt!r}; formats: {', '.join(IMPORTERS.names())}")
    files = [a for a in rest if "=" not in a]
    if len(files) != 1:
        raise NNPError(f"nnp import {fmt}: give one model file to convert (got {len(files)}); see nnp import --help")
    options = parse_options(f"nnp import {fmt}", ImportOptions, [a for a in rest if "=" in a])
    source, output = Path(files[0]), Path(options["output"])
    if output.resolve() == source.resolve():
        raise NNPError(f"nnp import: output {output} would overwrite the file being converted")
    check_writable(output, bool(options.get("overwrite", False)))  # before any work
    model = IMPORTERS.get(fmt)(source, options)
    from ase.data import chemical_symbols

    from nnp.committee import Committee

    if isinstance(model, Committee):
        model.save(output)
        kind = f"committee of {model.n_members} members"
    else:
        model.save(output, model.metadata)
        kind = "single model"
    elements = ", ".join(chemical_symbols[z] for z in model.species)
    console.print(f"wrote {output}: {fmt} model -> nnp ANI {kind}; elements {elements}; cutoff {model.cutoff} Å", markup=False)
    return 0
