"""The Arrow buffer helpers (kernels/_arrow.py) against pyarrow's own compute functions, on
sliced arrays (offsets that are not a multiple of 8), nulls, and every string and binary type."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymask.kernels._arrow import (
    arrow_numbers,
    large_strings,
    null_strings,
    numbers,
    take_strings,
    validity,
)

TYPES = [pa.string(), pa.large_string(), pa.binary(), pa.large_binary()]
values = st.lists(st.one_of(st.none(), st.text(max_size=6)), max_size=40)


def _arr(vals: list[str | None], typ: pa.DataType) -> pa.Array:
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        vals = [None if v is None else v.encode() for v in vals]
    return pa.array(vals, typ)


@settings(max_examples=200, deadline=None)
@given(values, st.integers(0, 20), st.integers(0, 40), st.sampled_from(TYPES))
def test_validity_matches_is_valid_on_slices(vals, start, length, typ):
    arr = _arr(vals, typ).slice(start, length)
    assert validity(arr).tolist() == arr.is_valid().to_pylist()


def test_validity_of_a_null_type_array():
    assert validity(pa.nulls(3)).tolist() == [False] * 3


@settings(max_examples=200, deadline=None)
@given(values, st.integers(0, 20), st.integers(0, 40), st.sampled_from(TYPES), st.data())
def test_take_strings_matches_take(vals, start, length, typ, data):
    arr = _arr(vals, typ).slice(start, length)
    n = len(arr)
    idx = data.draw(st.lists(st.integers(-1, n - 1) if n else st.just(-1), max_size=30))
    got = take_strings(arr, np.array(idx, np.int64))
    want = arr.take(pa.array([None if i < 0 else i for i in idx], pa.int64()))
    assert got.type == arr.type
    assert got.to_pylist() == want.to_pylist()
    got.validate(full=True)


@settings(max_examples=200, deadline=None)
@given(values, st.integers(0, 20), st.integers(0, 40), st.sampled_from(TYPES[::2]))
def test_large_strings_matches_cast(vals, start, length, typ):
    arr = _arr(vals, typ).slice(start, length)
    got = large_strings(arr)
    big = pa.large_binary() if pa.types.is_binary(typ) else pa.large_string()
    assert got.type == big
    assert got.to_pylist() == arr.cast(big).to_pylist()
    got.validate(full=True)


def test_large_strings_keeps_large_and_casts_others():
    arr = pa.array(["a", None], pa.large_string())
    assert large_strings(arr) is arr
    assert large_strings(pa.array([1, None])).to_pylist() == ["1", None]


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.int32, np.float64])
def test_numbers_both_ways(dtype):
    a = np.arange(10).astype(dtype)
    arr = arrow_numbers(a)
    assert arr.type == pa.from_numpy_dtype(np.dtype(dtype))
    assert arr.to_pylist() == a.tolist()
    assert numbers(arr.slice(3, 4)).tolist() == a[3:7].tolist()
    assert arrow_numbers(a[::2]).to_pylist() == a[::2].tolist()  # strided input is copied
    with pytest.raises(ValueError, match="without nulls"):
        numbers(pa.array([1, None]))


def test_null_strings():
    arr = null_strings(5)
    assert arr.type == pa.large_string() and arr.to_pylist() == [None] * 5
    assert arr.null_count == 5 and null_strings(5) is arr
    arr.validate(full=True)
