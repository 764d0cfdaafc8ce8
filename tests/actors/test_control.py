"""Live policy push: the control accepts only valid, newer, runnable versions, and a running
pipeline switches at a batch boundary, so every record is masked by exactly one version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raymask.actors.control import ControlCore, key_shapes
from raymask.cluster.pipeline import prepare, run_job
from raymask.errors import PolicyError
from raymask.loadtest.traffic import generate_bytes
from raymask.policy.loader import load_policy
from tests.conftest import EXAMPLES

BASE = load_policy(EXAMPLES / "payments.yaml").model_dump(mode="json")


def _v2(base: dict = BASE) -> dict:
    """Version 2: names redacted to [GONE], cards masked with '#'."""
    d = json.loads(json.dumps(base))
    d["version"] = 2
    f = d["streams"]["payments"]["fields"]
    f["customer.name"]["replacement"] = "[GONE]"
    f["card.number"] = {"technique": "mask", "preset": "card", "char": "#"}
    return d


def test_push_accepts_a_newer_valid_version(keyring):
    c = ControlCore(BASE, "payments", key_shapes(keyring))
    assert c.push(_v2()) == 2 and c.current() == (2, _v2())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=1), "version 1 is not newer than the running version 1"),
        (
            lambda d: d["streams"]["payments"]["fields"]["card.number"].update(keep_last=99),
            "streams.payments.fields.card.number.keep_last: must be <= 64",
        ),
        (
            lambda d: d["streams"]["payments"]["fields"].update(
                {"note": {"technique": "tokenize", "key": "nokey"}}
            ),
            "key 'nokey' is not in the keyring",
        ),
        (
            lambda d: d["streams"]["payments"].update(format="csv"),
            "format: cannot change from ndjson to csv while running",
        ),
        (
            lambda d: d["streams"]["payments"].update(format="xml"),
            "format xml needs its xml: options",
        ),
        (
            lambda d: d["streams"]["payments"].update(
                budget={"epsilon": 1, "key": "tok", "subject": "customer.email"}
            ),
            "budget.subject: cannot change from account.id to customer.email while running",
        ),
    ],
)
def test_push_refuses_with_a_located_message_and_keeps_the_running_version(
    keyring, change, message
):
    c = ControlCore(BASE, "payments", key_shapes(keyring))
    d = _v2()
    change(d)
    with pytest.raises(PolicyError) as info:
        c.push(d, "new.yaml")
    assert any(message in p for p in info.value.problems), info.value.problems
    assert c.current_version() == 1


class _PushAfter(ControlCore):
    """Pushes version 2 the k-th time the pipeline asks for the version."""

    def __init__(self, *a, k: int) -> None:
        super().__init__(*a)
        self.calls, self.k = 0, k

    def current_version(self) -> int:
        self.calls += 1
        if self.calls == self.k:
            self.push(_v2())
        return super().current_version()


def test_a_push_mid_run_switches_at_a_batch_boundary(tmp_path: Path, keyring):
    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", 6000, seed=31))
    control = _PushAfter(BASE, "payments", key_shapes(keyring), k=4)
    job = prepare(
        EXAMPLES / "payments.yaml", "payments", src, keyring=keyring, chunk_bytes=64 << 10
    )
    s = run_job(job, tmp_path / "out.ndjson", workers=2, local=True, control=control)
    assert s.balanced and set(s.versions) == {1, 2} and sum(s.versions.values()) == s.records_out
    seen_v2 = False
    last_seq: dict[str, int] = {}
    for line in (tmp_path / "out.ndjson").read_text().splitlines():
        r = json.loads(line)
        name, card = r["customer"]["name"], r["card"]["number"]
        v1 = name == "[REDACTED]" and "*" in card and "#" not in card
        v2 = name == "[GONE]" and "#" in card and "*" not in card
        assert v1 != v2, "a record masked by a mix of versions"
        assert not (seen_v2 and v1), "versions went backwards"
        seen_v2 = seen_v2 or v2
        key = r["account"]["id"]
        assert r["seq"] > last_seq.get(key, -1)
        last_seq[key] = r["seq"]
    assert seen_v2


@pytest.mark.integration
def test_push_to_a_running_ray_pipeline_by_name(ray_session, tmp_path: Path, keyring):
    import threading
    import time

    import ray

    from raymask.actors.control import NAMESPACE, actor_name, push_policy
    from raymask.cluster.pipeline import mask_file

    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", 150_000, seed=32))
    result: dict = {}

    def run() -> None:
        result["s"] = mask_file(EXAMPLES / "payments.yaml", "payments", src, tmp_path / "out.ndjson", keyring=keyring,
                                workers=2, chunk_bytes=128 << 10, name="live-test")  # fmt: skip

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            ray.get_actor(actor_name("live-test"), namespace=NAMESPACE)
            break
        except ValueError:
            time.sleep(0.05)
    bad = _v2()
    bad["version"] = 1
    with pytest.raises(PolicyError, match="not newer"):
        push_policy("live-test", bad)
    assert push_policy("live-test", _v2()) == 2
    t.join(timeout=300)
    s = result["s"]
    assert s.balanced and s.versions[2] > 0
    names = {
        json.loads(x)["customer"]["name"]
        for x in (tmp_path / "out.ndjson").read_text().splitlines()
    }
    assert "[GONE]" in names
    with pytest.raises(Exception, match="no running pipeline named 'live-test'"):
        push_policy("live-test", _v2())
