"""Pipeline metrics reach Ray's Prometheus endpoint, with counts that match the run and no data
value in any label."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from raymask.cluster.pipeline import mask_file
from raymask.loadtest.traffic import generate_bytes
from tests.conftest import EXAMPLES, METRICS_PORT


def _scrape() -> str:
    return (
        urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5)
        .read()
        .decode()
    )


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.integration
def test_records_dead_letters_latency_and_technique_counts_are_exported(
    ray_session, tmp_path: Path, keyring
):
    text = (EXAMPLES / "payments.yaml").read_text().replace("  payments:\n", "  metricstest:\n", 1)
    pol = tmp_path / "p.yaml"
    pol.write_text(text)
    lines = generate_bytes("payments", 3000, seed=41).decode().splitlines()
    canary = "CANARY-METRICS-4242"
    rec = json.loads(lines[10])
    rec["card"]["number"] = (
        canary  # refused by the card preset: a dead letter whose value must not leak
    )
    lines[10] = json.dumps(rec)
    src = tmp_path / "in.ndjson"
    src.write_text("\n".join(lines) + "\n")
    s = mask_file(
        pol,
        "metricstest",
        src,
        tmp_path / "out.ndjson",
        keyring=keyring,
        workers=2,
        chunk_bytes=64 << 10,
    )
    assert (s.records_in, s.dead_letters) == (3000, 1)
    want = {"in": 3000.0, "out": 2999.0, "dead": 1.0}
    deadline = time.time() + 30
    while True:
        text = _scrape()
        got = {
            st: _value(text, "ray_raymask_records_total", stream="metricstest", stage=st)
            for st in want
        }
        if got == want or time.time() > deadline:
            break
        time.sleep(1)
    assert got == want
    assert (
        _value(
            text,
            "ray_raymask_values_changed_total",
            stream="metricstest",
            field="account.id",
            technique="tokenize",
        )
        == 2999.0
    )
    assert _value(text, "ray_raymask_batch_latency_seconds_count", stream="metricstest") >= 1
    assert _value(text, "ray_raymask_bytes_total", stream="metricstest") == src.stat().st_size
    assert canary not in text and not re.search(r"acc-\d{8}", text)
