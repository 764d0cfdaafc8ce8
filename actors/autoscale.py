"""Autoscaling of a streaming worker pool from its lag.

The signal is the age of the records being masked: produce time to now, the oldest of a round.
It is what a consumer falling behind looks like from inside, it needs no end offsets (tansu
reports those wrongly), and it is in seconds, so one target fits any record rate.

`PoolAutoscaler.decide` is the policy, with no Ray in it (tests drive it with a fake clock):
- up when the lag stays above `target_lag_s` for `up_after_s`: to about workers * lag / target,
  at least one more, at most double, at most `max_workers`;
- down by one when the lag stays below `low_lag_s` for `down_after_s` (an idle input counts as
  no lag), never under `min_workers`;
- nothing within `cooldown_s` of the last change, so one burst is not answered twice.

`request_nodes` tells Ray's autoscaler how many workers the pool wants placed
(`ray.autoscaler.sdk.request_resources`), so nodes are added before the new workers wait on
them, and the request shrinks with the pool so idle nodes can go. The pool itself (starting,
joining and stopping workers between rounds, handing key state over) is the pipeline's
(raymask.cluster.kafka_pipeline).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AutoscaleConfig", "PoolAutoscaler", "request_nodes"]


class AutoscaleConfig(BaseModel):
    """Bounds and thresholds of a pool's autoscaling."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_workers: int = Field(1, ge=1)
    max_workers: int = Field(8, ge=1, le=256)
    target_lag_s: float = Field(2.0, gt=0)
    low_lag_s: float = Field(0.5, ge=0)
    up_after_s: float = Field(2.0, ge=0)
    down_after_s: float = Field(15.0, ge=0)
    cooldown_s: float = Field(5.0, ge=0)
    worker_cpus: float = Field(0.5, gt=0)
    request_nodes: bool = True  # ask Ray's autoscaler for room (off: wait for what is there)
    start_timeout_s: float = Field(120.0, gt=0)  # a new worker not up by then is given up

    @model_validator(mode="after")
    def _bounds(self) -> AutoscaleConfig:
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers {self.min_workers} > max_workers {self.max_workers}")
        if self.low_lag_s >= self.target_lag_s:
            raise ValueError("low_lag_s must be below target_lag_s")
        return self


class PoolAutoscaler:
    """The desired pool size from the lag seen over time (see the module docstring)."""

    def __init__(
        self, config: AutoscaleConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.clock = clock
        self.above_since: float | None = None
        self.below_since: float | None = None
        self.changed_at = -math.inf

    def decide(self, lag_s: float, workers: int) -> int:
        """The pool size to have now, given the current lag and size."""
        c, now = self.config, self.clock()
        want = min(max(workers, c.min_workers), c.max_workers)
        if lag_s > c.target_lag_s:
            self.below_since = None
            self.above_since = now if self.above_since is None else self.above_since
            if now - self.above_since >= c.up_after_s and now - self.changed_at >= c.cooldown_s:
                grow = math.ceil(workers * lag_s / c.target_lag_s)
                want = min(c.max_workers, max(workers + 1, min(2 * workers, grow)))
        elif lag_s < c.low_lag_s:
            self.above_since = None
            self.below_since = now if self.below_since is None else self.below_since
            if now - self.below_since >= c.down_after_s and now - self.changed_at >= c.cooldown_s:
                want = max(c.min_workers, min(want, workers - 1))
        else:
            self.above_since = self.below_since = None
        if want != workers:
            self.changed_at = now
            self.above_since = self.below_since = None  # the next change needs fresh evidence
        return want


def request_nodes(workers: int, worker_cpus: float) -> None:
    """Ask Ray's autoscaler for room for `workers` pool workers (0: withdraw the request). A
    floor on the cluster's size, not an addition to what runs; a no-op without an autoscaler."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[{"CPU": worker_cpus}] * workers)
