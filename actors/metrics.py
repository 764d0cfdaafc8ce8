"""Pipeline metrics through `ray.util.metrics` (Prometheus; visible in the Ray dashboard).

Labels are the stream, the stage, the technique or the field path: names from the policy, never a
data value. A Counter ``raymask_records`` is exported by Ray as ``ray_raymask_records_total``.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["PipelineMetrics", "LATENCY_BOUNDARIES"]

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
