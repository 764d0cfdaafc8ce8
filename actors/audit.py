"""A tamper-evident audit trail: append-only, hash-chained records with signed anchors.

Each record is one JSON line: `seq` (0, 1, 2, ...), `ts`, `kind`, the caller's metadata fields,
and `prev`, the SHA-256 of the previous line's bytes (64 zeros for the first). Every
`anchor_every` records, and when the log is closed, an anchor record follows: it names the last
`seq` it covers and carries an Ed25519 signature over (path name, seq, hash of the line before it),
made with the keyring's `audit` key; the file is fsynced after each anchor.

What `verify` finds (and names the first line where the evidence breaks):
- an edited record: the next line's `prev` no longer matches it; if the editor recomputed every
  hash after it (the chain alone has no key), the next anchor's signature fails, which places
  the edit between that anchor and the one before;
- a dropped, inserted or reordered record: `seq` out of order and the `prev` chain broken;
- a forged anchor: its signature fails against the audit key's public half;
- a truncated file: records after the last anchor are reported as not anchored, and a file that
  ends without the closing anchor says so; a cut exactly at an anchor leaves a valid shorter log,
  which only a copy of the anchors elsewhere (`anchor_sink`: e.g. a Kafka topic) can show.

Only metadata goes in: the fields are names, counts, versions, reasons and token references;
`append` refuses values that are not str, int, float, bool or None and keys outside [a-z0-9_.],
and callers never pass record values (tests seed canaries to check).

`AuditLog` is the plain logic; `AuditActor` (named `raymask-audit`, one per cluster) is the one
writer every other actor sends to.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from raymask.actors._lazy import LazyActor
from raymask.errors import InputError

__all__ = [
    "AuditLog", "Auditor", "Verdict", "verify", "read_records", "signing_key", "AuditActor",
    "LeakAudit", "leak_events", "audit_leaks", "KafkaCopy", "read_copy", "compare_with_copy",
]  # fmt: skip

GENESIS = "0" * 64
_KEY = re.compile(r"[a-z0-9_.]{1,64}\Z")
_RESERVED = {"seq", "ts", "kind", "prev", "sig", "upto"}


def signing_key(material: bytes) -> Ed25519PrivateKey:
    """The Ed25519 key of the keyring's `audit` key (its first 32 bytes are the seed)."""
    if len(material) < 32:
        raise InputError("the audit key needs at least 32 bytes")
    return Ed25519PrivateKey.from_private_bytes(material[:32])


def _line(rec: dict) -> bytes:
    return json.dumps(rec, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _anchor_message(name: str, seq: int, head: str) -> bytes:
    return f"raymask-audit-anchor/v1\n{name}\n{seq}\n{head}".encode()


class AuditLog:
    def __init__(
        self, path: str | Path, key: Ed25519PrivateKey, *, anchor_every: int = 100,
        clock: Callable[[], float] = time.time,
        anchor_sink: Callable[[dict], None] | None = None, copy: KafkaCopy | None = None,
    ) -> None:  # fmt: skip
        """Open (or continue) the log at `path`. An existing log is verified first and continued
        from its last line; one that does not verify is refused (never appended to). With
        `copy`, every line also goes to a Kafka topic, sent at each anchor (see KafkaCopy)."""
        self.path = Path(path)
        self.copy = copy
        self.key = key
        self.anchor_every = anchor_every
        self.clock = clock
        self.anchor_sink = anchor_sink
        self.seq = 0
        self.head = GENESIS
        self.since_anchor = 0
        if self.path.exists() and self.path.stat().st_size:
            v = verify(self.path, key.public_key(), require_closed=False)
            if not v.ok:
                raise InputError(f"{self.path}: the audit log does not verify: {v.reason}")
            self.seq, self.head, self.since_anchor = v.records, v.head, v.unanchored
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "ab")  # noqa: SIM115

    def _refresh(self) -> None:
        """Under the file lock: take seq and head from the file's last line, which another
        process may have written since (several writers on one machine share a log this way;
        on a cluster, the AuditActor is the one writer)."""
        size = self.f.seek(0, os.SEEK_END)
        if size == 0:
            self.seq, self.head = 0, GENESIS
            return
        with open(self.path, "rb") as r:
            r.seek(max(0, size - 65536))
            last = r.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        rec = json.loads(last)
        self.seq, self.head = rec["seq"] + 1, hashlib.sha256(last).hexdigest()

    def append(self, kind: str, **fields: Any) -> int:
        """Add one record; returns its seq."""
        if not _KEY.match(kind):
            raise ValueError("an audit kind is a short lower-case name")
        for k, v in fields.items():
            if not _KEY.match(k) or k in _RESERVED:
                raise ValueError(f"audit field name {k!r} is not allowed")
            if v is not None and not isinstance(v, (str, int, float, bool)):
                raise ValueError(f"audit field {k}: only names, numbers and flags")
        fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        try:
            self._refresh()
            rec = {**fields, "seq": self.seq, "ts": round(self.clock(), 6), "kind": kind,
                   "prev": self.head}  # fmt: skip
            self._write(rec)
            self.f.flush()
            self.since_anchor += 1
            if self.since_anchor >= self.anchor_every:
                self._anchor()
        finally:
            fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)
        return rec["seq"]

    def _write(self, rec: dict) -> None:
        line = _line(rec)
        self.f.write(line + b"\n")
        if self.copy is not None:
            self.copy.add(self.path.name, line)
        self.head = hashlib.sha256(line).hexdigest()
        self.seq += 1

    def anchor(self) -> None:
        """Sign the chain's head, write the anchor, fsync."""
        fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        try:
            self._refresh()
            self._anchor()
        finally:
            fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)

    def _anchor(self) -> None:
        upto = self.seq - 1
        sig = self.key.sign(_anchor_message(self.path.name, upto, self.head)).hex()
        rec = {"seq": self.seq, "ts": round(self.clock(), 6), "kind": "anchor", "upto": upto,
               "prev": self.head, "sig": sig}  # fmt: skip
        self._write(rec)
        self.since_anchor = 0
        self.f.flush()
        os.fsync(self.f.fileno())
        if self.anchor_sink is not None:
            self.anchor_sink(rec)
        if self.copy is not None:
            self.copy.flush()

    def close(self) -> None:
        if self.f.closed:
            return
        if self.since_anchor:
            self.anchor()
        self.f.close()
        if self.copy is not None:
            self.copy.close()


class KafkaCopy:
    """A copy of an audit log on a Kafka topic (one partition, so one order): every line, keyed by
    the log's file name (the anchors sign it), sent and acknowledged at each anchor, right after
    the file's fsync. Lines a send could not deliver (the broker away) stay pending and go with
    the next anchor; `failures` counts such attempts. The copy is what shows a log cut exactly at
    an anchor (`compare_with_copy`), which the file alone cannot."""

    def __init__(self, bootstrap: str, topic: str, *, client_options: dict | None = None,
                 timeout_s: float = 30.0) -> None:  # fmt: skip
        import asyncio

        self.topic, self.timeout_s = topic, timeout_s
        self.pending: list[tuple[bytes, bytes]] = []
        self.failures = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="audit-kafka-copy")  # fmt: skip
        self.thread.start()
        self.producer = self._call(self._start(bootstrap, client_options or {}))

    def _call(self, coro: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(self.timeout_s)

    async def _start(self, bootstrap: str, options: dict) -> Any:
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        from raymask.actors.sources.kafka import with_ssl_context

        options = with_ssl_context(options)
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.topic, 1, 1)])
        except Exception:  # noqa: BLE001 (it exists, or the cluster makes topics itself)
            pass
        finally:
            await admin.close()
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                             max_request_size=4 << 20, **options)  # fmt: skip
        await p.start()
        return p

    def add(self, name: str, line: bytes) -> None:
        self.pending.append((name.encode(), line))

    async def _send(self, lines: list[tuple[bytes, bytes]]) -> None:
        import asyncio

        futs = [await self.producer.send(self.topic, v, key=k, partition=0) for k, v in lines]
        await asyncio.gather(*futs)

    def flush(self) -> bool:
        """Send what is pending and wait for the acknowledgements; False (kept for the next
        time) if the broker did not take them within the timeout."""
        if not self.pending:
            return True
        lines, self.pending = self.pending, []
        try:
            self._call(self._send(lines))
            return True
        except Exception:  # noqa: BLE001 (the file has them; the copy catches up later)
            self.failures += 1
            self.pending = lines + self.pending
            return False

    def close(self) -> None:
        self.flush()
        try:
            self._call(self.producer.stop())
        except Exception:  # noqa: BLE001
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def read_copy(url: str, idle_s: float = 2.0) -> tuple[str, list[bytes]]:
    """An audit log's copy on Kafka (kafka://BOOTSTRAP/TOPIC): the log's file name and its lines
    in order."""
    from raymask.actors.sources.kafka import read_all

    bootstrap, _, topic = url[len("kafka://") :].partition("/")
    if not url.startswith("kafka://") or not bootstrap or not topic:
        raise InputError(f"{url}: give the copy as kafka://BOOTSTRAP/TOPIC")
    msgs = read_all(bootstrap, topic, partitions=[0], idle_s=idle_s)
    names = {m.key for m in msgs}
    if len(names) > 1:
        raise InputError(f"{url}: holds the copies of several logs; one topic per log")
    # in seq order (several processes sharing one log file send their own lines)
    lines = sorted((m.value for m in msgs), key=lambda v: json.loads(v)["seq"])
    return (names.pop().decode() if names else "audit.ndjson"), lines


def compare_with_copy(path: str | Path, url: str, public: Ed25519PublicKey) -> Verdict:
    """Verify an audit log and its Kafka copy, then check that the file holds every record the
    copy holds, byte for byte: a file cut at an anchor, or rewritten from some record on with a
    stolen key, differs from its copy there."""
    import tempfile

    mine = verify(path, public)
    name, lines = read_copy(url)
    with tempfile.TemporaryDirectory() as d:
        copy_file = Path(d) / name
        copy_file.write_bytes(b"".join(v + b"\n" for v in lines))
        theirs = verify(copy_file, public, require_closed=False)
    if not theirs.ok:
        return Verdict(False, theirs.records, theirs.anchored, theirs.head, theirs.unanchored,
                       theirs.bad_line, f"the Kafka copy does not verify: {theirs.reason}")  # fmt: skip
    with open(path, "rb") as f:
        have = [raw.rstrip(b"\n") for raw in f if raw.strip()]
    for i, v in enumerate(lines):
        if i >= len(have):
            return Verdict(False, mine.records, mine.anchored, mine.head, mine.unanchored, i + 1,
                           f"the file ends at record {len(have)}, its copy holds {len(lines)} "
                           "(the file was cut)")  # fmt: skip
        if have[i] != v:
            return Verdict(False, mine.records, mine.anchored, mine.head, mine.unanchored, i + 1,
                           "differs from its Kafka copy (rewritten)")  # fmt: skip
    return mine


@dataclass
class Verdict:
    ok: bool
    records: int  # lines read that chain correctly
    anchored: int  # lines covered by a valid anchor
    head: str  # hash of the last good line
    unanchored: int = 0  # good lines after the last anchor
    bad_line: int | None = None  # 1-based line of the first problem
    reason: str = ""


def read_records(path: str | Path) -> Iterator[dict]:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def verify(path: str | Path, public: Ed25519PublicKey, *, require_closed: bool = True) -> Verdict:
    """Check the chain and the anchors of an audit log; the verdict names the first bad line."""
    name = Path(path).name
    head, seq, anchored, since = GENESIS, 0, 0, 0

    def bad(line_no: int, why: str) -> Verdict:
        return Verdict(False, seq, anchored, head, since, line_no, why)

    try:
        f = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        return Verdict(False, 0, 0, GENESIS, 0, None, f"cannot read ({exc.strerror})")
    with f:
        for i, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\n")
            try:
                rec = json.loads(line)
            except ValueError:
                return bad(i, "not a JSON record (edited or cut)")
            if not isinstance(rec, dict) or rec.get("seq") != seq:
                return bad(i, f"expected record {seq} here (a record dropped, inserted or moved)")
            if rec.get("prev") != head:
                if i == 1:
                    return bad(1, "edited (the first record does not start the chain)")
                return bad(i - 1, f"edited (line {i} no longer chains to it)")
            if _line(rec) != line:
                return bad(i, "not in the canonical form the log writes (edited)")
            if rec.get("kind") == "anchor":
                try:
                    public.verify(bytes.fromhex(rec["sig"]),
                                  _anchor_message(name, rec["upto"], head))  # fmt: skip
                except (InvalidSignature, ValueError, KeyError, TypeError):
                    return bad(i, "the anchor's signature does not verify (forged or edited)")
                if rec["upto"] != seq - 1:
                    return bad(i, "the anchor covers the wrong records")
                anchored, since = seq + 1, -1
            head = hashlib.sha256(line).hexdigest()
            seq += 1
            since += 1
    if require_closed and since:
        return Verdict(False, seq, anchored, head, since, anchored + 1,
                       f"{since} record(s) after the last anchor are not signed "
                       "(the log was cut, or its writer died)")  # fmt: skip
    return Verdict(True, seq, anchored, head, since)


def kafka_copy(url: str) -> KafkaCopy:
    """The copy a BOOTSTRAP/TOPIC (or kafka://BOOTSTRAP/TOPIC) names."""
    bootstrap, _, topic = url.removeprefix("kafka://").partition("/")
    if not bootstrap or not topic:
        raise InputError(f"{url}: an audit copy is BOOTSTRAP/TOPIC (e.g. 10.0.0.5:9092/audit)")
    return KafkaCopy(bootstrap, topic)


def copy_from_env() -> KafkaCopy | None:
    """RAYMASK_AUDIT_KAFKA=BOOTSTRAP/TOPIC: the trail is also copied to that topic."""
    url = os.environ.get("RAYMASK_AUDIT_KAFKA")
    return kafka_copy(url) if url else None


class Auditor:
    """What components call: `emit(kind, **fields)`. Off (nothing written) unless a log is
    configured: `RAYMASK_AUDIT=FILE` (key `audit` from the keyring, or `RAYMASK_AUDIT_KEY_ID`)."""

    def __init__(self, log: AuditLog | None = None) -> None:
        self.log = log

    @classmethod
    def from_env(cls, keyring: Any = None) -> Auditor:
        path = os.environ.get("RAYMASK_AUDIT")
        if not path:
            return cls(None)
        from raymask.policy.keys import Keyring

        ring = keyring if keyring is not None else Keyring.from_env()
        key = ring.get(os.environ.get("RAYMASK_AUDIT_KEY_ID", "audit"))
        return cls(AuditLog(path, signing_key(key.material), copy=copy_from_env()))

    @property
    def on(self) -> bool:
        return self.log is not None

    def emit(self, kind: str, **fields: Any) -> None:
        if self.log is not None:
            self.log.append(kind, **fields)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


# ------------------------------------------------ the leak monitor's own events file (OUTPUT.audit.ndjson)
# One JSON line per (view, field, type) a sampled output batch still held something detectable
# in: stream, view, field path, type, policy version, spans among sampled records; never a value.
# With RAYMASK_AUDIT on, the same findings also go to the tamper-evident trail (kind "leak").


def leak_events(stream: str, outputs, clock: Callable[[], float] = time.time) -> list[dict]:  # noqa: ANN001
    """Audit events for the leaks in the MaskOutputs of one chunk."""
    events = []
    for o in outputs:
        for fld, typ, count in o.leaks:
            events.append({
                "ts": round(clock(), 3), "event": "leak", "stream": stream, "view": o.role,
                "field": fld, "type": typ, "count": int(count), "sampled": int(o.leak_sampled),
                "policy_version": int(o.policy_version),
            })  # fmt: skip
    return events


def audit_leaks(emit: Callable[..., None], events: list[dict]) -> None:
    """The leak events in the tamper-evident trail (kind `leak`; the trail keeps its own time)."""
    for e in events:
        emit("leak", **{k: v for k, v in e.items() if k not in ("ts", "event")})


class LeakAudit:
    """Appends events to a file (created at the first event, fsynced per write)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.events = 0
        self._lock = threading.Lock()

    def write(self, events: list[dict]) -> None:
        if not events:
            return
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in events))
            f.flush()
            os.fsync(f.fileno())
            self.events += len(events)


def _make_actor():
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=1)
    class AuditActor:
        """The one audit writer of a cluster (named `raymask-audit`); reopens and continues the
        log after a restart."""

        def __init__(self, path: str, key_material: bytes, anchor_every: int = 100,
                     kafka: str | None = None) -> None:  # fmt: skip
            self.log = AuditLog(path, signing_key(key_material), anchor_every=anchor_every,
                                copy=kafka_copy(kafka) if kafka else None)  # fmt: skip

        def append(self, kind: str, fields: dict) -> int:
            return self.log.append(kind, **fields)

        def anchor(self) -> None:
            self.log.anchor()

        def close(self) -> None:
            self.log.close()

    return AuditActor


AuditActor = LazyActor(_make_actor)
