"""KeyRouter: turns raw bytes into Arrow record batches and splits them by key across workers.

`RouterCore` is the plain logic (no Ray): split the buffer into records, validate and locate the
policy's fields in one kernel pass, send invalid records to the dead letters with their reason,
hash the key column and group rows by worker. Every record of one key goes to one worker and keeps
its relative order, so per-key order holds.

A routed batch holds, per record: the raw bytes (zero-copy slices of the input buffer), its line,
its row in the input chunk, and per policy field the value's span and JSON kind. Workers extract
and mask the values themselves, in parallel.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from raymask.kernels._arrow import string_array
from raymask.kernels.codecs.formats import Format
from raymask.kernels.codecs.spans import K_NUMBER, K_STRING, KIND_NAMES, Scan
from raymask.kernels.hashing import shard
from raymask.policy.compile import StreamPlan

__all__ = ["DeadLetter", "Routed", "RouterCore", "batch_to_scan"]


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be masked: where it was, why, and its original bytes."""

    line: int
    reason: str  # names the field and the problem, never the value
    raw: bytes = field(repr=False)
    field: str | None = None


@dataclass
class Routed:
    shards: list[pa.RecordBatch | None]  # one sub-batch per worker (None when empty)
    dead: list[DeadLetter]
    records: int
    # record spans in the chunk, by row, for turning worker errors into dead letters
    starts: np.ndarray
    ends: np.ndarray
    lines: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> time spent here


class RouterCore:
    def __init__(self, plan: StreamPlan, fmt: Format, workers: int) -> None:
        self.plan = plan
        self.fmt = fmt
        self.workers = workers

    def route(self, data: np.ndarray, base_line: int) -> Routed:
        plan, fmt = self.plan, self.fmt
        t0 = time.perf_counter()
        starts, ends, lines = fmt.split(data, base_line)
        sc = fmt.scan(data, starts, ends, plan.tree)
        t1 = time.perf_counter()
        n = len(starts)
        dead: list[DeadLetter] = []
        bad = sc.err != 0
        for r in np.flatnonzero(bad):  # error path only
            code = int(sc.err[r])
            reason = f"{fmt.errors.get(code, 'invalid record')} at column {int(sc.errpos[r]) + 1}"
            fld = None
            if sc.errfield[r] >= 0:
                fld = plan.paths[int(sc.errfield[r])]
                reason = f"field {fld}: {fmt.errors.get(code, 'invalid')}"
            dead.append(DeadLetter(int(lines[r]), reason, bytes(data[starts[r] : ends[r]]), fld))
        kk = sc.vkind[:, plan.key_index]
        bad_key = ~bad & (kk != K_STRING) & (kk != K_NUMBER)
        for r in np.flatnonzero(bad_key):
            k = int(kk[r])
            what = "missing" if k in (0, 5) else f"a {KIND_NAMES[k]}, not a string or number"
            reason = f"key field {plan.key_path}: {what}"
            dead.append(
                DeadLetter(int(lines[r]), reason, bytes(data[starts[r] : ends[r]]), plan.key_path)
            )
        ok = ~bad & ~bad_key
        keys = fmt.extract(data, sc, plan.key_index)
        worker = shard(keys, self.workers)
        batch = _batch(data, sc, lines)
        shards: list[pa.RecordBatch | None] = []
        for w in range(self.workers):
            idx = np.flatnonzero(ok & (worker == w))
            shards.append(batch.take(pa.array(idx)) if len(idx) else None)
        dead.sort(key=lambda d: d.line)
        t2 = time.perf_counter()
        return Routed(shards, dead, n, starts, ends, lines, {"decode": t1 - t0, "route": t2 - t1})


def _batch(data: np.ndarray, sc: Scan, lines: np.ndarray) -> pa.RecordBatch:
    n = len(sc.starts)
    offsets = np.empty(n + 1, np.int64)
    offsets[:n] = sc.starts
    offsets[n] = sc.ends[-1] if n else 0
    raw = (
        string_array(offsets - 0, data, None, binary=True) if n else pa.array([], pa.large_binary())
    )
    cols: dict[str, pa.Array] = {
        "raw": raw,
        "len": pa.array(sc.ends - sc.starts),
        "line": pa.array(lines),
        "row": pa.array(np.arange(n, dtype=np.int64)),
    }
    for f in range(sc.vkind.shape[1]):
        cols[f"s{f}"] = pa.array(sc.vstart[:, f] - sc.starts)
        cols[f"e{f}"] = pa.array(sc.vend[:, f] - sc.starts)
        cols[f"k{f}"] = pa.array(sc.vkind[:, f])
    return pa.RecordBatch.from_pydict(cols)


def batch_to_scan(batch: pa.RecordBatch, fields: int) -> tuple[np.ndarray, Scan]:
    """The data buffer and Scan of a routed (sub-)batch, as the worker sees it."""
    raw = batch.column("raw")
    bufs = raw.buffers()
    n = batch.num_rows
    offsets = np.frombuffer(bufs[1], np.int64)[raw.offset : raw.offset + n + 1]
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts = np.ascontiguousarray(offsets[:n])
    ends = starts + batch.column("len").to_numpy()
    vs = np.empty((n, fields), np.int64)
    ve = np.empty((n, fields), np.int64)
    vk = np.empty((n, fields), np.int8)
    for f in range(fields):
        vs[:, f] = batch.column(f"s{f}").to_numpy() + starts
        ve[:, f] = batch.column(f"e{f}").to_numpy() + starts
        vk[:, f] = batch.column(f"k{f}").to_numpy()
    z = np.zeros(n, np.int64)
    return data, Scan(starts, ends, vs, ve, vk, np.zeros(n, np.int8), z, z - 1)
