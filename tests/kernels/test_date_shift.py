"""Per-subject date shifting: offsets equal a stdlib HMAC reference, intervals are kept."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raymask.kernels.date_shift import ERRORS, MAX_DAYS, date_shift, subject_offsets

OK, E_SUBJECT, E_DATE, E_RANGE = 0, 1, 2, 3
KEY = b"date-shift-test-key-0123456789ab"


def _ref_offset(subject: str, key: bytes, max_days: int) -> int:
    """The documented formula, with the stdlib: first 8 digest bytes, big-endian, mod 2M+1."""
    u = int.from_bytes(hmac.new(key, subject.encode(), hashlib.sha256).digest()[:8], "big")
    return u % (2 * max_days + 1) - max_days


def _subject_with(offset_sign: int, max_days: int = 30) -> str:
    """A subject whose offset has the given sign (found by search, deterministic)."""
    for i in range(1000):
        s = f"subject-{i}"
        if np.sign(_ref_offset(s, KEY, max_days)) == offset_sign:
            return s
    raise AssertionError("no subject found")


# --- offsets --------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    subjects=st.lists(st.text(max_size=80), max_size=20),
    key=st.binary(min_size=1, max_size=100),  # longer than a block: hashed first (RFC 2104)
    max_days=st.integers(1, MAX_DAYS),
)
def test_offsets_match_stdlib_hmac_reference(subjects, key, max_days):
    got = subject_offsets(pa.array(subjects, pa.string()), key, max_days)
    assert got.dtype == np.int64
    assert got.tolist() == [_ref_offset(s, key, max_days) for s in subjects]
    assert all(-max_days <= o <= max_days for o in got)


def test_offsets_are_stable_across_calls_types_and_chunks():
    subjects = ["alice", "bob", "Zoë", "", "alice"]
    a = subject_offsets(pa.array(subjects), KEY, 365)
    b = subject_offsets(pa.chunked_array([subjects[:2], subjects[2:]], pa.large_string()), KEY, 365)
    assert a.tolist() == b.tolist() and a[0] == a[4]
    ints = subject_offsets(pa.array([42, None, -7]), KEY, 365)  # integer ids: their decimal text
    assert ints.tolist() == [_ref_offset("42", KEY, 365), 0, _ref_offset("-7", KEY, 365)]


def test_offsets_depend_on_the_key():
    subjects = pa.array([f"s{i}" for i in range(64)])
    a = subject_offsets(subjects, KEY, 1000)
    b = subject_offsets(subjects, KEY + b"!", 1000)
    assert (a != b).sum() > 50  # a different key reshuffles (equal by chance: 1 in 2001 each)


def test_offsets_cover_the_whole_range():
    # 20,000 subjects on 2 * 3 + 1 = 7 values: each value is expected 2,857 times; a value
    # missing entirely has probability < 7 * (6/7)**20000, i.e. never
    subjects = pa.array([str(i) for i in range(20_000)])
    got = subject_offsets(subjects, KEY, 3)
    assert set(got.tolist()) == set(range(-3, 4))


# --- text -------------------------------------------------------------------------------------------


def _shift_text(text: str, days: int) -> str:
    d = date.fromisoformat(text[:10]) + timedelta(days=days)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}" + text[10:]


# (value, description of the edge case) shifted by subjects with a negative and a positive offset
TEXT_CASES = [
    "2026-11-23",  # plain date
    "2026-11-23T08:00:00.032Z",  # RFC 3339 with fraction and Z
    "2026-11-23T08:00:00+02:00",  # offset kept as written
    "2026-11-23 08:00:00",  # space separator
    "2026-11-23t08:00:00,5-0530",  # lower case, comma fraction, basic offset
    "2024-02-29T23:59:59Z",  # leap day
    "2024-03-01",  # right after a leap day
    "2023-03-01",  # right after a non-leap February
    "2000-02-28",  # century leap year (divisible by 400)
    "1900-03-01",  # century non-leap year
    "2026-12-31T23:59:59.999999999Z",  # year rollover forward
    "2027-01-01T00:00:00Z",  # year rollover backward
    "1969-12-31",  # before the epoch
    "0001-01-31",  # near the start of the calendar: 30 days back is still year 1
]


@pytest.mark.parametrize("value", TEXT_CASES)
@pytest.mark.parametrize("sign", [-1, 1])
def test_text_moves_only_the_date(value, sign):
    subject = _subject_with(sign)
    days = _ref_offset(subject, KEY, 30)
    for typ in (pa.string(), pa.large_string()):
        out, err = date_shift(pa.array([value], typ), pa.array([subject]), KEY, 30)
        assert out.type == typ and err.tolist() == [OK]
        assert out.to_pylist() == [_shift_text(value, days)]


@settings(max_examples=300, deadline=None)
@given(
    d=st.dates(date(100, 1, 1), date(9899, 12, 31)),
    subject=st.text(max_size=20),
    max_days=st.integers(1, MAX_DAYS),
    suffix=st.sampled_from(["", "T08:15", "T23:59:60Z", " 00:00:00.5+14:00", "T12:00:00-0800"]),
)
def test_text_shift_equals_datetime_arithmetic(d, subject, max_days, suffix):
    text = f"{d.year:04d}-{d.month:02d}-{d.day:02d}{suffix}"
    out, err = date_shift(pa.array([text]), pa.array([subject]), KEY, max_days)
    assert err.tolist() == [OK]
    assert out.to_pylist() == [_shift_text(text, _ref_offset(subject, KEY, max_days))]


@settings(max_examples=200, deadline=None)
@given(
    a=st.dates(date(100, 1, 1), date(9899, 12, 31)),
    b=st.dates(date(100, 1, 1), date(9899, 12, 31)),
    subject=st.text(max_size=20),
    max_days=st.integers(1, MAX_DAYS),
)
def test_intervals_within_a_subject_are_preserved(a, b, subject, max_days):
    values = pa.array([a.isoformat(), b.isoformat()])
    out, err = date_shift(values, pa.array([subject, subject]), KEY, max_days)
    sa, sb = (date.fromisoformat(v) for v in out.to_pylist())
    assert not err.any()
    assert sb - sa == b - a
    assert abs((sa - a).days) <= max_days
    # and again in a later call, with the values as date32: the same shift
    out32, _ = date_shift(
        pa.array([a, b], pa.date32()), pa.array([subject, subject]), KEY, max_days
    )
    assert out32.to_pylist() == [sa, sb]


# --- Arrow dates and timestamps ------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Berlin"])
def test_timestamps_move_by_whole_days_of_exact_time(unit, tz):
    subjects = pa.array(["alice", "bob", "alice", None])
    t0 = datetime(2026, 3, 28, 12, 30, 15, 123456, tzinfo=UTC)
    ts = [t0, t0, t0 + timedelta(hours=30), t0]
    typ = pa.timestamp(unit, tz)
    arr = pa.array([int(t.timestamp() * 10**6) for t in ts], pa.timestamp("us", tz)).cast(
        typ, safe=False
    )
    out, err = date_shift(arr, subjects, KEY, 100)
    assert out.type == typ
    assert err.tolist() == [OK, OK, OK, E_SUBJECT]
    per_day = 86400 * {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    raw_in = arr.cast(pa.int64()).to_pylist()
    raw_out = out.cast(pa.int64()).to_pylist()
    offs = [_ref_offset(s, KEY, 100) for s in ("alice", "bob", "alice")]
    assert raw_out[:3] == [r + o * per_day for r, o in zip(raw_in, offs, strict=False)]
    assert raw_out[2] - raw_out[0] == raw_in[2] - raw_in[0]  # interval kept exactly
    assert raw_out[3] is None


def test_date32_and_date64():
    subjects = pa.array(["alice", "bob", None, "carol"])
    days = [_ref_offset(s, KEY, 10) for s in ("alice", "bob")]
    d32 = pa.array([date(2024, 2, 29), date(1970, 1, 1), date(2000, 1, 1), None], pa.date32())
    out, err = date_shift(d32, subjects, KEY, 10)
    assert out.type == pa.date32()
    assert out.to_pylist() == [
        date(2024, 2, 29) + timedelta(days=days[0]),
        date(1970, 1, 1) + timedelta(days=days[1]),
        None,  # null subject
        None,  # null value
    ]
    assert err.tolist() == [OK, OK, E_SUBJECT, OK]
    d64 = d32.cast(pa.date64())
    out64, err64 = date_shift(d64, subjects, KEY, 10)
    assert out64.type == pa.date64() and out64.to_pylist() == out.to_pylist()
    assert err64.tolist() == err.tolist()


def test_range_errors_instead_of_wrapping_or_bad_years():
    up, down = _subject_with(1), _subject_with(-1)
    out, err = date_shift(pa.array(["9999-12-31", "0000-01-01"]), pa.array([up, down]), KEY, 30)
    assert err.tolist() == [E_RANGE, E_RANGE] and out.to_pylist() == [None, None]
    ts = pa.array([2**63 - 1, -(2**63)], pa.timestamp("ns"))
    out, err = date_shift(ts, pa.array([up, down]), KEY, 30)
    assert err.tolist() == [E_RANGE, E_RANGE] and out.null_count == 2


# --- errors, nulls, shapes ------------------------------------------------------------------------

# (value, subject, code): what cannot be shifted is an error, never the unshifted value
ERROR_TABLE = [
    ("2026-11-23", None, E_SUBJECT),  # no subject: no offset
    ("2026-02-30", "alice", E_DATE),  # no such day
    ("23/11/2026", "alice", E_DATE),
    ("2026-11-23T25:00", "alice", E_DATE),
    ("", "alice", E_DATE),
    ("２０２６-11-23", "alice", E_DATE),  # fullwidth digits
    ("garbage", None, E_SUBJECT),  # the subject is checked first
]


@pytest.mark.parametrize(("value", "subject", "code"), ERROR_TABLE)
def test_errors_are_null_and_leave_no_trace(value, subject, code):
    out, err = date_shift(pa.array([value, "2026-01-01"]), pa.array([subject, "x"]), KEY, 30)
    assert err.tolist() == [code, OK] and code in ERRORS
    assert out.to_pylist()[0] is None
    if value:
        assert value.encode() not in out.buffers()[2].to_pybytes()  # not hidden under the null


def test_null_subject_never_leaks_the_date_in_the_value_buffer():
    d = pa.array([date(2024, 2, 29)], pa.date32())
    out, err = date_shift(d, pa.array([None], pa.string()), KEY, 30)
    assert err.tolist() == [E_SUBJECT]
    assert np.frombuffer(out.buffers()[1], np.int32)[0] == 0


def test_nulls_empty_chunked_and_sliced():
    values = ["2026-11-23", None, "2026-01-01"]
    subjects = ["a", "b", None]
    ref, ref_err = date_shift(pa.array(values), pa.array(subjects), KEY, 30)
    assert ref.to_pylist()[1:] == [None, None] and ref_err.tolist() == [OK, OK, E_SUBJECT]
    out, err = date_shift(
        pa.chunked_array([values[:2], values[2:]], pa.string()),
        pa.chunked_array([subjects[:1], subjects[1:]], pa.large_string()),
        KEY,
        30,
    )
    assert out.to_pylist() == ref.to_pylist() and err.tolist() == ref_err.tolist()
    out, err = date_shift(
        pa.array(["skip", *values], pa.large_string()).slice(1),
        pa.array(["skip", *subjects]).slice(1),
        KEY,
        30,
    )
    assert out.type == pa.large_string() and out.to_pylist() == ref.to_pylist()
    out, err = date_shift(pa.array([], pa.string()), pa.array([], pa.string()), KEY, 30)
    assert len(out) == 0 and len(err) == 0
    out, err = date_shift(pa.array([None, None]), pa.array(["a", None]), KEY, 30)
    assert out.to_pylist() == [None, None] and not err.any()  # null values are not errors


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"max_days": 0}, ValueError),  # a zero shift would publish the true dates
        ({"max_days": MAX_DAYS + 1}, ValueError),
        ({"max_days": 1.5}, ValueError),
        ({"key": b""}, ValueError),
        ({"key": "text"}, ValueError),
    ],
)
def test_bad_parameters_raise_at_call_time(kwargs, exc):
    args = {"key": KEY, "max_days": 30, **kwargs}
    with pytest.raises(exc):
        date_shift(pa.array(["2026-01-01"]), pa.array(["a"]), **args)


def test_shape_and_type_errors_raise():
    with pytest.raises(ValueError):
        date_shift(pa.array(["2026-01-01"]), pa.array(["a", "b"]), KEY, 30)
    with pytest.raises(TypeError):
        date_shift(pa.array([1.5]), pa.array(["a"]), KEY, 30)
    with pytest.raises(TypeError):
        date_shift(pa.array(["2026-01-01"]), pa.array([1.5]), KEY, 30)


def test_modulo_bias_bound_holds_for_the_largest_max_days():
    assert (2 * MAX_DAYS + 1) / 2**64 < 2**-50
