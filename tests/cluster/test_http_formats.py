"""CSV, XML and Protobuf bodies over HTTP, without Ray: IngressCore with the real masking core
in process. The oracle is a file run of the same bytes (same kernels, cluster/pipeline.py), and
the formats' own parsers (csv, lxml, the protobuf library) read the answers."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from raymask.actors.router import RouterCore
from raymask.actors.worker import MaskCore
from raymask.cluster.http_formats import BodyError, body_codec
from raymask.cluster.pipeline import mask_file
from raymask.cluster.serve_app import IngressCore, Request, masked_from
from raymask.kernels.codecs import protobuf as pb
from raymask.loadtest.traffic import PROTO_MESSAGES, TRAFFIC_PROTO, generate_bytes
from raymask.policy.compile import compile_stream
from raymask.policy.loader import parse_policy

POLICY_TEXT = f"""
version: 4
streams:
  pay_csv:
    format: csv
    key: account.id
    fields:
      account.id: {{technique: tokenize, key: tok, length: 12, prefix: "a_"}}
      customer.email: {{technique: mask, preset: email}}
      customer.name: redact
      amount: keep
    views:
      ops: {{customer.email: keep}}
  tele_xml:
    format: xml
    xml: {{record: Telemetry/Reading}}
    key: "@deviceId"
    fields:
      "@deviceId": {{technique: tokenize, key: tok, length: 12, prefix: "d_"}}
      owner/email: {{technique: mask, preset: email}}
      owner/phone: redact
      net/ipv4: {{technique: generalize, method: ip_prefix, v4_bits: 24}}
  pay_pb:
    format: protobuf
    protobuf: {{proto: "{TRAFFIC_PROTO}", message: {PROTO_MESSAGES["payments"]}}}
    key: account.id
    fields:
      account.id: {{technique: tokenize, key: tok, length: 12, prefix: "a_"}}
      customer.name: redact
      customer.email: {{technique: mask, preset: email}}
      amount: {{technique: generalize, method: round, step: 10}}
  pay_nd:
    format: ndjson
    key: account.id
    fields:
      account.id: {{technique: tokenize, key: tok}}
"""


def _policy(text: str = POLICY_TEXT):  # noqa: ANN202
    return parse_policy(text)


def _core(keyring, policy=None) -> IngressCore:  # noqa: ANN001
    """IngressCore whose masking runs in this process, as a Serve replica masks a stream
    without per-subject state (a router and a core per format, a CSV header's included)."""
    pol = policy or _policy()
    made: dict = {}

    async def mask(stream, view, data, fmt=None):  # noqa: ANN001
        if fmt is None:
            codec = core.codecs.get(stream)
            from raymask.kernels.codecs.formats import format_for

            fmt = codec.fixed_format if codec is not None else format_for("ndjson")
        key = (stream, id(fmt))
        if key not in made:
            made[key] = (
                RouterCore(compile_stream(pol, stream), fmt, 1),
                MaskCore(pol, stream, keyring, fmt),
            )
        router, mcore = made[key]
        routed = router.route(data, 0)
        rows = routed.shards[0]
        outs = [] if rows is None else mcore.process_views(routed.batch, [view or "default"], rows)
        return masked_from(routed, outs)

    core = IngressCore(pol, mask, 1 << 22)
    return core


def _ask(core: IngressCore, *reqs: tuple) -> list:  # noqa: ANN001
    parsed = [core.parse(*r) for r in reqs]
    assert all(isinstance(p, Request) for p in parsed), [getattr(p, "body", p) for p in parsed]
    return asyncio.run(core.answer(parsed))


def _file_run(tmp_path, stream: str, body: bytes, keyring, role=None, suffix="bin") -> bytes:  # noqa: ANN001
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY_TEXT)
    src, dst = tmp_path / f"in.{suffix}", tmp_path / f"out.{suffix}"
    src.write_bytes(body)
    mask_file(pol, stream, src, dst, role=role, keyring=keyring, local=True, workers=1)
    return dst.read_bytes()


# ------------------------------------------------------------------------------ round trips


def test_csv_bodies_come_back_as_a_file_run_masks_them(keyring, tmp_path):
    core = _core(keyring)
    a = generate_bytes("payments", 120, seed=3, fmt="csv")
    b = generate_bytes("payments", 80, seed=4, fmt="csv")
    ans = _ask(
        core, ("pay_csv", None, a, "text/csv"), ("pay_csv", "ops", b, "text/csv; charset=utf-8")
    )
    assert [x.status for x in ans] == [200, 200]
    assert ans[0].body == _file_run(tmp_path, "pay_csv", a, keyring, suffix="csv")
    assert ans[1].body == _file_run(tmp_path, "pay_csv", b, keyring, role="ops", suffix="csv")
    assert ans[0].media_type == "text/csv" and ans[0].headers["raymask-records"] == "120"
    rin = list(csv.DictReader(io.StringIO(a.decode())))
    rout = list(csv.DictReader(io.StringIO(ans[0].body.decode())))
    for x, y in zip(rin, rout, strict=True):
        assert y["customer.name"] == "[REDACTED]" and y["account.id"].startswith("a_")
        assert y["customer.email"].split("@")[1] == x["customer.email"].split("@")[1]
        assert y["customer.email"] != x["customer.email"]
        assert {k: v for k, v in y.items() if k not in ("customer.name", "account.id", "customer.email")} == {
            k: v for k, v in x.items() if k not in ("customer.name", "account.id", "customer.email")
        }  # fmt: skip
    ops = list(csv.DictReader(io.StringIO(ans[1].body.decode())))
    assert [r["customer.email"] for r in ops] == [
        r["customer.email"] for r in csv.DictReader(io.StringIO(b.decode()))
    ]


def test_csv_bodies_with_other_headers_are_masked_by_their_own_columns(keyring):
    core = _core(keyring)
    a = b"account.id,customer.name,x\nacc-1,Ann,1\nacc-2,Bob,2\n"
    b = b'x,"customer.name",account.id\r\n3,Cy,acc-3\r\n'
    ans = _ask(core, ("pay_csv", None, a, "text/csv"), ("pay_csv", None, b, "text/csv"))
    ra = list(csv.reader(io.StringIO(ans[0].body.decode())))
    rb = list(csv.reader(io.StringIO(ans[1].body.decode())))
    assert ra[0] == ["account.id", "customer.name", "x"] and rb[0] == [
        "x",
        "customer.name",
        "account.id",
    ]
    assert [r[1:] for r in ra[1:]] == [["[REDACTED]", "1"], ["[REDACTED]", "2"]]
    assert rb[1][:2] == ["3", "[REDACTED]"] and rb[1][2].startswith("a_")


def test_xml_body_comes_back_as_the_whole_document_masked(keyring, tmp_path):
    core = _core(keyring)
    doc = generate_bytes("iot", 150, seed=6, fmt="xml")
    (ans,) = _ask(core, ("tele_xml", None, doc, "application/xml"))
    assert ans.status == 200 and ans.media_type == "application/xml"
    assert ans.body == _file_run(tmp_path, "tele_xml", doc, keyring, suffix="xml")
    a, b = etree.fromstring(doc), etree.fromstring(ans.body)
    for x, y in zip(a.findall("Reading"), b.findall("Reading"), strict=True):
        assert y.get("deviceId").startswith("d_") and y.get("deviceId") != x.get("deviceId")
        assert y.findtext("owner/email").split("@")[1] == x.findtext("owner/email").split("@")[1]
        if x.findtext("owner/phone"):
            assert y.findtext("owner/phone") == "[REDACTED]"
        assert y.findtext("net/ipv4").rsplit(".", 1)[0] == x.findtext("net/ipv4").rsplit(".", 1)[0]
        assert y.findtext("net/ipv4").endswith(".0")
        for keep in ("device/mac", "gps/lat", "message", "ts", "net/ipv6"):
            assert y.findtext(keep) == x.findtext(keep)


def test_protobuf_body_comes_back_as_delimited_masked_messages(keyring, tmp_path):
    core = _core(keyring)
    body = generate_bytes("payments", 100, seed=7, fmt="protobuf")
    (ans,) = _ask(core, ("pay_pb", None, body, "application/x-protobuf"))
    assert ans.status == 200 and ans.media_type == "application/x-protobuf"
    pol = tmp_path / "p.yaml"
    assert ans.body == _file_run(tmp_path, "pay_pb", body, keyring, suffix="pb")
    assert pol.exists()
    cls = pb.message_class(pb.compile_proto(TRAFFIC_PROTO), PROTO_MESSAGES["payments"])

    def msgs(b: bytes) -> list:
        s, e, _ = pb.split(np.frombuffer(b, np.uint8), 0)
        return [cls.FromString(v) for v in pb.unframe([b[x:y] for x, y in zip(s, e, strict=True)])]

    for x, y in zip(msgs(body), msgs(ans.body), strict=True):
        assert y.customer.name == "[REDACTED]" and y.account.id.startswith("a_")
        assert y.customer.email.split("@")[1] == x.customer.email.split("@")[1]
        assert y.amount == round(x.amount / 10) * 10 or abs(y.amount - x.amount) <= 10
        assert (y.card, y.merchant, y.currency, y.account.iban) == (
            x.card,
            x.merchant,
            x.currency,
            x.account.iban,
        )


# ------------------------------------------------------------------ per-record errors, 400, 415


def test_a_bad_record_is_listed_by_index_and_the_others_are_masked(keyring):
    core = _core(keyring)
    csv_body = b'account.id,customer.name\nacc-1,Ann\nacc-2,"canary-4111",extra\nacc-3,Cy\n'
    lines = generate_bytes("iot", 3, seed=8, fmt="xml").split(b"\n")
    lines[3] = lines[3].replace(b"<ts>", b"<ts canary-4111>", 1)  # record 1: malformed tag
    xml_body = b"\n".join(lines)
    pbody = generate_bytes("payments", 3, seed=9, fmt="protobuf")
    s, e, _ = pb.split(np.frombuffer(pbody, np.uint8), 0)
    frames = [pbody[x:y] for x, y in zip(s, e, strict=True)]
    frames[1] = pb.frame([b"\x0a\x05canar"])  # a length past its end
    ans = _ask(
        core,
        ("pay_csv", None, csv_body, "text/csv"),
        ("tele_xml", None, xml_body, "text/xml"),
        ("pay_pb", None, b"".join(frames), "application/protobuf"),
    )
    for a in ans:
        assert a.status == 200 and a.headers["raymask-records"] == "2"
        assert a.headers["raymask-error-count"] == "1"
        errs = json.loads(a.headers["raymask-errors"])
        assert [x["index"] for x in errs] == [1] and "canar" not in a.headers["raymask-errors"]
        assert b"canar" not in a.body
    assert len(list(csv.reader(io.StringIO(ans[0].body.decode())))) == 3
    doc = etree.fromstring(ans[1].body)  # still a document, without the failed element
    assert len(doc.findall("Reading")) == 2 and ans[1].media_type == "text/xml"


@pytest.mark.parametrize(
    ("stream", "body", "ctype", "status", "says"),
    [
        ("pay_csv", b"a,b\n1,2\n", "application/x-ndjson", 415, "text/csv"),
        ("pay_csv", b"{}", "application/json", 415, "text/csv"),
        ("tele_xml", b"<a/>", "text/csv", 415, "application/xml"),
        ("pay_pb", b"", "application/xml", 415, "application/x-protobuf"),
        ("pay_nd", b"a\n", "text/csv", 415, "application/x-ndjson"),
        ("pay_csv", b"", "text/csv", 400, "no header line"),
        ("pay_csv", b"\xff\xfe,a\n1,2\n", "text/csv", 400, "not UTF-8"),
        ("pay_csv", b"a,a\n1,2\n", "text/csv", 400, "column twice"),
        ("pay_csv", b'a,b\n1,"2\n3,4\n', "text/csv", 400, "inside a quoted cell"),
        # a DOCTYPE is refused before anything is read
        ("tele_xml", b'<!DOCTYPE x [<!ENTITY e "canary">]><Telemetry><Reading/></Telemetry>',
         "application/xml", 400, "DOCTYPE"),  # fmt: skip
        ("tele_xml", b"<Telemetry><Reading a='1'><x>canary</Telemetry>", "application/xml", 400,
         "not closed"),  # fmt: skip
        ("pay_pb", b"\x0a\x0acanary", "application/x-protobuf", 400, "ends inside message 0"),
        ("pay_pb", b"\xff" * 11, "application/x-protobuf", 400, "no readable length"),
    ],
)  # fmt: skip
def test_bodies_that_do_not_fit_get_one_line_without_data(keyring, stream, body, ctype, status,
                                                          says):  # fmt: skip
    got = _core(keyring).parse(stream, None, body, ctype)
    assert not isinstance(got, Request)
    assert got.status == status
    msg = json.loads(got.body)["error"]
    assert says in msg and "canary" not in msg and "\n" not in msg


def test_a_missing_content_type_means_the_streams_own_format(keyring):
    core = _core(keyring)
    assert isinstance(core.parse("pay_csv", None, b"account.id\nacc-1\n", None), Request)
    assert isinstance(core.parse("pay_nd", None, b"{}\n", None), Request)


def test_empty_bodies_answer_empty(keyring):
    core = _core(keyring)
    ans = _ask(core, ("pay_pb", None, b"", "application/x-protobuf"),
               ("pay_csv", None, b"account.id\n", "text/csv"),
               ("tele_xml", None, b"<Telemetry/>", "application/xml"))  # fmt: skip
    assert [a.body for a in ans] == [b"", b"account.id\n", b"<Telemetry/>"]
    assert all(a.headers["raymask-records"] == "0" for a in ans)


def test_unknown_fields_drop_for_csv_and_detect_for_xml_apply_over_http(keyring):
    text = POLICY_TEXT.replace(
        "  pay_csv:\n    format: csv\n", "  pay_csv:\n    format: csv\n    unknown_fields: drop\n"
    ).replace(
        "  tele_xml:\n    format: xml\n",
        "  tele_xml:\n    format: xml\n    unknown_fields: detect\n",
    )
    core = _core(keyring, _policy(text))
    csv_body = b"account.id,secret,customer.name\nacc-1,s1,Ann\nacc-2,s2,Bob\n"
    xml_body = (b"<Telemetry><Reading deviceId='d1'><note>write to zed@ex.io</note>"
                b"<owner><email>amy@ex.io</email></owner></Reading></Telemetry>")  # fmt: skip
    a, b = _ask(core, ("pay_csv", None, csv_body, "text/csv"),
                ("tele_xml", None, xml_body, "application/xml"))  # fmt: skip
    rows = list(csv.reader(io.StringIO(a.body.decode())))
    assert rows[0] == ["account.id", "customer.name"] and [r[1] for r in rows[1:]] == [
        "[REDACTED]", "[REDACTED]"]  # fmt: skip
    doc = etree.fromstring(b.body)
    assert doc.findtext("Reading/note") == "write to <EMAIL>"
    assert doc.findtext("Reading/owner/email") == "a**@ex.io"


def test_xml_elements_repeated_in_a_record_are_each_masked(keyring):
    text = POLICY_TEXT.replace(
        "      owner/phone: redact\n",
        "      owner/phone: redact\n      t: {technique: noise, epsilon: 1.0, lo: 0, hi: 50}\n",
    )
    core = _core(keyring, _policy(text))
    body = (b"<Telemetry><Reading deviceId='d1'><owner><email>ann@ex.io</email>"
            b"<email>amy@ex.io</email><phone>1</phone></owner><owner><email>al@ex.io</email>"
            b"<phone>2</phone></owner><x>keep</x><t>20</t></Reading>\n"
            b"<Reading deviceId='d2'><t>1</t><t>2</t></Reading></Telemetry>")  # fmt: skip
    (a,) = _ask(core, ("tele_xml", None, body, "application/xml"))
    assert a.headers["raymask-records"] == "1"
    (err,) = json.loads(a.headers["raymask-errors"])
    assert err == {"index": 1, "reason": "field t: occurs more than once, and noise takes one "
                   "value per record"}  # fmt: skip
    r = etree.fromstring(a.body).find("Reading")
    assert [e.text for e in r.iter("email")] == ["a**@ex.io", "a**@ex.io", "a*@ex.io"]
    assert [e.text for e in r.iter("phone")] == ["[REDACTED]", "[REDACTED]"]
    assert r.findtext("x") == "keep" and r.findtext("t") != "20"


# ------------------------------------------------------------------------------------ fuzzing

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
_pieces = st.sampled_from(
    [b"<", b">", b"/", b"</Reading>", b"<Reading deviceId='d1'>", b"<owner>", b"<email>",
     b"a@b.c", b"</email>", b"</owner>", b"<!--", b"-->", b"<![CDATA[", b"]]>", b"&amp;", b"&",
     b"<?xml version='1.0'?>", b"<Telemetry>", b"</Telemetry>", b'"', b"'", b"\n", b"\xff", b"x"]
)  # fmt: skip


def _check_answer(core: IngressCore, stream: str, body: bytes, ctype: str) -> None:
    got = core.parse(stream, None, body, ctype)
    if not isinstance(got, Request):
        assert got.status == 400 and b"\n" not in got.body
        return
    (ans,) = asyncio.run(core.answer([got]))
    assert ans.status == 200
    n_ok = int(ans.headers["raymask-records"])
    n_bad = int(ans.headers["raymask-error-count"])
    assert n_ok + n_bad == got.records  # nothing lost: every record answered or listed


@FUZZ
@given(st.lists(_pieces, max_size=40).map(b"".join))
def test_xml_bodies_never_crash_and_account_for_every_record(keyring_once, body):
    _check_answer(keyring_once, "tele_xml", b"<Telemetry>" + body + b"</Telemetry>", "text/xml")


@FUZZ
@given(st.lists(st.sampled_from([b"a", b",", b'"', b"\n", b"\r\n", b"acc-1", b"\xc3", b"account.id"]),
                max_size=40).map(b"".join))  # fmt: skip
def test_csv_bodies_never_crash_and_account_for_every_record(keyring_once, body):
    _check_answer(keyring_once, "pay_csv", b"account.id,customer.name\n" + body, "text/csv")


@FUZZ
@given(st.binary(max_size=200))
def test_protobuf_bodies_never_crash_and_account_for_every_record(keyring_once, body):
    _check_answer(keyring_once, "pay_pb", body, "application/x-protobuf")


@FUZZ
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_framed_protobuf_garbage_is_per_record(keyring_once, values):
    _check_answer(keyring_once, "pay_pb", pb.frame(values), "application/x-protobuf")


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(["tele_xml", "pay_csv", "pay_pb"]),
                  st.lists(_pieces, max_size=25).map(b"".join), st.binary(max_size=60)),
        min_size=2, max_size=4,
    )
)  # fmt: skip
def test_joined_callers_never_get_each_others_records(keyring_once, bodies):
    """Several callers' bodies in one batch: each answer accounts for exactly its own records
    (a record never runs into the next caller's, whatever the bytes)."""
    reqs = []
    for stream, xml_part, raw in bodies:
        if stream == "tele_xml":
            body, ctype = b"<Telemetry>" + xml_part + b"</Telemetry>", "text/xml"
        elif stream == "pay_csv":
            body, ctype = b"account.id,customer.name\n" + raw.replace(b"\x00", b""), "text/csv"
        else:
            body, ctype = raw, "application/x-protobuf"
        got = keyring_once.parse(stream, None, body, ctype)
        if isinstance(got, Request):
            reqs.append(got)
        else:
            assert got.status == 400
    answers = asyncio.run(keyring_once.answer(reqs))
    for r, a in zip(reqs, answers, strict=True):
        assert a.status == 200
        n = int(a.headers["raymask-records"]) + int(a.headers["raymask-error-count"])
        assert n == r.records
        idx = [e["index"] for e in json.loads(a.headers.get("raymask-errors", "[]"))]
        assert all(0 <= i < r.records for i in idx)


@pytest.fixture(scope="module")
def keyring_once():
    from raymask.policy.keys import Key, Keyring

    ring = Keyring([Key("tok", 1, b"t" * 32), Key("deadletter", 1, b"d" * 32)])
    return _core(ring)


def test_body_codecs_exist_for_the_formats_that_need_them():
    pol = _policy()
    assert body_codec(compile_stream(pol, "pay_nd")) is None
    assert {body_codec(compile_stream(pol, s)).kind for s in ("pay_csv", "tele_xml", "pay_pb")} == {
        "csv", "xml", "protobuf"}  # fmt: skip
    with pytest.raises(BodyError):
        body_codec(compile_stream(pol, "pay_pb")).decode(b"\x05ab")


# ------------------------------------------------------------------------- through Ray Serve

SERVED_TEXT = POLICY_TEXT.replace(
    "      amount: keep\n    views:",
    "      amount: {technique: noise, epsilon: 1.0, lo: 0, hi: 500, round_to: 0.01}\n"
    "    budget: {epsilon: 50, period: day, key: ledger}\n    views:",
)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served_formats(ray_session, tmp_path_factory):
    from ray import serve

    from raymask.cluster.serve_app import build_app
    from raymask.policy.keys import Key, Keyring

    ring = Keyring([Key(k, 1, k[0].encode() * 32) for k in ("tok", "deadletter", "ledger")])
    from ray.serve.config import gRPCOptions

    from raymask.cluster.grpc_api import SERVICER

    port, gport = _free_port(), _free_port()
    pol = parse_policy(SERVED_TEXT)
    state = tmp_path_factory.mktemp("state")
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                grpc_options=gRPCOptions(port=gport, grpc_servicer_functions=[SERVICER]))  # fmt: skip
    serve.run(build_app(pol, ring, workers=2, app="t-fmt", state=str(state)), name="t-fmt",
              route_prefix="/")  # fmt: skip
    yield f"http://127.0.0.1:{port}", ring, f"127.0.0.1:{gport}"
    serve.delete("t-fmt")
    serve.shutdown()
    import ray

    for i in range(2):  # the CSV stream's budget workers (detached)
        try:
            ray.kill(ray.get_actor(f"sworker:t-fmt:pay_csv:{i}", namespace="raymask"))
        except ValueError:
            pass


@pytest.mark.integration
def test_serve_masks_csv_xml_and_protobuf_bodies_of_concurrent_callers(served_formats, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import requests

    url, ring, _ = served_formats
    csv_a = generate_bytes("payments", 200, seed=21, fmt="csv")
    csv_b = b"x,account.id,customer.name\n1,acc-1,Ann\n2,acc-2,Bob\n"  # another header
    xml = generate_bytes("iot", 200, seed=22, fmt="xml")
    pbody = generate_bytes("payments", 200, seed=23, fmt="protobuf")
    calls = [
        ("pay_csv", csv_a, "text/csv"),
        ("pay_csv", csv_b, "text/csv"),
        ("tele_xml", xml, "application/xml"),
        ("pay_pb", pbody, "application/x-protobuf"),
    ] * 3

    def post(c: tuple):  # noqa: ANN202
        return requests.post(f"{url}/v1/streams/{c[0]}/mask", data=c[1],
                             headers={"content-type": c[2]}, timeout=120)  # fmt: skip

    with ThreadPoolExecutor(6) as pool:
        res = list(pool.map(post, calls))
    assert [r.status_code for r in res] == [200] * len(calls), [r.text for r in res]
    for c, r in zip(calls, res, strict=True):
        assert r.headers["raymask-error-count"] == "0"
        assert r.headers["content-type"].startswith(c[2])
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY_TEXT)  # the file run's oracle (no noise in it: amount is keep there)
    assert res[2].content == _file_run(tmp_path, "tele_xml", xml, ring, suffix="xml")
    assert res[3].content == _file_run(tmp_path, "pay_pb", pbody, ring, suffix="pb")
    rin = list(csv.DictReader(io.StringIO(csv_a.decode())))
    rout = list(csv.DictReader(io.StringIO(res[0].content.decode())))
    assert len(rout) == 200
    for x, y in zip(rin, rout, strict=True):
        assert y["customer.name"] == "[REDACTED]" and y["amount"] != x["amount"]
        # noised, or empty once the account's daily allowance is spent (suppress)
        assert y["amount"] == "" or float(y["amount"]) == float(y["amount"])
        for k in ("event_id", "card.number", "note", "currency"):
            assert y[k] == x[k]
    got_b = list(csv.reader(io.StringIO(res[1].content.decode())))
    assert got_b[0] == ["x", "account.id", "customer.name"] and got_b[1][2] == "[REDACTED]"
    r = requests.post(f"{url}/v1/streams/tele_xml/mask", data=b"{}\n", timeout=30,
                      headers={"content-type": "application/x-ndjson"})  # fmt: skip
    assert r.status_code == 415 and "Traceback" not in r.text
    r = requests.post(f"{url}/v1/streams/pay_pb/mask", data=b"\x0a\x0acanary", timeout=30,
                      headers={"content-type": "application/x-protobuf"})  # fmt: skip
    assert r.status_code == 400 and "canary" not in r.text


@pytest.mark.integration
def test_grpc_mask_is_the_same_service(served_formats):
    import grpc

    from raymask.cluster.mask_service_pb2 import MaskRequest
    from raymask.cluster.mask_service_pb2_grpc import MaskingStub

    url, ring, target = served_formats
    meta = (("application", "t-fmt"),)
    body = b'account.id,customer.name\nacc-1,Ann\nacc-2,"x",y\n'
    with grpc.insecure_channel(target) as ch:
        stub = MaskingStub(ch)
        r = stub.Mask(MaskRequest(stream="pay_csv", content_type="text/csv", body=body),
                      metadata=meta, timeout=60)  # fmt: skip
        assert r.records == 1 and r.error_count == 1 and [e.index for e in r.errors] == [1]
        assert r.content_type == "text/csv" and b"[REDACTED]" in r.body and b"Ann" not in r.body
        xml = generate_bytes("iot", 5, seed=2, fmt="xml")
        r = stub.Mask(MaskRequest(stream="tele_xml", body=xml), metadata=meta, timeout=60)
        assert r.records == 5 and etree.fromstring(r.body).find("Reading") is not None
        with pytest.raises(grpc.RpcError) as info:
            stub.Mask(MaskRequest(stream="pay_pb", content_type="application/x-protobuf",
                                  body=b"\x0a\x0acanary"), metadata=meta, timeout=60)  # fmt: skip
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ends inside message 0" in info.value.details()
        assert "canary" not in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            stub.Mask(MaskRequest(stream="nope", body=b""), metadata=meta, timeout=60)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
