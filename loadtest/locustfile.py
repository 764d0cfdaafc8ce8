"""Locust scenarios for raymask: HTTP masking and Kafka producers (run by loadtest/load.py).

    python -m locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:8000 \
        MaskOneRecord MaskHundredRecords

Users (pick them by class name on the command line):
- `MaskOneRecord`, `MaskHundredRecords`: POST /v1/streams/{stream}/mask with 1 or 100 NDJSON
  records, each request for a view drawn from RAYMASK_LOAD_VIEWS (mixed roles). A sample of the
  answers (every RAYMASK_LOAD_CHECK_EVERY-th) is checked: RAYMASK_LOAD_CHECK_FIELD must come back
  different from what was sent, or the request counts as failed.
- `KafkaProducer`: produces records to RAYMASK_LOAD_KAFKA_TOPIC (`--bootstrap-servers`) at
  RAYMASK_LOAD_KAFKA_RATE records/s per user, each record with its send time in the header
  `loadtest-sent-ns`; a consumer of the masked output topic (RAYMASK_LOAD_KAFKA_OUTPUT) takes
  each arrival's end-to-end latency from that header (when the pipeline carries it) or from the
  record's timestamp (the sink keeps the producer's). Both land in Locust's stats, as
  `kafka produce` (time to the broker's acknowledgement) and `kafka e2e` (one entry per record).

The load shape is RAYMASK_LOAD_SHAPE (`steady` or `day`, see shapes.py). What the checks found
goes to RAYMASK_LOAD_OUT/checks.json and, for Kafka, RAYMASK_LOAD_OUT/kafka.json (counts only,
never a record value).

Kafka I/O runs on aiokafka in one native thread with its own event loop (gevent's
monkey-patching makes `threading` cooperative, so the thread is taken from gevent's pool of real
threads); the user greenlets hand it batches through a queue and a greenlet turns what it
reports into Locust request events.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import deque
from pathlib import Path
from typing import Any

import gevent
import locust.stats
from locust import FastHttpUser, User, constant, constant_throughput, events, task

from raymask.loadtest import shapes

STREAM = os.environ.get("RAYMASK_LOAD_STREAM", "payments")
PROFILE = os.environ.get("RAYMASK_LOAD_PROFILE", "payments")
KEY_PATH = os.environ.get("RAYMASK_LOAD_KEY", "account.id")
VIEWS = [v.strip() for v in os.environ.get("RAYMASK_LOAD_VIEWS", "default,ops,fraud,support,research").split(",") if v.strip()]  # fmt: skip
CHECK_FIELD = os.environ.get("RAYMASK_LOAD_CHECK_FIELD", "card.number")
CHECK_EVERY = int(os.environ.get("RAYMASK_LOAD_CHECK_EVERY", "20"))  # 0: no check (echo runs)
RATE = float(os.environ.get("RAYMASK_LOAD_RATE", "0"))  # requests/s per HTTP user; 0: closed loop
# how an HTTP user at RATE spaces its requests: "constant" (every 1/RATE s) or "poisson"
ARRIVALS = os.environ.get("RAYMASK_LOAD_ARRIVALS", "constant")
KAFKA_RATE = float(os.environ.get("RAYMASK_LOAD_KAFKA_RATE", "200"))  # records/s per user
KAFKA_BATCH = int(os.environ.get("RAYMASK_LOAD_KAFKA_BATCH", "20"))  # records per produce call
SENT_HEADER = "loadtest-sent-ns"
WARMUP_HEADER = "loadtest-warm-up"  # the driver's warm-up records: not counted
OUT = Path(os.environ.get("RAYMASK_LOAD_OUT", "."))
RECORDS = 5_000
# the window of the "current" percentiles in *_stats_history.csv: Locust's 10 s default keeps a
# 3 s spike's p99 on the plot for 10 s after it; read before any stats entry exists
LATENCY_WINDOW_S = int(os.environ.get("RAYMASK_LOAD_LATENCY_WINDOW_S", "3"))
locust.stats.CURRENT_RESPONSE_TIME_PERCENTILE_WINDOW = LATENCY_WINDOW_S

LoadShape = shapes.SHAPES[os.environ.get("RAYMASK_LOAD_SHAPE", "steady")]  # the one Locust runs

_lines: list[bytes] = []


def _traffic() -> list[bytes]:
    if not _lines:
        from raymask.loadtest.traffic import generate_bytes

        _lines.extend(generate_bytes(PROFILE, RECORDS, seed=13).splitlines(keepends=True))
    return _lines


def _field(record: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(part)
    return record


class _Checks:
    """Counts of checked records and of records that came back with the field unchanged."""

    def __init__(self) -> None:
        self.records = 0
        self.unmasked = 0
        self.requests = 0

    def check(self, sent: bytes, got: bytes) -> str | None:
        """None when every record that came back has CHECK_FIELD changed (or absent in both),
        else why not (names only)."""
        self.requests += 1
        s = [json.loads(x) for x in sent.splitlines() if x.strip()]
        g = [json.loads(x) for x in got.splitlines() if x.strip()]
        if len(s) != len(g):
            return f"{len(g)} records came back for {len(s)} sent"
        bad = sum(
            1
            for a, b in zip(s, g, strict=True)
            if _field(a, CHECK_FIELD) is not None
            and _field(a, CHECK_FIELD) == _field(b, CHECK_FIELD)
        )
        self.records += len(s)
        self.unmasked += bad
        return f"{bad} record(s) with {CHECK_FIELD} unchanged" if bad else None


CHECKS = _Checks()


def poisson_throughput(rate: float) -> Any:
    """A Locust wait_time for open-loop Poisson arrivals at `rate` requests/s a user: the gaps
    between a user's sends are exponential (mean 1/rate) and counted on its own schedule, not
    from its last answer, so the users together send as one Poisson process of their summed
    rate, as independent clients do. (`constant_throughput` users fall into step after a stall,
    since their answers come back together, and then send in bursts.) A user whose answer comes
    after its next send time sends at once, and the send it missed is lost rather than sent
    late as a burst."""

    def wait_time(user: Any) -> float:
        now = time.monotonic()
        # the next send is due an exponential gap after the last one was due; if that time
        # passed while the user waited for its answer, it sends now and goes on from there
        due = max(getattr(user, "_due", now) + random.expovariate(rate), now)
        user._due = due
        return due - now

    return wait_time


def _wait() -> Any:
    if RATE <= 0:
        return constant(0)
    return poisson_throughput(RATE) if ARRIVALS == "poisson" else constant_throughput(RATE)


class _MaskUser(FastHttpUser):
    abstract = True
    wait_time = _wait()
    size = 1

    def on_start(self) -> None:
        lines = _traffic()
        self.bodies = [b"".join(lines[i : i + self.size]) for i in range(0, len(lines) - self.size + 1, self.size)]  # fmt: skip
        self.n = random.randrange(len(self.bodies))

    @task
    def mask(self) -> None:
        self.n += 1
        body = self.bodies[self.n % len(self.bodies)]
        view = random.choice(VIEWS) if VIEWS else "default"
        name = f"mask {self.size} record" + ("s" if self.size > 1 else "")
        with self.client.post(
            f"/v1/streams/{STREAM}/mask?view={view}", data=body, name=name, catch_response=True,
            headers={"content-type": "application/x-ndjson"},
        ) as r:  # fmt: skip
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}")
            elif CHECK_EVERY and self.n % CHECK_EVERY == 0:
                why = CHECKS.check(body, r.content or b"")
                if why:
                    r.failure(why)


class MaskOneRecord(_MaskUser):
    weight = 3
    size = 1


class MaskHundredRecords(_MaskUser):
    weight = 1
    size = 100


# ------------------------------------------------------------------------------------ Kafka


class KafkaIO:
    """aiokafka producer and output consumer on a native thread with its own asyncio loop."""

    def __init__(self, bootstrap: str, topic: str, output: str, partitions: int) -> None:
        self.bootstrap, self.topic, self.output, self.partitions = (
            bootstrap,
            topic,
            output,
            partitions,
        )
        self.sends: deque = deque()  # (partition, [values]); None: no more
        self.events: deque = deque()  # (name, ms, size, error) for the event greenlet
        self.produced = 0
        self.acked = 0
        self.arrived = 0
        self.late = 0  # arrivals older than this run (an output topic read from before)
        self.errors = 0
        self.start_ns = time.time_ns()
        self.stopped = False
        self._ready = False
        self._failed: str | None = None
        pool = gevent.get_hub().threadpool
        self._thread = pool.spawn(self._run)

    def _run(self) -> None:
        import asyncio

        asyncio.run(self._main())

    async def _main(self) -> None:
        import asyncio

        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        try:
            prod = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
                                    enable_idempotence=False)  # fmt: skip
            await prod.start()
            cons = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=50)  # fmt: skip
            await cons.start()
            tps = [TopicPartition(self.output, p) for p in range(self.partitions)]
            cons.assign(tps)
            for tp in tps:
                cons.seek(tp, 0)
        except Exception as exc:  # reported once, as a failure of every send
            self._failed = type(exc).__name__
            self._ready = True
            return
        self._ready = True
        consumer = asyncio.create_task(self._consume(cons))
        pending: set = set()
        while True:
            if not self.sends:  # a deque polled: no cross-thread wake-up through gevent
                await asyncio.sleep(0.005)
                continue
            item = self.sends.popleft()
            if item is None:
                break
            part, values = item
            t0 = time.perf_counter()
            batch = prod.create_batch()
            now = time.time_ns()
            for v in values:
                batch.append(key=None, value=v, timestamp=now // 1_000_000,
                             headers=[(SENT_HEADER, str(now).encode())])  # fmt: skip
            batch.close()
            fut = await prod.send_batch(batch, self.topic, partition=part)
            task = asyncio.ensure_future(self._acked(fut, t0, len(values)))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        await prod.stop()
        while not self.stopped:
            await asyncio.sleep(0.05)
        consumer.cancel()
        await cons.stop()

    async def _acked(self, fut: Any, t0: float, n: int) -> None:
        try:
            await fut
            self.acked += n
            self.events.append(("kafka produce", (time.perf_counter() - t0) * 1e3, n, None))
        except Exception as exc:  # the broker's answer, no record value in it
            self.errors += n
            self.events.append(
                ("kafka produce", (time.perf_counter() - t0) * 1e3, n, type(exc).__name__)
            )

    async def _consume(self, cons: Any) -> None:
        while True:
            got = await cons.getmany(timeout_ms=200, max_records=10_000)
            now = time.time_ns()
            for msgs in got.values():
                for m in msgs:
                    headers = dict(m.headers or ())
                    if WARMUP_HEADER in headers:
                        continue
                    sent = headers.get(SENT_HEADER)
                    sent_ns = int(sent) if sent else m.timestamp * 1_000_000
                    if sent_ns < self.start_ns - 1_000_000_000:
                        self.late += 1
                        continue
                    self.arrived += 1
                    self.events.append(
                        ("kafka e2e", (now - sent_ns) / 1e6, len(m.value or b""), None)
                    )

    def send(self, partition: int, values: list[bytes]) -> None:
        self.produced += len(values)
        if self._failed:
            self.errors += len(values)
            self.events.append(
                ("kafka produce", 0.0, len(values), f"no Kafka client: {self._failed}")
            )
            return
        self.sends.append((partition, values))

    def fire(self, environment: Any) -> None:
        while self.events:
            name, ms, size, error = self.events.popleft()
            environment.events.request.fire(
                request_type="kafka", name=name, response_time=ms, response_length=size,
                exception=RuntimeError(error) if error else None, context={},
            )  # fmt: skip

    def drain(self, environment: Any, limit_s: float) -> None:
        """Wait (cooperatively) until every produced record is acknowledged and has arrived on
        the output topic, or `limit_s` passed; then stop the thread."""
        self.sends.append(None)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and (
            self.acked + self.errors < self.produced or self.arrived < self.acked
        ):
            self.fire(environment)
            gevent.sleep(0.1)
        self.fire(environment)
        self.stopped = True
        summary = {
            "produced": self.produced, "acknowledged": self.acked, "produce_errors": self.errors,
            "arrived": self.arrived, "older_records_skipped": self.late,
            "missing": self.acked - self.arrived, "drain_limit_s": limit_s,
        }  # fmt: skip
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "kafka.json").write_text(json.dumps(summary, indent=1) + "\n")


_kafka: list[KafkaIO] = []


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--bootstrap-servers", default=os.environ.get("RAYMASK_LOAD_BOOTSTRAP", ""),
                        help="Kafka bootstrap servers (KafkaProducer users)")  # fmt: skip
    parser.add_argument("--kafka-partitions", type=int, default=3)
    parser.add_argument("--kafka-drain-s", type=float, default=30.0)


def _kafka_io(environment: Any) -> KafkaIO:
    if not _kafka:
        o = environment.parsed_options
        topic = os.environ["RAYMASK_LOAD_KAFKA_TOPIC"]
        output = os.environ.get("RAYMASK_LOAD_KAFKA_OUTPUT", f"{topic}.masked.default")
        _kafka.append(KafkaIO(o.bootstrap_servers, topic, output, o.kafka_partitions))

        def pump() -> None:
            while not _kafka[0].stopped:
                _kafka[0].fire(environment)
                gevent.sleep(0.2)

        gevent.spawn(pump)
    return _kafka[0]


class KafkaProducer(User):
    """Produces KAFKA_RATE records/s (in batches of KAFKA_BATCH, records of one key partition
    per batch, as a keyed producer would)."""

    wait_time = constant_throughput(KAFKA_RATE / KAFKA_BATCH)

    def on_start(self) -> None:
        self.io = _kafka_io(self.environment)
        self.i = random.randrange(RECORDS)

    @task
    def produce(self) -> None:
        p = random.choice([k for k, v in _by_partition.items() if v])
        values = _by_partition[p]
        self.i += KAFKA_BATCH
        batch = [values[(self.i + j) % len(values)].rstrip(b"\n") for j in range(KAFKA_BATCH)]
        self.io.send(p, batch)


_by_partition: dict[int, list[bytes]] = {}


@events.init.add_listener
def _prepare(environment: Any, **_: Any) -> None:
    """Traffic generated (and split by key partition) before the clock of the shape starts;
    locust-run.json says how the run was set up (the report reads the latency window there)."""
    from raymask.loadtest.kafka_traffic import partition_by_key

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "locust-run.json").write_text(json.dumps({
        "shape": LoadShape.__name__, "users": os.environ.get("RAYMASK_LOAD_USERS"),
        "seconds": os.environ.get("RAYMASK_LOAD_SECONDS"), "latency_window_s": LATENCY_WINDOW_S,
        "stream": STREAM, "views": VIEWS, "http_rate": RATE, "kafka_rate": KAFKA_RATE,
    }, indent=1) + "\n")  # fmt: skip

    data = b"".join(_traffic())
    parts = getattr(environment.parsed_options, "kafka_partitions", 3)
    _by_partition.update(partition_by_key(data, KEY_PATH, parts))


@events.test_stop.add_listener
def _on_stop(environment: Any, **_: Any) -> None:
    if _kafka:
        _kafka[0].drain(environment, environment.parsed_options.kafka_drain_s)
    # Locust rewrites its CSVs once a second and does not write them again at exit: give its
    # writer a last turn, so *_stats.csv holds every request the run made
    gevent.sleep(1.5)
    if CHECKS.requests:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "checks.json").write_text(json.dumps({
            "field": CHECK_FIELD, "requests_checked": CHECKS.requests,
            "records_checked": CHECKS.records, "records_unmasked": CHECKS.unmasked,
        }, indent=1) + "\n")  # fmt: skip
