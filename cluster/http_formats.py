"""HTTP bodies in CSV, XML and length-delimited Protobuf: a body becomes records for the
ingress's masking buffer, and the masked records become a body in the same format again.

The ingress joins the bodies of many callers into one buffer per stream and view (see
serve_app.py), so each decoded body must stand alone in that buffer: no record may run into the
next caller's. Hence:
- CSV: the header line is taken off (requests are joined only with requests of the same
  header, which gives the columns); the rows must end outside a quoted cell.
- XML: the records are the elements at the stream's record path, matched from the root; the
  buffer gets the record elements alone, and the prolog, the markup between records and the
  epilogue stay with the request, so the answer is the whole document again with each element
  masked (a failed record leaves its element out, as in file runs). Every record element must
  be closed.
- Protobuf: whole length-delimited frames (the last one must end where the body ends).
A body that breaks these rules is a 400 with one line (positions and record numbers, never
content). Records are numbered from 0 in the body (CSV: the rows after the header, blank lines
not counted), which is the `index` of a per-record error.

The masking itself is the stream's format (kernels/codecs/formats.py); the subclasses here only
number records by their position in the request instead of by line.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numba import njit

from raymask.errors import InputError
from raymask.kernels._arrow import string_buffers
from raymask.kernels.codecs import csv as csv_codec
from raymask.kernels.codecs import protobuf as pb
from raymask.kernels.codecs import xml as xml_codec
from raymask.kernels.codecs.formats import CsvFormat, Format, ProtobufFormat, XmlFormat
from raymask.policy.compile import StreamPlan
from raymask.policy.schema import Policy

__all__ = [
    "MEDIA_KINDS", "BodyError", "Decoded", "BodyCodec", "CsvBody", "XmlBody", "ProtobufBody",
    "body_codec", "absolute_schema_paths",
]  # fmt: skip

# Content-Type (without parameters) -> the format it carries
MEDIA_KINDS = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/xml": "xml",
    "text/xml": "xml",
    "application/x-protobuf": "protobuf",
    "application/protobuf": "protobuf",
    "application/vnd.google.protobuf": "protobuf",
}
MEDIA_TYPES = {
    "csv": ("text/csv",),
    "xml": ("application/xml", "text/xml"),
    "protobuf": ("application/x-protobuf", "application/protobuf"),
}


class BodyError(ValueError):
    """The body cannot be cut into records (a 400; the message names a position, never data)."""


@dataclass
class Decoded:
    """One request's records, ready to be joined with other requests' records."""

    data: np.ndarray  # uint8: the records, each standing alone
    records: int
    fmt: Format  # the format the records are masked in
    # requests are joined only when their groups are equal: the CSV header, whose format comes
    # with the body; None when the stream's format is fixed (XML, Protobuf)
    group: Any
    context: tuple = ()  # what `encode` needs besides the masked records


class BodyCodec:
    """Decode a body into records and encode masked records into a body, for one stream."""

    kind = ""

    def __init__(self, plan: StreamPlan) -> None:
        self.plan = plan

    @property
    def fixed_format(self) -> Format | None:
        """The format of every request of the stream, when it does not depend on the body."""
        return None

    def decode(self, body: bytes) -> Decoded:
        raise NotImplementedError

    def encode(self, d: Decoded, records: pa.Array, index: np.ndarray) -> bytes:
        """The answer body: `records` are the masked records (binary) of the records numbered
        `index` (ascending); the others failed."""
        raise NotImplementedError


def _joined(records: pa.Array) -> bytes:
    if len(records) == 0:
        return b""
    b = string_buffers(records)
    return b.data[int(b.offsets[0]) : int(b.offsets[-1])].tobytes()


# ---------------------------------------------------------------------------------------- CSV


class _CsvByIndex(CsvFormat):
    def split(self, data, base_line):
        s, e, _ = csv_codec.split_records(data, base_line)
        return s, e, base_line + np.arange(len(s), dtype=np.int64)


class CsvBody(BodyCodec):
    """A header line, then rows; the answer has the output header (without the dropped columns
    when `unknown_fields: drop`) and the masked rows."""

    kind = "csv"
    MAX_HEADERS = 64  # formats kept per stream (one per distinct header seen)

    def __init__(self, plan: StreamPlan) -> None:
        super().__init__(plan)
        self.formats: OrderedDict[bytes, _CsvByIndex] = OrderedDict()

    def _format(self, header: bytes) -> _CsvByIndex:
        fmt = self.formats.get(header)
        if fmt is None:
            try:
                cols = csv_codec.parse_header(header, self.plan.delimiter)
            except csv_codec.DuplicateColumn:
                raise BodyError("the CSV header names a column twice") from None
            except (UnicodeDecodeError, StopIteration, ValueError):
                raise BodyError("the CSV header line is not UTF-8 text in CSV syntax") from None
            fmt = _CsvByIndex(cols, header, self.plan.delimiter)
            self.formats[header] = fmt
            if len(self.formats) > self.MAX_HEADERS:
                self.formats.popitem(last=False)
        else:
            self.formats.move_to_end(header)
        return fmt

    def decode(self, body: bytes) -> Decoded:
        cut = body.find(b"\n")
        header = (body if cut < 0 else body[: cut + 1]).replace(b"\r\n", b"\n")
        if not header.strip():
            raise BodyError("the CSV body has no header line")
        if not header.endswith(b"\n"):
            header += b"\n"
        fmt = self._format(header)
        rows = b"" if cut < 0 else body[cut + 1 :]
        if rows and not rows.endswith(b"\n"):
            rows += b"\n"
        data = np.frombuffer(rows, np.uint8)
        if len(data) and csv_codec.record_boundary(data) != len(data):
            line = 2 + rows[: csv_codec.record_boundary(data) + 1].count(b"\n")
            raise BodyError(f"the body ends inside a quoted cell (opened on line {line} or later)")
        n = len(csv_codec.split_records(data, 0)[0])
        return Decoded(data, n, fmt, header)

    def encode(self, d: Decoded, records: pa.Array, index: np.ndarray) -> bytes:
        plan = self.plan
        head = d.fmt.header(plan.tree, plan.unknown_fields == "drop", plan.named)
        return head + _joined(records)


# ---------------------------------------------------------------------------------------- XML


class _XmlByIndex(XmlFormat):
    def split(self, data, base_line):
        s, e, _ = super().split(data, base_line)
        return s, e, base_line + np.arange(len(s), dtype=np.int64)


@njit(cache=True)
def _gather(body, starts, ends, out):
    o = 0
    for r in range(starts.shape[0]):
        for p in range(starts[r], ends[r]):
            out[o] = body[p]
            o += 1
    return o


@njit(cache=True)
def _document(body, prolog_end, gaps_s, gaps_e, rec_off, rec_data, has, pos, out):
    """Prolog, then per record its masked element (when it has one) and the markup after it."""
    o = 0
    for p in range(prolog_end):
        out[o] = body[p]
        o += 1
    for r in range(gaps_s.shape[0]):
        if has[r]:
            k = pos[r]
            for q in range(rec_off[k], rec_off[k + 1]):
                out[o] = rec_data[q]
                o += 1
        for p in range(gaps_s[r], gaps_e[r]):
            out[o] = body[p]
            o += 1
    return o


class XmlBody(BodyCodec):
    """A document; the records are the elements at the stream's record path. The answer is the
    document with each record element masked, or left out when its record failed."""

    kind = "xml"

    def __init__(self, plan: StreamPlan) -> None:
        super().__init__(plan)
        o = plan.format_options
        self.record = o["record"]
        self.namespaces = o.get("namespaces") or {}
        self.fmt = _XmlByIndex(self.record, self.namespaces)
        self.lay = self.fmt.layout(())

    @property
    def fixed_format(self) -> Format:
        return self.fmt

    def decode(self, body: bytes) -> Decoded:
        data = np.frombuffer(body, np.uint8)
        starts, ends = xml_codec.record_spans(data, self.lay)
        prolog = body if len(starts) == 0 else body[: int(starts[0])]
        try:
            xml_codec.check_prolog(prolog, self.namespaces, self.record)
        except xml_codec.XmlError as exc:
            raise BodyError(str(exc)) from None
        n = len(starts)
        if n and ends[-1] < 0:
            line = 1 + body[: int(starts[-1])].count(b"\n")
            raise BodyError(f"record element {n - 1} (line {line}) is not closed")
        lens = ends - starts
        out = np.empty(int(lens.sum()), np.uint8)
        _gather(data, starts, ends, out)
        gaps_e = np.empty(n, np.int64)
        gaps_e[:-1] = starts[1:]
        if n:
            gaps_e[-1] = len(body)
        ctx = (data, int(starts[0]) if n else len(body), ends, gaps_e)
        return Decoded(out, n, self.fmt, None, ctx)

    def encode(self, d: Decoded, records: pa.Array, index: np.ndarray) -> bytes:
        data, prolog_end, gaps_s, gaps_e = d.context
        n = d.records
        has = np.zeros(n, np.bool_)
        pos = np.zeros(n, np.int64)
        has[index] = True
        pos[index] = np.arange(len(index))
        if len(records):
            b = string_buffers(records)
            rec_off, rec_data = b.offsets, b.data
        else:
            rec_off, rec_data = np.zeros(1, np.int64), np.zeros(1, np.uint8)
        size = prolog_end + int((gaps_e - gaps_s).sum()) + int(rec_off[-1] - rec_off[0])
        out = np.empty(size, np.uint8)
        w = _document(data, prolog_end, gaps_s, gaps_e, rec_off, rec_data, has, pos, out)
        return out[:w].tobytes()


# ----------------------------------------------------------------------------------- Protobuf


class ProtobufBody(BodyCodec):
    """Length-delimited messages of the stream's type (a varint length, then the message); the
    answer is the masked messages, delimited the same way."""

    kind = "protobuf"

    def __init__(self, plan: StreamPlan, descriptor_set: bytes) -> None:
        super().__init__(plan)
        self.fmt = ProtobufFormat(descriptor_set, plan.format_options["message"])

    @property
    def fixed_format(self) -> Format:
        return self.fmt

    def decode(self, body: bytes) -> Decoded:
        data = np.frombuffer(body, np.uint8)
        s, e, _ = pb.split(data, 0)
        n = len(s)
        if n:  # the last frame must be whole: in the joined buffer it would run into the next
            last = body[int(s[-1]) : int(e[-1])]
            size, used = _varint(last)
            if used < 0 or size > pb.MAX_MESSAGE:
                raise BodyError(f"message {n - 1} (at byte {int(s[-1])}) has no readable length")
            if used + size != len(last):
                raise BodyError(
                    f"the body ends inside message {n - 1} (at byte {int(s[-1])}): its length "
                    f"prefix says {size} bytes, {len(last) - used} follow"
                )
        return Decoded(data, n, self.fmt, None)

    def encode(self, d: Decoded, records: pa.Array, index: np.ndarray) -> bytes:
        return _joined(records)


def _varint(b: bytes) -> tuple[int, int]:
    """(value, bytes used) of the varint at the start of `b`; used -1 when unreadable."""
    v = 0
    for k, c in enumerate(b[:10]):
        v |= (c & 0x7F) << (7 * k)
        if c < 0x80:
            return v, k + 1
    return v, -1


# -------------------------------------------------------------------------------------- setup


def body_codec(plan: StreamPlan) -> BodyCodec | None:
    """The body codec of a stream's format (None for NDJSON, which serve_app reads itself).
    InputError when the stream's schema cannot be loaded or does not fit its fields."""
    if plan.format == "csv":
        return CsvBody(plan)
    if plan.format == "xml":
        codec: BodyCodec = XmlBody(plan)
    elif plan.format == "protobuf":
        try:
            ds = pb.load_descriptor_set(plan.format_options)
        except (OSError, ValueError) as exc:
            what = plan.format_options.get("descriptor_set") or plan.format_options.get("proto")
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InputError(f"stream {plan.stream}: schema {what}: {why}") from None
        try:
            codec = ProtobufBody(plan, ds)
        except ValueError as exc:
            raise InputError(f"stream {plan.stream}: {exc}") from None
    else:
        return None
    problems = codec.fixed_format.check(plan)  # type: ignore[union-attr]
    if problems:
        raise InputError("; ".join(problems))
    return codec


def absolute_schema_paths(policy: Policy, folder: str | Path) -> Policy:
    """The policy with its streams' protobuf schema files (`proto`, `descriptor_set`,
    `include`) taken relative to `folder` (the policy file's), as file runs read them."""
    streams = {}
    for name, s in policy.streams.items():
        o = getattr(s, "protobuf", None)
        if s.format != "protobuf" or o is None:
            streams[name] = s
            continue

        def fix(p: str | None) -> str | None:
            return p if p is None or Path(p).is_absolute() else str(Path(folder) / p)

        changes = {}
        for attr in ("proto", "descriptor_set"):
            if getattr(o, attr, None):
                changes[attr] = fix(getattr(o, attr))
        if getattr(o, "include", None):
            changes["include"] = [fix(i) for i in o.include]
        streams[name] = s.model_copy(update={"protobuf": o.model_copy(update=changes)})
    return policy.model_copy(update={"streams": streams})
