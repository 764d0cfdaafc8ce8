"""Backpressure: with workers far slower than the reader, the driver holds only a bounded number
of chunks, so its memory stays flat instead of growing with the input; nothing is dropped."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from raymask.cluster.pipeline import prepare, run_job
from raymask.loadtest.traffic import generate_bytes
from tests.conftest import EXAMPLES


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.integration
def test_driver_memory_stays_bounded_when_workers_fall_behind(ray_session, tmp_path: Path, keyring):
    # `make soak` runs the long version: RAYMASK_SOAK_RECORDS=2000000 RAYMASK_SOAK_THROTTLE=0.3
    n = int(os.environ.get("RAYMASK_SOAK_RECORDS", "400000"))
    throttle = float(os.environ.get("RAYMASK_SOAK_THROTTLE", "0.12"))
    src = tmp_path / "in.ndjson"
    data = generate_bytes("payments", n, seed=81)
    src.write_bytes(data)
    size = len(data)
    del data
    chunk = 4 << 20
    job = prepare(EXAMPLES / "payments.yaml", "payments", src, keyring=keyring, chunk_bytes=chunk)
    peak = base = _rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    try:
        s = run_job(job, tmp_path / "out.ndjson", workers=2, name="soak", throttle_s=throttle)
    finally:
        done.set()
        sampler.join()
    seconds = time.perf_counter() - t0
    # the reader alone would finish in well under a second: workers are the slow side here
    assert seconds > 5 * (size / 700e6)
    assert s.records_in == n and s.balanced and s.dead_letters == 0
    # bounded: a few chunks in flight (raw bytes, spans, sub-batches, outputs), not the input
    bound = 24 * chunk + 64 * 2**20
    print(
        f"driver RSS growth {(peak - base) / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB, input {size / 2**20:.0f} MiB, {seconds:.1f} s"
    )
    assert peak - base < bound < size, (peak - base, bound, size)
