"""Protobuf messages as Kafka values, masked topic to topic on the embedded broker and real Ray:
each output value is one message the protobuf library reads, masked as the policy says; a value
that is not a message goes to the dead-letter topic; nothing is lost."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from raymask.cluster.kafka_pipeline import run_kafka
from raymask.kernels.codecs import protobuf as pb
from raymask.loadtest.kafka_traffic import create_topic, produce, read_topic
from raymask.loadtest.traffic import PROTO_MESSAGES, TRAFFIC_PROTO, generate_bytes

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

FAST = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}


def test_protobuf_values_are_masked_topic_to_topic(kafka_broker, ray_session, keyring, tmp_path):
    topic = f"readings-{uuid.uuid4().hex[:8]}"
    stream = generate_bytes("iot", 2000, seed=12, fmt="protobuf")
    s, e, _ = pb.split(np.frombuffer(stream, np.uint8), 1)
    values = pb.unframe([stream[x:y] for x, y in zip(s, e, strict=True)])
    values[7] = b"\x0a\x05ab"  # not a message (a length past its end)
    values[8] = b"\n\n\n"  # newlines are fine in binary values; this one is not a message either

    async def setup() -> None:
        await create_topic(kafka_broker, topic, 2)
        await produce(kafka_broker, topic, {0: values[:1000], 1: values[1000:]})

    asyncio.run(setup())
    pol = tmp_path / "p.yaml"
    pol.write_text(f"""version: 1
streams:
  t:
    format: protobuf
    protobuf: {{proto: "{TRAFFIC_PROTO}", message: {PROTO_MESSAGES["iot"]}}}
    key: device.id
    fields:
      device.id: {{technique: tokenize, key: tok}}
      owner.email: {{technique: mask, preset: email}}
      battery_pct: {{technique: generalize, method: round, step: 10}}
""")
    summary = run_kafka(str(pol), "t", topic, bootstrap=kafka_broker, keyring=keyring, idle_s=2,
                        consumer_options=FAST)  # fmt: skip
    assert summary.records_in == 2000 and summary.balanced
    assert summary.dead["default"] == 2 and summary.written["default"] == 1998
    cls = pb.message_class(pb.compile_proto(TRAFFIC_PROTO), PROTO_MESSAGES["iot"])
    out = read_topic(kafka_broker, summary.topics["default"], 2, expect=1998)
    assert len(out) == 1998
    src = {(p, o): v for p in (0, 1) for o, v in enumerate(values[p * 1000 : (p + 1) * 1000])}
    for m in out:
        a = cls.FromString(src[(m.partition, int(m.headers["raymask.src.offset"]))])
        b = cls.FromString(m.value)
        assert b.device.id != a.device.id and b.device.mac == a.device.mac
        assert b.owner.email.split("@")[1] == a.owner.email.split("@")[1]
        assert b.battery_pct == a.battery_pct // 10 * 10
        assert (b.message, b.gps, b.net, b.seq) == (a.message, a.gps, a.net, a.seq)
