"""Warm-up: records that reach every field, masked in every view before a Serve replica takes
requests or a mask worker its first batch (no Ray: MaskCore and RouterCore on their own)."""

from __future__ import annotations

import json

import numpy as np

from raymask.actors.router import RouterCore
from raymask.actors.warm import WARM_VALUES, warm_records, warm_up
from raymask.actors.worker import MaskCore
from raymask.kernels.codecs.formats import format_for
from raymask.loadtest.load import _keyring
from raymask.loadtest.traffic import generate_bytes
from raymask.policy.compile import compile_stream
from raymask.policy.loader import load_policy
from tests.conftest import EXAMPLES


def _field(rec: dict, path: str):  # noqa: ANN202
    for name in path.split("."):
        rec = rec[name]
    return rec


def test_warm_records_set_every_field_to_each_warm_value():
    plan = compile_stream(load_policy(str(EXAMPLES / "payments.yaml")), "payments")
    recs = [json.loads(x) for x in warm_records(plan).splitlines()]
    assert len(recs) == len(WARM_VALUES)
    for rec, v in zip(recs, WARM_VALUES, strict=True):
        assert all(_field(rec, p) == v for p in plan.paths)


def test_warm_up_masks_every_view_and_leaves_the_core_as_it_was():
    pol = load_policy(str(EXAMPLES / "payments.yaml"))
    plan = compile_stream(pol, "payments")
    fmt = format_for("ndjson")
    core, router = MaskCore(pol, "payments", _keyring(None), fmt), RouterCore(plan, fmt, 1)
    seen = []
    real = core.process_views
    core.process_views = lambda b, roles, rows: seen.append(list(roles)) or real(b, roles, rows)
    warm_up(core, router, plan)
    assert seen == [list(plan.views)]
    # the same answers as a core that was never warmed (no state kept from the warm records)
    body = np.frombuffer(generate_bytes("payments", 50, seed=3), np.uint8)
    cold = MaskCore(pol, "payments", core.keyring, fmt)
    for view in ("default", "ops", "support"):  # the deterministic views
        routed = router.route(body, 0)
        a = core.process_views(routed.batch, [view], routed.shards[0])[0]
        b = cold.process_views(routed.batch, [view], routed.shards[0])[0]
        assert a.records.to_pylist() == b.records.to_pylist()


def test_a_worker_core_warms_on_a_spare_and_its_ledger_sees_no_warm_record(keyring):
    """MaskCore.warm (what a MaskWorker runs before its first batch): every view masks the warm
    records on a spare core, so the worker's own per-subject ledger stays empty and its answers
    are those of a core that never warmed."""
    pol = load_policy(str(EXAMPLES / "iot.yaml"))
    fmt = format_for("ndjson")
    core = MaskCore(pol, "telemetry_dp", keyring, fmt)
    assert core.ledger is not None  # the stream keeps per-device budgets
    made = []
    real_init = MaskCore.__init__

    def spy(self, *a, **k):  # noqa: ANN001, ANN202
        made.append(self)
        real_init(self, *a, **k)

    MaskCore.__init__ = spy
    try:
        core.warm()
    finally:
        MaskCore.__init__ = real_init
    assert len(made) == 1 and made[0] is not core
    spare = made[0]
    assert spare.ledger is not None and spare.ledger.table.used > 0  # the warm records charged it
    assert core.ledger.table.used == 0 and len(core.ledger.table.rows()[0]) == 0
    # the same grants and budget state as a core that never warmed (the noise differs by design)
    cold = MaskCore(pol, "telemetry_dp", keyring, fmt)
    body = np.frombuffer(generate_bytes("iot", 40, seed=5), np.uint8)
    router = RouterCore(core.plan, fmt, 1)
    routed = router.route(body, 0)
    a = core.process_views(routed.batch, [None], routed.shards[0])[0]
    b = cold.process_views(routed.batch, [None], routed.shards[0])[0]
    assert len(a.records) == len(b.records) == 40
    assert a.policy_version == b.policy_version
    assert np.array_equal(a.privacy.epsilon, b.privacy.epsilon)
    assert core.ledger.table.used == cold.ledger.table.used > 0
    mine, theirs = core.ledger.table.rows(), cold.ledger.table.rows()  # by subject, all columns
    for x, y in zip(mine, theirs, strict=True):
        assert np.array_equal(x[np.argsort(mine[0])], y[np.argsort(theirs[0])])
