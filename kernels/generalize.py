"""Generalization: make a value coarser instead of hiding it, as Numba kernels over Arrow buffers.

Each technique returns ``(array, errors)``: an Arrow array of the input's length and an int8 error
code per value (0 = ok, codes in `ERRORS`). A value the technique cannot handle is null in the
result and has a non-zero code, so the caller dead-letters it; it is never passed through. Nulls
stay null and are not errors. String, large_string and chunked inputs are accepted.

- `round_numbers`: floor or round-to-nearest onto a grid of `step`. Numbers written as text (JSON
  number grammar, RFC 8259 section 6) are bucketed in exact decimal arithmetic: the step is taken
  as the shortest decimal that reads back as the given float (``repr``), ``|x| / step`` is divided
  digit by digit (schoolbook long division), so ``"12.5"`` on a step of ``0.1`` gives ``"12.5"``
  and never ``"12.4"`` as binary floating point would. Floating-point arrays go through the same
  decimal kernel via their shortest round-trip text (Arrow's cast), then back to the float type;
  integer arrays use exact int64 arithmetic. Ties of ``nearest`` round half away from zero.
- `bucket`: the label of the half-open interval ``[e(i-1), e(i))`` holding the value.
- `truncate_timestamps`: floor to the minute, hour, day or month. Arrow timestamps are floored on
  their local wall clock; a floored wall-clock time inside a DST gap becomes the end of the gap,
  one that occurs twice (a fold) its first occurrence, so the result is never after the input and
  flooring is idempotent. ISO 8601 / RFC 3339 text is floored on the wall clock as written, its
  offset unchanged.
- `ip_prefix`: the network address of the /v4_bits or /v6_bits prefix (RFC 4291 parsing, RFC 5952
  section 4 output; IPv4-mapped results in the section 5 mixed form ``::ffff:192.0.2.0``).
- `geo_round`: coordinates rounded half away from zero to a number of decimals (decimal exact).
- `geohash`: the base-32 geohash (G. Niemeyer, 2008): bisection of [-180, 180] x [-90, 90],
  longitude first, a coordinate equal to a midpoint goes to the upper half.
- `age_band`: ``"30-39"`` style bands of a width, ``">=90"`` from a top.

Text formats. Number text keeps its type: the output has as many decimals as the step (``0.25`` ->
two, ``5`` -> none), and a value written with a fraction or exponent keeps a ``.0`` when the step
is integral (``"12.7"`` step 5 -> ``"10.0"``, ``"12"`` step 5 -> ``"10"``); no exponent form, no
negative zero. Number text is strict JSON (no ``+``, no leading zeros, no ``.5``, no spaces, no
NaN); a magnitude of 1e310 or more is E_RANGE. Timestamp text keeps its layout byte for byte: same separator (``T``, ``t`` or
space), same offset suffix, and truncated fields *zeroed, not dropped* (``08:17:42.032Z`` -> minute
-> ``08:17:00.000Z``), so the output is as long as the input. Accepted timestamp text: ``YYYY-MM-DD``
optionally followed by ``T|t|space``, ``HH:MM``, optional ``:SS`` (60 allowed, a leap second),
optional ``.fraction`` or ``,fraction``, optional ``Z|z|+HH:MM|+HHMM|+HH`` (or minus); extended
format only, years 0000-9999, the day checked against the month (leap years included).

Dates use Howard Hinnant's days-from-civil / civil-from-days algorithms ("chrono-Compatible
Low-Level Date Algorithms"), exact for the proleptic Gregorian calendar.
"""

from __future__ import annotations

import numbers
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from raymask.kernels._arrow import string_array, string_buffers, validity
from raymask.kernels._mem import borrow

__all__ = [
    "ERRORS",
    "round_numbers",
    "bucket",
    "truncate_timestamps",
    "ip_prefix",
    "geo_round",
    "geohash",
    "age_band",
]

E_NUMBER, E_RANGE, E_TIMESTAMP, E_IP, E_WHOLE = 1, 2, 3, 4, 5
ERRORS = {
    E_NUMBER: "not a number (expected a JSON number such as -12.5 or 3e2)",
    E_RANGE: "number out of the range this technique accepts",
    E_TIMESTAMP: "not a timestamp (expected ISO 8601 / RFC 3339 text such as 2026-11-23T08:00:00Z)",
    E_IP: "not an IP address (expected an IPv4 dotted quad or IPv6 text, no zone id)",
    E_WHOLE: "not a whole number",
}

_MAX_MAG = 310  # number text with |x| >= 10**310 is out of range (beyond float64 anyway)
_UNITS = {"minute": 0, "hour": 1, "day": 2, "month": 3}
_TICKS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_GEOHASH32 = np.frombuffer(b"0123456789bcdefghjkmnpqrstuvwxyz", dtype=np.uint8)
_HEXDIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


# --- Arrow helpers -------------------------------------------------------------------------------


def _one_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array; an all-null column of Arrow's null type reads as null strings."""
    if isinstance(values, pa.ChunkedArray):
        values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
    if pa.types.is_null(values.type):
        return pa.nulls(len(values), pa.string())
    return values


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _values_np(arr: pa.Array, dtype: np.dtype) -> np.ndarray:
    """The value buffer of a fixed-width array as NumPy (garbage under nulls), zero-copy."""
    n = len(arr)
    buf = arr.buffers()[1]
    if n == 0 or buf is None:
        return np.zeros(n, dtype)
    return np.frombuffer(buf, dtype=dtype)[arr.offset : arr.offset + n]


def _fixed_array(typ: pa.DataType, data: np.ndarray, ok: np.ndarray) -> pa.Array:
    """Fixed-width Arrow array of `typ` over `data` with validity `ok`."""
    n = len(data)
    vbuf = None
    nulls = 0
    if n and not ok.all():
        vbuf = pa.py_buffer(np.packbits(ok, bitorder="little"))
        nulls = int(n - ok.sum())
    dbuf = pa.py_buffer(np.ascontiguousarray(data))
    return pa.Array.from_buffers(typ, n, [vbuf, dbuf], null_count=nulls)


def _null_where_not(arr: pa.Array, ok: np.ndarray) -> pa.Array:
    if ok.all():
        return arr
    return pc.if_else(pa.array(ok, pa.bool_()), arr, pa.scalar(None, arr.type))


def _check_numeric_type(t: pa.DataType) -> None:
    if pa.types.is_integer(t) and not pa.types.is_uint64(t):
        return
    if pa.types.is_float32(t) or pa.types.is_float64(t) or _is_text(t):
        return
    raise TypeError(
        f"expected an integer (not uint64), float32/float64 or number-text array, got {t}"
    )


def _as_float64(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float64 values, validity, error codes) of a numeric or number-text array.

    Text is checked against the JSON number grammar in Numba, then converted by Arrow's
    correctly rounded cast. NaN is E_NUMBER; infinities are left to the caller.
    """
    _check_numeric_type(arr.type)
    if _is_text(arr.type):
        b = string_buffers(arr)
        err = _number_ok_kernel(b.offsets, b.data, b.valid)
        ok = b.valid & (err == 0)
        x = pc.cast(_null_where_not(arr, ok), pa.float64()).to_numpy(zero_copy_only=False)
        return np.asarray(x, np.float64), b.valid, err
    valid = validity(arr)
    x = pc.cast(arr, pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    x = np.asarray(x, np.float64)
    err = np.where(valid & np.isnan(x), E_NUMBER, 0).astype(np.int8)
    return x, valid, err


# --- number text (RFC 8259 section 6) ------------------------------------------------------------


@njit(cache=True, inline="always")
def _digit(c):
    return 48 <= c <= 57


@njit(cache=True)
def _scan_number(data, s, e):
    """JSON number grammar over data[s:e].

    Returns (ok, negative, int_start, int_end, frac_start, frac_end, exponent, written_as_float);
    the exponent saturates at +-100000 (anything that large is out of range anyway).
    """
    p = s
    neg = 0
    if p < e and data[p] == 45:
        neg = 1
        p += 1
    i0 = p
    if p >= e:
        return 0, 0, 0, 0, 0, 0, 0, 0
    c = data[p]
    if c == 48:
        p += 1
    elif 49 <= c <= 57:
        while p < e and _digit(data[p]):
            p += 1
    else:
        return 0, 0, 0, 0, 0, 0, 0, 0
    i1 = p
    f0 = p
    f1 = p
    floaty = 0
    if p < e and data[p] == 46:
        p += 1
        f0 = p
        while p < e and _digit(data[p]):
            p += 1
        f1 = p
        if f1 == f0:
            return 0, 0, 0, 0, 0, 0, 0, 0
        floaty = 1
    ex = 0
    if p < e and (data[p] == 101 or data[p] == 69):
        floaty = 1
        p += 1
        eneg = False
        if p < e and (data[p] == 43 or data[p] == 45):
            eneg = data[p] == 45
            p += 1
        d0 = p
        while p < e and _digit(data[p]):
            if ex < 100000:
                ex = ex * 10 + (data[p] - 48)
            p += 1
        if p == d0:
            return 0, 0, 0, 0, 0, 0, 0, 0
        if eneg:
            ex = -ex
    if p != e:
        return 0, 0, 0, 0, 0, 0, 0, 0
    return 1, neg, i0, i1, f0, f1, ex, floaty


@njit(cache=True)
def _number_ok_kernel(offsets, data, valid):
    n = offsets.shape[0] - 1
    err = np.zeros(n, dtype=np.int8)
    for i in range(n):
        if valid[i] and _scan_number(data, offsets[i], offsets[i + 1])[0] == 0:
            err[i] = E_NUMBER
    return err


@njit(cache=True)
def _grow(out, o, need):
    if o + need <= out.shape[0]:
        return out
    new = np.empty(max(2 * out.shape[0], o + need), dtype=np.uint8)
    new[:o] = out[:o]
    return new


@njit(cache=True)
def _write_uint(out, o, v):
    """Decimal digits of v >= 0 at out[o:]; returns the new end."""
    nd = 1
    t = v
    while t >= 10:
        t //= 10
        nd += 1
    for j in range(nd):
        out[o + nd - 1 - j] = 48 + v % 10
        v //= 10
    return o + nd


@njit(cache=True)
def _round_text_kernel(offsets, data, valid, S, F, nearest):
    """Exact decimal floor / round-half-away-from-zero of number text onto multiples of S*10**F.

    |x| = D * 10**E (D the significant digits). I = floor(|x| / 10**F) is a digit string and
    r in [0, 1) what is left; |x| / step = (I + r) / S = Q + (rem + r) / S after long division
    of I by S (S < 10**17, so rem * 10 + 9 fits int64). The result magnitude is (Q or Q + 1) * S,
    written with max(0, -F) decimals.
    """
    n = offsets.shape[0] - 1
    err = np.zeros(n, dtype=np.int8)
    out_off = np.zeros(n + 1, dtype=np.int64)
    maxlen = 0
    for i in range(n):
        maxlen = max(maxlen, offsets[i + 1] - offsets[i])
    width = maxlen + _MAX_MAG + max(0, -F) + 64
    dg = np.zeros(width, dtype=np.int64)
    q = np.zeros(width, dtype=np.int64)
    rb = np.zeros(width + 24, dtype=np.int64)
    dec = max(0, -F)
    out = np.empty(max(64, 2 * (offsets[n] - offsets[0]) + 8 * n), dtype=np.uint8)
    data = borrow(data)  # _scan_number takes it once per value: no reference counts
    o = 0
    for i in range(n):
        out_off[i] = o
        if not valid[i]:
            continue
        ok, neg, i0, i1, f0, f1, ex, floaty = _scan_number(data, offsets[i], offsets[i + 1])
        if ok == 0:
            err[i] = E_NUMBER
            continue
        nd = 0
        for p in range(i0, i1):
            d = data[p] - 48
            if nd > 0 or d != 0:
                dg[nd] = d
                nd += 1
        for p in range(f0, f1):
            d = data[p] - 48
            if nd > 0 or d != 0:
                dg[nd] = d
                nd += 1
        E = ex - (f1 - f0)
        if nd > 0 and nd + E > _MAX_MAG:
            err[i] = E_RANGE
            continue
        # I = floor(|x| / 10**F): ni digits in dg; r_nz: r > 0; r_half: r compared with 1/2
        shift = E - F
        ni = 0
        r_nz = False
        r_half = -1
        if nd > 0:
            if shift >= 0:
                for j in range(nd, nd + shift):
                    dg[j] = 0
                ni = nd + shift
            else:
                k = nd + shift
                first = 0
                if k >= 0:
                    ni = k
                    first = dg[k] if k < nd else 0
                for j in range(max(k, 0), nd):
                    if dg[j] != 0:
                        r_nz = True
                if r_nz:
                    if first > 5:
                        r_half = 1
                    elif first == 5:
                        r_half = 0
                        for j in range(k + 1, nd):
                            if dg[j] != 0:
                                r_half = 1
        # long division I / S
        rem = 0
        nq = 0
        for j in range(ni):
            rem = rem * 10 + dg[j]
            qd = rem // S
            rem -= qd * S
            if nq > 0 or qd != 0:
                q[nq] = qd
                nq += 1
        if nearest:
            a = 2 * rem
            if a >= S:
                up = True
            elif a + 1 == S:
                up = r_nz and r_half >= 0
            else:
                up = False
        else:
            up = neg == 1 and (rem > 0 or r_nz)
        if up:
            j = nq - 1
            while j >= 0 and q[j] == 9:
                q[j] = 0
                j -= 1
            if j >= 0:
                q[j] += 1
            else:
                for t in range(nq, 0, -1):
                    q[t] = q[t - 1]
                q[0] = 1
                nq += 1
        # R = Q * S, right-aligned in rb[pos + 1 : end]
        end = rb.shape[0]
        pos = end - 1
        carry = 0
        for j in range(nq - 1, -1, -1):
            t = q[j] * S + carry
            rb[pos] = t % 10
            carry = t // 10
            pos -= 1
        while carry > 0:
            rb[pos] = carry % 10
            carry //= 10
            pos -= 1
        start = pos + 1
        while start < end and rb[start] == 0:
            start += 1
        nr = end - start
        out = _grow(out, o, nr + max(F, 0) + dec + 8)
        if neg == 1 and nr > 0:
            out[o] = 45
            o += 1
        if F >= 0:
            if nr == 0:
                out[o] = 48
                o += 1
            else:
                for j in range(start, end):
                    out[o] = 48 + rb[j]
                    o += 1
                for _ in range(F):
                    out[o] = 48
                    o += 1
            if floaty == 1:
                out[o] = 46
                out[o + 1] = 48
                o += 2
        else:
            if nr <= dec:
                out[o] = 48
                out[o + 1] = 46
                o += 2
                for _ in range(dec - nr):
                    out[o] = 48
                    o += 1
                for j in range(start, end):
                    out[o] = 48 + rb[j]
                    o += 1
            else:
                for j in range(start, end - dec):
                    out[o] = 48 + rb[j]
                    o += 1
                out[o] = 46
                o += 1
                for j in range(end - dec, end):
                    out[o] = 48 + rb[j]
                    o += 1
    out_off[n] = o
    return out_off, out[:o].copy(), err


@njit(cache=True)
def _round_int_kernel(x, valid, step, nearest, qmin, qmax):
    """Floor / nearest (half away from zero) multiple of `step`; E_RANGE if it leaves the type."""
    n = x.shape[0]
    out = np.zeros(n, dtype=np.int64)
    err = np.zeros(n, dtype=np.int8)
    for i in range(n):
        if not valid[i]:
            continue
        v = x[i]
        qt = v // step
        r = v - qt * step  # exact in wrapping int64 arithmetic, 0 <= r < step
        if nearest and (r > step - r or (r == step - r and v >= 0)):
            qt += 1
        if qt < qmin or qt > qmax:
            err[i] = E_RANGE
            continue
        out[i] = qt * step
    return out, err


def _step_parts(step: float) -> tuple[int, int]:
    """step = S * 10**F with S an integer without trailing zeros (the shortest decimal of step)."""
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise TypeError(f"step must be a number, got {type(step).__name__}")
    if isinstance(step, numbers.Integral):
        d = Decimal(int(step))
    else:
        d = Decimal(repr(float(step)))
    if not d.is_finite() or d <= 0:
        raise ValueError("step must be a finite number > 0")
    sign, digits, exp = d.normalize().as_tuple()
    S = int("".join(map(str, digits)))
    if S >= 10**17:
        raise ValueError("step has more than 17 significant digits")
    return S, int(exp)


@njit(cache=True)
def _round_float_fast(x, valid, S, F, nearest):
    """Binary rounding where it provably equals decimal rounding; `slow` marks the rest."""
    n = x.shape[0]
    out = np.zeros(n, np.float64)
    slow = np.zeros(n, np.bool_)
    D = 1.0
    M = 1.0
    if F < 0:
        for _ in range(-F):
            D *= 10.0
    else:
        for _ in range(F):
            M *= 10.0
    step_int = float(S) * M  # the step when F >= 0
    for i in range(n):
        if not valid[i]:
            continue
        v = x[i]
        if not np.isfinite(v) or abs(v) >= 2.0**50:
            slow[i] = True
            continue
        r = v * D / float(S) if F < 0 else v / step_int
        if nearest:
            k = np.floor(abs(r) + 0.5)
            frac = abs(r) + 0.5 - k
            if r < 0:
                k = -k
        else:
            k = np.floor(r)
            frac = r - k
        if frac < 1e-9 or frac > 1.0 - 1e-9 or abs(k) * float(S) >= 2.0**52:
            slow[i] = True
            continue
        out[i] = (k * float(S)) / D if F < 0 else k * step_int
        if out[i] == 0.0:
            out[i] = 0.0  # no negative zero
    return out, slow


def _round(
    arr: pa.Array, S: int, F: int, nearest: bool, pre_err: np.ndarray | None, fast: bool = True
):
    """Shared body of round_numbers and geo_round; `pre_err` are errors found before rounding."""
    t = arr.type
    n = len(arr)
    if pre_err is None:
        pre_err = np.zeros(n, np.int8)
    pre_ok = pre_err == 0
    if _is_text(t):
        b = string_buffers(arr)
        off, data, err = _round_text_kernel(b.offsets, b.data, b.valid & pre_ok, S, F, nearest)
        err = np.where(pre_ok, err, pre_err).astype(np.int8)
        return string_array(off, data, b.valid & (err == 0), like=t), err
    valid = validity(arr)
    if pa.types.is_integer(t):
        x = _values_np(arr, np.dtype(t.to_pandas_dtype())).astype(np.int64)
        info = np.iinfo(t.to_pandas_dtype())
        if F < 0 and 10 ** (-F) % S == 0:  # the step divides 1: integers are on the grid
            out, err = np.where(valid & pre_ok, x, 0), pre_err.copy()
        else:
            if F < 0:
                raise ValueError(
                    "a step that does not divide 1 would put fractions in an integer column; "
                    "cast it to float64 first"
                )
            step = S * 10**F
            if step > info.max:
                raise ValueError(f"step is larger than the largest {t} value")
            qmin, qmax = -((-int(info.min)) // step), int(info.max) // step
            out, err = _round_int_kernel(x, valid & pre_ok, step, nearest, qmin, qmax)
            err = np.where(pre_ok, err, pre_err).astype(np.int8)
        ok = valid & (err == 0)
        return _fixed_array(t, out.astype(info.dtype), ok), err
    # floats: exact decimal rounding of the shortest round-trip text, then back to the float type.
    # Fast path first: in binary arithmetic, x / step is off from the decimal quotient by a few
    # ulps at most, so wherever it is not within 1e-9 of a rounding boundary, the binary floor
    # (or round) is the decimal one, and k * step rebuilt as one correctly rounded operation is
    # the double nearest the exact decimal result. Only values near a boundary (and non-finite
    # or huge ones) take the exact text path.
    x = _values_np(arr, np.dtype(t.to_pandas_dtype())).astype(np.float64)
    if fast and t == pa.float64() and not pre_err.any():
        fast, slow = _round_float_fast(x, valid, S, F, nearest)
        if not slow.any():
            return _fixed_array(t, fast, valid), np.zeros(n, np.int8)
        idx = np.flatnonzero(slow)
        sub, sub_err = _round(arr.take(pa.array(idx)), S, F, nearest, None, fast=False)
        err = np.zeros(n, np.int8)
        err[idx] = sub_err
        out = fast.copy()
        out[idx] = np.asarray(sub.fill_null(0.0).to_numpy(zero_copy_only=False), np.float64)
        return _fixed_array(t, out, valid & (err == 0)), err
    text = pc.cast(arr, pa.string())
    b = string_buffers(text)
    off, data, err = _round_text_kernel(b.offsets, b.data, b.valid & pre_ok, S, F, nearest)
    err = np.where(pre_ok, err, pre_err).astype(np.int8)
    err[valid & pre_ok & np.isinf(x)] = E_RANGE
    res = pc.cast(string_array(off, data, valid & (err == 0)), t)
    y = res.to_numpy(zero_copy_only=False)
    err[valid & (err == 0) & ~np.isfinite(np.asarray(y, np.float64))] = E_RANGE
    return _null_where_not(res, valid & (err == 0)), err


def round_numbers(
    values: pa.Array | pa.ChunkedArray, step: float, mode: str = "floor"
) -> tuple[pa.Array, np.ndarray]:
    """Each number floored (``mode="floor"``) or rounded (``"nearest"``, ties away from zero) to a
    multiple of `step`; returns (array of the input's type, int8 error codes).

    Integer columns need a step that is an integer or divides 1 (else ValueError). Number text
    is rounded in exact decimal arithmetic; see the module docstring for the text format.
    """
    if mode not in ("floor", "nearest"):
        raise ValueError(f"unknown rounding mode {mode!r}; expected 'floor' or 'nearest'")
    arr = _one_array(values)
    _check_numeric_type(arr.type)
    S, F = _step_parts(step)
    return _round(arr, S, F, mode == "nearest", None)


def geo_round(values: pa.Array | pa.ChunkedArray, decimals: int) -> tuple[pa.Array, np.ndarray]:
    """Latitudes / longitudes rounded half away from zero to `decimals` places (0-15).

    Exact in decimal (``"52.525"`` -> ``"52.53"``, ``-0.5`` -> ``-1``); a value outside
    [-180, 180] (compared as float64) is E_RANGE. Text output has `decimals` decimals (with
    0 decimals, text written with a fraction keeps ``.0``, as in `round_numbers`).
    """
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 15:
        raise ValueError("decimals must be an integer from 0 to 15")
    arr = _one_array(values)
    x, valid, err = _as_float64(arr)
    err[valid & (err == 0) & ~(np.abs(x) <= 180.0)] = E_RANGE
    return _round(arr, 1, -decimals, True, err)


# --- bucket --------------------------------------------------------------------------------------


def _fmt_edge(x: float) -> str:
    if float(x).is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(float(x))


def bucket(
    values: pa.Array | pa.ChunkedArray, edges: list[float], labels: list[str] | None = None
) -> tuple[pa.Array, np.ndarray]:
    """The label of the bucket holding each number; returns (string array, int8 error codes).

    Buckets are ``(-inf, e0)``, ``[e0, e1)``, ..., ``[eN, +inf)``, labelled ``"<e0"``,
    ``"[e0,e1)"``, ..., ``">=eN"`` unless `labels` (len(edges) + 1 of them) are given.
    Values are compared as float64 (text converted correctly rounded); NaN is E_NUMBER.
    """
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or len(e) == 0 or not np.isfinite(e).all() or (np.diff(e) <= 0).any():
        raise ValueError("edges must be a non-empty list of finite numbers, strictly ascending")
    if labels is None:
        names = [_fmt_edge(v) for v in e]
        labels = (
            [f"<{names[0]}"]
            + [f"[{a},{b})" for a, b in zip(names, names[1:], strict=False)]
            + [f">={names[-1]}"]
        )
    elif len(labels) != len(e) + 1:
        raise ValueError(f"labels must have len(edges) + 1 = {len(e) + 1} entries")
    arr = _one_array(values)
    x, valid, err = _as_float64(arr)
    ok = valid & (err == 0)
    idx = np.searchsorted(e, np.where(ok, x, 0.0), side="right").astype(np.int32)
    like = arr.type if _is_text(arr.type) else pa.string()
    out = pa.array(labels, like).take(pa.array(idx, pa.int32(), mask=~ok))
    return out, err


# --- calendar and timestamp text ---------------------------------------------------------------


@njit(cache=True, inline="always")
def _is_leap(y):
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


@njit(cache=True)
def _days_in_month(y, m):
    if m == 2:
        return 29 if _is_leap(y) else 28
    if m == 4 or m == 6 or m == 9 or m == 11:
        return 30
    return 31


@njit(cache=True)
def _days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (Hinnant); // is floor division."""
    if m <= 2:
        y -= 1
    era = y // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@njit(cache=True)
def _civil_from_days(z):
    """(year, month, day) of days since 1970-01-01 (Hinnant)."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    if m <= 2:
        y += 1
    return y, m, d


@njit(cache=True, inline="always")
def _two(data, p):
    """Two ASCII digits at p as a number, or -1."""
    a = data[p]
    b = data[p + 1]
    if not (_digit(a) and _digit(b)):
        return -1
    return (a - 48) * 10 + (b - 48)


@njit(cache=True)
def _parse_iso(data, s, e):
    """ISO 8601 / RFC 3339 extended-format date or timestamp at data[s:e].

    Returns (ok, year, month, day, level, frac_end): level 0 = date only, 1 = HH:MM, 2 = with
    seconds; fraction digits (if any) are data[s + 20 : frac_end]. Fixed positions: date s..s+10,
    hour s+11, minute s+14, second s+17.
    """
    if e - s < 10:
        return 0, 0, 0, 0, 0, 0
    y0 = _two(data, s)
    y1 = _two(data, s + 2)
    mo = _two(data, s + 5)
    d = _two(data, s + 8)
    if y0 < 0 or y1 < 0 or mo < 0 or d < 0 or data[s + 4] != 45 or data[s + 7] != 45:
        return 0, 0, 0, 0, 0, 0
    y = y0 * 100 + y1
    if mo < 1 or mo > 12 or d < 1 or d > _days_in_month(y, mo):
        return 0, 0, 0, 0, 0, 0
    if e - s == 10:
        return 1, y, mo, d, 0, s + 10
    c = data[s + 10]
    if e - s < 16 or not (c == 84 or c == 116 or c == 32) or data[s + 13] != 58:
        return 0, 0, 0, 0, 0, 0
    hh = _two(data, s + 11)
    mi = _two(data, s + 14)
    if hh < 0 or hh > 23 or mi < 0 or mi > 59:
        return 0, 0, 0, 0, 0, 0
    p = s + 16
    level = 1
    if p < e and data[p] == 58:
        if p + 3 > e:
            return 0, 0, 0, 0, 0, 0
        ss = _two(data, p + 1)
        if ss < 0 or ss > 60:
            return 0, 0, 0, 0, 0, 0
        p += 3
        level = 2
        if p < e and (data[p] == 46 or data[p] == 44):
            p += 1
            q = p
            while p < e and _digit(data[p]):
                p += 1
            if p == q:
                return 0, 0, 0, 0, 0, 0
    fe = p
    if p < e:
        c = data[p]
        if c == 90 or c == 122:
            p += 1
        elif c == 43 or c == 45:
            if p + 3 > e:
                return 0, 0, 0, 0, 0, 0
            oh = _two(data, p + 1)
            if oh < 0 or oh > 23:
                return 0, 0, 0, 0, 0, 0
            p += 3
            if p < e:
                if data[p] == 58:
                    p += 1
                if p + 2 > e:
                    return 0, 0, 0, 0, 0, 0
                om = _two(data, p)
                if om < 0 or om > 59:
                    return 0, 0, 0, 0, 0, 0
                p += 2
        else:
            return 0, 0, 0, 0, 0, 0
    if p != e:
        return 0, 0, 0, 0, 0, 0
    return 1, y, mo, d, level, fe


@njit(cache=True)
def _trunc_text_kernel(offsets, data, valid, unit):
    """Copy each timestamp text with the fields below `unit` zeroed (same length)."""
    n = offsets.shape[0] - 1
    err = np.zeros(n, dtype=np.int8)
    out_off = np.zeros(n + 1, dtype=np.int64)
    out = np.empty(offsets[n] - offsets[0], dtype=np.uint8)
    o = 0
    for i in range(n):
        out_off[i] = o
        if not valid[i]:
            continue
        s = offsets[i]
        e = offsets[i + 1]
        ok, y, mo, d, level, fe = _parse_iso(data, s, e)
        if ok == 0:
            err[i] = E_TIMESTAMP
            continue
        for j in range(e - s):
            out[o + j] = data[s + j]
        if level == 2:  # seconds and fraction
            for j in range(17, fe - s):
                if j != 19:
                    out[o + j] = 48
        if level >= 1 and unit >= 1:
            out[o + 14] = 48
            out[o + 15] = 48
        if level >= 1 and unit >= 2:
            out[o + 11] = 48
            out[o + 12] = 48
        if unit == 3:
            out[o + 8] = 48
            out[o + 9] = 49
        o += e - s
    out_off[n] = o
    return out_off, out[:o].copy(), err


@njit(cache=True)
def _trunc_ticks_kernel(x, valid, unit, per_day, step, qmin, dmin):
    """Floor integer ticks (per_day ticks a day) to `step` ticks, or to the month's first day."""
    n = x.shape[0]
    out = np.zeros(n, dtype=np.int64)
    err = np.zeros(n, dtype=np.int8)
    for i in range(n):
        if not valid[i]:
            continue
        v = x[i]
        if unit == 3:
            y, m, d = _civil_from_days(v // per_day)
            first = _days_from_civil(y, m, 1)
            if first < dmin:
                err[i] = E_RANGE
                continue
            out[i] = first * per_day
        else:
            qt = v // step
            if qt < qmin:
                err[i] = E_RANGE
                continue
            out[i] = qt * step
    return out, err


def _ticks_per_day(t: pa.DataType) -> tuple[int, np.dtype]:
    if pa.types.is_timestamp(t):
        return 86400 * _TICKS_PER_SECOND[t.unit], np.dtype(np.int64)
    if pa.types.is_date32(t):
        return 1, np.dtype(np.int32)
    if pa.types.is_date64(t):
        return 86_400_000, np.dtype(np.int64)
    raise TypeError(f"expected a timestamp, date32, date64 or timestamp-text array, got {t}")


def truncate_timestamps(
    values: pa.Array | pa.ChunkedArray, unit: str
) -> tuple[pa.Array, np.ndarray]:
    """Each timestamp floored to the `unit` (minute, hour, day, month); returns (array of the
    input's type, int8 error codes).

    Arrow timestamps (any unit; the time zone kept) are floored on their local wall clock; date32
    / date64 only move for ``month``. Text keeps its layout, the truncated fields zeroed.
    """
    if unit not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; expected one of {list(_UNITS)}")
    u = _UNITS[unit]
    arr = _one_array(values)
    t = arr.type
    if _is_text(t):
        b = string_buffers(arr)
        off, data, err = _trunc_text_kernel(b.offsets, b.data, b.valid, u)
        return string_array(off, data, b.valid & (err == 0), like=t), err
    per_day, dtype = _ticks_per_day(t)
    tz = getattr(t, "tz", None)
    local = pc.local_timestamp(arr) if tz else arr
    valid = validity(arr)
    x = _values_np(local, dtype).astype(np.int64)
    if pa.types.is_timestamp(t):
        step = (60, 3600, 86400)[u] * _TICKS_PER_SECOND[t.unit] if u < 3 else per_day
    else:
        step = per_day
    lo = int(np.iinfo(dtype).min)
    qmin, dmin = -((-lo) // step), -((-lo) // per_day)
    out, err = _trunc_ticks_kernel(x, valid, u, per_day, step, qmin, dmin)
    ok = valid & (err == 0)
    if not tz:
        return _fixed_array(t, out.astype(dtype), ok), err
    floored = _fixed_array(pa.timestamp(t.unit), out, ok)
    # a floored wall-clock time in a gap becomes the gap's end, in a fold its first occurrence:
    # both are <= the input, and flooring again gives the same instant
    res = pc.assume_timezone(floored, tz, ambiguous="earliest", nonexistent="latest")
    return res, err


# --- IP prefixes (RFC 4291 section 2.2 text, RFC 5952 output) ----------------------------------


@njit(cache=True)
def _parse_v4(data, s, e):
    """Dotted quad (no leading zeros, as Python's ipaddress) -> (ok, 32-bit value)."""
    v = 0
    p = s
    for part in range(4):
        q = p
        x = 0
        while p < e and _digit(data[p]) and p - q < 3:
            x = x * 10 + (data[p] - 48)
            p += 1
        if p == q or x > 255 or (p - q > 1 and data[q] == 48):
            return 0, 0
        v = v * 256 + x
        if part < 3:
            if p >= e or data[p] != 46:
                return 0, 0
            p += 1
    if p != e:
        return 0, 0
    return 1, v


@njit(cache=True, inline="always")
def _hexval(c):
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


@njit(cache=True)
def _parse_v6(data, s, e, g):
    """IPv6 text (full, '::' compressed, trailing dotted quad) into 8 groups g; returns ok."""
    for j in range(8):
        g[j] = 0
    if e - s < 2:
        return False
    p = s
    n = 0
    dc = -1
    if data[p] == 58:
        if data[p + 1] != 58:
            return False
        dc = 0
        p += 2
        if p == e:
            return True
    while True:
        if n >= 8:
            return False
        q = p
        x = 0
        while p < e and p - q < 4:
            h = _hexval(data[p])
            if h < 0:
                break
            x = x * 16 + h
            p += 1
        if p < e and data[p] == 46:  # an embedded IPv4 address ends the text
            if n > 6:
                return False
            ok, v = _parse_v4(data, q, e)
            if ok == 0:
                return False
            g[n] = v >> 16
            g[n + 1] = v & 0xFFFF
            n += 2
            break
        if p == q:
            return False
        g[n] = x
        n += 1
        if p == e:
            break
        if data[p] != 58:
            return False
        p += 1
        if p == e:
            return False
        if data[p] == 58:
            if dc >= 0:
                return False
            dc = n
            p += 1
            if p == e:
                break
    if dc >= 0:
        if n > 7:
            return False
        m = n - dc
        for j in range(m - 1, -1, -1):
            g[8 - m + j] = g[dc + j]
        for j in range(dc, 8 - m):
            g[j] = 0
    elif n != 8:
        return False
    return True


@njit(cache=True)
def _write_v4(out, o, v):
    for k in range(4):
        o = _write_uint(out, o, (v >> (24 - 8 * k)) & 0xFF)
        if k < 3:
            out[o] = 46
            o += 1
    return o


@njit(cache=True)
def _write_v6(out, o, g, hexd):
    """RFC 5952: lower-case hex without leading zeros, the first longest run (>= 2) of zero groups
    as '::'; an IPv4-mapped address (::ffff:0:0/96) in the section 5 mixed form."""
    if g[0] == 0 and g[1] == 0 and g[2] == 0 and g[3] == 0 and g[4] == 0 and g[5] == 0xFFFF:
        for c in (58, 58, 102, 102, 102, 102, 58):
            out[o] = c
            o += 1
        return _write_v4(out, o, (g[6] << 16) | g[7])
    best_s = -1
    best_l = 0
    cur_l = 0
    for j in range(8):
        if g[j] == 0:
            cur_l += 1
            if cur_l > best_l:
                best_l = cur_l
                best_s = j - cur_l + 1
        else:
            cur_l = 0
    if best_l < 2:
        best_s = -1
    j = 0
    colon = False
    while j < 8:
        if j == best_s:
            out[o] = 58
            out[o + 1] = 58
            o += 2
            j += best_l
            colon = False
            continue
        if colon:
            out[o] = 58
            o += 1
        v = g[j]
        started = False
        for sh in (12, 8, 4, 0):
            h = (v >> sh) & 0xF
            if h != 0 or started or sh == 0:
                out[o] = hexd[h]
                o += 1
                started = True
        colon = True
        j += 1
    return o


@njit(cache=True)
def _ip_kernel(offsets, data, valid, v4_bits, v6_bits, hexd):
    n = offsets.shape[0] - 1
    err = np.zeros(n, dtype=np.int8)
    out_off = np.zeros(n + 1, dtype=np.int64)
    out = np.empty(45 * n, dtype=np.uint8)
    g = np.zeros(8, dtype=np.int64)
    m4 = ((0xFFFFFFFF << (32 - v4_bits)) & 0xFFFFFFFF) if v4_bits > 0 else 0
    o = 0
    for i in range(n):
        out_off[i] = o
        if not valid[i]:
            continue
        s = offsets[i]
        e = offsets[i + 1]
        is6 = False
        for p in range(s, e):
            if data[p] == 58:
                is6 = True
                break
        if is6:
            if not _parse_v6(data, s, e, g):
                err[i] = E_IP
                continue
            for j in range(8):
                keep = min(max(v6_bits - 16 * j, 0), 16)
                g[j] &= ((0xFFFF << (16 - keep)) & 0xFFFF) if keep > 0 else 0
            o = _write_v6(out, o, g, hexd)
        else:
            ok, v = _parse_v4(data, s, e)
            if ok == 0:
                err[i] = E_IP
                continue
            o = _write_v4(out, o, v & m4)
    out_off[n] = o
    return out_off, out[:o].copy(), err


def ip_prefix(
    values: pa.Array | pa.ChunkedArray, v4_bits: int, v6_bits: int
) -> tuple[pa.Array, np.ndarray]:
    """The network address of each IP's /v4_bits (IPv4) or /v6_bits (IPv6) prefix, as text.

    Equal to ``ipaddress.ip_network(f"{ip}/{bits}", strict=False).network_address`` written in
    RFC 5952 form (IPv4-mapped results as ``::ffff:a.b.c.d``, as Python 3.13 writes them). Zone
    ids (``%eth0``), surrounding spaces and octets with leading zeros are E_IP.
    """
    for name, bits, top in (("v4_bits", v4_bits, 32), ("v6_bits", v6_bits, 128)):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= top:
            raise ValueError(f"{name} must be an integer from 0 to {top}")
    arr = _one_array(values)
    if not _is_text(arr.type):
        raise TypeError(f"expected a string array of IP addresses, got {arr.type}")
    b = string_buffers(arr)
    off, data, err = _ip_kernel(b.offsets, b.data, b.valid, v4_bits, v6_bits, _HEXDIGITS)
    return string_array(off, data, b.valid & (err == 0), like=arr.type), err


# --- geohash ---------------------------------------------------------------------------------------


@njit(cache=True)
def _geohash_kernel(lat, lon, valid, err, precision, alphabet):
    n = lat.shape[0]
    out_off = np.zeros(n + 1, dtype=np.int64)
    out = np.empty(n * precision, dtype=np.uint8)
    o = 0
    for i in range(n):
        out_off[i] = o
        if not valid[i] or err[i] != 0:
            continue
        la = lat[i]
        lo = lon[i]
        if not (-90.0 <= la <= 90.0) or not (-180.0 <= lo <= 180.0):
            err[i] = E_RANGE
            continue
        lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
        for c in range(precision):
            ch = 0
            for b in range(5):
                if (5 * c + b) % 2 == 0:  # even bits: longitude
                    mid = (lon_lo + lon_hi) / 2
                    if lo >= mid:
                        ch = ch * 2 + 1
                        lon_lo = mid
                    else:
                        ch = ch * 2
                        lon_hi = mid
                else:
                    mid = (lat_lo + lat_hi) / 2
                    if la >= mid:
                        ch = ch * 2 + 1
                        lat_lo = mid
                    else:
                        ch = ch * 2
                        lat_hi = mid
            out[o] = alphabet[ch]
            o += 1
    out_off[n] = o
    return out_off, out[:o].copy()


def geohash(
    lat_values: pa.Array | pa.ChunkedArray,
    lon_values: pa.Array | pa.ChunkedArray,
    precision: int,
) -> tuple[pa.Array, np.ndarray]:
    """Geohash of each (latitude, longitude) pair with `precision` characters (1-12).

    Null when either coordinate is null; |lat| > 90, |lon| > 180 or infinite is E_RANGE; NaN or
    non-number text is E_NUMBER.
    """
    if isinstance(precision, bool) or not isinstance(precision, int) or not 1 <= precision <= 12:
        raise ValueError("precision must be an integer from 1 to 12")
    lat_arr = _one_array(lat_values)
    lon_arr = _one_array(lon_values)
    if len(lat_arr) != len(lon_arr):
        raise ValueError("lat_values and lon_values must have the same length")
    la, la_valid, la_err = _as_float64(lat_arr)
    lo, lo_valid, lo_err = _as_float64(lon_arr)
    valid = la_valid & lo_valid
    err = np.where(valid, np.maximum(la_err, lo_err), 0).astype(np.int8)
    off, data = _geohash_kernel(la, lo, valid, err, precision, _GEOHASH32)
    return string_array(off, data, valid & (err == 0), like=pa.string()), err


# --- age bands -------------------------------------------------------------------------------------


@njit(cache=True)
def _parse_int_kernel(offsets, data, valid):
    """Integer text (JSON integer) -> int64; E_NUMBER, E_WHOLE (fraction or exponent), E_RANGE."""
    n = offsets.shape[0] - 1
    x = np.zeros(n, dtype=np.int64)
    err = np.zeros(n, dtype=np.int8)
    for i in range(n):
        if not valid[i]:
            continue
        ok, neg, i0, i1, f0, f1, ex, floaty = _scan_number(data, offsets[i], offsets[i + 1])
        if ok == 0:
            err[i] = E_NUMBER
            continue
        if floaty == 1:
            err[i] = E_WHOLE
            continue
        if i1 - i0 > 18:
            err[i] = E_RANGE
            continue
        v = 0
        for p in range(i0, i1):
            v = v * 10 + (data[p] - 48)
        x[i] = -v if neg == 1 else v
    return x, err


@njit(cache=True)
def _age_kernel(x, valid, err, width, top):
    """Labels 'lo-hi' (or 'lo' when width is 1) and '>=top' (top < 0: no top band)."""
    n = x.shape[0]
    out_off = np.zeros(n + 1, dtype=np.int64)
    out = np.empty(n * 42, dtype=np.uint8)
    o = 0
    for i in range(n):
        out_off[i] = o
        if not valid[i] or err[i] != 0:
            continue
        v = x[i]
        if v < 0:
            err[i] = E_RANGE
            continue
        if top >= 0 and v >= top:
            out[o] = 62
            out[o + 1] = 61
            o = _write_uint(out, o + 2, top)
            continue
        lo = (v // width) * width
        hi = lo + (width - 1)
        if top >= 0 and hi >= top:
            hi = top - 1
        o = _write_uint(out, o, lo)
        if hi != lo:
            out[o] = 45
            o = _write_uint(out, o + 1, hi)
    out_off[n] = o
    return out_off, out[:o].copy()


def age_band(
    values: pa.Array | pa.ChunkedArray, width: int = 10, top: int | None = 90
) -> tuple[pa.Array, np.ndarray]:
    """Ages as bands: ``"30-39"`` for width 10, ``">=90"`` from `top` (None: no top band).

    The band below `top` is cut short when `top` is not a multiple of `width` (top 85: "80-84").
    Integers, whole floats or integer text; negative is E_RANGE, a fraction E_WHOLE.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError("width must be an integer >= 1")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError("top must be None or an integer >= 1")
    arr = _one_array(values)
    t = arr.type
    _check_numeric_type(t)
    if _is_text(t):
        b = string_buffers(arr)
        x, err = _parse_int_kernel(b.offsets, b.data, b.valid)
        valid = b.valid
    elif pa.types.is_integer(t):
        valid = validity(arr)
        x = _values_np(arr, np.dtype(t.to_pandas_dtype())).astype(np.int64)
        err = np.zeros(len(arr), np.int8)
    else:
        f, valid, err = _as_float64(arr)
        big = valid & (err == 0) & ~(np.abs(f) < 2.0**62)
        frac = valid & (err == 0) & ~big & (f != np.floor(np.where(big, 0.0, f)))
        err[big] = E_RANGE
        err[frac] = E_WHOLE
        x = np.where(valid & (err == 0), f, 0.0).astype(np.int64)
    err = err.copy()
    if width > 1:  # lo + width - 1 must not overflow
        err[valid & (err == 0) & (x > np.iinfo(np.int64).max - width)] = E_RANGE
    off, data = _age_kernel(x, valid, err, width, -1 if top is None else top)
    like = t if _is_text(t) else pa.string()
    return string_array(off, data, valid & (err == 0), like=like), err
