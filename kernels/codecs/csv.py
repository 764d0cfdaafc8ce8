"""CSV codec (RFC 4180): quote-aware record split, cell spans, unquote, quote, splice.

Columns are addressed by header name. Like the NDJSON codec, records stay raw bytes; the policy's
columns are located as spans and masked values are spliced back, so untouched cells keep their
exact bytes (quoting included). An empty unquoted cell is null; ``""`` is the empty string.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from raymask.kernels._arrow import string_array, string_buffers, string_columns
from raymask.kernels.codecs._utf8 import seq_len
from raymask.kernels.codecs.spans import K_MISSING, K_NULL, K_STRING, Scan

__all__ = [
    "ERRORS",
    "split_records",
    "DuplicateColumn",
    "parse_header",
    "scan",
    "extract",
    "extract_columns",
    "quote",
    "select_columns",
]

E_COLUMNS, E_QUOTE, E_UTF8 = 1, 2, 3
ERRORS = {
    E_COLUMNS: "wrong number of columns",
    E_QUOTE: "misplaced or unclosed quote",
    E_UTF8: "invalid UTF-8",
}


@njit(cache=True)
def _split(data, base_line, quote_char):
    n = data.shape[0]
    cnt = 1
    for p in range(n):
        if data[p] == 10:
            cnt += 1
    starts = np.empty(cnt, np.int64)
    ends = np.empty(cnt, np.int64)
    lines = np.empty(cnt, np.int64)
    r = 0
    s = 0
    line = base_line
    inq = False
    p = 0
    rec_line = line
    while p <= n:
        if p == n or (data[p] == 10 and not inq):
            e = p
            if e > s and data[e - 1] == 13:
                e -= 1
            if e > s:
                starts[r] = s
                ends[r] = e
                lines[r] = rec_line
                r += 1
            s = p + 1
            line += 1
            rec_line = line
        elif data[p] == 10:
            line += 1
        elif data[p] == quote_char:
            inq = not inq
        p += 1
    return starts[:r], ends[:r], lines[:r]


def split_records(
    data: np.ndarray, base_line: int = 1, quote_char: str = '"'
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Records of a buffer that ends on a record boundary: (starts, ends, line of each start).

    A newline inside a quoted cell does not end a record; CRLF endings are accepted.
    """
    return _split(data, base_line, ord(quote_char))


def record_boundary(data: np.ndarray, quote_char: str = '"') -> int:
    """Position after the last newline that is outside quotes (-1 if none)."""
    return int(_boundary(data, ord(quote_char)))


@njit(cache=True)
def _boundary(data, quote_char):
    inq = False
    last = -1
    for p in range(data.shape[0]):
        c = data[p]
        if c == quote_char:
            inq = not inq
        elif c == 10 and not inq:
            last = p + 1
    return last


@njit(cache=True)
def _utf8_ok(data, s, e):
    q = s
    while q < e:
        c = data[q]
        if c < 128:
            q += 1
            continue
        k = seq_len(data, q, e)
        if k == 0:
            return False
        q += k
    return True


@njit(cache=True)
def _scan(data, starts, ends, ncols, colmap, nleaves, delim, quote_char):
    n = starts.shape[0]
    vstart = np.zeros((n, nleaves), np.int64)
    vend = np.zeros((n, nleaves), np.int64)
    vkind = np.zeros((n, nleaves), np.int8)
    err = np.zeros(n, np.int8)
    errpos = np.zeros(n, np.int64)
    for r in range(n):
        s = starts[r]
        e = ends[r]
        if not _utf8_ok(data, s, e):
            err[r] = E_UTF8
            continue
        p = s
        col = 0
        code = 0
        while True:
            cs = p
            if p < e and data[p] == quote_char:
                p += 1
                closed = False
                while p < e:
                    if data[p] == quote_char:
                        if p + 1 < e and data[p + 1] == quote_char:
                            p += 2
                            continue
                        closed = True
                        p += 1
                        break
                    p += 1
                if not closed or (p < e and data[p] != delim):
                    code = E_QUOTE
                    break
                kind = K_STRING
            else:
                while p < e and data[p] != delim:
                    if data[p] == quote_char:
                        code = E_QUOTE
                        break
                    p += 1
                if code != 0:
                    break
                kind = K_STRING if p > cs else K_NULL
            if col < ncols:
                lf = colmap[col]
                if lf >= 0:
                    vstart[r, lf] = cs
                    vend[r, lf] = p
                    vkind[r, lf] = kind
            col += 1
            if p >= e:
                break
            p += 1  # the delimiter
        if code == 0 and col != ncols:
            code = E_COLUMNS
        if code != 0:
            err[r] = code
            errpos[r] = p - s
            for j in range(nleaves):
                vkind[r, j] = K_MISSING
    return vstart, vend, vkind, err, errpos


class DuplicateColumn(ValueError):
    """A header names a column twice: a policy names columns, and only one of the two would be
    masked (the other would leave as it came)."""


def parse_header(line: bytes, delimiter: str = ",", quote_char: str = '"') -> list[str]:
    """Column names of a header line (once per file, so plain Python); DuplicateColumn when one
    is there twice."""
    import csv
    import io

    text = line.decode("utf-8").rstrip("\r\n")
    cols = next(csv.reader(io.StringIO(text), delimiter=delimiter, quotechar=quote_char))
    seen: set[str] = set()
    for c in cols:
        if c in seen:
            raise DuplicateColumn(f"the CSV header names column {c!r} twice")
        seen.add(c)
    return cols


def scan(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    header: list[str],
    fields: tuple[str, ...] | list[str],
    delimiter: str = ",",
    quote_char: str = '"',
) -> Scan:
    """Validate each record's column count and quoting, and locate the columns named `fields`."""
    pos = {name: i for i, name in enumerate(header)}
    colmap = np.full(len(header), -1, np.int64)
    for li, f in enumerate(fields):
        if f in pos:
            colmap[pos[f]] = li
    vs, ve, vk, err, errpos = _scan(
        data, starts, ends, len(header), colmap, len(fields), ord(delimiter), ord(quote_char)
    )
    return Scan(starts, ends, vs, ve, vk, err, errpos, np.full(len(starts), -1, np.int64))


@njit(cache=True)
def _extract(data, vstart, vend, vkind, quote_char):
    """Columns (n, m) of cell spans -> one buffer holding m string columns, record by record."""
    n, m = vstart.shape
    base = np.zeros(m + 1, np.int64)
    for i in range(n):
        for f in range(m):
            base[f + 1] += vend[i, f] - vstart[i, f]
    for f in range(m):
        base[f + 1] += base[f]
    out = np.empty(base[m] + 1, np.uint8)
    off = np.zeros((m, n + 1), np.int64)
    valid = np.zeros((m, n), np.bool_)
    pos = base[:m].copy()
    for i in range(n):
        for f in range(m):
            o = pos[f]
            if vkind[i, f] == K_STRING:
                s = vstart[i, f]
                e = vend[i, f]
                if e > s and data[s] == quote_char:
                    q = s + 1
                    while q < e - 1:
                        out[o] = data[q]
                        o += 1
                        if data[q] == quote_char:
                            q += 2
                        else:
                            q += 1
                else:
                    for q in range(s, e):
                        out[o] = data[q]
                        o += 1
                valid[f, i] = True
            pos[f] = o
            off[f, i + 1] = o - base[f]
    return off, out, valid, base, pos


def extract(
    data: np.ndarray, vstart: np.ndarray, vend: np.ndarray, vkind: np.ndarray, quote_char: str = '"'
) -> pa.Array:
    """One column's cells as a large_string array, unquoted; empty unquoted cells are null."""
    return extract_columns(data, vstart[:, None], vend[:, None], vkind[:, None], quote_char)[0]


def extract_columns(
    data: np.ndarray, vstart: np.ndarray, vend: np.ndarray, vkind: np.ndarray, quote_char: str = '"'
) -> list[pa.Array]:
    """`extract` for the m columns of (n, m) span arrays, in one pass over the records."""
    off, out, valid, base, pos = _extract(
        data,
        np.ascontiguousarray(vstart),
        np.ascontiguousarray(vend),
        np.ascontiguousarray(vkind),
        ord(quote_char),
    )
    return string_columns(off, out, valid, base, pos)


@njit(cache=True)
def _quote(offsets, data, valid, delim, quote_char):
    n = offsets.shape[0] - 1
    cap = 0
    for i in range(n):
        cap += 2 * (offsets[i + 1] - offsets[i]) + 2
    out = np.empty(cap + 1, np.uint8)
    off = np.zeros(n + 1, np.int64)
    o = 0
    for i in range(n):
        if valid[i]:
            s = offsets[i]
            e = offsets[i + 1]
            need = e == s  # the empty string must be quoted to stay distinct from null
            for q in range(s, e):
                c = data[q]
                if c == delim or c == quote_char or c == 10 or c == 13:
                    need = True
                    break
            if need:
                out[o] = quote_char
                o += 1
            for q in range(s, e):
                out[o] = data[q]
                o += 1
                if data[q] == quote_char:
                    out[o] = quote_char
                    o += 1
            if need:
                out[o] = quote_char
                o += 1
        off[i + 1] = o
    return off, out[:o].copy()


def quote(
    values: pa.Array, delimiter: str = ",", quote_char: str = '"'
) -> tuple[np.ndarray, np.ndarray]:
    """CSV text of each value, quoted only when needed; null is the empty cell."""
    b = string_buffers(values)
    return _quote(b.offsets, b.data, b.valid, ord(delimiter), ord(quote_char))


@njit(cache=True)
def _select(data, emit, vstart, vend, vkind, edit, rep_off, rep_data, delim, quote_char):
    n = vstart.shape[0]
    k = vstart.shape[1]
    total = 0
    for i in range(n):
        if emit[i]:
            total += k + 3
            for f in range(k):
                if edit[i, f]:
                    total += rep_off[f, i + 1] - rep_off[f, i]
                else:
                    total += vend[i, f] - vstart[i, f]
    out = np.empty(max(total, 1), np.uint8)
    off = np.zeros(n + 1, np.int64)
    o = 0
    for i in range(n):
        if emit[i]:
            start = o
            for f in range(k):
                if f > 0:
                    out[o] = delim
                    o += 1
                if edit[i, f]:
                    for q in range(rep_off[f, i], rep_off[f, i + 1]):
                        out[o] = rep_data[q]
                        o += 1
                elif vkind[i, f] != K_MISSING:
                    for q in range(vstart[i, f], vend[i, f]):
                        out[o] = data[q]
                        o += 1
            if o == start:  # a lone null cell must not become a blank line (no record)
                out[o] = quote_char
                out[o + 1] = quote_char
                o += 2
            out[o] = 10
            o += 1
        off[i + 1] = o
    return off, out[:o]


def select_columns(
    data: np.ndarray,
    sc: Scan,
    columns: list[int],
    emit: np.ndarray,
    edit: np.ndarray,
    reps: list[tuple[np.ndarray, np.ndarray]],
    delimiter: str = ",",
    quote_char: str = '"',
) -> pa.Array:
    """Records holding only the policy columns `columns` (``unknown_fields: drop``).

    edit[:, k] and reps[k] belong to columns[k]; unedited cells keep their bytes.
    """
    from raymask.kernels.codecs.spans import pack_replacements

    cols = np.array(columns, np.int64)
    rep_off, rep_data = pack_replacements(reps, len(sc.starts))
    off, out = _select(
        data, emit, np.ascontiguousarray(sc.vstart[:, cols]), np.ascontiguousarray(sc.vend[:, cols]),
        np.ascontiguousarray(sc.vkind[:, cols]), np.ascontiguousarray(edit), rep_off, rep_data, ord(delimiter), ord(quote_char),
    )  # fmt: skip
    return string_array(off, out, None, binary=True)
