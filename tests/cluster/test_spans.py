"""Chunks sent to the workers as file spans (a stream with no per-key state): the same output,
dead letters and counts as routing every record by key, and never for a stream with budgets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raymask.actors.router import span_cuts
from raymask.actors.sinks.deadletters import read_dead_letters
from raymask.cluster.pipeline import mask_file
from raymask.errors import InputError
from raymask.kernels.codecs.formats import format_for
from raymask.loadtest.traffic import generate_bytes
from tests.conftest import EXAMPLES


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_span_cuts_are_record_boundaries_in_order_covering_everything(n):
    data = np.frombuffer(generate_bytes("payments", 300, seed=5), np.uint8)
    cuts = span_cuts(format_for("ndjson"), data, n)
    assert len(cuts) == n + 1 and cuts[0] == 0 and cuts[-1] == len(data)
    assert all(a <= b for a, b in zip(cuts, cuts[1:], strict=False))
    assert all(data[c - 1] == 10 for c in cuts[1:-1] if c > 0)  # each cut follows a newline
    sizes = np.diff(cuts)
    assert sizes.max() - sizes.min() < 2 * 600  # within about one record of equal (<600 bytes)


def test_span_cuts_of_one_long_record_leave_the_other_parts_empty():
    data = np.frombuffer(b'{"a":"' + b"x" * 5000 + b'"}\n', np.uint8)
    assert span_cuts(format_for("ndjson"), data, 3) == [0, 0, 0, len(data)]


def _broken_input(path: Path, n: int, seed: int) -> None:
    """Payments records with the bad kinds a router and a worker each catch, spread over the
    file so that they fall in different spans of different chunks."""
    lines = generate_bytes("payments", n, seed=seed).decode().splitlines()
    for i in range(23, n, 79):
        rec = json.loads(lines[i])
        rec["card"]["number"] = "1234"  # a technique refuses it (the worker's reason)
        lines[i] = json.dumps(rec)
    for i in range(3, n, 97):
        lines[i] = lines[i][:40]  # truncated JSON (before the key: the router's reason)
    for i in range(11, n, 89):
        lines[i] = lines[i].replace('"account":{"id":', '"account":{"ref":')  # no key
    for i in range(17, n, 83):
        lines[i] = lines[i].replace('"account":{"id":', '"account":{"id":{"x":1},"old":')
    for i in range(29, n, 73):
        lines[i] = lines[i][:-1] + ',"x":}'  # broken after the key (the worker's full scan)
    for i in range(31, n, 71):
        lines.insert(i, "")  # a blank line is not a record, but it counts as a line
    path.write_text("\n".join(lines) + "\n")


def _run(src: Path, out: Path, keyring, routing: str, **kw):  # noqa: ANN001, ANN202
    s = mask_file(EXAMPLES / "payments.yaml", "payments", src, out, keyring=keyring,
                  chunk_bytes=64 << 10, routing=routing, **kw)  # fmt: skip
    dead = list(read_dead_letters(s.dead_letter_file, keyring)) if s.dead_letter_file else []
    return s, out.read_bytes(), [(d.line, d.reason, d.raw, d.field) for d in dead]


def test_spans_in_process_give_what_routing_by_key_gives(tmp_path, keyring):
    src = tmp_path / "in.ndjson"
    _broken_input(src, 3000, seed=8)
    a, out_a, dead_a = _run(src, tmp_path / "key.ndjson", keyring, "key", local=True, workers=3)
    b, out_b, dead_b = _run(src, tmp_path / "span.ndjson", keyring, "span", local=True, workers=3)
    assert a.span_chunks == 0 and b.span_chunks > 10  # 64 KiB chunks of a 1.4 MB file
    assert out_b == out_a
    assert dead_b == dead_a
    assert len(dead_a) > 100 and {r.split(":")[0] for _, r, _, _ in dead_a} >= {
        "key field account.id",
        "field card.number",
    }
    for s in (a, b):
        assert s.balanced and s.records_in == 3000
    assert (b.records_out, b.dead_letters, b.changed, b.dead_reasons) == (
        a.records_out,
        a.dead_letters,
        a.changed,
        a.dead_reasons,
    )


def test_in_process_auto_routes_by_key(tmp_path, keyring):
    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", 500, seed=2))
    s, _, _ = _run(src, tmp_path / "out.ndjson", keyring, "auto", local=True, workers=2)
    assert s.span_chunks == 0


def test_an_unknown_routing_is_refused(tmp_path, keyring):
    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", 5, seed=2))
    with pytest.raises(InputError, match="routing must be one of auto, key, span"):
        _run(src, tmp_path / "out.ndjson", keyring, "round-robin", local=True)


def test_a_stream_with_budgets_is_routed_by_key_even_when_spans_are_asked_for(tmp_path, keyring):
    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("iot", 400, seed=4))
    s = mask_file(EXAMPLES / "iot.yaml", "telemetry_dp", src, tmp_path / "out.ndjson",
                  keyring=keyring, local=True, workers=2, routing="span",
                  state=tmp_path / "state", chunk_bytes=16 << 10)  # fmt: skip
    assert s.span_chunks == 0 and s.balanced and s.records_in == 400


@pytest.mark.integration
def test_spans_on_ray_give_what_routing_by_key_gives(ray_session, tmp_path, keyring):
    """On a local Ray every worker runs on the driver's machine, so "auto" sends spans."""
    src = tmp_path / "in.ndjson"
    _broken_input(src, 6000, seed=9)
    a, out_a, dead_a = _run(src, tmp_path / "key.ndjson", keyring, "key", workers=2)
    b, out_b, dead_b = _run(src, tmp_path / "auto.ndjson", keyring, "auto", workers=2)
    # each worker's span is about one chunk_bytes (64 KiB): chunks of 128 KiB for 2 workers
    chunks = -(-src.stat().st_size // (128 << 10))
    assert a.span_chunks == 0 and chunks <= b.span_chunks <= chunks + 1
    assert out_b == out_a and dead_b == dead_a
    assert b.balanced and (b.records_out, b.dead_letters) == (a.records_out, a.dead_letters)


def test_a_named_pipe_is_routed_by_key(tmp_path, keyring):
    """Only a regular file can be read again at an offset by a worker."""
    import os
    import threading

    body = generate_bytes("payments", 300, seed=6)
    fifo = tmp_path / "in.pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(body))
    writer.start()
    s, out, _ = _run(fifo, tmp_path / "out.ndjson", keyring, "span", local=True, workers=2)
    writer.join()
    assert s.span_chunks == 0 and s.records_in == 300 and s.balanced
    plain = tmp_path / "in.ndjson"
    plain.write_bytes(body)
    _, ref, _ = _run(plain, tmp_path / "ref.ndjson", keyring, "span", local=True, workers=2)
    assert out == ref


def test_a_span_of_blank_lines_only_is_no_records(tmp_path, keyring):
    recs = generate_bytes("payments", 40, seed=12)
    src = tmp_path / "in.ndjson"
    src.write_bytes(recs + b"\n" * 50_000 + recs)  # spans of blank lines only
    _, out_a, dead_a = _run(src, tmp_path / "key.ndjson", keyring, "key", local=True, workers=4)
    b, out_b, dead_b = _run(src, tmp_path / "span.ndjson", keyring, "span", local=True, workers=4)
    assert b.span_chunks >= 1 and b.records_in == 80 and b.balanced
    assert out_b == out_a and dead_b == dead_a == []


def test_a_pushed_version_with_budgets_is_routed_by_key_from_then_on(tmp_path, keyring):
    """Spans stop at the batch boundary where a version with per-subject budgets takes over:
    from then on the workers keep each subject's spend, so every record of it must reach them."""
    from raymask.actors.control import ControlCore, key_shapes
    from raymask.cluster.pipeline import prepare, run_job
    from raymask.policy.loader import load_policy

    base = load_policy(EXAMPLES / "payments.yaml").model_dump(mode="json")
    v2 = json.loads(json.dumps(base))
    v2["version"] = 2
    s2 = v2["streams"]["payments"]
    s2["fields"]["amount"] = {"technique": "noise", "epsilon": 1.0, "lo": 0, "hi": 1000}
    s2["budget"] = {"epsilon": 3, "period": "day", "exhausted": "suppress", "key": "ledger"}

    class PushAfter(ControlCore):
        calls = 0

        def current_version(self) -> int:
            self.calls += 1
            if self.calls == 4:
                self.push(v2)
            return super().current_version()

    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", 3000, seed=14))
    control = PushAfter(base, "payments", key_shapes(keyring))
    job = prepare(EXAMPLES / "payments.yaml", "payments", src, keyring=keyring,
                  chunk_bytes=64 << 10)  # fmt: skip
    s = run_job(job, tmp_path / "out.ndjson", workers=2, local=True, control=control,
                routing="span", state=tmp_path / "state")  # fmt: skip
    assert s.balanced and s.records_in == 3000 and set(s.versions) == {1, 2}
    assert s.span_chunks == 3  # the chunks before the push
    assert s.dp_records + s.dp_suppressed == s.versions[2]  # every v2 record was charged
