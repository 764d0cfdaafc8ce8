"""The `noise` and `randomized_response` techniques through a worker: outputs exactly those of the
kernels on the same secure stream, JSON types kept, bad values to the dead letters, the privacy
metadata of each batch, and the keep rate of randomized response."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from raymask.actors.router import RouterCore
from raymask.actors.worker import MaskCore
from raymask.errors import PolicyError
from raymask.kernels import noise as noise_kernel
from raymask.kernels import rr as rr_kernel
from raymask.kernels.codecs.formats import CsvFormat, NdjsonFormat
from raymask.kernels.rng import SecureRandom
from raymask.policy.keys import Key, Keyring
from raymask.policy.loader import parse_policy
from raymask.policy.schema import Policy

RING = Keyring([Key("tok", 1, b"t" * 32)])


def _policy(fields: dict, fmt: str = "ndjson") -> Policy:
    return Policy.model_validate(
        {"version": 1, "streams": {"s": {"format": fmt, "key": "id", "fields": fields}}}
    )


def _mask(pol: Policy, lines: list[str], seed: int = 9, fmt=None):  # noqa: ANN001
    fmt = fmt or NdjsonFormat()
    core = MaskCore(pol, "s", RING, fmt, rng=SecureRandom._for_tests(seed))
    data = np.frombuffer(("\n".join(lines) + "\n").encode(), np.uint8)
    routed = RouterCore(core.plan, fmt, 1).route(data, 1)
    return core.process(routed.batch, None, routed.shards[0])


def test_laplace_noise_is_the_kernels_on_the_same_stream_and_numbers_stay_numbers():
    rng = np.random.default_rng(0)
    xs = rng.uniform(-30, 80, 500).round(3).tolist()
    lines = [json.dumps({"id": f"d{i % 7}", "t": x}) for i, x in enumerate(xs)]
    spec = {"technique": "noise", "epsilon": 0.5, "lo": -20, "hi": 50}
    out = _mask(_policy({"t": spec}), lines)
    got = [json.loads(r)["t"] for r in out.records.to_pylist()]
    want = noise_kernel.laplace_noise(
        pa.array(xs), -20, 50, 0.5, integer=False, rng=SecureRandom._for_tests(9)
    ).to_pylist()
    assert got == want
    assert all(isinstance(v, float) for v in got)
    assert out.privacy.fields == {"t": ("noise", 0.5, 0.0)}
    assert out.privacy.epsilon.tolist() == [0.5] * 500


def test_integer_gaussian_noise_keeps_integers_and_numbers_sent_as_text_stay_text():
    lines = [json.dumps({"id": "a", "b": i % 101}) for i in range(300)]
    lines += [json.dumps({"id": "a", "b": "42"}), json.dumps({"id": "a", "b": None})]
    spec = {"technique": "noise", "mechanism": "gaussian", "epsilon": 1.0, "delta": 1e-6,
            "lo": 0, "hi": 100, "integer": True}  # fmt: skip
    out = _mask(_policy({"b": spec}), lines)
    got = [json.loads(r)["b"] for r in out.records.to_pylist()]
    xs = [float(i % 101) for i in range(300)] + [42.0, None]
    want = noise_kernel.gaussian_noise(
        pa.array(xs, pa.float64()), 0, 100, 1.0, 1e-6, integer=True,
        rng=SecureRandom._for_tests(9),
    ).to_pylist()  # fmt: skip
    assert got[:300] == [int(v) for v in want[:300]]
    assert all(type(v) is int for v in got[:300])
    assert got[300] == str(int(want[300]))  # a number in a string stays a string
    assert got[301] is None  # null stays null and spends nothing
    assert out.privacy.epsilon[301] == 0.0 and out.privacy.delta[0] == 1e-6


def test_non_numbers_go_to_the_dead_letters_without_their_value():
    lines = [json.dumps({"id": "a", "t": 3}), json.dumps({"id": "a", "t": "warm-canary-7"})]
    lines.append(json.dumps({"id": "a", "t": [1]}))
    out = _mask(_policy({"t": {"technique": "noise", "epsilon": 1, "lo": 0, "hi": 9}}), lines)
    assert len(out.rows) == 1
    assert out.dead_reasons == [
        "field t: not a number",
        "field t: noise takes a string or number, got array",
    ]
    assert not any("canary" in r for r in out.dead_reasons)


def test_noise_on_csv_cells():
    fmt = CsvFormat(["id", "t"], b"id,t\n")
    lines = [f"k{i},{i}" for i in range(50)]
    pol = _policy(
        {"t": {"technique": "noise", "epsilon": 2, "lo": 0, "hi": 49, "integer": True}}, "csv"
    )
    out = _mask(pol, lines, fmt=fmt)
    cells = [r.decode().rstrip("\n").split(",")[1] for r in out.records.to_pylist()]
    want = noise_kernel.laplace_noise(
        pa.array(np.arange(50, dtype=np.float64)), 0, 49, 2, integer=True,
        rng=SecureRandom._for_tests(9),
    ).to_pylist()  # fmt: skip
    assert cells == [str(int(v)) for v in want]


def test_randomized_response_on_booleans_keeps_booleans_and_matches_the_kernel():
    bits = np.random.default_rng(2).integers(0, 2, 400).astype(bool).tolist()
    lines = [json.dumps({"id": "a", "on": b}) for b in bits]
    out = _mask(_policy({"on": {"technique": "randomized_response", "epsilon": 1.0}}), lines)
    got = [json.loads(r)["on"] for r in out.records.to_pylist()]
    assert all(isinstance(v, bool) for v in got)
    want = rr_kernel.randomize_indices(
        np.array(bits, np.int64), np.ones(400, bool), 2, 1.0, SecureRandom._for_tests(9)
    )
    assert got == [bool(v) for v in want]


def test_randomized_response_categories_and_values_outside_them():
    cats = ["ok", "battery low", "door open"]
    lines = [json.dumps({"id": "a", "c": cats[i % 3]}) for i in range(30)]
    lines.append(json.dumps({"id": "a", "c": "secret-canary"}))
    spec = {"technique": "randomized_response", "epsilon": 2.0, "categories": cats}
    out = _mask(_policy({"c": spec}), lines)
    assert {json.loads(r)["c"] for r in out.records.to_pylist()} <= set(cats)
    assert out.dead_reasons == ["field c: value is not one of the categories"]
    ints = [json.dumps({"id": "a", "c": i % 4}) for i in range(40)]
    spec_i = {"technique": "randomized_response", "epsilon": 2.0, "categories": [0, 1, 2, 3]}
    out_i = _mask(_policy({"c": spec_i}), ints)
    assert all(type(json.loads(r)["c"]) is int for r in out_i.records.to_pylist())


def test_randomized_response_keep_rate_through_the_worker():
    # 20000 values, k = 4, eps = 1: the kept share is binomial; |z| < 4.4 fails with prob. 1e-5
    k, eps, n = 4, 1.0, 20000
    lines = [json.dumps({"id": f"u{i % 50}", "c": i % k}) for i in range(n)]
    spec = {"technique": "randomized_response", "epsilon": eps, "categories": list(range(k))}
    out = _mask(_policy({"c": spec}), lines, seed=31)
    got = np.array([json.loads(r)["c"] for r in out.records.to_pylist()])
    kept = np.count_nonzero(got == np.arange(n) % k)
    p = rr_kernel.keep_probability(k, eps)
    assert abs(kept - n * p) / np.sqrt(n * p * (1 - p)) < 4.4
    est = rr_kernel.estimate_frequencies(np.bincount(got, minlength=k), k, eps)
    assert np.abs(est - 0.25).max() < 0.05  # unbiased: the truth is uniform


def test_no_seed_or_generator_can_be_set_from_a_policy():
    text = """\
version: 1
streams:
  s:
    format: ndjson
    key: id
    fields:
      t: {technique: noise, epsilon: 1, lo: 0, hi: 9, seed: 7}
"""
    with pytest.raises(PolicyError, match=r"p.yaml:7: streams.s.fields.t.seed: unknown setting"):
        parse_policy(text, "p.yaml")


def _proto_core(field: str, lo: float, hi: float, integer: bool):  # noqa: ANN202
    from pathlib import Path

    from raymask.kernels.codecs import protobuf as pb
    from raymask.kernels.codecs.formats import ProtobufFormat

    msg = "raymask.test.Payment"
    ds = pb.compile_proto(Path(__file__).parents[1] / "kernels/codecs/data/payment.proto")
    pol = Policy.model_validate({"version": 1, "streams": {"s": {
        "format": "protobuf", "protobuf": {"descriptor_set": "x.pb", "message": msg},
        "key": "account_id",
        "fields": {field: {"technique": "noise", "epsilon": 1.0, "lo": lo, "hi": hi,
                           "integer": integer}}}}})  # fmt: skip
    fmt = ProtobufFormat(ds, msg)
    core = MaskCore(pol, "s", Keyring([Key("tok", 1, b"t" * 32)]), fmt,
                    rng=SecureRandom._for_tests(1))  # fmt: skip
    return core, fmt, pb.message_class(ds, msg), pb


@pytest.mark.parametrize(("field", "lo", "hi"), [("code", 0, 10), ("big", 0, 10),
                                                  ("small", 2**31 - 11, 2**31 - 1)])  # fmt: skip
def test_noise_out_of_a_protobuf_fields_range_saturates_and_no_record_is_lost(field, lo, hi):
    """Laplace noise has no bounds: on a fixed32 / uint64 field with lo = 0, or an int32 field
    near its limit, some outputs leave the type's range. They saturate to the nearest value of
    the type (post-processing); the encoder used to fail the whole batch."""
    core, fmt, cls, pb = _proto_core(field, lo, hi, True)
    msgs = []
    for i in range(300):
        m = cls()
        m.account_id = f"a{i}"
        setattr(m, field, lo + 1)
        msgs.append(m.SerializeToString())
    routed = RouterCore(core.plan, fmt, 1).route(np.frombuffer(pb.frame(msgs), np.uint8), 0)
    out = core.process_views(routed.batch, [None], routed.shards[0])[0]
    assert len(out.rows) == 300 and len(out.dead_rows) == 0
    got = [getattr(cls.FromString(r), field) for r in pb.unframe(out.records)]
    t_lo, t_hi = {"code": (0, 2**32 - 1), "big": (0, 2**64 - 1), "small": (-(2**31), 2**31 - 1)}[
        field
    ]
    assert all(t_lo <= v <= t_hi for v in got)
    assert got.count(t_lo if lo == 0 else t_hi) > 10  # noise past the bound, saturated


def test_a_nan_for_integer_noise_goes_to_the_dead_letters_alone():
    """A protobuf double can be NaN, which has no integer: with `integer: true` that record goes
    to the dead letters ("not a number"); the batch used to fail on the cast."""
    core, fmt, cls, pb = _proto_core("score", 0, 10, True)
    msgs = []
    for i, s in enumerate([5.0, float("nan"), float("inf"), 3.0]):
        m = cls()
        m.account_id = f"a{i}"
        m.score = s
        msgs.append(m.SerializeToString())
    routed = RouterCore(core.plan, fmt, 1).route(np.frombuffer(pb.frame(msgs), np.uint8), 0)
    out = core.process_views(routed.batch, [None], routed.shards[0])[0]
    assert len(out.rows) == 3 and out.dead_rows.tolist() == [1]
    assert out.dead_reasons == ["field score: not a number"]
    assert all(float(cls.FromString(r).score).is_integer() for r in pb.unframe(out.records))
