"""Following a growing file: appended records are masked as they arrive, a partial last line
waits for its newline, and stop() ends the job with every record read accounted for."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from raymask.cluster.pipeline import prepare, run_job
from raymask.loadtest.traffic import generate_bytes
from tests.conftest import EXAMPLES


def _wait(pred, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while not pred():
        assert time.time() < end, "timed out"
        time.sleep(0.02)


def test_follow_masks_appended_records_until_stopped(tmp_path: Path, keyring):
    lines = generate_bytes("logs", 3000, seed=71).decode().splitlines(keepends=True)
    src = tmp_path / "app.log.ndjson"
    src.write_text("".join(lines[:1000]))
    out = tmp_path / "out.ndjson"
    job = prepare(EXAMPLES / "logs.yaml", "applogs", src, keyring=keyring, follow=True)
    job.source.poll_seconds = 0.02
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(s=run_job(job, out, workers=1, local=True)))
    t.start()

    def out_lines() -> int:
        return len(out.read_text().splitlines()) if out.exists() else 0

    _wait(lambda: out_lines() == 1000)
    with open(src, "a") as f:
        f.write("".join(lines[1000:2000]))
        f.write(lines[2000][:25])  # half a record: it must wait for the rest
        f.flush()
        _wait(lambda: out_lines() == 2000)
        time.sleep(0.2)
        assert out_lines() == 2000
        f.write(lines[2000][25:] + "".join(lines[2001:]))
    _wait(lambda: out_lines() == 3000)
    job.source.stop()
    t.join(timeout=30)
    s = result["s"]
    assert (s.records_in, s.records_out, s.dead_letters) == (3000, 3000, 0)
    assert all(json.loads(x)["message"] == "[REDACTED]" for x in out.read_text().splitlines())
