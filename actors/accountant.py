"""The privacy-budget accountant: one ledger of central-DP spending per cluster, which never
overspends and never forgets.

`Accountant` is the plain logic (driven without Ray in unit tests); `BudgetAccountant` is the
named, detached, restartable Ray actor around it that every worker, source and service shares
(`get_accountant`).

Protocol (two phases, like PipelineDP's `budget_accounting.py`, with OpenDP's privacy-filter rule
that a refusal spends nothing):

    grant = acc.reserve(["stream:payments", "role:analyst"], Mechanism.laplace(scale=10))
    ...compute the noisy release...
    acc.commit(grant.id)      # before the release leaves; or acc.release(grant.id) to abandon

A reservation counts against every scope it names until it is committed (then forever, within
its period) or released; a reservation neither committed nor released expires after its TTL and
stops counting. A commit of an expired reservation is accepted only if it still fits. Because
the commit comes before the output leaves, an expired or refused grant never has an output: the
ledger can never hold less than what was released.

Composition per scope: `basic` (epsilons and deltas add, exactly: sums of decimal values),
`rdp` or `pld` through Google's `dp-accounting` (Renyi DP, Mironov 2017; privacy loss
distributions, Koskela et al. 2020 / Doroshenko et al. 2022). Mechanisms the chosen accountant
cannot express compose basically on top of it (epsilons add, deltas add), which is valid and
conservative.

Durability: the ledger is a SQLite database (WAL, synchronous=FULL) by default, or PostgreSQL
when `db` is a postgresql:// URL (so an accountant restarted on another node finds it). Every
reserve runs in one transaction that first takes a write lock (SQLite's BEGIN IMMEDIATE, a
self-conflicting table lock in PostgreSQL), so check and insert are atomic across threads and
processes, and the grant is returned only after that transaction committed. Audit rows (grant, commit, release,
refusal, expiry is implicit) carry scope, mechanism, epsilon, delta, caller and policy version,
never a data value.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from raymask.actors._lazy import LazyActor
from raymask.actors.ledger import PERIOD_SECONDS, period_index, state_base
from raymask.errors import BudgetRefused, InputError

__all__ = [
    "Mechanism",
    "ScopeBudget",
    "Grant",
    "Accountant",
    "BudgetAccountant",
    "get_accountant",
    "compose",
    "ACCOUNTANT_NAME",
]

ACCOUNTANT_NAME = "raymask-accountant"


class Mechanism(BaseModel):
    """One release's mechanism, at unit sensitivity (scale and noise multiplier are the noise's
    scale divided by the sensitivity).

    - laplace: `scale` (pure epsilon = 1/scale)
    - gaussian: `noise_multiplier` (sigma / L2 sensitivity); for basic composition it also needs
      the `delta` at which its epsilon is taken (exact single-event PLD)
    - subsampled_gaussian: `noise_multiplier`, `sampling_rate` (Poisson sampling)
    - pure: `epsilon` (randomized response, exponential mechanism, ...)
    - approx: `epsilon`, `delta` (any (epsilon, delta)-DP step; composes basically)
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["laplace", "gaussian", "subsampled_gaussian", "pure", "approx"]
    scale: float | None = Field(None, gt=0)
    noise_multiplier: float | None = Field(None, gt=0)
    sampling_rate: float | None = Field(None, gt=0, le=1)
    epsilon: float | None = Field(None, ge=0)
    delta: float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="after")
    def _params(self) -> Mechanism:
        need = {
            "laplace": ("scale",),
            "gaussian": ("noise_multiplier",),
            "subsampled_gaussian": ("noise_multiplier", "sampling_rate"),
            "pure": ("epsilon",),
            "approx": ("epsilon", "delta"),
        }[self.kind]
        missing = [p for p in need if getattr(self, p) is None]
        if missing:
            raise ValueError(f"mechanism {self.kind} needs {', '.join(missing)}")
        return self

    @classmethod
    def laplace(cls, scale: float) -> Mechanism:
        return cls(kind="laplace", scale=scale)

    @classmethod
    def gaussian(cls, noise_multiplier: float, delta: float | None = None) -> Mechanism:
        return cls(kind="gaussian", noise_multiplier=noise_multiplier, delta=delta)

    @classmethod
    def pure(cls, epsilon: float) -> Mechanism:
        return cls(kind="pure", epsilon=epsilon)

    def key(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True), sort_keys=True)

    def event(self) -> Any:
        """The dp-accounting event for the RDP accountant, or None (pure, approx)."""
        import dp_accounting as dpa

        if self.kind == "laplace":
            return dpa.LaplaceDpEvent(self.scale)
        if self.kind == "gaussian":
            return dpa.GaussianDpEvent(self.noise_multiplier)
        if self.kind == "subsampled_gaussian":
            return dpa.PoissonSampledDpEvent(
                self.sampling_rate, dpa.GaussianDpEvent(self.noise_multiplier)
            )
        return None  # pure and approx: see _compose_pld and basic composition

    def basic(self) -> tuple[float, float]:
        """(epsilon, delta) of this one release on its own, for basic composition."""
        if self.kind == "laplace":
            return 1.0 / self.scale, 0.0
        if self.kind in ("pure", "approx"):
            return float(self.epsilon), float(self.delta or 0.0)
        if self.kind == "gaussian" and self.delta:
            from dp_accounting import pld

            acc = pld.PLDAccountant()
            acc.compose(self.event())
            return float(acc.get_epsilon(self.delta)), float(self.delta)
        raise InputError(
            f"mechanism {self.kind} has no basic (epsilon, delta) on its own; give a delta "
            "(gaussian) or use rdp or pld accounting"
        )


class ScopeBudget(BaseModel):
    """An (epsilon, delta) allowance for one scope, renewed each period (or never)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epsilon: float = Field(gt=0)
    delta: float = Field(0.0, ge=0, lt=1)
    period: Literal["hour", "day", "week", "forever"] = "forever"
    accounting: Literal["basic", "rdp", "pld"] = "rdp"


@dataclass(frozen=True)
class Grant:
    id: str
    scopes: tuple[str, ...]
    mechanism: Mechanism
    expires_at: float  # after this, an uncommitted grant stops counting (and may be refused)


def _dec(x: float) -> Decimal:
    return Decimal(repr(float(x)))


@lru_cache(maxsize=4096)
def _compose_cached(groups: tuple[tuple[str, int], ...], accounting: str, delta: float) -> float:
    mechs = [(Mechanism.model_validate_json(k), n) for k, n in groups]
    if accounting == "basic":
        eps = sum((_dec(m.basic()[0]) * n for m, n in mechs), Decimal(0))
        d = sum((_dec(m.basic()[1]) * n for m, n in mechs), Decimal(0))
        return float(eps) if d <= _dec(delta) else math.inf
    if accounting == "pld":
        return min(_compose_pld(mechs, delta), _basic_or_inf(groups, delta))
    import numpy as np
    from dp_accounting.rdp import rdp_privacy_accountant as R

    curve = np.zeros(len(RDP_ORDERS))
    other_eps, other_delta = Decimal(0), Decimal(0)
    composed = False  # anything on the RDP curve
    for m, n in mechs:
        c = _rdp_curve(m.key())
        if c is not None:
            curve += n * c  # RDP composes by adding curves (Mironov 2017, Proposition 1)
            composed = True
        else:  # approx steps: basic composition on top (valid, conservative)
            e, d = m.basic()
            other_eps += _dec(e) * n
            other_delta += _dec(d) * n
    left = delta - float(other_delta)
    if left < 0:
        return math.inf
    eps = float(other_eps)
    if composed:
        eps += float(R.compute_epsilon(RDP_ORDERS, curve, left)[0]) if left > 0 else math.inf
    # basic composition is a valid bound too; where every mechanism has one, take the smaller
    return min(eps, _basic_or_inf(groups, delta))


def _basic_or_inf(groups: tuple[tuple[str, int], ...], delta: float) -> float:
    try:
        return _compose_cached(groups, "basic", delta)
    except InputError:
        return math.inf


def _orders() -> list[float]:
    from dp_accounting.rdp import rdp_privacy_accountant as R

    return list(R.DEFAULT_RDP_ORDERS)


RDP_ORDERS = _orders()


@lru_cache(maxsize=1024)
def _rdp_curve(key: str) -> Any:
    """One release's RDP at each order, or None (approx steps have none)."""
    import numpy as np

    m = Mechanism.model_validate_json(key)
    if m.kind == "approx":
        return None
    if m.kind == "pure":  # epsilon-DP is (a, min(eps, a eps^2 / 2))-RDP (Bun and Steinke 2016)
        a = np.array(RDP_ORDERS)
        return np.minimum(m.epsilon, a * m.epsilon**2 / 2)
    from dp_accounting import rdp

    acc = rdp.RdpAccountant(RDP_ORDERS)
    acc.compose(m.event())
    return np.array(acc._rdp, dtype=np.float64)  # the curve of one event (0.6.x internals)


PLD_DISCRETIZATION = 1e-4  # dp-accounting's default; its rounding is pessimistic


def _compose_pld(mechs: list[tuple[Mechanism, int]], delta: float) -> float:
    """Privacy loss distributions, composed: each mechanism's own PLD (pessimistic
    discretization), an (epsilon, delta) step by its dominating pair (Kairouz, Oh, Viswanath
    2015 for pure epsilon)."""
    from dp_accounting.pld import common
    from dp_accounting.pld import privacy_loss_distribution as P

    total = None
    for m, n in mechs:
        if m.kind == "laplace":
            one = P.from_laplace_mechanism(
                m.scale, value_discretization_interval=PLD_DISCRETIZATION
            )
        elif m.kind in ("gaussian", "subsampled_gaussian"):
            one = P.from_gaussian_mechanism(
                m.noise_multiplier, sampling_prob=m.sampling_rate or 1.0,
                value_discretization_interval=PLD_DISCRETIZATION,
            )  # fmt: skip
        else:
            params = common.DifferentialPrivacyParameters(float(m.epsilon), float(m.delta or 0))
            one = P.from_privacy_parameters(
                params, value_discretization_interval=PLD_DISCRETIZATION
            )
        one = one.self_compose(n) if n > 1 else one
        total = one if total is None else total.compose(one)
    if total is None:
        return 0.0
    return float(total.get_epsilon_for_delta(delta))


def compose(mechanisms: Iterable[tuple[Mechanism, int]], accounting: str, delta: float) -> float:
    """Epsilon at `delta` of running each mechanism `count` times (inf when delta is too small)."""
    groups: dict[str, int] = {}
    for m, n in mechanisms:
        groups[m.key()] = groups.get(m.key(), 0) + n
    return _compose_cached(tuple(sorted(groups.items())), accounting, float(delta))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    scope TEXT PRIMARY KEY, epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL,
    period TEXT NOT NULL, accounting TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS grants (
    id TEXT NOT NULL, scope TEXT NOT NULL, period INTEGER NOT NULL, mechanism TEXT NOT NULL,
    state TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, expires DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (id, scope));
CREATE INDEX IF NOT EXISTS grants_scope ON grants (scope, period, state);
CREATE TABLE IF NOT EXISTS spent (
    scope TEXT NOT NULL, period INTEGER NOT NULL, mechanism TEXT NOT NULL,
    count BIGINT NOT NULL, PRIMARY KEY (scope, period, mechanism));
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, ts DOUBLE PRECISION NOT NULL, event TEXT NOT NULL,
    grant_id TEXT, scope TEXT, mechanism TEXT, epsilon DOUBLE PRECISION, delta DOUBLE PRECISION,
    caller TEXT, policy_version INTEGER, reason TEXT);
"""
_PG = ("postgresql://", "postgres://")


class Accountant:
    """The accountant's logic over one SQLite ledger. Thread-safe; several processes may open
    the same file (each reserve is one BEGIN IMMEDIATE transaction)."""

    def __init__(
        self,
        db: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        ttl_s: float = 60.0,
        audit: Callable[..., None] | None = None,
    ) -> None:
        """`db`: a SQLite file, or a PostgreSQL URL (postgresql://...) so that an accountant
        restarted on another node finds its ledger. `audit(kind, **fields)` also receives every
        audit row (the tamper-evident trail, raymask.actors.audit)."""
        self.audit_hook = audit
        self.db = os.fspath(db)
        self.clock = clock
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self.postgres = self.db.startswith(_PG)
        if self.postgres:
            import psycopg

            self._con: Any = psycopg.connect(self.db, autocommit=True)
            for stmt in _SCHEMA.replace(
                "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"
            ).split(";"):
                if stmt.strip():
                    self._con.execute(stmt)
            return
        if self.db != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(self.db)), exist_ok=True)
        self._con = sqlite3.connect(
            self.db, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=FULL")
        self._con.executescript(_SCHEMA)

    def _x(self, sql: str, args: tuple = ()) -> Any:
        """Run one statement (SQLite's ? placeholders; PostgreSQL gets %s)."""
        if self.postgres:
            sql = sql.replace("?", "%s")
        return self._con.execute(sql, args)

    def close(self) -> None:
        with self._lock:
            self._con.close()

    # -- budgets -----------------------------------------------------------------------------

    def set_budget(self, scope: str, budget: ScopeBudget | dict) -> None:
        """Create or change a scope's allowance (what was spent stays spent)."""
        b = budget if isinstance(budget, ScopeBudget) else ScopeBudget.model_validate(budget)
        with self._lock, self._tx():
            old = self.budget(scope)
            self._x(
                "INSERT INTO budgets VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE SET "
                "epsilon = excluded.epsilon, delta = excluded.delta, period = excluded.period, "
                "accounting = excluded.accounting",
                (scope, b.epsilon, b.delta, b.period, b.accounting),
            )
            if old is not None and old.period != b.period:
                self._carry(scope, b)
            self._audit("budget", None, scope, None, b.epsilon, b.delta, "", None, b.period)

    def _carry(self, scope: str, b: ScopeBudget) -> None:
        """A new kind of period (day to week, hour to day, anything to forever): what was
        spent since the new kind's current period began counts in it. Spends are kept by
        period index, and indices of different kinds do not compare, so the grants reserved
        since that start (every grant keeps its time) are counted again: committed ones into
        the new period's spends, reservations (live or expired, which a commit may still take
        if it fits) moved into it."""
        now = self.clock()
        period = self._period(b, now)
        start = period * PERIOD_SECONDS[b.period]  # (0 for forever: every grant ever)
        counts = self._x(
            "SELECT mechanism, COUNT(*) FROM grants WHERE scope = ? AND state = 'committed' AND "
            "created >= ? GROUP BY mechanism",
            (scope, start),
        ).fetchall()
        for mech, n in counts:
            row = self._x(
                "SELECT count FROM spent WHERE scope = ? AND period = ? AND mechanism = ?",
                (scope, period, mech),
            ).fetchone()
            self._x(
                "INSERT INTO spent VALUES (?, ?, ?, ?) ON CONFLICT (scope, period, mechanism) "
                "DO UPDATE SET count = excluded.count",
                (scope, period, mech, max(n, row[0] if row else 0)),
            )
        self._x(  # (an expired one may still be committed if it fits: it must fit here)
            "UPDATE grants SET period = ? WHERE scope = ? AND state IN ('reserved', 'expired') "
            "AND created >= ?",
            (period, scope, start),
        )

    def budget(self, scope: str) -> ScopeBudget | None:
        row = self._x(
            "SELECT epsilon, delta, period, accounting FROM budgets WHERE scope = ?", (scope,)
        ).fetchone()
        if row is None:
            return None
        return ScopeBudget(epsilon=row[0], delta=row[1], period=row[2], accounting=row[3])

    # -- protocol ----------------------------------------------------------------------------

    def reserve(
        self,
        scopes: str | Iterable[str],
        mechanism: Mechanism | dict,
        *,
        caller: str = "",
        policy_version: int | None = None,
        ttl_s: float | None = None,
    ) -> Grant:
        """A grant against every scope, or BudgetRefused (nothing spent, refusal audited)."""
        m = mechanism if isinstance(mechanism, Mechanism) else Mechanism.model_validate(mechanism)
        names = (scopes,) if isinstance(scopes, str) else tuple(dict.fromkeys(scopes))
        if not names:
            raise InputError("reserve needs at least one scope")
        gid = uuid.uuid4().hex
        with self._lock, self._tx():
            now = self.clock()
            checks = []
            for scope in names:
                b = self.budget(scope)
                if b is None:
                    reason = f"scope {scope} has no budget"
                    self._audit("refuse", gid, scope, m, None, None, caller, policy_version, reason)
                    raise _Refusal(BudgetRefused(reason, scope))
                period = self._period(b, now)
                self._x(  # expired reservations leave the live set for good
                    "UPDATE grants SET state = 'expired' WHERE scope = ? AND period = ? AND "
                    "state = 'reserved' AND expires <= ?",
                    (scope, period, now),
                )
                before = self._spent(scope, period, now, b)
                after = compose([*self._groups(scope, period, now), (m, 1)], b.accounting, b.delta)
                if after > b.epsilon:
                    left = (max(b.epsilon - before, 0.0), b.delta)
                    reason = (
                        f"scope {scope}: this {m.kind} release would bring epsilon to "
                        f"{_fmt(after)} of {b.epsilon:g} ({b.accounting} accounting at delta "
                        f"{b.delta:g}); {_fmt(left[0])} left"
                    )
                    self._audit("refuse", gid, scope, m, None, None, caller, policy_version, reason)
                    raise _Refusal(BudgetRefused(reason, scope, left))
                checks.append((scope, period))
            expires = now + (self.ttl_s if ttl_s is None else ttl_s)
            for scope, period in checks:
                self._x(
                    "INSERT INTO grants VALUES (?, ?, ?, ?, 'reserved', ?, ?)",
                    (gid, scope, period, m.key(), now, expires),
                )
                eps, delta = _standalone(m)
                self._audit("reserve", gid, scope, m, eps, delta, caller, policy_version, None)
        return Grant(gid, names, m, expires)

    def commit(self, grant_id: str, *, caller: str = "", policy_version: int | None = None) -> None:
        """Make a reservation spent. An expired one is committed only if it still fits
        (BudgetRefused otherwise: its output must not leave)."""
        with self._lock, self._tx():
            now = self.clock()
            rows = self._x(
                "SELECT scope, period, mechanism, state, expires FROM grants WHERE id = ?",
                (grant_id,),
            ).fetchall()
            if not rows:
                raise InputError(f"no grant {grant_id}")
            for scope, period, mech, state, expires in rows:
                if state == "committed":
                    continue  # committing twice is harmless
                if state == "released":
                    raise InputError(f"grant {grant_id} was released; reserve again")
                if state == "expired" or expires <= now:  # stopped counting: must fit again
                    b = self.budget(scope)
                    m = Mechanism.model_validate_json(mech)
                    assert b is not None
                    after = compose(
                        [*self._groups(scope, period, now), (m, 1)], b.accounting, b.delta
                    )
                    if after > b.epsilon:
                        reason = f"scope {scope}: grant expired and no longer fits"
                        self._audit("refuse", grant_id, scope, m, None, None, caller,
                                    policy_version, reason)  # fmt: skip
                        raise _Refusal(BudgetRefused(reason, scope))
            self._x(
                "UPDATE grants SET state = 'committed' WHERE id = ? AND state IN "
                "('reserved', 'expired')",
                (grant_id,),
            )
            for scope, period, mech, state, _ in rows:
                if state in ("reserved", "expired"):  # counts per mechanism: no rescans
                    self._x(
                        "INSERT INTO spent VALUES (?, ?, ?, 1) ON CONFLICT (scope, period, "
                        "mechanism) DO UPDATE SET count = spent.count + 1",
                        (scope, period, mech),
                    )
                    m = Mechanism.model_validate_json(mech)
                    eps, delta = _standalone(m)
                    self._audit("commit", grant_id, scope, m, eps, delta, caller,
                                policy_version, None)  # fmt: skip

    def release(self, grant_id: str, *, caller: str = "") -> None:
        """Abandon a reservation (its output never left); its budget is free again."""
        with self._lock, self._tx():
            cur = self._x(
                "UPDATE grants SET state = 'released' WHERE id = ? AND state = 'reserved'",
                (grant_id,),
            )
            if cur.rowcount:
                self._audit("release", grant_id, None, None, None, None, caller, None, None)

    # -- reading -----------------------------------------------------------------------------

    def status(self, scope: str | None = None) -> list[dict[str, Any]]:
        """Per scope: allowance, spent (committed), reserved (on top) and remaining epsilon."""
        now = self.clock()
        where, args = ("WHERE scope = ?", (scope,)) if scope else ("", ())
        out = []
        for (name,) in self._x(f"SELECT scope FROM budgets {where} ORDER BY scope", args):
            b = self.budget(name)
            assert b is not None
            period = self._period(b, now)
            spent = self._spent(name, period, now, b, committed_only=True)
            held = self._spent(name, period, now, b)
            out.append(
                {
                    "scope": name, "epsilon": b.epsilon, "delta": b.delta, "period": b.period,
                    "accounting": b.accounting, "spent": spent, "reserved": held - spent,
                    "remaining": max(b.epsilon - held, 0.0),
                }
            )  # fmt: skip
        return out

    def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        cols = ("seq", "ts", "event", "grant_id", "scope", "mechanism", "epsilon", "delta",
                "caller", "policy_version", "reason")  # fmt: skip
        rows = self._x(
            f"SELECT {', '.join(cols)} FROM audit ORDER BY seq DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in reversed(rows)]

    # -- internals ---------------------------------------------------------------------------

    def _tx(self) -> _Tx:
        return _Tx(self._con, self.postgres)

    @staticmethod
    def _period(b: ScopeBudget, now: float) -> int:
        return period_index(b.period, now)

    def _groups(
        self, scope: str, period: int, now: float, committed_only: bool = False
    ) -> list[tuple[Mechanism, int]]:
        """What counts against a scope in a period: committed releases (kept as counts per
        mechanism) and, unless `committed_only`, reservations that have not expired."""
        counts: dict[str, int] = dict(
            self._x(
                "SELECT mechanism, count FROM spent WHERE scope = ? AND period = ?",
                (scope, period),
            ).fetchall()
        )
        if not committed_only:
            for k, n in self._x(
                "SELECT mechanism, COUNT(*) FROM grants WHERE scope = ? AND period = ? AND "
                "state = 'reserved' AND expires > ? GROUP BY mechanism",
                (scope, period, now),
            ).fetchall():
                counts[k] = counts.get(k, 0) + n
        return [(Mechanism.model_validate_json(k), n) for k, n in counts.items()]

    def _spent(
        self, scope: str, period: int, now: float, b: ScopeBudget, committed_only: bool = False
    ) -> float:
        groups = self._groups(scope, period, now, committed_only)
        return compose(groups, b.accounting, b.delta) if groups else 0.0

    def _audit(self, event, grant_id, scope, m, eps, delta, caller, version, reason) -> None:  # noqa: ANN001
        self._x(
            "INSERT INTO audit (ts, event, grant_id, scope, mechanism, epsilon, delta, caller, "
            "policy_version, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.clock(), event, grant_id, scope, m.key() if m is not None else None, eps, delta,
             caller, version, reason),
        )  # fmt: skip
        if self.audit_hook is not None:
            self.audit_hook(
                f"budget_{event}", grant=grant_id, scope=scope,
                mechanism=m.key() if m is not None else None, epsilon=eps, delta=delta,
                caller=caller, policy_version=version, reason=reason,
            )  # fmt: skip


def _standalone(m: Mechanism) -> tuple[float | None, float | None]:
    try:
        return m.basic()
    except InputError:
        return None, None


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.6g}"


class _Refusal(Exception):
    """Carries a BudgetRefused out of the transaction, which still commits (the audit row)."""

    def __init__(self, error: BudgetRefused) -> None:
        self.error = error


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT; ROLLBACK on an error, except a refusal, whose audit row is
    committed before the refusal is raised."""

    def __init__(self, con: Any, postgres: bool) -> None:
        self.con = con
        self.postgres = postgres

    def __enter__(self) -> _Tx:
        if self.postgres:  # a self-conflicting lock: writers take turns, as with BEGIN IMMEDIATE
            self.con.execute("BEGIN")
            self.con.execute("LOCK TABLE budgets IN SHARE ROW EXCLUSIVE MODE")
        else:
            self.con.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, kind, exc, tb) -> bool:  # noqa: ANN001
        if kind is None or kind is _Refusal:
            self.con.execute("COMMIT")
        else:
            self.con.execute("ROLLBACK")
        if kind is _Refusal:
            raise exc.error from None
        return False


def default_db() -> str:
    return f"{state_base()}/accountant.sqlite"


def _make_actor():  # Ray is imported only where actors are made
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
    class BudgetAccountant:
        """The cluster's one accountant (see `get_accountant`); calls run one at a time."""

        def __init__(self, db: str, ttl_s: float = 60.0) -> None:
            self.core = Accountant(db, ttl_s=ttl_s)

        def set_budget(self, scope: str, budget: dict) -> None:
            self.core.set_budget(scope, budget)

        def reserve(self, scopes: list[str], mechanism: dict, caller: str = "",
                    policy_version: int | None = None) -> Grant:  # fmt: skip
            return self.core.reserve(
                scopes, mechanism, caller=caller, policy_version=policy_version
            )

        def commit(self, grant_id: str, caller: str = "") -> None:
            self.core.commit(grant_id, caller=caller)

        def release(self, grant_id: str, caller: str = "") -> None:
            self.core.release(grant_id, caller=caller)

        def status(self, scope: str | None = None) -> list[dict]:
            return self.core.status(scope)

        def audit(self, limit: int = 100) -> list[dict]:
            return self.core.audit(limit)

        def pid(self) -> int:
            return os.getpid()

    return BudgetAccountant


BudgetAccountant = LazyActor(_make_actor)


def get_accountant(db: str | None = None, *, ttl_s: float = 60.0) -> Any:
    """The cluster's accountant actor: created on first use (detached: it outlives the job that
    made it; restarted by Ray if its process dies, reopening the same ledger), found by name
    after that. On a cluster, put `db` on storage every node reaches."""
    return BudgetAccountant.options(
        name=ACCOUNTANT_NAME, namespace="raymask", lifetime="detached", get_if_exists=True
    ).remote(db or default_db(), ttl_s)
