"""The GIL-keeping kernels (kernels/_keepgil.py) give what the NumPy expressions they replace give."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from raymask.kernels._keepgil import iota, take_cols, take_rows


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.int16, 256), hnp.arrays(np.uint8, st.integers(0, 300)))
def test_take_rows_as_a_table_lookup(table, keys):
    got = take_rows(table, keys)
    assert got.dtype == table.dtype and np.array_equal(got, table[keys])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 30), st.integers(1, 8), st.data())
def test_take_cols_and_rows(n, width, data):
    a = np.arange(n * width, dtype=np.int64).reshape(n, width) * 7 - 3
    cols = np.array(data.draw(st.lists(st.integers(0, width - 1), max_size=10)), np.int64)
    got = take_cols(a, cols)
    assert got.flags.c_contiguous and np.array_equal(got, a[:, cols])
    col = a[:, 0].copy()
    rows = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=40)) if n else [], np.int64)
    assert np.array_equal(take_rows(col, rows), col[rows])


def test_iota():
    for n in (0, 1, 100):
        assert np.array_equal(iota(n), np.arange(n, dtype=np.int64))
