"""Benchmark: the secure noise kernels beside NumPy's (insecure) and OpenDP's samplers.

    python -m raymask.loadtest.noise_bench [--values N] [--repeat R] [--opendp-values M]
        [--subjects S]

Prints a markdown table. NumPy's `laplace` / `normal` (PCG64, floating point: open to Mironov's
attack, never used for privacy) are the speed reference; OpenDP's vectorized Laplace is the
secure reference. OpenDP runs on `--opendp-values` (default 100 000: ~80k values/s here, so 1M
would take ~40 s per run) and is reported as values/s. Each figure is the best of `--repeat`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
from numba import njit

from raymask.kernels import noise
from raymask.kernels._mem import prefetch
from raymask.kernels.ledger import AHEAD, DELTA, DIRTY, EPS, RHO, WIDTH, _home
from raymask.kernels.rng import SecureRandom
from raymask.loadtest.bench import best


def run(values: int, repeat: int, opendp_values: int) -> list[tuple[str, float, str, float]]:
    rng = SecureRandom()
    gen = np.random.default_rng()
    xf = pa.array(np.linspace(0.0, 10.0, values))
    xi = pa.array(np.arange(values, dtype=np.int64) % 11)
    lo, hi, eps, delta = 0.0, 10.0, 1.0, 1e-6
    sigma = noise.gaussian_plan(lo, hi, eps, delta, False).sigma
    t_lap = best(lambda: gen.laplace(0.0, (hi - lo) / eps, values), repeat)
    t_norm = best(lambda: gen.normal(0.0, sigma, values), repeat)
    cases = [
        ("laplace, float", lambda: noise.laplace_noise(xf, lo, hi, eps, integer=False, rng=rng), t_lap, "numpy laplace"),
        ("laplace, int", lambda: noise.laplace_noise(xi, 0, 10, eps, integer=True, rng=rng), t_lap, "numpy laplace"),
        ("gaussian, float", lambda: noise.gaussian_noise(xf, lo, hi, eps, delta, integer=False, rng=rng), t_norm, "numpy normal"),
        ("gaussian, int", lambda: noise.gaussian_noise(xi, 0, 10, eps, delta, integer=True, rng=rng), t_norm, "numpy normal"),
    ]  # fmt: skip
    rows = []
    ours = {}
    for name, fn, t_ref, ref in cases:
        t = best(fn, repeat)
        ours[name] = values / t
        rows.append((name, values / t, f"{ref} {values / t_ref / 1e6:.1f}M/s", t_ref / t))
    try:
        import opendp.prelude as dp

        dp.enable_features("contrib")
        m = dp.m.make_laplace(
            dp.vector_domain(dp.atom_domain(T=float, nan=False)),
            dp.l1_distance(T=float),
            (hi - lo) / eps,
        )
        sub = np.linspace(0.0, 10.0, opendp_values).tolist()
        t_o = best(lambda: m(sub), 1)
        rate = opendp_values / t_o
        rows.append(
            ("laplace, float", ours["laplace, float"], f"OpenDP laplace {rate / 1e6:.3f}M/s",
             ours["laplace, float"] / rate)
        )  # fmt: skip
    except ImportError:  # opendp is a dev extra
        pass
    return rows


@njit(cache=True)
def _add_only(T, hashes, c, mask):  # noqa: ANN001, ANN202
    """The least any exact per-subject accounting does: add each record's cost into its
    subject's row (the first slot its digest maps to, no check that it is the subject's, no
    allowance test): one random read-modify-write per record, with the ledger's prefetch."""
    m = np.uint64(mask)
    w = np.uint64(WIDTH)
    n = hashes.shape[0]
    for r in range(n):
        if r + AHEAD < n:
            prefetch(T, np.int64(_home(hashes[r + AHEAD], m) * w))
        T[_home(hashes[r], m) * w + np.uint64(EPS)] += c


@njit(cache=True)
def _known_row(T, hashes, cls, ce_t, cr_t, cd_t, b_eps, b_rho, b_delta, granted):  # noqa: ANN001, ANN202
    """What exact per-subject accounting does once it has the subject's row, and no less: as if
    every subject's row were known without looking (the first slot its digest maps to, with no
    key compare, no probe and no period), the three spends are added, checked against their
    allowances, kept only if all fit, and the row flagged for the commit; no branch. A lower
    bound on the ledger's charge, not an accountant (other subjects' rows take the adds)."""
    m = np.uint64(T.shape[0] // WIDTH - 1)
    w = np.uint64(WIDTH)
    n = hashes.shape[0]
    for r in range(n):
        if r + AHEAD < n:
            prefetch(T, np.int64(_home(hashes[r + AHEAD], m) * w))
        k = np.int64(cls[r])
        b = _home(hashes[r], m) * w
        e0, q0, d0 = T[b + np.uint64(EPS)], T[b + np.uint64(RHO)], T[b + np.uint64(DELTA)]
        e, q, d = e0 + ce_t[k], q0 + cr_t[k], d0 + cd_t[k]
        ok = (e <= b_eps) & (q <= b_rho) & (d <= b_delta)
        T[b + np.uint64(EPS)] = e if ok else e0
        T[b + np.uint64(RHO)] = q if ok else q0
        T[b + np.uint64(DELTA)] = d if ok else d0
        T[b + np.uint64(DIRTY)] |= np.int64(ok)
        granted[r] = ok


def accounting(values: int, subjects: int, repeat: int) -> dict[str, float]:
    """Per-subject accounting beside the noise it accounts for, on `values` records of
    `subjects` subjects, seconds (best of `repeat`) per step: the Laplace kernel on the records;
    the subject hash (the router computes it anyway, to shard; workers reuse it); charging a
    ledger that starts empty (it grows as subjects arrive) and one that already knows every
    subject (a running stream); writing a batch's sealed log of changed rows, for a batch that
    changed every subject and for one of 1,000 records (what a commit costs follows the batch,
    not the ledger)."""
    import shutil
    import tempfile

    from raymask.actors.ledger import SubjectLedger
    from raymask.kernels.hashing import key_hash
    from raymask.kernels.ledger import EPS_UNIT, units
    from raymask.policy.schema import Budget

    rng = SecureRandom()
    ids = np.random.default_rng(1).integers(0, subjects, values)
    names = pa.array([f"subject-{i:08d}" for i in range(subjects)]).take(pa.array(ids))
    xf = pa.array(np.linspace(0.0, 10.0, values))
    budget = Budget(epsilon=10_000, key="ledger")  # nobody runs out
    h = key_hash(names)
    c = np.full(values, units(0.01, EPS_UNIT, up=True), np.int64)
    z = np.zeros(values, np.int64)
    out = {
        "Laplace kernel (the reference)": best(
            lambda: noise.laplace_noise(xf, 0.0, 10.0, 1.0, integer=False, rng=rng), repeat
        ),
        "subject hash (router, for sharding)": best(lambda: key_hash(names), repeat),
    }
    # the worker's path: each record's cost as its class (here: one noised field, released)
    cls = np.ones(values, np.uint8)
    ce, cr, cd = (np.array([0, units(x, EPS_UNIT, up=True)]) for x in (0.01, 0.01**2 / 2, 0.0))
    SubjectLedger(budget).charge_classes(h, cls, ce, cr, cd)  # compile
    out["charge, empty ledger"] = best(
        lambda: SubjectLedger(budget).charge_classes(h, cls, ce, cr, cd), repeat
    )
    warm = SubjectLedger(budget)
    warm.charge_classes(h, cls, ce, cr, cd)
    out["charge, ledger knows the subjects"] = best(
        lambda: warm.charge_classes(h, cls, ce, cr, cd), repeat
    )
    warm.charge(h, c, z, z)
    out["(charge with costs per record, knows the subjects)"] = best(
        lambda: warm.charge(h, c, z, z), repeat
    )
    t = warm.table.t.copy().reshape(-1)  # a copy: the adds land in other subjects' rows
    _add_only(t, h.view(np.int64), 1, warm.table.capacity - 1)  # compile
    out["(floor: one unchecked add per record into its subject's row)"] = best(
        lambda: _add_only(t, h.view(np.int64), 1, warm.table.capacity - 1), repeat
    )
    g = np.empty(values, np.bool_)
    big = 2**62
    _known_row(t, h.view(np.int64), cls, ce, cr, cd, big, big, big, g)  # compile
    out["(bound: the three spends checked in a row known without a key or probe)"] = best(
        lambda: _known_row(t, h.view(np.int64), cls, ce, cr, cd, big, big, big, g), repeat
    )
    tmp = tempfile.mkdtemp(prefix="raymask-bench-ledger-")
    try:  # a commit writes the rows its batch changed: all of them, then a 1,000-record batch's
        led = SubjectLedger(budget, tmp, b"k" * 32, snapshot_every=2**62)
        led.charge(h, c, z, z)
        led.commit()
        for what, rows in (("every subject changed", values), ("a 1,000-record batch", 1_000)):
            part = (h[:rows], c[:rows], z[:rows], z[:rows])
            out[f"commit: sealed log, {what}"] = _commit_time(led, part, repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _commit_time(led, part: tuple[np.ndarray, ...], repeat: int) -> float:  # noqa: ANN001
    """Best time of `led.commit()` right after charging `part` (hashes and costs)."""
    times = []
    for _ in range(repeat + 1):  # the first one warms up
        led.charge(*part)
        t = time.perf_counter()
        led.commit()
        times.append(time.perf_counter() - t)
    return min(times[1:])


def worker_overhead(records: int, subjects: int, batch: int, repeat: int) -> dict[str, float]:
    """A mask worker's seconds (best of `repeat`) for `records` NDJSON records of `subjects`
    subjects with one Laplace-noised field, in batches of `batch`, without and with a
    per-subject budget (its ledger in a temporary folder: every batch's sealed log written):
    what per-subject budgets cost a running stream, decode and encode included. The ledger
    starts knowing every subject (a running stream)."""
    import shutil
    import tempfile

    from raymask.actors.router import RouterCore
    from raymask.actors.worker import MaskCore
    from raymask.kernels.codecs.formats import NdjsonFormat
    from raymask.policy.keys import Key, Keyring
    from raymask.policy.schema import Policy

    ring = Keyring([Key("ledger", 1, b"l" * 32)])
    fmt = NdjsonFormat()
    ids = np.random.default_rng(1).integers(0, subjects, records)
    lines = [f'{{"user":"subject-{i:08d}","v":{j % 100}}}' for j, i in enumerate(ids)]
    chunks = [
        np.frombuffer(("\n".join(lines[a : a + batch]) + "\n").encode(), np.uint8)
        for a in range(0, records, batch)
    ]
    out = {}
    for budget in (False, True):
        stream = {
            "format": "ndjson", "key": "user",
            "fields": {"v": {"technique": "noise", "epsilon": 0.01, "lo": 0, "hi": 100}},
        }  # fmt: skip
        if budget:
            stream["budget"] = {"key": "ledger", "epsilon": 10_000.0}
        pol = Policy.model_validate({"version": 1, "streams": {"s": stream}})
        tmp = tempfile.mkdtemp(prefix="raymask-bench-worker-")
        try:
            core = MaskCore(pol, "s", ring, fmt, ledger_uri=tmp if budget else None)
            router = RouterCore(core.plan, fmt, 1)
            routed = [router.route(c, 1) for c in chunks]
            for r in routed:  # compile, and (with a budget) meet every subject once
                core.process(r.batch, None, r.shards[0])
            out["with a budget" if budget else "without a budget"] = best(
                lambda core=core, routed=routed: [
                    core.process(r.batch, None, r.shards[0]) for r in routed
                ],
                repeat,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--opendp-values", type=int, default=100_000)
    ap.add_argument("--subjects", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=50_000, help="records per worker batch")
    a = ap.parse_args()
    print(f"{a.values:,} values, best of {a.repeat} (OpenDP: {a.opendp_values:,} values, 1 run)")
    print()
    print("| kernel (secure, exact) | values/s | baseline | ratio (ours / baseline) |")
    print("|---|---|---|---|")
    for name, rate, ref, ratio in run(a.values, a.repeat, a.opendp_values):
        print(f"| {name} | {rate / 1e6:.2f}M | {ref} | {ratio:.2f}x |")
    acct = accounting(a.values, a.subjects, a.repeat)
    print()
    print(f"per-subject accounting, {a.values:,} records of {a.subjects:,} subjects")
    print()
    print("| step | ms | share of the Laplace kernel's time |")
    print("|---|---|---|")
    for name, t in acct.items():
        print(f"| {name} | {t * 1e3:.1f} | {t / next(iter(acct.values())):.0%} |")
    wk = worker_overhead(a.values, a.subjects, a.batch, a.repeat)
    print()
    print(f"a mask worker, {a.values:,} records in batches of {a.batch:,}, one noised field")
    print()
    print("| worker | s | |")
    print("|---|---|---|")
    base = wk["without a budget"]
    for name, t in wk.items():
        print(f"| {name} | {t:.3f} | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
