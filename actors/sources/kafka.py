"""Kafka source core: consumer-group polls turned into columnar chunks, one per partition.

A plain asyncio class (no Ray; an actor wraps it). Each `poll()` is one aiokafka `getmany()`;
the messages of a partition become one `PartitionChunk`: their values joined by b"\\n" in a numpy
uint8 buffer (each value one line, so the NDJSON and CSV codecs split them as they split a
file) plus numpy arrays of offsets and timestamps, record i being line i.

Framing is checked, never assumed: a value holding a raw newline would split into two lines, a
blank value (empty, whitespace, or a tombstone) would vanish (the codecs skip blank lines). Such
messages leave the chunk as `BadMessage`s (topic, partition, offset, reason; the raw bytes for the
dead-letter sink) so that every message read is either in a chunk or reported: nothing is dropped
and nothing crashes. The fast path costs one `bytes.count` and one gather over the record starts.

Offsets are committed only when asked (`enable_auto_commit=False`): the pipeline commits a
chunk's `next_offset` after its outputs are durable, which is what makes a restart replay exactly
the records whose outputs may be missing (the Kafka sink then skips what it already wrote).

tansu 0.6.0 (the embedded broker) answers ListOffsets LATEST wrongly, so nothing here asks for end
offsets; lag, where needed, comes from the high watermark of fetch responses
(`AIOKafkaConsumer.highwater`), which tansu reports correctly.

Every call that waits on the broker is bounded (`call_timeout_s`): aiokafka's commit and
committed-offset look-ups retry forever while the group coordinator is away, which would hang the
pipeline on a dead broker. Past the limit they raise `BrokerUnreachable`. A poll needs no bound
(it returns empty after its timeout), but an empty poll cannot tell an idle topic from a dead
broker: `reachable()` asks the broker for metadata to tell them apart.

Input message headers travel with a chunk only when asked (`carry_headers`): they are not
covered by the policy, so copying them into every view by default could carry a clear value
(an auth token, a user id in trace baggage) past the masking.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from raymask.actors._lazy import LazyActor
from raymask.errors import BrokerUnreachable, PipelineError

__all__ = [
    "BadMessage", "KafkaSource", "KafkaSourceActor", "PartitionChunk", "frame_values", "read_all",
    "with_ssl_context",
]  # fmt: skip

_NL = 10
# A fetch's longest wait when reading a topic back (read_all, the sink's tail read-back). tansu on
# S3 storage lists the partition's objects (one per record batch) to answer a fetch and gives up
# the listing when the fetch's wait runs out; with a short wait and a few hundred objects on a
# slow store it never answers, and the client fetches again (measured: 500 batches on the
# loopback moto server, a 100 ms wait read 20 records in 37 s; a 2 s wait read all 5,000 in
# 1.4 s). A fetch still returns as soon as it has records.
READ_BACK_WAIT_MS = 5000
_BLANK = (32, 9, 13)  # what the codecs treat as blank besides the newline


@dataclass(frozen=True)
class BadMessage:
    """A message that cannot travel as a line: where it is and why, never its value."""

    topic: str
    partition: int
    offset: int
    reason: str
    raw: bytes | None = field(default=None, repr=False)  # for the dead-letter sink only


@dataclass
class PartitionChunk:
    """The messages of one poll from one partition, as columns; record i is line i of `data`."""

    topic: str
    partition: int
    data: np.ndarray  # uint8: each value followed by b"\n"
    offsets: np.ndarray  # int64, ascending
    timestamps: np.ndarray  # int64, ms since the epoch
    next_offset: int  # what to commit once this chunk's records (and bad messages) are out
    bad: list[BadMessage] = field(default_factory=list)
    headers: list[list[tuple[str, bytes]]] | None = None  # per record, when carried

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.data.shape[0])

    def table(self) -> pa.Table:
        """The chunk as an Arrow table, a row per message: topic, partition, offset, timestamp,
        value (binary, without the separator) and, when carried, headers. For consumers of the
        source outside the pipeline; the pipeline itself routes `data` as it is (one buffer,
        which the codecs scan in place)."""
        n = len(self)
        sep = np.flatnonzero(self.data == _NL)[:n]  # the separators, one per value
        ends = sep - np.arange(n)  # value ends in the buffer without separators
        offsets = np.concatenate([[0], ends]).astype(np.int64)
        values = pa.LargeBinaryArray.from_buffers(
            pa.large_binary(),
            n,
            [None, pa.py_buffer(offsets), pa.py_buffer(np.delete(self.data, sep))],
        )
        cols = {
            "topic": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, np.int32)), pa.array([self.topic])
            ),
            "partition": pa.array(np.full(n, self.partition, np.int32)),
            "offset": pa.array(self.offsets),
            "timestamp": pa.array(self.timestamps, pa.timestamp("ms", tz="UTC")),
            "value": values,
        }
        if self.headers is not None:
            kv = pa.struct([("key", pa.string()), ("value", pa.binary())])
            cols["headers"] = pa.array(
                [[{"key": k, "value": v} for k, v in h] for h in self.headers], pa.list_(kv)
            )
        return pa.table(cols)


def frame_values(
    values: Sequence[bytes | None], framing: str = "lines"
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """Join values into newline-terminated lines (`framing="varint"`: into length-delimited
    frames, for binary records such as Protobuf messages; any value but a tombstone is one).

    Returns (data, kept, rejected): `data` the uint8 buffer, `kept` the indices (into `values`)
    of its lines in order, `rejected` (index, reason) for the values that cannot be one line."""
    if framing == "varint":
        from raymask.kernels.codecs.protobuf import frame

        kept = [i for i, v in enumerate(values) if v is not None]
        rejected = [
            (i, "message has no value (a tombstone)") for i, v in enumerate(values) if v is None
        ]
        data = np.frombuffer(frame([values[i] for i in kept]), np.uint8)  # type: ignore[misc]
        return data, np.array(kept, np.int64), rejected
    n = len(values)
    rejected: list[tuple[int, str]] = []
    vals: Sequence[bytes | None] = values
    idx = np.arange(n, dtype=np.int64)
    if None in values:  # tombstones (deletes in compacted topics): no record to mask
        rejected += [
            (i, "message has no value (a tombstone)") for i, v in enumerate(values) if v is None
        ]
        idx = np.array([i for i, v in enumerate(values) if v is not None], dtype=np.int64)
        vals = [values[i] for i in idx]
    buf = b"\n".join([*vals, b""])  # type: ignore[list-item]
    data = np.frombuffer(buf, np.uint8)
    m = len(vals)
    lens = np.fromiter(map(len, vals), np.int64, m)  # type: ignore[arg-type]
    ends = np.cumsum(lens + 1) - 1  # where each value's separator sits
    starts = ends - lens
    bad = np.zeros(m, bool)
    why: dict[int, str] = {}
    if buf.count(b"\n") != m:  # some value holds a raw newline: find which
        nl = np.flatnonzero(data == _NL)
        inner = nl[~np.isin(nl, ends)]
        for j in np.unique(np.searchsorted(ends, inner, side="left")):
            bad[j] = True
            why[int(j)] = "value contains a raw newline (it would split into two records)"
    first = data[np.minimum(starts, data.shape[0] - 1)] if m else data[:0]
    maybe_blank = np.flatnonzero((lens == 0) | np.isin(first, _BLANK))
    for j in maybe_blank:  # rare: check the whole value
        if bad[j]:
            continue
        v = data[starts[j] : ends[j]]
        if not np.any((v != 32) & (v != 9) & (v != 13)):
            bad[j] = True
            why[int(j)] = "value is empty or blank (it would not be a record)"
    if bad.any():
        rejected += [(int(idx[j]), why[int(j)]) for j in np.flatnonzero(bad)]
        keep = np.flatnonzero(~bad)
        data = np.frombuffer(b"\n".join([*(vals[j] for j in keep), b""]), np.uint8)  # type: ignore[misc]
        idx = idx[keep]
    rejected.sort()
    return data, idx, rejected


class KafkaSource:
    """A consumer-group member reading `topics` in bulk; `poll()` gives columnar chunks.

    `client_options` pass through to `AIOKafkaConsumer` (SASL/SSL settings for a real cluster,
    fetch sizes); the options that make commits explicit cannot be overridden. `carry_headers`:
    False (default) drops input headers, True keeps them all, a collection of names keeps those.
    """

    def __init__(
        self, bootstrap: str, topics: Sequence[str], group_id: str, *, max_records: int = 50_000,
        poll_timeout_ms: int = 500, client_options: Mapping[str, Any] | None = None,
        call_timeout_s: float = 30.0, carry_headers: bool | Sequence[str] = False,
        framing: str = "lines",
    ) -> None:  # fmt: skip
        """`framing`: "lines" (NDJSON, CSV) or "varint" (Protobuf messages or XML record
        elements as values)."""
        if not topics:
            raise ValueError("KafkaSource needs at least one topic")
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.group_id = group_id
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.call_timeout_s = call_timeout_s
        self.framing = framing
        if isinstance(carry_headers, str):
            raise ValueError("carry_headers: give True, False or a list of header names")
        self.carry_headers: bool | frozenset[str] = (
            carry_headers if isinstance(carry_headers, bool) else frozenset(carry_headers)
        )
        self.options = {
            "max_partition_fetch_bytes": 8 << 20,
            "fetch_max_bytes": 64 << 20,
            **(client_options or {}),
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
        }
        self._consumer: Any = None
        self.records_in = 0
        self.bad_in = 0

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=self.bootstrap, **with_ssl_context(self.options)
        )
        try:
            await asyncio.wait_for(self._consumer.start(), self.call_timeout_s)
        except Exception as exc:
            self._consumer = None
            raise PipelineError(
                f"kafka source {self.bootstrap}: cannot join group {self.group_id} "
                f"({type(exc).__name__})"
            ) from None

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def __aenter__(self) -> KafkaSource:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    async def poll(
        self, timeout_ms: int | None = None, max_records: int | None = None
    ) -> list[PartitionChunk]:
        """One bulk fetch: a chunk per partition that had messages (possibly only bad ones), in
        partition order. An empty list means nothing arrived within the timeout."""
        got = await self._consumer.getmany(
            timeout_ms=self.poll_timeout_ms if timeout_ms is None else timeout_ms,
            max_records=max_records or self.max_records,
        )
        chunks = []
        for tp in sorted(got, key=lambda t: (t.topic, t.partition)):
            msgs = got[tp]
            if msgs:
                chunks.append(self._chunk(tp.topic, tp.partition, msgs))
        return chunks

    def _chunk(self, topic: str, partition: int, msgs: list[Any]) -> PartitionChunk:
        n = len(msgs)
        offsets = np.fromiter((m.offset for m in msgs), np.int64, n)
        stamps = np.fromiter((m.timestamp for m in msgs), np.int64, n)
        data, kept, rejected = frame_values([m.value for m in msgs], self.framing)
        bad = [
            BadMessage(topic, partition, int(offsets[i]), reason, msgs[i].value)
            for i, reason in rejected
        ]
        if bad:
            offsets, stamps = offsets[kept], stamps[kept]
        self.records_in += len(kept)
        self.bad_in += len(bad)
        headers = None
        if self.carry_headers:
            names = None if self.carry_headers is True else self.carry_headers
            headers = [
                [(k, v) for k, v in (msgs[i].headers or ()) if names is None or k in names]
                for i in kept.tolist()
            ]
        return PartitionChunk(
            topic, partition, data, offsets, stamps, next_offset=int(msgs[-1].offset) + 1, bad=bad,
            headers=headers,
        )  # fmt: skip

    def highwater(self, topic: str, partition: int) -> int | None:
        """The partition's high watermark from the last fetch response (None before one)."""
        from aiokafka import TopicPartition

        return self._consumer.highwater(TopicPartition(topic, partition))

    async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit, per (topic, partition), the next offset to read (a chunk's `next_offset`)."""
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        if not offsets:
            return
        for (t, p), off in offsets.items():
            if off < 0:
                raise ValueError(f"kafka source {t}[{p}]: offset {off} to commit is negative")
        tps = {TopicPartition(t, p): int(off) for (t, p), off in offsets.items()}
        where = ", ".join(f"{t}[{p}]@{o}" for (t, p), o in sorted(offsets.items()))
        try:
            await asyncio.wait_for(self._consumer.commit(tps), self.call_timeout_s)
        except TimeoutError:
            raise BrokerUnreachable(
                f"kafka source group {self.group_id}: commit of {where} got no answer within "
                f"{self.call_timeout_s:.0f} s"
            ) from None
        except (KafkaError, AssertionError) as exc:
            raise PipelineError(
                f"kafka source group {self.group_id}: commit of {where} failed "
                f"({type(exc).__name__}; partitions may have been reassigned)"
            ) from None

    async def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset for a partition (None if it never committed)."""
        from aiokafka import TopicPartition

        try:
            return await asyncio.wait_for(
                self._consumer.committed(TopicPartition(topic, partition)), self.call_timeout_s
            )
        except TimeoutError:
            raise BrokerUnreachable(
                f"kafka source group {self.group_id}: committed offset of {topic}[{partition}] "
                f"got no answer within {self.call_timeout_s:.0f} s"
            ) from None

    async def reachable(self, timeout: float = 2.0) -> bool:
        """Whether the broker answers a metadata request within `timeout` s (an empty poll
        looks the same on an idle topic and on a dead broker)."""
        try:
            await asyncio.wait_for(self._consumer.topics(), timeout)
            return True
        except Exception:  # refused, timed out, no broker known: all mean "not now"
            return False


SSL_FILE_OPTIONS = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")


def with_ssl_context(options: Mapping[str, Any]) -> dict[str, Any]:
    """Client options as aiokafka takes them. aiokafka wants an `ssl_context` object for
    security_protocol SSL and SASL_SSL (MSK, Confluent Cloud, most managed clusters); options
    given as text (`--kafka-option`) name files instead, as other Kafka clients do: `ssl_cafile`,
    `ssl_certfile`, `ssl_keyfile`, `ssl_password`. They become the context here (aiokafka's
    `create_ssl_context`, the system's CAs when no cafile is named). Call it where the client is
    made: a context does not cross processes, so actors get the text and build their own."""
    from raymask.errors import InputError

    out = dict(options)
    files = {k: out.pop(k) for k in SSL_FILE_OPTIONS if k in out}
    protocol = str(out.get("security_protocol", "PLAINTEXT")).upper()
    if protocol in ("SSL", "SASL_SSL"):
        if out.get("ssl_context") is None:
            from aiokafka.helpers import create_ssl_context

            try:
                out["ssl_context"] = create_ssl_context(
                    cafile=files.get("ssl_cafile"), certfile=files.get("ssl_certfile"),
                    keyfile=files.get("ssl_keyfile"), password=files.get("ssl_password"),
                )  # fmt: skip
            except (OSError, ValueError) as exc:  # a missing or unreadable file, a bad key
                names = ", ".join(sorted(k for k in files if k != "ssl_password")) or "defaults"
                raise InputError(
                    f"kafka SSL options ({names}): cannot build the TLS context "
                    f"({type(exc).__name__})"
                ) from None
    elif files:
        raise InputError(
            f"kafka options {', '.join(sorted(files))} need security_protocol SSL or SASL_SSL"
        )
    return out


def read_all(
    bootstrap: str, topic: str, *, partitions: Sequence[int] | None = None,
    expect: int | None = None, idle_s: float = 2.0, max_fetch_bytes: int = 8 << 20,
    fetch_max_wait_ms: int = 100, least: int = 0, timeout_s: float = 120.0,
) -> list[Any]:  # fmt: skip
    """Every message of `topic` from offset 0, in offset order per partition (aiokafka's
    ConsumerRecords), without a consumer group: for readers of a whole topic (a vault, an audit
    copy, a test's output). Stops once `expect` messages are read, or when nothing came for
    `idle_s`. `partitions` defaults to all of the topic's; a topic the broker does not know
    raises InputError. Keep `fetch_max_wait_ms` well under `idle_s`: a fetch in flight holds back
    the next one to the same broker, so a long wait can end the read early. A large topic on
    tansu's S3 storage needs a long one (READ_BACK_WAIT_MS) with a long `idle_s`. Until `least`
    messages are read, a pause longer than `idle_s` does not end the read (a slow broker on a
    busy machine); `timeout_s` from the start does then."""
    import time

    from aiokafka import AIOKafkaConsumer, TopicPartition

    from raymask.errors import InputError

    async def go() -> list[Any]:
        c = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
            fetch_max_wait_ms=fetch_max_wait_ms, max_partition_fetch_bytes=max_fetch_bytes,
        )  # fmt: skip
        await c.start()
        try:
            parts = partitions
            if parts is None:
                await c.topics()  # fetches the cluster's metadata
                parts = sorted(c.partitions_for_topic(topic) or ())
                if not parts:
                    raise InputError(f"kafka://{bootstrap}/{topic}: no such topic")
            tps = [TopicPartition(topic, p) for p in parts]
            c.assign(tps)
            for tp in tps:
                c.seek(tp, 0)
            out: list[Any] = []
            start = last = time.monotonic()
            while expect is None or len(out) < expect:
                now = time.monotonic()
                if (now - last >= idle_s) if len(out) >= least else (now - start >= timeout_s):
                    break
                got = await c.getmany(timeout_ms=200, max_records=50_000)
                for msgs in got.values():
                    out += msgs
                    last = time.monotonic() if msgs else last
            return out
        finally:
            await c.stop()

    return asyncio.run(go())


def _make_actor():  # Ray is imported only where actors are made, never by the pure core
    import ray

    # One call at a time (max_concurrency=1): a poll and a commit never interleave on one
    # consumer. Ray restarts a source that dies; the restarted one joins the group again and
    # resumes from the committed offsets, so records whose outputs were not yet durable come again
    # (the sinks skip what they already wrote).
    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=1)
    class KafkaSourceActor:
        """Ray actor around KafkaSource; the consumer starts on the first call."""

        def __init__(
            self, bootstrap: str, topics: list[str], group_id: str, **options: Any
        ) -> None:
            self.core = KafkaSource(bootstrap, topics, group_id, **options)

        async def _ready(self) -> KafkaSource:
            if self.core._consumer is None:
                await self.core.start()
            return self.core

        async def poll(self, timeout_ms: int | None = None, max_records: int | None = None):
            return await (await self._ready()).poll(timeout_ms, max_records)

        async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
            await (await self._ready()).commit(offsets)

        async def partitions(self, topic: str) -> int:
            """How many partitions `topic` has (0 when the broker does not know it)."""
            core = await self._ready()
            await core._consumer.topics()  # refreshes the metadata
            return len(core._consumer.partitions_for_topic(topic) or ())

        async def assignment(self) -> list[tuple[str, int]]:
            return sorted((await self._ready()).assignment())

        async def reachable(self, timeout: float = 2.0) -> bool:
            return await (await self._ready()).reachable(timeout)

        async def highwater(self, topic: str, partition: int) -> int | None:
            return (await self._ready()).highwater(topic, partition)

        async def stop(self) -> None:
            await self.core.stop()

    return KafkaSourceActor


KafkaSourceActor = LazyActor(_make_actor)
