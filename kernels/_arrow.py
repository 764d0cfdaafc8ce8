"""Zero-copy views of Arrow string arrays as NumPy buffers, and the way back.

Every kernel works on the three buffers of an Arrow variable-length array (validity, offsets,
data) through these helpers, so no kernel ever materialises a Python object per value.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = [
    "StringBuffers",
    "as_text",
    "string_buffers",
    "string_array",
    "string_columns",
    "validity",
]


class StringBuffers:
    """Offsets (int64, n + 1, starting anywhere), data (uint8) and validity (bool) of a string column."""

    __slots__ = ("offsets", "data", "valid")

    def __init__(self, offsets: np.ndarray, data: np.ndarray, valid: np.ndarray) -> None:
        self.offsets = offsets
        self.data = data
        self.valid = valid

    def __len__(self) -> int:
        return len(self.valid)


def validity(arr: pa.Array) -> np.ndarray:
    """Validity of `arr` as a bool array (True = value present)."""
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=np.bool_)
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)


def string_buffers(arr: pa.Array | pa.ChunkedArray) -> StringBuffers:
    """View a string, large_string, binary or large_binary array (or chunked array) as buffers.

    Offsets are widened to int64; data is not copied for a single chunk.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_binary(t):
        otype = np.int32
    elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        otype = np.int64
    else:
        raise TypeError(f"expected a string or binary array, got {t}")
    n = len(arr)
    bufs = arr.buffers()
    if n == 0 or bufs[1] is None:
        return StringBuffers(np.zeros(1, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.bool_))
    offsets = np.frombuffer(bufs[1], dtype=otype)[arr.offset : arr.offset + n + 1].astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    return StringBuffers(offsets, data, validity(arr))


def string_array(
    offsets: np.ndarray,
    data: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    like: pa.DataType | None = None,
    binary: bool = False,
) -> pa.Array:
    """Build an Arrow string array from int64 offsets starting at 0, uint8 data and validity.

    The type follows `like` (string or large_string) when the offsets fit, else large_string.
    """
    n = len(offsets) - 1
    vbuf = None
    null_count = 0
    if valid is not None and not valid.all():
        vbuf = pa.py_buffer(np.packbits(valid, bitorder="little"))
        null_count = int(n - valid.sum())
    large = True
    if like is not None and (pa.types.is_string(like) or pa.types.is_binary(like)):
        large = int(offsets[-1]) >= 2**31
    if large:
        typ = pa.large_binary() if binary else pa.large_string()
        obuf = pa.py_buffer(np.ascontiguousarray(offsets, dtype=np.int64))
    else:
        typ = pa.binary() if binary else pa.string()
        obuf = pa.py_buffer(offsets.astype(np.int32))
    dbuf = pa.py_buffer(np.ascontiguousarray(data, dtype=np.uint8))
    return pa.Array.from_buffers(typ, n, [vbuf, obuf, dbuf], null_count=null_count)


def string_columns(
    off: np.ndarray, out: np.ndarray, valid: np.ndarray, base: np.ndarray, pos: np.ndarray
) -> list[pa.Array]:
    """The m string columns a multi-column extraction kernel wrote into one buffer: column f has
    offsets off[f] (from 0), bytes out[base[f]:pos[f]] and validity valid[f]."""
    return [string_array(off[f], out[base[f] : pos[f]], valid[f]) for f in range(off.shape[0])]


def as_text(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Strings as they are; numbers, booleans, dates and timestamps as their text (Arrow's cast),
    so a text technique (tokenize, mask, fpe, encrypt) also takes typed columns."""
    t = values.type
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    ):
        return values
    if pa.types.is_null(t):
        return pa.nulls(len(values), pa.string())
    import pyarrow.compute as pc

    return pc.cast(values, pa.string())
