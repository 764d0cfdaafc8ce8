"""Exact samplers over a stream of secure random bits (Numba), shared by noise.py and rr.py.

The bits come from SecureRandom's uint64 blocks (viewed as int64). The stream state is three
integers passed in and returned by every sampler (p: next word index, left: bits left in the
current word, cur: the current word), so Numba keeps them in registers: held in an array
instead, every bit cost ~14 ns here, ten times more. A word's bits are taken from the least
significant end; an arithmetic right shift leaves the low bits intact, so the signed view is
safe.

When a sampler runs out of words it returns p = len(words) + 1 (`exhausted`) and a garbage
value; the column kernels then roll the state back to the start of that value and return, the
caller appends fresh words after the unread ones, and the value is sampled again from the same
bits. The random stream is thus one continuous stream: running out never biases a sample.

Samplers (Canonne, Kamath, Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS
2020, arXiv:2004.00010; integer arithmetic only, no floating point anywhere):

- `bern(n, d)`: Bernoulli(n/d), 0 <= n <= d < 2**62, by comparing a lazily drawn uniform binary
  fraction with the binary expansion of n/d (long division); 2 bits expected, exact.
- `bern_exp(n, d)`: Bernoulli(exp(-n/d)) (CKS Algorithm 1): exp(-1) floor(n/d) times, then the
  fraction by the alternating-series trick (K odd with A_k ~ Bernoulli(gamma/k)).
- `geom(t, s)`: geometric P[y] proportional to exp(-y s/t), y >= 0 (CKS Algorithm 2's magnitude).
- `dlap(t, s)`: discrete Laplace P[z] proportional to exp(-|z| s/t) (CKS Algorithm 2).
- `dgauss(sn, sd, t, den)`: discrete Gaussian P[z] proportional to exp(-z**2/(2 sigma**2)),
  sigma**2 = sn/sd, t = floor(sigma) + 1, den = 2 sn sd t**2 (CKS Algorithm 3).
"""

from __future__ import annotations

from numba import njit

__all__ = ["bit", "bits", "bit_length", "uniform", "bern", "bern_exp", "geom", "dlap", "dgauss"]

_LIM = 1 << 62


@njit(cache=True, inline="always")
def bit(w, p, left, cur):
    """One uniform bit: (b, p, left, cur)."""
    if left == 0:
        if p >= w.shape[0]:
            return 0, w.shape[0] + 1, 0, 0
        cur = w[p]
        p += 1
        left = 64
    return cur & 1, p, left - 1, cur >> 1


@njit(cache=True, inline="always")
def bits(w, p, left, cur, k):
    """k uniform bits (1 <= k <= 62) as a non-negative integer: (v, p, left, cur)."""
    if left >= k:
        return cur & ((1 << k) - 1), p, left - k, cur >> k
    if p >= w.shape[0]:
        return 0, w.shape[0] + 1, 0, 0
    v = cur & ((1 << left) - 1)
    nxt = w[p]
    need = k - left
    v |= (nxt & ((1 << need) - 1)) << left
    return v, p + 1, 64 - need, nxt >> need


@njit(cache=True, inline="always")
def bit_length(n):
    """Bits needed for the integers 0 .. n - 1 (at least 1)."""
    k = 1
    while (1 << k) < n:
        k += 1
    return k


@njit(cache=True, inline="always")
def uniform(w, p, left, cur, n, k):
    """Uniform integer in [0, n), 1 <= n < 2**62, k = bit_length(n), by rejection (acceptance
    >= 1/2)."""
    if n == 1:
        return 0, p, left, cur
    while True:
        v, p, left, cur = bits(w, p, left, cur, k)
        if p > w.shape[0] or v < n:
            return v, p, left, cur


@njit(cache=True, inline="always")
def bern(w, p, left, cur, n, d):
    """Bernoulli(n/d) exactly, 0 <= n, 0 < d < 2**62: is U < n/d for a uniform U in [0, 1)?

    The bits of n/d come from long division; the first random bit that differs decides."""
    if n <= 0:
        return 0, p, left, cur
    if n >= d:
        return 1, p, left, cur
    r = n
    while True:
        r <<= 1
        pb = 0
        if r >= d:
            pb = 1
            r -= d
        b, p, left, cur = bit(w, p, left, cur)
        if p > w.shape[0]:
            return 0, p, left, cur
        if b != pb:
            return pb, p, left, cur  # U's bit 0 < p's bit 1 means U < p
        if r == 0:
            return 0, p, left, cur  # the remaining bits of n/d are all 0: U >= n/d


@njit(cache=True, inline="always")
def _bern_exp_frac(w, p, left, cur, n, d):
    """Bernoulli(exp(-n/d)) for 0 <= n <= d (CKS Algorithm 1, gamma in [0, 1])."""
    kmax = _LIM // d  # one division per call, not per step
    k = 1
    while True:
        # A ~ Bernoulli(gamma / k) = Bernoulli(n / (d k)); split when d k would overflow
        if k < kmax:
            a, p, left, cur = bern(w, p, left, cur, n, d * k)
        else:
            a, p, left, cur = bern(w, p, left, cur, n, d)
            if a:
                a, p, left, cur = bern(w, p, left, cur, 1, k)
        if p > w.shape[0]:
            return 0, p, left, cur
        if a == 0:
            return k & 1, p, left, cur
        k += 1


@njit(cache=True, inline="always")
def bern_exp(w, p, left, cur, n, d):
    """Bernoulli(exp(-n/d)) for n >= 0, 0 < d < 2**62 (CKS Algorithm 1, any gamma >= 0)."""
    if n <= d:
        return _bern_exp_frac(w, p, left, cur, n, d)
    q = n // d
    for _ in range(q):
        c, p, left, cur = _bern_exp_frac(w, p, left, cur, 1, 1)
        if c == 0 or p > w.shape[0]:
            return 0, p, left, cur
    return _bern_exp_frac(w, p, left, cur, n - q * d, d)


@njit(cache=True, inline="always")
def geom(w, p, left, cur, t, s, tbits):
    """Geometric P[y] proportional to exp(-y s / t), y >= 0 (the magnitude step of CKS
    Algorithm 2: X = U + t V ~ geometric with ratio exp(-1/t), y = floor(X / s));
    tbits = bit_length(t)."""
    end = w.shape[0]
    while True:
        u, p, left, cur = uniform(w, p, left, cur, t, tbits)
        if p > end:
            return 0, p, left, cur
        d, p, left, cur = bern_exp(w, p, left, cur, u, t)
        if p > end:
            return 0, p, left, cur
        if d == 0:
            continue
        v = -1
        a = 1
        while a:
            a, p, left, cur = _bern_exp_frac(w, p, left, cur, 1, 1)
            v += 1
        if p > end:
            return 0, p, left, cur
        y = u + t * v
        if s != 1:
            y //= s
        return y, p, left, cur


@njit(cache=True, inline="always")
def dlap(w, p, left, cur, t, s, tbits):
    """Discrete Laplace with P[z] proportional to exp(-|z| s / t) (CKS Algorithm 2);
    tbits = bit_length(t)."""
    end = w.shape[0]
    while True:
        y, p, left, cur = geom(w, p, left, cur, t, s, tbits)
        if p > end:
            return 0, p, left, cur
        b, p, left, cur = bit(w, p, left, cur)
        if p > end:
            return 0, p, left, cur
        if b == 1 and y == 0:
            continue
        return (y if b == 0 else -y), p, left, cur


@njit(cache=True, inline="always")
def dgauss(w, p, left, cur, sn, sd, t, den, tbits):
    """Discrete Gaussian, sigma**2 = sn/sd, t = floor(sigma) + 1, den = 2 sn sd t**2 <= 2**46
    (CKS Algorithm 3): propose Y ~ dlap(t), accept with exp(-(|Y| - sigma**2/t)**2 / (2 sigma**2))
    = exp(-a**2 / den) with a = |Y| t sd - sn."""
    end = w.shape[0]
    cap = (_LIM // t) // sd
    while True:
        y, p, left, cur = dlap(w, p, left, cur, t, 1, tbits)
        if p > end:
            return 0, p, left, cur
        ay = y if y >= 0 else -y
        if ay > cap:
            # |Y| t sd > 2**62: the acceptance probability exp(-a**2/den) is below exp(-2**78)
            # (den <= 2**46); rejected outright, which moves the output law by less than that
            # in total variation (and such a proposal itself has probability below exp(-2**48))
            continue
        a = ay * t * sd - sn
        if a < 0:
            a = -a
        if a < (1 << 31):
            c, p, left, cur = bern_exp(w, p, left, cur, a * a, den)
        else:
            # exp(-a*a/den) = exp(-a/den) ** a: a trials, stop at the first failure
            c = 1
            for _ in range(a):
                c, p, left, cur = bern_exp(w, p, left, cur, a, den)
                if c == 0 or p > end:
                    break
        if p > end:
            return 0, p, left, cur
        if c:
            return y, p, left, cur
