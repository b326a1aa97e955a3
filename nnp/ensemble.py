"""``nnp ensemble``: build committee files from separately trained members.

    nnp ensemble combine runs/a/model.pt runs/b/model.pt runs/c/model.pt output=committee.pt

Members trained elsewhere (a Hydra multirun, a Slurm array) become one
committee file. They must share species, cutoff, units and dtype; a member
that is itself a committee contributes all its members. The file records
where each member came from and whether they all held out the same data (the
``split_digest`` each training run stores), which ``nnp evaluate
calibrate=true`` needs to calibrate without a separate file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nnp.committee import Committee, load_model
from nnp.errors import NNPError
from nnp.report import console

USAGE = """usage: nnp ensemble combine MODEL.pt MODEL.pt [...] output=COMMITTEE.pt [overwrite=true]

Combine separately trained models (same species, cutoff, units, dtype) into
one committee file, usable wherever a model is taken (ckpt=COMMITTEE.pt).
  output     the committee file to write (required)
  overwrite  replace an existing output file (default: false)"""

def combine(paths: list[str], output: str | Path, overwrite: bool = False) -> Committee:
    """Load ``paths`` as one committee and save it to ``output`` (atomically)."""
    output = Path(output)
    if len(paths) < 2:
        raise NNPError(f"ensemble combine: give at least two model files (got {len(paths)})")
    for p in paths:
        if Path(p).resolve() == output.resolve():
            raise NNPError(f"ensemble combine: output {output} would overwrite member {p}")
    if output.exists() and not overwrite:
        raise NNPError(f"{output} already exists: choose another output, or overwrite=true")
    committee = load_model(paths)
    assert isinstance(committee, Committee)
    digests = {(getattr(m, "metadata", {}) or {}).get("split_digest") for m in committee.members}
    first = dict(getattr(committee.members[0], "metadata", {}) or {})
    same_split = None not in digests and len(digests) == 1
    committee.metadata = {
        "combined_from": [str(p) for p in paths],
        "same_split": same_split,
        "data": first.get("data"),
        "split_file": first.get("split_file") if same_split else None,
        "split_digest": first.get("split_digest") if same_split else None,
    }
    committee.save(output)
    return committee


def main(argv: list[str] | None = None) -> int:
    from nnp.config.options import CombineOptions, parse_options

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        console.print(USAGE, markup=False, highlight=False)
        return 0
    action, rest = argv[0], argv[1:]
    if action != "combine":
        raise NNPError(f"nnp ensemble: unknown action {action!r}; actions: combine (see `nnp ensemble --help`)")
    paths = [a for a in rest if "=" not in a]
    options = parse_options("nnp ensemble combine", CombineOptions, [a for a in rest if "=" in a])
    committee = combine(paths, options["output"], bool(options.get("overwrite", False)))
    if committee.metadata["same_split"]:
        note = "same split: calibrate=true can use its validation part"
    else:
        note = "members held out different data: calibrate with calibrate_data=FILE"
    console.print(f"wrote {options['output']}: committee of {committee.n_members} members ({note})", markup=False)
    return 0
