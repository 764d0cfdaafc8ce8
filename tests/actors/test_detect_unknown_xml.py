"""`unknown_fields: detect` for XML, through MaskCore (no Ray): text, CDATA and attribute values
the policy does not name are scanned and what is found replaced; named fields are left to their
technique; everything else, the markup between records included, is kept byte for byte."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
from lxml import etree

from raymask.actors.router import RouterCore
from raymask.actors.worker import MaskCore
from raymask.kernels.codecs import xml as xml_codec
from raymask.kernels.codecs.formats import format_for
from raymask.policy.keys import Key, Keyring
from raymask.policy.schema import Policy

RING = Keyring([Key("tok", 1, b"t" * 32), Key("deadletter", 1, b"d" * 32)])
POLICY = Policy.model_validate({"version": 1, "streams": {"s": {
    "format": "xml", "xml": {"record": "Log/Entry"}, "key": "@host",
    "unknown_fields": "detect",
    "fields": {"user/email": {"technique": "mask", "preset": "email"}, "@host": "keep"},
}}})  # fmt: skip

PROLOG = b'<?xml version="1.0"?>\n<Log xmlns:x="urn:x">\n  '
RECORDS = [
    b'<Entry host="h1" x:note="mail ann@ex.io"><user><email>bob@ex.io</email></user>'
    b"<msg>card 4111 1111 1111 1111 from 10.1.2.3</msg><n>7</n></Entry>\n  ",
    b'<Entry host="h2"><msg><![CDATA[<b>cy@ex.io</b>]]></msg><t>a &amp; b, nothing</t>'
    b"<!-- dee@ex.io in a comment is not data --></Entry>\n  ",
    b'<Entry host="h3"><user><email>eve@ex.io</email></user>mixed fay@ex.io text<z/></Entry>\n',
    b'<Entry host="h4"><msg>gil@ex.io</Entry>\n',  # malformed: a dead letter, not scanned
]
EPILOGUE = b"</Log>\n"


def _run() -> tuple[list, object]:
    fmt = format_for("xml", options={"record": "Log/Entry"}, prolog=PROLOG)
    core = MaskCore(POLICY, "s", RING, fmt)
    data = np.frombuffer(b"".join(RECORDS) + EPILOGUE, np.uint8)
    routed = RouterCore(core.plan, fmt, 1).route(data, 1)
    (out,) = core.process_views(routed.batch, [None], routed.shards[0])
    return out.records.to_pylist(), out


def test_unknown_text_attributes_and_cdata_are_scanned_and_named_fields_keep_their_technique():
    recs, out = _run()
    assert len(recs) == 3 and list(out.dead_rows) == [3]
    doc = etree.fromstring(PROLOG + b"".join(recs) + b"\n</Log>")
    e1, e2, e3 = doc.findall("Entry")
    assert e1.get("{urn:x}note") == "mail <EMAIL>"
    assert e1.findtext("user/email") != "bob@ex.io" and e1.findtext("user/email").endswith("@ex.io")
    assert e1.findtext("msg") == "card <CARD> from <IPV4>" and e1.findtext("n") == "7"
    assert e2.findtext("msg") == "<b><EMAIL></b>" and e2.findtext("t") == "a & b, nothing"
    assert e3.find("user").tail == "mixed <EMAIL> text"  # mixed content
    assert out.detected == {"email": 3, "card": 1, "ipv4": 1}  # ann, cy, fay


def test_records_where_nothing_is_found_leave_byte_identical():
    recs, _ = _run()
    assert recs[1].endswith(b"<!-- dee@ex.io in a comment is not data --></Entry>\n  ")
    assert recs[0].startswith(b'<Entry host="h1" x:note="mail &lt;EMAIL&gt;">')
    assert recs[2].endswith(b"<z/></Entry>\n")
    _, out = _run()
    assert out.records[1].as_py().count(b"a &amp; b, nothing") == 1


# ------------------------------------------------- XML record elements as values (Kafka mode)

VALUES_POLICY = Policy.model_validate({"version": 1, "streams": {"v": {
    "format": "xml", "xml": {"record": "Log/Entry"}, "key": "@host",
    "fields": {"user/email": "redact", "@host": {"technique": "tokenize", "key": "tok"}},
}}})  # fmt: skip


def test_fuzz_xml_values_never_crash_lose_or_pass_a_masked_field_in_the_clear():
    """The Kafka XML decoder (XmlValuesFormat: one record element per framed value) on mutated
    and foreign values: every value is emitted or a dead letter, and an emitted value never
    holds the clear email."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from raymask.kernels.codecs import protobuf as pb
    from raymask.kernels.codecs.formats import XmlValuesFormat

    fmt = XmlValuesFormat("Log/Entry")
    core = MaskCore(VALUES_POLICY, "v", RING, fmt)
    router = RouterCore(core.plan, fmt, 1)
    base = [b"<Entry host='h'><user><email>secret@ex.io</email></user></Entry>",
            b"<?xml version='1.0'?><Entry host='h2'><user><email>secret@ex.io</email><email>"
            b"secret@ex.io</email></user></Entry>",
            b"<Log><Entry host='h3'><user><email>secret@ex.io</email></user></Entry></Log>",
            b"<x:Entry xmlns:x='u' host='h4'><x:user><x:email>secret@ex.io</x:email></x:user>"
            b"</x:Entry>"]  # fmt: skip

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.sampled_from(base), st.lists(st.tuples(st.integers(0, 200),
           st.binary(max_size=3)), max_size=3)), max_size=6))  # fmt: skip
    def run(specs) -> None:  # noqa: ANN001
        values = []
        for v, edits in specs:
            b = bytearray(v)
            for i, ins in edits:
                i %= len(b)
                b[i : i + 1] = ins
            values.append(bytes(b))
        data = np.frombuffer(pb.frame(values), np.uint8)
        routed = router.route(data, 0)
        outs = [] if routed.shards[0] is None else core.process_views(
            routed.batch, [None], routed.shards[0])  # fmt: skip
        emitted = sum(len(o.rows) for o in outs)
        dead = len(routed.dead) + sum(len(o.dead_rows) for o in outs)
        assert emitted + dead == len(values) == routed.records
        for o in outs:
            for rec in o.records.to_pylist():
                assert not re.search(rb"<(\w+:)?email>secret@ex\.io</", rec)

    run()


def test_unknown_fields_drop_keeps_only_the_named_fields_and_their_paths():
    pol = Policy.model_validate({"version": 1, "streams": {"s": {
        "format": "xml", "xml": {"record": "Log/Entry"}, "key": "@host",
        "unknown_fields": "drop",
        "fields": {"user/email": {"technique": "mask", "preset": "email"}, "@host": "keep",
                   "user/@id": "redact", "msg": "keep"},
    }}})  # fmt: skip
    fmt = format_for("xml", options={"record": "Log/Entry"}, prolog=PROLOG)
    core = MaskCore(pol, "s", RING, fmt)
    data = np.frombuffer(b"".join(RECORDS) + EPILOGUE, np.uint8)
    routed = RouterCore(core.plan, fmt, 1).route(data, 1)
    (out,) = core.process_views(routed.batch, [None], routed.shards[0])
    recs = out.records.to_pylist()
    assert recs[0] == (b'<Entry host="h1"><user><email>b**@ex.io</email></user>'
                       b"<msg>card 4111 1111 1111 1111 from 10.1.2.3</msg></Entry>\n  ")  # fmt: skip
    assert recs[1] == b'<Entry host="h2"><msg><![CDATA[<b>cy@ex.io</b>]]></msg></Entry>\n  '
    assert recs[2] == b'<Entry host="h3"><user><email>e**@ex.io</email></user></Entry>\n'
    doc = etree.fromstring(PROLOG + b"".join(recs) + b"</Log>")
    assert [e.get("host") for e in doc] == ["h1", "h2", "h3"]
    # namespace declarations stay (a kept name may need them); a declaration before a value's
    # record element too (Kafka values)
    vals = xml_codec.drop_unknown(
        pa.array(
            [
                b'<?xml version="1.0"?>\n<Entry xmlns:x="u" x:a="1" host="h"><x:n>1</x:n>'
                b'<user id="7" k="2"/></Entry>'
            ],
            pa.large_binary(),
        ),  # fmt: skip
        fmt.layout(("user/email", "@host", "user/@id", "msg")),
    )
    assert vals.to_pylist() == [b'<?xml version="1.0"?>\n<Entry xmlns:x="u" host="h">'
                                b'<user id="7"/></Entry>']  # fmt: skip
