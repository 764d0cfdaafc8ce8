"""Every scalar value of NDJSON records, for the fields no policy names (schema drift).

The NDJSON scanner locates only the fields a policy names. Detection in *unknown* fields
(`unknown_fields: detect`), the `raymask scan` command and the leak monitor need the others too:
`scalar_values` walks each record once and lists every string and number value (its byte span
and kind) that does not lie inside a skipped span (the named fields); `ndjson.extract` turns
them into one Arrow column; `rewrite` splices new JSON text for some of them back into the
records; `paths_at` names the field of a value (keys joined by dots, array positions left out),
which is only asked for values where something was found.

The walker expects records the NDJSON scanner has validated; on anything unexpected it stops
reading that record (never reads outside it), so it cannot crash on bad input either.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from raymask.kernels.codecs.ndjson import _unescape
from raymask.kernels.codecs.spans import K_NUMBER, K_STRING

__all__ = ["scalar_values", "rewrite", "paths_at"]


@njit(cache=True, inline="always")
def _string_end(data, q, e):
    """Position after the closing quote of the string whose opening quote is at q, or -1."""
    q += 1
    while q < e:
        c = data[q]
        if c == 92:
            q += 2
            continue
        if c == 34:
            return q + 1
        q += 1
    return -1


@njit(cache=True, inline="always")
def _number_end(data, q, e):
    while q < e:
        c = data[q]
        if (48 <= c <= 57) or c == 45 or c == 43 or c == 46 or c == 101 or c == 69:
            q += 1
        else:
            break
    return q


@njit(cache=True)
def _walk(data, starts, ends, ok, skip_s, skip_e, skip_k, stop_at, keys):
    """Scalar values of each record outside its skip spans. With `stop_at` >= 0 (one record),
    stops at that position and leaves the key stack in `keys` (for `paths_at`); returns the
    depth then."""
    n = starts.shape[0]
    cap = 16 + n * 4
    rec = np.empty(cap, np.int64)
    vs = np.empty(cap, np.int64)
    ve = np.empty(cap, np.int64)
    vk = np.empty(cap, np.int8)
    m = 0
    is_obj = np.zeros(520, np.bool_)
    for i in range(n):
        if not ok[i]:
            continue
        s = starts[i]
        e = ends[i]
        q = s
        depth = 0
        expect_key = False
        while q < e:
            if stop_at >= 0 and q >= stop_at:
                return rec[:0], vs[:0], ve[:0], vk[:0], depth
            c = data[q]
            if c == 123 or c == 91:  # { [
                if depth >= 512:
                    break
                depth += 1
                is_obj[depth] = c == 123
                if depth < keys.shape[0]:
                    keys[depth, 0] = 0
                    keys[depth, 1] = 0
                expect_key = c == 123
                q += 1
            elif c == 125 or c == 93:  # } ]
                depth -= 1
                expect_key = False
                q += 1
                if depth < 0:
                    break
            elif c == 44:  # ,
                expect_key = is_obj[depth]
                q += 1
            elif c == 34:  # "
                r = _string_end(data, q, e)
                if r < 0:
                    break
                if expect_key:
                    if depth < keys.shape[0]:
                        keys[depth, 0] = q + 1
                        keys[depth, 1] = r - 1
                    expect_key = False
                else:
                    inside = False
                    for f in range(skip_s.shape[1]):
                        if skip_k[i, f] != 0 and skip_s[i, f] <= q < skip_e[i, f]:
                            inside = True
                    if not inside and stop_at < 0:
                        if m == rec.shape[0]:
                            rec = np.concatenate((rec, np.empty(m, np.int64)))
                            vs = np.concatenate((vs, np.empty(m, np.int64)))
                            ve = np.concatenate((ve, np.empty(m, np.int64)))
                            vk = np.concatenate((vk, np.empty(m, np.int8)))
                        rec[m], vs[m], ve[m], vk[m] = i, q, r, K_STRING
                        m += 1
                q = r
            elif c == 45 or (48 <= c <= 57):  # a number
                r = _number_end(data, q, e)
                inside = False
                for f in range(skip_s.shape[1]):
                    if skip_k[i, f] != 0 and skip_s[i, f] <= q < skip_e[i, f]:
                        inside = True
                if not inside and stop_at < 0:
                    if m == rec.shape[0]:
                        rec = np.concatenate((rec, np.empty(m, np.int64)))
                        vs = np.concatenate((vs, np.empty(m, np.int64)))
                        ve = np.concatenate((ve, np.empty(m, np.int64)))
                        vk = np.concatenate((vk, np.empty(m, np.int8)))
                    rec[m], vs[m], ve[m], vk[m] = i, q, r, K_NUMBER
                    m += 1
                q = r
            else:  # whitespace, ':', literals
                q += 1
    return rec[:m].copy(), vs[:m].copy(), ve[:m].copy(), vk[:m].copy(), 0


def scalar_values(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    ok: np.ndarray | None = None,
    skip_start: np.ndarray | None = None,
    skip_end: np.ndarray | None = None,
    skip_kind: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(record, start, end, kind) of every string (span with its quotes) and number value of
    the records where `ok`, leaving out values inside a skip span (n, k) whose kind is not 0."""
    n = len(starts)
    if ok is None:
        ok = np.ones(n, np.bool_)
    if skip_start is None:
        skip_start = np.zeros((n, 0), np.int64)
        skip_end = np.zeros((n, 0), np.int64)
        skip_kind = np.zeros((n, 0), np.int8)
    keys = np.zeros((1, 2), np.int64)
    rec, vs, ve, vk, _ = _walk(
        data, starts, ends, ok, np.ascontiguousarray(skip_start), np.ascontiguousarray(skip_end),
        np.ascontiguousarray(skip_kind), -1, keys,
    )  # fmt: skip
    return rec, vs, ve, vk


@njit(cache=True)
def _rewrite(data, starts, ends, rec, vs, ve, rep_off, rep_data):
    n = starts.shape[0]
    total = 0
    for i in range(n):
        total += ends[i] - starts[i] + 1
    for k in range(rec.shape[0]):
        total += rep_off[k + 1] - rep_off[k] - (ve[k] - vs[k])
    out = np.empty(total, np.uint8)
    ns = np.zeros(n, np.int64)
    ne = np.zeros(n, np.int64)
    o = 0
    k = 0
    m = rec.shape[0]
    for i in range(n):
        ns[i] = o
        p = starts[i]
        while k < m and rec[k] == i:
            ln = vs[k] - p
            out[o : o + ln] = data[p : vs[k]]
            o += ln
            ln = rep_off[k + 1] - rep_off[k]
            out[o : o + ln] = rep_data[rep_off[k] : rep_off[k + 1]]
            o += ln
            p = ve[k]
            k += 1
        ln = ends[i] - p
        out[o : o + ln] = data[p : ends[i]]
        o += ln
        ne[i] = o
        out[o] = 10
        o += 1
    return out[:o], ns, ne


def rewrite(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    rec: np.ndarray,
    vstart: np.ndarray,
    vend: np.ndarray,
    rep_off: np.ndarray,
    rep_data: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New records (one buffer, each record followed by a newline) with the value spans
    (sorted by record and position) replaced by the JSON texts rep k; returns (data, starts,
    ends)."""
    if len(rep_data) == 0:
        rep_data = np.zeros(1, np.uint8)
    return _rewrite(data, starts, ends, rec, vstart, vend, rep_off, rep_data)


@njit(cache=True)
def _key_path(data, keys, depth):
    total = 0
    for d in range(1, depth + 1):
        if keys[d, 1] > keys[d, 0] or keys[d, 0] > 0:
            total += 6 * (keys[d, 1] - keys[d, 0]) + 1
    out = np.empty(total + 1, np.uint8)
    o = 0
    first = True
    for d in range(1, depth + 1):
        if keys[d, 0] == 0 and keys[d, 1] == 0:
            continue
        if not first:
            out[o] = 46
            o += 1
        first = False
        o = _unescape(data, keys[d, 0], keys[d, 1], out, o)
    return out[:o].copy()


def paths_at(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, rec: np.ndarray, pos: np.ndarray
) -> list[str]:
    """The field path (keys joined by dots, array positions left out) of the value starting at
    `pos` in record `rec`, for each pair. Meant for the few values where something was found."""
    out = []
    empty = np.zeros((1, 0), np.int64)
    emptyk = np.zeros((1, 0), np.int8)
    for i, p in zip(rec.tolist(), pos.tolist(), strict=True):
        keys = np.zeros((520, 2), np.int64)
        _, _, _, _, depth = _walk(
            data, starts[i : i + 1], ends[i : i + 1], np.ones(1, np.bool_), empty, empty, emptyk,
            p, keys,
        )  # fmt: skip
        out.append(_key_path(data, keys, depth).tobytes().decode("utf-8", "replace"))
    return out
