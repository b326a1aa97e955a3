/* nnp's ANI descriptor kernel: the radial and angular AEV and their closed-form backward.
   Built at first use by nnp/models/aev_native.py (see its docstring); shipped as package data. */
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

/* The forward's preparation, in one pass where torch took ~25 small ops (most of a molecule's AEV).
   Per pair p: dist[p] and rows[p] (its radial block: center * width + neighbor species * n_r).
   Per close pair (d < rca), grouped by center in pair order (a counting sort; pos: n scratch):
   close[k] its pair, unit[k], dclose[k], the cosine cutoff fc[k] and its slope dfc[k], nsp[k]
   the neighbor's species; starts (n + 1) the CSR offsets. Returns the number of close pairs,
   or -1 (a center outside first..first+n-1), -2 (a neighbor outside 0..n_atoms-1), -3 (a
   species outside 0..S-1), before anything is written where those would point. */
#define PREPARE(T, SUF, SQRT, COS, SIN)                                                                  \
int64_t prepare_##SUF(int64_t P, int64_t n, int64_t first, const int64_t *pi, const int64_t *pj,          \
                      const int64_t *species, int64_t n_atoms, int64_t S, const T *vec, int64_t width,     \
                      int64_t n_r, T rca, T *dist, int64_t *rows, int64_t *starts, int64_t *pos,           \
                      int64_t *close, T *unit, T *dclose, T *fc, T *dfc, int64_t *nsp) {                   \
    for (int64_t p = 0; p < P; p++) {                                                                      \
        int64_t i = pi[p] - first, j = pj[p];                                                              \
        if (i < 0 || i >= n) return -1;                                                                    \
        if (j < 0 || j >= n_atoms) return -2;                                                              \
        if (species[j] < 0 || species[j] >= S) return -3;                                                  \
    }                                                                                                      \
    for (int64_t c = 0; c <= n; c++) starts[c] = 0;                                                        \
    for (int64_t p = 0; p < P; p++) {                                                                      \
        const T *v = vec + 3 * p;                                                                          \
        T d = SQRT(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);                                               \
        dist[p] = d;                                                                                       \
        rows[p] = (pi[p] - first) * width + species[pj[p]] * n_r;                                          \
        if (d < rca) starts[pi[p] - first + 1]++;                                                          \
    }                                                                                                      \
    for (int64_t c = 0; c < n; c++) { starts[c + 1] += starts[c]; pos[c] = starts[c]; }                    \
    T w = (T)M_PI / rca;                                                                                   \
    for (int64_t p = 0; p < P; p++) {                                                                      \
        T d = dist[p];                                                                                     \
        if (!(d < rca)) continue;                                                                          \
        int64_t k = pos[pi[p] - first]++;                                                                  \
        const T *v = vec + 3 * p;                                                                          \
        close[k] = p;                                                                                      \
        unit[3 * k] = v[0] / d; unit[3 * k + 1] = v[1] / d; unit[3 * k + 2] = v[2] / d;                    \
        dclose[k] = d;                                                                                     \
        fc[k] = (T)0.5 * (COS(d * w) + 1);                                                                 \
        dfc[k] = (T)-0.5 * w * SIN(d * w);                                                                 \
        nsp[k] = species[pj[p]];                                                                           \
    }                                                                                                      \
    return starts[n];                                                                                      \
}

PREPARE(float, f32, sqrtf, cosf, sinf)
PREPARE(double, f64, sqrt, cos, sin)
