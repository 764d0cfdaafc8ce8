"""PII and secret detection in free text: one Numba pass over a whole Arrow string column.

`detect(values)` returns every span found as parallel arrays (record, start, end, type,
confidence); `start` and `end` are byte offsets within the record's UTF-8 value. `splice` rebuilds
the column with the spans replaced, again in one kernel call, never a Python loop per record.

Candidate finding is a hand-written scanner, not a regex engine, because it measured faster
here (`python -m raymask.loadtest.detect_bench --records 1000000 --engines`, 2026-11-23, CPU
seconds on 2 cores shared with other jobs, so provisional): the Numba scan finds *and validates*
all 16 types at 116 MB/s; hyperscan, given the same types as regexes over the whole buffer with
start-of-match, ran at 19 MB/s, because its Python binding calls back into Python once per
match (9.4M callbacks on 123 MB: a multi-pattern engine reports every match end of every
pattern, overlapping ones included) and its spans would still need validating and de-overlapping;
pyarrow's RE2 with one alternation of the patterns ran at 23 MB/s and gives only the first
match per value (`extract_regex`); one `replace_substring_regex` pass per pattern ran at 17 MB/s
and cannot check Luhn or mod 97. The scanner walks each value once:

- a byte-class table tells, per byte, whether it continues a word; inside a word nothing is
  tried, so most bytes cost one table look-up;
- at a word start the first byte dispatches to the few matchers that can start with it: a digit
  to IPv4 / MAC / IPv6 / SSN / card / national phone, a letter to IBAN, the token prefixes
  (AKIA, ghp_, xoxb-, sk_live_, eyJ, Bearer), URL credentials, MAC / IPv6; ``+`` and ``(`` to
  phones, ``:`` to IPv6 ``::``, ``-`` to PEM blocks; the length of the digit / hex run and the
  byte after it gate the number matchers (an SSN needs 3 digits then ``-``), and email and URL
  credentials are tried only where the word's run of local-part bytes ends in ``@`` or ``://``;
- the first matcher that accepts wins and the scan resumes after its span (spans never
  overlap); a digit or hex word that nothing accepts is skipped whole, so ``1.2.3.4.5`` or a
  version string never yields an address from its middle.

Confidence is fixed per type (0.6 for national phone formats), raised by 0.15 when a context
word of the type (`CONTEXT_WORDS`: "phone", "tel", "ssn", "iban", ...) stands in the 32 bytes
before the span; `detect(..., min_confidence=0.7)` then keeps national phone numbers only where
such a word announces them.

Validation happens in the same pass (kernels/_validators.py): Luhn and issuer prefixes for cards,
ISO 7064 MOD 97-10 and the registry length for IBANs, octets 0-255 for IPv4, the RFC 4291 group
rules for IPv6 (one ``::`` at most, 8 groups without it, embedded IPv4), SSA rules for SSNs (area
not 000, 666 or 9xx; group not 00; serial not 0000).

User patterns (`Pattern`: a regex plus an optional validator from `VALIDATORS`) are the slower
path: RE2 (pyarrow) selects the values that match at all, then Python `re` finds the positions
in those values only.

Spans are byte offsets; a span never splits a UTF-8 sequence because every matcher stops at the
first non-ASCII byte. Values that are not valid UTF-8 are scanned as bytes all the same (the
matchers only accept ASCII), and nulls have no spans.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from raymask.kernels._arrow import as_text, string_array, string_buffers
from raymask.kernels._validators import (
    VALIDATORS,
    iban_table,
    luhn_ok,
    mod97_ok,
    validate_spans,
)

__all__ = [
    "TYPES",
    "SECRET_TYPES",
    "VALIDATORS",
    "Pattern",
    "Spans",
    "detect",
    "splice",
    "span_texts",
    "type_codes",
    "CONTEXT_WORDS",
]

TYPES = (
    "email",
    "card",
    "iban",
    "phone",
    "ipv4",
    "ipv6",
    "ssn",
    "mac",
    "aws_key",
    "github_token",
    "slack_token",
    "stripe_key",
    "jwt",
    "bearer_token",
    "private_key",
    "url_credentials",
)
(T_EMAIL, T_CARD, T_IBAN, T_PHONE, T_IPV4, T_IPV6, T_SSN, T_MAC, T_AWS, T_GITHUB, T_SLACK,
 T_STRIPE, T_JWT, T_BEARER, T_PEM, T_URLCRED) = range(len(TYPES))  # fmt: skip
SECRET_TYPES = TYPES[T_AWS:]

# confidence per type; national phone formats get less (see _phone)
_CONF = np.array(
    [0.95, 1.0, 1.0, 0.75, 0.9, 0.9, 0.85, 0.9, 1.0, 1.0, 1.0, 1.0, 0.95, 0.9, 1.0, 1.0], np.float32
)

# byte classes
C_DIGIT, C_UPPER, C_LOWER, C_HEX, C_LOCAL, C_B64, C_URLSAFE = 1, 2, 4, 8, 16, 32, 64
C_ALNUM = C_DIGIT | C_UPPER | C_LOWER


def _classes() -> np.ndarray:
    t = np.zeros(256, np.uint8)
    for c in range(256):
        ch = chr(c)
        k = 0
        if ch.isascii() and ch.isdigit():
            k |= C_DIGIT
        if "A" <= ch <= "Z":
            k |= C_UPPER
        if "a" <= ch <= "z":
            k |= C_LOWER
        if ch in "0123456789abcdefABCDEF":
            k |= C_HEX
        if (ch.isascii() and ch.isalnum()) or ch in "._%+-":
            k |= C_LOCAL
        if (ch.isascii() and ch.isalnum()) or ch in "_-":
            k |= C_B64
        if (ch.isascii() and ch.isalnum()) or ch in "._~+/-=":
            k |= C_URLSAFE
        t[c] = k
    return t


_CLS = _classes()
_IBAN = iban_table()


@njit(cache=True, inline="always")
def _is(cls, data, q, e, k):
    return q < e and (cls[data[q]] & k) != 0


@njit(cache=True, inline="always")
def _d(data, q, e):
    return q < e and 48 <= data[q] <= 57


@njit(cache=True, inline="always")
def _lit(data, q, e, lit):
    """data[q:] starts with the byte string `lit`."""
    if q + lit.shape[0] > e:
        return False
    for j in range(lit.shape[0]):
        if data[q + j] != lit[j]:
            return False
    return True


@njit(cache=True, inline="always")
def _run(cls, data, q, e, k):
    while q < e and (cls[data[q]] & k) != 0:
        q += 1
    return q


@njit(cache=True, inline="always")
def _end_ok(cls, data, q, e):
    """A span may end before q: the next byte does not continue a word."""
    return q >= e or (cls[data[q]] & C_ALNUM) == 0


# ---------------------------------------------------------------- matchers: end position or -1


@njit(cache=True)
def _email(cls, data, p, e):
    q = p
    while q < e and (cls[data[q]] & C_LOCAL) != 0 and q - p <= 64:
        q += 1
    if q >= e or data[q] != 64 or q == p or data[q - 1] == 46:
        return -1
    r = q + 1
    labels = 0
    last_alpha = False
    end = -1
    while True:
        s = r
        alpha = True
        while r < e and ((cls[data[r]] & C_ALNUM) != 0 or data[r] == 45):
            if (cls[data[r]] & (C_UPPER | C_LOWER)) == 0:
                alpha = False
            r += 1
        if r == s or r - s > 63 or data[s] == 45 or data[r - 1] == 45:
            break
        labels += 1
        last_alpha = alpha and r - s >= 2
        if labels >= 2 and last_alpha:
            end = r
        if r + 1 < e and data[r] == 46 and (cls[data[r + 1]] & C_ALNUM) != 0:
            r += 1
            continue
        break
    return end


@njit(cache=True)
def _octets(data, q, e):
    """End of four dot-separated octets 0-255 starting at q, or -1."""
    for part in range(4):
        v = 0
        nd = 0
        while _d(data, q, e) and nd < 4:
            v = v * 10 + data[q] - 48
            nd += 1
            q += 1
        if nd == 0 or nd > 3 or v > 255:
            return -1
        if part < 3:
            if q < e and data[q] == 46:
                q += 1
            else:
                return -1
    return q


@njit(cache=True)
def _ipv4(cls, data, p, e):
    q = _octets(data, p, e)
    if q < 0 or not _end_ok(cls, data, q, e):
        return -1
    if q + 1 < e and data[q] == 46 and _d(data, q + 1, e):  # a fifth part: not an address
        return -1
    if q + 1 < e and data[q] == 45 and (cls[data[q + 1]] & C_ALNUM) != 0:  # 1.2.3.4-rc1
        return -1
    return q


@njit(cache=True)
def _ipv6(cls, data, p, e):
    q = p
    groups = 0
    dbl = False
    if q + 1 < e and data[q] == 58:
        if data[q + 1] != 58:
            return -1
        dbl = True
        q += 2
    end = q if dbl else -1
    while q < e:
        h = _run(cls, data, q, e, C_HEX) - q
        if h == 0:
            break
        if q + h < e and data[q + h] == 46:  # embedded IPv4 in the last 32 bits
            r = _octets(data, q, e)
            if r < 0:
                return -1
            groups += 2
            q = r
            end = q
            break
        if h > 4 or (q + h < e and (cls[data[q + h]] & C_ALNUM) != 0):
            return -1
        groups += 1
        q += h
        end = q
        if q + 1 < e and data[q] == 58 and data[q + 1] == 58:
            if dbl:
                return -1
            dbl = True
            q += 2
            end = q
            continue
        if q + 1 < e and data[q] == 58 and (cls[data[q + 1]] & C_HEX) != 0:
            q += 1
            continue
        break
    if groups > 8 or (dbl and groups > 7) or (not dbl and groups != 8) or groups == 0:
        return -1
    if not _end_ok(cls, data, end, e) or (end < e and data[end] == 58):
        return -1
    return end


@njit(cache=True)
def _mac(cls, data, p, e):
    # six hex pairs with one separator (: or -), or three dot-separated quads (Cisco)
    if p + 17 <= e:
        sep = data[p + 2]
        if sep == 58 or sep == 45:
            ok = True
            for g in range(6):
                a = p + 3 * g
                if (cls[data[a]] & C_HEX) == 0 or (cls[data[a + 1]] & C_HEX) == 0:
                    ok = False
                    break
                if g < 5 and data[a + 2] != sep:
                    ok = False
                    break
            if ok and _end_ok(cls, data, p + 17, e) and not (p + 17 < e and data[p + 17] == sep):
                return p + 17
    if p + 14 <= e:
        ok = True
        for g in range(3):
            a = p + 5 * g
            for j in range(4):
                if (cls[data[a + j]] & C_HEX) == 0:
                    ok = False
            if g < 2 and data[a + 4] != 46:
                ok = False
        if ok and _end_ok(cls, data, p + 14, e) and not (p + 14 < e and data[p + 14] == 46):
            return p + 14
    return -1


@njit(cache=True)
def _ssn(cls, data, p, e):
    if p + 11 > e:
        return -1
    for j in range(11):
        c = data[p + j]
        if j == 3 or j == 6:
            if c != 45:
                return -1
        elif not (48 <= c <= 57):
            return -1
    area = (data[p] - 48) * 100 + (data[p + 1] - 48) * 10 + data[p + 2] - 48
    group = (data[p + 4] - 48) * 10 + data[p + 5] - 48
    serial = 0
    for j in range(7, 11):
        serial = serial * 10 + data[p + j] - 48
    if area == 0 or area == 666 or area >= 900 or group == 0 or serial == 0:
        return -1
    q = p + 11
    if not _end_ok(cls, data, q, e) or (q + 1 < e and data[q] == 45 and _d(data, q + 1, e)):
        return -1
    return q


@njit(cache=True)
def _iin_ok(data, p, e):
    """An issuer prefix of a card network (Visa, Mastercard, Amex, Discover, Diners, JCB,
    UnionPay), read over separators."""
    v = 0
    nd = 0
    q = p
    while q < e and nd < 4:
        c = data[q]
        if 48 <= c <= 57:
            v = v * 10 + c - 48
            nd += 1
        q += 1
    d1 = v // 1000
    d2 = v // 100
    if d1 == 4:
        return True
    if 51 <= d2 <= 55 or 2221 <= v <= 2720:
        return True
    if d2 == 34 or d2 == 37 or d2 == 36 or d2 == 38 or d2 == 35 or 300 <= v // 10 <= 305:
        return True
    if v == 6011 or d2 == 65 or 644 <= v // 10 <= 649 or d2 == 62:
        return True
    return False


@njit(cache=True)
def _card(cls, data, p, e, scratch):
    if not _iin_ok(data, p, e):
        return -1
    q = p
    nd = 0
    sep = 0
    bounds = scratch[:24]  # end of each digit group (scratch: no allocation per candidate)
    counts = scratch[24:48]
    ng = 0
    while ng < 24:
        g0 = q
        while _d(data, q, e):
            q += 1
        glen = q - g0
        if ng > 0 and not (3 <= glen <= 6):  # printed cards group 3-6 digits
            break
        nd += glen
        bounds[ng] = q
        counts[ng] = nd
        ng += 1
        if nd > 19 or (ng == 1 and glen > 6):  # a plain number takes no separated groups
            break
        if (
            q + 1 < e
            and (data[q] == 32 or data[q] == 45)
            and (sep == 0 or data[q] == sep)
            and _d(data, q + 1, e)
        ):
            sep = data[q]
            q += 1
            continue
        break
    for g in range(ng - 1, -1, -1):  # longest first
        if 13 <= counts[g] <= 19:
            end = bounds[g]
            if g == ng - 1 and not _end_ok(cls, data, end, e):
                continue
            if luhn_ok(data, p, end):
                return end
    return -1


@njit(cache=True)
def _phone_groups(cls, data, p, e):
    """National formats: (ddd) ddd-dddd, ddd-ddd-dddd, ddd.ddd.dddd, ddd ddd dddd (NANP: area
    and exchange start with 2-9), or a trunk 0 followed by 9-10 digits in 2-4 groups."""
    q = p
    if data[q] == 40:  # (ddd) ddd-dddd
        if q + 14 > e or data[q + 4] != 41 or data[q + 5] != 32:
            return -1
        for j in (1, 2, 3, 6, 7, 8, 10, 11, 12, 13):
            if not (48 <= data[q + j] <= 57):
                return -1
        if data[q + 9] != 45 or data[q + 1] < 50 or data[q + 6] < 50:
            return -1
        q += 14
        return q if _end_ok(cls, data, q, e) else -1
    if (  # a leading 1 (US trunk prefix): 1-800-555-0199
        p + 14 <= e
        and data[p] == 49
        and (data[p + 1] == 45 or data[p + 1] == 46 or data[p + 1] == 32)
        and data[p + 5] == data[p + 1]
    ):
        r = _phone_groups(cls, data, p + 2, e)
        if r > 0 and data[p + 2] != 40:
            return r
    if p + 12 <= e and data[p] >= 50 and data[p + 4] >= 50:
        sep = data[p + 3]
        if (sep == 45 or sep == 46 or sep == 32) and data[p + 7] == sep:
            ok = True
            for j in (0, 1, 2, 4, 5, 6, 8, 9, 10, 11):
                if not (48 <= data[p + j] <= 57):
                    ok = False
            if ok:
                q = p + 12
                if _end_ok(cls, data, q, e) and not (
                    q + 1 < e and data[q] == sep and _d(data, q + 1, e)
                ):
                    return q
    if data[p] == 48:  # trunk prefix 0
        q = p
        nd = 0
        ng = 0
        sep = 0
        while True:
            s = q
            while _d(data, q, e):
                q += 1
            if q - s < 2 or (ng == 0 and q - s > 5):
                return -1
            nd += q - s
            ng += 1
            if q + 1 < e and (data[q] == 32 or data[q] == 45) and (sep == 0 or data[q] == sep):
                if _d(data, q + 1, e):
                    sep = data[q]
                    q += 1
                    continue
            break
        if 10 <= nd <= 11 and 2 <= ng <= 4 and _end_ok(cls, data, q, e):
            return q
    return -1


@njit(cache=True)
def _e164(cls, data, p, e):
    # + country code and subscriber number: 8-15 digits, single separators (space, dash, dot),
    # one optional bracketed group
    q = p + 1
    if not _d(data, q, e) or data[q] == 48:
        return -1
    nd = 0
    end = -1
    paren = False
    while q < e:
        c = data[q]
        if 48 <= c <= 57:
            nd += 1
            q += 1
            end = q
            continue
        nxt = data[q + 1] if q + 1 < e else 0
        if (c == 32 or c == 45 or c == 46) and (48 <= nxt <= 57 or (nxt == 40 and not paren)):
            q += 1
            continue
        if c == 40 and not paren and 48 <= nxt <= 57:
            close = q + 1
            while close < e and 48 <= data[close] <= 57:
                close += 1
            if close < e and data[close] == 41 and close - q - 1 <= 4:
                nd += close - q - 1
                paren = True
                q = close + 1
                end = q
                if q + 1 < e and data[q] == 32 and 48 <= data[q + 1] <= 57:
                    q += 1
                continue
        break
    if 8 <= nd <= 15 and end > 0 and _end_ok(cls, data, end, e):
        return end
    return -1


@njit(cache=True)
def _iban(cls, iban, data, p, e):
    if p + 4 > e:
        return -1
    a = data[p]
    b = data[p + 1]
    if not (65 <= a <= 90 and 65 <= b <= 90 and _d(data, p + 2, e) and _d(data, p + 3, e)):
        return -1
    need = iban[(a - 65) * 26 + b - 65]
    if need == 0:
        return -1
    q = p
    m = 0
    while m < need and q < e:
        c = data[q]
        if (cls[c] & C_ALNUM) != 0:
            m += 1
            q += 1
        elif c == 32 and q + 1 < e and (cls[data[q + 1]] & C_ALNUM) != 0 and m >= 4:
            q += 1
        else:
            break
    if m != need or not _end_ok(cls, data, q, e):
        return -1
    # IBAN-shaped but the check fails: -2 - end, so the scan skips it whole (its digit groups
    # are not phone numbers)
    return q if mod97_ok(data, p, q) else -2 - q


@njit(cache=True)
def _exact_run(cls, data, q, e, k, lo, hi):
    """End of a run of class k with length in [lo, hi] that ends a word, else -1."""
    r = _run(cls, data, q, e, k)
    if lo <= r - q <= hi and _end_ok(cls, data, r, e) and (r >= e or (cls[data[r]] & k) == 0):
        return r
    return -1


_GHPAT = np.frombuffer(b"github_pat_", np.uint8)
_XOX = np.frombuffer(b"xox", np.uint8)
_LIVE = np.frombuffer(b"_live_", np.uint8)
_EYJ = np.frombuffer(b"eyJ", np.uint8)
_EARER = np.frombuffer(b"earer", np.uint8)
_BEGIN = np.frombuffer(b"-----BEGIN ", np.uint8)
_PRIVKEY = np.frombuffer(b"PRIVATE KEY-----", np.uint8)
_ENDM = np.frombuffer(b"-----END ", np.uint8)
_DASH5 = np.frombuffer(b"-----", np.uint8)
_AWS = np.frombuffer(b"AKIAASIAAGPAAIDAAROAANPAANVAAIPA", np.uint8).reshape(-1, 4)
_GH = np.frombuffer(b"ghpghoghughsghr", np.uint8).reshape(-1, 3)


@njit(cache=True)
def _aws(cls, data, p, e):
    for k in range(_AWS.shape[0]):
        if _lit(data, p, e, _AWS[k]):
            return _exact_run(cls, data, p + 4, e, C_UPPER | C_DIGIT, 16, 16)
    return -1


@njit(cache=True)
def _token_prefixed(cls, data, p, e):
    """GitHub, Slack and Stripe tokens by their documented prefixes; (end, type) or (-1, -1)."""
    c = data[p]
    if c == 103:  # g
        for k in range(_GH.shape[0]):
            if _lit(data, p, e, _GH[k]) and p + 3 < e and data[p + 3] == 95:
                r = _exact_run(cls, data, p + 4, e, C_ALNUM, 36, 36)
                if r > 0:
                    return r, T_GITHUB
        if _lit(data, p, e, _GHPAT):
            r = _run(cls, data, p + 11, e, C_ALNUM | C_B64)
            if r - p - 11 >= 22 and _end_ok(cls, data, r, e):
                return r, T_GITHUB
    elif c == 120:  # x
        if _lit(data, p, e, _XOX) and p + 4 < e and data[p + 4] == 45:
            t = data[p + 3]
            if t == 98 or t == 112 or t == 97 or t == 115:  # b p a s
                r = _run(cls, data, p + 5, e, C_ALNUM | C_B64)
                if r - p - 5 >= 10 and _end_ok(cls, data, r, e):
                    return r, T_SLACK
    elif c == 115 or c == 114:  # s r
        if p + 8 < e and data[p + 1] == 107 and _lit(data, p + 2, e, _LIVE):
            r = _run(cls, data, p + 8, e, C_ALNUM)
            if r - p - 8 >= 16 and _end_ok(cls, data, r, e) and (r >= e or data[r] != 95):
                return r, T_STRIPE
    return -1, -1


@njit(cache=True)
def _jwt(cls, data, p, e):
    if not _lit(data, p, e, _EYJ):
        return -1
    q = _run(cls, data, p, e, C_B64)
    if q - p < 10 or q >= e or data[q] != 46:
        return -1
    r = _run(cls, data, q + 1, e, C_B64)
    if r - q - 1 < 10 or not _lit(data, q + 1, e, _EYJ):
        return -1
    if r >= e or data[r] != 46:
        return -1
    s = _run(cls, data, r + 1, e, C_B64)
    if s < e and data[s] == 46:
        return -1
    return s


@njit(cache=True)
def _bearer(cls, data, p, e):
    """`Bearer <token>`: returns (token start, token end) or (-1, -1)."""
    if p + 7 > e or (data[p] | 32) != 98:
        return -1, -1
    for j in range(5):
        if (data[p + 1 + j] | 32) != _EARER[j]:
            return -1, -1
    q = p + 6
    if q >= e or (data[q] != 32 and data[q] != 9):
        return -1, -1
    while q < e and (data[q] == 32 or data[q] == 9):
        q += 1
    r = _run(cls, data, q, e, C_URLSAFE)
    while r < e and data[r] == 61:
        r += 1
    if r - q >= 16 and _end_ok(cls, data, r, e):
        return q, r
    return -1, -1


@njit(cache=True)
def _pem(data, p, e):
    begin = _BEGIN
    if not _lit(data, p, e, begin):
        return -1
    q = p + 11
    stop = min(e, q + 48)
    key = _PRIVKEY
    found = -1
    while q < stop:
        c = data[q]
        if c == 80 and _lit(data, q, e, key):
            found = q + 16
            break
        if not (65 <= c <= 90 or c == 32):
            break
        q += 1
    if found < 0:
        return -1
    end_mark = _ENDM
    q = found
    while q < e:
        if data[q] == 45 and _lit(data, q, e, end_mark):
            r = q + 9
            while r < e and r < q + 64 and data[r] != 45:
                r += 1
            if _lit(data, r, e, _DASH5):
                return r + 5
            return e
        q += 1
    return e  # a block cut short: mask to the end of the value


@njit(cache=True)
def _url_credentials(cls, data, p, e):
    """scheme://user:password@ -> (start, end) of `user:password`, or (-1, -1)."""
    q = p + 1
    while (
        q < e
        and q - p < 20
        and ((cls[data[q]] & C_ALNUM) != 0 or data[q] == 43 or data[q] == 45 or data[q] == 46)
    ):
        q += 1
    if q + 3 > e or data[q] != 58 or data[q + 1] != 47 or data[q + 2] != 47:
        return -1, -1
    u = q + 3
    r = u
    colon = -1
    while r < e and r - u < 256:
        c = data[r]
        if c == 64:
            break
        if c <= 32 or c == 47 or c == 63 or c == 35 or c == 34 or c >= 128:
            return -1, -1
        if c == 58 and colon < 0:
            colon = r
        r += 1
    if r >= e or data[r] != 64 or colon <= u or colon >= r - 1:
        return -1, -1
    return u, r


# ---------------------------------------------------------------- the scan


@njit(cache=True)
def _grow(a, n):
    b = np.empty(max(16, a.shape[0] * 2), a.dtype)
    b[:n] = a[:n]
    return b


@njit(cache=True)
def _scan(offsets, data, valid, enabled, cls, iban):
    n = offsets.shape[0] - 1
    cap = 16 + n // 4
    rec = np.empty(cap, np.int64)
    sst = np.empty(cap, np.int64)
    sen = np.empty(cap, np.int64)
    typ = np.empty(cap, np.int8)
    conf = np.empty(cap, np.float32)
    m = 0
    scratch = np.empty(48, np.int64)
    run_end = -1  # end of the current run of email-local-part bytes (found once per run)
    any_secret = False
    for t in range(T_AWS, len(enabled)):
        any_secret = any_secret or enabled[t]
    for i in range(n):
        if not valid[i]:
            continue
        s = offsets[i]
        e = offsets[i + 1]
        p = s
        run_end = -1
        while p < e:
            c = data[p]
            k = cls[c]
            if (k & C_ALNUM) != 0 and p > s and (cls[data[p - 1]] & C_ALNUM) != 0:
                p += 1
                continue
            if c < 43 or c >= 128:  # space, quotes, punctuation: nothing starts here but '('
                if c == 40 and enabled[T_PHONE]:
                    r = _phone_groups(cls, data, p, e)
                    if r > 0:
                        if m == rec.shape[0]:
                            rec, sst, sen, typ, conf = (_grow(rec, m), _grow(sst, m),
                                _grow(sen, m), _grow(typ, m), _grow(conf, m))  # fmt: skip
                        rec[m], sst[m], sen[m], typ[m], conf[m] = i, p - s, r - s, T_PHONE, 0.6
                        m += 1
                        p = r
                        continue
                p += 1
                continue
            t = -1
            a = p
            r = -1
            if c == 43:  # +
                if enabled[T_PHONE] and (p == s or (cls[data[p - 1]] & C_ALNUM) == 0):
                    r = _e164(cls, data, p, e)
                    if r > 0:
                        t = T_PHONE
            elif c == 45:  # -
                if enabled[T_PEM]:
                    r = _pem(data, p, e)
                    if r > 0:
                        t = T_PEM
            elif c == 58:  # :
                if enabled[T_IPV6] and (
                    p == s or ((cls[data[p - 1]] & C_ALNUM) == 0 and data[p - 1] != 58)
                ):
                    r = _ipv6(cls, data, p, e)
                    if r > 0:
                        t = T_IPV6
            elif (k & C_ALNUM) != 0:
                if p >= run_end:
                    run_end = p + 1
                    while run_end < e and (cls[data[run_end]] & C_LOCAL) != 0:
                        run_end += 1
                # an email needs '@' after the run, a URL with credentials "://"
                at_run = run_end < e and data[run_end] == 64
                url_run = run_end + 2 < e and data[run_end] == 58 and data[run_end + 1] == 47
                if (k & C_DIGIT) == 0 and url_run and enabled[T_URLCRED]:
                    a, r = _url_credentials(cls, data, p, e)
                    if r > 0:
                        t = T_URLCRED
                    else:
                        a = p
                if t < 0 and any_secret and (k & C_DIGIT) == 0:
                    if c == 65 and enabled[T_AWS]:
                        r = _aws(cls, data, p, e)
                        if r > 0:
                            t = T_AWS
                    elif c == 101 and enabled[T_JWT]:
                        r = _jwt(cls, data, p, e)
                        if r > 0:
                            t = T_JWT
                    elif (c | 32) == 98 and enabled[T_BEARER]:
                        a, r = _bearer(cls, data, p, e)
                        if r > 0:
                            t = T_BEARER
                        else:
                            a = p
                    if t < 0 and (c == 103 or c == 120 or c == 115 or c == 114):
                        r, tt = _token_prefixed(cls, data, p, e)
                        if r > 0 and enabled[tt]:
                            t = tt
                if t < 0 and at_run and enabled[T_EMAIL]:
                    r = _email(cls, data, p, e)
                    if r > 0:
                        t = T_EMAIL
                if t < 0 and (k & C_UPPER) != 0 and enabled[T_IBAN]:
                    r = _iban(cls, iban, data, p, e)
                    if r > 0:
                        t = T_IBAN
                    elif r < -1:
                        p = -2 - r
                        continue
                if t < 0 and (k & C_HEX) != 0:
                    # the digit and hex runs and the byte after them gate every matcher, so
                    # most numbers (ids, amounts, times) are rejected in a few instructions
                    dr = p
                    while dr < e and 48 <= data[dr] <= 57:
                        dr += 1
                    hr = dr
                    while hr < e and (cls[data[hr]] & C_HEX) != 0:
                        hr += 1
                    nd = dr - p
                    nx = data[dr] if dr < e else 0
                    hx = data[hr] if hr < e else 0
                    if nd > 0:
                        if t < 0 and nd <= 3 and nx == 46 and enabled[T_IPV4]:
                            r = _ipv4(cls, data, p, e)
                            if r > 0:
                                t = T_IPV4
                        if t < 0 and nd == 3 and nx == 45 and enabled[T_SSN]:
                            r = _ssn(cls, data, p, e)
                            if r > 0:
                                t = T_SSN
                        if (
                            t < 0
                            and enabled[T_PHONE]
                            and (
                                (nd == 3 and (nx == 45 or nx == 46 or nx == 32))
                                or (c == 48 and 2 <= nd <= 5 and (nx == 32 or nx == 45))
                                or (nd == 1 and c == 49 and (nx == 45 or nx == 46 or nx == 32))
                            )
                        ):
                            r = _phone_groups(cls, data, p, e)
                            if r > 0:
                                t = T_PHONE
                        if (
                            t < 0
                            and enabled[T_CARD]
                            and (nd >= 13 or (3 <= nd <= 6 and (nx == 32 or nx == 45)))
                        ):
                            r = _card(cls, data, p, e, scratch)
                            if r > 0:
                                t = T_CARD
                    hl = hr - p
                    if (
                        t < 0
                        and enabled[T_MAC]
                        and ((hl == 2 and (hx == 58 or hx == 45)) or (hl == 4 and hx == 46))
                    ):
                        r = _mac(cls, data, p, e)
                        if r > 0:
                            t = T_MAC
                    if t < 0 and enabled[T_IPV6] and 1 <= hl <= 4 and (hx == 58 or hx == 46):
                        r = _ipv6(cls, data, p, e)
                        if r > 0:
                            t = T_IPV6
                    if t < 0:  # skip the whole digit / hex word: no match from its middle
                        q = p + 1
                        while q < e and (
                            (cls[data[q]] & C_ALNUM) != 0
                            or data[q] == 46
                            or data[q] == 58
                            or data[q] == 45
                        ):
                            q += 1
                        if (k & C_DIGIT) != 0:
                            p = q
                            continue
                if t < 0:  # nothing starts inside a word: jump to its end
                    q = p + 1
                    while q < e and (cls[data[q]] & C_ALNUM) != 0:
                        q += 1
                    p = q
                    continue
            if t >= 0:
                if m == rec.shape[0]:
                    rec, sst, sen, typ, conf = (_grow(rec, m), _grow(sst, m), _grow(sen, m),
                        _grow(typ, m), _grow(conf, m))  # fmt: skip
                cf = _CONF[t]
                if t == T_PHONE and c != 43:
                    cf = 0.6
                rec[m], sst[m], sen[m], typ[m], conf[m] = i, a - s, r - s, t, cf
                m += 1
                p = r
                continue
            p += 1
    return rec[:m].copy(), sst[:m].copy(), sen[:m].copy(), typ[:m].copy(), conf[:m].copy()


# ---------------------------------------------------------------- context words

# words that, shortly before a span, make its type more likely (lower case; matched
# case-insensitively in the CONTEXT_BYTES before the span)
CONTEXT_WORDS = {
    "phone": ("phone", "tel", "call", "mobile", "cell", "fax", "sms", "whatsapp"),
    "ssn": ("ssn", "social security", "tax id"),
    "card": ("card", "visa", "mastercard", "amex", "pan", "credit", "debit"),
    "iban": ("iban", "account", "transfer", "bank"),
    "ipv4": ("ip", "addr", "host", "from", "client"),
    "ipv6": ("ip", "addr", "host", "from", "client"),
    "mac": ("mac", "device", "hw", "ether"),
}
CONTEXT_BYTES = 32
CONTEXT_BOOST = 0.15


def _context_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    words = [(TYPES.index(t), w) for t, ws in CONTEXT_WORDS.items() for w in ws]
    off = np.zeros(len(words) + 1, np.int64)
    off[1:] = np.cumsum([len(w) for _, w in words])
    data = np.frombuffer("".join(w for _, w in words).encode(), np.uint8).copy()
    return off, data, np.array([t for t, _ in words], np.int16)


_CTX_OFF, _CTX_DATA, _CTX_TYPE = _context_table()


@njit(cache=True)
def _context(offsets, data, rec, start, typ, conf, ctx_off, ctx_data, ctx_type, window, boost):
    """Raise the confidence of spans with a context word of their type in the `window` bytes
    before them (ASCII case folded)."""
    for k in range(rec.shape[0]):
        s = offsets[rec[k]]
        a = s + start[k]
        lo = max(s, a - window)
        for w in range(ctx_type.shape[0]):
            if ctx_type[w] != typ[k]:
                continue
            ln = ctx_off[w + 1] - ctx_off[w]
            found = False
            for q in range(lo, a - ln + 1):
                ok = True
                for j in range(ln):
                    c = data[q + j]
                    if 65 <= c <= 90:
                        c += 32
                    if c != ctx_data[ctx_off[w] + j]:
                        ok = False
                        break
                if ok:
                    found = True
                    break
            if found:
                conf[k] = min(np.float32(1.0), conf[k] + np.float32(boost))
                break


# ---------------------------------------------------------------- public API


@dataclass(frozen=True)
class Pattern:
    """A user pattern: a regex (Python `re` syntax that RE2 also accepts) and an optional
    validator from `VALIDATORS` run on the matched text."""

    name: str
    regex: str
    validator: str | None = None
    confidence: float = 0.8


@dataclass
class Spans:
    """Spans found in a column, sorted by (record, start), never overlapping.

    `start`/`end` are byte offsets within the record's value; `type` indexes `names`."""

    record: np.ndarray  # int64
    start: np.ndarray  # int64
    end: np.ndarray  # int64
    type: np.ndarray  # int16
    confidence: np.ndarray  # float32
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.record)

    def counts(self) -> dict[str, int]:
        """Spans per type name (types with none left out)."""
        c = np.bincount(self.type, minlength=len(self.names)) if len(self) else []
        return {self.names[t]: int(x) for t, x in enumerate(c) if x}

    def take(self, keep: np.ndarray) -> Spans:
        return Spans(
            self.record[keep], self.start[keep], self.end[keep], self.type[keep],
            self.confidence[keep], self.names,
        )  # fmt: skip


def type_codes(types: list[str] | tuple[str, ...] | None) -> np.ndarray:
    """Enabled flags per built-in type; `secret` stands for every secret type, None for all."""
    enabled = np.zeros(len(TYPES), np.bool_)
    if types is None:
        enabled[:] = True
        return enabled
    for t in types:
        if t == "secret":
            enabled[T_AWS:] = True
        elif t in TYPES:
            enabled[TYPES.index(t)] = True
        else:
            raise ValueError(f"unknown detector type {t!r}; expected one of {', '.join(TYPES)}")
    return enabled


def _user_spans(values: pa.Array, b, pat: Pattern) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spans of one user pattern: RE2 selects the values with a match, Python re finds them."""
    hit = pc.fill_null(pc.match_substring_regex(values, pat.regex), False)
    rows = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
    rx = re.compile(pat.regex.encode())
    recs, starts, ends = [], [], []
    data = b.data
    for i in rows:  # only the values RE2 says match
        raw = data[b.offsets[i] : b.offsets[i + 1]].tobytes()
        for mt in rx.finditer(raw):
            if mt.end() > mt.start():
                recs.append(i)
                starts.append(mt.start())
                ends.append(mt.end())
    rec = np.array(recs, np.int64)
    st = np.array(starts, np.int64)
    en = np.array(ends, np.int64)
    if pat.validator is not None and len(rec):
        ok = validate_spans(pat.validator, b.offsets, b.data, rec, st, en)
        rec, st, en = rec[ok], st[ok], en[ok]
    return rec, st, en


@njit(cache=True)
def _no_overlap(rec, start, end, prio):
    """Keep spans sorted by (record, start) that do not overlap an earlier kept one; on equal
    starts the lower `prio` (built-in first) wins."""
    keep = np.zeros(rec.shape[0], np.bool_)
    last_rec = -1
    last_end = 0
    for k in range(rec.shape[0]):
        if rec[k] != last_rec or start[k] >= last_end:
            keep[k] = True
            last_rec = rec[k]
            last_end = end[k]
    return keep


def detect(
    values: pa.Array | pa.ChunkedArray,
    types: list[str] | tuple[str, ...] | None = None,
    patterns: list[Pattern] | tuple[Pattern, ...] = (),
    min_confidence: float = 0.0,
) -> Spans:
    """Every span of the built-in `types` (all when None) and of the user `patterns`."""
    values = as_text(values)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    b = string_buffers(values)
    enabled = type_codes(types)
    rec, st, en, ty, cf = _scan(b.offsets, b.data, b.valid, enabled, _CLS, _IBAN)
    if len(rec):
        _context(b.offsets, b.data, rec, st, ty.astype(np.int16), cf, _CTX_OFF, _CTX_DATA,
                 _CTX_TYPE, CONTEXT_BYTES, CONTEXT_BOOST)  # fmt: skip
    ty = ty.astype(np.int16)
    names = TYPES + tuple(p.name for p in patterns)
    if patterns:
        parts = [(rec, st, en, ty, cf)]
        for j, pat in enumerate(patterns):
            r, s, e = _user_spans(values, b, pat)
            parts.append(
                (r, s, e, np.full(len(r), len(TYPES) + j, np.int16),
                 np.full(len(r), pat.confidence, np.float32))
            )  # fmt: skip
        rec, st, en, ty, cf = (np.concatenate(x) for x in zip(*parts, strict=True))
        order = np.lexsort((ty, st, rec))
        rec, st, en, ty, cf = rec[order], st[order], en[order], ty[order], cf[order]
        keep = _no_overlap(rec, st, en, ty)
        rec, st, en, ty, cf = rec[keep], st[keep], en[keep], ty[keep], cf[keep]
    spans = Spans(rec, st, en, ty, cf, names)
    if min_confidence > 0:
        spans = spans.take(spans.confidence >= min_confidence)
    return spans


@njit(cache=True)
def _gather(offsets, data, rec, start, end):
    n = rec.shape[0]
    off = np.zeros(n + 1, np.int64)
    for k in range(n):
        off[k + 1] = off[k] + end[k] - start[k]
    out = np.empty(off[n], np.uint8)
    for k in range(n):
        base = offsets[rec[k]]
        out[off[k] : off[k + 1]] = data[base + start[k] : base + end[k]]
    return off, out


def span_texts(values: pa.Array, spans: Spans) -> pa.Array:
    """The text of each span as a string array (to tokenize mentions, or in tests)."""
    b = string_buffers(as_text(values))
    off, out = _gather(b.offsets, b.data, spans.record, spans.start, spans.end)
    return string_array(off, out)


@njit(cache=True)
def _splice(offsets, data, valid, rec, start, end, rep_idx, rep_off, rep_data):
    n = offsets.shape[0] - 1
    total = offsets[n] - offsets[0]
    for k in range(rec.shape[0]):
        j = rep_idx[k]
        total += rep_off[j + 1] - rep_off[j] - (end[k] - start[k])
    out = np.empty(total, np.uint8)
    off = np.zeros(n + 1, np.int64)
    o = 0
    k = 0
    m = rec.shape[0]
    for i in range(n):
        s = offsets[i]
        e = offsets[i + 1]
        p = s
        while k < m and rec[k] == i:
            a = s + start[k]
            out[o : o + a - p] = data[p:a]
            o += a - p
            j = rep_idx[k]
            ln = rep_off[j + 1] - rep_off[j]
            out[o : o + ln] = rep_data[rep_off[j] : rep_off[j + 1]]
            o += ln
            p = s + end[k]
            k += 1
        out[o : o + e - p] = data[p:e]
        o += e - p
        off[i + 1] = o
    return off, out


def splice(
    values: pa.Array | pa.ChunkedArray,
    spans: Spans,
    replacements: list[bytes] | pa.Array,
    rep_idx: np.ndarray | None = None,
) -> pa.Array:
    """`values` with every span replaced, in one kernel call.

    `replacements` is a table of byte strings (or a string array); span k gets entry
    `rep_idx[k]` (default: its type, so the table has one entry per type name)."""
    values = as_text(values)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    b = string_buffers(values)
    if isinstance(replacements, pa.Array):
        rb = string_buffers(replacements)
        rep_off = rb.offsets - rb.offsets[0]
        rep_data = rb.data[rb.offsets[0] : rb.offsets[-1]]
    else:
        rep_off = np.zeros(len(replacements) + 1, np.int64)
        rep_off[1:] = np.cumsum([len(r) for r in replacements])
        rep_data = np.frombuffer(b"".join(replacements), np.uint8)
    idx = spans.type.astype(np.int64) if rep_idx is None else rep_idx.astype(np.int64)
    if len(spans) and idx.max() >= len(rep_off) - 1:
        raise ValueError("a span's replacement index is outside the replacement table")
    off, out = _splice(b.offsets, b.data, b.valid, spans.record, spans.start, spans.end, idx,
                       rep_off, rep_data)  # fmt: skip
    binary = pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)
    return string_array(off, out, b.valid, like=values.type, binary=binary)
