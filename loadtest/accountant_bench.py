"""Benchmark: reserve + commit pairs per second against the budget accountant, 8 callers.

    python -m raymask.loadtest.accountant_bench [--callers 8] [--seconds 10] [--ray]

Callers are threads with their own SQLite connection (as separate processes would have) on one
ledger file (WAL, synchronous=FULL: every grant is on disk before it is returned), all charging
one scope with RDP accounting; with --ray they call one BudgetAccountant actor instead.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from raymask.actors.accountant import Accountant, Mechanism


def _hammer(callers: int, seconds: float, make_pair) -> float:  # noqa: ANN001
    """Pairs per second from `callers` threads, each looping `make_pair(i)()` until time."""
    counts = [0] * callers
    stop = time.perf_counter() + seconds

    def run(i: int) -> None:
        pair = make_pair(i)
        while time.perf_counter() < stop:
            pair()
            counts[i] += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(callers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def direct(callers: int, seconds: float, db: Path) -> float:
    Accountant(db).set_budget("bench", {"epsilon": 1e9, "delta": 1e-6})
    m = Mechanism.laplace(100.0)

    def make_pair(i: int):  # noqa: ANN202
        acc = Accountant(db)  # its own connection, as another process would have
        return lambda: acc.commit(acc.reserve("bench", m, caller=f"c{i}").id)

    return _hammer(callers, seconds, make_pair)


def via_ray(callers: int, seconds: float, db: Path) -> float:
    import ray

    from raymask.actors.accountant import get_accountant
    from raymask.cluster.runtime import ensure_ray

    ensure_ray()
    a = get_accountant(str(db))
    ray.get(a.set_budget.remote("bench", {"epsilon": 1e9, "delta": 1e-6}))
    m = Mechanism.laplace(100.0).model_dump()

    def make_pair(i: int):  # noqa: ANN202
        return lambda: ray.get(a.commit.remote(ray.get(a.reserve.remote(["bench"], m, f"c{i}")).id))

    rate = _hammer(callers, seconds, make_pair)
    ray.kill(a)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--callers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--ray", action="store_true", help="Through the Ray actor.")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "ledger.sqlite"
        rate = (via_ray if a.ray else direct)(a.callers, a.seconds, db)
    how = "one BudgetAccountant actor" if a.ray else "own SQLite connections"
    print(f"{a.callers} callers ({how}), {a.seconds:g} s: {rate:,.0f} reserve+commit pairs/s")


if __name__ == "__main__":
    main()
