"""Windowed DP aggregates over a stream: counts and sums per group per event-time window, with
contribution bounding, private partition selection, and every window's release charged to the
budget accountant before it leaves.

`WindowAggregator` is plain logic (no Ray). Rows arrive as Arrow columns (subject digest, event
time, group key, metric values); windows are tumbling (`slide == size`) or hopping; a window
closes when the watermark (largest event time seen, minus the allowed lateness) passes its end;
rows for a closed window are late and come back for the dead letters.

At close, per window (Wilson et al., "Differentially Private SQL with Bounded User
Contribution", PETS 2020):
- contribution bounding: each subject keeps its first `max_groups` groups and, in each, its
  first `max_rows` rows; values are clamped to [lo, hi];
- counts get discrete Laplace noise of scale b = max_groups * max_rows / eps_count (L1
  sensitivity over all groups), sums Laplace on a 2^-k grid of scale
  max_groups * max_rows * max(|lo|, |hi|) / eps_sum (exact samplers of raymask.kernels.noise);
  a mean is its noisy sum over the noisy count (post-processing), clamped to [lo, hi];
- partition selection: a group is released only if its noisy count reaches max_rows + k, k
  from the discrete Laplace's exact tail, so a group that one subject alone makes appear is
  released with probability at most delta / max_groups, delta over all its groups (Korolova et
  al. 2009; the continuous form is tau = max_rows + b ln(max_groups / (2 delta)));
- the window is (eps, delta)-DP with eps the sum of the metrics' epsilons; it is reserved at the
  accountant before the noise is drawn and committed before the release is returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymask.actors.accountant import Mechanism
from raymask.errors import BudgetRefused
from raymask.kernels import noise as noise_kernel
from raymask.kernels.rng import SecureRandom

__all__ = ["Metric", "WindowSpec", "Release", "WindowAggregator"]


@dataclass(frozen=True)
class Metric:
    op: str  # count | sum | mean
    epsilon: float
    field: str | None = None  # sum: the value column
    lo: float = 0.0
    hi: float = 0.0


@dataclass(frozen=True)
class WindowSpec:
    size_s: float
    slide_s: float | None = None  # None: tumbling
    lateness_s: float = 0.0
    max_groups: int = 1  # per subject per window
    max_rows: int = 1  # per subject per group per window
    delta: float = 1e-6  # for partition selection
    metrics: tuple[Metric, ...] = (Metric("count", 1.0),)

    def __post_init__(self) -> None:
        slide = self.slide_s or self.size_s
        if not (self.size_s > 0 and 0 < slide <= self.size_s):
            raise ValueError("windows need size > 0 and 0 < slide <= size")
        if abs(self.size_s / slide - round(self.size_s / slide)) > 1e-9:
            raise ValueError("the window size must be a whole number of slides")
        if not self.metrics or self.metrics[0].op != "count":
            raise ValueError("the first metric must be the count (it selects the partitions)")
        if not 0 < self.delta < 1:
            raise ValueError("delta must be in (0, 1)")

    @property
    def epsilon(self) -> float:
        return sum(m.epsilon for m in self.metrics)

    @property
    def slide(self) -> float:
        return self.slide_s or self.size_s


@dataclass
class Release:
    start: float
    end: float
    table: pa.Table  # group, count (noisy), then one column per further metric
    epsilon: float
    delta: float
    groups_in: int  # groups before selection (not released: only for tests and metrics)
    grant_id: str = ""
    refused: str | None = None  # the accountant's reason when the window could not be paid


@dataclass
class _Open:
    parts: list[pa.Table] = field(default_factory=list)


class WindowAggregator:
    def __init__(
        self,
        spec: WindowSpec,
        *,
        accountant: Any,
        scopes: Sequence[str],
        rng: SecureRandom | None = None,
        caller: str = "aggregates",
        noise: bool = True,
    ) -> None:
        """`accountant`: an Accountant (or anything with its reserve/commit). `noise=False`
        releases exact aggregates and spends nothing: tests only, never from a policy."""
        self.spec = spec
        self.acc = accountant
        self.scopes = list(scopes)
        self.rng = rng or SecureRandom(personalization=b"raymask aggregates")
        self.caller = caller
        self.noise = noise
        self.open: dict[int, _Open] = {}  # window index (start / slide) -> rows
        self.watermark = -math.inf
        self.closed_before = -math.inf  # windows starting before this are released

    def _windows(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, window index) pairs: each row in size/slide windows."""
        k = round(self.spec.size_s / self.spec.slide)
        last = np.floor(t / self.spec.slide).astype(np.int64)  # the newest window holding t
        rows = np.repeat(np.arange(len(t)), k)
        idx = np.repeat(last, k) - np.tile(np.arange(k), len(t))
        return rows, idx

    def add(self, table: pa.Table) -> np.ndarray:
        """Take rows (columns subject uint64, time float64 seconds, group string, metric fields);
        returns the indices of late rows (every window they belong to has been released)."""
        t = table.column("time").to_numpy(zero_copy_only=False).astype(np.float64)
        rows, idx = self._windows(t)
        start = idx * self.spec.slide
        live = start >= self.closed_before
        late = np.setdiff1d(np.arange(len(t)), rows[live])
        if live.any():
            sel = table.take(pa.array(rows[live]))
            sel = sel.append_column("window", pa.array(idx[live]))
            for w in np.unique(idx[live]).tolist():
                part = sel.filter(pc.equal(sel.column("window"), w))
                self.open.setdefault(w, _Open()).parts.append(part)
        if len(t):
            self.watermark = max(self.watermark, float(t.max()) - self.spec.lateness_s)
        return late

    def flush(self, final: bool = False) -> list[Release]:
        """Release every window whose end the watermark passed (all of them when `final`)."""
        out = []
        for w in sorted(self.open):
            start = w * self.spec.slide
            end = start + self.spec.size_s
            if not final and end > self.watermark:
                break
            part = self.open.pop(w)
            out.append(self._release(start, end, pa.concat_tables(part.parts)))
            self.closed_before = max(self.closed_before, start + self.spec.slide)
        return out

    def _release(self, start: float, end: float, rows: pa.Table) -> Release:
        spec = self.spec
        kept = _bound(rows, spec.max_groups, spec.max_rows)
        groups = pc.unique(kept.column("group"))
        idx = pc.index_in(kept.column("group"), value_set=groups).to_numpy()
        n = len(groups)
        counts = np.bincount(idx, minlength=n).astype(np.int64)
        cols: dict[str, Any] = {"group": groups}
        sums = []
        for m in spec.metrics[1:]:
            x = np.clip(kept.column(m.field).to_numpy(zero_copy_only=False), m.lo, m.hi)
            sums.append((m, np.bincount(idx, weights=x, minlength=n)))
        if not self.noise:
            cols["count"] = counts
            for m, s in sums:
                cols[f"{m.op}_{m.field}"] = s if m.op == "sum" else s / np.maximum(counts, 1)
            return Release(start, end, pa.table(cols), 0.0, 0.0, n)
        eps, delta = spec.epsilon, spec.delta
        try:
            grant = self.acc.reserve(
                self.scopes, Mechanism(kind="approx", epsilon=eps, delta=delta),
                caller=self.caller,
            )  # fmt: skip
        except BudgetRefused as exc:  # nothing spent, nothing released
            empty = pa.table(
                {"group": pa.array([], pa.string()), "count": pa.array([], pa.int64())}
            )
            return Release(start, end, empty, 0.0, 0.0, n, refused=str(exc))
        gc = spec.max_groups * spec.max_rows  # L1 sensitivity of the counts, over all groups
        count_m = spec.metrics[0]
        noisy, q = _noisy_counts(counts, gc, count_m.epsilon, self.rng)
        keep = noisy >= spec.max_rows + _threshold(q, delta / spec.max_groups)
        cols = {"group": groups.filter(pa.array(keep)), "count": noisy[keep]}
        for m, s in sums:
            sens = gc * max(abs(m.lo), abs(m.hi))
            noisy_sum = _noisy_sums(s, sens, m.epsilon, self.rng)[keep]
            if m.op == "mean":  # noisy sum over noisy count (post-processing), kept in bounds
                noisy_sum = np.clip(noisy_sum / np.maximum(noisy[keep], 1), m.lo, m.hi)
            cols[f"{m.op}_{m.field}"] = noisy_sum
        self.acc.commit(grant.id, caller=self.caller)
        return Release(start, end, pa.table(cols), eps, delta, n, grant.id)


def _unit_plan(sensitivity: float, epsilon: float) -> noise_kernel.LaplacePlan:
    plan = noise_kernel.laplace_plan(0.0, sensitivity, epsilon, True)
    if plan.j != 0:  # the integer sampler would run on a coarser grid
        raise ValueError("noise too wide for these bounds and epsilon")
    return plan


def _noisy_counts(
    counts: np.ndarray, sensitivity: int, epsilon: float, rng: SecureRandom
) -> tuple[np.ndarray, float]:
    """Counts plus exact discrete Laplace noise for L1 `sensitivity` (scale never below
    sensitivity / epsilon); returns q = exp(-1/scale) of the law used."""
    plan = _unit_plan(float(sensitivity), epsilon)
    z = noise_kernel.discrete_laplace(len(counts), plan.t, plan.s, rng)
    return counts + z, math.exp(-plan.s / plan.t)


def _threshold(q: float, p: float) -> int:
    """The least integer k with P[Z >= k] = q**k / (1 + q) <= p for discrete Laplace Z, plus one
    against float rounding: a group is released when its noisy count reaches max_rows + k, so
    a group one subject alone makes appear (count <= max_rows) is released with probability at
    most p."""
    return math.ceil(math.log(p * (1 + q)) / math.log(q)) + 1


def _noisy_sums(
    sums: np.ndarray, sensitivity: float, epsilon: float, rng: SecureRandom
) -> np.ndarray:
    """Sums plus Laplace noise of scale >= sensitivity / epsilon, computed on a grid of step
    g = 2^j (b/g ~ 2**20): the sum is rounded to the grid and integer noise is added there, so
    the output is a fixed function of an exact discrete mechanism (no floating-point attack,
    Mironov 2012). Rounding can move a sum by g/2, so the grid sensitivity is ceil(D/g) + 1."""
    b = sensitivity / epsilon
    j = math.frexp(b)[1] - 1 - 20
    D = math.ceil(math.ldexp(sensitivity, -j)) + 1
    plan = _unit_plan(float(D), epsilon)
    z = noise_kernel.discrete_laplace(len(sums), plan.t, plan.s, rng)
    return np.ldexp((np.rint(np.ldexp(sums, -j)).astype(np.int64) + z).astype(np.float64), j)


def _bound(rows: pa.Table, max_groups: int, max_rows: int) -> pa.Table:
    """Keep, per subject, its first `max_groups` groups and in each its first `max_rows` rows
    (arrival order)."""
    n = rows.num_rows
    if n == 0:
        return rows
    subj = rows.column("subject").to_numpy(zero_copy_only=False).astype(np.uint64)
    grp = pc.dictionary_encode(rows.column("group")).combine_chunks().indices.to_numpy()
    order = np.lexsort((np.arange(n), grp, subj))  # by subject, group, arrival
    s, g = subj[order], grp[order]
    new_sg = np.ones(n, bool)
    new_sg[1:] = (s[1:] != s[:-1]) | (g[1:] != g[:-1])
    # rank of a row within its (subject, group)
    start = np.maximum.accumulate(np.where(new_sg, np.arange(n), 0))
    row_rank = np.arange(n) - start
    # rank of a group within its subject, by the group's first arrival
    first = order[new_sg]  # arrival index of each (subject, group)'s first row
    sg_subj = s[new_sg]
    o2 = np.lexsort((first, sg_subj))
    new_s = np.ones(len(o2), bool)
    new_s[1:] = sg_subj[o2][1:] != sg_subj[o2][:-1]
    st = np.maximum.accumulate(np.where(new_s, np.arange(len(o2)), 0))
    grank_sorted = np.arange(len(o2)) - st
    grank = np.empty(len(o2), np.int64)
    grank[o2] = grank_sorted
    sg_id = np.cumsum(new_sg) - 1  # which (subject, group) each sorted row is in
    ok_sorted = (row_rank < max_rows) & (grank[sg_id] < max_groups)
    ok = np.zeros(n, bool)
    ok[order] = ok_sorted
    return rows.filter(pa.array(ok))
