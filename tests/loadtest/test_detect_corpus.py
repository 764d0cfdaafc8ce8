"""Precision and recall of detection on the labelled corpus, printed per type beside Presidio's
pattern recognizers (run without NER); the corpus also goes through JSON escapes."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa

from raymask.kernels.codecs import json_values, ndjson
from raymask.kernels.detect import detect
from raymask.loadtest.detect_corpus import (
    PRESIDIO_TYPES,
    generate,
    hard_cases,
    precision_recall,
    presidio_spans,
    raymask_spans,
    score,
)

STRICT = {"card": 0.99, "iban": 0.99}  # the others: 0.98


def test_precision_and_recall_per_type_beside_presidio(capsys):
    lines = generate(5000, seed=11) + hard_cases()
    ours = score(lines, raymask_spans(lines))
    sample = lines[:300] + hard_cases()  # Presidio is slow: a sample
    peer = score(sample, presidio_spans(sample))
    compared = set(PRESIDIO_TYPES.values()) | {"ipv4", "ipv6"}
    with capsys.disabled():
        print("\ntype              raymask P / R (n)            presidio P / R (300-line sample)")
        for t, c in ours.items():
            p, r = precision_recall(c)
            other = "no pattern recognizer"
            if t in compared and t in peer:
                other = "{:.3f} / {:.3f}".format(*precision_recall(peer[t]))
            print(f"{t:16s}  {p:.4f} / {r:.4f} ({c[0] + c[2]:5d})     {other}")
    for t, c in ours.items():
        p, r = precision_recall(c)
        floor = STRICT.get(t, 0.98)
        assert p >= floor and r >= floor, (t, c)
    assert len(ours) == 16  # every type is in the corpus


def _escape_some(text: str, r: random.Random) -> str:
    """JSON text of `text` with about one character in four written as a \\u escape, so secrets
    and cards are split across escapes in the raw record."""
    out = []
    for ch in text:
        if ch.isascii() and ch.isalnum() and r.random() < 0.25:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(json.dumps(ch)[1:-1])
    return '"' + "".join(out) + '"'


def test_values_split_across_json_escapes_are_found_the_same():
    r = random.Random(5)
    lines = generate(500, seed=12)
    raw = "".join('{"note": ' + _escape_some(x.text, r) + "}\n" for x in lines).encode()
    data = np.frombuffer(raw, np.uint8)
    starts, ends, _ = ndjson.split_records(data, 0)[:3]
    rec, vs, ve, vk = json_values.scalar_values(data, starts, ends)
    assert rec.tolist() == list(range(len(lines)))
    values = ndjson.extract(data, vs, ve, vk)
    assert values.to_pylist() == [x.text for x in lines]
    got = detect(values)
    want = detect(pa.array([x.text for x in lines]))
    for a in ("record", "start", "end", "type"):
        assert np.array_equal(getattr(got, a), getattr(want, a))
    assert sum(len(x.spans) for x in lines) == len(got)
