"""One interface over the wire formats: split, scan, extract, write values, emit records."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from raymask.kernels._keepgil import take_cols
from raymask.kernels.codecs import csv as csv_codec
from raymask.kernels.codecs import ndjson
from raymask.kernels.codecs import protobuf as pb
from raymask.kernels.codecs import xml as xml_codec
from raymask.kernels.codecs.paths import PathTree
from raymask.kernels.codecs.spans import Scan, splice

if TYPE_CHECKING:
    from raymask.policy.compile import StreamPlan

__all__ = [
    "Format", "NdjsonFormat", "CsvFormat", "XmlFormat", "XmlValuesFormat", "ProtobufFormat",
    "format_for",
]  # fmt: skip


class Format:
    """A wire format. Subclasses are plain data plus kernel calls; no per-record Python."""

    name = ""
    errors: dict[int, str] = {}
    keeps_tails = False  # does `tail` keep part of a dead record in the output?

    def boundary(self, data: np.ndarray) -> int:
        """Position after the last complete record in `data` (-1 if none)."""
        return int(ndjson.last_newline(data))

    def split(self, data: np.ndarray, base_line: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def units(self, data: np.ndarray) -> int:
        """How far `data` moves the line counter (lines; records for binary formats)."""
        return int(np.count_nonzero(data == 10))

    def split_counted(
        self, data: np.ndarray, base_line: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """`split` and `units` of the same data (a format may do both in one pass)."""
        return (*self.split(data, base_line), self.units(data))

    def tail(self, raw: bytes) -> bytes:
        """What of a dead record's bytes stays in the output (XML: the markup after its element,
        so the document stays whole); nothing for line formats."""
        return b""

    def scan(
        self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, tree: PathTree,
        locate_only: bool = False,
    ) -> Scan:  # fmt: skip
        """Validate records and locate the tree's fields. `locate_only` allows a format to stop
        reading a record once its fields are found (the rest is validated by a later full scan)."""
        raise NotImplementedError

    def extract(self, data: np.ndarray, sc: Scan, leaf: int) -> pa.Array:
        return self.extract_many(data, sc, [leaf])[0]

    def extract_many(self, data: np.ndarray, sc: Scan, leaves: list[int]) -> list[pa.Array]:
        """The values of several fields, in one pass over the records."""
        raise NotImplementedError

    def write_values(
        self, values: pa.Array, raw: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def emit(
        self, data: np.ndarray, sc: Scan, tree: PathTree, drop_unknown: bool, named: int,
        emit: np.ndarray, edited: list[int], edit: np.ndarray, reps: list[tuple[np.ndarray, np.ndarray]],
    ) -> pa.Array:  # fmt: skip
        raise NotImplementedError

    def header(self, tree: PathTree, drop_unknown: bool, named: int) -> bytes:
        return b""

    def check(self, plan: StreamPlan) -> list[str]:
        """What of a compiled plan this format cannot run (located messages), before data moves."""
        return []


class NdjsonFormat(Format):
    name = "ndjson"
    errors = ndjson.ERRORS

    def split(self, data, base_line):
        return ndjson.split_records(data, base_line)

    def split_counted(self, data, base_line):
        return ndjson.split_counted(data, base_line)

    def units(self, data):
        return ndjson.count_lines(np.ascontiguousarray(data))

    def scan(self, data, starts, ends, tree, locate_only=False):
        return ndjson.scan(data, starts, ends, tree, locate_only)

    def extract_many(self, data, sc, leaves):
        cols = np.asarray(leaves, np.int64)
        return ndjson.extract_columns(
            data, take_cols(sc.vstart, cols), take_cols(sc.vend, cols), take_cols(sc.vkind, cols)
        )

    def write_values(self, values, raw):
        return ndjson.quote(values, raw)

    def emit(self, data, sc, tree, drop_unknown, named, emit, edited, edit, reps):
        if drop_unknown:
            return ndjson.build_objects(data, sc, tree, emit, edited, edit, reps)
        return splice(data, sc, emit, edited, edit, reps)


class CsvFormat(Format):
    name = "csv"
    errors = csv_codec.ERRORS

    def __init__(self, header: list[str], header_line: bytes, delimiter: str = ",") -> None:
        self.columns = header
        self.header_line = header_line
        self.delimiter = delimiter

    def boundary(self, data):
        return csv_codec.record_boundary(data)

    def split(self, data, base_line):
        return csv_codec.split_records(data, base_line)

    def scan(self, data, starts, ends, tree, locate_only=False):
        return csv_codec.scan(data, starts, ends, self.columns, tree.paths, self.delimiter)

    def extract_many(self, data, sc, leaves):
        return csv_codec.extract_columns(
            data, sc.vstart[:, leaves], sc.vend[:, leaves], sc.vkind[:, leaves]
        )

    def write_values(self, values, raw):
        return csv_codec.quote(values, self.delimiter)

    def _kept_columns(self, tree: PathTree, named: int) -> list[int]:
        pos = {p: i for i, p in enumerate(tree.paths[:named])}
        return [pos[c] for c in self.columns if c in pos]

    def emit(self, data, sc, tree, drop_unknown, named, emit, edited, edit, reps):
        if not drop_unknown:
            return splice(data, sc, emit, edited, edit, reps, empty_as=b'""')
        cols = self._kept_columns(tree, named)
        n = len(sc.starts)
        full_edit = np.zeros((n, len(cols)), np.bool_)
        full_reps: list[tuple[np.ndarray, np.ndarray]] = []
        where = {f: k for k, f in enumerate(edited)}
        for j, c in enumerate(cols):
            if c in where:
                full_edit[:, j] = edit[:, where[c]]
                full_reps.append(reps[where[c]])
            else:
                full_reps.append((np.zeros(n + 1, np.int64), np.zeros(0, np.uint8)))
        return csv_codec.select_columns(data, sc, cols, emit, full_edit, full_reps, self.delimiter)

    def header(self, tree, drop_unknown, named):
        if not drop_unknown:
            return self.header_line
        cols = self._kept_columns(tree, named)
        names = [tree.paths[c] for c in cols]
        vals = pa.array(names, pa.large_string())
        off, data = csv_codec.quote(vals, self.delimiter)
        parts = [bytes(data[off[i] : off[i + 1]]) for i in range(len(names))]
        return self.delimiter.encode().join(parts) + b"\n"


class XmlFormat(Format):
    """Records are the elements at `record`; the prolog (everything before the first record) is
    the header. See codecs/xml.py for the framing."""

    name = "xml"
    errors = xml_codec.ERRORS
    keeps_tails = True

    def __init__(
        self, record: str, namespaces: dict[str, str] | None = None, prolog: bytes = b""
    ) -> None:
        self.record = record
        self.namespaces = dict(namespaces or {})
        self.prolog = prolog
        self._layouts: dict[tuple[str, ...], xml_codec.XmlLayout] = {}

    def layout(self, paths: tuple[str, ...]) -> xml_codec.XmlLayout:
        lay = self._layouts.get(paths)
        if lay is None:
            lay = self._layouts[paths] = xml_codec.build_layout(self.record, paths)
        return lay

    def boundary(self, data):
        return xml_codec.boundary(data, self.layout(()))

    def split(self, data, base_line):
        return xml_codec.split(data, base_line, self.layout(()))

    def scan(self, data, starts, ends, tree, locate_only=False):
        sc = xml_codec.scan(data, starts, ends, self.layout(tree.paths), locate_only)
        sc.paths = tree.paths  # type: ignore[attr-defined]
        return sc

    def extract_many(self, data, sc, leaves):
        return xml_codec.extract_columns(data, sc, self.layout(sc.paths), leaves)

    def write_values(self, values, raw):
        return xml_codec.escape(values)

    def emit(self, data, sc, tree, drop_unknown, named, emit, edited, edit, reps):
        out = xml_codec.emit(data, sc, emit, edited, edit, reps)
        if drop_unknown:  # only the fields the policy names (not the key, unless named)
            out = xml_codec.drop_unknown(out, self.layout(tuple(tree.paths[:named])))
        return out

    def header(self, tree, drop_unknown, named):
        return self.prolog

    def tail(self, raw):
        return xml_codec.tail(raw)

    def check(self, plan):
        problems = []
        for paths in (plan.paths, (plan.route_path,)):
            try:
                self.layout(tuple(paths))
            except ValueError as exc:
                problems.append(f"streams.{plan.stream}.fields: {exc}")
        return problems


class XmlValuesFormat(XmlFormat):
    """One record element per value (Kafka message values), the values in length-delimited
    frames: a record is the value's bytes (an XML declaration, comments and whitespace around
    the element are kept). A value whose first element is not a record element is a dead letter:
    read as a record, its fields would all be missing and it would pass through unmasked."""

    E_ROOT = 20

    def __init__(self, record: str, namespaces: dict[str, str] | None = None) -> None:
        super().__init__(record, namespaces)
        last = record.strip("/").split("/")[-1]
        self.errors = {
            **xml_codec.ERRORS,
            self.E_ROOT: f"the value's first element is not a record element ({last})",
        }

    def boundary(self, data):
        return pb.boundary(data)

    def split(self, data, base_line):
        return pb.payload_split(data, base_line)

    def units(self, data):
        return pb.count_frames(data)

    def scan(self, data, starts, ends, tree, locate_only=False):
        sc = super().scan(data, starts, ends, tree, locate_only)
        bad = (sc.err == 0) & ~xml_codec.root_is_record(data, starts, ends, self.layout(()))
        if bad.any():
            sc.err[bad] = self.E_ROOT
            sc.errpos[bad] = 0
            sc.errfield[bad] = -1
        return sc


class ProtobufFormat(Format):
    """Length-delimited messages of one type from a compiled descriptor set."""

    name = "protobuf"
    errors = pb.ERRORS

    def __init__(self, descriptor_set: bytes, message: str) -> None:
        self.descriptor_set = descriptor_set
        self.message = message
        self._layouts: dict[tuple[str, ...], pb.ProtoLayout] = {}
        self.layout(())  # the message must exist

    def layout(self, paths: tuple[str, ...]) -> pb.ProtoLayout:
        lay = self._layouts.get(paths)
        if lay is None:
            lay = self._layouts[paths] = pb.load_layout(self.descriptor_set, self.message, paths)
        return lay

    def boundary(self, data):
        return pb.boundary(data)

    def split(self, data, base_line):
        return pb.split(data, base_line)

    def units(self, data):
        return pb.count_frames(data)

    def scan(self, data, starts, ends, tree, locate_only=False):
        sc = pb.scan(data, starts, ends, self.layout(tree.paths))
        sc.paths = tree.paths  # type: ignore[attr-defined]
        return sc

    def extract_many(self, data, sc, leaves):
        return pb.extract_columns(data, sc, self.layout(sc.paths), leaves)

    def scan_occurrence(
        self, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, paths: tuple[str, ...],
        leaf: int, occ: int | np.ndarray,
    ) -> pb.ProtoScan:  # fmt: skip
        """Occurrence `occ` (one, or one per record) of field `leaf` alone (see protobuf.scan),
        for `emit`."""
        sc = pb.scan(data, starts, ends, self.layout(paths), target=leaf, occ=occ)
        sc.paths = paths  # type: ignore[attr-defined]
        return sc

    def write_values(self, values, raw):
        # encoded in `emit`, where each field's type is known
        return values  # type: ignore[return-value]

    def emit(self, data, sc, tree, drop_unknown, named, emit, edited, edit, reps):
        out = pb.emit(data, sc, self.layout(sc.paths), emit, edited, edit, reps)
        return self.drop_unknown(out, tree, named) if drop_unknown else out

    def drop_unknown(self, records: pa.Array, tree: PathTree, named: int) -> pa.Array:
        """Emitted frames with only the fields the policy names (`unknown_fields: drop`)."""
        return pb.drop_unknown(records, self.layout(tuple(tree.paths[:named])))

    # techniques whose output is a number (or boolean) for a number (or boolean) value
    NUMERIC_TECHNIQUES = ("keep", "redact", "generalize", "noise", "randomized_response")

    def check(self, plan):
        where = f"streams.{plan.stream}"
        try:
            lay = self.layout(tuple(plan.paths))
            self.layout((plan.route_path,))
        except ValueError as exc:
            return [f"{where}.fields: {exc} (message {self.message})"]
        problems = []
        for role, view in plan.views.items():
            label = "fields" if role == "default" else f"views.{role}"
            for op in view.ops:
                t = int(lay.ftype[lay.leaf_node[op.index]])
                if t != pb.T_STRING and op.technique not in self.NUMERIC_TECHNIQUES:
                    problems.append(
                        f"{where}.{label}.{op.path}: technique {op.technique} writes text, but the "
                        f"field is a protobuf {pb.TYPE_NAMES[t]} (numeric and bool fields take "
                        f"{', '.join(self.NUMERIC_TECHNIQUES)})"
                    )
        return problems


def format_for(
    name: str, *, header_line: bytes | None = None, delimiter: str = ",",
    options: dict | None = None, prolog: bytes = b"",
) -> Format:  # fmt: skip
    """The format `name`; `options` are the stream's `xml:` or `protobuf:` settings (for
    protobuf, `descriptor_set` holds the compiled set's bytes)."""
    if name == "xml":
        o = options or {}
        if not o.get("record"):
            raise ValueError("XML needs its record path")
        return XmlFormat(o["record"], o.get("namespaces"), prolog)
    if name == "protobuf":
        o = options or {}
        return ProtobufFormat(o["descriptor_set"], o["message"])
    if name == "ndjson":
        return NdjsonFormat()
    if name == "csv":
        if header_line is None:
            raise ValueError("CSV needs its header line")
        line = header_line if header_line.endswith(b"\n") else header_line + b"\n"
        return CsvFormat(
            csv_codec.parse_header(line, delimiter), line.replace(b"\r\n", b"\n"), delimiter
        )
    raise ValueError(f"format {name} is not supported")
