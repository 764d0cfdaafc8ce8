"""`unknown_fields: detect`, the leak monitor and `scan_records`, through MaskCore (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from raymask.actors.router import RouterCore
from raymask.actors.worker import MaskCore
from raymask.kernels.codecs import json_values
from raymask.kernels.codecs.formats import NdjsonFormat, format_for
from raymask.kernels.scan import scan_records
from raymask.policy.keys import Key, Keyring
from raymask.policy.schema import Policy

RING = Keyring([Key("tok", 1, b"t" * 32), Key("deadletter", 1, b"d" * 32)])


def _policy(**stream) -> Policy:  # noqa: ANN003
    base = {"format": "ndjson", "key": "id", "fields": {"email": {"technique": "mask",
            "preset": "email"}}, "views": {"ops": {"email": "keep"}}}  # fmt: skip
    return Policy.model_validate({"version": 7, "streams": {"s": {**base, **stream}}})


def _run(pol: Policy, lines: list[str | bytes], roles=(None,), seed: int = 0):  # noqa: ANN001
    fmt = NdjsonFormat()
    core = MaskCore(pol, "s", RING, fmt, leak_rng=np.random.default_rng(seed))
    raw = b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n"
    routed = RouterCore(core.plan, fmt, 1).route(np.frombuffer(raw, np.uint8), 1)
    return core.process_views(routed.batch, list(roles), routed.shards[0])


def test_unknown_fields_are_scanned_at_any_depth_and_named_fields_left_to_their_technique():
    lines = [
        json.dumps(
            {
                "id": "u1",
                "email": "ann@ex.io",
                "note": "from ann@ex.io at 10.0.0.1",
                "meta": {"tags": ["ok", "card 4111111111111111"], "n": 4111111111111111, "k": 7},
            }
        ),  # fmt: skip
        json.dumps({"id": "bob@ex.io", "msg": "nothing"}),  # the key is the policy's: not scanned
        '{"id": "u3", "tok": "ghp_\\u0030123456789abcdefghijABCDEFGHIJ012345"}',  # an escape inside
        '{"id": "u4", "bad": ',  # invalid: a dead letter, not scanned
    ]
    default, ops = _run(_policy(unknown_fields="detect"), lines, roles=(None, "ops"))
    recs = [json.loads(r) for r in default.records.to_pylist()]
    assert recs[0] == {"id": "u1", "email": "a**@ex.io", "note": "from <EMAIL> at <IPV4>",
                       "meta": {"tags": ["ok", "card <CARD>"], "n": "<CARD>", "k": 7}}  # fmt: skip
    assert recs[1] == {"id": "bob@ex.io", "msg": "nothing"}
    assert recs[2] == {"id": "u3", "tok": "<GITHUB_TOKEN>"}
    assert json.loads(ops.records.to_pylist()[0])["email"] == "ann@ex.io"  # the ops view keeps it
    assert default.detected == {"email": 1, "ipv4": 1, "card": 2, "github_token": 1}
    assert default.dead_rows.tolist() == [3]
    # untouched records leave byte-identical
    assert default.records.to_pylist()[1] == (lines[1] + "\n").encode()


def test_unknown_detect_takes_its_own_settings():
    pol = _policy(unknown_fields="detect",
                  unknown_detect={"technique": "detect", "types": ["ipv4"], "replace": {"ipv4": "IP"}})  # fmt: skip
    (out,) = _run(pol, [json.dumps({"id": "a", "x": "1.2.3.4 c@d.io"})])
    assert json.loads(out.records.to_pylist()[0])["x"] == "IP c@d.io"
    with pytest.raises(ValidationError, match="unknown_detect is used only with unknown_fields"):
        _policy(unknown_detect={"technique": "detect"})


def test_unknown_csv_columns_are_scanned_and_cells_rewritten_in_csv_syntax():
    pol = Policy.model_validate({"version": 1, "streams": {"s": {"format": "csv", "key": "id",
        "unknown_fields": "detect", "fields": {"name": "redact"}}}})  # fmt: skip
    header = b"id,name,note,ip\n"
    rows = [
        b'a@x.io,Ann,"mail b@y.io, call +1 (555) 123-4567",10.0.0.1',
        b"u2,Bob,nothing,none",
        b'u3,Cy,"say ""hi"" to c@z.io",',
    ]
    fmt = format_for("csv", header_line=header)
    core = MaskCore(pol, "s", RING, fmt)
    routed = RouterCore(core.plan, fmt, 1).route(
        np.frombuffer(b"\n".join(rows) + b"\n", np.uint8), 1
    )
    out = core.process(routed.batch, None, routed.shards[0])
    got = [r.decode() for r in out.records.to_pylist()]
    assert got[0] == 'a@x.io,[REDACTED],"mail <EMAIL>, call <PHONE>",<IPV4>\n'
    assert got[1] == "u2,[REDACTED],nothing,none\n"
    assert got[2].startswith("u3,[REDACTED],") and "c@z.io" not in got[2] and "<EMAIL>" in got[2]
    assert out.detected == {"email": 2, "phone": 1, "ipv4": 1}
    assert len(got) == 3 and len(out.dead_rows) == 0


def test_leak_monitor_on_csv_output_uses_the_output_header():
    for unknown, want in (("keep", [("note", "email", 2)]), ("drop", [])):
        pol = Policy.model_validate({"version": 1, "streams": {"s": {"format": "csv", "key": "id",
            "unknown_fields": unknown, "leak_check": {"sample": 1.0},
            "fields": {"id": "keep", "name": "redact"}}}})  # fmt: skip
        fmt = format_for("csv", header_line=b"id,name,note\n")
        core = MaskCore(pol, "s", RING, fmt, leak_rng=np.random.default_rng(1))
        data = b"u1,Ann,mail a@b.io\nu2,Bob,c@d.io\n"
        routed = RouterCore(core.plan, fmt, 1).route(np.frombuffer(data, np.uint8), 1)
        out = core.process(routed.batch, None, routed.shards[0])
        assert (out.leaks, out.leak_sampled) == (want, 2)


CANARY = "canary.7c1d@leak-test.example"


def test_leak_monitor_names_field_and_type_never_the_value():
    pol = _policy(leak_check={"sample": 1.0})
    lines = [
        json.dumps({"id": str(i), "email": "x@y.io", "note": f"hi {CANARY}"}) for i in range(5)
    ]
    default, ops = _run(pol, lines, roles=(None, "ops"))
    assert default.leaks == [("note", "email", 5)]
    assert default.leak_sampled == 5
    assert ops.leaks == [("note", "email", 5)]  # the ops view keeps email on purpose: not a leak
    assert CANARY not in repr(default.leaks) + repr(default.detected)


def test_leak_monitor_samples_at_the_policy_rate():
    pol = _policy(leak_check={"sample": 0.1})
    lines = [json.dumps({"id": str(i), "note": "10.0.0.1"}) for i in range(2000)]
    (out,) = _run(pol, lines, seed=3)
    # binomial(2000, 0.1): mean 200, sd 13.4; 140..260 fails with probability < 1e-5
    assert 140 <= out.leak_sampled <= 260
    assert out.leaks == [("note", "ipv4", out.leak_sampled)]


def test_scan_records_counts_per_field_and_type_and_survives_bad_input():
    recs = pa.array([
        b'{"a": {"b": "x@y.io and z@w.io"}, "c": [{"d": "10.0.0.1"}]}\n',
        b'{"e\\u0061": "4111111111111111"}',
        b'{"broken": "1.2.3.4", ',
        b"\xff\xfe not json",
        None,
        b"",
    ], pa.large_binary())  # fmt: skip
    got = scan_records(recs)
    assert got == {("a.b", "email"): 2, ("c.d", "ipv4"): 1, ("ea", "card"): 1,
                   ("broken", "ipv4"): 1}  # fmt: skip


def test_scalar_values_skips_spans_and_keys():
    data = np.frombuffer(
        b'{"k": "v", "n": -1.5e3, "o": {"x": true, "y": null, "z": ["s"]}}', np.uint8
    )
    rec, vs, ve, vk = json_values.scalar_values(data, np.array([0]), np.array([len(data)]))
    assert [data[s:e].tobytes() for s, e in zip(vs, ve, strict=True)] == [b'"v"', b"-1.5e3", b'"s"']
    paths = json_values.paths_at(data, np.array([0]), np.array([len(data)]), rec, vs)
    assert paths == ["k", "n", "o.z"]


def test_leak_events_go_to_the_audit_file_through_a_local_pipeline(tmp_path):
    from raymask.cluster.pipeline import mask_file

    pol = _policy(unknown_fields="keep", leak_check={"sample": 1.0})
    src = tmp_path / "in.ndjson"
    src.write_text("".join(json.dumps({"id": str(i), "email": "a@b.io",
                                       "note": f"x {CANARY} y"}) + "\n" for i in range(50)))  # fmt: skip
    out = tmp_path / "out.ndjson"
    s = mask_file(pol, "s", src, out, keyring=RING, local=True, workers=2)
    assert s.leaks == {("note", "email"): 50} and s.leak_sampled == 50
    events = [
        json.loads(x) for x in (tmp_path / "out.ndjson.audit.ndjson").read_text().splitlines()
    ]
    assert {
        (e["stream"], e["view"], e["field"], e["type"], e["policy_version"]) for e in events
    } == {("s", "default", "note", "email", 7)}
    assert sum(e["count"] for e in events) == 50
    text = (tmp_path / "out.ndjson.audit.ndjson").read_text()
    assert CANARY not in text and "a@b.io" not in text
    # with unknown_fields: detect the same note is masked, and the monitor finds nothing
    pol2 = _policy(unknown_fields="detect", leak_check={"sample": 1.0})
    out2 = tmp_path / "out2.ndjson"
    s2 = mask_file(pol2, "s", src, out2, keyring=RING, local=True, workers=2)
    assert s2.leaks == {} and s2.detected == {"email": 50} and s2.audit_file is None
    assert CANARY not in out2.read_text()
