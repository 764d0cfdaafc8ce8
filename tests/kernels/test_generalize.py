"""Generalization kernels: exact against decimal, datetime, ipaddress and a reference geohash."""

from __future__ import annotations

import ipaddress
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymask.kernels.generalize import (
    ERRORS,
    age_band,
    bucket,
    geo_round,
    geohash,
    ip_prefix,
    round_numbers,
    truncate_timestamps,
)

OK, E_NUMBER, E_RANGE, E_TIMESTAMP, E_IP, E_WHOLE = 0, 1, 2, 3, 4, 5
TEXT_TYPES = [pa.string(), pa.large_string()]


def _run_text(fn, value, typ, *args, **kwargs):
    out, err = fn(pa.array([value], typ), *args, **kwargs)
    assert out.type == typ and len(out) == 1 and len(err) == 1
    return out.to_pylist()[0], int(err[0])


# --- round_numbers: reference -----------------------------------------------------------------


def _ref_round(text: str, step: float, mode: str) -> str:
    """Exact bucketing with Python integers: |x| and the step scaled to a common exponent."""
    x = Decimal(text)
    s = Decimal(repr(float(step))).normalize()
    _, sdig, f = s.as_tuple()
    S = int("".join(map(str, sdig)))
    neg, xdig, a = x.as_tuple()
    X = int("".join(map(str, xdig)) or "0")
    g = min(a, f)
    m, si = X * 10 ** (a - g), S * 10 ** (f - g)
    q, r = divmod(m, si)
    if mode == "nearest":
        q += 2 * r >= si
    else:
        q += bool(neg) and r > 0
    dec = max(0, -f)
    body = f"{Decimal(f'{q * S}e{f}'):.{dec}f}"  # from text: no context rounding
    if dec == 0 and ("." in text or "e" in text.lower()):
        body += ".0"
    return ("-" if neg and q else "") + body


# (value, step, mode, expected, code)
ROUND_TEXT_TABLE = [
    ("0.3", 0.1, "floor", "0.3", OK),  # binary floats give 0.2 here: floor(0.3 / 0.1) == 2
    ("12.50", 0.1, "floor", "12.5", OK),  # decimals follow the step
    ("12.50", 0.25, "floor", "12.50", OK),
    ("12", 5, "floor", "10", OK),  # integer text, integral step: stays integral
    ("12.7", 5, "floor", "10.0", OK),  # float text keeps a fraction
    ("12", 0.5, "floor", "12.0", OK),  # a fractional step makes the output fractional
    ("-3e2", 7, "floor", "-301.0", OK),  # exponent form in, plain decimal out
    ("1E+2", 0.1, "floor", "100.0", OK),  # upper-case E and explicit exponent sign
    ("-0.3", 1, "floor", "-1.0", OK),  # floor goes toward -inf
    ("-0.3", 1, "nearest", "0.0", OK),  # no negative zero
    ("-0", 5, "floor", "0", OK),
    ("0", 0.1, "floor", "0.0", OK),
    ("2.5", 5, "nearest", "5.0", OK),  # tie: half away from zero
    ("-2.5", 5, "nearest", "-5.0", OK),  # tie, negative: away from zero too
    ("7.5", 5, "nearest", "10.0", OK),
    ("0.125", 0.25, "nearest", "0.25", OK),  # exact tie below the step's precision
    ("0.12499999999999999999999", 0.25, "nearest", "0.00", OK),  # just under the tie
    ("0.30000000000000000000001", 0.1, "floor", "0.3", OK),  # more digits than a double holds
    ("10", 3, "floor", "9", OK),  # a step that is not a power of ten
    ("-10", 3, "floor", "-12", OK),
    ("123", 1000, "floor", "0", OK),
    ("-123", 1000, "floor", "-1000", OK),
    ("-1", 1e20, "floor", "-100000000000000000000", OK),  # step beyond int64
    ("1e-400", 1, "floor", "0.0", OK),  # below float64's range is fine
    ("-1e-400", 1, "floor", "-1.0", OK),
    ("1e309", 1e308, "floor", "1" + "0" * 309 + ".0", OK),  # the largest magnitude accepted
    ("1e310", 1, "floor", None, E_RANGE),  # beyond it
    ("99999999999999999999999", 1, "nearest", "99999999999999999999999", OK),  # > int64
    ("", 1, "floor", None, E_NUMBER),
    ("abc", 1, "floor", None, E_NUMBER),
    ("1.", 1, "floor", None, E_NUMBER),  # JSON: a fraction needs digits
    (".5", 1, "floor", None, E_NUMBER),
    ("01", 1, "floor", None, E_NUMBER),  # JSON: no leading zeros
    ("+1", 1, "floor", None, E_NUMBER),  # JSON: no plus sign
    ("1e", 1, "floor", None, E_NUMBER),
    ("--1", 1, "floor", None, E_NUMBER),
    (" 1", 1, "floor", None, E_NUMBER),  # no surrounding spaces
    ("NaN", 1, "floor", None, E_NUMBER),
    ("Infinity", 1, "floor", None, E_NUMBER),
    ("1,5", 1, "floor", None, E_NUMBER),
    ("0x10", 1, "floor", None, E_NUMBER),
    ("١٢", 1, "floor", None, E_NUMBER),  # Arabic-Indic digits are not JSON digits (UTF-8)
]


@pytest.mark.parametrize(("value", "step", "mode", "expected", "code"), ROUND_TEXT_TABLE)
def test_round_text_table(value, step, mode, expected, code):
    for typ in TEXT_TYPES:
        assert _run_text(round_numbers, value, typ, step, mode) == (expected, code)
    if code == OK:
        assert _ref_round(value, step, mode) == expected  # the table agrees with the oracle


_json_numbers = st.builds(
    lambda sign, i, f, e: sign + i + (f".{f}" if f else "") + (f"e{e}" if e is not None else ""),
    st.sampled_from(["", "-"]),
    st.sampled_from(["0"]) | st.from_regex(r"[1-9][0-9]{0,25}", fullmatch=True),
    st.none() | st.from_regex(r"[0-9]{1,25}", fullmatch=True),
    st.none() | st.integers(-30, 30),
)
_steps = st.sampled_from([0.1, 0.25, 0.5, 1, 3, 5, 7, 10, 1e3, 0.001, 2.5, 0.3, 1e-9, 1e20])


@settings(max_examples=300, deadline=None)
@given(values=st.lists(_json_numbers, max_size=20), step=_steps, nearest=st.booleans())
def test_round_text_matches_decimal_reference(values, step, nearest):
    mode = "nearest" if nearest else "floor"
    out, err = round_numbers(pa.array(values, pa.string()), step, mode)
    assert not err.any()
    assert out.to_pylist() == [_ref_round(v, step, mode) for v in values]


@pytest.mark.parametrize("typ", [pa.float64(), pa.float32()])
def test_round_floats_table(typ):
    values = [0.3, 12.5, -0.0, None, float("nan"), float("inf"), -0.3]
    out, err = round_numbers(pa.array(values, typ), 0.1, "floor")
    assert out.type == typ
    assert err.tolist() == [OK, OK, OK, OK, E_NUMBER, E_RANGE, OK]
    expected = [0.3, 12.5, 0.0, None, None, None, -0.3]
    assert out.to_pylist() == pa.array(expected, typ).to_pylist()


def test_round_float_result_beyond_float64_is_an_error():
    out, err = round_numbers(pa.array([1.7976931348623157e308]), 1e308, "nearest")
    assert err.tolist() == [E_RANGE] and out.to_pylist() == [None]


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), max_size=20),
    step=_steps,
    nearest=st.booleans(),
)
def test_round_floats_equal_decimal_rounding_of_their_shortest_text(values, step, nearest):
    mode = "nearest" if nearest else "floor"
    out, err = round_numbers(pa.array(values, pa.float64()), step, mode)
    expected = [float(_ref_round(repr(v), step, mode)) for v in values]
    ok = [abs(x) <= 1.7976931348623157e308 for x in expected]
    assert err.tolist() == [OK if k else E_RANGE for k in ok]
    assert out.to_pylist() == [x if k else None for x, k in zip(expected, ok, strict=True)]


def _ref_round_int(v: int, step: int, mode: str, lo: int, hi: int) -> int | None:
    q, r = divmod(v, step)
    if mode == "nearest" and (2 * r > step or (2 * r == step and v >= 0)):
        q += 1
    return q * step if lo <= q * step <= hi else None


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20),
    step=st.sampled_from([1, 2, 3, 5, 7, 10, 100, 10**9, 10**18]),
    nearest=st.booleans(),
)
def test_round_int64_matches_python_integers(values, step, nearest):
    mode = "nearest" if nearest else "floor"
    out, err = round_numbers(pa.array(values, pa.int64()), step, mode)
    expected = [_ref_round_int(v, step, mode, -(2**63), 2**63 - 1) for v in values]
    assert out.type == pa.int64()
    assert out.to_pylist() == expected
    assert err.tolist() == [OK if x is not None else E_RANGE for x in expected]


def test_round_small_int_types_report_overflow():
    out, err = round_numbers(pa.array([125, -128, 12, None], pa.int8()), 10, "nearest")
    assert out.type == pa.int8()
    assert out.to_pylist() == [None, None, 10, None]  # 130 and -130 do not fit in int8
    assert err.tolist() == [E_RANGE, E_RANGE, OK, OK]


def test_round_integers_with_a_step_dividing_one_are_unchanged():
    out, err = round_numbers(pa.array([7, None, -3]), 0.25, "floor")
    assert out.to_pylist() == [7, None, -3] and not err.any()


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"step": 0.3}, ValueError),  # fractions in an integer column
        ({"step": 0}, ValueError),
        ({"step": -1}, ValueError),
        ({"step": float("inf")}, ValueError),
        ({"step": 1, "mode": "ceil"}, ValueError),
        ({"step": "1"}, TypeError),
    ],
)
def test_round_rejects_bad_parameters_at_call_time(kwargs, exc):
    with pytest.raises(exc):
        round_numbers(pa.array([1, 2]), **kwargs)


def test_round_rejects_unsupported_types():
    with pytest.raises(TypeError):
        round_numbers(pa.array([True]), 1)
    with pytest.raises(TypeError):
        round_numbers(pa.array([1], pa.uint64()), 1)


# --- bucket ------------------------------------------------------------------------------------


# (value, expected label, code) for edges [0, 10, 20.5]
BUCKET_TABLE = [
    ("-0.001", "<0", OK),  # below the first edge
    ("0", "[0,10)", OK),  # an edge belongs to the bucket it opens
    ("9.999", "[0,10)", OK),
    ("10", "[10,20.5)", OK),
    ("20.4999", "[10,20.5)", OK),
    ("20.5", ">=20.5", OK),  # the last edge opens the top bucket
    ("1e400", ">=20.5", OK),  # beyond float64: +inf, still a number
    ("-1e400", "<0", OK),
    ("ten", None, E_NUMBER),
    ("", None, E_NUMBER),
]


@pytest.mark.parametrize(("value", "expected", "code"), BUCKET_TABLE)
def test_bucket_table(value, expected, code):
    for typ in TEXT_TYPES:
        assert _run_text(bucket, value, typ, [0, 10, 20.5]) == (expected, code)


def test_bucket_numbers_with_given_labels_and_nulls():
    labels = ["low", "mid", "high"]
    out, err = bucket(pa.array([-5, 5, 50, None, float("nan")]), [0, 10], labels)
    assert out.type == pa.string()
    assert out.to_pylist() == ["low", "mid", "high", None, None]
    assert err.tolist() == [OK, OK, OK, OK, E_NUMBER]


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.none() | st.floats(allow_nan=False), max_size=30),
    edges=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=6, unique=True).map(sorted),
)
def test_bucket_index_matches_bisect(values, edges):
    import bisect

    labels = [f"b{i}" for i in range(len(edges) + 1)]
    out, err = bucket(pa.array(values, pa.float64()), edges, labels)
    expected = [None if v is None else labels[bisect.bisect_right(edges, v)] for v in values]
    assert out.to_pylist() == expected and not err.any()


@pytest.mark.parametrize(
    ("edges", "labels"),
    [
        ([], None),  # no edge
        ([1, 1], None),  # not strictly ascending
        ([2, 1], None),
        ([0, float("nan")], None),
        ([0, 1], ["a", "b"]),  # one label short
        ([0, 1], ["a", "b", "c", "d"]),  # one too many
    ],
)
def test_bucket_rejects_bad_edges_and_labels(edges, labels):
    with pytest.raises(ValueError):
        bucket(pa.array([1.0]), edges, labels)


# --- truncate_timestamps: text ----------------------------------------------------------------

# (value, unit, expected, code)
TRUNC_TEXT_TABLE = [
    ("2026-11-23T08:17:42.032Z", "minute", "2026-11-23T08:17:00.000Z", OK),  # fraction zeroed
    ("2026-11-23T08:17:42.032Z", "hour", "2026-11-23T08:00:00.000Z", OK),
    ("2026-11-23T08:17:42.032Z", "day", "2026-11-23T00:00:00.000Z", OK),
    ("2026-11-23T08:17:42.032Z", "month", "2026-11-01T00:00:00.000Z", OK),
    ("2026-11-23T08:17:42+02:00", "hour", "2026-11-23T08:00:00+02:00", OK),  # offset kept
    ("2026-11-23T08:17:42-0530", "day", "2026-11-23T00:00:00-0530", OK),  # basic offset
    ("2026-11-23T08:17:42+05", "hour", "2026-11-23T08:00:00+05", OK),  # hour-only offset
    ("2026-11-23 08:17:42", "hour", "2026-11-23 08:00:00", OK),  # space separator, no offset
    ("2026-11-23t08:17:42,5z", "minute", "2026-11-23t08:17:00,0z", OK),  # lower case, comma
    ("2026-11-23T08:17", "hour", "2026-11-23T08:00", OK),  # no seconds
    ("2026-11-23T08:17", "minute", "2026-11-23T08:17", OK),
    ("2026-11-23T08:17:42.123456789Z", "minute", "2026-11-23T08:17:00.000000000Z", OK),  # ns
    ("2026-11-23", "day", "2026-11-23", OK),  # a plain date is already a day
    ("2026-11-23", "month", "2026-11-01", OK),
    ("2016-12-31T23:59:60Z", "minute", "2016-12-31T23:59:00Z", OK),  # leap second
    ("2024-02-29", "month", "2024-02-01", OK),  # leap day (divisible by 4)
    ("2000-02-29", "day", "2000-02-29", OK),  # leap day (divisible by 400)
    ("0000-01-01", "month", "0000-01-01", OK),  # year 0 is ISO 8601's 1 BC
    ("2023-02-29", "day", None, E_TIMESTAMP),  # not a leap year
    ("1900-02-29", "day", None, E_TIMESTAMP),  # century, not divisible by 400
    ("2026-11-31", "day", None, E_TIMESTAMP),  # November has 30 days
    ("2026-13-01", "day", None, E_TIMESTAMP),
    ("2026-00-10", "day", None, E_TIMESTAMP),
    ("2026-11-00", "day", None, E_TIMESTAMP),
    ("2026-11-23T24:00:00", "day", None, E_TIMESTAMP),
    ("2026-11-23T08:60", "day", None, E_TIMESTAMP),
    ("2026-11-23T08:00:61", "day", None, E_TIMESTAMP),
    ("2026-11-23T08:00:00.", "day", None, E_TIMESTAMP),  # a fraction needs digits
    ("2026-11-23T08:00:00Z+", "day", None, E_TIMESTAMP),
    ("2026-11-23T08:00:00+24:00", "day", None, E_TIMESTAMP),
    ("2026-11-23T08:00:00+02:60", "day", None, E_TIMESTAMP),
    ("2026-11-23T08:00:00+02:0", "day", None, E_TIMESTAMP),
    ("2026-11-23T08", "day", None, E_TIMESTAMP),  # hour alone
    ("2026-11-23T8:00:00", "day", None, E_TIMESTAMP),
    ("2026-11-23T08:00:00 ", "day", None, E_TIMESTAMP),  # trailing space
    ("2026-11-23Z", "day", None, E_TIMESTAMP),  # an offset needs a time
    ("2026-11-23X08:00", "day", None, E_TIMESTAMP),
    ("26-11-23", "day", None, E_TIMESTAMP),
    ("2026/11/23", "day", None, E_TIMESTAMP),
    ("20261123T080000Z", "day", None, E_TIMESTAMP),  # basic format is not accepted
    ("+12026-11-23", "day", None, E_TIMESTAMP),  # expanded years are not accepted
    ("２０２６-11-23", "day", None, E_TIMESTAMP),  # fullwidth digits (multi-byte UTF-8)
    ("", "day", None, E_TIMESTAMP),
]


@pytest.mark.parametrize(("value", "unit", "expected", "code"), TRUNC_TEXT_TABLE)
def test_truncate_text_table(value, unit, expected, code):
    for typ in TEXT_TYPES:
        assert _run_text(truncate_timestamps, value, typ, unit) == (expected, code)


_datetimes = st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59))
_offsets = st.sampled_from(["", "Z", "+02:00", "-05:30", "+0545", "+00:00"])


def _iso_text(d: datetime, sep: str, frac: int, off: str, seconds: bool) -> str:
    text = f"{d.year:04d}-{d.month:02d}-{d.day:02d}"
    if not sep:
        return text
    text += f"{sep}{d.hour:02d}:{d.minute:02d}"
    if seconds:
        text += f":{d.second:02d}"
        if frac:
            text += "." + f"{d.microsecond:06d}{d.microsecond % 1000:03d}"[:frac]
    return text + off


@settings(max_examples=300, deadline=None)
@given(
    d=_datetimes,
    sep=st.sampled_from(["T", " ", ""]),
    frac=st.integers(0, 9),
    off=_offsets,
    seconds=st.booleans(),
    unit=st.sampled_from(["minute", "hour", "day", "month"]),
)
def test_truncate_text_matches_datetime_and_is_idempotent(d, sep, frac, off, seconds, unit):
    text = _iso_text(d, sep, frac, off, seconds)
    out, err = truncate_timestamps(pa.array([text]), unit)
    assert err.tolist() == [OK]
    got = out.to_pylist()[0]
    assert len(got) == len(text) and got[10:11] == text[10:11] and got.endswith(off if sep else "")
    expected = d.replace(second=0, microsecond=0)
    if unit in ("hour", "day", "month"):
        expected = expected.replace(minute=0)
    if unit in ("day", "month"):
        expected = expected.replace(hour=0)
    if unit == "month":
        expected = expected.replace(day=1)
    parsed = datetime.fromisoformat(got if sep else got + "T00:00")
    if sep:
        assert parsed.replace(tzinfo=None) == expected
    else:
        assert parsed.date() == expected.date()
    assert got <= text  # same layout, so text order is time order
    again, _ = truncate_timestamps(out, unit)
    assert again.to_pylist() == [got]


# --- truncate_timestamps: Arrow timestamps ------------------------------------------------------


def _floor_wall(d: datetime, unit: str) -> datetime:
    d = d.replace(second=0, microsecond=0)
    if unit != "minute":
        d = d.replace(minute=0)
    if unit in ("day", "month"):
        d = d.replace(hour=0)
    return d.replace(day=1) if unit == "month" else d


_TICKS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    tunit=st.sampled_from(["s", "ms", "us", "ns"]),
    unit=st.sampled_from(["minute", "hour", "day", "month"]),
)
def test_truncate_naive_timestamps_equal_arrow_floor_temporal(data, tunit, unit):
    f = _TICKS[tunit]
    lo, hi = (-9_000_000_000, 9_000_000_000) if tunit == "ns" else (-62135596800, 253402300799)
    secs = data.draw(st.lists(st.none() | st.integers(lo, hi), max_size=20))
    ticks = [None if s is None else s * f + data.draw(st.integers(0, f - 1)) for s in secs]
    arr = pa.array(ticks, pa.timestamp(tunit))
    out, err = truncate_timestamps(arr, unit)
    assert out.type == arr.type and not err.any()
    assert out.equals(pc.floor_temporal(arr, unit=unit))  # Arrow's own implementation


@settings(max_examples=100, deadline=None)
@given(
    # 1900-2037: past 2037, Arrow's time zone database and Python's zoneinfo (the oracle) extend
    # daylight-saving rules differently (found: Europe/Berlin, 2040-03-26), so they cannot agree
    seconds=st.lists(st.integers(-2_208_988_800, 2_145_916_800), max_size=10),
    tz=st.sampled_from(["UTC", "Europe/Berlin", "America/Sao_Paulo", "Asia/Kolkata", "+05:45"]),
    unit=st.sampled_from(["minute", "hour", "day", "month"]),
)
def test_truncate_zoned_timestamps_floor_the_local_wall_clock(seconds, tz, unit):
    arr = pa.array(seconds, pa.timestamp("s", tz))
    out, err = truncate_timestamps(arr, unit)
    assert out.type == arr.type and not err.any()
    got = out.cast(pa.int64()).to_pylist()
    again, _ = truncate_timestamps(out, unit)
    assert again.equals(out)  # idempotent
    zone = timezone(timedelta(hours=5, minutes=45)) if tz == "+05:45" else ZoneInfo(tz)
    for g, s in zip(got, seconds, strict=True):
        assert g <= s  # never later than the input
        wall = _floor_wall(datetime.fromtimestamp(s, zone).replace(tzinfo=None), unit)
        first = wall.replace(tzinfo=zone, fold=0)  # fold=0: the earlier of two equal walls
        exists = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall
        if exists:
            assert g == int(first.timestamp())
        else:  # in a DST gap: the first instant after it
            assert datetime.fromtimestamp(g - 1, zone).replace(tzinfo=None) < wall
            assert datetime.fromtimestamp(g, zone).replace(tzinfo=None) > wall


def test_truncate_zoned_day_floors_local_midnight_and_handles_gaps_and_folds():
    berlin = pa.timestamp("s", "Europe/Berlin")
    # 2026-03-29 10:00 CEST (+02:00) -> local midnight 00:00 CET (+01:00) = 2026-03-28T23:00Z
    t = int(datetime(2026, 3, 29, 8, 0, tzinfo=UTC).timestamp())
    out, _ = truncate_timestamps(pa.array([t], berlin), "day")
    assert out.cast(pa.int64()).to_pylist() == [
        int(datetime(2026, 3, 28, 23, tzinfo=UTC).timestamp())
    ]
    # fold: 2026-10-25 02:30 +01:00 (the second 02:30) -> hour -> the first 02:00 (+02:00)
    t = int(datetime(2026, 10, 25, 1, 30, tzinfo=UTC).timestamp())
    out, _ = truncate_timestamps(pa.array([t], berlin), "hour")
    assert out.cast(pa.int64()).to_pylist() == [
        int(datetime(2026, 10, 25, 0, tzinfo=UTC).timestamp())
    ]
    # gap: Sao Paulo skipped 2018-11-04 00:00-01:00; the day starts at 01:00 -02:00 (03:00Z)
    t = int(datetime(2018, 11, 4, 5, 30, tzinfo=UTC).timestamp())
    out, _ = truncate_timestamps(pa.array([t], pa.timestamp("s", "America/Sao_Paulo")), "day")
    assert out.cast(pa.int64()).to_pylist() == [
        int(datetime(2018, 11, 4, 3, tzinfo=UTC).timestamp())
    ]


def test_truncate_dates_and_pre_1970_values():
    d = pa.array([date(2024, 2, 29), date(1969, 12, 31), None, date(1, 1, 1)], pa.date32())
    out, err = truncate_timestamps(d, "month")
    assert out.type == pa.date32() and not err.any()
    assert out.to_pylist() == [date(2024, 2, 1), date(1969, 12, 1), None, date(1, 1, 1)]
    same, _ = truncate_timestamps(d, "hour")
    assert same.equals(d)  # a date is already whole days
    ts = pa.array([datetime(1969, 12, 31, 23, 59, 59, 999999)], pa.timestamp("us"))
    out, _ = truncate_timestamps(ts, "hour")
    assert out.to_pylist() == [datetime(1969, 12, 31, 23)]  # floors toward the past


def test_truncate_overflow_is_an_error_not_a_wraparound():
    arr = pa.array([-(2**63) + 1, 0], pa.timestamp("ns"))
    out, err = truncate_timestamps(arr, "minute")
    assert err.tolist() == [E_RANGE, OK] and out.to_pylist()[0] is None


def test_truncate_rejects_bad_unit_and_type():
    with pytest.raises(ValueError):
        truncate_timestamps(pa.array(["2026-01-01"]), "week")
    with pytest.raises(TypeError):
        truncate_timestamps(pa.array([1]), "day")


# --- ip_prefix --------------------------------------------------------------------------------


def _ref_prefix(ip: str, v4: int, v6: int) -> str:
    """ipaddress's network address; IPv4-mapped results in the RFC 5952 section 5 form that
    Python 3.13 writes (3.11 writes ::ffff:102:300)."""
    bits = v4 if ipaddress.ip_address(ip).version == 4 else v6
    net = ipaddress.ip_network(f"{ip}/{bits}", strict=False).network_address
    if net.version == 6 and net.ipv4_mapped is not None:
        return f"::ffff:{net.ipv4_mapped}"
    return net.compressed


# (value, v4_bits, v6_bits, expected, code)
IP_TABLE = [
    ("192.168.1.77", 24, 64, "192.168.1.0", OK),
    ("192.168.1.77", 0, 64, "0.0.0.0", OK),  # /0: everything masked
    ("192.168.1.77", 32, 64, "192.168.1.77", OK),  # /32: unchanged
    ("10.255.255.255", 9, 64, "10.128.0.0", OK),  # a prefix that splits an octet
    ("2001:db8:85a3::8a2e:370:7334", 24, 48, "2001:db8:85a3::", OK),
    ("2001:0DB8:0000:0000:0000:0000:0000:0001", 24, 128, "2001:db8::1", OK),  # full, upper case
    ("2001:db8:0:0:1:0:0:1", 24, 128, "2001:db8::1:0:0:1", OK),  # first of two equal runs
    ("2001:db8:0:1:1:1:1:1", 24, 128, "2001:db8:0:1:1:1:1:1", OK),  # one zero group: no '::'
    ("::", 24, 64, "::", OK),
    ("::1", 24, 127, "::", OK),
    ("1::", 24, 128, "1::", OK),
    ("1::2:3:4:5:6:7", 24, 128, "1:0:2:3:4:5:6:7", OK),  # '::' standing for one group
    ("::ffff:1.2.3.4", 24, 120, "::ffff:1.2.3.0", OK),  # IPv4-mapped: v6 bits apply
    ("::ffff:1.2.3.4", 24, 64, "::", OK),
    ("::FFFF:102:304", 24, 128, "::ffff:1.2.3.4", OK),  # mapped, written in hex
    ("::1.2.3.4", 24, 128, "::102:304", OK),  # IPv4-compatible (deprecated): hex
    ("1:2:3:4:5:6:1.2.3.4", 24, 128, "1:2:3:4:5:6:102:304", OK),
    ("fe80::1:2:3:4", 24, 10, "fe80::", OK),
    ("1.2.3", 24, 64, None, E_IP),
    ("1.2.3.4.5", 24, 64, None, E_IP),
    ("256.1.1.1", 24, 64, None, E_IP),
    ("01.2.3.4", 24, 64, None, E_IP),  # leading zero (octal ambiguity)
    ("1.2.3.4 ", 24, 64, None, E_IP),
    ("1:2:3:4:5:6:7", 24, 64, None, E_IP),  # seven groups, no '::'
    ("1:2:3:4:5:6:7:8:9", 24, 64, None, E_IP),
    ("1:2:3:4::5:6:7:8", 24, 64, None, E_IP),  # '::' must stand for at least one group
    ("1::2::3", 24, 64, None, E_IP),
    ("12345::", 24, 64, None, E_IP),  # five hex digits
    (":1:2:3:4:5:6:7", 24, 64, None, E_IP),
    ("1:2:3:4:5:6:7:", 24, 64, None, E_IP),
    ("::ffff:1.2.3", 24, 64, None, E_IP),
    ("1:2:3:4:5:6:7:1.2.3.4", 24, 64, None, E_IP),  # dotted tail after seven groups
    ("::1.2.3.4:5", 24, 64, None, E_IP),  # dotted part not at the end
    ("fe80::1%eth0", 24, 64, None, E_IP),  # zone ids are refused (ipaddress accepts them)
    ("::g", 24, 64, None, E_IP),
    ("１.2.3.4", 24, 64, None, E_IP),  # fullwidth digit
    ("", 24, 64, None, E_IP),
]


@pytest.mark.parametrize(("value", "v4", "v6", "expected", "code"), IP_TABLE)
def test_ip_prefix_table(value, v4, v6, expected, code):
    for typ in TEXT_TYPES:
        assert _run_text(ip_prefix, value, typ, v4, v6) == (expected, code)
    if code == OK:
        assert _ref_prefix(value, v4, v6) == expected
    elif "%" not in value:
        with pytest.raises(ValueError):
            ipaddress.ip_address(value)  # the oracle refuses it too


def _v6_text(n: int, form: str) -> str:
    a = ipaddress.IPv6Address(n)
    if form == "exploded":
        return a.exploded
    if form == "upper":
        return a.compressed.upper()
    if form == "dotted":
        return a.exploded[:30] + str(ipaddress.IPv4Address(n & 0xFFFFFFFF))
    return a.compressed


_v6_ints = (
    st.integers(0, 2**128 - 1)
    | st.builds(
        lambda hi, lo, z: (hi << 96) | (0xFFFF << 32 if z else 0) | lo,
        st.sampled_from([0, 0x20010DB8]),
        st.integers(0, 2**32 - 1),
        st.booleans(),
    )
    | st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF]), min_size=8, max_size=8).map(
        lambda gs: int.from_bytes(b"".join(g.to_bytes(2, "big") for g in gs), "big")
    )
)


@settings(max_examples=300, deadline=None)
@given(
    v4=st.lists(st.integers(0, 2**32 - 1), max_size=8),
    v6=st.lists(
        st.tuples(_v6_ints, st.sampled_from(["compressed", "exploded", "upper", "dotted"])),
        max_size=8,
    ),
    v4_bits=st.integers(0, 32),
    v6_bits=st.integers(0, 128),
)
def test_ip_prefix_matches_ipaddress(v4, v6, v4_bits, v6_bits):
    texts = [str(ipaddress.IPv4Address(n)) for n in v4] + [_v6_text(n, f) for n, f in v6]
    out, err = ip_prefix(pa.array(texts), v4_bits, v6_bits)
    assert not err.any()
    assert out.to_pylist() == [_ref_prefix(t, v4_bits, v6_bits) for t in texts]


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="0123456789abcdefABCDEF:.", max_size=45))
def test_ip_prefix_accepts_exactly_what_ipaddress_accepts(text):
    out, err = ip_prefix(pa.array([text]), 32, 128)
    try:
        expected = _ref_prefix(text, 32, 128)
    except ValueError:
        expected = None
    assert out.to_pylist() == [expected]
    assert err.tolist() == [OK if expected is not None else E_IP]


@pytest.mark.parametrize(("v4", "v6"), [(-1, 64), (33, 64), (24, 129), (24, -1), (True, 64)])
def test_ip_prefix_rejects_bad_bits(v4, v6):
    with pytest.raises(ValueError):
        ip_prefix(pa.array(["1.2.3.4"]), v4, v6)


# --- geo_round --------------------------------------------------------------------------------


def _ref_geo(text: str, decimals: int) -> str:
    r = Decimal(text).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)
    out = f"{abs(r) if r == 0 else r:f}"  # no negative zero
    return out + ".0" if decimals == 0 and ("." in text or "e" in text.lower()) else out


# (value, decimals, expected, code)
GEO_TABLE = [
    ("52.520008", 2, "52.52", OK),
    ("52.525", 2, "52.53", OK),  # tie: half away from zero (a binary float says 52.52)
    ("-52.525", 2, "-52.53", OK),
    ("-0.004", 2, "0.00", OK),  # no negative zero
    ("13", 3, "13.000", OK),  # integer text gets the decimals
    ("179.9999", 2, "180.00", OK),
    ("-180", 0, "-180", OK),  # the edge of the range is in it
    ("-179.5", 0, "-180.0", OK),  # 0 decimals: text written with a fraction keeps ".0"
    ("180.0000001", 2, None, E_RANGE),
    ("-1e3", 2, None, E_RANGE),
    ("north", 2, None, E_NUMBER),
]


@pytest.mark.parametrize(("value", "decimals", "expected", "code"), GEO_TABLE)
def test_geo_round_table(value, decimals, expected, code):
    for typ in TEXT_TYPES:
        assert _run_text(geo_round, value, typ, decimals) == (expected, code)
    if code == OK:
        assert _ref_geo(value, decimals) == expected


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.decimals(-180, 180, places=8, allow_nan=False), max_size=20),
    decimals=st.integers(0, 8),
)
def test_geo_round_text_matches_decimal_half_up(values, decimals):
    texts = [str(v) if "E" not in str(v) else f"{v:f}" for v in values]
    out, err = geo_round(pa.array(texts), decimals)
    expected = [_ref_geo(t, decimals) for t in texts]
    assert out.to_pylist() == expected and not err.any()


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(-180, 180), max_size=20),
    decimals=st.integers(0, 10),
)
def test_geo_round_floats_match_decimal_half_up_of_repr(values, decimals):
    out, err = geo_round(pa.array(values, pa.float64()), decimals)
    assert out.to_pylist() == [float(_ref_geo(repr(v), decimals)) for v in values]
    assert not err.any()


def test_geo_round_numbers_nulls_and_errors():
    out, err = geo_round(pa.array([1.25, None, float("nan"), 200.0, -1.25]), 1)
    assert out.to_pylist() == [1.3, None, None, None, -1.3]
    assert err.tolist() == [OK, OK, E_NUMBER, E_RANGE, OK]
    with pytest.raises(ValueError):
        geo_round(pa.array([1.0]), 16)


# --- geohash ------------------------------------------------------------------------------------

_B32 = "0123456789bcdefghjkmnpqrstuvwxyz"


def _ref_geohash(lat: float, lon: float, precision: int) -> str:
    """Niemeyer's geohash: interleave bisection bits, longitude first; a midpoint goes up."""
    lat_iv, lon_iv = [-90.0, 90.0], [-180.0, 180.0]
    bits = []
    for k in range(5 * precision):
        iv, v = (lon_iv, lon) if k % 2 == 0 else (lat_iv, lat)
        mid = (iv[0] + iv[1]) / 2
        bits.append(v >= mid)
        iv[0 if v >= mid else 1] = mid
    return "".join(
        _B32[int("".join("1" if b else "0" for b in bits[i : i + 5]), 2)]
        for i in range(0, len(bits), 5)
    )


# published vectors (Wikipedia "Geohash"; geohash.org) and edge cases
GEOHASH_TABLE = [
    (42.6, -5.6, 5, "ezs42"),
    (57.64911, 10.40744, 11, "u4pruydqqvj"),
    (0.0, 0.0, 6, "s00000"),  # both midpoints: upper halves
    (90.0, 180.0, 4, "zzzz"),  # the north-east corner
    (-90.0, -180.0, 4, "0000"),  # the south-west corner
]


@pytest.mark.parametrize(("lat", "lon", "precision", "expected"), GEOHASH_TABLE)
def test_geohash_table(lat, lon, precision, expected):
    assert _ref_geohash(lat, lon, precision) == expected
    out, err = geohash(pa.array([lat]), pa.array([lon]), precision)
    assert out.to_pylist() == [expected] and not err.any()
    out, err = geohash(pa.array([repr(lat)], pa.large_string()), pa.array([repr(lon)]), precision)
    assert out.to_pylist() == [expected] and not err.any()  # number text works the same


@settings(max_examples=200, deadline=None)
@given(
    pts=st.lists(st.tuples(st.floats(-90, 90), st.floats(-180, 180)), max_size=20),
    precision=st.integers(1, 12),
)
def test_geohash_matches_reference(pts, precision):
    lat = pa.array([p[0] for p in pts], pa.float64())
    lon = pa.array([p[1] for p in pts], pa.float64())
    out, err = geohash(lat, lon, precision)
    assert out.to_pylist() == [_ref_geohash(a, b, precision) for a, b in pts]
    assert not err.any()


def test_geohash_nulls_ranges_and_errors():
    lat = pa.array([None, 10.0, 90.5, 10.0, float("nan"), float("inf"), 10.0])
    lon = pa.array([10.0, None, 10.0, -180.1, 10.0, 10.0, 10.0])
    out, err = geohash(lat, lon, 3)
    assert out.to_pylist()[:6] == [None] * 6 and out.to_pylist()[6] == _ref_geohash(10, 10, 3)
    assert err.tolist() == [OK, OK, E_RANGE, E_RANGE, E_NUMBER, E_RANGE, OK]
    out, err = geohash(pa.array(["1", "x"]), pa.array(["2", "3"]), 2)
    assert err.tolist() == [OK, E_NUMBER]
    with pytest.raises(ValueError):
        geohash(pa.array([1.0]), pa.array([1.0, 2.0]), 5)
    with pytest.raises(ValueError):
        geohash(pa.array([1.0]), pa.array([1.0]), 13)


# --- age_band ---------------------------------------------------------------------------------

# (value, kwargs, expected, code)
AGE_TABLE = [
    ("34", {}, "30-39", OK),
    ("0", {}, "0-9", OK),
    ("89", {}, "80-89", OK),
    ("90", {}, ">=90", OK),  # the top opens the top band
    ("130", {}, ">=90", OK),
    ("130", {"top": None}, "130-139", OK),  # no top band
    ("84", {"top": 85}, "80-84", OK),  # top not a multiple of the width: last band cut short
    ("85", {"top": 85}, ">=85", OK),
    ("42", {"width": 1}, "42", OK),  # width 1: single ages
    ("42", {"width": 5}, "40-44", OK),
    ("-0", {}, "0-9", OK),
    ("-1", {}, None, E_RANGE),  # negative
    ("99999999999999999999", {"top": None}, None, E_RANGE),  # beyond int64
    ("34.0", {}, None, E_WHOLE),  # integer text only
    ("3.4e1", {}, None, E_WHOLE),
    ("34.5", {}, None, E_WHOLE),
    ("thirty", {}, None, E_NUMBER),
    ("", {}, None, E_NUMBER),
]


@pytest.mark.parametrize(("value", "kwargs", "expected", "code"), AGE_TABLE)
def test_age_band_table(value, kwargs, expected, code):
    for typ in TEXT_TYPES:
        assert _run_text(age_band, value, typ, **kwargs) == (expected, code)


def test_age_band_numbers():
    out, err = age_band(pa.array([34, None, -5, 95], pa.int16()))
    assert out.type == pa.string()
    assert out.to_pylist() == ["30-39", None, None, ">=90"]
    assert err.tolist() == [OK, OK, E_RANGE, OK]
    out, err = age_band(pa.array([34.0, 34.5, float("nan"), float("inf"), 1e300]))
    assert out.to_pylist() == ["30-39", None, None, None, None]
    assert err.tolist() == [OK, E_WHOLE, E_NUMBER, E_RANGE, E_RANGE]


@settings(max_examples=100, deadline=None)
@given(
    ages=st.lists(st.none() | st.integers(0, 10**6), max_size=30),
    width=st.integers(1, 25),
    top=st.none() | st.integers(1, 200),
)
def test_age_band_matches_reference(ages, width, top):
    def ref(a):
        if a is None:
            return None
        if top is not None and a >= top:
            return f">={top}"
        lo = a // width * width
        hi = lo + width - 1 if top is None else min(lo + width - 1, top - 1)
        return str(lo) if lo == hi else f"{lo}-{hi}"

    out, err = age_band(pa.array(ages, pa.int64()), width, top)
    assert out.to_pylist() == [ref(a) for a in ages] and not err.any()


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"top": 0}, {"width": 2.5}, {"top": -1}])
def test_age_band_rejects_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        age_band(pa.array([1]), **kwargs)


# --- shared contract: nulls, empty, chunked, sliced, errors leave nothing behind ---------------

CALLS = [
    pytest.param(lambda a: round_numbers(a, 0.5), ["1.25", None, "x"], id="round_numbers"),
    pytest.param(lambda a: bucket(a, [0, 1]), ["0.5", None, "x"], id="bucket"),
    pytest.param(lambda a: truncate_timestamps(a, "day"), ["2026-01-01", None, "x"], id="truncate"),
    pytest.param(lambda a: ip_prefix(a, 8, 32), ["1.2.3.4", None, "x"], id="ip_prefix"),
    pytest.param(lambda a: geo_round(a, 1), ["1.25", None, "x"], id="geo_round"),
    pytest.param(lambda a: geohash(a, a, 4), ["1.25", None, "x"], id="geohash"),
    pytest.param(lambda a: age_band(a), ["31", None, "x"], id="age_band"),
]


@pytest.mark.parametrize(("call", "values"), CALLS)
def test_nulls_empty_chunked_and_sliced_inputs(call, values):
    ref, ref_err = call(pa.array(values))
    assert ref.to_pylist()[1:] == [None, None]  # null stays null, an error is null
    assert ref_err.tolist()[:2] == [0, 0] and ref_err[2] in ERRORS
    chunked = pa.chunked_array([pa.array(values[:1]), pa.array(values[1:])], pa.string())
    out, err = call(chunked)
    assert out.to_pylist() == ref.to_pylist() and err.tolist() == ref_err.tolist()
    out, err = call(pa.array(["skip", *values], pa.large_string()).slice(1))
    assert out.to_pylist() == ref.to_pylist() and err.tolist() == ref_err.tolist()
    out, err = call(pa.array([], pa.string()))
    assert len(out) == 0 and len(err) == 0
    out, err = call(pa.chunked_array([], pa.string()))
    assert len(out) == 0 and len(err) == 0


@pytest.mark.parametrize(("call", "values"), CALLS)
def test_rejected_values_leave_no_bytes_in_the_output(call, values):
    secret = "4111111111111111-secret"
    out, err = call(pa.array([secret, values[0]]))
    assert err[0] != 0 and out.to_pylist()[0] is None
    data = out.buffers()[2]
    assert secret.encode() not in (data.to_pybytes() if data is not None else b"")


def test_error_messages_name_no_values():
    assert set(ERRORS) == {E_NUMBER, E_RANGE, E_TIMESTAMP, E_IP, E_WHOLE}
    assert all(isinstance(m, str) and m for m in ERRORS.values())


def test_numeric_outputs_hide_nothing_under_nulls():
    out, err = round_numbers(pa.array([-(2**63), 5], pa.int64()), 10, "floor")
    assert err.tolist() == [E_RANGE, OK]
    raw = np.frombuffer(out.buffers()[1], np.int64)[: len(out)]
    assert raw[0] == 0  # not the input, not a wrapped result


def test_timedelta_sanity_of_the_text_table():
    # every OK row of the truncation table parses back to a time not after its input
    for value, _unit, expected, code in TRUNC_TEXT_TABLE:
        if code == OK and value[10:11] == "T" and value[-1] == "Z" and "60" not in value[17:19]:
            a = datetime.fromisoformat(value)
            b = datetime.fromisoformat(expected)
            assert timedelta(0) <= a - b < timedelta(days=31)
