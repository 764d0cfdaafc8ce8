"""The Kafka pipeline: source actors -> KeyRouter -> MaskWorker actors -> sink actors.

One round: every source actor polls its partitions (one columnar chunk per partition), the driver
routes each chunk by key (the chunk goes into the object store once), every worker validates its
rows once and masks them for every role view, and the sink writes each view's records to that view's topic, in the input
partition, with the source topic/partition/offset in headers. Records no technique can take, and
messages that cannot be records, go to the view's dead-letter topic, sealed as in the file path.
Only when every write of a chunk is acknowledged does its source commit the chunk's offsets.
Rounds overlap: round k+1 is masked while round k's writes are acknowledged; round k+1's writes
go out only after that, so each sink sees the rounds' writes in order.

Effectively once: a crash anywhere (worker, source, sink, driver) before a commit means the
chunk is read again. A sink, at its first write to an output partition, reads back the highest
source offset already there and skips every record at or below it, so nothing is written twice.
Assumptions: one writer per output partition (the pipeline's sink), writes to it in source-offset
order (the sink takes one call at a time), and an output topic that is not written by anything
else. Records in the output keep the input order per partition, so per-key order holds when the
producers key their records (the usual Kafka contract).

A broker that goes away (restart, network cut) is ridden out: every broker call in the actors is
bounded, a write that fails is retried (the sink re-reads its tail first), a commit that fails is
kept and sent with the next one, and an empty poll is told apart from a dead broker by asking it
for metadata. Only a broker unreachable for longer than `broker_timeout_s` ends the run, with a
PipelineError naming the limit; what was committed then is where the next run resumes.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from raymask.actors.audit import LeakAudit, audit_leaks, leak_events
from raymask.actors.autoscale import AutoscaleConfig, PoolAutoscaler, request_nodes
from raymask.actors.ledger import ledger_lock, state_base
from raymask.actors.metrics import KafkaMetrics
from raymask.actors.router import DeadLetter, Routed, RouterCore
from raymask.actors.sinks.deadletters import DEFAULT_KEY_ID, seal
from raymask.actors.sinks.kafka import DEFAULT_TOPIC_TEMPLATE
from raymask.actors.sources.kafka import PartitionChunk
from raymask.actors.worker import MaskOutput, merge_outputs
from raymask.cluster.pipeline import _checked, ledger_root, resend_backoff
from raymask.errors import BrokerUnreachable, InputError, PipelineError, PolicyError
from raymask.kernels.codecs.formats import format_for
from raymask.memory import tune_malloc
from raymask.policy.keys import Keyring
from raymask.policy.schema import Policy

__all__ = ["KafkaRunSummary", "run_kafka", "DEAD_LETTER_TEMPLATE"]

DEAD_LETTER_TEMPLATE = "{topic}.deadletters.{role}"
VAULT_TEMPLATE = (
    "{topic}.segregated.{role}"  # role "vault"; `raymask reveal --vault kafka://HOST/TOPIC`
)


@dataclass
class KafkaRunSummary:
    stream: str
    input_topic: str
    bootstrap: str
    roles: list[str]
    workers: int
    sources: int
    topics: dict[str, str] = field(default_factory=dict)  # role -> output topic
    dead_topics: dict[str, str] = field(default_factory=dict)  # role -> dead-letter topic
    records_in: int = 0  # messages read (a message read again after a crash counts again)
    bytes_in: int = 0
    written: Counter = field(default_factory=Counter)  # role -> records written
    skipped: Counter = field(default_factory=Counter)  # role -> already in the output, skipped
    dead: Counter = field(default_factory=Counter)  # role -> dead letters (written or skipped)
    dead_reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    rounds: int = 0
    resent: int = 0  # calls sent again after their actor died
    source_failures: int = 0  # polls or commits lost to a dead source (it restarts)
    broker_outages: int = 0  # polls that found the broker unreachable
    uncommitted: int = 0  # partitions whose last commit never got through (re-read next run)
    source_records: Counter = field(default_factory=Counter)  # source index -> messages read
    latencies_ms: list = field(default_factory=list, repr=False)  # produce time -> written
    aggregates: Any = None  # AggregateSummary when the run also released DP aggregates
    leaks: Counter = field(default_factory=Counter)  # (view, field, type) -> spans found
    vault_topic: str | None = None  # segregated values (Arrow IPC messages), when any
    vault_rows: int = 0
    lag_s: float = 0.0  # age of the oldest record of the last round when it was written
    resizes: list = field(default_factory=list)  # (seconds into the run, new pool size)

    def latency_ms(self, q: float) -> float:
        """A percentile (0-100) of produce-to-written latency over all records written."""
        if not self.latencies_ms:
            return 0.0
        return float(np.percentile(np.concatenate(self.latencies_ms), q))

    @property
    def records_per_second(self) -> float:
        return self.records_in / self.seconds if self.seconds > 0 else 0.0

    @property
    def balanced(self) -> bool:
        """Per view: every message read was written, skipped as already written, or dead."""
        return all(
            self.written[r] + self.skipped[r] + self.dead[r] == self.records_in for r in self.roles
        )


def _broker_gone(summary: KafkaRunSummary, limit_s: float, what: str) -> PipelineError:
    return PipelineError(
        f"the Kafka broker at {summary.bootstrap} was unreachable for more than {limit_s:.0f} s "
        f"(broker_timeout_s) ({what}); committed offsets keep the place, a new run resumes there"
    )


def _get_with_resend(
    calls: Sequence[tuple[Any, Callable[[], Any]]], summary: KafkaRunSummary,
    transient_s: float = 0.0,
) -> list[Any]:  # fmt: skip
    """Results of `calls` (future, resend) in order; a call whose actor died is sent again (in
    order, so a restarted sink sees its writes in the original order). With `transient_s`, a call
    that failed with BrokerUnreachable (a broker gone for a moment) is retried once a second for
    that long, then the run ends with a PipelineError naming the limit; the sink re-reads its
    tail before a retry, so nothing is written twice."""
    import ray

    out = []
    for fut, resend in calls:
        deaths, deadline, first = 0, None, time.monotonic()
        while True:
            try:
                out.append(ray.get(fut))
                break
            except ray.exceptions.RayActorError:
                deaths += 1
                resend_backoff(deaths, first)
            except ray.exceptions.RayTaskError as exc:
                if (
                    not isinstance(getattr(exc, "cause", None), BrokerUnreachable)
                    or not transient_s
                ):
                    raise
                deadline = deadline or time.monotonic() + transient_s
                if time.monotonic() > deadline:
                    raise _broker_gone(summary, transient_s, f"last: {exc.cause}") from None
                time.sleep(1.0)
            summary.resent += 1
            fut = resend()
    return out


def _resend_to(pool: list, wi: int, ref: Any, views: list[str], idx: np.ndarray) -> Any:
    """Send a batch again to worker `wi`, restarted by Ray: its layout first (a restart runs
    __init__ with the shard count it was made with, which a resize may have changed), then the
    batch; calls to one actor run in order."""
    pool[wi].set_layout.remote(wi, len(pool))
    return pool[wi].process_views.remote(ref, views, idx)


class _ElasticPool:
    """The pipeline's mask workers, resized only between rounds, when no batch is in flight.

    Growing starts the new workers at once and lets them join when they are up (on a cluster
    with an autoscaler they may wait for a node); the rounds go on with the pool as it is
    meanwhile. Joining and shrinking re-lay the shards: every worker is told its index and the
    pool size, and reloads the per-subject budgets of the keys it now owns (the round before
    finished every charge), so key state moves with the keys. Routing is by jump hash over the
    pool size, which moves the fewest keys; output order per partition does not depend on the
    pool, so per-key order holds across a resize."""

    def __init__(
        self, make: Callable[[int, int], Any], n: int, auto: AutoscaleConfig | None,
        summary: KafkaRunSummary, t0: float,
    ) -> None:  # fmt: skip
        self.make = make
        self.workers = [make(i, n) for i in range(n)]
        self.starting: list[tuple[Any, Any, float]] = []  # actor, warm-up ref, since
        self.config = auto
        self.scaler = PoolAutoscaler(auto) if auto is not None else None
        self.summary = summary
        self.t0 = t0
        self.asked = 0  # workers asked of Ray's autoscaler
        self.given_up = 0  # workers that never came up within start_timeout_s

    @property
    def target(self) -> int:
        return len(self.workers) + len(self.starting)

    def step(self, lag_s: float) -> bool:
        """Between rounds: decide, start or stop workers, join those that are up. True when
        the pool changed (the router must be rebuilt for the new size)."""
        import ray

        if self.scaler is None:
            return False
        want = self.scaler.decide(lag_s, self.target)
        changed = False
        if want > self.target:
            for i in range(self.target, want):
                a = self.make(i, want)
                self.starting.append((a, a.warm.remote(), time.monotonic()))
        elif want < self.target:
            while self.starting and self.target > want:
                ray.kill(self.starting.pop()[0])
            while len(self.workers) > want:
                ray.kill(self.workers.pop())
                changed = True
        if self.config.request_nodes and self.asked != self.target:
            request_nodes(self.target, self.config.worker_cpus)
            self.asked = self.target
        joined = 0
        while self.starting:
            a, ref, since = self.starting[0]
            done, _ = ray.wait([ref], timeout=0)
            if done:
                try:
                    ray.get(done[0])
                except ray.exceptions.RayError:
                    done = []  # it died starting: given up below like a timeout
            if not done:
                if time.monotonic() - since < self.config.start_timeout_s:
                    break  # joins in order: the next ones wait for this one
                for b, _, _ in self.starting:
                    ray.kill(b)
                self.given_up += len(self.starting)
                self.starting = []
                break
            self.starting.pop(0)
            self.workers.append(a)
            joined += 1
        if changed or joined:
            n = len(self.workers)
            # every worker reads the ledgers again: a joining one was made (and loaded them)
            # before the rounds since, and its layout may equal the one it was made with
            ray.get([w.set_layout.remote(i, n, True) for i, w in enumerate(self.workers)])
            self.summary.workers = n
            self.summary.resizes.append((round(time.perf_counter() - self.t0, 3), n))
        return bool(changed or joined)

    def close(self) -> None:
        import ray

        for a, _, _ in self.starting:
            ray.kill(a)
        self.starting = []
        if self.config is not None and self.config.request_nodes and self.asked:
            request_nodes(0, self.config.worker_cpus)  # withdraw: idle nodes may go


VAULT_PIECE_ROWS = 2000  # vault rows per message (a few hundred KB)


def vault_messages(
    routed: Routed, offsets: np.ndarray, per_worker: list[list[MaskOutput]]
) -> tuple[list[bytes], np.ndarray, int]:
    """A chunk's segregated values as vault messages: Arrow IPC streams of at most
    VAULT_PIECE_ROWS rows (offset, field, ref, subject, sealed), in source-offset order, each
    tagged with the highest source offset in it. The sink's skip rule then holds: a chunk read
    again after a crash starts at the last commit, so the rows of a piece it skips were written
    by the piece that set the mark (a row written twice is harmless: any copy opens). Every view
    that segregates seals the same values the same way, so the first such view's rows are taken."""
    tables = []
    for vi in range(len(per_worker[0])):
        tables = [res[vi].vault for res in per_worker if res[vi].vault is not None]
        if tables:
            break
    if not tables:
        return [], np.zeros(0, np.int64), 0
    t = pa.concat_tables(tables)
    off = offsets[routed.lines[t.column("row").to_numpy()]]
    t = t.drop_columns(["row"]).add_column(0, "offset", pa.array(off, pa.int64()))
    t = t.take(pa.array(np.argsort(off, kind="stable")))
    pieces, marks = [], []
    for start in range(0, t.num_rows, VAULT_PIECE_ROWS):
        piece = t.slice(start, VAULT_PIECE_ROWS)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, piece.schema) as w:
            w.write_table(piece)
        pieces.append(sink.getvalue().to_pybytes())
        marks.append(int(piece.column("offset")[-1].as_py()))
    return pieces, np.asarray(marks, np.int64), t.num_rows


def _collect(
    routed: Routed, outputs: Sequence[MaskOutput]
) -> tuple[pa.Array, np.ndarray, list[tuple[int, str, str | None]]]:
    """A view's masked records in input order, their rows, and the rows that failed (row, reason,
    field)."""
    dead = [
        (int(r), reason, fld)
        for o in outputs
        for r, reason, fld in zip(o.dead_rows, o.dead_reasons, o.dead_fields, strict=True)
    ]
    recs, rows = merge_outputs(list(outputs))
    return recs, rows, dead


DP_EPSILON = "raymask.dp.epsilon"
DP_DELTA = "raymask.dp.delta"


def _with_dp_headers(
    hdrs: list | None, outputs: Sequence[MaskOutput], rows: np.ndarray, n: int
) -> list | None:
    """Records carrying local-DP noise get `raymask.dp.epsilon` (and `raymask.dp.delta`)
    headers: what the record spent in this view. Carried input headers of those names are
    dropped (they would forge it)."""
    if not any(o.privacy is not None for o in outputs):
        return hdrs
    eps, delta = np.zeros(n), np.zeros(n)
    for o in outputs:
        if o.privacy is not None:
            eps[o.rows] = o.privacy.epsilon
            delta[o.rows] = o.privacy.delta
    out = []
    base = hdrs if hdrs is not None else [None] * len(rows)
    for h, e, d in zip(base, eps[rows].tolist(), delta[rows].tolist(), strict=True):
        kept = [kv for kv in (h or ()) if not kv[0].startswith("raymask.dp.")]
        if e > 0:
            kept.append((DP_EPSILON, repr(e).encode()))
            if d > 0:
                kept.append((DP_DELTA, repr(d).encode()))
        out.append(kept)
    return out


def _drop_oversized(
    recs: pa.Array, rows: np.ndarray, limit: int
) -> tuple[pa.Array, np.ndarray, list[tuple[int, str, str | None]]]:
    """Masked records longer than `limit` bytes (a masked value can be longer than the clear
    one) leave for the dead letters instead of failing the write."""
    if len(recs) == 0:
        return recs, rows, []
    offs = np.frombuffer(recs.buffers()[1], np.int64)[recs.offset : recs.offset + len(recs) + 1]
    size = np.diff(offs) - 1  # without the newline
    big = size > limit
    if not big.any():
        return recs, rows, []
    dead = [
        (int(r), f"masked record is {int(n)} bytes, above the {limit}-byte message limit", None)
        for r, n in zip(rows[big], size[big], strict=True)
    ]
    keep = np.flatnonzero(~big)
    return recs.take(pa.array(keep)), rows[keep], dead


def run_kafka(
    policy: str | Path | Policy,
    stream: str,
    input_topic: str,
    *,
    bootstrap: str | None = None,
    roles: Sequence[str] | None = None,
    keyring: Keyring | None = None,
    workers: int = 2,
    sources: int = 1,
    group_id: str | None = None,
    idle_s: float = 5.0,
    max_records: int | None = None,
    poll_ms: int = 500,
    max_poll_records: int = 20_000,
    topic_template: str = DEFAULT_TOPIC_TEMPLATE,
    dead_letter_template: str = DEAD_LETTER_TEMPLATE,
    vault_template: str = VAULT_TEMPLATE,
    dead_letter_key: str = DEFAULT_KEY_ID,
    address: str | None = None,
    name: str | None = None,
    client_options: dict[str, Any] | None = None,
    consumer_options: dict[str, Any] | None = None,
    progress: Callable[[KafkaRunSummary], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_ready: Callable[[], None] | None = None,
    idempotent: bool = False,
    broker_timeout_s: float = 60.0,
    carry_headers: bool | Sequence[str] = False,
    balance_s: float = 20.0,
    state: str | Path | None = None,
    aggregates: str | Path | None = None,
    accountant_db: str | Path | None = None,
    aggregate_options: dict[str, Any] | None = None,
    autoscale: AutoscaleConfig | None = None,
    worker_capacity_rps: float = 0.0,
) -> KafkaRunSummary:
    """Mask `input_topic` into one topic per role view until the input is idle for `idle_s`
    (or `max_records` were read, or `should_stop()`), and return the summary.

    With no `bootstrap`, an embedded broker is started for the run and stopped after it (useful
    only with a producer writing into it meanwhile; the demo and tests start their own).
    `idempotent` makes the sinks' producers idempotent: use it on real clusters (the CLI does for
    --bootstrap-servers); the embedded tansu broker cannot.
    `client_options` go to every Kafka client (SASL/SSL for a real cluster), `consumer_options`
    only to the source consumers (session timeouts, fetch sizes). A broker unreachable for more
    than `broker_timeout_s` ends the run with a PipelineError (each broker call is bounded by
    min(30 s, broker_timeout_s), so the error comes at most about that much later). Input message
    headers are carried into the masked records only with `carry_headers` (True: all; a list:
    those names): they are outside the policy, so by default none is copied into any view.
    With several sources, the first poll waits (up to `balance_s`) until the consumer group has
    spread the partitions over all of them, so one early member does not read everything. Actors are
    named `kworker|ksource|ksink|kdead:NAME:i` in namespace "raymask" (NAME: default the stream),
    so fault tests and operators can find them. A policy with a `budget` keeps its per-subject
    ledger under `state` (see raymask.cluster.pipeline.ledger_root).

    With `aggregates` (a file), the stream's windowed aggregates and continual releases run on
    the same chunks in the driver, charged to the accountant at `accountant_db`; their dead
    letters (with the message offsets) go beside that file. Their open windows live in the
    driver's memory: a run that ends releases them all, a driver that crashes loses the open
    ones (the released ones are in the file, and what was spent stays spent).
    `aggregate_options` go to the AggregateRunner (tests only: {"noise": False}).

    With `autoscale`, the worker pool grows and shrinks between rounds from the lag (the age of
    the records being written), within its bounds, and asks Ray's autoscaler for nodes when it
    grows (raymask.actors.autoscale; `_ElasticPool` says how key state moves). `workers` is the
    starting size. `worker_capacity_rps` caps each worker at that many records a second (a
    sleep per batch): tests and the scale test use it to stand for workers of a known capacity
    on a machine too small to show real ones; never set it otherwise.
    """
    pol, plan, ring = _checked(policy, stream, keyring, dead_letter_key)
    if plan.format not in ("ndjson", "protobuf", "xml"):
        raise InputError(
            f"stream {stream}: the Kafka path takes ndjson records, protobuf messages or xml "
            f"record elements, not {plan.format}"
        )
    if workers < 1 or sources < 1:
        raise InputError("workers and sources must be >= 1")
    if autoscale is not None and not autoscale.min_workers <= workers <= autoscale.max_workers:
        raise InputError(
            f"workers ({workers}) must be within the autoscale bounds "
            f"{autoscale.min_workers}..{autoscale.max_workers}"
        )
    if broker_timeout_s <= 0:
        raise InputError("broker_timeout_s must be > 0")
    call_s = min(30.0, broker_timeout_s)
    views = list(roles) if roles else list(plan.views)
    unknown = [r for r in views if r not in plan.views]
    if unknown:
        raise InputError(f"stream {stream} has no view {unknown[0]!r}")
    segregating = any(op.technique == "segregate" for r in views for op in plan.view(r).ops)
    broker = None
    if bootstrap is None:
        from raymask.cluster.broker import Broker

        broker = Broker().start()
        bootstrap = broker.bootstrap
    import ray

    from raymask.actors.sinks.kafka import KafkaSinkActor
    from raymask.actors.sources.kafka import KafkaSourceActor
    from raymask.actors.worker import MaskWorker
    from raymask.cluster.runtime import ensure_ray

    tune_malloc()
    ledger = ledger_root(state, stream) if plan.budget is not None else None
    pipeline = name or stream
    # one message per value: lines, or length-delimited frames for binary and XML values
    framing = "varint" if plan.format in ("protobuf", "xml") else "lines"
    out_framing = "raw" if plan.format == "xml" else framing
    if plan.format == "xml":
        from raymask.kernels.codecs.formats import XmlValuesFormat

        o = plan.format_options
        fmt = XmlValuesFormat(o["record"], o.get("namespaces"))
        problems = fmt.check(plan)
        if problems:
            raise PolicyError(problems)
    elif plan.format == "protobuf":
        from raymask.actors.sources.files import protobuf_format

        fmt = protobuf_format(input_topic, plan.format_options)
        problems = fmt.check(plan)
        if problems:
            raise PolicyError(problems)
    else:
        fmt = format_for(plan.format)
    group = group_id or f"raymask-{pipeline}"
    summary = KafkaRunSummary(stream, input_topic, bootstrap, views, workers, sources)
    dl_key = ring.get(dead_letter_key)
    started = ensure_ray(address)
    actors: list[Any] = []
    elastic: _ElasticPool | None = None
    lock = ledger_lock(ledger) if ledger is not None else None
    runner = None
    ok = False
    from raymask.actors.audit import Auditor

    auditor = Auditor.from_env(ring)  # RAYMASK_AUDIT=FILE turns it on
    auditor.emit("run_start", stream=stream, topic=input_topic, views=",".join(views),
                 policy_version=plan.version)  # fmt: skip
    dead_seen = 0
    leak_file = None
    if plan.leak_check is not None:  # findings: a file under the state folder, metric, trail
        base = state_base(state)
        folder = Path(base) if "://" not in base else Path(".raymask")  # a local file either way
        leak_file = LeakAudit(folder / "leaks" / f"{pipeline}.audit.ndjson")

    def on_leaks(events: list[dict]) -> None:
        if not events:
            return
        leak_file.path.parent.mkdir(parents=True, exist_ok=True)
        leak_file.write(events)
        metrics.leak_events(events)
        for e in events:
            summary.leaks[(e["view"], e["field"], e["type"])] += e["count"]
        if auditor.on:
            audit_leaks(auditor.emit, events)

    try:
        if lock is not None:
            lock.__enter__()  # one run at a time writes a stream's budgets
        opts = dict(namespace="raymask")
        cpus = {"num_cpus": autoscale.worker_cpus} if autoscale is not None else {}

        def make_worker(i: int, n: int) -> Any:
            name = f"kworker:{pipeline}:{i}"
            for _ in range(100):  # a worker just stopped may hold its name for a moment
                try:
                    return MaskWorker.options(name=name, **opts, **cpus).remote(
                        pol.model_dump(), stream, ring, fmt, 0.0, ledger, i, n,
                        worker_capacity_rps,
                    )  # fmt: skip
                except ValueError:
                    time.sleep(0.1)
            raise PipelineError(f"the actor name {name} stayed taken")

        elastic = _ElasticPool(make_worker, workers, autoscale, summary, time.perf_counter())
        pool = elastic.workers
        srcs = [
            KafkaSourceActor.options(name=f"ksource:{pipeline}:{i}", **opts).remote(
                bootstrap,
                [input_topic],
                group,
                max_records=max_poll_records,
                poll_timeout_ms=poll_ms,
                client_options={**(client_options or {}), **(consumer_options or {})},
                call_timeout_s=call_s,
                carry_headers=carry_headers,
                framing=framing,
            )  # fmt: skip
            for i in range(sources)
        ]
        sink = KafkaSinkActor.options(name=f"ksink:{pipeline}", **opts).remote(
            bootstrap, topic_template=topic_template, client_options=client_options,
            idempotent=idempotent, call_timeout_s=call_s, framing=out_framing,
        )  # fmt: skip
        dsink = KafkaSinkActor.options(name=f"kdead:{pipeline}", **opts).remote(
            bootstrap, topic_template=dead_letter_template,
            mark_group="raymask-deadletter-marks", client_options=client_options,
            idempotent=idempotent, call_timeout_s=call_s,
        )  # fmt: skip
        vsink = None
        if segregating:  # the vault: segregated values, sealed, one topic per input topic
            vsink = KafkaSinkActor.options(name=f"kvault:{pipeline}", **opts).remote(
                bootstrap, topic_template=vault_template, client_options=client_options,
                idempotent=idempotent, call_timeout_s=call_s,
            )  # fmt: skip
        actors = [*srcs, sink, dsink, *([vsink] if vsink is not None else [])]
        ray.get([w.warm.remote() for w in pool])
        parts = ray.get(srcs[0].partitions.remote(input_topic))
        if not parts:
            raise InputError(f"kafka topic {input_topic} does not exist at {bootstrap}")
        if sources > 1:
            _await_balance(srcs, parts, balance_s)
        for r in views:
            summary.topics[r] = topic_template.format(topic=input_topic, role=r)
            summary.dead_topics[r] = dead_letter_template.format(topic=input_topic, role=r)
        ray.get([sink.ensure_topic.remote(t, parts) for t in summary.topics.values()])
        ray.get([dsink.ensure_topic.remote(t, parts) for t in summary.dead_topics.values()])
        if vsink is not None:
            summary.vault_topic = vault_template.format(topic=input_topic, role="vault")
            ray.get(vsink.ensure_topic.remote(summary.vault_topic, parts))
        router = RouterCore(plan, fmt, workers)
        metrics = KafkaMetrics(stream)
        if aggregates is not None:
            from raymask.cluster.aggregate import AggregateRunner

            runner = AggregateRunner(
                pol, stream, aggregates, keyring=ring, db=accountant_db,
                dead_letter_key=dead_letter_key, **(aggregate_options or {}),
            )  # fmt: skip
            runner.expect([(input_topic, p) for p in range(parts)])
        if on_ready is not None:  # actors up, topics there: the first poll comes next
            on_ready()
        t0 = time.perf_counter()
        idle_since = time.monotonic()
        down_since: float | None = None
        pending: dict[int, dict[tuple[str, int], int]] = {}  # commits not yet through, per source
        futs = [(i, s.poll.remote(poll_ms)) for i, s in enumerate(srcs)]
        writing: _Writing | None = None  # the round whose writes are in flight
        while not (should_stop and should_stop()):
            if max_records is not None and summary.records_in >= max_records:
                break
            polled: list[tuple[int, PartitionChunk]] = []
            got, futs = futs, [(i, s.poll.remote(poll_ms)) for i, s in enumerate(srcs)]
            # the next poll runs while this one is masked and written; what it reads is
            # committed only after its own round, so stopping early loses nothing
            failed = None
            for i, f in got:
                try:
                    polled.extend((i, c) for c in ray.get(f))
                except ray.exceptions.RayActorError:
                    summary.source_failures += 1  # it restarts and resumes from its commits
                except ray.exceptions.RayTaskError as exc:
                    if not isinstance(getattr(exc, "cause", None), PipelineError):
                        raise
                    summary.source_failures += 1  # e.g. it could not join: the broker is away
                    failed = str(exc.cause)
            if not polled and writing is not None:  # an idle input: finish the last round
                _finish_writes(writing, srcs, views, summary, metrics, broker_timeout_s, pending)
                writing = None
                if progress is not None:
                    progress(summary)
            if not polled:
                summary.lag_s = 0.0  # nothing waits (or the broker is away: no news of lag)
            lag = summary.lag_s
            if elastic.step(lag):
                pool = elastic.workers
                router = RouterCore(plan, fmt, len(pool))
            metrics.pool(len(pool), lag)
            if not polled:
                now = time.monotonic()
                if failed or not _reachable(srcs):  # a dead broker is not an idle topic
                    summary.broker_outages += 1
                    down_since = down_since or now
                    if now - down_since > broker_timeout_s:
                        why = f"last: {failed}" if failed else "no metadata answer to the sources"
                        raise _broker_gone(summary, broker_timeout_s, why)
                    idle_since = now
                    continue
                down_since = None
                if now - idle_since > idle_s:
                    break
                continue
            idle_since, down_since = time.monotonic(), None
            # this round's masking runs while the last round's writes finish; its own writes go
            # out only after those (see _submit_writes)
            jobs = _start_masks(polled, router, pool, views)
            if writing is not None:
                _finish_writes(writing, srcs, views, summary, metrics, broker_timeout_s, pending)
            writing = _submit_writes(jobs, sink, dsink, views, stream, dl_key, summary,
                                     leaks=on_leaks if plan.leak_check is not None else None,
                                     vault=vsink)  # fmt: skip
            dead_now = sum(summary.dead.values())
            if dead_now != dead_seen:
                auditor.emit("dead_letters", stream=stream, count=dead_now - dead_seen,
                             topic=input_topic, round=summary.rounds)  # fmt: skip
                dead_seen = dead_now
            if runner is not None:
                for _, ch in polled:
                    if len(ch):
                        runner.chunk(fmt, ch.data, 0, offsets=ch.offsets,
                                     source=(ch.topic, ch.partition))  # fmt: skip
            summary.rounds += 1
            summary.seconds = time.perf_counter() - t0  # up to the last record, not the idle wait
            if progress is not None:
                progress(summary)
        if writing is not None:
            _finish_writes(writing, srcs, views, summary, metrics, broker_timeout_s, pending)
        _flush_commits(srcs, pending, summary)
        ok = True
    except ray.exceptions.RayActorError:
        raise PipelineError("an actor of the Kafka pipeline died; see the Ray logs") from None
    except ray.exceptions.RayTaskError as exc:  # our own errors raised inside an actor
        cause = getattr(exc, "cause", None)
        if isinstance(cause, (PipelineError, InputError)):
            raise type(cause)(str(cause)) from None
        raise
    finally:
        if runner is not None:
            summary.aggregates = runner.close(final=ok)
        if elastic is not None:
            elastic.close()
            actors += elastic.workers
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
        if broker is not None:
            broker.stop()
        if lock is not None:
            lock.__exit__()
        auditor.emit("run_end", stream=stream, completed=ok, records_in=summary.records_in,
                     dead_letters=sum(summary.dead.values()))  # fmt: skip
        auditor.close()
    if not summary.balanced:
        raise PipelineError(
            f"records in ({summary.records_in}) != written + skipped + dead for a view "
            f"({dict(summary.written)}, {dict(summary.skipped)}, {dict(summary.dead)})"
        )
    return summary


def _await_balance(srcs: list, partitions: int, limit_s: float) -> None:
    """Start every source's consumer and wait until the group has given each of them some
    partitions (as many as there are to share) and all partitions are held. tansu balances a
    group in about 4 s. Past `limit_s` the run goes on as it is: polls work either way."""
    import ray

    ray.get([s.assignment.remote() for s in srcs])  # starts every consumer: they join now
    want = min(len(srcs), partitions)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        held = ray.get([s.assignment.remote() for s in srcs])
        owners = sum(1 for a in held if a)
        if owners >= want and len({tp for a in held for tp in a}) >= partitions:
            return
        time.sleep(0.2)


def _reachable(srcs: list) -> bool:
    """Whether every source's consumer gets a metadata answer from the broker."""
    import ray

    try:
        return all(ray.get([s.reachable.remote() for s in srcs]))
    except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError):
        return False  # a source that cannot even start its consumer


def _commit(
    srcs: list, commits: dict[int, dict[tuple[str, int], int]],
    pending: dict[int, dict[tuple[str, int], int]], summary: KafkaRunSummary,
    get: Callable[[Any], Any] | None = None,
) -> None:  # fmt: skip
    """Commit each source's offsets, with whatever an earlier commit left pending (a newer
    offset of a partition replaces the pending one). A commit the broker did not answer stays
    pending for the next round; one refused (the partitions moved in a rebalance, or the source
    died) is dropped: the records come again and the sinks skip them. (`get`: ray.get, or a
    stand-in in unit tests.)"""
    import ray

    get = get or ray.get
    for si in sorted(set(commits) | set(pending)):
        offsets = {**pending.pop(si, {}), **commits.get(si, {})}
        try:
            get(srcs[si].commit.remote(offsets))
        except ray.exceptions.RayTaskError as exc:
            summary.source_failures += 1
            if isinstance(getattr(exc, "cause", None), BrokerUnreachable):
                pending[si] = offsets
        except ray.exceptions.RayActorError:
            summary.source_failures += 1


def _flush_commits(
    srcs: list, pending: dict[int, dict[tuple[str, int], int]], summary: KafkaRunSummary,
    get: Callable[[Any], Any] | None = None,
) -> None:  # fmt: skip
    """At the end of a run: one more try for the commits still pending; those that fail again
    are counted (their records are read again by the next run, and skipped there)."""
    if pending:
        _commit(srcs, {}, pending, summary, get)
    summary.uncommitted = sum(len(v) for v in pending.values())


@dataclass
class _Writing:
    """A round whose writes are in flight."""

    jobs: list
    writes: list  # (future, resend, role, kind)
    dead: Counter  # role -> dead letters of the round


# A round is three steps: _start_masks (route, send the workers their rows), _submit_writes
# (take the results, send records, dead letters and vault rows to the sinks), _finish_writes
# (wait for the acknowledgements, count, commit the sources' offsets). run_kafka overlaps them:
# round k+1 is masked while round k's writes finish, and round k+1's writes go out after.


def _start_masks(
    polled: list[tuple[int, PartitionChunk]], router: RouterCore, pool: list, views: list[str]
) -> list[tuple[int, PartitionChunk, Routed | None, list]]:
    """Route each chunk and send each worker its rows (every view at once); nothing waits."""
    import ray

    jobs = []
    for si, ch in polled:
        routed = router.route(ch.data, 0) if len(ch) else None  # line i = message i of the chunk
        calls: list = []  # one call per worker: all views of its rows
        if routed is not None:
            ref = ray.put(routed.batch)
            calls = [
                (
                    pool[wi].process_views.remote(ref, views, idx),
                    lambda wi=wi, idx=idx, ref=ref: _resend_to(pool, wi, ref, views, idx),
                )
                for wi, idx in enumerate(routed.shards)
                if idx is not None
            ]
        jobs.append((si, ch, routed, calls))
    return jobs


def _submit_writes(
    jobs: list, sink: Any, dsink: Any, views: list[str], stream: str, dl_key: Any,
    summary: KafkaRunSummary, max_record_bytes: int = 1 << 20,
    leaks: Callable[[list[dict]], None] | None = None, vault: Any | None = None,
) -> _Writing:  # fmt: skip
    """Take the workers' results of a round and send its writes (records, dead letters, vault).
    Call only once the round before is written: a sink that restarts must see a round's writes
    before the next round's, or its skip rule would drop the earlier ones."""
    writes: list[tuple[Any, Callable[[], Any], str, str]] = []  # future, resend, role, kind
    dead_count: Counter = Counter()
    for si, ch, routed, calls in jobs:
        where = f"{ch.topic}[{ch.partition}]"
        summary.records_in += len(ch) + len(ch.bad)
        summary.source_records[si] += len(ch) + len(ch.bad)
        summary.bytes_in += ch.nbytes
        common = [DeadLetter(b.offset, b.reason, b.raw or b"", None) for b in ch.bad]
        if routed is not None:
            common += [
                DeadLetter(int(ch.offsets[d.line]), d.reason, d.raw, d.field) for d in routed.dead
            ]
        per_worker = _get_with_resend(calls, summary) if routed is not None else []
        if leaks is not None and per_worker:  # the leak monitor's findings, every view
            leaks(leak_events(stream, [o for res in per_worker for o in res]))
        if vault is not None and per_worker:
            pieces, offs_v, rows_v = vault_messages(routed, ch.offsets, per_worker)
            if pieces:
                args_v = (ch.topic, ch.partition, "vault", pieces, offs_v, None)
                writes.append((vault.write.remote(*args_v), lambda a=args_v: vault.write.remote(*a),
                               "vault", "vault"))  # fmt: skip
                summary.vault_rows += rows_v
        for vi, role in enumerate(views):
            dead = list(common)
            if routed is not None:
                outs = [res[vi] for res in per_worker]
                recs, rows, wdead = _collect(routed, outs)
                recs, rows, big = _drop_oversized(recs, rows, max_record_bytes)
                wdead += big
                src = routed.lines[rows]  # message index in the chunk
                offs, stamps = ch.offsets[src], ch.timestamps[src]
                for r, reason, fld in wdead:
                    s, e = int(routed.starts[r]), int(routed.ends[r])
                    dead.append(
                        DeadLetter(
                            int(ch.offsets[routed.lines[r]]), reason, bytes(ch.data[s:e]), fld
                        )
                    )
                if len(offs):
                    hdrs = None if ch.headers is None else [ch.headers[j] for j in src.tolist()]
                    hdrs = _with_dp_headers(hdrs, outs, rows, routed.records)
                    args = (ch.topic, ch.partition, role, recs, offs, stamps, hdrs)
                    writes.append(
                        (
                            sink.write.remote(*args),
                            lambda a=args: sink.write.remote(*a),
                            role,
                            "out",
                        )
                    )
            if dead:
                dead.sort(key=lambda d: d.line)
                for d in dead:
                    summary.dead_reasons[d.reason] += 1
                entries = [json.dumps(seal(stream, dl_key, d, where)).encode() for d in dead]
                offs_d = np.array([d.line for d in dead], np.int64)
                args = (ch.topic, ch.partition, role, entries, offs_d, None)
                writes.append(
                    (dsink.write.remote(*args), lambda a=args: dsink.write.remote(*a), role, "dead")
                )
                summary.dead[role] += len(dead)
                dead_count[role] += len(dead)
    return _Writing(jobs, writes, dead_count)


def _finish_writes(
    w: _Writing, srcs: list, views: list[str], summary: KafkaRunSummary,
    metrics: KafkaMetrics | None = None, broker_timeout_s: float = 60.0,
    pending: dict[int, dict[tuple[str, int], int]] | None = None,
) -> None:  # fmt: skip
    """Wait for a round's writes (resending what a dead sink lost), count, commit."""
    results = _get_with_resend(
        [(f, r) for f, r, _, _ in w.writes], summary, transient_s=broker_timeout_s
    )
    now_ms = time.time() * 1000.0
    stamps = [ch.timestamps.min() for _, ch, _, _ in w.jobs if len(ch.timestamps)]
    summary.lag_s = max(0.0, (now_ms - float(min(stamps))) / 1e3) if stamps else 0.0
    written: Counter = Counter()
    skipped: Counter = Counter()
    for (_, _, role, kind), res in zip(w.writes, results, strict=True):
        if kind == "out":
            written[role] += res.written
            skipped[role] += res.skipped
    summary.written.update(written)
    summary.skipped.update(skipped)
    for _si, ch, routed, _ in w.jobs:
        if routed is not None and len(ch.timestamps):
            summary.latencies_ms.append(now_ms - ch.timestamps.astype(np.float64))
        if metrics is not None and len(ch.timestamps):
            metrics.chunk(ch.topic, ch.partition, (now_ms - float(ch.timestamps.min())) / 1e3,
                          ch.next_offset)  # fmt: skip
    if metrics is not None:
        for role in views:
            metrics.view(role, written[role], skipped[role], w.dead[role])
    commits: dict[int, dict[tuple[str, int], int]] = {}
    for si, ch, _, _ in w.jobs:
        commits.setdefault(si, {})[(ch.topic, ch.partition)] = ch.next_offset
    _commit(srcs, commits, {} if pending is None else pending, summary)
