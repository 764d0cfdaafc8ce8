"""MaskWorker: applies the compiled policy to whole columns of a routed batch, per role view.

`MaskCore` is the plain logic, driven without Ray in unit tests; `MaskWorker` is the Ray actor
that wraps it (one per shard). For each field a technique changes, the worker extracts the
field's values as an Arrow column, runs the technique's kernel once, writes the results in the
wire format, and splices them into the raw records. A record with any per-value error is not
emitted; it comes back as (row, field, code) for the dead letters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymask.actors._lazy import LazyActor
from raymask.actors.ledger import SubjectLedger
from raymask.actors.router import (
    DeadLetter,
    FileSpan,
    batch_records,
    key_reason,
    make_batch,
    scan_reason,
)
from raymask.errors import PipelineError
from raymask.kernels._arrow import null_strings, numbers, string_array, string_buffers, take_strings
from raymask.kernels._keepgil import take_rows
from raymask.kernels.codecs import csv as csv_codec
from raymask.kernels.codecs import json_values, ndjson
from raymask.kernels.codecs import xml as xml_codec
from raymask.kernels.codecs.formats import CsvFormat, Format, XmlFormat, format_for
from raymask.kernels.codecs.paths import build_tree
from raymask.kernels.codecs.spans import K_MISSING, K_NULL, K_NUMBER, K_STRING, Scan, splice
from raymask.kernels.hashing import key_hash
from raymask.kernels.ledger import DELTA_UNIT, EPS_UNIT, units
from raymask.kernels.rng import SecureRandom
from raymask.kernels.scan import scan_csv_batch, scan_records
from raymask.memory import tune_malloc
from raymask.policy.compile import StreamPlan, compile_stream
from raymask.policy.keys import Keyring
from raymask.policy.registry import (
    REGISTRY,
    Applied,
    FieldContext,
    detect_and_replace,
    error_message,
    privacy_cost,
)
from raymask.policy.schema import Detect, Policy

__all__ = [
    "MaskOutput",
    "MaskCore",
    "MaskWorker",
    "PrivacyMeta",
    "merge_outputs",
    "BUDGET_REASON",
    "detect_unknown_fields",
    "detect_unknown_columns",
    "detect_unknown_xml",
    "released",
]

BUDGET_REASON = "budget subject {path}: privacy allowance for this period is used up"
# techniques that cannot mask a field's further occurrences: a record's privacy cost counts one
# value per field, and a segregated value leaves one vault row per field and record
ONE_VALUE_PER_RECORD = ("noise", "randomized_response", "segregate")


@dataclass
class MaskOutput:
    """One view of one routed batch: masked records by input row, and the rows that failed."""

    policy_version: int
    role: str
    rows: np.ndarray  # input row of each entry of `records`
    records: pa.Array  # large_binary, one masked record (with newline) per emitted row
    dead_rows: np.ndarray  # input rows not emitted
    dead_reasons: list[str] = field(default_factory=list)
    dead_fields: list[str | None] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # field -> values the technique changed
    seconds: dict[str, float] = field(default_factory=dict)  # stage (decode, mask, encode) -> time
    privacy: PrivacyMeta | None = None  # local-DP fields of the view: what the records spent
    vault: pa.Table | None = None  # segregated values of emitted records (row = input row)
    detected: dict[str, int] = field(default_factory=dict)  # unknown fields: spans masked per type
    leaks: list[tuple[str, str, int]] = field(default_factory=list)  # (field, type, count) found
    leak_sampled: int = 0  # records the leak monitor scanned
    # a FileSpan's results (see MaskCore._span; rows are numbered within the span): the records
    # that failed, as dead letters with lines counted from 0 at the span's start, and how many
    # records and lines the span holds
    span_dead: list[DeadLetter] | None = None
    span_records: int = 0
    span_lines: int = 0


@dataclass
class PrivacyMeta:
    """The privacy metadata of one output batch: what the view's local-DP fields cost per value,
    and what each emitted record spent (0 where its fields were absent or suppressed)."""

    fields: dict[str, tuple[str, float, float]]  # path -> (technique, epsilon, delta) per value
    epsilon: np.ndarray  # per emitted record, aligned with MaskOutput.rows
    delta: np.ndarray
    suppressed: int  # records whose subject had no allowance left: noised fields written null
    dropped: int  # ... sent to the dead letters instead


@dataclass
class _Spend:
    fields: dict[str, tuple[str, float, float]]
    epsilon: np.ndarray | None
    delta: np.ndarray | None
    suppressed: np.ndarray
    dropped: np.ndarray


class MaskCore:
    """Masks routed batches with one compiled stream policy."""

    def __init__(
        self,
        policy: Policy | dict,
        stream: str,
        keyring: Keyring,
        fmt: Format,
        *,
        ledger_uri: str | None = None,
        shard: int = 0,
        shards: int = 1,
        rng: SecureRandom | None = None,
        clock: Callable[[], float] = time.time,
        leak_rng: np.random.Generator | None = None,
    ) -> None:
        """`ledger_uri`: the folder or s3:// prefix under which the pool's shards checkpoint their
        per-subject budgets (None: memory only); this core is shard `shard` of `shards`.
        `rng`: the secure random source of the local-DP techniques (a fresh OS-seeded CTR_DRBG
        by default; tests pass a seeded one)."""
        self.stream = stream
        self.keyring = keyring
        self.fmt = fmt
        self.ledger_uri = ledger_uri
        self.shard, self.shards = shard, shards
        self.rng = rng
        self.clock = clock
        self.ledger: SubjectLedger | None = None
        # the leak monitor's sampling (not a secret, not DP: an ordinary generator will do)
        self.leak_rng = leak_rng if leak_rng is not None else np.random.default_rng()
        self.set_policy(policy)

    def set_policy(self, policy: Policy | dict) -> int:
        """Switch to another policy version; takes effect from the next batch."""
        pol = policy if isinstance(policy, Policy) else Policy.model_validate(policy)
        plan = compile_stream(pol, self.stream)
        self.keyring.require(plan.key_ids())
        plan.check_keys(self.keyring)
        if plan.private and self.rng is None:
            self.rng = SecureRandom(personalization=b"raymask worker noise")
        if plan.budget is not None:
            if self.ledger is None:
                key = self.keyring.resolve(plan.budget.key).material
                self.ledger = SubjectLedger(
                    plan.budget, self.ledger_uri, key, shard=self.shard, shards=self.shards,
                    clock=self.clock,
                )  # fmt: skip
            else:
                self.ledger.configure(plan.budget)
        self.plan: StreamPlan = plan
        self.policy: Policy = pol  # the version `plan` came from
        return plan.version

    def warm(self) -> None:
        """Load the running policy's kernels by masking warm-up records in every view, on a spare
        core (same policy, keyring and format, a ledger in memory only), so this core's ledger,
        vault and counters never see the warm records. Without it, a new worker's first batch
        took 0.1-0.2 s longer than the next ones (Numba loading about 14 kernels from its cache).
        """
        from raymask.actors.router import RouterCore
        from raymask.actors.warm import warm_up

        spare = MaskCore(self.policy, self.stream, self.keyring, self.fmt)
        warm_up(spare, RouterCore(spare.plan, spare.fmt, 1), spare.plan)

    def set_layout(self, shard: int, shards: int, reload: bool = False) -> None:
        """This core is now shard `shard` of a pool of `shards` (after a resize or a restart):
        per-subject budgets of the keys routed here are loaded from the other shards' files
        (with `reload`, even when the layout is unchanged)."""
        self.shard, self.shards = shard, shards
        if self.ledger is not None:
            self.ledger.set_layout(shard, shards, reload)

    def process(
        self,
        batch: pa.RecordBatch | FileSpan,
        role: str | None = None,
        rows: np.ndarray | None = None,
    ) -> MaskOutput:
        """Mask `rows` of a routed chunk (all of them when None) for `role`'s view, or every
        record of a FileSpan, read here from the input file (see `_span`)."""
        if isinstance(batch, FileSpan):
            return self._span(batch, role)
        return self.process_views(batch, [role], rows)[0]

    def _span(self, span: FileSpan, role: str | None) -> MaskOutput:
        """Every record of a span of the input file, for a stream with no per-key state: read,
        split and masked here, so no record bytes cross the object store on the way in. What
        the router checks (a usable key) is checked here, on the worker's own scan, with the
        router's reason; the records that fail come back as whole dead letters, their lines
        counted from the span's first line (0): the driver adds where the span starts."""
        if self.plan.budget is not None:  # the driver never sends spans then: a guard
            raise PipelineError("a stream with per-subject budgets is routed by key, not by span")
        t0 = time.perf_counter()
        with open(span.path, "rb") as f:
            buf = os.pread(f.fileno(), span.length, span.offset)
        if len(buf) != span.length:
            raise PipelineError(f"{span.path}: shorter than the span the driver read")
        data = np.frombuffer(buf, np.uint8)
        starts, ends, lines, units = self.fmt.split_counted(data, 0)
        batch = make_batch(data, starts, ends, lines, np.zeros(len(starts), np.uint64))
        read_s = time.perf_counter() - t0
        out = self.process_views(batch, [role], None, check_key=True)[0]
        out.seconds["decode"] = out.seconds.get("decode", 0.0) + read_s
        out.span_dead = [
            DeadLetter(int(lines[r]), reason, bytes(data[starts[r] : ends[r]]), fld)
            for r, reason, fld in zip(out.dead_rows, out.dead_reasons, out.dead_fields, strict=True)
        ]  # error path only: one per dead record
        out.dead_rows = out.dead_rows[:0]
        out.dead_reasons, out.dead_fields = [], []
        out.span_records, out.span_lines = len(starts), units
        return out

    def _no_key(
        self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, sc: Scan
    ) -> np.ndarray:
        """Per record, the kind of a key the router would send to the dead letters (-1: none;
        see `key_reason`). A record invalid
        somewhere is read again up to its key only (error path only), as the router reads it:
        a record with an unusable key and broken JSON after it gets the key's reason here too."""
        plan = self.plan
        kind = sc.vkind[:, plan.key_index].astype(np.int8)
        valid = sc.err == 0
        bad = np.flatnonzero(~valid)
        if len(bad):
            tree = build_tree([plan.route_path])
            ks = self.fmt.scan(data, starts[bad], ends[bad], tree, locate_only=True)
            kind[bad] = np.where(ks.err == 0, ks.vkind[:, 0], K_STRING)  # K_STRING: not this
        return np.where((kind != K_STRING) & (kind != K_NUMBER), kind, -1).astype(np.int8)

    def process_views(
        self,
        batch: pa.RecordBatch,
        roles: list[str | None],
        rows: np.ndarray | None = None,
        check_key: bool = False,
    ) -> list[MaskOutput]:
        """Mask `rows` of a routed chunk once per view in `roles`: the records are validated
        and located once, each column any view reads is extracted once. With `check_key`
        (records no router has seen), a record without a usable key is not emitted and its
        reason is the router's."""
        t0 = time.perf_counter()
        plan, fmt = self.plan, self.fmt
        data, starts, ends = batch_records(batch)
        if rows is None:
            rows = numbers(batch.column("row"))
        else:
            starts, ends = take_rows(starts, rows), take_rows(ends, rows)
        sc = fmt.scan(data, starts, ends, plan.tree)
        no_key = None
        if check_key:
            no_key = self._no_key(data, starts, ends, sc)
        detected: dict[str, int] = {}
        if plan.unknown_detect is not None:  # rewrite unknown fields, then locate again
            if isinstance(fmt, CsvFormat):
                data, starts, ends, detected = detect_unknown_columns(
                    data, sc, fmt, plan.paths, plan.unknown_detect, self.keyring
                )
            elif isinstance(fmt, XmlFormat):
                data, starts, ends, detected = detect_unknown_xml(
                    data, sc, plan.unknown_detect, self.keyring
                )
            else:
                data, starts, ends, detected = detect_unknown_fields(
                    data, sc, plan.unknown_detect, self.keyring
                )
            if detected:
                sc = fmt.scan(data, starts, ends, plan.tree)
        views = [plan.view(r) for r in roles]
        # every column the techniques read (and the key, which subject-keyed techniques use),
        # extracted in one pass over the records; anything else on demand
        wanted = sorted(
            {op.index for v in views for op in v.changing if REGISTRY[op.technique].needs_values}
            | ({plan.key_index} if any(v.changing for v in views) else set())
        )
        cache: dict[int, pa.Array] = dict(
            zip(wanted, fmt.extract_many(data, sc, wanted) if wanted else [], strict=True)
        )

        def column(path: str) -> pa.Array:
            i = plan.paths.index(path)
            if i not in cache:
                cache[i] = fmt.extract(data, sc, i)
            return cache[i]

        subjects = None
        if self.ledger is not None:  # the router hashed the subject (its routing key) already
            if "key_hash" in batch.schema.names:
                subjects = numbers(batch.column("key_hash"))[rows]
            else:
                subjects = key_hash(column(plan.route_path))
        decode_s = time.perf_counter() - t0
        outs = [
            self._view(view, data, sc, rows, column, subjects, decode_s if i == 0 else 0.0, no_key)
            for i, view in enumerate(views)
        ]
        for o in outs:
            o.detected = dict(detected)
            if plan.leak_check is not None:
                o.leaks, o.leak_sampled = self._leak_check(o, plan.view(o.role))
        if self.ledger is not None:
            t = time.perf_counter()
            self.ledger.commit()  # before any record of the batch leaves this worker
            outs[0].seconds["budget"] = outs[0].seconds.get("budget", 0.0) + time.perf_counter() - t
        return outs

    def _view(
        self, view, data, sc, rows, column, subjects, decode_s: float, no_key=None
    ) -> MaskOutput:  # noqa: ANN001
        t_decode = time.perf_counter()
        plan, fmt = self.plan, self.fmt
        n = len(sc.starts)
        err_code = np.zeros(n, np.int16)
        err_op = np.full(n, -1, np.int32)
        edited: list[int] = []
        edits: list[np.ndarray] = []
        applieds: list[Applied] = []
        counts: dict[str, int] = {}
        ops = view.changing
        # further occurrences of a field in a record (XML: sc.extra), masked like the first
        extra: dict[int, list[int]] = getattr(sc, "extra", None) or {}
        x_edited: list[int] = []
        x_edits: list[np.ndarray] = []
        x_applieds: list[Applied] = []
        once_op = np.full(n, -1, np.int32)  # a one-value-per-record technique on a repeated field

        for oi, op in enumerate(ops):
            tech = REGISTRY[op.technique]
            kinds = sc.vkind[:, op.index]
            values = column(op.path) if tech.needs_values else null_strings(n)
            ctx = FieldContext(column, op.path, plan.key_path, self.rng)
            applied = tech.apply(values, kinds, op.spec, self.keyring, ctx)  # type: ignore[misc]
            first = (applied.err != 0) & (err_code == 0)
            err_code[first] = applied.err[first]
            err_op[first] = oi
            edit = (kinds != K_MISSING) & (kinds != K_NULL) & (applied.err == 0)
            edited.append(op.index)
            edits.append(edit)
            applieds.append(applied)
            for col in extra.get(op.index, ()):
                xk = sc.vkind[:, col]
                if op.technique in ONE_VALUE_PER_RECORD:
                    once_op[(xk != K_MISSING) & (once_op < 0)] = oi
                    continue
                xv = (
                    fmt.extract(data, sc, col)
                    if tech.needs_values
                    else pa.nulls(n, pa.large_string())
                )
                xa = tech.apply(xv, xk, op.spec, self.keyring, ctx)  # type: ignore[misc]
                first = (xa.err != 0) & (err_code == 0)
                err_code[first] = xa.err[first]
                err_op[first] = oi
                x_edited.append(col)
                x_edits.append((xk != K_MISSING) & (xk != K_NULL) & (xa.err == 0))
                x_applieds.append(xa)
        err_code[(once_op >= 0) & (err_code == 0)] = -1  # sent to the dead letters below
        invalid = sc.err != 0  # the whole record failed validation (its kinds read as missing)
        emit = (err_code == 0) & ~invalid
        if no_key is not None:  # records no router checked: a record without a usable key
            emit &= no_key < 0
        t_budget = time.perf_counter()
        dp = self._privacy(ops, applieds, edits, emit, subjects)
        emit &= ~dp.dropped
        t1 = time.perf_counter()
        reps = [fmt.write_values(a.values, a.raw) for a in applieds + x_applieds]
        for op, edit in zip(ops, edits, strict=True):  # values changed in records that leave
            counts[op.path] = int((edit & emit).sum())
        for col, edit in zip(x_edited, x_edits, strict=True):
            path = plan.paths[int(sc.leaf_of[col])]  # type: ignore[attr-defined]
            counts[path] = counts.get(path, 0) + int((edit & emit).sum())
        edits_all = edits + x_edits
        edit_m = np.stack(edits_all, axis=1) if edits_all else np.zeros((n, 0), np.bool_)
        out = fmt.emit(
            data,
            sc,
            plan.tree,
            plan.unknown_fields == "drop",
            plan.named,
            emit,
            edited + x_edited,
            edit_m,
            reps,
        )
        rep_rows = getattr(sc, "rep", None)  # Protobuf: records with a field more than once
        if rep_rows is not None and (rep_rows & emit).any():
            out = self._occurrences(
                view, data, sc, column, out, emit, rep_rows, err_code, err_op, once_op, edits,
                counts,
            )  # fmt: skip
        t2 = time.perf_counter()
        keep = np.flatnonzero(emit)
        dead = np.flatnonzero(~emit)
        reasons: list[str] = []
        fields: list[str | None] = []
        for r in dead:  # error path only
            if no_key is not None and no_key[r] >= 0:
                reason, fld = key_reason(plan, int(no_key[r])), plan.route_path
            elif invalid[r]:
                reason, fld = scan_reason(fmt, plan.paths, sc, int(r))
            elif dp.dropped[r]:
                reason, fld = BUDGET_REASON.format(path=plan.route_path), plan.route_path
            elif err_code[r] == -1:
                op = ops[int(once_op[r])]
                cnt = getattr(sc, "counts", None)
                where = "occurs more than once"
                if cnt is not None and cnt[r, op.index] <= 1:  # Protobuf: another field repeats
                    where = "in a record with a repeated field"
                reason = f"field {op.path}: {where}, and {op.technique} takes one value per record"
                fld = op.path
            else:
                op = ops[int(err_op[r])]
                reason = f"field {op.path}: {error_message(op.technique, int(err_code[r]))}"
                fld = op.path
            reasons.append(reason)
            fields.append(fld)
        seconds = {"decode": decode_s, "mask": t_budget - t_decode, "encode": t2 - t1}
        if self.ledger is not None:
            seconds["budget"] = t1 - t_budget
        else:
            seconds["mask"] += t1 - t_budget
        vault = None
        sides = [a.side for a in applieds if a.side is not None]
        if sides:  # the vault rows of the records that leave, by input row
            t = pa.concat_tables(sides)
            t = t.filter(pa.array(emit[t.column("row").to_numpy()]))
            vault = t.set_column(0, "row", pa.array(rows[t.column("row").to_numpy()]))
        privacy = None
        if dp.fields:
            privacy = PrivacyMeta(
                fields=dp.fields,
                epsilon=dp.epsilon[keep],
                delta=dp.delta[keep],
                suppressed=int(dp.suppressed.sum()),
                dropped=int(dp.dropped.sum()),
            )
        return MaskOutput(
            policy_version=plan.version,
            role=view.role,
            rows=rows[keep],
            records=out if len(keep) == n else take_strings(out, keep),
            dead_rows=rows[dead],
            dead_reasons=reasons,
            dead_fields=fields,
            counts=counts,
            seconds=seconds,
            privacy=privacy,
            vault=vault,
        )

    def _occurrences(self, view, data, sc, column, out, emit, rep_rows, err_code, err_op, once_op,
                     edits, counts) -> pa.Array:  # noqa: ANN001  # fmt: skip
        """Protobuf records in which a field occurs more than once, masked again from their
        input bytes one field occurrence at a time (`scan_occurrence` locates it and the
        message instances around it, `emit` fixes their lengths). A record with a
        one-value-per-record technique (local DP, segregate) on a field it has goes to the dead
        letters instead. An occurrence masked to null is removed (a packed element alone), so
        the record's later occurrences of that field move one place up: `gone` counts them.
        Returns `out` with these records replaced; `emit`, `err_code`, `err_op`, `once_op` and
        `counts` are updated in place."""
        plan, fmt = self.plan, self.fmt
        ops = view.changing
        cnt = sc.counts
        idx = np.flatnonzero(rep_rows & emit)
        for oi, op in enumerate(ops):
            if op.technique in ONE_VALUE_PER_RECORD:
                hit = idx[cnt[idx, op.index] > 0]
                once_op[hit[once_op[hit] < 0]] = oi
                err_code[hit[err_code[hit] == 0]] = -1
                emit[hit] = False
            counts[op.path] -= int(edits[oi][idx].sum())  # counted again below
        idx = idx[emit[idx]]
        if len(idx) == 0:
            return out
        lens = sc.ends[idx] - sc.starts[idx]
        pos = np.repeat(sc.starts[idx] - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        buf = data[pos + np.arange(int(lens.sum()))]
        off = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        recs = string_array(off, buf, None, binary=True)
        alive = np.ones(len(idx), np.bool_)
        for oi, op in enumerate(ops):
            tech = REGISTRY[op.technique]
            gone = np.zeros(len(idx), np.int64)  # occurrences of this field removed so far
            for j in range(int(cnt[idx, op.index].max())):
                sel = np.flatnonzero(alive & (cnt[idx, op.index] > j))
                if len(sel) == 0:
                    break
                b = string_buffers(recs.take(pa.array(sel)))
                d2, st, en = b.data, b.offsets[:-1], b.offsets[1:]
                sj = fmt.scan_occurrence(d2, st, en, sc.paths, op.index, j - gone[sel])
                kinds = sj.vkind[:, op.index]
                m = len(sel)
                values = fmt.extract(d2, sj, op.index) if tech.needs_values else pa.nulls(
                    m, pa.large_string())  # fmt: skip
                take = pa.array(idx[sel])
                ctx = FieldContext(lambda p, t=take: column(p).take(t), op.path, plan.key_path,
                                   self.rng)  # fmt: skip
                applied = tech.apply(values, kinds, op.spec, self.keyring, ctx)  # type: ignore[misc]
                bad = (applied.err != 0) | (sj.err != 0)
                if bad.any():
                    rows_bad = idx[sel[bad]]
                    first = err_code[rows_bad] == 0
                    err_code[rows_bad[first]] = np.maximum(applied.err[bad][first], 1)
                    err_op[rows_bad[first]] = oi
                    emit[rows_bad] = False
                    alive[sel[bad]] = False
                edit = (kinds != K_MISSING) & (kinds != K_NULL) & ~bad
                counts[op.path] += int(edit.sum())
                gone[sel] += edit & ~applied.values.is_valid().to_numpy(zero_copy_only=False)
                new = fmt.emit(d2, sj, plan.tree, False, plan.named, ~bad, [op.index],
                               edit[:, None], [applied.values])  # fmt: skip
                at = np.arange(len(idx))
                at[sel] = len(idx) + np.arange(m)
                recs = pa.concat_arrays([recs, new.cast(recs.type)]).take(pa.array(at))
        if plan.unknown_fields == "drop":
            recs = fmt.drop_unknown(recs, plan.tree, plan.named)
        at = np.arange(len(out))
        at[idx] = len(out) + np.arange(len(idx))
        return pa.concat_arrays([out, recs.cast(out.type)]).take(pa.array(at))

    def _leak_check(self, out: MaskOutput, view) -> tuple[list[tuple[str, str, int]], int]:  # noqa: ANN001
        """Scan a sample of the view's masked records for values still detectable."""
        lc = self.plan.leak_check
        n = len(out.records)
        if lc is None or n == 0:
            return [], 0
        pick = np.flatnonzero(self.leak_rng.random(n) < lc.sample)
        if len(pick) == 0:
            return [], 0
        ignore = released(view) if lc.ignore_kept else set()
        sample = out.records.take(pa.array(pick))
        if isinstance(self.fmt, CsvFormat):  # the output's own header (drop changes it)
            plan = self.plan
            header = self.fmt.header(plan.tree, plan.unknown_fields == "drop", plan.named)
            ofmt = format_for("csv", header_line=header, delimiter=self.fmt.delimiter)
            b = string_buffers(sample)
            found = scan_csv_batch(ofmt, b.data, b.offsets[:-1], b.offsets[1:] - 1, lc.types)
        else:
            found = scan_records(sample, lc.types)
        leaks = [(f, t, c) for (f, t), c in sorted(found.items()) if f not in ignore]
        return leaks, len(pick)

    def _privacy(self, ops, applieds, edits, emit, subjects) -> _Spend:  # noqa: ANN001
        """What each record's local-DP values cost, charged to its subject's allowance; records
        whose subject cannot pay are suppressed (noised fields null, no cost) or dropped."""
        n = len(emit)
        none = np.zeros(n, np.bool_)
        dp = [(oi, c) for oi, op in enumerate(ops) if (c := privacy_cost(op.spec)) is not None]
        if not dp:
            return _Spend({}, None, None, none, none)
        eps = np.zeros(n)
        delta = np.zeros(n)
        fields = {}
        released = []
        for oi, (e, d, _) in dp:
            op = ops[oi]
            fields[op.path] = (op.technique, e, d)
            spent = edits[oi] & emit  # a value is released only in a record that leaves
            eps[spent] += e
            delta[spent] += d
            released.append(spent)
        if self.ledger is None:
            return _Spend(fields, eps, delta, none, none)
        refused = emit & ~self._charge(subjects, released, [c for _, c in dp])
        if not refused.any():
            return _Spend(fields, eps, delta, none, none)
        eps[refused] = 0.0
        delta[refused] = 0.0
        if self.ledger.budget.exhausted == "drop":
            return _Spend(fields, eps, delta, none, refused)
        keep = pa.array(~refused)
        for oi, _ in dp:  # suppress: the noised fields of refused records become null
            a = applieds[oi]
            a.values = pc.if_else(keep, a.values, pa.scalar(None, a.values.type))
        return _Spend(fields, eps, delta, refused, none)

    def _charge(self, subjects, released, costs) -> np.ndarray:  # noqa: ANN001
        """Charge each record what it released (`released[j]`: it released noised field j,
        which costs `costs[j]` = (epsilon, delta, rho)) to its subject's allowance. With at most
        eight noised fields a record's cost is passed as its class, the set of fields it
        released in one byte, and the cost of each class once: the ledger's kernel then reads
        a byte per record instead of three int64 columns built by 3 x fields array passes."""
        unit = np.array(
            [[units(e, EPS_UNIT, up=True), units(r, EPS_UNIT, up=True), units(d, DELTA_UNIT, up=True)]
             for e, d, r in costs], np.int64,
        )  # fmt: skip
        if len(unit) <= 8:
            cls = np.zeros(len(subjects), np.uint8)
            for bit, spent in enumerate(released):
                cls |= spent.view(np.uint8) << np.uint8(bit)
            m = np.arange(1 << len(unit))
            per_class = ((m[:, None] >> np.arange(len(unit))) & 1) @ unit  # (classes, 3)
            return self.ledger.charge_classes(subjects, cls, *per_class.T)
        c = np.zeros((3, len(subjects)), np.int64)
        for spent, u in zip(released, unit, strict=True):
            c[:, spent] += u[:, None]
        return self.ledger.charge(subjects, *c)


def released(view) -> set[str]:  # noqa: ANN001
    """Fields a view releases on purpose in a form a detector may still recognise (keep, and
    generalize: an IP prefix is an IP): the leak monitor does not report them."""
    return {op.path for op in view.ops if op.technique in ("keep", "generalize")}


def detect_unknown_fields(
    data: np.ndarray, sc: Scan, spec: Detect, keyring: Keyring
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """NDJSON records with what `spec` finds in the values of fields the policy does not name
    replaced (strings and numbers at any depth; numbers with a span become strings). Returns
    the new (data, starts, ends) and the spans replaced per type; the records are unchanged
    (same buffer) when nothing was found. Invalid records are left for the dead letters."""
    rec, vs, ve, vk = json_values.scalar_values(
        data, sc.starts, sc.ends, sc.err == 0, sc.vstart, sc.vend, sc.vkind
    )
    if len(rec) == 0:
        return data, sc.starts, sc.ends, {}
    values = ndjson.extract(data, vs, ve, vk)
    return _splice_detected(data, sc, rec, vs, ve, values, spec, keyring, ndjson.quote,
                            json_values.rewrite)  # fmt: skip


def detect_unknown_columns(
    data: np.ndarray, sc: Scan, fmt: CsvFormat, known: tuple[str, ...], spec: Detect,
    keyring: Keyring,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:  # fmt: skip
    """`detect_unknown_fields` for CSV: the columns of the header that the policy does not
    mention are located, scanned as whole columns, and the cells with a span rewritten."""
    cols = [c for c in dict.fromkeys(fmt.columns) if c not in set(known)]
    ok = sc.err == 0
    if not cols or not ok.any():
        return data, sc.starts, sc.ends, {}
    usc = csv_codec.scan(data, sc.starts, sc.ends, fmt.columns, cols, fmt.delimiter)
    values = fmt.extract_many(data, usc, list(range(len(cols))))
    edit = np.zeros((len(sc.starts), len(cols)), np.bool_)
    reps = []
    found: dict[str, int] = {}
    for j, col in enumerate(values):
        new, spans = detect_and_replace(col, spec, keyring)
        edit[spans.record, j] = True
        reps.append(fmt.write_values(new, None))
        for t, c in spans.counts().items():
            found[t] = found.get(t, 0) + c
    edit &= ok[:, None] & (usc.err == 0)[:, None]
    if not edit.any():
        return data, sc.starts, sc.ends, {}
    out = splice(data, usc, np.ones(len(sc.starts), np.bool_), list(range(len(cols))), edit, reps,
                 empty_as=b'""')  # fmt: skip
    b = string_buffers(out)
    starts = b.offsets[:-1] - b.offsets[0]
    ends = b.offsets[1:] - b.offsets[0] - 1  # without the newline
    return b.data[b.offsets[0] : b.offsets[-1]], starts, ends, found


def detect_unknown_xml(
    data: np.ndarray, sc: Scan, spec: Detect, keyring: Keyring
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """`detect_unknown_fields` for XML: every text run, CDATA section and attribute value in a
    record element that is not inside a field the policy names is scanned, and the ones with a
    span rewritten (escaped). Records are unchanged (same buffer) when nothing was found."""
    rec, vs, ve, attr = xml_codec.unknown_spans(data, sc, sc.err == 0)
    if len(rec) == 0:
        return data, sc.starts, sc.ends, {}
    ti, ai = np.flatnonzero(~attr), np.flatnonzero(attr)
    parts = [xml_codec.unescape_spans(data, vs[ti], ve[ti], False),
             xml_codec.unescape_spans(data, vs[ai], ve[ai], True)]  # fmt: skip
    order = np.empty(len(rec), np.int64)
    order[np.concatenate([ti, ai])] = np.arange(len(rec))
    values = pa.concat_arrays(parts).take(pa.array(order))
    return _splice_detected(data, sc, rec, vs, ve, values, spec, keyring, xml_codec.escape,
                            xml_codec.rewrite)  # fmt: skip


def _splice_detected(data, sc, rec, vs, ve, values, spec, keyring, escape, rewrite):  # noqa: ANN001, ANN202
    """Replace what `detect` finds in `values` (value i at data[vs[i]:ve[i]] of record rec[i])
    and splice the changed values back, written by the format's `escape` and `rewrite`."""
    new, spans = detect_and_replace(values, spec, keyring)
    if len(spans) == 0:
        return data, sc.starts, sc.ends, {}
    hit = np.unique(spans.record)
    rep_off, rep_data = escape(new.take(pa.array(hit)))
    out, starts, ends = rewrite(
        data, sc.starts, sc.ends, rec[hit], vs[hit], ve[hit], rep_off, rep_data
    )
    return out, starts, ends, spans.counts()


def merge_outputs(outputs: list[MaskOutput]) -> tuple[pa.Array, np.ndarray]:
    """The masked records of several workers' outputs for one chunk, in input-row order, and
    their rows."""
    if not outputs:
        return pa.array([], pa.large_binary()), np.zeros(0, np.int64)
    if len(outputs) == 1:  # one worker's rows are in order already
        return outputs[0].records, outputs[0].rows
    rows = np.concatenate([o.rows for o in outputs])
    recs = pa.concat_arrays([o.records for o in outputs])
    order = np.argsort(rows, kind="stable")
    return take_strings(recs, order), rows[order]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _make_actor():  # Ray is imported only where actors are made, never by the pure core
    import ray

    # Ray restarts a worker that dies; the driver resends its lost batches (max_task_retries=0: the
    # driver, not Ray, decides what to resend, after handing the worker the right policy version).
    @ray.remote(num_cpus=0.5, max_restarts=-1, max_task_retries=0)
    class MaskWorker:
        """Ray actor around MaskCore; batches arrive and leave as Arrow through the object store."""

        def __init__(
            self, policy: dict, stream: str, keyring: Keyring, fmt: Format, throttle_s: float = 0.0,
            ledger_uri: str | None = None, shard: int = 0, shards: int = 1,
            capacity_rps: float = 0.0,
        ) -> None:  # fmt: skip
            tune_malloc()  # batch buffers reuse mapped pages instead of faulting in new ones
            self.core = MaskCore(
                policy, stream, keyring, fmt, ledger_uri=ledger_uri, shard=shard, shards=shards
            )
            self.throttle_s = throttle_s  # fault injection: a slow worker, for backpressure tests
            # a worker of this capacity (records/s; 0: as fast as it is), for scaling tests on a
            # machine whose cores cannot show real workers: a sleep per batch, no CPU taken
            self.capacity_rps = capacity_rps

        def set_layout(self, shard: int, shards: int, reload: bool = False) -> bool:
            self.core.set_layout(shard, shards, reload)
            return True

        def process(
            self, batch: pa.RecordBatch, role: str | None = None, rows: np.ndarray | None = None
        ) -> MaskOutput:
            if self.throttle_s:
                time.sleep(self.throttle_s)
            return self.core.process(batch, role, rows)

        def process_views(
            self, batch: pa.RecordBatch, roles: list[str | None], rows: np.ndarray | None = None,
            fmt: Format | None = None,
        ) -> list[MaskOutput]:  # fmt: skip
            """`fmt`: the records' format for this call only (a CSV body's columns over HTTP)."""
            if self.throttle_s:
                time.sleep(self.throttle_s)
            if self.capacity_rps:
                n = batch.num_rows if rows is None else len(rows)
                time.sleep(n / self.capacity_rps)
            if fmt is None:
                return self.core.process_views(batch, roles, rows)
            own, self.core.fmt = self.core.fmt, fmt
            try:
                return self.core.process_views(batch, roles, rows)
            finally:
                self.core.fmt = own

        def node_id(self) -> str:
            """The Ray node this worker runs on (the driver sends file spans only to its own)."""
            return ray.get_runtime_context().get_node_id()

        def rss_bytes(self) -> int:
            """This worker process's resident memory (Linux), for memory-bound tests."""
            return _rss_bytes()

        def set_policy(self, policy: dict) -> int:
            return self.core.set_policy(policy)

        def warm(self) -> bool:
            """Compile what Numba cannot cache (the OpenSSL SHA-256 kernel embeds an address that
            changes per process) and load the running policy's kernels before the first batch,
            so neither lands on a batch's latency."""
            from raymask.kernels.tokenize import hmac_sha256

            hmac_sha256(pa.array(["warm-up"]), b"\0" * 32)
            self.core.warm()
            return True

    return MaskWorker


MaskWorker = LazyActor(_make_actor)
