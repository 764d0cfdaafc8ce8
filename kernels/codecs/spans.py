"""What every codec's scanner produces, and the splice that writes masked values back.

A scanner locates each policy field of each record as a byte span of the raw input; the splice
copies the record with some spans replaced, so every byte the policy does not touch is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from numba import njit

from raymask.kernels._arrow import string_array
from raymask.kernels._keepgil import take_cols
from raymask.kernels._mem import borrow
from raymask.kernels.codecs._swar import copy_ahead

__all__ = ["Scan", "splice", "pack_replacements", "KIND_NAMES"]

# the kind of a field's value in one record
K_MISSING, K_STRING, K_NUMBER, K_TRUE, K_FALSE, K_NULL, K_OBJECT, K_ARRAY = range(8)
KIND_NAMES = ("missing", "string", "number", "true", "false", "null", "object", "array")


@dataclass
class Scan:
    """Spans (absolute byte positions) and kinds of each policy field, per record."""

    starts: np.ndarray  # (n,) record start
    ends: np.ndarray  # (n,) record end (exclusive, no newline)
    vstart: np.ndarray  # (n, fields)
    vend: np.ndarray
    vkind: np.ndarray  # (n, fields) int8, K_*
    err: np.ndarray  # (n,) int8, 0 = valid
    errpos: np.ndarray  # (n,) byte column of the error within the record
    errfield: np.ndarray  # (n,) field index for E_DUP, else -1


@njit(cache=True)
def _splice(data, starts, ends, emit, vstart, vend, edit, rep_off, rep_data, nrep_fields, empty_as):
    n = starts.shape[0]
    total = 0
    for i in range(n):
        if emit[i]:
            total += ends[i] - starts[i] + 1 + empty_as.shape[0]
            for f in range(nrep_fields):
                if edit[i, f]:
                    total += rep_off[f, i + 1] - rep_off[f, i] - (vend[i, f] - vstart[i, f])
    out = np.empty(total + 8, np.uint8)  # 8 bytes of slack for `copy_ahead`
    off = np.zeros(n + 1, np.int64)
    order = np.empty(nrep_fields, np.int64)
    # no reference counts per copy (see borrow); `out` itself is returned, so it lives on
    data, rep_data, ob = borrow(data), borrow(rep_data), borrow(out)
    o = 0
    for i in range(n):
        if not emit[i]:
            off[i + 1] = o
            continue
        # edits of this record, sorted by position (insertion sort; a handful per record)
        m = 0
        for f in range(nrep_fields):
            if edit[i, f]:
                j = m
                while j > 0 and vstart[i, order[j - 1]] > vstart[i, f]:
                    order[j] = order[j - 1]
                    j -= 1
                order[j] = f
                m += 1
        p = starts[i]
        for k in range(m):
            f = order[k]
            ln = vstart[i, f] - p
            copy_ahead(ob, o, data, p, ln)
            o += ln
            a = rep_off[f, i]
            ln = rep_off[f, i + 1] - a
            copy_ahead(ob, o, rep_data, a, ln)
            o += ln
            p = vend[i, f]
        ln = ends[i] - p
        copy_ahead(ob, o, data, p, ln)
        o += ln
        if o == off[i]:  # an empty record would read back as a blank line, i.e. no record
            for q in range(empty_as.shape[0]):
                out[o] = empty_as[q]
                o += 1
        out[o] = 10
        o += 1
        off[i + 1] = o
    return off, out[:o]


def pack_replacements(
    reps: list[tuple[np.ndarray, np.ndarray]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    rep_off = np.zeros((max(len(reps), 1), n + 1), np.int64)
    chunks = []
    base = 0
    for f, (off, data) in enumerate(reps):
        rep_off[f] = off + base
        chunks.append(data)
        base += len(data)
    rep_data = np.concatenate(chunks) if chunks else np.zeros(1, np.uint8)
    if len(rep_data) == 0:
        rep_data = np.zeros(1, np.uint8)
    return rep_off, rep_data


def splice(
    data: np.ndarray,
    sc: Scan,
    emit: np.ndarray,
    edited: list[int],
    edit: np.ndarray,
    reps: list[tuple[np.ndarray, np.ndarray]],
    empty_as: bytes = b"",
) -> pa.Array:
    """Records with the values of fields `edited` replaced by `reps` where `edit` is set.

    `edit` is (n, len(edited)) bool; reps[k] is (offsets, data) JSON text for field edited[k].
    Returns a large_binary array of the emitted records, each ending in a newline, with empty
    entries for records not emitted.
    """
    n = len(sc.starts)
    cols = np.array(edited, dtype=np.int64)
    vs = take_cols(sc.vstart, cols) if len(cols) else np.zeros((n, 1), np.int64)
    ve = take_cols(sc.vend, cols) if len(cols) else np.zeros((n, 1), np.int64)
    ed = np.ascontiguousarray(edit) if len(cols) else np.zeros((n, 1), np.bool_)
    rep_off, rep_data = pack_replacements(reps, n)
    empty = np.frombuffer(empty_as, np.uint8) if empty_as else np.zeros(0, np.uint8)
    off, out = _splice(
        data, sc.starts, sc.ends, emit, vs, ve, ed, rep_off, rep_data, len(cols), empty
    )
    return string_array(off, out, None, binary=True)
