"""HTTP ingress: the request logic without Ray (IngressCore with the real masking core in
process), then the Serve application on a loopback port with real MaskWorker actors."""

from __future__ import annotations

import asyncio
import json
import socket

import numpy as np
import pytest

from raymask.actors.router import RouterCore
from raymask.actors.worker import MaskCore
from raymask.cluster.serve_app import IngressCore, Request, masked_from, route_here
from raymask.kernels.codecs.formats import format_for
from raymask.loadtest.traffic import generate_bytes
from raymask.policy.compile import compile_stream
from raymask.policy.loader import load_policy
from tests.cluster.test_pipeline_local import check_output
from tests.conftest import EXAMPLES

POLICY = load_policy(EXAMPLES / "payments.yaml")


def _local_core(keyring, max_body_bytes: int = 1 << 20) -> IngressCore:  # noqa: ANN001
    cores, routers = {}, {}

    async def mask(stream, view, data):  # noqa: ANN001
        if stream not in cores:
            cores[stream] = MaskCore(POLICY, stream, keyring, format_for("ndjson"))
            routers[stream] = RouterCore(compile_stream(POLICY, stream), format_for("ndjson"), 1)
        routed = routers[stream].route(data, 0)
        rows = routed.shards[0]
        outs = (
            []
            if rows is None
            else cores[stream].process_views(routed.batch, [view or "default"], rows)
        )
        return masked_from(routed, outs)

    return IngressCore(POLICY, mask, max_body_bytes)


def test_requests_are_checked_before_anything_is_masked(keyring):
    core = _local_core(keyring, max_body_bytes=100)
    assert core.parse("nope", None, b"{}\n", None).status == 404
    assert core.parse("payments", "nobody-such", b"{}\n", None).status == 404
    assert core.parse("payments", None, b"x" * 101, None).status == 413
    assert core.parse("payments", None, b"{}", "text/csv").status == 415
    bad = core.parse("payments", None, b'[{"a": 1},, {"b": 2}]', "application/json")
    assert bad.status == 400
    assert json.loads(bad.body) == {"error": "an empty element in the JSON array (at byte 10)"}
    ok = core.parse("payments", "ops", b'{"a":1}\n{"b":2}', "application/x-ndjson; charset=utf-8")
    assert isinstance(ok, Request) and ok.records == 2 and not ok.array


def test_a_batch_of_callers_gets_each_its_own_records_masked_as_the_reference(keyring):
    core = _local_core(keyring)
    data = generate_bytes("payments", 300, seed=5)
    lines = data.splitlines(keepends=True)
    a, b, c = b"".join(lines[:100]), lines[100:200], b"".join(lines[200:])
    b_bad = list(b)
    b_bad[7] = b'{"account": {"id": "acc-1"}, "amount": canary-4111}\n'  # not JSON, but balanced
    arr = b"[\n" + b",\n".join(x.rstrip(b"\n") for x in b_bad) + b"\n]"
    reqs = [
        core.parse("payments", "ops", a, "application/x-ndjson"),
        core.parse("payments", "ops", arr, "application/json"),
        core.parse("payments", None, c, None),
    ]
    ans = asyncio.run(core.answer(reqs))
    assert [x.status for x in ans] == [200, 200, 200]
    check_output(a, ans[0].body, POLICY, "payments", "ops", keyring, set())
    assert ans[0].headers["raymask-records"] == "100" and "raymask-errors" not in ans[0].headers
    # the array: 99 records back as an array, the broken one listed by its index
    got = json.loads(ans[1].body)
    assert len(got) == 99 and ans[1].media_type == "application/json"
    errs = json.loads(ans[1].headers["raymask-errors"])
    assert [e["index"] for e in errs] == [7] and "canary" not in ans[1].headers["raymask-errors"]
    good = b"".join(x for i, x in enumerate(b) if i != 7)
    out = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in got)
    check_output(good, out, POLICY, "payments", "ops", keyring, set())
    check_output(c, ans[2].body, POLICY, "payments", None, keyring, set())


# ------------------------------------------------------------------------- through Ray Serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


AGG_LINES = [
    {"aggregate": "spend", "window_start": "2026-11-23T08:00:00.000Z", "group": "EUR", "count": 5},
    {"aggregate": "spend", "window_start": "2026-11-23T08:01:00.000Z", "group": "EUR", "count": 7},
    {"aggregate": "spend", "window_start": "2026-11-23T08:01:00.000Z", "group": "USD", "count": 9},
    {"continual": "so_far", "step_start": "2026-11-23T08:00:00.000Z", "value": 3.0},
    {"continual": "so_far", "step_start": "2026-11-23T08:01:00.000Z", "value": 8.0},
]


def _broken_body(n: int, seed: int) -> bytes:
    """Payments records with every kind of bad record a router or a masking core catches."""
    lines = generate_bytes("payments", n, seed=seed).decode().splitlines()
    for i in range(5, n, 37):
        rec = json.loads(lines[i])
        rec["card"]["number"] = "1234"  # a technique refuses it
        lines[i] = json.dumps(rec)
    for i in range(3, n, 41):
        lines[i] = lines[i][:40]  # truncated before the key
    for i in range(11, n, 43):
        lines[i] = lines[i].replace('"account":{"id":', '"account":{"ref":')  # no key
    for i in range(17, n, 47):
        lines[i] = lines[i].replace('"account":{"id":', '"account":{"id":[1],"old":')  # not a key
    for i in range(19, n, 53):
        lines[i] = (
            lines[i].replace('"account":{"id":', '"account":{"id":{"x":1},"old":')[:-1] + ",}"
        )
    for i in range(29, n, 31):
        lines[i] = lines[i][:-1] + ',"x":}'  # broken after the key
    for i in range(7, n, 59):
        lines.insert(i, "  ")  # a blank line is not a record
    return "\n".join(lines).encode() + b"\n"


@pytest.mark.parametrize("view", ["default", "fraud", "research"])
def test_a_stream_masked_in_the_replica_is_split_not_routed_and_answers_as_if_routed(keyring, view):
    fmt = format_for("ndjson")
    core = MaskCore(POLICY, "payments", keyring, fmt)
    router = RouterCore(compile_stream(POLICY, "payments"), fmt, 1)
    data = np.frombuffer(_broken_body(400, seed=21), np.uint8)
    routed = router.route(data, 0)
    want = masked_from(routed, core.process_views(routed.batch, [view], routed.shards[0]))
    here, check_key = route_here(router, data)
    assert check_key and here.dead == [] and here.records == routed.records
    got = masked_from(here, core.process_views(here.batch, [view], here.shards[0], check_key))
    assert got.records.to_pylist() == want.records.to_pylist()
    assert got.lines.tolist() == want.lines.tolist()
    dead = sorted(zip(got.dead_lines.tolist(), got.dead_reasons, strict=True))
    assert dead == sorted(zip(want.dead_lines.tolist(), want.dead_reasons, strict=True))
    assert len(dead) > 40 and {r.split(":")[0] for _, r in dead} >= {
        "key field account.id", "field card.number"
    }  # fmt: skip
    # an empty body and a body of blank lines: nothing to mask either way
    for empty in (b"", b"\n \n"):
        e, _ = route_here(router, np.frombuffer(empty, np.uint8))
        assert e.records == 0 and e.shards == [None]


def test_latest_releases_keeps_each_aggregates_newest_window(tmp_path):
    from raymask.cluster.serve_app import latest_releases

    p = tmp_path / "agg.ndjson"
    p.write_text("".join(json.dumps(r) + "\n" for r in AGG_LINES) + '{"aggregate": "sp')
    got = latest_releases(str(p))
    assert got == {"so_far": [AGG_LINES[4]], "spend": AGG_LINES[1:3]}
    assert latest_releases(str(tmp_path / "none")) == {}


@pytest.fixture(scope="module")
def served(ray_session, tmp_path_factory):
    from ray import serve

    from raymask.cluster.serve_app import build_app
    from raymask.policy.keys import Key, Keyring

    ring = Keyring([Key(k, 1, k[0].encode() * 32) for k in
                    ("tok", "fpe", "sealed", "shift", "deadletter", "ledger")])  # fmt: skip
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    agg = tmp_path_factory.mktemp("agg") / "agg.ndjson"
    agg.write_text("".join(json.dumps(r) + "\n" for r in AGG_LINES))
    serve.run(build_app(POLICY, ring, workers=2, app="t-serve", max_body_bytes=1 << 20,
                        aggregates_file=str(agg)), name="t-serve", route_prefix="/")  # fmt: skip
    yield f"http://127.0.0.1:{port}", ring
    serve.delete("t-serve")
    serve.shutdown()
    import ray

    for i in range(2):  # the app's detached workers
        for stream in POLICY.streams:
            try:
                ray.kill(ray.get_actor(f"sworker:t-serve:{stream}:{i}", namespace="raymask"))
            except ValueError:
                pass


@pytest.mark.integration
def test_serve_masks_ndjson_and_arrays_from_concurrent_callers(served):
    from concurrent.futures import ThreadPoolExecutor

    import requests

    url, ring = served
    data = generate_bytes("payments", 2000, seed=9)
    lines = data.splitlines(keepends=True)
    bodies = [b"".join(lines[i : i + 100]) for i in range(0, 2000, 100)]

    def post(i: int):
        if i % 2:
            arr = b"[" + b",".join(x.rstrip(b"\n") for x in lines[i * 100 : i * 100 + 100]) + b"]"
            return requests.post(f"{url}/v1/streams/payments/mask?view=ops", data=arr,
                                 headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
        return requests.post(f"{url}/v1/streams/payments/mask?view=ops", data=bodies[i],
                             headers={"content-type": "application/x-ndjson"}, timeout=60)  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        res = list(pool.map(post, range(20)))
    for i, r in enumerate(res):
        assert r.status_code == 200, r.text
        assert r.headers["raymask-records"] == "100" and r.headers["raymask-error-count"] == "0"
        timing = dict(t.strip().split(";dur=") for t in r.headers["server-timing"].split(","))
        assert set(timing) == {"body", "mask", "cpu"} and all(
            float(v) >= 0 for v in timing.values()
        )
        out = r.content
        if i % 2:
            out = b"".join(json.dumps(x, ensure_ascii=False).encode() + b"\n" for x in r.json())
        check_output(bodies[i], out, POLICY, "payments", "ops", ring, set())


@pytest.mark.integration
def test_serve_answers_errors_in_one_line_and_documents_itself(served):
    import requests

    url, _ = served
    assert requests.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
    got = requests.get(f"{url}/v1/streams/payments/aggregates", timeout=30).json()
    assert got == {"so_far": [AGG_LINES[4]], "spend": AGG_LINES[1:3]}
    assert requests.get(f"{url}/v1/streams/nope/aggregates", timeout=30).status_code == 404
    spec = requests.get(f"{url}/openapi.json", timeout=30).json()
    assert "/v1/streams/{stream}/mask" in spec["paths"]
    r = requests.post(f"{url}/v1/streams/nope/mask", data=b"{}\n", timeout=30)
    assert r.status_code == 404 and r.json() == {"error": "no stream nope here"}
    r = requests.post(f"{url}/v1/streams/payments/mask", data=b"x" * (2 << 20), timeout=30)
    assert r.status_code == 413
    r = requests.post(f"{url}/v1/streams/payments/mask", data=b"[1,", timeout=30,
                      headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and "Traceback" not in r.text
    body = generate_bytes("payments", 1, seed=2) + b'{"card": {"number": "canary-5555"}, "x\n'
    r = requests.post(f"{url}/v1/streams/payments/mask", data=body, timeout=30)
    assert r.status_code == 200 and "canary" not in json.dumps(dict(r.headers))
    assert r.headers["raymask-error-count"] == "1"
    assert [e["index"] for e in json.loads(r.headers["raymask-errors"])] == [1]
    np.testing.assert_equal(len(r.content.splitlines()), 1)


def test_the_serve_config_file_is_valid_and_its_builder_resolves(monkeypatch, tmp_path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from raymask.cluster.serve_app import app_builder
    from raymask.policy.keys import generate_key_file
    from tests.conftest import REPO as ROOT

    doc = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
    cfg = ServeDeploySchema.model_validate(doc)
    (a,) = cfg.applications
    assert a.import_path == "raymask.cluster.serve_app:app_builder"
    keys = generate_key_file(tmp_path / "k.json", ["tok", "fpe", "sealed", "shift", "deadletter"])
    monkeypatch.setenv("RAYMASK_KEYRING", str(keys))
    app = app_builder({**a.args, "policy": str(ROOT / a.args["policy"])})
    assert type(app).__name__ == "Application"


@pytest.mark.integration
def test_a_stream_with_budgets_goes_to_the_key_sharded_workers_whose_ledger_spans_requests(
    served, tmp_path
):
    """telemetry_dp spends 2 epsilon of a device's 50 a day per record: over two requests of 20
    records of one device, the first 25 leave noised and the rest suppressed, because the same
    worker (the device's shard) keeps the ledger between requests."""
    import requests
    from ray import serve

    from raymask.cluster.serve_app import build_app

    _, ring = served
    iot = load_policy(EXAMPLES / "iot.yaml")
    port = int(served[0].rsplit(":", 1)[1])
    serve.run(build_app(iot, ring, workers=2, app="t-iot", state=str(tmp_path / "state")),
              name="t-iot", route_prefix="/iot")  # fmt: skip
    try:
        rec = json.loads(generate_bytes("iot", 1, seed=4))
        body = b"".join(
            json.dumps({**rec, "seq": i}).encode() + b"\n" for i in range(20)
        )  # fmt: skip
        noised = suppressed = 0
        for _ in range(2):
            r = requests.post(f"http://127.0.0.1:{port}/iot/v1/streams/telemetry_dp/mask",
                              data=body, timeout=60)  # fmt: skip
            assert r.status_code == 200 and r.headers["raymask-records"] == "20", r.text
            for line in r.content.splitlines():
                t = json.loads(line)["temperature_c"]
                noised += t is not None
                suppressed += t is None
        assert (noised, suppressed) == (25, 15)
    finally:
        serve.delete("t-iot")
        import ray

        for i in range(2):
            for stream in iot.streams:
                try:
                    ray.kill(ray.get_actor(f"sworker:t-iot:{stream}:{i}", namespace="raymask"))
                except ValueError:
                    pass


def test_authorize_answers_401_and_403_and_audits_the_denials(keyring, tmp_path):
    from raymask.policy.access import AccessFile, Authenticator

    f = AccessFile.load(tmp_path / "access.json")
    ops = f.add("olga", ["ops"])
    denials = []
    core = _local_core(keyring)
    core.auth = Authenticator(f)
    core.audit = lambda kind, **kw: denials.append((kind, kw))
    assert core.authorize({"x-api-key": ops}, "payments", "ops") == "ops"
    assert core.authorize({}, "payments", "ops").status == 401
    a = core.authorize({"x-api-key": ops}, "payments", "support")
    b = core.authorize({"x-api-key": ops}, "no-such-stream", "support")
    assert a.status == b.status == 403
    assert json.loads(b.body)["error"] == "not allowed: stream no-such-stream, view support"
    assert [k for k, _ in denials] == ["access_denied"] * 3
    assert denials[0][1] == {
        "caller": "unknown",
        "stream": "payments",
        "view": "ops",
        "status": 401,
    }
    assert denials[1][1]["caller"] == "olga" and ops not in json.dumps(denials)


@pytest.mark.integration
def test_serve_with_api_keys_enforces_roles(served, tmp_path):
    import requests
    from ray import serve

    from raymask.cluster.serve_app import build_app
    from raymask.policy.access import AccessFile

    url, ring = served
    f = AccessFile.load(tmp_path / "access.json")
    ops = f.add("olga", ["ops"])
    f.save()
    serve.run(build_app(POLICY, ring, app="t-auth", access={"api_keys": str(f.path)}),
              name="t-auth", route_prefix="/auth")  # fmt: skip
    try:
        body = generate_bytes("payments", 3, seed=1)
        post = lambda q, h: requests.post(f"{url}/auth/v1/streams/{q}", data=body, headers=h,  # noqa: E731
                                          timeout=30)  # fmt: skip
        assert post("payments/mask?view=ops", {}).status_code == 401
        assert post("payments/mask?view=support", {"x-api-key": ops}).status_code == 403
        assert post("nope/mask?view=ops", {"x-api-key": ops}).status_code == 403
        r = post("payments/mask?view=ops", {"x-api-key": ops})
        assert r.status_code == 200 and r.headers["raymask-records"] == "3"
        f.revoke(ops.split("_")[1])
        f.save()
        import os
        import time

        os.utime(f.path, (time.time() + 5, time.time() + 5))
        assert post("payments/mask?view=ops", {"x-api-key": ops}).status_code == 401
    finally:
        serve.delete("t-auth")
    # mTLS behind a terminator: the identity in its header, listed in the access file
    f.add_identity("spiffe://acme/sa/svc-a", "svc-a", ["support"])
    f.save()
    serve.run(build_app(POLICY, ring, app="t-mtls", access={"api_keys": str(f.path),
                                                            "mtls": {"format": "xfcc"}}),
              name="t-mtls", route_prefix="/mtls")  # fmt: skip
    try:
        xfcc = {"x-forwarded-client-cert": 'Hash=1;URI=spiffe://acme/sa/svc-a;Subject="CN=a"'}
        r = requests.post(f"{url}/mtls/v1/streams/payments/mask?view=support", data=body,
                          headers=xfcc, timeout=30)  # fmt: skip
        assert r.status_code == 200 and r.headers["raymask-records"] == "3"
        r = requests.post(f"{url}/mtls/v1/streams/payments/mask?view=ops", data=body,
                          headers=xfcc, timeout=30)  # fmt: skip
        assert r.status_code == 403
        stranger = {"x-forwarded-client-cert": "Hash=1;URI=spiffe://acme/sa/other"}
        r = requests.post(f"{url}/mtls/v1/streams/payments/mask?view=support", data=body,
                          headers=stranger, timeout=30)  # fmt: skip
        assert r.status_code == 401
    finally:
        serve.delete("t-mtls")


def test_cli_access_add_list_revoke(tmp_path):
    from typer.testing import CliRunner

    from raymask.cluster.cli import app
    from raymask.policy.access import AccessFile

    p = tmp_path / "access.json"
    r = CliRunner().invoke(
        app, ["access", "add", str(p), "--name", "alice", "--roles", "ops,support"]
    )
    assert r.exit_code == 0, r.output
    key = r.stdout.strip().splitlines()[-1]
    assert AccessFile.load(p).check(key).name == "alice"
    r = CliRunner().invoke(app, ["access", "list", str(p)])
    assert "alice" in r.output and "active" in r.output and key.split("_", 2)[2] not in r.output
    r = CliRunner().invoke(app, ["access", "revoke", str(p), "--id", key.split("_")[1]])
    assert r.exit_code == 0 and AccessFile.load(p).check(key) is None
    r = CliRunner().invoke(app, ["access", "add-identity", str(p), "--identity",
                                 "spiffe://acme/sa/svc-a", "--name", "svc-a", "--roles", "ops"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert AccessFile.load(p).check_identity(["spiffe://acme/sa/svc-a"]).name == "svc-a"
    r = CliRunner().invoke(app, ["access", "list", str(p)])
    assert "spiffe://acme/sa/svc-a" in r.output and "svc-a" in r.output
    r = CliRunner().invoke(app, ["access", "remove-identity", str(p), "--identity",
                                 "spiffe://acme/sa/svc-a"])  # fmt: skip
    assert r.exit_code == 0 and AccessFile.load(p).identities == []


def test_reveal_needs_the_role_a_reason_and_the_rate_and_is_audited(keyring, tmp_path):
    from raymask.policy.access import AccessFile, Authenticator

    f = AccessFile.load(tmp_path / "access.json")
    lead = f.add("lena", ["fraud", "fraud-lead"])
    analyst = f.add("anna", ["fraud"])
    events = []
    core = _local_core(keyring)
    core.auth = Authenticator(f)
    core.audit = lambda kind, **kw: events.append((kind, kw))
    from raymask.cluster.serve_app import RateLimiter

    core.limiter = RateLimiter(clock=lambda: 0.0)  # time stands still: no refill
    data = generate_bytes("payments", 5, seed=3)
    req = core.parse("payments", "fraud", data, None)
    (ans,) = asyncio.run(core.answer([req]))
    masked = [json.loads(x) for x in ans.body.splitlines()]
    clear = [json.loads(x)["card"]["number"] for x in data.splitlines()]
    body = json.dumps({"field": "card.number", "values": [m["card"]["number"] for m in masked],
                       "reason": "chargeback 42",
                       "record_keys": [m["account"]["id"] for m in masked]}).encode()  # fmt: skip
    r = core.reveal({"x-api-key": lead}, "payments", "fraud", body, keyring)
    assert r.status == 200 and json.loads(r.body)["values"] == clear
    kind, rec = events[-1]
    assert kind == "reveal" and rec["caller"] == "lena" and rec["reason"] == "chargeback 42"
    assert rec["record_keys"].startswith("acc_") and not any(c in json.dumps(events) for c in clear)
    assert core.reveal({"x-api-key": analyst}, "payments", "fraud", body, keyring).status == 403
    assert events[-1][0] == "reveal_denied"
    no_reason = json.dumps({"field": "card.number", "values": ["1"], "reason": " "}).encode()
    assert core.reveal({"x-api-key": lead}, "payments", "fraud", no_reason, keyring).status == 400
    assert core.reveal({}, "payments", "fraud", body, keyring).status == 401
    # 60 values a minute: 5 went, 11 more times 5 is 60 > 55 left -> the 12th call is refused
    codes = [core.reveal({"x-api-key": lead}, "payments", "fraud", body, keyring).status
             for _ in range(11)]  # fmt: skip
    assert codes == [200] * 11
    assert core.reveal({"x-api-key": lead}, "payments", "fraud", body, keyring).status == 429
    assert events[-1][0] == "reveal_limited"


@pytest.mark.integration
def test_segregated_fields_over_http_go_to_the_vault_before_the_answer(served, tmp_path):
    """With a vault folder, a stream that segregates is served: the answer carries references,
    and every reference it carries opens from the vault right after the answer."""
    import pyarrow as pa
    import requests
    from ray import serve

    from raymask.cluster.reveal import reveal_vault
    from raymask.cluster.serve_app import build_app
    from raymask.policy.keys import Key
    from raymask.policy.loader import parse_policy
    from tests.cluster.test_segregate import POLICY as SEGREGATE_POLICY

    url, ring = served
    ring.add(Key("vault", 1, b"v" * 64))
    # the segregate test's policy, with a role that may reveal
    reveal = "    reveal: {roles: [fraud-lead], per_minute: 1000}\n"
    pol = parse_policy(SEGREGATE_POLICY + reveal, "seg.yaml")
    body = generate_bytes("payments", 50, seed=12)
    names = [json.loads(x)["customer"]["name"] for x in body.splitlines()]
    # without a vault the stream is not served at all
    serve.run(build_app(pol, ring, app="t-novault"), name="t-novault", route_prefix="/novault")
    try:
        r = requests.post(f"{url}/novault/v1/streams/payments/mask", data=body, timeout=30)
        assert r.status_code == 404
    finally:
        serve.delete("t-novault")
    from raymask.policy.access import AccessFile

    f = AccessFile.load(tmp_path / "access.json")
    lead = {"x-api-key": f.add("lena", ["default", "fraud-lead"])}
    clerk = {"x-api-key": f.add("carl", ["default"])}
    f.save()
    vault = tmp_path / "vault"
    serve.run(build_app(pol, ring, app="t-vault", vault=str(vault),
                        access={"api_keys": str(f.path)}),
              name="t-vault", route_prefix="/vault")  # fmt: skip
    try:
        r = requests.post(f"{url}/vault/v1/streams/payments/mask", data=body, headers=clerk,
                          timeout=30)  # fmt: skip
        assert r.status_code == 200 and r.headers["raymask-records"] == "50"
        refs = [json.loads(x)["customer"]["name"] for x in r.content.splitlines()]
        assert all(x is None or x.startswith("vault:") for x in refs)
        assert not any(n in r.text for n in names if n)
        got = reveal_vault(vault, pa.array(refs), "customer.name", ring, "vault")
        assert got.values == names
        assert not list(vault.glob(".*.tmp"))
        # reveal over HTTP reads the same vault, for a caller with the reveal role only
        ask = {"field": "customer.name", "values": refs, "reason": "dispute 7"}
        r = requests.post(f"{url}/vault/v1/streams/payments/reveal", json=ask, headers=lead,
                          timeout=30)  # fmt: skip
        assert r.status_code == 200 and r.json()["values"] == names
        r = requests.post(f"{url}/vault/v1/streams/payments/reveal", json=ask, headers=clerk,
                          timeout=30)  # fmt: skip
        assert r.status_code == 403
    finally:
        serve.delete("t-vault")
