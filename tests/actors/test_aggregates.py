"""Windowed DP aggregates: exact against a pyarrow group-by with noise off, contribution
bounding, late rows, the noise scale and partition selection with stated confidence, and the
accountant charged for every window."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from raymask.actors.accountant import Accountant
from raymask.actors.aggregates import Metric, WindowAggregator, WindowSpec, _bound
from raymask.kernels.rng import SecureRandom


def _rows(n: int, seed: int = 0, subjects: int = 50, groups: int = 8, span_s: float = 600.0):
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "subject": pa.array(rng.integers(1, subjects + 1, n).astype(np.uint64)),
            "time": pa.array(np.sort(rng.uniform(0, span_s, n))),
            "group": pa.array([f"g{i}" for i in rng.integers(0, groups, n)]),
            "amount": pa.array(rng.uniform(-20, 120, n)),
        }
    )


def _acc(tmp_path) -> Accountant:  # noqa: ANN001
    acc = Accountant(tmp_path / "b.sqlite")
    acc.set_budget("stream:t", {"epsilon": 1000.0, "delta": 1e-3, "accounting": "basic"})
    return acc


SPEC = WindowSpec(
    size_s=60, max_groups=100, max_rows=10**6,
    metrics=(Metric("count", 1.0), Metric("sum", 1.0, "amount", 0.0, 100.0)),
)  # fmt: skip


def _reference(rows: pa.Table, start: float, end: float) -> dict[str, tuple[int, float]]:
    t = rows.filter(pc.and_(pc.greater_equal(rows["time"], start), pc.less(rows["time"], end)))
    t = t.set_column(3, "amount", pc.max_element_wise(pc.min_element_wise(t["amount"], 100.0), 0.0))
    g = t.group_by("group").aggregate([("group", "count"), ("amount", "sum")])
    return {
        k: (c, s)
        for k, c, s in zip(g["group"].to_pylist(), g["group_count"].to_pylist(),
                           g["amount_sum"].to_pylist(), strict=True)
    }  # fmt: skip


def test_noise_off_equals_a_pyarrow_group_by_per_tumbling_window(tmp_path):
    rows = _rows(5000)
    agg = WindowAggregator(SPEC, accountant=_acc(tmp_path), scopes=["stream:t"], noise=False)
    for i in range(0, 5000, 700):  # in batches
        assert len(agg.add(rows.slice(i, 700))) == 0
    releases = agg.flush(final=True)
    assert [r.start for r in releases] == [60.0 * i for i in range(10)]
    for r in releases:
        want = _reference(rows, r.start, r.end)
        got = dict(zip(r.table["group"].to_pylist(),
                       zip(r.table["count"].to_pylist(), r.table["sum_amount"].to_pylist(),
                           strict=True), strict=True))  # fmt: skip
        assert got.keys() == want.keys()
        for k, (c, s) in want.items():
            assert got[k][0] == c and got[k][1] == pytest.approx(s, rel=1e-12)


def test_hopping_windows_count_each_row_in_size_over_slide_windows(tmp_path):
    rows = _rows(2000, seed=1)
    spec = WindowSpec(size_s=120, slide_s=60, max_groups=100, max_rows=10**6)
    agg = WindowAggregator(spec, accountant=_acc(tmp_path), scopes=["stream:t"], noise=False)
    agg.add(rows)
    rel = agg.flush(final=True)
    total = sum(int(pc.sum(r.table["count"]).as_py()) for r in rel)
    assert total == 2 * 2000  # every row in two windows
    for r in rel:
        want = _reference(rows, r.start, r.end)
        assert sum(c for c, _ in want.values()) == int(pc.sum(r.table["count"]).as_py())


def test_contribution_bounding_keeps_first_groups_and_rows_per_subject():
    t = pa.table(
        {
            "subject": pa.array([1, 1, 1, 1, 1, 2, 2, 1], pa.uint64()),
            "group": ["a", "a", "a", "b", "c", "a", "a", "b"],
            "time": [0.0, 1, 2, 3, 4, 5, 6, 7],
        }
    )
    kept = _bound(t, max_groups=2, max_rows=2)
    assert kept["time"].to_pylist() == [0.0, 1, 3, 5, 6, 7]  # subject 1: a twice, b twice; no c


def test_late_rows_come_back_and_windows_close_at_the_watermark(tmp_path):
    spec = WindowSpec(size_s=60, lateness_s=10, max_groups=10, max_rows=100)
    agg = WindowAggregator(spec, accountant=_acc(tmp_path), scopes=["stream:t"], noise=False)
    mk = lambda ts: pa.table({"subject": pa.array([1] * len(ts), pa.uint64()), "time": ts,  # noqa: E731
                              "group": ["g"] * len(ts)})  # fmt: skip
    agg.add(mk([5.0, 30.0, 65.0]))
    assert agg.flush() == []  # watermark 55: window [0, 60) still open
    agg.add(mk([71.0]))  # watermark 61
    (r,) = agg.flush()
    assert (r.start, r.end, r.table["count"].to_pylist()) == (0.0, 60.0, [2])
    late = agg.add(mk([59.0, 80.0]))
    assert late.tolist() == [0]  # its window was released
    (r2,) = agg.flush(final=True)
    assert r2.table["count"].to_pylist() == [3]


def test_noise_scale_and_partition_selection(tmp_path):
    # one big group (always released) and 200 single-subject groups (each released with
    # probability <= delta / max_groups); counts' error is Laplace of scale max_groups *
    # max_rows / eps: |mean| and var inside 99.9% bounds over 400 windows
    acc = Accountant(tmp_path / "b.sqlite")
    acc.set_budget("stream:t", {"epsilon": 1e6, "delta": 0.5, "accounting": "basic"})
    spec = WindowSpec(size_s=1, max_groups=2, max_rows=3, delta=1e-4,
                      metrics=(Metric("count", 0.5),))  # fmt: skip
    agg = WindowAggregator(
        spec, accountant=acc, scopes=["stream:t"], rng=SecureRandom._for_tests(5)
    )
    errs, rare = [], 0
    for w in range(400):
        subj = np.arange(1, 1001, dtype=np.uint64)
        t = pa.table({"subject": pa.array(np.concatenate([subj, subj[:200] + 5000])),
                      "time": np.full(1200, w + 0.5),
                      "group": ["big"] * 1000 + [f"r{i}" for i in range(200)]})  # fmt: skip
        agg.add(t)
        (r,) = agg.flush(final=True)
        got = dict(zip(r.table["group"].to_pylist(), r.table["count"].to_pylist(), strict=True))
        errs.append(got["big"] - 1000)
        rare += len(got) - 1
        assert r.epsilon == 0.5 and r.grant_id
    b = 2 * 3 / 0.5
    errs = np.array(errs, float)
    assert abs(errs.mean()) < 3.3 * math.sqrt(2 * b * b / 400)
    assert 0.6 * 2 * b * b < errs.var() < 1.5 * 2 * b * b
    # 80,000 single-subject groups, each released with probability <= delta / max_groups:
    # above the 99.9% Poisson quantile of that bound fails with probability < 0.001
    from scipy import stats

    assert rare <= stats.poisson.ppf(0.999, 80_000 * 1e-4 / 2)
    assert acc.status("stream:t")[0]["spent"] == pytest.approx(400 * 0.5)


def test_a_window_the_budget_cannot_pay_is_refused_and_not_released(tmp_path):
    acc = Accountant(tmp_path / "b.sqlite")
    acc.set_budget("stream:t", {"epsilon": 1.5, "delta": 1e-3, "accounting": "basic"})
    spec = WindowSpec(size_s=60, metrics=(Metric("count", 1.0),))
    agg = WindowAggregator(spec, accountant=acc, scopes=["stream:t"])
    agg.add(_rows(200, span_s=130))
    first, second, third = agg.flush(final=True)
    assert first.refused is None and first.epsilon == 1.0
    assert second.refused and "would bring epsilon to 2 of 1.5" in second.refused
    assert second.table.num_rows == 0 and third.refused  # nothing released, nothing spent
    assert acc.status("stream:t")[0]["spent"] == 1.0


def test_mean_is_the_noisy_sum_over_the_noisy_count_within_bounds(tmp_path):
    rows = _rows(3000, seed=4)
    spec = WindowSpec(size_s=60, max_groups=100, max_rows=10**6,
                      metrics=(Metric("count", 1.0), Metric("mean", 1.0, "amount", 0.0, 100.0)))  # fmt: skip
    exact = WindowAggregator(spec, accountant=_acc(tmp_path), scopes=["stream:t"], noise=False)
    exact.add(rows)
    for r in exact.flush(final=True):
        want = _reference(rows, r.start, r.end)
        for g, m in zip(
            r.table["group"].to_pylist(), r.table["mean_amount"].to_pylist(), strict=True
        ):
            assert m == pytest.approx(want[g][1] / want[g][0], rel=1e-12)
    noisy = WindowAggregator(SPEC.__class__(size_s=60, max_groups=1, max_rows=1,
                             metrics=spec.metrics), accountant=_acc(tmp_path),
                             scopes=["stream:t"], rng=SecureRandom._for_tests(3))  # fmt: skip
    noisy.add(_rows(20000, seed=5, subjects=20000))
    means = np.concatenate([r.table["mean_amount"].to_numpy() for r in noisy.flush(final=True)])
    assert len(means) and ((means >= 0) & (means <= 100)).all()


# histograms, quantiles and top-k ------------------------------------------------------------

RICH = WindowSpec(
    size_s=60, max_groups=100, max_rows=10**6,
    metrics=(
        Metric("count", 1.0),
        Metric("histogram", 1.0, "amount", 0.0, 100.0, bins=5),
        Metric("quantiles", 1.0, "amount", 0.0, 100.0, quantiles=(0.1, 0.5, 0.9)),
        Metric("top_k", 1.0, "merchant", k=3),
    ),
)  # fmt: skip


def _rich_rows(n: int, seed: int = 0) -> pa.Table:
    """_rows plus a merchant per row, drawn from a skewed law of its own per group, so the top
    three differ by group."""
    rng = np.random.default_rng(seed)
    t = _rows(n, seed=seed)
    group = np.array([int(g[1:]) for g in t["group"].to_pylist()])
    p = rng.dirichlet(np.ones(12), size=8)[group]
    pick = (p.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return t.append_column("merchant", pa.array(np.array([f"m{i}" for i in range(12)])[pick]))


def test_histograms_quantiles_and_top_k_noise_off_equal_a_plain_reference(tmp_path):
    rows = _rich_rows(6000, seed=11)
    agg = WindowAggregator(RICH, accountant=_acc(tmp_path), scopes=["stream:t"], noise=False)
    for i in range(0, 6000, 1000):
        agg.add(rows.slice(i, 1000))
    releases = agg.flush(final=True)
    assert len(releases) == 10
    step = 100.0 / 16**4  # a leaf of the quantile tree
    from collections import Counter

    for r in releases:
        w = rows.filter(
            pc.and_(pc.greater_equal(rows["time"], r.start), pc.less(rows["time"], r.end))
        )
        for g, hist, qs, top in zip(
            r.table["group"].to_pylist(), r.table["histogram_amount"].to_pylist(),
            r.table["quantiles_amount"].to_pylist(), r.table["top_merchant"].to_pylist(),
            strict=True,
        ):  # fmt: skip
            sel = w.filter(pc.equal(w["group"], g))
            x = np.clip(sel["amount"].to_numpy(), 0.0, 100.0)
            want = np.histogram(x, bins=5, range=(0.0, 100.0))[0]
            assert hist == want.tolist()
            xs = np.sort(x)
            for q, got in zip((0.1, 0.5, 0.9), qs, strict=True):
                assert abs(got - xs[math.floor(q * len(xs))]) <= step + 1e-9
            counts = Counter(sel["merchant"].to_pylist())
            counts = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]  # ties: by value
            assert [(d["value"], d["count"]) for d in top] == counts


def test_quantile_tree_with_noise_stays_close_on_a_large_group(tmp_path):
    # 20 groups of 20,000 rows, eps 1 for the quantiles: each node's noise has scale 4 (4 levels,
    # one row per subject) against counts near 1,250 per child; a rank moves by a few tens, far
    # inside 1% of the range (the bound below is over 9 standard deviations of that error)
    n, G = 20_000, 20
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 100, n * G)
    t = pa.table({"subject": pa.array(np.arange(n * G, dtype=np.uint64)),
                  "time": np.full(n * G, 1.0), "group": [f"g{i}" for i in range(G)] * n,
                  "amount": x})  # fmt: skip
    spec = WindowSpec(size_s=60, metrics=(Metric("count", 1.0), RICH.metrics[2]))
    agg = WindowAggregator(spec, accountant=_acc(tmp_path), scopes=["stream:t"],
                           rng=SecureRandom._for_tests(8))  # fmt: skip
    agg.add(t)
    (r,) = agg.flush(final=True)
    assert r.table.num_rows == G and r.epsilon == 2.0
    for qs in r.table["quantiles_amount"].to_pylist():
        assert np.allclose(qs, [10.0, 50.0, 90.0], atol=1.0 + 1.0)  # 1 from sampling, 1 noise
        assert qs == sorted(qs)


def test_histogram_noise_has_the_calibrated_scale(tmp_path):
    # 4,000 cells of a 10-bin histogram, sensitivity max_groups * max_rows = 2, eps 0.5: the
    # error is discrete Laplace of scale 4 (cells far from 0, so the clamp never bites); mean and
    # variance inside bounds that fail with probability < 0.001 each
    G, per = 400, 1000
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 100, G * per)
    t = pa.table({"subject": pa.array(np.arange(G * per, dtype=np.uint64)),
                  "time": np.full(G * per, 1.0),
                  "group": np.repeat([f"g{i}" for i in range(G)], per), "amount": x})  # fmt: skip
    spec = WindowSpec(size_s=60, max_groups=2, max_rows=1,
                      metrics=(Metric("count", 1.0), Metric("histogram", 0.5, "amount", 0, 100, bins=10)))  # fmt: skip
    agg = WindowAggregator(spec, accountant=_acc(tmp_path), scopes=["stream:t"],
                           rng=SecureRandom._for_tests(9))  # fmt: skip
    agg.add(t)
    (r,) = agg.flush(final=True)
    exact = {}
    g = np.repeat(np.arange(G), per)
    for i in range(G):
        exact[f"g{i}"] = np.histogram(x[g == i], bins=10, range=(0, 100))[0]
    err = np.concatenate([np.array(h) - exact[k] for k, h in zip(
        r.table["group"].to_pylist(), r.table["histogram_amount"].to_pylist(), strict=True)])  # fmt: skip
    assert len(err) == G * 10
    q = math.exp(-1 / 4)
    var = 2 * q / (1 - q) ** 2
    assert abs(err.mean()) < 3.3 * math.sqrt(var / len(err))
    assert 0.85 * var < err.var() < 1.15 * var


def test_top_k_hides_values_one_subject_alone_brings(tmp_path):
    # per window: one group of 1,000 subjects, 500 of them on "common", and 100 values each from
    # one subject; a rare value is shown with probability <= delta / (max_groups * max_rows)
    # over 200 windows: 20,000 chances, expected < 1 (99.9% Poisson bound below)
    from scipy import stats

    acc = Accountant(tmp_path / "b.sqlite")
    acc.set_budget("stream:t", {"epsilon": 1e6, "delta": 0.5, "accounting": "basic"})
    spec = WindowSpec(size_s=1, max_groups=1, max_rows=1, delta=1e-5,
                      metrics=(Metric("count", 1.0), Metric("top_k", 1.0, "merchant", k=200)))  # fmt: skip
    agg = WindowAggregator(spec, accountant=acc, scopes=["stream:t"],
                           rng=SecureRandom._for_tests(4))  # fmt: skip
    rare, commons = 0, []
    for w in range(200):
        m = ["common"] * 500 + [f"r{i}" for i in range(100)] + ["x"] * 400
        agg.add(pa.table({"subject": pa.array(np.arange(1000, dtype=np.uint64)),
                          "time": np.full(1000, w + 0.5), "group": ["g"] * 1000,
                          "merchant": m}))  # fmt: skip
        (r,) = agg.flush(final=True)
        (top,) = r.table["top_merchant"].to_pylist()
        names = [d["value"] for d in top]
        assert names[:2] == ["common", "x"]
        commons.append(top[0]["count"] - 500)
        rare += len(names) - 2
        assert r.delta == pytest.approx(2e-5)  # the groups' selection and the values'
    assert rare <= stats.poisson.ppf(0.999, 20_000 * 1e-5)
    assert abs(np.mean(commons)) < 3.3 * math.sqrt(2 * math.e / (math.e - 1) ** 2 / 200)


def test_quantile_error_matches_pipelinedp_on_the_same_data_and_bounds(tmp_path):
    # 300 groups of 200 rows, one per subject, median over [0, 100] at epsilon 1: PipelineDP's
    # PERCENTILE(50) runs the same kind of tree (16-ary, height 4) with Laplace noise. The RMSE
    # ratio, ours over theirs, came out 0.91-1.09 over nine seeds (sd about 0.05); the band
    # below is about four sd wide on each side
    import pipeline_dp

    G, per = 300, 200
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 100, G * per)
    g = np.repeat(np.arange(G), per)
    names = [f"g{i}" for i in g]
    spec = WindowSpec(size_s=60, metrics=(Metric("count", 1.0),
                      Metric("quantiles", 1.0, "amount", 0, 100, quantiles=(0.5,))))  # fmt: skip
    agg = WindowAggregator(spec, accountant=_acc(tmp_path), scopes=["stream:t"],
                           rng=SecureRandom._for_tests(1))  # fmt: skip
    agg.add(pa.table({"subject": pa.array(np.arange(G * per, dtype=np.uint64)),
                      "time": np.full(G * per, 1.0), "group": names, "amount": x}))  # fmt: skip
    (r,) = agg.flush(final=True)
    true = {f"g{i}": np.sort(x[g == i])[per // 2] for i in range(G)}
    ours = np.array([q[0] - true[k] for k, q in zip(
        r.table["group"].to_pylist(), r.table["quantiles_amount"].to_pylist(), strict=True)])  # fmt: skip
    assert len(ours) == G

    budget = pipeline_dp.NaiveBudgetAccountant(total_epsilon=1.0, total_delta=1e-6)
    engine = pipeline_dp.DPEngine(budget, pipeline_dp.LocalBackend())
    params = pipeline_dp.AggregateParams(
        noise_kind=pipeline_dp.NoiseKind.LAPLACE, metrics=[pipeline_dp.Metrics.PERCENTILE(50)],
        max_partitions_contributed=1, max_contributions_per_partition=1,
        min_value=0.0, max_value=100.0,
    )  # fmt: skip
    ext = pipeline_dp.DataExtractors(
        privacy_id_extractor=lambda t: t[0], partition_extractor=lambda t: t[1],
        value_extractor=lambda t: t[2],
    )  # fmt: skip
    res = engine.aggregate(list(zip(range(G * per), names, x.tolist(), strict=True)), params, ext,
                           public_partitions=sorted(true))  # fmt: skip
    budget.compute_budgets()
    theirs = np.array([v.percentile_50 - true[k] for k, v in res])
    assert len(theirs) == G
    ratio = math.sqrt((ours**2).mean() / (theirs**2).mean())
    assert 0.8 < ratio < 1.25, ratio


def test_noisy_sums_move_by_no_more_than_their_calibrated_sensitivity(monkeypatch):
    """With the noise off, one subject's rows (one in each of 50 groups, each at the bound)
    move the grid sums by at most D = rows * ceil(vmax / g) steps in L1, the sensitivity the
    noise is calibrated to, even when every group's sum sits next to a rounding tie. (Rounding
    each group's float sum moved them by up to one step more per group: 12,850 steps against a
    calibrated 12,802, an epsilon of 0.010037 for 0.01 reserved.)"""
    from raymask.actors import aggregates as agg

    monkeypatch.setattr(
        agg.noise_kernel, "discrete_laplace", lambda n, t, s, rng: np.zeros(n, np.int64)
    )
    groups, eps = 50, 0.01
    j = math.frexp(groups * 1.0 / eps)[1] - 1 - 20
    g = math.ldexp(1.0, j)
    vmax = (math.floor(1.0 / g) + 0.001) * g  # just above a multiple of the grid
    assert math.frexp(groups * vmax / eps)[1] - 1 - 20 == j
    D = groups * math.ceil(vmax / g)
    rng = np.random.default_rng(4)
    for _ in range(20):
        base = rng.integers(0, 1000, 200) * g + rng.choice([0.4995, 0.5, 0.5005], 200) * g
        idx = np.arange(200) % groups
        x = np.concatenate([base, np.full(groups, vmax)])
        with_subject = agg._noisy_sums(x, np.concatenate([idx, np.arange(groups)]), groups,
                                       groups, vmax, eps, None)  # fmt: skip
        without = agg._noisy_sums(base, idx, groups, groups, vmax, eps, None)
        assert np.abs(with_subject - without).sum() / g <= D
