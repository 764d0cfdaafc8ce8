"""Per-subject privacy ledger: an open-addressing hash table of fixed-width rows in NumPy arrays.

One row per subject: its 64-bit digest (the stream's stable key hash, 0 = empty slot), the period
the row belongs to, and what the subject spent in it: epsilon and rho (zCDP) in units of 1e-12,
delta in units of 1e-18, all int64 so sums are exact and a budget of ten events' worth grants
exactly ten. Costs are rounded up and allowances down (`units`), so rounding never gives a
subject more than its allowance.

Memory: 40 bytes per slot plus a dirty flag; the table doubles when it is half full, so a
subject costs at most 82 bytes (about 8 MB per 100k subjects at the worst point), with no Python
object per subject.

Two subjects whose digests collide share one row: both are charged for both, which is
conservative (a collision can only lower what a subject gets); with 64-bit digests and a
million subjects per worker the chance of any collision is about 3e-8.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import numpy as np
from numba import njit

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


@njit(cache=True, inline="always")
def _slot(keys, h):
    mask = keys.shape[0] - 1
    i = (h ^ (h >> np.uint64(29))) & np.uint64(mask)
    while True:
        k = keys[i]
        if k == h or k == 0:
            return np.int64(i)
        i = (i + np.uint64(1)) & np.uint64(mask)


@njit(cache=True)
def _charge(
    keys, period, eps, rho, delta, dirty, hashes, c_eps, c_rho, c_delta, now, mode, b_eps, b_rho,
    b_delta, granted,
):  # fmt: skip
    """Charge row r's cost to its subject if it fits the allowance, in row order; returns how
    many new subjects were inserted."""
    added = 0
    for r in range(hashes.shape[0]):
        if c_eps[r] == 0 and c_rho[r] == 0 and c_delta[r] == 0:
            granted[r] = True
            continue
        h = hashes[r]
        if h == 0:
            h = np.uint64(1)
        i = _slot(keys, h)
        if keys[i] == 0:
            keys[i] = h
            period[i] = now
            eps[i] = 0
            rho[i] = 0
            delta[i] = 0
            added += 1
        elif period[i] != now:  # a new period renews the allowance
            period[i] = now
            eps[i] = 0
            rho[i] = 0
            delta[i] = 0
            dirty[i] = True
        if mode == 0:
            ok = eps[i] + c_eps[r] <= b_eps and delta[i] + c_delta[r] <= b_delta
        else:
            ok = rho[i] + c_rho[r] <= b_rho
        if ok:
            eps[i] += c_eps[r]
            rho[i] += c_rho[r]
            delta[i] += c_delta[r]
            dirty[i] = True
        granted[r] = ok
    return added


@njit(cache=True)
def _merge(keys, period, eps, rho, delta, dirty, k2, p2, e2, r2, d2):
    """Upsert rows keeping, per subject, the newest period and within it the larger spend (replay
    of checkpoints and logs is idempotent and never lowers a spend); returns rows inserted."""
    added = 0
    for r in range(k2.shape[0]):
        i = _slot(keys, k2[r])
        if keys[i] == 0:
            keys[i] = k2[r]
            period[i] = p2[r]
            eps[i] = e2[r]
            rho[i] = r2[r]
            delta[i] = d2[r]
            added += 1
        elif p2[r] > period[i]:
            period[i] = p2[r]
            eps[i] = e2[r]
            rho[i] = r2[r]
            delta[i] = d2[r]
        elif p2[r] == period[i]:
            eps[i] = max(eps[i], e2[r])
            rho[i] = max(rho[i], r2[r])
            delta[i] = max(delta[i], d2[r])
        dirty[i] = True
    return added


class LedgerTable:
    """The table; `charge` is the hot path (one Numba pass over a batch's rows)."""

    COLUMNS = ("subject", "period", "eps", "rho", "delta")

    def __init__(self, capacity: int = 1024) -> None:
        cap = 1 << max(4, math.ceil(math.log2(max(capacity, 16))))
        self._alloc(cap)
        self.used = 0

    def _alloc(self, cap: int) -> None:
        self.keys = np.zeros(cap, np.uint64)
        self.period = np.zeros(cap, np.int64)
        self.eps = np.zeros(cap, np.int64)
        self.rho = np.zeros(cap, np.int64)
        self.delta = np.zeros(cap, np.int64)
        self.dirty = np.zeros(cap, np.bool_)

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes for a in (self.keys, self.period, self.eps, self.rho, self.delta, self.dirty)
        )

    def _reserve(self, more: int) -> None:
        need = 2 * (self.used + more)
        if need <= len(self.keys):
            return
        rows = self.rows()
        cap = len(self.keys)
        while cap < need:
            cap *= 2
        self._alloc(cap)
        self.used = 0
        self.merge(*rows)  # every row comes back dirty: the next log carries the whole table

    def charge(
        self, hashes: np.ndarray, c_eps: np.ndarray, c_rho: np.ndarray, c_delta: np.ndarray,
        now: int, mode: int, b_eps: int, b_rho: int, b_delta: int,
    ) -> np.ndarray:  # fmt: skip
        """Grant (True) or refuse each row's cost, charging granted ones, in row order."""
        self._reserve(len(hashes))
        granted = np.zeros(len(hashes), np.bool_)
        self.used += _charge(
            self.keys, self.period, self.eps, self.rho, self.delta, self.dirty,
            hashes.astype(np.uint64, copy=False), c_eps, c_rho, c_delta, now, mode,
            b_eps, b_rho, b_delta, granted,
        )  # fmt: skip
        return granted

    def merge(self, keys, period, eps, rho, delta) -> None:  # noqa: ANN001
        self._reserve(len(keys))
        self.used += _merge(
            self.keys, self.period, self.eps, self.rho, self.delta, self.dirty,
            np.asarray(keys, np.uint64), np.asarray(period, np.int64), np.asarray(eps, np.int64),
            np.asarray(rho, np.int64), np.asarray(delta, np.int64),
        )  # fmt: skip

    def rows(self, which: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
        """(subject, period, eps, rho, delta) of the occupied slots (or of `which`)."""
        sel = self.keys != 0 if which is None else which & (self.keys != 0)
        return tuple(a[sel] for a in (self.keys, self.period, self.eps, self.rho, self.delta))

    def take_dirty(self) -> tuple[np.ndarray, ...]:
        """Rows changed since the last call, and clears the flags."""
        rows = self.rows(self.dirty)
        self.dirty[:] = False
        return rows

    def remove(self, which: np.ndarray) -> tuple[np.ndarray, ...]:
        """Take out the occupied rows selected by a per-slot mask (rebuilds the table)."""
        out = self.rows(which)
        keep = self.rows(~which)
        self._alloc(len(self.keys))
        self.used = 0
        self.merge(*keep)
        return out

    def spent(self, hashes: np.ndarray, now: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(eps, rho, delta) units spent in period `now` by each subject (0 when unknown)."""
        out = [np.zeros(len(hashes), np.int64) for _ in range(3)]
        for r, h in enumerate(np.asarray(hashes, np.uint64)):  # inspection only, not a hot path
            i = _slot(self.keys, h if h else np.uint64(1))
            if self.keys[i] != 0 and self.period[i] == now:
                out[0][r], out[1][r], out[2][r] = self.eps[i], self.rho[i], self.delta[i]
        return out[0], out[1], out[2]
