"""The file pipeline: source -> KeyRouter -> MaskWorker actors -> sink, with dead letters.

`run_pipeline` drives any set of workers with a `process(batch, role)` method: Ray actors in
production (`mask_file`), plain `MaskCore` objects in unit tests. Backpressure: at most
`max_in_flight` chunks are out at once; the reader waits for the oldest before reading more, so
memory stays bounded when workers fall behind. Output keeps the input order (per-key order
follows), and records in = records out + dead letters is checked at the end of every run.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa

from raymask.actors.audit import LeakAudit, audit_leaks, leak_events
from raymask.actors.control import ControlCore, key_shapes, make_control_actor
from raymask.actors.ledger import ledger_lock, state_base
from raymask.actors.metrics import PipelineMetrics
from raymask.actors.router import DeadLetter, FileSpan, Routed, RouterCore, SpanChunk, span_cuts
from raymask.actors.sinks.deadletters import DEFAULT_KEY_ID, DeadLetterWriter
from raymask.actors.sources.files import FileSource
from raymask.actors.worker import MaskCore, MaskOutput, merge_outputs
from raymask.errors import InputError, PipelineError, PolicyError
from raymask.memory import tune_malloc
from raymask.policy.compile import StreamPlan, compile_stream
from raymask.policy.keys import Keyring
from raymask.policy.loader import load_policy, validate_data
from raymask.policy.schema import Policy

__all__ = [
    "Job",
    "RunSummary",
    "prepare",
    "run_job",
    "mask_file",
    "replay_dead_letters",
    "run_pipeline",
    "default_dead_letter_path",
]


@dataclass
class RunSummary:
    stream: str
    role: str
    policy_version: int
    workers: int
    records_in: int = 0
    records_out: int = 0
    dead_letters: int = 0
    bytes_in: int = 0
    seconds: float = 0.0
    techniques: dict[str, str] = field(default_factory=dict)  # field -> technique in this view
    changed: Counter = field(default_factory=Counter)  # field -> values changed
    dead_reasons: Counter = field(default_factory=Counter)  # reason -> count
    versions: Counter = field(default_factory=Counter)  # policy version -> records masked by it
    pipeline: str = ""  # the name `raymask policy push --pipeline` finds it by
    stage_seconds: Counter = field(default_factory=Counter)  # decode, route, mask, encode, write
    latencies: list = field(default_factory=list)  # seconds from routing a chunk to its output
    resent: int = 0  # batches sent again after their worker died
    resizes: list = field(default_factory=list)  # (records in before the resize, new pool size)
    span_chunks: int = 0  # chunks sent to the workers as file spans, not routed by key
    # local DP: records carrying noised values, records whose subject's allowance was used up
    # (noised fields written null), and the largest epsilon one record spent in this view
    dp_records: int = 0
    dp_suppressed: int = 0
    dp_max_epsilon: float = 0.0
    ledger: str | None = None  # where the per-subject budgets are checkpointed
    detected: Counter = field(default_factory=Counter)  # unknown fields: type -> spans masked
    leaks: Counter = field(default_factory=Counter)  # leak monitor: (field, type) -> spans found
    leak_sampled: int = 0  # records the leak monitor scanned
    audit_file: str | None = None  # where the leak monitor's events went (when there were any)
    aggregates: Any = None  # AggregateSummary when the run also released DP aggregates
    vault: str | None = None  # the folder of segregated values, when the view has any
    vault_rows: int = 0

    def latency(self, q: float) -> float:
        """A percentile (0-100) of the per-chunk latency."""
        return float(np.percentile(self.latencies, q)) if self.latencies else 0.0

    output: str = ""
    dead_letter_file: str | None = None

    @property
    def records_per_second(self) -> float:
        return self.records_in / self.seconds if self.seconds > 0 else 0.0

    @property
    def balanced(self) -> bool:
        return self.records_in == self.records_out + self.dead_letters


def ledger_root(state: str | Path | None, stream: str) -> str:
    """Where a stream's per-subject budgets live: under `state` (a folder or an s3:// URI), else
    $RAYMASK_STATE, else ~/.raymask/state; then ledger/STREAM. On a cluster use shared storage
    (s3://...), so a worker restarted on another node finds its shard's files."""
    return f"{state_base(state)}/ledger/{stream}"


def default_dead_letter_path(output: str) -> str:
    return "raymask.deadletters.ndjson" if output == "-" else f"{output}.deadletters.ndjson"


MAX_RESENDS = 5  # per batch: a run fails after more deaths than this in a row ...
RESEND_WINDOW_S = 60.0  # ... spread over at least this long (a loaded machine restarts slowly)


def resend_backoff(deaths: int, first_death: float) -> None:
    """Wait before sending a call again to an actor that died `deaths` times in a row since
    `first_death` (monotonic); raise PipelineError once it keeps dying past the limits."""
    if deaths > MAX_RESENDS and time.monotonic() - first_death > RESEND_WINDOW_S:
        raise PipelineError("an actor kept dying; see the Ray logs")
    time.sleep(min(0.1 * deaths, 2.0))


ProgressFn = Callable[[int, int, int], None]  # (records so far, bytes so far, bytes total)


ROUTINGS = ("auto", "key", "span")
# chunks in flight when they go as file spans (a file job, for throughput): each worker has work
# queued while the driver writes (2 in flight: 350k records/s on 2 workers here, 4: 384k; by key
# 2, for latency; docs/benchmarks.md)
SPAN_IN_FLIGHT = 4


def _collect(
    routed: Routed,
    data: np.ndarray,
    outputs: Sequence[MaskOutput],
    summary: RunSummary,
    version: int,
    fmt: Any = None,
) -> tuple[Any, list[DeadLetter], Any]:
    """(masked records, dead letters, what to write: the records, and for XML the tails of the
    dead records in their places). A chunk sent as file spans (`SpanChunk`) gets its record
    count here, and its dead letters' lines from where each span starts."""
    spans = isinstance(routed, SpanChunk)
    dead = list(routed.dead)
    line = routed.base_line if spans else 0
    for o in outputs:
        if spans:
            dead.extend(replace(d, line=d.line + line) for d in o.span_dead or ())
            line += o.span_lines
            routed.records += o.span_records
        for r, reason, fld in zip(o.dead_rows, o.dead_reasons, o.dead_fields, strict=True):
            s, e = int(routed.starts[r]), int(routed.ends[r])
            dead.append(DeadLetter(int(routed.lines[r]), reason, bytes(data[s:e]), fld))
        for k, v in o.counts.items():
            summary.changed[k] += v
        if o.privacy is not None:
            spent = o.privacy.epsilon
            summary.dp_records += int(np.count_nonzero(spent))
            summary.dp_suppressed += o.privacy.suppressed
            if len(spent):
                summary.dp_max_epsilon = max(summary.dp_max_epsilon, float(spent.max()))
        summary.detected.update(o.detected)
        summary.leak_sampled += o.leak_sampled
        for fld, typ, c in o.leaks:
            summary.leaks[(fld, typ)] += c
        if o.policy_version != version:
            raise PipelineError(
                f"a worker masked a batch with policy version {o.policy_version}, not {version}"
            )
    if spans:  # one span per worker, in input order: the records are in order already
        records = pa.chunked_array([o.records for o in outputs], pa.large_binary())
        return records, sorted(dead, key=lambda d: d.line), records
    records, rows = merge_outputs(list(outputs))
    written = records
    if fmt is not None and fmt.keeps_tails and len(rows) < routed.records:
        written = _with_tails(fmt, routed, data, records, rows)
    return records, sorted(dead, key=lambda d: d.line), written


def _with_tails(
    fmt: Any, routed: Routed, data: np.ndarray, records: pa.Array, rows: np.ndarray
) -> pa.Array:
    """The emitted records with, in the places of the dead ones, what of them stays in the
    output (XML: the markup after the record element, so the document stays whole)."""
    dead_rows = np.setdiff1d(np.arange(routed.records, dtype=np.int64), rows)
    tails = [
        fmt.tail(bytes(data[int(routed.starts[r]) : int(routed.ends[r])])) for r in dead_rows
    ]  # error path only: one call per dead record
    both = pa.concat_arrays([records.cast(pa.large_binary()), pa.array(tails, pa.large_binary())])
    order = np.argsort(np.concatenate([rows, dead_rows]), kind="stable")
    return both.take(pa.array(order))


def _write_records(out: IO[bytes], records: pa.Array | pa.ChunkedArray) -> None:
    if isinstance(records, pa.ChunkedArray):
        for part in records.chunks:
            _write_records(out, part)
        return
    if len(records) == 0:
        return
    bufs = records.buffers()
    offs = np.frombuffer(bufs[1], np.int64)[records.offset : records.offset + len(records) + 1]
    out.write(memoryview(bufs[2])[int(offs[0]) : int(offs[-1])])


class VaultWriter:
    """Segregated values, as Parquet parts in a folder (one per chunk that has any): the vault
    `raymask reveal --vault` reads. Written after the chunk's records, so a reference in the
    output has its vault row by the end of the run."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.parts = 0
        self.rows = 0

    def write(self, tables: list[pa.Table], tag: str | None = None) -> None:
        """One part for `tables`; `tag` (default: the pid) keeps writers apart in one folder."""
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return
        import pyarrow.parquet as pq

        self.folder.mkdir(parents=True, exist_ok=True)
        t = pa.concat_tables(tables).drop_columns(["row"])
        name = f"part-{tag or os.getpid()}-{self.parts:06d}.parquet"
        pq.write_table(t, self.folder / f".{name}.tmp")
        os.replace(self.folder / f".{name}.tmp", self.folder / name)  # never a half part
        self.parts += 1
        self.rows += t.num_rows


def run_pipeline(
    plan: StreamPlan,
    source: FileSource,
    workers: Sequence[Any],
    submit: Callable[[Any, Any, np.ndarray, str | None], Any],
    fetch: Callable[[list[Any]], list[MaskOutput]],
    out: IO[bytes],
    dead_writer: DeadLetterWriter,
    role: str | None,
    summary: RunSummary,
    *,
    max_in_flight: int = 2,
    progress: ProgressFn | None = None,
    poll: Callable[[], tuple[int, int]] | None = None,
    switch: Callable[[int], tuple[StreamPlan, Callable[[Any], Any]]] | None = None,
    metrics: Any | None = None,
    recover: Callable[[list[Any], list[tuple[int, Any, np.ndarray]], int], list[MaskOutput]]
    | None = None,
    resize: Callable[[int, int], list[Any]] | None = None,
    share: Callable[[pa.RecordBatch], Any] | None = None,
    tap: Callable[[Any], None] | None = None,
    audit: Callable[..., None] | None = None,
    vault: VaultWriter | None = None,
    leak_audit: Any | None = None,
    spans: Callable[[], bool] | None = None,
) -> RunSummary:
    """Stream `source` through `workers`; `submit(worker, chunk, rows, role)` starts one worker's
    share of a chunk, `fetch` waits for a chunk's results. `share(batch)` turns a routed chunk into
    what workers receive (on Ray: one object-store reference that every worker reads in place).

    Between chunks, `poll()` gives (running policy version, desired pool size, 0 = as is), one
    look at the control per chunk.

    Live policy changes: when the version changed, `switch(version)` returns the new plan and a function that hands the policy to one
    worker. Each worker gets it before its next batch (calls to one actor run in order), so every
    chunk is masked by exactly one version, and versions never go backwards.

    Worker failures: with `recover`, a chunk's results are fetched through it, which may resend a
    batch whose worker died (see `_run`). A chunk is written only once all its batches are back,
    so a resent batch never duplicates records.

    Resizing: when the desired size differs from the pool's, the driver finishes the chunks in
    flight, `resize(n, version)` gives the new pool (new workers on the driver's version), and routing continues by jump hash over n workers,
    which moves the fewest keys. Output is written in input order, so per-key order holds.

    `audit(kind, **fields)` records each policy version applied and each chunk's dead-letter
    count (raymask.actors.audit; counts and versions only).

    File spans: while `spans()` says so (a stream with no per-key state, and every worker on
    this machine), a chunk of a plain file is not routed: it is cut into one span of whole
    records per worker, and each worker reads its span from the file itself. Nothing of a key
    lives on a worker then, so sharding by key buys nothing: per-key order holds because the
    output is written in input order, as it is when routing by key. What it saves is the
    router's key scan, the chunk's trip through the object store and the merge by row (on 2
    cores, most of the driver's work; docs/benchmarks.md).
    """
    tune_malloc()
    router = RouterCore(plan, source.format, len(workers))
    out.write(source.format.header(plan.tree, plan.unknown_fields == "drop", plan.named))
    pending: deque[tuple] = deque()  # routed, data, futures, version, started, bytes, jobs
    t0 = time.perf_counter()
    version = plan.version

    def drain_one() -> None:
        routed, data, futures, v, started, nbytes, jobs = pending.popleft()
        outputs = recover(futures, jobs, v) if recover is not None else fetch(futures)
        before = dict(summary.changed)
        records, dead, written = _collect(routed, data, outputs, summary, v, source.format)
        summary.versions[v] += len(records)
        for k, sec in routed.seconds.items():
            summary.stage_seconds[k] += sec
        for o in outputs:
            for k, sec in o.seconds.items():
                summary.stage_seconds[k] += sec
        summary.latencies.append(time.perf_counter() - started)
        if metrics is not None:
            metrics.chunk(
                records_in=routed.records, records_out=len(records), dead=len(dead), nbytes=nbytes,
                seconds=time.perf_counter() - started, in_flight=len(pending),
                changed={k: n - before.get(k, 0) for k, n in summary.changed.items()},
                techniques=summary.techniques, version=v,
            )  # fmt: skip
        if leak_audit is not None or metrics is not None or audit is not None:
            events = leak_events(plan.stream, outputs)
            if leak_audit is not None:
                leak_audit.write(events)
            if audit is not None:  # the tamper-evident trail gets the same findings
                audit_leaks(audit, events)
            if metrics is not None and hasattr(metrics, "leak_events"):
                detected: Counter = Counter()
                for o in outputs:
                    detected.update(o.detected)
                metrics.leak_events(events, detected)
        tw = time.perf_counter()
        _write_records(out, written)
        if source.follow:
            out.flush()
        summary.stage_seconds["write"] += time.perf_counter() - tw
        dead_writer.write(dead)
        if vault is not None:
            vault.write([o.vault for o in outputs if o.vault is not None])
        if audit is not None and dead:
            audit("dead_letters", stream=plan.stream, count=len(dead), policy_version=v,
                  first_line=int(dead[0].line))  # fmt: skip
        summary.records_in += routed.records
        summary.records_out += len(records)
        summary.dead_letters += len(dead)
        for d in dead:
            summary.dead_reasons[d.reason] += 1
        if progress:
            progress(summary.records_in, summary.bytes_in, source.bytes_total)

    workers = list(workers)
    for chunk in source.chunks():
        if chunk is None:  # a followed input is idle: finish the chunks in flight
            while pending:
                drain_one()
            continue
        latest, n = poll() if poll is not None else (version, 0)
        if resize is not None and n and n != len(workers):
            while pending:
                drain_one()
            workers = resize(n, version)
            router = RouterCore(router.plan, source.format, len(workers))
            summary.resizes.append((summary.records_in, len(workers)))
        if switch is not None and latest != version:
            new_plan, hand_over = switch(latest)
            fetch([hand_over(w) for w in workers])
            router = RouterCore(new_plan, source.format, len(workers))
            if audit is not None:
                audit("policy_applied", stream=plan.stream, policy_version=latest,
                      previous=version, at_record=summary.records_in)  # fmt: skip
            version = latest
        if tap is not None:  # e.g. the stream's DP aggregates, on the same chunks
            tap(chunk)
        t_route = time.perf_counter()
        # a version pushed mid-run may bring per-subject budgets: from then on, by key
        if (
            chunk.offset is not None
            and spans is not None
            and router.plan.budget is None
            and spans()
        ):
            cuts = span_cuts(source.format, chunk.data, len(workers))
            path = os.path.abspath(source.path)
            jobs = [
                (wi, FileSpan(path, chunk.offset + a, b - a), None)
                for wi, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))
                if b > a
            ]
            routed = SpanChunk(chunk.base_line, {"route": time.perf_counter() - t_route})
            summary.span_chunks += 1
        else:
            routed = router.route(chunk.data, chunk.base_line)
            shared = share(routed.batch) if share is not None else routed.batch
            jobs = [(wi, shared, idx) for wi, idx in enumerate(routed.shards) if idx is not None]
        futures = [submit(workers[wi], b, idx, role) for wi, b, idx in jobs]
        pending.append((routed, chunk.data, futures, version, t_route, chunk.nbytes, jobs))
        summary.bytes_in += chunk.nbytes
        while len(pending) > max_in_flight:
            drain_one()
    while pending:
        drain_one()
    summary.seconds = time.perf_counter() - t0
    if not summary.balanced:
        raise PipelineError(
            f"records in ({summary.records_in}) != out ({summary.records_out}) + dead ({summary.dead_letters})"
        )
    return summary


def _checked(
    policy: str | Path | Policy, stream: str, keyring: Keyring | None, dead_letter_key: str
) -> tuple[Policy, StreamPlan, Keyring]:
    """Policy compiled for `stream`, and a keyring holding every key it and the dead letters need."""
    pol, source_name = _load(policy)
    plan = compile_stream(pol, stream, source_name)
    if not isinstance(policy, Policy):
        plan = _relative_to(plan, Path(policy).parent)
    ring = keyring if keyring is not None else Keyring.from_env()
    ring.require(plan.key_ids())
    plan.check_keys(ring)
    ring.get(dead_letter_key)
    return pol, plan, ring


def _relative_to(plan: StreamPlan, folder: Path) -> StreamPlan:
    """The plan with the files its format options name (a protobuf `descriptor_set`, `proto`,
    `include`) taken relative to the policy file's folder when they are relative paths."""
    import dataclasses

    o = plan.format_options
    if plan.format != "protobuf" or not o:
        return plan

    def fix(p: str | None) -> str | None:
        return p if p is None or Path(p).is_absolute() else str(folder / p)

    opts = {**o, "descriptor_set": fix(o.get("descriptor_set")), "proto": fix(o.get("proto")),
            "include": [fix(i) for i in o.get("include") or []]}  # fmt: skip
    return dataclasses.replace(plan, format_options=opts)


def _load(policy: str | Path | Policy) -> tuple[Policy, str]:
    if isinstance(policy, Policy):
        return policy, "<policy>"
    return load_policy(policy), Path(policy).name


@dataclass
class Job:
    """A checked masking job: policy compiled, keys present, input open. Nothing has moved yet."""

    policy: Policy
    plan: StreamPlan
    keyring: Keyring
    source: FileSource
    dead_letter_key: str


def prepare(
    policy: str | Path | Policy,
    stream: str,
    input: str | Path,
    *,
    keyring: Keyring | None = None,
    dead_letter_key: str = DEFAULT_KEY_ID,
    chunk_bytes: int = 4 << 20,
    follow: bool = False,
) -> Job:
    """Check everything that can fail before data moves; PolicyError, KeyringError or InputError.

    With `follow`, the input is tailed like `tail -f` until `job.source.stop()`."""
    pol, plan, ring = _checked(policy, stream, keyring, dead_letter_key)
    src = FileSource(
        str(input), plan.format, delimiter=plan.delimiter, chunk_bytes=chunk_bytes, follow=follow,
        options=plan.format_options,
    )  # fmt: skip
    _check_format(src, plan)
    return Job(pol, plan, ring, src, dead_letter_key)


def _check_format(src: FileSource, plan: StreamPlan) -> None:
    """PolicyError for what the stream's format cannot do with this plan (XML and Protobuf
    field paths, techniques that cannot write a protobuf number); the input is closed."""
    problems = src.format.check(plan)
    if problems:
        src.close()
        raise PolicyError(problems)


def run_job(
    job: Job,
    output: str | Path,
    *,
    role: str | None = None,
    workers: int = 2,
    address: str | None = None,
    dead_letters: str | Path | None = None,
    progress: ProgressFn | None = None,
    local: bool = False,
    name: str | None = None,
    control: ControlCore | None = None,
    throttle_s: float = 0.0,
    state: str | Path | None = None,
    aggregates: str | Path | None = None,
    accountant_db: str | Path | None = None,
    routing: str = "auto",
) -> RunSummary:
    """Run a prepared job (see `mask_file`). With `aggregates` (a file), the stream's windowed
    DP aggregates run on the same chunks, charged to the accountant at `accountant_db`. `throttle_s` makes every worker sleep that long per
    batch: fault injection for backpressure tests, never for production."""
    if workers < 1:
        raise InputError("workers must be >= 1")
    return _run(job.policy, job.plan, job.source, str(output), role, workers, address, job.keyring,
                dead_letters, job.dead_letter_key, progress, local, name, control, throttle_s,
                state=state, aggregates=aggregates, accountant_db=accountant_db,
                routing=routing)  # fmt: skip


def mask_file(
    policy: str | Path | Policy,
    stream: str,
    input: str | Path,
    output: str | Path,
    *,
    role: str | None = None,
    workers: int = 2,
    address: str | None = None,
    keyring: Keyring | None = None,
    dead_letters: str | Path | None = None,
    dead_letter_key: str = DEFAULT_KEY_ID,
    chunk_bytes: int = 4 << 20,
    progress: ProgressFn | None = None,
    local: bool = False,
    name: str | None = None,
    state: str | Path | None = None,
    routing: str = "auto",
) -> RunSummary:
    """Mask a file (NDJSON or CSV; '-' for stdin/stdout) on Ray and return the run's summary.

    Starts an embedded local Ray unless `address` / RAY_ADDRESS names a cluster, or Ray is already
    initialised in this process. `local=True` runs the workers in-process without Ray (for tests
    and tiny inputs). Raises PolicyError, KeyringError or InputError before any data moves.
    Dead letters go to `dead_letters` (default: OUTPUT.deadletters.ndjson). While it runs, the
    pipeline takes new policy versions through `push_policy(name, ...)` (name: default the
    stream's name). A policy with a `budget` keeps its per-subject ledger under `state` (see
    `ledger_root`).

    `routing`: "key" sends every record of a key to one worker, through the object store;
    "span" and "auto" (the default) send a plain NDJSON file's chunks as file spans, one per
    worker, when the stream keeps no per-key state (no `budget`) and, on Ray, every worker runs
    on this machine (see `run_pipeline`); otherwise by key. In-process (`local`), only "span"
    sends spans.
    """
    job = prepare(
        policy,
        stream,
        input,
        keyring=keyring,
        dead_letter_key=dead_letter_key,
        chunk_bytes=chunk_bytes,
    )
    return run_job(job, output, role=role, workers=workers, address=address, dead_letters=dead_letters,
                   progress=progress, local=local, name=name, state=state, routing=routing)  # fmt: skip


def replay_dead_letters(
    file: str | Path,
    policy: str | Path | Policy,
    stream: str,
    output: str | Path,
    *,
    role: str | None = None,
    workers: int = 1,
    address: str | None = None,
    keyring: Keyring | None = None,
    dead_letters: str | Path | None = None,
    dead_letter_key: str = DEFAULT_KEY_ID,
    local: bool = False,
) -> RunSummary:
    """Send the records of a dead-letter file through `policy` again.

    Records are decrypted in memory only. Those that fail again go to a new dead-letter file
    (default: OUTPUT.deadletters.ndjson), with line numbers counted within the replay.
    """
    from raymask.actors.sinks.deadletters import read_dead_letters

    pol, plan, ring = _checked(policy, stream, keyring, dead_letter_key)
    entries = [d for d in read_dead_letters(file, ring) if d.stream == stream]
    header = b""
    if plan.format == "csv":
        names = {d.csv_header for d in entries if d.csv_header}
        if len(names) > 1:
            raise InputError(f"{file}: entries come from CSV inputs with different headers")
        if not names and entries:
            raise InputError(f"{file}: CSV entries carry no header; cannot replay")
        header = (names.pop() + "\n").encode() if names else b""
    if plan.format == "xml":  # the record elements inside the record path's ancestors
        from raymask.kernels.codecs.xml import replay_document

        o = plan.format_options
        body = replay_document([d.raw for d in entries], o["record"], o.get("namespaces") or {})
    elif plan.format == "protobuf":  # each entry is a whole length-delimited frame
        body = b"".join(d.raw for d in entries)
    else:
        body = header + b"".join(d.raw.rstrip(b"\r\n") + b"\n" for d in entries)
    if plan.format == "csv" and not entries:
        return RunSummary(stream, plan.view(role).role, plan.version, workers, output=str(output))
    src = FileSource.from_bytes(
        body, plan.format, delimiter=plan.delimiter, name=str(file), options=plan.format_options
    )
    _check_format(src, plan)
    return _run(
        pol,
        plan,
        src,
        str(output),
        role,
        workers,
        address,
        ring,
        dead_letters,
        dead_letter_key,
        None,
        local,
    )


def _run(pol: Policy, plan: StreamPlan, src: FileSource, *args: Any, **kwargs: Any) -> RunSummary:
    """`_run_locked` holding the stream's ledger for the run when the policy has budgets."""
    if plan.budget is None:
        return _run_locked(pol, plan, src, *args, **kwargs)
    state = kwargs.get("state")  # callers pass it by name
    try:
        lock = ledger_lock(ledger_root(state, plan.stream)).__enter__()
    except PipelineError:
        src.close()
        raise
    try:
        return _run_locked(pol, plan, src, *args, **kwargs)
    finally:
        lock.__exit__()


def _run_locked(
    pol: Policy, plan: StreamPlan, src: FileSource, out_name: str, role: str | None, workers: int,
    address: str | None, ring: Keyring, dead_letters: str | Path | None, dead_letter_key: str,
    progress: ProgressFn | None, local: bool, name: str | None = None,
    control: ControlCore | None = None, throttle_s: float = 0.0, state: str | Path | None = None,
    aggregates: str | Path | None = None, accountant_db: str | Path | None = None,
    routing: str = "auto",
) -> RunSummary:  # fmt: skip
    stream = plan.stream
    if routing not in ROUTINGS:
        raise InputError(f"routing must be one of {', '.join(ROUTINGS)}, not {routing!r}")
    # file spans (see run_pipeline): a plain NDJSON file, no per-key state on the workers
    by_span = (
        routing != "key" and plan.budget is None and plan.format == "ndjson" and not src.follow
    )
    view = plan.view(role)
    summary = RunSummary(
        stream=stream,
        role=view.role,
        policy_version=plan.version,
        workers=workers,
        techniques={op.path: op.technique for op in view.ops},
        output=out_name,
    )
    ledger = ledger_root(state, stream) if plan.budget is not None else None
    summary.ledger = ledger
    dl_path = str(dead_letters) if dead_letters else default_dead_letter_path(out_name)
    writer = DeadLetterWriter(dl_path, stream, ring.get(dead_letter_key), src.header_line)
    try:
        out_f: IO[bytes] = sys.stdout.buffer if out_name == "-" else open(out_name, "wb")  # noqa: SIM115
    except OSError as exc:
        src.close()
        raise InputError(
            f"{out_name}: cannot write ({exc.strerror or type(exc).__name__})"
        ) from None
    started = False
    runner = tap = None
    ok = False
    from raymask.actors.audit import Auditor

    auditor = Auditor.from_env(ring)  # RAYMASK_AUDIT=FILE turns it on
    segregated = any(op.technique == "segregate" for op in view.ops)
    vault_writer = (
        VaultWriter(f"{out_name}.vault" if out_name != "-" else "raymask.vault")
        if segregated
        else None
    )
    emit = auditor.emit if auditor.on else None
    auditor.emit("run_start", stream=stream, view=view.role, policy_version=plan.version,
                 source=Path(str(src.path)).name)  # fmt: skip
    leak_audit = None
    if plan.leak_check is not None:
        leak_audit = LeakAudit(
            "raymask.audit.ndjson" if out_name == "-" else f"{out_name}.audit.ndjson"
        )
    try:
        if aggregates is not None:
            from raymask.cluster.aggregate import AggregateRunner

            runner = AggregateRunner(
                pol, stream, aggregates, keyring=ring, header_line=src.header_line,
                db=accountant_db, dead_letter_key=dead_letter_key,
            )  # fmt: skip

            def tap(chunk: Any) -> None:
                runner.chunk(src.format, chunk.data, chunk.base_line)

        if local:
            cores = [
                MaskCore(pol, stream, ring, src.format, ledger_uri=ledger, shard=i, shards=workers)
                for i in range(workers)
            ]
            poll = switch = None
            if control is not None:

                def poll() -> tuple[int, int]:
                    return control.current_version(), control.desired_workers()

                def switch(v: int):  # noqa: ANN202
                    data = control.current()[1]
                    return compile_stream(validate_data(data), stream), lambda w: w.set_policy(data)

            in_process = by_span and routing == "span"  # no object store to spare: asked for
            run_pipeline(
                plan, src, cores, lambda w, b, i, r: w.process(b, r, i), lambda fs: list(fs), out_f, writer,
                role, summary, progress=progress, poll=poll, switch=switch, tap=tap, audit=emit,
                vault=vault_writer, leak_audit=leak_audit, spans=lambda: in_process,
            )  # fmt: skip
        else:
            import ray

            from raymask.actors.worker import MaskWorker
            from raymask.cluster.runtime import ensure_ray

            started = ensure_ray(address)
            pipeline = name or stream
            actors = [
                MaskWorker.options(name=f"worker:{pipeline}:{i}", namespace="raymask").remote(
                    pol.model_dump(), stream, ring, src.format, throttle_s, ledger, i, workers
                )
                for i in range(workers)
            ]
            ctl = make_control_actor(
                pipeline, pol.model_dump(mode="json"), stream, key_shapes(ring)
            )
            summary.pipeline = pipeline
            policies = {plan.version: pol.model_dump(mode="json")}

            def switch_ray(v: int):  # noqa: ANN202
                data = ray.get(ctl.current.remote())[1]
                policies[v] = data
                return compile_stream(validate_data(data), stream), lambda w: w.set_policy.remote(
                    data
                )

            def new_worker(i: int, n: int) -> Any:
                return MaskWorker.options(
                    name=f"worker:{pipeline}:{i}", namespace="raymask"
                ).remote(pol.model_dump(), stream, ring, src.format, throttle_s, ledger, i, n)

            def resize(n: int, version: int) -> list:
                """Grow: start, warm and hand the driver's policy version to new workers; shrink:
                stop the highest-numbered ones (their work is done: the driver drained first)."""
                while len(actors) > n:
                    ray.kill(actors.pop())
                # every shard reloads the budgets of the keys it now owns before any batch
                # (the driver drained first, so no charge is in flight)
                ray.get([a.set_layout.remote(i, n) for i, a in enumerate(actors)])
                while len(actors) < n:
                    a = new_worker(len(actors), n)
                    ray.get([a.warm.remote(), a.set_policy.remote(policies[version])])
                    actors.append(a)
                summary.workers = n
                near[0] = by_span and all_here(actors)
                size_chunks()
                return list(actors)

            def recover(futures: list, jobs: list, v: int) -> list:
                """Results of one chunk; a batch whose worker died is sent again once Ray has
                restarted the worker, after handing it the chunk's policy version."""
                outs = []
                for f, (wi, batch, idx) in zip(futures, jobs, strict=True):
                    deaths, first = 0, time.monotonic()
                    while True:
                        try:
                            outs.append(ray.get(f))
                            break
                        except ray.exceptions.RayActorError:
                            deaths += 1
                            resend_backoff(deaths, first)
                            summary.resent += 1
                            a = actors[wi]
                            try:  # a restarted worker runs __init__ again: policy and layout
                                ray.get(
                                    [
                                        a.set_policy.remote(policies[v]),
                                        a.set_layout.remote(wi, len(actors)),
                                    ]
                                )
                            except ray.exceptions.RayActorError:
                                pass  # still restarting: the resend below waits for it
                            f = a.process.remote(batch, role, idx)
                return outs

            base_chunk = src.chunk_bytes

            def size_chunks() -> None:
                """With file spans, a chunk is read per `chunk_bytes` of each worker, so each
                span keeps about `chunk_bytes` (4 MiB, ~9,000 records here) whatever the pool's
                size: a span costs its worker ~6 ms beyond the masking (its answer into the
                object store, the next task), and 4 MiB chunks cut for 2 workers made spans of
                half that (8 MiB chunks: 428k against 371k records/s; docs/benchmarks.md)."""
                src.chunk_bytes = base_chunk * (len(actors) if near[0] else 1)

            here = ray.get_runtime_context().get_node_id()

            def all_here(pool: list) -> bool:
                """Every worker runs on this machine, so it can read the input file."""
                return all(n == here for n in ray.get([a.node_id.remote() for a in pool]))

            try:
                ray.get([a.warm.remote() for a in actors])
                near = [by_span and all_here(actors)]
                size_chunks()
                run_pipeline(
                    plan, src, actors, lambda w, b, i, r: w.process.remote(b, r, i), ray.get, out_f, writer,
                    role, summary, progress=progress,
                    poll=lambda: tuple(ray.get(ctl.state.remote())), switch=switch_ray,
                    metrics=PipelineMetrics(stream), recover=recover,
                    resize=resize, share=ray.put, tap=tap, audit=emit, vault=vault_writer,
                    leak_audit=leak_audit, spans=lambda: near[0],
                    max_in_flight=SPAN_IN_FLIGHT if near[0] else 2,
                )  # fmt: skip
            except ray.exceptions.RayActorError:
                raise PipelineError("a mask worker died; see the Ray logs") from None
            finally:
                for a in [*actors, ctl]:
                    ray.kill(a)
        ok = True
    finally:
        if runner is not None:  # the last windows are released only when the run completed
            summary.aggregates = runner.close(final=ok)
        src.close()
        writer.close()
        if out_f is not sys.stdout.buffer:
            out_f.close()
        else:
            out_f.flush()
        if started:
            import ray

            ray.shutdown()
        auditor.emit("run_end", stream=stream, completed=ok, records_in=summary.records_in,
                     records_out=summary.records_out, dead_letters=summary.dead_letters)  # fmt: skip
        auditor.close()
    summary.dead_letter_file = dl_path if summary.dead_letters else None
    if vault_writer is not None:
        summary.vault, summary.vault_rows = str(vault_writer.folder), vault_writer.rows
    if leak_audit is not None and leak_audit.events:
        summary.audit_file = str(leak_audit.path)
    return summary
