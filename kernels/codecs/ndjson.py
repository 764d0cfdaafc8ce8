"""NDJSON codec: validate, locate the policy's fields, extract them, splice masked values back.

A record stays as its raw bytes from decode to encode. One Numba pass per batch validates every
record against RFC 8259 (grammar, string escapes, UTF-8) and records, for each policy field, the
byte span and the JSON kind of its value. Extraction turns those spans into Arrow columns; the
encoder splices the masked values into the original bytes, so every field the policy does not
touch leaves byte-identical. No Python object is made per record.

The scan has two tiers. `_scan_fast` takes the records it can vouch for (valid ones, in
practice all but the broken few): one loop turn per object member, string bodies skipped eight
bytes at a time (codecs/_swar.py), no error bookkeeping; about twice the speed of the exact
scanner (docs/benchmarks.md). Every other record goes to `_scan`, the exact state machine,
which finds the dead-letter reason and its byte column. So the results are `_scan`'s alone;
tests compare the two on random, mutated and broken batches.

Field names are compared after unescaping, so ``"em\\u0061il"`` is the field ``email``. A policy
field that occurs twice in one object is an error for that record (a consumer that takes the
last duplicate would otherwise see a clear value).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from raymask.kernels._arrow import string_array, string_buffers, string_columns
from raymask.kernels._mem import borrow
from raymask.kernels.codecs._swar import (
    LITTLE_ENDIAN,
    byte_stop,
    copy,
    copy_ahead,
    count_byte,
    escape_stop,
    first_byte,
    has_byte,
    load_u64,
    string_stop,
)
from raymask.kernels.codecs._utf8 import seq_len
from raymask.kernels.codecs.paths import PathTree
from raymask.kernels.codecs.spans import (
    K_ARRAY,
    K_FALSE,
    K_MISSING,
    K_NULL,
    K_NUMBER,
    K_OBJECT,
    K_STRING,
    K_TRUE,
    KIND_NAMES,
    Scan,
    pack_replacements,
    splice,
)

__all__ = [
    "KIND_NAMES",
    "ERRORS",
    "Scan",
    "split_records",
    "split_counted",
    "count_lines",
    "scan",
    "extract",
    "extract_columns",
    "quote",
    "splice",
    "build_objects",
]


E_SYNTAX, E_NOT_OBJECT, E_UTF8, E_DUP, E_DEPTH = 1, 2, 3, 4, 5
ERRORS = {
    E_SYNTAX: "invalid JSON",
    E_NOT_OBJECT: "record is not a JSON object",
    E_UTF8: "invalid UTF-8",
    E_DUP: "field occurs twice",
    E_DEPTH: "nesting deeper than 512 levels",
}
MAX_DEPTH = 512

# scanner states
_S_VALUE, _S_KEY_OR_CLOSE, _S_KEY, _S_COLON, _S_COMMA_OR_CLOSE, _S_VALUE_OR_CLOSE = range(6)


_NL = np.uint64(0x0A0A0A0A0A0A0A0A)


@njit(cache=True)
def _split(data, base_line):
    """Records are the non-blank lines; returns (starts, ends, line numbers, newlines seen).

    One pass: each newline is found eight bytes at a time (a word without one costs a load and
    four operations), and the lines found so far go into arrays that double when full. Before
    this, numpy found the newlines (`flatnonzero(data == 10)`: a byte mask as big as the data,
    then two passes over it) and a third pass counted them for the line counter."""
    nd = data.shape[0]
    words = nd if LITTLE_ENDIAN else 0  # 0: no word loads
    cap = max(16, nd // 128)
    starts = np.empty(cap, np.int64)
    ends = np.empty(cap, np.int64)
    lines = np.empty(cap, np.int64)
    r = 0
    i = 0  # newlines before this line
    s = 0
    while True:
        q = s
        e = -1
        while q + 8 <= words:
            m = byte_stop(load_u64(data, q), _NL)
            if m != 0:
                e = q + first_byte(m)
                break
            q += 8
        if e < 0:
            while q < nd:
                if data[q] == 10:
                    e = q
                    break
                q += 1
        last = e < 0
        if last:
            e = nd
        p = s
        while p < e and (data[p] == 32 or data[p] == 9 or data[p] == 13):
            p += 1
        if p < e:  # not blank
            if r == cap:
                cap *= 2
                starts = _grown(starts, cap)
                ends = _grown(ends, cap)
                lines = _grown(lines, cap)
            starts[r] = s
            ends[r] = e
            lines[r] = base_line + i
            r += 1
        if last:
            return starts[:r], ends[:r], lines[:r], i
        i += 1
        s = e + 1


@njit(cache=True, inline="always")
def _grown(a, cap):
    b = np.empty(cap, a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def count_lines(data):
    """Newlines in `data` (how far it moves a line counter)."""
    return count_byte(data, 0, data.shape[0], 10)


@njit(cache=True)
def last_newline(data):
    """Position after the last newline in `data`, or -1 when there is none."""
    for p in range(data.shape[0] - 1, -1, -1):
        if data[p] == 10:
            return p + 1
    return -1


def split_records(
    data: np.ndarray, base_line: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a buffer of whole lines into records: (starts, ends, 1-based line numbers).

    Blank lines are not records; a trailing newline does not start one.
    """
    return split_counted(data, base_line)[:3]


def split_counted(
    data: np.ndarray, base_line: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """`split_records` and, in the same pass, the number of newlines in `data`."""
    starts, ends, lines, n = _split(np.ascontiguousarray(data), base_line)
    return starts, ends, lines, int(n)


# bytes a JSON string body needs to look at: control characters, '"', '\\' and non-ASCII
_STRING_SPECIAL = np.zeros(256, np.uint8)
_STRING_SPECIAL[:32] = 1
_STRING_SPECIAL[34] = 1
_STRING_SPECIAL[92] = 1
_STRING_SPECIAL[128:] = 1
# bytes a JSON string must escape: control characters, '"' and '\\'
_ESCAPE = _STRING_SPECIAL.copy()
_ESCAPE[128:] = 0


@njit(cache=True, inline="always")
def _scan_string(data, p, end):
    """data[p] is '"'; returns the position after the closing quote, -1 (syntax) or -3 (UTF-8)."""
    q = p + 1
    special = _STRING_SPECIAL
    while q < end:
        c = data[q]
        if special[c] == 0:  # plain ASCII: one table look-up per byte
            q += 1
            continue
        if c == 34:
            return q + 1
        if c == 92:
            if q + 1 >= end:
                return -1
            x = data[q + 1]
            if (
                x == 34
                or x == 92
                or x == 47
                or x == 98
                or x == 102
                or x == 110
                or x == 114
                or x == 116
            ):
                q += 2
            elif x == 117:
                if q + 6 > end:
                    return -1
                for j in range(q + 2, q + 6):
                    h = data[j]
                    if not ((48 <= h <= 57) or (65 <= h <= 70) or (97 <= h <= 102)):
                        return -1
                q += 6
            else:
                return -1
        elif c < 32:
            return -1
        elif c < 128:
            q += 1
        else:
            k = seq_len(data, q, end)
            if k == 0:
                return -3
            q += k
    return -1


@njit(cache=True, inline="always")
def _scan_number(data, p, end):
    q = p
    if data[q] == 45:
        q += 1
    if q >= end:
        return -1
    c = data[q]
    if c == 48:
        q += 1
    elif 49 <= c <= 57:
        while q < end and 48 <= data[q] <= 57:
            q += 1
    else:
        return -1
    if q < end and data[q] == 46:
        q += 1
        if q >= end or not (48 <= data[q] <= 57):
            return -1
        while q < end and 48 <= data[q] <= 57:
            q += 1
    if q < end and (data[q] == 101 or data[q] == 69):
        q += 1
        if q < end and (data[q] == 43 or data[q] == 45):
            q += 1
        if q >= end or not (48 <= data[q] <= 57):
            return -1
        while q < end and 48 <= data[q] <= 57:
            q += 1
    return q


_TRUE = np.frombuffer(b"true", np.uint8)
_FALSE = np.frombuffer(b"false", np.uint8)
_NULL = np.frombuffer(b"null", np.uint8)


@njit(cache=True, inline="always")
def _literal(data, p, end, lit):
    """Position after the literal `lit` at data[p:], or -1 when it is not there."""
    n = lit.shape[0]
    if p + n > end:
        return -1
    for j in range(n):
        if data[p + j] != lit[j]:
            return -1
    return p + n


@njit(cache=True)
def _hexval(h):
    if h <= 57:
        return h - 48
    if h <= 70:
        return h - 55
    return h - 87


@njit(cache=True)
def _put_cp(out, o, cp):
    if cp < 0x80:
        out[o] = cp
        return o + 1
    if cp < 0x800:
        out[o] = 0xC0 | (cp >> 6)
        out[o + 1] = 0x80 | (cp & 0x3F)
        return o + 2
    if cp < 0x10000:
        out[o] = 0xE0 | (cp >> 12)
        out[o + 1] = 0x80 | ((cp >> 6) & 0x3F)
        out[o + 2] = 0x80 | (cp & 0x3F)
        return o + 3
    out[o] = 0xF0 | (cp >> 18)
    out[o + 1] = 0x80 | ((cp >> 12) & 0x3F)
    out[o + 2] = 0x80 | ((cp >> 6) & 0x3F)
    out[o + 3] = 0x80 | (cp & 0x3F)
    return o + 4


@njit(cache=True)
def _unescape(data, s, e, out, o):
    """Decode the JSON string body data[s:e] (already validated) into out[o:]; returns the end.

    A lone UTF-16 surrogate becomes U+FFFD so the result is always valid UTF-8.
    """
    q = s
    while q < e:
        c = data[q]
        if c != 92:
            out[o] = c
            o += 1
            q += 1
            continue
        x = data[q + 1]
        if x == 117:
            cp = (
                (_hexval(data[q + 2]) << 12)
                | (_hexval(data[q + 3]) << 8)
                | (_hexval(data[q + 4]) << 4)
                | _hexval(data[q + 5])
            )
            q += 6
            if 0xD800 <= cp <= 0xDBFF:
                if q + 6 <= e and data[q] == 92 and data[q + 1] == 117:
                    lo = (
                        (_hexval(data[q + 2]) << 12)
                        | (_hexval(data[q + 3]) << 8)
                        | (_hexval(data[q + 4]) << 4)
                        | _hexval(data[q + 5])
                    )
                    if 0xDC00 <= lo <= 0xDFFF:
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
                        q += 6
                    else:
                        cp = 0xFFFD
                else:
                    cp = 0xFFFD
            elif 0xDC00 <= cp <= 0xDFFF:
                cp = 0xFFFD
            o = _put_cp(out, o, cp)
        else:
            if x == 98:
                out[o] = 8
            elif x == 102:
                out[o] = 12
            elif x == 110:
                out[o] = 10
            elif x == 114:
                out[o] = 13
            elif x == 116:
                out[o] = 9
            else:
                out[o] = x
            o += 1
            q += 2
    return o


@njit(cache=True, inline="always")
def _has_escape(data, s, e):
    """Whether the JSON string body data[s:e] holds a backslash."""
    for q in range(s, e):
        if data[q] == 92:
            return True
    return False


@njit(cache=True, inline="always")
def _match_key(
    data, s, e, parent, ch_start, ch_count, children, key_start, key_len, keybytes, keybuf
):
    """Child of `parent` whose name equals the JSON key body data[s:e], or -1."""
    if _has_escape(data, s, e):
        # Each unit (a plain byte, or one escape sequence) decodes to 1-3 bytes. A key with more
        # units than the longest policy key has bytes cannot match; any other fits in keybuf
        # (3 * max_key + 8 bytes).
        units = 0
        q = s
        while q < e:
            if data[q] == 92:
                q += 6 if data[q + 1] == 117 else 2
            else:
                q += 1
            units += 1
        if 3 * units + 8 > keybuf.shape[0]:
            return -1
        kl = _unescape(data, s, e, keybuf, 0)
        src = keybuf
        ks = 0
    else:
        kl = e - s
        src = data
        ks = s
    for ci in range(ch_start[parent], ch_start[parent] + ch_count[parent]):
        c = children[ci]
        if key_len[c] != kl:
            continue
        same = True
        for j in range(kl):
            if keybytes[key_start[c] + j] != src[ks + j]:
                same = False
                break
        if same:
            return c
    return -1


@njit(cache=True)
def _scan(  # the exact scanner: `scan` sends it the records `_scan_fast` does not vouch for
    data,
    starts,
    ends,
    ch_start,
    ch_count,
    children,
    key_start,
    key_len,
    keybytes,
    node_leaf,
    nleaves,
    max_key,
    stop_early,
):
    n = starts.shape[0]
    vstart = np.zeros((n, nleaves), np.int64)
    vend = np.zeros((n, nleaves), np.int64)
    vkind = np.zeros((n, nleaves), np.int8)
    err = np.zeros(n, np.int8)
    errpos = np.zeros(n, np.int64)
    errleaf = np.full(n, -1, np.int64)
    st_type = np.zeros(MAX_DEPTH, np.int8)
    st_node = np.zeros(MAX_DEPTH, np.int64)
    keybuf = np.empty(max(max_key, 1) * 3 + 8, np.uint8)
    for r in range(n):
        p = starts[r]
        end = ends[r]
        depth = 0
        state = _S_VALUE
        pending = 0  # node of the next value; the record itself is node 0
        leaf_open = -1
        leaf_depth = -1
        top_done = False
        code = 0
        found = 0
        while True:
            while p < end:
                c = data[p]
                if c == 32 or c == 9 or c == 13 or c == 10:
                    p += 1
                else:
                    break
            if p >= end:
                if not top_done:
                    code = E_SYNTAX
                break
            if top_done:
                code = E_SYNTAX
                break
            c = data[p]
            value_done = False
            if state == _S_VALUE or state == _S_VALUE_OR_CLOSE:
                if state == _S_VALUE_OR_CLOSE and c == 93:
                    depth -= 1
                    if leaf_open >= 0 and leaf_depth == depth:
                        vend[r, leaf_open] = p + 1
                        leaf_open = -1
                        found += 1
                    p += 1
                    value_done = True
                else:
                    lf = -1
                    if pending >= 0 and leaf_open < 0:
                        lf = node_leaf[pending]
                        if lf >= 0 and vkind[r, lf] != 0:
                            code = E_DUP
                            errleaf[r] = lf
                            break
                    if depth == 0 and c != 123:
                        code = E_NOT_OBJECT
                        break
                    if c == 123 or c == 91:
                        if depth >= MAX_DEPTH:
                            code = E_DEPTH
                            break
                        if lf >= 0:
                            vstart[r, lf] = p
                            vkind[r, lf] = K_OBJECT if c == 123 else K_ARRAY
                            leaf_open = lf
                            leaf_depth = depth
                        st_type[depth] = 1 if c == 123 else 2
                        if c == 123 and pending >= 0 and lf < 0 and leaf_open < 0:
                            st_node[depth] = pending
                        else:
                            st_node[depth] = -1
                        depth += 1
                        p += 1
                        if c == 123:
                            state = _S_KEY_OR_CLOSE
                        else:
                            state = _S_VALUE_OR_CLOSE
                            pending = -1
                    else:
                        if c == 34:
                            q = _scan_string(data, p, end)
                            kind = K_STRING
                        elif c == 45 or (48 <= c <= 57):
                            q = _scan_number(data, p, end)
                            kind = K_NUMBER
                        elif c == 116:
                            q = _literal(data, p, end, _TRUE)
                            kind = K_TRUE
                        elif c == 102:
                            q = _literal(data, p, end, _FALSE)
                            kind = K_FALSE
                        elif c == 110:
                            q = _literal(data, p, end, _NULL)
                            kind = K_NULL
                        else:
                            q = -1
                            kind = 0
                        if q < 0:
                            code = E_UTF8 if q == -3 else E_SYNTAX
                            break
                        if lf >= 0:
                            vstart[r, lf] = p
                            vend[r, lf] = q
                            vkind[r, lf] = kind
                            found += 1
                        p = q
                        value_done = True
            elif state == _S_KEY_OR_CLOSE or state == _S_KEY:
                if c == 125 and state == _S_KEY_OR_CLOSE:
                    depth -= 1
                    if leaf_open >= 0 and leaf_depth == depth:
                        vend[r, leaf_open] = p + 1
                        leaf_open = -1
                        found += 1
                    p += 1
                    value_done = True
                elif c == 34:
                    q = _scan_string(data, p, end)
                    if q < 0:
                        code = E_UTF8 if q == -3 else E_SYNTAX
                        break
                    parent = st_node[depth - 1]
                    if parent >= 0:
                        pending = _match_key(
                            data,
                            p + 1,
                            q - 1,
                            parent,
                            ch_start,
                            ch_count,
                            children,
                            key_start,
                            key_len,
                            keybytes,
                            keybuf,
                        )
                    else:
                        pending = -1
                    p = q
                    state = _S_COLON
                else:
                    code = E_SYNTAX
                    break
            elif state == _S_COLON:
                if c != 58:
                    code = E_SYNTAX
                    break
                p += 1
                state = _S_VALUE
            else:  # _S_COMMA_OR_CLOSE
                t = st_type[depth - 1]
                if c == 44:
                    p += 1
                    if t == 1:
                        state = _S_KEY
                    else:
                        state = _S_VALUE
                        pending = -1
                elif (c == 125 and t == 1) or (c == 93 and t == 2):
                    depth -= 1
                    if leaf_open >= 0 and leaf_depth == depth:
                        vend[r, leaf_open] = p + 1
                        leaf_open = -1
                        found += 1
                    p += 1
                    value_done = True
                else:
                    code = E_SYNTAX
                    break
            if value_done:
                if depth == 0:
                    top_done = True
                else:
                    state = _S_COMMA_OR_CLOSE
            if stop_early and found == nleaves:
                break  # every field located; the rest of the record is validated later
        if code != 0:
            err[r] = code
            errpos[r] = p - starts[r]
            for j in range(nleaves):
                vkind[r, j] = 0
    return vstart, vend, vkind, err, errpos, errleaf


@njit(cache=True, inline="always")
def _skip_ws(data, p, end):
    if p < end and data[p] > 32:  # compact JSON: no whitespace between tokens
        return p
    while p < end:
        c = data[p]
        if c == 32 or c == 9 or c == 13 or c == 10:
            p += 1
        else:
            break
    return p


@njit(cache=True, inline="always")
def _word(data, s, n, nd):
    """The first min(n, 8) bytes of data[s:] as a little-endian uint64 (zero-padded); one
    unaligned load when s + 8 <= nd."""
    if s + 8 <= nd:
        w = load_u64(data, s)
        if n < 8:
            w &= (np.uint64(1) << np.uint64(8 * n)) - np.uint64(1)
        return w
    w = np.uint64(0)
    for j in range(min(n, 8)):
        w |= np.uint64(data[s + j]) << np.uint64(8 * j)
    return w


@njit(cache=True, inline="always")
def _fast_string(data, q, end, nd):
    """Body of a JSON string from q (after the opening quote): (position after the closing
    quote, whether it holds an escape), or (-1, _) for anything the exact scanner must judge.

    Runs of plain bytes are skipped eight at a time; only a stop byte ('"', '\\', control,
    non-ASCII) is looked at one by one. The word loop may read past `end` (never past the
    buffer): a stop found at or after `end` is a failure, which the exact scanner then locates.
    """
    esc = False
    while True:
        hit = False
        while q + 8 <= nd:
            m = string_stop(load_u64(data, q))
            if m != 0:
                q += first_byte(m)
                hit = True
                break
            q += 8
        if not hit:
            while q < end and _STRING_SPECIAL[data[q]] == 0:
                q += 1
        if q >= end:
            return -1, esc
        c = data[q]
        if c == 34:
            return q + 1, esc
        if c == 92:
            if q + 1 >= end:
                return -1, esc
            x = data[q + 1]
            if (
                x == 34
                or x == 92
                or x == 47
                or x == 98
                or x == 102
                or x == 110
                or x == 114
                or x == 116
            ):
                q += 2
            elif x == 117:
                if q + 6 > end:
                    return -1, esc
                for j in range(q + 2, q + 6):
                    h = data[j]
                    if not ((48 <= h <= 57) or (65 <= h <= 70) or (97 <= h <= 102)):
                        return -1, esc
                q += 6
            else:
                return -1, esc
            esc = True
        elif c < 128:  # a control character
            return -1, esc
        else:
            k = seq_len(data, q, end)
            if k == 0:
                return -1, esc
            q += k


@njit(cache=True)
def _scan_fast(
    data,
    starts,
    ends,
    ch_start,
    ch_count,
    children,
    key_start,
    key_len,
    keybytes,
    node_leaf,
    nleaves,
    max_key,
    stop_early,
):
    """Fast path of `scan` for records that are valid: the same spans and kinds as `_scan`
    wherever it returns redo[r] False. A record it cannot vouch for (any error, a duplicate
    policy field, nesting at the limit) gets redo[r] True and is left for `_scan`, which
    locates the reason. Compared with `_scan`: one loop turn per object member (key, colon and
    value together) instead of one per token, string bodies skipped eight bytes at a time, and
    no error bookkeeping."""
    n = starts.shape[0]
    nd = data.shape[0] if LITTLE_ENDIAN else 0  # 0: no word loads
    data = borrow(data)  # no reference counts per helper call (see borrow)
    ch_start, ch_count, children = borrow(ch_start), borrow(ch_count), borrow(children)
    key_start, key_len, keybytes = borrow(key_start), borrow(key_len), borrow(keybytes)
    vstart = np.zeros((n, nleaves), np.int64)
    vend = np.zeros((n, nleaves), np.int64)
    vkind = np.zeros((n, nleaves), np.int8)
    redo = np.zeros(n, np.bool_)
    st_type = np.zeros(MAX_DEPTH, np.int8)  # 1 object, 2 array
    st_node = np.zeros(MAX_DEPTH, np.int64)
    keybuf = np.empty(max(max_key, 1) * 3 + 8, np.uint8)
    kword = np.empty(key_len.shape[0], np.uint64)  # each node's key: its first 8 bytes
    for i in range(key_len.shape[0]):
        kword[i] = _word(keybytes, key_start[i], key_len[i], 0)
    for r in range(n):
        end = ends[r]
        p = _skip_ws(data, starts[r], end)
        if p >= end or data[p] != 123:
            redo[r] = True
            continue
        st_type[0] = 1
        st_node[0] = 0
        depth = 1
        p += 1
        leaf_open = -1
        leaf_depth = -1
        found = 0
        ok = False
        first = True  # just after an opening bracket
        while True:
            # a member of the object (or an element of the array) open at depth - 1
            p = _skip_ws(data, p, end)
            if p >= end:
                break
            c = data[p]
            t = st_type[depth - 1]
            closing = first and ((c == 125 and t == 1) or (c == 93 and t == 2))
            if not closing:
                pending = -1
                if t == 1:
                    if c != 34:
                        break
                    q, esc = _fast_string(data, p + 1, end, nd)
                    if q < 0:
                        break
                    parent = st_node[depth - 1]
                    if parent >= 0:
                        if esc:
                            pending = _match_key(
                                data,
                                p + 1,
                                q - 1,
                                parent,
                                ch_start,
                                ch_count,
                                children,
                                key_start,
                                key_len,
                                keybytes,
                                keybuf,
                            )
                        else:
                            # compare the first 8 bytes as one word, the rest (if any) bytewise
                            kl = q - 2 - p
                            w = _word(data, p + 1, kl, nd)
                            for ci in range(ch_start[parent], ch_start[parent] + ch_count[parent]):
                                ch = children[ci]
                                if key_len[ch] != kl or kword[ch] != w:
                                    continue
                                ks = key_start[ch]
                                j = 8
                                while j < kl and keybytes[ks + j] == data[p + 1 + j]:
                                    j += 1
                                if j >= kl:
                                    pending = ch
                                    break
                    p = _skip_ws(data, q, end)
                    if p >= end or data[p] != 58:
                        break
                    p = _skip_ws(data, p + 1, end)
                    if p >= end:
                        break
                    c = data[p]
                lf = -1
                if pending >= 0 and leaf_open < 0:
                    lf = node_leaf[pending]
                    if lf >= 0 and vkind[r, lf] != 0:
                        break  # a duplicate policy field
                if c == 123 or c == 91:
                    if depth >= MAX_DEPTH:
                        break
                    if lf >= 0:
                        vstart[r, lf] = p
                        vkind[r, lf] = K_OBJECT if c == 123 else K_ARRAY
                        leaf_open = lf
                        leaf_depth = depth
                    if c == 123:
                        st_type[depth] = 1
                        st_node[depth] = pending if (pending >= 0 and lf < 0) else -1
                    else:
                        st_type[depth] = 2
                        st_node[depth] = -1
                    depth += 1
                    p += 1
                    first = True
                    continue
                if c == 34:
                    q, esc = _fast_string(data, p + 1, end, nd)
                    kind = K_STRING
                elif c == 45 or (48 <= c <= 57):
                    q = _scan_number(data, p, end)
                    kind = K_NUMBER
                elif c == 116:
                    q = _literal(data, p, end, _TRUE)
                    kind = K_TRUE
                elif c == 102:
                    q = _literal(data, p, end, _FALSE)
                    kind = K_FALSE
                elif c == 110:
                    q = _literal(data, p, end, _NULL)
                    kind = K_NULL
                else:
                    break
                if q < 0:
                    break
                if lf >= 0:
                    vstart[r, lf] = p
                    vend[r, lf] = q
                    vkind[r, lf] = kind
                    found += 1
                    if stop_early and found == nleaves:
                        ok = True
                        break
                p = q
            # after a value (or at an opening bracket's partner): a comma, or closing brackets
            more = False
            while True:
                if closing:
                    closing = False
                else:
                    p = _skip_ws(data, p, end)
                    if p >= end:
                        break
                    c = data[p]
                    t = st_type[depth - 1]
                    if c == 44:
                        p += 1
                        first = False
                        more = True
                        break
                    if not ((c == 125 and t == 1) or (c == 93 and t == 2)):
                        break
                depth -= 1
                p += 1
                if leaf_open >= 0 and leaf_depth == depth:
                    vend[r, leaf_open] = p
                    leaf_open = -1
                    found += 1
                    if stop_early and found == nleaves:
                        ok = True
                        break
                if depth == 0:
                    ok = _skip_ws(data, p, end) == end
                    break
            if not more:
                break
        if not ok:
            redo[r] = True
    return vstart, vend, vkind, redo


def scan(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    tree: PathTree,
    locate_only: bool = False,
) -> Scan:
    """Validate each record data[starts[i]:ends[i]] and locate the tree's fields in it.

    With `locate_only`, a record's scan stops once every field is found: the bytes after the
    last field are not validated (the router locates the key this way; the worker validates the
    whole record later).

    Records go through `_scan_fast` first; those it does not vouch for (broken ones, mostly)
    are scanned again by `_scan`, the exact state machine that locates the reason, so results
    are those of `_scan` alone."""
    nleaves = len(tree.paths)
    args = (
        tree.ch_start, tree.ch_count, tree.children, tree.key_start, tree.key_len,
        tree.keybytes, tree.leaf, nleaves, tree.max_key_len, locate_only,
    )  # fmt: skip
    if locate_only and nleaves == 0:  # `_scan` stops after the first token: nothing to speed up
        return Scan(starts, ends, *_scan(data, starts, ends, *args))
    vs, ve, vk, redo = _scan_fast(data, starts, ends, *args)
    err = np.zeros(len(starts), np.int8)
    pos = np.zeros(len(starts), np.int64)
    lf = np.full(len(starts), -1, np.int64)
    if redo.any():
        idx = np.flatnonzero(redo)
        vs[idx], ve[idx], vk[idx], err[idx], pos[idx], lf[idx] = _scan(
            data, starts[idx], ends[idx], *args
        )
    return Scan(starts, ends, vs, ve, vk, err, pos, lf)


@njit(cache=True)
def _extract(data, vstart, vend, vkind):
    """Columns (n, m) of spans -> one buffer holding m string columns, filled record by record
    so that each record's bytes are read while they are in cache (one pass for all fields,
    instead of one cache miss per record and field)."""
    n, m = vstart.shape
    base = np.zeros(m + 1, np.int64)
    for i in range(n):
        for f in range(m):
            k = vkind[i, f]
            if k != K_MISSING and k != K_NULL:
                base[f + 1] += vend[i, f] - vstart[i, f]
    for f in range(m):
        base[f + 1] += base[f]
    out = np.empty(base[m] + 1, np.uint8)
    off = np.zeros((m, n + 1), np.int64)
    valid = np.zeros((m, n), np.bool_)
    pos = base[:m].copy()
    data, ob = borrow(data), borrow(out)  # no reference counts per copy; `out` is returned
    for i in range(n):
        for f in range(m):
            k = vkind[i, f]
            o = pos[f]
            if k == K_STRING:
                s = vstart[i, f] + 1
                e = vend[i, f] - 1
                if not has_byte(data, s, e, 92):
                    copy(ob, o, data, s, e - s)
                    o += e - s
                else:
                    o = _unescape(data, s, e, ob, o)
                valid[f, i] = True
            elif k != K_MISSING and k != K_NULL:
                copy(ob, o, data, vstart[i, f], vend[i, f] - vstart[i, f])
                o += vend[i, f] - vstart[i, f]
                valid[f, i] = True
            pos[f] = o
            off[f, i + 1] = o - base[f]
    return off, out, valid, base, pos


def extract(data: np.ndarray, vstart: np.ndarray, vend: np.ndarray, vkind: np.ndarray) -> pa.Array:
    """One field's values as a large_string array: strings unescaped, numbers, booleans,
    objects and arrays as their JSON text, null where the value is null or missing."""
    return extract_columns(data, vstart[:, None], vend[:, None], vkind[:, None])[0]


def extract_columns(
    data: np.ndarray, vstart: np.ndarray, vend: np.ndarray, vkind: np.ndarray
) -> list[pa.Array]:
    """`extract` for the m columns of (n, m) span arrays, in one pass over the records."""
    off, out, valid, base, pos = _extract(
        data, np.ascontiguousarray(vstart), np.ascontiguousarray(vend), np.ascontiguousarray(vkind)
    )
    return string_columns(off, out, valid, base, pos)


@njit(cache=True)
def _quote(offsets, data, valid, raw):
    n = offsets.shape[0] - 1
    cap = 0
    for i in range(n):
        cap += 6 * (offsets[i + 1] - offsets[i]) + 4
    out = np.empty(cap + 8, np.uint8)  # 8 bytes of slack for `copy_ahead`
    off = np.zeros(n + 1, np.int64)
    hexd = np.array([48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 97, 98, 99, 100, 101, 102], np.uint8)
    data, ob = borrow(data), borrow(out)  # no reference counts per copy; `out` is returned
    o = 0
    for i in range(n):
        if not valid[i]:
            out[o] = 110
            out[o + 1] = 117
            out[o + 2] = 108
            out[o + 3] = 108
            o += 4
        elif raw[i]:
            ln = offsets[i + 1] - offsets[i]
            copy_ahead(ob, o, data, offsets[i], ln)
            o += ln
        else:
            out[o] = 34
            o += 1
            # most values need no escape: find out a word at a time, then copy them as a block
            s = offsets[i]
            e = offsets[i + 1]
            q = s
            while q + 8 <= e and escape_stop(load_u64(data, q)) == 0:
                q += 8
            while q < e and _ESCAPE[data[q]] == 0:
                q += 1
            copy_ahead(ob, o, data, s, q - s)
            o += q - s
            for t in range(q, e):
                c = data[t]
                if c == 34 or c == 92:
                    out[o] = 92
                    out[o + 1] = c
                    o += 2
                elif c < 32:
                    out[o] = 92
                    if c == 10:
                        out[o + 1] = 110
                        o += 2
                    elif c == 13:
                        out[o + 1] = 114
                        o += 2
                    elif c == 9:
                        out[o + 1] = 116
                        o += 2
                    else:
                        out[o + 1] = 117
                        out[o + 2] = 48
                        out[o + 3] = 48
                        out[o + 4] = hexd[c >> 4]
                        out[o + 5] = hexd[c & 15]
                        o += 6
                else:
                    out[o] = c
                    o += 1
            out[o] = 34
            o += 1
        off[i + 1] = o
    return off, out[:o].copy()


def quote(values: pa.Array, raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """JSON text of each value: a quoted, escaped string, or the value itself where `raw` is set
    (numbers, booleans, literals), or ``null``. Returns (offsets, data)."""
    b = string_buffers(values)
    if raw is None:
        raw = np.zeros(len(b), np.bool_)
    off, out = _quote(b.offsets, b.data, b.valid, raw)
    return off - 0, out


@njit(cache=True)
def _build(
    data,
    emit,
    vstart,
    vend,
    vkind,
    edit,
    rep_off,
    rep_data,
    rep_col,
    prog_op,
    prog_node,
    prog_lo,
    prog_hi,
    keys_off,
    keys_data,
    node_leaf,
):
    n = vstart.shape[0]
    total = 0
    for i in range(n):
        if emit[i]:
            total += keys_off[-1] + 4 * prog_op.shape[0] + 2
            for f in range(vstart.shape[1]):
                if edit[i, f]:
                    c = rep_col[f]
                    total += rep_off[c, i + 1] - rep_off[c, i]
                elif vkind[i, f] != K_MISSING:
                    total += vend[i, f] - vstart[i, f]
    out = np.empty(max(total, 1), np.uint8)
    off = np.zeros(n + 1, np.int64)
    first = np.zeros(MAX_DEPTH, np.bool_)
    o = 0
    for i in range(n):
        if not emit[i]:
            off[i + 1] = o
            continue
        d = 0
        first[0] = True
        out[o] = 123
        o += 1
        k = 0
        while k < prog_op.shape[0]:
            op = prog_op[k]
            node = prog_node[k]
            present = False
            for f in range(prog_lo[k], prog_hi[k]):
                if vkind[i, f] != K_MISSING:
                    present = True
                    break
            if op == 1:  # open an inner object
                if not present:
                    # nothing below is present: skip to the matching close
                    depth = 1
                    k += 1
                    while depth > 0:
                        if prog_op[k] == 1:
                            depth += 1
                        elif prog_op[k] == 3:
                            depth -= 1
                        k += 1
                    continue
                if not first[d]:
                    out[o] = 44
                    o += 1
                first[d] = False
                for q in range(keys_off[node], keys_off[node + 1]):
                    out[o] = keys_data[q]
                    o += 1
                out[o] = 123
                o += 1
                d += 1
                first[d] = True
            elif op == 2:  # a leaf
                if present:
                    f = node_leaf[node]
                    if not first[d]:
                        out[o] = 44
                        o += 1
                    first[d] = False
                    for q in range(keys_off[node], keys_off[node + 1]):
                        out[o] = keys_data[q]
                        o += 1
                    if edit[i, f]:
                        c = rep_col[f]
                        for q in range(rep_off[c, i], rep_off[c, i + 1]):
                            out[o] = rep_data[q]
                            o += 1
                    else:
                        for q in range(vstart[i, f], vend[i, f]):
                            out[o] = data[q]
                            o += 1
            else:  # close
                out[o] = 125
                o += 1
                d -= 1
            k += 1
        out[o] = 125
        out[o + 1] = 10
        o += 2
        off[i + 1] = o
    return off, out[:o]


def build_objects(
    data: np.ndarray,
    sc: Scan,
    tree: PathTree,
    emit: np.ndarray,
    edited: list[int],
    edit: np.ndarray,
    reps: list[tuple[np.ndarray, np.ndarray]],
) -> pa.Array:
    """New records holding only the tree's fields (``unknown_fields: drop``), in policy order.

    Values are the replacement where `edit` is set, else the original bytes. Inner objects with
    no present field are left out.
    """
    n = len(sc.starts)
    nleaves = len(tree.paths)
    # preorder program: 1 open inner node, 2 leaf, 3 close; lo/hi = the leaves below
    ops: list[int] = []
    nodes: list[int] = []
    los: list[int] = []
    his: list[int] = []
    leaves_below: dict[int, list[int]] = {}

    def collect(node: int) -> list[int]:
        if tree.leaf[node] >= 0:
            res = [int(tree.leaf[node])]
        else:
            res = []
            for ci in range(tree.ch_start[node], tree.ch_start[node] + tree.ch_count[node]):
                res += collect(int(tree.children[ci]))
        leaves_below[node] = res
        return res

    collect(0)
    # leaves are addressed through a preorder permutation so each subtree is a contiguous range
    perm: list[int] = []

    def emit_prog(node: int) -> None:
        if tree.leaf[node] >= 0:
            perm.append(int(tree.leaf[node]))
            ops.append(2)
            nodes.append(node)
            los.append(len(perm) - 1)
            his.append(len(perm))
            return
        start = len(ops)
        ops.append(1)
        nodes.append(node)
        los.append(len(perm))
        his.append(0)
        for ci in range(tree.ch_start[node], tree.ch_start[node] + tree.ch_count[node]):
            emit_prog(int(tree.children[ci]))
        his[start] = len(perm)
        ops.append(3)
        nodes.append(node)
        los.append(0)
        his.append(0)

    for ci in range(tree.ch_start[0], tree.ch_start[0] + tree.ch_count[0]):
        emit_prog(int(tree.children[ci]))
    p = np.array(perm, dtype=np.int64)
    inv_leaf = np.full(len(tree.leaf), -1, np.int64)
    for idx, leaf in enumerate(perm):
        inv_leaf[np.flatnonzero(tree.leaf == leaf)[0]] = idx
    vs = np.ascontiguousarray(sc.vstart[:, p])
    ve = np.ascontiguousarray(sc.vend[:, p])
    vk = np.ascontiguousarray(sc.vkind[:, p])
    full_edit = np.zeros((n, nleaves), np.bool_)
    rep_col = np.zeros(nleaves, np.int64)
    for k, f in enumerate(edited):
        full_edit[:, f] = edit[:, k]
        rep_col[f] = k
    full_edit = np.ascontiguousarray(full_edit[:, p])
    rep_col = rep_col[p]
    rep_off, rep_data = pack_replacements(reps, n)
    keys = list(tree.json_key)
    keys_off = np.zeros(len(keys) + 1, np.int64)
    keys_off[1:] = np.cumsum([len(k) for k in keys])
    keys_data = np.frombuffer(b"".join(keys) or b"\0", dtype=np.uint8)
    off, out = _build(
        data, emit, vs, ve, vk, full_edit, rep_off, rep_data, rep_col,
        np.array(ops, np.int64), np.array(nodes, np.int64), np.array(los, np.int64),
        np.array(his, np.int64), keys_off, keys_data, inv_leaf,
    )  # fmt: skip
    return string_array(off, out, None, binary=True)
