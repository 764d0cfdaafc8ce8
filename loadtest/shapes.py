"""Locust load shapes: how many users run at each second of a load test.

A shape is a list of stages (until when, how many users, how fast to get there); `stage_at` is
the pure part (tested with a plain clock), `LoadTestShape.tick()` asks it with Locust's run time.
Locust creates a shape without arguments, so the defaults come from the environment:
RAYMASK_LOAD_USERS (the base user count) and RAYMASK_LOAD_SECONDS (the whole shape's length).

- `SteadyShape`: ramp to the base in a tenth of the time, hold, stop. The echo comparison runs it,
  so raymask and the echo deployment see the same load.
- `DayInTheLifeShape`: ramp (20%), steady (30%), spike to 5x (15%), recovery to the base (35%).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from locust import LoadTestShape

__all__ = ["Stage", "stage_at", "SteadyShape", "DayInTheLifeShape", "SHAPES", "SPIKE_FACTOR"]

SPIKE_FACTOR = 5


@dataclass(frozen=True)
class Stage:
    name: str
    until_s: float  # seconds from the start of the test
    users: int
    spawn_rate: float  # users started (or stopped) per second on the way to `users`


def stage_at(stages: list[Stage], t: float) -> Stage | None:
    """The stage in force at second `t`, None once the last one is over."""
    for s in stages:
        if t < s.until_s:
            return s
    return None


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class _StagedShape(LoadTestShape):
    abstract = True  # Locust must not pick this one from a locustfile

    def __init__(self, users: int | None = None, seconds: float | None = None) -> None:
        super().__init__()
        self.users = users if users is not None else _env_int("RAYMASK_LOAD_USERS", 4)
        self.seconds = seconds if seconds is not None else _env_float("RAYMASK_LOAD_SECONDS", 60)
        if self.users < 1 or self.seconds <= 0:
            raise ValueError("a load shape needs users >= 1 and seconds > 0")
        self.stages = self.build()

    def build(self) -> list[Stage]:
        raise NotImplementedError

    def tick(self) -> tuple[int, float] | None:
        s = stage_at(self.stages, self.get_run_time())
        return None if s is None else (s.users, s.spawn_rate)


class SteadyShape(_StagedShape):
    """Ramp to `users` in a tenth of the time (at least 1 s), then hold until `seconds`."""

    def build(self) -> list[Stage]:
        ramp = max(1.0, self.seconds / 10)
        return [
            Stage("ramp", ramp, self.users, self.users / ramp),
            Stage("steady", self.seconds, self.users, self.users),
        ]


class DayInTheLifeShape(_StagedShape):
    """A day squeezed into `seconds`: ramp to the base, hold, a spike to 5x the base, back."""

    def build(self) -> list[Stage]:
        d, b = self.seconds, self.users
        ramp, spike_at = 0.2 * d, 0.5 * d
        spike = b * SPIKE_FACTOR
        return [
            Stage("ramp", ramp, b, b / ramp),
            Stage("steady", spike_at, b, b),
            # a spike arrives at once: all extra users within about a second
            Stage("spike", 0.65 * d, spike, float(spike)),
            Stage("recovery", d, b, float(spike)),
        ]


SHAPES: dict[str, type[_StagedShape]] = {"steady": SteadyShape, "day": DayInTheLifeShape}
