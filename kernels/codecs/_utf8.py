"""UTF-8 validation of one multi-byte sequence, shared by the codecs' scanners (Numba, inlined)."""

from __future__ import annotations

from numba import njit

__all__ = ["seq_len"]


@njit(cache=True, inline="always")
def seq_len(data, q, end):
    """Length of the well-formed UTF-8 sequence whose lead byte (>= 0x80) is data[q], ending
    before `end`; 0 when it is not well formed (RFC 3629 table 3-7: no overlongs, no
    surrogates, nothing above U+10FFFF)."""
    c = data[q]
    if 0xC2 <= c <= 0xDF:
        need = 1
        lo = 0x80
        hi = 0xBF
    elif 0xE0 <= c <= 0xEF:
        need = 2
        lo = 0xA0 if c == 0xE0 else 0x80
        hi = 0x9F if c == 0xED else 0xBF
    elif 0xF0 <= c <= 0xF4:
        need = 3
        lo = 0x90 if c == 0xF0 else 0x80
        hi = 0x8F if c == 0xF4 else 0xBF
    else:
        return 0
    if q + need >= end:
        return 0
    c1 = data[q + 1]
    if c1 < lo or c1 > hi:
        return 0
    for j in range(q + 2, q + 1 + need):
        if (data[j] & 0xC0) != 0x80:
            return 0
    return 1 + need
