"""Pieces of the Kafka pipeline that need no broker."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raymask.cluster.kafka_pipeline import KafkaRunSummary, _drop_oversized


def test_oversized_masked_records_become_dead_letters_naming_sizes_not_values():
    recs = pa.array([b"a" * 10 + b"\n", b"secret-" * 20 + b"\n", b"b\n"], pa.large_binary())
    rows = np.array([4, 7, 9])
    kept, kept_rows, dead = _drop_oversized(recs, rows, 100)
    assert kept.to_pylist() == [b"a" * 10 + b"\n", b"b\n"] and kept_rows.tolist() == [4, 9]
    assert dead == [(7, "masked record is 140 bytes, above the 100-byte message limit", None)]
    same, same_rows, none = _drop_oversized(recs, rows, 1000)
    assert same is recs and none == []


def test_balance_is_per_view_and_counts_skips_and_dead_letters():
    s = KafkaRunSummary("s", "t", "b", ["a", "b"], 2, 1, records_in=10)
    s.written.update({"a": 7, "b": 10})
    s.skipped.update({"a": 1})
    s.dead.update({"a": 2})
    assert s.balanced
    s.dead["b"] = 1
    assert not s.balanced
