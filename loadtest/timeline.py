"""raymask's own figures during a run, one row a second, in `timeline.csv` of the run folder.

The columns are fixed (`COLUMNS`); a cell is empty when the figure is unknown in that run (an
HTTP run has no consumer lag, a remote run without a metrics URL knows no worker count).
`raymask report` plots the file, whoever wrote it: the load driver (loadtest/load.py) or a
scale test.

    with TimelineWriter("load-out/http/timeline.csv") as tl:
        tl.row(workers=2, queue_depth=0)              # t_unix: now
        tl.sample_from_metrics("http://127.0.0.1:8080/metrics", workers=2)

`sample_from_metrics` reads Ray's Prometheus endpoint (Ray started with
`_metrics_export_port=P` and `_system_config={"metrics_report_interval_ms": 1000}`):

| column | from |
|---|---|
| workers | `ray_serve_deployment_replica_healthy` (Serve replicas up; `deployment=` narrows) |
| nodes | `ray_node_cpu_count` series (one per alive node) |
| queue_depth | `ray_raymask_queue_depth` (chunks in flight), else `ray_serve_deployment_queued_queries` |
| records_in, records_out, dead_letters | `ray_raymask_records_total{stage=in,out,dead}`; for a Kafka pipeline, `ray_raymask_kafka_records_total{outcome=written|dead}` of one view |
| consumer_lag | not in Ray's metrics: pass it (see `kafka_lag`) |

Counters are cumulative (records since the metric appeared); the report plots their rate.
"""

from __future__ import annotations

import asyncio
import csv
import math
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "COLUMNS",
    "TimelineWriter",
    "Sampler",
    "parse_prometheus",
    "sample_from_metrics",
    "kafka_lag",
]

COLUMNS = (
    "t_unix",
    "workers",
    "nodes",
    "queue_depth",
    "consumer_lag",
    "records_in",
    "records_out",
    "dead_letters",
)

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text exposition -> {metric name: [(labels, value)]} (comments skipped)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(4))
        except ValueError:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.setdefault(m.group(1), []).append((labels, value))
    return out


def _sum(
    metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **match: str
) -> float | None:
    rows = [
        v
        for labels, v in metrics.get(name, ())
        if all(labels.get(k) == w for k, w in match.items())
    ]
    rows = [v for v in rows if not math.isnan(v)]
    return sum(rows) if rows else None


def sample_from_metrics(
    url: str, *, deployment: str | None = None, view: str | None = None, timeout: float = 2.0
) -> dict[str, float | None]:
    """The timeline's figures that Ray's Prometheus endpoint at `url` knows (None: unknown).
    `deployment`: count only that Serve deployment's replicas; `view`: the Kafka pipeline's
    view whose records count as out (default: any one view, the first found)."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        m = parse_prometheus(r.read().decode("utf-8", "replace"))
    healthy = {"deployment": deployment} if deployment else {}
    nodes = {
        labels.get("ip") or labels.get("NodeAddress")
        for labels, _ in m.get("ray_node_cpu_count", ())
    }
    queue = _sum(m, "ray_raymask_queue_depth")
    if queue is None:
        queue = _sum(m, "ray_serve_deployment_queued_queries", **healthy)
    values: dict[str, float | None] = {
        "workers": _sum(m, "ray_serve_deployment_replica_healthy", **healthy),
        "nodes": float(len(nodes)) if nodes else None,
        "queue_depth": queue,
        "records_in": _sum(m, "ray_raymask_records_total", stage="in"),
        "records_out": _sum(m, "ray_raymask_records_total", stage="out"),
        "dead_letters": _sum(m, "ray_raymask_records_total", stage="dead"),
    }
    kafka = m.get("ray_raymask_kafka_records_total", ())
    if kafka and values["records_out"] is None:
        v = view or next(iter(sorted({labels.get("view", "") for labels, _ in kafka})))
        values["records_out"] = _sum(
            m, "ray_raymask_kafka_records_total", view=v, outcome="written"
        )
        values["dead_letters"] = _sum(m, "ray_raymask_kafka_records_total", view=v, outcome="dead")
    return values


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


class TimelineWriter:
    """Appends rows of `COLUMNS` to a CSV file (the header once, when the file is new or empty);
    every row is flushed, so a plot of a run still going shows what it has."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file: IO[str] = open(self.path, "a", newline="")  # noqa: SIM115 (closed in close)
        self._csv = csv.writer(self._file)
        self._lock = threading.Lock()
        if new:
            self._csv.writerow(COLUMNS)
            self._file.flush()

    def row(self, **values: Any) -> None:
        """One row; `t_unix` defaults to now, a column not given (or None) is left empty."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(
                f"timeline has no column {sorted(unknown)[0]!r}; columns: {', '.join(COLUMNS)}"
            )
        values.setdefault("t_unix", round(time.time(), 3))
        with self._lock:
            self._csv.writerow([_cell(values.get(c)) for c in COLUMNS])
            self._file.flush()

    def sample_from_metrics(self, url: str, **known: Any) -> dict[str, Any]:
        """A row from Ray's metrics at `url` (see `sample_from_metrics`); `known` values (say the
        consumer lag, or the workers a driver knows it runs) win over what the metrics say. An
        endpoint that does not answer leaves those cells empty."""
        try:
            values: dict[str, Any] = sample_from_metrics(url)
        except OSError:
            values = {}
        values.update({k: v for k, v in known.items() if v is not None})
        self.row(**values)
        return values

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> TimelineWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sampler:
    """A thread that writes one timeline row every `interval_s`: `sample()` returns the row's
    values (it may raise OSError: that second's row then has only its time)."""

    def __init__(
        self, writer: TimelineWriter, sample: Callable[[], dict[str, Any]], interval_s: float = 1.0
    ) -> None:
        self.writer = writer
        self.sample = sample
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            t = round(time.time(), 3)
            try:
                values = self.sample()
            except OSError:
                values = {}
            self.writer.row(t_unix=t, **values)
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def kafka_lag(
    bootstrap: str, topic: str, group: str, *, timeout_s: float = 2.0,
    client_options: dict[str, Any] | None = None,
) -> Callable[[], int | None]:  # fmt: skip
    """A function returning the consumer group's lag on `topic` in records: per partition, the
    high watermark minus the group's committed offset. The high watermark is taken from a fetch
    response (never from ListOffsets, which tansu answers wrongly). The returned function keeps
    one consumer open on its own event loop; call `.close()` on it when done."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    loop = asyncio.new_event_loop()
    state: dict[str, Any] = {}

    async def open_() -> None:
        c = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=50, max_partition_fetch_bytes=1024,
            **(client_options or {}),
        )  # fmt: skip
        await c.start()
        state["c"] = c
        parts = c.partitions_for_topic(topic) or set()
        if not parts:
            await c._client.force_metadata_update()  # noqa: SLF001 (a topic just created)
            parts = c.partitions_for_topic(topic) or set()
        state["tps"] = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(state["tps"])

    async def lag() -> int | None:
        c = state["c"]
        total = 0
        for tp in state["tps"]:
            committed = await c.committed(tp)
            c.seek(tp, committed or 0)
        await c.getmany(timeout_ms=int(timeout_s * 500), max_records=1)
        for tp in state["tps"]:
            hw = c.highwater(tp)
            if hw is None:
                return None
            committed = await c.committed(tp)
            total += max(0, hw - (committed or 0))
        return total

    loop.run_until_complete(asyncio.wait_for(open_(), timeout_s * 5))

    def sample() -> int | None:
        try:
            return loop.run_until_complete(asyncio.wait_for(lag(), timeout_s * 2))
        except (TimeoutError, OSError):
            return None

    def close() -> None:
        try:
            loop.run_until_complete(asyncio.wait_for(state["c"].stop(), timeout_s * 2))
        except (TimeoutError, OSError):
            pass
        loop.close()

    sample.close = close  # type: ignore[attr-defined]
    return sample
