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

Build: the source below is compiled with the system's C++ compiler (g++, c++ or clang++, or
$CXX) into a shared library, loaded with ctypes, at most once per process and cached on disk
across processes (keyed by a hash of the source, flags, compiler and CPU), in
$WIDENETS_CACHE_DIR or ~/.cache/widenets. No torch headers: a build takes about a second.
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

__all__ = ["load", "loaded", "cached", "build", "SOURCE", "BuildError"]

SOURCE = r"""
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

#: compiler flags: IEEE arithmetic (no fast-math), no contraction into fused multiply-adds
FLAGS = ("-O3", "-std=c++14", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-shared", "-fPIC")
#: tried first (the CPU's vector instructions); the key includes the CPU's description
NATIVE_FLAGS = ("-march=native",)
_ENV_CACHE = "WIDENETS_CACHE_DIR"

_P, _I = ctypes.c_void_p, ctypes.c_int64
_CHAIN_ARGS = [_I, _I, _P, _I, _P, _I, ctypes.c_int, _P, _P, _P, _I, _P, _I, _P, _P, _I,
               ctypes.c_int, _I, ctypes.c_int]


class BuildError(RuntimeError):
    """The native library could not be built or loaded."""


_lock = threading.Lock()
_lib = None
_error: str | None = None


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


def _candidates(cxx: str) -> list:
    """[(flags, cached library path)], the preferred first."""
    if cxx not in _versions:
        _versions[cxx] = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                        timeout=60).stdout
    out = []
    for extra in (NATIVE_FLAGS, ()):
        flags = (*FLAGS, *extra)
        key = hashlib.sha256("\0".join([SOURCE, *flags, cxx, _versions[cxx], platform.machine(),
                                        _cpu_key() if extra else ""]).encode()).hexdigest()[:20]
        out.append((flags, _cache_dir() / f"widenets_native_{key}.so"))
    return out


def build(cxx: str) -> Path:
    """Compile SOURCE (or find it in the cache); the path of the shared library."""
    errors = []
    for flags, lib in _candidates(cxx):
        if lib.exists():
            return lib
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "widenets_native.cpp"
            src.write_text(SOURCE)
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


def _open(path: Path):
    lib = ctypes.CDLL(str(path))
    for name in ("wn_chain_f32", "wn_chain_f64"):
        fn = getattr(lib, name)
        fn.argtypes = _CHAIN_ARGS
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


def cached() -> bool:
    """Whether the library is loaded, or built and in the disk cache (loading it is cheap)."""
    if _lib is not None:
        return True
    if _error is not None:
        return False
    cxx = _compiler()
    try:
        return cxx is not None and any(lib.exists() for _, lib in _candidates(cxx))
    except (OSError, subprocess.SubprocessError):
        return False


def load():
    """The loaded native library (building it on the first call of the process, or finding
    it in the cache). Raises BuildError (with the reason) when there is no compiler or the
    build fails; the failure is remembered for the process."""
    global _lib, _error
    with _lock:
        if _lib is not None:
            return _lib
        if _error is not None:
            raise BuildError(_error)
        try:
            cxx = _compiler()
            if cxx is None:
                raise BuildError("no C++ compiler found (g++, c++, clang++ or $CXX)")
            lib = _open(build(cxx))
            _check(lib)
        except Exception as err:  # noqa: BLE001 - every failure means: no native engine
            _error = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
            raise BuildError(_error) from err
        _lib = lib
        return lib


def loaded() -> bool:
    """Whether the library is loaded in this process already (no build)."""
    return _lib is not None
