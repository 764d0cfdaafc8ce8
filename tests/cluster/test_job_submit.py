"""`ray job submit --working-dir . -- raymask ...` against a running cluster: the fake multi-node
cluster (cluster/fake_cluster.py) with its dashboard, which serves Ray's job API. The job's
working directory is the repository as Ray uploads it (.gitignore honoured, so no .venv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raymask.loadtest.traffic import generate_bytes
from tests.conftest import REPO

pytestmark = [pytest.mark.integration]


def test_a_job_submitted_to_the_cluster_masks_a_file(tmp_path):
    from raymask.cluster.fake_cluster import FakeCluster
    from raymask.policy.keys import generate_key_file

    src, dst = tmp_path / "in.ndjson", tmp_path / "out.ndjson"
    src.write_bytes(generate_bytes("payments", 2000, seed=3))
    keyfile = generate_key_file(
        tmp_path / "keys.json", ["tok", "fpe", "sealed", "shift", "deadletter"]
    )
    ray_bin = str(Path(sys.executable).with_name("ray"))
    with FakeCluster(max_nodes=1, dashboard=True) as fc:
        env = {**os.environ, **fc.auth_env}
        env.pop("RAY_ADDRESS", None)
        cmd = [
            ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{fc.dashboard_port}",
            "--working-dir", str(REPO), "--",
            sys.executable, "-m", "raymask.cli", "mask", str(src), "-o", str(dst),
            "-P", "examples/policies/payments.yaml", "-s", "payments", "--keys", str(keyfile),
            "--address", "auto", "-q",
        ]  # fmt: skip
        deadline = time.monotonic() + 120
        while True:  # right after start the dashboard may not have its agent yet
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            busy = "No available agent to submit job" in run.stdout + run.stderr
            if not busy or time.monotonic() > deadline:
                break
            time.sleep(2)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "succeeded" in run.stdout
    outs = [json.loads(x) for x in dst.read_text().splitlines()]
    ins = [json.loads(x) for x in src.read_text().splitlines()]
    assert len(outs) == len(ins) == 2000
    assert all(o["account"]["id"] != i["account"]["id"] for o, i in zip(outs, ins, strict=True))
