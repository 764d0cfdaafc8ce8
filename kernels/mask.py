"""Partial masks and redaction as Numba kernels over Arrow string buffers.

`mask` keeps the first m and last n *maskable* code points of a value and replaces every other
maskable code point with a mask character. What is maskable depends on the mode:

- ``all``: every code point (the generic mask);
- ``digits``: ASCII digits only, separators kept (payment cards, phone numbers);
- ``alnum``: ASCII letters and digits, separators kept (IBAN);
- ``email``: the code points of the local part (before the last ``@``); the domain is kept.

Positions count code points, never bytes, so a multi-byte UTF-8 character is never split.
Safety rule: when a value has no more maskable code points than m + n, all of them are masked,
so a short value is never shown whole.

A value a preset cannot handle (a card rule on 5 digits, an email rule on a string without ``@``)
gets a per-value error code and no output; the caller sends that record to the dead letters.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from raymask.kernels._arrow import as_text, string_array, string_buffers

__all__ = ["MODES", "PRESETS", "ERRORS", "mask", "redact"]

MODE_ALL, MODE_DIGITS, MODE_ALNUM, MODE_EMAIL = 0, 1, 2, 3
MODES = {"all": MODE_ALL, "digits": MODE_DIGITS, "alnum": MODE_ALNUM, "email": MODE_EMAIL}

# check codes: what shape a preset insists on
CHECK_NONE, CHECK_EMAIL, CHECK_CARD, CHECK_PHONE, CHECK_IBAN = 0, 1, 2, 3, 4

ERRORS = {
    1: "not an email address (expected local@domain)",
    2: "not a payment card number (expected 12-19 digits, spaces or dashes)",
    3: "not a phone number (expected 4-20 digits, spaces, dashes, dots, brackets, leading +)",
    4: "not an IBAN (expected 2 letters, then 13-32 letters or digits, spaces allowed)",
}

# preset name -> (mode, keep_first, keep_last, check)
PRESETS: dict[str, tuple[int, int, int, int]] = {
    "email": (MODE_EMAIL, 1, 0, CHECK_EMAIL),
    "card": (MODE_DIGITS, 0, 4, CHECK_CARD),
    "phone": (MODE_DIGITS, 0, 2, CHECK_PHONE),
    "iban": (MODE_ALNUM, 2, 4, CHECK_IBAN),
}


@njit(cache=True, inline="always")
def _is_digit(c):
    return 48 <= c <= 57


@njit(cache=True, inline="always")
def _is_alpha(c):
    return (65 <= c <= 90) or (97 <= c <= 122)


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per byte value: whether it is a maskable code point's first byte, per mode; whether it
    counts towards a check's length (digits, or letters and digits for an IBAN) and whether a
    check allows it at all (the phone's '+' is allowed here, and only first by the kernel)."""
    b = np.arange(256)
    digit = (b >= 48) & (b <= 57)
    alpha = ((b >= 65) & (b <= 90)) | ((b >= 97) & (b <= 122))
    lead = (b & 0xC0) != 0x80  # not a UTF-8 continuation byte
    maskable = np.zeros((4, 256), np.uint8)
    maskable[MODE_ALL] = maskable[MODE_EMAIL] = lead
    maskable[MODE_DIGITS] = digit
    maskable[MODE_ALNUM] = digit | alpha
    counts = np.zeros((5, 256), np.uint8)
    allowed = np.ones((5, 256), np.uint8)
    counts[CHECK_CARD] = counts[CHECK_PHONE] = digit
    counts[CHECK_IBAN] = digit | alpha
    allowed[CHECK_CARD] = digit | np.isin(b, [32, 45])
    allowed[CHECK_PHONE] = digit | np.isin(b, [32, 45, 46, 40, 41, 43])
    allowed[CHECK_IBAN] = digit | alpha | (b == 32)
    return maskable, counts, allowed


_MASKABLE, _COUNTS, _ALLOWED = _tables()
_LIMITS = np.array([[0, 0], [0, 0], [12, 19], [4, 20], [15, 34]], np.int64)  # counted, per check


@njit(cache=True)
def _mask_kernel(offsets, data, valid, mode, keep_first, keep_last, mchar, check):
    """Two passes per value: one reads it (its shape check, last '@', maskable code points and
    whether it is all ASCII), one writes it. An ASCII value with a one-byte mask character (the
    usual case) is written byte for byte by table look-ups; any other value by code points."""
    n = offsets.shape[0] - 1
    err = np.zeros(n, dtype=np.int8)
    base = offsets[0]
    ml = mchar.shape[0]
    cap = (offsets[n] - base) * max(1, ml) + 1
    out = np.empty(cap, dtype=np.uint8)
    out_off = np.zeros(n + 1, dtype=np.int64)
    tab = _MASKABLE[mode]
    counts = _COUNTS[check]
    allowed = _ALLOWED[check]
    lo_n, hi_n = _LIMITS[check, 0], _LIMITS[check, 1]
    o = 0
    for i in range(n):
        out_off[i] = o
        if not valid[i]:
            continue
        s = offsets[i]
        e = offsets[i + 1]
        m = 0  # maskable code points
        m_at = 0  # ... before the last '@'
        at = -1
        cnt = 0  # what the check counts
        bad = 0
        high = 0
        for p in range(s, e):
            c = data[p]
            if c == 64:
                at = p
                m_at = m
            if check == CHECK_IBAN and cnt < 2 and counts[c] != 0 and not _is_alpha(c):
                bad = 1  # an IBAN starts with two letters
            high |= c
            m += tab[c]
            cnt += counts[c]
            bad |= allowed[c] ^ 1
        if check == CHECK_PHONE and e > s:  # '+' only first
            for p in range(s + 1, e):
                if data[p] == 43:
                    bad = 1
        if check == CHECK_EMAIL:
            if at <= s or at >= e - 1:
                err[i] = 1
                continue
        elif check != CHECK_NONE and (bad != 0 or cnt < lo_n or cnt > hi_n):
            err[i] = check
            continue
        # the maskable region ends at the last '@' for emails
        region_end = e
        if mode == MODE_EMAIL and at >= 0:
            region_end = at
            m = m_at
        kf = keep_first
        kl = keep_last
        if m <= kf + kl:
            kf = 0
            kl = 0
        if high < 128 and ml == 1:
            mc = mchar[0]
            last = m - kl
            idx = 0
            for p in range(s, region_end):
                c = data[p]
                t = tab[c]
                out[o] = mc if (t != 0 and idx >= kf and idx < last) else c
                idx += t
                o += 1
            for p in range(region_end, e):
                out[o] = data[p]
                o += 1
            continue
        idx = 0  # index of the current maskable code point
        p = s
        while p < e:
            c = data[p]
            # length of this code point
            ln = 1
            if c >= 0xF0:
                ln = 4
            elif c >= 0xE0:
                ln = 3
            elif c >= 0xC0:
                ln = 2
            if p + ln > e:
                ln = e - p
            if p < region_end and tab[c] != 0:
                if idx < kf or idx >= m - kl:
                    for j in range(ln):
                        out[o] = data[p + j]
                        o += 1
                else:
                    for j in range(ml):
                        out[o] = mchar[j]
                        o += 1
                idx += 1
            else:
                for j in range(ln):
                    out[o] = data[p + j]
                    o += 1
            p += ln
    out_off[n] = o
    return out_off, out[:o].copy(), err


def mask(
    values: pa.Array | pa.ChunkedArray,
    *,
    keep_first: int = 0,
    keep_last: int = 0,
    char: str = "*",
    mode: str = "all",
    preset: str | None = None,
) -> tuple[pa.Array, np.ndarray]:
    """Partial mask of every value; returns (masked array, per-value error codes, 0 = ok).

    A `preset` (email, card, phone, iban) fixes mode, kept counts and shape check; values with
    an error code are null in the result and must not be emitted.
    """
    values = as_text(values)
    check = CHECK_NONE
    m = MODES[mode]
    if preset is not None:
        m, keep_first, keep_last, check = PRESETS[preset]
    b = string_buffers(values)
    mchar = np.frombuffer(char.encode("utf-8"), dtype=np.uint8)
    off, data, err = _mask_kernel(
        b.offsets, b.data, b.valid, m, keep_first, keep_last, mchar, check
    )
    ok = b.valid & (err == 0)
    return string_array(off, data, ok, like=values.type), err


def redact(values: pa.Array | pa.ChunkedArray, replacement: str | None) -> pa.Array:
    """Every non-null value becomes `replacement` (or null when it is None); nulls stay null.

    No kernel of ours: Arrow's `if_else` with a scalar already writes the column in one pass.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    typ = (
        values.type
        if (pa.types.is_string(values.type) or pa.types.is_large_string(values.type))
        else pa.large_string()
    )
    if replacement is None:
        return pa.nulls(len(values), type=typ)
    return pc.if_else(pc.is_valid(values), pa.scalar(replacement, typ), pa.scalar(None, typ))
