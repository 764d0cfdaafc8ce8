"""The noise benchmark's accounting parts run end to end on a small input (speed is measured
by `python -m raymask.loadtest.noise_bench`, never asserted here)."""

from __future__ import annotations

from raymask.loadtest.noise_bench import accounting, worker_overhead


def test_accounting_steps_all_run():
    got = accounting(2_000, 300, 1)
    assert next(iter(got)) == "Laplace kernel (the reference)"
    assert len(got) == 9 and all(t > 0 for t in got.values())


def test_worker_overhead_runs_with_and_without_a_budget():
    got = worker_overhead(3_000, 500, 1_000, 1)
    assert set(got) == {"without a budget", "with a budget"}
    assert all(t > 0 for t in got.values())
