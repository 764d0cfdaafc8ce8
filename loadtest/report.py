"""The SLO report of a load run: PNG plots to look at instead of CSV to read, and a short summary.

`raymask report RUN_DIR --out DIR` reads what a run folder holds, either part may be missing:
- Locust's `*_stats.csv` and `*_stats_history.csv` (written with --csv-full-history);
- raymask's `timeline.csv` (loadtest/timeline.py: the load driver or a scale test writes it).

It writes:
- `throughput.png`: requests/s per request name over time (from Locust's request counts, over
  2 s), with the user count (the load shape) on a second axis;
- `latency.png`: p50 (solid) and p99 (dashed) per request name over time (Locust's percentiles
  of the last few seconds: 3 in runs of loadtest/locustfile.py, as its `locust-run.json` says;
  Locust's default is 10), with the user count;
- `workers.png`: workers (Serve replicas or MaskWorkers) and Ray nodes over time;
- `lag.png`: consumer lag (records) and queue depth over time, when the timeline has them;
- `records.png`: records/s in, out and dead letters from the timeline's counters, when it has
  them;
- `summary.md`: per request name and overall, requests, failures, p50 and p99 over the whole run
  (`*_stats.csv`), the highest requests/s over 2 s (from the request counts of
  `*_stats_history.csv`, as throughput.png draws it); then what the timeline saw.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["RequestStats", "Report", "read_report", "write_report"]


@dataclass
class RequestStats:
    name: str  # "Aggregated" for the whole run
    requests: int
    failures: int
    p50_ms: float
    p99_ms: float
    max_rps: float | None  # the highest requests/s over 2 s in the history (as throughput.png
    # draws it); over 1 s when the name has only 2 rows there, None with fewer


@dataclass
class Report:
    run_dir: Path
    requests: list[RequestStats] = field(default_factory=list)  # Aggregated last
    history: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # name -> rows
    timeline: list[dict[str, float | None]] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    latency_window_s: float = 10.0  # Locust's default, unless locust-run.json says otherwise

    @property
    def overall(self) -> RequestStats | None:
        return next((r for r in self.requests if r.name == "Aggregated"), None)


def _num(v: str | None) -> float | None:
    if v is None or v.strip() in ("", "N/A"):
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return None if math.isnan(x) else x


def _one(run_dir: Path, suffix: str) -> Path | None:
    found = sorted(run_dir.glob(f"*{suffix}"))
    return found[0] if found else None


def read_report(run_dir: str | Path) -> Report:
    """What a run folder says, in numbers (no plots)."""
    run_dir = Path(run_dir)
    rep = Report(run_dir)
    hist_path = _one(run_dir, "_stats_history.csv")
    if hist_path is not None:
        with open(hist_path, newline="") as f:
            for row in csv.DictReader(f):
                rep.history.setdefault(row["Name"], []).append({
                    "t": float(row["Timestamp"]), "users": _num(row["User Count"]) or 0.0,
                    "rps": _num(row["Requests/s"]) or 0.0, "p50": _num(row["50%"]),
                    "p99": _num(row["99%"]), "total": _num(row["Total Request Count"]) or 0.0,
                })  # fmt: skip
    stats_path = _one(run_dir, "_stats.csv")
    if stats_path is not None:
        with open(stats_path, newline="") as f:
            rows = list(csv.DictReader(f))
        rows.sort(key=lambda r: r["Name"] == "Aggregated")
        for row in rows:
            hist = rep.history.get(row["Name"], [])
            rep.requests.append(RequestStats(
                row["Name"], int(row["Request Count"]), int(row["Failure Count"]),
                _num(row["50%"]) or 0.0, _num(row["99%"]) or 0.0,
                _peak_rate(hist),
            ))  # fmt: skip
    setup = run_dir / "locust-run.json"
    if setup.exists():
        rep.latency_window_s = float(json.loads(setup.read_text()).get("latency_window_s", 10))
    tl_path = run_dir / "timeline.csv"
    if tl_path.exists():
        with open(tl_path, newline="") as f:
            rep.timeline = [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return rep


def _t0(rep: Report) -> float:
    starts = [rows[0]["t"] for rows in rep.history.values() if rows]
    starts += [r["t_unix"] for r in rep.timeline[:1] if r.get("t_unix") is not None]
    return min(starts) if starts else 0.0


def _users(ax, rep: Report, t0: float) -> None:  # noqa: ANN001 (a matplotlib Axes)
    rows = rep.history.get("Aggregated", [])
    if not rows:
        return
    ax2 = ax.twinx()
    ax2.step([r["t"] - t0 for r in rows], [r["users"] for r in rows], where="post", color="0.5",
             linestyle=":", label="users")  # fmt: skip
    ax2.set_ylabel("users (load shape)")
    ax2.set_ylim(bottom=0, top=max(1.0, max(r["users"] for r in rows)) * 1.15)
    ax2.legend(loc="upper right", fontsize=8)


def _names(rep: Report) -> list[str]:
    named = [n for n in rep.history if n != "Aggregated"]
    return named or list(rep.history)


def _series(rep: Report, column: str, t0: float) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rep.timeline:
        t, v = r.get("t_unix"), r.get(column)
        if t is not None and v is not None:
            xs.append(t - t0)
            ys.append(v)
    return xs, ys


def _rate(xs: list[float], ys: list[float], span: int = 1) -> tuple[list[float], list[float]]:
    """Per-second rate of a cumulative counter, over `span` samples (a counter reset gives no
    negative rate)."""
    out_x, out_y = [], []
    for i in range(span, len(xs)):
        t1, a, t2, b = xs[i - span], ys[i - span], xs[i], ys[i]
        if t2 > t1:
            out_x.append(t2)
            out_y.append(max(0.0, (b - a) / (t2 - t1)))
    return out_x, out_y


def _span(rows: list) -> int:
    return 2 if len(rows) > 2 else 1


def _peak_rate(hist: list[dict[str, float]]) -> float | None:
    """The highest requests/s over 2 s of a request name's history rows (over 1 s with only two
    rows: requests that all came in the last seconds of a run; None with fewer)."""
    if len(hist) < 2:
        return None
    rates = _rate([h["t"] for h in hist], [h["total"] for h in hist], _span(hist))[1]
    return max(rates) if rates else None


def write_report(run_dir: str | Path, out_dir: str | Path) -> Report:
    """Plots and summary.md of a run folder into `out_dir`; the numbers come back."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep = read_report(run_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = _t0(rep)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def save(fig, name: str) -> None:  # noqa: ANN001
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        rep.plots.append(name)

    if rep.history:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        for i, n in enumerate(_names(rep)):
            rows = rep.history[n]
            xs, ys = _rate([r["t"] - t0 for r in rows], [r["total"] for r in rows], _span(rows))
            ax.plot(xs, ys, color=colors[i % 10], label=n)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("requests/s")
        ax.set_ylim(bottom=0)
        ax.set_title("Throughput (requests/s over 2 s, from Locust's counts) and load shape")
        ax.legend(loc="upper left", fontsize=8)
        _users(ax, rep, t0)
        save(fig, "throughput.png")

        fig, ax = plt.subplots(figsize=(10, 4.5))
        top = 0.0
        for i, n in enumerate(_names(rep)):
            rows = [r for r in rep.history[n] if r["p50"] is not None]
            xs = [r["t"] - t0 for r in rows]
            ax.plot(xs, [r["p50"] for r in rows], color=colors[i % 10], label=f"{n} p50")
            ax.plot(
                xs, [r["p99"] for r in rows], color=colors[i % 10], linestyle="--", label=f"{n} p99"
            )
            top = max([top] + [r["p99"] or 0.0 for r in rows])
        low = min([r["p50"] for n in _names(rep) for r in rep.history[n] if r["p50"]] or [1.0])
        if top > 0 and low > 0 and top / low > 50:
            ax.set_yscale("log")
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("latency ms")
        ax.set_title(f"Latency p50 / p99 (Locust, last ~{rep.latency_window_s:g} s) and load shape")
        ax.legend(loc="upper left", fontsize=8)
        _users(ax, rep, t0)
        save(fig, "latency.png")

    if rep.timeline:
        fig, ax = plt.subplots(figsize=(10, 3.5))
        for i, col in enumerate(("workers", "nodes")):
            xs, ys = _series(rep, col, t0)
            if xs:
                ax.step(xs, ys, where="post", color=colors[i], label=col)
        if not ax.lines:
            ax.text(0.5, 0.5, "no worker or node count in this run", ha="center", va="center",
                    transform=ax.transAxes)  # fmt: skip
        else:
            ax.legend(loc="upper left", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("count")
        ax.set_title("Workers and nodes")
        _users(ax, rep, t0)
        save(fig, "workers.png")

        lag = _series(rep, "consumer_lag", t0)
        queue = _series(rep, "queue_depth", t0)
        if lag[0] or queue[0]:
            fig, ax = plt.subplots(figsize=(10, 3.5))
            if lag[0]:
                ax.plot(*lag, color=colors[0], label="consumer lag (records)")
            ax.set_ylim(bottom=0)
            ax.set_xlabel("seconds since start")
            ax.set_ylabel("records")
            ax.set_title("Consumer lag and queue depth")
            if queue[0]:
                ax3 = ax.twinx()
                ax3.plot(*queue, color=colors[1], label="queue depth")
                ax3.set_ylabel("queue depth")
                ax3.set_ylim(bottom=0)
                ax3.legend(loc="upper right", fontsize=8)
            if lag[0]:
                ax.legend(loc="upper left", fontsize=8)
            save(fig, "lag.png")

        rates = {
            c: _rate(*_series(rep, c, t0)) for c in ("records_in", "records_out", "dead_letters")
        }
        if any(xs for xs, _ in rates.values()):
            fig, ax = plt.subplots(figsize=(10, 3.5))
            for i, (col, (xs, ys)) in enumerate(rates.items()):
                if xs:
                    ax.plot(xs, ys, color=colors[i], label=f"{col} /s")
            ax.set_ylim(bottom=0)
            ax.set_xlabel("seconds since start")
            ax.set_ylabel("records/s")
            ax.set_title("raymask records/s (timeline counters)")
            ax.legend(loc="upper left", fontsize=8)
            save(fig, "records.png")

    (out / "summary.md").write_text(_summary(rep, t0))
    return rep


def _summary(rep: Report, t0: float) -> str:
    lines = [f"# Load run {rep.run_dir.name}", ""]
    ends = [rows[-1]["t"] for rows in rep.history.values() if rows]
    ends += [r["t_unix"] for r in rep.timeline[-1:] if r.get("t_unix") is not None]
    if t0 and ends:
        start = datetime.fromtimestamp(t0, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines += [f"Started {start}, {max(ends) - t0:.0f} s.", ""]
    if rep.requests:
        peak = max((r["users"] for r in rep.history.get("Aggregated", [])), default=0)
        lines += [
            f"Locust: up to {peak:.0f} users. p50 / p99 over the whole run (`*_stats.csv`); max "
            "requests/s: the highest over 2 s (request counts in `*_stats_history.csv`).",
            "",
            "| request | requests | failures | p50 ms | p99 ms | max requests/s |",
            "|---|---|---|---|---|---|",
        ]
        for r in rep.requests:
            # percentiles as Locust wrote them (it rounds them to 2 significant digits)
            lines.append(f"| {r.name} | {r.requests} | {r.failures} | {r.p50_ms:g} | "
                         f"{r.p99_ms:g} | {'n/a' if r.max_rps is None else f'{r.max_rps:.1f}'} |")  # fmt: skip
        lines.append("")
    if rep.timeline:
        lines += [f"raymask timeline: {len(rep.timeline)} samples."]
        stats: dict[str, list[float]] = defaultdict(list)
        for r in rep.timeline:
            for k, v in r.items():
                if k != "t_unix" and v is not None:
                    stats[k].append(v)
        for col in ("workers", "nodes"):
            if stats[col]:
                lines.append(f"- {col}: {min(stats[col]):.0f} to {max(stats[col]):.0f}")
        for col in ("consumer_lag", "queue_depth"):
            if stats[col]:
                lines.append(f"- {col}: max {max(stats[col]):,.0f}")
        for col in ("records_in", "records_out", "dead_letters"):
            if stats[col]:
                lines.append(f"- {col}: {stats[col][-1] - stats[col][0]:,.0f} during the run")
        lines.append("")
    lines += ["Plots: " + ", ".join(rep.plots) if rep.plots else "No plots: nothing to plot.", ""]
    return "\n".join(lines)
