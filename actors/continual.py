"""Continual release over an unbounded stream: a running count (or sum) after every step of event
time, from the factorization counters of raymask.kernels.continual, charged to the budget
accountant once per horizon.

`ContinualRelease` is plain logic (no Ray), fed like `WindowAggregator`: Arrow rows (subject
digest, event time, value), a watermark (largest event time minus the allowed lateness), steps
released once the watermark passes their end, rows for released steps returned as late.

The guarantee, per horizon of T steps: every release of the horizon (T running totals) is one
factorization mechanism with discrete Gaussian noise, rho-zCDP for a change of one subject's rows
(Canonne, Kamath, Steinke 2020 for the noise; the counters' docstrings for the factorizations).
One subject adds at most `max_rows` rows over the horizon (later rows are dropped), each moving
the step total by at most u = 1 (count) or u = ceil(max(|lo|, |hi|) / g) grid units (sum, values
clamped to [lo, hi] and rounded to the grid g = 2^j), so its rows move R x by at most
max_rows * u columns of R: the counter runs at rho / (max_rows * u)^2 for unit sensitivity. rho
is the largest that converts to the policy's (epsilon, delta) (Bun and Steinke 2016, Prop. 1.3);
the horizon reserves (epsilon, delta) before its first release and commits it before that
release leaves. A new horizon is a new counter and a new charge: the accountant sees every one.

The schedule is not data: every step from the first is released and every horizon (T steps back
to back from the first step) is opened and charged, rows or none. (Opening a horizon only at a
step with rows, and skipping idle stretches, made the released steps and the charges depend on
whether one subject had a row there.) The first step is the configured public `start`, or,
without one, the first row's step, which the output then shows; rows before the start are late.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from raymask.actors.accountant import Mechanism
from raymask.actors.aggregates import Watermark
from raymask.actors.ledger import zcdp_allowance
from raymask.errors import BudgetRefused
from raymask.kernels.continual import SqrtCounter, TreeCounter
from raymask.kernels.rng import SecureRandom

__all__ = ["ContinualSpec", "StepRelease", "ContinualRelease"]


@dataclass(frozen=True)
class ContinualSpec:
    step_s: float
    horizon: int  # steps per counter (T)
    epsilon: float  # per horizon
    delta: float
    mechanism: str = "sqrt"  # sqrt | tree
    op: str = "count"  # count | sum
    field: str | None = None  # sum: the value column
    lo: float = 0.0
    hi: float = 0.0
    max_rows: int = 1  # per subject per horizon
    lateness_s: float = 0.0
    start_s: float | None = None  # the schedule's public start (None: the first row's step)

    def __post_init__(self) -> None:
        if not (self.step_s > 0 and self.horizon >= 1 and self.max_rows >= 1):
            raise ValueError("continual release needs step > 0, horizon >= 1, max_rows >= 1")
        if self.mechanism not in ("sqrt", "tree") or self.op not in ("count", "sum"):
            raise ValueError("mechanism sqrt|tree, op count|sum")
        if self.op == "sum" and not self.lo < self.hi:
            raise ValueError("a sum needs bounds lo < hi")
        if not (self.epsilon > 0 and 0 < self.delta < 1):
            raise ValueError("epsilon > 0 and delta in (0, 1)")

    @property
    def grid(self) -> float:
        """The sum's grid step: a power of two, about 2^-10 of the widest bound."""
        if self.op == "count":
            return 1.0
        return math.ldexp(1.0, math.frexp(max(abs(self.lo), abs(self.hi)))[1] - 10)

    @property
    def unit(self) -> int:
        """Grid units one row moves a step's total by, at most."""
        if self.op == "count":
            return 1
        return math.ceil(max(abs(self.lo), abs(self.hi)) / self.grid)


@dataclass
class StepRelease:
    index: int  # step number since the epoch (start = index * step)
    start: float
    end: float
    value: float  # the running total since the horizon's start
    horizon_start: float
    epsilon: float  # the horizon's (charged once, at its first step)
    delta: float
    refused: str | None = None
    charged: bool = False  # the first release of its horizon: the one that paid for it


@dataclass
class _Horizon:
    first: int  # step index of its first step
    counter: Any = None
    grant_id: str = ""
    refused: str | None = None
    subjects: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # sorted
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # counted so far
    exact: int = 0  # the running total with noise off


class ContinualRelease:
    def __init__(
        self, spec: ContinualSpec, *, accountant: Any, scopes: Sequence[str],
        rng: SecureRandom | None = None, caller: str = "continual", noise: bool = True,
    ) -> None:  # fmt: skip
        """`noise=False` releases exact running totals and spends nothing: tests only."""
        self.spec = spec
        self.acc = accountant
        self.scopes = list(scopes)
        self.rng = rng or SecureRandom(personalization=b"raymask continual")
        self.caller = caller
        self.noise = noise
        self.rho = zcdp_allowance(spec.epsilon, spec.delta)
        self.pending: dict[int, list[pa.Table]] = {}  # step index -> rows
        self.marks = Watermark(spec.lateness_s)
        # the schedule's first step: horizons are T steps from it, back to back
        self.origin: int | None = (
            None if spec.start_s is None else math.floor(spec.start_s / spec.step_s)
        )
        self.next_step: int | None = self.origin  # the first step not yet released
        self.horizon: _Horizon | None = None

    @property
    def watermark(self) -> float:
        return self.marks.value

    def add(self, table: pa.Table, source: Any = None) -> np.ndarray:
        """Take rows (subject uint64, time float64 seconds, and the sum's field) from input
        `source`; returns the indices of late rows (their step was released)."""
        t = table.column("time").to_numpy(zero_copy_only=False).astype(np.float64)
        step = np.floor(t / self.spec.step_s).astype(np.int64)
        live = step >= (self.next_step if self.next_step is not None else np.iinfo(np.int64).min)
        if live.any():
            rows = np.flatnonzero(live)
            order = rows[np.argsort(step[rows], kind="stable")]
            s = step[order]
            cuts = np.flatnonzero(np.diff(s)) + 1
            for part in np.split(order, cuts):
                self.pending.setdefault(int(step[part[0]]), []).append(table.take(pa.array(part)))
            if self.next_step is None:  # no public start: the schedule begins here
                self.next_step = self.origin = int(s[0])
        if len(t):
            self.marks.see(float(t.max()), source)
        return np.flatnonzero(~live)

    def flush(self, final: bool = False) -> list[StepRelease]:
        """Release every step whose end the watermark passed, empty steps included (all steps
        with rows when `final`)."""
        out: list[StepRelease] = []
        if self.next_step is None or not (final or math.isfinite(self.watermark)):
            return out
        last = (
            max(self.pending, default=self.next_step - 1)
            if final
            else math.floor(self.watermark / self.spec.step_s) - 1
        )
        while self.next_step <= last:  # every step, idle or not: the schedule is not data
            k = self.next_step
            out.append(self._step(k, self.pending.pop(k, [])))
            self.next_step = k + 1
        return out

    def _step(self, k: int, parts: list[pa.Table]) -> StepRelease:
        spec = self.spec
        h = self.horizon
        if h is None or k - h.first >= spec.horizon:  # the next horizon, idle or not
            assert self.origin is not None
            h = self.horizon = self._open(
                self.origin + (k - self.origin) // spec.horizon * spec.horizon
            )
        total = self._bounded_total(h, parts)
        start = k * spec.step_s
        hs = h.first * spec.step_s
        if h.refused:
            return StepRelease(k, start, start + spec.step_s, math.nan, hs, 0.0, 0.0, h.refused)
        if h.counter is None:  # noise off
            h.exact += total
            value = h.exact * spec.grid
        else:
            value = float(h.counter.step(np.array([total]))[0]) * spec.grid
        charged = bool(h.grant_id)
        if charged:  # the horizon's charge is committed before its first release leaves
            self.acc.commit(h.grant_id, caller=self.caller)
            h.grant_id = ""
        eps, delta = (spec.epsilon, spec.delta) if self.noise else (0.0, 0.0)
        return StepRelease(k, start, start + spec.step_s, value, hs, eps, delta, None, charged)

    def _open(self, k: int) -> _Horizon:
        spec = self.spec
        h = _Horizon(first=k)
        if not self.noise:
            return h
        try:
            grant = self.acc.reserve(
                self.scopes, Mechanism(kind="approx", epsilon=spec.epsilon, delta=spec.delta),
                caller=self.caller,
            )  # fmt: skip
        except BudgetRefused as exc:
            h.refused = str(exc)
            return h
        h.grant_id = grant.id
        sens = spec.max_rows * spec.unit
        cls = SqrtCounter if spec.mechanism == "sqrt" else TreeCounter
        h.counter = cls(spec.horizon, self.rho / sens**2, self.rng)
        return h

    def _bounded_total(self, h: _Horizon, parts: list[pa.Table]) -> int:
        """The step's total in grid units, each subject's rows past `max_rows` in the horizon
        dropped (arrival order)."""
        if not parts:
            return 0
        rows = pa.concat_tables(parts)
        subj = rows.column("subject").to_numpy(zero_copy_only=False).astype(np.uint64)
        if self.spec.op == "sum":
            x = rows.column(self.spec.field).to_numpy(zero_copy_only=False).astype(np.float64)
            units = np.rint(np.clip(x, self.spec.lo, self.spec.hi) / self.spec.grid)
        else:
            units = np.ones(len(subj))
        # rank of each row within its subject, this step, then the subject's earlier rows
        order = np.lexsort((np.arange(len(subj)), subj))
        s = subj[order]
        new = np.ones(len(s), bool)
        new[1:] = s[1:] != s[:-1]
        first = np.maximum.accumulate(np.where(new, np.arange(len(s)), 0))
        rank = np.arange(len(s)) - first
        uniq = s[new]
        at = np.searchsorted(h.subjects, uniq)
        seen = at < len(h.subjects)
        seen[seen] = h.subjects[at[seen]] == uniq[seen]
        before = np.where(
            seen, h.rows[np.minimum(at, max(len(h.rows) - 1, 0))] if len(h.rows) else 0, 0
        )
        grp = np.cumsum(new) - 1
        ok = rank + before[grp] < self.spec.max_rows
        counts = np.bincount(grp[ok], minlength=len(uniq))
        h.rows[at[seen]] += counts[seen]
        if (~seen).any():  # subjects new to the horizon: merge, keeping the arrays sorted
            keys = np.concatenate([h.subjects, uniq[~seen]])
            vals = np.concatenate([h.rows, counts[~seen]])
            o = np.argsort(keys, kind="stable")
            h.subjects, h.rows = keys[o], vals[o]
        return int(units[order][ok].sum())
