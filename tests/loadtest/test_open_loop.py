"""The open-loop search's pacing: Poisson arrivals per user (a fake clock), users added as the
offered rate rises, and the keep-up bound."""

from __future__ import annotations

import argparse
import math
import os
import random

os.environ.setdefault("LOCUST_SKIP_MONKEY_PATCH", "1")  # see test_shapes.py

from raymask.loadtest import load, locustfile  # noqa: E402


class _User:
    pass


def test_poisson_pacing_keeps_its_schedule_and_never_bursts(monkeypatch):
    random.seed(7)
    now = [100.0]
    monkeypatch.setattr(locustfile.time, "monotonic", lambda: now[0])
    wait = locustfile.poisson_throughput(5.0)
    u = _User()
    gaps = []
    for _ in range(20_000):  # answers take 30 ms; the rest of each gap is waited
        w = wait(u)
        gaps.append(w + 0.03)
        now[0] += w + 0.03
    # mean gap 1/rate (+ the ~1% lost when an answer outlasts its gap): a seeded draw,
    # the exponential's standard error over 20,000 gaps is 0.7%
    assert 0.2 < sum(gaps) / len(gaps) < 0.2 * 1.04
    now[0] += 10.0  # an answer 10 s late: the overdue send goes at once, then the schedule
    waits = [wait(u) for _ in range(5)]  # goes on from now: no burst to catch up ~50 sends
    assert waits[0] == 0 and all(w > 0 for w in waits[1:])


def test_search_adds_users_as_the_rate_rises_and_stops_after_two_misses(monkeypatch, tmp_path):
    calls = []

    def phase(d, host, args, **kw):  # an app that answers anything up to 130 requests/s
        calls.append((kw["users"], kw["rate"], kw["arrivals"]))
        d.mkdir(parents=True, exist_ok=True)
        offered = kw["users"] * kw["rate"]
        (d / "agg").write_text(repr(min(offered, 130.0)))
        return 0

    def agg(d):
        got = float((d / "agg").read_text())
        return {"requests": got * 8, "failures": 0.0, "requests_per_s": got,
                "p50_ms": 10.0, "p99_ms": 50.0 if got < 130 else 400.0}  # fmt: skip

    monkeypatch.setattr(load, "http_phase", phase)
    monkeypatch.setattr(load, "aggregated", agg)
    args = argparse.Namespace(users=4, views="default")
    rows = load.find_max(tmp_path, "http://x", args, None)
    assert [r["offered_requests_per_s"] for r in rows] == [4, 20, 40, 60, 80, 100, 120, 140, 140]
    assert [c[0] for c in calls] == [4, 4, 8, 12, 16, 20, 24, 28, 28]
    assert all(math.isclose(u * r, o) for (u, r, _), o in zip(
        calls, [4, 20, 40, 60, 80, 100, 120, 140, 140], strict=True))  # fmt: skip
    assert {c[2] for c in calls} == {"poisson"}
    assert load.best_sustained(rows) == 120
    assert "| 120 | 24 |" in (tmp_path / "max.md").read_text()


def test_keep_up_bound():
    assert math.isclose(load.kept_up(100, 8), 90 - 3 * math.sqrt(12.5))
    assert load.kept_up(4, 8) < 4 * 0.9
