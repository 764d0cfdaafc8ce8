"""KeyRouter: turns raw bytes into Arrow record batches and splits them by key across workers.

`RouterCore` is the plain logic (no Ray): split the buffer into records, locate the key field in
one kernel pass that stops at the key, send records without a usable key to the dead letters with
their reason, hash the key column and group rows by worker. Every record of one key goes to one
worker and keeps its relative order, so per-key order holds.

A routed chunk is one Arrow batch holding, per record, the raw bytes (zero-copy over the input
buffer), its line, its row and its key's hash; each worker gets the rows of its keys. On Ray the chunk goes into
the object store once and every worker reads it from shared memory, so the router copies nothing
per worker. Workers validate whole records and locate, extract and mask the policy's fields
themselves, in parallel.

A stream with no per-key state (no privacy budget) read from a plain file need not be routed:
the driver cuts each chunk into one `FileSpan` of whole records per worker (`span_cuts`), and
each worker reads, checks (`key_reason`, the same reasons) and masks its span itself. The
output is written in input order either way, so per-key order holds (cluster/pipeline.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from raymask.kernels._arrow import arrow_numbers, numbers, string_array
from raymask.kernels._keepgil import iota
from raymask.kernels.codecs.formats import Format
from raymask.kernels.codecs.paths import build_tree
from raymask.kernels.codecs.spans import K_NUMBER, K_STRING, KIND_NAMES, Scan
from raymask.kernels.hashing import jump_hash, key_hash
from raymask.policy.compile import StreamPlan

__all__ = [
    "DeadLetter",
    "FileSpan",
    "Routed",
    "RouterCore",
    "SpanChunk",
    "batch_records",
    "key_reason",
    "make_batch",
    "scan_reason",
    "span_cuts",
    "unrouted",
]


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be masked: where it was, why, and its original bytes."""

    line: int
    reason: str  # names the field and the problem, never the value
    raw: bytes = field(repr=False)
    field: str | None = None


@dataclass
class Routed:
    batch: pa.RecordBatch  # the whole chunk, zero-copy: raw record bytes, len, line, row
    shards: list[np.ndarray | None]  # per worker, the rows of `batch` it masks (None when none)
    dead: list[DeadLetter]
    records: int
    # record spans in the chunk, by row, for turning worker errors into dead letters
    starts: np.ndarray
    ends: np.ndarray
    lines: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> time spent here


@dataclass(frozen=True)
class FileSpan:
    """Whole records at `offset`, `length` bytes, in the input file at `path`: what a mask worker
    on the driver's machine reads itself, instead of records sent through the object store."""

    path: str
    offset: int
    length: int


@dataclass
class SpanChunk:
    """A chunk handed to the workers as file spans, one contiguous span per worker (see
    `run_pipeline`); the workers find its records, dead letters and lines themselves."""

    base_line: int  # line number of the chunk's first byte
    seconds: dict[str, float] = field(default_factory=dict)
    records: int = 0  # filled in when the workers' results are in
    dead: list[DeadLetter] = field(default_factory=list)


def span_cuts(fmt: Format, data: np.ndarray, n: int) -> list[int]:
    """n + 1 positions that cut `data` (whole records) into n parts of about equal bytes, each of
    whole records (a part may be empty)."""
    cuts = [0]
    for k in range(1, n):
        p = len(data) * k // n
        c = fmt.boundary(data[:p]) if p > cuts[-1] else -1
        cuts.append(max(cuts[-1], c))
    cuts.append(len(data))
    return cuts


def key_reason(plan: StreamPlan, kind: int) -> str:
    """Why a record whose key field is of `kind` (not a string or number) cannot be routed."""
    what = "missing" if kind in (0, 5) else f"a {KIND_NAMES[kind]}, not a string or number"
    role = "key" if plan.route_path == plan.key_path else "budget subject"
    return f"{role} field {plan.route_path}: {what}"


def scan_reason(fmt: Format, paths: tuple[str, ...], sc: Scan, r: int) -> tuple[str, str | None]:
    """Why record r of a scan is invalid, naming the field where there is one; never a value."""
    code = int(sc.err[r])
    if sc.errfield[r] >= 0:
        fld = paths[int(sc.errfield[r])]
        return f"field {fld}: {fmt.errors.get(code, 'invalid')}", fld
    return f"{fmt.errors.get(code, 'invalid record')} at column {int(sc.errpos[r]) + 1}", None


class RouterCore:
    """Locates only the key in each record (the scan stops there), hashes it and groups rows
    by worker. Validating the rest and locating the policy's other fields is the workers' job,
    so the one router does the least work and the workers share the rest."""

    def __init__(self, plan: StreamPlan, fmt: Format, workers: int) -> None:
        self.plan = plan
        self.fmt = fmt
        self.workers = workers
        self.key_tree = build_tree([plan.route_path])

    def route(self, data: np.ndarray, base_line: int) -> Routed:
        plan, fmt = self.plan, self.fmt
        t0 = time.perf_counter()
        starts, ends, lines = fmt.split(data, base_line)
        sc = fmt.scan(data, starts, ends, self.key_tree, locate_only=True)
        n = len(starts)
        dead: list[DeadLetter] = []
        bad = sc.err != 0
        for r in np.flatnonzero(bad):  # error path only
            reason, fld = scan_reason(fmt, self.key_tree.paths, sc, int(r))
            dead.append(DeadLetter(int(lines[r]), reason, bytes(data[starts[r] : ends[r]]), fld))
        kk = sc.vkind[:, 0]
        bad_key = ~bad & (kk != K_STRING) & (kk != K_NUMBER)
        for r in np.flatnonzero(bad_key):
            reason = key_reason(plan, int(kk[r]))
            dead.append(
                DeadLetter(int(lines[r]), reason, bytes(data[starts[r] : ends[r]]), plan.route_path)
            )
        ok = ~bad & ~bad_key
        hashes = key_hash(fmt.extract(data, sc, 0))
        worker = jump_hash(hashes, self.workers)
        batch = make_batch(data, starts, ends, lines, hashes)
        shards: list[np.ndarray | None] = []
        for w in range(self.workers):
            idx = np.flatnonzero(ok & (worker == w))
            shards.append(idx if len(idx) else None)
        dead.sort(key=lambda d: d.line)
        t2 = time.perf_counter()
        return Routed(batch, shards, dead, n, starts, ends, lines, {"route": t2 - t0})


def unrouted(fmt: Format, data: np.ndarray, base_line: int = 0) -> Routed:
    """A buffer's records as one shard, split but not routed: for a MaskCore that checks the
    key itself (`process_views(check_key=True)`, the router's reasons) and keeps no per-key
    state, so nothing is hashed and no record is read twice."""
    t0 = time.perf_counter()
    starts, ends, lines = fmt.split(data, base_line)
    n = len(starts)
    batch = make_batch(data, starts, ends, lines, np.zeros(n, np.uint64))
    rows = iota(n) if n else None
    seconds = {"route": time.perf_counter() - t0}
    return Routed(batch, [rows], [], n, starts, ends, lines, seconds)


def make_batch(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, lines: np.ndarray, hashes: np.ndarray
) -> pa.RecordBatch:
    n = len(starts)
    offsets = np.empty(n + 1, np.int64)
    offsets[:n] = starts
    offsets[n] = ends[-1] if n else 0
    raw = string_array(offsets, data, None, binary=True) if n else pa.array([], pa.large_binary())
    return pa.RecordBatch.from_pydict(
        {
            "raw": raw,
            "len": arrow_numbers(ends - starts),
            "line": arrow_numbers(np.asarray(lines, np.int64)),
            "row": arrow_numbers(iota(n)),
            # the routing key's stable hash: workers key per-subject budgets by it
            "key_hash": arrow_numbers(np.asarray(hashes, np.uint64)),
        }
    )


def batch_records(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The data buffer and record (starts, ends) of a routed batch, as the worker sees it."""
    raw = batch.column("raw")
    bufs = raw.buffers()
    n = batch.num_rows
    offsets = np.frombuffer(bufs[1], np.int64)[raw.offset : raw.offset + n + 1]
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts = np.ascontiguousarray(offsets[:n])
    ends = starts + numbers(batch.column("len"))
    return data, starts, ends
