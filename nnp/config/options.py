"""Options of the commands that are not Hydra apps (``nnp export``, ``nnp data``).

They take ``key=value`` arguments too, declared here as dataclasses and
checked by the same checker as the Hydra configs, so a bad value reads the
same everywhere: ``nnp export: dtype=float16: one of float32, float64``.

Values are read as plain text, not with Hydra's override grammar: data-set
keys such as ``ccsd(t)_cbs.energy`` must pass unquoted. Text becomes the
declared type: ``true``/``false``, numbers, ``null``, and ``[a.pt,b.pt]`` for
a list of files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, get_origin, get_type_hints

from nnp.config.fields import rule_of, setting
from nnp.config.schema import (
    ACTIVATIONS,
    DTYPES,
    REQUIRED_CKPT,
    energy_units,
    is_ckpt,
    length_units,
)
from nnp.config.validate import conforms, describe, union_args
from nnp.errors import NNPError

_NULL = ("null", "none", "~")


@dataclass
class ExportOptions:
    ckpt: Any = setting(None, check=is_ckpt, allowed="a model file, or a list of model files [a.pt,b.pt]", required=REQUIRED_CKPT)
    output: str | None = setting(None, hint="null: the model path with suffix .ts")
    dtype: str | None = setting(None, choices=DTYPES, hint="null: the model's own")
    check: bool = setting(True)
    overwrite: bool = setting(False)
    format: str = setting("torchscript", choices=("torchscript", "openmm"),
                          hint="openmm: an OpenMM-Torch TorchForce module (nm, kJ/mol) for input='s elements")
    input: str | None = setting(None, hint="format=openmm: the system (its elements, and its cell when periodic)")


@dataclass
class LammpsOptions:
    ckpt: Any = setting(None, check=is_ckpt, allowed="a model file, or a list of model files [a.pt,b.pt]", required=REQUIRED_CKPT)
    input: str = setting(None, required="input=in.lmp")
    elements: Any = setting(None, check=lambda v: isinstance(v, list) and len(v) > 0 and all(isinstance(e, str) and e for e in v),
                            allowed="a list of element symbols, one per LAMMPS atom type: [Cu] or [C,H,O]",
                            required="elements=[Cu]")
    fix_id: str = setting("nnp")
    log: str = setting("log.lammps", hint="none: no log file")
    device: str = setting("cpu")
    dtype: str | None = setting(None, choices=DTYPES, hint="null: the model's own")
    threads: int | None = setting(None, ge=1, hint="null: torch's default")


@dataclass
class CombineOptions:
    output: str = setting(None, required="output=committee.pt")
    overwrite: bool = setting(False)


@dataclass
class ImportOptions:
    output: str = setting(None, required="output=ani2x.pt")
    overwrite: bool = setting(False)
    dtype: str = setting("float32", choices=DTYPES)
    elements: list[str] | None = setting(None, hint="the element networks' order, e.g. [H,C,N,O]; null: from the file")
    activation: str = setting("celu", choices=ACTIVATIONS, hint="the networks' activation (ANI: CELU(0.1))")
    radial_cutoff: float | None = setting(None, gt=0, hint="Å; null: from the radial shifts")
    angular_cutoff: float | None = setting(None, gt=0, hint="Å; null: from the angular shifts")


@dataclass
class PrepareQM9Options:
    out: str = setting(None, required="out=qm9.h5")
    source: str | None = setting(None)
    atomref: str | None = setting(None)
    download_dir: str | None = setting(None)
    overwrite: bool = setting(False)


@dataclass
class PrepareANI1xOptions:
    out: str = setting(None, required="out=ani1x.h5")
    source: str | None = setting(None)
    energy_key: str = setting("wb97x_dz.energy")
    forces_key: str | None = setting("wb97x_dz.forces", hint="null: energy only")
    download_dir: str | None = setting(None)
    overwrite: bool = setting(False)


@dataclass
class InfoOptions:
    format: str | None = setting(None, choices=("hdf5", "ase"), hint="null: from the file extension")
    energy_key: str | None = setting(None)
    forces_key: str | None = setting(None, hint="null: no forces")
    group_key: str | None = setting(None)
    energy_unit: str | None = setting(None, choices=energy_units, ignore_case=True)
    length_unit: str | None = setting(None, choices=length_units, ignore_case=True)
    max_force: float = setting(10.0, gt=0, hint="eV/Å")
    min_distance: float = setting(0.5, ge=0, hint="Å")
    json: str | None = setting(None)


def _from_text(text: str, tp: Any) -> Any:
    """The value ``text`` stands for, given the declared type (unreadable text stays text,
    so the check names what is allowed)."""
    args = union_args(tp)
    if text.strip().lower() in _NULL and (tp is Any or (args is not None and type(None) in args)):
        return None
    inner = [a for a in args if a is not type(None)] if args else [tp]
    if bool in inner:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
    for number in (int, float):
        if number in inner:
            try:
                return number(text)
            except ValueError:
                pass
    if (Any in inner or any(get_origin(a) is list for a in inner)) and text.startswith("[") and text.endswith("]"):
        return [item.strip().strip("'\"") for item in text[1:-1].split(",") if item.strip()]
    return text


def parse_options(command: str, cls: type, argv: Sequence[str]) -> dict[str, Any]:
    """``key=value`` arguments -> the options given, typed and checked.

    Only the keys given are returned (the functions called keep their defaults).
    ``command`` names the command in errors ("nnp export").
    """
    declared = {f.name: f for f in fields(cls)}
    hints = get_type_hints(cls)
    out: dict[str, Any] = {}
    for arg in argv:
        key, sep, text = arg.partition("=")
        key = key.lstrip("+")
        if not sep:
            raise NNPError(f"{command}: {arg}: expected key=value; options: {', '.join(declared)}")
        if key not in declared:
            raise NNPError(f"{command}: {arg}: unknown option {key!r}; options: {', '.join(declared)}")
        value, rule = _from_text(text, hints[key]), rule_of(declared[key])
        if not conforms(value, hints[key], rule):  # named as typed: max_force=-1, not -1.0
            raise NNPError(f"{command}: {key}={text}: {describe(hints[key], rule)}")
        out[key] = value
    for key, f in declared.items():
        if rule_of(f).required and out.get(key) in (None, ""):
            raise NNPError(f"{command}: {key} is not set: e.g. {rule_of(f).required}")
    return out


__all__ = ["CombineOptions", "ExportOptions", "ImportOptions", "InfoOptions", "PrepareANI1xOptions", "PrepareQM9Options", "command_options", "parse_options"]


def command_options(command: str, cls: type, argv: Sequence[str] | None, usage: str) -> dict[str, Any] | None:
    """A plain command's ``key=value`` arguments, checked (:func:`parse_options`); None after printing
    ``usage`` for ``-h``/``--help``/``help``. ``argv`` None: the process's own arguments."""
    import sys

    from nnp.report import console

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        console.print(usage, markup=False, highlight=False)
        return None
    return parse_options(command, cls, argv)
