"""The leak monitor's findings reach Ray's Prometheus endpoint and the audit file on a Ray run,
labelled by stream, view, field and type, with no data value anywhere."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from raymask.cluster.pipeline import mask_file
from raymask.policy.schema import Policy
from tests.actors.test_metrics import _scrape, _value

CANARY = "canary.5150@leak-metrics.example"


@pytest.mark.integration
def test_leak_metric_and_audit_on_ray(ray_session, tmp_path: Path, keyring):
    pol = Policy.model_validate({"version": 3, "streams": {"leaktest": {
        "format": "ndjson", "key": "id", "unknown_fields": "keep",
        "leak_check": {"sample": 1.0},
        "fields": {"card": {"technique": "mask", "preset": "card"}},
    }}})  # fmt: skip
    src = tmp_path / "in.ndjson"
    src.write_text("".join(json.dumps({"id": str(i), "card": "4111 1111 1111 1111",
                                       "note": f"from {CANARY}"}) + "\n" for i in range(400)))  # fmt: skip
    out = tmp_path / "out.ndjson"
    s = mask_file(pol, "leaktest", src, out, keyring=keyring, workers=2, chunk_bytes=8 << 10)
    assert s.leaks == {("note", "email"): 400}
    deadline = time.time() + 30
    while True:
        text = _scrape()
        got = _value(text, "ray_raymask_leaks_total", stream="leaktest", view="default",
                     field="note", type="email")  # fmt: skip
        if got == 400 or time.time() > deadline:
            break
        time.sleep(1)
    assert got == 400
    audit = Path(s.audit_file).read_text()
    assert sum(json.loads(x)["count"] for x in audit.splitlines()) == 400
    for channel in (text, audit):
        assert CANARY not in channel and "4111" not in channel
