"""The load shapes: the (users, spawn rate) each second of a test, from a fake clock."""

from __future__ import annotations

import os

# importing locust would monkey-patch this pytest process with gevent (and Ray in it) unless told
# not to; the Locust runs themselves are subprocesses (loadtest/load.py drops this variable)
os.environ.setdefault("LOCUST_SKIP_MONKEY_PATCH", "1")

import pytest  # noqa: E402

from raymask.loadtest.shapes import SHAPES, SPIKE_FACTOR, DayInTheLifeShape, SteadyShape  # noqa: E402


def _ticks(shape, seconds: float, step: float = 1.0) -> list:
    out = []
    t = 0.0
    while t <= seconds + 2 * step:
        shape.get_run_time = lambda t=t: t  # Locust's clock, replaced
        out.append(shape.tick())
        t += step
    return out


def test_day_in_the_life_ramps_holds_spikes_to_5x_recovers_then_ends():
    ticks = _ticks(DayInTheLifeShape(users=4, seconds=100), 100)
    users = [t[0] if t else None for t in ticks]
    assert users[:20] == [4] * 20  # ramp (Locust spawns toward 4 at the given rate)
    assert ticks[0][1] == pytest.approx(4 / 20)  # the ramp takes 20 s
    assert users[20:50] == [4] * 30  # steady
    assert users[50:65] == [4 * SPIKE_FACTOR] * 15  # spike to 5x, reached within a second
    assert ticks[50][1] >= 4 * SPIKE_FACTOR
    assert users[65:100] == [4] * 35  # recovery to the base
    assert users[100:] == [None] * len(users[100:])  # the test ends


def test_steady_ramps_in_a_tenth_then_holds_then_ends():
    ticks = _ticks(SteadyShape(users=6, seconds=30), 30)
    assert ticks[0] == (6, pytest.approx(6 / 3))
    assert all(t == (6, 6) for t in ticks[3:30])
    assert ticks[30] is None and ticks[-1] is None


def test_shapes_take_their_defaults_from_the_environment(monkeypatch):
    monkeypatch.setenv("RAYMASK_LOAD_USERS", "3")
    monkeypatch.setenv("RAYMASK_LOAD_SECONDS", "10")
    s = SHAPES["day"]()
    assert (s.users, s.seconds) == (3, 10.0)
    assert s.stages[-1].until_s == 10.0
    with pytest.raises(ValueError, match="users >= 1"):
        SteadyShape(users=0, seconds=5)


def test_locust_finds_exactly_one_shape_in_the_locustfile(monkeypatch):
    from locust.util.load_locustfile import load_locustfile

    from raymask.loadtest.load import LOCUSTFILE

    monkeypatch.setenv("RAYMASK_LOAD_SHAPE", "day")
    users, shapes = load_locustfile(str(LOCUSTFILE))
    assert [type(s).__name__ for s in shapes] == ["DayInTheLifeShape"]
    assert {"MaskOneRecord", "MaskHundredRecords", "KafkaProducer"} <= set(users)
    from gevent import monkey

    assert not monkey.is_module_patched("socket")  # this process stays unpatched
