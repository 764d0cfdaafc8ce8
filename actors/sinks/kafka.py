"""Kafka sink core: masked records to one output topic per role view, effectively once.

A plain asyncio class (no Ray; an actor wraps it). Output goes to `{topic}.masked.{role}` (the
template is configurable), to the *same partition number* as the input record: deterministic, so
per-key order holds and a replay rewrites the partition it wrote before. Every output record
carries its source in headers (`raymask.src.topic`, `raymask.src.partition`,
`raymask.src.offset`, ASCII decimal), and keeps the source timestamp when one is given.

Records leave in bulk through aiokafka's batch API (`create_batch` / `send_batch`, one batch
per ~1 MiB), not one `send()` per record: loadtest/kafka_io.py measures the two.

Effectively once without broker transactions (tansu 0.6.0 fails aiokafka's InitProducerId, so
neither idempotent nor transactional producers work against it): a restarted sink first reads
back the tail of each output partition it is about to write (`tail_written`) and skips source
offsets at or below the highest one found there. The input offsets are committed by the caller
after `write()` returned, i.e. after the broker acknowledged (acks=all) every record.

How `tail_written` finds the tail without end offsets (tansu's ListOffsets LATEST is wrong):
after each acknowledged write the sink commits, in a dedicated consumer group (`mark_group`),
the next output offset of that partition. That mark can only lag (a crash between the
acknowledgement and the mark), never lead, so the tail is read forward from the record before
the mark until the consumer's position reaches the high watermark that fetch responses carry
(correct on tansu). With no mark, or a mark beyond the partition's end (a broker that lost its
data), it reads from the beginning. The mark bounds the read-back to what was written since the
last mark, instead of the whole partition; the high watermark makes "the end" exact instead of
a guess from a quiet timeout.

Every broker call is bounded (`call_timeout_s`): aiokafka retries commits and coordinator
look-ups forever while the broker is away, so an unbounded call would hang the pipeline on a dead
broker. A call past its limit raises `BrokerUnreachable`; the caller decides how long to retry.
A write sends its batches one after another, each acknowledged before the next is queued: a
failed batch then has no later batch of the same write behind it, so the output of a partition
never has a gap that the skip rule (highest source offset written) would paper over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from raymask.actors._lazy import LazyActor
from raymask.errors import BrokerUnreachable, PipelineError

__all__ = [
    "DEFAULT_TOPIC_TEMPLATE",
    "KafkaSink",
    "KafkaSinkActor",
    "OUR_HEADER_PREFIX",
    "SRC_OFFSET",
    "SRC_PARTITION",
    "SRC_TOPIC",
    "WriteResult",
    "record_values",
]

DEFAULT_TOPIC_TEMPLATE = "{topic}.masked.{role}"
SRC_TOPIC = "raymask.src.topic"
SRC_PARTITION = "raymask.src.partition"
SRC_OFFSET = "raymask.src.offset"
OUR_HEADER_PREFIX = "raymask.src."  # input headers named so are dropped, never carried
DEFAULT_CALL_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class WriteResult:
    topic: str  # the output topic
    partition: int
    written: int
    skipped: int  # already in the output (source offset at or below its tail)
    last_offset: int | None  # output offset of the last record written


def record_values(records: pa.Array | Sequence[bytes], framing: str = "lines") -> list[bytes]:
    """One bytes value per record, without the record's trailing newline (the workers' masked
    records end with one; a Kafka message is the record alone)."""
    if isinstance(records, pa.ChunkedArray):
        records = records.combine_chunks()
    if isinstance(records, pa.Array):
        if len(records) == 0:
            return []
        if records.null_count:
            raise ValueError("masked records must not be null")
        if pa.types.is_binary(records.type) or pa.types.is_string(records.type):
            records = records.cast(pa.large_binary())
        bufs = records.buffers()
        offs = np.frombuffer(bufs[1], np.int64)[records.offset : records.offset + len(records) + 1]
        data = bytes(memoryview(bufs[2])[int(offs[0]) : int(offs[-1])])
        offs = (offs - offs[0]).tolist()
        out = [data[s:e] for s, e in zip(offs[:-1], offs[1:], strict=True)]
    else:
        out = list(records)
    if framing == "varint":  # length-delimited frames: the message is what follows the prefix
        from raymask.kernels.codecs.protobuf import unframe

        return unframe(out)
    if framing == "raw":  # records are the values as they are (XML elements)
        return out
    return [v[:-1] if v.endswith(b"\n") else v for v in out]


class KafkaSink:
    """Writes masked records per (source topic, partition, role) to the role's output topic.

    `client_options` pass through to `AIOKafkaProducer` and the read-back consumers (SASL/SSL
    for a real cluster). `mark_group=None` disables the marks (then the tail is read from the
    partition's beginning); `resume=False` never reads back (no skipping).
    """

    def __init__(
        self, bootstrap: str, *, topic_template: str = DEFAULT_TOPIC_TEMPLATE,
        mark_group: str | None = "raymask-sink-marks", resume: bool = True,
        max_batch_bytes: int = 1 << 20, max_record_bytes: int = 1 << 20, acks: str | int = "all",
        client_options: Mapping[str, Any] | None = None, idempotent: bool = False,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S, framing: str = "lines",
    ) -> None:  # fmt: skip
        """`framing`: how the masked records are framed ("lines": each ends in a newline;
        "varint": each is a length-delimited Protobuf frame; "raw": each is the value as it is,
        XML); a message is the record alone."""
        if "{topic}" not in topic_template or "{role}" not in topic_template:
            raise ValueError(
                f"kafka sink topic template {topic_template!r}: must name {{topic}} and {{role}}"
            )
        self.bootstrap = bootstrap
        self.topic_template = topic_template
        self.mark_group = mark_group
        self.resume = resume
        self.max_batch_bytes = max_batch_bytes
        self.max_record_bytes = max_record_bytes
        self.acks = acks
        # an idempotent producer keeps a retried batch from landing twice or out of order; real
        # clusters support it, the embedded tansu 0.6.0 does not (InitProducerId fails)
        self.idempotent = idempotent
        self.client_options = dict(client_options or {})
        self._opts: dict[str, Any] | None = None  # with the SSL context, made in this process
        self.call_timeout_s = call_timeout_s
        self.framing = framing
        self._producer: Any = None
        self._marks: Any = None  # consumer of mark_group: commits only, fetches nothing
        self._marked: set[Any] = set()
        self._tail: dict[tuple[str, int], int | None] = {}  # highest source offset written
        self.records_out = 0
        self.records_skipped = 0
        self.mark_failures = 0

    def topic_for(self, topic: str, role: str) -> str:
        return self.topic_template.format(topic=topic, role=role)

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        # a batch the broker does not take expires after request_timeout_ms (aiokafka's default
        # 40 s): no longer than a call may wait, unless the caller says otherwise
        opts = {"request_timeout_ms": int(min(40.0, self.call_timeout_s) * 1000),
                **self._client_opts()}  # fmt: skip
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks=self.acks, enable_idempotence=self.idempotent,
            max_batch_size=self.max_batch_bytes, max_request_size=max(self.max_batch_bytes, self.max_record_bytes) + (1 << 16),
            **opts,
        )  # fmt: skip
        if not self.idempotent:
            _no_client_resends(self._producer)
        try:
            await self._bounded(self._producer.start(), "connect")
            if self.mark_group is not None:
                self._marks = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap, group_id=self.mark_group,
                    enable_auto_commit=False, **self._client_opts(),
                )  # fmt: skip
                await self._bounded(self._marks.start(), "connect")
        except Exception as exc:
            await self.stop()
            raise PipelineError(
                f"kafka sink {self.bootstrap}: cannot connect ({type(exc).__name__})"
            ) from None

    async def _bounded(self, aw: Any, what: str, timeout: float | None = None) -> Any:
        """`aw` within the call timeout, else BrokerUnreachable naming what waited (no values)."""
        t = self.call_timeout_s if timeout is None else timeout
        try:
            return await asyncio.wait_for(aw, t)
        except TimeoutError:
            raise BrokerUnreachable(
                f"kafka sink {self.bootstrap}: {what} got no answer within {t:.0f} s"
            ) from None

    async def stop(self) -> None:
        if self._marks is not None:
            await self._marks.stop()
            self._marks = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> KafkaSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def ensure_topic(self, name: str, partitions: int) -> None:
        """Create an output topic with `partitions` partitions unless it exists; an existing one
        must have at least that many (tansu cannot add partitions to a topic)."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, **self._admin_options())
        try:
            await self._bounded(admin.start(), f"creating topic {name}")
            resp = await self._bounded(
                admin.create_topics([NewTopic(name, partitions, 1)]), f"creating topic {name}"
            )
        finally:
            await admin.close()
        for _topic, code, *_ in resp.topic_errors:
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                raise PipelineError(f"kafka sink: cannot create topic {name} (error code {code})")
        have = await self._bounded(self._producer.partitions_for(name), f"metadata of {name}")
        if len(have or ()) < partitions:
            raise PipelineError(
                f"kafka sink: topic {name} has {len(have or ())} partitions, the input has "
                f"{partitions}; output partition = input partition needs at least as many"
            )

    def _admin_options(self) -> dict[str, Any]:
        keep = ("security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username",
                "sasl_plain_password", "sasl_kerberos_service_name", "sasl_oauth_token_provider")  # fmt: skip
        return {k: v for k, v in self._client_opts().items() if k in keep}

    def _client_opts(self) -> dict[str, Any]:
        if self._opts is None:
            from raymask.actors.sources.kafka import with_ssl_context

            self._opts = with_ssl_context(self.client_options)
        return self._opts

    async def write(
        self, topic: str, partition: int, role: str, records: pa.Array | Sequence[bytes],
        source_offsets: np.ndarray | Sequence[int], timestamps: np.ndarray | None = None,
        headers: Sequence[Sequence[tuple[str, bytes]] | None] | None = None,
    ) -> WriteResult:  # fmt: skip
        """Write one chunk's masked records (record i came from `source_offsets[i]` of
        topic[partition]) to the role's topic, same partition; return once all are acknowledged.
        Records whose source offset is already in the output are skipped. Writes to one output
        partition must not overlap (await one before the next): the skip rule relies on order.

        `headers[i]`, when given, are record i's input headers to carry: they go out before the
        `raymask.src.*` ones, and any input header named `raymask.src.*` is dropped (it would
        forge the source position the skip rule reads)."""
        out = self.topic_for(topic, role)
        offs = np.asarray(source_offsets, np.int64)
        values = record_values(records, self.framing)
        if len(values) != offs.shape[0] or (headers is not None and len(headers) != len(values)):
            raise ValueError(
                f"kafka sink {out}[{partition}]: {len(values)} records, {offs.shape[0]} offsets"
                + ("" if headers is None else f", {len(headers)} header lists")
            )
        key = (out, partition)
        if self.resume and key not in self._tail:
            try:
                self._tail[key] = await self._bounded(
                    self.tail_written(out, partition), f"read-back of {out}[{partition}]"
                )
            except PipelineError:
                raise
            except Exception as exc:  # a broker away for a moment: the caller may retry
                raise (BrokerUnreachable if _transient(exc) else PipelineError)(
                    f"kafka sink {out}[{partition}]: cannot read back what is written "
                    f"({type(exc).__name__})"
                ) from None
        done = self._tail.get(key)
        keep = np.arange(offs.shape[0]) if done is None else np.flatnonzero(offs > done)
        skipped = int(offs.shape[0] - keep.shape[0])
        self.records_skipped += skipped
        if keep.shape[0] == 0:
            return WriteResult(out, partition, 0, skipped, None)
        stamps = None if timestamps is None else np.asarray(timestamps, np.int64)
        try:
            last, last_len = await self._send(
                out, partition, topic, values, offs, stamps, keep, headers
            )
        except PipelineError:
            self._tail.pop(key, None)
            raise
        except Exception as exc:
            # some of these records may be in the output now: the next write here reads the
            # tail again, so a retry skips them instead of writing them twice
            self._tail.pop(key, None)
            cls = BrokerUnreachable if _transient(exc) else PipelineError
            raise cls(
                f"kafka sink {out}[{partition}]: write of source offsets {int(offs[keep[0]])}.."
                f"{int(offs[keep[-1]])} failed ({type(exc).__name__})"
            ) from None
        base = int(last.offset) if last is not None else None
        last_out = None if base is None else base + last_len - 1  # acks=0 gives no offsets
        self._tail[key] = int(offs[keep[-1]])
        self.records_out += int(keep.shape[0])
        if self._marks is not None and last_out is not None:
            await self._mark(out, partition, last_out + 1)
        return WriteResult(out, partition, int(keep.shape[0]), skipped, last_out)

    async def _send(
        self, out: str, partition: int, topic: str, values: list[bytes], offs: np.ndarray,
        stamps: np.ndarray | None, keep: np.ndarray,
        carried: Sequence[Sequence[tuple[str, bytes]] | None] | None = None,
    ) -> tuple[Any, int]:  # fmt: skip
        """Send the kept records in batches, each acknowledged before the next is queued;
        returns (metadata of the last batch, records in it)."""
        src_t, src_p = topic.encode(), str(partition).encode()
        batch = self._producer.create_batch()
        count = 0
        meta = None
        offs_l = offs.tolist()
        stamps_l = stamps.tolist() if stamps is not None else None
        for i in keep.tolist():
            if len(values[i]) > self.max_record_bytes:  # a broker would refuse it anyway
                raise PipelineError(
                    f"kafka sink {out}[{partition}]: the record from source offset {offs_l[i]} "
                    f"is {len(values[i])} bytes, above max_record_bytes ({self.max_record_bytes})"
                )
            headers = [(SRC_TOPIC, src_t), (SRC_PARTITION, src_p), (SRC_OFFSET, b"%d" % offs_l[i])]
            if carried is not None and carried[i]:
                headers = [
                    h for h in carried[i] if not h[0].startswith(OUR_HEADER_PREFIX)
                ] + headers
            ts = stamps_l[i] if stamps_l is not None else None
            if batch.append(key=None, value=values[i], timestamp=ts, headers=headers) is None:
                batch.close()  # full (an empty batch takes any one record, so this one fits next)
                await self._deliver(batch, out, partition)
                batch = self._producer.create_batch()
                batch.append(key=None, value=values[i], timestamp=ts, headers=headers)
                count = 0
            count += 1
        batch.close()
        meta = await self._deliver(batch, out, partition)
        return meta, count

    async def _deliver(self, batch: Any, out: str, partition: int) -> Any:
        """One batch, sent and acknowledged. aiokafka expires an unsent batch after its
        request_timeout_ms; the outer bound is a last resort above that."""
        limit = self.call_timeout_s + getattr(self._producer, "_request_timeout_ms", 40_000) / 1000
        fut = await asyncio.wait_for(
            self._producer.send_batch(batch, out, partition=partition), limit
        )
        return await asyncio.wait_for(fut, limit)

    async def _mark(self, out: str, partition: int, next_offset: int) -> None:
        from aiokafka import TopicPartition
        from aiokafka.errors import KafkaError

        tp = TopicPartition(out, partition)
        if tp not in self._marked:
            self._marked.add(tp)
            self._marks.assign(list(self._marked))
            self._marks.pause(*self._marked)  # commits only: never fetch
        try:
            await self._bounded(self._marks.commit({tp: next_offset}), "mark commit")
        except (KafkaError, BrokerUnreachable):  # a hint: a stale one only lengthens a read-back
            self.mark_failures += 1

    async def tail_written(
        self, topic: str, partition: int, *, timeout: float = 30.0
    ) -> int | None:
        """The highest source offset (header `raymask.src.offset`) in output `topic[partition]`,
        or None when the partition holds no record written by raymask."""
        from aiokafka import TopicPartition

        from raymask.actors.sources.kafka import READ_BACK_WAIT_MS

        tp = TopicPartition(topic, partition)
        start = 0
        if self._marks is not None:
            mark = await self._marks.committed(tp)
            if mark:
                start = int(mark) - 1  # the last record the mark vouches for, and what follows
        deadline = time.monotonic() + timeout
        # a short fetch wait first (an empty partition answers after the wait); a store too slow
        # to answer within it (tansu on S3 with many batches, READ_BACK_WAIT_MS) gets longer ones
        waits = (100, 1000, READ_BACK_WAIT_MS)
        for k, wait in enumerate(waits):
            last = k == len(waits) - 1
            stall = deadline if last else time.monotonic() + max(2.0, 3 * wait / 1000)
            got = await self._read_tail(topic, tp, start, wait, stall, deadline)
            if got is not _STALLED:
                return got  # type: ignore[return-value]
            if time.monotonic() > deadline:
                break
        raise BrokerUnreachable(
            f"kafka sink: could not read the tail of {topic}[{partition}] within {timeout:.0f} s"
        )

    async def _read_tail(
        self, topic: str, tp: Any, start: int, wait_ms: int, give_up: float, deadline: float
    ) -> int | None | object:
        """tail_written with one fetch wait: the result, or _STALLED when no fetch answered
        (no record and no high watermark) by `give_up`, or the read is not done by `deadline`."""
        from aiokafka import AIOKafkaConsumer

        reader = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=wait_ms, **self._client_opts(),
        )  # fmt: skip
        await reader.start()
        best: int | None = None
        try:
            reader.assign([tp])
            reader.seek(tp, start)
            answered = False
            while True:
                got = await reader.getmany(tp, timeout_ms=200, max_records=50_000)
                for m in got.get(tp, ()):
                    answered = True
                    src = _source_offset(m.headers, topic, tp.partition, m.offset)
                    if src is not None and (best is None or src > best):
                        best = src
                hw = reader.highwater(tp)
                if hw is not None:
                    answered = True
                    if start > 0 and hw <= start:  # the mark is past the end: read it all
                        start = 0
                        best = None
                        reader.seek(tp, 0)
                        continue
                    if await reader.position(tp) >= hw:
                        return best
                now = time.monotonic()
                if now > deadline or (not answered and now > give_up):
                    return _STALLED
        finally:
            await reader.stop()


_STALLED = object()


def _no_client_resends(producer: Any) -> None:
    """Make aiokafka fail a batch instead of sending it again on its own.

    Without idempotence, a batch whose request was in flight when the connection dropped may
    already be on the broker; aiokafka would resend it after reconnecting (a duplicate the skip
    rule cannot see, since it happens inside one write). Its only retry switch is the batch's
    time to live (`_can_retry` refuses an expired batch), so the time to live is set to zero:
    the write fails, and the retry the pipeline makes reads the tail back first. A batch whose
    partition has no leader also fails at once instead of waiting. An idempotent producer keeps
    aiokafka's retries (the broker drops the duplicates). Private attribute, checked by the
    broker-restart tests; if aiokafka renames it this does nothing."""
    acc = getattr(producer, "_message_accumulator", None)
    if acc is not None and hasattr(acc, "_batch_ttl"):
        acc._batch_ttl = 0.0


def _transient(exc: BaseException) -> bool:
    """A failure that a broker coming back would cure: a timeout or a retriable Kafka error."""
    from aiokafka.errors import KafkaTimeoutError

    return isinstance(exc, TimeoutError | KafkaTimeoutError) or bool(
        getattr(exc, "retriable", False)
    )


def _source_offset(
    headers: Sequence[tuple[str, bytes]], topic: str, partition: int, offset: int
) -> int | None:
    for k, v in headers or ():
        if k == SRC_OFFSET:
            try:
                return int(v)
            except (TypeError, ValueError):
                raise PipelineError(
                    f"kafka sink: record {topic}[{partition}]@{offset} has a malformed "
                    f"{SRC_OFFSET} header"
                ) from None
    return None  # not written by raymask


def _make_actor():  # Ray is imported only where actors are made, never by the pure core
    import ray

    # One write at a time: the skip rule needs writes to an output partition in order. Ray
    # restarts a sink that dies; the new one reads back the tail of each output partition before
    # its first write there, so a write sent again skips what the dead one already wrote.
    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=1)
    class KafkaSinkActor:
        """Ray actor around KafkaSink; the producer starts on the first call."""

        def __init__(self, bootstrap: str, **options: Any) -> None:
            self.core = KafkaSink(bootstrap, **options)

        async def _ready(self) -> KafkaSink:
            if self.core._producer is None:
                await self.core.start()
            return self.core

        async def write(
            self, topic: str, partition: int, role: str, records: Any, source_offsets: Any,
            timestamps: Any = None, headers: Any = None,
        ) -> WriteResult:  # fmt: skip
            core = await self._ready()
            return await core.write(
                topic, partition, role, records, source_offsets, timestamps, headers
            )

        async def ensure_topic(self, name: str, partitions: int) -> None:
            await (await self._ready()).ensure_topic(name, partitions)

        def topic_for(self, topic: str, role: str) -> str:
            return self.core.topic_for(topic, role)

        async def stop(self) -> None:
            await self.core.stop()

    return KafkaSinkActor


KafkaSinkActor = LazyActor(_make_actor)
