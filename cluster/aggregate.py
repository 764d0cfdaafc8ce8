"""`raymask aggregate`: a policy's windowed DP aggregates over a file, one NDJSON line per
released group and window, charged to the budget accountant.

Records are located and their fields extracted by the format's kernels (no Python per record);
records that cannot be read, lack a field or carry a bad value, and late records, go to the dead
letters with the reason (the field, never the value).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymask.actors.accountant import Accountant, default_db
from raymask.actors.aggregates import Metric, Release, WindowAggregator, WindowSpec
from raymask.actors.continual import ContinualRelease, ContinualSpec, StepRelease
from raymask.actors.router import DeadLetter, scan_reason
from raymask.actors.sinks.deadletters import DEFAULT_KEY_ID, DeadLetterWriter
from raymask.actors.sources.files import FileSource
from raymask.errors import InputError
from raymask.kernels.codecs.paths import build_tree
from raymask.kernels.codecs.spans import K_NUMBER, K_STRING
from raymask.kernels.hashing import key_hash
from raymask.kernels.rng import SecureRandom
from raymask.policy.keys import Keyring
from raymask.policy.schema import Aggregate, Continual, Policy, iso_seconds

__all__ = ["AggregateSummary", "AggregateRunner", "aggregate_file", "spec_for"]


@dataclass
class AggregateSummary:
    stream: str
    aggregates: list[str]
    records_in: int = 0
    dead_letters: int = 0
    windows: Counter = field(default_factory=Counter)  # aggregate -> windows released
    refused: Counter = field(default_factory=Counter)  # aggregate -> windows the budget refused
    groups: Counter = field(default_factory=Counter)  # aggregate -> group rows released
    epsilon: Counter = field(default_factory=Counter)  # aggregate -> epsilon spent
    dead_reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    output: str = ""


def _fields(a: Aggregate | Continual) -> list[str]:
    """The value fields an aggregate reads."""
    if isinstance(a, Continual):
        return [a.field] if a.field else []
    return [m.field for m in a.metrics if m.field]


def spec_for(a: Aggregate | Continual) -> WindowSpec | ContinualSpec:
    if isinstance(a, Continual):
        return ContinualSpec(
            step_s=a.step, horizon=a.horizon, epsilon=a.epsilon, delta=a.delta,
            mechanism=a.mechanism, op=a.op, field=a.field, lo=a.lo, hi=a.hi,
            max_rows=a.max_rows, lateness_s=a.lateness, start_s=a.start,
        )  # fmt: skip
    return WindowSpec(
        size_s=a.window.size, slide_s=a.window.slide, lateness_s=a.window.lateness,
        max_groups=a.max_groups, max_rows=a.max_rows, delta=a.delta,
        metrics=tuple(
            Metric(m.op, m.epsilon, m.field, m.lo, m.hi, m.bins or 0, tuple(m.quantiles or ()),
                   m.k or 0)
            for m in a.metrics
        ),
    )  # fmt: skip


def _times(values: pa.Array, kinds: np.ndarray) -> np.ndarray:
    """Epoch seconds per row (NaN where it is not a time): ISO 8601 text or a number."""
    out = np.full(len(values), np.nan)
    num = kinds == K_NUMBER
    if num.any():
        out[num] = pc.cast(values.filter(pa.array(num)), pa.float64()).to_numpy(
            zero_copy_only=False
        )
    txt = kinds == K_STRING
    if txt.any():
        s = values.filter(pa.array(txt)).cast(pa.string())
        try:
            us = pc.cast(pc.cast(s, pa.timestamp("us", tz="UTC")), pa.int64())
            out[txt] = us.to_numpy(zero_copy_only=False) / 1e6
        except pa.ArrowInvalid:  # error path only: some value is not a timestamp
            out[txt] = [_one_time(v) for v in s.to_pylist()]
    return out


def _one_time(v: str | None) -> float:
    try:
        return iso_seconds(v)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        return math.nan


class AggregateRunner:
    """A stream's aggregates fed chunk by chunk (by `aggregate_file`, or beside the masking in
    `raymask run`): releases go to `output` as NDJSON, unusable and late records to their own
    dead-letter file."""

    def __init__(
        self, policy: Policy, stream: str, output: str | Path, *, keyring: Keyring,
        header_line: bytes = b"", names: list[str] | None = None, db: str | Path | None = None,
        dead_letters: str | Path | None = None, dead_letter_key: str = DEFAULT_KEY_ID,
        rng: SecureRandom | None = None, noise: bool = True,
    ) -> None:  # fmt: skip
        if stream not in policy.streams:
            raise InputError(f"no stream {stream!r} in the policy")
        s = policy.streams[stream]
        every = {**s.aggregates, **s.continual}
        chosen = names or list(every)
        if not chosen:
            raise InputError(f"stream {stream} has no aggregates")
        unknown = [n for n in chosen if n not in every]
        if unknown:
            raise InputError(f"stream {stream} has no aggregate {unknown[0]!r}")
        self.key = s.key
        from raymask.actors.audit import Auditor

        self.auditor = Auditor.from_env(keyring)  # RAYMASK_AUDIT=FILE turns it on
        self.acc = Accountant(
            db or default_db(), audit=self.auditor.emit if self.auditor.on else None
        )
        self.aggs: dict[str, tuple[Any, Any]] = {}  # name -> (spec, its aggregator)
        rng = rng or SecureRandom(personalization=b"raymask aggregates")
        for name in chosen:
            a = every[name]
            scopes = a.scopes or [f"stream:{stream}"]
            for sc in scopes:
                if self.acc.budget(sc) is None:
                    self.acc.close()
                    raise InputError(
                        f"scope {sc} has no budget; set one with raymask budget set {sc} "
                        "--epsilon E"
                    )
            kind = ContinualRelease if isinstance(a, Continual) else WindowAggregator
            self.aggs[name] = (a, kind(
                spec_for(a), accountant=self.acc, scopes=scopes, rng=rng,
                caller=f"aggregate:{stream}.{name}", noise=noise,
            ))  # fmt: skip
        self.paths: list[str] = []
        for a, _ in self.aggs.values():
            for p in [a.time, getattr(a, "group_by", None), a.subject or s.key, *_fields(a)]:
                if p is not None and p not in self.paths:
                    self.paths.append(p)
        try:
            self.tree = build_tree(self.paths)
        except ValueError:
            self.acc.close()
            raise InputError("aggregate fields overlap (a field cannot contain another)") from None
        self.dead_path = str(dead_letters or f"{output}.deadletters.ndjson")
        self.writer = DeadLetterWriter(
            self.dead_path, stream, keyring.get(dead_letter_key), header_line
        )
        self.out = open(output, "w", encoding="utf-8")  # noqa: SIM115
        self.summary = AggregateSummary(stream, chosen, output=str(output))
        self._t = 0.0

    def expect(self, sources: list[Any]) -> None:
        """Inputs known from the start (Kafka partitions): the watermark waits for all of them."""
        for _, agg in self.aggs.values():
            agg.marks.expect(sources)

    def chunk(
        self, fmt: Any, data: np.ndarray, base_line: int, offsets: np.ndarray | None = None,
        source: Any = None,
    ) -> None:  # fmt: skip
        """Feed one chunk of records from input `source` (Kafka: its topic and partition, which
        keeps a watermark of its own). `offsets` (Kafka: message i's offset) replace the line
        numbers in the dead letters."""
        t0 = time.perf_counter()
        dead = _chunk(fmt, data, base_line, self.tree, self.paths, self.aggs, self.key, self.out,
                      self.summary, source)  # fmt: skip
        if offsets is not None:
            dead = [replace(d, line=int(offsets[d.line - base_line])) for d in dead]
        self.writer.write(dead)
        self._t += time.perf_counter() - t0

    def close(self, final: bool = True) -> AggregateSummary:
        """Release what is left (every open window when `final`) and close the files."""
        try:
            if final:
                for name, (_, agg) in self.aggs.items():
                    _write(self.out, name, agg.flush(final=True), self.summary)
        finally:
            self.out.close()
            self.writer.close()
            self.acc.close()
            self.auditor.close()
        self.summary.seconds = self._t
        return self.summary


def aggregate_file(
    policy: Policy,
    stream: str,
    input: str | Path,
    output: str | Path,
    *,
    keyring: Keyring,
    names: list[str] | None = None,
    db: str | Path | None = None,
    dead_letters: str | Path | None = None,
    dead_letter_key: str = DEFAULT_KEY_ID,
    chunk_bytes: int = 4 << 20,
    rng: SecureRandom | None = None,
    noise: bool = True,
) -> AggregateSummary:
    """Run the stream's aggregates (or `names`) over `input`; releases go to `output` as NDJSON."""
    s = policy.streams.get(stream)
    if s is None:
        raise InputError(f"no stream {stream!r} in the policy")
    opts = getattr(s, s.format, None)  # the xml: / protobuf: options
    src = FileSource(str(input), s.format, delimiter=s.delimiter, chunk_bytes=chunk_bytes,
                     options=opts.model_dump() if opts is not None else None)  # fmt: skip
    try:
        runner = AggregateRunner(
            policy, stream, output, keyring=keyring, header_line=src.header_line, names=names,
            db=db, dead_letters=dead_letters, dead_letter_key=dead_letter_key, rng=rng,
            noise=noise,
        )  # fmt: skip
    except Exception:
        src.close()
        raise
    ok = False
    try:
        for chunk in src.chunks():
            if chunk is not None:
                runner.chunk(src.format, chunk.data, chunk.base_line)
        ok = True
    finally:
        src.close()
        summary = runner.close(final=ok)
    return summary


def _chunk(
    fmt, data, base_line, tree, paths, aggs, stream_key, out: IO[str], summary, source=None
) -> list[DeadLetter]:  # noqa: ANN001
    starts, ends, lines = fmt.split(data, base_line)
    sc = fmt.scan(data, starts, ends, tree)
    n = len(starts)
    summary.records_in += n
    bad = np.zeros(n, np.int8)  # 0 ok, 1 invalid record, 2 field problem
    reasons: dict[int, tuple[str, str | None]] = {}
    for r in np.flatnonzero(sc.err != 0):
        reasons[int(r)] = scan_reason(fmt, tuple(paths), sc, int(r))
        bad[r] = 1
    cols = {p: fmt.extract(data, sc, i) for i, p in enumerate(paths)}
    dead_rows: set[int] = set(reasons)
    for name, (a, agg) in aggs.items():
        subj_path = a.subject or stream_key
        ok = bad == 0
        t = _times(cols[a.time], sc.vkind[:, paths.index(a.time)])
        t_bad = np.isnan(t)
        problems = [(a.time, t_bad, "not a timestamp (ISO 8601 or epoch seconds)")]
        group_by = getattr(a, "group_by", None)
        for p in (group_by, subj_path) if group_by else (subj_path,):
            k = sc.vkind[:, paths.index(p)]
            problems.append(
                (p, (k != K_STRING) & (k != K_NUMBER), "missing or not a string/number")
            )
        values = {}
        metrics = [a] if isinstance(a, Continual) and a.field else getattr(a, "metrics", [])[1:]
        for m in metrics:
            k = sc.vkind[:, paths.index(m.field)]
            if m.op == "top_k":  # a category: text or a number, as text
                problems.append(
                    (m.field, (k != K_STRING) & (k != K_NUMBER), "missing or not a string/number")
                )
                values[m.field] = cols[m.field].cast(pa.string())
                continue
            v = pc.cast(
                pc.if_else(pa.array(k == K_NUMBER), cols[m.field], pa.scalar(None, pa.large_string())),
                pa.float64(),
            ).to_numpy(zero_copy_only=False)  # fmt: skip
            problems.append((m.field, k != K_NUMBER, "missing or not a number"))
            values[m.field] = v
        for p, mask, what in problems:
            for r in np.flatnonzero(ok & mask):
                reasons.setdefault(int(r), (f"aggregate {name}: field {p}: {what}", p))
                dead_rows.add(int(r))
            ok &= ~mask
        rows = np.flatnonzero(ok)
        table = pa.table(
            {
                "subject": pa.array(key_hash(cols[subj_path].take(pa.array(rows)))),
                "time": pa.array(t[rows]),
                **({"group": cols[group_by].take(pa.array(rows)).cast(pa.string())}
                   if group_by else {}),
                **{f: _take(v, rows) for f, v in values.items()},
            }
        )  # fmt: skip
        late = agg.add(table, source)
        for r in rows[late]:
            reasons.setdefault(int(r), (f"aggregate {name}: late: its window was released", None))
            dead_rows.add(int(r))
        _write(out, name, agg.flush(), summary)
    dead = []
    for r in sorted(dead_rows):
        reason, fld = reasons[r]
        summary.dead_reasons[reason] += 1
        dead.append(DeadLetter(int(lines[r]), reason, bytes(data[starts[r] : ends[r]]), fld))
    summary.dead_letters += len(dead)
    return dead


def _take(v: np.ndarray | pa.Array, rows: np.ndarray) -> pa.Array:
    return v.take(pa.array(rows)) if isinstance(v, pa.Array) else pa.array(v[rows])


def _iso(t: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(round((t % 1) * 1000)):03d}Z"
    )


def _write(
    out: IO[str], name: str, releases: list[Release] | list[StepRelease], summary: AggregateSummary
) -> None:
    for r in releases:
        if isinstance(r, StepRelease):
            _write_step(out, name, r, summary)
            continue
        if r.refused:
            summary.refused[name] += 1
            continue
        summary.windows[name] += 1
        summary.epsilon[name] += r.epsilon
        summary.groups[name] += r.table.num_rows
        head = {"aggregate": name, "window_start": _iso(r.start), "window_end": _iso(r.end)}
        tail = {"epsilon": r.epsilon, "delta": r.delta}
        for row in r.table.to_pylist():  # released groups only: a few per window
            out.write(json.dumps({**head, **row, **tail}) + "\n")


def _write_step(out: IO[str], name: str, r: StepRelease, summary: AggregateSummary) -> None:
    """One continual release: the running total after step r (the `epsilon` is the horizon's,
    paid once, by its first step)."""
    if r.refused:
        summary.refused[name] += 1
        return
    summary.windows[name] += 1
    summary.groups[name] += 1
    if r.charged:
        summary.epsilon[name] += r.epsilon
    out.write(json.dumps({
        "continual": name, "step_start": _iso(r.start), "step_end": _iso(r.end),
        "horizon_start": _iso(r.horizon_start), "value": r.value, "epsilon": r.epsilon,
        "delta": r.delta,
    }) + "\n")  # fmt: skip
