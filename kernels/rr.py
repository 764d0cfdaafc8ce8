"""k-ary randomized response for booleans and categories, with an unbiased frequency decoder.

Method: generalized randomized response (Warner 1965; the k-ary form of Kairouz, Oh and
Viswanath 2014 / Wang et al., "Locally Differentially Private Protocols for Frequency
Estimation", USENIX Security 2017, "direct encoding"): each value is kept with probability
p = e**eps / (e**eps + k - 1), otherwise replaced by one of the other k - 1 categories uniformly.

Exactness: e**eps is irrational, so the kept probability used is p' = T / 2**62 with
T = floor(p * 2**62) computed in 200-bit decimal arithmetic, i.e. p rounded *down*. Lowering p
lowers the likelihood ratio p / ((1 - p)/(k - 1)), so the mechanism is eps'-DP with
eps' = ln(p' (k - 1) / (1 - p')) <= eps (`effective_epsilon`). The keep decision is an exact
Bernoulli(T / 2**62) on the secure bit stream (2 bits expected) and the replacement an exact
uniform integer by rejection; no floating point decides anything.

Guarantee (tests/kernels/test_rr.py): the observed keep rate is p', replacements are uniform,
`estimate_frequencies` is unbiased (exactly, on expected counts), and an empirical audit of two
neighbouring inputs stays within eps. Nulls stay null (presence is not protected).
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from raymask.kernels import _bits
from raymask.kernels._arrow import validity
from raymask.kernels.rng import SecureRandom

__all__ = [
    "keep_threshold",
    "keep_probability",
    "effective_epsilon",
    "randomized_response",
    "randomize_indices",
    "estimate_frequencies",
]

_DEN = 1 << 62


def keep_threshold(k: int, epsilon: float) -> int:
    """T = floor(2**62 e**eps / (e**eps + k - 1)), exact (200-digit decimal arithmetic)."""
    if k < 2:
        raise ValueError("randomized response needs at least 2 categories")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError("epsilon must be a positive finite number")
    with decimal.localcontext() as ctx:
        ctx.prec = 200
        e = decimal.Decimal(epsilon).exp()
        t = int((e * _DEN / (e + (k - 1))).to_integral_value(rounding=decimal.ROUND_FLOOR))
    return min(t, _DEN - 1)


def keep_probability(k: int, epsilon: float) -> float:
    """The exact keep probability p' = T / 2**62 the kernel uses (as a float)."""
    return keep_threshold(k, epsilon) / _DEN


def effective_epsilon(k: int, epsilon: float) -> float:
    """eps' = ln(p' (k - 1) / (1 - p')) <= epsilon: the privacy the kernel actually gives."""
    t = keep_threshold(k, epsilon)
    return math.log(t * (k - 1) / (_DEN - t))


@njit(cache=True)
def _rr_fill(x, valid, start, words, st, thr, k):
    p, left, cur = st[0], st[1], st[3]
    kb = _bits.bit_length(k - 1)
    end = words.shape[0]
    for i in range(start, x.shape[0]):
        if not valid[i]:
            continue
        keep, p2, left2, cur2 = _bits.bern(words, p, left, cur, thr, 1 << 62)
        r = 0
        if p2 <= end and not keep:
            r, p2, left2, cur2 = _bits.uniform(words, p2, left2, cur2, k - 1, kb)
        if p2 > end:
            st[0], st[1], st[3] = p, left, cur
            return i
        p, left, cur = p2, left2, cur2
        if not keep:
            x[i] = r + 1 if r >= x[i] else r  # one of the other k - 1, uniformly
    st[0], st[1], st[3] = p, left, cur
    return x.shape[0]


def randomize_indices(
    idx: np.ndarray, valid: np.ndarray, k: int, epsilon: float, rng: SecureRandom
) -> np.ndarray:
    """k-ary randomized response on category indices 0..k-1 (int64; invalid rows untouched)."""
    thr = keep_threshold(k, epsilon)
    x = np.array(idx, dtype=np.int64, copy=True)
    per = 0.05 + (1 - thr / _DEN) * (1 + math.log2(k)) / 32
    need = int(np.count_nonzero(valid) * per * 1.1) + 64
    words = rng.uint64(need).view(np.int64)
    st = np.zeros(4, dtype=np.int64)
    i = 0
    while True:
        i = _rr_fill(x, valid, i, words, st, thr, k)
        if i >= len(x):
            return x
        more = rng.uint64(int((len(x) - i) * per * 0.1) + 1024).view(np.int64)
        words = np.concatenate([words[st[0] :], more])
        st[0] = 0


def randomized_response(
    values: pa.Array | pa.ChunkedArray,
    categories: Sequence[object] | None,
    epsilon: float,
    *,
    rng: SecureRandom,
) -> pa.Array:
    """Randomized response on a bool column (categories [False, True] when None) or a string /
    dictionary column with the given category list. Output has the input's value type (a
    dictionary column comes back as plain strings). A value outside the categories raises
    ValueError (the message names the count, never a value)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if pa.types.is_boolean(values.type):
        cats = pa.array([False, True]) if categories is None else pa.array(categories, pa.bool_())
    else:
        if categories is None:
            raise ValueError("randomized response on non-boolean values needs a category list")
        cats = pa.array(categories, values.type)
    if len(cats) != len(set(cats.to_pylist())) or cats.null_count:
        raise ValueError("categories must be distinct and not null")
    k = len(cats)
    idx = pc.index_in(values, value_set=cats)
    valid = validity(values)
    missing = int(np.count_nonzero(valid & ~validity(idx)))
    if missing:
        raise ValueError(f"{missing} value(s) are not in the category list")
    ix = idx.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    out = randomize_indices(ix, valid, k, epsilon, rng)
    res = cats.take(pa.array(out))
    if valid.all():
        return res
    return pc.if_else(pa.array(valid), res, pa.nulls(len(res), res.type))


def estimate_frequencies(
    counts: Sequence[float] | np.ndarray, k: int, epsilon: float, n: int | None = None
) -> np.ndarray:
    """Unbiased estimate of the true category frequencies from randomized-response counts.

    With p' the kernel's keep probability and q' = (1 - p')/(k - 1), E[c_j] = n (q' + pi_j
    (p' - q')), so pi_hat_j = (c_j / n - q') / (p' - q') is unbiased for pi_j (and sums to 1).
    Estimates may fall outside [0, 1]; clip or project them downstream if needed.
    `n` defaults to the sum of the counts.
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (k,):
        raise ValueError(f"expected {k} counts, got shape {c.shape}")
    n = float(c.sum()) if n is None else float(n)
    if n <= 0:
        raise ValueError("n must be positive")
    p = keep_threshold(k, epsilon) / _DEN
    q = (1 - p) / (k - 1)
    return (c / n - q) / (p - q)
