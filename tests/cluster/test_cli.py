"""The `raymask` command line: errors (no Ray needed) and end to end on a real local Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from raymask.cluster.cli import app
from raymask.loadtest.traffic import generate_bytes
from raymask.policy.keys import generate_key_file
from raymask.policy.loader import load_policy
from tests.cluster.test_pipeline_local import check_output
from tests.conftest import EXAMPLES, REPO

RAYMASK = [sys.executable, "-m", "raymask.cli"]


def run(
    args: list[str], env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("RAYMASK_KEY")}
    e.update(env or {})
    return subprocess.run(
        RAYMASK + args, capture_output=True, text=True, env=e, cwd=cwd or REPO, timeout=300
    )


@pytest.fixture()
def keyfile(tmp_path):
    return generate_key_file(
        tmp_path / "keys.json", ["tok", "fpe", "sealed", "shift", "deadletter", "ledger"]
    )


def test_invalid_policy_exits_2_with_a_located_message_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((EXAMPLES / "logs.yaml").read_text().replace("preset: email", "preset: mail"))
    r = run(["policy", "validate", str(bad)])
    assert r.returncode == 2
    assert "bad.yaml:11: streams.applogs.fields.user.email.preset: must be one of" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_missing_key_is_a_startup_error_naming_the_key(tmp_path):
    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("logs", 10))
    r = run(
        [
            "mask",
            str(src),
            "-P",
            str(EXAMPLES / "logs.yaml"),
            "-s",
            "applogs",
            "-o",
            str(tmp_path / "o"),
        ]
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: key 'tok' is not in the keyring (set RAYMASK_KEYRING to a key file that has it, or RAYMASK_KEY_TOK)"
    ]


def test_unreadable_input_is_one_line(tmp_path, keyfile):
    r = run(["mask", str(tmp_path / "nope.ndjson"), "-P", str(EXAMPLES / "logs.yaml"), "-s", "applogs",
             "-o", str(tmp_path / "o"), "--keys", str(keyfile)])  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {tmp_path / 'nope.ndjson'}: no such file"


def test_explain_shows_what_a_role_sees():
    r = run(["policy", "explain", str(EXAMPLES / "payments.yaml"), "-s", "payments", "-r", "ops"])
    assert r.returncode == 0, r.stderr
    assert "customer.email" in r.stdout and "keep *" in r.stdout
    assert "**** **** **** 1111" in r.stdout


def test_schema_is_json_schema():
    r = run(["policy", "schema"])
    schema = json.loads(r.stdout)
    assert schema["title"] == "Policy" and "streams" in schema["properties"]


def test_generate_is_deterministic_and_fast(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for p in (a, b):
        r = run(
            [
                "generate",
                "--profile",
                "iot",
                "-n",
                "2000",
                "--seed",
                "9",
                "--format",
                "csv",
                "-o",
                str(p),
            ]
        )
        assert r.returncode == 0, r.stderr
    assert a.read_bytes() == b.read_bytes()
    assert len(a.read_bytes().splitlines()) == 2001


CASES = [
    ("payments", "payments.yaml", "payments", "ndjson", None),
    ("payments", "payments.yaml", "payments_csv", "csv", None),
    ("iot", "iot.yaml", "telemetry", "ndjson", "ops"),
    ("iot", "iot.yaml", "telemetry_csv", "csv", None),
    ("logs", "logs.yaml", "applogs", "ndjson", "sre"),
]


@pytest.mark.integration
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("profile", "pol_file", "stream", "fmt", "role"), CASES, ids=[c[2] for c in CASES]
)
def test_cli_masks_generated_traffic_on_ray(
    ray_session, tmp_path, keyfile, workers, profile, pol_file, stream, fmt, role
):
    from raymask.policy.keys import Keyring

    inp = generate_bytes(profile, 20_000, seed=21, fmt=fmt)
    src = tmp_path / f"in.{fmt}"
    src.write_bytes(inp)
    dst = tmp_path / f"out.{fmt}"
    args = ["mask", str(src), "-P", str(EXAMPLES / pol_file), "-s", stream, "-o", str(dst),
            "--workers", str(workers), "--keys", str(keyfile)]  # fmt: skip
    if role:
        args += ["--role", role]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "in = out + dead" in result.output and "yes" in result.output
    ring = Keyring.from_file(keyfile)
    check_output(inp, dst.read_bytes(), load_policy(EXAMPLES / pol_file), stream, role, ring, set())


@pytest.mark.integration
def test_canary_values_never_reach_any_output_channel(ray_session, tmp_path, keyfile):
    """A bad record carries canaries; they must not appear on stdout, stderr, the dead-letter
    file, the masked output or the Ray session's logs."""
    canaries = ["CANARY7731CARD", "canary.person@leak.example", "CANARY-NAME-Q"]
    lines = generate_bytes("payments", 500, seed=2).decode().splitlines()
    rec = json.loads(lines[7])
    rec["card"]["number"] = canaries[0]  # refused by the card preset -> dead letter
    rec["customer"]["email"] = canaries[1]
    rec["customer"]["name"] = canaries[2]
    lines[7] = json.dumps(rec)
    lines[8] = lines[8][:30] + canaries[0]  # malformed, with a canary inside
    rec = json.loads(lines[9])
    rec["customer"]["name"] = canaries[2]  # a good record: the name is redacted
    lines[9] = json.dumps(rec)
    src = tmp_path / "in.ndjson"
    src.write_text("\n".join(lines) + "\n")
    dst = tmp_path / "out.ndjson"
    result = CliRunner().invoke(app, ["mask", str(src), "-P", str(EXAMPLES / "payments.yaml"), "-s", "payments",
                                      "-o", str(dst), "--keys", str(keyfile)], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0
    assert "dead letters" in result.output
    channels = {"output": result.output, "masked": dst.read_text(),
                "dead letters": (tmp_path / "out.ndjson.deadletters.ndjson").read_text()}  # fmt: skip
    session = Path(ray_session._private.worker._global_node.get_session_dir_path())
    for f in (session / "logs").glob("*"):
        if f.is_file() and f.stat().st_size < 50_000_000:
            channels[f"ray log {f.name}"] = f.read_text(errors="replace")
    for name, text in channels.items():
        for c in canaries:
            assert c not in text, f"canary leaked into {name}"


@pytest.mark.integration
def test_stdin_to_stdout(ray_session, tmp_path, keyfile):
    inp = generate_bytes("logs", 300, seed=4)
    result = CliRunner().invoke(
        app, ["mask", "-", "-P", str(EXAMPLES / "logs.yaml"), "-s", "applogs", "-o", "-", "--keys", str(keyfile), "-q"],
        input=inp, catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0
    outs = [json.loads(x) for x in result.stdout.splitlines()]
    assert len(outs) == 300 and all(o["message"] == "[REDACTED]" for o in outs)


def test_usage_errors_exit_2_without_a_traceback(tmp_path):
    r = run(["mask", "x.ndjson", "--no-such-option"])
    assert r.returncode == 2 and "No such option" in r.stderr and "Traceback" not in r.stderr


def test_reveal_and_keys_commands(tmp_path, keyfile):
    from raymask.cluster.pipeline import mask_file
    from raymask.policy.keys import Keyring

    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", 20, seed=8))
    dst = tmp_path / "out.ndjson"
    mask_file(
        EXAMPLES / "payments.yaml",
        "payments",
        src,
        dst,
        role="fraud",
        keyring=Keyring.from_file(keyfile),
        local=True,
    )
    masked = [json.loads(x)["card"]["number"] for x in dst.read_text().splitlines()]
    clear = [json.loads(x)["card"]["number"] for x in src.read_text().splitlines()]
    args = [
        "reveal",
        "-P",
        str(EXAMPLES / "payments.yaml"),
        "-s",
        "payments",
        "-f",
        "card.number",
        "-r",
        "fraud",
        "--keys",
        str(keyfile),
    ]
    r = subprocess.run(
        RAYMASK + args,
        input="\n".join(masked) + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == clear
    r = run(args[:-2] + ["--keys", str(keyfile), "not a card"])
    assert (
        r.returncode == 1
        and r.stderr.strip()
        == "value 1: too few characters of the alphabet for format-preserving encryption (domain < 1,000,000)"
    )
    r = run(
        [
            "reveal",
            "-P",
            str(EXAMPLES / "payments.yaml"),
            "-s",
            "payments",
            "-f",
            "account.id",
            "--keys",
            str(keyfile),
            "acc_x",
        ]
    )
    assert r.returncode == 2 and "cannot be reversed" in r.stderr
    # keys: rotate and list, never the material
    assert run(["keys", "rotate", str(keyfile), "--id", "tok"]).returncode == 0
    r = run(["keys", "list", str(keyfile)])
    assert "v1, v2" in r.stdout
    material = json.loads(keyfile.read_text())["keys"][0]["material"]
    assert material[7:20] not in r.stdout


@pytest.mark.parametrize(
    "bounds, says",
    [("8", "MIN:MAX"), ("a:b", "MIN:MAX"), ("5:2", "min_workers 5 > max_workers 2"),
     ("0:4", "greater than or equal to 1")],
)  # fmt: skip
def test_bad_autoscale_bounds_are_one_line_errors(bounds, says):
    r = run(["run", "-P", str(EXAMPLES / "payments.yaml"), "-s", "payments", "--input-topic", "t",
             "--bootstrap-servers", "127.0.0.1:1", "--autoscale", bounds])  # fmt: skip
    assert r.returncode != 0 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
