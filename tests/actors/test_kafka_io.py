"""Kafka source and sink cores against the embedded tansu broker (one per session)."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pyarrow as pa
import pytest

from raymask.actors.sinks.kafka import SRC_OFFSET, SRC_PARTITION, SRC_TOPIC, KafkaSink
from raymask.actors.sources.kafka import KafkaSource, frame_values
from raymask.errors import PipelineError

CANARY = b"4111111111111111-canary"

# ---------------------------------------------------------------- framing (pure, no broker)

NL = "value contains a raw newline"
BLANK = "value is empty or blank"
TOMB = "a tombstone"


@pytest.mark.parametrize(
    ("values", "kept", "rejected"),
    [
        ([b"a", b"bb"], [0, 1], []),
        ([], [], []),
        ([b"a\nb", b"c"], [1], [(0, NL)]),  # newline inside
        ([b"c", b"d\n"], [0], [(1, NL)]),  # trailing newline would make an empty record
        ([b"\ne"], [], [(0, NL)]),  # leading newline
        ([b"", b"x"], [1], [(0, BLANK)]),  # empty: the codecs skip blank lines
        ([b" \t\r", b" x"], [1], [(0, BLANK)]),  # blank; a leading space alone is fine
        ([None, b"x", None], [1], [(0, TOMB), (2, TOMB)]),  # tombstones
        ([b"a\n\n", None, b"", b"ok"], [3], [(0, NL), (1, TOMB), (2, BLANK)]),  # all at once
    ],
)
def test_framing_keeps_one_line_per_value_and_reports_the_rest(values, kept, rejected):
    data, idx, rej = frame_values(values)
    assert idx.tolist() == kept
    assert bytes(data) == b"".join(values[i] + b"\n" for i in kept)
    assert [i for i, _ in rej] == [i for i, _ in rejected]
    for (_, got), (_, want) in zip(rej, rejected, strict=True):
        assert want in got


# ---------------------------------------------------------------- against the broker

# tansu holds a group's join for about half the session timeout (5 s at aiokafka's 10 s default,
# ~18 s for a rejoin): short sessions keep these tests quick
FAST_GROUP = {"session_timeout_ms": 1_000, "heartbeat_interval_ms": 200}


def _topic(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def _create(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        resp = await admin.create_topics([NewTopic(topic, partitions, 1)])
        assert all(code == 0 for _, code, *_ in resp.topic_errors)
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, per_partition: dict[int, list]) -> None:
    """Bulk produce with explicit partitions (a None value needs a key: a tombstone)."""
    from aiokafka import AIOKafkaProducer

    prod = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, max_batch_size=1 << 20
    )
    await prod.start()
    try:
        futures = []
        for p, values in per_partition.items():
            batch = prod.create_batch()
            for v in values:
                key = b"k" if v is None else None
                if batch.append(key=key, value=v, timestamp=None) is None:
                    futures.append(await prod.send_batch(batch, topic, partition=p))
                    batch = prod.create_batch()
                    assert batch.append(key=key, value=v, timestamp=None) is not None
            futures.append(await prod.send_batch(batch, topic, partition=p))
        await asyncio.gather(*futures)
    finally:
        await prod.stop()


async def _read_all(bootstrap: str, topic: str, partition: int, n: int) -> list:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await c.start()
    tp = TopicPartition(topic, partition)
    c.assign([tp])
    out: list = []
    try:
        for _ in range(100):
            got = await c.getmany(tp, timeout_ms=300)
            out += got.get(tp, [])
            if len(out) >= n:
                break
    finally:
        await c.stop()
    return out


def _random_values(rng: np.random.Generator, n: int) -> list[bytes]:
    """Values of 1..200 arbitrary bytes, never a newline, never starting with a blank."""
    lens = rng.integers(1, 200, n)
    blob = rng.integers(0, 256, int(lens.sum()), dtype=np.uint8)
    blob[blob == 10] = 11
    ends = np.cumsum(lens)
    blob[ends - lens] = rng.integers(33, 127, n, dtype=np.uint8)  # a visible first byte
    raw = blob.tobytes()
    return [raw[e - n_ : e] for e, n_ in zip(ends.tolist(), lens.tolist(), strict=True)]


@pytest.mark.kafka
def test_twenty_thousand_messages_arrive_in_chunks_exact_contiguous_and_identical(kafka_broker):
    topic, parts, n = _topic("src"), 3, 20_000
    rng = np.random.default_rng(7)
    values = _random_values(rng, n)
    sent = {p: values[p::parts] for p in range(parts)}

    async def run() -> tuple[dict, dict, int, list]:
        await _create(kafka_broker, topic, parts)
        await _produce(kafka_broker, topic, sent)
        data: dict[int, list[bytes]] = {p: [] for p in range(parts)}
        offs: dict[int, list[np.ndarray]] = {p: [] for p in range(parts)}
        chunks = 0
        group = _topic("g")
        async with KafkaSource(
            kafka_broker, [topic], group, max_records=3_000, client_options=FAST_GROUP
        ) as src:
            got = 0
            for _ in range(200):
                for ch in await src.poll(timeout_ms=500):
                    assert not ch.bad and ch.topic == topic
                    assert len(ch) == ch.timestamps.shape[0] == int(np.count_nonzero(ch.data == 10))
                    assert ch.next_offset == int(ch.offsets[-1]) + 1
                    data[ch.partition].append(bytes(ch.data))
                    t = ch.table()  # the same messages as Arrow columns
                    assert t.column("offset").to_pylist() == ch.offsets.tolist()
                    assert set(t.column("topic").to_pylist()) == {topic}
                    assert set(t.column("partition").to_pylist()) == {ch.partition}
                    assert t.column("value").to_pylist() == bytes(ch.data).split(b"\n")[:-1]
                    offs[ch.partition].append(ch.offsets)
                    got += len(ch)
                    chunks += 1
                    await src.commit({(topic, ch.partition): ch.next_offset})
                if got >= n:
                    break
            committed = [await src.committed(topic, p) for p in range(parts)]
        async with KafkaSource(
            kafka_broker, [topic], group, client_options=FAST_GROUP
        ) as again:  # resumes after commits
            rest = await again.poll(timeout_ms=1_500)
        return data, offs, chunks, [committed, rest]

    data, offs, chunks, (committed, rest) = asyncio.run(run())
    assert chunks > parts  # the poll size really split the input
    assert sum(a.shape[0] for p in offs for a in offs[p]) == n
    for p in range(parts):
        o = np.concatenate(offs[p])
        assert o.tolist() == list(range(len(sent[p])))  # contiguous from 0, in order
        assert b"".join(data[p]) == b"".join(v + b"\n" for v in sent[p])  # byte-identical
        assert committed[p] == len(sent[p])
    assert rest == []


@pytest.mark.kafka
def test_a_value_with_a_newline_becomes_a_bad_message_and_the_others_pass(kafka_broker):
    topic = _topic("bad")
    values = [b'{"a":1}', b'{"card":"' + CANARY + b'\n"}', b'{"a":2}', b"", None, b'{"a":3}']

    async def run():
        await _create(kafka_broker, topic, 1)
        await _produce(kafka_broker, topic, {0: values})
        async with KafkaSource(
            kafka_broker, [topic], _topic("g"), client_options=FAST_GROUP
        ) as src:
            chunks = []
            for _ in range(20):
                chunks += await src.poll(timeout_ms=300)
                if sum(len(c) + len(c.bad) for c in chunks) >= len(values):
                    break
            return chunks, src.records_in, src.bad_in

    chunks, good, bad_n = asyncio.run(run())
    assert (good, bad_n) == (3, 3)
    assert b"".join(bytes(c.data) for c in chunks) == b'{"a":1}\n{"a":2}\n{"a":3}\n'
    assert np.concatenate([c.offsets for c in chunks]).tolist() == [0, 2, 5]
    assert chunks[-1].next_offset == 6  # bad messages are passed over too, once reported
    bad = [b for c in chunks for b in c.bad]
    assert [(b.topic, b.partition, b.offset) for b in bad] == [
        (topic, 0, 1),
        (topic, 0, 3),
        (topic, 0, 4),
    ]
    assert "newline" in bad[0].reason and bad[0].raw == values[1]  # raw kept for dead letters
    for b in bad:  # the value never shows in what could reach a log
        assert CANARY.decode() not in repr(b) + str(b) + b.reason


@pytest.mark.kafka
def test_sink_writes_to_the_input_partition_with_source_headers_and_finds_its_tail(kafka_broker):
    topic = _topic("orders")
    masked = [b'{"n":%d,"card":"****"}\n' % i for i in range(100)]
    offsets = np.arange(100, 200, dtype=np.int64)
    stamps = np.full(100, 1_700_000_000_000, np.int64)

    async def run():
        await _create(kafka_broker, topic, 2)
        async with KafkaSink(kafka_broker, max_batch_bytes=1 << 10) as sink:  # several batches
            out = sink.topic_for(topic, "analyst")
            assert out == f"{topic}.masked.analyst"
            await sink.ensure_topic(out, 2)
            res = await sink.write(
                topic, 1, "analyst", pa.array(masked, pa.large_binary()), offsets, stamps
            )
            tail = await sink.tail_written(out, 1)
            empty = await sink.tail_written(out, 0)
        back = await _read_all(kafka_broker, out, 1, 100)
        return out, res, tail, empty, back

    out, res, tail, empty, back = asyncio.run(run())
    assert (res.topic, res.partition, res.written, res.skipped, res.last_offset) == (
        out,
        1,
        100,
        0,
        99,
    )
    assert (tail, empty) == (199, None)
    assert [m.value for m in back] == [v[:-1] for v in masked]  # the newline is not part of it
    assert all(m.timestamp == 1_700_000_000_000 for m in back)
    heads = [dict(m.headers) for m in back]
    assert {h[SRC_TOPIC] for h in heads} == {topic.encode()}
    assert {h[SRC_PARTITION] for h in heads} == {b"1"}
    assert [int(h[SRC_OFFSET]) for h in heads] == list(range(100, 200))


@pytest.mark.kafka
@pytest.mark.parametrize("mark_group", ["marks", None], ids=["from-the-mark", "from-the-start"])
def test_a_restarted_sink_skips_the_source_offsets_it_already_wrote(kafka_broker, mark_group):
    topic = _topic("replay")
    group = None if mark_group is None else _topic(mark_group)

    async def run():
        await _create(kafka_broker, topic, 1)
        async with KafkaSink(kafka_broker, mark_group=group) as first:
            out = first.topic_for(topic, "ops")
            await first.ensure_topic(out, 1)
            await first.write(topic, 0, "ops", [b"r%d" % i for i in range(0, 60)], range(0, 60))
            await first.write(topic, 0, "ops", [b"r%d" % i for i in range(60, 80)], range(60, 80))
        async with KafkaSink(kafka_broker, mark_group=group) as second:  # the restart: a replay
            res = await second.write(
                topic, 0, "ops", [b"r%d" % i for i in range(50, 120)], range(50, 120)
            )
            tail = await second.tail_written(out, 0)
        back = await _read_all(kafka_broker, out, 0, 120)
        return res, tail, back

    res, tail, back = asyncio.run(run())
    assert (res.written, res.skipped, tail) == (40, 30, 119)
    assert [m.value for m in back] == [b"r%d" % i for i in range(120)]  # each exactly once


@pytest.mark.kafka
@pytest.mark.parametrize("mark", [4, 10_000])  # 4: one past the end (3 records), the edge
def test_a_mark_past_the_end_of_the_partition_falls_back_to_a_full_read(kafka_broker, mark):
    topic, group = _topic("lost"), _topic("marks")

    async def run():
        from aiokafka import AIOKafkaConsumer, TopicPartition

        await _create(kafka_broker, topic, 1)
        async with KafkaSink(kafka_broker, mark_group=group) as sink:
            out = sink.topic_for(topic, "ops")
            await sink.ensure_topic(out, 1)
            await sink.write(topic, 0, "ops", [b"a", b"b", b"c"], [7, 8, 9])
        c = AIOKafkaConsumer(bootstrap_servers=kafka_broker, group_id=group)
        await c.start()
        tp = TopicPartition(out, 0)
        c.assign([tp])
        await c.commit({tp: mark})  # as after a broker that lost the partition's data
        await c.stop()
        async with KafkaSink(kafka_broker, mark_group=group) as again:
            return await again.tail_written(out, 0)

    assert asyncio.run(run()) == 9


@pytest.mark.kafka
def test_sink_errors_name_topic_partition_and_offset_never_the_value(kafka_broker):
    topic = _topic("big")

    async def run():
        await _create(kafka_broker, topic, 1)
        async with KafkaSink(kafka_broker, max_record_bytes=256, resume=False) as sink:
            await sink.ensure_topic(sink.topic_for(topic, "ops"), 1)
            await sink.write(topic, 0, "ops", [b"ok", CANARY * 50], [41, 42])

    with pytest.raises(PipelineError) as info:
        asyncio.run(run())
    msg = str(info.value)
    assert f"{topic}.masked.ops[0]" in msg and "source offset 42" in msg
    assert CANARY.decode() not in msg


@pytest.mark.kafka
def test_a_broker_gone_mid_stream_is_a_pipeline_error_naming_offsets_not_values(tmp_path):
    from raymask.cluster.broker import Broker

    topic = _topic("gone")
    broker = Broker(log_path=tmp_path / "b.log").start()  # its own: this test stops it

    async def run():
        await _create(broker.bootstrap, topic, 1)
        opts = {"request_timeout_ms": 2_000, "retry_backoff_ms": 100}
        async with KafkaSink(broker.bootstrap, resume=False, client_options=opts) as sink:
            await sink.ensure_topic(sink.topic_for(topic, "ops"), 1)
            await sink.write(topic, 0, "ops", [CANARY], [0])
            broker.stop()
            await sink.write(topic, 0, "ops", [CANARY, CANARY], [1, 2])

    try:
        with pytest.raises(PipelineError) as info:
            asyncio.run(asyncio.wait_for(run(), 60))
    finally:
        broker.stop()
    msg = str(info.value)
    assert f"{topic}.masked.ops[0]" in msg and "source offsets 1..2" in msg
    assert CANARY.decode() not in msg


@pytest.mark.kafka
def test_an_output_topic_with_too_few_partitions_is_refused(kafka_broker):
    topic = _topic("narrow")

    async def run():
        async with KafkaSink(kafka_broker) as sink:
            out = sink.topic_for(topic, "ops")
            await _create(kafka_broker, out, 1)
            await sink.ensure_topic(out, 3)

    with pytest.raises(PipelineError, match="has 1 partitions, the input has 3"):
        asyncio.run(run())


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("carry", "expect"),
    [
        (False, None),  # the default: headers are outside the policy, none is carried
        (True, [[("trace", b"t0"), ("auth", b"secret")], [], [("trace", b"t2")]]),
        (["trace"], [[("trace", b"t0")], [], [("trace", b"t2")]]),  # only the names listed
    ],
    ids=["off", "all", "listed"],
)
def test_a_source_carries_input_headers_only_when_asked(kafka_broker, carry, expect):
    from raymask.loadtest.kafka_traffic import produce

    topic = _topic("hdr")
    values = [b'{"a":0}', b'{"a":1}', b"", b'{"a":3}']  # the blank one leaves as a bad message
    heads = [[("trace", b"t0"), ("auth", b"secret")], [], [("trace", b"tx")], [("trace", b"t2")]]

    async def run():
        await _create(kafka_broker, topic, 1)
        await produce(kafka_broker, topic, {0: values}, headers={0: heads})
        async with KafkaSource(
            kafka_broker, [topic], _topic("g"), client_options=FAST_GROUP, carry_headers=carry
        ) as src:
            for _ in range(20):
                chunks = await src.poll(timeout_ms=300)
                if chunks:
                    return chunks

    (chunk,) = asyncio.run(run())
    assert chunk.offsets.tolist() == [0, 1, 3] and [b.offset for b in chunk.bad] == [2]
    assert chunk.headers == expect  # one list per record, record i = line i
    t = chunk.table()
    assert t.column("value").to_pylist() == [b'{"a":0}', b'{"a":1}', b'{"a":3}']
    if expect is None:
        assert "headers" not in t.column_names
    else:
        got = [[(h["key"], h["value"]) for h in row] for row in t.column("headers").to_pylist()]
        assert got == expect


@pytest.mark.kafka
def test_sink_puts_carried_headers_before_its_own_and_drops_forged_source_headers(kafka_broker):
    topic = _topic("carry")
    carried = [
        [("trace", b"t0"), ("raymask.src.offset", b"999999")],  # forged: would fool the skip
        None,
        [("content-type", b"json"), ("trace", b"t2"), ("raymask.src.topic", b"other")],
    ]

    async def run():
        await _create(kafka_broker, topic, 1)
        async with KafkaSink(kafka_broker) as sink:
            out = sink.topic_for(topic, "ops")
            await sink.ensure_topic(out, 1)
            await sink.write(topic, 0, "ops", [b"a", b"b", b"c"], [5, 6, 7], headers=carried)
            tail = await sink.tail_written(out, 0)
        return tail, await _read_all(kafka_broker, out, 0, 3)

    tail, back = asyncio.run(run())
    ours = lambda o: [(SRC_TOPIC, topic.encode()), (SRC_PARTITION, b"0"), (SRC_OFFSET, o)]  # noqa: E731
    assert [list(m.headers) for m in back] == [
        [("trace", b"t0"), *ours(b"5")],
        ours(b"6"),
        [("content-type", b"json"), ("trace", b"t2"), *ours(b"7")],
    ]
    assert tail == 7  # the forged offset did not count


@pytest.mark.kafka
def test_sink_refuses_header_lists_that_do_not_match_the_records(kafka_broker):
    async def run():
        async with KafkaSink(kafka_broker, resume=False) as sink:
            await sink.write("t", 0, "ops", [b"a", b"b"], [1, 2], headers=[[]])

    with pytest.raises(ValueError, match="2 records, 2 offsets, 1 header lists"):
        asyncio.run(run())


def test_the_sink_turns_off_aiokafkas_own_resends_unless_idempotent():
    """The guard against duplicates from aiokafka's silent resends sets a private attribute;
    this fails if an aiokafka upgrade renames it (the guard would then do nothing)."""
    from aiokafka import AIOKafkaProducer

    from raymask.actors.sinks.kafka import _no_client_resends

    async def run() -> tuple[float, float]:
        prod = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", request_timeout_ms=30_000)
        before = prod._message_accumulator._batch_ttl
        _no_client_resends(prod)
        return before, prod._message_accumulator._batch_ttl

    assert asyncio.run(run()) == (30.0, 0.0)


def test_read_all_waits_past_a_pause_for_least_messages_then_stops_at_its_deadline(kafka_broker):
    """A read-back that must see `least` messages is not ended by a pause longer than `idle_s`
    (a slow broker under load); without them, `timeout_s` ends it."""
    import time

    from raymask.actors.sources.kafka import read_all

    topic = _topic("least")

    async def first() -> None:
        await _create(kafka_broker, topic, 1)
        await _produce(kafka_broker, topic, {0: [b"a%d" % i for i in range(10)]})

    asyncio.run(first())

    def later() -> None:  # 1.5 s after the read starts: longer than its idle_s
        time.sleep(1.5)
        asyncio.run(_produce(kafka_broker, topic, {0: [b"b%d" % i for i in range(5)]}))

    import threading

    t = threading.Thread(target=later)
    t.start()
    got = read_all(kafka_broker, topic, expect=16, idle_s=0.5, least=15)
    t.join()
    assert [m.value for m in got][-5:] == [b"b%d" % i for i in range(5)] and len(got) == 15
    t0 = time.monotonic()
    got = read_all(kafka_broker, topic, expect=17, idle_s=0.2, least=16, timeout_s=1.5)
    assert len(got) == 15 and 1.4 <= time.monotonic() - t0 < 10
    assert len(read_all(kafka_broker, topic, expect=16, idle_s=0.3)) == 15  # least 0: as before
