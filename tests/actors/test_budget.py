"""Per-subject privacy budgets on the workers (no Ray): exact grant counts, suppress and drop,
periods, views composing, checkpoints that survive a restart and move with their keys."""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pyarrow as pa
import pytest

from raymask.actors.ledger import _SCHEMA, LedgerStore, SubjectLedger, zcdp_allowance
from raymask.actors.router import RouterCore
from raymask.actors.worker import BUDGET_REASON, MaskCore
from raymask.errors import PipelineError
from raymask.kernels.codecs.formats import NdjsonFormat
from raymask.kernels.hashing import jump_hash, key_hash
from raymask.kernels.rng import SecureRandom
from raymask.policy.keys import Key, Keyring
from raymask.policy.schema import Budget, Policy

RING = Keyring([Key("tok", 1, b"t" * 32), Key("ledger", 1, b"l" * 32)])
FMT = NdjsonFormat()


def _policy(budget: dict | None, *, eps: float = 0.4, views: dict | None = None) -> Policy:
    return Policy.model_validate(
        {
            "version": 1,
            "streams": {
                "s": {
                    "format": "ndjson",
                    "key": "user",
                    "fields": {"v": {"technique": "noise", "epsilon": eps, "lo": 0, "hi": 10}},
                    "views": views or {},
                    **({"budget": {"key": "ledger", **budget}} if budget is not None else {}),
                }
            },
        }
    )


def _records(users: list[str], start: int = 0) -> np.ndarray:
    lines = [json.dumps({"user": u, "v": 5, "n": start + i}) for i, u in enumerate(users)]
    return np.frombuffer(("\n".join(lines) + "\n").encode(), np.uint8)


def _run(core: MaskCore, data: np.ndarray, role: str | None = None):
    routed = RouterCore(core.plan, FMT, 1).route(data, 1)
    return core.process(routed.batch, role, routed.shards[0])


def _core(pol: Policy, **kw) -> MaskCore:
    return MaskCore(pol, "s", RING, FMT, rng=SecureRandom._for_tests(3), **kw)


def test_subject_with_1000_events_and_10_events_worth_gets_exactly_10_then_null():
    core = _core(_policy({"epsilon": 4.0, "exhausted": "suppress"}))  # 10 x 0.4
    out = _run(core, _records(["alice"] * 1000))
    values = [json.loads(r)["v"] for r in out.records.to_pylist()]
    assert len(values) == 1000  # suppress keeps every record
    assert all(v is not None for v in values[:10]) and values[10:] == [None] * 990
    assert out.privacy.suppressed == 990
    assert out.privacy.epsilon.tolist() == [0.4] * 10 + [0.0] * 990


def test_drop_sends_the_rest_to_the_dead_letters_with_the_reason():
    core = _core(_policy({"epsilon": 4.0, "exhausted": "drop"}))
    out = _run(core, _records(["alice"] * 600 + ["bob"] * 400))
    assert len(out.rows) == 20 and len(out.dead_rows) == 980
    assert set(out.dead_reasons) == {BUDGET_REASON.format(path="user")}
    assert "alice" not in out.dead_reasons[0]
    kept = [json.loads(r)["user"] for r in out.records.to_pylist()]
    assert kept.count("alice") == kept.count("bob") == 10


def test_zcdp_grants_the_number_of_releases_the_rho_allowance_holds():
    # zCDP: each Laplace value costs eps^2/2; (4, 1e-6) allows rho = (sqrt(L+4) - sqrt(L))^2
    eps, budget_eps, delta = 0.05, 4.0, 1e-6
    core = _core(_policy({"epsilon": budget_eps, "delta": delta, "composition": "zcdp"}, eps=eps))
    out = _run(core, _records(["alice"] * 1000))
    n = int(np.count_nonzero(out.privacy.epsilon))
    expect = math.floor(zcdp_allowance(budget_eps, delta) / (eps**2 / 2))
    assert n == expect
    assert expect > budget_eps / eps  # many small releases: zCDP beats adding epsilons (80)


def test_the_allowance_renews_each_period():
    now = [0.0]
    core = _core(_policy({"epsilon": 4.0, "period": "hour"}), clock=lambda: now[0])
    first = _run(core, _records(["alice"] * 30))
    assert np.count_nonzero(first.privacy.epsilon) == 10
    again = _run(core, _records(["alice"] * 30))
    assert np.count_nonzero(again.privacy.epsilon) == 0
    now[0] = 3600.0
    later = _run(core, _records(["alice"] * 30))
    assert np.count_nonzero(later.privacy.epsilon) == 10


def test_views_compose_each_release_is_charged():
    # the default and the analyst view both release the noised value: 5 records' worth each
    pol = _policy(
        {"epsilon": 4.0},
        views={"analyst": {"v": {"technique": "noise", "epsilon": 0.4, "lo": 0, "hi": 10}}},
    )
    core = _core(pol)
    routed = RouterCore(core.plan, FMT, 1).route(_records(["alice"] * 20), 1)
    a, b = core.process_views(routed.batch, [None, "analyst"], routed.shards[0])
    assert np.count_nonzero(a.privacy.epsilon) + np.count_nonzero(b.privacy.epsilon) == 10


def test_records_without_the_field_spend_nothing():
    core = _core(_policy({"epsilon": 0.8}))
    lines = [{"user": "u", "n": i} for i in range(5)] + [{"user": "u", "v": 1}] * 3
    data = np.frombuffer(("\n".join(map(json.dumps, lines)) + "\n").encode(), np.uint8)
    out = _run(core, data)
    assert out.privacy.epsilon.tolist() == [0.0] * 5 + [0.4, 0.4, 0.0]
    assert out.privacy.suppressed == 1


def test_spent_budget_survives_a_restart_and_files_are_sealed(tmp_path):
    pol = _policy({"epsilon": 4.0})
    core = _core(pol, ledger_uri=str(tmp_path))
    _run(core, _records(["alice"] * 7 + ["bob"] * 2))
    before = core.ledger.spent(key_hash(pa.array(["alice", "bob"])))["epsilon"]
    assert before == pytest.approx([2.8, 0.8])
    again = _core(pol, ledger_uri=str(tmp_path))  # a restarted worker
    after = again.ledger.spent(key_hash(pa.array(["alice", "bob"])))["epsilon"]
    assert (after >= before).all() and after == pytest.approx(before)
    out = _run(again, _records(["alice"] * 7))
    assert np.count_nonzero(out.privacy.epsilon) == 3  # 10 - 7
    for root, _, files in os.walk(tmp_path):
        for f in files:
            raw = open(os.path.join(root, f), "rb").read()
            assert b"alice" not in raw and b"bob" not in raw
            h = key_hash(pa.array(["alice"]))[0]
            assert int(h).to_bytes(8, "little") not in raw  # digests are sealed too
    wrong = Keyring([Key("tok", 1, b"t" * 32), Key("ledger", 1, b"x" * 32)])
    with pytest.raises(PipelineError, match="does not open with the budget key"):
        MaskCore(pol, "s", wrong, FMT, ledger_uri=str(tmp_path))


def test_snapshots_replace_logs_and_reload_equal(tmp_path):
    budget = Budget(epsilon=100.0, key="ledger")
    led = SubjectLedger(budget, str(tmp_path), b"k" * 32, snapshot_every=4)
    rng = np.random.default_rng(1)
    for _ in range(11):
        h = rng.integers(1, 500, 200).astype(np.uint64)
        c = np.full(200, 10**12, np.int64)
        z = np.zeros(200, np.int64)
        led.charge(h, c, z, z)
        led.commit()
    store = LedgerStore(str(tmp_path / "shard-0"), b"k" * 32)
    snaps, logs = store.files()
    assert len(snaps) == 1 and all(s > snaps[0] for s in logs) and len(logs) < 4
    again = SubjectLedger(budget, str(tmp_path), b"k" * 32)
    a, b = led.table.rows(), again.table.rows()
    order_a, order_b = np.argsort(a[0]), np.argsort(b[0])
    for x, y in zip(a, b, strict=True):
        assert (x[order_a] == y[order_b]).all()


def _commits(led, subjects: int, times: int, start: int = 1) -> None:  # noqa: ANN001
    """`times` batches that each charge `subjects` subjects (from `start` on) once, committed."""
    for _ in range(times):
        h = np.arange(start, start + subjects, dtype=np.uint64)
        c = np.full(subjects, 10**6, np.int64)
        led.charge(h, c, 0 * c, 0 * c)
        led.commit()


def test_a_snapshot_waits_until_its_logs_hold_the_table(tmp_path):
    # a snapshot costs the whole table: with small batches on a large table it waits for logs
    # holding as many rows as the table, or at most for 16 * snapshot_every logs
    budget = Budget(epsilon=100.0, key="ledger")
    led = SubjectLedger(budget, str(tmp_path), b"k" * 32, snapshot_every=2)
    store = LedgerStore(str(tmp_path / "shard-0"), b"k" * 32)
    _commits(led, 1000, 1)
    led.snapshot()
    _commits(led, 10, 31)
    snaps, logs = store.files()
    assert len(snaps) == 1 and len(logs) == 31 and min(logs) > snaps[0]
    _commits(led, 10, 1)  # the 32nd log: a snapshot instead
    snaps, logs = store.files()
    assert len(snaps) == 1 and logs == [] and snaps[0] == led.seq
    # batches as large as the table: one every snapshot_every logs
    small = SubjectLedger(budget, str(tmp_path / "small"), b"k" * 32, snapshot_every=2)
    _commits(small, 100, 1)
    assert small.store.files() == ([], [1])
    _commits(small, 100, 1)
    assert small.store.files() == ([2], [])


def test_budgets_move_with_their_keys_when_the_pool_resizes(tmp_path):
    pol = _policy({"epsilon": 4.0})
    users = [f"user-{i}" for i in range(300)]
    hashes = key_hash(pa.array(users))
    cores = [_core(pol, ledger_uri=str(tmp_path), shard=i, shards=2) for i in range(2)]
    owner2 = jump_hash(hashes, 2)
    for i, core in enumerate(cores):  # each shard sees only its own keys, 3 records each
        mine = [u for u, o in zip(users, owner2, strict=True) if o == i]
        _run(core, _records([u for u in mine for _ in range(3)]))
    grown = [cores[0], cores[1], _core(pol, ledger_uri=str(tmp_path), shard=2, shards=3)]
    for i, core in enumerate(grown[:2]):
        core.set_layout(i, 3)
    owner3 = jump_hash(hashes, 3)
    moved = np.count_nonzero(owner3 != owner2)
    assert 0 < moved < 0.5 * len(users)  # about a third of the keys move to the new shard
    for i, core in enumerate(grown):
        mine = hashes[owner3 == i]
        spent = core.ledger.spent(mine)["epsilon"]
        assert spent == pytest.approx(np.full(len(mine), 1.2))  # nobody's spend was forgotten
    shrunk = _core(pol, ledger_uri=str(tmp_path), shard=0, shards=1)  # back to one worker
    assert shrunk.ledger.spent(hashes)["epsilon"] == pytest.approx(np.full(300, 1.2))


ALICE = np.full(10, 0xABCDEF, np.uint64)
TENTH = np.full(10, 10**11, np.int64)  # epsilon 0.1
NONE = np.zeros(10, np.int64)


def test_a_clock_behind_after_a_restart_does_not_renew_the_allowance(tmp_path):
    """Node A (in hour 1) spends alice's hour; the shard restarts on node B, whose clock is a
    second behind (still hour 0), then reaches hour 1: alice gets nothing more in hour 1."""
    b = Budget(epsilon=1.0, period="hour", key="ledger")
    a = SubjectLedger(b, str(tmp_path), b"k" * 32, clock=lambda: 3600.5)
    assert a.charge(ALICE, TENTH, NONE, NONE).all()
    a.commit()
    now = [3599.5]
    node_b = SubjectLedger(b, str(tmp_path), b"k" * 32, clock=lambda: now[0])
    assert not node_b.charge(ALICE, TENTH, NONE, NONE).any()
    node_b.commit()
    now[0] = 3600.6
    assert not node_b.charge(ALICE, TENTH, NONE, NONE).any()
    now[0] = 7200.0  # hour 2 renews it
    assert node_b.charge(ALICE, TENTH, NONE, NONE).all()


def test_a_change_of_period_kind_keeps_the_spend_across_a_reload(tmp_path):
    """Rows are stamped with their period's start time, which compares across kinds: after a
    push from `day` to `forever`, a reload cannot prefer the older day row to the forever
    spend (with period indices it did: a day index is larger than forever's 0)."""
    now = 1_700_000_000.0
    led = SubjectLedger(Budget(epsilon=1.0, period="day", key="ledger"), str(tmp_path),
                        b"k" * 32, clock=lambda: now)  # fmt: skip
    led.charge(ALICE[:1], TENTH[:1], NONE[:1], NONE[:1])
    led.commit()
    forever = Budget(epsilon=1.0, period="forever", key="ledger")
    led.configure(forever)
    assert led.charge(ALICE[1:], TENTH[1:], NONE[1:], NONE[1:]).all()
    led.commit()
    assert led.spent(ALICE[:1])["epsilon"][0] == pytest.approx(1.0)
    again = SubjectLedger(forever, str(tmp_path), b"k" * 32, clock=lambda: now)
    assert again.spent(ALICE[:1])["epsilon"][0] == pytest.approx(1.0)
    assert not again.charge(ALICE, TENTH, NONE, NONE).any()


def test_files_stamped_with_period_indices_count_in_the_current_period(tmp_path):
    """Ledgers written before rows were stamped with start times hold period indices: a
    reload reads them as start times of the current kind (never later than now)."""
    now = 1_700_000_000.0
    day = int(now // 86400)
    store = LedgerStore(str(tmp_path / "shard-0"), b"k" * 32)
    rows = (np.array([0xABCDEF, 0x123], np.uint64), np.array([day, day - 1]),
            np.array([10**12, 10**12]), np.zeros(2, np.int64), np.zeros(2, np.int64))  # fmt: skip
    sink = io.BytesIO()  # a log as they were written then: the schema without the marker
    schema = _SCHEMA.remove_metadata()
    with pa.ipc.new_stream(sink, schema) as w:
        w.write_batch(pa.RecordBatch.from_arrays(list(rows), schema=schema))
    store._write("log-000000000001.rml", sink.getvalue())
    led = SubjectLedger(Budget(epsilon=1.0, period="day", key="ledger"), str(tmp_path),
                        b"k" * 32, clock=lambda: now)  # fmt: skip
    assert sorted(led.table.rows()[1].tolist()) == [(day - 1) * 86400, day * 86400]
    assert not led.charge(ALICE[:1], TENTH[:1], NONE[:1], NONE[:1]).any()  # today's is spent
    other = np.array([0x123], np.uint64)
    assert led.charge(other, TENTH[:1], NONE[:1], NONE[:1]).all()  # yesterday's renewed


def test_the_row_of_digest_zero_goes_to_its_shard_on_a_resize(tmp_path):
    """The table keeps digest 0 as 1 (0 marks an empty slot): on a reload that row goes to the
    shard of digest 0 as well as to the shard of digest 1, so neither subject's spend is lost."""
    both = np.array([0, 1], np.uint64)
    shards = next(n for n in range(2, 64) if len(set(jump_hash(both, n).tolist())) == 2)
    zero, one = jump_hash(both, shards).tolist()
    b = Budget(epsilon=1.0, key="ledger")
    led = SubjectLedger(b, str(tmp_path), b"k" * 32, shard=zero, shards=shards)
    assert led.charge(np.zeros(10, np.uint64), TENTH, NONE, NONE).all()
    led.commit()
    for shard in (zero, one):
        moved = SubjectLedger(b, str(tmp_path), b"k" * 32, shard=shard, shards=shards)
        assert moved.spent(np.zeros(1, np.uint64))["epsilon"][0] == pytest.approx(1.0)


def test_ledger_memory_is_fixed_width_per_subject():
    budget = Budget(epsilon=1.0, key="ledger")
    led = SubjectLedger(budget)
    n = 100_000
    h = key_hash(pa.array([f"s{i}" for i in range(n)]))
    c = np.full(n, 10**11, np.int64)
    z = np.zeros(n, np.int64)
    assert led.charge(h, c, z, z).all()
    assert led.table.used == n
    assert led.table.nbytes <= 192 * n  # 48-byte rows at a load of 1/4 to 1/2


def test_one_run_at_a_time_holds_a_streams_ledger(tmp_path):
    from raymask.actors.ledger import ledger_lock

    with ledger_lock(str(tmp_path)):
        with pytest.raises(PipelineError, match="in use by another run"):
            ledger_lock(str(tmp_path)).__enter__()
    with ledger_lock(str(tmp_path)):  # released at the end of the first run
        pass


def test_a_second_concurrent_run_is_refused_before_any_data_moves(tmp_path):
    from raymask.actors.ledger import ledger_lock
    from raymask.cluster.pipeline import ledger_root, mask_file

    src = tmp_path / "in.ndjson"
    src.write_bytes(_records(["a", "b"]).tobytes())
    ring = Keyring([Key("ledger", 1, b"l" * 32), Key("deadletter", 1, b"d" * 32)])
    pol = _policy({"epsilon": 4.0})
    with ledger_lock(ledger_root(tmp_path / "state", "s")):
        with pytest.raises(PipelineError, match="in use by another run"):
            mask_file(pol, "s", src, tmp_path / "out.ndjson", keyring=ring, local=True,
                      dead_letter_key="deadletter", state=tmp_path / "state")  # fmt: skip
    s = mask_file(pol, "s", src, tmp_path / "out.ndjson", keyring=ring, local=True,
                  dead_letter_key="deadletter", state=tmp_path / "state")  # fmt: skip
    assert s.records_out == 2 and s.dp_records == 2


@pytest.mark.parametrize("fields", [3, 9])
def test_records_are_charged_for_the_noised_fields_they_carry(fields):
    """A record pays for the noised fields it has. Up to eight noised fields the worker passes
    a record's cost as its class (which fields it had), past eight as costs per record: both
    grant exactly what adding up the costs in order grants."""
    pol = Policy.model_validate(
        {
            "version": 1,
            "streams": {
                "s": {
                    "format": "ndjson",
                    "key": "user",
                    "fields": {
                        f"f{j}": {
                            "technique": "noise",
                            "epsilon": round(0.1 * (j + 1), 1),
                            "lo": 0,
                            "hi": 9,
                        }
                        for j in range(fields)
                    },
                    "budget": {"key": "ledger", "epsilon": 6.0, "exhausted": "suppress"},
                }
            },
        }
    )
    core = _core(pol)
    rng = np.random.default_rng(fields)
    has = rng.random((300, fields)) < 0.3
    users = rng.choice(["alice", "bob", "carol"], 300)
    lines = [
        json.dumps({"user": u, **{f"f{j}": 5 for j in range(fields) if h[j]}})
        for u, h in zip(users, has, strict=True)
    ]
    out = _run(core, np.frombuffer(("\n".join(lines) + "\n").encode(), np.uint8))
    spent = {u: 0 for u in ("alice", "bob", "carol")}  # in tenths of an epsilon, exact
    want = []
    for u, h in zip(users, has, strict=True):
        cost = sum(j + 1 for j in range(fields) if h[j])
        ok = spent[u] + cost <= 60
        spent[u] += cost if ok else 0
        want.append(ok and cost > 0)
    got = out.privacy.epsilon > 0
    assert got.tolist() == want
    assert out.privacy.suppressed == sum(
        1 for u, h, w in zip(users, has, want, strict=True) if h.any() and not w
    )


def test_past_periods_leave_memory_and_storage_at_a_snapshot(tmp_path):
    """Subjects last seen two days ago are dropped at the next snapshot (their allowance has
    renewed anyway); yesterday's stay, for a worker whose clock is behind."""
    now = [86400.0 * 100]
    b = Budget(epsilon=1.0, period="day", key="ledger")
    led = SubjectLedger(b, str(tmp_path), b"k" * 32, clock=lambda: now[0])
    old = np.arange(1, 1001, dtype=np.uint64)
    led.charge(old, np.full(1000, 10**11), np.zeros(1000, np.int64), np.zeros(1000, np.int64))
    led.commit()
    now[0] += 86400  # day 101: ten of them come back
    led.charge(old[:10], TENTH, NONE, NONE)
    led.commit()
    now[0] += 86400  # day 102
    led.charge(ALICE, TENTH, NONE, NONE)
    led.snapshot()
    assert led.table.used == 11 and led.table.capacity == 32
    again = SubjectLedger(b, str(tmp_path), b"k" * 32, clock=lambda: now[0])
    assert sorted(again.table.rows()[0].tolist()) == sorted([*range(1, 11), 0xABCDEF])
    assert again.spent(old[:10])["epsilon"] == pytest.approx(np.zeros(10))  # renewed today
    assert again.spent(ALICE[:1])["epsilon"][0] == pytest.approx(1.0)
    assert again.charge(old, np.full(1000, 10**12), np.zeros(1000, np.int64),
                        np.zeros(1000, np.int64)).all()  # fmt: skip
