"""Worker faults: a killed worker restarts, the batches it held are sent again, and the output
has every record exactly once, in order per key."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from raymask.cluster.pipeline import mask_file
from raymask.loadtest.traffic import generate_bytes
from tests.conftest import EXAMPLES


@pytest.mark.integration
def test_killed_workers_restart_and_nothing_is_lost_or_duplicated(
    ray_session, tmp_path: Path, keyring
):
    import ray

    # `make faults` runs the long version: RAYMASK_FAULT_RECORDS=1000000 RAYMASK_FAULT_KILLS=10
    n = int(os.environ.get("RAYMASK_FAULT_RECORDS", "300000"))
    max_kills = int(os.environ.get("RAYMASK_FAULT_KILLS", "3"))
    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", n, seed=51))
    result: dict = {}

    def run() -> None:
        result["s"] = mask_file(EXAMPLES / "payments.yaml", "payments", src, tmp_path / "out.ndjson", keyring=keyring,
                                workers=2, chunk_bytes=256 << 10, name="faults")  # fmt: skip

    t = threading.Thread(target=run)
    t.start()
    kills = 0
    deadline = time.time() + 600
    out_file = tmp_path / "out.ndjson"
    len_step = src.stat().st_size // (2 * max_kills + 2)  # spread the kills over the first half
    while t.is_alive() and kills < max_kills and time.time() < deadline:
        # kill only once batches flow (output is being written), so work is in flight
        if not out_file.exists() or out_file.stat().st_size < (1 + kills) * len_step:
            time.sleep(0.02)
            continue
        w = ray.get_actor(f"worker:faults:{kills % 2}", namespace="raymask")
        ray.kill(w, no_restart=False)  # the process dies; Ray starts a new one
        kills += 1
    t.join(timeout=600)
    s = result["s"]
    assert kills >= 2 and s.resent >= 1
    assert s.records_in == n and s.balanced and s.dead_letters == 0
    out = (tmp_path / "out.ndjson").read_text().splitlines()
    assert len(out) == n
    last: dict[str, int] = {}
    ids = set()
    for line in out:
        r = json.loads(line)
        key = r["account"]["id"]
        assert r["seq"] > last.get(key, -1), "per-key order broken"
        last[key] = r["seq"]
        ids.add(r["event_id"])
    assert len(ids) == n, "a record was written twice"
