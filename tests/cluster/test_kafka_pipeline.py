"""The Kafka pipeline on a real broker (embedded tansu) and real Ray actors: exact outputs per
view and partition against the plain-Python reference, dead-letter topics, effectively-once
output across re-reads and actor kills, per-key order."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections import Counter, defaultdict

import pytest

from raymask.actors.sinks.deadletters import open_entry
from raymask.cluster.kafka_pipeline import run_kafka
from raymask.loadtest.kafka_traffic import (
    create_topic,
    partition_by_key,
    produce,
    produce_traffic,
    read_topic,
)
from raymask.loadtest.traffic import generate_bytes
from raymask.policy.loader import load_policy
from tests.cluster.test_pipeline_local import check_output
from tests.conftest import EXAMPLES

pytestmark = [pytest.mark.kafka, pytest.mark.integration]

PARTS = 3
FAST = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}  # quick group joins on tansu


def _topic(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _by_partition(msgs) -> dict[int, list]:
    out: dict[int, list] = defaultdict(list)
    for m in sorted(msgs, key=lambda m: (m.partition, m.offset)):
        out[m.partition].append(m)
    return out


def test_every_view_gets_its_topic_exactly_as_the_reference_per_partition(
    kafka_broker, ray_session, keyring
):
    topic = _topic("payments")
    data = generate_bytes("payments", 6000, seed=21)
    parts = partition_by_key(data, "account.id", PARTS)

    async def setup() -> None:
        await create_topic(kafka_broker, topic, PARTS)
        await produce(kafka_broker, topic, parts)

    asyncio.run(setup())
    s = run_kafka(EXAMPLES / "payments.yaml", "payments", topic, bootstrap=kafka_broker,
                  keyring=keyring, idle_s=2, consumer_options=FAST)  # fmt: skip
    assert s.records_in == 6000 and s.balanced and not s.dead
    policy = load_policy(EXAMPLES / "payments.yaml")
    for role, out_topic in s.topics.items():
        assert s.written[role] == 6000
        got = _by_partition(read_topic(kafka_broker, out_topic, PARTS, expect=6000))
        for p in range(PARTS):
            msgs = got[p]
            assert [int(m.headers["raymask.src.offset"]) for m in msgs] == list(
                range(len(parts[p]))
            )
            assert all(m.headers["raymask.src.partition"] == str(p).encode() for m in msgs)
            inp = b"".join(v + b"\n" for v in parts[p])
            out = b"".join(m.value + b"\n" for m in msgs)
            check_output(inp, out, policy, "payments", role, keyring, set())


def test_bad_messages_go_to_the_views_dead_letter_topics_sealed_and_counted(
    kafka_broker, ray_session, keyring, tmp_path, monkeypatch
):
    from raymask.actors.audit import read_records, signing_key, verify
    from raymask.policy.keys import Key

    keyring.add(Key("audit", 1, b"a" * 32))
    monkeypatch.setenv("RAYMASK_AUDIT", str(tmp_path / "audit.log"))
    topic = _topic("payments")
    values = generate_bytes("payments", 300, seed=5).splitlines()
    values[10] = values[10][:30]  # truncated JSON: the router finds no key
    values[20] = values[20][:-1] + b',"x":}'  # broken after the key: the worker's scan
    rec = json.loads(values[30])
    rec["card"]["number"] = "1234"
    values[30] = json.dumps(rec).encode()  # a card fpe/mask cannot take
    values[40] = b'{"a":1}\n{"b":2}'  # a raw newline inside one message
    values[50] = b"   "  # blank

    async def setup() -> None:
        await create_topic(kafka_broker, topic, 1)
        await produce(kafka_broker, topic, {0: values})

    asyncio.run(setup())
    s = run_kafka(EXAMPLES / "payments.yaml", "payments", topic, bootstrap=kafka_broker,
                  keyring=keyring, roles=["default", "support"], idle_s=2, consumer_options=FAST)  # fmt: skip
    assert s.records_in == 300 and s.balanced
    assert s.dead["default"] == 5 and s.written["default"] == 295
    for role in ("default", "support"):
        dl = read_topic(kafka_broker, s.dead_topics[role], 1, expect=s.dead[role])
        entries = [json.loads(m.value) for m in dl]
        offsets = [e["line"] for e in entries]
        assert offsets == sorted(offsets)
        assert {10, 20, 40, 50} <= set(offsets)
        for e in entries:
            assert e["where"] == f"{topic}[0]"
            raw = open_entry(e, keyring)
            if e["line"] not in (40, 50):
                assert raw == values[e["line"]]
            email = json.loads(values[30])["customer"]["email"].encode()
            assert all(email not in m.value for m in dl), "sealed: no clear value in an entry"
        reasons = {e["line"]: e["reason"] for e in entries}
        assert reasons[20].startswith("invalid JSON at column")
    assert s.dead["support"] >= 4
    # the audit trail: the dead letters counted (every view's), verifiable, no value in it
    assert verify(tmp_path / "audit.log", signing_key(b"a" * 32).public_key()).ok
    recs = list(read_records(tmp_path / "audit.log"))
    assert sum(r["count"] for r in recs if r["kind"] == "dead_letters") == sum(s.dead.values())
    assert json.loads(values[30])["customer"]["email"] not in (tmp_path / "audit.log").read_text()


def test_a_second_run_over_the_same_input_writes_nothing_twice(kafka_broker, ray_session, keyring):
    """A new consumer group re-reads everything (as after losing all commits): every record is
    skipped as already written, so each output topic still holds every record exactly once."""
    topic = _topic("iot")
    n = produce_traffic(
        kafka_broker, topic, "iot", 4000, key_path="device.id", partitions=PARTS, seed=3
    )
    common = dict(bootstrap=kafka_broker, keyring=keyring, roles=["analyst"], idle_s=2,
                  consumer_options=FAST)  # fmt: skip
    first = run_kafka(EXAMPLES / "iot.yaml", "telemetry", topic, group_id="g1", **common)
    second = run_kafka(EXAMPLES / "iot.yaml", "telemetry", topic, group_id="g2", **common)
    assert first.written["analyst"] == n and first.skipped["analyst"] == 0
    assert second.written["analyst"] == 0 and second.skipped["analyst"] == n
    msgs = read_topic(kafka_broker, first.topics["analyst"], PARTS, expect=n + 1, least=n, idle_s=2)
    assert len(msgs) == n


def _kill_loop(pipeline: str, cycles: int, gap_s: float, running, stop, log: list) -> None:  # noqa: ANN001
    """Once records flow, kill `cycles` times: a worker, the sink, the other worker, the source
    (Ray restarts each), `gap_s` apart; the names killed go to `log`."""
    import ray

    running.wait(120)
    for name in ["kworker:{}:0", "ksink:{}", "kworker:{}:1", "ksource:{}:0"] * cycles:
        if stop.wait(gap_s):
            return
        try:
            ray.kill(ray.get_actor(name.format(pipeline), namespace="raymask"), no_restart=False)
            log.append(name)
        except ValueError:
            pass  # gone with the run


def test_kills_of_workers_sources_and_sinks_lose_and_double_nothing(
    kafka_broker, ray_session, keyring
):
    topic = _topic("payments")
    # `make faults` runs the long version: 1M records, four rounds of kills 3 s apart
    records = int(os.environ.get("RAYMASK_KAFKA_FAULT_RECORDS", "80000"))
    cycles = int(os.environ.get("RAYMASK_KAFKA_FAULT_CYCLES", "1"))
    gap_s = float(os.environ.get("RAYMASK_KAFKA_FAULT_GAP_S", "0.7"))
    n = produce_traffic(kafka_broker, topic, "payments", records, key_path="account.id",
                        partitions=PARTS, seed=9)  # fmt: skip
    stop, running, log = threading.Event(), threading.Event(), []
    pipeline = "faults-" + topic
    done = [0]

    def progress(summary) -> None:  # a streaming run stops when every record is out, once
        running.set()
        done[0] = summary.written["ops"] + summary.dead["ops"]

    killer = threading.Thread(
        target=_kill_loop, args=(pipeline, cycles, gap_s, running, stop, log), daemon=True
    )
    killer.start()
    try:
        s = run_kafka(EXAMPLES / "payments.yaml", "payments", topic, bootstrap=kafka_broker,
                      keyring=keyring, roles=["ops"], name=pipeline, idle_s=90,
                      max_poll_records=2000, consumer_options=FAST, progress=progress,
                      should_stop=lambda: done[0] >= n)  # fmt: skip
    finally:
        stop.set()
        killer.join()
    assert len(log) == 4 * cycles, log
    assert s.balanced
    msgs = read_topic(kafka_broker, s.topics["ops"], PARTS, expect=n + 1, least=n, idle_s=3)
    src = [
        (int(m.headers["raymask.src.partition"]), int(m.headers["raymask.src.offset"]))
        for m in msgs
    ]
    if len(src) != len(set(src)):  # say where: which partitions, source and output offsets
        seen: dict = defaultdict(list)
        for m, k in zip(msgs, src, strict=True):
            seen[k].append(m.offset)
        twice = sorted((k, v) for k, v in seen.items() if len(v) > 1)
        per = Counter(k[0] for k, _ in twice)
        raise AssertionError(f"{len(twice)} doubled, per partition {dict(per)}: {twice[:3]}..")
    assert len(src) == len(set(src)) == n, "every input record exactly once"
    last: dict = {}
    for m in sorted(msgs, key=lambda m: (m.partition, m.offset)):
        r = json.loads(m.value)
        key = r["account"]["id"]
        assert r["seq"] > last.get(key, -1), "per-key order"
        last[key] = r["seq"]


def test_cli_run_masks_a_topic_into_its_view_topics(kafka_broker, tmp_path):
    import subprocess
    import sys

    from raymask.policy.keys import generate_key_file

    topic = _topic("logs")
    n = produce_traffic(kafka_broker, topic, "logs", 2000, key_path="user.id", partitions=PARTS)
    keys = generate_key_file(
        tmp_path / "keys.json", ["tok", "fpe", "sealed", "shift", "deadletter"]
    )
    r = subprocess.run(
        [sys.executable, "-m", "raymask.cli", "run", "-P", str(EXAMPLES / "logs.yaml"),
         "-s", "applogs", "--input-topic", topic, "--bootstrap-servers", kafka_broker,
         "--no-idempotent", "--idle", "2", "--keys", str(keys), "--roles", "sre",
         "--broker-timeout", "30", "--carry-headers", "trace,content-type"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert f"{topic}.masked.sre" in r.stderr and "yes" in r.stderr
    msgs = read_topic(kafka_broker, f"{topic}.masked.sre", PARTS, expect=n + 1, least=n, idle_s=2)
    assert len(msgs) == n


def _exactly_once_in_order(msgs, n: int, key_of) -> None:
    """Every input (partition, offset) exactly once in `msgs`, and per key the `seq` rising."""
    src = [
        (int(m.headers["raymask.src.partition"]), int(m.headers["raymask.src.offset"]))
        for m in msgs
    ]
    if len(src) != len(set(src)):  # say where: which partitions, source and output offsets
        seen: dict = defaultdict(list)
        for m, k in zip(msgs, src, strict=True):
            seen[k].append(m.offset)
        twice = sorted((k, v) for k, v in seen.items() if len(v) > 1)
        per = Counter(k[0] for k, _ in twice)
        raise AssertionError(f"{len(twice)} doubled, per partition {dict(per)}: {twice[:3]}..")
    assert len(src) == len(set(src)) == n, "every input record exactly once"
    last: dict = {}
    for m in sorted(msgs, key=lambda m: (m.partition, m.offset)):
        r = json.loads(m.value)
        key = key_of(r)
        assert r["seq"] > last.get(key, -1), "per-key order"
        last[key] = r["seq"]


def test_a_broker_restart_mid_run_on_s3_storage_loses_and_doubles_nothing(
    ray_session, keyring, tmp_path
):
    """The broker is stopped while records flow and started again on the same port and the same
    s3 bucket: the run rides it out (bounded broker calls, writes retried after a tail re-read,
    commits kept until they get through) and every view holds every input record once, in
    order per key. `make faults` runs it longer, with several longer outages."""
    from raymask.cluster.broker import Broker, LoopbackS3

    records = int(os.environ.get("RAYMASK_KAFKA_RESTART_RECORDS", "20000"))
    down_s = float(os.environ.get("RAYMASK_KAFKA_RESTART_DOWN_S", "3"))
    restarts = int(os.environ.get("RAYMASK_KAFKA_RESTARTS", "1"))
    # `make faults` also kills actors during the run (cycles of four kills, this far apart)
    kill_cycles = int(os.environ.get("RAYMASK_KAFKA_RESTART_KILL_CYCLES", "0"))
    kill_gap_s = float(os.environ.get("RAYMASK_KAFKA_RESTART_KILL_GAP_S", "4"))
    topic, roles = _topic("iot"), ["analyst", "ops"]
    pipeline = "restart-" + topic
    with LoopbackS3("restart") as s3:
        broker = Broker(storage=s3.storage, env=s3.env, log_path=tmp_path / "b.log").start()
        port = broker.port
        n = produce_traffic(broker.bootstrap, topic, "iot", records, key_path="device.id",
                            partitions=PARTS, seed=17)  # fmt: skip
        finished, log, running, kills = threading.Event(), [], threading.Event(), []
        done = [0]

        def restart() -> None:  # this thread owns the broker from now on (parent-death signal)
            for k in range(1, restarts + 1):  # at 1/(R+1), 2/(R+1), .. of the output
                while done[0] < k * n // (restarts + 1) and not finished.wait(0.05):
                    pass
                if finished.is_set():
                    break
                log.append(("stopped at", done[0]))
                broker.stop(timeout=0.5)  # SIGKILL after 0.5 s: tansu drains for ~5 s otherwise
                time.sleep(down_s)
                broker.start()
                log.append(("started on", broker.port, done[0]))
            finished.wait()
            broker.stop()

        def progress(summary) -> None:
            running.set()
            done[0] = min(summary.written[r] + summary.dead[r] for r in roles)

        t = threading.Thread(target=restart, daemon=True)
        t.start()
        killer = threading.Thread(
            target=_kill_loop, args=(pipeline, kill_cycles, kill_gap_s, running, finished, kills),
            daemon=True,
        )  # fmt: skip
        killer.start()
        try:
            s = run_kafka(EXAMPLES / "iot.yaml", "telemetry", topic, bootstrap=broker.bootstrap,
                          keyring=keyring, roles=roles, name=pipeline, idle_s=90,
                          max_poll_records=1000, consumer_options=FAST, progress=progress,
                          should_stop=lambda: done[0] >= n)  # fmt: skip
        finally:
            finished.set()
            t.join(30)
            killer.join(30)
        assert len(log) == 2 * restarts, log
        assert len(kills) == 4 * kill_cycles, kills
        for stopped, started in zip(log[::2], log[1::2], strict=True):
            assert stopped[0] == "stopped at" and started[:2] == ("started on", port), log
            assert started[2] < n, "the broker went away and came back mid-run"
        assert s.balanced and not s.dead
        with Broker(port=port, storage=s3.storage, env=s3.env) as again:
            for role in roles:
                # a broker reading a large topic back from the loopback S3 pauses between
                # fetches: a longer idle limit for the long runs, or the read stops early
                # and answers a fetch only after listing the partition's objects (a fetch wait
                # long enough for that, and an idle limit well over the wait: read_all)
                idle = 3 if n <= 50_000 else 30
                msgs = read_topic(again.bootstrap, s.topics[role], PARTS, expect=n + 1, least=n,
                                  idle_s=idle, fetch_max_wait_ms=1000 if idle < 30 else 5000)  # fmt: skip
                _exactly_once_in_order(msgs, n, lambda r: r["device"]["id"])


def test_a_broker_away_longer_than_the_limit_ends_the_run_with_a_pipeline_error(
    ray_session, keyring, tmp_path
):
    from raymask.cluster.broker import Broker
    from raymask.errors import PipelineError

    broker = Broker(log_path=tmp_path / "b.log").start()  # its own: this test stops it
    topic = _topic("iot")
    data = generate_bytes("iot", 10000, seed=4)
    email = json.loads(data.split(b"\n", 1)[0])["owner"]["email"]

    async def setup() -> None:
        await create_topic(broker.bootstrap, topic, PARTS)
        await produce(broker.bootstrap, topic, partition_by_key(data, "device.id", PARTS))

    asyncio.run(setup())
    stopped: list[float] = []

    def progress(summary) -> None:
        if not stopped and summary.written["analyst"] >= 3000:
            broker.stop(timeout=0.5)
            stopped.append(time.monotonic())

    try:
        with pytest.raises(PipelineError) as info:
            run_kafka(EXAMPLES / "iot.yaml", "telemetry", topic, bootstrap=broker.bootstrap,
                      keyring=keyring, roles=["analyst"], idle_s=90, max_poll_records=1000,
                      consumer_options=FAST, progress=progress, broker_timeout_s=4)  # fmt: skip
    finally:
        broker.stop()
    took = time.monotonic() - stopped[0]
    msg = str(info.value)
    assert "unreachable for more than 4 s (broker_timeout_s)" in msg
    assert broker.bootstrap.split(":")[0] in msg and email not in msg
    # the limit, plus at most two bounded calls (min(30 s, limit) each) and a poll
    assert 4 <= took < 4 + 2 * 4 + 10, took


def test_two_sources_on_four_partitions_write_every_record_once_per_view_headers_carried(
    kafka_broker, ray_session, keyring
):
    """Two source actors share a 4-partition topic: both read, and each view holds every input
    offset once, in per-key order. The same run carries the input headers (carry_headers=True):
    each output record has its own input headers first, then ours; a forged raymask.src.*
    header in the input is dropped. (One run for both: each run costs ~15 s of actor start-up.)"""
    topic, roles = _topic("iot"), ["analyst", "ops"]
    parts = partition_by_key(generate_bytes("iot", 6000, seed=23), "device.id", 4)
    heads = {
        p: [[("trace", b"%d-%d" % (p, i)), ("raymask.src.offset", b"0")] if i % 50 else []
            for i in range(len(v))]
        for p, v in parts.items()
    }  # fmt: skip

    async def setup() -> int:
        await create_topic(kafka_broker, topic, 4)
        return await produce(kafka_broker, topic, parts, headers=heads)

    n = asyncio.run(setup())
    s = run_kafka(EXAMPLES / "iot.yaml", "telemetry", topic, bootstrap=kafka_broker,
                  keyring=keyring, roles=roles, sources=2, idle_s=3, max_poll_records=500,
                  consumer_options=FAST, carry_headers=True)  # fmt: skip
    assert s.records_in == n == 6000 and s.balanced and not s.dead
    assert sorted(s.source_records) == [0, 1] and all(s.source_records.values()), (
        "the group spread the partitions over both sources"
    )
    assert sum(s.source_records.values()) == s.records_in
    for role in roles:
        msgs = read_topic(kafka_broker, s.topics[role], 4, expect=n + 1, least=n, idle_s=2)
        _exactly_once_in_order(msgs, n, lambda r: r["device"]["id"])
        for m in msgs:
            i = int(m.headers["raymask.src.offset"])
            ours = [("raymask.src.topic", topic.encode()),
                    ("raymask.src.partition", b"%d" % m.partition), ("raymask.src.offset", b"%d" % i)]  # fmt: skip
            carried = [("trace", b"%d-%d" % (m.partition, i))] if i % 50 else []
            assert list(m.header_list) == carried + ours


def test_local_dp_records_carry_their_epsilon_and_budgets_hold(
    kafka_broker, ray_session, keyring, tmp_path
):
    """telemetry_dp: noised readings, per-device daily budget; every released record says in its
    headers what it spent, suppressed ones say nothing, and no device exceeds its allowance."""
    topic = _topic("iotdp")
    n = produce_traffic(
        kafka_broker, topic, "iot", 3000, key_path="device.id", partitions=PARTS, seed=9
    )
    s = run_kafka(EXAMPLES / "iot.yaml", "telemetry_dp", topic, bootstrap=kafka_broker,
                  keyring=keyring, idle_s=2, consumer_options=FAST, state=tmp_path / "state")  # fmt: skip
    assert s.written["default"] == n
    msgs = read_topic(kafka_broker, s.topics["default"], PARTS, expect=n + 1, least=n, idle_s=2)
    assert len(msgs) == n
    pol = load_policy(EXAMPLES / "iot.yaml").streams["telemetry_dp"]
    per_record = pol.fields["temperature_c"].epsilon + pol.fields["battery_pct"].epsilon
    released: Counter = Counter()
    for m in msgs:
        h = dict(m.headers)
        rec = json.loads(m.value)
        if rec["temperature_c"] is None:  # suppressed: spent nothing, says nothing
            assert "raymask.dp.epsilon" not in h
            continue
        assert float(h["raymask.dp.epsilon"]) == pytest.approx(per_record)
        assert float(h["raymask.dp.delta"]) == pytest.approx(pol.fields["battery_pct"].delta)
        released[rec["device"]["id"]] += 1
    assert released and max(released.values()) <= pol.budget.epsilon // per_record


def test_aggregates_beside_the_masking_equal_the_file_run_on_the_same_records(
    kafka_broker, ray_session, keyring, tmp_path
):
    """The payments aggregates (windows, top-k, a continual count) in a Kafka run, noise off:
    each partition keeps its own watermark, so no record is late and the releases equal those
    of `raymask aggregate` over the same records as one file."""
    from raymask.actors.accountant import Accountant
    from raymask.cluster.aggregate import aggregate_file

    topic = _topic("payagg")
    data = generate_bytes("payments", 6000, seed=23)
    parts = partition_by_key(data, "account.id", PARTS)

    async def setup() -> None:
        await create_topic(kafka_broker, topic, PARTS)
        await produce(kafka_broker, topic, parts)

    asyncio.run(setup())
    db = str(tmp_path / "acc.sqlite")
    Accountant(db).set_budget("stream:payments", {"epsilon": 1e6, "delta": 0.5})
    out = tmp_path / "kafka.aggregates.ndjson"
    s = run_kafka(EXAMPLES / "payments.yaml", "payments", topic, bootstrap=kafka_broker,
                  keyring=keyring, idle_s=2, consumer_options=FAST, aggregates=out,
                  accountant_db=db, aggregate_options={"noise": False})  # fmt: skip
    assert s.records_in == 6000 and s.aggregates.records_in == 6000
    ref = tmp_path / "file.aggregates.ndjson"
    src = tmp_path / "in.ndjson"
    src.write_bytes(data)
    f = aggregate_file(load_policy(EXAMPLES / "payments.yaml"), "payments", src, ref,
                       keyring=keyring, db=db, noise=False)  # fmt: skip
    assert s.aggregates.dead_letters == f.dead_letters and f.dead_letters < 10

    def rows(path) -> list[dict]:  # noqa: ANN001
        key = lambda r: (r.get("aggregate") or r["continual"], r.get("window_start") or  # noqa: E731
                         r["step_start"], r.get("group", ""))  # fmt: skip
        return sorted((json.loads(x) for x in path.read_text().splitlines()), key=key)

    got, want = rows(out), rows(ref)
    assert len(got) == len(want) > 10
    for g, w in zip(got, want, strict=True):  # sums may differ in the last bits (add order)
        assert g.keys() == w.keys()
        for k, v in w.items():
            assert g[k] == (pytest.approx(v, rel=1e-12) if isinstance(v, float) else v), k


def test_the_leak_monitor_reports_in_kafka_mode(kafka_broker, ray_session, keyring, tmp_path):
    """A view that keeps the free text (where emails and cards sit) with leak_check on every
    record: the driver counts the findings, writes them under the state folder and to the audit
    trail, by field and type, never a value."""
    from raymask.actors.audit import read_records, signing_key, verify
    from raymask.policy.keys import Key
    from raymask.policy.schema import Policy

    keyring.add(Key("audit", 1, b"a" * 32))
    os.environ["RAYMASK_AUDIT"] = str(tmp_path / "audit.log")
    try:
        pol = Policy.model_validate({
            "version": 1,
            "streams": {"applogs": {
                "format": "ndjson", "key": "user.id",
                "leak_check": {"sample": 1.0, "ignore_kept": False},
                "fields": {"user.id": {"technique": "tokenize", "key": "tok", "length": 16},
                           "message": "keep"},
            }},
        })  # fmt: skip
        topic = _topic("leaky")
        data = generate_bytes("logs", 400, seed=4)
        parts = partition_by_key(data, "user.id", 1)

        async def setup() -> None:
            await create_topic(kafka_broker, topic, 1)
            await produce(kafka_broker, topic, parts)

        asyncio.run(setup())
        s = run_kafka(pol, "applogs", topic, bootstrap=kafka_broker, keyring=keyring, idle_s=2,
                      consumer_options=FAST, state=tmp_path / "state")  # fmt: skip
    finally:
        del os.environ["RAYMASK_AUDIT"]
    assert s.records_in == 400 and s.balanced
    found = {(f, t) for (_, f, t) in s.leaks}
    assert ("message", "email") in found and ("message", "card") in found
    leaks_file = tmp_path / "state" / "leaks" / "applogs.audit.ndjson"
    assert leaks_file.exists()
    assert verify(tmp_path / "audit.log", signing_key(b"a" * 32).public_key()).ok
    trail = [r for r in read_records(tmp_path / "audit.log") if r["kind"] == "leak"]
    assert sum(r["count"] for r in trail) == sum(s.leaks.values())
    emails = [json.loads(x)["user"]["email"] for x in data.splitlines()]
    text = leaks_file.read_text() + (tmp_path / "audit.log").read_text()
    assert not any(e in text for e in emails)
