"""Per-subject budgets on real Ray workers that get killed and a pool that grows mid-run: no subject
is ever granted more than its allowance (a budget that did not move with its key, or was forgotten
by a restarted worker, would grant a second allowance), the checkpointed spend is never below
what was released, and a second run in the same period finds the budgets spent."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from raymask.actors.control import scale_pipeline
from raymask.actors.ledger import SubjectLedger
from raymask.cluster.pipeline import ledger_root, prepare, run_job
from raymask.kernels.hashing import key_hash
from raymask.policy.keys import Key, Keyring
from raymask.policy.schema import Policy

SUBJECTS, PER_SUBJECT, ALLOWED = 150, 200, 20  # allowance: 20 releases of epsilon 0.1


def _policy() -> Policy:
    return Policy.model_validate(
        {
            "version": 1,
            "streams": {
                "meter": {
                    "format": "ndjson",
                    "key": "user",
                    "fields": {"kwh": {"technique": "noise", "epsilon": 0.1, "lo": 0, "hi": 20}},
                    "budget": {"epsilon": 2.0, "key": "ledger", "exhausted": "suppress"},
                }
            },
        }
    )


@pytest.mark.integration
def test_budgets_hold_across_worker_kills_and_runs(ray_session, tmp_path: Path):
    import ray

    ring = Keyring([Key("ledger", 1, b"l" * 32), Key("deadletter", 1, b"d" * 32)])
    rng = np.random.default_rng(4)
    users = rng.integers(0, SUBJECTS, SUBJECTS * PER_SUBJECT)
    src = tmp_path / "in.ndjson"
    src.write_text(
        "".join(
            json.dumps({"user": f"u{u}", "kwh": 3.5, "n": i}) + "\n" for i, u in enumerate(users)
        )
    )
    state = tmp_path / "state"
    out = tmp_path / "out.ndjson"
    result: dict = {}

    def run() -> None:
        job = prepare(_policy(), "meter", src, keyring=ring, dead_letter_key="deadletter",
                      chunk_bytes=48 << 10)  # fmt: skip
        result["s"] = run_job(job, out, workers=2, name="budgets", throttle_s=0.05, state=state)

    t = threading.Thread(target=run)
    t.start()
    kills = 0
    grown = False
    deadline = time.time() + 300
    size = src.stat().st_size
    while t.is_alive() and time.time() < deadline and not (kills >= 2 and grown):
        done = out.stat().st_size if out.exists() else 0
        if kills < 2 and done >= (kills + 1) * size // 6:
            ray.kill(
                ray.get_actor(f"worker:budgets:{kills}", namespace="raymask"), no_restart=False
            )
            kills += 1
        elif kills == 2 and not grown and done >= size // 2:
            scale_pipeline("budgets", 3)  # every subject has spent its allowance by now
            grown = True
        time.sleep(0.02)
    t.join(timeout=300)
    s = result["s"]
    assert kills == 2 and s.balanced and s.records_out == len(users)
    assert [w for _, w in s.resizes] == [3] and s.resent >= 1

    released: Counter = Counter()
    for line in out.read_text().splitlines():
        r = json.loads(line)
        if r["kwh"] is not None:
            released[r["user"]] += 1
    assert max(released.values()) <= ALLOWED  # never overspent, kills or not
    assert sum(released.values()) >= 0.9 * SUBJECTS * ALLOWED  # resends cost little
    assert s.dp_records == sum(released.values())
    assert s.dp_suppressed == len(users) - s.dp_records

    # what storage remembers is never less than what left (a restart loads exactly this)
    names = sorted(released)
    book = SubjectLedger(_policy().streams["meter"].budget, ledger_root(state, "meter"), b"l" * 32)
    spent = book.spent(key_hash(pa.array(names)))["epsilon"]
    assert (spent >= np.array([released[u] for u in names]) * 0.1 - 1e-9).all()

    # a second run in the same period: every subject's allowance is used up or nearly
    again = run_job(
        prepare(_policy(), "meter", src, keyring=ring, dead_letter_key="deadletter"),
        tmp_path / "again.ndjson", workers=3, name="budgets2", state=state,
    )  # fmt: skip
    assert again.dp_records + sum(released.values()) <= SUBJECTS * ALLOWED
