"""HTTP ingress on Ray Serve: `POST /v1/streams/{stream}/mask?view=ROLE` masks a body of records
and answers in the same format with that view.

For a stream with per-subject state, requests from many callers are batched (`@serve.batch`):
the bodies of one stream and view are joined into one buffer, routed by key like a streaming
chunk (`RouterCore`) and masked by the same key-sharded `MaskWorker` actors, then the masked
records are cut back per request. So per-key order (within a request, and between requests in
arrival order) and per-subject budgets hold as in the streaming core; with `pipeline=NAME` the
app uses a running Kafka pipeline's workers themselves (`kworker:NAME:i`), so HTTP and Kafka
share one ledger. Streams without per-subject state are masked in the replica itself, each
request at once (`MaskIngress._mask` and `_answer` say why).

Bodies: NDJSON (`application/x-ndjson`), a JSON array (`application/json`: turned into lines and
back by kernels/codecs/jsonarray.py), and for streams of those formats CSV (`text/csv`), XML
(`application/xml`) and length-delimited Protobuf (`application/x-protobuf`), cut into records
and put back together by cluster/http_formats.py. A record that cannot be masked is left out of
the answer and listed in the `raymask-errors` header (`[{"index": i, "reason": ...}]`, index = the record's
position in the body, reasons name fields, never values); `raymask-records` and
`raymask-policy-version` say what came back, and `server-timing` what the replica spent on it
(`body`: reading it, `mask`: the wall time from parsing to the answer, `cpu`: the CPU time of
the replica's request thread over that span, including any other request it served meanwhile;
milliseconds). A body that cannot be read is a 400 with one line, an
unknown stream or view a 404, a body over the limit a 413, another content type a 415; never a
stack trace, never a data value.

`MaskIngress` (the Serve deployment) is a thin shell over `IngressCore`, which holds the logic and
takes its masking function as an argument, so unit tests drive it without Ray.
"""

import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from fastapi import Request as HttpRequest  # real annotations (no __future__): FastAPI reads them
from fastapi import Response
from starlette.requests import ClientDisconnect

from raymask.actors.warm import warm_up
from raymask.cluster.http_formats import MEDIA_KINDS, MEDIA_TYPES, BodyError, body_codec
from raymask.errors import InputError, RaymaskError
from raymask.kernels._arrow import take_strings
from raymask.kernels._keepgil import take_rows
from raymask.kernels.codecs.jsonarray import ArrayError, array_to_lines, join_lines
from raymask.kernels.codecs.ndjson import count_lines
from raymask.policy.access import Authenticator, Caller, Denied, allowed_view
from raymask.policy.compile import compile_stream
from raymask.policy.schema import Policy

__all__ = [
    "Request", "Answer", "Masked", "IngressCore", "masked_from", "route_here", "build_app",
    "app_builder",
    "MAX_BODY_BYTES",
]  # fmt: skip

MAX_BODY_BYTES = 8 << 20
# Serve's replica autoscaling (build_app: `max_replicas`, or a fixed `replicas` count instead).
# A replica masks a stateless stream's request on its event loop, one at a time, in a few ms of
# CPU: more than about 2 requests in flight on one replica are waiting, not being served. With a
# target of 8 the autoscaler never added a replica under a load that held one replica at 85% of
# a core and its p99 at 100 ms (80 requests/s of 100 records here); with 2 it does.
AUTOSCALING = {
    "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2,
    "metrics_interval_s": 2.0, "look_back_period_s": 4.0,
    "upscale_delay_s": 2.0, "downscale_delay_s": 30.0,
}  # fmt: skip
MAX_ERRORS_LISTED = 100
# a batch up to this many records is masked on the replica's event loop (a few ms); a bigger
# one in a thread, so the loop keeps taking requests meanwhile
INLINE_RECORDS = 4096  # in the header; the count is always whole
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl", "text/plain")


@dataclass
class Request:
    stream: str
    view: str | None
    lines: np.ndarray  # uint8 NDJSON, one record per line
    records: int  # lines in it (a JSON array's elements; blank lines in NDJSON count too)
    array: bool  # answer as a JSON array
    body: Any = None  # CSV, XML, Protobuf: the decoded body (http_formats.Decoded)
    codec: Any = None  # ... and its BodyCodec, which encodes the answer
    media_type: str = ""  # ... answered with the Content-Type it came with


@dataclass
class Answer:
    status: int
    body: bytes = b""
    media_type: str = "application/x-ndjson"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Masked:
    """One stream-and-view batch through the workers: masked records with their line in the
    joined buffer, failed lines with the reason."""

    records: pa.Array
    lines: np.ndarray
    dead_lines: np.ndarray
    dead_reasons: list[str]
    policy_version: int


def masked_from(routed: Any, outputs: list) -> Masked:
    """A routed buffer's view from its workers' outputs (MaskOutput, one per worker called)."""
    from raymask.actors.worker import merge_outputs

    recs, rows = merge_outputs(outputs)
    dead_lines = [d.line for d in routed.dead]
    reasons = [d.reason for d in routed.dead]
    for o in outputs:
        dead_lines += routed.lines[o.dead_rows].tolist()
        reasons += list(o.dead_reasons)
    version = outputs[0].policy_version if outputs else 0
    lines = take_rows(routed.lines, rows)
    return Masked(recs, lines, np.asarray(dead_lines, np.int64), reasons, version)


def route_here(router: Any, data: np.ndarray) -> tuple[Any, bool]:
    """A buffer for a MaskCore in this process (a stream without per-key state) and whether
    the core checks the keys (`process_views(check_key=)`). NDJSON is split only: the core's
    own scan finds the key, with the router's reasons, so each record is scanned once, not
    twice (0.1-0.15 ms, 6-9% of a 100-record request in process here). Other formats are
    routed."""
    from raymask.actors.router import unrouted
    from raymask.kernels.codecs.formats import NdjsonFormat

    if type(router.fmt) is NdjsonFormat:
        return unrouted(router.fmt, data), True
    return router.route(data, 0), False


def _error(status: int, message: str) -> Answer:
    return Answer(status, json.dumps({"error": message}).encode(), "application/json")


def media_kind(content_type: str | None) -> str | None:
    """'ndjson', 'array', 'csv', 'xml', 'protobuf' or None (not taken) from a Content-Type."""
    base = (content_type or "application/x-ndjson").split(";")[0].strip().lower()
    if base in NDJSON_TYPES:
        return "ndjson"
    if base == "application/json":
        return "array"
    return MEDIA_KINDS.get(base)


class RateLimiter:
    """Per-caller token buckets of `per_minute` tokens, refilled continuously (per replica)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, at)

    def take(self, caller: str, n: int, per_minute: int) -> bool:
        now = self.clock()
        tokens, at = self.buckets.get(caller, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - at) * per_minute / 60.0)
        if n > tokens:
            self.buckets[caller] = (tokens, now)
            return False
        self.buckets[caller] = (tokens - n, now)
        return True


class IngressCore:
    """The ingress logic: parse and check requests, batch them per stream and view, split the
    answers. `mask(stream, view, data)` masks one buffer of the stream's records (awaitable);
    `mask(stream, view, data, fmt)` in the format `fmt` (a CSV body's header gives its columns)."""

    def __init__(
        self, policy: Policy, mask: Callable[..., Awaitable[Masked]],
        max_body_bytes: int = MAX_BODY_BYTES, auth: Authenticator | None = None,
        audit: Callable[..., None] | None = None, vault: bool = False,
    ) -> None:  # fmt: skip
        """`auth`: who may call (None: anyone, every view); `audit(kind, **fields)`: where
        access denials go; `vault`: a vault is configured, so streams that segregate are
        served (their sealed values go to it before the answer)."""
        self.policy = policy
        self.mask = mask
        self.max_body_bytes = max_body_bytes
        self.auth = auth if auth is not None and auth.on else None
        self.audit = audit
        self.limiter = RateLimiter()
        self.plans = {}
        self.codecs = {}  # CSV, XML, Protobuf streams: how their bodies are cut and rebuilt
        for name in policy.streams:
            plan = compile_stream(policy, name)
            segregates = any(
                op.technique == "segregate" for v in plan.views.values() for op in v.ops
            )
            if segregates and not vault:
                continue  # its vault rows would have nowhere to go: not served
            self.plans[name] = plan
            if (codec := body_codec(plan)) is not None:
                self.codecs[name] = codec

    def authorize(
        self, headers: Mapping[str, str], stream: str, view: str | None
    ) -> str | None | Answer:
        """The view the caller reads (None: no access control here), or the 401/403 answer
        (a stream the caller may not see and a stream that does not exist get the same 403)."""
        got = self._caller_and_view(headers, stream, view)
        return got if isinstance(got, Answer) else got[1]

    def _caller_and_view(
        self, headers: Mapping[str, str], stream: str, view: str | None
    ) -> tuple[Caller | None, str | None] | Answer:
        if self.auth is None:
            return None, view
        name = "unknown"
        try:
            caller = self.auth.identify(headers)
            name = caller.name
            plan = self.plans.get(stream)
            return caller, allowed_view(caller, stream, list(plan.views) if plan else None, view)
        except Denied as exc:
            if self.audit is not None:
                self.audit("access_denied", caller=name, stream=stream, view=view or "default",
                           status=exc.status)  # fmt: skip
            return _error(exc.status, str(exc))

    def reveal(self, headers: Mapping[str, str], stream: str, view: str | None, body: bytes,
               keyring: Any, vault: str | None = None) -> Answer:  # fmt: skip
        """Clear values of an fpe or encrypt field, for a caller whose roles include one of the
        stream's `reveal.roles` and the view that wrote the values; a JSON body {"field",
        "values", "reason", optional "tweak", optional "record_keys" (the records' key tokens,
        for the audit)}. Rate-limited per caller; every reveal (and refusal) is audited with
        caller, reason, stream, field, count and key tokens, never a value."""
        from raymask.cluster.reveal import reveal_values

        if self.auth is None:
            return _error(403, "reveal needs access control (start with --api-keys or --jwt-key)")
        got = self._caller_and_view(headers, stream, view)
        if isinstance(got, Answer):
            return got
        caller, v = got
        assert caller is not None  # access control is on
        rule = self.policy.streams[stream].reveal
        if rule is None or not caller.roles & set(rule.roles):
            if self.audit is not None:
                self.audit("reveal_denied", caller=caller.name, stream=stream, status=403)
            return _error(403, f"not allowed: reveal on stream {stream}")
        try:
            req = json.loads(body)
            field_, values = req["field"], req["values"]
            reason = req["reason"]
            if not (isinstance(field_, str) and isinstance(values, list) and isinstance(reason, str)
                    and reason.strip()):  # fmt: skip
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _error(400, 'send {"field": PATH, "values": [...], "reason": WHY}')
        if not self.limiter.take(caller.name, len(values), rule.per_minute):
            if self.audit is not None:
                self.audit("reveal_limited", caller=caller.name, stream=stream, field=field_,
                           values=len(values))  # fmt: skip
            return _error(429, f"over {rule.per_minute} values a minute: try again later")
        try:
            res = reveal_values(self.policy, stream, field_, values, keyring=keyring, role=v,
                                tweak=req.get("tweak"), vault=vault)  # fmt: skip
        except RaymaskError as exc:
            return _error(400, str(exc))
        keys = req.get("record_keys") or []
        if self.audit is not None:
            self.audit("reveal", caller=caller.name, stream=stream, view=v, field=field_,
                       values=len(values), failed=sum(e is not None for e in res.errors),
                       reason=reason[:200],
                       record_keys=",".join(str(k) for k in keys[:50]) or None)  # fmt: skip
        return Answer(200, json.dumps({"values": res.values, "errors": res.errors}).encode(),
                      "application/json")  # fmt: skip

    def parse(
        self, stream: str, view: str | None, body: bytes, content_type: str | None
    ) -> Request | Answer:
        """A checked request, or the error answer."""
        plan = self.plans.get(stream)
        if plan is None:
            return _error(404, f"no stream {stream} here")
        if view is not None and view not in plan.views:
            return _error(404, f"stream {stream} has no view {view}")
        if len(body) > self.max_body_bytes:
            return _error(413, f"the body is over {self.max_body_bytes} bytes")
        codec = self.codecs.get(stream)
        kind = media_kind(content_type) if content_type or codec is None else codec.kind
        if codec is not None:
            if kind != codec.kind:
                return _error(415, f"stream {stream} takes {' or '.join(MEDIA_TYPES[codec.kind])}")
            try:
                d = codec.decode(body)
            except BodyError as exc:
                return _error(400, str(exc))
            media = (content_type or MEDIA_TYPES[codec.kind][0]).split(";")[0].strip().lower()
            return Request(stream, view, d.data, d.records, False, d, codec, media)
        if kind not in ("ndjson", "array"):
            return _error(415, "send application/x-ndjson or application/json (an array)")
        data = np.frombuffer(body, np.uint8)
        if kind == "array":
            try:
                lines, n = array_to_lines(data)
            except ArrayError as exc:
                return _error(400, str(exc))
        else:
            lines = (
                data if body.endswith(b"\n") or not body else np.frombuffer(body + b"\n", np.uint8)
            )
            n = int(count_lines(lines))  # a kernel: NumPy lets go of the GIL on 40 kB (below)
        return Request(stream, view, lines, n, kind == "array")

    async def answer(self, requests: Sequence[Request]) -> list[Answer]:
        """Mask a batch of requests: one call per stream and view, answers in request order."""
        out: list[Answer | None] = [None] * len(requests)
        groups: dict[tuple[str, str | None, Any], list[int]] = {}
        for i, r in enumerate(requests):  # a CSV header is part of the format: grouped by it
            groups.setdefault((r.stream, r.view, r.body and r.body.group), []).append(i)
        for (stream, view, _), idx in groups.items():
            parts = [requests[i] for i in idx]
            bounds = np.cumsum([0] + [p.records for p in parts])
            data = np.concatenate([p.lines for p in parts]) if parts else np.zeros(0, np.uint8)
            d = parts[0].body  # a format that comes with the body (CSV header) goes along
            fmt = d.fmt if d is not None and d.group is not None else None
            m = await (self.mask(stream, view, data) if fmt is None
                       else self.mask(stream, view, data, fmt))  # fmt: skip
            owner = np.searchsorted(bounds, m.lines, side="right") - 1
            dead_owner = np.searchsorted(bounds, m.dead_lines, side="right") - 1
            for k, (i, p) in enumerate(zip(idx, parts, strict=True)):
                sel = np.flatnonzero(owner == k)
                if len(sel) == len(m.records):  # all of them, in order (one request)
                    recs = m.records
                else:
                    recs = take_strings(m.records, sel)
                errs = [
                    {"index": int(m.dead_lines[j] - bounds[k]), "reason": m.dead_reasons[j]}
                    for j in np.flatnonzero(dead_owner == k)
                ]
                out[i] = _ok(recs, errs, p, m.policy_version, m.lines[sel] - bounds[k])
        return out  # type: ignore[return-value]


def _ok(recs: pa.Array, errors: list[dict], r: Request, version: int, index: np.ndarray) -> Answer:
    """The 200 answer of one request: its masked records (numbered `index` in its body) in its
    own format, and the records that failed."""
    if r.codec is not None:
        body, media = r.codec.encode(r.body, recs, index), r.media_type
    elif r.array:
        body, media = join_lines(recs), "application/json"
    else:  # one record per line, each ending in a newline
        body = join_lines(recs, b"\n", b"", b"\n") if len(recs) else b""
        media = "application/x-ndjson"
    headers = {
        "raymask-records": str(len(recs)),
        "raymask-policy-version": str(version),
        "raymask-error-count": str(len(errors)),
    }
    if errors:
        errors.sort(key=lambda e: e["index"])
        headers["raymask-errors"] = json.dumps(errors[:MAX_ERRORS_LISTED], ensure_ascii=True)
    return Answer(200, body, media, headers)


# ---------------------------------------------------------------------------- the Ray Serve shell


def _workers(policy: Policy, stream: str, keyring: Any, app: str, n: int, pipeline: str | None,
             ledger: str | None, fmt: Any = None) -> list:  # fmt: skip
    """The stream's key-sharded workers: a running Kafka pipeline's, or the app's own (shared by
    every replica: found by name, created by the first)."""
    import ray

    from raymask.actors.worker import MaskWorker
    from raymask.kernels.codecs.formats import format_for

    fmt = fmt if fmt is not None else format_for("ndjson")
    if pipeline is not None:
        found = []
        while True:
            try:
                found.append(ray.get_actor(f"kworker:{pipeline}:{len(found)}", namespace="raymask"))
            except ValueError:
                break
        if not found:
            raise InputError(f"no running pipeline {pipeline} (no kworker:{pipeline}:0)")
        return found
    return [
        MaskWorker.options(
            name=f"sworker:{app}:{stream}:{i}", namespace="raymask", get_if_exists=True,
            lifetime="detached",
        ).remote(policy.model_dump(), stream, keyring, fmt, 0.0, ledger, i, n)
        for i in range(n)
    ]  # fmt: skip


def _make_deployment(max_batch_size: int = 32, batch_wait_timeout_s: float = 0.002):
    """The Serve deployment class. (A batch wait of 0 measured no better: 0.50x the echo
    deployment against 0.65x with 2 ms, same load, on this machine.)"""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI(
        title="raymask",
        description="Mask records of machine-to-machine streams by policy, per role view.",
        version="0.1.0",
    )

    @serve.deployment(
        ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, autoscaling_config=AUTOSCALING
    )  # fmt: skip
    @serve.ingress(api)
    class MaskIngress:
        def __init__(
            self, policy: dict, keyring: Any, workers: int = 2, pipeline: str | None = None,
            app: str = "raymask", state: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
            aggregates_file: str | None = None, access: dict | None = None,
            vault: str | None = None,
        ) -> None:  # fmt: skip
            import os
            import socket

            from raymask.actors.audit import Auditor
            from raymask.actors.router import RouterCore
            from raymask.actors.worker import MaskCore
            from raymask.cluster.pipeline import VaultWriter, ledger_root
            from raymask.kernels.codecs.formats import format_for

            pol = Policy.model_validate(policy)
            self.auditor = Auditor.from_env(keyring)  # RAYMASK_AUDIT=FILE: access denials
            self.core = IngressCore(
                pol, self._mask, max_body_bytes, authenticator(access),
                self.auditor.emit if self.auditor.on else None, vault=vault is not None,
            )  # fmt: skip
            # segregated values: Parquet parts in the vault folder (shared storage on a
            # cluster), one writer per replica (part names carry host and pid), written before
            # the answer so every reference a caller gets has its row
            self.vault = VaultWriter(vault) if vault is not None else None
            self.vault_tag = f"{socket.gethostname()}-{os.getpid()}"
            self.aggregates_file = aggregates_file
            self.keyring = keyring
            self.routers: dict[str, Any] = {}
            self.pools: dict[str, list] = {}
            self.local: dict[str, Any] = {}
            self.by_format: dict[tuple[str, bytes], tuple[Any, Any]] = {}  # CSV headers seen
            self._batchers: dict[tuple[str, str | None], Any] = {}  # serve.batch per view
            for stream, plan in self.core.plans.items():
                codec = self.core.codecs.get(stream)
                fmt = format_for("ndjson") if codec is None else codec.fixed_format
                if plan.budget is None and pipeline is None:
                    # stateless masking: in this replica, no hop to a worker (see _mask)
                    if fmt is not None:
                        self.local[stream] = MaskCore(pol, stream, keyring, fmt)
                        self.routers[stream] = RouterCore(plan, fmt, 1)
                    continue
                ledger = ledger_root(state, stream) if plan.budget is not None else None
                pool = _workers(pol, stream, keyring, app, workers, pipeline, ledger, fmt)
                self.pools[stream] = pool
                if fmt is not None:
                    self.routers[stream] = RouterCore(plan, fmt, len(pool))
            self.policy = pol
            for stream, core in self.local.items():  # before Serve sends this replica requests
                warm_up(core, self.routers[stream], self.core.plans[stream])

        def _for_format(self, stream: str, fmt: Any) -> tuple[Any, Any]:
            """The router and (for a stream masked here) the core of a format that comes with
            the body (a CSV header), made on first use and kept for the next requests."""
            from raymask.actors.router import RouterCore
            from raymask.actors.worker import MaskCore

            key = (stream, fmt.header_line)
            got = self.by_format.get(key)
            if got is None:
                plan = self.core.plans[stream]
                core = None
                if stream not in self.pools:
                    core = MaskCore(self.policy, stream, self.keyring, fmt)
                shards = len(self.pools.get(stream, [None]))
                got = self.by_format[key] = (RouterCore(plan, fmt, shards), core)
                if len(self.by_format) > 256:
                    self.by_format.pop(next(iter(self.by_format)))
            return got

        async def _mask(
            self, stream: str, view: str | None, data: np.ndarray, fmt: Any = None
        ) -> Masked:
            """A stream with per-subject budgets (or a pipeline to share) goes to the key-sharded
            workers, which own the subjects' ledgers; any other stream is masked here, in the
            replica: its masking has no per-key state, each caller gets its own records back in
            order, and the hop to a worker (an object-store put and an actor call, 5-9 ms for a
            small batch on this machine) would cost more than the masking. Serve's autoscaler
            then scales the masking with the replicas."""
            import asyncio

            import ray

            router, core = self.routers.get(stream), self.local.get(stream)
            if fmt is not None:  # a format that comes with the body (CSV)
                router, core = self._for_format(stream, fmt)
            role = view or "default"
            if core is not None:
                routed, check_key = route_here(router, data)
                rows = routed.shards[0]
                if rows is None:
                    return masked_from(routed, [])
                args = (routed.batch, [role], rows, check_key)
                if routed.records <= INLINE_RECORDS:
                    outs = core.process_views(*args)
                else:
                    outs = await asyncio.to_thread(core.process_views, *args)
                self._keep_vault(outs)
                return masked_from(routed, outs)
            routed = router.route(data, 0)
            pool = self.pools[stream]
            futs = []
            if routed.records:
                ref = ray.put(routed.batch) if routed.batch.nbytes > 100_000 else routed.batch
                more = () if fmt is None else (fmt,)  # the workers' CSV columns, per request
                futs = [
                    pool[w].process_views.remote(ref, [role], idx, *more)
                    for w, idx in enumerate(routed.shards)
                    if idx is not None
                ]
            outs = [o[0] for o in await _gather(futs)]
            self._keep_vault(outs)
            return masked_from(routed, outs)

        def _keep_vault(self, outs: list) -> None:
            tables = [o.vault for o in outs if o.vault is not None]
            if tables and self.vault is not None:
                self.vault.write(tables, tag=self.vault_tag)

        async def _answer(self, request: Request) -> Answer:
            """The request's answer. A stream masked here, in the replica, is masked at once:
            its masking runs on the event loop without a pause, so no request could join a
            batch, and a batch queue's wait and tasks only add latency (p50 at 4 requests/s
            went from 13-15 to 11-12 ms without it; docs/benchmarks.md). A
            stream masked by the key-sharded workers is masked in a batch with the requests of
            the same stream and view that came meanwhile, one hop to the workers for all (one
            `serve.batch` queue per stream and view: requests of different views share no
            work, and one queue would make each wait for the others' masking)."""
            if request.stream not in self.pools and request.records <= INLINE_RECORDS:
                return (await self.core.answer([request]))[0]
            key = (request.stream, request.view)
            batcher = self._batchers.get(key)
            if batcher is None:
                core = self.core

                async def answer(requests: list[Request]) -> list[Answer]:
                    return await core.answer(requests)

                batcher = self._batchers[key] = serve.batch(
                    max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s
                )(answer)
            return await batcher(request)

        @api.post("/v1/streams/{stream}/mask", summary="Mask a body of records for one view")
        async def mask(
            self, stream: str, request: HttpRequest, view: str | None = None
        ) -> Response:
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > self.core.max_body_bytes:
                a = _error(413, f"the body is over {self.core.max_body_bytes} bytes")
            elif isinstance(v := self.core.authorize(request.headers, stream, view), Answer):
                a = v
            else:
                t0 = time.perf_counter()
                try:
                    body = await request.body()
                except ClientDisconnect:  # the caller left mid-body: nobody reads an answer
                    return Response(b"", 499)
                t1 = time.perf_counter()
                c1 = time.thread_time()
                parsed = self.core.parse(stream, v, body, request.headers.get("content-type"))
                a = parsed if isinstance(parsed, Answer) else await self._answer(parsed)
                t2 = time.perf_counter()
                c2 = time.thread_time()
                a.headers = {**a.headers, "server-timing": f"body;dur={(t1 - t0) * 1e3:.2f}, "
                             f"mask;dur={(t2 - t1) * 1e3:.2f}, cpu;dur={(c2 - c1) * 1e3:.2f}"}  # fmt: skip
            return Response(a.body, a.status, a.headers, a.media_type)

        async def Mask(self, request: Any, grpc_context: Any = None) -> Any:  # noqa: N802
            """gRPC `raymask.v1.Masking/Mask`: the same service (cluster/grpc_api.py)."""
            from raymask.cluster.grpc_api import mask_rpc

            return await mask_rpc(self.core, self._answer, request, grpc_context)

        @api.post("/v1/streams/{stream}/reveal", summary="Clear values of fpe/encrypt fields")
        async def reveal(
            self, stream: str, request: HttpRequest, view: str | None = None
        ) -> Response:
            body = await request.body()
            if len(body) > self.core.max_body_bytes:
                a = _error(413, f"the body is over {self.core.max_body_bytes} bytes")
            else:
                a = self.core.reveal(
                    request.headers, stream, view, body, self.keyring,
                    str(self.vault.folder) if self.vault is not None else None,
                )  # fmt: skip
            return Response(a.body, a.status, a.headers, a.media_type)

        @api.get("/v1/streams/{stream}/aggregates", summary="The latest DP releases")
        async def aggregates(self, stream: str, request: HttpRequest) -> Response:
            v = self.core.authorize(request.headers, stream, request.query_params.get("view"))
            if isinstance(v, Answer):
                a = v
            elif stream not in self.core.plans:
                a = _error(404, f"no stream {stream} here")
            elif self.aggregates_file is None:
                a = _error(404, "this app was started without an aggregates file")
            else:
                a = Answer(200, json.dumps(latest_releases(self.aggregates_file)).encode(),
                           "application/json")  # fmt: skip
            return Response(a.body, a.status, a.headers, a.media_type)

        @api.get("/healthz", summary="Liveness")
        async def healthz(self) -> dict:
            return {"status": "ok", "streams": sorted(self.core.plans)}

    return MaskIngress


async def _gather(futs: list) -> list:
    import asyncio

    return list(await asyncio.gather(*futs)) if futs else []


def build_app(
    policy: Policy, keyring: Any, *, workers: int = 2, pipeline: str | None = None,
    app: str = "raymask", state: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
    aggregates_file: str | None = None, access: dict | None = None,
    replicas: int | None = None, max_replicas: int = 4, vault: str | None = None,
) -> Any:  # fmt: skip
    """The Serve application (bind it with `serve.run(build_app(...))`). Replicas autoscale
    from 1 to `max_replicas` (AUTOSCALING), or are fixed at `replicas`. `aggregates_file`: the
    releases a `raymask run --aggregates F` writes, served by GET .../aggregates. `access`:
    {"api_keys": FILE, "jwt": {"keys": [PEM or secret], "issuer", "audience", "algorithms",
    "roles_claim"}, "mtls": {"header", "format": "xfcc"|"dn", "verify"}}; without it every
    caller reads every view. `vault`: a folder for the sealed values of segregated fields
    (without it, streams that segregate are not served)."""
    dep = _make_deployment()
    if replicas is not None:
        dep = dep.options(num_replicas=replicas, autoscaling_config=None)
    else:
        dep = dep.options(autoscaling_config={**AUTOSCALING, "max_replicas": max_replicas})
    return dep.bind(
        policy.model_dump(), keyring, workers, pipeline, app, state, max_body_bytes,
        aggregates_file, access, vault,
    )  # fmt: skip


def authenticator(access: dict | None) -> Authenticator | None:
    """The Authenticator an `access` dict describes (see build_app)."""
    from raymask.policy.access import AccessFile, JwtVerifier, MtlsHeader

    if not access:
        return None
    api = AccessFile.load(access["api_keys"]) if access.get("api_keys") else None
    jwt_cfg = access.get("jwt")
    verifier = None
    if jwt_cfg:
        verifier = JwtVerifier(
            keys=jwt_cfg["keys"], algorithms=tuple(jwt_cfg.get("algorithms", ("RS256", "ES256",
            "EdDSA"))), issuer=jwt_cfg.get("issuer"), audience=jwt_cfg.get("audience"),
            roles_claim=jwt_cfg.get("roles_claim", "roles"),
        )  # fmt: skip
    mtls = None
    if access.get("mtls"):  # {"header", "format", "verify"}: identities from the access file
        if api is None:
            raise InputError("mTLS identities need an access file (--api-keys) listing them")
        mtls = MtlsHeader(**access["mtls"])
    return Authenticator(api, verifier, mtls)


def latest_releases(path: str, tail_bytes: int = 4 << 20) -> dict[str, list[dict]]:
    """Per aggregate (or continual release), the rows of its newest window (or step) in an
    aggregates file, read from its last `tail_bytes`."""
    import os

    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - tail_bytes))
            chunk = f.read()
    except OSError:
        return {}
    if size > tail_bytes:
        chunk = chunk[chunk.find(b"\n") + 1 :]  # drop the partial first line
    newest: dict[str, tuple[str, list[dict]]] = {}
    for line in chunk.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a line being written
        name = r.get("aggregate") or r.get("continual")
        start = r.get("window_start") or r.get("step_start") or ""
        if not name:
            continue
        have = newest.get(name)
        if have is None or start > have[0]:
            newest[name] = (start, [r])
        elif start == have[0]:
            have[1].append(r)
    return {k: v for k, (_, v) in sorted(newest.items())}


def app_builder(args: dict[str, str]) -> Any:
    """For `serve run cluster/serve.yaml` (import path raymask.cluster.serve_app:app_builder):
    args policy (a file), workers, pipeline, state; keys from RAYMASK_KEYRING / RAYMASK_KEY_*."""
    from raymask.policy.keys import Keyring
    from raymask.policy.loader import load_policy

    if "policy" not in args:
        raise InputError("the serve app needs args.policy (a policy file)")
    from pathlib import Path

    from raymask.cluster.http_formats import absolute_schema_paths

    pol = absolute_schema_paths(load_policy(args["policy"]), Path(args["policy"]).parent)
    return build_app(
        pol, Keyring.from_env(), workers=int(args.get("workers", 2)),
        pipeline=args.get("pipeline"), app=args.get("app", "raymask"), state=args.get("state"),
        aggregates_file=args.get("aggregates"),
    )  # fmt: skip
