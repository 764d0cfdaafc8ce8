"""number_text against Arrow's own cast to string: the same text for every value."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymask.kernels import numtext
from raymask.kernels.numtext import number_text


def _same(arr: pa.Array, decimals: int | None = None) -> None:
    got = number_text(arr, decimals)
    assert got.type == pa.large_string()
    assert got.to_pylist() == pc.cast(arr, pa.large_string()).to_pylist()


def _fast(arr: pa.Array) -> bool:
    """Whether the kernel wrote the float column itself (no fall back to Arrow)."""
    n = len(arr)
    valid = np.zeros(0, np.bool_)
    x = arr.to_numpy(zero_copy_only=False)
    return numtext._float_text(
        x, valid, np.empty(n * numtext._WIDEST_FLOAT, np.uint8), np.zeros(n + 1, np.int64)
    )


EDGES = [0.0, -0.0, 0.5, -0.5, 1.0, 2187.875, -7725.125, 85.8203125, 2.0**-18, 2.0**-28, 1e-6, 3.5e-6,
         9999999999.5, 1e9, 999999999999.0 / 128, 123456789.00390625, 0.1, 1e10, 1e-7,
         2.0**-19, 2.0**-20, 1e15, 1e16, 1e21, 123456789012345.5, float("nan"), float("inf"),
         -float("inf"), 5e-324, 1.7976931348623157e308]  # fmt: skip


@pytest.mark.parametrize("v", EDGES)
def test_edges_alone_and_in_a_column(v):
    _same(pa.array([v]))
    _same(pa.array([1.5, v, None, -2.25]))


def test_the_fast_path_is_taken_for_grid_values_and_left_for_the_rest():
    assert _fast(pa.array([0.0, -0.0, 2187.875, -85.8203125, 5 * 2.0**-20, 9999999999.5]))
    for v in (0.1, 1e10, 1e-7, 2.0**-29, 1 + 2.0**-20, float("nan"), float("inf")):
        assert not _fast(pa.array([1.0, v]))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(-(2**53), 2**53), min_size=1, max_size=60),
    st.integers(-30, 30),
    st.data(),
)
def test_grid_values_as_arrow_writes_them(ms, j, data):
    """Integers times 2**j, as the noise kernel writes: fast or not, the same text as Arrow."""
    x = np.ldexp(np.array(ms, np.float64), j)
    nulls = data.draw(st.lists(st.booleans(), min_size=len(ms), max_size=len(ms)))
    _same(pa.array(x, mask=np.array(nulls)))
    _same(pa.array(x).slice(len(x) // 2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=40))
def test_any_double_as_arrow_writes_it(xs):
    _same(pa.array(xs, pa.float64()))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=40))
def test_int64_as_arrow_writes_it(xs):
    arr = pa.array(xs, pa.int64())
    _same(arr)
    _same(arr.slice(1))


def test_noise_outputs_take_the_fast_path():
    from raymask.kernels import noise
    from raymask.kernels.rng import SecureRandom

    x = pa.array(np.linspace(0.0, 100.0, 5000))
    out = noise.laplace_noise(x, 0.0, 100.0, 0.01, integer=False, rng=SecureRandom())
    assert _fast(out)
    _same(out)


def _fast_decimal(arr: pa.Array, d: int) -> bool:
    n = len(arr)
    return numtext._decimal_text(
        arr.to_numpy(zero_copy_only=False), np.zeros(0, np.bool_), d,
        np.empty(n * numtext._WIDEST_FLOAT, np.uint8), np.zeros(n + 1, np.int64),
    )  # fmt: skip


STEPS = [0.01, 0.25, 0.5, 2.5, 10.0, 1.0, 0.1, 0.001, 1e-7, 0.3, 0.125, 1e-15, 5e-6, 100.0]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(st.floats(-1e12, 1e12), st.just(float("nan"))), min_size=1, max_size=60),
    st.sampled_from(STEPS),
    st.data(),
)
def test_values_rounded_to_a_step_as_arrow_writes_them(xs, step, data):
    """`round_to` outputs with their step's digits as the hint: fast or not, Arrow's text."""
    from raymask.kernels.noise import round_decimals, round_multiple

    x = round_multiple(np.array(xs, np.float64), step)
    nulls = data.draw(st.lists(st.booleans(), min_size=len(xs), max_size=len(xs)))
    d = round_decimals(step)
    _same(pa.array(x, mask=np.array(nulls)), d)
    _same(pa.array(x).slice(len(x) // 2), d)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=40),
    st.integers(0, 15),
)
def test_any_double_with_any_hint_as_arrow_writes_it(xs, d):
    _same(pa.array(xs, pa.float64()), d)


def test_the_decimal_path_is_taken_for_rounded_values_and_left_for_the_rest():
    from raymask.kernels.noise import round_multiple

    x = np.random.default_rng(3).uniform(-1e4, 1e4, 2000)
    assert _fast_decimal(pa.array(round_multiple(x, 0.01)), 2)
    assert _fast_decimal(pa.array([0.0, -0.0, 1.5, 9999999999.5, 0.001, 1234567890.125]), 3)
    assert _fast_decimal(pa.array([1e-6, -0.000125, 999999999.999999]), 6)
    for v in (0.001, 0.1 + 0.2, 1e10, 5e-7, 1e15, float("nan"), float("inf")):
        assert not _fast_decimal(pa.array([1.0, v]), 2), v
    assert not _fast_decimal(pa.array([1234567890.123456]), 6)  # 16 digits


def test_other_types_and_empty_go_to_arrow():
    _same(pa.array([1, 2, None], pa.int32()))
    _same(pa.array([], pa.float64()))
    _same(pa.array([None, None], pa.float64()))
