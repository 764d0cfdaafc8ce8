"""The autoscaling proof: a Kafka pipeline on a local multi-node Ray cluster with the real Ray
autoscaler, under a load that spikes to 5x and comes back down.

    python -m raymask.loadtest.scale_test [--short] [--out DIR]     (make scale-test)

What runs, all started here and stopped at the end:
- a fake multi-node Ray cluster (raymask.cluster.fake_cluster): a head with 1 CPU, and up to
  `--max-nodes` worker nodes of 1 CPU that Ray's autoscaler adds and removes;
- the embedded tansu broker, a topic of 3 partitions;
- `run_kafka` with `autoscale`: workers of 1 CPU each (so each worker past the first needs a node
  of its own), starting with 1, growing from the lag up to `--max-workers`;
- the load: Locust (loadtest/locustfile.py, `KafkaProducer` users of 30 records/s each) under
  the day-in-the-life shape: a ramp to `base` records/s, steady, a spike to 5x base, back to
  base, then nothing, so the pool and the cluster come back down. Locust measures each record's
  end-to-end latency (`kafka e2e` in its CSV) and waits until every record it produced arrived
  masked. (`--no-locust`: a paced producer in this process instead, same kind of shape.)

On 2 shared cores a worker's real speed says nothing about a cluster's, so each worker stands for
one of a known capacity (`--capacity` records/s, a sleep per batch, see run_kafka's
`worker_capacity_rps`): base is 60% of one worker, the spike 3x one worker, and the pool has to
grow to keep up. The masking itself is real, and so are the actors, the nodes and the autoscaler.

Every second a row goes to DIR/timeline.csv (t_unix, workers, nodes, queue_depth,
consumer_lag, records_in, records_out, dead_letters; lag in seconds of record age) and the
offered rate to DIR/offered.csv; DIR/scale.png plots them; DIR/summary.json has the checks:
the pool and the node count went up under the spike and came back down after it, and every
record produced was read once and written or dead-lettered (records in = out + dead).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Stage", "run_scale_test", "SHORT", "FULL"]

TIMELINE_COLUMNS = [
    "t_unix", "workers", "nodes", "queue_depth", "consumer_lag", "records_in", "records_out",
    "dead_letters",
]  # fmt: skip


@dataclass(frozen=True)
class Stage:
    name: str
    seconds: float
    rate: float  # records/s offered


def shape(base: float, short: bool) -> list[Stage]:
    """Steady, spike to 5x, recovery, then idle (the scale-down is watched in the idle part)."""
    if short:
        return [Stage("steady", 6, base), Stage("spike", 20, 5 * base),
                Stage("recovery", 6, base)]  # fmt: skip
    return [Stage("ramp", 10, base / 2), Stage("steady", 20, base), Stage("spike", 40, 5 * base),
            Stage("recovery", 30, base)]  # fmt: skip


SHORT = {"capacity": 200.0, "max_workers": 3, "max_nodes": 2, "short": True}
FULL = {"capacity": 300.0, "max_workers": 4, "max_nodes": 3, "short": False}


def _producer(bootstrap: str, topic: str, lines: list[bytes], parts: np.ndarray,
              stages: list[Stage], offered: list, done: threading.Event) -> None:  # fmt: skip
    """Produce `lines` (record i to partition parts[i]) at the stages' rates in 50 ms slices;
    the record timestamps are the produce time (the pipeline's lag is measured from them)."""
    from aiokafka import AIOKafkaProducer

    async def go() -> None:
        prod = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False,
                                max_batch_size=1 << 20, linger_ms=5)  # fmt: skip
        await prod.start()
        futures, i = [], 0
        try:
            for st in stages:
                t0 = time.perf_counter()
                sent = 0
                while (el := time.perf_counter() - t0) < st.seconds:
                    due = int(st.rate * el) - sent
                    for _ in range(max(0, due)):
                        futures.append(await prod.send(topic, lines[i], partition=int(parts[i])))
                        i += 1
                    sent += max(0, due)
                    offered.append((time.time(), st.name, st.rate, i))
                    await asyncio.sleep(0.05)
            await asyncio.gather(*futures)
        finally:
            await prod.stop()
            offered.append((time.time(), "idle", 0.0, i))

    asyncio.run(go())
    done.set()


LOCUST_USER_RATE = 30.0  # records/s per Locust Kafka user


def _locust_producer(bootstrap: str, topic: str, run_dir: Path, users: int, seconds: float,
                     offered: list, produced: list, done: threading.Event) -> None:  # fmt: skip
    """The load from Locust: KafkaProducer users (loadtest/locustfile.py) under the
    day-in-the-life shape (ramp, steady, a spike to 5x the users, recovery), LOCUST_USER_RATE
    records/s each; Locust waits at the end until every record it produced has arrived masked
    (its `kafka e2e` latencies). Fills `offered` from Locust's user count over time and
    `produced` with the records the broker acknowledged."""
    from raymask.loadtest.load import run_locust

    try:
        run_locust(
            run_dir, ["KafkaProducer"], shape="day", users=users, seconds=seconds,
            env={"RAYMASK_LOAD_KAFKA_TOPIC": topic, "RAYMASK_LOAD_KAFKA_RATE": str(LOCUST_USER_RATE),
                 "RAYMASK_LOAD_KAFKA_OUTPUT": f"{topic}.masked.default",
                 "RAYMASK_LOAD_PROFILE": "payments", "RAYMASK_LOAD_KEY": "account.id"},
            args=["--bootstrap-servers", bootstrap, "--kafka-drain-s", "600"],
            timeout_s=seconds + 900,
        )  # fmt: skip
        k = json.loads((run_dir / "kafka.json").read_text())
        produced.append(int(k["acknowledged"]))
        with open(run_dir / "locust_stats_history.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row["Name"] == "Aggregated":
                    users_now = float(row["User Count"])
                    offered.append((float(row["Timestamp"]), "locust", users_now * LOCUST_USER_RATE,
                                    ""))  # fmt: skip
    finally:
        done.set()


def run_scale_test(out: str | Path, *, capacity: float, max_workers: int, max_nodes: int,
                   short: bool, settle_s: float = 90.0, locust: bool = True) -> dict:  # fmt: skip
    """Run the scenario (see the module docstring) and return its summary (also in
    OUT/summary.json). `locust`: the load comes from Locust (else from a paced producer in
    this process with the same shape)."""
    import ray

    from raymask.actors.autoscale import AutoscaleConfig
    from raymask.cluster.broker import Broker
    from raymask.cluster.fake_cluster import FakeCluster
    from raymask.cluster.kafka_pipeline import run_kafka
    from raymask.loadtest.bench import BENCH_POLICY
    from raymask.loadtest.kafka_traffic import create_topic, keyed_lines
    from raymask.loadtest.traffic import generate_bytes
    from raymask.policy.keys import Key, Keyring
    from raymask.policy.loader import parse_policy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = shape(0.6 * capacity, short)
    total = int(sum(s.seconds * s.rate for s in stages)) + 1000
    # keyed: a key's records share a partition, so per-key order is the partition's order
    lines, parts = keyed_lines(generate_bytes("payments", total, seed=7), "account.id", 3)
    ring = Keyring([Key("tok", 1, b"k" * 32), Key("deadletter", 1, b"d" * 32)])
    auto = AutoscaleConfig(
        min_workers=1, max_workers=max_workers, target_lag_s=2.0, low_lag_s=0.5,
        up_after_s=2.0, down_after_s=8.0, cooldown_s=4.0, worker_cpus=1.0,
    )  # fmt: skip
    rows: list[dict] = []
    offered: list[tuple] = []
    summary_box: dict = {}
    done, stop = threading.Event(), threading.Event()
    result: dict = {}
    with FakeCluster(max_nodes=max_nodes, node_cpus=1, head_cpus=1, idle_timeout_s=10) as fc:
        fc.connect(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        with Broker() as broker:
            bs = broker.bootstrap
            asyncio.run(create_topic(bs, "scale-in", 3))
            produced_box: list = []
            if locust:
                base_users = max(1, round(0.6 * capacity / LOCUST_USER_RATE))
                prod = threading.Thread(
                    target=_locust_producer,
                    args=(bs, "scale-in", out / "locust", base_users,
                          60.0 if short else 160.0, offered, produced_box, done),
                    daemon=True,
                )  # fmt: skip
            else:
                prod = threading.Thread(
                    target=_producer, args=(bs, "scale-in", lines, parts, stages, offered, done),
                    daemon=True,
                )  # fmt: skip

            def sample() -> None:
                while not stop.is_set():
                    s = summary_box.get("s")
                    row = dict.fromkeys(TIMELINE_COLUMNS, "")
                    row["t_unix"] = round(time.time(), 3)
                    try:
                        row["nodes"] = fc.nodes()
                    except Exception:  # noqa: BLE001 (a sample lost, not the run)
                        pass
                    if s is not None:
                        row.update(workers=s.workers, consumer_lag=round(s.lag_s, 3),
                                   records_in=s.records_in, records_out=s.written["default"],
                                   dead_letters=s.dead["default"])  # fmt: skip
                    rows.append(row)
                    stop.wait(1.0)

            sampler = threading.Thread(target=sample, daemon=True)

            def settled() -> bool:
                """The load is over, the pool is back to its minimum and so is the cluster."""
                if not done.is_set() or "s" not in summary_box:
                    return False
                s = summary_box["s"]
                if s.workers > auto.min_workers:
                    return False
                done_at = summary_box.setdefault("done_at", time.time())
                if rows and rows[-1]["nodes"] != 1:
                    return time.time() - done_at > settle_s  # give up waiting
                return True

            def on_ready() -> None:
                sampler.start()
                prod.start()

            s = run_kafka(
                parse_policy(BENCH_POLICY, "scale"), "payments", "scale-in", bootstrap=bs,
                keyring=ring, roles=["default"], workers=1, idle_s=10_000, poll_ms=200,
                max_poll_records=1000, consumer_options={"session_timeout_ms": 6000,
                "heartbeat_interval_ms": 500}, progress=lambda s: summary_box.update(s=s),
                should_stop=settled, on_ready=on_ready, autoscale=auto,
                worker_capacity_rps=capacity,
            )  # fmt: skip
            summary_box["s"] = s
            stop.set()
            sampler.join(5)
        ray.shutdown()
    if locust:
        produced = produced_box[0] if produced_box else 0
    else:
        produced = offered[-1][3] if offered else 0
    workers = [r["workers"] for r in rows if r["workers"] != ""]
    nodes = [r["nodes"] for r in rows if r["nodes"] != ""]
    spike_end = next((t for t, name, *_ in offered if name == "recovery"), None)
    result = {
        "produced": produced,
        "records_in": s.records_in,
        "written": s.written["default"],
        "dead": s.dead["default"],
        "balanced": s.records_in == produced == s.written["default"] + s.dead["default"],
        "workers_max": max(workers, default=0),
        "workers_end": workers[-1] if workers else 0,
        "nodes_max": max(nodes, default=0),
        "nodes_end": nodes[-1] if nodes else 0,
        "resizes": s.resizes,
        "lag_p99_s": float(np.percentile([r["consumer_lag"] or 0 for r in rows], 99))
        if rows
        else 0.0,
        "latency_p50_ms": s.latency_ms(50),
        "latency_p99_ms": s.latency_ms(99),
        "seconds": round(rows[-1]["t_unix"] - rows[0]["t_unix"], 1) if rows else 0.0,
        "spike_end_unix": spike_end,
        "load": "locust (KafkaProducer users, day-in-the-life shape)"
        if locust
        else "paced producer",
        "capacity_rps": capacity,
        "stages": [vars(st) for st in stages],
    }
    with open(out / "timeline.csv", "w", newline="") as f:
        w = csv.DictWriter(f, TIMELINE_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with open(out / "offered.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_unix", "stage", "rate", "produced"])
        w.writerows(offered)
    (out / "summary.json").write_text(json.dumps(result, indent=2))
    try:
        plot(out)
    except ImportError:
        pass  # matplotlib missing: the CSVs stay
    return result


def efficiency(sizes: tuple[int, ...] = (1, 2, 4), records: int = 12_000,
               capacity: float = 1000.0, max_nodes: int = 3) -> list[dict]:  # fmt: skip
    """Records/s of a Kafka pipeline with a fixed pool of 1, 2, 4 workers of 1 CPU each on the
    fake multi-node cluster (each worker past the first on a node of its own), draining the
    same backlog: with workers of `capacity` records/s (the pipeline's own overhead shows), and
    with real masking and no cap (all nodes share this machine's 2 cores)."""
    import ray

    from raymask.actors.autoscale import AutoscaleConfig
    from raymask.cluster.broker import Broker
    from raymask.cluster.fake_cluster import FakeCluster
    from raymask.cluster.kafka_pipeline import run_kafka
    from raymask.loadtest.bench import BENCH_POLICY
    from raymask.loadtest.kafka_traffic import create_topic, partition_by_key, produce
    from raymask.loadtest.traffic import generate_bytes
    from raymask.policy.keys import Key, Keyring
    from raymask.policy.loader import parse_policy

    ring = Keyring([Key("tok", 1, b"k" * 32), Key("deadletter", 1, b"d" * 32)])
    pol = parse_policy(BENCH_POLICY, "efficiency")
    out = []
    with FakeCluster(max_nodes=max_nodes, node_cpus=1, head_cpus=1, idle_timeout_s=60) as fc:
        fc.connect(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        with Broker() as broker:
            bs = broker.bootstrap
            for cap, n_rec in ((capacity, records), (0.0, records * 10)):
                parts = partition_by_key(generate_bytes("payments", n_rec, seed=5), "account.id", 3)
                for n in sizes:
                    topic = f"eff-{int(cap)}-{n}"
                    asyncio.run(create_topic(bs, topic, 3))
                    asyncio.run(produce(bs, topic, parts))
                    fixed = AutoscaleConfig(min_workers=n, max_workers=n, worker_cpus=1.0)
                    s = run_kafka(
                        pol, "payments", topic, bootstrap=bs, keyring=ring, roles=["default"],
                        workers=n, idle_s=3, autoscale=fixed, worker_capacity_rps=cap,
                        max_poll_records=3000, consumer_options={"session_timeout_ms": 6000},
                    )  # fmt: skip
                    assert s.records_in == n_rec and s.balanced
                    out.append({"capacity_rps": cap, "workers": n, "records": n_rec,
                                "records_per_s": round(s.records_per_second, 1)})  # fmt: skip
                    print(out[-1], flush=True)
        ray.shutdown()
    for row in out:
        one = next(r for r in out if r["capacity_rps"] == row["capacity_rps"] and r["workers"] == 1)
        row["efficiency"] = round(row["records_per_s"] / (row["workers"] * one["records_per_s"]), 3)
    return out


def plot(out: Path) -> Path:
    """OUT/scale.png: offered and masked records/s, lag, workers and nodes over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "timeline.csv") as f:
        tl = list(csv.DictReader(f))
    with open(out / "offered.csv") as f:
        off = list(csv.DictReader(f))
    t0 = float(tl[0]["t_unix"])

    def col(rows: list[dict], k: str) -> np.ndarray:
        return np.array([float(r[k]) if r[k] != "" else np.nan for r in rows])

    t = col(tl, "t_unix") - t0
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    to = col(off, "t_unix") - t0
    a1.step(to, col(off, "rate"), where="post", label="offered (load shape)", color="grey")
    rin, k = col(tl, "records_in"), 5  # over 5 samples: a round lands in one sample
    if len(t) > k:
        a1.plot(t[k:], (rin[k:] - rin[:-k]) / np.maximum(t[k:] - t[:-k], 1e-3),
                label="masked (5 s mean)", color="C0")  # fmt: skip
    a1.set_ylabel("records/s")
    a1.legend(loc="upper right")
    a2.plot(t, col(tl, "consumer_lag"), color="C3")
    a2.set_ylabel("lag (s of record age)")
    a3.step(t, col(tl, "workers"), where="post", label="workers", color="C2")
    a3.step(t, col(tl, "nodes"), where="post", label="nodes", color="C1", linestyle="--")
    a3.set_ylabel("count")
    a3.set_xlabel("seconds")
    a3.legend(loc="upper right")
    fig.suptitle("raymask on a local multi-node Ray cluster with the autoscaler")
    fig.tight_layout()
    path = out / "scale.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="the short version (make test)")
    ap.add_argument("--out", default="scale-out")
    ap.add_argument("--no-locust", action="store_true",
                    help="produce from this process instead of Locust (same shape)")  # fmt: skip
    ap.add_argument("--efficiency", action="store_true",
                    help="records/s with 1, 2, 4 workers instead (scaling efficiency)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.efficiency:
        rows = efficiency()
        print("| worker capacity | workers | records/s | efficiency |")
        print("|---|---|---|---|")
        for r in rows:
            cap = f"{r['capacity_rps']:,.0f} records/s" if r["capacity_rps"] else "uncapped"
            print(f"| {cap} | {r['workers']} | {r['records_per_s']:,.0f} | {r['efficiency']:.0%} |")
        return 0
    r = run_scale_test(args.out, **(SHORT if args.short else FULL), locust=not args.no_locust)
    print(json.dumps({k: v for k, v in r.items() if k != "stages"}, indent=2))
    ok = r["balanced"] and r["workers_max"] > 1 and r["nodes_max"] > 1 and r["workers_end"] == 1
    print("scale test", "passed" if ok else "FAILED", f"(figures in {args.out})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
