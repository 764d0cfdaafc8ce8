"""The ledger table against a plain-Python reference: same grants, same spends, through growth,
period changes (a clock behind included) and merges."""

from __future__ import annotations

import numpy as np
import pytest

from raymask.kernels.ledger import BASIC, DELTA_UNIT, EPS_UNIT, ZCDP, LedgerTable, units


def _step(book, h, ce, cr, cd, now, mode, b_eps, b_rho, b_delta):  # noqa: ANN001, ANN202
    """One event on the reference book: (granted, whether the subject's row changed)."""
    if ce == cr == cd == 0:
        return True, False
    h = h or 1
    row = book.get(h)
    fresh = row is None or row[0] < now  # a row from a later period is charged as it is
    if fresh:
        book[h] = row = [now, 0, 0, 0]
    ok = row[1] + ce <= b_eps and row[3] + cd <= b_delta if mode == BASIC else row[2] + cr <= b_rho
    if ok:
        row[1] += ce
        row[2] += cr
        row[3] += cd
    return ok, fresh or ok


def _reference(events, mode, b_eps, b_rho, b_delta):
    book: dict[int, list[int]] = {}
    granted = [_step(book, *e, mode, b_eps, b_rho, b_delta)[0] for e in events]
    return granted, book


def _events(rng, batch):  # noqa: ANN001, ANN202
    n = 500
    h = rng.integers(0, 3000, n).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    ce = rng.integers(0, 4, n).astype(np.int64) * 10**11
    cr = ce // 7
    cd = rng.integers(0, 2, n).astype(np.int64) * 10**6
    now = batch // 10 - (batch % 7 == 3)  # three periods, and now and then a clock behind
    return h, ce, cr, cd, now


@pytest.mark.parametrize("mode", [BASIC, ZCDP])
def test_matches_python_reference_through_growth_and_periods(mode):
    rng = np.random.default_rng(5)
    t = LedgerTable(capacity=16)  # grows many times
    events = []
    got = []
    for batch in range(30):
        h, ce, cr, cd, now = _events(rng, batch)
        events += list(
            zip(h.tolist(), ce.tolist(), cr.tolist(), cd.tolist(), [now] * len(h), strict=True)
        )
        got += t.charge(h, ce, cr, cd, now, mode, 2 * 10**12, 10**11, 10**7).tolist()
    want, book = _reference(events, mode, 2 * 10**12, 10**11, 10**7)
    assert got == want
    keys, period, eps, rho, delta = t.rows()
    assert t.used == len(book) == len(keys)
    for k, p, e, r, d in zip(keys.tolist(), period, eps, rho, delta, strict=True):
        assert book[k] == [p, e, r, d]
    assert t.nbytes <= 192 * len(book)  # 48-byte rows at a load of 1/4 to 1/2


@pytest.mark.parametrize("mode", [BASIC, ZCDP])
@pytest.mark.parametrize("capacity", [16, 1 << 16])
def test_take_dirty_gives_exactly_what_each_batch_changed(mode, capacity):
    """New subjects, period resets and granted charges are given, each once; refused charges
    change nothing and are not. From a table that grows (it scans for the dirty flags while it
    does, then reads the rows each record touched) and from one that holds a hundred batches
    (it reads the rows touched)."""
    rng = np.random.default_rng(6)
    t = LedgerTable(capacity=capacity)
    seen = set()
    book: dict[int, list[int]] = {}
    for batch in range(30):
        h, ce, cr, cd, now = _events(rng, batch)
        changed = set()
        for e in zip(h.tolist(), ce.tolist(), cr.tolist(), cd.tolist(), strict=True):
            if _step(book, *e, now, mode, 2 * 10**12, 10**11, 10**7)[1]:
                changed.add(e[0] or 1)
        half = len(h) // 2  # two charges per commit
        for part in (slice(0, half), slice(half, None)):
            t.charge(h[part], ce[part], cr[part], cd[part], now, mode, 2 * 10**12, 10**11, 10**7)
        seen.add(t.scan)
        keys, period, eps, rho, delta = t.take_dirty()
        assert len(keys) == len(changed) and set(keys.tolist()) == changed
        for k, p, e, r, d in zip(keys.tolist(), period, eps, rho, delta, strict=True):
            assert book[k] == [p, e, r, d]
    assert seen == ({True, False} if capacity == 16 else {False})


def test_merge_gives_each_changed_row_once():
    t = LedgerTable(capacity=16)
    keys = np.arange(1, 41, dtype=np.uint64)
    one = np.ones(40, np.int64)
    t.merge(keys, one, one, one, one)
    t.merge(keys[:10], one[:10], 2 * one[:10], one[:10], one[:10])  # grows before this one
    got = t.take_dirty()
    assert sorted(got[0].tolist()) == keys.tolist()
    assert got[2].tolist() == [2 if k <= 10 else 1 for k in got[0].tolist()]
    t.merge(keys[:5], one[:5], one[:5], one[:5], one[:5])  # lower spends: kept, still listed
    assert sorted(t.take_dirty()[0].tolist()) == [1, 2, 3, 4, 5]


def test_exactly_n_grants_for_an_allowance_of_n_costs():
    t = LedgerTable()
    cost = units(0.4, EPS_UNIT, up=True)
    allowance = units(4.0, EPS_UNIT, up=False)
    h = np.full(1000, 42, np.uint64)
    c = np.full(1000, cost, np.int64)
    z = np.zeros(1000, np.int64)
    g = t.charge(h, c, z, z, 0, BASIC, allowance, 0, 0)
    assert g.sum() == 10 and g[:10].all()  # the first ten, in order


def test_units_round_costs_up_and_allowances_down():
    assert units(0.4, EPS_UNIT, up=True) == 400_000_000_000  # 0.4, not 0.4000000000000000222
    assert units(1e-13, EPS_UNIT, up=True) == 1
    assert units(1e-13, EPS_UNIT, up=False) == 0
    assert units(1e-6, DELTA_UNIT, up=True) == 10**12
    with pytest.raises(ValueError):
        units(float("nan"), EPS_UNIT, up=True)


def test_merge_keeps_newest_period_and_largest_spend():
    t = LedgerTable()
    z = np.zeros(1, np.int64)
    t.charge(np.array([7], np.uint64), np.array([5]), z, z, 3, BASIC, 100, 0, 0)
    t.merge([7], [3], [2], [0], [0])  # older copy: lower spend, same period
    assert t.rows()[2].tolist() == [5]
    t.merge([7], [2], [90], [0], [0])  # an older period never wins
    assert t.rows()[1:3] == (np.array([3]), np.array([5]))
    t.merge([7], [4], [1], [0], [0])  # a newer period does
    assert t.rows()[1].tolist() == [4] and t.rows()[2].tolist() == [1]


@pytest.mark.parametrize("mode", [BASIC, ZCDP])
def test_cost_classes_charge_exactly_like_costs_per_row(mode):
    """A record's cost given as its class (which noised fields it released) grants and spends
    exactly what the same costs given per row do, through growth and a new period."""
    rng = np.random.default_rng(11)
    ce = np.array([0, 3, 5, 8]) * 10**11  # class 0 costs nothing: no row is touched
    cr = ce // 7
    cd = np.array([0, 10**6, 0, 10**6])
    by_class, by_row = LedgerTable(capacity=16), LedgerTable(capacity=16)
    for batch in range(20):
        n = 700
        h = rng.integers(0, 2000, n).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        cls = rng.integers(0, 4, n).astype(np.uint8)
        args = (batch // 10, mode, 2 * 10**12, 10**11, 3 * 10**6)
        got = by_class.charge_classes(h, cls, ce, cr, cd, *args)
        want = by_row.charge(h, ce[cls], cr[cls], cd[cls], *args)
        assert got.tolist() == want.tolist()
    for a, b in zip(by_class.rows(), by_row.rows(), strict=True):
        assert a.tolist() == b.tolist()
    assert by_class.used == by_row.used


def test_a_class_without_a_cost_is_refused():
    t = LedgerTable()
    one = np.ones(1, np.int64)
    for cls in (np.array([1], np.uint8), np.array([-1], np.int64)):
        with pytest.raises(ValueError, match="no cost"):
            t.charge_classes(np.array([5], np.uint64), cls, one, one, one, 0, BASIC, 10, 10, 10)


def test_a_charge_from_an_earlier_period_does_not_reset_a_later_row():
    """A worker whose clock is behind the one that wrote a row (period 5) charges it as it is:
    the subject cannot spend period 5's allowance twice, and the row stays in period 5."""
    t = LedgerTable()
    h = np.full(10, 0xABCDEF, np.uint64)
    c, z = np.full(10, 10**11, np.int64), np.zeros(10, np.int64)
    assert t.charge(h, c, z, z, 5, BASIC, 10 * 10**11, 0, 0).all()
    assert not t.charge(h, c, z, z, 4, BASIC, 10 * 10**11, 0, 0).any()
    assert not t.charge(h, c, z, z, 5, BASIC, 10 * 10**11, 0, 0).any()
    assert t.rows()[1].tolist() == [5]
    assert t.spent(h[:1], 4)[0].tolist() == [10**12]  # what a later period holds counts
    assert t.charge(h, c, z, z, 6, BASIC, 10 * 10**11, 0, 0).all()  # period 6 starts afresh


def test_take_dirty_gives_the_rows_changed_since_the_last_call_once():
    t = LedgerTable(capacity=16)
    z = np.zeros(50, np.int64)
    h = np.arange(1, 51, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    t.charge(h, np.full(50, 7), z, z, 0, BASIC, 100, 0, 0)  # grows on the way
    first = t.take_dirty()
    assert sorted(first[0].tolist()) == sorted(h.tolist())
    assert first[2].tolist() == [7] * 50
    t.charge(h[:5], np.full(5, 7), z[:5], z[:5], 0, BASIC, 100, 0, 0)
    again = t.take_dirty()
    assert sorted(again[0].tolist()) == sorted(h[:5].tolist()) and again[2].tolist() == [14] * 5
    assert all(len(c) == 0 for c in t.take_dirty())
    assert len(t.rows()[0]) == 50  # rows() reads every occupied row and clears nothing


def test_stale_rows_make_room_and_grants_stay_the_reference_ones():
    """With `evict_before` (the previous period's start), a table at half load drops the rows
    of older periods instead of doubling: grants are those of the reference (a dropped row
    would have been renewed anyway), every row of the last two periods is there, and the
    table stays the size two periods of subjects need."""
    rng = np.random.default_rng(11)
    t = LedgerTable(capacity=16)
    events, got = [], []
    for now in range(40):  # 300 subjects a period, most of them new
        h = (rng.integers(0, 400, 300) + 350 * now).astype(np.uint64) * np.uint64(
            0x9E3779B97F4A7C15
        )
        ce = rng.integers(0, 4, 300).astype(np.int64) * 10**11
        z = np.zeros(300, np.int64)
        events += [(x, c, 0, 0, now) for x, c in zip(h.tolist(), ce.tolist(), strict=True)]
        got += t.charge(h, ce, z, z, now, BASIC, 2 * 10**12, 0, 0, evict_before=now - 1).tolist()
        t.take_dirty()  # committed (a dirty row is never dropped)
    want, book = _reference(events, BASIC, 2 * 10**12, 0, 0)
    assert got == want
    keys, period, eps, rho, delta = t.rows()
    assert t.used == len(keys)
    for k, p, e, r, d in zip(keys.tolist(), period, eps, rho, delta, strict=True):
        assert book[k] == [p, e, r, d]
    recent = {k for k, row in book.items() if row[0] >= 38}
    assert recent <= set(keys.tolist())
    assert t.capacity <= 2048  # 40 periods of subjects would need 32768 slots


def test_evict_drops_old_rows_keeps_dirty_ones_and_shrinks():
    t = LedgerTable(capacity=16)
    h = np.arange(1, 1001, dtype=np.uint64)
    c, z = np.full(1000, 10, np.int64), np.zeros(1000, np.int64)
    t.charge(h, c, z, z, 1, BASIC, 100, 0, 0)
    t.take_dirty()
    t.charge(h[:10], c[:10], z[:10], z[:10], 5, BASIC, 100, 0, 0)  # renewed in period 5
    t.charge(h[10:20], c[10:20], z[10:20], z[10:20], 1, BASIC, 100, 0, 0)  # dirty, period 1
    assert t.evict(5) == 980 and t.used == 20 and t.capacity == 64
    keys, period, eps, _, _ = t.rows()
    assert sorted(keys.tolist()) == list(range(1, 21))
    got = t.take_dirty()
    assert sorted(got[0].tolist()) == list(range(1, 21))  # both kinds of change still logged
    assert t.evict(5) == 10 and t.evict(5) == 0
