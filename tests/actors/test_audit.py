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
