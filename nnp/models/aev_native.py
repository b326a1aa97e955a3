"""A compiled kernel for ANI's AEV and its closed-form backward, built at first use with the system C compiler.

Per triple of a center and two of its close neighbors, the angular AEV needs
about a hundred floating-point operations, and its derivative as many; done
with torch ops, every step is a pass over (32, triples) arrays in memory
(tens of MB per batch of 256 molecules) and the descriptor took ~70% of ANI's
energy + forces. This kernel runs the same formulas triple by triple in
registers: the forward writes each center's AEV row, the backward reads the
center's dE/dAEV row and accumulates dE/d(pair vector), so nothing per triple
is stored (also none of the forward's intermediates: the backward recomputes
them, cheaper than reading them back).

Built once per machine into ``$NNP_CACHE_DIR`` (default ``~/.cache/nnp``) with
``cc -O3 -march=native -fopenmp`` (the file name holds a hash of the source,
the compiler and the CPU's flags, so a shared home on different CPUs gets one
build per kind of CPU); loaded with ctypes. Centers are shared among
``torch.get_num_threads()`` OpenMP threads, from the libgomp torch loaded. Without a C
compiler (or with ``NNP_NATIVE=0``) :func:`library` returns None, says so once,
and the AEV runs on torch ops (the same numbers to float tolerance, slower).
Checked against the torch implementation in tests/test_aev_fused.py.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

#: the largest number of radial shifts, angular radial shifts or angle sections the kernel takes
MAX_TERMS = 64

#: the C source (shipped beside this module as package data)
SOURCE_FILE = Path(__file__).with_name("aev_kernel.c")

_state: Dict[str, Any] = {"tried": False, "lib": None, "why": ""}


def library() -> Any:
    """The loaded kernel (a ctypes library), or None (without a compiler; said once)."""
    if not _state["tried"]:
        _state["tried"] = True
        if os.environ.get("NNP_NATIVE", "1") == "0":
            _state["why"] = "NNP_NATIVE=0"
        else:
            try:
                _state["lib"] = _load(_build())
            except Exception as err:  # no compiler, a read-only cache, a failed build: fall back
                _state["why"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                warnings.warn(
                    f"nnp: the compiled ANI descriptor kernel is not available ({_state['why']}); "
                    "using torch ops (same results, slower). Install a C compiler (gcc or clang) to get it.",
                    RuntimeWarning, stacklevel=3,
                )
    return _state["lib"]


def _cache_dir() -> Path:
    root = os.environ.get("NNP_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "nnp"
    )
    return Path(root)


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build() -> Path:
    named = os.environ.get("CC")
    compiler = shutil.which(named) if named else (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
    if not compiler:
        raise RuntimeError(f"no C compiler {named!r}" if named else "no C compiler (cc, gcc or clang) on PATH")
    # -ffast-math lets the compiler vectorize exp (glibc's vector math); compiled only, never
    # linked with it: linking with it adds crtfastmath, which would set flush-to-zero for the
    # whole process. It assumes finite numbers: supports() sends non-finite vectors to torch ops.
    flags = ["-O3", "-ffast-math", "-fPIC"]
    code = SOURCE_FILE.read_text()
    key = hashlib.sha256("\0".join([code, compiler, *flags, "native", platform.machine(), _cpu_flags()]).encode()).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"nnp-{os.getuid() if hasattr(os, 'getuid') else 0}"):
        target = folder / f"aev_kernel_{key}.so"
        if target.is_file():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                source = Path(tmp) / "aev_kernel.c"
                source.write_text(code)
                built = Path(tmp) / "aev_kernel.so"
                obj = Path(tmp) / "aev_kernel.o"
                # OpenMP: the kernel's threads come from the libgomp torch has loaded (the same
                # soname), so they are torch's own pool, not a second one; without it, one thread.
                # -march=native: this CPU's vector width (compilers without it build without).
                for extra in (["-march=native", "-fopenmp"], ["-march=native"], ["-fopenmp"], []):
                    errors = _compile(compiler, [*flags, *extra], source, obj, built)
                    if not errors:
                        break
                if errors:
                    raise RuntimeError(f"{compiler} failed: {errors[:300]}")
                os.replace(built, target)  # atomic: concurrent builders each install a whole file
            return target
        except OSError:
            continue  # not writable: the next folder
    raise RuntimeError("no writable folder for the compiled kernel (set NNP_CACHE_DIR)")


def _compile(compiler: str, flags: list, source: Path, obj: Path, built: Path) -> str:
    """Compile and link (the link without ``flags``' -ffast-math); the compiler's errors, or ''."""
    openmp = [f for f in flags if f == "-fopenmp"]
    for cmd in ([compiler, *flags, "-c", "-o", str(obj), str(source)],
                [compiler, "-shared", *openmp, "-o", str(built), str(obj), "-lm"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            return (proc.stderr or proc.stdout).strip() or f"exit {proc.returncode}"
    return ""


def _load(path: Path) -> Any:
    lib = ctypes.CDLL(str(path))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        getattr(lib, f"radial_forward_{suffix}").argtypes = [i64, i64, ptr, ptr, real, ptr, i64, real, ptr]
        getattr(lib, f"radial_backward_{suffix}").argtypes = [i64, i64, ptr, ptr, real, ptr, i64, real, ptr, ptr, i64]
        common = [i64, i64, ptr, ptr, ptr, ptr]
        params = [ptr, i64, ptr, ptr, i64, real, real, i64]
        getattr(lib, f"angular_forward_{suffix}").argtypes = common + [ptr, ptr, i64] + params + [ptr, i64, i64]
        getattr(lib, f"angular_backward_{suffix}").argtypes = common + [ptr, ptr, ptr, i64] + params + [ptr, i64, ptr, i64]
        getattr(lib, f"prepare_{suffix}").argtypes = [i64] * 3 + [ptr] * 3 + [i64] * 2 + [ptr] + [i64] * 2 + [real] + [ptr] * 10
        getattr(lib, f"prepare_{suffix}").restype = i64
        for name in ("radial_forward", "radial_backward", "angular_forward", "angular_backward"):
            getattr(lib, f"{name}_{suffix}").restype = None
    return lib


def supports(aev, vectors: torch.Tensor) -> bool:
    """Whether the kernel can run this AEV on these vectors: CPU, float32/64, at most MAX_TERMS
    terms, and finite (NaN then propagates through torch ops, as in the reference path)."""
    return (
        vectors.device.type == "cpu"
        and vectors.dtype in (torch.float32, torch.float64)
        and max(aev.radial_shifts.numel(), aev.angular_radial_shifts.numel(), aev.angle_shifts.numel()) <= MAX_TERMS
        and library() is not None
        and bool(torch.isfinite(vectors).all())
    )


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _constants(aev, dtype: torch.dtype) -> Dict[str, Any]:
    """The kernel's constants in ``dtype``, cached on ``aev`` (rebuilt when a buffer changed: a
    new state dict): per call they were ~10 small ops, a tenth of a small molecule's AEV."""
    buffers = (aev.radial_shifts, aev.angular_radial_shifts, aev.angle_shifts, aev.species_pair_index)
    key = (float(aev.angular_zeta),) + tuple(b._version for b in buffers)
    cache = aev.__dict__.setdefault("_native_constants", {})
    entry = cache.get(dtype)
    # (the entry holds the buffers themselves, so "is" cannot match a new tensor at a reused address)
    if entry is None or entry[0] != key or any(a is not b for a, b in zip(entry[1], buffers)):
        entry = cache[dtype] = (key, buffers, _make_constants(aev, dtype))
    return entry[2]


def _make_constants(aev, dtype: torch.dtype) -> Dict[str, Any]:
    zeta = float(aev.angular_zeta)
    izeta = int(zeta) if float(int(zeta)) == zeta and 1 <= int(zeta) <= 1024 else 0
    return {
        "radial_shifts": aev.radial_shifts.to(dtype).contiguous(),
        "angular_shifts": aev.angular_radial_shifts.to(dtype).contiguous(),
        "cos_s": torch.cos(aev.angle_shifts.to(dtype)).contiguous(),
        "sin_s": torch.sin(aev.angle_shifts.to(dtype)).contiguous(),
        "pair_index": aev.species_pair_index.contiguous(),
        "zeta": zeta,
        "izeta": izeta,
    }


def forward(aev, species: torch.Tensor, pairs: torch.Tensor, vectors: torch.Tensor, first_center: int,
            n_centers: int) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """AEVs (n_centers, length) as :meth:`nnp.models.aev.AEV.forward` (distances = ``|vectors|``),
    and what :func:`backward` needs. No graph."""
    lib = library()
    suffix = "f32" if vectors.dtype == torch.float32 else "f64"
    with torch.no_grad():
        vectors = vectors.detach().contiguous()
        species = species.contiguous()
        n = species.shape[0] if n_centers < 0 else n_centers
        n_pairs = pairs.shape[1]
        dtype = vectors.dtype
        k = _constants(aev, dtype)
        n_r = k["radial_shifts"].numel()
        width = aev.length
        # per pair and per close pair: what the kernel's prepare writes (close pairs: at most all)
        distances, d_close, fc, dfc = torch.empty((4, n_pairs), dtype=dtype).unbind(0)
        unit = torch.empty((n_pairs, 3), dtype=dtype)
        rows, close, nsp = torch.empty((3, n_pairs), dtype=torch.long).unbind(0)
        starts, pos = torch.empty(n + 1, dtype=torch.long), torch.empty(max(n, 1), dtype=torch.long)
        centers, neighbors = pairs[0].contiguous(), pairs[1].contiguous()  # (held: the kernel reads them)
        m = getattr(lib, f"prepare_{suffix}")(
            n_pairs, n, first_center, _ptr(centers), _ptr(neighbors), _ptr(species),
            species.shape[0], aev.n_species, _ptr(vectors), width, n_r, aev.angular_cutoff, _ptr(distances),
            _ptr(rows), _ptr(starts), _ptr(pos), _ptr(close), _ptr(unit), _ptr(d_close), _ptr(fc), _ptr(dfc), _ptr(nsp),
        )
        if m < 0:  # checked before the kernel wrote anything
            raise IndexError(
                {-1: f"pair centers outside atoms {first_center}..{first_center + n - 1}",
                 -2: f"pair neighbors outside atoms 0..{species.shape[0] - 1}",
                 -3: f"species outside 0..{aev.n_species - 1}"}[m])
        close, unit, d_close, fc, dfc, nsp = close[:m], unit[:m], d_close[:m], fc[:m], dfc[:m], nsp[:m]
        out = torch.zeros((n, width), dtype=dtype)
        getattr(lib, f"radial_forward_{suffix}")(
            0, n_pairs, _ptr(rows), _ptr(distances), aev.radial_cutoff, _ptr(k["radial_shifts"]), n_r,
            aev.radial_eta, _ptr(out),
        )
        angular_out = out[:, aev.radial_length:]
        getattr(lib, f"angular_forward_{suffix}")(
             0, n, _ptr(starts), _ptr(unit), _ptr(d_close), _ptr(fc), _ptr(nsp), _ptr(k["pair_index"]), aev.n_species,
             _ptr(k["angular_shifts"]), k["angular_shifts"].numel(), _ptr(k["cos_s"]), _ptr(k["sin_s"]),
             k["cos_s"].numel(), aev.angular_eta, k["zeta"], k["izeta"], _ptr(angular_out), width,
             torch.get_num_threads())
    state = {"vectors": vectors, "distances": distances, "rows": rows, "close": close, "starts": starts,
             "unit": unit, "d_close": d_close, "fc": fc, "dfc": dfc, "nsp": nsp, "constants": k,
             "n_centers": n}
    return out, state


def backward(aev, state: Dict[str, Any], grad: torch.Tensor) -> torch.Tensor:
    """dE/d(pair vectors) (P, 3) for ``grad`` = dE/dAEV (n_centers, length) of :func:`forward`'s AEVs."""
    lib = library()
    vectors = state["vectors"]
    suffix = "f32" if vectors.dtype == torch.float32 else "f64"
    k = state["constants"]
    with torch.no_grad():
        g = grad.to(vectors.dtype).contiguous()
        width = aev.length
        distances = state["distances"]
        n_pairs = distances.shape[0]
        dd = torch.empty_like(distances)
        threads = torch.get_num_threads()
        getattr(lib, f"radial_backward_{suffix}")(
             0, n_pairs, _ptr(state["rows"]), _ptr(distances), aev.radial_cutoff, _ptr(k["radial_shifts"]),
             k["radial_shifts"].numel(), aev.radial_eta, _ptr(g), _ptr(dd), threads)
        grad_close = torch.zeros_like(state["unit"])
        getattr(lib, f"angular_backward_{suffix}")(
             0, state["n_centers"], _ptr(state["starts"]), _ptr(state["unit"]), _ptr(state["d_close"]), _ptr(state["fc"]), _ptr(state["dfc"]),
             _ptr(state["nsp"]), _ptr(k["pair_index"]), aev.n_species,
             _ptr(k["angular_shifts"]), k["angular_shifts"].numel(), _ptr(k["cos_s"]), _ptr(k["sin_s"]),
             k["cos_s"].numel(), aev.angular_eta, k["zeta"], k["izeta"], _ptr(g[:, aev.radial_length:]), width,
             _ptr(grad_close), threads)
        out = dd[:, None] * (vectors / distances[:, None])
        out.index_add_(0, state["close"], grad_close)
    return out
