"""`prefetch` is a hint: a kernel using it computes what it computes without it, and it takes
1-d contiguous arrays only. `borrow` gives a kernel its argument without reference counting:
the same values, and the owner's count untouched."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from raymask.kernels._mem import borrow, prefetch


@njit(cache=False)
def _gather_sum(a, idx):
    s = 0
    for j in range(idx.shape[0]):
        if j + 4 < idx.shape[0]:
            prefetch(a, idx[j + 4])
        s += a[idx[j]]
    return s


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.float64])
def test_a_kernel_with_prefetch_computes_the_same(dtype):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 100, 10_000).astype(dtype)
    idx = rng.integers(0, len(a), 5_000)
    assert _gather_sum(a, idx) == a[idx].sum()


def test_prefetch_refuses_an_array_it_cannot_address():
    @njit(cache=False)
    def on_2d(a):
        prefetch(a, 0)

    with pytest.raises(TypingError):
        on_2d(np.zeros((4, 4)))


@njit(cache=False, inline="always")
def _line_end(a, i, e):
    while i < e and a[i] != 10:
        i += 1
    return i


@njit(cache=False)
def _lines(a, lend):
    a = borrow(a) if lend else a
    n, i = 0, 0
    while i < a.shape[0]:
        i = _line_end(a, i, a.shape[0]) + 1
        n += 1
    return n


@njit(cache=False)
def _col_sum(m, j):
    m = borrow(m)
    return m[:, j].sum()


def test_a_borrowed_argument_reads_the_same_and_leaves_its_owner_alone():
    data = np.frombuffer(b"ab\ncd\n\nef" * 1000, np.uint8)
    before = sys.getrefcount(data)
    for _ in range(100):
        assert _lines(data, True) == _lines(data, False) == 3001
    assert sys.getrefcount(data) == before  # no reference taken or dropped for good
    m = np.arange(24, dtype=np.int64).reshape(6, 4)
    assert _col_sum(m, 1) == m[:, 1].sum()  # 2-d, and a strided column of it
    assert _col_sum(m[::2], 3) == m[::2, 3].sum()  # a non-contiguous argument


def test_borrow_takes_arrays_only():
    @njit(cache=False)
    def bad(x):
        return borrow(x)

    with pytest.raises(TypingError):
        bad(3)
