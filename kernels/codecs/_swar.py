"""Eight bytes at a time: unaligned 64-bit loads and SWAR byte classes for the codec scanners.

"SIMD within a register" (Lamport 1975; the byte tests are the ``haszero`` / ``hasless`` bit
hacks of Sean Anderson's "Bit Twiddling Hacks"): a word's byte class mask has the high bit of
every byte that belongs to the class. The masks below are exact at their lowest set byte, which
is all a scanner needs (borrows only ever flag bytes *above* a true match), so
``trailing_zeros(mask) >> 3`` is the index of the first matching byte on a little-endian machine.
`LITTLE_ENDIAN` is False elsewhere; callers then keep to their byte-at-a-time loops.
"""

from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

__all__ = [
    "LITTLE_ENDIAN",
    "load_u64",
    "store_u64",
    "copy",
    "copy_ahead",
    "string_stop",
    "escape_stop",
    "has_byte",
    "byte_stop",
    "count_byte",
    "first_byte",
]

LITTLE_ENDIAN = sys.byteorder == "little"

_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
_QUOTE = np.uint64(0x2222222222222222)
_BSLASH = np.uint64(0x5C5C5C5C5C5C5C5C)
_SPACE = np.uint64(0x2020202020202020)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)


def _bytes(arr: types.Type) -> bool:
    """A 1-d C-contiguous uint8 array: the only kind whose bytes the word loads address right
    (a strided view would be read as if contiguous; Numba then refuses to compile the call)."""
    return (
        isinstance(arr, types.Array)
        and arr.ndim == 1
        and arr.layout == "C"
        and arr.dtype == types.uint8
    )


@intrinsic
def load_u64(typingctx, arr, idx):  # noqa: ANN001, ANN201 (Numba intrinsic)
    """The 8 bytes arr[idx:idx + 8] as one native-endian uint64, any alignment.

    No bounds check: the caller makes sure idx + 8 <= arr.shape[0]."""
    if not _bytes(arr):
        return None
    sig = types.uint64(arr, types.intp)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        return builder.load(builder.bitcast(ptr, ir.IntType(64).as_pointer()), align=1)

    return sig, codegen


@intrinsic
def store_u64(typingctx, arr, idx, val):  # noqa: ANN001, ANN201 (Numba intrinsic)
    """Write the uint64 `val` as the 8 bytes arr[idx:idx + 8], any alignment, native-endian.

    No bounds check: the caller makes sure idx + 8 <= arr.shape[0]."""
    if not _bytes(arr):
        return None
    sig = types.void(arr, types.intp, types.uint64)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        builder.store(args[2], builder.bitcast(ptr, ir.IntType(64).as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def copy(dst, o, src, s, n):
    """dst[o:o + n] = src[s:s + n] for two distinct buffers, eight bytes per step; writes
    nothing outside dst[o:o + n] (a last, overlapping word instead of a byte loop).

    Numba's slice assignment costs ~100 ns per call here (views, an overlap check), too much
    for pieces of a few dozen bytes."""
    if n < 8:
        for j in range(n):
            dst[o + j] = src[s + j]
        return
    j = 0
    while j + 8 < n:
        store_u64(dst, o + j, load_u64(src, s + j))
        j += 8
    store_u64(dst, o + n - 8, load_u64(src, s + n - 8))


@njit(cache=True, inline="always")
def copy_ahead(dst, o, src, s, n):
    """`copy` for a writer that fills dst front to back: where both buffers have 8 bytes to
    spare after the piece, whole words are copied and up to 7 bytes of dst past o + n get
    garbage, which the writer's next piece overwrites (give dst 8 bytes of slack)."""
    if s + n + 8 <= src.shape[0] and o + n + 8 <= dst.shape[0]:
        j = 0
        while j < n:
            store_u64(dst, o + j, load_u64(src, s + j))
            j += 8
    else:
        copy(dst, o, src, s, n)


@njit(cache=True, inline="always")
def string_stop(x):
    """Bytes of x a JSON string body stops at: '"', '\\\\', control characters, non-ASCII."""
    q = x ^ _QUOTE
    b = x ^ _BSLASH
    return (((q - _ONES) & ~q) | ((b - _ONES) & ~b) | ((x - _SPACE) & ~x) | x) & _HIGH


@njit(cache=True, inline="always")
def first_byte(m):
    """Index (0-7) of the lowest byte flagged in a non-zero class mask `m`."""
    return np.int64(trailing_zeros(m) >> np.uint64(3))


@njit(cache=True, inline="always")
def escape_stop(x):
    """Bytes of x a JSON string must escape: '"', '\\' and control characters."""
    q = x ^ _QUOTE
    b = x ^ _BSLASH
    return (((q - _ONES) & ~q) | ((b - _ONES) & ~b) | ((x - _SPACE) & ~x)) & _HIGH


@njit(cache=True, inline="always")
def byte_stop(x, pat):
    """Bytes of x equal to the byte repeated in `pat` (= byte * 0x0101010101010101); exact at
    the lowest flagged byte, like the other stops."""
    y = x ^ pat
    return (y - _ONES) & ~y & _HIGH


@njit(cache=True, inline="always")
def has_byte(data, s, e, byte):
    """Whether data[s:e] holds `byte`, eight bytes per step."""
    pat = np.uint64(byte) * _ONES
    q = s
    while q + 8 <= e:
        if byte_stop(load_u64(data, q), pat) != 0:
            return True
        q += 8
    while q < e:
        if data[q] == byte:
            return True
        q += 1
    return False


@njit(cache=True, inline="always")
def count_byte(data, s, e, byte):
    """How many bytes of data[s:e] equal `byte`, eight bytes per step (an exact per-byte test,
    no borrows between bytes, summed by one multiplication)."""
    pat = np.uint64(byte) * _ONES
    k = 0
    q = s
    if LITTLE_ENDIAN:
        while q + 8 <= e:
            y = load_u64(data, q) ^ pat
            m = ~(((y & _LOW7) + _LOW7) | y | _LOW7)  # high bit of each byte that was 0
            k += np.int64(((m >> np.uint64(7)) * _ONES) >> np.uint64(56))
            q += 8
    while q < e:
        if data[q] == byte:
            k += 1
        q += 1
    return k
