"""Benchmark: windowed DP aggregation (count + sum per group, 10k groups, 1-minute tumbling
windows) through raymask's WindowAggregator beside PipelineDP's local backend on the same events,
same run.

    python -m raymask.loadtest.aggregate_bench [--events N] [--groups G] [--repeat R]

Both bound contributions (1 group and 5 rows per subject and window), add Laplace noise and
select partitions privately. raymask's side is timed from Arrow columns to released windows,
PipelineDP's from a list of rows to its materialized result.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pyarrow as pa

from raymask.actors.accountant import Accountant
from raymask.actors.aggregates import Metric, WindowAggregator, WindowSpec


def events(n: int, groups: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "subject": pa.array(rng.integers(1, n // 5 + 2, n).astype(np.uint64)),
            "time": pa.array(np.sort(rng.uniform(0, 600, n))),  # 10 one-minute windows
            "group": pa.array([f"g{i}" for i in rng.integers(0, groups, n)]),
            "amount": pa.array(rng.uniform(0, 200, n)),
        }
    )


def ours(t: pa.Table, db: str) -> float:
    acc = Accountant(db)
    acc.set_budget("bench", {"epsilon": 1e9, "delta": 0.5, "accounting": "basic"})
    spec = WindowSpec(size_s=60, max_groups=1, max_rows=5, delta=1e-6,
                      metrics=(Metric("count", 0.5), Metric("sum", 0.5, "amount", 0, 200)))  # fmt: skip
    agg = WindowAggregator(spec, accountant=acc, scopes=["bench"])
    t0 = time.perf_counter()
    for i in range(0, t.num_rows, 100_000):
        agg.add(t.slice(i, 100_000))
        agg.flush()
    agg.flush(final=True)
    return time.perf_counter() - t0


def theirs(t: pa.Table) -> float:
    import pipeline_dp

    subj = t["subject"].to_pylist()
    win = (np.floor(t["time"].to_numpy() / 60)).astype(int).tolist()
    grp = t["group"].to_pylist()
    amt = t["amount"].to_pylist()
    rows = list(zip(subj, win, grp, amt, strict=True))
    t0 = time.perf_counter()
    budget = pipeline_dp.NaiveBudgetAccountant(total_epsilon=1.0, total_delta=1e-6)
    engine = pipeline_dp.DPEngine(budget, pipeline_dp.LocalBackend())
    params = pipeline_dp.AggregateParams(
        noise_kind=pipeline_dp.NoiseKind.LAPLACE,
        metrics=[pipeline_dp.Metrics.COUNT, pipeline_dp.Metrics.SUM],
        max_partitions_contributed=1, max_contributions_per_partition=5,
        min_value=0.0, max_value=200.0,
    )  # fmt: skip
    ex = pipeline_dp.DataExtractors(
        privacy_id_extractor=lambda r: (r[0], r[1]), partition_extractor=lambda r: (r[1], r[2]),
        value_extractor=lambda r: r[3],
    )  # fmt: skip
    res = engine.aggregate(rows, params, ex)
    budget.compute_budgets()
    list(res)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    t = events(a.events, a.groups)
    with tempfile.TemporaryDirectory() as d:
        ours(t.slice(0, 10_000), f"{d}/warm.sqlite")  # compile
        best_o = min(ours(t, f"{d}/o{i}.sqlite") for i in range(a.repeat))
    best_t = min(theirs(t) for _ in range(max(1, a.repeat - 1)))
    print(f"{a.events:,} events, {a.groups:,} groups, 1-minute tumbling windows, best of runs")
    print(f"raymask WindowAggregator: {a.events / best_o:,.0f} events/s ({best_o:.2f} s)")
    print(f"PipelineDP LocalBackend:  {a.events / best_t:,.0f} events/s ({best_t:.2f} s)")
    print(f"ratio: {best_t / best_o:.1f}x")


if __name__ == "__main__":
    main()
