"""Exact table inversion for the noise samplers: discrete Laplace by base-2**c digits, the
discrete Gaussian by its folded CDF, each with lazily resolved ties (Numba + exact Python).

Method (inversion with lazy precision; Devroye, "Non-Uniform Random Variate Generation" 1986,
II.2 inversion and III.2 guide tables (Chen and Asau 1974); the lazy comparison of a uniform
with a real known to any precision is von Neumann's / Knuth and Yao's 1976 idea, as in Karney,
"Sampling exactly from the normal distribution", ACM TOMS 42(1), 2016):
a law on 0..n-1 (or 0..n-1 plus an escape "n or more") has cumulative thresholds
F(1) < ... < F(n), real numbers. A uniform U in [0, 1) falls in digit d = #{k : F(k) <= U}.
The kernel knows L_k = floor(2**prec F(k)) exactly and draws the first prec bits W of U:
W < L_k proves U < F(k) and W > L_k proves U > F(k), so the digit is exact unless W == L_k
for some k (probability <= n / 2**prec, about 2**-20 per draw at prec = 32). The kernel lists
such draws, and `resolve` decides each in Python by drawing further bits of U from the secure
generator and computing F(k) to as many digits as needed; the digit is then corrected before
the values are assembled. No floating point decides anything: L_k are
integers computed from correctly rounded `decimal` arithmetic with a proven error bound and
only kept when the bound cannot move the floor; the comparisons are integer.

- Discrete Laplace P[z] ~ q**|z|, q = exp(-s/t): the magnitude M (P[M = m] = (1 - q) q**m) is
  written in base N = 2**c, M = sum_j d_j N**j + K N**J; as q**m factors over the digits, the
  digits are independent, d_j truncated geometric on [0, N) with ratio q**(N**j) and K
  geometric with ratio q**(N**J) (memoryless: its table's escape adds N and draws again).
  Then a sign bit; a negative zero is rejected (as in CKS Algorithm 2), giving the two-sided law.
  With one level (J = 0) its table is |Z| of the two-sided law instead (P[|Z| = 0] =
  (1 - q)/(1 + q), P[|Z| = m] = 2 (1 - q) q**m/(1 + q), geometric from 1 on, so the escape
  stays memoryless) and no value is rejected.
- Discrete Gaussian N_Z(0, sn/sd): |Y| by inversion of its folded CDF on 0..ymax-1, the sign
  from one bit for |Y| > 0; the escape |Y| >= ymax (probability < 2**-40 in production) is the
  tail law sampled exactly: ymax + G, G geometric with ratio exp(-ymax sd/sn) (CKS-style exact
  Bernoulli), accepted with probability exp(-G**2 sd / (2 sn)) (rejection sampling; target over
  proposal is exp(-ymax**2/(2 sigma**2)) exp(-G**2/(2 sigma**2)), at most a constant).

Guarantee: the output law is exactly the discrete Laplace / discrete Gaussian law (tests:
tests/kernels/test_noise.py, production parameters and a low-precision variant whose ties and
tail run often, chi-square at alpha = 0.001 on 10**6 samples).
"""

from __future__ import annotations

import math
from decimal import ROUND_FLOOR, Context, Decimal
from fractions import Fraction
from functools import lru_cache

import numpy as np
from numba import njit

from raymask.kernels import _bits

__all__ = ["LapTables", "GaussTables", "lap_tables", "gauss_tables", "resolve"]

PREC = 32  # bits of U compared in the kernel (one 32-bit draw per digit; fixed)
_DIGITS = 80  # decimal digits of the tables' first computation
_TAIL_BITS = 40  # discrete Gaussian: the table covers all but < 2**-40 of the mass
# two sentinels end each level's thresholds: no draw steps past them (W <= 2**32 - 1); a draw
# equal to one reads as a tie that `resolve` decides as the escape digit n
_SENT = (1 << 32) - 1


class _Level:
    """One inversion table: thresholds F(1..n) as Decimals (to `digits` digits, absolute error
    below 10**-(digits - 20)) and the integers floor(2**prec F(k))."""

    def __init__(self, cdf, n: int, prec: int) -> None:
        self.cdf = cdf  # cdf(digits) -> list of n Decimals
        self.n = n
        self.prec = prec
        self.digits = _DIGITS
        self.values = cdf(self.digits)
        while True:
            lk = _floors(self.values, self.digits, prec)
            if lk is not None:
                self.thr = lk
                return
            self.refine()

    def refine(self) -> None:
        self.digits *= 2
        self.values = self.cdf(self.digits)

    def bounds(self, k: int) -> tuple[Fraction, Fraction]:
        """F(k + 1) lies in [lo, hi] (k 0-based)."""
        v = Fraction(self.values[k])
        e = Fraction(1, 10 ** (self.digits - 20))
        return v - e, v + e


def _floors(values: list[Decimal], digits: int, prec: int) -> np.ndarray | None:
    """floor(2**prec F) for each F, or None if the error bound could move a floor."""
    ctx = Context(prec=digits + 60)
    e = Decimal(10) ** -(digits - 20)
    scale = Decimal(2**prec)
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        lo = ctx.multiply(ctx.subtract(v, e), scale).to_integral_value(ROUND_FLOOR)
        hi = ctx.multiply(ctx.add(v, e), scale).to_integral_value(ROUND_FLOOR)
        if lo != hi:
            return None
        out[i] = min(max(int(lo), 0), (1 << prec) - 1)
    return out


def _guide(thr: np.ndarray, prec: int, gbits: int) -> np.ndarray:
    """g[h] = #{k : thr[k] < h 2**(prec - gbits)}: where the scan for a W in bucket h starts."""
    starts = np.arange(1 << gbits, dtype=np.int64) << (prec - gbits)
    return np.searchsorted(thr, starts, side="left").astype(np.int64)


class _Tables:
    """Levels packed for Numba: thr (all thresholds), guide (all guide tables) and lv, one row
    per level: threshold offset, n, guide offset, guide shift, multiplier, top (escape) flag,
    shift of a 32-bit draw to its prec-bit prefix (0 but in tests of the tie path)."""

    def __init__(self, levels: list[_Level], mults: list[int], tops: list[bool], prec: int):
        self.levels = levels
        self.prec = prec
        thr, guide, rows = [], [], []
        toff = goff = 0
        for lvl, mult, top in zip(levels, mults, tops, strict=True):
            gbits = min(prec, max(1, int(lvl.n).bit_length()))
            g = _guide(lvl.thr, prec, gbits)
            rows.append((toff, lvl.n, goff, prec - gbits, mult, int(top), 32 - prec))
            thr.append(np.concatenate([lvl.thr, [_SENT, _SENT]]))
            guide.append(g)
            toff += lvl.n + 2
            goff += len(g)
        # 32-bit thresholds and 16-bit guides when they fit: half the cache lines per lookup
        self.thr = np.concatenate(thr).astype(np.uint32 if prec == 32 else np.int64)
        big = max(int(r[1]) for r in rows) + 2 >= 1 << 15
        self.guide = np.concatenate(guide).astype(np.int32 if big else np.int16)
        self.lv = np.array(rows, np.int64)


class LapTables(_Tables):
    pass


class GaussTables(_Tables):
    def __init__(self, level: _Level, prec: int, sn: int, sd: int, ymax: int) -> None:
        super().__init__([level], [1], [True], prec)
        self.sn, self.sd, self.ymax = sn, sd, ymax


def _ctx(digits: int) -> Context:
    return Context(prec=digits + 10)


@lru_cache(maxsize=16)  # a table set holds up to ~12k Decimals (for `resolve`)
def lap_tables(t: int, s: int, c: int = 12, prec: int = PREC, escape: int = 12) -> LapTables:
    """Digit tables for P[m] ~ exp(-m s/t) (m >= 0), base 2**c, s/t >= 2**-40; the top level
    escapes with probability below e**-escape (c, prec, escape other than the defaults only
    in tests, to make ties and escapes frequent)."""
    g = Fraction(s, t)
    N = 1 << c
    J = 0
    while g * N ** (J + 1) < escape:
        J += 1
    levels, mults, tops = [], [], []
    for j in range(J + 1):
        mult = N**j
        x = g * mult  # q**mult = exp(-x)
        top = j == J
        if top:  # thresholds F(k) = 1 - exp(-x k) up to where exp(-x k) < 2**-40
            n = min(N, math.ceil(40 * math.log(2) / float(x)) + 1)
        else:
            n = N - 1
        levels.append(_Level(_lap_cdf(x, n, N, top, J == 0), n, prec))
        mults.append(mult)
        tops.append(top)
    tab = LapTables(levels, mults, tops, prec)
    tab.folded = J == 0
    return tab


def _lap_cdf(x: Fraction, n: int, N: int, top: bool, folded: bool):
    def cdf(digits: int) -> list[Decimal]:
        # rho**k by repeated products (relative error <= (k + 2) 10**(1 - prec), k <= 4096);
        # 1 - rho**k cancels by at most 1/(1 - rho) <= 2**41; the bound 10**-(digits - 20)
        # covers both with room (see _Level)
        ctx = _ctx(digits)
        rho = ctx.exp(ctx.divide(Decimal(-x.numerator), Decimal(x.denominator)))
        pw = Decimal(1)
        powers = []
        for _ in range(n if top else N):
            pw = ctx.multiply(pw, rho)
            powers.append(pw)
        if folded:  # |Z| of the two-sided law: P[|Z| < k] = 1 - 2 rho**k / (1 + rho)
            c = ctx.divide(2, ctx.add(1, rho))
            return [ctx.subtract(1, ctx.multiply(c, p)) for p in powers]
        if top:
            return [ctx.subtract(1, p) for p in powers]
        den = ctx.subtract(1, powers[N - 1])
        return [ctx.divide(ctx.subtract(1, p), den) for p in powers[:n]]

    return cdf


@lru_cache(maxsize=16)
def gauss_tables(sn: int, sd: int, prec: int = PREC, ymax: int | None = None) -> GaussTables:
    """Folded-CDF table of N_Z(0, sn/sd) on |Y| < ymax (default: all but 2**-40 of the mass)."""
    sigma = math.sqrt(sn / sd)
    if ymax is None:
        ymax = math.ceil(sigma * math.sqrt(2 * _TAIL_BITS * math.log(2))) + 2
    level = _Level(_gauss_cdf(sn, sd, ymax), ymax, prec)
    return GaussTables(level, prec, sn, sd, ymax)


def _gauss_cdf(sn: int, sd: int, ymax: int):
    def cdf(digits: int) -> list[Decimal]:
        # w(y) = exp(-y**2 sd / (2 sn)) by w(y+1) = w(y) a(y), a(y+1) = a(y) b: relative error
        # <= 3 y 10**(1 - prec) per term; the normaliser sums terms until they are below
        # 10**-(digits + 5) (its tail adds at most sigma + 1 such terms)
        ctx = _ctx(digits)
        sigma = math.sqrt(sn / sd)
        yt = max(ymax, math.ceil(sigma * math.sqrt(2 * math.log(10) * (digits + 5))) + 2)
        b = ctx.exp(ctx.divide(Decimal(-sd), Decimal(sn)))
        a = ctx.exp(ctx.divide(Decimal(-sd), Decimal(2 * sn)))
        w = Decimal(1)
        cum = [Decimal(1)]  # cum[y] = w(0) + 2 sum_{1 <= v <= y} w(v)
        total = Decimal(1)
        for _y in range(1, yt + 1):
            w = ctx.multiply(w, a)
            a = ctx.multiply(a, b)
            total = ctx.add(total, ctx.multiply(2, w))
            cum.append(total)
        # F(k) = P[|Y| < k] = cum[k - 1] / total, k = 1..ymax
        return [ctx.divide(cum[k - 1], total) for k in range(1, ymax + 1)]

    return cdf


def resolve(tab: _Tables, level: int, w: int, draw) -> int:
    """The exact digit of level `level` for a uniform U whose first prec bits are w, where w
    equals some threshold's floor: further bits of U come from draw() (64 at a time)."""
    lvl = tab.levels[level]
    prec = tab.prec
    thr = lvl.thr
    k0 = int(np.searchsorted(thr, w, side="left"))
    k1 = int(np.searchsorted(thr, w, side="right"))
    bits = 0  # further bits of U drawn so far
    v = 0  # their value
    for k in range(k0, k1):
        while True:  # is U >= F(k + 1)?
            lo, hi = lvl.bounds(k)
            u_lo = Fraction(w * (1 << bits) + v, 1 << (prec + bits))
            u_hi = Fraction(w * (1 << bits) + v + 1, 1 << (prec + bits))
            if u_hi <= lo:
                return k  # U < F(k + 1): digit k
            if u_lo >= hi:
                break  # U >= F(k + 1): try the next threshold
            if Fraction(1, 1 << (bits + prec)) < Fraction(2, 10 ** (lvl.digits - 20)):
                lvl.refine()
            else:
                v = (v << 64) | draw()
                bits += 64
    return k1


# --- Numba ---------------------------------------------------------------------------------
# Pass 1 (`digits`) inverts one level's block of 32-bit draws into digits, one draw each, and
# lists the ties; Python resolves them (`resolve`). Pass 2 (`lap_combine`, `gauss_combine`)
# assembles each value from its digits and a sign bit, and takes the rare steps (escape,
# negative zero, Gaussian tail) from a separate stream of 64-bit words through the exact
# bit-level samplers of _bits. Every draw and every bit is used once, so each value's bits
# are independent, as in a one-value-at-a-time sampler; the blocks are laid out in a fixed
# order, so a seeded generator gives a reproducible output.


@njit(cache=True)
def digits(w32, base, nv, thr, guide, lv, li, out, ties):
    """Level li's digit d for the draw w32[base + k], k < nv, times the level's multiplier:
    stored in out[k] (level 0) or added to it; an escaping top digit (d = n) leaves the
    complement ~out[k] (negative) as its mark. Tied k are listed in ties; returns how many.
    Two branch-free steps over the thresholds after the guide (thresholds end in two
    sentinels); the loop and the tie test are rarely taken."""
    off, n, goff, gsh, mult, top, wsh = (
        lv[li, 0], lv[li, 1], lv[li, 2], lv[li, 3], lv[li, 4], lv[li, 5], lv[li, 6]
    )  # fmt: skip
    nt = 0
    for k in range(nv):
        W = np.int64(w32[base + k]) >> wsh
        d = guide[goff + (W >> gsh)]
        d += thr[off + d] < W
        d += thr[off + d] < W
        if thr[off + d] <= W:
            while thr[off + d] < W:
                d += 1
            if thr[off + d] == W:
                ties[nt] = k
                nt += 1
        v = d * mult if li == 0 else out[k] + d * mult
        out[k] = ~v if (top and d == n) else v
    return nt


@njit(cache=True, inline="always")
def _sign(w32, sbase, k):
    return (np.int64(w32[sbase + (k >> 5)]) >> (k & 31)) & 1


@njit(cache=True)
def lap_combine(z, w32, sbase, tw, st, lv, folded, t, s, start):
    """z[k] (the sum of digits times multipliers, from `digits`) becomes (-1)**b M for
    k >= start; an escape of the top digit (z[k] < 0) continues with a geometric K' (ratio
    q**(N**J), CKS-exact); a negative zero is replaced by a fresh exact sample (CKS Algorithm
    2, the rejection step), unless the one level is the folded two-sided law (then zero has its
    own share and no sign). Returns where it stopped (the rare-step stream ran out; state
    rolled back to that value)."""
    p, left, cur = st[0], st[1], st[3]
    end = tw.shape[0]
    top = lv.shape[0] - 1
    stop = s * lv[top, 4]
    tbits = _bits.bit_length(t)
    for k in range(start, z.shape[0]):
        m = z[k]
        b = _sign(w32, sbase, k)
        if m < 0 or (b == 1 and m == 0 and not folded):
            p2, left2, cur2 = p, left, cur
            if m < 0:  # K >= n: K = n + K', K' geometric (memoryless)
                g, p2, left2, cur2 = _bits.geom(tw, p2, left2, cur2, t, stop, tbits)
                m = ~m + g * lv[top, 4]
                v = -m if b else m
            else:
                v, p2, left2, cur2 = _bits.dlap(tw, p2, left2, cur2, t, s, tbits)
            if p2 > end:
                st[0], st[1], st[3] = p, left, cur
                return k
            p, left, cur = p2, left2, cur2
            z[k] = v
        else:
            z[k] = (m ^ -b) + b
    st[0], st[1], st[3] = p, left, cur
    return z.shape[0]


@njit(cache=True, inline="always")
def gauss_tail(w, p, left, cur, sn, sd, ymax, snbits):
    """|Y| given |Y| >= ymax for N_Z(0, sn/sd): ymax + G, G ~ geometric with ratio
    exp(-ymax sd/sn), accepted with probability exp(-G**2 sd/(2 sn))."""
    end = w.shape[0]
    while True:
        g, p, left, cur = _bits.geom(w, p, left, cur, sn, ymax * sd, snbits)
        if p > end:
            return 0, p, left, cur
        if g <= 2_000_000_000 and g * g <= ((1 << 62) - 1) // sd:
            c, p, left, cur = _bits.bern_exp(w, p, left, cur, g * g * sd, 2 * sn)
        else:  # exp(-g*g*sd/(2sn)) = exp(-sd/(2sn)) ** (g*g): trials until the first failure
            c = 1
            for _ in range(g):
                for _ in range(g):
                    c, p, left, cur = _bits.bern_exp(w, p, left, cur, sd, 2 * sn)
                    if c == 0 or p > end:
                        break
                if c == 0 or p > end:
                    break
        if p > end:
            return 0, p, left, cur
        if c:
            return ymax + g, p, left, cur


@njit(cache=True)
def gauss_combine(z, w32, sbase, tw, st, ymax, sn, sd, start):
    """z[k] = (-1)**b |Y| from the folded digit (z[k] from `digits`), the tail law when the
    digit escapes (z[k] < 0)."""
    p, left, cur = st[0], st[1], st[3]
    end = tw.shape[0]
    snbits = _bits.bit_length(sn)
    for k in range(start, z.shape[0]):
        m = z[k]
        b = _sign(w32, sbase, k)
        if m < 0:
            m, p2, left2, cur2 = gauss_tail(tw, p, left, cur, sn, sd, ymax, snbits)
            if p2 > end:
                st[0], st[1], st[3] = p, left, cur
                return k
            p, left, cur = p2, left2, cur2
        z[k] = (m ^ -b) + b
    st[0], st[1], st[3] = p, left, cur
    return z.shape[0]
