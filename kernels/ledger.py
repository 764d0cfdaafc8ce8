"""Per-subject privacy ledger: an open-addressing hash table of fixed-width rows in NumPy arrays.

One row per subject: its 64-bit digest (the stream's stable key hash, 0 = empty slot), the period
the row belongs to (any int64 that grows with time: the ledger passes the period's start in
seconds), and what the subject spent in it: epsilon and rho (zCDP) in units of 1e-12,
delta in units of 1e-18, all int64 so sums are exact and a budget of ten events' worth grants
exactly ten. Costs are rounded up and allowances down (`units`), so rounding never gives a
subject more than its allowance.

Periods only move forward: a row is reset when the charge's period `now` is *later* than the
row's. A row from a later period than `now` (a clock behind the one that wrote it, after a
restart or resize on another node, or a clock stepped back) is charged as it stands and keeps
its period, so the subject cannot get a period's allowance twice (`_merge` keeps the later
period for the same reason).

Memory: one row of six int64 (48 bytes) per slot, in one array so a lookup touches one or two
cache lines; the table doubles when it is half full, so a subject costs 96 to 192 bytes (at most
19 MB per 100k subjects, right after a doubling), with no Python object per subject. Until the
next `take_dirty`, each charged record may also leave its row's index (4 bytes).

Those indices keep a commit proportional to its batch: `take_dirty` reads the rows that the
records since the last call touched, not the whole table (a scan of the table cost 6.6 ms per
commit at a million subjects, whatever the batch's size). The charge kernel writes them in
order, one store per record. (A list appended to only on a row's first change made each record's
store address wait on the previous record's row, and the kernel lost a third of its speed.)
When the records since the last call outnumber a quarter of the table's slots, reading their
rows at random costs more than one sequential scan, so the kernel records nothing and
`take_dirty` scans.

Two subjects whose digests collide share one row: both are charged for both, which is
conservative (a collision can only lower what a subject gets); with 64-bit digests and a
million subjects per worker the chance of any collision is about 3e-8.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import numpy as np
from numba import njit

from raymask.kernels._mem import prefetch

__all__ = ["EPS_UNIT", "DELTA_UNIT", "units", "LedgerTable"]

EPS_UNIT = Decimal("1e-12")  # epsilon and rho
DELTA_UNIT = Decimal("1e-18")
BASIC, ZCDP = 0, 1


def units(x: float, unit: Decimal, *, up: bool) -> int:
    """x in whole units, from its shortest decimal form (0.4 is 0.4, not 0.40000000000000002),
    rounded up for a cost and down for an allowance."""
    if not (math.isfinite(x) and x >= 0):
        raise ValueError("privacy amounts must be finite and >= 0")
    q = (Decimal(repr(float(x))) / unit).to_integral_value(ROUND_CEILING if up else ROUND_FLOOR)
    if q >= 2**62:
        raise ValueError("privacy amount out of range")
    return int(q)


# columns of a table row; the subject digest is stored as int64 (same bits)
KEY, PERIOD, EPS, RHO, DELTA, DIRTY = range(6)
WIDTH = 6


@njit(cache=True, inline="always")
def _home(h, mask):
    """The slot where digest h (int64 bits) is looked for first (uint64; mask = capacity - 1)."""
    u = np.uint64(h)
    return (u ^ (u >> np.uint64(29))) & mask


@njit(cache=True, inline="always")
def _slot(t, h):
    """Row of digest h (int64 bits, never 0): its own, or the empty one where it would go."""
    mask = t.shape[0] - 1
    i = np.int64(_home(h, np.uint64(mask)))
    while True:
        k = t[i, 0]
        if k == h or k == 0:
            return i
        i = (i + 1) & mask


AHEAD = 16  # rows ahead whose table slot `_charge` prefetches (best of 8, 16, 32 measured)


@njit(cache=True)
def _charge(T, hashes, cls, ce_t, cr_t, cd_t, now, mode, b_eps, b_rho, b_delta, granted, room,
            touched):  # fmt: skip
    """Charge row r's cost to its subject if it fits the allowance, in row order, until the
    rows end or `room` new subjects were inserted; returns (rows done, new subjects). A row
    that changes is flagged dirty; touched[r] is the table row record r was charged to (-1 for
    none), unless `touched` is None (compiled apart, like `cls`).

    T is the table flattened (WIDTH int64 per slot). Row r costs (ce_t[k], cr_t[k], cd_t[k])
    with k = cls[r], the row's cost class, or k = r when `cls` is None (a cost per row: Numba
    compiles that case apart, so neither pays for the other's branch).

    Speed (the hot path of per-subject budgets, one random table row per record): the slot a
    fixed distance ahead is prefetched, so several rows are in flight while this one is
    charged; the rows start at 0 (the caller passes views from where the last pass stopped)
    and table indices are unsigned, so Numba knows every index is >= 0 and emits no
    negative-index fix-ups (a `range(start, n)` alone cost 1 ms per 1M rows); the probe for a
    displaced or new subject is inline (a call to another kernel costs a reference count on
    the table each time)."""
    cap = np.uint64(T.shape[0] // WIDTH)
    mask = cap - np.uint64(1)
    w = np.uint64(WIDTH)
    n = hashes.shape[0]
    added = 0
    for r in range(n):
        if added == room:
            return r, added
        if r + AHEAD < n:
            prefetch(T, np.int64(_home(hashes[r + AHEAD], mask) * w))
        k = r if cls is None else np.int64(cls[r])
        ce, cr, cd = ce_t[k], cr_t[k], cd_t[k]
        if ce == 0 and cr == 0 and cd == 0:
            granted[r] = True
            if touched is not None:
                touched[r] = -1
            continue
        h = hashes[r]
        if h == 0:
            h = 1
        i = _home(h, mask)
        b = i * w
        if T[b] != h or T[b + np.uint64(PERIOD)] < now:  # displaced, new, or a new period
            while T[b] != h and T[b] != 0:
                i = (i + np.uint64(1)) & mask
                b = i * w
            if T[b] == 0 or T[b + np.uint64(PERIOD)] < now:  # the allowance starts afresh
                if T[b] == 0:
                    added += 1
                T[b] = h
                T[b + np.uint64(PERIOD)] = now
                T[b + np.uint64(EPS)] = 0
                T[b + np.uint64(RHO)] = 0
                T[b + np.uint64(DELTA)] = 0
                T[b + np.uint64(DIRTY)] = 1
        e = T[b + np.uint64(EPS)] + ce
        q = T[b + np.uint64(RHO)] + cr
        d = T[b + np.uint64(DELTA)] + cd
        ok = ((e <= b_eps) & (d <= b_delta)) if mode == BASIC else q <= b_rho
        if ok:
            T[b + np.uint64(EPS)] = e
            T[b + np.uint64(RHO)] = q
            T[b + np.uint64(DELTA)] = d
            T[b + np.uint64(DIRTY)] = 1
        granted[r] = ok
        if touched is not None:
            touched[r] = np.int32(i)
    return n, added


@njit(cache=True)
def _merge(t, k2, p2, e2, r2, d2, start, room):
    """Upsert rows keeping, per subject, the newest period and within it the larger spend (replay
    of checkpoints and logs is idempotent and never lowers a spend), from row `start` until
    `room` subjects were inserted; returns (next row, subjects inserted). Every row it reaches
    comes out dirty."""
    added = 0
    for r in range(start, k2.shape[0]):
        if added == room:
            return r, added
        i = _slot(t, k2[r])
        if t[i, 0] == 0:
            t[i, 0] = k2[r]
            t[i, 1] = p2[r]
            t[i, 2] = e2[r]
            t[i, 3] = r2[r]
            t[i, 4] = d2[r]
            added += 1
        elif p2[r] > t[i, 1]:
            t[i, 1] = p2[r]
            t[i, 2] = e2[r]
            t[i, 3] = r2[r]
            t[i, 4] = d2[r]
        elif p2[r] == t[i, 1]:
            t[i, 2] = max(t[i, 2], e2[r])
            t[i, 3] = max(t[i, 3], r2[r])
            t[i, 4] = max(t[i, 4], d2[r])
        t[i, DIRTY] = 1
    return k2.shape[0], added


@njit(cache=True)
def _lookup(t, hashes, now, out):
    for r in range(hashes.shape[0]):
        h = hashes[r] if hashes[r] != 0 else 1
        i = _slot(t, h)
        if t[i, 0] != 0 and t[i, 1] >= now:
            out[r, 0] = t[i, 2]
            out[r, 1] = t[i, 3]
            out[r, 2] = t[i, 4]


class LedgerTable:
    """The table: one int64 row of 48 bytes per slot (digest, period, eps, rho, delta, dirty),
    so a lookup touches one or two cache lines; `charge` is the hot path (one Numba pass over a
    batch's rows)."""

    COLUMNS = ("subject", "period", "eps", "rho", "delta")

    def __init__(self, capacity: int = 1024) -> None:
        cap = 1 << max(4, math.ceil(math.log2(max(capacity, 16))))
        self.t = np.zeros((cap, WIDTH), np.int64)
        self.used = 0
        self.touched: list[np.ndarray] = []  # rows charged since take_dirty (-1: none)
        self.n_touched = 0
        self.scan = False  # take_dirty scans the table instead

    @property
    def capacity(self) -> int:
        return self.t.shape[0]

    @property
    def nbytes(self) -> int:
        return self.t.nbytes

    def _grow(self, need_rows: int) -> None:
        """Double until `need_rows` subjects fit at a load of at most one half."""
        cap = self.capacity
        while cap < 2 * need_rows:
            cap *= 2
        if cap == self.capacity:
            return
        new = np.zeros((cap, WIDTH), np.int64)
        _rehash(self.t, new)
        self.t = new
        self._forget()  # the rows moved, and their dirty flags with them

    def charge(
        self, hashes: np.ndarray, c_eps: np.ndarray, c_rho: np.ndarray, c_delta: np.ndarray,
        now: int, mode: int, b_eps: int, b_rho: int, b_delta: int,
        evict_before: int | None = None,
    ) -> np.ndarray:  # fmt: skip
        """Grant (True) or refuse each row's cost, charging granted ones, in row order. The table
        grows only as new subjects arrive: at half load it drops the rows of periods that began
        before `evict_before` (when given, and when that frees enough) or doubles, and the pass
        goes on."""
        costs = [np.ascontiguousarray(c, np.int64) for c in (c_eps, c_rho, c_delta)]
        return self._charge(hashes, None, *costs, now, mode, b_eps, b_rho, b_delta, evict_before)

    def charge_classes(
        self, hashes: np.ndarray, cls: np.ndarray, ce: np.ndarray, cr: np.ndarray,
        cd: np.ndarray, now: int, mode: int, b_eps: int, b_rho: int, b_delta: int,
        evict_before: int | None = None,
    ) -> np.ndarray:  # fmt: skip
        """`charge` where row r costs (ce[cls[r]], cr[cls[r]], cd[cls[r]]): a record's cost is
        one of a few sums (which of the view's noised fields it released), so the kernel reads
        one byte per row instead of three int64 columns."""
        costs = [np.ascontiguousarray(c, np.int64) for c in (ce, cr, cd)]
        if not len(costs[0]) == len(costs[1]) == len(costs[2]) <= 256:
            raise ValueError("cost classes: at most 256, each with an epsilon, rho and delta")
        if len(cls) and (
            int(cls.max()) >= len(costs[0]) or (cls.dtype.kind == "i" and int(cls.min()) < 0)
        ):
            raise ValueError("a cost class has no cost")
        cls = np.ascontiguousarray(cls, np.uint8)
        return self._charge(hashes, cls, *costs, now, mode, b_eps, b_rho, b_delta, evict_before)

    def _charge(  # noqa: ANN001
        self, hashes, cls, ce, cr, cd, now, mode, b_eps, b_rho, b_delta, evict_before
    ) -> np.ndarray:
        granted = np.zeros(len(hashes), np.bool_)
        h = np.ascontiguousarray(hashes, np.uint64).view(np.int64)
        touched = None if self._forgets(len(h)) else np.empty(len(h), np.int32)

        def run(r: int, room: int) -> tuple[int, int]:  # rows r.. as views from 0
            # costs per row are sliced with the rows; a class's cost is not
            k, costs = (None, (ce[r:], cr[r:], cd[r:])) if cls is None else (cls[r:], (ce, cr, cd))
            tr = None if touched is None else touched[r:]
            done, added = _charge(self.t.reshape(-1), h[r:], k, *costs, now, mode, b_eps, b_rho,
                                  b_delta, granted[r:], room, tr)  # fmt: skip
            return r + done, added

        since = self._in_passes(len(h), run, evict_before)
        if touched is not None and not self.scan:  # (a doubling on the way sets `scan`)
            self.touched.append(touched[since:])
        return granted

    def _in_passes(self, n: int, run, evict_before: int | None = None) -> int:  # noqa: ANN001
        """Run a kernel pass `run(start, room) -> (next row, inserted)` over n rows, making room
        (`_make_room`) whenever the table reaches half load, until every row is done; returns
        the first row done since the table was last rebuilt (the rows before it point into the
        old one)."""
        r = since = 0
        while r < n:
            room = self.capacity // 2 - self.used
            if room <= 0:
                self._make_room(evict_before)
                since = r
                continue
            r, added = run(r, room)
            self.used += added
        return since

    def _forgets(self, n: int) -> bool:
        """Whether the next n records go unrecorded: past a quarter of the slots since the last
        `take_dirty`, one scan of the table costs less than reading the touched rows."""
        self.n_touched += n
        if self.n_touched > self.capacity // 4:
            self._forget()
        return self.scan

    def _forget(self) -> None:
        self.touched, self.scan = [], True

    def evict(self, before: int) -> int:
        """Drop the rows of periods that began before `before` (a charge would renew them
        anyway) unless dirty, and shrink the table to what is left (load at most one half);
        returns the rows dropped. One pass over the table, or two when it drops some (the
        ledger runs it before a snapshot, which writes the whole table anyway)."""
        keep = _count_keep(self.t, before)
        if keep == self.used:
            return 0
        cap = 16
        while cap < 2 * keep:
            cap *= 2
        return self._rebuild(cap, keep, before)

    def _rebuild(self, cap: int, keep: int, before: int) -> int:
        new = np.zeros((cap, WIDTH), np.int64)
        _keep(self.t, new, before)
        dropped, self.t, self.used = self.used - keep, new, keep
        self._forget()  # the rows moved
        return dropped

    def _make_room(self, evict_before: int | None) -> None:
        """At half load: drop stale rows if that frees a quarter of them (the table keeps its
        size, so at least an eighth of it is free again), else double. A count pass per
        doubling, or per cap/8 new subjects: constant per subject."""
        if evict_before is not None:
            keep = _count_keep(self.t, evict_before)
            if keep <= 3 * self.used // 4:
                self._rebuild(self.capacity, keep, evict_before)
                return
        self._grow(self.used + 1)

    def merge(self, keys, period, eps, rho, delta) -> None:  # noqa: ANN001
        """Upsert rows (see `_merge`); they come out dirty."""
        keys = np.ascontiguousarray(keys, np.uint64)
        keys = np.where(keys == 0, np.uint64(1), keys).view(np.int64)  # as `_charge` keeps 0
        cols = [np.ascontiguousarray(c, np.int64) for c in (period, eps, rho, delta)]
        self._forget()  # (merges are reloads: large and rare)
        self._in_passes(len(keys), lambda r, room: _merge(self.t, keys, *cols, r, room))

    def rows(self) -> tuple[np.ndarray, ...]:
        """(subject uint64, period, eps, rho, delta) of the occupied slots."""
        k, p, e, r, d = _rows(self.t)
        return k.view(np.uint64), p, e, r, d

    def take_dirty(self) -> tuple[np.ndarray, ...]:
        """Rows changed since the last call, as `rows` gives them, and clears their flags. It
        reads the rows that the records since the last call touched, so a commit costs what its
        batch changed, not the table (or one scan of the table, when that costs less)."""
        if self.scan:
            k, p, e, r, d = _take(self.t, _dirty_rows(self.t))
        elif len(self.touched) == 1:
            k, p, e, r, d = _take(self.t, self.touched[0])
        else:
            k, p, e, r, d = _take(self.t, np.concatenate([np.empty(0, np.int32), *self.touched]))
        self.touched, self.n_touched, self.scan = [], 0, False
        return k.view(np.uint64), p, e, r, d

    def spent(self, hashes: np.ndarray, now: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(eps, rho, delta) units spent in period `now` (or a later one) by each subject (0
        when unknown)."""
        out = np.zeros((len(hashes), 3), np.int64)
        _lookup(self.t, np.ascontiguousarray(hashes, np.uint64).view(np.int64), now, out)
        return out[:, 0].copy(), out[:, 1].copy(), out[:, 2].copy()


@njit(cache=True)
def _rows(t):
    """The occupied rows' columns, as five contiguous views of one buffer sized for a full
    table (only the pages written are ever touched)."""
    out = np.empty((5, t.shape[0]), np.int64)
    m = 0
    for j in range(t.shape[0]):
        if t[j, KEY] != 0:
            for c in range(5):
                out[c, m] = t[j, c]
            m += 1
    return out[0, :m], out[1, :m], out[2, :m], out[3, :m], out[4, :m]


@njit(cache=True)
def _take(t, touched):
    """The columns of the dirty rows among `touched` (-1: none), each once, clearing their flags
    (five contiguous views of one buffer); rows a fixed distance ahead are prefetched."""
    out = np.empty((5, touched.shape[0]), np.int64)
    flat = t.reshape(-1)
    n = touched.shape[0]
    m = 0
    for x in range(n):
        if x + AHEAD < n and touched[x + AHEAD] >= 0:
            prefetch(flat, np.int64(touched[x + AHEAD]) * WIDTH)
        j = touched[x]
        if j >= 0 and t[j, DIRTY] != 0:
            for c in range(5):
                out[c, m] = t[j, c]
            t[j, DIRTY] = 0
            m += 1
    return out[0, :m], out[1, :m], out[2, :m], out[3, :m], out[4, :m]


@njit(cache=True)
def _dirty_rows(t):
    """Indices of the dirty rows (a whole-table scan)."""
    out = np.empty(t.shape[0], np.int32)
    m = 0
    for j in range(t.shape[0]):
        if t[j, KEY] != 0 and t[j, DIRTY] != 0:
            out[m] = j
            m += 1
    return out[:m]


@njit(cache=True, inline="always")
def _kept(t, j, before):
    """Whether `evict` keeps slot j: occupied, and of a period from `before` on or dirty."""
    return t[j, KEY] != 0 and (t[j, PERIOD] >= before or t[j, DIRTY] != 0)


@njit(cache=True)
def _count_keep(t, before):
    n = 0
    for j in range(t.shape[0]):
        if _kept(t, j, before):
            n += 1
    return n


@njit(cache=True)
def _keep(old, new, before):
    """The rows of `old` that `evict` keeps, into `new`."""
    for j in range(old.shape[0]):
        if _kept(old, j, before):
            i = _slot(new, old[j, KEY])
            for c in range(old.shape[1]):
                new[i, c] = old[j, c]


@njit(cache=True)
def _rehash(old, new):
    """Every occupied row of `old` into `new` (a larger table), dirty flags and all."""
    for j in range(old.shape[0]):
        if old[j, 0] != 0:
            i = _slot(new, old[j, 0])
            for c in range(old.shape[1]):
                new[i, c] = old[j, c]
