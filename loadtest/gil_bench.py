"""Benchmark: what the HTTP masking path costs when other threads of its process want the GIL.

    python -m raymask.loadtest.gil_bench [--requests 50] [--repeat 3]

A Serve replica runs a request's masking on one thread while its other threads (Serve's event
loop, Ray's core worker) serve the requests in flight, so whenever the masking thread lets go of
the GIL (in a C call that releases it) another thread may take it, and the masking thread waits
and comes back to a cold cache. This measures that in one process, without Ray: the payments
example's 100-record requests through the ingress core (parse, mask inline, answer), per view,
first alone, then beside a thread that always wants the GIL (a busy loop). Per request: wall
and thread CPU time, and the masking thread's voluntary context switches (each one a GIL
hand-over). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time

VIEWS = ("default", "ops", "fraud", "support", "research")


def _switches() -> int:
    with open(f"/proc/self/task/{threading.get_native_id()}/status") as f:
        return next(int(x.split(":")[1]) for x in f if x.startswith("voluntary_ctxt"))


def _ingress():  # noqa: ANN202
    from raymask.actors.router import RouterCore
    from raymask.actors.warm import warm_up
    from raymask.actors.worker import MaskCore
    from raymask.cluster.serve_app import IngressCore, masked_from, route_here
    from raymask.kernels.codecs.formats import format_for
    from raymask.loadtest.load import DEFAULT_POLICY, _keyring
    from raymask.policy.loader import load_policy

    pol = load_policy(str(DEFAULT_POLICY))
    ring = _keyring(None)  # random keys for the run, as `make load` uses
    fmt = format_for("ndjson")
    core = MaskCore(pol, "payments", ring, fmt)
    router: list = []

    async def mask(stream: str, view: str | None, data, fmt=None):  # noqa: ANN001, ANN202
        routed, check_key = route_here(router[0], data)
        outs = core.process_views(routed.batch, [view or "default"], routed.shards[0], check_key)
        return masked_from(routed, outs)

    ing = IngressCore(pol, mask)
    router.append(RouterCore(ing.plans["payments"], fmt, 1))
    warm_up(core, router[0], ing.plans["payments"])
    return ing


def run(requests: int, repeat: int) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{"alone"|"beside a busy thread": {view: (wall ms, cpu ms, switches) per request}}, the
    best of `repeat` runs by CPU."""
    from raymask.loadtest.traffic import generate_bytes

    ing = _ingress()
    lines = generate_bytes("payments", 100 * requests, seed=13).splitlines(keepends=True)
    bodies = [b"".join(lines[i : i + 100]) for i in range(0, len(lines), 100)]

    async def one(body: bytes, view: str) -> None:
        r = ing.parse("payments", view, body, "application/x-ndjson")
        (a,) = await ing.answer([r])
        assert a.status == 200, a.status

    async def views() -> dict[str, tuple[float, float, float]]:
        for v in VIEWS:  # compile or load every view's kernels first
            await one(bodies[0], v)
        best: dict[str, tuple[float, float, float]] = {}
        for _ in range(repeat):
            for v in VIEWS:
                s0, t0, c0 = _switches(), time.perf_counter(), time.thread_time()
                for b in bodies:
                    await one(b, v)
                got = ((time.perf_counter() - t0) * 1e3 / len(bodies),
                       (time.thread_time() - c0) * 1e3 / len(bodies),
                       (_switches() - s0) / len(bodies))  # fmt: skip
                if v not in best or got[1] < best[v][1]:
                    best[v] = got
        return best

    out = {"alone": asyncio.run(views())}
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            pass

    t = threading.Thread(target=busy, daemon=True)
    t.start()
    try:
        out["beside a busy thread"] = asyncio.run(views())
    finally:
        stop.set()
        t.join()
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=50, help="100-record requests per view")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    res = run(args.requests, args.repeat)
    print("| view | " + " | ".join(f"{k}: wall / CPU ms, switches" for k in res) + " |")
    print("|---|" + "---|" * len(res))
    for v in VIEWS:
        cells = [f"{r[v][0]:.2f} / {r[v][1]:.2f}, {r[v][2]:.1f}" for r in res.values()]
        print(f"| {v} | " + " | ".join(cells) + " |")
    return res


if __name__ == "__main__":
    main()
