"""Pipeline metrics through `ray.util.metrics` (Prometheus; visible in the Ray dashboard).

Labels are the stream, the stage, the technique or the field path: names from the policy, never a
data value. A Counter ``raymask_records`` is exported by Ray as ``ray_raymask_records_total``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["PipelineMetrics", "KafkaMetrics", "LATENCY_BOUNDARIES"]

LATENCY_BOUNDARIES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class PipelineMetrics:
    """The driver's metrics for one stream (create only where Ray is initialised)."""

    def __init__(self, stream: str) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self.tags = {"stream": stream}
        self.records = Counter(
            "raymask_records",
            description="Records per stage (in, out, dead).",
            tag_keys=("stream", "stage"),
        )
        self.bytes = Counter(
            "raymask_bytes", description="Bytes read from the source.", tag_keys=("stream",)
        )
        self.latency = Histogram(
            "raymask_batch_latency_seconds",
            description="From routing a chunk to having its masked records back.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("stream",),
        )
        self.queue = Gauge(
            "raymask_queue_depth",
            description="Chunks in flight to the workers.",
            tag_keys=("stream",),
        )
        self.values = Counter(
            "raymask_values_changed",
            description="Values a technique changed.",
            tag_keys=("stream", "field", "technique"),
        )
        self.leaks = Counter(
            "raymask_leaks",
            description="Detectable values the leak monitor found in sampled output.",
            tag_keys=("stream", "view", "field", "type"),
        )
        self.detected = Counter(
            "raymask_unknown_field_detections",
            description="Spans masked in fields the policy does not name (unknown_fields: detect).",
            tag_keys=("stream", "type"),
        )
        self.version = Gauge(
            "raymask_policy_version", description="Policy version in force.", tag_keys=("stream",)
        )

    def chunk(
        self, *, records_in: int, records_out: int, dead: int, nbytes: int, seconds: float, in_flight: int,
        changed: Mapping[str, int], techniques: Mapping[str, str], version: int,
    ) -> None:  # fmt: skip
        t = self.tags
        self.records.inc(records_in, tags={**t, "stage": "in"})
        self.records.inc(records_out, tags={**t, "stage": "out"})
        if dead:
            self.records.inc(dead, tags={**t, "stage": "dead"})
        self.bytes.inc(nbytes, tags=t)
        self.latency.observe(seconds, tags=t)
        self.queue.set(in_flight, tags=t)
        self.version.set(version, tags=t)
        for path, n in changed.items():
            if n:
                self.values.inc(
                    n, tags={**t, "field": path, "technique": techniques.get(path, "?")}
                )

    def leak_events(self, events: list[dict], detected: Mapping[str, int]) -> None:
        """The leak monitor's findings and the unknown-field detections of one chunk (labels:
        names from the policy and detector types, never values)."""
        count_leaks(self.leaks, self.tags, events)
        for typ, n in detected.items():
            if n:
                self.detected.inc(n, tags={**self.tags, "type": typ})


def count_leaks(counter: Any, tags: dict, events: list[dict]) -> None:
    """The leak monitor's findings on the raymask_leaks counter (labels: names, never values)."""
    for e in events:
        counter.inc(
            e["count"], tags={**tags, "view": e["view"], "field": e["field"], "type": e["type"]}
        )


class KafkaMetrics:
    """Lag and flow of a Kafka pipeline, for dashboards and the autoscaler. Lag is the age of the
    records being consumed (produce time to now) and the committed offsets per partition; never
    the end offsets (tansu reports those wrongly)."""

    def __init__(self, stream: str) -> None:
        from ray.util.metrics import Counter, Gauge

        self.tags = {"stream": stream}
        self.age = Gauge(
            "raymask_kafka_record_age_seconds",
            description="Age (produce time to written) of the oldest record of the last chunk.",
            tag_keys=("stream", "topic", "partition"),
        )
        self.committed = Gauge(
            "raymask_kafka_committed_offset",
            description="Next offset the pipeline will read, committed after outputs are durable.",
            tag_keys=("stream", "topic", "partition"),
        )
        self.records = Counter(
            "raymask_kafka_records",
            description="Records per view and outcome (written, skipped, dead).",
            tag_keys=("stream", "view", "outcome"),
        )
        self.workers = Gauge(
            "raymask_workers",
            description="Mask workers in the pool (it changes with the autoscaler).",
            tag_keys=("stream",),
        )
        self.lag = Gauge(
            "raymask_lag_seconds",
            description="Age of the oldest record of the last round when it was written.",
            tag_keys=("stream",),
        )
        self.leaks = Counter(  # the same metric as the file pipeline's (PipelineMetrics)
            "raymask_leaks",
            description="Detectable values the leak monitor found in sampled output.",
            tag_keys=("stream", "view", "field", "type"),
        )

    def leak_events(self, events: list[dict]) -> None:
        count_leaks(self.leaks, self.tags, events)

    def chunk(self, topic: str, partition: int, age_s: float, next_offset: int) -> None:
        t = {**self.tags, "topic": topic, "partition": str(partition)}
        self.age.set(age_s, tags=t)
        self.committed.set(next_offset, tags=t)

    def pool(self, workers: int, lag_s: float) -> None:
        self.workers.set(workers, tags=self.tags)
        self.lag.set(lag_s, tags=self.tags)

    def view(self, view: str, written: int, skipped: int, dead: int) -> None:
        for outcome, n in (("written", written), ("skipped", skipped), ("dead", dead)):
            if n:
                self.records.inc(n, tags={**self.tags, "view": view, "outcome": outcome})
