"""Kafka end to end: input topic to masked output topic on the embedded broker.

Three runs in one process: the pipeline with masking (the benchmark policy's seven techniques, one
view) at saturation (the whole input waiting in the topic), the same pipeline with masking off
(a policy that keeps every field: the Kafka I/O ceiling), and a latency run where a producer
writes at half the saturation rate while the pipeline masks, measuring produce-to-written time.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from raymask.cluster.broker import Broker
from raymask.cluster.kafka_pipeline import run_kafka
from raymask.loadtest.bench import MIXED_POLICY, mixed_keyring
from raymask.loadtest.kafka_traffic import create_topic, partition_by_key, produce
from raymask.loadtest.traffic import generate_bytes
from raymask.policy.loader import parse_policy

__all__ = ["kafka_bench"]

PASS_POLICY = """
version: 1
streams:
  payments:
    format: ndjson
    key: account.id
    fields:
      account.id: keep
"""
FAST = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}
PARTS = 3


def _paced_producer(bootstrap: str, topic: str, parts: dict[int, list[bytes]], rate: float,
                    done: threading.Event) -> None:  # fmt: skip
    """Produce `parts` at `rate` records/s in 50 ms slices, partitions interleaved, each
    partition's records in order; record timestamps are the produce time."""
    from aiokafka import AIOKafkaProducer

    order = np.concatenate([np.full(len(v), p) for p, v in parts.items()])
    np.random.default_rng(0).shuffle(order)
    per_slice = max(1, int(rate * 0.05))

    async def go() -> None:
        prod = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                                max_batch_size=1 << 20, linger_ms=5)  # fmt: skip
        await prod.start()
        cursor = dict.fromkeys(parts, 0)
        t0 = time.perf_counter()
        futures = []
        try:
            for sent in range(0, len(order), per_slice):
                for p in order[sent : sent + per_slice].tolist():
                    futures.append(await prod.send(topic, parts[p][cursor[p]], partition=p))
                    cursor[p] += 1
                delay = t0 + (sent + per_slice) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await asyncio.gather(*futures)
        finally:
            await prod.stop()

    asyncio.run(go())
    done.set()


def kafka_bench(records: int, repeat: int = 2, workers: int = 2) -> None:
    data = generate_bytes("payments", records, seed=1)
    parts = partition_by_key(data, "account.id", PARTS)
    mixed, passthru, ring = parse_policy(MIXED_POLICY), parse_policy(PASS_POLICY), mixed_keyring()
    mb = len(data) / 1e6
    print(f"{records:,} payments records, {mb:.0f} MB, {PARTS} partitions, {workers} workers, "
          f"1 source, 1 view; embedded tansu broker; best of {repeat}")  # fmt: skip
    with Broker() as broker:
        bs = broker.bootstrap
        asyncio.run(create_topic(bs, "in", PARTS))
        asyncio.run(produce(bs, "in", parts))
        best: dict[str, float] = {}
        summaries = {}
        for i in range(repeat):  # masking and pass-through alternate: both see the same noise
            for label, pol in (("masking", mixed), ("pass-through", passthru)):
                s = run_kafka(pol, "payments", "in", bootstrap=bs, keyring=ring,
                              roles=["default"], workers=workers, group_id=f"{label}-{i}",
                              topic_template=f"{{topic}}.{label}{i}.{{role}}", idle_s=2,
                              consumer_options=FAST)  # fmt: skip
                assert s.written["default"] + s.dead["default"] == records
                if s.records_per_second > best.get(label, 0):
                    best[label], summaries[label] = s.records_per_second, s
        sat = best["masking"]
        rate = 0.5 * sat
        asyncio.run(create_topic(bs, "paced", PARTS))
        done = threading.Event()
        prod = threading.Thread(target=_paced_producer, args=(bs, "paced", parts, rate, done))
        s_lat = run_kafka(mixed, "payments", "paced", bootstrap=bs, keyring=ring,
                          roles=["default"], workers=workers, idle_s=3, consumer_options=FAST,
                          max_poll_records=5000, on_ready=prod.start)  # fmt: skip
        prod.join()
    print()
    print("| run | records/s | MB/s | vs pass-through |")
    print("|---|---|---|---|")
    for label in ("pass-through", "masking"):
        r = best[label]
        print(f"| {label} | {r:,.0f} | {r * mb / records:.1f} | {r / best['pass-through']:.0%} |")
    print()
    print(f"masking costs {1 - sat / best['pass-through']:.0%} of the Kafka I/O ceiling")
    print(f"latency at {rate:,.0f} records/s offered (50% of saturation), produce -> written: "
          f"p50 {s_lat.latency_ms(50):,.0f} ms, p99 {s_lat.latency_ms(99):,.0f} ms "
          f"({s_lat.records_in:,} records)")  # fmt: skip
