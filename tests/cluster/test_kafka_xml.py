"""XML record elements as Kafka values, masked topic to topic on the embedded broker and real
Ray: each output value is the input value with the policy's fields masked (lxml reads it), a
value that is not a record element goes to the dead-letter topic, nothing is lost."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from lxml import etree

from raymask.cluster.kafka_pipeline import run_kafka
from raymask.loadtest.kafka_traffic import create_topic, produce, read_topic
from raymask.loadtest.traffic import generate_bytes

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

FAST = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}
POLICY = """version: 1
streams:
  t:
    format: xml
    xml: {record: Telemetry/Reading}
    key: "@deviceId"
    fields:
      "@deviceId": {technique: tokenize, key: tok, length: 12, prefix: "d_"}
      owner/email: {technique: mask, preset: email}
      owner/phone: redact
"""


def test_xml_values_are_masked_topic_to_topic(kafka_broker, ray_session, keyring, tmp_path):
    topic = f"xml-{uuid.uuid4().hex[:8]}"
    doc = etree.fromstring(generate_bytes("iot", 600, seed=13, fmt="xml"))
    values = [etree.tostring(r) for r in doc.findall("Reading")]
    values[0] = b'<?xml version="1.0" encoding="UTF-8"?>\n' + values[0]  # a document per value
    values[5] = b"<Telemetry>" + values[5] + b"</Telemetry>"  # rooted elsewhere: not a record
    values[6] = values[6].replace(b"<owner>", b"<owner", 1)  # malformed
    values[7] = b"<!DOCTYPE r [<!ENTITY x 'y'>]>" + values[7]  # refused

    async def setup() -> None:
        await create_topic(kafka_broker, topic, 2)
        await produce(kafka_broker, topic, {0: values[:300], 1: values[300:]})

    asyncio.run(setup())
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY)
    summary = run_kafka(str(pol), "t", topic, bootstrap=kafka_broker, keyring=keyring, idle_s=2,
                        consumer_options=FAST)  # fmt: skip
    assert summary.records_in == 600 and summary.balanced
    assert summary.dead["default"] == 3 and summary.written["default"] == 597
    out = read_topic(kafka_broker, summary.topics["default"], 2, expect=597)
    assert len(out) == 597
    src = {(p, o): v for p in (0, 1) for o, v in enumerate(values[p * 300 : (p + 1) * 300])}
    for m in out:
        raw = src[(m.partition, int(m.headers["raymask.src.offset"]))]
        a, b = etree.fromstring(raw), etree.fromstring(m.value)
        assert b.tag == "Reading" and b.get("deviceId").startswith("d_")
        assert b.findtext("owner/email").split("@")[1] == a.findtext("owner/email").split("@")[1]
        assert b.findtext("owner/email") != a.findtext("owner/email")
        if a.findtext("owner/phone"):
            assert b.findtext("owner/phone") == "[REDACTED]"
        for keep in ("device/mac", "gps/lat", "message", "net/ipv4"):
            assert b.findtext(keep) == a.findtext(keep)
        if raw.startswith(b"<?xml"):
            assert m.value.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Reading')
    dead = read_topic(kafka_broker, summary.dead_topics["default"], 2, expect=3)
    assert len(dead) == 3
