"""A Serve replica's warm-up: records that reach every field, masked in every view before the
replica takes requests (no Ray: the replica's MaskCore and RouterCore on their own)."""

from __future__ import annotations

import json

import numpy as np

from raymask.actors.router import RouterCore
from raymask.actors.worker import MaskCore
from raymask.cluster.serve_app import WARM_VALUES, warm_records, warm_up
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
