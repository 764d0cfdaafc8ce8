"""`prefetch` is a hint: a kernel using it computes what it computes without it, and it takes
1-d contiguous arrays only."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from raymask.kernels._mem import prefetch


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
