"""Kafka I/O throughput against the embedded tansu broker: per-record `send()` beside the batch
API the sink uses, and the source's chunked consume.

    python -m raymask.loadtest.kafka_io [--records N] [--profile payments] [--partitions 3]

Starts its own broker on loopback and stops it. Each producer path writes the same records
(synthetic traffic, one NDJSON record per message, the sink's three source headers on each) to
its own topic and waits for every acknowledgement (acks=all). Prints a markdown table; the
figures are best of `--repeat` runs on a shared, noisy machine: compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
import uuid

import numpy as np

from raymask.actors.sinks.kafka import SRC_OFFSET, SRC_PARTITION, SRC_TOPIC, KafkaSink
from raymask.actors.sources.kafka import KafkaSource
from raymask.cluster.broker import Broker
from raymask.loadtest.traffic import generate_bytes

FAST_GROUP = {"session_timeout_ms": 1_000, "heartbeat_interval_ms": 200}


async def _create(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def per_record_send(bootstrap: str, values: list[bytes], parts: int) -> float:
    """One `send()` per record (futures gathered at the end, so sends still pipeline)."""
    from aiokafka import AIOKafkaProducer

    topic = f"bench-send-{uuid.uuid4().hex[:6]}"
    await _create(bootstrap, topic, parts)
    prod = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
        max_batch_size=1 << 20, max_request_size=2 << 20,
    )  # fmt: skip
    await prod.start()
    try:
        t = time.perf_counter()
        futures = []
        src = b"bench"
        for i, v in enumerate(values):
            p = i % parts
            headers = [(SRC_TOPIC, src), (SRC_PARTITION, b"%d" % p), (SRC_OFFSET, b"%d" % i)]
            futures.append(await prod.send(topic, v, partition=p, headers=headers))
        await asyncio.gather(*futures)
        return time.perf_counter() - t
    finally:
        await prod.stop()


async def sink_batches(bootstrap: str, values: list[bytes], parts: int) -> tuple[float, str]:
    """The sink's path: `create_batch` / `send_batch`, one write per partition (as per chunk)."""
    topic = f"bench-in-{uuid.uuid4().hex[:6]}"
    per = {p: (values[p::parts], np.arange(p, len(values), parts)) for p in range(parts)}
    async with KafkaSink(bootstrap, resume=False) as sink:
        out = sink.topic_for(topic, "analyst")
        await sink.ensure_topic(out, parts)
        t = time.perf_counter()
        await asyncio.gather(
            *(sink.write(topic, p, "analyst", vals, offs) for p, (vals, offs) in per.items())
        )
        return time.perf_counter() - t, out


async def consume(bootstrap: str, topic: str, n: int) -> float:
    """The source's path: bulk polls into columnar chunks, until all `n` records are in."""
    async with KafkaSource(
        bootstrap, [topic], f"bench-{uuid.uuid4().hex[:6]}", client_options=FAST_GROUP
    ) as src:
        got = 0
        t = None
        while got < n:
            chunks = await src.poll(timeout_ms=1_000)
            if t is None and chunks:
                t = time.perf_counter()  # from the first data: the group join is not I/O
            got += sum(len(c) for c in chunks)
        assert t is not None
        return time.perf_counter() - t


async def run(bootstrap: str, n: int, profile: str, parts: int, repeat: int) -> list[tuple]:
    values = generate_bytes(profile, n, seed=1).splitlines()
    mb = sum(map(len, values)) / 1e6
    best: dict[str, float] = {}
    topic = ""
    for _ in range(repeat):
        best["send"] = min(best.get("send", 1e9), await per_record_send(bootstrap, values, parts))
        dt, topic = await sink_batches(bootstrap, values, parts)
        best["batch"] = min(best.get("batch", 1e9), dt)
        best["consume"] = min(best.get("consume", 1e9), await consume(bootstrap, topic, n))
    rows = [
        ("produce, one send() per record", best["send"]),
        ("produce, KafkaSink.write (create_batch/send_batch)", best["batch"]),
        ("consume, KafkaSource.poll chunks", best["consume"]),
    ]
    return [(name, n / s, mb / s) for name, s in rows] + [("_mb", mb, 0.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--profile", default="payments")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    with Broker() as broker:
        rows = asyncio.run(run(broker.bootstrap, a.records, a.profile, a.partitions, a.repeat))
    mb = rows.pop()[1]
    print(
        f"{a.records} {a.profile} records ({mb:.1f} MB), {a.partitions} partitions, tansu on "
        f"loopback, {platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}, best of {a.repeat}\n"
    )
    print("| path | records/s | MB/s |\n|---|---:|---:|")
    for name, rps, mbs in rows:
        print(f"| {name} | {rps:,.0f} | {mbs:.1f} |")
    send, batch = rows[0][1], rows[1][1]
    print(f"\nbatch API / send(): {batch / send:.1f}x")


if __name__ == "__main__":
    main()
