"""``nnp data``: prepare public data sets and inspect data files.

    nnp data prepare qm9 out=qm9.h5 [source=dsgdb9nsd.xyz.tar.bz2] [atomref=atomref.txt] [download_dir=DIR] [overwrite=true]
    nnp data prepare ani1x out=ani1x.h5 [source=ani1x-release.h5] [energy_key=wb97x_dz.energy] [forces_key=wb97x_dz.forces|null] [download_dir=DIR] [overwrite=true]
    nnp data info FILE [format=hdf5|ase] [energy_key=K] [forces_key=K|null] [group_key=smiles] [energy_unit=hartree] [length_unit=angstrom] [max_force=10] [min_distance=0.5] [json=PATH] [--json]

Without ``source=`` the official files are downloaded (into ``download_dir``,
default: beside ``out``) and checked against their published checksums.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nnp.errors import NNPError

USAGE = __doc__.split("\n\n")[1].rstrip()


def _option_schemas() -> dict[str, type]:
    """Declared options of each command (:mod:`nnp.config.options`): types, ranges, choices."""
    from nnp.config.options import InfoOptions, PrepareANI1xOptions, PrepareQM9Options

    return {"qm9": PrepareQM9Options, "ani1x": PrepareANI1xOptions, "info": InfoOptions}


def parse_options(command: str, args: list[str]) -> dict[str, Any]:
    """``key=value`` arguments -> typed options; NNPError (one line: key, value, what is allowed)
    on unknown keys or bad values. Only the options given are returned."""
    from nnp.config.options import parse_options as parse

    label = "nnp data info" if command == "info" else f"nnp data prepare {command}"
    return parse(label, _option_schemas()[command], args)


def _prepare(args: list[str]) -> int:
    from nnp.data.prepare import PREPARERS

    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    name, rest = args[0], args[1:]
    if name not in PREPARERS:
        raise NNPError(f"nnp data prepare: unknown data set {name!r}; choose {', '.join(PREPARERS)}")
    options = parse_options(name, rest)  # out= is required; forces_key=null: energy only (e.g. ccsd(t)_cbs.energy)
    PREPARERS[name](**options)
    return 0


def _info(args: list[str]) -> int:
    from nnp.data.info import file_info

    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    path, rest = args[0], args[1:]
    options = parse_options("info", rest)
    json_path = options.pop("json", None)
    fmt = options.pop("format", None)
    if "forces_key" in options and options["forces_key"] is None:
        options["auto_forces"] = False
    if not Path(path).is_file():
        raise NNPError(f"{path}: file not found")
    if fmt == "ase" or (fmt is None and Path(path).suffix.lower() not in (".h5", ".hdf5", ".hdf")):
        options.pop("group_key", None)
        options.pop("auto_forces", None)
    report = file_info(path, fmt, **options)
    text = json.dumps(report, indent=2, default=_jsonable)
    if json_path:
        from nnp.outputs import write_bytes

        write_bytes(json_path, (text + "\n").encode())
    if as_json:
        print(text)
    else:
        from rich.console import Console

        Console(highlight=False).print(render_info(report))
        if json_path:
            print(f"wrote {json_path}")
    return 0


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (bytes, bytearray)):
        return value.decode()
    return str(value)


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.{digits + 3}g}"


def render_info(r: dict):
    """The report as a rich table."""
    from rich.table import Table

    t = Table(title=f"{r['file']} ({r['format']})", show_header=False, title_justify="left")
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("keys", f"energy {r['energy_key']!s}, forces {r['forces_key']!s}, group {r['group_key']!s}; energy unit in file: {r['energy_unit_in_file']}")
    counts = f"{r['structures']:,} structures"
    if r.get("groups") is not None:
        counts += f", {r['groups']:,} groups"
    counts += f", {r['formulas']:,} formulas"
    if r.get("molecules") is not None:
        counts += f", {r['molecules']:,} molecules"
    t.add_row("size", counts)
    t.add_row("elements (atoms)", ", ".join(f"{el} {n:,}" for el, n in r["elements"].items()))
    a = r["atoms_per_structure"]
    if a:
        t.add_row("atoms per structure", f"min {a['min']}, mean {a['mean']:.1f}, max {a['max']}")
    for key, label in (("energy_eV", "energy (eV)"), ("energy_per_atom_eV", "energy per atom (eV)")):
        e = r.get(key)
        if e:
            t.add_row(label, f"{_fmt(e['min'], 8)} .. {_fmt(e['max'], 8)} (mean {_fmt(e['mean'], 8)}, std {_fmt(e['std'])})")
    f = r.get("forces_eV_per_A")
    if f:
        t.add_row("forces (eV/Å)", f"components {_fmt(f['min_component'])} .. {_fmt(f['max_component'])}, RMS {_fmt(f['rms_component'])}, max |F| {_fmt(f['max_norm'])}")
    nan = r["nan_rows"]
    bad = sum(nan.values())
    t.add_row("NaN/inf rows", "none" if bad == 0 else ", ".join(f"{k} {v:,}" for k, v in nan.items() if v), style=None if bad == 0 else "yellow")
    c = r.get("closest_distance_A")
    if c:
        t.add_row("closest atoms", f"{c['value']:.3f} Å ({c['group']} row {c['row']})")
    s = r["suspicious"]
    t.add_row(
        "suspicious",
        f"{s['large_forces']['rows']:,} rows with |F| > {s['large_forces']['threshold_eV_per_A']:g} eV/Å, "
        f"{s['close_atoms']['rows']:,} rows with atoms < {s['close_atoms']['threshold_A']:g} Å apart"
        + (f", {s['energy_outliers']['rows']:,} energy outliers" if s.get("energy_outliers") else ""),
        style="yellow" if s["large_forces"]["rows"] or s["close_atoms"]["rows"] or (s.get("energy_outliers") or {}).get("rows") else None,
    )
    for kind, rows in r.get("examples", {}).items():
        t.add_row(f"  {kind}", "; ".join(f"{e['group']} row {e['row']} ({_fmt(e['value'])})" for e in rows))
    for note in r.get("notes", []):
        t.add_row("note", note, style="yellow")
    return t


COMMANDS = {"prepare": _prepare, "info": _info}


def main(argv: list[str]) -> int:
    """Entry point of ``nnp data`` (registered in :data:`nnp.cli.PLAIN_COMMANDS`)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], list(argv[1:])
    if command not in COMMANDS:
        raise NNPError(f"nnp data: unknown command {command!r}; choose {', '.join(COMMANDS)}")
    return COMMANDS[command](rest)
