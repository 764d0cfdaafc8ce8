"""Check digits and ranges the detectors validate candidates with (Numba, inlined).

- Luhn (ISO/IEC 7812-1 annex B): payment card numbers.
- ISO 7064 MOD 97-10 (ISO 13616-1): IBANs, with the registry's length per country (SWIFT IBAN
  Registry, release 2024).
- IPv4 octets 0-255 are checked in the scanner itself.

Every function reads bytes of a UTF-8 buffer between two positions and skips separators, so the
scanner never copies a candidate.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["IBAN_LENGTHS", "iban_table", "luhn_ok", "mod97_ok", "VALIDATORS", "validate_spans"]

# SWIFT IBAN registry: country -> total length (letters, check digits and BBAN)
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_table() -> np.ndarray:
    """IBAN length per country as a 26 x 26 table indexed by the two letters (0 = no IBAN)."""
    t = np.zeros(26 * 26, np.uint8)
    for cc, n in IBAN_LENGTHS.items():
        t[(ord(cc[0]) - 65) * 26 + ord(cc[1]) - 65] = n
    return t


@njit(cache=True, inline="always")
def _digit(c):
    return 48 <= c <= 57


@njit(cache=True)
def luhn_ok(data, s, e):
    """Luhn check over the ASCII digits of data[s:e] (other bytes skipped); needs >= 2 digits."""
    total = 0
    double = False
    nd = 0
    for q in range(e - 1, s - 1, -1):
        c = data[q]
        if not _digit(c):
            continue
        d = c - 48
        if double:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        double = not double
        nd += 1
    return nd >= 2 and total % 10 == 0


@njit(cache=True, inline="always")
def _mod97_step(r, c):
    if _digit(c):
        return (r * 10 + (c - 48)) % 97
    return (r * 100 + (c - 65 if c <= 90 else c - 97) + 10) % 97


@njit(cache=True)
def mod97_ok(data, s, e):
    """ISO 7064 MOD 97-10 over the letters and digits of data[s:e] (spaces skipped): the first
    four characters move to the end, letters count as 10..35, the number mod 97 must be 1.
    Two passes instead of a rearranged copy (no allocation in the scanner's loop)."""
    r = 0
    m = 0
    for q in range(s, e):  # everything after the first four characters
        c = data[q]
        if _digit(c) or (65 <= c <= 90) or (97 <= c <= 122):
            if m >= 4:
                r = _mod97_step(r, c)
            m += 1
    if m < 5:
        return False
    k = 0
    for q in range(s, e):  # then the first four
        c = data[q]
        if _digit(c) or (65 <= c <= 90) or (97 <= c <= 122):
            r = _mod97_step(r, c)
            k += 1
            if k == 4:
                break
    return r == 1


@njit(cache=True)
def _ipv4_ok(data, s, e):
    """data[s:e] is exactly four dot-separated decimal octets 0-255."""
    parts = 0
    v = 0
    nd = 0
    for q in range(s, e):
        c = data[q]
        if _digit(c):
            v = v * 10 + c - 48
            nd += 1
            if nd > 3 or v > 255:
                return False
        elif c == 46 and nd > 0:
            parts += 1
            v = 0
            nd = 0
        else:
            return False
    return nd > 0 and parts == 3


VALIDATORS = ("luhn", "mod97", "ipv4")


@njit(cache=True)
def _validate(data, base, rec, start, end, which):
    out = np.zeros(rec.shape[0], np.bool_)
    for k in range(rec.shape[0]):
        s = base[rec[k]] + start[k]
        e = base[rec[k]] + end[k]
        if which == 0:
            out[k] = luhn_ok(data, s, e)
        elif which == 1:
            out[k] = mod97_ok(data, s, e)
        else:
            out[k] = _ipv4_ok(data, s, e)
    return out


def validate_spans(
    name: str,
    offsets: np.ndarray,
    data: np.ndarray,
    rec: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
) -> np.ndarray:
    """Whether each span (record, start, end: bytes within the record) passes validator `name`."""
    if name not in VALIDATORS:
        raise ValueError(f"unknown validator {name!r}; expected one of {', '.join(VALIDATORS)}")
    if len(rec) == 0:
        return np.zeros(0, np.bool_)
    return _validate(data, offsets, rec, start, end, VALIDATORS.index(name))
