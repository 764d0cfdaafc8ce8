"""Local differential privacy on numeric fields: clamp, then exact Laplace or Gaussian noise.

Method. A value x is clamped to [lo, hi] and rounded to a grid of step g = 2**j (round half to
even for floats, half up for integers); integer noise Z from an exact sampler is added on that
grid and the output is (round(x/g) + Z) * g. Z is drawn from the exact discrete Laplace and
discrete Gaussian laws of Canonne, Kamath and Steinke 2020 (CKS, arXiv:2004.00010) by exact
table inversion (raymask.kernels._invert: 32-bit prefixes of a uniform compared with integer
floors of the CDF, ties decided by further bits, the Laplace magnitude as independent base-4096
digits, the Gaussian tail beyond the table by exact rejection); the rare steps use CKS's exact
samplers with rational parameters and integer arithmetic (raymask.kernels._bits). Random bits
come from the CTR_DRBG of raymask.kernels.rng, never from NumPy's or Numba's generators. A
float64 column is clamped, gridded, noised and converted back in one Numba pass.

Why no floating-point attack (Mironov, "On significance of the least significant bits for
differential privacy", CCS 2012): the attack reads x from which floats x + noise can hit, as
float noise and float addition round differently for different x. Here every output is an
integer multiple of g computed in integer arithmetic, then converted; the conversion is a
fixed function of round(x/g) + Z (post-processing), so the output law is exactly the discrete
mechanism's. Grid: for floats g is the power of two with b/g in [2**20, 2**21) for Laplace
(b = (hi - lo)/epsilon) and sigma/g in [2**10, 2**11) for Gaussian, so the noise spans ~10**6
(resp. ~10**3) grid steps per scale unit and is statistically indistinguishable from the
continuous law at these sample sizes; g is never below 2**-50 max(|lo|, |hi|) so grid indices stay
exact in float64. For integers g = 1 unless the noise is wider than that (then a power of two,
keeping the outputs integers).

Calibration (conservative: never less noise than asked). Sensitivity on the grid is
D = round(hi/g) - round(lo/g) grid steps (>= the true one after rounding).
- Laplace: P[z] ~ exp(-|z| s/t) is epsilon-DP for sensitivity D iff t/s >= D/epsilon. t/s is
  D/epsilon rounded *up* to a multiple of 1/s, s = 2**P chosen so t is about 2**21: the scale
  exceeds the exact one by less than 2**-20 relative.
- Gaussian: the discrete Gaussian N_Z(0, sigma**2) is (epsilon, delta)-DP for sensitivity D iff
  delta >= P[Y > eps sigma**2/D - D/2] - e**eps P[Y > eps sigma**2/D + D/2] (CKS Theorem 7);
  sigma**2 = sn/sd is the smallest multiple of 1/sd (sd a power of two) meeting delta with a
  relative margin of 1e-6, found by bisection on the exact tail sums (valid for every epsilon,
  unlike the classic sqrt(2 ln(1.25/delta)) D/epsilon, which needs epsilon < 1). It is within 1%
  of the analytic Gaussian of Balle and Wang 2018 (checked in the tests).

Guarantee (tests/kernels/test_noise.py): the integer samplers match their exact laws
(chi-square, 10**6 samples, alpha = 0.001) and OpenDP's samplers (two-sample test); outputs lie
on the grid; an empirical audit of neighbouring inputs stays within epsilon. Nulls stay null and
NaN stays NaN: whether a value is present is not protected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from raymask.kernels import _bits, _invert
from raymask.kernels._arrow import validity
from raymask.kernels.rng import SecureRandom

__all__ = [
    "LaplacePlan",
    "GaussianPlan",
    "laplace_plan",
    "gaussian_plan",
    "laplace_noise",
    "gaussian_noise",
    "discrete_laplace",
    "discrete_gaussian",
    "bernoulli_exp",
    "gaussian_delta",
]


@dataclass(frozen=True)
class LaplacePlan:
    """Discrete Laplace P[z] ~ exp(-|z| s/t) on the grid 2**j; D = sensitivity in grid steps."""

    j: int
    t: int
    s: int
    D: int


@dataclass(frozen=True)
class GaussianPlan:
    """Discrete Gaussian sigma**2 = sn/sd grid steps on the grid 2**j; D = sensitivity."""

    j: int
    sn: int
    sd: int
    t: int
    den: int
    D: int

    @property
    def sigma(self) -> float:
        return math.sqrt(self.sn / self.sd)


def _check(lo: float, hi: float, epsilon: float, integer: bool) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError("noise bounds must be finite with lo <= hi")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError("epsilon must be a positive finite number")
    if integer and (lo != int(lo) or hi != int(hi)):
        raise ValueError("integer noise needs integer bounds lo and hi")


def _grid_round(v: float, j: int, integer: bool) -> int:
    """The grid index of a bound (the kernels round values the same way)."""
    if integer:
        v = int(v)
        return v if j == 0 else (v + (1 << (j - 1))) >> j
    return int(np.rint(math.ldexp(v, -j)))


def _min_j(lo: float, hi: float, integer: bool) -> int:
    if integer:
        return 0
    r = max(abs(lo), abs(hi))
    return -1074 if r == 0 else math.frexp(r)[1] - 50


@lru_cache(maxsize=256)
def laplace_plan(lo: float, hi: float, epsilon: float, integer: bool) -> LaplacePlan:
    """Grid and rational scale for epsilon-DP Laplace noise on values clamped to [lo, hi]."""
    _check(lo, hi, epsilon, integer)
    b = (hi - lo) / epsilon
    j = _min_j(lo, hi, integer)
    if b > 0:
        j = max(j, math.frexp(b)[1] - 1 - 20)
    D = _grid_round(hi, j, integer) - _grid_round(lo, j, integer)
    if D == 0:
        return LaplacePlan(j, 0, 1, 0)
    scale = Fraction(D) / Fraction(epsilon)
    P = max(0, 21 - math.floor(math.log2(scale)))
    s = 1 << P
    t = math.ceil(scale * s)
    if t >= 1 << 40:
        raise ValueError("noise scale out of range for these bounds and epsilon")
    return LaplacePlan(j, t, s, D)


def gaussian_delta(sigma2: Fraction | float, D: int, epsilon: float) -> float:
    """delta(epsilon) of the discrete Gaussian N_Z(0, sigma2) for integer sensitivity D
    (CKS 2020 Theorem 7), from exact-form tail sums in float64."""
    s2 = float(sigma2)
    sigma = math.sqrt(s2)
    L = int(40 * sigma + 2 * D + 50 + epsilon * s2 / D)
    y = np.arange(-L, L + 1, dtype=np.float64)
    w = np.exp(-(y * y) / (2 * s2))
    tail = np.cumsum(w[::-1])[::-1]  # tail[i] = sum of w[i:], summed from the small end
    norm = tail[0]

    def p_greater(x: float) -> float:  # P[Y > x]
        i = math.floor(x) + 1 + L
        if i <= 0:
            return 1.0
        if i > 2 * L:
            return 0.0
        return float(tail[i] / norm)

    m = epsilon * s2 / D
    return p_greater(m - D / 2) - math.exp(epsilon) * p_greater(m + D / 2)


def _sigma2_for(D: int, epsilon: float, delta: float, sd: int) -> int:
    """Smallest sn with gaussian_delta(sn/sd) <= delta (1 - 1e-6)."""
    target = delta * (1 - 1e-6)
    hi = max(1, math.ceil((D * math.sqrt(2 * math.log(1.25 / delta)) / epsilon) ** 2 * sd))
    while gaussian_delta(Fraction(hi, sd), D, epsilon) > target:
        hi *= 2
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if gaussian_delta(Fraction(mid, sd), D, epsilon) <= target:
            hi = mid
        else:
            lo = mid
    return hi


@lru_cache(maxsize=256)
def gaussian_plan(
    lo: float, hi: float, epsilon: float, delta: float, integer: bool
) -> GaussianPlan:
    """Grid and rational sigma**2 for (epsilon, delta)-DP discrete Gaussian noise."""
    _check(lo, hi, epsilon, integer)
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    est = (hi - lo) * math.sqrt(2 * math.log(1.25 / delta)) / epsilon  # only picks the grid
    j = _min_j(lo, hi, integer)
    if est > 0:
        j = max(j, math.frexp(est)[1] - 1 - 10)
    while True:
        D = _grid_round(hi, j, integer) - _grid_round(lo, j, integer)
        if D == 0:
            return GaussianPlan(j, 0, 1, 1, 1, 0)
        s2 = Fraction(_sigma2_for(D, epsilon, delta, 1))
        sigma = math.sqrt(s2)
        # sd = 2**p with den = 2 sn sd t**2 ~ 2 sigma**4 sd**2 <= 2**46 (see _bits.dgauss)
        p = math.floor(22.5 - math.log2(max(sigma * (sigma + 1), 1e-300)))
        if p < 0:
            j += 1  # noise too wide for 64-bit rationals on this grid: coarser grid
            continue
        sd = 1 << min(p, 40)
        sn = _sigma2_for(D, epsilon, delta, sd)
        t = math.isqrt(sn // sd) + 1
        while (t - 1) ** 2 * sd > sn:  # t = floor(sigma) + 1 exactly
            t -= 1
        while t * t * sd <= sn:
            t += 1
        den = 2 * sn * sd * t * t
        if den > 1 << 46:
            j += 1
            continue
        return GaussianPlan(j, sn, sd, t, den, D)


# --- column kernels --------------------------------------------------------------------------


@njit(cache=True)
def _bexp_fill(z, valid, start, words, st, n, d):
    p, left, cur = st[0], st[1], st[3]
    for i in range(start, z.shape[0]):
        if valid[i]:
            v, p2, left2, cur2 = _bits.bern_exp(words, p, left, cur, n, d)
            if p2 > words.shape[0]:
                st[0], st[1], st[3] = p, left, cur
                return i
            p, left, cur = p2, left2, cur2
            z[i] = v
    st[0], st[1], st[3] = p, left, cur
    return z.shape[0]


def _run(fill, z: np.ndarray, valid: np.ndarray, rng: SecureRandom, per: float, *args) -> None:
    """Drive a fill kernel: first block sized from the expected use, then exact refills."""
    need = int(np.count_nonzero(valid) * per * 1.02) + 64
    words = rng.uint64(need).view(np.int64)
    st = np.zeros(4, dtype=np.int64)  # p, bits left, (unused), current word
    i = 0
    while True:
        i = fill(z, valid, i, words, st, *args)
        if i >= z.shape[0]:
            return
        rest = z.shape[0] - i
        more = rng.uint64(int(rest * per * 0.1) + 1024).view(np.int64)
        words = np.concatenate([words[st[0] :], more])
        st[0] = 0


def _tab_noise(tab, nv: int, rng: SecureRandom, combine, *args) -> np.ndarray:
    """nv exact samples by table inversion (raymask.kernels._invert): one block of 32-bit
    draws per digit level, one block of sign bits, then 64-bit words for the rare steps."""
    nl = tab.lv.shape[0]
    n32 = nl * nv + (nv + 31) // 32
    n32 += n32 & 1
    words = rng.uint64(n32 // 2 + nv // 256 + 64)
    w32 = words.view(np.uint32)
    tw = words[n32 // 2 :].view(np.int64)
    z = np.empty(nv, np.int64)
    ties = np.empty(nv, np.int64)  # untouched pages cost nothing
    for li in range(nl):
        nt = _invert.digits(w32, li * nv, nv, tab.thr, tab.guide, tab.lv, li, z, ties)
        if nt:  # decide the ties (in order), then redo the level with the decided digits
            _resolve_level(tab, li, w32, li * nv, z, ties[:nt].tolist(), rng)
    st = np.zeros(4, dtype=np.int64)  # p, bits left, (unused), current word of the rare steps
    k = 0
    while True:
        k = combine(z, w32, nl * nv, tw, st, *args, k)
        if k >= nv:
            return z
        tw = np.concatenate([tw[st[0] :], rng.uint64(1024).view(np.int64)])
        st[0] = 0


def _resolve_level(tab, li, w32, base, z, ks, rng) -> None:
    """Tied digits of level li, decided exactly by `_invert.resolve` from further secure bits,
    written over the kernel's guess (which counted the thresholds below the tie)."""
    lv = tab.lv[li]
    mult, n, top = int(lv[4]), int(lv[1]), bool(lv[5])
    for k in ks:
        w = int(w32[base + k]) >> int(lv[6])
        guess = z[k]
        v = ~guess if guess < 0 else guess
        g = int(np.searchsorted(tab.levels[li].thr, w, side="left"))  # the kernel's digit
        d = _invert.resolve(tab, li, w, lambda: int(rng.uint64(1)[0]))
        v += (d - g) * mult
        z[k] = ~v if (top and d == n) else v


def _lap_z(nv: int, t: int, s: int, rng: SecureRandom, **kw) -> np.ndarray:
    tab = _invert.lap_tables(t, s, **kw)
    return _tab_noise(tab, nv, rng, _invert.lap_combine, tab.lv, tab.folded, t, s)


def _gauss_z(nv: int, sn: int, sd: int, rng: SecureRandom, **kw) -> np.ndarray:
    tab = _invert.gauss_tables(sn, sd, **kw)
    return _tab_noise(tab, nv, rng, _invert.gauss_combine, tab.ymax, sn, sd)


@njit(cache=True)
def _add_valid(x, valid, z):
    k = 0
    for i in range(x.shape[0]):
        if valid[i]:
            x[i] += z[k]
            k += 1


def discrete_laplace(n: int, t: int, s: int, rng: SecureRandom) -> np.ndarray:
    """n samples of the discrete Laplace law P[z] ~ exp(-|z| s/t), s/t >= 2**-40 (exact
    table inversion, raymask.kernels._invert)."""
    if not (0 < t < 1 << 40 and s > 0):
        raise ValueError("discrete_laplace needs 0 < t < 2**40 and s > 0")
    return _lap_z(n, t, s, rng)


def discrete_gaussian(n: int, sigma2: Fraction, rng: SecureRandom) -> np.ndarray:
    """n samples of the discrete Gaussian N_Z(0, sigma2), sigma2 a positive rational whose
    numerator and denominator keep 2 sn sd (floor(sigma) + 1)**2 <= 2**46 (exact table
    inversion, raymask.kernels._invert; CKS 2020 for the law and the tail)."""
    sigma2 = Fraction(sigma2)
    sn, sd = sigma2.numerator, sigma2.denominator
    t = math.isqrt(sn // sd) + 1
    if 2 * sn * sd * t * t > 1 << 46:
        raise ValueError("sigma2's numerator and denominator are too large for this sampler")
    return _gauss_z(n, sn, sd, rng)


def bernoulli_exp(n: int, gamma: Fraction, rng: SecureRandom) -> np.ndarray:
    """n samples of Bernoulli(exp(-gamma)) for a rational gamma >= 0 (CKS Algorithm 1)."""
    gamma = Fraction(gamma)
    z = np.zeros(n, dtype=np.int64)
    _run(_bexp_fill, z, np.ones(n, np.bool_), rng, 0.1, gamma.numerator, gamma.denominator)
    return z.astype(np.bool_)


# --- Arrow in, Arrow out ---------------------------------------------------------------------


def _grid_values(values: pa.Array, lo: float, hi: float, j: int, integer: bool):
    """(grid indices int64, validity, nan mask, output type) of the clamped values."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    t = values.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)):
        raise TypeError(f"noise needs a numeric column, got {t}")
    valid = validity(values)
    if pa.types.is_integer(t):
        x = (
            values.fill_null(0).to_numpy().astype(np.int64)
            if values.null_count
            else (values.to_numpy().astype(np.int64))
        )
        nan = np.zeros(len(x), np.bool_)
        if integer:
            x = np.clip(x, int(lo), int(hi))
            xr = x if j == 0 else (x + (1 << (j - 1))) >> j
            return xr, valid, nan, pa.int64()
        x = x.astype(np.float64)
    else:
        x = pc.cast(values, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        nan = np.isnan(x)
        x = np.where(nan, lo, x)
    x = np.clip(x, lo, hi)
    if integer:
        xi = np.rint(x).astype(np.int64)
        xr = xi if j == 0 else (xi + (1 << (j - 1))) >> j
        return xr, valid & ~nan, nan, pa.float64()
    return np.rint(np.ldexp(x, -j)).astype(np.int64), valid & ~nan, nan, pa.float64()


def _finish(z, valid, nan, out_type, j, integer, round_to) -> pa.Array:
    if out_type == pa.int64():
        out = z << j if j else z
        if round_to is not None:
            step = int(round_to)
            out = (np.floor_divide(out + step // 2, step)) * step
        mask = None if valid.all() else ~valid
        return pa.array(out, pa.int64(), mask=mask)
    out = np.ldexp(z.astype(np.float64), j)
    if round_to is not None:
        out = round_multiple(out, round_to)
    out[nan] = np.nan
    null = ~(valid | nan)
    return pa.array(out, pa.float64(), mask=null if null.any() else None)


@njit(cache=True)
def _count_f(x, valid):
    """Values that get noise: present (valid is empty when all are) and not NaN."""
    c = 0
    allv = valid.shape[0] == 0
    for i in range(x.shape[0]):
        if (allv or valid[i]) and not np.isnan(x[i]):
            c += 1
    return c


@njit(cache=True)
def _apply_f(x, valid, z, lo, hi, j, integer):
    """One pass of `_grid_values`, the addition and `_finish` for float64 input (the same
    IEEE operations: clamp, round half to even on the grid, integer addition, ldexp back).
    Scaling by 2**-j and 2**j is a multiplication when both are normal doubles: a product
    with a power of two is the correctly rounded x 2**k, which is what ldexp returns."""
    out = np.empty(x.shape[0], np.float64)
    allv = valid.shape[0] == 0
    k = 0
    half = (1 << (j - 1)) if j > 0 else 0
    mul = -1022 <= j <= 1022
    sin = math.ldexp(1.0, -j) if mul else 0.0
    sout = math.ldexp(1.0, j) if mul else 0.0
    for i in range(x.shape[0]):
        if not (allv or valid[i]):
            out[i] = 0.0  # null (masked)
            continue
        v = x[i]
        if np.isnan(v):
            out[i] = v
            continue
        v = min(max(v, lo), hi)
        if integer:
            xi = np.int64(np.rint(v))
            xr = xi if j == 0 else (xi + half) >> j
        elif mul:
            xr = np.int64(np.rint(v * sin))
        else:
            xr = np.int64(np.rint(math.ldexp(v, -j)))
        y = np.float64(xr + z[k])
        out[i] = y * sout if mul else math.ldexp(y, j)
        k += 1
    return out


def _float_noise(values, lo, hi, j, integer, round_to, sample) -> pa.Array | None:
    """The float64 path in one pass over the values (None: not a float64 column)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type != pa.float64():
        return None
    n = len(values)
    buf = values.buffers()[1]
    x = (
        np.frombuffer(buf, np.float64, n, values.offset * 8)
        if buf is not None
        else np.zeros(n, np.float64)
    )
    valid = validity(values) if values.null_count else np.zeros(0, np.bool_)
    z = sample(_count_f(x, valid))
    out = _apply_f(x, valid, z, float(lo), float(hi), j, integer)
    if round_to is not None:
        out = round_multiple(out, round_to)
    return pa.array(out, pa.float64(), mask=~valid if values.null_count else None)


def _step(step: float) -> tuple[int, int]:
    """step as a fraction a/b in lowest terms, from its shortest decimal (0.01 is 1/100)."""
    q = Fraction(Decimal(repr(float(step))))
    return q.numerator, q.denominator


def round_multiple(x: np.ndarray, step: float) -> np.ndarray:
    """x rounded to the nearest multiple m * step, as the double nearest to the decimal
    m * step: m * a / b with step = a / b from its shortest decimal, one correctly rounded
    division of exact integers (m * 0.01 would give 49.980000000000004 for m = 4998, as 0.01
    is not a double). Falls back to m * step when m * a is not exact in float64."""
    m = np.round(x / step)
    a, b = _step(step)
    if b == 1 or not (a < 2**53 and b < 2**53):  # (b == 1: step is the integer a)
        return m * step
    if not np.fmax.reduce(np.abs(m), initial=0.0) * a < 2**53:  # (fmax skips NaN)
        return m * step
    return (m * float(a)) / float(b)


def round_decimals(step: float | None) -> int | None:
    """Digits after the point that every multiple of `step` needs (0.01: 2, 0.25: 2, 5: 0),
    or None when there are more than 15."""
    if step is None:
        return None
    e = Decimal(repr(float(step))).normalize().as_tuple().exponent
    d = max(0, -int(e))
    return d if d <= 15 else None


def _check_round(round_to: float | None, integer: bool) -> None:
    if round_to is None:
        return
    if not (math.isfinite(round_to) and round_to > 0):
        raise ValueError("round_to must be a positive number")
    if integer and round_to != int(round_to):
        raise ValueError("round_to must be a whole number for integer noise")


def laplace_noise(
    values: pa.Array | pa.ChunkedArray,
    lo: float,
    hi: float,
    epsilon: float,
    *,
    integer: bool,
    rng: SecureRandom,
    round_to: float | None = None,
) -> pa.Array:
    """Clamp to [lo, hi], add exact epsilon-DP Laplace noise (sensitivity hi - lo).

    integer=True: discrete Laplace on the integers (int64 output for integer columns);
    integer=False: Laplace on a 2**-k grid (float64 output). `round_to` rounds the output
    (post-processing, no privacy cost).
    """
    _check_round(round_to, integer)
    plan = laplace_plan(float(lo), float(hi), float(epsilon), integer)
    if plan.D > 0:
        out = _float_noise(
            values, lo, hi, plan.j, integer, round_to,
            lambda nv: _lap_z(nv, plan.t, plan.s, rng),
        )  # fmt: skip
        if out is not None:
            return out
    xr, valid, nan, out_type = _grid_values(values, float(lo), float(hi), plan.j, integer)
    if plan.D > 0:
        _add_valid(xr, valid, _lap_z(int(np.count_nonzero(valid)), plan.t, plan.s, rng))
    return _finish(xr, valid, nan, out_type, plan.j, integer, round_to)


def gaussian_noise(
    values: pa.Array | pa.ChunkedArray,
    lo: float,
    hi: float,
    epsilon: float,
    delta: float,
    *,
    integer: bool,
    rng: SecureRandom,
    round_to: float | None = None,
) -> pa.Array:
    """Clamp to [lo, hi], add exact (epsilon, delta)-DP discrete Gaussian noise (sensitivity
    hi - lo, calibrated by CKS Theorem 7 on the grid); same output rules as `laplace_noise`."""
    _check_round(round_to, integer)
    plan = gaussian_plan(float(lo), float(hi), float(epsilon), float(delta), integer)
    if plan.D > 0:
        out = _float_noise(
            values, lo, hi, plan.j, integer, round_to,
            lambda nv: _gauss_z(nv, plan.sn, plan.sd, rng),
        )  # fmt: skip
        if out is not None:
            return out
    xr, valid, nan, out_type = _grid_values(values, float(lo), float(hi), plan.j, integer)
    if plan.D > 0:
        _add_valid(xr, valid, _gauss_z(int(np.count_nonzero(valid)), plan.sn, plan.sd, rng))
    return _finish(xr, valid, nan, out_type, plan.j, integer, round_to)
