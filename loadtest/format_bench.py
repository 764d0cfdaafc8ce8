"""Benchmark: XML and Protobuf decode + mask + encode, raymask's columnar path against the same
work done record by record in Python with lxml / the protobuf library, in one process.

    python -m raymask.loadtest.format_bench [--records N] [--repeat R] [--format xml|protobuf|both]

Data: the `payments` profile of the traffic generator (one XML document with its records at
Payments/Payment; length-delimited Payment messages of loadtest/traffic.proto). The policy
changes three fields: account id tokenized (HMAC-SHA-256, base32, 16 characters), customer email
masked (first character and domain kept), customer name redacted.

- raymask: the router's split + key scan, then one MaskCore (the worker's plain core) masking
  the whole batch: validate, locate, extract to Arrow, run the kernels, write and splice back.
  One process, no Ray: this measures the format and masking work, not the transport.
- baseline: lxml `iterparse` over the document (elements cleared as it goes), per record
  `findtext`, Python `hmac` / string slicing / a constant, `etree.tostring` of the record; and
  for Protobuf, per frame `FromString`, the same per-value Python, `SerializeToString`. The
  baseline's masks compute the same kind of output (not byte-identical tokens: its job is to do
  equal work per record, the way a hand-written per-record masker would).

Prints a markdown table: best of `--repeat` records/s for each, and their ratio. Figures from a
shared machine are provisional; the ratio (same process, same data, alternating runs) is what
to quote.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from raymask.actors.router import RouterCore
from raymask.actors.worker import MaskCore
from raymask.kernels.codecs import protobuf as pb
from raymask.kernels.codecs import xml as xml_codec
from raymask.kernels.codecs.formats import Format, format_for
from raymask.loadtest.traffic import PROTO_MESSAGES, TRAFFIC_PROTO, generate_bytes
from raymask.memory import tune_malloc
from raymask.policy.compile import compile_stream
from raymask.policy.keys import Key, Keyring
from raymask.policy.schema import Policy

__all__ = ["main", "run"]

KEY = bytes(range(32))


def _policy(fmt: str) -> Policy:
    sep = "/" if fmt == "xml" else "."
    opts = (
        {"xml": {"record": "Payments/Payment"}}
        if fmt == "xml"
        else {"protobuf": {"proto": str(TRAFFIC_PROTO), "message": PROTO_MESSAGES["payments"]}}
    )
    return Policy.model_validate({
        "version": 1,
        "streams": {"s": {
            "format": fmt, **opts, "key": f"account{sep}id",
            "fields": {
                f"account{sep}id": {"technique": "tokenize", "key": "tok", "encoding": "base32", "length": 16},
                f"customer{sep}email": {"technique": "mask", "preset": "email"},
                f"customer{sep}name": "redact",
            },
        }},
    })  # fmt: skip


def _ours(fmt_name: str, doc: bytes) -> tuple[Callable[[], int], int]:
    """A function masking the whole input with raymask's columnar path; returns records out."""
    pol = _policy(fmt_name)
    plan = compile_stream(pol, "s")
    ring = Keyring([Key("tok", 1, KEY)])
    if fmt_name == "xml":
        lay = xml_codec.build_layout("Payments/Payment", ())
        cut = xml_codec.find_prolog(np.frombuffer(doc, np.uint8), lay)
        fmt: Format = format_for("xml", options=plan.format_options, prolog=doc[:cut])
        body = np.frombuffer(doc[cut:], np.uint8)
    else:
        ds = pb.compile_proto(TRAFFIC_PROTO)
        fmt = format_for("protobuf", options={**plan.format_options, "descriptor_set": ds})
        body = np.frombuffer(doc, np.uint8)
    core = MaskCore(pol, "s", ring, fmt)
    router = RouterCore(plan, fmt, 1)

    def run() -> int:
        routed = router.route(body, 1)
        out = core.process(routed.batch, None)
        sink = io.BytesIO()
        sink.write(fmt.header(plan.tree, False, plan.named))
        for b in out.records.buffers()[2:3]:
            sink.write(memoryview(b) if b is not None else b"")
        return len(out.rows)

    return run, len(fmt.split(body, 1)[0])


def _tok(v: str) -> str:
    d = hmac.new(KEY, v.encode(), hashlib.sha256).digest()
    return base64.b32encode(d).decode().lower()[:16]


def _email(v: str) -> str:
    at = v.find("@")
    return v[0] + "*" * (at - 1) + v[at:] if at > 0 else "*" * len(v)


def _baseline(fmt_name: str, doc: bytes) -> Callable[[], int]:
    if fmt_name == "xml":
        from lxml import etree

        def run_xml() -> int:
            out = io.BytesIO()
            n = 0
            for _, el in etree.iterparse(io.BytesIO(doc), tag="Payment", resolve_entities=False,
                                         no_network=True, load_dtd=False):  # fmt: skip
                for path, fn in (("account/id", _tok), ("customer/email", _email)):
                    e = el.find(path)
                    if e is not None and e.text is not None:
                        e.text = fn(e.text)
                e = el.find("customer/name")
                if e is not None and e.text is not None:
                    e.text = "[REDACTED]"
                out.write(etree.tostring(el))
                el.clear()
                n += 1
            return n

        return run_xml
    cls = pb.message_class(pb.compile_proto(TRAFFIC_PROTO), PROTO_MESSAGES["payments"])
    data = np.frombuffer(doc, np.uint8)
    starts, ends, _ = pb.split(data, 1)
    frames = [doc[s:e] for s, e in zip(starts, ends, strict=True)]
    from google.protobuf.internal.decoder import _DecodeVarint
    from google.protobuf.internal.encoder import _VarintBytes

    def run_pb() -> int:
        out = io.BytesIO()
        for f in frames:
            _, pos = _DecodeVarint(f, 0)
            m = cls.FromString(f[pos:])
            if m.account.id:
                m.account.id = _tok(m.account.id)
            if m.customer.email:
                m.customer.email = _email(m.customer.email)
            if m.customer.name:
                m.customer.name = "[REDACTED]"
            b = m.SerializeToString()
            out.write(_VarintBytes(len(b)) + b)
        return len(frames)

    return run_pb


def run(fmt_name: str, records: int, repeat: int) -> dict:
    """Best records/s of raymask and of the per-record baseline, alternating, and the ratio."""
    doc = generate_bytes("payments", records, seed=1, fmt=fmt_name)
    ours, n = _ours(fmt_name, doc)
    base = _baseline(fmt_name, doc)
    warm, _ = _ours(fmt_name, generate_bytes("payments", 50, seed=2, fmt=fmt_name))
    warm()  # Numba compile and the OpenSSL HMAC kernel, before timing
    best_o = best_b = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        assert ours() == n
        best_o = min(best_o, time.perf_counter() - t)
        t = time.perf_counter()
        assert base() == n
        best_b = min(best_b, time.perf_counter() - t)
    return {
        "format": fmt_name, "records": n, "bytes": len(doc),
        "raymask_rps": n / best_o, "baseline_rps": n / best_b, "ratio": best_b / best_o,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--format", choices=["xml", "protobuf", "both"], default="both")
    a = ap.parse_args(argv)
    tune_malloc()
    fmts = ["xml", "protobuf"] if a.format == "both" else [a.format]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; best of {a.repeat}")
    print("| format | records | MB | raymask rec/s | per-record Python rec/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for f in fmts:
        r = run(f, a.records, a.repeat)
        base = "lxml iterparse" if f == "xml" else "protobuf (upb)"
        print(f"| {f} | {r['records']:,} | {r['bytes'] / 1e6:.1f} | {r['raymask_rps']:,.0f} | "
              f"{r['baseline_rps']:,.0f} ({base}) | {r['ratio']:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
