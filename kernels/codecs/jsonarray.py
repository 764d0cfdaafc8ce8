"""A JSON array of records to NDJSON and back, as kernels: HTTP callers often send `[{...}, ...]`
(pretty-printed or not) where the pipeline reads one record per line.

`array_to_lines` walks the array once: it tracks nesting and strings (escapes included), copies
each top-level element to its own line and turns whitespace newlines between tokens into spaces
(a raw newline inside a JSON string is invalid JSON anyway, and the NDJSON scanner reports it).
It does not validate the elements: the NDJSON scanner does that next, record by record, so one
bad element becomes one error and the others are kept. `join_lines` is the way back: records
joined with a separator between an opening and a closing byte string.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from raymask.kernels._arrow import string_buffers

__all__ = ["ArrayError", "array_to_lines", "join_lines"]


class ArrayError(ValueError):
    """The body is not a JSON array whose elements can be told apart (the message says where)."""


@njit(cache=True)
def _split(data, out):
    """Copy the elements of the array in `data` to `out`, one per line; returns (bytes written,
    elements, error code, error position). Codes: 0 ok, 1 not an array, 2 unterminated, 3
    trailing bytes after the array, 4 an empty element (`[1,,2]`)."""
    n = data.shape[0]
    i = 0
    while i < n and (data[i] == 32 or data[i] == 9 or data[i] == 10 or data[i] == 13):
        i += 1
    if i >= n or data[i] != 91:  # '['
        return 0, 0, 1, i
    i += 1
    w = 0
    count = 0
    depth = 0
    in_str = False
    esc = False
    started = False  # the current element has a byte
    while i < n:
        c = data[i]
        if in_str:
            out[w] = c
            w += 1
            if esc:
                esc = False
            elif c == 92:  # backslash
                esc = True
            elif c == 34:
                in_str = False
            i += 1
            continue
        if c == 34:
            in_str = True
            started = True
            out[w] = c
            w += 1
        elif c == 123 or c == 91:  # { [
            depth += 1
            started = True
            out[w] = c
            w += 1
        elif (c == 125 or c == 93) and depth > 0:  # } ] inside an element
            depth -= 1
            out[w] = c
            w += 1
        elif depth == 0 and (c == 44 or c == 93):  # , or the closing ]
            if started:
                out[w] = 10
                w += 1
                count += 1
                started = False
            elif c == 44 or count > 0:
                return w, count, 4, i
            if c == 93:
                i += 1
                while i < n and (data[i] == 32 or data[i] == 9 or data[i] == 10 or data[i] == 13):
                    i += 1
                if i < n:
                    return w, count, 3, i
                return w, count, 0, i
        elif c == 10 or c == 13:
            if started:
                out[w] = 32
                w += 1
        elif c == 32 or c == 9:
            if started:
                out[w] = c
                w += 1
        else:
            started = True
            out[w] = c
            w += 1
        i += 1
    return w, count, 2, n


_WHY = {
    1: "the body is not a JSON array",
    2: "the JSON array is not closed",
    3: "bytes after the end of the JSON array",
    4: "an empty element in the JSON array",
}


def array_to_lines(data: np.ndarray) -> tuple[np.ndarray, int]:
    """NDJSON bytes (one element per line) and the number of elements; ArrayError (naming the
    byte offset, never the content) when the array's structure cannot be followed."""
    out = np.empty(data.shape[0] + 2, np.uint8)
    w, count, code, pos = _split(data, out)
    if code:
        raise ArrayError(f"{_WHY[code]} (at byte {pos})")
    return out[:w], count


@njit(cache=True)
def _join(offsets, data, sep, opening, closing, strip_newline, out):
    w = 0
    for b in opening:
        out[w] = b
        w += 1
    n = offsets.shape[0] - 1
    for r in range(n):
        if r:
            for b in sep:
                out[w] = b
                w += 1
        s, e = offsets[r], offsets[r + 1]
        if strip_newline and e > s and data[e - 1] == 10:
            e -= 1
        for k in range(s, e):
            out[w] = data[k]
            w += 1
    for b in closing:
        out[w] = b
        w += 1
    return w


def join_lines(
    records: pa.Array, sep: bytes = b",", opening: bytes = b"[", closing: bytes = b"]"
) -> bytes:
    """Records (binary, each ending in a newline as the codecs emit them) joined by `sep`,
    between `opening` and `closing`: a JSON array by default."""
    b = string_buffers(records)
    offsets, data = b.offsets, b.data
    size = int(offsets[-1] - offsets[0]) + len(sep) * max(len(records) - 1, 0)
    out = np.empty(size + len(opening) + len(closing), np.uint8)
    w = _join(
        offsets, data, np.frombuffer(sep, np.uint8), np.frombuffer(opening, np.uint8),
        np.frombuffer(closing, np.uint8), True, out,
    )  # fmt: skip
    return out[:w].tobytes()
