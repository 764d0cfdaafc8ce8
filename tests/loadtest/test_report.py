"""`raymask report`: PNGs that are PNGs, and a summary whose numbers are the CSV's."""

from __future__ import annotations

import csv
import re

from typer.testing import CliRunner

from raymask.cluster.cli import app
from raymask.loadtest.timeline import TimelineWriter

STATS_COLS = ("Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
              "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
              "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%")  # fmt: skip
HIST_COLS = ("Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,"
             "99%,99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response "
             "Time,Total Average Response Time,Total Min Response Time,Total Max Response Time,"
             "Total Average Content Size")  # fmt: skip
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_folder(tmp_path):
    """A run as the load driver leaves it: Locust CSVs (two request names) and timeline.csv."""
    d = tmp_path / "run"
    d.mkdir()
    t0 = 1_795_000_000
    hist = [
        HIST_COLS,
        f"{t0},0,,Aggregated,0,0,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,N/A,0,0,0,0,0,0,0",
    ]
    total = {"mask 1 record": 0, "mask 100 records": 0}
    for s in range(1, 41):
        users = 4 if s < 20 or s >= 28 else 20
        rows = []
        for name, rate in (
            ("mask 1 record", 3.0 * users + s % 3),
            ("mask 100 records", users + 0.5),
        ):
            total[name] += int(rate)
            p50, p99 = (
                (12 + s % 5, 80 + s) if name == "mask 1 record" else (30 + s % 4, 150 + 2 * s)
            )
            rows.append((name, rate, p50, p99, total[name]))
        agg_rate = sum(r[1] for r in rows)
        for name, rate, p50, p99, tot in [
            *rows,
            ("Aggregated", agg_rate, 14, 160 + s, sum(total.values())),
        ]:
            typ = "" if name == "Aggregated" else "POST"
            pcts = f"{p50},{p50},{p50},{p50},{p99},{p99},{p99},{p99},{p99},{p99},{p99}"
            hist.append(
                f"{t0 + s},{users},{typ},{name},{rate},0,{pcts},{tot},1,{p50},20.5,1.2,{p99},100"
            )
    (d / "locust_stats_history.csv").write_text("\n".join(hist) + "\n")
    (d / "locust_stats.csv").write_text("\n".join([
        STATS_COLS,
        "POST,mask 1 record,2800,1,13,15.2,1.1,300,2000,70.1,0.03,13,14,15,16,40,60,80,95,200,300,300",
        "POST,mask 100 records,600,0,31,40.7,9.5,500,45000,15.0,0,31,33,36,38,90,120,150,170,400,500,500",
        ",Aggregated,3400,1,14,20.1,1.1,500,9000,85.1,0.03,14,16,18,20,60,100,140,160,300,500,500",
    ]) + "\n")  # fmt: skip
    with TimelineWriter(d / "timeline.csv") as w:
        for s in range(0, 41):
            w.row(t_unix=t0 + s, workers=1 if s < 22 else 3, nodes=1, queue_depth=s % 4,
                  consumer_lag=max(0, 500 - abs(s - 24) * 60), records_in=s * 1000,
                  records_out=s * 990, dead_letters=s * 10)  # fmt: skip
    return d


def _expected(d):
    rows = list(csv.DictReader(open(d / "locust_stats.csv")))
    hist = list(csv.DictReader(open(d / "locust_stats_history.csv")))
    out = {}
    for r in rows:
        mine = [h for h in hist if h["Name"] == r["Name"]]  # the peak over 2 s of the counts
        t = [float(h["Timestamp"]) for h in mine]
        n = [float(h["Total Request Count"]) for h in mine]
        rates = [(n[i] - n[i - 2]) / (t[i] - t[i - 2]) for i in range(2, len(mine))]
        out[r["Name"]] = (int(r["Request Count"]), int(r["Failure Count"]), float(r["50%"]),
                          float(r["99%"]), round(max(rates), 1))  # fmt: skip
    return out


def _table(summary: str) -> dict:
    got = {}
    for line in summary.splitlines():
        m = re.match(
            r"\| (mask [^|]+|Aggregated) \| (\d+) \| (\d+) \| ([\d.,]+) \| ([\d.,]+) \| ([\d.,]+) \|",
            line,
        )
        if m:
            n = [float(x) for x in m.groups()[3:]]
            got[m.group(1)] = (int(m.group(2)), int(m.group(3)), *n)
    return got


def test_report_writes_png_plots_and_a_summary_with_the_csv_numbers(tmp_path):
    d = _run_folder(tmp_path)
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["report", str(d), "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in ("throughput.png", "latency.png", "workers.png", "lag.png", "records.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 10_000, name  # a drawn figure, not an empty canvas
    summary = (out / "summary.md").read_text()
    assert _table(summary) == _expected(d)
    assert "up to 20 users" in summary
    assert "- workers: 1 to 3" in summary
    assert "- consumer_lag: max 500" in summary
    assert "- records_in: 40,000 during the run" in summary


def test_a_timeline_alone_is_reported_and_an_empty_folder_is_an_error(tmp_path):
    d = tmp_path / "scale"
    with TimelineWriter(d / "timeline.csv") as w:
        for s in range(5):
            w.row(t_unix=1000 + s, workers=s + 1)
    res = CliRunner().invoke(app, ["report", str(d), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "workers.png").read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "r" / "lag.png").exists()  # no lag in that timeline
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "e")])
    assert res.exit_code != 0
