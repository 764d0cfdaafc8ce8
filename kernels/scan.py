"""Find what is still detectable in records (a masked output, a sample of one): counts per field
and type, never the values. Used by `raymask scan` and by the workers' leak monitor.

NDJSON: every string and number at any depth (kernels/codecs/json_values.py), its field named by
its path (keys joined by dots, array positions left out). CSV: every column. Both run the
detector once over all the values of a batch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from raymask.errors import InputError
from raymask.kernels import detect as detect_kernel
from raymask.kernels._arrow import string_buffers
from raymask.kernels.codecs import json_values, ndjson

__all__ = ["scan_ndjson", "scan_records", "scan_csv_batch", "scan_file", "ScanReport", "safe_names"]

Counts = Counter  # (field, type) -> spans


def safe_names(names: list[str]) -> list[str]:
    """Field names as they may be reported: a name in which something is detectable (a drifting
    schema can use data as keys, `{"ann@example.com": 3}`) is reported with those parts
    replaced by `<TYPE>`, so a report, metric label or audit record never carries them."""
    if not names:
        return names
    arr = pa.array(names, pa.large_string())
    spans = detect_kernel.detect(arr)
    if len(spans) == 0:
        return names
    reps = [f"<{t.upper()}>".encode() for t in spans.names]
    return detect_kernel.splice(arr, spans, reps).to_pylist()


def scan_ndjson(
    data: np.ndarray, starts: np.ndarray, ends: np.ndarray, types: list[str] | None = None
) -> Counter:
    """Spans per (field path, type) in the NDJSON records data[starts[i]:ends[i]]. A record that
    is not valid JSON is read up to where it breaks; nothing is raised."""
    rec, vs, ve, vk = json_values.scalar_values(data, starts, ends)
    found: Counter = Counter()
    if len(rec) == 0:
        return found
    spans = detect_kernel.detect(ndjson.extract(data, vs, ve, vk), types)
    if len(spans) == 0:
        return found
    # one path look-up per value with a span (a Python call each: meant for masked output, where
    # findings are rare; a raw file with millions of values to report takes seconds more)
    vals, which = np.unique(spans.record, return_inverse=True)
    paths = json_values.paths_at(data, starts, ends, rec[vals], vs[vals])
    ids = {p: i for i, p in enumerate(dict.fromkeys(paths))}
    pid = np.array([ids[p] for p in paths], np.int64)[which]
    names = safe_names(list(ids))
    nt = len(spans.names)
    keys, counts = np.unique(pid * nt + spans.type, return_counts=True)
    for k, c in zip(keys.tolist(), counts.tolist(), strict=True):
        found[(names[k // nt], spans.names[k % nt])] += c
    return found


def scan_records(records: pa.Array, types: list[str] | None = None) -> Counter:
    """`scan_ndjson` over a binary array of records (one each, trailing newline optional)."""
    b = string_buffers(records)
    starts = b.offsets[:-1].copy()
    ends = b.offsets[1:].copy()
    if len(b.data):
        nl = (ends > starts) & (b.data[np.maximum(ends - 1, 0)] == 10)
        ends[nl] -= 1
    ends[~b.valid] = starts[~b.valid]
    return scan_ndjson(b.data, starts, ends, types)


def scan_csv_batch(
    fmt, data: np.ndarray, starts: np.ndarray, ends: np.ndarray, types=None
) -> Counter:  # noqa: ANN001
    """Spans per (column, type) in CSV records of format `fmt` (a CsvFormat)."""
    from raymask.kernels.codecs.paths import build_tree

    cols = list(dict.fromkeys(fmt.columns))
    tree = build_tree(cols)
    sc = fmt.scan(data, starts, ends, tree)
    found: Counter = Counter()
    columns = fmt.extract_many(data, sc, list(range(len(cols))))
    for name, col in zip(safe_names(cols), columns, strict=True):
        spans = detect_kernel.detect(col, types)
        for t, c in spans.counts().items():
            found[(name, t)] += c
    return found


class ScanReport:
    """What `scan_file` found: spans per (field, type), records read."""

    def __init__(self) -> None:
        self.found: Counter = Counter()
        self.records = 0


def _blocks(path: Path, size: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(size):
            yield block


def scan_file(
    path: str | Path,
    fmt_name: str = "ndjson",
    *,
    delimiter: str = ",",
    types: list[str] | None = None,
    block_bytes: int = 32 << 20,
) -> ScanReport:
    """Scan a whole NDJSON or CSV file, a block of whole records at a time."""
    from raymask.kernels.codecs.formats import format_for

    path = Path(path)
    report = ScanReport()
    fmt = None
    carry = b""
    header_done = fmt_name != "csv"
    for block in [*_blocks(path, block_bytes), None]:
        buf = carry + (block or b"")
        if not header_done:
            nl = buf.find(b"\n")
            if nl < 0 and block is not None:
                carry = buf
                continue
            header = buf[: nl + 1] if nl >= 0 else buf + b"\n"
            try:
                fmt = format_for("csv", header_line=header, delimiter=delimiter)
            except ValueError as exc:  # (UnicodeDecodeError is one too)
                raise InputError(f"{path}:1: {exc}") from None
            buf = buf[nl + 1 :] if nl >= 0 else b""
            header_done = True
        if fmt is None:
            fmt = format_for("ndjson")
        data = np.frombuffer(buf, np.uint8)
        if block is not None:
            cut = fmt.boundary(data)
            if cut < 0:
                carry = buf
                continue
            carry = buf[cut:]
            data = data[:cut]
        elif len(buf) and not buf.endswith(b"\n"):
            data = np.frombuffer(buf + b"\n", np.uint8)
        if len(data) == 0:
            continue
        starts, ends = fmt.split(data, 1)[:2]
        report.records += len(starts)
        if fmt_name == "csv":
            report.found += scan_csv_batch(fmt, data, starts, ends, types)
        else:
            report.found += scan_ndjson(data, starts, ends, types)
    return report
