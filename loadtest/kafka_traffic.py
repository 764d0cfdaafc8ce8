"""Generated M2M traffic into a Kafka topic, and whole topics read back (demo, tests, benchmarks).

Records are partitioned by their key the way a keyed producer does it (a stable hash of the key,
here the router's jump hash), so every record of a key is in one partition, in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from raymask.kernels.codecs.formats import format_for
from raymask.kernels.codecs.paths import build_tree
from raymask.kernels.hashing import shard
from raymask.loadtest.traffic import generate_bytes

__all__ = [
    "Message",
    "create_topic",
    "partition_by_key",
    "produce",
    "produce_traffic",
    "read_topic",
]


@dataclass(frozen=True)
class Message:
    partition: int
    offset: int
    value: bytes
    headers: dict[str, bytes]
    timestamp: int
    header_list: tuple[tuple[str, bytes], ...] = ()  # as sent: order kept, repeats kept


def keyed_lines(data: bytes, key_path: str, partitions: int) -> tuple[list[bytes], np.ndarray]:
    """NDJSON records as values, and the partition of each one's key (no key: 0)."""
    fmt = format_for("ndjson")
    buf = np.frombuffer(data, np.uint8)
    starts, ends, _ = fmt.split(buf, 1)
    sc = fmt.scan(buf, starts, ends, build_tree([key_path]), locate_only=True)
    part = shard(fmt.extract(buf, sc, 0), partitions)
    return [data[s:e] for s, e in zip(starts.tolist(), ends.tolist(), strict=True)], part


def partition_by_key(data: bytes, key_path: str, partitions: int) -> dict[int, list[bytes]]:
    """NDJSON records grouped by partition of their key (records without a key go to 0)."""
    lines, part = keyed_lines(data, key_path, partitions)
    out: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    for v, p in zip(lines, part.tolist(), strict=True):
        out[p].append(v)
    return out


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    for _, code, *_ in resp.topic_errors:
        if code not in (0, 36):  # 36: exists already
            raise RuntimeError(f"cannot create topic {topic} (error code {code})")


async def produce(
    bootstrap: str, topic: str, per_partition: dict[int, list[bytes]],
    headers: dict[int, list[list[tuple[str, bytes]]]] | None = None,
) -> int:  # fmt: skip
    """Write the values to their partitions with the batch API (with `headers[p][i]` on value i
    of partition p when given); returns the count."""
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, max_batch_size=1 << 20, acks="all"
    )
    await prod.start()
    n = 0
    try:
        futures = []
        for p, values in per_partition.items():
            batch = prod.create_batch()
            hs = headers[p] if headers is not None else [None] * len(values)
            for v, h in zip(values, hs, strict=True):
                if batch.append(key=None, value=v, timestamp=None, headers=h) is None:
                    batch.close()
                    futures.append(await prod.send_batch(batch, topic, partition=p))
                    batch = prod.create_batch()
                    batch.append(key=None, value=v, timestamp=None, headers=h)
                n += 1
            batch.close()
            futures.append(await prod.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
    finally:
        await prod.stop()
    return n


def produce_traffic(
    bootstrap: str, topic: str, profile: str, records: int, *, key_path: str,
    partitions: int = 3, seed: int = 0,
) -> int:  # fmt: skip
    """Generate `records` records of `profile` and produce them to `topic` (created if needed)."""
    data = generate_bytes(profile, records, seed=seed)

    async def go() -> int:
        await create_topic(bootstrap, topic, partitions)
        return await produce(bootstrap, topic, partition_by_key(data, key_path, partitions))

    return asyncio.run(go())


def read_topic(
    bootstrap: str, topic: str, partitions: int, *, expect: int | None = None, idle_s: float = 3.0,
    only: int | None = None, fetch_max_wait_ms: int = 100, least: int = 0,
) -> list[Message]:  # fmt: skip
    """Every message of `topic` (stops when `expect` are read, or nothing came for `idle_s` once
    `least` are read); with `only`, of that one partition. `fetch_max_wait_ms`: see read_all."""
    from raymask.actors.sources.kafka import read_all

    parts = [only] if only is not None else list(range(partitions))
    return [
        Message(
            m.partition,
            m.offset,
            m.value,
            dict(m.headers or ()),
            m.timestamp,
            tuple(m.headers or ()),
        )  # fmt: skip
        for m in read_all(
            bootstrap,
            topic,
            partitions=parts,
            expect=expect,
            idle_s=idle_s,
            fetch_max_wait_ms=fetch_max_wait_ms,
            least=least,
        )  # fmt: skip
    ]
