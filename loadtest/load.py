"""`make load`: Locust against raymask, raymask's own figures beside it, and the SLO report.

    python -m raymask.loadtest.load [--out load-out] [--seconds 20] [--compare-seconds 6]
        [--compare-rounds 2] [--users 4] [--scenarios http,kafka] [--no-compare-echo]
        [--host URL] [--bootstrap-servers B --topic T [--group G]] [--metrics-url URL]

With no `--host` / `--bootstrap-servers` the stack runs on loopback, started and stopped here:
a local Ray (exporting its Prometheus metrics), the HTTP app of cluster/serve_app.py on Serve,
the embedded tansu broker (cluster/broker.py) and the Kafka pipeline (cluster/kafka_pipeline.py,
in a thread of this process). With them, nothing is started: Locust goes to that host or those
brokers, and the timeline has what `--metrics-url` (the cluster's Prometheus endpoint) and
`--group` (the pipeline's consumer group, for the lag) can tell.

Each phase is a run folder under --out:
- `echo-N/`, `http-batch-N/` (--compare-echo, local only; round N of --compare-rounds):
  100-record requests, closed loop (every user sends its next request when the answer is in),
  the steady shape, against a trivial Serve echo deployment (loadtest/echo_app.py, at /echo)
  and against raymask, alternating which goes first; `compare.json` and `compare.md` hold the
  requests/s ratio (over all rounds and per round) and the p99s. Both deployments have the same
  fixed replica count here and in the `--find-max` search (--compare-replicas, one per core):
  with the autoscaler, the server that goes second in a round started at one replica (scaled
  down while the other ran) and spent its first 10-14 s scaling up, so the order, not the
  masking, decided most of the ratio (docs/benchmarks.md). raymask autoscales for `http/`.
- `http/`: 1- and 100-record users (3:1), views drawn per request, the day-in-the-life shape
  (ramp, steady, a spike to 5x, recovery), each user at --http-rate requests/s.
- `kafka/`: producer users at --kafka-rate records/s each, the same shape; end-to-end latency
  from the produce time (a header) to the masked record on the output topic.

A folder holds Locust's CSVs (`locust_stats.csv`, `locust_stats_history.csv` with the full
history, `locust_failures.csv`), its HTML report (`locust.html`) and log, `timeline.csv`
(loadtest/timeline.py, one row a second), `checks.json` / `kafka.json` (counts), and `report/`
(`raymask report`: PNGs and summary.md).

Locust runs as a subprocess (`python -m locust`), so gevent's monkey-patching never reaches Ray in
this process.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raymask.loadtest.timeline import Sampler, TimelineWriter, kafka_lag, sample_from_metrics

__all__ = [
    "main", "parse_args", "run_locust", "aggregated", "http_phase", "kafka_phase", "KafkaRun",
    "LocalStack", "compare", "LOCUSTFILE",
]  # fmt: skip

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
REPO = Path(__file__).resolve().parents[1]
DEFAULT_POLICY = REPO / "examples" / "policies" / "payments.yaml"
SENT_HEADER = "loadtest-sent-ns"
WARMUP_HEADER = "loadtest-warm-up"  # records the Locust consumer does not count
ECHO_PREFIX = "/echo"  # the echo deployment's route prefix, beside raymask's "/"
VIEW = "default"  # the Kafka pipeline's one view here (the consumer reads its topic)


def run_locust(
    run_dir: Path, user_classes: list[str], *, host: str | None = None, shape: str = "steady",
    users: int = 4, seconds: float = 20.0, env: dict[str, str] | None = None,
    args: list[str] | None = None, timeout_s: float | None = None,
) -> int:  # fmt: skip
    """One headless Locust run into `run_dir` (CSV with full history, HTML, log); its exit code
    (1 when any request failed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
        "--csv", str(run_dir / "locust"), "--csv-full-history", "--html", str(run_dir / "locust.html"),
        "--loglevel", "WARNING", "--exit-code-on-error", "1",
    ]  # fmt: skip
    if host:
        cmd += ["--host", host]
    cmd += list(args or []) + user_classes
    full_env = {
        # LOCUST_SKIP_MONKEY_PATCH (the tests' own process sets it) must not reach Locust
        **{k: v for k, v in os.environ.items() if k != "LOCUST_SKIP_MONKEY_PATCH"},
        "RAYMASK_LOAD_SHAPE": shape, "RAYMASK_LOAD_USERS": str(users),
        "RAYMASK_LOAD_SECONDS": str(seconds), "RAYMASK_LOAD_OUT": str(run_dir),
        **(env or {}),
    }  # fmt: skip
    with open(run_dir / "locust.log", "wb") as log:
        proc = subprocess.run(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout_s or seconds * 3 + 120)  # fmt: skip
    return proc.returncode


def aggregated(run_dir: Path) -> dict[str, float]:
    """The Aggregated row of a run's locust_stats.csv: requests, failures, requests/s, p50, p99."""

    def num(v: str) -> float:
        return float("nan") if v == "N/A" else float(v)

    with open(run_dir / "locust_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["Name"] == "Aggregated":
                return {
                    "requests": num(row["Request Count"]),
                    "failures": num(row["Failure Count"]),
                    "requests_per_s": num(row["Requests/s"]),
                    "p50_ms": num(row["50%"]),
                    "p99_ms": num(row["99%"]),
                }
    raise ValueError(f"{run_dir / 'locust_stats.csv'}: no Aggregated row")


def _free_port() -> int:
    from raymask.cluster.broker import free_port

    return free_port()


def _wait_http(url: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {limit_s:.0f} s")
        time.sleep(0.3)


def _fresh(run_dir: Path) -> Path:
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    return run_dir


def _sampling(
    run_dir: Path, sample: Callable[[], dict[str, Any]]
) -> tuple[TimelineWriter, Sampler]:
    w = TimelineWriter(run_dir / "timeline.csv")
    return w, Sampler(w, sample).start()


def _metrics_sampler(
    url: str | None, deployment: str | None = None
) -> Callable[[], dict[str, Any]]:
    if not url:
        return dict
    return lambda: sample_from_metrics(url, deployment=deployment)


class LocalStack:
    """Ray with its metrics exported, Serve on a loopback port; stopped by `close()`."""

    def __init__(
        self, policy: Any, keyring: Any, workers: int, stream: str, profile: str,
        metrics_url: str | None = None, replicas: int | None = None,
    ) -> None:  # fmt: skip
        """On a Ray already running (tests), `metrics_url` is its Prometheus endpoint.
        `replicas`: a fixed replica count for raymask's ingress and the echo deployment alike
        (None: both autoscale with raymask's settings)."""
        import ray
        from ray import serve

        from raymask.cluster.runtime import ray_temp_dir

        self.metrics_port = _free_port()
        self.http_port = _free_port()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(
                include_dashboard=False, logging_level=logging.WARNING, _temp_dir=ray_temp_dir(),
                _metrics_export_port=self.metrics_port,
                _system_config={"metrics_report_interval_ms": 1000},
            )  # fmt: skip
        self.metrics_url = (
            f"http://127.0.0.1:{self.metrics_port}/metrics" if self.started else metrics_url
        )
        serve.start(http_options={"host": "127.0.0.1", "port": self.http_port})
        self.host = f"http://127.0.0.1:{self.http_port}"
        self.echo_host = self.host + ECHO_PREFIX
        self.policy, self.keyring, self.workers = policy, keyring, workers
        self.stream, self.profile = stream, profile
        self.replicas = replicas

    def deploy(self, views: list[str], *, echo: bool = False) -> None:
        """raymask's HTTP app at route prefix "/", and with `echo` the echo deployment at
        ECHO_PREFIX beside it (`self.echo_host`), both warmed up. Access logs off for both (they
        cost about 3x throughput on this machine, DESIGN.md)."""
        from ray import serve

        from raymask.cluster.serve_app import build_app

        log = {"enable_access_log": False}
        app = build_app(
            self.policy, self.keyring, workers=self.workers, app="load", replicas=self.replicas
        )
        serve.run(app, name="raymask", route_prefix="/", logging_config=log)
        _wait_http(f"{self.host}/healthz")
        self.warm_up(self.host, views)
        if echo:
            from raymask.loadtest.echo_app import build_echo_app

            echo_app = build_echo_app(self.replicas)
            serve.run(echo_app, name="echo", route_prefix=ECHO_PREFIX, logging_config=log)
            _wait_http(f"{self.echo_host}/healthz")
            self.warm_up(self.echo_host, views)

    def drop_echo(self) -> None:
        from ray import serve

        serve.delete("echo")

    def warm_up(self, host: str, views: list[str]) -> None:
        """One request per view before the clock starts: a replica's first masking compiles
        (or loads) its Numba kernels, which takes seconds and is not what a load test measures."""
        from raymask.loadtest.traffic import generate_bytes

        body = generate_bytes(self.profile, 100, seed=5)
        for view in views:
            req = urllib.request.Request(
                f"{host}/v1/streams/{self.stream}/mask?view={view}", data=body, method="POST",
                headers={"content-type": "application/x-ndjson"},
            )  # fmt: skip
            with urllib.request.urlopen(req, timeout=180) as r:
                r.read()

    def close(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            if self.started:
                ray.shutdown()


def _http_env(
    args: argparse.Namespace, stream: str, check_every: int, rate: float,
    arrivals: str = "constant",
) -> dict[str, str]:  # fmt: skip
    return {
        "RAYMASK_LOAD_STREAM": stream, "RAYMASK_LOAD_CHECK_EVERY": str(check_every),
        "RAYMASK_LOAD_RATE": str(rate), "RAYMASK_LOAD_ARRIVALS": arrivals,
        "RAYMASK_LOAD_VIEWS": args.views,
        "RAYMASK_LOAD_CHECK_FIELD": args.check_field, "RAYMASK_LOAD_PROFILE": args.profile,
    }  # fmt: skip


def http_phase(
    run_dir: Path, host: str, args: argparse.Namespace, *, classes: list[str], shape: str,
    seconds: float, rate: float, check_every: int, metrics_url: str | None,
    deployment: str | None, users: int | None = None, arrivals: str = "constant",
) -> int:  # fmt: skip
    """One HTTP run folder: Locust's `classes` against `host` with `users` (default --users)
    users, `timeline.csv` sampled from `metrics_url` meanwhile (Serve replicas of
    `deployment`); Locust's exit code."""
    _fresh(run_dir)
    w, s = _sampling(run_dir, _metrics_sampler(metrics_url, deployment))
    try:
        return run_locust(run_dir, classes, host=host, shape=shape, users=users or args.users,
                          seconds=seconds,
                          env=_http_env(args, args.stream, check_every, rate, arrivals))  # fmt: skip
    finally:
        s.stop()
        w.close()


@dataclass
class KafkaRun:
    rc: int  # Locust's exit code
    bootstrap: str
    topic: str
    output: str


def kafka_phase(
    run_dir: Path, args: argparse.Namespace, *, policy: Any = None, keyring: Any = None,
    metrics_url: str | None = None, bootstrap: str | None = None,
) -> KafkaRun:  # fmt: skip
    """Producers into the input topic, a consumer on the masked topic. With a `policy`, the
    pipeline runs here (in a thread, on this process's Ray) for the run, on `bootstrap` or, when
    there is none, on an embedded broker started and stopped here; without one, the pipeline
    is someone else's (--bootstrap-servers, --topic, --group)."""
    from raymask.loadtest.kafka_traffic import create_topic

    _fresh(run_dir)
    broker = None
    pipeline: threading.Thread | None = None
    stop = threading.Event()
    progress: dict[str, Any] = {}
    failure: list[BaseException] = []
    lag: Any = None
    bootstrap = bootstrap or args.bootstrap_servers
    topic = args.topic
    group = args.group
    output = args.output_topic
    try:
        if policy is not None:
            from raymask.cluster.kafka_pipeline import run_kafka

            if not bootstrap:
                from raymask.cluster.broker import Broker

                broker = Broker(log_path=run_dir / "broker.log").start()
                bootstrap = broker.bootstrap
            name = f"load-{uuid.uuid4().hex[:8]}"
            topic = topic or name
            group = f"raymask-{name}"
            output = f"{topic}.masked.{VIEW}"
            asyncio.run(create_topic(bootstrap, topic, args.partitions))
            ready = threading.Event()

            def on_progress(summary: Any) -> None:
                progress.update(records_in=summary.records_in, records_out=summary.written[VIEW],
                                dead_letters=summary.dead[VIEW])  # fmt: skip

            def run() -> None:
                try:
                    s = run_kafka(
                        policy, args.stream, topic, bootstrap=bootstrap, roles=[VIEW],
                        keyring=keyring, workers=args.workers, name=name, idle_s=1e9,
                        should_stop=stop.is_set, on_ready=ready.set, progress=on_progress,
                        carry_headers=[SENT_HEADER, WARMUP_HEADER], poll_ms=100,
                        consumer_options={"session_timeout_ms": 6000, "heartbeat_interval_ms": 500},
                    )  # fmt: skip
                    progress["summary"] = s
                except BaseException as exc:  # noqa: BLE001 (re-raised in the driver below)
                    failure.append(exc)
                    ready.set()

            pipeline = threading.Thread(target=run, name="kafka-pipeline", daemon=True)
            pipeline.start()
            if not ready.wait(180) or failure:
                raise failure[0] if failure else RuntimeError("the Kafka pipeline did not start")
            _warm_up_kafka(bootstrap, topic, args, progress, failure)
        if not topic or not bootstrap:
            raise SystemExit("--topic is needed with --bootstrap-servers")
        output = output or f"{topic}.masked.{VIEW}"
        if group:
            lag = kafka_lag(bootstrap, topic, group)
        base = _metrics_sampler(metrics_url)

        def sample() -> dict[str, Any]:
            values = base()
            if pipeline is not None:
                values.update(workers=args.workers,
                              **{k: v for k, v in progress.items() if k != "summary"})  # fmt: skip
            if lag is not None:
                values["consumer_lag"] = lag()
            return values

        w, s = _sampling(run_dir, sample)
        try:
            rc = run_locust(
                run_dir, ["KafkaProducer"], shape=args.shape, users=args.users,
                seconds=args.seconds,
                env={"RAYMASK_LOAD_KAFKA_TOPIC": topic, "RAYMASK_LOAD_KAFKA_OUTPUT": output,
                     "RAYMASK_LOAD_KAFKA_RATE": str(args.kafka_rate),
                     "RAYMASK_LOAD_KAFKA_BATCH": str(args.kafka_batch),
                     "RAYMASK_LOAD_PROFILE": args.profile, "RAYMASK_LOAD_STREAM": args.stream,
                     "RAYMASK_LOAD_KEY": args.key},
                args=["--bootstrap-servers", bootstrap, "--kafka-partitions", str(args.partitions),
                      "--kafka-drain-s", str(args.drain_seconds)],
            )  # fmt: skip
        finally:
            s.stop()
            w.close()
        return KafkaRun(rc, bootstrap, topic, output)
    finally:
        stop.set()
        if pipeline is not None:
            pipeline.join(120)
        if lag is not None:
            lag.close()
        if broker is not None:
            broker.stop()
        if failure:
            raise failure[0]


def _warm_up_kafka(
    bootstrap: str, topic: str, args: argparse.Namespace, progress: dict, failure: list,
    limit_s: float = 90.0,
) -> None:  # fmt: skip
    """A few records through the pipeline before the clock starts: its consumer group's first
    join and the workers' first masking (Numba) take seconds that a load test does not measure."""
    from raymask.loadtest.kafka_traffic import partition_by_key, produce
    from raymask.loadtest.traffic import generate_bytes

    data = generate_bytes(args.profile, 30, seed=7)
    parts = partition_by_key(data, args.key, args.partitions)
    headers = {p: [[(WARMUP_HEADER, b"1")] for _ in v] for p, v in parts.items()}
    n = asyncio.run(produce(bootstrap, topic, parts, headers))
    deadline = time.monotonic() + limit_s
    while progress.get("records_in", 0) < n:
        if failure:
            raise failure[0]
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Kafka pipeline read nothing within {limit_s:.0f} s")
        time.sleep(0.2)


def _pooled(runs: list[dict[str, float]]) -> dict[str, float]:
    """Several runs of one server as one: requests over the summed run time; the worst p99."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["requests"] / r["requests_per_s"] for r in runs if r["requests_per_s"] > 0)
    return {
        "requests": requests, "failures": sum(r["failures"] for r in runs),
        "requests_per_s": requests / seconds if seconds else 0.0,
        "p50_ms": max(r["p50_ms"] for r in runs), "p99_ms": max(r["p99_ms"] for r in runs),
    }  # fmt: skip


def compare(out: Path, pairs: list[tuple[Path, Path]], command: str) -> dict[str, Any]:
    """compare.json and compare.md: raymask's requests/s over the echo deployment's under the
    same load; `pairs` are the (echo, raymask) run folders of each round."""
    rounds = []
    for echo_dir, raymask_dir in pairs:
        e, r = aggregated(echo_dir), aggregated(raymask_dir)
        ratio = r["requests_per_s"] / e["requests_per_s"] if e["requests_per_s"] else 0.0
        rounds.append({"echo": e, "raymask": r, "ratio": ratio})
    e = _pooled([x["echo"] for x in rounds])
    r = _pooled([x["raymask"] for x in rounds])
    ratio = r["requests_per_s"] / e["requests_per_s"] if e["requests_per_s"] else 0.0
    res = {"echo": e, "raymask": r, "ratio_requests_per_s": ratio, "rounds": rounds,
           "target": 0.8, "command": command, "provisional": True}  # fmt: skip
    (out / "compare.json").write_text(json.dumps(res, indent=1) + "\n")
    rows = [("all rounds", e, r, ratio)] + [
        (f"round {i}", x["echo"], x["raymask"], x["ratio"]) for i, x in enumerate(rounds, 1)
    ]
    table = "".join(
        f"| {name} | {a['requests_per_s']:.1f} | {a['p50_ms']:.0f} / {a['p99_ms']:.0f} | "
        f"{b['requests_per_s']:.1f} | {b['p50_ms']:.0f} / {b['p99_ms']:.0f} | {q:.2f} | "
        f"{a['failures'] + b['failures']:.0f} |\n"
        for name, a, b, q in rows
    )
    (out / "compare.md").write_text(
        "# raymask against a trivial Serve echo deployment (100-record requests, same load)\n\n"
        f"`{command}`\n\n"
        "Rounds alternate which server goes first; all rounds: requests over the summed run\n"
        "time, the worst p50 and p99 of the rounds.\n\n"
        "| | echo requests/s | echo p50 / p99 ms | raymask requests/s | raymask p50 / p99 ms "
        "| ratio | failures |\n|---|---|---|---|---|---|---|\n" + table + "\n"
        f"Ratio (raymask / echo, requests/s): **{ratio:.2f}** (target >= 0.80). Provisional: "
        "taken on a shared machine.\n"
    )  # fmt: skip
    return res


def _keyring(path: str | None) -> Any:
    from raymask.policy.keys import Key, Keyring

    if path:
        return Keyring.from_file(path)
    return Keyring(
        [Key(k, 1, os.urandom(32)) for k in ("tok", "fpe", "sealed", "shift", "deadletter")]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="load-out", help="folder of the run folders")
    ap.add_argument("--scenarios", default="http,kafka", help="http, kafka, or both")
    ap.add_argument("--compare-echo", action=argparse.BooleanOptionalAction, default=True,
                    help="first the echo deployment, then raymask, same load (local HTTP only)")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the day-shaped runs")
    ap.add_argument("--compare-seconds", type=float, default=6.0,
                    help="length of each compare run (one per server and round)")  # fmt: skip
    ap.add_argument("--compare-rounds", type=int, default=2,
                    help="echo and raymask runs alternate this many times (first echo, then "
                    "raymask first, ...), so a neighbour's burst does not land on one side only")  # fmt: skip
    ap.add_argument("--users", type=int, default=4, help="base user count (the spike is 5x)")
    ap.add_argument("--shape", default="day", choices=["day", "steady"])
    ap.add_argument("--http-rate", type=float, default=5.0, help="requests/s per HTTP user")
    ap.add_argument("--kafka-rate", type=float, default=250.0, help="records/s per producer user")
    ap.add_argument("--kafka-batch", type=int, default=25, help="records per produce call")
    ap.add_argument("--drain-seconds", type=float, default=30.0,
                    help="after the load, wait this long at most for the last masked records")  # fmt: skip
    ap.add_argument("--policy", default=str(DEFAULT_POLICY))
    ap.add_argument("--stream", default="payments")
    ap.add_argument("--profile", default="payments", help="traffic profile (raymask generate)")
    ap.add_argument(
        "--key", default="account.id", help="the stream's key field (Kafka partitioning)"
    )
    ap.add_argument("--views", default="default,ops,fraud,support,research")
    ap.add_argument("--check-field", default="card.number",
                    help="a field every view masks: checked in sampled answers")  # fmt: skip
    ap.add_argument("--keys", default=None, help="key file (default: random keys for this run)")
    ap.add_argument("--workers", type=int, default=2, help="MaskWorker actors (local stack)")
    ap.add_argument("--replicas", type=int, default=None,
                    help="fixed Serve replicas, raymask and echo alike (default: autoscale)")  # fmt: skip
    ap.add_argument("--compare-replicas", type=int, default=min(4, os.cpu_count() or 1),
                    help="fixed replicas of both deployments during the echo comparison and the "
                    "open-loop search, default one per core up to 4 (then raymask autoscales "
                    "again for the day-shaped run): with the autoscaler, whichever server goes "
                    "second in a round starts at its floor of 1, scaled down while the other ran "
                    "(docs/benchmarks.md); 0: autoscale there too")  # fmt: skip
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--host", default=None, help="a remote raymask HTTP app: nothing is started")
    ap.add_argument("--bootstrap-servers", default=None,
                    help="a remote Kafka: nothing is started; needs --topic (and a running pipeline)")  # fmt: skip
    ap.add_argument("--topic", default=None, help="remote Kafka: the pipeline's input topic")
    ap.add_argument(
        "--output-topic", default=None, help="remote Kafka: default TOPIC.masked.default"
    )
    ap.add_argument(
        "--group", default=None, help="remote Kafka: the pipeline's consumer group (lag)"
    )
    ap.add_argument("--metrics-url", default=None, help="remote: Ray's Prometheus endpoint")
    ap.add_argument("--no-report", action="store_true", help="skip the PNG report")
    ap.add_argument("--find-max", action="store_true",
                    help="also find the highest 100-record request rate with p99 < 100 ms "
                    "(open-loop steps; OUT/max.md)")  # fmt: skip
    return ap.parse_args(argv)


# open-loop steps (requests/s) of find_max, and the most one Locust user sends a second
MAX_STEPS = (4, 20, 40, 60, 80, 100, 120, 140, 160, 180, 200, 240, 280, 320)
USER_RATE = 5.0


def kept_up(offered: float, seconds: float) -> float:
    """The least answered requests/s that still counts as keeping up with `offered` Poisson
    requests/s over a step of `seconds`: 90% of the offered rate (the users start evenly over
    the first second, which costs about 6% of the count) less 3 standard deviations of a
    Poisson count (falsely failed with probability 0.13%). An app that does not keep up
    in an open loop queues, and its p99 shows it; this check catches a client that fell
    behind."""
    return 0.9 * offered - 3 * math.sqrt(offered / seconds)


def find_max(
    out: Path, host: str, args: argparse.Namespace, metrics_url: str | None, *,
    p99_limit_ms: float = 100.0, step_s: float = 8.0, name: str = "max",
    deployment: str = "MaskIngress",
) -> list[dict]:  # fmt: skip
    """The highest 100-record request rate the app sustains with p99 under `p99_limit_ms`:
    open-loop steps, rising until p99 passes the limit, a request fails, or the app answers
    too little of what was offered (`kept_up`), twice in a row at the same rate.

    A Locust user sends its next request only once answered, so a user sending at r requests/s
    falls behind whenever an answer takes longer than 1/r: with 4 users at 30 requests/s each,
    every answer had to come within 33 ms, and the search measured latency, not the rate the
    app sustains. Here no user sends more than USER_RATE requests/s (one every 200 ms, twice
    the p99 limit): users are added as the rate rises (never fewer than --users), so an app
    that answers within the limit is offered the whole rate. Arrivals are Poisson
    (`poisson_throughput` in locustfile.py), as from independent clients.
    Writes OUT/{name}.md and {name}.json (steps in OUT/{name}-RATE/); returns the steps."""
    rows: list[dict] = []
    for offered in MAX_STEPS:
        users = max(args.users, math.ceil(offered / USER_RATE))
        # a step that fails is run once more (p99 of a few hundred requests is the second
        # slowest or so: one stall of a neighbour decides it); two fails in a row end the search
        for attempt in (1, 2):
            d = out / f"{name}-{offered}" if attempt == 1 else out / f"{name}-{offered}-again"
            http_phase(d, host, args, classes=["MaskHundredRecords"], shape="steady",
                       seconds=step_s, rate=offered / users, check_every=0,
                       metrics_url=metrics_url, deployment=deployment, users=users,
                       arrivals="poisson")  # fmt: skip
            a = aggregated(d)
            ok = (a["p99_ms"] < p99_limit_ms and not a["failures"]
                  and a["requests_per_s"] >= kept_up(offered, step_s))  # fmt: skip
            rows.append({"offered_requests_per_s": offered, "users": users, **a, "sustained": ok})
            if ok:
                break
        if not ok:
            break
    best = max((r for r in rows if r["sustained"]), key=lambda r: r["requests_per_s"],
               default=None)  # fmt: skip
    lines = [f"Open-loop steps of {step_s:.0f} s, at most {USER_RATE:.0f} requests/s a user, "
             f"100-record requests, views {args.views}; sustained = p99 < {p99_limit_ms:.0f} ms, "
             "no failure, the offered rate answered (`kept_up`).", "",
             "| offered requests/s | users | answered requests/s | records/s | p50 ms | p99 ms | sustained |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['offered_requests_per_s']} | {r['users']} | {r['requests_per_s']:.1f} | "
                     f"{r['requests_per_s'] * 100:,.0f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                     f"{'yes' if r['sustained'] else 'no'} |")  # fmt: skip
    lines += ["", "Max sustained: " + (f"{best['requests_per_s'] * 100:,.0f} records/s "
              f"({best['requests_per_s']:.1f} requests/s, p99 {best['p99_ms']:.0f} ms)"
              if best else "none of the steps")]  # fmt: skip
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def best_sustained(rows: list[dict]) -> float:
    """The highest answered requests/s among the sustained steps (0 when none was)."""
    return max((r["requests_per_s"] for r in rows if r["sustained"]), default=0.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenarios = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    command = "python -m raymask.loadtest.load " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    local_http = "http" in scenarios and not args.host
    local_kafka = "kafka" in scenarios and not args.bootstrap_servers
    stack = None
    policy = keyring = None
    runs: dict[str, int] = {}
    if local_http or local_kafka:
        from raymask.policy.loader import load_policy

        policy, keyring = load_policy(args.policy), _keyring(args.keys)
        stack = LocalStack(
            policy, keyring, args.workers, args.stream, args.profile, replicas=args.replicas
        )
    metrics = stack.metrics_url if stack else args.metrics_url
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    try:
        if "http" in scenarios:
            host = args.host or stack.host  # type: ignore[union-attr]
            echo = args.compare_echo and stack is not None and local_http
            fixed = (args.replicas is None and args.compare_replicas > 0 and local_http
                     and (echo or args.find_max))  # fmt: skip
            if stack is not None and local_http:
                if fixed:  # the comparison and the search at equal, fixed replica counts
                    stack.replicas = args.compare_replicas
                stack.deploy(views, echo=echo)
            if echo:
                assert stack is not None
                pairs = []
                for i in range(1, args.compare_rounds + 1):
                    sfx = f"-{i}" if args.compare_rounds > 1 else ""
                    order = [("echo", "echo"), ("raymask", "http-batch")]
                    for app, folder in order if i % 2 else order[::-1]:
                        runs[folder + sfx] = http_phase(
                            out / (folder + sfx), stack.echo_host if app == "echo" else host, args,
                            classes=["MaskHundredRecords"], shape="steady",
                            seconds=args.compare_seconds, rate=0.0,
                            check_every=0 if app == "echo" else 20, metrics_url=metrics,
                            deployment="EchoIngress" if app == "echo" else "MaskIngress",
                        )  # fmt: skip
                    pairs.append((out / f"echo{sfx}", out / f"http-batch{sfx}"))
                compare(out, pairs, command)
                if args.find_max:  # the same open-loop steps against the echo deployment
                    echo_rows = find_max(out, stack.echo_host, args, metrics, name="max-echo",
                                         deployment="EchoIngress")  # fmt: skip
                    print("echo deployment:\n" + (out / "max-echo.md").read_text())
                stack.drop_echo()
            elif args.compare_echo:
                print("--compare-echo needs the local stack (no --host): skipped", file=sys.stderr)
            if args.find_max:
                rows = find_max(out, host, args, metrics)
                print("raymask:\n" + (out / "max.md").read_text())
                if echo:
                    mine, theirs = best_sustained(rows), best_sustained(echo_rows)
                    ratio = mine / theirs if theirs else float("nan")
                    text = (f"Highest sustained rate (p99 < 100 ms), 100-record requests: raymask "
                            f"{mine:.1f} requests/s, echo deployment {theirs:.1f} requests/s: "
                            f"**{ratio:.2f}x**\n")  # fmt: skip
                    (out / "max-compare.md").write_text(text)
                    print(text)
            if fixed and stack is not None:
                stack.replicas = None  # the day-shaped run with the autoscaler
                stack.deploy(views)
            runs["http"] = http_phase(
                out / "http", host, args, classes=["MaskOneRecord", "MaskHundredRecords"],
                shape=args.shape, seconds=args.seconds, rate=args.http_rate, check_every=10,
                metrics_url=metrics, deployment="MaskIngress",
            )  # fmt: skip
        if "kafka" in scenarios:
            runs["kafka"] = kafka_phase(
                out / "kafka",
                args,
                policy=policy if local_kafka else None,
                keyring=keyring,
                metrics_url=metrics,
            ).rc
    finally:
        if stack is not None:
            stack.close()
    if not args.no_report:
        from raymask.loadtest.report import write_report

        for folder in runs:
            write_report(out / folder, out / folder / "report")
    for folder, rc in runs.items():
        print(f"{folder}: {'ok' if rc == 0 else 'failures (see locust.log)'}; {out / folder}")
    if (out / "compare.md").exists() and any(f.startswith("echo") for f in runs):
        print((out / "compare.md").read_text())
    return 0 if all(rc == 0 for rc in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
