"""The short scale test (`make scale-test` runs the long one): a Kafka pipeline on a local
multi-node Ray cluster with the real autoscaler, under a spike to 5x. The pool and the node count
go up and come back down, and every record produced is read once and written (records in =
out + dead). Runs in a process of its own: the fake cluster needs a driver that has not joined
another Ray."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from raymask.loadtest.scale_test import TIMELINE_COLUMNS

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def test_a_spike_scales_workers_and_nodes_up_and_back_down_losing_nothing(tmp_path):
    out = tmp_path / "scale"
    run = subprocess.run(
        [sys.executable, "-m", "raymask.loadtest.scale_test", "--short", "--out", str(out)],
        capture_output=True, text=True, timeout=480,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    r = json.loads((out / "summary.json").read_text())
    assert r["produced"] > 5000
    assert r["records_in"] == r["produced"] == r["written"] + r["dead"]
    assert r["workers_max"] >= 2 and r["nodes_max"] >= 2  # up under the spike
    assert r["workers_end"] == 1 and r["nodes_end"] == 1  # and back down after it
    sizes = [n for _, n in r["resizes"]]
    assert sizes[-1] == 1 and max(sizes) == r["workers_max"]
    with open(out / "timeline.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == TIMELINE_COLUMNS and len(rows) > 20
    ins = [int(x["records_in"]) for x in rows if x["records_in"]]
    assert ins == sorted(ins)  # a counter: never goes back
    assert (out / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
