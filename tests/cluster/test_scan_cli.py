"""`raymask scan`: counts per field and type, never values; exit 1 when anything is found."""

from __future__ import annotations

import json

from raymask.kernels.scan import scan_file
from tests.cluster.test_cli import run
from tests.conftest import EXAMPLES

CANARY_EMAIL = "canary.93f1@leak-test.example"
CANARY_CARD = "4000 0566 5566 5556"


def test_ndjson_findings_exit_1_and_never_show_values(tmp_path):
    f = tmp_path / "out.ndjson"
    f.write_bytes(
        (json.dumps({"a": {"note": f"to {CANARY_EMAIL}"}, "list": [{"pan": CANARY_CARD}]}) + "\n"
         + json.dumps({"a": {"note": "clean"}}) + "\n").encode()
        + b'{"broken": "10.0.0.1", \n'  # invalid JSON: read as far as it goes
        + b"\xff\xfe not utf-8 \n"
        + b'{"last": "no newline at the end 10.0.0.2"}'
    )  # fmt: skip
    p = run(["scan", str(f), "--json"])
    assert p.returncode == 1, p.stderr
    got = json.loads(p.stdout)
    assert got["records"] == 5
    assert got["found"] == [
        {"field": "a.note", "type": "email", "count": 1},
        {"field": "broken", "type": "ipv4", "count": 1},
        {"field": "last", "type": "ipv4", "count": 1},
        {"field": "list.pan", "type": "card", "count": 1},
    ]
    p2 = run(["scan", str(f)])
    assert p2.returncode == 1
    for out in (p.stdout, p.stderr, p2.stdout, p2.stderr):
        assert CANARY_EMAIL not in out and CANARY_CARD not in out and "4000" not in out


def test_field_names_that_are_data_are_reported_masked(tmp_path):
    f = tmp_path / "drift.ndjson"
    f.write_text(json.dumps({"by_user": {CANARY_EMAIL: "10.0.0.1"}}) + "\n")
    rep = scan_file(f)
    assert dict(rep.found) == {("<EMAIL>", "ipv4"): 1}  # the joined path reads as one email
    csv = tmp_path / "drift.csv"
    csv.write_text(f"id,{CANARY_EMAIL}\n1,10.0.0.2\n")
    assert dict(scan_file(csv, "csv").found) == {("<EMAIL>", "ipv4"): 1}


def test_clean_file_exits_0_and_csv_counts_per_column(tmp_path):
    clean = tmp_path / "clean.ndjson"
    clean.write_text('{"a": "nothing"}\n{"b": 3}\n')
    p = run(["scan", str(clean)])
    assert p.returncode == 0, p.stderr
    assert "nothing detectable in 2 records" in p.stdout
    csv = tmp_path / "x.csv"
    csv.write_text('id,note,ip\n1,"mail a@b.io, or c@d.io",10.0.0.1\n2,,\n')
    rep = scan_file(csv, "csv")
    assert rep.records == 2
    assert dict(rep.found) == {("note", "email"): 2, ("ip", "ipv4"): 1}


def test_policy_role_keeps_are_reported_apart_and_do_not_fail(tmp_path):
    f = tmp_path / "ops.ndjson"
    f.write_text(json.dumps({"account": {"id": "x"}, "customer": {"email": "ann@ex.io"}}) + "\n")
    pol = EXAMPLES / "payments.yaml"
    p = run(
        ["scan", str(f), "--policy", str(pol), "--stream", "payments", "--role", "ops", "--json"]
    )
    got = json.loads(p.stdout)
    assert p.returncode == 0, p.stderr
    assert got["released_by_policy"] == [{"field": "customer.email", "type": "email", "count": 1}]
    p = run(["scan", str(f), "--policy", str(pol), "--stream", "payments", "--json"])
    assert p.returncode == 1


def test_bad_type_is_a_usage_error(tmp_path):
    f = tmp_path / "x.ndjson"
    f.write_text("{}\n")
    p = run(["scan", str(f), "--type", "nope"])
    assert p.returncode == 2
    assert "Traceback" not in p.stderr


def test_masked_example_logs_hold_nothing_detectable_and_the_raw_ones_do(tmp_path):
    from raymask.cluster.pipeline import mask_file
    from raymask.loadtest.traffic import generate_bytes
    from raymask.policy.keys import Key, Keyring

    ring = Keyring([Key("tok", 1, b"t" * 32), Key("deadletter", 1, b"d" * 32)])
    raw = tmp_path / "logs.ndjson"
    raw.write_bytes(generate_bytes("logs", 3000, seed=8))
    out = tmp_path / "masked.ndjson"
    s = mask_file(EXAMPLES / "logs.yaml", "applogs_text", raw, out, keyring=ring, local=True)
    assert s.records_out == 3000 and s.dead_letters == 0
    before = scan_file(raw)
    assert {t for _, t in before.found} >= {"email", "card", "ipv4", "aws_key", "github_token"}
    after = scan_file(out)  # only the /24 prefixes the policy releases on purpose
    assert dict(after.found) == {("client_ip", "ipv4"): 3000}, after.found
    p = run(["scan", str(out), "--policy", str(EXAMPLES / "logs.yaml"), "--stream", "applogs_text"])
    assert p.returncode == 0, p.stdout
    assert s.leaks == {} and s.leak_sampled > 0
    # the email in a message became the same token as the user.email field of its record
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    joined = [r for r in recs if r["message"].startswith("login ok for eml_")]
    assert joined and all(r["user"]["email"] in r["message"] for r in joined)
