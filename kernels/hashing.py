"""Stable key hashing for sharding: FNV-1a 64 with a SplitMix64 finaliser, and jump consistent hash.

Never Python's `hash()`, which is salted per process. Jump hash (Lamping & Veach 2014, "A Fast,
Minimal Memory, Consistent Hash Algorithm") moves only 1/(n+1) of the keys when a pool grows from
n to n+1 buckets.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from raymask.kernels._arrow import string_buffers

__all__ = ["key_hash", "jump_hash", "shard"]


@njit(cache=True)
def _fnv1a(offsets, data, valid):
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.uint64)
    prime = np.uint64(0x100000001B3)
    for i in range(n):
        if not valid[i]:
            continue
        h = np.uint64(0xCBF29CE484222325)
        for p in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[p])) * prime
        # SplitMix64 finaliser: spreads FNV's weak low bits
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out[i] = h ^ (h >> np.uint64(31))
    return out


@njit(cache=True)
def _jump(hashes, buckets):
    n = hashes.shape[0]
    out = np.empty(n, np.int32)
    for i in range(n):
        key = hashes[i]
        b = -1
        j = 0
        while j < buckets:
            b = j
            key = key * np.uint64(2862933555777941757) + np.uint64(1)
            j = int((b + 1) * (float(1 << 31) / float((key >> np.uint64(33)) + np.uint64(1))))
        out[i] = b
    return out


def key_hash(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit stable hash of each value's UTF-8 bytes (0 for nulls)."""
    b = string_buffers(values)
    return _fnv1a(b.offsets, b.data, b.valid)


def jump_hash(hashes: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket in [0, buckets) of each 64-bit hash."""
    if buckets < 1:
        raise ValueError("buckets must be >= 1")
    return _jump(np.ascontiguousarray(hashes, dtype=np.uint64), buckets)


def shard(values: pa.Array | pa.ChunkedArray, buckets: int) -> np.ndarray:
    """Worker index of each key: every record of one key lands on one worker."""
    return jump_hash(key_hash(values), buckets)
