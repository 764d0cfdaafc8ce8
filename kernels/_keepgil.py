"""Small-array NumPy operations as Numba kernels, for the per-request masking path.

NumPy lets go of the GIL in fancy indexing, copies, `arange` and large zeroed allocations. In a
process where other threads wait for the GIL (a Serve replica with requests in flight) each
let-go can hand it to one of them; the masking thread then waits and comes back to a cold
cache (`python -m raymask.loadtest.gil_bench` measures it; docs/benchmarks.md). A Numba kernel
compiled without `nogil` keeps the GIL from call to return, so these replace NumPy's own on the
masking path. Same results as the NumPy expression each names (tests/kernels/test_keepgil.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["iota", "take_cols", "take_rows"]


@njit(cache=True)
def take_cols(a, cols):
    """`a[:, cols]` of a 2-d array, C-contiguous."""
    n = a.shape[0]
    out = np.empty((n, cols.shape[0]), a.dtype)
    for i in range(n):
        for j in range(cols.shape[0]):
            out[i, j] = a[i, cols[j]]
    return out


@njit(cache=True)
def take_rows(a, rows):
    """`a[rows]` of a 1-d array (rows in range; also a table lookup, `table[uint8 keys]`)."""
    out = np.empty(rows.shape[0], a.dtype)
    for i in range(rows.shape[0]):
        out[i] = a[rows[i]]
    return out


@njit(cache=True)
def iota(n):
    """`np.arange(n, dtype=np.int64)`."""
    out = np.empty(n, np.int64)
    for i in range(n):
        out[i] = i
    return out
