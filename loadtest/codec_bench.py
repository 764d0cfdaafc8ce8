"""Benchmark: the NDJSON codec kernels of this tree beside an earlier revision's, in one process.

    python -m raymask.loadtest.codec_bench [--records N] [--repeat R] [--against REV]

The earlier revision's `kernels/codecs/ndjson.py` and `spans.py` are read with `git show` (run it
in a checkout) and compiled beside the current ones, so both see the same data, the same machine
and the same noise: the two versions alternate run by run. Data: the loadtest traffic
generators; fields: the pipeline benchmark's seven policy fields for payments. Prints a markdown
table with the best of `--repeat` for each and two ratios: of the bests, and the median of the
run-by-run ratios (steadier on a shared machine). Every result is checked to be identical.
The process tunes malloc as the pipeline's workers do (`raymask.memory.tune_malloc`), so output
buffers reuse mapped pages instead of page-faulting.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

from raymask.kernels.codecs import ndjson, spans
from raymask.kernels.codecs.paths import build_tree
from raymask.loadtest.traffic import generate_bytes
from raymask.memory import tune_malloc

BASE_REV = "aa5d26e"  # the codec before the fast scan
FIELDS = {
    "payments": ["account.id", "card.number", "customer.email", "account.iban", "amount", "ts",
                 "customer.name"],
    "iot": ["device.id", "owner.email", "owner.phone", "gps.lat", "net.ipv4", "net.ipv6"],
    "logs": ["user.id", "user.email", "client_ip", "message"],
}  # fmt: skip


def _module(name: str, source: str) -> types.ModuleType:
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    exec(compile(source, f"<{name}>", "exec"), mod.__dict__)  # noqa: S102 (our own source)
    return mod


def load_revision(rev: str) -> tuple[types.ModuleType, types.ModuleType]:
    """(ndjson, spans) as they were at `rev`, compiled now (without Numba's file cache)."""
    root = Path(__file__).resolve().parent.parent

    def show(path: str) -> str:
        out = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"], check=True,
                             capture_output=True, text=True)  # fmt: skip
        return out.stdout.replace("cache=True", "cache=False")

    old_spans = _module("_bench_old_spans", show("kernels/codecs/spans.py"))
    src = show("kernels/codecs/ndjson.py").replace(
        "raymask.kernels.codecs.spans", "_bench_old_spans"
    )
    return _module("_bench_old_ndjson", src), old_spans


def paired(
    old: Callable[[], object], new: Callable[[], object], repeat: int
) -> tuple[float, float, float]:
    """Best time of each and the median of the run-by-run ratios old/new, alternating."""
    old()
    new()
    to, tn = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        old()
        to.append(time.perf_counter() - t)
        t = time.perf_counter()
        new()
        tn.append(time.perf_counter() - t)
    return min(to), min(tn), float(np.median(np.array(to) / np.array(tn)))


def _same_scan(a: spans.Scan, b: spans.Scan) -> None:
    for f in ("vstart", "vend", "vkind", "err", "errpos", "errfield"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f


def _profile(
    profile: str, records: int, repeat: int, old: types.ModuleType, old_spans: types.ModuleType
) -> list[tuple[str, str, str, str, str]]:
    paths = FIELDS[profile]
    raw = generate_bytes(profile, records, seed=1)
    data = np.frombuffer(raw, np.uint8)
    mb = len(raw) / 1e6
    tree, key_tree = build_tree(paths), build_tree(paths[:1])
    s, e, _ = ndjson.split_records(data)
    n = len(s)
    rows = []

    def row(step: str, fo: Callable[[], object], fn: Callable[[], object]) -> None:
        to, tn, med = paired(fo, fn, repeat)
        rows.append((f"{profile}: {step}", f"{to * 1e3:.1f} ms ({mb / to:.0f} MB/s)",
                     f"{tn * 1e3:.1f} ms ({mb / tn:.0f} MB/s)", f"{to / tn:.2f}x", f"{med:.2f}x"))  # fmt: skip

    _same_scan(old.scan(data, s, e, tree), ndjson.scan(data, s, e, tree))
    row("validating scan", lambda: old.scan(data, s, e, tree),
        lambda: ndjson.scan(data, s, e, tree))  # fmt: skip
    _same_scan(old.scan(data, s, e, key_tree, True), ndjson.scan(data, s, e, key_tree, True))
    row("key-only scan (router)", lambda: old.scan(data, s, e, key_tree, True),
        lambda: ndjson.scan(data, s, e, key_tree, True))  # fmt: skip
    if profile != "payments":
        return rows
    sc = ndjson.scan(data, s, e, tree)
    cols = ndjson.extract_columns(data, sc.vstart, sc.vend, sc.vkind)
    cols_old = old.extract_columns(data, sc.vstart, sc.vend, sc.vkind)
    assert all(a.equals(b) for a, b in zip(cols_old, cols, strict=True))
    row(f"extract {len(paths)} columns",
        lambda: old.extract_columns(data, sc.vstart, sc.vend, sc.vkind),
        lambda: ndjson.extract_columns(data, sc.vstart, sc.vend, sc.vkind))  # fmt: skip
    raw_kind = np.zeros(n, np.bool_)
    reps = [ndjson.quote(c, raw_kind) for c in cols]
    for a, b in zip([old.quote(c, raw_kind) for c in cols], reps, strict=True):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    row(f"quote {len(paths)} columns", lambda: [old.quote(c, raw_kind) for c in cols],
        lambda: [ndjson.quote(c, raw_kind) for c in cols])  # fmt: skip
    edited = list(range(len(paths)))
    edit = sc.vkind != 0
    emit = np.ones(n, np.bool_)
    assert old_spans.splice(data, sc, emit, edited, edit, reps).equals(
        spans.splice(data, sc, emit, edited, edit, reps)
    )
    row(f"splice {len(paths)} fields",
        lambda: old_spans.splice(data, sc, emit, edited, edit, reps),
        lambda: spans.splice(data, sc, emit, edited, edit, reps))  # fmt: skip
    return rows


def run(records: int, repeat: int, rev: str) -> list[tuple[str, str, str, str, str]]:
    old, old_spans = load_revision(rev)
    return [r for profile in FIELDS for r in _profile(profile, records, repeat, old, old_spans)]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--against", default=BASE_REV, metavar="REV", help="git revision to compare")
    args = ap.parse_args()
    tune_malloc()
    rows = run(args.records, args.repeat, args.against)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.records:,} records per profile; {args.against} against this tree, alternating, "
          f"best of {args.repeat}; one core")  # fmt: skip
    print()
    print("| step | before | after | ratio of bests | median ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
