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

SOURCE = r"""
#include <math.h>
#include <stdint.h>
#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif
#define INLINE static inline __attribute__((always_inline))

/* Each exported function calls an always-inlined body; the ANI-1x sizes (16 radial shifts;
   4 x 8 angular terms) get their own copy with constant loop bounds, which the compiler
   unrolls and vectorizes. */
#define KERNELS(T, SUF, EXP, SQRT, POW, COS, SIN)                                                        \
INLINE void radial_forward_body_##SUF(int64_t p0, int64_t p1, const int64_t *row, const T *dist, T rc,     \
                                      const T *shifts, const int64_t n_r, T eta, T *out) {                 \
    for (int64_t p = p0; p < p1; p++) {                                                                    \
        T d = dist[p];                                                                                     \
        if (!(d < rc)) continue;                                                                           \
        T f = (T)0.125 * (COS(d * ((T)M_PI / rc)) + 1);                                                    \
        T *o = out + row[p];                                                                               \
        for (int64_t r = 0; r < n_r; r++) {                                                                \
            T x = d - shifts[r];                                                                           \
            T arg = -eta * x * x;                                                                          \
            o[r] += EXP(arg < (T)-80 ? (T)-80 : arg) * f;                                                  \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
void radial_forward_##SUF(int64_t p0, int64_t p1, const int64_t *row, const T *dist, T rc,                 \
                          const T *shifts, int64_t n_r, T eta, T *out) {                                   \
    if (n_r == 16) radial_forward_body_##SUF(p0, p1, row, dist, rc, shifts, 16, eta, out);                 \
    else radial_forward_body_##SUF(p0, p1, row, dist, rc, shifts, n_r, eta, out);                          \
}                                                                                                          \
                                                                                                           \
INLINE void radial_backward_body_##SUF(int64_t p0, int64_t p1, const int64_t *row, const T *dist, T rc,    \
                                       const T *shifts, const int64_t n_r, T eta, const T *g, T *dd) {     \
    for (int64_t p = p0; p < p1; p++) {                                                                    \
        T d = dist[p];                                                                                     \
        if (!(d < rc)) { dd[p] = 0; continue; }                                                           \
        T phase = d * ((T)M_PI / rc);                                                                      \
        T f = (T)0.125 * (COS(phase) + 1);                                                                 \
        T df = (T)(-0.125 * M_PI) / rc * SIN(phase);                                                       \
        const T *gr = g + row[p];                                                                          \
        T acc = 0;                                                                                         \
        for (int64_t r = 0; r < n_r; r++) {                                                                \
            T x = d - shifts[r];                                                                           \
            T arg = -eta * x * x;                                                                          \
            /* the clamp of the exponent at -80 has zero slope, as autograd's */                           \
            T slope = arg < (T)-80 ? (T)0 : (T)-2 * eta * x;                                               \
            acc += gr[r] * EXP(arg < (T)-80 ? (T)-80 : arg) * (df + f * slope);                            \
        }                                                                                                  \
        dd[p] = acc;                                                                                       \
    }                                                                                                      \
}                                                                                                          \
void radial_backward_##SUF(int64_t p0, int64_t p1, const int64_t *row, const T *dist, T rc,                \
                           const T *shifts, int64_t n_r, T eta, const T *g, T *dd, int64_t nthreads) {      \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1)")                    \
    for (int64_t q = p0; q < p1; q += 256) {                                                               \
        int64_t q1 = q + 256 < p1 ? q + 256 : p1;                                                          \
        if (n_r == 16) radial_backward_body_##SUF(q, q1, row, dist, rc, shifts, 16, eta, g, dd);           \
        else radial_backward_body_##SUF(q, q1, row, dist, rc, shifts, n_r, eta, g, dd);                    \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
/* one triple (a, b) of close pairs: e_r = exp(-eta (m - Rs_r)^2), fr = e_r 2 fc_a fc_b, fa_s = base_s^zeta, \
   dfa_s = d fa_s / d c, where c = 0.95 cos(theta) and base_s = 0.5 + 0.5 (c cos_s + sqrt(1 - c^2) sin_s) */ \
INLINE void triple_##SUF(const T *ua, const T *ub, T da, T db, T fca, T fcb, const T *shifts,             \
                         const int64_t n_r, const T *cos_s, const T *sin_s, const int64_t n_a, T eta,      \
                         T zeta, int64_t izeta, T *e, T *fr, T *fa, T *dfa, T *cab_out, T *m_out) {        \
    T cab = ua[0] * ub[0] + ua[1] * ub[1] + ua[2] * ub[2];                                                 \
    T cc = (T)0.95 * cab;                                                                                  \
    T sn = SQRT(1 - cc * cc);                                                                              \
    T f2 = 2 * fca * fcb;                                                                                  \
    T m = (T)0.5 * (da + db);                                                                              \
    for (int64_t r = 0; r < n_r; r++) {                                                                    \
        T x = m - shifts[r];                                                                               \
        e[r] = EXP(-eta * x * x);                                                                          \
        fr[r] = e[r] * f2;                                                                                 \
    }                                                                                                      \
    T base[64], below[64];                                                                                 \
    for (int64_t s = 0; s < n_a; s++) {                                                                    \
        base[s] = (T)0.5 + (T)0.5 * (cc * cos_s[s] + sn * sin_s[s]);                                       \
        below[s] = 1;                                                                                      \
    }                                                                                                      \
    if (izeta > 0) { /* base^(zeta - 1) by squaring, all sections at once */                               \
        T x[64];                                                                                           \
        for (int64_t s = 0; s < n_a; s++) x[s] = base[s];                                                  \
        for (int64_t n = izeta - 1; n; n >>= 1) {                                                          \
            if (n & 1) for (int64_t s = 0; s < n_a; s++) below[s] *= x[s];                                 \
            for (int64_t s = 0; s < n_a; s++) x[s] *= x[s];                                                \
        }                                                                                                  \
    } else {                                                                                               \
        for (int64_t s = 0; s < n_a; s++) below[s] = POW(base[s], zeta - 1);                               \
    }                                                                                                      \
    T ratio = cc / sn;                                                                                     \
    for (int64_t s = 0; s < n_a; s++) {                                                                    \
        fa[s] = below[s] * base[s];                                                                        \
        if (dfa) dfa[s] = zeta * below[s] * (T)0.5 * (cos_s[s] - sin_s[s] * ratio);                        \
    }                                                                                                      \
    *cab_out = cab;                                                                                        \
    *m_out = m;                                                                                            \
}                                                                                                          \
                                                                                                           \
INLINE void angular_forward_body_##SUF(int64_t c0, int64_t c1, const int64_t *starts, const T *unit,       \
                                       const T *dist, const T *fc, const int64_t *nsp,                     \
                                       const int64_t *pair_index, int64_t S, const T *shifts,              \
                                       const int64_t n_r, const T *cos_s, const T *sin_s,                  \
                                       const int64_t n_a, T eta, T zeta, int64_t izeta, T *out,            \
                                       int64_t stride) {                                                   \
    T e[64], fr[64], fa[64], cab, m;                                                                       \
    const int64_t block = n_r * n_a;                                                                       \
    for (int64_t c = c0; c < c1; c++) {                                                                    \
        T *o = out + c * stride;                                                                           \
        for (int64_t a = starts[c]; a < starts[c + 1]; a++) {                                             \
            for (int64_t b = a + 1; b < starts[c + 1]; b++) {                                             \
                triple_##SUF(unit + 3 * a, unit + 3 * b, dist[a], dist[b], fc[a], fc[b], shifts, n_r,      \
                             cos_s, sin_s, n_a, eta, zeta, izeta, e, fr, fa, 0, &cab, &m);                 \
                T *blk = o + pair_index[nsp[a] * S + nsp[b]] * block;                                      \
                for (int64_t r = 0; r < n_r; r++)                                                          \
                    for (int64_t s = 0; s < n_a; s++) blk[r * n_a + s] += fr[r] * fa[s];                   \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
/* centers c0..c1-1; close pairs starts[c]..starts[c+1]-1 of center c; out row of center c at           \
   out + c * stride, the block of neighbor species pair (sa, sb) at pair_index[sa * S + sb] * n_r * n_a */ \
void angular_forward_##SUF(int64_t c0, int64_t c1, const int64_t *starts, const T *unit, const T *dist,   \
                           const T *fc, const int64_t *nsp, const int64_t *pair_index, int64_t S,          \
                           const T *shifts, int64_t n_r, const T *cos_s, const T *sin_s, int64_t n_a,      \
                           T eta, T zeta, int64_t izeta, T *out, int64_t stride, int64_t nthreads) {       \
    /* centers write their own rows: no two threads touch the same memory */                              \
    _Pragma("omp parallel for schedule(dynamic, 16) num_threads(nthreads) if(nthreads > 1)")               \
    for (int64_t c = c0; c < c1; c++) {                                                                    \
        if (n_r == 4 && n_a == 8)                                                                          \
            angular_forward_body_##SUF(c, c + 1, starts, unit, dist, fc, nsp, pair_index, S, shifts, 4,    \
                                       cos_s, sin_s, 8, eta, zeta, izeta, out, stride);                    \
        else                                                                                               \
            angular_forward_body_##SUF(c, c + 1, starts, unit, dist, fc, nsp, pair_index, S, shifts, n_r,  \
                                       cos_s, sin_s, n_a, eta, zeta, izeta, out, stride);                  \
    }                                                                                                      \
}                                                                                                          \
                                                                                                           \
INLINE void angular_backward_body_##SUF(int64_t c0, int64_t c1, const int64_t *starts, const T *unit,      \
                                        const T *dist, const T *fc, const T *dfc, const int64_t *nsp,      \
                                        const int64_t *pair_index, int64_t S, const T *shifts,             \
                                        const int64_t n_r, const T *cos_s, const T *sin_s,                 \
                                        const int64_t n_a, T eta, T zeta, int64_t izeta, const T *g,       \
                                        int64_t stride, T *grad) {                                         \
    T e[64], fr[64], fa[64], dfa[64], cab, m;                                                              \
    const int64_t block = n_r * n_a;                                                                       \
    for (int64_t c = c0; c < c1; c++) {                                                                    \
        const T *gc = g + c * stride;                                                                      \
        for (int64_t a = starts[c]; a < starts[c + 1]; a++) {                                             \
            const T *ua = unit + 3 * a;                                                                    \
            for (int64_t b = a + 1; b < starts[c + 1]; b++) {                                             \
                const T *ub = unit + 3 * b;                                                                \
                triple_##SUF(ua, ub, dist[a], dist[b], fc[a], fc[b], shifts, n_r, cos_s, sin_s, n_a, eta,  \
                             zeta, izeta, e, fr, fa, dfa, &cab, &m);                                       \
                const T *blk = gc + pair_index[nsp[a] * S + nsp[b]] * block;                               \
                T dm = 0, df2 = 0, dcc = 0;                                                                \
                for (int64_t r = 0; r < n_r; r++) {                                                        \
                    T h = 0, q = 0;                                                                        \
                    for (int64_t s = 0; s < n_a; s++) {                                                    \
                        T gv = blk[r * n_a + s];                                                           \
                        h += gv * fa[s];                                                                   \
                        q += gv * dfa[s];                                                                  \
                    }                                                                                      \
                    dcc += q * fr[r];                                                                      \
                    df2 += h * e[r];                                                                       \
                    dm += h * fr[r] * (-2 * eta * (m - shifts[r]));                                        \
                }                                                                                          \
                T dda = (T)0.5 * dm + df2 * 2 * dfc[a] * fc[b];                                            \
                T ddb = (T)0.5 * dm + df2 * 2 * fc[a] * dfc[b];                                            \
                T wa = (T)0.95 * dcc / dist[a], wb = (T)0.95 * dcc / dist[b];                              \
                for (int k = 0; k < 3; k++) {                                                              \
                    grad[3 * a + k] += dda * ua[k] + wa * (ub[k] - cab * ua[k]);                           \
                    grad[3 * b + k] += ddb * ub[k] + wb * (ua[k] - cab * ub[k]);                           \
                }                                                                                          \
            }                                                                                              \
        }                                                                                                  \
    }                                                                                                      \
}                                                                                                          \
/* dE/d(close pair vector) (Pc, 3), += into grad, for g = dE/dAEV laid out as out above */                 \
void angular_backward_##SUF(int64_t c0, int64_t c1, const int64_t *starts, const T *unit, const T *dist,  \
                            const T *fc, const T *dfc, const int64_t *nsp, const int64_t *pair_index,      \
                            int64_t S, const T *shifts, int64_t n_r, const T *cos_s, const T *sin_s,       \
                            int64_t n_a, T eta, T zeta, int64_t izeta, const T *g, int64_t stride,         \
                            T *grad, int64_t nthreads) {                                                   \
    /* a center's close pairs are its own: threads write disjoint parts of grad */                         \
    _Pragma("omp parallel for schedule(dynamic, 16) num_threads(nthreads) if(nthreads > 1)")               \
    for (int64_t c = c0; c < c1; c++) {                                                                    \
        if (n_r == 4 && n_a == 8)                                                                          \
            angular_backward_body_##SUF(c, c + 1, starts, unit, dist, fc, dfc, nsp, pair_index, S, shifts, \
                                        4, cos_s, sin_s, 8, eta, zeta, izeta, g, stride, grad);            \
        else                                                                                               \
            angular_backward_body_##SUF(c, c + 1, starts, unit, dist, fc, dfc, nsp, pair_index, S, shifts, \
                                        n_r, cos_s, sin_s, n_a, eta, zeta, izeta, g, stride, grad);        \
    }                                                                                                      \
}

KERNELS(float, f32, expf, sqrtf, powf, cosf, sinf)
KERNELS(double, f64, exp, sqrt, pow, cos, sin)
"""

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
    key = hashlib.sha256("\0".join([SOURCE, compiler, *flags, "native", platform.machine(), _cpu_flags()]).encode()).hexdigest()[:16]
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"nnp-{os.getuid() if hasattr(os, 'getuid') else 0}"):
        target = folder / f"aev_kernel_{key}.so"
        if target.is_file():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                source = Path(tmp) / "aev_kernel.c"
                source.write_text(SOURCE)
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
        n = species.shape[0] if n_centers < 0 else n_centers
        i = pairs[0] - first_center if first_center != 0 else pairs[0]
        j = pairs[1]
        # the kernel writes where these point: check what torch's indexing would have
        if i.numel() > 0 and (int(i.min()) < 0 or int(i.max()) >= n):
            raise IndexError(f"pair centers outside atoms {first_center}..{first_center + n - 1}")
        if species.numel() > 0 and (int(species.min()) < 0 or int(species.max()) >= aev.n_species):
            raise IndexError(f"species outside 0..{aev.n_species - 1}")
        distances = torch.linalg.norm(vectors, dim=-1)
        k = _constants(aev, vectors.dtype)
        n_r = k["radial_shifts"].numel()
        width = aev.length
        out = torch.zeros((n, width), dtype=vectors.dtype)
        rows = (i * width + species[j] * n_r).contiguous()  # each pair's radial block in out
        getattr(lib, f"radial_forward_{suffix}")(
            0, rows.shape[0], _ptr(rows), _ptr(distances), aev.radial_cutoff, _ptr(k["radial_shifts"]), n_r,
            aev.radial_eta, _ptr(out),
        )
        # close pairs (angular cutoff), grouped by center
        close = torch.nonzero(distances < aev.angular_cutoff).flatten()
        centers = i[close]
        if centers.shape[0] > 1 and not bool((centers[1:] >= centers[:-1]).all()):
            close = close[torch.argsort(centers, stable=True)]
            centers = i[close]
        counts = torch.bincount(centers, minlength=n)
        starts = torch.zeros(n + 1, dtype=torch.long)
        torch.cumsum(counts, 0, out=starts[1:])
        d_close = distances[close].contiguous()
        unit = (vectors[close] / d_close[:, None]).contiguous()
        phase = d_close * (torch.pi / aev.angular_cutoff)
        fc = (0.5 * (torch.cos(phase) + 1.0)).contiguous()
        dfc = ((-0.5 * torch.pi / aev.angular_cutoff) * torch.sin(phase)).contiguous()
        nsp = species[j[close]].contiguous()
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
