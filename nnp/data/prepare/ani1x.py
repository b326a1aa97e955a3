"""ANI-1x release -> a compact HDF5 with the labels one trains on.

Source: Smith et al., Sci. Data 7, 134 (2020), figshare 10.6084/m9.figshare.10047041
(``ani1x-release.h5``, 5.6 GB, about 5 million conformations grouped by formula;
energies in Hartree, forces in Hartree/Å, coordinates in Å).

The release holds many levels of theory, most of them NaN for most rows.
The conversion keeps ``atomic_numbers``, ``coordinates`` and the chosen
energy (and forces) under their original names and units, drops rows whose
chosen labels are NaN (counted), and writes contiguous datasets (fast random
reads, see :mod:`nnp.data.hdf5`). The result reads with ``data=ani1x``
unchanged. Memory stays bounded: rows are copied a chunk at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnp.data.checks import finite_rows
from nnp.data.hdf5_layout import describe_group, find_data_groups, open_h5
from nnp.data.prepare.download import Remote, check_local, fetch, output_path
from nnp.data.progress import console, progress
from nnp.errors import NNPError
from nnp.outputs import atomic_path, hdf5_writer, write_error_reason

RELEASE = Remote(
    url="https://ndownloader.figshare.com/files/18112775",
    filename="ani1x-release.h5",
    size=5_590_846_027,
    md5="98090dd6679106da861f52bed825ffb7",
    sha256="fe0ba06198ee72cf1003deebab2652097f6ab518337784dc811fa7da0c3bf5ac",
)


def convert(
    source: Path,
    out: Path,
    energy_key: str = "wb97x_dz.energy",
    forces_key: str | None = "wb97x_dz.forces",
    source_sha256: str = "",
) -> dict:
    """Copy the chosen labels of every group, without NaN rows; returns a summary."""
    with atomic_path(out) as tmp:  # complete, or not there under the final name
        summary = _copy(source, tmp, energy_key, forces_key, source_sha256)
    return {"output": str(out), **summary}


def _copy(source: Path, tmp: Path, energy_key: str, forces_key: str | None, source_sha256: str) -> dict:
    kept = skipped = 0
    # the output through hdf5_writer: a full disk is one clear error, not a crash inside HDF5
    with open_h5(str(source)) as src, hdf5_writer(tmp) as dst:
        names = find_data_groups(src, ("coordinates", "atomic_numbers", energy_key))
        if not names:
            raise NNPError(f"{source}: no group holds 'coordinates' (is this the ANI-1x release?)")
        with progress() as bar:
            task = bar.add_task(f"converting {source.name}", total=len(names))
            for name in names:
                layout = describe_group(src, name, energy_key, forces_key, None)
                g = src[name] if name else src
                try:
                    energy = np.asarray(g[energy_key][()], dtype=np.float64).reshape(-1)
                    ok = np.isfinite(energy)
                    for start, stop in layout.row_chunks():
                        ok[start:stop] &= finite_rows(g[layout.coord_key][start:stop])
                        if forces_key:
                            ok[start:stop] &= finite_rows(g[forces_key][start:stop])
                    keep = np.flatnonzero(ok)
                    skipped += layout.n_conf - len(keep)
                    bar.advance(task)
                    if len(keep) == 0:
                        continue
                    out_g = dst.require_group(name) if name else dst
                    out_g.create_dataset("atomic_numbers", data=layout.numbers.astype(np.uint8))
                    out_g.create_dataset(energy_key, data=energy[keep])
                    copies = [(layout.coord_key, "coordinates")] + ([(forces_key, forces_key)] if forces_key else [])
                    for key, new in copies:
                        d = out_g.create_dataset(new, shape=(len(keep), layout.n_atoms, 3), dtype=g[key].dtype)
                        pos = 0
                        for start, stop in layout.row_chunks():
                            sel = keep[(keep >= start) & (keep < stop)]
                            if len(sel):
                                d[pos : pos + len(sel)] = np.asarray(g[key][start:stop])[sel - start]
                                pos += len(sel)
                    kept += len(keep)
                except (OSError, RuntimeError, ValueError) as err:
                    if write_error_reason(err) is not None:
                        raise  # the output's disk is full or read-only: atomic_path names the output
                    raise NNPError(f"{layout.where}: cannot read ({err}); is the file truncated or corrupt?") from None
        dst.attrs.update(
            {
                "source": "ANI-1x: Smith et al., Sci. Data 7, 134 (2020); figshare 10.6084/m9.figshare.10047041",
                "source_file": source.name,
                "source_sha256": source_sha256,
                "energy_key": energy_key,
                "forces_key": forces_key or "",
                "energy_unit": "hartree",
                "length_unit": "angstrom",
                "n_structures": kept,
                "n_skipped_nan": skipped,
            }
        )
    if kept == 0:
        raise NNPError(f"{source}: no row has finite '{energy_key}'" + (f" and '{forces_key}'" if forces_key else ""))
    return {"structures": kept, "skipped_nan": skipped, "groups": len(names)}


def prepare_ani1x(
    out: str,
    source: str | None = None,
    energy_key: str = "wb97x_dz.energy",
    forces_key: str | None = "wb97x_dz.forces",
    download_dir: str | None = None,
    overwrite: bool = False,
) -> dict:
    """``nnp data prepare ani1x``: download (or take ``source``), verify, convert to ``out``."""
    out_path = output_path(out, overwrite)
    if source:
        src = Path(source)
        digests = check_local(src, RELEASE)
    else:
        src, digests = fetch(RELEASE, Path(download_dir) if download_dir else out_path.parent)
    if src.resolve() == out_path.resolve():
        raise NNPError(f"out={out} is the source file; choose another output name")
    summary = convert(src, out_path, energy_key, forces_key, digests.get("sha256", ""))
    console.print(
        f"wrote {out_path}: {summary['structures']} structures in {summary['groups']} groups "
        f"({summary['skipped_nan']} rows without finite '{energy_key}'{'/' + forces_key if forces_key else ''} dropped)"
    )
    return summary
