"""The protobuf codec against the `protobuf` library as the oracle: every scalar type extracted
as the library reads it, masked values re-encoded with every enclosing length fixed up, unknown
fields and untouched bytes kept, broken frames to the dead letters; and a fuzzer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raymask.kernels.codecs import protobuf as pb
from raymask.kernels.codecs.spans import K_MISSING

PROTO = Path(__file__).with_name("data") / "payment.proto"
MSG = "raymask.test.Payment"


@pytest.fixture(scope="module")
def schema():
    ds = pb.compile_proto(PROTO)
    return ds, pb.message_class(ds, MSG)


def _random_messages(cls, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        m = cls()
        if rng.random() < 0.9:
            m.account_id = f"acc-{i}-" + "é" * int(rng.integers(0, 4))
        m.amount_cents = int(rng.integers(-(2**62), 2**62))
        m.score = float(rng.normal(0, 1e6))
        m.delta = int(rng.integers(-(2**31), 2**31 - 1))
        m.flagged = bool(rng.random() < 0.5)
        m.code = int(rng.integers(0, 2**32 - 1))
        m.ratio = float(np.float32(rng.normal()))
        m.big = int(rng.integers(0, 2**63)) * 2 + 1
        m.small = int(rng.integers(-(2**31), 2**31 - 1))
        m.offset = int(rng.integers(-(2**62), 2**62))
        m.kind = int(rng.integers(0, 2))
        if rng.random() < 0.8:
            m.customer.name = "n" * int(rng.integers(0, 300))  # lengths across the varint steps
            m.customer.address.city = "Zürich"
        m.blob = bytes(rng.integers(0, 256, int(rng.integers(0, 20)), dtype=np.uint8))
        out.append(m)
    return out


PATHS = ["account_id", "customer.name", "customer.address.city", "amount_cents", "score",
         "delta", "flagged", "code", "ratio", "big", "small", "offset", "kind"]  # fmt: skip


def _scan(ds, frames: bytes, paths=PATHS):
    data = np.frombuffer(frames, np.uint8)
    lay = pb.load_layout(ds, MSG, paths)
    s, e, _ = pb.split(data, 1)
    return data, lay, pb.scan(data, s, e, lay)


def test_extracts_every_scalar_type_as_the_protobuf_library_reads_it(schema):
    ds, cls = schema
    msgs = _random_messages(cls, 300, seed=1)
    data, lay, sc = _scan(ds, pb.frame([m.SerializeToString() for m in msgs]))
    assert (sc.err == 0).all()
    cols = pb.extract_columns(data, sc, lay, list(range(len(PATHS))))
    for path, col in zip(PATHS, cols, strict=True):
        for m, got in zip(msgs, col.to_pylist(), strict=True):
            obj = m
            for part in path.split("."):
                obj = getattr(obj, part)
            if got is None:  # proto3: a default value is not on the wire
                assert not obj, path
            elif isinstance(obj, bool):
                assert got == ("true" if obj else "false")
            elif isinstance(obj, float):
                assert float(got) == obj or np.float32(got) == np.float32(obj), path
            else:
                assert got == str(obj), path


def test_masked_values_are_re_encoded_and_every_other_field_is_kept(schema):
    ds, cls = schema
    msgs = _random_messages(cls, 200, seed=2)
    data, lay, sc = _scan(ds, pb.frame([m.SerializeToString() for m in msgs]))
    n = len(msgs)
    rng = np.random.default_rng(3)
    names = ["x" * int(k) for k in rng.integers(0, 20000, n)]  # lengths across 127 and 16383
    cities = [None if k % 3 == 0 else "Köln" for k in range(n)]  # null removes the field
    deltas = [str(int(v)) for v in rng.integers(-(2**31), 2**31 - 1, n)]
    scores = [repr(float(v)) for v in rng.normal(0, 10, n)]
    smalls = ["-1"] * n  # a negative int32 is a 10-byte varint
    edited = [1, 2, 5, 4, 10]
    vals = [pa.array(names), pa.array(cities, pa.string()), pa.array(deltas), pa.array(scores),
            pa.array(smalls)]  # fmt: skip
    edit = sc.vkind[:, edited] != K_MISSING
    out = pb.emit(data, sc, lay, np.ones(n, bool), edited, edit, vals)
    got = [cls.FromString(b) for b in pb.unframe(out)]
    for i, (a, b) in enumerate(zip(msgs, got, strict=True)):
        want = cls()
        want.CopyFrom(a)
        if edit[i, 0]:
            want.customer.name = names[i]
        if edit[i, 1]:
            if cities[i] is None:
                want.customer.address.ClearField("city")
            else:
                want.customer.address.city = cities[i]
        if edit[i, 2]:
            want.delta = int(deltas[i])
        if edit[i, 3]:
            want.score = float(scores[i])
        if edit[i, 4]:
            want.small = -1
        assert b == want
    # a frame with no edits comes back byte-identical
    none = pb.emit(data, sc, lay, np.ones(n, bool), edited, np.zeros_like(edit), vals)
    assert b"".join(none.to_pylist()) == data.tobytes()


def test_unknown_fields_and_field_order_stay_byte_identical(schema):
    ds, cls = schema
    m = cls(account_id="a1")
    m.customer.name = "Ann"
    unknown = b"\xa8\x06\x07" + b"\xb2\x06\x03xyz"  # fields 101 (varint) and 102 (bytes)
    body = unknown + m.SerializeToString() + b"\xcd\x06\x01\x02\x03\x04"  # field 105 fixed32
    data, lay, sc = _scan(ds, pb.frame([body]))
    assert sc.err[0] == 0
    out = pb.emit(data, sc, lay, np.ones(1, bool), [1], np.ones((1, 1), bool), [pa.array(["Bea"])])
    new = pb.unframe(out)[0]
    assert new.startswith(unknown) and new.endswith(b"\xcd\x06\x01\x02\x03\x04")
    back = cls.FromString(new)
    assert back.customer.name == "Bea" and back.account_id == "a1"
    assert unknown in back.SerializeToString()  # the library keeps them too (moved last)


BROKEN = [
    # (what, frame bytes, error code)
    ("tag cut off", pb.frame([b"\x0a\x02ab\x80"]), pb.E_WIRE),
    ("length past the end", pb.frame([b"\x0a\x09ab"]), pb.E_WIRE),
    ("field number 0", pb.frame([b"\x00\x01"]), pb.E_WIRE),
    ("group", pb.frame([b"\x0b\x0c"]), pb.E_GROUP),
    ("wire type 6", pb.frame([b"\x0e"]), pb.E_WIRE),
    ("string as varint", pb.frame([b"\x08\x01"]), pb.E_TYPE),
    ("bad UTF-8 in a string", pb.frame([b"\x0a\x02\xc3\x28"]), pb.E_UTF8),
    ("truncated frame", b"\x05ab", pb.E_FRAMING),
]


@pytest.mark.parametrize(("what", "frame", "code"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_records_get_their_reason_and_the_neighbours_are_kept(schema, what, frame, code):
    ds, cls = schema
    good = pb.frame([cls(account_id="ok").SerializeToString()])
    data, lay, sc = _scan(ds, good + frame + good if code != pb.E_FRAMING else good + frame)
    assert sc.err[0] == 0 and sc.err[1] == code
    if code != pb.E_FRAMING:
        assert sc.err[2] == 0
    assert code in pb.ERRORS


@pytest.mark.parametrize(
    "frame",
    [pb.frame([b"\x0a\x01a\x0a\x01b"]), pb.frame([b"\x1a\x02\x0a\x00\x1a\x00"])],
    ids=["a field twice", "a path message twice"],
)
def test_a_second_occurrence_marks_the_record_or_is_an_error_when_not_repeated(schema, frame):
    ds, _ = schema
    data, lay, sc = _scan(ds, frame)
    assert list(sc.err) == [0] and list(sc.rep) == [True]
    strict = pb.scan(data, sc.starts, sc.ends, lay, repeated=False)
    assert list(strict.err) == [pb.E_DUP]


def test_each_occurrence_is_located_with_the_message_instances_around_it(schema):
    ds, cls = schema
    m = cls(others=[{"name": "a"}, {"email": "x"}, {"name": "b"}], tags=["t1", "t2"])
    data, lay, sc = _scan(ds, pb.frame([m.SerializeToString()]), ["others.name", "tags"])
    assert list(sc.counts[0]) == [2, 2] and sc.rep[0]
    for leaf, occ, want in [(0, 0, "a"), (0, 1, "b"), (1, 1, "t2")]:
        one = pb.scan(data, sc.starts, sc.ends, lay, target=leaf, occ=occ)
        (got,) = pb.extract_columns(data, one, lay, [leaf])[0].to_pylist()
        assert got == want
        out = pb.emit(data, one, lay, np.array([True]), [leaf], np.ones((1, 1), bool),
                      [pa.array(["LONGER-" + want])])  # fmt: skip
        back = cls.FromString(pb.unframe(out)[0])  # every enclosing length fixed up
        names = [o.name for o in back.others]
        assert ("LONGER-" + want) in (names if leaf == 0 else list(back.tags))
        assert len(back.others) == 3 and back.others[1].email == "x"


def test_repeated_field_with_one_element_is_masked_as_a_field(schema):
    ds, cls = schema
    one, two = cls(tags=["a"]), cls(tags=["a", "b"])
    data, lay, sc = _scan(
        ds, pb.frame([one.SerializeToString(), two.SerializeToString()]), ["tags"]
    )
    assert list(sc.err) == [0, 0] and list(sc.rep) == [False, True]
    out = pb.emit(
        data, sc, lay, np.array([True, False]), [0], np.ones((2, 1), bool), [pa.array(["Z", "Z"])]
    )
    assert cls.FromString(pb.unframe(out[:1])[0]).tags == ["Z"]


def test_schema_problems_name_the_field(schema):
    ds, _ = schema
    for path, msg in [("nope", "nope is not a field"), ("customer", "is a message"),
                      ("account_id.x", "not a message"), ("blob", "bytes fields"),
                      ("others.name", None)]:  # fmt: skip
        if msg is None:
            pb.load_layout(ds, MSG, [path])
        else:
            with pytest.raises(ValueError, match=msg):
                pb.load_layout(ds, MSG, [path])


_CLS: list = []


def _cls():
    if not _CLS:
        _CLS.append(pb.message_class(pb.compile_proto(PROTO), MSG))
    return _CLS[0]


@st.composite
def _streams(draw):
    """Valid frames, some mutated (bytes flipped, cut, inserted), and random garbage."""
    cls = _cls()
    msgs = _random_messages(cls, draw(st.integers(0, 6)), draw(st.integers(0, 10_000)))
    frames = [bytearray(pb.frame([m.SerializeToString()])) for m in msgs]
    for f in frames:
        for _ in range(draw(st.integers(0, 2))):
            if len(f) > 1:
                i = draw(st.integers(1, len(f) - 1))
                f[i] = draw(st.integers(0, 255))
    tail = draw(st.binary(max_size=30))
    return b"".join(frames) + tail


# no deadline (the first example pays Numba's compile); a hang is caught by pytest-timeout
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_streams())
def test_fuzz_no_crash_no_loss_and_valid_frames_round_trip(schema, blob):
    ds, cls = schema
    data = np.frombuffer(blob, np.uint8)
    lay = pb.load_layout(ds, MSG, PATHS)
    cut = pb.boundary(data)
    s, e, _ = pb.split(data, 1)
    assert cut <= len(blob) and (len(s) == 0 or e[-1] == len(blob))
    sc = pb.scan(data, s, e, lay)
    ok = sc.err == 0
    cols = pb.extract_columns(data, sc, lay, list(range(len(PATHS))))
    assert all(len(c) == len(s) for c in cols)
    edited = [1, 5]
    edit = sc.vkind[:, edited] != K_MISSING
    out = pb.emit(
        data, sc, lay, ok, edited, edit, [pa.array(["m"] * len(s)), pa.array(["3"] * len(s))]
    )
    assert len(out) == len(s)  # records in = emitted + dead (the others are empty)
    for rec, good in zip(pb.unframe(out.filter(pa.array(ok))), np.flatnonzero(ok), strict=True):
        m = cls.FromString(rec)  # whatever we accept and re-encode, the library reads
        if edit[good, 0]:
            assert m.customer.name == "m"
