"""The protobuf codec against the `protobuf` library as the oracle: every scalar type extracted
as the library reads it, masked values re-encoded with every enclosing length fixed up, unknown
fields and untouched bytes kept, broken frames to the dead letters; and a fuzzer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from google.protobuf.message import DecodeError
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


# ---------------------------------------------------------------- packed repeated fields

TELEMETRY = Path(__file__).with_name("data") / "telemetry.proto"
# every repeated numeric type, and packed fields inside a repeated message
NUMERIC = ["i32", "i64", "u32", "u64", "s32", "s64", "flags", "levels", "f32", "f64", "sf32",
           "sf64", "readings", "doubles", "series.deltas", "series.values"]  # fmt: skip
_BOUNDS = {"i32": (-(2**31), 2**31), "i64": (-(2**63), 2**63), "u32": (0, 2**32),
           "u64": (0, 2**64), "s32": (-(2**30), 2**30), "s64": (-(2**61), 2**61),
           "f32": (0, 2**32), "f64": (0, 2**64), "sf32": (1 - 2**31, 2**31),
           "sf64": (1 - 2**63, 2**63), "deltas": (-(2**30), 2**30)}  # fmt: skip


@pytest.fixture(scope="module")
def telemetry():
    ds = pb.compile_proto(TELEMETRY)
    return (ds, pb.message_class(ds, "raymask.test.Sample"),
            pb.message_class(ds, "raymask.test.SampleUnpacked"))  # fmt: skip


def _random_samples(cls, n: int, seed: int, size: int = 5) -> list:
    rng = np.random.default_rng(seed)

    def ints(name: str) -> list[int]:
        lo, hi = _BOUNDS[name]
        k = int(rng.integers(0, size + 1))
        small = [int(v) for v in rng.integers(-200, 200, k)]  # one- and two-byte varints
        big = [int(lo + int(rng.integers(0, 2**62)) * (hi - lo) // 2**62) for _ in range(k)]
        return [min(max(v, lo), hi - 1) for v in (small[: k // 2] + big[k // 2 :])]

    out = []
    for i in range(n):
        m = cls(device=f"dev-{i}", count=int(rng.integers(-5, 5)))
        for name in _BOUNDS:
            if name != "deltas":
                getattr(m, name).extend(ints(name))
        m.flags.extend(bool(b) for b in rng.random(int(rng.integers(0, size + 1))) < 0.5)
        m.levels.extend(int(v) for v in rng.choice([0, 1, -3], int(rng.integers(0, size + 1))))
        k = int(rng.integers(0, size + 1))
        m.readings.extend(float(np.float32(v)) for v in rng.normal(0, 100, k))
        m.doubles.extend(float(v) for v in rng.normal(0, 1e6, int(rng.integers(0, size + 1))))
        for j in range(int(rng.integers(0, 3))):
            s = m.series.add(name=f"s{j}", deltas=ints("deltas"))
            s.values.extend(float(np.float32(v)) for v in rng.normal(0, 1, int(rng.integers(0, 4))))
        out.append(m)
    return out


def _encode(cls, ucls, m, how: str) -> bytes:
    """`m` packed (the library's proto3 default), unpacked, or mixed: the first half of each
    field's elements packed, the rest unpacked, as two messages a parser merges."""
    if how == "packed":
        return m.SerializeToString()
    if how == "unpacked":
        return ucls.FromString(m.SerializeToString()).SerializeToString()
    a, b = cls(device=m.device, count=m.count), cls()
    for f in m.DESCRIPTOR.fields:
        if f.name not in ("device", "count"):
            vals = list(getattr(m, f.name))
            getattr(a, f.name).extend(vals[: len(vals) // 2])
            getattr(b, f.name).extend(vals[len(vals) // 2 :])
    return a.SerializeToString() + ucls.FromString(b.SerializeToString()).SerializeToString()


def _float32_text(x: float) -> float:
    """A float field's value as the masking sees it: its shortest round-trip text."""
    return float(str(np.float32(x)))


# per field: what each element becomes (None: dropped); varints grow and shrink across sizes
CHANGE = {
    "i32": lambda x: None if x % 3 == 0 else -x - 1,
    "i64": lambda x: x // 7,
    "u32": lambda x: None if x % 5 == 0 else x >> 9,
    "u64": lambda x: (x * 3) % 2**64,
    "s32": lambda x: -x,
    "s64": lambda x: None if x > 0 else x * 2,
    "flags": lambda x: not x,
    "levels": lambda x: 1 if x == -3 else -3,
    "f32": lambda x: (x + 1) % 2**32,
    "f64": lambda x: None if x % 2 else x // 2,
    "sf32": lambda x: -x,
    "sf64": lambda x: -x,
    "readings": lambda x: None if x < 0 else -2 * x,
    "doubles": lambda x: x / 3,
    "series.deltas": lambda x: None if x % 4 == 0 else x * 2,
    "series.values": lambda x: -x,
}


def _as_text(path: str, fn):  # noqa: ANN001, ANN202
    """CHANGE[path] over the decimal text the codec extracts and re-encodes."""
    if path == "flags":
        return lambda t: None if (v := fn(t == "true")) is None else ("true" if v else "false")
    if path in ("readings", "doubles", "series.values"):
        return lambda t: None if (v := fn(float(t))) is None else repr(float(v))
    return lambda t: None if (v := fn(int(t))) is None else str(v)


def _expected(cls, m):  # noqa: ANN001, ANN202
    """The oracle: the library's message with CHANGE applied to each element."""
    want = cls()
    want.CopyFrom(m)
    for path, fn in CHANGE.items():
        owners = list(want.series) if path.startswith("series.") else [want]
        name = path.split(".")[-1]
        for o in owners:
            vals = list(getattr(o, name))
            if name in ("readings", "values"):
                vals = [_float32_text(v) for v in vals]
            o.ClearField(name)
            getattr(o, name).extend(v for v in map(fn, vals) if v is not None)
    return want


def _mask_each(ds, blob: bytes, paths: list[str], changes: dict) -> list[bytes]:  # noqa: ANN001
    """What MaskCore does with a field's further occurrences: one scan, extract and emit per
    occurrence (a dropped one moves the later ones up)."""
    data = np.frombuffer(blob, np.uint8)
    lay = pb.load_layout(ds, "raymask.test.Sample", paths)
    s, e, _ = pb.split(data, 1)
    sc = pb.scan(data, s, e, lay)
    assert (sc.err == 0).all()
    for leaf, path in enumerate(paths):
        cnt = sc.counts[:, leaf]
        gone = np.zeros(len(s), np.int64)
        fn = _as_text(path, changes[path])
        for j in range(int(cnt.max(initial=0))):
            sj = pb.scan(data, s, e, lay, target=leaf, occ=j - gone)
            got = pb.extract_columns(data, sj, lay, [leaf])[0].to_pylist()
            new = [None if v is None else fn(v) for v in got]
            edit = sj.vkind[:, leaf] != K_MISSING
            assert (edit == (cnt > j)).all()
            out = pb.emit(data, sj, lay, np.ones(len(s), bool), [leaf], edit[:, None],
                          [pa.array(new, pa.large_string())])  # fmt: skip
            gone += edit & np.array([v is None for v in new])
            data = np.frombuffer(b"".join(out.to_pylist()), np.uint8)
            s, e, _ = pb.split(data, 1)
    return pb.unframe([data[a:b].tobytes() for a, b in zip(s, e, strict=True)])


def test_repeated_numeric_fields_load_and_bytes_are_still_refused(telemetry):
    ds, _, _ = telemetry
    lay = pb.load_layout(ds, "raymask.test.Sample", [*NUMERIC, "count", "device"])
    assert list(lay.packable[lay.leaf_node]) == [True] * len(NUMERIC) + [False, False]


@pytest.mark.parametrize("how", ["packed", "unpacked", "mixed"])
def test_each_element_is_an_occurrence_read_as_the_library_reads_it(telemetry, how):
    ds, cls, ucls = telemetry
    msgs = _random_samples(cls, 120, seed=4)
    blob = pb.frame([_encode(cls, ucls, m, how) for m in msgs])
    data = np.frombuffer(blob, np.uint8)
    lay = pb.load_layout(ds, "raymask.test.Sample", NUMERIC)
    s, e, _ = pb.split(data, 1)
    sc = pb.scan(data, s, e, lay)
    assert (sc.err == 0).all()
    for leaf, path in enumerate(NUMERIC):
        name = path.split(".")[-1]
        want = [[v for o in (m.series if "." in path else [m]) for v in getattr(o, name)]
                for m in msgs]  # fmt: skip
        assert list(sc.counts[:, leaf]) == [len(w) for w in want], path
        for j in range(max(map(len, want))):
            sj = pb.scan(data, s, e, lay, target=leaf, occ=j)
            got = pb.extract_columns(data, sj, lay, [leaf])[0].to_pylist()
            for w, g in zip(want, got, strict=True):
                if j >= len(w):
                    assert g is None
                elif isinstance(w[j], bool):
                    assert g == ("true" if w[j] else "false")
                elif isinstance(w[j], float):
                    assert np.float64(g) == w[j] or np.float32(g) == np.float32(w[j]), path
                else:
                    assert g == str(w[j]), path


@pytest.mark.parametrize("how", ["packed", "unpacked", "mixed"])
def test_packed_elements_are_masked_as_the_library_masks_them_and_keep_their_encoding(
    telemetry, how
):
    """Each element re-encoded (varints growing and shrinking), dropped elements removed, the
    block's length prefix and every enclosing one fixed. Packed and unpacked input come out
    byte for byte as the library writes the expected message in that encoding: the encoding
    is kept, and a block left without elements goes, tag and all."""
    ds, cls, ucls = telemetry
    msgs = _random_samples(cls, 150, seed=5)
    out = _mask_each(ds, pb.frame([_encode(cls, ucls, m, how) for m in msgs]), NUMERIC, CHANGE)
    for m, got in zip(msgs, out, strict=True):
        want = _expected(cls, m)
        assert cls.FromString(got) == want
        if how != "mixed":
            assert got == _encode(cls, ucls, want, how)


def test_packed_fields_not_named_and_unedited_records_stay_byte_identical(telemetry):
    ds, cls, ucls = telemetry
    msgs = _random_samples(cls, 50, seed=6)
    blob = pb.frame([_encode(cls, ucls, m, "mixed") for m in msgs])
    out = _mask_each(ds, blob, ["i32"], {"i32": lambda x: x})  # re-encoded, same value
    assert pb.frame(out) == blob
    out = _mask_each(ds, blob, ["readings"], {"readings": lambda x: -2 * x})
    for m, got in zip(msgs, out, strict=True):  # only the readings changed, everything else kept
        want = cls()
        want.CopyFrom(m)
        want.ClearField("readings")
        back = cls.FromString(got)
        assert [np.float32(v) for v in back.readings] == [np.float32(-2 * v) for v in m.readings]
        back.ClearField("readings")
        assert back == want


PACKED_BROKEN = [
    # (what, message bytes, field named in the reason)
    ("varint cut off at the block end", b"\x12\x02\x01\x80" + b"\x0a\x01a", "i32"),
    ("ten-byte varint past 64 bits", b"\x12\x0a" + b"\xff" * 9 + b"\x02", "i32"),
    ("fixed32 block of 3 bytes", b"\x52\x03\x00\x00\x00", "f32"),
    ("float block of 6 bytes", b"\x72\x06" + b"\x00" * 6, "readings"),
    ("fixed64 block of 12 bytes", b"\x5a\x0c" + b"\x00" * 12, "f64"),
    ("double block of 4 bytes", b"\x7a\x04" + b"\x00" * 4, "doubles"),
    ("in a repeated message", b"\x82\x01\x04\x12\x02\x80\x80", "series.deltas"),
]


@pytest.mark.parametrize(("what", "body", "path"), PACKED_BROKEN, ids=[b[0] for b in PACKED_BROKEN])
def test_malformed_packed_blocks_get_their_reason_and_the_neighbours_are_kept(
    telemetry, what, body, path
):
    ds, cls, _ = telemetry
    good = cls(device="ok", i32=[1, 300], readings=[1.5]).SerializeToString()
    data = np.frombuffer(pb.frame([good, body, good]), np.uint8)
    lay = pb.load_layout(ds, "raymask.test.Sample", NUMERIC)
    s, e, _ = pb.split(data, 1)
    sc = pb.scan(data, s, e, lay)
    assert list(sc.err) == [0, pb.E_PACKED, 0]
    assert NUMERIC[sc.errfield[1]] == path and "packed" in pb.ERRORS[pb.E_PACKED]
    assert list(sc.counts[[0, 2], 0]) == [2, 2]


_TEL: list = []


def _tel():
    if not _TEL:
        ds = pb.compile_proto(TELEMETRY)
        _TEL.extend([ds, pb.message_class(ds, "raymask.test.Sample"),
                     pb.message_class(ds, "raymask.test.SampleUnpacked")])  # fmt: skip
    return _TEL


@st.composite
def _packed_streams(draw):
    """Samples in either encoding or both, some mutated (bytes flipped), and random garbage."""
    _, cls, ucls = _tel()
    msgs = _random_samples(cls, draw(st.integers(0, 5)), draw(st.integers(0, 10_000)), size=3)
    frames = [bytearray(pb.frame([_encode(cls, ucls, m, draw(st.sampled_from(
        ["packed", "unpacked", "mixed"])))])) for m in msgs]  # fmt: skip
    for f in frames:
        for _ in range(draw(st.integers(0, 2))):
            if len(f) > 1:
                f[draw(st.integers(1, len(f) - 1))] = draw(st.integers(0, 255))
    return b"".join(frames) + draw(st.binary(max_size=20))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_packed_streams())
def test_fuzz_packed_fields_no_crash_no_loss_and_every_element_masked(blob):
    """Every record is emitted or refused; what is emitted the library reads, and every
    element of the masked fields is the masked value."""
    ds, cls, _ = _tel()
    data = np.frombuffer(blob, np.uint8)
    paths = ["i32", "readings", "f64", "series.deltas"]
    lay = pb.load_layout(ds, "raymask.test.Sample", paths)
    s, e, _ = pb.split(data, 1)
    sc = pb.scan(data, s, e, lay)
    ok = sc.err == 0
    assert set(sc.err[~ok]) <= set(pb.ERRORS)
    cols = pb.extract_columns(data, sc, lay, list(range(len(paths))))
    assert all(len(c) == len(s) for c in cols)
    good = b"".join(data[a:b].tobytes() for a, b, k in zip(s, e, ok, strict=True) if k)
    out = _mask_each(ds, good, paths, {"i32": lambda x: -7, "readings": lambda x: None,
                                       "f64": lambda x: 2**64 - 1, "series.deltas": lambda x: 0})  # fmt: skip
    assert len(out) == int(ok.sum())
    ins = pb.unframe([data[a:b].tobytes() for a, b in zip(s[ok], e[ok], strict=True)])
    for rec_in, rec in zip(ins, out, strict=True):
        try:
            cls.FromString(rec_in)
        except DecodeError:  # bad UTF-8 in a string field no policy path reads: not checked
            continue
        m = cls.FromString(rec)
        assert set(m.i32) <= {-7} and not m.readings and set(m.f64) <= {2**64 - 1}
        assert all(set(x.deltas) <= {0} for x in m.series)


def test_a_length_past_the_end_or_over_2_63_cannot_be_read():
    """A length-delimited field whose length does not fit what follows is unreadable (-1); a
    length of 2^64 - 5 once read as -5, which walked `_drop` backwards without end."""
    from raymask.kernels.codecs.protobuf import _field_end

    def frame(length: int) -> np.ndarray:
        v, out = length, bytearray([0x0A])  # field 1, wire type 2
        while True:
            b = v & 0x7F
            v >>= 7
            out.append(b | (0x80 if v else 0))
            if not v:
                break
        return np.frombuffer(bytes(out) + b"abcdef", np.uint8)

    d = frame(3)
    assert _field_end(d, 0, len(d))[3] == 2 + 3  # tag, length, then 3 bytes
    for length in (7, 2**63, 2**64 - 5):
        d = frame(length)
        assert _field_end(d, 0, len(d))[2:4] == (-1, -1), length
