"""Fuzz tests of the data readers: every damaged or malformed input ends in a correct result or one NNPError.

Inputs, made by ``hypothesis`` from small valid files:

- bytes: truncations at any offset and flipped bytes of an HDF5 file (contiguous
  and chunked/gzip datasets), an extxyz file and an ASE db (sqlite) file;
- HDF5 structure: wrong dtypes and shapes, missing and extra groups/datasets,
  links, NaN/inf rows, empty groups, atomic numbers 0 / 200 / negative, bad
  file attributes; one to three changes per file;
- extxyz text: bad Properties lines, wrong atom counts, non-numeric fields,
  missing or malformed energies, cells with zero vectors, dummy atoms;
- ASE db rows changed with SQL: broken blobs and JSON, wrong types, zero cells.

Each file is opened with :func:`open_dataset` and read whole (every item,
one batch, energies, groups, elements), or summarised with ``nnp data info``.
A case passes when it ends in a correct result (values checked against what
was written where the change keeps the file valid) or in an NNPError whose
message is one line naming the file (and, for structural changes, the group
and key); any other exception, a hang (a hard per-example time limit) or a
crash of the interpreter fails.

Counts: the default profile runs the numbers given to ``fuzz`` below (about
730 cases, 10-20 s on one core); ``NNP_FUZZ_EXAMPLES=N`` (``make
fuzz``) runs N random cases per test instead.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import signal
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data_common import HARTREE

from nnp import keys
from nnp.data import collate, open_dataset
from nnp.data.cli import main as data_main
from nnp.errors import NNPError

# ------------------------------------------------------------------ profiles
#: ``make fuzz`` sets this: examples per test, random (not derandomized) cases.
FUZZ_EXAMPLES = int(os.environ.get("NNP_FUZZ_EXAMPLES") or 0)
#: A case that takes longer than this is a hang (SIGALRM interrupts it).
HARD_LIMIT_S = 60.0

settings.register_profile(
    "nnp-test",
    derandomize=True,  # the same cases on every run of `make test`: no flaky CI
    database=None,  # nothing written into the checkout
    deadline=timedelta(seconds=10),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("nnp-fuzz", parent=settings.get_profile("nnp-test"), derandomize=False,
                          max_examples=max(FUZZ_EXAMPLES, 1))
PROFILE = "nnp-fuzz" if FUZZ_EXAMPLES else "nnp-test"


def fuzz(examples: int):
    """Settings of one test: ``examples`` cases in `make test`, NNP_FUZZ_EXAMPLES under `make fuzz`."""
    return settings(settings.get_profile(PROFILE), max_examples=FUZZ_EXAMPLES or examples)


class Raw(bytes):
    """A base file's bytes, with a short repr (hypothesis prints the fixtures of a failing case)."""

    def __repr__(self) -> str:
        return f"<{len(self)} bytes>"


class Hang(BaseException):  # not an Exception: readers' `except Exception` must not swallow it
    pass


@contextlib.contextmanager
def time_limit(seconds: float = HARD_LIMIT_S):
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise Hang(f"no result after {seconds:g} s: the reader hangs")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ------------------------------------------------------------------- helpers
_COUNTER = itertools.count()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def case_path(work: Path, suffix: str) -> Path:
    """A fresh name per case: HDF5 keeps open files by name, and a reused name could hit a stale handle."""
    return work / f"case{next(_COUNTER)}{suffix}"


def h5_cfg(path: Path, **extra) -> dict:
    cfg = {"format": "hdf5", "path": str(path), "energy_key": "wb97x_dz.energy", "forces_key": "wb97x_dz.forces",
           "group_key": "smiles", "units": {"energy": "hartree", "length": "angstrom"}}
    cfg.update(extra)
    return cfg


def ase_cfg(path: Path, **extra) -> dict:
    cfg = {"format": "ase", "path": str(path), "energy_key": "energy", "forces_key": "forces",
           "units": {"energy": "eV", "length": "angstrom"}}
    cfg.update(extra)
    return cfg


def _close(ds) -> None:
    handle = getattr(ds, "_file", None)
    if handle is not None:
        with contextlib.suppress(Exception):
            handle.close()
    fd = getattr(ds, "_fd", -1)
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
        ds._fd = -1


def read_everything(cfg: dict):
    """Open the dataset and read it whole; returns (dataset, samples). Checks what every reader promises."""
    ds = open_dataset(cfg)
    try:
        n = len(ds)
        assert n > 0
        energies = ds.energies()
        assert energies.shape == (n,) and np.isfinite(energies).all()
        codes, names = ds.groups(), ds.group_names()
        assert codes.shape == (n,) and (codes >= 0).all() and (codes < len(names)).all()
        elements = ds.elements()
        assert all(1 <= z <= 118 for z in elements)
        n_atoms = ds.n_atoms()
        samples = [ds[i] for i in range(n)]
        if hasattr(ds, "__getitems__"):
            batch = ds.__getitems__(list(range(n - 1, -1, -1)))
            for s, b in zip(samples, batch[::-1], strict=True):
                np.testing.assert_array_equal(s[keys.R], b[keys.R])
        for i, s in enumerate(samples):
            z, r = np.asarray(s[keys.Z]), np.asarray(s[keys.R])
            assert len(z) == n_atoms[i] > 0 and r.shape == (len(z), 3) and np.isfinite(r).all()
            assert set(z.tolist()) <= set(elements)
            assert s[keys.ENERGY] == energies[i] and s[keys.STRUCTURE_ID] == i
            if ds.has_forces:
                assert s[keys.FORCES].shape == r.shape and np.isfinite(s[keys.FORCES]).all()
            pbc = np.asarray(s[keys.PBC], dtype=bool)
            if pbc.any():  # what the neighbor list inverts
                assert abs(np.linalg.det(np.asarray(s[keys.CELL], dtype=np.float64))) > 0
        ds.composition_matrix(np.arange(n), elements)
        collate(samples)
        return ds, samples
    finally:
        _close(ds)


def one_line(err: NNPError, path: Path) -> str:
    msg = str(err)
    assert "\n" not in msg and "\r" not in msg, f"message is not one line: {msg!r}"
    assert str(path) in msg, f"message does not name the file {path}: {msg!r}"
    return msg


def outcome(cfg: dict):
    """(dataset, samples) or the NNPError (checked: one line naming the file). Anything else propagates."""
    with time_limit():
        try:
            return read_everything(cfg)
        except NNPError as err:
            one_line(err, Path(cfg["path"]))
            return err


def info_outcome(path: Path, *options: str, as_json: bool = True):
    """``nnp data info`` in-process: the report (dict, or the table's text), or the NNPError (one line naming the file)."""
    out = io.StringIO()
    with time_limit():
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                assert data_main(["info", str(path), *options, *(["--json"] if as_json else [])]) == 0
        except NNPError as err:
            one_line(err, path)
            return err
    return json.loads(out.getvalue()) if as_json else out.getvalue()


# ---------------------------------------------------------- valid base files
GROUPS = {  # name: (atomic numbers, conformations)
    "H2O1": ([8, 1, 1], 4),
    "nested/deep/C1H4": ([6, 1, 1, 1, 1], 3),
    "C1H5N1": ([6, 7, 1, 1, 1, 1, 1], 3),
}
SYMBOLS = {1: b"H", 6: b"C", 7: b"N", 8: b"O"}


def molecule(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) Å: atoms on a 1.5 Å grid, jittered: no two closer than ~1.1 Å."""
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    return grid * 1.5 + rng.uniform(-0.1, 0.1, (n, 3))


def base_spec(seed: int = 0) -> dict:
    """``{group: {dataset: array}}`` of a valid ANI-1x-layout file, plus file attributes under ``"/attrs"``."""
    rng = np.random.default_rng(seed)
    spec: dict = {"/attrs": {}}
    for k, (name, (numbers, n_conf)) in enumerate(GROUPS.items()):
        base = molecule(len(numbers), rng)
        spec[name] = {
            "atomic_numbers": np.asarray(numbers, dtype=np.uint8),
            "coordinates": (base + rng.normal(0, 0.02, (n_conf, len(numbers), 3))).astype(np.float32),
            "wb97x_dz.energy": -40.0 * len(numbers) + rng.normal(0, 0.01, n_conf),
            "wb97x_dz.forces": rng.normal(0, 0.05, (n_conf, len(numbers), 3)).astype(np.float32),
            "smiles": np.array([f"mol{k}{'ab'[i % 2]}".encode() for i in range(n_conf)]),
        }
    return spec


class Group:  # a subgroup where a dataset should be
    pass


class SoftLink:
    def __init__(self, target: str):
        self.target = target


class ExternalLink:
    def __init__(self, filename: str, target: str):
        self.filename, self.target = filename, target


class Chunked:  # a dataset stored chunked and gzip-compressed
    def __init__(self, value: np.ndarray):
        self.value = value


def write_spec(path: Path, spec: dict) -> Path:
    with h5py.File(path, "w") as f:
        for name, data in spec.items():
            if name == "/attrs":
                f.attrs.update(data)
                continue
            g = f.require_group(name)
            for key, value in data.items():
                if isinstance(value, Group):
                    g.create_group(key)
                elif isinstance(value, SoftLink):
                    g[key] = h5py.SoftLink(value.target)
                elif isinstance(value, ExternalLink):
                    g[key] = h5py.ExternalLink(value.filename, value.target)
                elif isinstance(value, Chunked):
                    v = value.value
                    g.create_dataset(key, data=v, chunks=(max(1, min(2, len(v))),) + v.shape[1:], compression="gzip")
                else:
                    g.create_dataset(key, data=value)
    return path


def _resolve(spec: dict, value):
    if isinstance(value, SoftLink):
        group, key = value.target.rsplit("/", 1)
        return _resolve(spec, spec[group.lstrip("/")][key])
    return value.value if isinstance(value, Chunked) else value


def expected_rows(spec: dict) -> dict:
    """What a correct read of a valid ``spec`` gives: {group: (numbers, [(row, xyz, energy eV, forces eV/Å, label)])}."""
    out = {}
    for name, data in spec.items():
        if name == "/attrs" or "coordinates" not in data:
            continue
        z = np.asarray(_resolve(spec, data["atomic_numbers"]))
        if z.dtype.kind == "S":
            z = np.array([{v: k for k, v in SYMBOLS.items()}[s] for s in z.reshape(-1)])
        z = z.reshape(-1, z.shape[-1])[0] if z.ndim == 2 else z
        xyz = np.asarray(_resolve(spec, data["coordinates"])).astype(np.float64)
        energy = np.asarray(_resolve(spec, data["wb97x_dz.energy"]), dtype=np.float64).reshape(-1)
        forces = np.asarray(_resolve(spec, data["wb97x_dz.forces"])).astype(np.float64)
        labels = data.get("smiles")
        rows = []
        for r in range(len(xyz)):
            if np.isfinite(energy[r]) and np.isfinite(forces[r]).all() and np.isfinite(xyz[r]).all():
                label = labels[r].decode("utf-8", "backslashreplace") if labels is not None else name
                rows.append((r, xyz[r], energy[r] * HARTREE, forces[r] * HARTREE, label))
        out[name] = (z.astype(np.int64), rows)
    return out


def check_values(ds, samples, spec: dict) -> None:
    """A successful read of a valid file gives exactly what was written (units converted)."""
    expect = expected_rows(spec)
    assert len(ds) == sum(len(rows) for _, rows in expect.values())
    assert ds.elements() == sorted({int(z) for numbers, _ in expect.values() for z in numbers})
    names = ds.group_names()
    for i, s in enumerate(samples):
        group, row = ds.group_of(i)
        numbers, rows = expect[group]
        (r, xyz, energy, forces, label), = [x for x in rows if x[0] == row]
        np.testing.assert_array_equal(s[keys.Z], numbers)
        np.testing.assert_allclose(s[keys.R], xyz, rtol=1e-12, atol=0)
        np.testing.assert_allclose(s[keys.ENERGY], energy, rtol=1e-12)
        np.testing.assert_allclose(s[keys.FORCES], forces, rtol=1e-12, atol=1e-12)
        assert names[ds.groups()[i]] == label


# ------------------------------------------------------ HDF5: raw bytes
@pytest.fixture(scope="module")
def h5_bases(work) -> dict[str, bytes]:
    spec = base_spec()
    chunked = {name: ({k: Chunked(v) if k in ("coordinates", "wb97x_dz.forces") else v for k, v in data.items()}
                      if name != "/attrs" else data) for name, data in spec.items()}
    return {"contiguous": Raw(write_spec(work / "base.h5", spec).read_bytes()),
            "chunked": Raw(write_spec(work / "base-chunked.h5", chunked).read_bytes())}


def test_base_files_read_correctly(work, h5_bases, xyz_base, db_base):
    """The unchanged files read back exactly (so the fuzz cases start from valid input)."""
    for layout in ("contiguous", "chunked"):
        path = case_path(work, ".h5")
        path.write_bytes(h5_bases[layout])
        ds, samples = read_everything(h5_cfg(path))
        check_values(ds, samples, base_spec())
    for text_or_bytes, suffix in ((xyz_base.encode(), ".extxyz"), (db_base, ".db")):
        path = case_path(work, suffix)
        path.write_bytes(text_or_bytes)
        ds, samples = read_everything(ase_cfg(path))
        check_ase_values(samples, XYZ_FRAMES)


def damage(raw: bytes, data) -> tuple[bytes, str]:
    """Truncate at a random offset, or overwrite 1-16 random bytes (drawn from ``data``)."""
    kind = data.draw(st.sampled_from(["truncate", "flip"]), label="kind")
    if kind == "truncate":
        cut = data.draw(st.integers(0, len(raw) - 1), label="truncate at")
        return raw[:cut], f"truncated at {cut}"
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(0, 255)), min_size=1, max_size=16),
                      label="flips")
    out = bytearray(raw)
    for pos, value in flips:
        out[pos] = value
    return bytes(out), f"flipped {flips}"


@fuzz(150)
@given(data=st.data())
def test_hdf5_truncated_or_flipped_bytes(work, h5_bases, data):
    layout = data.draw(st.sampled_from(sorted(h5_bases)), label="layout")
    raw, _ = damage(h5_bases[layout], data)
    path = case_path(work, ".h5")
    path.write_bytes(raw)
    outcome(h5_cfg(path))
    path.unlink()


# ------------------------------------------------------ HDF5: structure
def _bad_numbers(value: int):
    return lambda d, rng: d.update(atomic_numbers=np.array([value, *d["atomic_numbers"][1:]], dtype=np.int16))


def _set_row(key: str, value: float):
    def apply(d, rng):
        arr = np.array(d[key], dtype=np.float64 if key == "wb97x_dz.energy" else d[key].dtype)
        if len(arr):
            row = int(rng.integers(len(arr)))
            if arr.ndim == 1:
                arr[row] = value
            else:
                arr[row, int(rng.integers(arr.shape[1]))] = value
        d[key] = arr
    return apply


def _overlap(d, rng):
    xyz = np.array(d["coordinates"])
    row = int(rng.integers(len(xyz)))
    xyz[row, 1] = xyz[row, 0] + np.float32(0.1)
    d["coordinates"] = xyz


def _no_atoms(d, rng):
    c = len(d["coordinates"])
    d.update(atomic_numbers=np.zeros(0, np.uint8), coordinates=np.zeros((c, 0, 3), np.float32),
             **{"wb97x_dz.forces": np.zeros((c, 0, 3), np.float32)})


def _empty_rows(d, rng):
    n = len(d["atomic_numbers"])
    d.update(coordinates=np.zeros((0, n, 3), np.float32), smiles=np.zeros(0, "S4"),
             **{"wb97x_dz.energy": np.zeros(0), "wb97x_dz.forces": np.zeros((0, n, 3), np.float32)})


def _int_coordinates(d, rng):
    c, n = d["coordinates"].shape[:2]
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * 2
    d["coordinates"] = np.broadcast_to(grid, (c, n, 3)).astype(np.int32)


def _strings(key: str):
    return lambda d, rng: d.update({key: np.full(np.shape(d[key]), b"1.5e0")})


def _reshape(key: str, shape):
    return lambda d, rng: d.update({key: np.zeros(shape(np.shape(d[key])), dtype=np.float64)})


def _link_numbers(d, rng):
    d["atomic_numbers"] = SoftLink(d.pop("_self") + "/z_copy")
    d["z_copy"] = np.asarray(d.get("_z"))


#: Changes that keep the file valid: the read must give exactly what was written.
BENIGN = {
    "extra unknown groups": ("file", lambda spec, rng: spec.update({"extra/empty": {}, "meta": {"notes": np.array([b"x"])}})),
    "extra unknown datasets": ("group", lambda d, rng: d.update({"wb97x_dz.dipoles": rng.normal(size=(len(d["coordinates"]), 3)),
                                                                 "hirshfeld": np.arange(3)})),
    "integer coordinates": ("group", _int_coordinates),
    "float16 forces, float64 coordinates": ("group", lambda d, rng: d.update(
        coordinates=np.asarray(d["coordinates"], np.float64), **{"wb97x_dz.forces": np.asarray(d["wb97x_dz.forces"], np.float16)})),
    "float32 energies": ("group", lambda d, rng: d.update({"wb97x_dz.energy": np.asarray(d["wb97x_dz.energy"], np.float32)})),
    "NaN energy row": ("group", _set_row("wb97x_dz.energy", np.nan)),
    "inf force row": ("group", _set_row("wb97x_dz.forces", np.inf)),
    "NaN coordinate row": ("group", _set_row("coordinates", np.nan)),
    "group without rows": ("group", _empty_rows),
    "element symbols for atomic numbers": ("group", lambda d, rng: d.update(
        atomic_numbers=np.array([SYMBOLS[int(z)] for z in d["atomic_numbers"]]))),
    "atomic numbers per conformation": ("group", lambda d, rng: d.update(
        atomic_numbers=np.tile(d["atomic_numbers"], (len(d["coordinates"]), 1)))),
    "energies as a column": ("group", lambda d, rng: d.update({"wb97x_dz.energy": np.asarray(d["wb97x_dz.energy"]).reshape(-1, 1)})),
    "chunked gzip datasets": ("group", lambda d, rng: d.update({k: Chunked(np.asarray(d[k])) for k in ("coordinates", "wb97x_dz.forces")})),
    "no labels": ("group", lambda d, rng: d.pop("smiles")),
    "labels not UTF-8": ("group", lambda d, rng: d.update(smiles=np.array([b"\xff\xfe" + bytes([i]) for i in range(len(d["smiles"]))]))),
    "atomic numbers through a soft link": ("group", _link_numbers),
    "unit attributes that match": ("file", lambda spec, rng: spec["/attrs"].update(energy_unit="hartree", length_unit="angstrom")),
}

#: Changes that make the file unusable: (target, change, words the one-line error must contain besides the group).
FATAL = {
    "coordinates as strings": ("group", _strings("coordinates"), ["'coordinates' has dtype"]),
    "energies as strings": ("group", _strings("wb97x_dz.energy"), ["'wb97x_dz.energy' has dtype"]),
    "forces as strings": ("group", _strings("wb97x_dz.forces"), ["'wb97x_dz.forces' has dtype"]),
    "complex coordinates": ("group", lambda d, rng: d.update(coordinates=np.asarray(d["coordinates"], np.complex64)), ["'coordinates' has dtype"]),
    "boolean forces": ("group", lambda d, rng: d.update({"wb97x_dz.forces": np.ones(np.shape(d["wb97x_dz.forces"]), bool)}), ["'wb97x_dz.forces' has dtype"]),
    "coordinates (n, k, 2)": ("group", _reshape("coordinates", lambda s: (*s[:2], 2)), ["'coordinates' has shape"]),
    "coordinates 2-D": ("group", _reshape("coordinates", lambda s: (s[0], s[1] * 3)), ["'coordinates' has shape"]),
    "energies 2-D": ("group", _reshape("wb97x_dz.energy", lambda s: (s[0], 2)), ["'wb97x_dz.energy' has shape"]),
    "energies one row short": ("group", _reshape("wb97x_dz.energy", lambda s: (max(s[0] - 1, 0) if s[0] else 1,)), ["'wb97x_dz.energy' has shape"]),
    "forces for one atom more": ("group", _reshape("wb97x_dz.forces", lambda s: (s[0], s[1] + 1, 3)), ["'wb97x_dz.forces' has shape"]),
    "labels of the wrong length": ("group", lambda d, rng: d.update(smiles=np.array([b"x"] * (len(d["coordinates"]) + 2))), ["'smiles' has shape"]),
    "no energies": ("group", lambda d, rng: d.pop("wb97x_dz.energy"), ["no energy dataset 'wb97x_dz.energy'"]),
    "no forces": ("group", lambda d, rng: d.pop("wb97x_dz.forces"), ["no forces dataset 'wb97x_dz.forces'"]),
    "no atomic_numbers": ("group", lambda d, rng: d.pop("atomic_numbers"), ["'atomic_numbers'"]),
    "no coordinates": ("group", lambda d, rng: d.pop("coordinates"), ["'coordinates'"]),
    "coordinates is a group": ("group", lambda d, rng: d.update(coordinates=Group()), ["'coordinates'"]),
    "forces: dangling soft link": ("group", lambda d, rng: d.update({"wb97x_dz.forces": SoftLink("/nowhere/forces")}), ["'wb97x_dz.forces'"]),
    "energies: external link to a missing file": ("group", lambda d, rng: d.update({"wb97x_dz.energy": ExternalLink("missing.h5", "/e")}), ["'wb97x_dz.energy'"]),
    "atomic number 0": ("group", _bad_numbers(0), ["atomic number 0"]),
    "atomic number 200": ("group", _bad_numbers(200), ["atomic number 200"]),
    "atomic number -1": ("group", _bad_numbers(-1), ["atomic number -1"]),
    "float atomic numbers": ("group", lambda d, rng: d.update(atomic_numbers=np.asarray(d["atomic_numbers"], np.float64)), ["atomic numbers have dtype"]),
    "unknown element symbol": ("group", lambda d, rng: d.update(atomic_numbers=np.array([b"Qq"] * len(d["atomic_numbers"]))), ["unknown element symbol"]),
    "no atoms": ("group", _no_atoms, ["'atomic_numbers' is empty"]),
    "overlapping atoms": ("group", _overlap, ["overlapping atoms"]),
    "unknown energy unit attribute": ("file", lambda spec, rng: spec["/attrs"].update(energy_unit="furlong"), ["energy_unit", "furlong"]),
    "energy unit attribute contradicts the config": ("file", lambda spec, rng: spec["/attrs"].update(energy_unit="kcal/mol"), ["energy_unit"]),
}

_GROUP_NAMES = sorted(GROUPS)


@fuzz(200)
@given(data=st.data())
def test_hdf5_wrong_dtypes_shapes_and_groups(work, data):
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    spec = base_spec(seed)
    n_changes = data.draw(st.integers(1, 3), label="changes")
    targets = data.draw(st.permutations(_GROUP_NAMES), label="groups")[:n_changes]
    fatal: list[tuple[str, list[str]]] = []  # (where, needles)
    applied = []
    file_changed = False  # one change of the file attributes at most: a second would undo the first
    for target in targets:
        choices = [n for n in sorted(BENIGN) + sorted(FATAL) if not file_changed or (FATAL.get(n) or BENIGN[n])[0] == "group"]
        name = data.draw(st.sampled_from(choices), label=f"change of {target}")
        where, change, needles = FATAL[name] if name in FATAL else (*BENIGN[name], None)
        file_changed |= where == "file"
        applied.append((target if where == "group" else "file", name))
        if where == "file":
            change(spec, rng)
        else:
            d = spec[target]
            d["_self"], d["_z"] = "/" + target, d["atomic_numbers"]
            change(d, rng)
            d.pop("_self", None), d.pop("_z", None)
        if needles is not None:
            fatal.append((target if where == "group" else "", needles))
    path = write_spec(case_path(work, ".h5"), spec)
    result = outcome(h5_cfg(path))
    if fatal:
        assert isinstance(result, NNPError), f"{applied}: read without error"
        msg = str(result)
        assert any(all(n in msg for n in needles) and f":/{target}" in msg if target else all(n in msg for n in needles)
                   for target, needles in fatal), f"{applied}: {msg}"
    elif not expected_rows_total(spec):
        assert isinstance(result, NNPError) and "dataset is empty" in str(result), f"{applied}: {result}"
    else:
        assert not isinstance(result, NNPError), f"{applied}: {result}"
        check_values(*result, spec)
    path.unlink()


def expected_rows_total(spec: dict) -> int:
    return sum(len(rows) for _, rows in expected_rows(spec).values())


# ------------------------------------------------------------------ extxyz
XYZ_FRAMES = [  # (symbols, positions, energy, forces, lattice or None, pbc)
    ("OHH", [[0.0, 0.0, 0.1], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]], -10.0,
     [[0.1, -0.2, 0.3], [-0.1, 0.0, 0.2], [0.0, 0.2, -0.5]], None, "F F F"),
    ("CHHHH", [[0.0, 0.0, 0.0], [1.09, 0.0, 0.0], [-0.36, 1.03, 0.0], [-0.36, -0.51, 0.89], [-0.36, -0.51, -0.89]], -24.5,
     [[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [-0.1, 0.3, 0.0], [-0.1, -0.15, 0.25], [-0.1, -0.15, -0.25]], None, "F F F"),
    ("OHH", [[0.1, 0.0, 0.0], [1.05, 0.1, 0.0], [-0.2, 0.95, 0.1]], -9.5,
     [[0.2, 0.1, 0.0], [-0.2, 0.0, 0.1], [0.0, -0.1, -0.1]], [[4.0, 0.0, 0.0], [0.0, 4.5, 0.0], [0.5, 0.0, 5.0]], "T T T"),
]
PROPERTIES = "Properties=species:S:1:pos:R:3:forces:R:3"


def xyz_lines() -> list[list[str]]:
    """Each frame as its lines: count, comment, atoms."""
    frames = []
    for symbols, pos, energy, forces, lattice, pbc in XYZ_FRAMES:
        comment = f'{PROPERTIES} energy={energy} pbc="{pbc}"'
        if lattice is not None:
            comment = 'Lattice="' + " ".join(f"{x}" for row in lattice for x in row) + '" ' + comment
        atoms = [f"{s} {' '.join(f'{x:.6f}' for x in p)} {' '.join(f'{x:.6f}' for x in f)}"
                 for s, p, f in zip(symbols, pos, forces, strict=True)]
        frames.append([str(len(symbols)), comment, *atoms])
    return frames


def join(frames: list[list[str]]) -> str:
    return "\n".join(line for frame in frames for line in frame) + "\n"


class Text(str):
    def __repr__(self) -> str:
        return f"<{len(self)} characters>"


@pytest.fixture(scope="module")
def xyz_base() -> str:
    return Text(join(xyz_lines()))


def check_ase_values(samples, frames) -> None:
    from ase.data import atomic_numbers

    assert len(samples) == len(frames)
    for s, (symbols, pos, energy, forces, lattice, pbc) in zip(samples, frames, strict=True):
        np.testing.assert_array_equal(s[keys.Z], [atomic_numbers[c] for c in symbols])
        np.testing.assert_allclose(s[keys.R], pos, atol=1e-6)
        np.testing.assert_allclose(s[keys.ENERGY], energy)
        np.testing.assert_allclose(s[keys.FORCES], forces, atol=1e-6)
        np.testing.assert_array_equal(s[keys.PBC], [c == "T" for c in pbc.split()])
        if lattice is not None:
            np.testing.assert_allclose(s[keys.CELL], lattice)


def _comment(frame: list[str], old: str, new: str) -> None:
    assert old in frame[1]
    frame[1] = frame[1].replace(old, new, 1)


def _field(frame: list[str], value: str, rng) -> None:
    atom = 2 + int(rng.integers(len(frame) - 2))
    parts = frame[atom].split()
    parts[1 + int(rng.integers(len(parts) - 1))] = value
    frame[atom] = " ".join(parts)


def _lattice(frame: list[str], lattice: str, pbc: str) -> None:
    """Give a frame this cell (9 numbers) and pbc ("T T F"), replacing its own."""
    rest = re.sub(r'(Lattice|pbc)="[^"]*" ?', "", frame[1]).strip()
    frame[1] = f'Lattice="{lattice}" {rest} pbc="{pbc}"'


#: name: (change(frames, k, rng), needles of the one-line error or None when the result must be correct)
XYZ_CHANGES = {
    "Properties: 2 position columns": (lambda fr, k, rng: _comment(fr[k], "pos:R:3", "pos:R:2"), ["ASE cannot read"]),
    "Properties: unknown type": (lambda fr, k, rng: _comment(fr[k], "pos:R:3", "pos:Q:3"), ["ASE cannot read"]),
    "Properties: garbage": (lambda fr, k, rng: _comment(fr[k], PROPERTIES, "Properties=garbage"), ["structure {k}"]),
    "Properties: no positions": (lambda fr, k, rng: _comment(fr[k], "species:S:1:pos:R:3", "species:S:1:q:R:3"), ["structure {k}"]),
    "Properties: one column too many": (lambda fr, k, rng: _comment(fr[k], "forces:R:3", "forces:R:3:extra:R:1"), ["ASE cannot read"]),
    "Properties: no forces": (lambda fr, k, rng: (_comment(fr[k], ":forces:R:3", ""), fr[k].__setitem__(
        slice(2, None), [" ".join(line.split()[:4]) for line in fr[k][2:]])), ["structure {k}", "no forces under key 'forces'"]),
    "atom count one more": (lambda fr, k, rng: fr[k].__setitem__(0, str(int(fr[k][0]) + 1)), ["ASE cannot read"]),
    "atom count one less": (lambda fr, k, rng: fr[k].__setitem__(0, str(int(fr[k][0]) - 1)), []),
    "atom count not a number": (lambda fr, k, rng: fr[k].__setitem__(0, "three"), ["ASE cannot read"]),
    "atom count negative": (lambda fr, k, rng: fr[k].__setitem__(0, "-3"), ["ASE cannot read"]),
    "non-numeric field": (lambda fr, k, rng: _field(fr[k], "abc", rng), ["ASE cannot read"]),
    "NaN position": (lambda fr, k, rng: fr[k].__setitem__(2, fr[k][2].split()[0] + " nan 0 0 0 0 0"), ["structure {k}", "NaN or infinite coordinates"]),
    "no energy": (lambda fr, k, rng: _comment(fr[k], f"energy={XYZ_FRAMES[k][2]}", ""), ["structure {k}", "no energy under key 'energy'"]),
    "energy not a number": (lambda fr, k, rng: _comment(fr[k], f"energy={XYZ_FRAMES[k][2]}", "energy=abc"), ["structure {k}", "energy 'energy' is not a number"]),
    "energy a boolean": (lambda fr, k, rng: _comment(fr[k], f"energy={XYZ_FRAMES[k][2]}", "energy=T"), ["structure {k}", "energy 'energy' is not a number"]),
    "energy three numbers": (lambda fr, k, rng: _comment(fr[k], f"energy={XYZ_FRAMES[k][2]}", 'energy="1 2 3"'), ["structure {k}", "energy 'energy' has 3 values"]),
    "dummy atom X": (lambda fr, k, rng: fr[k].__setitem__(2, "X" + fr[k][2][1:]), ["structure {k}", "atomic number 0"]),
    "unknown element": (lambda fr, k, rng: fr[k].__setitem__(2, "Qq" + fr[k][2][1:]), ["ASE cannot read"]),
    "overlapping atoms": (lambda fr, k, rng: fr[k].__setitem__(3, fr[k][3].split()[0] + " " + " ".join(fr[k][2].split()[1:])), ["structure {k}", "overlapping atoms"]),
    "periodic, zero cell vector": (lambda fr, k, rng: _lattice(fr[k], "4 0 0 0 0 0 0 0 5" if rng.integers(2) else "0 0 0 0 4 0 0 0 5", "T T T"), ["structure {k}", "has zero length"]),
    "periodic, no cell": (lambda fr, k, rng: (_comment(fr[k], 'pbc="F F F"', 'pbc="T T T"') if "Lattice" not in fr[k][1] else _lattice(fr[k], "0 0 0 0 0 0 0 0 0", "T T T")), ["structure {k}", "cell vector 0 has zero length"]),
    "slab, zero vacuum vector": (lambda fr, k, rng: _lattice(fr[k], "4 0 0 0 4 0 0 0 0", "T T F"), ["structure {k}", "cell vector 2 has zero length"]),
    "periodic, singular cell": (lambda fr, k, rng: _lattice(fr[k], "4 0 0 0 4 0 4 4 0", "T T T"), ["structure {k}", "cell is singular"]),
    "periodic, NaN in cell": (lambda fr, k, rng: _lattice(fr[k], "4 0 0 0 nan 0 0 0 5", "T T T"), []),
    "frame without atoms": (lambda fr, k, rng: fr.insert(k, ["0", f'{PROPERTIES} energy=1.0 pbc="F F F"']), ["structure {k}", "no atoms"]),
    "blank line between frames": (lambda fr, k, rng: fr[k].insert(0, "") if k else fr[1].insert(0, ""), ["blank line"]),
}
#: Changes after which the file is still valid: the read must give the frames written (less skipped ones).
XYZ_BENIGN = {
    "NaN energy: frame skipped": lambda fr, k, rng: _comment(fr[k], f"energy={XYZ_FRAMES[k][2]}", "energy=nan"),
    "inf force: frame skipped": lambda fr, k, rng: fr[k].__setitem__(2, " ".join(fr[k][2].split()[:4] + ["inf", "0", "0"])),
    "extra info keys": lambda fr, k, rng: fr[k].__setitem__(1, fr[k][1] + ' note="hello world" step=3'),
    "non-periodic with a zero cell vector": lambda fr, k, rng: _lattice(fr[k], "0 0 0 0 0 0 0 0 0", "F F F"),
    "trailing blank lines": lambda fr, k, rng: fr[-1].extend(["", "  ", ""]),
    "tabs between fields": lambda fr, k, rng: fr[k].__setitem__(2, "\t".join(fr[k][2].split())),
}


@fuzz(120)
@given(data=st.data())
def test_extxyz_malformed(work, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    frames = xyz_lines()
    k = data.draw(st.integers(0, len(frames) - 1), label="frame")
    name = data.draw(st.sampled_from(sorted(XYZ_CHANGES) + sorted(XYZ_BENIGN)), label="change")
    expect = [list(f) for f in XYZ_FRAMES]
    if name in XYZ_CHANGES:
        change, needles = XYZ_CHANGES[name]
    else:
        change, needles = XYZ_BENIGN[name], None
        if "skipped" in name:
            expect.pop(k)
        if name.startswith("non-periodic"):
            expect[k][4:] = [None, "F F F"]
    change(frames, k, rng)
    path = case_path(work, ".extxyz")
    path.write_text(join(frames))
    result = outcome(ase_cfg(path))
    if needles is None:
        assert not isinstance(result, NNPError), f"{name}: {result}"
        check_ase_values(result[1], expect)
    elif name == "atom count one less":  # the last frame's extra line, or the next frame's count, breaks it
        assert isinstance(result, NNPError), name
    else:
        assert isinstance(result, NNPError), f"{name} (frame {k}): read without error"
        msg = str(result)
        assert all(n.format(k=k) in msg for n in needles), f"{name} (frame {k}): {msg}"
    path.unlink()


@fuzz(80)
@given(data=st.data())
def test_extxyz_truncated_or_flipped_bytes(work, xyz_base, data):
    raw, _ = damage(xyz_base.encode(), data)
    path = case_path(work, ".extxyz")
    path.write_bytes(raw)
    outcome(ase_cfg(path))
    path.unlink()


# ------------------------------------------------------------------- ASE db
@pytest.fixture(scope="module")
def db_base(work) -> bytes:
    import ase.db
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    path = work / "base.db"
    with ase.db.connect(path) as db:
        for symbols, pos, energy, forces, lattice, pbc in XYZ_FRAMES:
            atoms = Atoms(symbols, positions=pos, cell=lattice, pbc=[c == "T" for c in pbc.split()])
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.array(forces))
            db.write(atoms, molecule=symbols)
    return Raw(path.read_bytes())


def _blob(values, dtype) -> bytes:
    return np.asarray(values, dtype=dtype).tobytes()


#: name: (SQL run on the row of frame k (``{id}``), needles or None when the result must be correct)
DB_CHANGES = {
    "numbers blob too short": ("UPDATE systems SET numbers=? WHERE id={id}", lambda: (_blob([8, 1], np.int32),), ["structure {k}"]),
    "numbers blob odd length": ("UPDATE systems SET numbers=? WHERE id={id}", lambda: (b"\x08\x00\x00",), ["structure {k}"]),
    "atomic number 0": ("UPDATE systems SET numbers=? WHERE id={id}", None, ["structure {k}", "atomic number 0"]),
    "atomic number 200": ("UPDATE systems SET numbers=? WHERE id={id}", None, ["structure {k}", "atomic number 200"]),
    "positions blob cut": ("UPDATE systems SET positions=substr(positions, 1, 20) WHERE id={id}", None, ["structure {k}"]),
    "positions NULL": ("UPDATE systems SET positions=NULL WHERE id={id}", None, ["structure {k}"]),
    "energy text": ("UPDATE systems SET energy='abc' WHERE id={id}", None, ["structure {k}", "energy"]),
    "energy NULL": ("UPDATE systems SET energy=NULL WHERE id={id}", None, ["structure {k}", "no energy under key 'energy'"]),
    "forces blob cut": ("UPDATE systems SET forces=substr(forces, 1, 30) WHERE id={id}", None, ["structure {k}"]),
    "key_value_pairs not JSON": ("UPDATE systems SET key_value_pairs='{{bad' WHERE id={id}", None, ["structure {k}"]),
    "data garbage": ("UPDATE systems SET data=X'00ff00ff' WHERE id={id}", None, ["structure {k}"]),
    "periodic, zero cell": ("UPDATE systems SET cell=?, pbc=7 WHERE id={id}", lambda: (_blob(np.zeros((3, 3)), np.float64),), ["structure {k}", "cell vector 0 has zero length"]),
    "periodic, singular cell": ("UPDATE systems SET cell=?, pbc=7 WHERE id={id}", lambda: (_blob([[4, 0, 0], [0, 4, 0], [4, 4, 0]], np.float64),), ["structure {k}", "cell is singular"]),
    "cell blob cut": ("UPDATE systems SET cell=substr(cell, 1, 40), pbc=7 WHERE id={id}", None, ["structure {k}"]),
    "no rows": ("DELETE FROM systems", None, ["holds no structures"]),
    "no systems table": ("DROP TABLE systems", None, ["ASE cannot read"]),
}


@fuzz(80)
@given(data=st.data())
def test_ase_db_malformed(work, db_base, data):
    k = data.draw(st.integers(0, len(XYZ_FRAMES) - 1), label="frame")
    name = data.draw(st.sampled_from(sorted(DB_CHANGES)), label="change")
    sql, args, needles = DB_CHANGES[name]
    path = case_path(work, ".db")
    path.write_bytes(db_base)
    con = sqlite3.connect(path)
    try:
        (row_id,), = con.execute("SELECT id FROM systems ORDER BY id LIMIT 1 OFFSET ?", (k,)).fetchall()
        if name.startswith("atomic number"):
            z = int(name.split()[-1])
            numbers, = con.execute(f"SELECT numbers FROM systems WHERE id={row_id}").fetchone()
            values = np.frombuffer(numbers, np.int32).copy()
            values[int(data.draw(st.integers(0, len(values) - 1), label="atom"))] = z
            args = lambda: (values.tobytes(),)  # noqa: E731
        con.execute(sql.format(id=row_id), args() if args else ())
        con.commit()
    finally:
        con.close()
    result = outcome(ase_cfg(path))
    assert isinstance(result, NNPError), f"{name} (frame {k}): read without error"
    msg = str(result)
    assert all(n.format(k=k) in msg for n in needles), f"{name} (frame {k}): {msg}"
    path.unlink()


@fuzz(60)
@given(data=st.data())
def test_ase_db_truncated_or_flipped_bytes(work, db_base, data):
    # most of a fresh sqlite file is empty pages: flip bytes where the schema and rows are
    used = len(db_base.rstrip(b"\x00"))
    raw, _ = damage(db_base[:used], data)
    path = case_path(work, ".db")
    path.write_bytes(raw + db_base[used:] if len(raw) == used else raw)
    outcome(ase_cfg(path))
    path.unlink()


# ---------------------------------------------------------------- data info
@fuzz(60)
@given(data=st.data())
def test_data_info_on_damaged_files(work, h5_bases, xyz_base, db_base, data):
    kind = data.draw(st.sampled_from(["h5", "extxyz", "db", "h5-structure"]), label="file")
    if kind == "h5-structure":
        spec = base_spec()
        target = data.draw(st.sampled_from(_GROUP_NAMES), label="group")
        name = data.draw(st.sampled_from(sorted(FATAL) + sorted(BENIGN)), label="change")
        where, change = (FATAL.get(name) or BENIGN[name])[:2]
        d = spec[target]
        d["_self"], d["_z"] = "/" + target, d["atomic_numbers"]
        change(spec if where == "file" else d, np.random.default_rng(0))
        d.pop("_self", None), d.pop("_z", None)
        path = write_spec(case_path(work, ".h5"), spec)
    else:
        raw = {"h5": h5_bases["contiguous"], "extxyz": xyz_base.encode(), "db": db_base}[kind]
        raw, _ = damage(raw, data)
        path = case_path(work, "." + kind)
        path.write_bytes(raw)
    options = ["energy_unit=hartree"] if path.suffix == ".h5" else []
    info_outcome(path, *options, as_json=data.draw(st.booleans(), label="--json"))
    path.unlink()


# ------------------------------------------------------- regression examples
def test_group_name_not_utf8(work):
    """A group name that is not UTF-8 (h5py cannot decode it when walking the file)."""
    path = case_path(work, ".h5")
    write_spec(path, base_spec())
    with h5py.File(path, "r+") as f:
        f.move("H2O1", b"H2\xff\xfeO1")
    result = outcome(h5_cfg(path))
    assert isinstance(result, NNPError) and "UTF-8" in str(result), result


def test_labels_not_utf8_are_kept_distinct(work):
    spec = base_spec()
    spec["H2O1"]["smiles"] = np.array([b"\xff", b"\xfe", b"\xff", b"ok"])
    ds, samples = outcome(h5_cfg(write_spec(case_path(work, ".h5"), spec)))
    assert {"\\xff", "\\xfe", "ok"} <= set(ds.group_names())
    check_values(ds, samples, spec)


def test_db_row_with_broken_json_names_the_row(work, db_base):
    path = case_path(work, ".db")
    path.write_bytes(db_base)
    with contextlib.closing(sqlite3.connect(path)) as con:
        con.execute("UPDATE systems SET key_value_pairs='{bad' WHERE id=2")
        con.commit()
    result = outcome(ase_cfg(path))
    assert isinstance(result, NNPError) and "structure 1 (row id 2): ASE cannot read this row" in str(result), result


def test_extxyz_energy_text_names_structure_and_key(work, xyz_base):
    path = case_path(work, ".extxyz")
    path.write_text(xyz_base.replace("energy=-24.5", "energy=abc"))
    result = outcome(ase_cfg(path))
    assert str(result) == f"{path}: structure 1: energy 'energy' is not a number (got 'abc')"


def test_extxyz_blank_line_does_not_drop_structures(work, xyz_base):
    """ASE's reader stops at a blank line: the rest of the file would be lost without a word."""
    lines = xyz_base.splitlines()
    path = case_path(work, ".extxyz")
    path.write_text("\n".join(lines[:5] + [""] + lines[5:]) + "\n")
    result = outcome(ase_cfg(path))
    assert isinstance(result, NNPError) and "line 7: more text after a blank line" in str(result), result
