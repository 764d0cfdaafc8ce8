"""Zero-copy views of Arrow string arrays as NumPy buffers, and the way back.

Every kernel works on the three buffers of an Arrow variable-length array (validity, offsets,
data) through these helpers, so no kernel ever materialises a Python object per value.

The helpers also keep the GIL. Arrow's compute functions (`take`, `cast`, `is_valid`) and its
NumPy conversions (`pa.array`, `to_numpy`) let go of it even for 100 values, and in a process
where other threads wait for it (a Serve replica with requests in flight) each let-go can hand
it over: the masking thread then waits and comes back to a cold cache. So what the masking
path needs of them is done here on the buffers: `validity` unpacks the bitmap, `numbers` and
`arrow_numbers` view primitive arrays both ways, `take_strings` gathers values with a kernel,
`large_strings` widens offsets, `null_strings` is made once per length.
"""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
from numba import njit

__all__ = [
    "StringBuffers",
    "arrow_numbers",
    "as_text",
    "large_strings",
    "null_strings",
    "numbers",
    "take_strings",
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
    """Validity of `arr` as a bool array (True = value present), unpacked from its bitmap."""
    n = len(arr)
    if arr.null_count == 0:
        return np.ones(n, dtype=np.bool_)
    bitmap = arr.buffers()[0]
    if bitmap is None:  # no bitmap, yet nulls: a null-type array
        return np.zeros(n, dtype=np.bool_)
    first = arr.offset // 8
    bits = np.frombuffer(bitmap, np.uint8)[first : (arr.offset + n + 7) // 8]
    skip = arr.offset - 8 * first
    return np.unpackbits(bits, bitorder="little")[skip : skip + n].view(np.bool_)


def numbers(arr: pa.Array, *, nulls: bool = False) -> np.ndarray:
    """The values of a primitive (numeric) array without nulls, as a NumPy view. `nulls=True`
    takes an array with nulls too: their slots hold whatever the buffer holds (see `validity`)."""
    if arr.null_count and not nulls:
        raise ValueError("numbers() takes an array without nulls")
    dtype = arr.type.to_pandas_dtype()
    return np.frombuffer(arr.buffers()[1], dtype)[arr.offset : arr.offset + len(arr)]


def arrow_numbers(a: np.ndarray) -> pa.Array:
    """A 1-d NumPy array of numbers as an Arrow array without nulls (sharing its memory)."""
    a = np.ascontiguousarray(a)
    typ = pa.from_numpy_dtype(a.dtype)
    return pa.Array.from_buffers(typ, len(a), [None, pa.py_buffer(a)], null_count=0)


@functools.lru_cache(maxsize=64)
def null_strings(n: int) -> pa.Array:
    """n nulls as a large_string array (immutable, so one per length is kept)."""
    off = pa.py_buffer(np.zeros(n + 1, np.int64))
    bitmap = pa.py_buffer(np.zeros((n + 7) // 8, np.uint8))
    return pa.Array.from_buffers(
        pa.large_string(), n, [bitmap, off, pa.py_buffer(b"")], null_count=n
    )


def large_strings(arr: pa.Array) -> pa.Array:
    """A string (or binary) array as large_string (large_binary): its offsets widened."""
    t = arr.type
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return arr
    if not (pa.types.is_string(t) or pa.types.is_binary(t)):
        return arr.cast(pa.large_string())
    buf = string_buffers(arr)
    return string_array(buf.offsets - buf.offsets[0], buf.data[buf.offsets[0] : buf.offsets[-1]],
                        buf.valid, binary=pa.types.is_binary(t))  # fmt: skip


@njit(cache=True)
def _take(offsets, data, valid, idx):
    """Values idx[i] of (offsets, data, valid) (idx[i] < 0: null) as new offsets, data, validity."""
    n = idx.shape[0]
    off = np.empty(n + 1, np.int64)
    ok = np.empty(n, np.bool_)
    off[0] = 0
    for i in range(n):
        j = idx[i]
        ok[i] = j >= 0 and valid[j]
        off[i + 1] = off[i] + (offsets[j + 1] - offsets[j] if ok[i] else 0)
    out = np.empty(off[n], np.uint8)
    for i in range(n):
        if ok[i]:
            j = idx[i]
            out[off[i] : off[i + 1]] = data[offsets[j] : offsets[j + 1]]
    return off, out, ok


def take_strings(arr: pa.Array, idx: np.ndarray) -> pa.Array:
    """`arr.take(idx)` for a string or binary array (a negative index gives a null), of the
    same type family, without Arrow's compute (see the module's note on the GIL)."""
    buf = string_buffers(arr)
    t = arr.type
    off, out, ok = _take(buf.offsets, buf.data, buf.valid, np.ascontiguousarray(idx, np.int64))
    return string_array(
        off, out, ok, like=t, binary=pa.types.is_binary(t) or pa.types.is_large_binary(t)
    )


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
    m = off.shape[0]
    if m <= 1:
        return [string_array(off[f], out[base[f] : pos[f]], valid[f]) for f in range(m)]
    # one array of m columns of n values, each followed by one null value over the bytes its
    # column did not use (an unescaped string is shorter than its JSON), cut into m slices:
    # one from_buffers (whose validation lets go of the GIL) instead of m
    n = off.shape[1] - 1
    flat = (off + base[:m, None]).reshape(-1)  # column f's offsets from where its bytes start
    ok = np.zeros((m, n + 1), np.bool_)
    ok[:, :n] = valid
    whole = string_array(flat, out, ok.reshape(-1)[:-1], like=pa.large_string())
    return [whole.slice(f * (n + 1), n) for f in range(m)]


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
