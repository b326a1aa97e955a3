"""``nnp data info``: what a data file holds, and what looks wrong, in one streaming pass.

Reads an HDF5 file (ANI-1x layout) a group and a few MB at a time, so the
5.6 GB ANI-1x release is summarised in bounded memory; ASE-readable files
are read whole (they are small). Reports structure, formula and molecule
counts, elements, atoms per structure, energy and force ranges (eV, eV/Å),
NaN/infinite rows, and suspicious rows: forces above a threshold, atoms
closer than a threshold, energies far from a per-element linear fit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnp.data.checks import finite_rows, min_distances
from nnp.errors import NNPError

#: Energies whose per-atom residual after a per-element linear fit is this many robust standard deviations out.
OUTLIER_SIGMAS = 10.0
_MAX_EXAMPLES = 5  # per kind of problem


@dataclass
class _Range:
    lo: float = np.inf
    hi: float = -np.inf
    total: float = 0.0
    total_sq: float = 0.0
    n: int = 0

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(v) == 0:
            return
        self.lo = min(self.lo, float(v.min()))
        self.hi = max(self.hi, float(v.max()))
        self.total += float(v.sum())
        self.total_sq += float(np.square(v).sum())
        self.n += len(v)

    def summary(self) -> dict | None:
        if self.n == 0:
            return None
        mean = self.total / self.n
        return {"min": self.lo, "max": self.hi, "mean": mean, "std": float(np.sqrt(max(self.total_sq / self.n - mean**2, 0.0)))}


@dataclass
class _Stats:
    """Accumulates chunks of rows (one group at a time) into the report."""

    max_force: float
    min_distance: float
    n_rows: int = 0
    groups: int = 0
    formulas: set = field(default_factory=set)
    labels: set = field(default_factory=set)
    has_labels: bool = False
    atom_counts: Counter = field(default_factory=Counter)
    atoms: _Range = field(default_factory=_Range)
    energy: _Range = field(default_factory=_Range)
    energy_per_atom: _Range = field(default_factory=_Range)
    force_component: _Range = field(default_factory=_Range)
    max_force_norm: float = 0.0
    nan: Counter = field(default_factory=Counter)
    closest: tuple = (np.inf, "", -1)
    n_close: int = 0
    n_strong: int = 0
    examples: dict = field(default_factory=dict)
    species: list = field(default_factory=list)
    ata: np.ndarray | None = None
    atb: np.ndarray | None = None
    shift: float | None = None

    def example(self, kind: str, group: str, row: int, value: float) -> None:
        bucket = self.examples.setdefault(kind, [])
        if len(bucket) < _MAX_EXAMPLES:
            bucket.append({"group": group, "row": int(row), "value": round(float(value), 6)})

    def start_group(self, group: str, numbers: np.ndarray, n_rows: int) -> None:
        from ase.data import chemical_symbols
        from ase.formula import Formula

        self.groups += 1
        self.n_rows += n_rows
        self.formulas.add(Formula.from_list([chemical_symbols[z] for z in numbers]).format("hill"))
        for z, c in zip(*np.unique(numbers, return_counts=True), strict=True):
            self.atom_counts[int(z)] += int(c) * n_rows
        self.atoms.add(np.full(n_rows, len(numbers)))

    def add_rows(self, group: str, start: int, numbers: np.ndarray, xyz: np.ndarray, energy, forces, labels) -> None:
        """xyz (c, n, 3) Å; energy (c,) eV or None; forces (c, n, 3) eV/Å or None; labels (c,) or None."""
        rows = start + np.arange(len(xyz))
        fin_x = finite_rows(xyz)
        self.nan["coordinates"] += int((~fin_x).sum())
        for r in rows[~fin_x][:1]:
            self.example("nan_coordinates", group, r, np.nan)
        if energy is not None:
            fin_e = np.isfinite(energy)
            self.nan["energy"] += int((~fin_e).sum())
            for r in rows[~fin_e][:1]:
                self.example("nan_energy", group, r, np.nan)
            self.energy.add(energy[fin_e])
            self.energy_per_atom.add(energy[fin_e] / max(len(numbers), 1))
            self._fit_add(numbers, energy[fin_e])
        if forces is not None:
            fin_f = finite_rows(forces)
            self.nan["forces"] += int((~fin_f).sum())
            for r in rows[~fin_f][:1]:
                self.example("nan_forces", group, r, np.nan)
            good = forces[fin_f]
            self.force_component.add(good)
            if len(good):
                norms = np.sqrt(np.square(good).sum(axis=-1)).max(axis=1)
                self.max_force_norm = max(self.max_force_norm, float(norms.max()))
                strong = np.flatnonzero(norms > self.max_force)
                self.n_strong += len(strong)
                for k in strong[:_MAX_EXAMPLES]:
                    self.example("large_forces", group, rows[fin_f][k], norms[k])
        if len(numbers) > 1 and fin_x.any():
            dist = min_distances(xyz[fin_x])
            k = int(np.argmin(dist))
            if dist[k] < self.closest[0]:
                self.closest = (float(dist[k]), group, int(rows[fin_x][k]))
            close = np.flatnonzero(dist < self.min_distance)
            self.n_close += len(close)
            for k in close[:_MAX_EXAMPLES]:
                self.example("close_atoms", group, rows[fin_x][k], dist[k])
        if labels is not None:
            self.has_labels = True
            self.labels.update(labels.tolist())

    # -- per-element linear fit of energies, for outliers
    def _composition(self, numbers: np.ndarray) -> np.ndarray:
        for z in np.unique(numbers):
            if int(z) not in self.species:
                self.species.append(int(z))
        s = len(self.species)
        if self.ata is None or self.ata.shape[0] != s:
            ata, atb = np.zeros((s, s)), np.zeros(s)
            if self.ata is not None:
                k = self.ata.shape[0]
                ata[:k, :k], atb[:k] = self.ata, self.atb
            self.ata, self.atb = ata, atb
        return np.array([float((numbers == z).sum()) for z in self.species])

    def _fit_add(self, numbers: np.ndarray, energy: np.ndarray) -> None:
        """Rows of one composition enter the fit as their median, weighted by their count (robust to outliers)."""
        a = self._composition(numbers)
        if len(energy) == 0:
            return
        median = float(np.median(energy))
        if self.shift is None:
            self.shift = median / a.sum()
        self.ata += len(energy) * np.outer(a, a)
        self.atb += len(energy) * a * (median - self.shift * a.sum())

    def energy_outliers(self, groups: Callable[[], Iterator[tuple[str, np.ndarray, np.ndarray]]]) -> dict | None:
        """One more pass over the energies: rows whose per-atom residual is far out (robust z-score).

        Keeps one float32 residual and int32 row per structure (8 bytes), like the dataset index.
        """
        if self.ata is None or self.energy.n < 10:
            return None
        present = np.flatnonzero(np.diag(self.ata) > 0)
        ref = np.zeros(len(self.species))
        ref[present] = np.linalg.lstsq(self.ata[np.ix_(present, present)], self.atb[present], rcond=None)[0] + self.shift
        parts = []
        for group, numbers, energy in groups():
            a = np.array([float((numbers == z).sum()) for z in self.species])
            ok = np.flatnonzero(np.isfinite(energy))
            parts.append((group, ok.astype(np.int32), ((energy[ok] - a @ ref) / max(len(numbers), 1)).astype(np.float32)))
        resid = np.concatenate([p[2] for p in parts])
        center = float(np.median(resid))
        scale = 1.4826 * float(np.median(np.abs(resid - center))) or float(resid.std())
        if scale == 0:
            return None
        count = 0
        for group, rows, r in parts:
            far = np.flatnonzero(np.abs(r - center) > OUTLIER_SIGMAS * scale)
            count += len(far)
            for k in far[:_MAX_EXAMPLES]:
                self.example("energy_outliers", group, rows[k], r[k])
        from ase.data import chemical_symbols

        return {
            "rows": count,
            "rule": f"per-atom residual of a per-element linear fit more than {OUTLIER_SIGMAS:g} robust std (1.4826 MAD) from its median",
            "residual_scale_eV_per_atom": scale,
            "fitted_atom_energies_eV": {chemical_symbols[z]: float(e) for z, e in zip(self.species, ref, strict=True)},
        }

    def report(self) -> dict:
        from ase.data import chemical_symbols

        atoms = self.atoms.summary()
        force = self.force_component.summary()
        return {
            "structures": self.n_rows,
            "groups": self.groups,
            "formulas": len(self.formulas),
            "molecules": len(self.labels) if self.has_labels else None,
            "elements": {chemical_symbols[z]: c for z, c in sorted(self.atom_counts.items())},
            "atoms_per_structure": None if atoms is None else {"min": int(atoms["min"]), "mean": atoms["mean"], "max": int(atoms["max"])},
            "energy_eV": self.energy.summary(),
            "energy_per_atom_eV": self.energy_per_atom.summary(),
            "forces_eV_per_A": None if force is None else {
                "min_component": force["min"], "max_component": force["max"],
                "rms_component": float(np.sqrt(self.force_component.total_sq / self.force_component.n)),
                "max_norm": self.max_force_norm,
            },
            "nan_rows": {"energy": self.nan["energy"], "forces": self.nan["forces"], "coordinates": self.nan["coordinates"]},
            "closest_distance_A": None if not np.isfinite(self.closest[0]) else {"value": self.closest[0], "group": self.closest[1], "row": self.closest[2]},
            "suspicious": {
                "large_forces": {"threshold_eV_per_A": self.max_force, "rows": self.n_strong},
                "close_atoms": {"threshold_A": self.min_distance, "rows": self.n_close},
            },
            "examples": self.examples,
        }


def _pick_key(names: list[str], wanted: str, preferred: tuple[str, ...]) -> str | None:
    for p in preferred:
        if p in names:
            return p
    matches = [n for n in names if n == wanted or n.endswith("." + wanted)]
    return matches[0] if matches else None


def _text_attr(attrs: dict, name: str) -> str | None:
    """A file attribute that names a key or unit: a non-empty string, else None."""
    value = attrs.get(name)
    return value if isinstance(value, str) and value else None


def hdf5_info(
    path: str,
    energy_key: str | None = None,
    forces_key: str | None = None,
    group_key: str | None = "smiles",
    energy_unit: str | None = None,
    length_unit: str | None = None,
    max_force: float = 10.0,
    min_distance: float = 0.5,
    auto_forces: bool = True,
) -> dict:
    """Streaming summary of an ANI-1x-layout file (see module doc). Keys are auto-detected when None."""
    from nnp.data.hdf5_layout import (
        _COORD_KEYS,
        _NUMBER_KEYS,
        _member_names,
        _small_attrs,
        describe_group,
        find_data_groups,
        open_h5,
        reading,
    )
    from nnp.data.progress import progress
    from nnp.units import energy_factor, length_factor

    with open_h5(path) as f:
        attrs = _small_attrs(f)
        names = find_data_groups(f, (*_COORD_KEYS, *_NUMBER_KEYS))
        if not names:
            raise NNPError(f"{path}: no group holds 'coordinates' (is this the ANI-1x layout?)")
        with reading(f"{path}:/{names[0]}"):
            first = [n.rstrip("/") for n in _member_names(f[names[0]] if names[0] else f, f"{path}:/{names[0]}")]
        energy_key = energy_key or _text_attr(attrs, "energy_key") or _pick_key(first, "energy", ("wb97x_dz.energy",))
        if forces_key is None and auto_forces:
            forces_key = _text_attr(attrs, "forces_key")
            if forces_key is None and energy_key:
                stem = energy_key.rsplit(".", 1)[0] if "." in energy_key else ""
                forces_key = _pick_key(first, "forces", ((stem + ".forces") if stem else "forces",))
        unit = energy_unit or _text_attr(attrs, "energy_unit")
        notes = []
        if energy_key and not unit:
            notes.append("energy unit not recorded in the file: assumed eV (pass energy_unit=hartree for ANI-1x)")
        try:
            e_fac = energy_factor(unit or "eV")
            l_fac = length_factor(length_unit or _text_attr(attrs, "length_unit") or "angstrom")
        except NNPError as err:
            raise NNPError(f"{path}: {err} (from energy_unit/length_unit or the file's attributes)") from None
        stats = _Stats(max_force=max_force, min_distance=min_distance)
        layouts = []
        with progress() as bar:
            task = bar.add_task(f"reading {Path(path).name}", total=len(names))
            for name in names:
                layout = describe_group(f, name, energy_key, forces_key, group_key)
                layouts.append(layout)
                with reading(layout.where):
                    g = f[name] if name else f
                stats.start_group(layout.where.split(":/", 1)[1] or "/", layout.numbers, layout.n_conf)
                with reading(layout.where, energy_key):
                    energy = np.asarray(g[energy_key][()], dtype=np.float64).reshape(-1) * e_fac if energy_key else None
                for start, stop in layout.row_chunks():
                    rows = f"{layout.where} rows {start}-{stop - 1}"
                    with reading(rows, layout.coord_key):
                        xyz = np.asarray(g[layout.coord_key][start:stop], dtype=np.float64) * l_fac
                    with reading(rows, forces_key):
                        forces = np.asarray(g[forces_key][start:stop], dtype=np.float64) * (e_fac / l_fac) if forces_key else None
                    with reading(rows, layout.label_key):
                        labels = np.asarray(g[layout.label_key][start:stop]).reshape(stop - start, -1)[:, 0] if layout.label_key else None
                    stats.add_rows(name or "/", start, layout.numbers, xyz, None if energy is None else energy[start:stop], forces, labels)
                bar.advance(task)

        def energies():
            for layout in layouts:
                with reading(layout.where, energy_key):
                    g = f[layout.name] if layout.name else f
                    values = np.asarray(g[energy_key][()], dtype=np.float64).reshape(-1) * e_fac
                yield layout.name or "/", layout.numbers, values

        outliers = stats.energy_outliers(energies) if energy_key else None
    report = {
        "file": str(path),
        "format": "hdf5",
        "energy_key": energy_key,
        "forces_key": forces_key,
        "group_key": group_key if stats.has_labels else None,
        "energy_unit_in_file": unit or "eV (assumed)",
        **stats.report(),
    }
    report["suspicious"]["energy_outliers"] = outliers
    report["notes"] = notes
    return report


def ase_info(
    path: str,
    energy_key: str | None = None,
    forces_key: str | None = None,
    energy_unit: str | None = None,
    length_unit: str | None = None,
    max_force: float = 10.0,
    min_distance: float = 0.5,
    **_ignored,
) -> dict:
    """Summary of an ASE-readable file (read whole: these are small)."""
    from nnp.data.ase_files import AseDataset, _floats, _label, _number, _structure_arrays
    from nnp.units import energy_factor, length_factor

    frames, extra = AseDataset._read(path)
    e_fac = energy_factor(energy_unit or "eV")
    l_fac = length_factor(length_unit or "angstrom")
    energy_key = energy_key or "energy"
    forces_key = forces_key or "forces"
    stats = _Stats(max_force=max_force, min_distance=min_distance)
    energies = []
    for k, atoms in enumerate(frames):
        data = extra[k] if extra else None
        where = f"{path}: structure {k}"
        numbers = _structure_arrays(atoms, where)
        e = _label(atoms, energy_key, data)
        f = _label(atoms, forces_key, data)
        energy = None if e is None else np.array([_number(e, where, f"energy '{energy_key}'") * e_fac])
        forces = None
        if f is not None:
            f = _floats(f, where, f"forces '{forces_key}'")
            if f.shape == (len(atoms), 3):
                forces = f[None] * (e_fac / l_fac)
        stats.start_group(f"structure {k}", numbers, 1)
        stats.add_rows(f"structure {k}", 0, numbers, atoms.positions[None] * l_fac, energy, forces, None)
        energies.append((f"structure {k}", numbers, energy if energy is not None else np.array([np.nan])))
    outliers = stats.energy_outliers(lambda: iter(energies))
    report = {"file": str(path), "format": "ase", "energy_key": energy_key if stats.energy.n else None,
              "forces_key": forces_key if stats.force_component.n else None, "group_key": None,
              "energy_unit_in_file": energy_unit or "eV", **stats.report()}
    report["groups"] = None
    report["suspicious"]["energy_outliers"] = outliers
    report["notes"] = []
    return report


def file_info(path: str, fmt: str | None = None, **options) -> dict:
    """Summary of a data file; ``fmt`` hdf5 or ase (default: by extension)."""
    fmt = fmt or ("hdf5" if Path(path).suffix.lower() in (".h5", ".hdf5", ".hdf") else "ase")
    if fmt == "hdf5":
        return hdf5_info(path, **options)
    if fmt == "ase":
        return ase_info(path, **options)
    raise NNPError(f"format={fmt!r}: choose hdf5 or ase")
