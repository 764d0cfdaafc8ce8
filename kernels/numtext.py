"""Numbers as text: exactly the text Arrow's cast to string gives, written by a Numba kernel.

Why: the `noise` technique writes its float64 outputs back as text, and Arrow's cast (the
shortest decimal that reads back as the same double, by double-conversion) took 64-68 ns a
value here, three times the Laplace kernel that made the value. The outputs of that kernel are
multiples of a power of two (`raymask.kernels.noise`: integers on a 2**j grid), and such a
value has a short exact decimal expansion, which is then also its shortest round-trip form.

Fast path, per float64 value v:
- v = M * 2**-28 exactly, with |v| in [1e-6, 1e10) (Arrow writes fixed notation there) or 0:
  the integer part is M >> 28 and each digit of the fraction f / 2**28 comes from f * 10 in
  int64 arithmetic, exactly (the expansion ends after at most 28 digits);
- the exact decimal has at most 15 significant digits: then it is the shortest decimal that
  reads back as v (any two decimals of at most 15 significant digits are different doubles), so
  it is what the shortest-form formatter writes.
Anything else (NaN, infinities, more fractional bits, 16 or more digits, values Arrow writes
with an exponent) sends the whole column to Arrow's cast. int64 columns are always written
here. The tests compare the two on random values of every kind.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from raymask.kernels._arrow import numbers, string_array, validity

__all__ = ["number_text"]

_BITS = 28  # fractional bits kept exact: |v| < 1e10 < 2**34, so v * 2**28 < 2**62
_SCALE = float(1 << _BITS)
# bytes a value may take: a float on the fast path "-0.00000" and 15 digits, or one digit more
# on the value that leaves it (the kernel stops there); an int64 "-9223372036854775808"
_WIDEST_FLOAT, _WIDEST_INT = 24, 20


@njit(cache=True, inline="always")
def _put(out, pos, u):
    """u (uint64) in decimal at out[pos:]; returns (end, digits written)."""
    d = 1
    p = np.uint64(10)
    while d < 20 and u >= p:  # digits counted without division (10**19 < 2**64)
        p *= np.uint64(10)
        d += 1
    for k in range(d - 1, -1, -1):
        out[pos + k] = np.uint8(48 + u % np.uint64(10))
        u //= np.uint64(10)
    return pos + d, d


@njit(cache=True, inline="always")
def _zero(out, pos, v):
    """0.0 or -0.0 at out[pos:] ("-0", as Arrow writes it); returns the end."""
    if math.copysign(1.0, v) < 0:
        out[pos] = 45
        pos += 1
    out[pos] = 48
    return pos + 1


@njit(cache=True, inline="always")
def _fixed(a):
    """Whether Arrow writes |v| = a in fixed notation (False for NaN too)."""
    return a >= 1e-6 and a < 1e10


@njit(cache=True)
def _float_text(x, valid, out, offsets):
    """The fast path over every present value; False as soon as one value is outside it."""
    mask = np.int64((1 << _BITS) - 1)
    pos = 0
    for i in range(x.shape[0]):
        offsets[i] = pos
        if valid.shape[0] and not valid[i]:
            continue
        v = x[i]
        if v == 0.0:
            pos = _zero(out, pos, v)
            continue
        a = abs(v)
        if not _fixed(a):
            return False
        t = a * _SCALE  # exact: a power of two
        m = np.int64(t)
        if np.float64(m) != t:
            return False
        if v < 0:
            out[pos] = 45
            pos += 1
        ip = m >> _BITS
        pos, sig = _put(out, pos, np.uint64(ip))
        if ip == 0:
            sig = 0  # "0." then the fraction: that zero is not a significant digit
        f = m & mask  # the fraction, f / 2**28: each digit exact in int64 (f * 10 < 2**32)
        if f:
            out[pos] = 46
            pos += 1
        while f:
            f *= 10
            d = f >> _BITS
            f &= mask
            out[pos] = 48 + d
            pos += 1
            if sig or d:  # zeros right after the point are not significant digits
                sig += 1
                if sig > 15:
                    return False
    offsets[x.shape[0]] = pos
    return True


@njit(cache=True)
def _decimal_text(x, valid, d, out, offsets):
    """The fast path for values with at most d digits after the point (outputs of `round_to`):
    N = v * 10**d rounded, kept when N < 10**15 and N / 10**d (exact integers, one correctly
    rounded division) is v, so the decimal N * 10**-d reads back as v and, with at most 15
    significant digits, is its shortest form; False as soon as one value is outside it."""
    p = 1
    for _ in range(d):
        p *= 10
    fp = np.float64(p)
    pos = 0
    for i in range(x.shape[0]):
        offsets[i] = pos
        if valid.shape[0] and not valid[i]:
            continue
        v = x[i]
        if v == 0.0:
            pos = _zero(out, pos, v)
            continue
        a = abs(v)
        if not _fixed(a):
            return False
        t = np.rint(a * fp)
        if not t < 1e15:
            return False
        m = np.int64(t)
        if np.float64(m) / fp != a:
            return False
        if v < 0:
            out[pos] = 45
            pos += 1
        pos = _put(out, pos, np.uint64(m // p))[0]
        f = m % p
        if f:
            out[pos] = 46
            pos += 1
            end = pos + d
            for k in range(end - 1, pos - 1, -1):
                out[k] = np.uint8(48 + f % 10)
                f //= 10
            while out[end - 1] == 48:  # trailing zeros are not written
                end -= 1
            pos = end
    offsets[x.shape[0]] = pos
    return True


@njit(cache=True)
def _int_text(x, valid, out, offsets):
    for i in range(x.shape[0]):
        pos = offsets[i]
        if valid.shape[0] and not valid[i]:
            offsets[i + 1] = pos
            continue
        v = x[i]
        u = np.uint64(v)
        if v < 0:
            out[pos] = 45
            pos += 1
            u = np.uint64(0) - u  # two's complement: right for the most negative value too
        offsets[i + 1] = _put(out, pos, u)[0]


def number_text(values: pa.Array, decimals: int | None = None) -> pa.Array:
    """`values` (int64 or float64) as large_string: the text of `pc.cast(values,
    pa.large_string())`, nulls kept; other types go to that cast. `decimals` (0 to 15): the
    float values were rounded to a step with that many digits after the point (`round_to`),
    which is tried first (a value that turns out not to be so sends the column on)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    is_float = values.type == pa.float64()
    if not (is_float or values.type == pa.int64()) or n == 0 or values.buffers()[1] is None:
        return pc.cast(values, pa.large_string())
    valid = validity(values) if values.null_count else np.zeros(0, np.bool_)
    x = numbers(values, nulls=True)
    out = np.empty(n * (_WIDEST_FLOAT if is_float else _WIDEST_INT), np.uint8)
    offsets = np.zeros(n + 1, np.int64)
    if is_float:
        dec = decimals is not None and 0 <= decimals <= 15
        if not (dec and _decimal_text(x, valid, decimals, out, offsets)) and not _float_text(
            x, valid, out, offsets
        ):
            return pc.cast(values, pa.large_string())
    else:
        _int_text(x, valid, out, offsets)
    return string_array(
        offsets, out[: offsets[-1]], valid if len(valid) else None, like=pa.large_string()
    )
