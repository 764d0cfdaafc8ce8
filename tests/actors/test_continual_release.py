"""Continual release on the stream: exact running totals with noise off (bounding per subject over
the horizon), every step and horizon released and charged from the first, rows or none (the
schedule is not data), one charge per horizon committed before its first release, a refused
horizon released as nothing, late rows, and the noise at the counter's calibrated scale."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from raymask.actors.accountant import Accountant
from raymask.actors.continual import ContinualRelease, ContinualSpec
from raymask.kernels.continual import SqrtCounter, TreeCounter
from raymask.kernels.rng import SecureRandom


def _acc(tmp_path, eps: float = 1000.0, delta: float = 1e-3) -> Accountant:  # noqa: ANN001
    acc = Accountant(tmp_path / "b.sqlite")
    acc.set_budget("stream:t", {"epsilon": eps, "delta": delta, "accounting": "basic"})
    return acc


def _rows(subjects, times, values=None) -> pa.Table:  # noqa: ANN001
    cols = {
        "subject": pa.array(np.asarray(subjects, np.uint64)),
        "time": pa.array(times, pa.float64()),
    }
    if values is not None:
        cols["amount"] = pa.array(values, pa.float64())
    return pa.table(cols)


def test_noise_off_gives_the_running_count_with_rows_bounded_per_subject(tmp_path):
    spec = ContinualSpec(step_s=10, horizon=100, epsilon=1, delta=1e-6, max_rows=2)
    c = ContinualRelease(spec, accountant=_acc(tmp_path), scopes=["stream:t"], noise=False)
    # subject 1: four rows (two count); subject 2: one row; step 2 has none
    c.add(_rows([1, 1, 2], [1.0, 2.0, 15.0]))
    c.add(_rows([1, 1, 3], [31.0, 32.0, 33.0]))
    c.add(_rows([4], [55.0]))  # watermark 55: steps 0-4 are over
    rel = c.flush()
    assert [r.index for r in rel] == [0, 1, 2, 3, 4]
    assert [r.value for r in rel] == [2, 3, 3, 4, 4]  # step 3: only subject 3 counts
    assert c.flush(final=True)[-1].value == 5


def test_noise_off_sum_clamps_and_uses_the_grid(tmp_path):
    spec = ContinualSpec(step_s=1, horizon=10, epsilon=1, delta=1e-6, op="sum", field="amount",
                         lo=0, hi=100, max_rows=10)  # fmt: skip
    c = ContinualRelease(spec, accountant=_acc(tmp_path), scopes=["stream:t"], noise=False)
    c.add(_rows([1, 2, 3], [0.1, 0.2, 1.5], [10.0, 250.0, -5.0]))
    v = [r.value for r in c.flush(final=True)]
    g = spec.grid
    assert v == [round(10 / g) * g + round(100 / g) * g, round(10 / g) * g + round(100 / g) * g]


def test_one_charge_per_horizon_and_every_horizon_from_the_first_idle_or_not(tmp_path):
    acc = _acc(tmp_path)
    spec = ContinualSpec(step_s=1, horizon=4, epsilon=0.5, delta=1e-6)
    c = ContinualRelease(spec, accountant=acc, scopes=["stream:t"], rng=SecureRandom._for_tests(1))
    c.add(_rows([1, 2], [0.5, 5.5]))
    c.add(_rows([3], [40.5]))  # an idle stretch is released and charged all the same
    rel = c.flush(final=True)
    assert [r.index for r in rel] == list(range(41))
    assert [r.horizon_start for r in rel] == [4.0 * (k // 4) for k in range(41)]
    assert [r.charged for r in rel] == [k % 4 == 0 for k in range(41)]
    assert acc.status("stream:t")[0]["spent"] == pytest.approx(11 * 0.5)
    assert all(r.epsilon == 0.5 and r.refused is None for r in rel)


def _schedule(tmp_path, rows: pa.Table, start: float | None) -> tuple[list, float]:  # noqa: ANN001
    acc = _acc(tmp_path)
    spec = ContinualSpec(step_s=1, horizon=4, epsilon=0.5, delta=1e-6, start_s=start)
    c = ContinualRelease(spec, accountant=acc, scopes=["stream:t"], rng=SecureRandom._for_tests(1))
    late = c.add(rows)
    c.marks.see(30.0, None)  # the same end for both streams (the watermark is data too)
    rel = c.flush()
    return (
        [(r.index, r.horizon_start, r.charged, r.epsilon) for r in rel],
        acc.status("stream:t")[0]["spent"],
        late,
    )


def test_what_is_released_and_charged_does_not_depend_on_one_subjects_rows(tmp_path):
    """Two streams that differ in one subject's row, in an otherwise idle stretch: the same
    steps, horizons and charges (before, that row opened a horizon of its own: 4 more releases
    and one more charge). With a public start, the first row does not move the schedule either;
    rows before it are late."""
    base = _rows([1, 2], [2.5, 3.5])
    plus = _rows([1, 2, 9], [2.5, 3.5, 13.5])
    first = _rows([9, 1, 2], [0.5, 2.5, 3.5])  # one subject's row is the stream's first
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    got_a, spent_a, _ = _schedule(a, base, None)
    got_b, spent_b, _ = _schedule(b, plus, None)
    assert got_a == got_b and spent_a == spent_b
    c, d = tmp_path / "c", tmp_path / "d"
    c.mkdir()
    d.mkdir()
    got_c, spent_c, late_c = _schedule(c, base, 1.0)
    got_d, spent_d, late_d = _schedule(d, first, 1.0)
    assert got_c == got_d and spent_c == spent_d and got_c[0][:2] == (1, 1.0)
    assert late_c.tolist() == [] and late_d.tolist() == [0]


def test_a_horizon_the_budget_cannot_pay_releases_nothing(tmp_path):
    acc = _acc(tmp_path, eps=0.7)
    spec = ContinualSpec(step_s=1, horizon=2, epsilon=0.5, delta=1e-6)
    c = ContinualRelease(spec, accountant=acc, scopes=["stream:t"], rng=SecureRandom._for_tests(1))
    c.add(_rows([1, 1, 1], [0.5, 1.5, 2.5]))
    a, b, refused = c.flush(final=True)
    assert a.refused is None and b.refused is None and not math.isnan(a.value)
    assert refused.refused and "would bring epsilon" in refused.refused
    assert math.isnan(refused.value) and refused.epsilon == 0.0
    assert acc.status("stream:t")[0]["spent"] == pytest.approx(0.5)


def test_late_rows_come_back(tmp_path):
    spec = ContinualSpec(step_s=10, horizon=10, epsilon=1, delta=1e-6, lateness_s=5)
    c = ContinualRelease(spec, accountant=_acc(tmp_path), scopes=["stream:t"], noise=False)
    c.add(_rows([1, 2], [1.0, 16.0]))  # watermark 11: step 0 is over
    assert [r.index for r in c.flush()] == [0]
    late = c.add(_rows([3, 4], [9.0, 12.0]))
    assert late.tolist() == [0]
    assert c.flush(final=True)[-1].value == 3


@pytest.mark.parametrize("mechanism", ["sqrt", "tree"])
def test_noise_has_the_counters_scale_at_the_bounded_sensitivity(tmp_path, mechanism):
    # 64 steps, 3 rows per subject allowed: the counter runs at rho / 9. Each step's error is the
    # counter's noise; over 300 independent horizons the error variance at the last step is
    # within 25% of the counter's own (the variance estimate's relative sd is about 8%: 3 sd)
    T, horizons = 64, 300
    spec = ContinualSpec(step_s=1, horizon=T, epsilon=1.0, delta=1e-5, mechanism=mechanism,
                         max_rows=3)  # fmt: skip
    acc = _acc(tmp_path, eps=1e9, delta=0.5)
    c = ContinualRelease(spec, accountant=acc, scopes=["stream:t"], rng=SecureRandom._for_tests(2))
    rng = np.random.default_rng(0)
    t = np.repeat(np.arange(T * horizons), 5) + 0.5
    subj = rng.integers(0, 10**9, len(t))  # fresh subjects: bounding changes nothing
    c.add(_rows(subj, t))
    rel = c.flush(final=True)
    assert len(rel) == T * horizons
    err = np.array([r.value for r in rel]).reshape(horizons, T) - 5 * np.arange(1, T + 1)
    cls = SqrtCounter if mechanism == "sqrt" else TreeCounter
    probe = cls(T, c.rho / 9, SecureRandom._for_tests(3))
    if mechanism == "sqrt":
        lc = probe.l
        want = probe.sigma2 * float(np.sum(lc[:T] ** 2))
    else:
        want = float(probe.sigma2) * bin(T).count("1")  # t = T: one node, the root
    assert 0.75 * want < err[:, -1].var() < 1.25 * want
    assert acc.status("stream:t")[0]["spent"] == pytest.approx(horizons * 1.0)


def test_a_policy_sets_the_public_start_as_iso_text_or_epoch_seconds():
    from pydantic import ValidationError

    from raymask.cluster.aggregate import spec_for
    from raymask.policy.schema import Continual

    base = {"time": "ts", "step": "1m", "epsilon": 1.0}
    assert spec_for(Continual.model_validate(base)).start_s is None
    iso = Continual.model_validate({**base, "start": "2026-01-01T00:00:00Z"})
    assert spec_for(iso).start_s == 1767225600.0
    assert Continual.model_validate({**base, "start": 1767225600}).start == 1767225600.0
    from datetime import date, datetime

    for yaml_value in (datetime(2026, 1, 1), date(2026, 1, 1)):  # what YAML makes of a time
        assert Continual.model_validate({**base, "start": yaml_value}).start == 1767225600.0
    with pytest.raises(ValidationError, match="a time like"):
        Continual.model_validate({**base, "start": "soon"})
