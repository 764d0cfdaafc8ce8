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


class _Source:
    """A source handle whose commits fail as told: `outcomes` is consumed one per commit."""

    def __init__(self, outcomes: list) -> None:
        self.outcomes, self.calls = outcomes, []
        self.commit = self

    def remote(self, offsets: dict) -> dict:
        self.calls.append(dict(offsets))
        out = self.outcomes.pop(0)
        if isinstance(out, BaseException):
            raise out
        return offsets


def test_a_commit_the_broker_did_not_answer_goes_out_with_the_next_one_newer_offsets_winning():
    import ray

    from raymask.cluster.kafka_pipeline import _commit, _flush_commits
    from raymask.errors import BrokerUnreachable, PipelineError

    away = ray.exceptions.RayTaskError("commit", "", BrokerUnreachable("no answer in 30 s"))
    moved = ray.exceptions.RayTaskError("commit", "", PipelineError("partitions reassigned"))
    src = _Source([away, None, moved, away, away])
    s = KafkaRunSummary("s", "t", "b", ["a"], 2, 1)
    pending: dict = {}
    _commit([src], {0: {("t", 0): 10, ("t", 1): 5}}, pending, s, get=lambda x: x)
    assert pending == {0: {("t", 0): 10, ("t", 1): 5}}  # kept: the broker did not answer
    _commit([src], {0: {("t", 0): 20}}, pending, s, get=lambda x: x)
    assert src.calls[-1] == {("t", 0): 20, ("t", 1): 5} and pending == {}  # merged, newer won
    _commit([src], {0: {("t", 2): 7}}, pending, s, get=lambda x: x)
    assert pending == {}  # refused (a rebalance): dropped, the records come again
    _commit([src], {0: {("t", 2): 9}}, pending, s, get=lambda x: x)
    assert pending == {0: {("t", 2): 9}}
    _flush_commits([src], pending, s, get=lambda x: x)  # the end of the run: one more try
    assert s.uncommitted == 1 and s.source_failures == 4
