"""Continual release of a running count over a stream, under one zCDP budget for the whole
stream: the binary-tree mechanism and the square-root matrix factorization.

Both are factorization mechanisms for the prefix-sum matrix A (T x T, ones on and below the
diagonal): A = L R, the released vector is L (R x + z), z integer discrete Gaussian noise
(Canonne, Kamath, Steinke 2020; exact sampler of raymask.kernels.noise), so the release is
rho-zCDP with rho = D**2 / (2 sigma**2), D the largest column L2 norm of R (one unit's
contribution, in one step, changes R x by one column of R). Every output is L applied to the
noisy integer vector: post-processing, so floating point in L cannot leak anything.

- Tree (Dwork, Naor, Pitassi, Rothblum 2010; Chan, Shi, Song 2011): R holds the dyadic node
  sums (log2 T + 1 levels, D = sqrt(levels)); the count at t adds the nodes of t's binary
  decomposition, so its noise std is sigma0 sqrt(levels * popcount(t)): 10.49 sigma0 at worst
  for T = 2**10 and 20.49 for 2**20.
- Square root (Fichtenberger, Henzinger, Upadhyay, ICML 2023): L = R = A**(1/2), the lower-
  triangular Toeplitz matrix of c_k = binom(2k, k) / 4**k; worst std sigma0 sum_{k<T} c_k**2,
  about 1 + ln(T)/pi: 3.27 sigma0 at 2**10, 5.48 at 2**20. To keep R x on the integers (so the
  discrete Gaussian's exact guarantee applies), R is replaced by R_s = round(s R) for a power of
  two s, and L by A R_s**-1, which is exact: A = (A R_s**-1) R_s. The factorization is then a
  hair from the ideal one (the tests measure its error), and the guarantee is exact.

sigma0 is the noise for sensitivity 1 at the stream's rho: sigma0**2 = 1 / (2 rho).
`naive_worst_std(T)` is the baseline of releasing each step's count with its own noise
(parallel composition over disjoint steps) and summing: sqrt(T) sigma0 at worst.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from numba import njit

from raymask.kernels.noise import discrete_gaussian
from raymask.kernels.rng import SecureRandom

__all__ = [
    "sqrt_coefficients",
    "tree_worst_std",
    "sqrt_worst_std",
    "naive_worst_std",
    "TreeCounter",
    "SqrtCounter",
]


def sqrt_coefficients(T: int) -> np.ndarray:
    """c_k = binom(2k, k) / 4**k, k < T: the first column of A**(1/2)."""
    c = np.empty(T)
    c[0] = 1.0
    for k in range(1, T):
        c[k] = c[k - 1] * (2 * k - 1) / (2 * k)
    return c


def tree_worst_std(T: int) -> float:
    """Worst-case noise std of the tree mechanism's counts, in units of sigma0."""
    levels = max(T - 1, 1).bit_length() + 1
    worst_popcount = max(bin(t).count("1") for t in range(1, T + 1))
    return math.sqrt(levels * worst_popcount)


def sqrt_worst_std(T: int) -> float:
    """Worst-case noise std of the ideal square-root factorization, in units of sigma0."""
    return float(np.sum(sqrt_coefficients(T) ** 2))


def naive_worst_std(T: int) -> float:
    return math.sqrt(T)


def _sigma2(D2: Fraction, rho: Fraction) -> Fraction:
    """sigma**2 = D**2 / (2 rho), rounded up to a multiple of 1/4 (more noise, never less)."""
    s2 = D2 / (2 * rho)
    return Fraction(math.ceil(s2 * 4), 4)


class _Counter:
    """A running count, released after every step; `rho` is the zCDP of the whole release."""

    def __init__(self, T: int, rho: float, rng: SecureRandom) -> None:
        if T < 1:
            raise ValueError("T must be >= 1")
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError("rho must be a positive number")
        self.T = T
        self.rho = Fraction(repr(float(rho)))
        self.rng = rng
        self.t = 0

    def _check(self, n: int) -> None:
        if self.t + n > self.T:
            raise ValueError(f"this counter releases {self.T} steps; {self.t} done")


class TreeCounter(_Counter):
    """Binary-tree mechanism over T steps (see the module docstring)."""

    def __init__(self, T: int, rho: float, rng: SecureRandom) -> None:
        super().__init__(T, rho, rng)
        self.levels = max(T - 1, 1).bit_length() + 1
        self.sigma2 = _sigma2(Fraction(self.levels), self.rho)
        self.node_sum = np.zeros(self.levels, np.int64)  # open node per level
        self.node_noisy = np.zeros(self.levels, np.int64)  # closed nodes' noisy sums
        self.closed = np.zeros(self.levels, np.bool_)

    @property
    def sigma(self) -> float:
        return math.sqrt(self.sigma2)

    def step(self, counts: np.ndarray) -> np.ndarray:
        """Feed the next steps' counts (integers); returns the noisy running count after each."""
        counts = np.asarray(counts, np.int64)
        self._check(len(counts))
        out = np.empty(len(counts))
        noise = discrete_gaussian(len(counts) * self.levels, self.sigma2, self.rng)
        k = 0
        for i, c in enumerate(counts.tolist()):
            self.t += 1
            t = self.t
            self.node_sum += c
            # the nodes that close at t: level l closes when t is a multiple of 2**l
            for lvl in range(self.levels):
                if t % (1 << lvl):
                    break
                self.node_noisy[lvl] = self.node_sum[lvl] + noise[k]
                k += 1
                self.node_sum[lvl] = 0
                self.closed[lvl] = True
            # count at t: the closed nodes of t's binary decomposition (one per set bit)
            total = 0
            for lvl in range(self.levels):
                if (t >> lvl) & 1:
                    total += int(self.node_noisy[lvl])
            out[i] = total
        return out


@njit(cache=True)
def _sqrt_steps(x_hist, y_hist, t0, counts, z, r, lc, out):
    """y_t = sum_k r[t-k] x_k + z_t (integers), out_t = sum_k lc[t-k] y_k."""
    for i in range(counts.shape[0]):
        t = t0 + i
        x_hist[t] = counts[i]
        acc = 0
        for k in range(t + 1):
            acc += r[t - k] * x_hist[k]
        y_hist[t] = acc + z[i]
        s = 0.0
        for k in range(t + 1):
            s += lc[t - k] * y_hist[k]
        out[i] = s


class SqrtCounter(_Counter):
    """Square-root factorization over T steps with an integer R (see the module docstring);
    O(t) work per step."""

    # the scaled noise std aimed at (never exceeded): large for a fine R, small enough that the
    # exact sampler's 64-bit rationals hold (2 sn sd t**2 ~ 32 sigma**4 <= 2**45)
    TARGET_SIGMA = 2**10

    def __init__(self, T: int, rho: float, rng: SecureRandom) -> None:
        super().__init__(T, rho, rng)
        c = sqrt_coefficients(T)
        base = math.sqrt(float(np.sum(c**2)) / (2 * float(self.rho)))  # sigma at scale 1
        self.scale = 2 ** max(0, math.floor(math.log2(self.TARGET_SIGMA / base)))
        self.r = np.rint(c * self.scale).astype(np.int64)
        D2 = int(np.sum(self.r.astype(object) ** 2))  # exact
        self.sigma2 = _sigma2(Fraction(D2), self.rho)
        self.l = _lower_toeplitz_solve(self.r, T)  # A R_s**-1, first column
        self.x_hist = np.zeros(T, np.int64)
        self.y_hist = np.zeros(T, np.int64)

    def worst_std(self) -> float:
        """Worst-case noise std of the released counts, in units of sigma0 (exact for this R)."""
        sigma = math.sqrt(self.sigma2)
        sigma0 = math.sqrt(1 / (2 * float(self.rho)))
        return sigma * float(np.sqrt(np.sum(self.l**2))) / sigma0

    def step(self, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts, np.int64)
        self._check(len(counts))
        z = discrete_gaussian(len(counts), self.sigma2, self.rng)
        out = np.empty(len(counts))
        _sqrt_steps(self.x_hist, self.y_hist, self.t, counts, z, self.r, self.l, out)
        self.t += len(counts)
        return out


@njit(cache=True)
def _series_inverse(r, T):
    inv = np.zeros(T)
    inv[0] = 1.0 / r[0]
    for n in range(1, T):
        acc = 0.0
        for k in range(1, n + 1):
            acc += r[k] * inv[n - k]
        inv[n] = -acc / r[0]
    return inv


def _lower_toeplitz_solve(r: np.ndarray, T: int) -> np.ndarray:
    """First column of A R**-1 for lower-triangular Toeplitz R (first column r): the power
    series (1 / (1 - x)) / r(x), truncated at T terms."""
    return np.cumsum(_series_inverse(r.astype(np.float64), T))  # times 1 / (1 - x)
