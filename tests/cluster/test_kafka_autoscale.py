"""The Kafka pipeline's worker pool under its autoscaler, on a real broker and real Ray actors:
it grows while records wait, shrinks when they stop, and across every resize the output is
exactly the reference's, in order per partition (so per key), nothing lost or doubled, and
per-subject budgets move with their keys."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict

import pytest

from raymask.actors.autoscale import AutoscaleConfig
from raymask.cluster.kafka_pipeline import run_kafka
from raymask.loadtest.kafka_traffic import produce_traffic, read_topic
from raymask.policy.loader import load_policy
from tests.cluster.test_pipeline_local import check_output
from tests.conftest import EXAMPLES

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

PARTS = 3
FAST = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}
# quick decisions; no node requests (the test's local Ray has no autoscaler)
AUTO = AutoscaleConfig(min_workers=1, max_workers=3, target_lag_s=0.8, low_lag_s=0.2,
                       up_after_s=0.5, down_after_s=1.0, cooldown_s=1.0, request_nodes=False,
                       worker_cpus=0.25)  # fmt: skip


def _run(kafka_broker, keyring, policy: str, stream: str, topic: str, n: int,
         capacity: float = 2500.0, **kw):  # fmt: skip
    """Run until every record is in and the pool is back to one worker."""
    box: dict = {}

    def done() -> bool:
        s = box.get("s")
        return s is not None and s.records_in >= n and s.workers == 1 and len(s.resizes) >= 2

    return run_kafka(EXAMPLES / policy, stream, topic, bootstrap=kafka_broker,
                     keyring=keyring, idle_s=60, consumer_options=FAST, autoscale=AUTO,
                     workers=1, worker_capacity_rps=capacity, max_poll_records=1000, poll_ms=100,
                     progress=lambda s: box.update(s=s), should_stop=done, **kw)  # fmt: skip


def test_the_pool_grows_under_lag_and_shrinks_after_and_the_output_is_exact(
    kafka_broker, ray_session, keyring
):
    topic = f"auto-{uuid.uuid4().hex[:8]}"
    n = produce_traffic(kafka_broker, topic, "payments", 12_000, key_path="account.id",
                        partitions=PARTS, seed=4)  # fmt: skip
    s = _run(kafka_broker, keyring, "payments.yaml", "payments", topic, n)
    sizes = [w for _, w in s.resizes]
    assert max(sizes) > 1 and sizes[-1] == 1, s.resizes  # up, then back down
    assert s.records_in == n and s.balanced and not s.resent
    policy = load_policy(EXAMPLES / "payments.yaml")
    src = defaultdict(list)
    for m in read_topic(kafka_broker, topic, PARTS, expect=n):
        src[m.partition].append(m)
    for role, out_topic in s.topics.items():
        assert s.written[role] + s.dead[role] == n
        got = defaultdict(list)
        for m in read_topic(kafka_broker, out_topic, PARTS, expect=s.written[role]):
            got[m.partition].append(m)
        for p in range(PARTS):
            msgs = sorted(got[p], key=lambda m: m.offset)
            # the input order of the partition, hence of every key in it
            offs = [int(m.headers["raymask.src.offset"]) for m in msgs]
            assert offs == sorted(offs) and len(set(offs)) == len(offs)
            by_off = {m.offset: m.value for m in src[p]}
            inp = b"".join(by_off[o] + b"\n" for o in offs)
            out = b"".join(m.value + b"\n" for m in msgs)
            check_output(inp, out, policy, "payments", role, keyring, set())


def test_per_subject_budgets_hold_across_resizes(kafka_broker, ray_session, keyring, tmp_path):
    """telemetry_dp: each device's daily allowance is spent on whichever worker owns the device
    after each resize; no device is released more often than its allowance permits."""
    topic = f"autodp-{uuid.uuid4().hex[:8]}"
    n = produce_traffic(kafka_broker, topic, "iot", 9000, key_path="device.id",
                        partitions=PARTS, seed=11)  # fmt: skip
    # workers of 1,000 records/s: 9,000 records wait long enough for the pool to grow even
    # when the first rounds are slow (a cold Numba cache on a clean machine)
    s = _run(kafka_broker, keyring, "iot.yaml", "telemetry_dp", topic, n, capacity=1000.0,
             state=tmp_path / "state")  # fmt: skip
    assert max(w for _, w in s.resizes) > 1
    assert s.written["default"] == n
    msgs = read_topic(kafka_broker, s.topics["default"], PARTS, expect=n)
    pol = load_policy(EXAMPLES / "iot.yaml").streams["telemetry_dp"]
    per_record = pol.fields["temperature_c"].epsilon + pol.fields["battery_pct"].epsilon
    released: Counter = Counter()
    for m in msgs:
        rec = json.loads(m.value)
        if rec["temperature_c"] is not None:
            released[rec["device"]["id"]] += 1
    assert released and max(released.values()) <= pol.budget.epsilon // per_record
