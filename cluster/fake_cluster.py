"""A local multi-node Ray cluster with a real autoscaler, on one machine, for the scale test.

Ray's fake multi-node provider (`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=F`)
runs the real autoscaler (the monitor process); the "nodes" it adds are extra raylets on this
machine with the resources of their node type. So worker placement, pending actors,
`request_resources` and idle node removal behave as on a cloud cluster; the nodes share this
machine's cores. `ray up` with this provider fails in Ray 2.60 and `AutoscalingCluster` runs
`ray stop --force` (which ends every Ray process on the machine), so this module starts the
head itself, in a process session of its own, and stops exactly that session's processes.

The provider fixes the GCS port at 6379: one such cluster per machine (start() says so if the
port is taken).

    with FakeCluster(max_nodes=3) as c:
        ray.init(address=c.address)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from raymask.errors import InputError

__all__ = ["FakeCluster", "fake_config"]

GCS_PORT = 6379  # fixed by the fake provider


def fake_config(
    max_nodes: int, node_cpus: float, head_cpus: float, idle_timeout_s: float
) -> dict[str, Any]:
    """A complete fake_multinode autoscaling config: every top-level key the autoscaler reads,
    with empty setup commands (the nodes are local raylets)."""
    return {
        "cluster_name": "raymask-fake",
        "max_workers": max_nodes,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {},
        "docker": {},
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": head_cpus},
                "node_config": {},
                "max_workers": 0,
            },
            "ray.worker.cpu": {
                "resources": {"CPU": node_cpus, "object_store_memory": 200_000_000},
                "node_config": {},
                "min_workers": 0,
                "max_workers": max_nodes,
            },
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class FakeCluster:
    """Start (`start()` or `with`) and stop a fake multi-node cluster of up to `max_nodes`
    worker nodes of `node_cpus` CPUs each, beside a head of `head_cpus`; idle worker nodes go
    after `idle_timeout_s`."""

    def __init__(
        self, max_nodes: int = 3, node_cpus: float = 1.0, head_cpus: float = 1.0,
        idle_timeout_s: float = 15.0, start_timeout_s: float = 90.0, dashboard: bool = False,
    ) -> None:  # fmt: skip
        self.config = fake_config(max_nodes, node_cpus, head_cpus, idle_timeout_s)
        self.head_cpus = head_cpus
        self.start_timeout_s = start_timeout_s
        # short: Ray's socket paths live under it and a Unix socket path has ~100 bytes
        self.tmp = Path(tempfile.mkdtemp(prefix="rmfc-", dir="/tmp"))
        self.proc: subprocess.Popen | None = None
        self.address = ""
        # the dashboard serves Ray's job API (`ray job submit --address http://HOST:PORT`)
        self.dashboard_port = _free_port() if dashboard else None
        # token authentication with a token of this cluster's own (the head listens on the
        # machine's address, not only on loopback); `connect()` hands it to the driver
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

    def connect(self, **init_args: Any) -> Any:
        """ray.init to this cluster (this process takes the cluster's token)."""
        import ray
        from ray._raylet import AuthenticationTokenLoader, Config

        os.environ.update(self.auth_env)
        Config.initialize("")  # Ray read the auth mode at import: read it again
        AuthenticationTokenLoader.instance().reset_cache()
        return ray.init(address=self.address, **init_args)

    def start(self) -> FakeCluster:
        if _port_taken(GCS_PORT):
            raise InputError(
                f"port {GCS_PORT} is taken: another Ray head (or fake cluster) runs on this "
                "machine, and the fake provider cannot use another port"
            )
        cfg = self.tmp / "autoscaling.yaml"
        cfg.write_text(yaml.safe_dump(self.config))
        ray_bin = str(Path(sys.executable).with_name("ray"))
        env = {**os.environ, **self.auth_env, "RAY_FAKE_CLUSTER": "1",
               "RAY_TMPDIR": str(self.tmp / "ray"), "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
        cmd = [
            ray_bin, "start", "--head", f"--port={GCS_PORT}", f"--num-cpus={self.head_cpus:g}",
            f"--autoscaling-config={cfg}", f"--temp-dir={self.tmp / 'ray'}",
            "--disable-usage-stats",
            # the dashboard agent's HTTP port is 52365 by default, which any other Ray on this
            # machine (a test session's own local Ray) may hold already; the job API needs it
            f"--dashboard-agent-listen-port={_free_port()}",
        ]  # fmt: skip
        if self.dashboard_port is None:
            cmd.append("--include-dashboard=false")
        else:
            cmd += ["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}"]  # fmt: skip
        log = open(self.tmp / "start.log", "wb")  # noqa: SIM115 (kept for the processes' life)
        # a session of its own: every process of this cluster (head daemons, the nodes the
        # autoscaler adds, their workers) is in it, and stop() ends exactly those
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = self.proc.wait(self.start_timeout_s)
        except subprocess.TimeoutExpired:
            self.stop()
            raise InputError(
                f"the fake cluster's head did not start in {self.start_timeout_s} s"
            ) from None
        if rc != 0:
            tail = (self.tmp / "start.log").read_text(errors="replace")[-400:]
            self.stop()
            raise InputError(f"`ray start --head` failed (exit {rc}): {tail}")
        from ray._private.services import get_node_ip_address

        # the head listens on this machine's address (the fake nodes join it there too)
        self.address = f"{get_node_ip_address()}:{GCS_PORT}"
        return self

    def _pids(self) -> list[int]:
        """Processes of this cluster: its session, or a command line naming its folder."""
        if self.proc is None:
            return []
        sid, mark, out = self.proc.pid, str(self.tmp), []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if os.getsid(int(d.name)) == sid or mark in (d / "cmdline").read_text(
                    errors="replace"
                ):
                    out.append(int(d.name))
            except (OSError, ProcessLookupError):
                continue
        return out

    def stop(self, grace_s: float = 5.0) -> None:
        """End this cluster's processes (TERM, then KILL after `grace_s`), and only those."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            pids = self._pids()
            for p in pids:
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while self._pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self._pids():
                break
        self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def nodes(self) -> int:
        """Alive nodes, head included (needs ray.init to this cluster)."""
        import ray

        return sum(1 for n in ray.nodes() if n["Alive"])

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
