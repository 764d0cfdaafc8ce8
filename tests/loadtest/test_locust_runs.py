"""Short headless Locust runs (subprocesses) against the embedded stack: the HTTP app on Serve
with 1- and 100-record users, and Kafka producers through the pipeline on the session broker."""

from __future__ import annotations

import csv
import json
import os
import urllib.request

import pytest

from raymask.loadtest.load import (
    LocalStack,
    aggregated,
    compare,
    http_phase,
    kafka_phase,
    parse_args,
)
from raymask.loadtest.report import read_report, write_report
from raymask.loadtest.traffic import generate_bytes
from raymask.policy.keys import Key, Keyring
from raymask.policy.loader import load_policy
from tests.conftest import EXAMPLES, METRICS_PORT

POLICY = EXAMPLES / "payments.yaml"
METRICS = f"http://127.0.0.1:{METRICS_PORT}/metrics"
RING = Keyring(
    [Key(k, 1, k[0].encode() * 32) for k in ("tok", "fpe", "sealed", "shift", "deadletter")]
)


def _card_masked(clear: str, masked: str) -> bool:
    """The `card` preset: the last 4 digits kept, every other digit masked, separators kept."""
    digits = [c for c in masked if c.isdigit()]
    return (
        len(masked) == len(clear)
        and "".join(digits) == "".join(c for c in clear if c.isdigit())[-4:]
    )


def _stats_rows(run_dir) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "locust_stats.csv")))


@pytest.mark.integration
def test_http_users_get_every_checked_record_masked_without_failures(ray_session, tmp_path):
    stack = LocalStack(load_policy(POLICY), RING, 1, "payments", "payments", metrics_url=METRICS)
    views = ["default", "ops", "fraud", "support", "research"]
    try:
        stack.deploy(views, echo=True)
        args = parse_args(["--users", "2", "--views", ",".join(views)])
        rc = http_phase(
            tmp_path / "http", stack.host, args, classes=["MaskOneRecord", "MaskHundredRecords"],
            shape="steady", seconds=8, rate=0.0, check_every=1, metrics_url=METRICS,
            deployment="MaskIngress",
        )  # fmt: skip
        echo_rc = http_phase(
            tmp_path / "echo", stack.echo_host, args, classes=["MaskHundredRecords"],
            shape="steady", seconds=4, rate=0.0, check_every=0, metrics_url=METRICS,
            deployment="EchoIngress",
        )  # fmt: skip
        body = generate_bytes("payments", 3, seed=99)

        def post(host: str) -> bytes:
            req = urllib.request.Request(f"{host}/v1/streams/payments/mask?view=default",
                                         data=body, headers={"content-type": "application/x-ndjson"})  # fmt: skip
            return urllib.request.urlopen(req, timeout=60).read()

        got, echoed = post(stack.host), post(stack.echo_host)
    finally:
        stack.close()
    assert echoed == body  # the baseline returns the body unchanged, on the same route
    assert echo_rc == 0 and aggregated(tmp_path / "echo")["requests"] > 0
    res = compare(tmp_path, [(tmp_path / "echo", tmp_path / "http")], "test")
    assert res["ratio_requests_per_s"] > 0 and len(res["rounds"]) == 1
    assert "**" in (tmp_path / "compare.md").read_text()
    d = tmp_path / "http"
    assert rc == 0, (d / "locust.log").read_text()[-2000:]
    names = {r["Name"]: r for r in _stats_rows(d)}
    assert int(names["mask 1 record"]["Request Count"]) > 0
    assert int(names["mask 100 records"]["Request Count"]) > 0
    assert aggregated(d)["failures"] == 0
    history = list(csv.DictReader(open(d / "locust_stats_history.csv")))
    assert len(history) >= 5
    assert max(int(h["User Count"]) for h in history) == 2  # the steady shape of --users 2
    checks = json.loads((d / "checks.json").read_text())  # every answer checked (check_every=1)
    assert checks["records_unmasked"] == 0
    assert checks["records_checked"] >= 100  # at least one 100-record answer
    for clear, masked in zip(body.splitlines(), got.splitlines(), strict=True):
        c, m = json.loads(clear), json.loads(masked)
        assert _card_masked(c["card"]["number"], m["card"]["number"])
        assert m["customer"]["name"] == "[REDACTED]"
    timeline = list(csv.DictReader(open(d / "timeline.csv")))
    assert len(timeline) >= 5 and any(r["workers"] for r in timeline)
    rep = write_report(d, d / "report")
    assert {"throughput.png", "latency.png", "workers.png"} <= set(rep.plots)


@pytest.mark.kafka
@pytest.mark.integration
def test_kafka_producers_every_record_arrives_masked_with_e2e_latencies(
    kafka_broker, ray_session, tmp_path
):
    from raymask.loadtest.kafka_traffic import read_topic

    args = parse_args(["--users", "2", "--seconds", "8", "--shape", "day", "--kafka-rate", "100",
                       "--kafka-batch", "10", "--drain-seconds", "30"])  # fmt: skip
    run = kafka_phase(tmp_path / "kafka", args, policy=load_policy(POLICY), keyring=RING,
                      metrics_url=METRICS, bootstrap=kafka_broker)  # fmt: skip
    d = tmp_path / "kafka"
    assert run.rc == 0, (d / "locust.log").read_text()[-2000:]
    k = json.loads((d / "kafka.json").read_text())
    assert k["produced"] > 0 and k["produce_errors"] == 0
    assert k["arrived"] == k["produced"] == k["acknowledged"] and k["missing"] == 0
    names = {r["Name"]: r for r in _stats_rows(d)}
    assert int(names["kafka e2e"]["Request Count"]) == k["produced"]  # one latency per record
    assert float(names["kafka e2e"]["50%"]) > 0
    assert int(names["kafka produce"]["Failure Count"]) == 0
    users = [int(h["User Count"]) for h in csv.DictReader(open(d / "locust_stats_history.csv"))]
    assert max(users) == 10  # the day shape's spike: 5x --users 2

    # every produced record is on the output topic once, masked per the policy's default view
    out = [m for m in read_topic(kafka_broker, run.output, args.partitions, idle_s=2)
           if "loadtest-warm-up" not in m.headers]  # fmt: skip
    assert len(out) == k["produced"]
    src = {(m.partition, m.offset): m.value
           for m in read_topic(kafka_broker, run.topic, args.partitions, idle_s=2)}  # fmt: skip
    assert len(
        {(m.headers["raymask.src.partition"], m.headers["raymask.src.offset"]) for m in out}
    ) == len(out)
    for m in out:
        clear = json.loads(
            src[(int(m.headers["raymask.src.partition"]), int(m.headers["raymask.src.offset"]))]
        )
        masked = json.loads(m.value)
        assert _card_masked(clear["card"]["number"], masked["card"]["number"])
        assert masked["account"]["id"] != clear["account"]["id"]
        assert "loadtest-sent-ns" in m.headers  # carried: the e2e latency is from the send time

    timeline = list(csv.DictReader(open(d / "timeline.csv")))
    assert any(r["consumer_lag"] for r in timeline)
    assert int(timeline[-1]["records_out"]) >= k["produced"]  # (+ the warm-up records)
    rep = read_report(d)
    assert rep.overall is not None and rep.overall.failures == 0
    assert os.path.getsize(d / "locust.html") > 0
