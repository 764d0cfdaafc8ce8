"""The `raymask` command line.

Errors are one line on stderr and exit 2 (usage, policy, keys, input) or 1 (pipeline);
`--debug` shows the traceback. No message ever carries a data value.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from raymask.errors import InputError, RaymaskError

app = typer.Typer(
    name="raymask",
    help="Mask sensitive data in machine-to-machine streams, on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Check, explain and describe policy files.", no_args_is_help=True)
dead_app = typer.Typer(help="Read and replay dead letters.", no_args_is_help=True)
keys_app = typer.Typer(help="Create key files.", no_args_is_help=True)
broker_app = typer.Typer(help="Run the embedded Kafka broker (tansu).", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
app.add_typer(dead_app, name="dead-letters")
app.add_typer(keys_app, name="keys")
app.add_typer(broker_app, name="broker")
budget_app = typer.Typer(help="The privacy-budget accountant's ledger.", no_args_is_help=True)
app.add_typer(budget_app, name="budget")
audit_app = typer.Typer(
    help="Verify and read the tamper-evident audit trail.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")
access_app = typer.Typer(help="API keys of HTTP callers, and their roles.", no_args_is_help=True)
app.add_typer(access_app, name="access")

err = Console(stderr=True, highlight=False)
_state = {"debug": False}


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug


def _keyring(keys: Path | None):
    from raymask.policy.keys import Keyring

    return Keyring.from_file(keys) if keys else Keyring.from_env()


KeysOpt = Annotated[
    Path | None,
    typer.Option("--keys", help="Key file (default: RAYMASK_KEYRING and RAYMASK_KEY_* variables)."),
]


# ---------------------------------------------------------------- policy


@policy_app.command("validate")
def policy_validate(files: Annotated[list[Path], typer.Argument(help="Policy files.")]) -> None:
    """Check policy files; print each problem as FILE:LINE: path: what is wrong."""
    from raymask.errors import PolicyError
    from raymask.policy.compile import compile_stream
    from raymask.policy.loader import load_policy

    failed = False
    for f in files:
        try:
            pol = load_policy(f)
            problems: list[str] = []
            for s in pol.streams:
                try:
                    compile_stream(pol, s, f.name)
                except PolicyError as exc:
                    problems += exc.problems
            if problems:
                raise PolicyError(problems)
        except PolicyError as exc:
            failed = True
            for p in exc.problems:
                print(p, file=sys.stderr)
            continue
        print(f"{f}: ok (version {pol.version}, streams: {', '.join(pol.streams)})")
    if failed:
        raise typer.Exit(2)


_SAMPLES = {
    "email": "jane.doe@example.com",
    "card": "4111 1111 1111 1111",
    "phone": "+49 151 2345678",
    "iban": "DE89 3704 0044 0532 0130 00",
}


def _describe(spec) -> tuple[str, str]:
    """(parameters, example) for one field spec, without any key."""
    import pyarrow as pa

    from raymask.kernels.mask import mask

    t = spec.technique
    params = ", ".join(
        f"{k}={v}" for k, v in spec.model_dump(exclude_defaults=True).items() if k != "technique"
    )
    if t == "keep":
        return params, "unchanged"
    if t == "redact":
        return (
            params,
            "null"
            if spec.replacement is None
            else f"{spec.replacement} (numbers: {spec.number_replacement})",
        )
    if t == "mask":
        sample = _SAMPLES.get(spec.preset or "", "Sample Value 12345")
        out, _ = mask(
            pa.array([sample]), keep_first=spec.keep_first, keep_last=spec.keep_last, char=spec.char,
            mode=spec.mode, preset=spec.preset,
        )  # fmt: skip
        return params, f"{sample} -> {out[0].as_py()}"
    if t == "tokenize":
        width = spec.length or {"hex": 64, "base32": 52, "base64url": 43}[spec.encoding]
        tag = "v<N>_" if spec.version_tag else ""
        return params, f"{spec.prefix}{tag}<{width} {spec.encoding} chars, keyed by '{spec.key}'>"
    if t == "segregate":
        return params, f"vault:<26 base32 chars>; the value sealed in the vault with '{spec.key}'"
    if t == "detect":
        from raymask.policy.keys import Key, Keyring
        from raymask.policy.registry import detect_and_replace

        sample = "login ann@example.com from 10.1.2.3 card 4111 1111 1111 1111"
        # a throwaway key only shapes the example token; it is never a keyring's key
        ring = Keyring([Key(spec.key, 1, b"\0" * 32)]) if spec.key else Keyring()
        out, _ = detect_and_replace(pa.array([sample]), spec, ring)
        return params, f"{sample} -> {out[0].as_py()}"
    return params, "(not supported yet)"


@policy_app.command("explain")
def policy_explain(
    file: Path,
    stream: Annotated[str, typer.Option("--stream", "-s", help="Stream name.")],
    role: Annotated[
        str | None, typer.Option("--role", "-r", help="Role (default view if not named).")
    ] = None,
) -> None:
    """Show, per field, what a role sees."""
    from raymask.policy.compile import DEFAULT_ROLE
    from raymask.policy.loader import load_policy

    pol = load_policy(file)
    if stream not in pol.streams:
        raise InputError(f"{file.name}: no stream '{stream}' (streams: {', '.join(pol.streams)})")
    s = pol.streams[stream]
    overrides = s.views.get(role or "", {})
    shown = role if role in s.views else DEFAULT_ROLE
    out = Console(highlight=False)
    title = f"{stream} as seen by role '{role or DEFAULT_ROLE}'"
    if role and role not in s.views:
        title += " (not named in the policy: the default view)"
    table = Table(title=title)
    for col in ("field", "technique", "parameters", "example"):
        table.add_column(col)
    for path, spec in s.fields.items():
        eff = overrides.get(path, spec)
        params, example = _describe(eff)
        mark = " *" if path in overrides else ""
        table.add_row(path, eff.technique + mark, params, example)
    unk = {
        "keep": "passed unchanged",
        "drop": "removed",
        "detect": "scanned for PII and secrets, what is found masked",
    }
    out.print(table)
    out.print(f"key: {s.key}   format: {s.format}   fields not named: {unk[s.unknown_fields]}")
    if shown != DEFAULT_ROLE:
        out.print("* overridden for this role")


@policy_app.command("push")
def policy_push(
    file: Path,
    pipeline: Annotated[
        str,
        typer.Option(
            "--pipeline", "-p", help="Name of the running pipeline (default: its stream)."
        ),
    ],
    address: Annotated[
        str | None, typer.Option("--address", help="Ray address (default: RAY_ADDRESS or auto).")
    ] = None,
) -> None:
    """Hand a running pipeline a new policy version; it switches at the next batch."""
    import getpass

    from raymask.actors.control import push_policy

    version = push_policy(pipeline, file, source=file.name, by=getpass.getuser(), address=address)
    print(f"pipeline {pipeline} now runs policy version {version}")


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the policy JSON Schema (for editors)."""
    from raymask.policy.schema import Policy

    print(json.dumps(Policy.model_json_schema(), indent=2))


# ---------------------------------------------------------------- generate


@app.command()
def generate(
    profile: Annotated[str, typer.Option("--profile", "-p", help="payments | iot | logs")],
    n: Annotated[int, typer.Option("-n", help="Number of records.", min=0)] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same bytes.")] = 0,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="ndjson | csv | xml | protobuf (delimited)")
    ] = "ndjson",
    output: Annotated[str, typer.Option("-o", "--output", help="File, or - for stdout.")] = "-",
) -> None:
    """Generate realistic M2M traffic with PII.

    XML: one document whose records are at Payments/Payment, Telemetry/Reading or Log/Entry.
    Protobuf: length-delimited messages of raymask/loadtest/traffic.proto (Payment, Reading,
    LogEntry in package raymask.traffic)."""
    from raymask.loadtest.traffic import FORMATS, PROFILES, generate_bytes

    if profile not in PROFILES:
        raise InputError(f"unknown profile '{profile}' (profiles: {', '.join(PROFILES)})")
    if fmt not in FORMATS:
        raise InputError(f"unknown format '{fmt}' (formats: {', '.join(FORMATS)})")
    data = generate_bytes(profile, n, seed, fmt)
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        try:
            Path(output).write_bytes(data)
        except OSError as exc:
            raise InputError(f"{output}: cannot write ({exc.strerror})") from None
        err.print(f"wrote {n:,} {profile} records ({len(data) / 1e6:.1f} MB) to {output}")


# ---------------------------------------------------------------- mask


def progress_bar(console: Console, label: str) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[records]:>12,} records"),
        TextColumn("{task.fields[rate]:>10,.0f} rec/s"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def print_summary(console: Console, s) -> None:
    table = Table(
        title=f"raymask: stream {s.stream}, role {s.role}, policy v{s.policy_version}",
        show_header=False,
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("records in", f"{s.records_in:,}")
    table.add_row("records out", f"{s.records_out:,}")
    table.add_row("dead letters", f"{s.dead_letters:,}")
    table.add_row("in = out + dead", "yes" if s.balanced else "NO")
    table.add_row("workers", str(s.workers))
    if s.span_chunks:
        table.add_row("chunks sent as file spans", f"{s.span_chunks:,} (no per-key state)")
    if len(s.versions) > 1:
        table.add_row(
            "policy versions", ", ".join(f"v{v}: {n:,}" for v, n in sorted(s.versions.items()))
        )
    table.add_row("wall time", f"{s.seconds:.2f} s")
    table.add_row(
        "throughput",
        f"{s.records_per_second:,.0f} records/s ({s.bytes_in / max(s.seconds, 1e-9) / 1e6:.1f} MB/s)",
    )
    console.print(table)
    fields = Table(title="per field", show_lines=False)
    fields.add_column("field")
    fields.add_column("technique")
    fields.add_column("values changed", justify="right")
    for path, tech in s.techniques.items():
        fields.add_row(path, tech, f"{s.changed.get(path, 0):,}" if tech != "keep" else "-")
    console.print(fields)
    _print_aggregates(console, s.aggregates)
    if s.vault:
        console.print(f"segregated values: {s.vault_rows:,} in the vault {s.vault}")
    if s.dp_records or s.dp_suppressed:
        console.print(
            f"local DP: {s.dp_records:,} records carry noised values (at most epsilon "
            f"{s.dp_max_epsilon:g} each); {s.dp_suppressed:,} suppressed, their subjects' "
            "allowance used up" + (f"; budgets in {s.ledger}" if s.ledger else "")
        )
    if s.detected:
        kinds = ", ".join(f"{t} {c:,}" for t, c in s.detected.most_common())
        console.print(f"unknown fields: {sum(s.detected.values()):,} spans masked ({kinds})")
    if s.leak_sampled:
        found = sum(s.leaks.values())
        console.print(
            f"leak monitor: {s.leak_sampled:,} output records scanned, "
            + (
                f"{found:,} detectable values found; events in {s.audit_file}"
                if found
                else "nothing found"
            )
        )
    if s.dead_letters:
        console.print(f"dead letters (encrypted) in {s.dead_letter_file}:")
        for reason, count in s.dead_reasons.most_common(5):
            console.print(f"  {count:>8,}  {reason}", markup=False)


DbOpt = Annotated[
    Path | None,
    typer.Option(
        "--db", help="The accountant's SQLite ledger (default: RAYMASK_STATE/accountant.sqlite)."
    ),
]

RoutingOpt = Annotated[
    str,
    typer.Option(
        "--routing",
        help="auto: a plain NDJSON file of a stream with no per-key state goes to the workers as "
        "file spans (one per worker, read by the worker), else by key; key: always by key.",
    ),
]

StateOpt = Annotated[
    str | None,
    typer.Option(
        "--state",
        help="Folder or s3:// URI for per-subject privacy budgets "
        "(default: RAYMASK_STATE or ~/.raymask/state).",
    ),
]


@app.command()
def mask(
    input: Annotated[str, typer.Argument(help="Input file (NDJSON or CSV), or - for stdin.")],
    policy: Annotated[Path, typer.Option("--policy", "-P", help="Policy file.")],
    stream: Annotated[str, typer.Option("--stream", "-s", help="Stream name in the policy.")],
    output: Annotated[str, typer.Option("-o", "--output", help="Output file, or - for stdout.")],
    role: Annotated[
        str | None, typer.Option("--role", "-r", help="Role whose view to write.")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="MaskWorker actors.")] = 2,
    address: Annotated[
        str | None,
        typer.Option(
            "--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)."
        ),
    ] = None,
    keys: KeysOpt = None,
    dead_letters: Annotated[
        Path | None,
        typer.Option(
            "--dead-letters", help="Dead-letter file (default: OUTPUT.deadletters.ndjson)."
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")
    ] = False,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Pipeline name for `policy push` (default: the stream)."),
    ] = None,
    state: StateOpt = None,
    routing: RoutingOpt = "auto",
) -> None:
    """Mask a file on Ray: shard by key across workers, write the role's view."""
    from raymask.cluster.pipeline import prepare, run_job

    job = prepare(policy, stream, input, keyring=_keyring(keys))
    opts = {
        "role": role,
        "workers": workers,
        "address": address,
        "dead_letters": dead_letters,
        "name": name,
        "state": state,
        "routing": routing,
    }
    if quiet:
        run_job(job, output, **opts)
        return
    console = err
    with progress_bar(console, "masking") as prog:
        task = prog.add_task(f"masking {stream}", total=None, records=0, rate=0.0)
        t0 = time.perf_counter()

        def update(records: int, nbytes: int, total: int) -> None:
            rate = records / max(time.perf_counter() - t0, 1e-9)
            prog.update(task, completed=nbytes, total=total or None, records=records, rate=rate)

        summary = run_job(job, output, progress=update, **opts)
        prog.update(task, completed=summary.bytes_in, total=summary.bytes_in or 1)
    print_summary(console, summary)


def _print_aggregates(console: Console, a) -> None:  # noqa: ANN001
    if a is not None:
        console.print(
            f"DP aggregates: {sum(a.windows.values())} windows and steps released, "
            f"{sum(a.refused.values())} refused by the budget, {sum(a.groups.values())} rows, "
            f"epsilon {sum(a.epsilon.values()):g} spent, {a.dead_letters} dead letters -> "
            f"{a.output}"
        )


def print_kafka_summary(console: Console, s) -> None:
    table = Table(
        title=f"raymask: stream {s.stream}, topic {s.input_topic} at {s.bootstrap}",
        show_header=False,
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("messages read", f"{s.records_in:,}")
    table.add_row("workers / sources", f"{s.workers} / {s.sources}")
    if s.resizes:  # the autoscaler's changes: (seconds into the run, pool size)
        table.add_row("pool resizes", ", ".join(f"{n} at {t:.0f} s" for t, n in s.resizes))
    table.add_row("read = written + skipped + dead, per view", "yes" if s.balanced else "NO")
    table.add_row("time (to the last record)", f"{s.seconds:.2f} s")
    table.add_row("throughput", f"{s.records_per_second:,.0f} messages/s")
    table.add_row(
        "produce -> written, p50 / p99", f"{s.latency_ms(50):,.0f} / {s.latency_ms(99):,.0f} ms"
    )
    if s.resent or s.source_failures:
        table.add_row("calls resent / source failures", f"{s.resent} / {s.source_failures}")
    if s.broker_outages or s.uncommitted:
        table.add_row(
            "polls with the broker away / commits left pending",
            f"{s.broker_outages} / {s.uncommitted}",
        )
    console.print(table)
    views = Table(title="per view")
    for col in ("view", "topic", "written", "skipped (already there)", "dead letters"):
        views.add_column(col, justify="left" if col in ("view", "topic") else "right")
    for r in s.roles:
        views.add_row(r, s.topics[r], f"{s.written[r]:,}", f"{s.skipped[r]:,}", f"{s.dead[r]:,}")
    console.print(views)
    _print_aggregates(console, s.aggregates)
    if any(s.dead.values()):
        console.print(f"dead letters (encrypted) in {', '.join(s.dead_topics.values())}:")
        for reason, count in s.dead_reasons.most_common(5):
            console.print(f"  {count:>8,}  {reason}", markup=False)


def _kafka_options(pairs: list[str] | None) -> dict:
    """`key=value` pairs for the Kafka clients (SASL/SSL settings); numbers become ints."""
    out: dict = {}
    for pair in pairs or []:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise InputError(f"--kafka-option {pair!r}: expected key=value")
        out[k.strip()] = int(v) if v.strip().isdigit() else v.strip()
    return out


@app.command()
def run(
    policy: Annotated[Path, typer.Option("--policy", "-P", help="Policy file.")],
    stream: Annotated[str, typer.Option("--stream", "-s", help="Stream name in the policy.")],
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="File to read (and tail with --follow).")
    ] = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Output file, or - for stdout.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep reading as the file grows, until Ctrl-C.")
    ] = False,
    input_topic: Annotated[
        str | None, typer.Option("--input-topic", help="Kafka topic to mask (Kafka mode).")
    ] = None,
    bootstrap_servers: Annotated[
        str | None,
        typer.Option(
            "--bootstrap-servers",
            help="Kafka cluster; default: the broker of `raymask broker start`, else an embedded one.",
        ),
    ] = None,
    roles: Annotated[
        str | None, typer.Option("--roles", help="Views to write, comma-separated (default: all).")
    ] = None,
    sources: Annotated[int, typer.Option("--sources", min=1, help="Kafka source actors.")] = 1,
    group: Annotated[str | None, typer.Option("--group", help="Consumer group id.")] = None,
    idle: Annotated[
        float,
        typer.Option("--idle", help="Kafka mode: stop after this many idle seconds (0: never)."),
    ] = 0.0,
    kafka_option: Annotated[
        list[str] | None,
        typer.Option(
            "--kafka-option", help="key=value for the Kafka clients (SASL/SSL); repeatable."
        ),
    ] = None,
    idempotent: Annotated[
        bool | None,
        typer.Option(
            "--idempotent/--no-idempotent",
            help="Idempotent producer (default: on with --bootstrap-servers; tansu cannot).",
        ),
    ] = None,
    broker_timeout: Annotated[
        float,
        typer.Option(
            "--broker-timeout",
            min=1,
            help="Kafka mode: end the run when the broker is unreachable this many seconds.",
        ),
    ] = 60.0,
    carry_headers: Annotated[
        str | None,
        typer.Option(
            "--carry-headers",
            help="Kafka mode: input headers to copy into the masked records, comma-separated "
            "names or 'all' (default: none; headers are not masked by the policy).",
        ),
    ] = None,
    role: Annotated[str | None, typer.Option("--role", "-r")] = None,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1)] = 2,
    address: Annotated[str | None, typer.Option("--address")] = None,
    keys: KeysOpt = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Pipeline name for push and scale (default: the stream)."),
    ] = None,
    state: StateOpt = None,
    aggregates: Annotated[
        str | None,
        typer.Option(
            "--aggregates",
            help="Also release the stream's DP aggregates and continual releases here (NDJSON).",
        ),
    ] = None,
    db: DbOpt = None,
    autoscale: Annotated[
        str | None,
        typer.Option(
            "--autoscale",
            help="Kafka mode: MIN:MAX workers, grown and shrunk from the lag (record age); "
            "asks Ray's autoscaler for nodes when it grows.",
        ),
    ] = None,
    target_lag: Annotated[
        float, typer.Option("--target-lag", help="With --autoscale: grow above this lag (s).")
    ] = 2.0,
    worker_cpus: Annotated[
        float, typer.Option("--worker-cpus", help="With --autoscale: CPUs per mask worker.")
    ] = 0.5,
    routing: RoutingOpt = "auto",
) -> None:
    """A long-running streaming job. File mode (--input, --output): mask a file and, with
    --follow, what is appended to it. Kafka mode (--input-topic): mask a topic into one topic per
    view until Ctrl-C (or --idle seconds without messages).

    Ctrl-C stops reading; the records read so far are finished and the summary is printed."""
    import signal

    if input_topic is not None:
        if idempotent is None:
            idempotent = bootstrap_servers is not None
        carry: bool | list[str] = False
        if carry_headers:
            names = [h.strip() for h in carry_headers.split(",") if h.strip()]
            carry = True if names == ["all"] else names
        auto = _autoscale(autoscale, target_lag, worker_cpus) if autoscale else None
        if auto is not None:
            workers = min(max(workers, auto.min_workers), auto.max_workers)
        _run_kafka(policy, stream, input_topic, bootstrap_servers, roles, sources, group, idle,
                   _kafka_options(kafka_option), workers, address, keys, name, idempotent,
                   broker_timeout, carry, state, aggregates, db, auto)  # fmt: skip
        return
    if input is None or output is None:
        raise InputError("give --input and --output (file mode) or --input-topic (Kafka mode)")
    from raymask.cluster.pipeline import prepare, run_job

    job = prepare(policy, stream, input, keyring=_keyring(keys), follow=follow)
    previous = signal.signal(signal.SIGINT, lambda *_: job.source.stop())
    try:
        err.print(
            f"running pipeline {name or stream}"
            + (" (following; Ctrl-C to stop)" if follow else "")
        )
        summary = run_job(
            job, output, role=role, workers=workers, address=address, name=name, state=state,
            aggregates=aggregates, accountant_db=db, routing=routing,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    print_summary(err, summary)


def _autoscale(bounds: str, target_lag: float, worker_cpus: float) -> Any:
    """An AutoscaleConfig from --autoscale MIN:MAX and its companions (InputError if bad)."""
    from pydantic import ValidationError

    from raymask.actors.autoscale import AutoscaleConfig

    lo, sep, hi = bounds.partition(":")
    if not (sep and lo.strip().isdigit() and hi.strip().isdigit()):
        raise InputError(f"--autoscale takes MIN:MAX workers (e.g. 1:8), not {bounds!r}")
    try:
        return AutoscaleConfig(
            min_workers=int(lo), max_workers=int(hi), target_lag_s=target_lag,
            low_lag_s=target_lag / 4, worker_cpus=worker_cpus,
        )  # fmt: skip
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"--autoscale: {first['msg']}") from None


def _run_kafka(policy, stream, topic, bootstrap, roles, sources, group, idle, options, workers,
               address, keys, name, idempotent, broker_timeout=60.0, carry=False,
               state=None, aggregates=None, db=None, autoscale=None) -> None:  # fmt: skip
    import asyncio
    import signal

    from raymask.cluster.broker import Broker, broker_status
    from raymask.cluster.kafka_pipeline import run_kafka
    from raymask.loadtest.kafka_traffic import create_topic

    broker = None
    if bootstrap is None:
        info = broker_status()
        if info is not None:
            bootstrap = info.bootstrap
        else:
            broker = Broker().start()
            bootstrap = broker.bootstrap
            asyncio.run(create_topic(bootstrap, topic, 3))
            err.print(f"embedded Kafka broker at {bootstrap} (topic {topic}, 3 partitions)")
    stop = [False]
    previous = signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    try:
        err.print(f"running pipeline {name or stream} on {topic} (Ctrl-C to stop)")
        summary = run_kafka(
            policy, stream, topic, bootstrap=bootstrap, keyring=_keyring(keys),
            roles=[r.strip() for r in roles.split(",")] if roles else None, workers=workers,
            sources=sources, group_id=group, idle_s=idle if idle > 0 else float("inf"),
            address=address, name=name, client_options=options or None,
            should_stop=lambda: stop[0], idempotent=idempotent, broker_timeout_s=broker_timeout,
            carry_headers=carry, state=state, aggregates=aggregates, accountant_db=db,
            autoscale=autoscale,
        )  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
        if broker is not None:
            broker.stop()
    print_kafka_summary(err, summary)


@app.command()
def scale(
    pipeline: Annotated[
        str, typer.Option("--pipeline", "-p", help="Name of the running pipeline.")
    ],
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="New pool size.")],
    address: Annotated[
        str | None, typer.Option("--address", help="Ray address (default: RAY_ADDRESS or auto).")
    ] = None,
) -> None:
    """Grow or shrink a running pipeline's worker pool (at the next chunk boundary)."""
    from raymask.actors.control import scale_pipeline

    n = scale_pipeline(pipeline, workers, address=address)
    print(f"pipeline {pipeline} will run {n} workers from its next chunk")


@app.command()
def serve(
    policy: Annotated[Path, typer.Option("--policy", "-P", help="Policy file.")],
    port: Annotated[int, typer.Option("--port", help="HTTP port.")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Listen address.")] = "127.0.0.1",
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="MaskWorker actors.")] = 2,
    pipeline: Annotated[
        str | None,
        typer.Option("--pipeline", help="Use this running Kafka pipeline's workers (and ledger)."),
    ] = None,
    address: Annotated[
        str | None, typer.Option("--address", help="Ray address (default: RAY_ADDRESS or local).")
    ] = None,
    keys: KeysOpt = None,
    state: StateOpt = None,
    seconds: Annotated[
        float, typer.Option("--seconds", help="Stop after this long (0: until Ctrl-C).")
    ] = 0.0,
    aggregates: Annotated[
        str | None,
        typer.Option("--aggregates", help="Serve the latest releases of this aggregates file."),
    ] = None,
    access_keys: Annotated[
        Path | None, typer.Option("--api-keys", help="Access file of API keys (raymask access).")
    ] = None,
    jwt_key: Annotated[
        list[Path] | None, typer.Option("--jwt-key", help="PEM public key for callers' JWTs.")
    ] = None,
    jwt_issuer: Annotated[str | None, typer.Option("--jwt-issuer")] = None,
    jwt_audience: Annotated[str | None, typer.Option("--jwt-audience")] = None,
    mtls_header: Annotated[
        str | None,
        typer.Option(
            "--mtls-header",
            help="Trust this header from a TLS terminator for client-"
            "certificate identities (listed in --api-keys' file); e.g. "
            "x-forwarded-client-cert.",
        ),
    ] = None,
    mtls_format: Annotated[
        str,
        typer.Option(
            "--mtls-format",
            help="xfcc (Envoy/Istio) or dn (nginx, with x-ssl-client-verify: SUCCESS).",
        ),
    ] = "xfcc",
    vault: Annotated[
        str | None,
        typer.Option(
            "--vault",
            help="Folder for segregated values (shared storage on a "
            "cluster); without it, streams that segregate are not served.",
        ),
    ] = None,
    replicas: Annotated[
        int | None, typer.Option("--replicas", min=1, help="Fixed replica count (no autoscaling).")
    ] = None,
    max_replicas: Annotated[
        int, typer.Option("--max-replicas", min=1, help="Serve autoscaling's upper bound.")
    ] = 4,
    grpc_port: Annotated[
        int, typer.Option("--grpc-port", help="Also serve raymask.v1.Masking/Mask here (0: off).")
    ] = 0,
) -> None:
    """Serve POST /v1/streams/{stream}/mask?view=ROLE over HTTP on Ray Serve (NDJSON, a JSON
    array, CSV, XML or length-delimited Protobuf in, by the stream's format; the same out),
    until Ctrl-C."""
    import signal
    import time

    from ray import serve as ray_serve

    from raymask.cluster.http_formats import absolute_schema_paths
    from raymask.cluster.runtime import ensure_ray
    from raymask.cluster.serve_app import build_app
    from raymask.policy.loader import load_policy

    pol = absolute_schema_paths(load_policy(policy), policy.parent)  # protobuf schema files
    ring = _keyring(keys)
    started = ensure_ray(address)
    stop = [False]
    previous = signal.signal(signal.SIGINT, lambda *_: stop.__setitem__(0, True))
    try:
        grpc: dict = {}
        if grpc_port:
            from ray.serve.config import gRPCOptions

            from raymask.cluster.grpc_api import SERVICER

            grpc["grpc_options"] = gRPCOptions(port=grpc_port, grpc_servicer_functions=[SERVICER])
        ray_serve.start(http_options={"host": host, "port": port}, **grpc)
        access: dict = {}
        if access_keys is not None:
            access["api_keys"] = str(access_keys)
        if jwt_key:
            access["jwt"] = {"keys": [p.read_text() for p in jwt_key], "issuer": jwt_issuer,
                             "audience": jwt_audience}  # fmt: skip
        if mtls_header:
            access["mtls"] = {"header": mtls_header, "format": mtls_format}
        if not access:
            err.print("no --api-keys or --jwt-key: every caller reads every view")
        ray_serve.run(build_app(pol, ring, workers=workers, pipeline=pipeline,
                                state=str(state) if state else None, aggregates_file=aggregates,
                                access=access or None, replicas=replicas, vault=vault,
                                max_replicas=max_replicas),
                      name="raymask", route_prefix="/")  # fmt: skip
        err.print(f"serving on http://{host}:{port}/v1/streams/{{stream}}/mask (Ctrl-C to stop)")
        if grpc_port:
            err.print(
                f"and gRPC raymask.v1.Masking/Mask on port {grpc_port} (metadata application: raymask)"
            )
        t0 = time.monotonic()
        while not stop[0] and not (seconds and time.monotonic() - t0 > seconds):
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGINT, previous)
        try:
            ray_serve.delete("raymask")
            ray_serve.shutdown()
        finally:
            if started:
                import ray

                ray.shutdown()
    err.print("stopped")


# ---------------------------------------------------------------- budgets


@app.command()
def aggregate(
    input: Annotated[str, typer.Argument(help="Input file (NDJSON or CSV).")],
    policy: Annotated[Path, typer.Option("--policy", "-P", help="Policy file.")],
    stream: Annotated[str, typer.Option("--stream", "-s", help="Stream name in the policy.")],
    output: Annotated[str, typer.Option("-o", "--output", help="Releases, as NDJSON.")],
    name: Annotated[
        list[str] | None, typer.Option("--aggregate", "-a", help="Only these aggregates.")
    ] = None,
    db: DbOpt = None,
    keys: KeysOpt = None,
) -> None:
    """The stream's windowed DP aggregates over a file, each window charged to the accountant."""
    from raymask.cluster.aggregate import aggregate_file
    from raymask.policy.loader import load_policy

    pol = load_policy(policy)
    s = aggregate_file(pol, stream, input, output, keyring=_keyring(keys), names=name, db=db)
    table = Table(title=f"raymask aggregate: stream {s.stream}", show_header=True)
    for col in ("aggregate", "windows", "refused", "groups released", "epsilon spent"):
        table.add_column(col, justify="left" if col == "aggregate" else "right")
    for a in s.aggregates:
        table.add_row(a, f"{s.windows[a]:,}", f"{s.refused[a]:,}", f"{s.groups[a]:,}",
                      f"{s.epsilon[a]:g}")  # fmt: skip
    err.print(table)
    err.print(f"{s.records_in:,} records in {s.seconds:.2f} s; {s.dead_letters:,} dead letters")
    for reason, count in s.dead_reasons.most_common(5):
        err.print(f"  {count:>8,}  {reason}", markup=False)
    if s.refused:
        err.print("some windows were refused by the accountant (see raymask budget show)")


@access_app.command("add")
def access_add(
    file: Annotated[Path, typer.Argument(help="The access file (created if missing).")],
    name: Annotated[str, typer.Option("--name", help="Who the key is for.")],
    roles: Annotated[str, typer.Option("--roles", help="Comma-separated roles (view names).")],
) -> None:
    """Make an API key; it is printed once and stored only as a hash."""
    from raymask.policy.access import AccessFile

    f = AccessFile.load(file)
    key = f.add(name, [r.strip() for r in roles.split(",") if r.strip()])
    f.save()
    err.print(f"key {key.split('_')[1]} for {name}; keep it now, it is not stored:")
    print(key)


@access_app.command("revoke")
def access_revoke(
    file: Annotated[Path, typer.Argument(help="The access file.")],
    key_id: Annotated[str, typer.Option("--id", help="The key's id (the part after rmk_).")],
) -> None:
    """Revoke a key (a running server stops taking it at its next request)."""
    from raymask.policy.access import AccessFile

    f = AccessFile.load(file)
    f.revoke(key_id)
    f.save()
    print(f"key {key_id} revoked")


@access_app.command("add-identity")
def access_add_identity(
    file: Annotated[Path, typer.Argument(help="The access file (created if missing).")],
    identity: Annotated[
        str, typer.Option("--identity", help="The client certificate's URI SAN or subject DN.")
    ],
    name: Annotated[str, typer.Option("--name", help="Who it is.")],
    roles: Annotated[str, typer.Option("--roles", help="Comma-separated roles (view names).")],
) -> None:
    """Let a client certificate in (mTLS behind a TLS terminator: raymask serve --mtls-header)."""
    from raymask.policy.access import AccessFile

    f = AccessFile.load(file)
    f.add_identity(identity, name, [r.strip() for r in roles.split(",") if r.strip()])
    f.save()
    print(f"identity for {name} added")


@access_app.command("remove-identity")
def access_remove_identity(
    file: Annotated[Path, typer.Argument(help="The access file.")],
    identity: Annotated[str, typer.Option("--identity", help="The identity to remove.")],
) -> None:
    """Stop letting a client certificate in (a running server rereads the file)."""
    from raymask.policy.access import AccessFile

    f = AccessFile.load(file)
    f.remove_identity(identity)
    f.save()
    print("identity removed")


@access_app.command("list")
def access_list(file: Annotated[Path, typer.Argument(help="The access file.")]) -> None:
    """Keys, callers, roles and state (never a secret)."""
    from raymask.policy.access import AccessFile

    table = Table(title=str(file))
    for col in ("id", "name", "roles", "created (UTC)", "state"):
        table.add_column(col)
    for k in AccessFile.load(file).keys:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(k["created"]))
        table.add_row(k["id"], k["name"], ",".join(k["roles"]), created,
                      "revoked" if k.get("revoked") else "active")  # fmt: skip
    Console(width=120).print(table)
    ids = AccessFile.load(file).identities
    if ids:
        t2 = Table(title="client-certificate identities (mTLS)")
        for col in ("identity", "name", "roles"):
            t2.add_column(col)
        for i in ids:
            t2.add_row(i["identity"], i["name"], ",".join(i["roles"]))
        Console(width=160).print(t2)


@audit_app.command("verify")
def audit_verify(
    file: Annotated[Path, typer.Argument(help="An audit log.")],
    keys: KeysOpt = None,
    key_id: Annotated[str, typer.Option("--key-id", help="The signing key's id.")] = "audit",
    copy: Annotated[
        str | None,
        typer.Option("--copy", help="Its copy on Kafka (kafka://BOOTSTRAP/TOPIC) to compare with."),
    ] = None,
) -> None:
    """Check the hash chain and the signed anchors; exit 1 and name the first bad line if any
    record was edited, dropped, inserted or reordered, or the log was cut. With --copy, also
    check that the file holds every record of its Kafka copy (a cut at an anchor shows there)."""
    from raymask.actors.audit import compare_with_copy, signing_key, verify

    public = signing_key(_keyring(keys).get(key_id).material).public_key()
    v = compare_with_copy(file, copy, public) if copy else verify(file, public)
    if v.ok:
        print(f"{file}: ok, {v.records} records, all under signed anchors")
        return
    where = f"line {v.bad_line}: " if v.bad_line else ""
    print(f"{file}: NOT OK at {where}{v.reason}", file=sys.stderr)
    raise typer.Exit(1)


@audit_app.command("show")
def audit_show(
    file: Annotated[Path, typer.Argument(help="An audit log.")],
    kind: Annotated[str | None, typer.Option("--kind", help="Only this kind.")] = None,
    caller: Annotated[str | None, typer.Option("--caller", help="Only this caller.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO 8601 time or epoch seconds.")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="ISO 8601 time or epoch seconds.")
    ] = None,
    anchors: Annotated[bool, typer.Option("--anchors", help="Show the anchors too.")] = False,
) -> None:
    """The audit records as a table, filtered by kind, caller and time (it does not verify: use
    raymask audit verify)."""
    from raymask.actors.audit import read_records

    lo, hi = _when(since, "--since"), _when(until, "--until")
    table = Table(title=str(file))
    for col in ("seq", "time (UTC)", "kind", "caller", "details"):
        table.add_column(col, justify="right" if col == "seq" else "left")
    shown = 0
    for r in read_records(file):
        if (r["kind"] == "anchor" and not anchors) or (kind and r["kind"] != kind):
            continue
        if (caller and r.get("caller") != caller) or not lo <= r["ts"] <= hi:
            continue
        rest = {
            k: v for k, v in r.items() if k not in ("seq", "ts", "kind", "caller", "prev", "sig")
        }
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["ts"]))
        table.add_row(str(r["seq"]), when, r["kind"], str(r.get("caller", "")),
                      " ".join(f"{k}={v}" for k, v in sorted(rest.items())))  # fmt: skip
        shown += 1
    console = Console(width=160) if not sys.stdout.isatty() else Console()
    console.print(table, markup=False)
    print(f"{shown} record(s)")


def _when(text: str | None, opt: str) -> float:
    if text is None:
        return -math.inf if opt == "--since" else math.inf
    try:
        return float(text)
    except ValueError:
        pass
    from datetime import UTC, datetime

    try:
        d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{opt}: expected an ISO 8601 time or epoch seconds") from None
    return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()


@budget_app.command("set")
def budget_set(
    scope: Annotated[str, typer.Argument(help="Scope, e.g. stream:payments or role:analyst.")],
    epsilon: Annotated[float, typer.Option("--epsilon", min=0, help="Allowance.")],
    delta: Annotated[float, typer.Option("--delta", min=0, help="Delta allowance.")] = 0.0,
    period: Annotated[
        str, typer.Option("--period", help="hour, day, week or forever (never renewed).")
    ] = "forever",
    accounting: Annotated[
        str, typer.Option("--accounting", help="basic, rdp or pld composition.")
    ] = "rdp",
    db: DbOpt = None,
) -> None:
    """Create or change a scope's (epsilon, delta) allowance; what was spent stays spent."""
    from pydantic import ValidationError

    from raymask.actors.accountant import Accountant, ScopeBudget, default_db

    try:
        b = ScopeBudget(epsilon=epsilon, delta=delta, period=period, accounting=accounting)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    Accountant(db or default_db()).set_budget(scope, b)
    print(f"scope {scope}: epsilon {epsilon:g}, delta {delta:g}, {period}, {accounting}")


@budget_app.command("show")
def budget_show(
    scope: Annotated[str | None, typer.Option("--scope", help="Only this scope.")] = None,
    db: DbOpt = None,
) -> None:
    """Spent, reserved and remaining epsilon per scope, in the current period."""
    from raymask.actors.accountant import Accountant, default_db

    path = db or Path(default_db())
    if not Path(path).exists():
        raise InputError(f"{path}: no accountant ledger here")
    rows = Accountant(path).status(scope)
    if scope and not rows:
        raise InputError(f"scope {scope}: no budget in {path}")
    table = Table(title=f"privacy budgets ({path})")
    for col in ("scope", "allowance", "period", "accounting", "spent", "reserved", "remaining"):
        table.add_column(
            col, justify="left" if col in ("scope", "period", "accounting") else "right"
        )
    for r in rows:
        table.add_row(
            r["scope"], f"{r['epsilon']:g} / {r['delta']:g}", r["period"], r["accounting"],
            f"{r['spent']:.6g}", f"{r['reserved']:.6g}", f"{r['remaining']:.6g}",
        )  # fmt: skip
    Console().print(table)


# ---------------------------------------------------------------- dead letters


@dead_app.command("show")
def dead_show(
    file: Path,
    keys: KeysOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Entries to show (0 = all).")] = 20,
) -> None:
    """Decrypt and print dead letters (line, reason, original record)."""
    from raymask.actors.sinks.deadletters import read_dead_letters

    ring = _keyring(keys)
    shown = 0
    for d in read_dead_letters(file, ring):
        if limit and shown >= limit:
            break
        print(f"line {d.line}: {d.reason}")
        print("  " + d.raw.decode("utf-8", "replace"))
        shown += 1


@dead_app.command("replay")
def dead_replay(
    file: Path,
    policy: Annotated[Path, typer.Option("--policy", "-P")],
    stream: Annotated[str, typer.Option("--stream", "-s")],
    output: Annotated[str, typer.Option("-o", "--output")],
    role: Annotated[str | None, typer.Option("--role", "-r")] = None,
    keys: KeysOpt = None,
    dead_letters: Annotated[
        Path | None, typer.Option("--dead-letters", help="Where records that fail again go.")
    ] = None,
) -> None:
    """Send dead letters through the policy again (after fixing the policy or the data)."""
    from raymask.cluster.pipeline import replay_dead_letters

    ring = _keyring(keys)
    summary = replay_dead_letters(
        file, policy, stream, output, role=role, keyring=ring, dead_letters=dead_letters
    )
    print_summary(err, summary)


# ---------------------------------------------------------------- keys


@keys_app.command("init")
def keys_init(
    file: Path,
    ids: Annotated[
        list[str] | None,
        typer.Option(
            "--id", help="Key ids to create (default: tok, fpe, sealed, shift, deadletter, ledger)."
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a key file with a new random 32-byte key per id (mode 0600)."""
    from raymask.policy.keys import generate_key_file

    if ids is None:
        ids = ["tok", "fpe", "sealed", "shift", "deadletter", "ledger"]
    if file.exists() and not force:
        raise InputError(
            f"{file}: exists; use --force to replace it (old tokens would no longer match)"
        )
    generate_key_file(file, ids)
    err.print(f"wrote {len(set(ids))} keys to {file} (keep it out of version control)")


@keys_app.command("new")
def keys_new(
    file: Path,
    key_id: Annotated[str, typer.Option("--id", help="Key id.")],
    size: Annotated[
        int, typer.Option("--bytes", help="Key size: 32 for tokenize/fpe, 64 for AES-256-SIV.")
    ] = 32,
) -> None:
    """Add a new key id (version 1) to a key file, creating the file if needed."""
    from raymask.policy.keys import add_key_version

    k = add_key_version(file, key_id, nbytes=size, new_id=True)
    print(f"added {k.id} v{k.version} ({size} bytes) to {file}")


@keys_app.command("rotate")
def keys_rotate(file: Path, key_id: Annotated[str, typer.Option("--id", help="Key id.")]) -> None:
    """Add a new version of a key; new output uses it, earlier versions stay for reading."""
    from raymask.policy.keys import Keyring, add_key_version

    old = Keyring.from_file(file).get(key_id)
    k = add_key_version(file, key_id, nbytes=len(old.material))
    print(f"{k.id} is now at v{k.version}; v{old.version} and earlier stay for reading")


@keys_app.command("list")
def keys_list(
    file: Annotated[
        Path | None, typer.Argument(help="Key file (default: the environment).")
    ] = None,
) -> None:
    """Key ids, versions and sizes (never the material)."""
    ring = _keyring(file)
    table = Table(title="keys")
    for col in ("id", "versions", "current", "bytes"):
        table.add_column(col)
    for kid in ring.ids():
        cur = ring.get(kid)
        table.add_row(
            kid,
            ", ".join(f"v{v}" for v in ring.versions(kid)),
            f"v{cur.version}",
            str(len(cur.material)),
        )
    Console(highlight=False).print(table)


# ---------------------------------------------------------------- reveal


@app.command()
def reveal(
    policy: Annotated[Path, typer.Option("--policy", "-P", help="Policy file.")],
    stream: Annotated[str, typer.Option("--stream", "-s", help="Stream name.")],
    field: Annotated[str, typer.Option("--field", "-f", help="Field whose values to reveal.")],
    values: Annotated[
        list[str] | None, typer.Argument(help="Masked values (default: one per line on stdin).")
    ] = None,
    role: Annotated[
        str | None, typer.Option("--role", "-r", help="The view that wrote them.")
    ] = None,
    tweak: Annotated[
        str | None, typer.Option("--tweak", help="Tweak field value (fpe with tweak_field).")
    ] = None,
    key_version: Annotated[
        int | None, typer.Option("--key-version", help="Older fpe key version.")
    ] = None,
    keys: KeysOpt = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (goes into the audit trail).")
    ] = None,
    vault: Annotated[
        str | None,
        typer.Option(
            "--vault",
            help="The vault of a segregated field: a folder (file runs) or kafka://BOOTSTRAP/TOPIC.",
        ),
    ] = None,
) -> None:
    """Decrypt fpe and encrypt outputs, and look up segregated values in their vault (tokens are
    one-way and cannot be revealed)."""
    import getpass

    from raymask.actors.audit import Auditor
    from raymask.cluster.reveal import reveal_values

    vals = values if values else [line.rstrip("\n") for line in sys.stdin]
    ring = _keyring(keys)
    res = reveal_values(
        policy,
        stream,
        field,
        vals,
        keyring=ring,
        role=role,
        tweak=tweak,
        key_version=key_version,
        vault=vault,
    )
    auditor = Auditor.from_env(ring)  # RAYMASK_AUDIT=FILE: who revealed what, and why
    auditor.emit("reveal", caller=getpass.getuser(), stream=stream, field=field, role=role,
                 values=len(vals), failed=sum(e is not None for e in res.errors),
                 reason=reason or "(none given)")  # fmt: skip
    auditor.close()
    failed = 0
    for i, (v, e) in enumerate(zip(res.values, res.errors, strict=True), start=1):
        if e is None:
            print(v)
        else:
            failed += 1
            print(f"value {i}: {e}", file=sys.stderr)
    if failed:
        raise typer.Exit(1)


# ---------------------------------------------------------------- broker

StateDirOpt = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        envvar="RAYMASK_STATE_DIR",
        help="Where the broker's state file and log live.",
    ),
]


@broker_app.command("start")
def broker_start(
    port: Annotated[
        int | None, typer.Option("--port", help="Loopback port (default: a free one).")
    ] = None,
    storage: Annotated[
        str, typer.Option("--storage", help="memory://NAME/ or s3://BUCKET/ (S3 from AWS_* env).")
    ] = "memory://raymask/",
    state_dir: StateDirOpt = Path(".raymask"),
) -> None:
    """Start a broker in the background on 127.0.0.1; print its bootstrap address on stdout.

    If the state folder records a running broker, its address is printed instead."""
    from raymask.cluster.broker import start_broker

    info, started = start_broker(state_dir, port=port, storage=storage)
    if started:
        err.print(f"broker started on {info.bootstrap} (pid {info.pid}, storage {info.storage})")
    else:
        err.print(f"a broker already runs on {info.bootstrap} (pid {info.pid})")
    print(info.bootstrap)


@broker_app.command("status")
def broker_status_cmd(state_dir: StateDirOpt = Path(".raymask")) -> None:
    """Say whether the broker runs and answers; exit 1 when it does not run."""
    from raymask.cluster.broker import broker_status, ping

    info = broker_status(state_dir)
    if info is None:
        print("no broker running")
        raise typer.Exit(1)
    answers = "answers" if ping(info.bootstrap) else "does NOT answer the Kafka protocol"
    up = time.time() - info.started_at
    print(
        f"broker on {info.bootstrap}: pid {info.pid}, storage {info.storage}, up {up:.0f} s, "
        f"{answers}"
    )


@broker_app.command("stop")
def broker_stop(state_dir: StateDirOpt = Path(".raymask")) -> None:
    """Stop the broker recorded in the state folder (SIGTERM, then SIGKILL)."""
    from raymask.cluster.broker import stop_broker

    info = stop_broker(state_dir)
    if info is None:
        err.print("no broker running")
        return
    err.print(f"broker on {info.bootstrap} (pid {info.pid}) stopped")


# ---------------------------------------------------------------- demo


@app.command()
def scan(
    file: Annotated[Path, typer.Argument(help="NDJSON or CSV file (a masked output, say).")],
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Take format and delimiter from a policy.")
    ] = None,
    stream: Annotated[str | None, typer.Option("--stream", help="The policy's stream.")] = None,
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            help="The view the file holds: fields it keeps or generalizes are not findings.",
        ),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="ndjson or csv (default: from the file name).")
    ] = None,
    delimiter: Annotated[str, typer.Option("--delimiter", help="CSV delimiter.")] = ",",
    types: Annotated[
        list[str] | None,
        typer.Option("--type", help="Only this type (repeatable; secret: all secrets)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON.")] = False,
) -> None:
    """Count what is still detectable (PII, secrets) per field and type, never the values.
    Exit code 1 when anything is found, 0 when nothing is."""
    from raymask.errors import PolicyError
    from raymask.kernels.detect import type_codes
    from raymask.kernels.scan import scan_file

    kept: set[str] = set()
    if policy is not None:
        from raymask.policy.compile import compile_stream
        from raymask.policy.loader import load_policy

        pol = load_policy(policy)
        if stream is None:
            raise PolicyError([f"{policy}: --stream is needed with --policy"])
        plan = compile_stream(pol, stream, str(policy))
        fmt = fmt or plan.format
        delimiter = plan.delimiter
        from raymask.actors.worker import released

        kept = released(plan.view(role))
    fmt = fmt or ("csv" if file.suffix.lower() == ".csv" else "ndjson")
    if fmt not in ("ndjson", "csv"):
        raise typer.BadParameter("ndjson or csv", param_hint="--format")
    try:
        type_codes(types)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--type") from None
    if not file.is_file():
        raise InputError(f"{file}: no such file")
    report = scan_file(file, fmt, delimiter=delimiter, types=types)
    findings = {k: v for k, v in report.found.items() if k[0] not in kept}
    ignored = {k: v for k, v in report.found.items() if k[0] in kept}
    if as_json:
        print(json.dumps({
            "records": report.records,
            "found": [{"field": f, "type": t, "count": c} for (f, t), c in sorted(findings.items())],
            "released_by_policy": [{"field": f, "type": t, "count": c} for (f, t), c in sorted(ignored.items())],
        }))  # fmt: skip
    else:
        out = Console(highlight=False)
        if findings or ignored:
            table = Table("field", "type", "count", title=f"{file}: {report.records} records")
            for (f, t), c in sorted(findings.items()):
                table.add_row(f, t, str(c))
            for (f, t), c in sorted(ignored.items()):
                table.add_row(f, t, f"{c} (released by the policy)")
            out.print(table)
        total = sum(findings.values())
        out.print(f"{total} detectable value(s) in {report.records} records" if total else
                  f"nothing detectable in {report.records} records")  # fmt: skip
    if findings:
        raise typer.Exit(1)


@app.command()
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A load run's folder (Locust CSVs, timeline.csv).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Where the PNGs and summary.md go.")],
) -> None:
    """Plot a load run (throughput, latency, workers, consumer lag) and summarise it."""
    from raymask.loadtest.report import write_report

    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such folder")
    rep = write_report(run_dir, out)
    if not rep.plots:
        raise InputError(f"{run_dir}: no Locust stats (*_stats_history.csv) or timeline.csv in it")
    print(f"{len(rep.plots)} plot(s) and summary.md in {out}")


@app.command()
def demo(
    n: Annotated[int, typer.Option("-n", help="Records per profile.")] = 100_000,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1)] = 2,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where generated and masked files go.")
    ] = Path("demo-out"),
) -> None:
    """Generate traffic for each profile, mask it on a local Ray, and show before and after."""
    from raymask.cluster.demo import run_demo

    run_demo(n=n, workers=workers, out_dir=out_dir)


def main() -> None:
    """Console entry point: one-line errors, exit 2 for usage/config, 1 for pipeline failures."""
    debug = "--debug" in sys.argv
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except RaymaskError as exc:
        if debug:
            raise
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # usage errors (click, or typer's vendored click) and the unexpected
        if (
            type(exc).__name__ in _USAGE_ERRORS
            or hasattr(exc, "show")
            and hasattr(exc, "exit_code")
        ):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(getattr(exc, "exit_code", 2) or 2)
        if debug:
            raise
        # the message of an unexpected error may carry data: print only its type
        err.print(f"internal error ({type(exc).__name__}); rerun with --debug for the traceback")
        sys.exit(1)


_USAGE_ERRORS = {
    "UsageError",
    "NoSuchOption",
    "BadParameter",
    "MissingParameter",
    "BadOptionUsage",
    "BadArgumentUsage",
    "NoArgsIsHelpError",
}
