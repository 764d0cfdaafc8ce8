"""`make demo`: generate traffic per profile, mask it on a local Ray, show before and after."""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from raymask.errors import InputError

__all__ = ["run_demo", "examples_dir"]

DEMO_KEYS = Path(".raymask/demo-keys.json")
DEMO_KEY_IDS = ["tok", "fpe", "sealed", "shift", "deadletter", "ledger"]

# (profile, policy file, stream, format, role shown)
RUNS = [
    ("payments", "payments.yaml", "payments", "ndjson", None),
    ("payments", "payments.yaml", "payments", "ndjson", "fraud"),
    ("iot", "iot.yaml", "telemetry_csv", "csv", None),
    ("iot", "iot.yaml", "telemetry_dp", "ndjson", None),  # local DP with per-device budgets
    ("logs", "logs.yaml", "applogs", "ndjson", None),
]

# records the demo breaks on purpose, to show dead letters: (line, what)
BROKEN = [
    (11, lambda line: line[: len(line) // 2]),  # truncated JSON
    (23, lambda line: line.replace('"account":{"id":', '"account":{"ref":')),  # no key field
    (37, lambda line: _replace_card(line)),  # a card number with too few digits
]


def _replace_card(line: str) -> str:
    rec = json.loads(line)
    rec["card"]["number"] = "4111 11"
    return json.dumps(rec, ensure_ascii=False, separators=(",", ":"))


def examples_dir() -> Path:
    here = Path(__file__).resolve().parents[1] / "examples" / "policies"
    if here.is_dir():
        return here
    cwd = Path("examples/policies")
    if cwd.is_dir():
        return cwd
    raise InputError("example policies not found; run the demo from a raymask checkout")


def _get(rec: dict, path: str):
    cur = rec
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return "(absent)"
        cur = cur[part]
    return cur


def _records(path: Path, fmt: str, count: int) -> list[dict]:
    out: list[dict] = []
    with open(path, encoding="utf-8") as f:
        if fmt == "csv":
            for i, row in enumerate(csv.DictReader(f)):
                if i >= count:
                    break
                out.append(row)
        else:
            for line in f:
                if len(out) >= count:
                    break
                out.append(json.loads(line))
    return out


def _flat(rec: dict, path: str, fmt: str):
    return rec.get(path, "(absent)") if fmt == "csv" else _get(rec, path)


def _side_by_side(
    console: Console, before: Path, after: Path, fmt: str, fields: dict[str, str], title: str
) -> None:
    b = _records(before, fmt, 1)
    a = _records(after, fmt, 1)
    table = Table(title=title, show_lines=True)
    table.add_column("field")
    table.add_column("technique")
    for _ in b:
        table.add_column("before", overflow="fold")
        table.add_column("after", overflow="fold", style="green")
    for path, tech in fields.items():
        row = [path, tech]
        for rb, ra in zip(b, a, strict=False):
            row += [str(_flat(rb, path, fmt)), str(_flat(ra, path, fmt))]
        table.add_row(*row)
    console.print(table)


def _kafka_part(console: Console, n: int, workers: int, ring) -> None:
    """Generated payments traffic through the embedded Kafka broker, one topic per view."""
    import json

    from raymask.cluster.broker import Broker
    from raymask.cluster.cli import print_kafka_summary, progress_bar
    from raymask.cluster.kafka_pipeline import run_kafka
    from raymask.loadtest.kafka_traffic import produce_traffic, read_topic

    console.rule("[bold]Kafka[/]: topic payments -> one masked topic per view")
    with Broker() as broker:
        bs = broker.bootstrap
        t0 = time.perf_counter()
        produce_traffic(bs, "payments", "payments", n, key_path="account.id", partitions=3, seed=7)
        console.print(
            f"embedded Kafka broker (tansu) at {bs}; produced {n:,} payments records to topic "
            f"payments, 3 partitions, partitioned by account.id ({time.perf_counter() - t0:.1f} s)"
        )
        roles = ["ops", "fraud", "support", "research"]
        with progress_bar(console, "masking") as prog:
            task = prog.add_task("masking topic payments", total=n, records=0, rate=0.0)

            def update(s) -> None:
                prog.update(task, completed=min(s.records_in, n), records=s.records_in,
                            rate=s.records_per_second)  # fmt: skip

            summary = run_kafka(
                examples_dir() / "payments.yaml", "payments", "payments", bootstrap=bs,
                keyring=ring, roles=roles, workers=workers, idle_s=2, progress=update,
                consumer_options={"session_timeout_ms": 2000, "heartbeat_interval_ms": 300},
            )  # fmt: skip
        print_kafka_summary(console, summary)
        console.print(
            "(produce -> written includes the seconds the records waited in the topic while the "
            "actors started; `make bench` measures latency at a steady offered rate)"
        )
        first = {  # the first record of partition 0, as each view's topic has it
            r: min(
                read_topic(bs, summary.topics[r], 3, expect=1, idle_s=2, only=0),
                key=lambda m: m.offset,
            )
            for r in roles
        }
        src = int(first[roles[0]].headers["raymask.src.offset"])
        table = Table(
            title=f"one record (partition {first[roles[0]].partition}, source offset {src}) in each view's topic"
        )
        table.add_column("field")
        for r in roles:
            table.add_column(summary.topics[r], overflow="fold")
        recs = {r: json.loads(m.value) for r, m in first.items()}
        for path in [
            "account.id",
            "card.number",
            "customer.email",
            "customer.name",
            "amount",
            "ts",
        ]:
            table.add_row(path, *[str(_get(recs[r], path)) for r in roles])
        console.print(table)


def _aggregate_part(console: Console, out_dir: Path, ring) -> None:  # noqa: ANN001
    """Central DP: the payments policy's windowed aggregate, charged to a fresh accountant."""
    from raymask.actors.accountant import Accountant
    from raymask.cluster.aggregate import aggregate_file
    from raymask.policy.loader import load_policy

    console.rule(
        "[bold]payments -> DP aggregates spend_by_currency, top_merchants, payments_so_far (central DP)"
    )
    db = out_dir / "state" / "accountant.sqlite"
    acc = Accountant(db)
    acc.set_budget("stream:payments", {"epsilon": 20.0, "delta": 1e-4, "accounting": "basic"})
    acc.close()
    out = out_dir / "payments.spend_by_currency.ndjson"
    pol = load_policy(examples_dir() / "payments.yaml")
    s = aggregate_file(pol, "payments", out_dir / "payments.ndjson", out, keyring=ring, db=db)
    console.print(
        f"{s.records_in:,} events -> {sum(s.windows.values())} windows released "
        f"({sum(s.refused.values())} refused by the allowance of epsilon 20), "
        f"{sum(s.groups.values())} group rows, epsilon {sum(s.epsilon.values()):g} spent; "
        f"{s.dead_letters} dead letters (records it could not use) -> {out}"
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    table = Table(title="spend_by_currency: the first released windows (all figures noisy)")
    for col in ("window", "currency", "payments", "total amount", "median", "p90"):
        table.add_column(col, justify="left" if col in ("window", "currency") else "right")
    for r in [r for r in rows if r.get("aggregate") == "spend_by_currency"][:6]:
        med, p90 = r["quantiles_amount"]
        table.add_row(f"{r['window_start'][11:16]}-{r['window_end'][11:16]}", r["group"],
                      f"{r['count']:,}", f"{r['sum_amount']:,.0f}", f"{med:,.2f}",
                      f"{p90:,.2f}")  # fmt: skip
    console.print(table)
    for r in [r for r in rows if r.get("aggregate") == "top_merchants"][:3]:
        top = ", ".join(f"{d['value']} ({d['count']})" for d in r["top_merchant.name"])
        console.print(
            f"top_merchants {r['window_start'][11:16]}-{r['window_end'][11:16]} {r['group']}: "
            f"{top or '(none above the selection threshold)'}"
        )
    steps = [r for r in rows if r.get("continual") == "payments_so_far"]
    if steps:
        console.print(
            f"payments_so_far (continual release, one release a minute): "
            f"{steps[-1]['value']:,.0f} payments by {steps[-1]['step_end'][11:16]} "
            f"after {len(steps)} releases, epsilon {steps[-1]['epsilon']:g} for all of them "
            "(an account counts up to 100 payments per horizon: the bound that fixes the noise)"
        )
    console.print("budgets: .venv/bin/raymask budget show --db " + str(db))


def run_demo(n: int = 100_000, workers: int = 2, out_dir: Path = Path("demo-out")) -> None:
    from raymask.cluster.cli import print_summary, progress_bar
    from raymask.cluster.pipeline import mask_file
    from raymask.cluster.runtime import ensure_ray
    from raymask.loadtest.traffic import generate_bytes
    from raymask.policy.keys import Keyring, add_key_version, generate_key_file
    from raymask.policy.loader import load_policy

    console = Console(highlight=False)
    t_start = time.perf_counter()
    console.rule("[bold]raymask demo")
    console.print(
        "raymask masks sensitive fields in machine-to-machine streams. This demo generates "
        f"{n:,} records for each traffic profile, masks them with the example policies in "
        f"examples/policies/ on a local Ray ({workers} MaskWorker actors: records sharded by "
        "key, or for an NDJSON file with no per-key state one span of it per worker), and "
        "shows records before and after."
    )
    if not DEMO_KEYS.exists():
        generate_key_file(DEMO_KEYS, DEMO_KEY_IDS)
        console.print(
            f"created a demo key file {DEMO_KEYS} (random keys; the folder is git-ignored)"
        )
    else:
        console.print(f"using the demo key file {DEMO_KEYS}")
    ring = Keyring.from_file(DEMO_KEYS)
    for kid in DEMO_KEY_IDS:  # a key file from an older demo lacks the newer ids
        if kid not in ring:
            add_key_version(DEMO_KEYS, kid, new_id=True)
    ring = Keyring.from_file(DEMO_KEYS)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "state", ignore_errors=True)
    console.print("starting a local Ray ...")
    t0 = time.perf_counter()
    started = ensure_ray(num_cpus=max(2, workers))
    console.print(f"Ray is up ({time.perf_counter() - t0:.1f} s)")
    pol_dir = examples_dir()
    generated: set[tuple[str, str]] = set()
    totals = {"in": 0, "out": 0, "dead": 0}
    try:
        for profile, pol_file, stream, fmt, role in RUNS:
            console.rule(f"[bold]{profile}[/] -> stream {stream} ({fmt}), role {role or 'default'}")
            src = out_dir / f"{profile}.{fmt}"
            if (profile, fmt) not in generated:
                t0 = time.perf_counter()
                data = generate_bytes(profile, n, seed=7, fmt=fmt)
                if profile == "payments" and fmt == "ndjson":
                    lines = data.decode("utf-8").split("\n")
                    for line_no, breaker in BROKEN:
                        if line_no <= n:
                            lines[line_no - 1] = breaker(lines[line_no - 1])
                    data = "\n".join(lines).encode("utf-8")
                    console.print(
                        f"broke lines {', '.join(str(b[0]) for b in BROKEN)} on purpose: "
                        "truncated JSON, a missing key field, a card number with too few digits"
                    )
                src.write_bytes(data)
                generated.add((profile, fmt))
                console.print(
                    f"generated {n:,} records, {len(data) / 1e6:.1f} MB -> {src} ({time.perf_counter() - t0:.1f} s)"
                )
            dst = out_dir / f"{profile}.{role or 'default'}.masked.{fmt}"
            policy = pol_dir / pol_file
            with progress_bar(console, "masking") as prog:
                task = prog.add_task(f"masking {stream}", total=None, records=0, rate=0.0)
                t1 = time.perf_counter()

                def update(
                    records: int, nbytes: int, total: int, task=task, prog=prog, t1=t1
                ) -> None:
                    rate = records / max(time.perf_counter() - t1, 1e-9)
                    prog.update(
                        task, completed=nbytes, total=total or None, records=records, rate=rate
                    )

                summary = mask_file(
                    policy,
                    stream,
                    src,
                    dst,
                    role=role,
                    workers=workers,
                    keyring=ring,
                    progress=update,
                    state=out_dir / "state",  # fresh budgets each demo (cleared above)
                )
                prog.update(task, completed=summary.bytes_in, total=summary.bytes_in or 1)
            pol = load_policy(policy)
            s = pol.streams[stream]
            overrides = s.views.get(role or "", {})
            fields = {p: overrides.get(p, spec).technique for p, spec in s.fields.items()}
            _side_by_side(
                console,
                src,
                dst,
                fmt,
                fields,
                f"{stream}: the first record before and after ({dst})",
            )
            print_summary(console, summary)
            if role == "fraud":
                from raymask.cluster.reveal import reveal_values

                masked = _records(dst, fmt, 1)[0]["card"]["number"]
                clear = reveal_values(
                    policy, stream, "card.number", [masked], keyring=ring, role=role
                ).values[0]
                console.print(
                    f"fpe is reversible for a key holder: raymask reveal -f card.number -r fraud "
                    f"'{masked}' -> '{clear}' (the original: {clear == _records(src, fmt, 1)[0]['card']['number']})"
                )
            totals["in"] += summary.records_in
            totals["out"] += summary.records_out
            totals["dead"] += summary.dead_letters
        _aggregate_part(console, out_dir, ring)
        _kafka_part(console, min(n, 50_000), workers, ring)
    finally:
        if started:
            import ray

            ray.shutdown()
    console.rule("[bold]done")
    console.print(
        f"{totals['in']:,} records in, {totals['out']:,} masked records out, {totals['dead']:,} dead letters "
        f"(in = out + dead: {'yes' if totals['in'] == totals['out'] + totals['dead'] else 'NO'}); "
        f"demo took {time.perf_counter() - t_start:.0f} s."
    )
    console.print(
        f"outputs are in {out_dir}/. Read the dead letters (decrypted with the demo key):"
    )
    console.print(
        f"  .venv/bin/raymask dead-letters show {out_dir}/payments.default.masked.ndjson.deadletters.ndjson "
        f"--keys {DEMO_KEYS}"
    )
    console.print(
        "Try a policy: .venv/bin/raymask policy explain examples/policies/payments.yaml -s payments -r ops"
    )
