"""Windowed DP aggregates over a stream: counts and sums per group per event-time window, with
contribution bounding, private partition selection, and every window's release charged to the
budget accountant before it leaves.

`WindowAggregator` is plain logic (no Ray). Rows arrive as Arrow columns (subject digest, event
time, group key, metric values); windows are tumbling (`slide == size`) or hopping; a window
closes when the watermark (largest event time seen, minus the allowed lateness; the least over
the inputs when there are several, `Watermark`) passes its end;
rows for a closed window are late and come back for the dead letters.

At close, per window (Wilson et al., "Differentially Private SQL with Bounded User
Contribution", PETS 2020):
- contribution bounding: each subject keeps its first `max_groups` groups and, in each, its
  first `max_rows` rows; values are clamped to [lo, hi];
- counts get discrete Laplace noise of scale b = max_groups * max_rows / eps_count (L1
  sensitivity over all groups), sums Laplace on a 2^-k grid of scale
  max_groups * max_rows * max(|lo|, |hi|) / eps_sum (exact samplers of raymask.kernels.noise);
  a mean is its noisy sum over the noisy count (post-processing), clamped to [lo, hi];
  histograms get discrete Laplace noise per bin (one row is in one bin); quantiles come from a
  noisy quantile tree (`_tree_quantiles`); top_k from noisy (group, value) counts with their
  own selection (`_top_k`);
- partition selection: a group is released only if its noisy count reaches max_rows + k, k
  from the discrete Laplace's exact tail, so a group that one subject alone makes appear is
  released with probability at most delta / max_groups, delta over all its groups (Korolova et
  al. 2009; the continuous form is tau = max_rows + b ln(max_groups / (2 delta)));
- the window is (eps, delta)-DP with eps the sum of the metrics' epsilons and delta one
  `delta` for the groups plus one per top_k metric; it is reserved at the accountant before
  the noise is drawn and committed before the release is returned. Released groups are sorted
  by key: their arrival order is data.

Hopping windows: a row lies in size/slide windows, and each of them is a release of its own,
reserved and committed on its own, so a subject's total spend over overlapping windows is
size/slide times the window's epsilon by basic composition, and the accountant sees exactly
that (the multiplier is paid, not assumed away).
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


OPS = ("count", "sum", "mean", "histogram", "quantiles", "top_k")
TREE_BRANCHING = 16  # the quantile tree: 16**4 = 65,536 leaves over [lo, hi]
TREE_HEIGHT = 4


@dataclass(frozen=True)
class Metric:
    op: str  # one of OPS
    epsilon: float
    field: str | None = None  # the value column (every op but count)
    lo: float = 0.0  # sum, mean, histogram, quantiles: values clamped to [lo, hi]
    hi: float = 0.0
    bins: int = 0  # histogram: equal-width bins over [lo, hi]
    quantiles: tuple[float, ...] = ()  # quantiles: the ranks in (0, 1)
    k: int = 0  # top_k: values released per group

    @property
    def column(self) -> str:
        return "top_" + str(self.field) if self.op == "top_k" else f"{self.op}_{self.field}"


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
    def total_delta(self) -> float:
        """The window's delta: one `delta` for the groups' selection and one for each top_k
        metric's selection of values."""
        return self.delta * (1 + sum(m.op == "top_k" for m in self.metrics))

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


class Watermark:
    """Event-time progress over one or more inputs (e.g. Kafka partitions): each input's largest
    event time seen; the watermark is the least of them minus the allowed lateness, so rows of a
    partition that lags are not declared late because another ran ahead (Flink's rule). An input
    that stops sending holds the watermark back until the run ends (the final flush)."""

    def __init__(self, lateness_s: float) -> None:
        self.lateness_s = lateness_s
        self.marks: dict[Any, float] = {}

    def expect(self, sources: Sequence[Any]) -> None:
        """Inputs known from the start: the watermark waits until each has sent something."""
        for src in sources:
            self.marks.setdefault(src, -math.inf)

    def see(self, t_max: float, source: Any = None) -> None:
        self.marks[source] = max(self.marks.get(source, -math.inf), t_max)

    @property
    def value(self) -> float:
        return min(self.marks.values()) - self.lateness_s if self.marks else -math.inf


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
        self.marks = Watermark(spec.lateness_s)
        self.closed_before = -math.inf  # windows starting before this are released

    def _windows(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, window index) pairs: each row in size/slide windows."""
        k = round(self.spec.size_s / self.spec.slide)
        last = np.floor(t / self.spec.slide).astype(np.int64)  # the newest window holding t
        rows = np.repeat(np.arange(len(t)), k)
        idx = np.repeat(last, k) - np.tile(np.arange(k), len(t))
        return rows, idx

    @property
    def watermark(self) -> float:
        return self.marks.value

    def add(self, table: pa.Table, source: Any = None) -> np.ndarray:
        """Take rows (columns subject uint64, time float64 seconds, group string, metric fields)
        from input `source`; returns the indices of late rows (every window they belong to has
        been released)."""
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
            self.marks.see(float(t.max()), source)
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
        if not self.noise:
            cols: dict[str, Any] = {"group": groups, "count": counts}
            for m in spec.metrics[1:]:
                cols[m.column] = _metric(m, kept, idx, n, counts, spec, None, None)
            return Release(start, end, pa.table(cols).sort_by("group"), 0.0, 0.0, n)
        eps, delta = spec.epsilon, spec.total_delta
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
        noisy, q = _noisy_counts(counts, gc, spec.metrics[0].epsilon, self.rng)
        keep = noisy >= spec.max_rows + _threshold(q, spec.delta / spec.max_groups)
        cols = {"group": groups.filter(pa.array(keep)), "count": noisy[keep]}
        for m in spec.metrics[1:]:
            cols[m.column] = _metric(m, kept, idx, n, noisy, spec, keep, self.rng)
        self.acc.commit(grant.id, caller=self.caller)
        return Release(start, end, pa.table(cols).sort_by("group"), eps, delta, n, grant.id)


def _metric(
    m: Metric, kept: pa.Table, idx: np.ndarray, n: int, counts: np.ndarray, spec: WindowSpec,
    keep: np.ndarray | None, rng: SecureRandom | None,
) -> Any:  # fmt: skip
    """One metric's column over the n groups (`idx`: each kept row's group), exact when `rng`
    is None, else noisy and filtered to the groups in `keep`. `counts` are the groups' (noisy)
    counts, for the mean."""
    gc = spec.max_groups * spec.max_rows  # rows one subject adds to a window, over all groups
    if m.op == "top_k":
        return _top_k(m, kept, idx, n, gc, spec, keep, rng)
    x = np.clip(kept.column(m.field).to_numpy(zero_copy_only=False).astype(np.float64), m.lo, m.hi)
    if m.op in ("sum", "mean"):
        if rng is None:
            s = np.bincount(idx, weights=x, minlength=n)
            return s if m.op == "sum" else s / np.maximum(counts, 1)
        noisy_sum = _noisy_sums(x, idx, n, gc, max(abs(m.lo), abs(m.hi)), m.epsilon, rng)[keep]
        if m.op == "mean":  # noisy sum over noisy count (post-processing), kept in bounds
            return np.clip(noisy_sum / np.maximum(counts[keep], 1), m.lo, m.hi)
        return noisy_sum
    if m.op == "histogram":
        b = np.minimum(((x - m.lo) / (m.hi - m.lo) * m.bins).astype(np.int64), m.bins - 1)
        h = np.bincount(idx * m.bins + b, minlength=n * m.bins).astype(np.int64)
        if rng is not None:  # each row is in one cell: L1 sensitivity gc over all cells
            h = np.maximum(_noisy_counts(h, gc, m.epsilon, rng)[0], 0)  # clamp: post-processing
        return _lists(h.reshape(n, m.bins), keep)
    return _lists(_tree_quantiles(m, x, idx, n, gc, rng), keep)  # quantiles


def _lists(rows: np.ndarray, keep: np.ndarray | None) -> pa.Array:
    """A (groups, width) matrix as a list column (the kept groups' rows)."""
    if keep is not None:
        rows = rows[keep]
    width = rows.shape[1]
    offsets = np.arange(0, (len(rows) + 1) * width, width, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows.reshape(-1)))


def _tree_quantiles(
    m: Metric, x: np.ndarray, idx: np.ndarray, n: int, gc: int, rng: SecureRandom | None
) -> np.ndarray:
    """Quantiles per group from a noisy hierarchical histogram (the quantile tree of Google's
    differential-privacy library and PipelineDP): [lo, hi] is cut into 16 children per node over
    4 levels; every row is in one node per level, so one subject moves the node counts by at
    most 4 gc in L1 and each node gets discrete Laplace noise of scale 4 gc / epsilon. A
    quantile walks down from the root: at each node it picks the child where the rank falls
    among the children's noisy counts (negatives read as 0) and carries the rank's fraction
    into that child; in the leaf it interpolates. Only the nodes visited get noise drawn (the
    others are never read, so drawing theirs would change nothing), once per node, shared by
    every quantile of the group. Returns a (groups, quantiles) matrix."""
    B, H = TREE_BRANCHING, TREE_HEIGHT
    leaves = B**H
    leaf = np.minimum(((x - m.lo) / (m.hi - m.lo) * leaves).astype(np.int64), leaves - 1)
    order = np.lexsort((leaf, idx))
    key = idx[order] * leaves + leaf[order]  # sorted: group-major, then leaf
    Q = len(m.quantiles)
    g = np.repeat(np.arange(n, dtype=np.int64), Q)
    frac = np.tile(np.asarray(m.quantiles, np.float64), n)
    node = np.zeros(n * Q, np.int64)  # index of the current node within its level
    plan = None if rng is None else _unit_plan(float(H * gc), m.epsilon)
    kids = np.arange(B, dtype=np.int64)
    for level in range(1, H + 1):
        width = B ** (H - level)  # leaves under one node of this level
        child = node[:, None] * B + kids  # (n Q, B) node indices at this level
        lo_key = g[:, None] * leaves + child * width
        c = (np.searchsorted(key, lo_key + width) - np.searchsorted(key, lo_key)).astype(np.int64)
        if plan is not None:  # one draw per distinct node
            ids = (g[:, None] * (leaves // width) + child).reshape(-1)
            uniq, inv = np.unique(ids, return_inverse=True)
            z = noise_kernel.discrete_laplace(len(uniq), plan.t, plan.s, rng)
            c = np.maximum(c + z[inv].reshape(c.shape), 0)
        total = c.sum(axis=1)
        cum = np.cumsum(c, axis=1)
        r = frac * total
        pick = np.minimum((cum <= r[:, None]).sum(axis=1), B - 1)
        empty = total == 0
        pick[empty] = B // 2  # nothing below this node: its middle
        before = np.where(pick > 0, cum[np.arange(len(pick)), np.maximum(pick - 1, 0)], 0)
        here = c[np.arange(len(pick)), pick]
        frac = np.where(here > 0, np.clip((r - before) / np.maximum(here, 1), 0.0, 1.0), 0.5)
        node = child[np.arange(len(pick)), pick]
    step = (m.hi - m.lo) / leaves
    return (m.lo + (node + frac) * step).reshape(n, Q)


def _top_k(
    m: Metric, kept: pa.Table, idx: np.ndarray, n: int, gc: int, spec: WindowSpec,
    keep: np.ndarray | None, rng: SecureRandom | None,
) -> pa.Array:  # fmt: skip
    """The k most frequent values of a field per group, with their counts. Noisy: each
    (group, value) cell's count gets discrete Laplace noise of scale gc / epsilon (one row is in
    one cell), a cell is released only if its noisy count reaches max_rows + k_delta, so a
    value that one subject alone brings is shown with probability at most delta over all of its
    cells (the groups' selection rule, again), and the k largest noisy counts of each released
    group are kept (post-processing; equal counts are ordered by the value, never by arrival,
    which is data)."""
    vals = pc.dictionary_encode(kept.column(m.field).combine_chunks().cast(pa.string()))
    vi = vals.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    nv = max(len(vals.dictionary), 1)
    cells, c = np.unique(idx * nv + vi, return_counts=True)
    c = c.astype(np.int64)
    if rng is not None:
        c, q = _noisy_counts(c, gc, m.epsilon, rng)
        ok = c >= spec.max_rows + _threshold(q, spec.delta / gc)
        cells, c = cells[ok], c[ok]
    grp = cells // nv
    if keep is not None:  # only the released groups, renumbered in release order
        pos = np.cumsum(keep) - 1
        live = keep[grp]
        cells, c, grp = cells[live], c[live], pos[grp[live]]
        n = int(keep.sum())
    # ties by the value itself: arrival order is data (and differs between inputs)
    by_value = np.empty(nv, np.int64)
    by_value[pc.sort_indices(vals.dictionary).to_numpy()] = np.arange(len(vals.dictionary))
    o = np.lexsort((by_value[cells % nv], -c, grp))  # per group: count descending, then value
    grp, cells, c = grp[o], cells[o], c[o]
    starts = np.searchsorted(grp, np.arange(n))
    rank = np.arange(len(grp)) - starts[grp]
    top = rank < m.k
    grp, cells, c = grp[top], cells[top], c[top]
    offsets = np.searchsorted(grp, np.arange(n + 1)).astype(np.int32)
    items = pa.StructArray.from_arrays(
        [vals.dictionary.take(pa.array(cells % nv)), pa.array(c)], names=["value", "count"]
    )
    return pa.ListArray.from_arrays(pa.array(offsets), items)


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
    x: np.ndarray, idx: np.ndarray, n: int, rows: int, vmax: float, epsilon: float,
    rng: SecureRandom,
) -> np.ndarray:  # fmt: skip
    """The n groups' sums of the values x (|x| <= vmax; row i in group idx[i]) plus Laplace
    noise of scale >= rows * vmax / epsilon (one subject brings at most `rows` rows), computed
    on a grid of step g = 2^j (b/g ~ 2**20). Each value is rounded to the grid first (at most
    ceil(vmax/g) steps) and the groups' sums are exact integers, so one subject moves them by
    at most D = rows * ceil(vmax/g) steps in all, whatever the rounding, and integer noise for D
    is added there: the output is a fixed function of an exact discrete mechanism (no
    floating-point attack, Mironov 2012). (Rounding each group's float sum instead moved the
    sums of max_groups groups by up to one step each beyond the calibrated sensitivity.)"""
    b = rows * vmax / epsilon
    j = math.frexp(b)[1] - 1 - 20
    units = np.rint(np.ldexp(x, -j))  # integers, and so are their sums (exact below 2**53)
    s = np.bincount(idx, weights=units, minlength=n).astype(np.int64)
    D = rows * math.ceil(math.ldexp(vmax, -j))
    plan = _unit_plan(float(D), epsilon)
    z = noise_kernel.discrete_laplace(n, plan.t, plan.s, rng)
    return np.ldexp((s + z).astype(np.float64), j)


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
