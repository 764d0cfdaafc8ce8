"""The stream's xml: and protobuf: options: validated by the schema, compiled into the plan,
and what the formats cannot do yet refused at compile time with a located message."""

from __future__ import annotations

import pytest

from raymask.errors import PolicyError
from raymask.policy.compile import compile_stream
from raymask.policy.loader import parse_policy

XML = """version: 1
streams:
  s:
    format: xml
    xml: {record: "p:Doc/p:Rec", namespaces: {p: "urn:x"}}
    key: "@id"
    unknown_fields: UNKNOWN
    fields:
      "@id": redact
      A/B: redact
      A/C/@d: keep
"""


def test_xml_options_reach_the_plan():
    plan = compile_stream(parse_policy(XML.replace("UNKNOWN", "keep"), "p.yaml"), "s")
    assert plan.format == "xml"
    assert plan.format_options == {"record": "p:Doc/p:Rec", "namespaces": {"p": "urn:x"}}
    assert plan.paths == ("@id", "A/B", "A/C/@d")


def test_unknown_fields_drop_and_detect_compile_for_xml_and_detect_is_refused_for_protobuf():
    pb = XML.replace("format: xml", "format: protobuf").replace(
        'xml: {record: "p:Doc/p:Rec", namespaces: {p: "urn:x"}}',
        "protobuf: {descriptor_set: x.pb, message: a.B}",
    )
    for how in ("drop", "detect"):
        assert compile_stream(parse_policy(XML.replace("UNKNOWN", how), "p.yaml"), "s")
    assert compile_stream(parse_policy(pb.replace("UNKNOWN", "drop"), "p.yaml"), "s")
    with pytest.raises(
        PolicyError, match="streams.s.unknown_fields: detect is not supported for protobuf"
    ):
        compile_stream(parse_policy(pb.replace("UNKNOWN", "detect"), "p.yaml"), "s", "p.yaml")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("A/B: redact\n      A/B/C: redact", "fields A/B and A/B/C overlap"),
        ("A//B: redact", "an XML field is element steps joined by /"),
        ("A/@b/c: redact", "may end in @attribute"),
    ],
)
def test_xml_field_paths_are_checked_by_the_schema(fields, message):
    text = (
        XML.replace("UNKNOWN", "keep").split("    fields:")[0]
        + "    fields:\n      "
        + fields
        + "\n"
    )
    with pytest.raises(PolicyError, match=message):
        parse_policy(text, "p.yaml")
