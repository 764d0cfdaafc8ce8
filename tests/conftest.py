"""Test setup: unit tests never start Ray; integration tests share one Ray per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TMPDIR", os.path.join(tempfile.gettempdir(), "raymask-ray"))

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "policies"


@pytest.fixture(autouse=True)
def _no_ray_in_unit_tests(request, monkeypatch):
    """Unit tests that reach ray.init fail loudly (Ray Serve does the same in its unit tests)."""
    if request.node.get_closest_marker("integration") is None:
        import ray

        def refuse(*a, **k):
            raise RuntimeError("unit tests must not start Ray; mark the test integration")

        monkeypatch.setattr(ray, "init", refuse)
    yield


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


METRICS_PORT = _free_port()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every integration test of the session, exporting Prometheus metrics on
    METRICS_PORT."""
    import ray

    from raymask.cluster.runtime import ray_temp_dir

    if not ray.is_initialized():
        ray.init(
            num_cpus=2, include_dashboard=False, _temp_dir=ray_temp_dir(), logging_level="ERROR",
            _metrics_export_port=METRICS_PORT, _system_config={"metrics_report_interval_ms": 1000},
        )  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.fixture()
def keyring():
    from raymask.policy.keys import Key, Keyring

    return Keyring(
        [
            Key("tok", 1, b"t" * 32),
            Key("fpe", 1, b"f" * 32),
            Key("sealed", 1, b"s" * 32),
            Key("shift", 1, b"h" * 32),
            Key("deadletter", 1, b"d" * 32),
            Key("ledger", 1, b"l" * 32),
        ]
    )


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory):
    """One embedded tansu broker for every `kafka` test of the session; yields its bootstrap
    address. Stopped at the end of the session (and, should pytest be killed, by the kernel:
    the broker gets SIGTERM when its owner dies)."""
    from raymask.cluster.broker import Broker

    broker = Broker(log_path=tmp_path_factory.mktemp("kafka") / "broker.log").start()
    yield broker.bootstrap
    broker.stop()
