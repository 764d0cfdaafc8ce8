"""Per-subject date shifting: every date of one subject moves by the same secret number of days.

The offset of a subject is derived from HMAC-SHA-256 (RFC 2104) of the subject id's UTF-8 bytes
under `key`: with u the first 8 digest bytes read as a big-endian unsigned 64-bit integer,

    offset = (u mod (2 * max_days + 1)) - max_days        in [-max_days, +max_days] days.

The HMAC runs in the Numba kernel of raymask.kernels.tokenize over the whole subject column.
u is uniform on [0, 2**64) for a secret key, so the offset's distance from the uniform
distribution on the 2 * max_days + 1 values is below (2 * max_days + 1) / 2**64, which is
< 2**-50 because max_days is capped at 8191 (22 years).

Guarantees (tests/kernels/test_date_shift.py): the offset of a subject is the same in every
call, stream and run with the same key, so intervals between two dates of one subject are kept
exactly (shift(b) - shift(a) == b - a); the offset formula matches Python's hmac bit for bit; a
value whose subject is null, or that does not parse, is null with an error code, never the
unshifted value.

Values: date32 / date64 (shifted by whole days), timestamps of any unit (the instant moves by
exactly offset * 86400 s, so a zoned timestamp keeps its elapsed-time intervals; its local time
of day can differ by a DST change), and ISO 8601 / RFC 3339 text as accepted by
raymask.kernels.generalize: only the ``YYYY-MM-DD`` part of the text changes; time of day,
fraction and offset suffix stay byte for byte. The calendar arithmetic uses Hinnant's
days-from-civil / civil-from-days, so month and year rollover and leap days are exact.
Subjects: string or large_string ids, or integers (their decimal text is hashed).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from raymask.kernels._arrow import string_array, string_buffers, validity
from raymask.kernels._mem import borrow
from raymask.kernels.generalize import (
    _civil_from_days,
    _days_from_civil,
    _fixed_array,
    _is_text,
    _one_array,
    _parse_iso,
    _ticks_per_day,
    _values_np,
)
from raymask.kernels.tokenize import hmac_sha256

__all__ = ["ERRORS", "MAX_DAYS", "date_shift", "subject_offsets"]

E_SUBJECT, E_DATE, E_RANGE = 1, 2, 3
ERRORS = {
    E_SUBJECT: "no subject id (null subject), so no shift can be derived",
    E_DATE: "not a date or timestamp (expected ISO 8601 / RFC 3339 text such as 2026-11-23)",
    E_RANGE: "the shifted date is out of range (text years 0000-9999, or the Arrow type's range)",
}
MAX_DAYS = 8191  # (2 * 8191 + 1) / 2**64 < 2**-50: the modulo bias bound in the docstring


def _subject_text(subjects: pa.Array | pa.ChunkedArray) -> pa.Array:
    arr = _one_array(subjects)
    t = arr.type
    if _is_text(t):
        return arr
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.string())
    raise TypeError(f"expected a string or integer array of subject ids, got {t}")


def _check(key: bytes, max_days: int) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) == 0:
        raise ValueError("key must be non-empty bytes")
    if isinstance(max_days, bool) or not isinstance(max_days, int):
        raise ValueError("max_days must be an integer")
    if not 1 <= max_days <= MAX_DAYS:
        raise ValueError(f"max_days must be from 1 to {MAX_DAYS}")


def subject_offsets(subjects: pa.Array | pa.ChunkedArray, key: bytes, max_days: int) -> np.ndarray:
    """Day offset of each subject, int64 in [-max_days, max_days]; a null subject gets 0
    (date_shift reports it as an error rather than using it)."""
    _check(key, max_days)
    arr = _subject_text(subjects)
    digests = hmac_sha256(arr, bytes(key))
    u = np.ascontiguousarray(digests[:, :8]).view(">u8").reshape(-1).astype(np.uint64)
    off = (u % np.uint64(2 * max_days + 1)).astype(np.int64) - max_days
    off[~validity(arr)] = 0
    return off


@njit(cache=True)
def _shift_text_kernel(offsets, data, valid, subject_ok, days):
    """Copy each timestamp text with its date moved by days[i] (same length)."""
    n = offsets.shape[0] - 1
    err = np.zeros(n, dtype=np.int8)
    out_off = np.zeros(n + 1, dtype=np.int64)
    out = np.empty(offsets[n] - offsets[0], dtype=np.uint8)
    data = borrow(data)  # _parse_iso takes it once per value: no reference counts (see borrow)
    o = 0
    for i in range(n):
        out_off[i] = o
        if not valid[i]:
            continue
        if not subject_ok[i]:
            err[i] = E_SUBJECT
            continue
        s = offsets[i]
        e = offsets[i + 1]
        ok, y, mo, d, level, fe = _parse_iso(data, s, e)
        if ok == 0:
            err[i] = E_DATE
            continue
        y2, m2, d2 = _civil_from_days(_days_from_civil(y, mo, d) + days[i])
        if y2 < 0 or y2 > 9999:
            err[i] = E_RANGE
            continue
        for j in range(e - s):
            out[o + j] = data[s + j]
        out[o] = 48 + y2 // 1000
        out[o + 1] = 48 + (y2 // 100) % 10
        out[o + 2] = 48 + (y2 // 10) % 10
        out[o + 3] = 48 + y2 % 10
        out[o + 5] = 48 + m2 // 10
        out[o + 6] = 48 + m2 % 10
        out[o + 8] = 48 + d2 // 10
        out[o + 9] = 48 + d2 % 10
        o += e - s
    out_off[n] = o
    return out_off, out[:o].copy(), err


@njit(cache=True)
def _shift_ticks_kernel(x, valid, subject_ok, days, per_day, lo, hi):
    """x + days * per_day, checked against [lo, hi] without overflowing int64."""
    n = x.shape[0]
    out = np.zeros(n, dtype=np.int64)
    err = np.zeros(n, dtype=np.int8)
    for i in range(n):
        if not valid[i]:
            continue
        if not subject_ok[i]:
            err[i] = E_SUBJECT
            continue
        delta = days[i] * per_day  # |delta| <= 8191 * 86400 * 10**9 < 2**63
        v = x[i]
        if (delta > 0 and v > hi - delta) or (delta < 0 and v < lo - delta):
            err[i] = E_RANGE
            continue
        out[i] = v + delta
    return out, err


def date_shift(
    values: pa.Array | pa.ChunkedArray,
    subjects: pa.Array | pa.ChunkedArray,
    key: bytes,
    max_days: int,
) -> tuple[pa.Array, np.ndarray]:
    """Shift each date or timestamp by its subject's day offset; returns (array of the input's
    type, int8 error codes).

    `subjects` is aligned with `values` (same length). A null value stays null; a null subject
    is E_SUBJECT, unparseable text E_DATE, a result outside the type's range E_RANGE: all of
    them null in the result.
    """
    _check(key, max_days)
    arr = _one_array(values)
    subj = _subject_text(subjects)
    if len(arr) != len(subj):
        raise ValueError("values and subjects must have the same length")
    days = subject_offsets(subj, key, max_days)
    subject_ok = validity(subj)
    t = arr.type
    if _is_text(t):
        b = string_buffers(arr)
        off, data, err = _shift_text_kernel(b.offsets, b.data, b.valid, subject_ok, days)
        return string_array(off, data, b.valid & (err == 0), like=t), err
    per_day, dtype = _ticks_per_day(t)
    valid = validity(arr)
    x = _values_np(arr, dtype).astype(np.int64)
    info = np.iinfo(dtype)
    out, err = _shift_ticks_kernel(
        x, valid, subject_ok, days, per_day, int(info.min), int(info.max)
    )
    return _fixed_array(t, out.astype(dtype), valid & (err == 0)), err
