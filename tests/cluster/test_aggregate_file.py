"""`raymask aggregate` over a file: exact against a plain-Python reference with noise off, bad and
late records in the dead letters, and the noise against PipelineDP's on the same data and bounds."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import UTC, datetime

import numpy as np
import pytest

from raymask.actors.accountant import Accountant
from raymask.actors.sinks.deadletters import read_dead_letters
from raymask.cluster.aggregate import aggregate_file
from raymask.kernels.rng import SecureRandom
from raymask.loadtest.traffic import generate_bytes
from raymask.policy.schema import Policy

SIZE = 60.0


def _policy(max_groups: int = 1, max_rows: int = 5, group_by: str = "currency") -> Policy:
    return Policy.model_validate(
        {
            "version": 1,
            "streams": {
                "payments": {
                    "format": "ndjson",
                    "key": "account.id",
                    "fields": {"account.id": {"technique": "keep"}},
                    "aggregates": {
                        "spend": {
                            "time": "ts",
                            "window": {"size": "1m"},
                            "group_by": group_by,
                            "max_groups": max_groups,
                            "max_rows": max_rows,
                            "metrics": [
                                {"op": "count", "epsilon": 1.0},
                                {
                                    "op": "sum",
                                    "field": "amount",
                                    "lo": 0,
                                    "hi": 100,
                                    "epsilon": 1.0,
                                },
                            ],
                        }
                    },
                }
            },
        }
    )


def _db(tmp_path, eps: float = 1e6) -> str:  # noqa: ANN001
    db = str(tmp_path / "acc.sqlite")
    Accountant(db).set_budget(
        "stream:payments", {"epsilon": eps, "delta": 0.5, "accounting": "basic"}
    )
    return db


def _reference(lines: list[dict], max_groups: int, max_rows: int) -> dict:
    """(window start, group) -> (count, clamped sum), bounding in arrival order."""
    groups_of: dict = defaultdict(list)
    rows_of: dict = defaultdict(int)
    out: dict = defaultdict(lambda: [0, 0.0])
    for r in lines:
        t = datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
        w = math.floor(t / SIZE) * SIZE
        subj, g = r["account"]["id"], r["currency"]
        seen = groups_of[(w, subj)]
        if g not in seen:
            if len(seen) >= max_groups:
                continue
            seen.append(g)
        if rows_of[(w, subj, g)] >= max_rows:
            continue
        rows_of[(w, subj, g)] += 1
        out[(w, g)][0] += 1
        out[(w, g)][1] += min(max(r["amount"], 0.0), 100.0)
    return out


def _read(path) -> dict:  # noqa: ANN001
    got = {}
    for line in open(path):
        r = json.loads(line)
        w = datetime.fromisoformat(r["window_start"].replace("Z", "+00:00")).timestamp()
        got[(w, r["group"])] = (r["count"], r["sum_amount"])
    return got


@pytest.mark.parametrize(("max_groups", "max_rows"), [(1, 5), (2, 1)])
def test_noise_off_equals_a_plain_python_reference(tmp_path, keyring, max_groups, max_rows):
    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", 20_000, seed=3))
    out = tmp_path / "out.ndjson"
    s = aggregate_file(_policy(max_groups, max_rows), "payments", src, out, keyring=keyring,
                       db=_db(tmp_path), dead_letter_key="deadletter", noise=False,
                       chunk_bytes=1 << 20)  # fmt: skip
    lines = [json.loads(x) for x in src.read_text().splitlines()]
    want = _reference(lines, max_groups, max_rows)
    got = _read(out)
    assert got.keys() == want.keys()
    for k, (c, total) in want.items():
        assert got[k][0] == c and got[k][1] == pytest.approx(total, rel=1e-9)
    assert s.records_in == 20_000 and s.dead_letters == 0


def test_quantiles_and_top_k_through_a_file_equal_a_plain_reference(tmp_path, keyring):
    doc = _policy(10_000, 10_000).model_dump(exclude_none=True)  # no bounding
    doc["streams"]["payments"]["aggregates"]["spend"]["metrics"] = [
        {"op": "count", "epsilon": 1.0},
        {"op": "quantiles", "field": "amount", "lo": 0, "hi": 500, "quantiles": [0.5, 0.9],
         "epsilon": 1.0},
        {"op": "top_k", "field": "merchant.name", "k": 2, "epsilon": 1.0},
    ]  # fmt: skip
    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", 5_000, seed=4))
    out = tmp_path / "out.ndjson"
    aggregate_file(Policy.model_validate(doc), "payments", src, out, keyring=keyring,
                   db=_db(tmp_path), dead_letter_key="deadletter", noise=False)  # fmt: skip
    by: dict = defaultdict(list)
    for line in src.read_text().splitlines():
        r = json.loads(line)
        t = datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
        by[(math.floor(t / SIZE) * SIZE, r["currency"])].append(r)
    step = 500 / 16**4
    n = 0
    for line in out.read_text().splitlines():
        r = json.loads(line)
        w = datetime.fromisoformat(r["window_start"].replace("Z", "+00:00")).timestamp()
        recs = by[(w, r["group"])]
        xs = sorted(min(max(x["amount"], 0.0), 500.0) for x in recs)
        for q, got in zip((0.5, 0.9), r["quantiles_amount"], strict=True):
            assert abs(got - xs[math.floor(q * len(xs))]) <= step + 1e-9
        from collections import Counter

        want = Counter(x["merchant"]["name"] for x in recs)
        want = sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))[:2]  # ties: by value
        assert [(d["value"], d["count"]) for d in r["top_merchant.name"]] == want
        n += 1
    assert n == len(by)


def test_a_continual_running_sum_through_a_file_equals_the_exact_one(tmp_path, keyring):
    doc = _policy().model_dump(exclude_none=True)
    doc["streams"]["payments"]["continual"] = {
        "running_spend": {"time": "ts", "step": "1m", "horizon": 16, "op": "sum",
                          "field": "amount", "lo": 0, "hi": 512, "epsilon": 1.0,
                          "max_rows": 10_000},
    }  # fmt: skip
    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", 5_000, seed=5))
    out = tmp_path / "out.ndjson"
    s = aggregate_file(Policy.model_validate(doc), "payments", src, out, keyring=keyring,
                       names=["running_spend"], db=_db(tmp_path), dead_letter_key="deadletter",
                       noise=False)  # fmt: skip
    g = 1.0  # the sum's grid for bounds up to 512: 2**(frexp(512)[1] - 10)
    per_step: dict = defaultdict(float)
    for line in src.read_text().splitlines():
        r = json.loads(line)
        t = datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
        per_step[math.floor(t / SIZE)] += round(min(max(r["amount"], 0.0), 512.0) / g) * g
    got = [json.loads(x) for x in out.read_text().splitlines()]
    steps = sorted(per_step)
    assert len(got) == steps[-1] - steps[0] + 1 == s.windows["running_spend"]
    total = 0.0
    for k, r in zip(range(steps[0], steps[-1] + 1), got, strict=True):
        if (k - steps[0]) % 16 == 0:
            total = 0.0  # a new horizon: the running total starts again
        total += per_step.get(k, 0.0)
        assert r["continual"] == "running_spend" and r["value"] == pytest.approx(total)
    assert s.dead_letters == 0


def test_bad_and_late_records_go_to_the_dead_letters(tmp_path, keyring):
    good = json.loads(generate_bytes("payments", 1, seed=1))
    recs = []
    for i in range(40):
        r = dict(good, ts=f"2026-11-23T08:0{i // 10}:{(i % 10) * 5:02d}.000Z", amount=1.0)
        recs.append(json.dumps(r))
    recs[5] = recs[5][:20]  # truncated JSON
    recs[6] = json.dumps(dict(good, ts="yesterday-canary"))
    recs[7] = json.dumps(dict(good, amount="12 EUR"))
    recs[8] = json.dumps({k: v for k, v in good.items() if k != "currency"})
    recs.append(json.dumps(dict(good, ts="2026-11-23T08:00:01.000Z")))  # window 0 is long closed
    src = tmp_path / "in.ndjson"
    src.write_text("\n".join(recs) + "\n")
    out = tmp_path / "out.ndjson"
    s = aggregate_file(_policy(1, 100), "payments", src, out, keyring=keyring, db=_db(tmp_path),
                       dead_letter_key="deadletter", noise=False, chunk_bytes=300)  # fmt: skip
    dead = {d.line: d.reason for d in read_dead_letters(f"{out}.deadletters.ndjson", keyring)}
    assert dead[7] == "aggregate spend: field ts: not a timestamp (ISO 8601 or epoch seconds)"
    assert dead[8] == "aggregate spend: field amount: missing or not a number"
    assert dead[9] == "aggregate spend: field currency: missing or not a string/number"
    assert dead[41] == "aggregate spend: late: its window was released"
    assert "canary" not in " ".join(dead.values())
    assert 6 in dead and len(dead) == 5 == s.dead_letters
    assert sum(c for c, _ in _read(out).values()) == 41 - 5


def test_noise_matches_pipelinedp_on_the_same_data_and_bounds(tmp_path, keyring):
    # data where bounding (1 group, 5 rows per account and window) changes nothing, and big
    # groups that both select: the count errors are the noise alone. RMSE ratio, ours over
    # PipelineDP's Laplace with the same bounds and epsilon, inside [0.75, 1.33] (300 errors
    # each: each RMSE has about 6.5% relative std, the ratio 9%, so the band is about 3.2
    # standard deviations: a false failure about 0.2% of runs)
    import pipeline_dp

    rng = np.random.default_rng(8)
    lines = []
    for w in range(60):
        for ci, cur in enumerate(["EUR", "USD", "GBP", "CHF", "SEK"]):
            for a in range(150):
                for _ in range(int(rng.integers(1, 6))):
                    t = 29_916_667 * 60 + w * 60 + float(rng.uniform(0, 59))  # inside window w
                    lines.append({"ts": datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z"),
                                  "account": {"id": f"w{w}-c{ci}-a{a}"}, "currency": cur,
                                  "amount": 10.0})  # fmt: skip
    lines.sort(key=lambda r: r["ts"])
    src = tmp_path / "in.ndjson"
    src.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "out.ndjson"
    aggregate_file(_policy(1, 5), "payments", src, out, keyring=keyring, db=_db(tmp_path),
                   dead_letter_key="deadletter", rng=SecureRandom._for_tests(2))  # fmt: skip
    want = _reference(lines, 1, 5)
    got = _read(out)
    assert got.keys() == want.keys()  # every group selected
    ours = np.array([got[k][0] - want[k][0] for k in want], float)

    rows = []
    for r in lines:
        t = datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
        rows.append((r["account"]["id"], (math.floor(t / SIZE) * SIZE, r["currency"])))
    budget = pipeline_dp.NaiveBudgetAccountant(total_epsilon=1.0, total_delta=1e-6)
    engine = pipeline_dp.DPEngine(budget, pipeline_dp.LocalBackend())
    params = pipeline_dp.AggregateParams(
        noise_kind=pipeline_dp.NoiseKind.LAPLACE, metrics=[pipeline_dp.Metrics.COUNT],
        max_partitions_contributed=1, max_contributions_per_partition=5,
    )  # fmt: skip
    extractors = pipeline_dp.DataExtractors(
        privacy_id_extractor=lambda x: x[0], partition_extractor=lambda x: x[1],
        value_extractor=lambda x: 0,
    )  # fmt: skip
    res = engine.aggregate(rows, params, extractors, public_partitions=list(want))
    budget.compute_budgets()
    theirs_counts = dict(res)
    theirs = np.array([theirs_counts[k].count - want[k][0] for k in want], float)
    ratio = math.sqrt(np.mean(ours**2)) / math.sqrt(np.mean(theirs**2))
    assert 0.75 <= ratio <= 1.33, ratio


def test_the_same_aggregates_run_beside_the_masking_in_a_run(tmp_path, keyring):
    from raymask.cluster.pipeline import prepare, run_job

    src = tmp_path / "in.ndjson"
    src.write_bytes(generate_bytes("payments", 8_000, seed=5))
    pol = _policy(1, 5)
    job = prepare(pol, "payments", src, keyring=keyring, dead_letter_key="deadletter",
                  chunk_bytes=256 << 10)  # fmt: skip
    s = run_job(job, tmp_path / "masked.ndjson", local=True, aggregates=tmp_path / "agg.ndjson",
                accountant_db=_db(tmp_path))  # fmt: skip
    assert s.records_out == 8_000 and s.aggregates.records_in == 8_000
    alone = aggregate_file(pol, "payments", src, tmp_path / "alone.ndjson", keyring=keyring,
                           db=_db(tmp_path / "x"), dead_letter_key="deadletter",
                           noise=False)  # fmt: skip
    assert alone.windows == s.aggregates.windows  # the same windows were released
    assert _read(tmp_path / "agg.ndjson").keys() <= _read(tmp_path / "alone.ndjson").keys()
