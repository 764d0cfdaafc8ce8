"""The pool autoscaler's policy on a fake clock: when it grows, by how much, when it shrinks,
and what it never does (act on one sample, leave its bounds, answer one burst twice)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from raymask.actors.autoscale import AutoscaleConfig, PoolAutoscaler


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _scaler(**kw):
    cfg = dict(min_workers=1, max_workers=8, target_lag_s=2.0, low_lag_s=0.5, up_after_s=3.0,
               down_after_s=10.0, cooldown_s=5.0)  # fmt: skip
    cfg.update(kw)
    clock = Clock()
    return PoolAutoscaler(AutoscaleConfig(**cfg), clock), clock


def test_a_lag_over_target_grows_the_pool_only_once_it_has_lasted_up_after_s():
    s, clock = _scaler()
    assert s.decide(5.0, 1) == 1  # first sight
    clock.t += 2.9
    assert s.decide(5.0, 1) == 1
    clock.t += 0.2
    assert s.decide(5.0, 1) == 2  # lag 5 s / target 2 s: x2.5, capped at double


def test_growth_is_proportional_to_the_lag_at_least_one_at_most_double_and_the_max():
    for lag, workers, want in [(2.1, 3, 4), (5.0, 3, 6), (7.0, 3, 6), (100.0, 6, 8)]:
        s, clock = _scaler()
        s.decide(lag, workers)
        clock.t += 3.0
        assert s.decide(lag, workers) == want, (lag, workers)


def test_a_lag_that_dips_under_target_restarts_the_wait():
    s, clock = _scaler()
    s.decide(5.0, 2)
    clock.t += 2.0
    s.decide(1.0, 2)  # between low and target: neither up nor down
    clock.t += 2.0
    assert s.decide(5.0, 2) == 2
    clock.t += 2.9
    assert s.decide(5.0, 2) == 2
    clock.t += 0.1
    assert s.decide(5.0, 2) == 4


def test_low_lag_shrinks_by_one_after_down_after_s_and_never_under_the_minimum():
    s, clock = _scaler(min_workers=2)
    assert s.decide(0.0, 4) == 4
    clock.t += 10.0
    assert s.decide(0.0, 4) == 3
    clock.t += 10.0  # fresh evidence needed: the wait restarted at the change
    assert s.decide(0.1, 3) == 3
    clock.t += 10.0
    assert s.decide(0.1, 3) == 2
    clock.t += 100.0
    s.decide(0.0, 2)
    clock.t += 100.0
    assert s.decide(0.0, 2) == 2


def test_no_change_within_the_cooldown_of_the_last_one():
    s, clock = _scaler(up_after_s=0.0, cooldown_s=5.0)
    assert s.decide(5.0, 1) == 2
    clock.t += 1.0
    assert s.decide(9.0, 2) == 2  # still cooling down
    clock.t += 4.0
    assert s.decide(9.0, 2) == 4


def test_a_pool_outside_its_bounds_is_brought_inside():
    s, _ = _scaler(min_workers=2, max_workers=4)
    assert s.decide(1.0, 1) == 2
    assert s.decide(1.0, 9) == 4


@pytest.mark.parametrize(
    "bad",
    [dict(min_workers=5, max_workers=4), dict(low_lag_s=3.0, target_lag_s=2.0),
     dict(min_workers=0), dict(worker_cpus=0), dict(surprise=1)],
)  # fmt: skip
def test_inconsistent_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        AutoscaleConfig(**bad)
