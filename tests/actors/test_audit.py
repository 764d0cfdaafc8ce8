"""The audit trail: a clean log verifies; every kind of tampering is found and the first bad line
named; only metadata goes in; a log is continued after a reopen and refused when it does not
verify."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from raymask.actors.audit import AuditLog, _line, read_records, signing_key, verify
from raymask.errors import InputError

KEY = signing_key(b"a" * 32)
PUB = KEY.public_key()


def _log(path, n: int = 25, anchor_every: int = 10) -> list[bytes]:  # noqa: ANN001
    t = iter(range(10**6))
    log = AuditLog(path, KEY, anchor_every=anchor_every, clock=lambda: 1_700_000_000 + next(t))
    for i in range(n):
        log.append("policy_push", stream="payments", version=i, caller="ops@cli")
    log.close()
    return path.read_bytes().splitlines(keepends=True)


def _write(path, lines: list[bytes]) -> None:  # noqa: ANN001
    path.write_bytes(b"".join(lines))


def test_a_clean_log_verifies_with_anchors_every_n_and_at_close(tmp_path):
    p = tmp_path / "audit.log"
    lines = _log(p)
    kinds = [r["kind"] for r in read_records(p)]
    assert len(lines) == 25 + 3 and kinds.count("anchor") == 3  # after 10, 20, and at close
    v = verify(p, PUB)
    assert v.ok and v.records == 28 and v.anchored == 28


def _rechain(lines: list[bytes], start: int) -> list[bytes]:
    """What a forger does after an edit: recompute every later `prev` (the chain has no key)."""
    out = lines[:start]
    head = hashlib.sha256(out[-1].rstrip(b"\n")).hexdigest() if out else "0" * 64
    for raw in lines[start:]:
        rec = json.loads(raw)
        rec["prev"] = head
        line = _line(rec)
        head = hashlib.sha256(line).hexdigest()
        out.append(line + b"\n")
    return out


def _edit(lines: list[bytes], i: int, **change) -> list[bytes]:  # noqa: ANN003
    rec = json.loads(lines[i])
    rec.update(change)
    return [*lines[:i], _line(rec) + b"\n", *lines[i + 1 :]]


@pytest.mark.parametrize(
    ("tamper", "bad_line", "why"),
    [
        (lambda L: _edit(L, 4, version=99), 5, "edited"),  # line 5 = record 4
        (lambda L: _rechain(_edit(L, 4, version=99), 5), 11, "signature"),  # anchor over it fails
        (lambda L: L[:4] + L[5:], 5, "dropped, inserted or moved"),
        (lambda L: L[:4] + [L[2]] + L[4:], 5, "dropped, inserted or moved"),
        (lambda L: [*L[:3], L[4], L[3], *L[5:]], 4, "dropped, inserted or moved"),
        (lambda L: L[:15], 12, "not signed"),  # cut after an anchor: 4 unanchored records
        (lambda L: L[:-1], 23, "not signed"),  # the closing anchor dropped
        (lambda L: [*L[:-1], L[-1].replace(b'"sig":"', b'"sig":"00')], 28, "signature"),
        (lambda L: [*L[:5], L[5][:-9] + b"\n", *L[6:]], 6, "not a JSON record"),
    ],
    ids=["edit", "edit-rechained", "drop", "insert", "reorder", "truncate", "unclosed",
         "forged-anchor", "cut-line"],
)  # fmt: skip
def test_tampering_is_found_and_the_first_bad_line_named(tmp_path, tamper, bad_line, why):
    p = tmp_path / "audit.log"
    _write(p, tamper(_log(p)))
    v = verify(p, PUB)
    assert not v.ok and v.bad_line == bad_line and why in v.reason, v


def test_an_anchor_signed_with_another_key_is_a_forgery(tmp_path):
    p = tmp_path / "audit.log"
    lines = _log(p)
    other = AuditLog(tmp_path / "other" / "audit.log", Ed25519PrivateKey.generate())
    forged = json.loads(lines[10])
    forged["sig"] = other.key.sign(b"whatever").hex()
    _write(p, [*lines[:10], _line(forged) + b"\n", *lines[11:]])
    v = verify(p, PUB)
    assert not v.ok and v.bad_line == 11 and "signature" in v.reason


def test_only_metadata_goes_in():
    log = AuditLog.__new__(AuditLog)  # the checks run before anything is written
    with pytest.raises(ValueError, match="only names, numbers and flags"):
        AuditLog.append(log, "reveal", record={"card": "4111111111111111"})
    with pytest.raises(ValueError, match="not allowed"):
        AuditLog.append(log, "reveal", **{"Card Number": "x"})
    with pytest.raises(ValueError, match="not allowed"):
        AuditLog.append(log, "reveal", prev="x")


def test_a_log_is_continued_after_a_reopen_and_refused_when_it_does_not_verify(tmp_path):
    p = tmp_path / "audit.log"
    _log(p, n=5)
    log = AuditLog(p, KEY)
    assert log.append("budget_grant", scope="stream:payments", epsilon=0.5) == 6
    log.close()
    assert verify(p, PUB).ok and verify(p, PUB).records == 8
    lines = p.read_bytes().splitlines(keepends=True)
    _write(p, _edit(lines, 2, version=7))
    with pytest.raises(InputError, match="does not verify"):
        AuditLog(p, KEY)


def test_cli_verifies_and_shows(tmp_path):
    from typer.testing import CliRunner

    from raymask.cluster.cli import app
    from raymask.policy.keys import Keyring, generate_key_file

    keys = generate_key_file(tmp_path / "k.json", ["audit"])
    key = signing_key(Keyring.from_file(keys).get("audit").material)
    p = tmp_path / "audit.log"
    log = AuditLog(p, key, clock=lambda: 1_700_000_000.0)
    log.append(
        "reveal", caller="alice", stream="payments", field="card.number", reason="chargeback"
    )
    log.append("access_denied", caller="bob", stream="payments")
    log.close()
    r = CliRunner().invoke(app, ["audit", "verify", str(p), "--keys", str(keys)])
    assert r.exit_code == 0 and "ok, 3 records" in r.output
    r = CliRunner().invoke(app, ["audit", "show", str(p), "--caller", "alice"])
    assert r.exit_code == 0 and "reveal" in r.output and "access_denied" not in r.output
    assert "1 record(s)" in r.output
    r = CliRunner().invoke(app, ["audit", "show", str(p), "--since", "2030-01-01"])
    assert "0 record(s)" in r.output
    lines = p.read_bytes().splitlines(keepends=True)
    _write(p, [lines[1], lines[0], lines[2]])
    r = CliRunner().invoke(app, ["audit", "verify", str(p), "--keys", str(keys)])
    assert r.exit_code == 1 and "NOT OK at line 1" in r.output


WRITER = """
import sys
from raymask.actors.audit import AuditLog, signing_key
log = AuditLog(sys.argv[1], signing_key(b"a" * 32), anchor_every=50)
for i in range(200):
    log.append("dead_letters", stream="s", count=i, writer=sys.argv[2])
log.close()
"""


def test_two_processes_append_to_one_log_and_it_still_verifies(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "audit.log"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(p), w]) for w in ("a", "b")]
    assert [q.wait(120) for q in procs] == [0, 0]
    v = verify(p, PUB)
    recs = [r for r in read_records(p) if r["kind"] != "anchor"]
    assert v.ok, v
    assert sorted((r["writer"], r["count"]) for r in recs) == sorted(
        (w, i) for w in "ab" for i in range(200)
    )


def test_a_run_leaves_a_verifiable_trail_of_counts_and_grants_never_values(
    tmp_path, monkeypatch, keyring
):
    """RAYMASK_AUDIT on: a file run with aggregates writes run_start, a dead_letters count for
    the chunk with the bad record, the budget's reserve and commit rows, and run_end; the trail
    verifies and holds no record value (canaries seeded in the input)."""
    from raymask.actors.accountant import Accountant
    from raymask.cluster.pipeline import prepare, run_job
    from raymask.loadtest.traffic import generate_bytes
    from raymask.policy.keys import Key
    from tests.cluster.test_aggregate_file import _policy

    keyring.add(Key("audit", 1, b"a" * 32))
    monkeypatch.setenv("RAYMASK_AUDIT", str(tmp_path / "audit.log"))
    data = generate_bytes("payments", 3000, seed=6).replace(b"acc-00000007", b"acc-canary-77")
    data += b'{"account": {"id": "acc-canary-88"}, "amount": canary}\n'
    src = tmp_path / "in.ndjson"
    src.write_bytes(data)
    db = str(tmp_path / "acc.sqlite")
    Accountant(db).set_budget("stream:payments", {"epsilon": 100.0, "delta": 1e-3})
    job = prepare(_policy(1, 5), "payments", src, keyring=keyring, dead_letter_key="deadletter")
    s = run_job(job, tmp_path / "out.ndjson", local=True, aggregates=tmp_path / "agg.ndjson",
                accountant_db=db)  # fmt: skip
    assert s.dead_letters == 1
    v = verify(tmp_path / "audit.log", PUB)
    assert v.ok, v
    kinds = [r["kind"] for r in read_records(tmp_path / "audit.log")]
    assert kinds[0] == "run_start" and "run_end" in kinds and "dead_letters" in kinds
    assert kinds.count("budget_reserve") == kinds.count("budget_commit") >= 1
    text = (tmp_path / "audit.log").read_text()
    assert "canary" not in text and "acc-" not in text


@pytest.mark.kafka
def test_the_kafka_copy_shows_a_log_cut_at_an_anchor_and_a_rewrite(kafka_broker, tmp_path):
    """Every line also goes to a topic, acknowledged at each anchor. A file cut right after an
    anchor still verifies on its own; against its copy it does not, and neither does a file
    rewritten from some record on with the signing key in hand."""
    import uuid

    from raymask.actors.audit import KafkaCopy, compare_with_copy, read_copy

    topic = f"audit-{uuid.uuid4().hex[:8]}"
    p = tmp_path / "audit.log"
    t = iter(range(10**6))
    log = AuditLog(p, KEY, anchor_every=10, clock=lambda: 1_700_000_000 + next(t),
                   copy=KafkaCopy(kafka_broker, topic))  # fmt: skip
    for i in range(25):
        log.append("policy_push", stream="payments", version=i, caller="ops@cli")
    log.close()
    url = f"kafka://{kafka_broker}/{topic}"
    name, copied = read_copy(url)
    lines = p.read_bytes().splitlines(keepends=True)
    assert name == "audit.log" and copied == [x.rstrip(b"\n") for x in lines]  # 25 + 3 anchors
    assert compare_with_copy(p, url, PUB).ok
    _write(p, lines[:11])  # cut right after the first anchor: alone, a valid shorter log
    assert verify(p, PUB).ok
    v = compare_with_copy(p, url, PUB)
    assert not v.ok and v.bad_line == 12 and "the file was cut" in v.reason
    _write(p, [])  # rewritten from record 5 on, re-signed with the key: alone it verifies
    forged = AuditLog(p, KEY, anchor_every=10, clock=lambda: 1_800_000_000 + next(t))
    for i in range(25):
        forged.append("policy_push", stream="payments", version=i if i < 5 else 99,
                      caller="ops@cli")  # fmt: skip
    forged.close()
    assert verify(p, PUB).ok
    v = compare_with_copy(p, url, PUB)
    assert not v.ok and v.bad_line == 1 and "rewritten" in v.reason  # new timestamps from 1


def test_a_copy_whose_broker_is_away_keeps_its_lines_for_the_next_anchor(tmp_path):
    from raymask.actors.audit import KafkaCopy

    copy = KafkaCopy.__new__(KafkaCopy)  # no broker: only the pending logic
    copy.pending, copy.failures = [], 0

    def fail(coro):  # noqa: ANN001, ANN202
        coro.close()
        raise TimeoutError

    copy._call = fail
    copy.add("audit.log", b"one")
    assert copy.flush() is False and copy.pending == [(b"audit.log", b"one")]
    assert copy.failures == 1
