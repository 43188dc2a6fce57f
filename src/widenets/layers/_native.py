"""The native engine's compiled code: a chain of Dense and ABRelu kernel maps in one pass.

A serial run of Dense (docs/math.md §dense) and ABRelu (docs/math.md §relu) layers maps each
kernel entry (x1_i, x2_j) on its own, given the per-input variances. This C++ loop carries a
segment of a row (256 entries, in L1 cache) through every layer of the run and writes the
network's NNGP and NTK once: one read of the input kernel and one write of each output, no
temporaries in memory, no parallel region (the caller's block scheduler hands row strips to
its threads, `widenets._parallel`). Symmetric kernels compute only the entries j >= i and
write their mirror image.

The arc-cosine is a polynomial, vectorizable by the compiler (docs/math/native-relu.md):
    acos(x) = π/2 - sign(x) asin(|x|)                    for |x| <= 1/2,
    acos(x) = 2 asin(s) or π - 2 asin(s), s = √((1-|x|)/2)  for |x| > 1/2 (1 - |x| is exact),
    asin(s) = s + s z P(z), z = s² in [0, 1/4],
with P the degree-5 (float32) or degree-12 (float64) Chebyshev fit of (asin √z - √z)/z^{3/2},
whose error is below 2^-30 (float32) and 2^-57 (float64) of asin; tests/layers/test_native.py
checks acos against mpmath. sin θ = √((1 - c)(1 + c)) (no cancellation near c = ±1).

A second library (`load("spatial")`, SPATIAL_SOURCE: the same arc-cosine) computes networks
on images one input pair at a time, the pair's position-pair tensor carried through Conv,
ABRelu, pooling, Flatten and Dense layers in scratch buffers (`wn_spatial_*`;
`widenets.layers._native_spatial`, docs/math/native-conv.md). It is built apart (4-7 s) so that
flat kernels never wait for it.

Build: each source below is compiled with the system's C++ compiler (g++, c++ or clang++, or
$CXX) into a shared library, loaded with ctypes, at most once per process and cached on disk
across processes (keyed by a hash of the source, flags, compiler and CPU), in
$WIDENETS_CACHE_DIR or ~/.cache/widenets. No torch headers: the chain library builds in about
a second.
Flags keep IEEE semantics: no -ffast-math, and -ffp-contract=off so that every operation
rounds as torch's do (the Dense maps are bitwise the eager engine's).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = ["load", "loaded", "cached", "build", "SOURCE", "SPATIAL_SOURCE", "LIBRARIES",
           "BuildError"]

_PRELUDE = r"""
#include <cmath>
#include <cstdint>
#include <limits>

namespace {

template <typename T> struct AsinPoly;
// asin(s) = s + s z P(z), z = s^2 in [0, 1/4]: Chebyshev fits (docs/math/native-relu.md)
template <> struct AsinPoly<float> {
    static inline float p(float z) {
        return 0.166666663374309070536f + z * (0.0750009454349742347622f + z * (
            0.0445994015285121837185f + z * (0.0311006627354945679275f + z * (
            0.0171492383576772531896f + z * 0.0336908472028301195240f))));
    }
};
template <> struct AsinPoly<double> {
    static inline double p(double z) {
        return 0.166666666666666678265 + z * (0.0749999999999843293317 + z * (
            0.0446428571463554297826 + z * (0.0303819441385312472866 + z * (
            0.0223721729421498878750 + z * (0.0173523927208699729415 + z * (
            0.0139712129735529333042 + z * (0.0114791774151849058958 + z * (
            0.0103228143501857792869 + z * (0.00545750671864035830042 + z * (
            0.0174008794426940224430 + z * (-0.0148518870712472032242 + z *
            0.0287578513674215647081)))))))))));
    }
};

template <typename T>
inline T acos_(T x) {
    const T pi = (T)3.14159265358979323846, pio2 = (T)1.57079632679489661923;
    T a = std::fabs(x);
    bool big = a > (T)0.5;
    T z = big ? (T)0.5 * ((T)1 - a) : a * a;
    T s = big ? std::sqrt(z) : a;
    T p = s + s * z * AsinPoly<T>::p(z);
    T small = pio2 - (x < 0 ? -p : p);
    T large = x < 0 ? pi - (p + p) : p + p;
    return big ? large : small;
}
"""

_CHAIN = r"""
constexpr int64_t B = 256;

// One block: rows x cols entries of the input kernel k (row stride ldk) and NTK th (NULL: 0),
// through nst stages (kind 0: Dense with prm = w, b, alpha, beta, gamma: K' = w K + b,
// Theta' = (alpha K + beta) + gamma Theta; kind 1: ABRelu with prm = s2/2, (2ab - s2)/(2 pi),
// (s2 - 2ab)/(2 pi) and per-input factors rsqrt(v), sqrt(v) of its pre-activation variances:
// f1[(2r + 0/1) * ldf1 + i] for the rows, f2[(2r + 0/1) * ldf2 + j] for the columns).
// tri: only entries with j >= i + diag. mir: also write entry (i, j) at ko[j * ldo + i].
// Returns 1 if an output entry is not finite.
template <typename T, bool NTK>
int chain_(int64_t rows, int64_t cols, const T* k, int64_t ldk, const T* th, int64_t ldth,
           int nst, const int* kind, const double* prm, const T* f1, int64_t ldf1,
           const T* f2, int64_t ldf2, T* ko, T* tho, int64_t ldo, int tri, int64_t diag,
           int mir) {
    const T big = std::numeric_limits<T>::max();
    int bad = 0;                           // |y| <= max is false for inf and NaN
    alignas(64) T kb[B], tb[B];
    for (int64_t j0 = 0; j0 < cols; j0 += B) {
        const int64_t n = cols - j0 < B ? cols - j0 : B;
        for (int64_t i = 0; i < rows; ++i) {
            int64_t lo = 0;
            if (tri) {
                lo = i + diag - j0;
                if (lo < 0) lo = 0;
                if (lo >= n) continue;
            }
            const T* kr = k + i * ldk + j0;
            for (int64_t j = lo; j < n; ++j) kb[j] = kr[j];
            if (NTK) {
                const T* tr = th ? th + i * ldth + j0 : nullptr;
                for (int64_t j = lo; j < n; ++j) tb[j] = tr ? tr[j] : (T)0;
            }
            int r = 0;
            for (int s = 0; s < nst; ++s) {
                const double* q = prm + 5 * s;
                if (kind[s] == 0) {
                    const T w = (T)q[0], b = (T)q[1], al = (T)q[2], be = (T)q[3], ga = (T)q[4];
                    if (NTK) {
                        for (int64_t j = lo; j < n; ++j) {
                            T x = kb[j];
                            kb[j] = w * x + b;
                            tb[j] = (al * x + be) + ga * tb[j];
                        }
                    } else {
                        for (int64_t j = lo; j < n; ++j) kb[j] = w * kb[j] + b;
                    }
                } else {
                    const T p0 = (T)q[0], p1 = (T)q[1], p2 = (T)q[2];
                    const T ri = f1[(2 * r) * ldf1 + i], si = f1[(2 * r + 1) * ldf1 + i];
                    const T* rj = f2 + (2 * r) * ldf2 + j0;
                    const T* sj = f2 + (2 * r + 1) * ldf2 + j0;
                    for (int64_t j = lo; j < n; ++j) {
                        T c = (ri * rj[j]) * kb[j];
                        c = c > (T)1 ? (T)1 : c;            // NaN passes through
                        c = c < (T)-1 ? (T)-1 : c;
                        T td = acos_(c) * p1 + p0;          // Tdot
                        T sn = std::sqrt(((T)1 - c) * ((T)1 + c));
                        kb[j] = (c * td + sn * p2) * (si * sj[j]);
                        if (NTK) tb[j] = td * tb[j];
                    }
                    ++r;
                }
            }
            T* o = ko + i * ldo + j0;
            for (int64_t j = lo; j < n; ++j) { o[j] = kb[j]; bad |= !(std::fabs(kb[j]) <= big); }
            if (NTK) {
                T* ot = tho + i * ldo + j0;
                for (int64_t j = lo; j < n; ++j) {
                    ot[j] = tb[j];
                    bad |= !(std::fabs(tb[j]) <= big);
                }
            }
        }
        if (mir) {      // the mirror image of this tile: read across rows (in cache), write rows
            for (int64_t j = 0; j < n; ++j) {
                int64_t top = tri ? j0 + j - diag + 1 : rows;     // rows i with entry (i, j)
                if (top > rows) top = rows;
                T* dst = ko + (j0 + j) * ldo;
                const T* src = ko + j0 + j;
                for (int64_t i = 0; i < top; ++i) dst[i] = src[i * ldo];
                if (NTK) {
                    T* dt = tho + (j0 + j) * ldo;
                    const T* st = tho + j0 + j;
                    for (int64_t i = 0; i < top; ++i) dt[i] = st[i * ldo];
                }
            }
        }
    }
    return bad;
}

template <typename T>
int chain(int64_t rows, int64_t cols, const T* k, int64_t ldk, const T* th, int64_t ldth,
          int nst, const int* kind, const double* prm, const T* f1, int64_t ldf1,
          const T* f2, int64_t ldf2, T* ko, T* tho, int64_t ldo, int tri, int64_t diag,
          int mir) {
    if (tho) return chain_<T, true>(rows, cols, k, ldk, th, ldth, nst, kind, prm, f1, ldf1,
                                     f2, ldf2, ko, tho, ldo, tri, diag, mir);
    return chain_<T, false>(rows, cols, k, ldk, th, ldth, nst, kind, prm, f1, ldf1, f2, ldf2,
                            ko, tho, ldo, tri, diag, mir);
}

}  // namespace

extern "C" {
int wn_chain_f32(int64_t rows, int64_t cols, const float* k, int64_t ldk, const float* th,
                 int64_t ldth, int nst, const int* kind, const double* prm, const float* f1,
                 int64_t ldf1, const float* f2, int64_t ldf2, float* ko, float* tho,
                 int64_t ldo, int tri, int64_t diag, int mir) {
    return chain<float>(rows, cols, k, ldk, th, ldth, nst, kind, prm, f1, ldf1, f2, ldf2, ko,
                        tho, ldo, tri, diag, mir);
}
int wn_chain_f64(int64_t rows, int64_t cols, const double* k, int64_t ldk, const double* th,
                 int64_t ldth, int nst, const int* kind, const double* prm, const double* f1,
                 int64_t ldf1, const double* f2, int64_t ldf2, double* ko, double* tho,
                 int64_t ldo, int tri, int64_t diag, int mir) {
    return chain<double>(rows, cols, k, ldk, th, ldth, nst, kind, prm, f1, ldf1, f2, ldf2, ko,
                         tho, ldo, tri, diag, mir);
}
void wn_acos_f32(int64_t n, const float* x, float* y) {
    for (int64_t i = 0; i < n; ++i) y[i] = acos_(x[i]);
}
void wn_acos_f64(int64_t n, const double* x, double* y) {
    for (int64_t i = 0; i < n; ++i) y[i] = acos_(x[i]);
}
}
"""

#: the chain library (Dense and ABRelu on flat kernels)
SOURCE = _PRELUDE + _CHAIN

_SPATIAL = r"""
}  // namespace
#include <vector>

// ---------------------------------------------------------------- spatial chains per pair
// (docs/math/native-conv.md) A network of Conv, ABRelu, pooling, Flatten and Dense layers on
// images, one input pair (i, j) at a time: the position-pair tensor K(p, p') (full layout,
// P x P entries) or its diagonal K(p, p) (P entries) and the NTK carried through every layer
// in per-call scratch buffers; only the output numbers are written.
namespace {

// stage records: NI int64 and ND doubles each.
// ints: 0 kind (0 conv, 1 ABRelu, 2 pooling, 3 global sum, 4 diagonal sum, 5 dense),
//       1-3 input shape (3 axes, leading 1s), 4-6 output shape, 7-9 window, 10-12 stride,
//       13-15 left padding, 16 circular, 17 offset of the ABRelu's factors in a per-input row
// doubles: conv/dense w, b, alpha, beta, gamma; ABRelu p0, p1, p2; pooling scale;
//          global/diagonal sum: the divisor
constexpr int NI = 24, ND = 6;

template <typename T> inline void zero_(T* p, int64_t n) {
    for (int64_t i = 0; i < n; ++i) p[i] = (T)0;
}
inline int64_t wrap_(int64_t i, int64_t n) { i %= n; return i < 0 ? i + n : i; }

// out[q][y][r] = sum_d in[q][s y + d - l][r] (zero outside, or wrapped around if circ)
template <typename T>
void wsum_(const T* in, T* out, int64_t outer, int64_t n, int64_t inner, int64_t win,
           int64_t s, int64_t l, int64_t o, int circ) {
    for (int64_t q = 0; q < outer; ++q)
        for (int64_t y = 0; y < o; ++y) {
            T* dst = out + (q * o + y) * inner;
            zero_(dst, inner);
            for (int64_t d = 0; d < win; ++d) {
                int64_t ih = s * y + d - l;
                if (circ) ih = wrap_(ih, n);
                else if (ih < 0 || ih >= n) continue;
                const T* src = in + (q * n + ih) * inner;
                for (int64_t r = 0; r < inner; ++r) dst[r] += src[r];
            }
        }
}

// one spatial axis of a convolution on the full layout [A][n][B][A][n][B] -> [A][o][B][A][o][B]:
// the offset d is shared by both positions (docs/math.md §conv)
template <typename T>
void wjoint_(const T* in, T* out, int64_t A, int64_t n, int64_t B, int64_t win, int64_t s,
             int64_t l, int64_t o, int circ) {
    const int64_t pin = A * n * B, pout = A * o * B;
    for (int64_t a = 0; a < A; ++a)
        for (int64_t y = 0; y < o; ++y)
            for (int64_t b = 0; b < B; ++b) {
                T* dst = out + ((a * o + y) * B + b) * pout;
                zero_(dst, pout);
                for (int64_t d = 0; d < win; ++d) {
                    int64_t ih = s * y + d - l;
                    if (circ) ih = wrap_(ih, n);
                    else if (ih < 0 || ih >= n) continue;
                    const T* src = in + ((a * n + ih) * B + b) * pin;
                    if (s == 1 && !circ) {
                        const int64_t lo = l - d > 0 ? l - d : 0;
                        const int64_t hi = n - 1 + l - d < o - 1 ? n - 1 + l - d : o - 1;
                        if (lo > hi) continue;
                        const int64_t len = (hi - lo + 1) * B;
                        for (int64_t a2 = 0; a2 < A; ++a2) {
                            T* dr = dst + (a2 * o + lo) * B;
                            const T* sr = src + (a2 * n + lo + d - l) * B;
                            for (int64_t k = 0; k < len; ++k) dr[k] += sr[k];
                        }
                    } else {
                        for (int64_t a2 = 0; a2 < A; ++a2)
                            for (int64_t y2 = 0; y2 < o; ++y2) {
                                int64_t i2 = s * y2 + d - l;
                                if (circ) i2 = wrap_(i2, n);
                                else if (i2 < 0 || i2 >= n) continue;
                                T* dr = dst + (a2 * o + y2) * B;
                                const T* sr = src + (a2 * n + i2) * B;
                                for (int64_t k = 0; k < B; ++k) dr[k] += sr[k];
                            }
                    }
                }
            }
}

inline bool trivial_(const int64_t* g, int i) {     // window 1, stride 1, no padding, same size
    return g[7 + i] == 1 && g[10 + i] == 1 && g[13 + i] == 0 && g[1 + i] == g[4 + i];
}

// the offset sums of a convolution (joint) or the window sums of pooling (each side), every
// axis; ping-pong between x and y; returns the buffer holding the result (src if no axis)
template <typename T>
const T* linear_(const T* src, T* x, T* y, const int64_t* g, int full, int joint) {
    int64_t cur[3] = {g[1], g[2], g[3]};
    const T* at = src;
    T* bufs[2] = {x, y};
    int nb = 0;
    const int circ = (int)g[16];
    for (int side = 0; side < (full && !joint ? 2 : 1); ++side) {
        if (side == 1) { cur[0] = g[1]; cur[1] = g[2]; cur[2] = g[3]; }   // x2's axes
        for (int i = 0; i < 3; ++i) {
            if (trivial_(g, i)) continue;
            T* to = bufs[nb];
            nb ^= 1;
            int64_t A = 1, B = 1;
            for (int k = 0; k < i; ++k) A *= cur[k];
            for (int k = i + 1; k < 3; ++k) B *= cur[k];
            const int64_t n = cur[i], o = g[4 + i];
            if (!full) {
                wsum_(at, to, A, n, B, g[7 + i], g[10 + i], g[13 + i], o, circ);
            } else if (joint) {
                wjoint_(at, to, A, n, B, g[7 + i], g[10 + i], g[13 + i], o, circ);
            } else if (side == 0) {                         // x1's axis: rows of x2's plane
                const int64_t p2 = g[1] * g[2] * g[3];
                wsum_(at, to, A, n, B * p2, g[7 + i], g[10 + i], g[13 + i], o, circ);
            } else {                                        // x2's axis, every x1 position
                const int64_t p1 = g[4] * g[5] * g[6];
                wsum_(at, to, p1 * A, n, B, g[7 + i], g[10 + i], g[13 + i], o, circ);
            }
            cur[i] = o;
            at = to;
        }
    }
    return at;
}

template <typename T>
inline double sum_(const T* p, int64_t n, int64_t step) {     // double accumulators
    double a[4] = {0, 0, 0, 0};
    int64_t i = 0;
    if (step == 1)
        for (; i + 4 <= n; i += 4) {
            a[0] += (double)p[i]; a[1] += (double)p[i + 1];
            a[2] += (double)p[i + 2]; a[3] += (double)p[i + 3];
        }
    for (; i < n; ++i) a[0] += (double)p[i * step];
    return (a[0] + a[1]) + (a[2] + a[3]);
}

// ABRelu on n entries (docs/math.md §relu): c = (r1 r2) K, K <- (c Tdot + p2 sin θ)(s1 s2),
// Θ <- Tdot Θ, with r = 1/√v and s = √v of the two inputs' variances; ROW: r1, s1 are one
// value (a row of the full layout), else one per entry (the diagonal layout)
template <typename T, bool NTK, bool ROW>
void relu_(int64_t n, T* k, T* t, const T* r1, const T* s1, const T* r2, const T* s2,
           T p0, T p1, T p2) {
    const T ri = *r1, si = *s1;
    for (int64_t e = 0; e < n; ++e) {
        const T ra = ROW ? ri : r1[e], sa = ROW ? si : s1[e];
        T c = (ra * r2[e]) * k[e];
        c = c > (T)1 ? (T)1 : c;            // NaN passes through
        c = c < (T)-1 ? (T)-1 : c;
        const T td = acos_(c) * p1 + p0;    // Tdot
        const T sn = std::sqrt(((T)1 - c) * ((T)1 + c));
        k[e] = (c * td + sn * p2) * (sa * s2[e]);
        if (NTK) t[e] = td * t[e];
    }
}

template <typename T>
int spatial_(int64_t np, const int64_t* pi, const int64_t* pj, const T* x1, const T* x2,
             int64_t C, int64_t P0, int full, int nst, const int64_t* ist, const double* prm,
             T* f1, const T* f2, int64_t fstride, int self, T* ok, T* ot, int64_t cap) {
    const T big = std::numeric_limits<T>::max();
    const bool ntk = ot != nullptr;
    std::vector<T> mem(8 * cap);
    T* K = mem.data();
    T* Th = K + cap;
    T* X = Th + cap;
    T* Y = X + cap;
    T* U = Y + cap;
    T* V = U + cap;
    T* D = V + cap;       // saved diagonals of a self pair (2 x P <= 2 cap)
    int bad = 0;
    for (int64_t q = 0; q < np; ++q) {
        const int64_t i = pi[q], j = pj[q];
        const T* a = x1 + i * C * P0;
        const T* b = (self ? x1 : x2) + j * C * P0;
        // the input kernel: sum_c x_c(p) x'_c(p') / C (docs/math.md §input)
        if (full) {
            zero_(K, P0 * P0);
            for (int64_t c = 0; c < C; ++c)
                for (int64_t p = 0; p < P0; ++p) {
                    const T av = a[c * P0 + p];
                    const T* bv = b + c * P0;
                    T* row = K + p * P0;
                    for (int64_t p2 = 0; p2 < P0; ++p2) row[p2] += av * bv[p2];
                }
            for (int64_t e = 0; e < P0 * P0; ++e) K[e] /= (T)C;
        } else {
            zero_(K, P0);
            for (int64_t c = 0; c < C; ++c)
                for (int64_t p = 0; p < P0; ++p) K[p] += a[c * P0 + p] * b[c * P0 + p];
            for (int64_t p = 0; p < P0; ++p) K[p] /= (T)C;
        }
        bool tz = true;            // the NTK is 0 (the raw input)
        int64_t P = P0;
        for (int s = 0; s < nst; ++s) {
            const int64_t* g = ist + NI * s;
            const double* h = prm + ND * s;
            const int kind = (int)g[0];
            const int64_t pout = g[4] * g[5] * g[6];
            const int64_t nin = full ? P * P : P, nout = full ? pout * pout : pout;
            if (kind == 0) {                            // conv (docs/math.md §conv)
                const T* sk = linear_<T>(K, X, Y, g, full, 1);
                const T w = (T)h[0], bb = (T)h[1], al = (T)h[2], be = (T)h[3], ga = (T)h[4];
                if (ntk && tz) {
                    for (int64_t e = 0; e < nout; ++e) Th[e] = al * sk[e] + be;
                } else if (ntk) {
                    const T* st = linear_<T>(Th, U, V, g, full, 1);
                    for (int64_t e = 0; e < nout; ++e) Th[e] = (al * sk[e] + be) + ga * st[e];
                }
                for (int64_t e = 0; e < nout; ++e) K[e] = w * sk[e] + bb;
                tz = false;
            } else if (kind == 2) {                     // pooling (docs/math.md §pooling)
                const T sc = (T)h[0];
                const T* sk = linear_<T>(K, X, Y, g, full, 0);
                if (ntk && !tz) {
                    const T* st = linear_<T>(Th, U, V, g, full, 0);
                    for (int64_t e = 0; e < nout; ++e) Th[e] = st[e] * sc;
                }
                for (int64_t e = 0; e < nout; ++e) K[e] = sk[e] * sc;
            } else if (kind == 1) {                     // ABRelu (docs/math.md §relu)
                const T p0 = (T)h[0], p1 = (T)h[1], p2 = (T)h[2];
                T* fi = f1 + i * fstride + g[17];
                const T* fj = (self ? f1 : f2) + j * fstride + g[17];
                const int64_t dstep = full ? P + 1 : 1;
                if (self) {       // this input's variances, and the exact T, Tdot at p = p'
                    for (int64_t p = 0; p < P; ++p) {
                        const T v = K[p * dstep];
                        fi[p] = (T)1 / std::sqrt(v > (T)1e-30 ? v : (T)1e-30);
                        fi[P + p] = std::sqrt(v > (T)0 ? v : (T)0);
                        D[p] = p0 * v;
                        D[P + p] = ntk ? p0 * Th[p * dstep] : (T)0;
                    }
                }
                if (full) {
                    for (int64_t r = 0; r < P; ++r) {
                        if (ntk) relu_<T, true, true>(P, K + r * P, Th + r * P, fi + r,
                                                      fi + P + r, fj, fj + P, p0, p1, p2);
                        else relu_<T, false, true>(P, K + r * P, Th, fi + r, fi + P + r, fj,
                                                   fj + P, p0, p1, p2);
                    }
                } else if (ntk) {
                    relu_<T, true, false>(P, K, Th, fi, fi + P, fj, fj + P, p0, p1, p2);
                } else {
                    relu_<T, false, false>(P, K, Th, fi, fi + P, fj, fj + P, p0, p1, p2);
                }
                if (self)
                    for (int64_t p = 0; p < P; ++p) {
                        K[p * dstep] = D[p];
                        if (ntk) Th[p * dstep] = D[P + p];
                    }
            } else if (kind == 3 || kind == 4) {        // global sum, diagonal sum (Flatten)
                const double dv = h[0];
                const int64_t step = (kind == 4 && full) ? P + 1 : 1;
                const int64_t cnt = kind == 4 ? P : nin;
                K[0] = (T)(sum_(K, cnt, step) / dv);
                if (ntk) Th[0] = tz ? (T)0 : (T)(sum_(Th, cnt, step) / dv);
            } else {                                    // dense on one number (docs/math.md §dense)
                const T w = (T)h[0], bb = (T)h[1], al = (T)h[2], be = (T)h[3], ga = (T)h[4];
                const T x = K[0];
                if (ntk) Th[0] = tz ? al * x + be : (al * x + be) + ga * Th[0];
                K[0] = w * x + bb;
                tz = false;
            }
            P = pout;
        }
        ok[q] = K[0];
        bad |= !(std::fabs(K[0]) <= big);
        if (ntk) {
            ot[q] = tz ? (T)0 : Th[0];
            bad |= !(std::fabs(ot[q]) <= big);
        }
    }
    return bad;
}

}  // namespace

extern "C" {
int wn_spatial_f32(int64_t np, const int64_t* pi, const int64_t* pj, const float* x1,
                   const float* x2, int64_t C, int64_t P0, int full, int nst,
                   const int64_t* ist, const double* prm, float* f1, const float* f2,
                   int64_t fstride, int self, float* ok, float* ot, int64_t cap) {
    return spatial_<float>(np, pi, pj, x1, x2, C, P0, full, nst, ist, prm, f1, f2, fstride,
                          self, ok, ot, cap);
}
int wn_spatial_f64(int64_t np, const int64_t* pi, const int64_t* pj, const double* x1,
                   const double* x2, int64_t C, int64_t P0, int full, int nst,
                   const int64_t* ist, const double* prm, double* f1, const double* f2,
                   int64_t fstride, int self, double* ok, double* ot, int64_t cap) {
    return spatial_<double>(np, pi, pj, x1, x2, C, P0, full, nst, ist, prm, f1, f2, fstride,
                           self, ok, ot, cap);
}
void wn_acos_f32(int64_t n, const float* x, float* y) {
    for (int64_t i = 0; i < n; ++i) y[i] = acos_(x[i]);
}
void wn_acos_f64(int64_t n, const double* x, double* y) {
    for (int64_t i = 0; i < n; ++i) y[i] = acos_(x[i]);
}
}
"""

#: the spatial library (image networks, one input pair at a time; `load("spatial")`): its own
#: build, so that flat kernels never wait for it
SPATIAL_SOURCE = _PRELUDE + _SPATIAL

#: compiler flags: IEEE arithmetic (no fast-math), no contraction into fused multiply-adds
FLAGS = ("-O3", "-std=c++14", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-shared", "-fPIC")
#: tried first (the CPU's vector instructions); the key includes the CPU's description
NATIVE_FLAGS = ("-march=native",)
_ENV_CACHE = "WIDENETS_CACHE_DIR"

_P, _I = ctypes.c_void_p, ctypes.c_int64
_CHAIN_ARGS = [_I, _I, _P, _I, _P, _I, ctypes.c_int, _P, _P, _P, _I, _P, _I, _P, _P, _I,
               ctypes.c_int, _I, ctypes.c_int]
_SPATIAL_ARGS = [_I, _P, _P, _P, _P, _I, _I, ctypes.c_int, ctypes.c_int, _P, _P, _P, _P, _I,
                 ctypes.c_int, _P, _P, _I]


class BuildError(RuntimeError):
    """The native library could not be built or loaded."""


#: the libraries: name -> (source, file stem, exported loops)
LIBRARIES = {
    "chain": (SOURCE, "widenets_native", ("wn_chain_f32", "wn_chain_f64"), _CHAIN_ARGS),
    "spatial": (SPATIAL_SOURCE, "widenets_native_spatial", ("wn_spatial_f32", "wn_spatial_f64"),
                _SPATIAL_ARGS),
}

_lock = threading.Lock()
#: the loaded libraries and the remembered build failures of this process, by name
_libs: dict = {}
_errors: dict = {}


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    d = os.environ.get(_ENV_CACHE)
    path = Path(d) if d else Path.home() / ".cache" / "widenets"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return Path(tempfile.gettempdir())


_versions: dict = {}


def _candidates(cxx: str, which: str = "chain") -> list:
    """[(flags, cached library path)], the preferred first."""
    source, stem = LIBRARIES[which][:2]
    if cxx not in _versions:
        _versions[cxx] = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                        timeout=60).stdout
    out = []
    for extra in (NATIVE_FLAGS, ()):
        flags = (*FLAGS, *extra)
        key = hashlib.sha256("\0".join([source, *flags, cxx, _versions[cxx], platform.machine(),
                                        _cpu_key() if extra else ""]).encode()).hexdigest()[:20]
        out.append((flags, _cache_dir() / f"{stem}_{key}.so"))
    return out


def build(cxx: str, which: str = "chain") -> Path:
    """Compile the source of library `which` (or find it in the cache); the path of the shared
    library."""
    errors = []
    for flags, lib in _candidates(cxx, which):
        if lib.exists():
            return lib
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "widenets_native.cpp"
            src.write_text(LIBRARIES[which][0])
            out = Path(tmp) / lib.name
            proc = subprocess.run([cxx, *flags, "-o", str(out), str(src)], capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode == 0:
                part = lib.with_name(f"{lib.name}.{os.getpid()}.part")
                shutil.copyfile(out, part)
                os.replace(part, lib)           # atomic: concurrent processes agree
                return lib
            errors.append((proc.stderr.strip().splitlines() or ["no message"])[-1][:200])
    raise BuildError(f"{os.path.basename(cxx)} failed: {errors[-1]}")


def _open(path: Path, which: str):
    lib = ctypes.CDLL(str(path))
    _, _, names, args = LIBRARIES[which]
    for name in names:
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int
    for name in ("wn_acos_f32", "wn_acos_f64"):
        getattr(lib, name).argtypes = [_I, _P, _P]
        getattr(lib, name).restype = None
    return lib


def _check(lib) -> None:
    """The loaded code's arc-cosine against the math module at a few points (a wrong build,
    e.g. with unsafe flags, is refused rather than trusted)."""
    import math

    import torch

    x = torch.tensor([-1.0, -0.999999, -0.75, -0.5, -0.3, 0.0, 0.2, 0.5, 0.6, 0.999, 1.0],
                     dtype=torch.float64)
    y = torch.empty_like(x)
    lib.wn_acos_f64(x.numel(), x.data_ptr(), y.data_ptr())
    for a, b in zip(x.tolist(), y.tolist()):
        if not abs(b - math.acos(a)) <= 4e-16 * max(1.0, abs(math.acos(a))):
            raise BuildError(f"the compiled arc-cosine is wrong at {a}: {b}")


def cached(which: str = "chain") -> bool:
    """Whether the library is loaded, or built and in the disk cache (loading it is cheap)."""
    if which in _libs:
        return True
    if which in _errors:
        return False
    cxx = _compiler()
    try:
        return cxx is not None and any(lib.exists() for _, lib in _candidates(cxx, which))
    except (OSError, subprocess.SubprocessError):
        return False


def load(which: str = "chain"):
    """The loaded native library `which` ("chain" or "spatial", see LIBRARIES), building it on
    the first call of the process, or finding it in the cache. Raises BuildError (with the
    reason) when there is no compiler or the build fails; the failure is remembered for the
    process."""
    with _lock:
        if which in _libs:
            return _libs[which]
        if which in _errors:
            raise BuildError(_errors[which])
        try:
            cxx = _compiler()
            if cxx is None:
                raise BuildError("no C++ compiler found (g++, c++, clang++ or $CXX)")
            lib = _open(build(cxx, which), which)
            _check(lib)
        except Exception as err:  # noqa: BLE001 - every failure means: no native engine
            reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
            _errors[which] = reason
            raise BuildError(reason) from err
        _libs[which] = lib
        return lib


def loaded(which: str = "chain") -> bool:
    """Whether the library is loaded in this process already (no build)."""
    return which in _libs
