"""The file pipeline end to end with in-process workers (no Ray): exact outputs against the
plain-Python reference, order per key, and records in = out + dead letters."""

from __future__ import annotations

import copy
import json
from collections import defaultdict

import pytest

from raymask.actors.sinks.deadletters import read_dead_letters
from raymask.cluster.pipeline import mask_file, replay_dead_letters
from raymask.loadtest.traffic import generate_bytes
from raymask.policy.compile import compile_stream
from raymask.policy.loader import load_policy
from tests.conftest import EXAMPLES
from tests.reference import ABSENT, drop_path, get_path, read_records, ref_apply

CASES = [
    ("payments", "payments.yaml", "payments", "ndjson"),
    ("payments", "payments.yaml", "payments_csv", "csv"),
    ("iot", "iot.yaml", "telemetry", "ndjson"),
    ("iot", "iot.yaml", "telemetry_csv", "csv"),
    ("logs", "logs.yaml", "applogs", "ndjson"),
]


def check_output(
    inp: bytes, out: bytes, policy, stream: str, role: str | None, ring, dead_lines: set[int]
) -> None:
    """Every masked field exactly as the reference says; every other field equal in value and type;
    per-key order kept; one output record per input record not in the dead letters."""
    s = policy.streams[stream]
    fmt = s.format
    csv_mode = fmt == "csv"
    plan = compile_stream(policy, stream)
    view = plan.view(role)
    outs = read_records(out, fmt)
    if csv_mode:
        kept = [r for i, r in enumerate(read_records(inp, fmt)) if i + 2 not in dead_lines]
    else:
        numbered = enumerate(inp.decode("utf-8").split("\n"), start=1)
        kept = [json.loads(t) for i, t in numbered if t.strip() and i not in dead_lines]
    assert len(outs) == len(kept)
    last_seq: dict = defaultdict(lambda: -1)
    for rin, rout in zip(kept, outs, strict=True):
        rest_in, rest_out = copy.deepcopy(rin), copy.deepcopy(rout)
        for op in view.ops:
            expected = ref_apply(
                get_path(rin, op.path, csv_mode), op.spec, ring, csv_mode, op.path, rin, s.key
            )
            got = get_path(rout, op.path, csv_mode)
            if expected is ABSENT:
                assert got is ABSENT
            else:
                assert got == expected and type(got) is type(expected), (op.path, got, expected)
            drop_path(rest_in, op.path, csv_mode)
            drop_path(rest_out, op.path, csv_mode)
        if s.unknown_fields == "drop":
            assert not _leaves(rest_out), "fields the policy does not name must be dropped"
        else:
            assert rest_out == rest_in and json.dumps(rest_out) == json.dumps(rest_in)
        key = get_path(rout, s.key, csv_mode)
        seq = get_path(rin, "seq", csv_mode)
        if seq is not ABSENT:
            seq = int(seq)
            assert seq > last_seq[key], "per-key order broken"
            last_seq[key] = seq


def _leaves(d) -> list:
    if isinstance(d, dict):
        return [x for v in d.values() for x in (_leaves(v) if isinstance(v, dict) else [v])]
    return [d]


@pytest.mark.parametrize(("profile", "pol_file", "stream", "fmt"), CASES, ids=[c[2] for c in CASES])
@pytest.mark.parametrize("role", [None, "ops", "fraud", "support", "research", "analyst", "sre"])
def test_masks_each_profile_exactly_as_the_reference(
    tmp_path, keyring, profile, pol_file, stream, fmt, role
):
    inp = generate_bytes(profile, 3000, seed=11, fmt=fmt)
    src = tmp_path / f"in.{fmt}"
    src.write_bytes(inp)
    dst = tmp_path / f"out.{fmt}"
    policy = load_policy(EXAMPLES / pol_file)
    summary = mask_file(EXAMPLES / pol_file, stream, src, dst, role=role, workers=2, keyring=keyring,
                        local=True, chunk_bytes=64 << 10)  # fmt: skip
    assert summary.records_in == 3000 and summary.dead_letters == 0 and summary.balanced
    check_output(inp, dst.read_bytes(), policy, stream, role, keyring, set())


def test_bad_records_go_to_dead_letters_with_reasons_and_the_rest_is_masked(tmp_path, keyring):
    lines = generate_bytes("payments", 200, seed=3).decode().splitlines()
    lines[4] = lines[4][:40]  # truncated JSON
    lines[9] = lines[9].replace('"account":{"id":', '"account":{"ref":')  # no key
    rec = json.loads(lines[14])
    rec["card"]["number"] = "1234"
    lines[14] = json.dumps(rec)  # a card with 4 digits
    rec = json.loads(lines[19])
    rec["customer"]["email"] = {"nested": True}
    lines[19] = json.dumps(rec)  # an object where an email belongs
    lines.insert(25, "")  # a blank line is not a record
    src = tmp_path / "in.ndjson"
    src.write_text("\n".join(lines) + "\n")
    dst = tmp_path / "out.ndjson"
    s = mask_file(
        EXAMPLES / "payments.yaml", "payments", src, dst, keyring=keyring, local=True, workers=2
    )
    assert (s.records_in, s.records_out, s.dead_letters) == (200, 196, 4)
    dead = list(read_dead_letters(s.dead_letter_file, keyring))
    assert [d.line for d in dead] == [5, 10, 15, 20]
    assert dead[0].reason.startswith("invalid JSON at column")
    assert dead[1].reason == "key field account.id: missing"
    assert dead[2].reason.startswith("field card.number: not a payment card number")
    assert dead[3].reason == "field customer.email: mask takes a string or number, got object"
    assert dead[2].raw.decode() == lines[14]
    policy = load_policy(EXAMPLES / "payments.yaml")
    check_output(
        src.read_bytes(), dst.read_bytes(), policy, "payments", None, keyring, {5, 10, 15, 20, 26}
    )


def test_records_broken_after_the_key_are_caught_by_the_workers_full_scan(tmp_path, keyring):
    """The router reads each record only up to its key; whatever is wrong after it must still
    reach the dead letters, with the same reasons, from the worker's validating scan."""
    lines = generate_bytes("payments", 100, seed=4).decode().splitlines()
    key_at = lines[3].index('"account":{"id":')
    lines[3] = lines[3][:-1] + ',"x":}'  # invalid JSON near the end
    lines[6] = lines[6][:-1] + ',"account":{"id":"acc-1"}}'  # the key twice
    lines[8] = lines[8].replace('"card":', '"card":{"number":"4111"},"card":', 1)  # a field twice
    lines[11] = lines[11][:-1] + ',"n":"\\x"}'  # a bad escape after the key
    src = tmp_path / "in.ndjson"
    src.write_bytes("\n".join(lines).encode() + b"\n")
    s = mask_file(EXAMPLES / "payments.yaml", "payments", src, tmp_path / "out.ndjson",
                  keyring=keyring, local=True, workers=2)  # fmt: skip
    assert (s.records_in, s.records_out, s.dead_letters) == (100, 96, 4)
    dead = list(read_dead_letters(s.dead_letter_file, keyring))
    assert [d.line for d in dead] == [4, 7, 9, 12]
    assert dead[0].reason == f"invalid JSON at column {len(lines[3].encode())}"  # bytes
    assert dead[1].reason == "field account.id: field occurs twice"
    assert dead[2].reason.startswith("field card.")
    assert dead[2].reason.endswith(": field occurs twice")
    assert dead[3].reason.startswith("invalid JSON at column")
    assert key_at < len(lines[3]) and [d.raw.decode() for d in dead] == [
        lines[i] for i in (3, 6, 8, 11)
    ]


def test_dead_letters_are_encrypted_and_replay_after_a_fix(tmp_path, keyring):
    lines = generate_bytes("payments", 50, seed=5).decode().splitlines()
    canary = "CANARY-4111-SECRET"
    rec = json.loads(lines[3])
    rec["card"]["number"] = canary
    lines[3] = json.dumps(rec)
    src = tmp_path / "in.ndjson"
    src.write_text("\n".join(lines) + "\n")
    s = mask_file(
        EXAMPLES / "payments.yaml",
        "payments",
        src,
        tmp_path / "out.ndjson",
        keyring=keyring,
        local=True,
    )
    assert s.dead_letters == 1
    raw = open(s.dead_letter_file, encoding="utf-8").read()
    assert canary not in raw and "CANARY" not in raw
    # the fix: a policy that redacts card numbers instead of masking them
    fixed = (
        (EXAMPLES / "payments.yaml")
        .read_text()
        .replace("card.number:    {technique: mask, preset: card}", "card.number:    redact")
    )
    pol = tmp_path / "fixed.yaml"
    pol.write_text(fixed)
    r = replay_dead_letters(
        s.dead_letter_file,
        pol,
        "payments",
        tmp_path / "replayed.ndjson",
        keyring=keyring,
        local=True,
    )
    assert (r.records_in, r.records_out, r.dead_letters) == (1, 1, 0)
    out = json.loads((tmp_path / "replayed.ndjson").read_text())
    assert out["card"]["number"] == "[REDACTED]"


def test_untouched_bytes_stay_identical(tmp_path, keyring):
    # odd spacing, escapes and key order must survive everywhere the policy does not write
    line = '{ "note" : "x" ,"amount":12.50, "account" : {"id":"a\\u0041"}, "extra": [1, 2.0e3, {"k": null}] }'
    src = tmp_path / "in.ndjson"
    src.write_text(line + "\n")
    dst = tmp_path / "out.ndjson"
    mask_file(
        EXAMPLES / "payments.yaml", "payments", src, dst, keyring=keyring, local=True, workers=1
    )
    out = dst.read_text()
    assert out.startswith('{ "note" : "[REDACTED]" ,"amount":12.50, "account" : {"id":"acc_')
    assert out.endswith('"}, "extra": [1, 2.0e3, {"k": null}] }\n')


REFUSALS = """
version: 2
streams:
  s:
    format: ndjson
    key: id
    fields:
      card: {technique: fpe, key: fpe}
      sealed: {technique: encrypt, key: sealed}
      ip: {technique: generalize, method: ip_prefix}
      when: {technique: date_shift, key: shift}
      pan: {technique: mask, preset: card}
      n: {technique: generalize, method: round, step: 5}
"""


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("card", "12345", "field card: too few characters of the alphabet"),
        ("sealed", {"an": "object"}, "field sealed: encrypt takes a string or number, got object"),
        ("ip", "not-an-ip", "field ip: not an IP address"),
        ("when", "23/11/2026", "field when: not a date or timestamp"),
        ("pan", "4111", "field pan: not a payment card number"),
        ("n", "twelve", "field n: not a number"),
    ],
)
def test_a_value_a_technique_cannot_take_goes_to_the_dead_letters_never_the_output(
    tmp_path, keyring, field, value, reason
):
    good = {
        "id": "a1",
        "card": "4111111111111111",
        "sealed": "x",
        "ip": "10.1.2.3",
        "when": "2026-11-23",
        "pan": "4111 1111 1111 1111",
        "n": 12,
    }
    bad = dict(good, **{field: value})
    pol = tmp_path / "p.yaml"
    pol.write_text(REFUSALS)
    src = tmp_path / "in.ndjson"
    src.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    dst = tmp_path / "out.ndjson"
    s = mask_file(pol, "s", src, dst, keyring=keyring, local=True, workers=1)
    assert (s.records_out, s.dead_letters) == (1, 1)
    dead = list(read_dead_letters(s.dead_letter_file, keyring))
    assert dead[0].line == 2 and dead[0].reason.startswith(reason), dead[0].reason
    out = dst.read_text()
    assert json.dumps(value) not in out and len(out.splitlines()) == 1
