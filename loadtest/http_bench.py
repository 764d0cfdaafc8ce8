"""HTTP masking through Ray Serve against a plain FastAPI app that masks record by record in
pure Python (json.loads, hmac, slicing, json.dumps), same machine, same client, same run.

    python -m raymask.loadtest.http_bench [--seconds 15] [--concurrency 16]

For 1-record and 100-record NDJSON requests: records/s, requests/s, and latency p50/p99 as the
client sees it. The client is asyncio + aiohttp in this process with `--concurrency` requests in
flight; the baseline app runs under uvicorn in a process of its own (one worker, like the one
Serve replica here).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from raymask.loadtest.bench import BENCH_POLICY, KEY
from raymask.loadtest.traffic import generate_bytes

BASELINE_APP = """
import sys
from fastapi import FastAPI, Request, Response
sys.path.insert(0, {root!r})
from raymask.loadtest.bench import _baseline_mask_line

app = FastAPI()

@app.post("/v1/streams/payments/mask")
async def mask(request: Request) -> Response:
    body = (await request.body()).decode()
    out = [_baseline_mask_line(line) for line in body.splitlines() if line.strip()]
    return Response(("\\n".join(out) + "\\n").encode(), 200, media_type="application/x-ndjson")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, bodies: list[bytes], seconds: float, concurrency: int) -> dict:
    import aiohttp

    lat: list[float] = []
    records = 0
    errors = 0
    stop = time.perf_counter() + seconds
    per = bodies[0].count(b"\n")

    async def user(k: int) -> None:
        nonlocal records, errors
        i = k
        async with aiohttp.ClientSession() as s:
            while time.perf_counter() < stop:
                body = bodies[i % len(bodies)]
                i += concurrency
                t = time.perf_counter()
                async with s.post(url, data=body,
                                  headers={"content-type": "application/x-ndjson"}) as r:  # fmt: skip
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                lat.append(time.perf_counter() - t)
                records += per

    t0 = time.perf_counter()
    await asyncio.gather(*(user(k) for k in range(concurrency)))
    took = time.perf_counter() - t0
    a = np.array(lat) * 1000 if lat else np.zeros(1)
    return {
        "records/s": records / took,
        "requests/s": len(lat) / took,
        "p50 ms": float(np.percentile(a, 50)),
        "p99 ms": float(np.percentile(a, 99)),
        "errors": errors,
    }


async def _wait_up(url: str, limit_s: float = 60.0) -> None:
    import aiohttp

    deadline = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.3)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--sizes", default="1,100", help="records per request")
    args = ap.parse_args(argv)

    import ray
    from ray import serve

    from raymask.cluster.runtime import ensure_ray
    from raymask.cluster.serve_app import build_app
    from raymask.policy.keys import Key, Keyring
    from raymask.policy.loader import parse_policy

    root = str(Path(__file__).resolve().parents[1].parent)
    lines = generate_bytes("payments", 20_000, seed=3).splitlines(keepends=True)
    base_port, serve_port = _free_port(), _free_port()
    app_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"raymask_http_baseline_{os.getpid()}.py"
    app_file.write_text(BASELINE_APP.format(root=root))
    base = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", f"{app_file.stem}:app", "--port", str(base_port),
         "--log-level", "warning", "--no-access-log"],
        cwd=app_file.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    started = ensure_ray(None)
    results: dict = {}
    try:
        ring = Keyring([Key("tok", 1, KEY), Key("deadletter", 1, b"d" * 32)])
        serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
        serve.run(build_app(parse_policy(BENCH_POLICY, "bench"), ring, workers=1,
                            app="bench-http"), name="bench-http", route_prefix="/")  # fmt: skip
        asyncio.run(_wait_up(f"http://127.0.0.1:{base_port}/docs"))
        asyncio.run(_wait_up(f"http://127.0.0.1:{serve_port}/healthz"))
        for size in [int(x) for x in args.sizes.split(",")]:
            bodies = [b"".join(lines[i : i + size]) for i in range(0, len(lines) - size, size)][
                :500
            ]
            for name, port in (
                ("FastAPI, pure Python", base_port),
                ("raymask on Serve", serve_port),
            ):
                url = f"http://127.0.0.1:{port}/v1/streams/payments/mask"
                asyncio.run(_load(url, bodies[:20], 2.0, args.concurrency))  # warm up
                results[(size, name)] = asyncio.run(
                    _load(url, bodies, args.seconds, args.concurrency)
                )
        print(f"{'records/request':>15}  {'server':<22}{'records/s':>11}{'requests/s':>11}"
              f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")  # fmt: skip
        for (size, name), r in results.items():
            print(f"{size:>15}  {name:<22}{r['records/s']:>11,.0f}{r['requests/s']:>11,.0f}"
                  f"{r['p50 ms']:>9.1f}{r['p99 ms']:>9.1f}{r['errors']:>8}")  # fmt: skip
        for size in sorted({s for s, _ in results}):
            ratio = (results[(size, "raymask on Serve")]["records/s"]
                     / results[(size, "FastAPI, pure Python")]["records/s"])  # fmt: skip
            print(f"{size} record(s) per request: raymask / baseline = {ratio:.2f}x")
    finally:
        base.terminate()
        base.wait(10)
        app_file.unlink(missing_ok=True)
        try:
            serve.delete("bench-http")
            serve.shutdown()
            for i in range(1):
                try:
                    ray.kill(ray.get_actor(f"sworker:bench-http:payments:{i}", namespace="raymask"))
                except ValueError:
                    pass
        finally:
            if started:
                ray.shutdown()
    return results


if __name__ == "__main__":
    main()
