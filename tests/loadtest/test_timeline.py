"""timeline.csv: the fixed columns, empty cells for what is unknown, and the figures read from a
Prometheus endpoint (a canned one here: no Ray)."""

from __future__ import annotations

import csv
import http.server
import threading

import pytest

from raymask.loadtest.timeline import (
    COLUMNS,
    Sampler,
    TimelineWriter,
    parse_prometheus,
    sample_from_metrics,
)

METRICS = """\
# HELP ray_raymask_records_total Records per stage (in, out, dead).
# TYPE ray_raymask_records_total counter
ray_raymask_records_total{Component="core_worker",stage="in",stream="payments"} 1200.0
ray_raymask_records_total{Component="core_worker",stage="out",stream="payments"} 1190.0
ray_raymask_records_total{Component="core_worker",stage="dead",stream="payments"} 10.0
ray_raymask_records_total{Component="core_worker",stage="in",stream="other"} 5.0
ray_raymask_queue_depth{stream="payments"} 3.0
ray_serve_deployment_replica_healthy{application="raymask",deployment="MaskIngress",replica="a"} 1.0
ray_serve_deployment_replica_healthy{application="raymask",deployment="MaskIngress",replica="b"} 1.0
ray_serve_deployment_replica_healthy{application="echo",deployment="EchoIngress",replica="c"} 1.0
ray_node_cpu_count{IsHeadNode="true",ip="10.0.0.1"} 2.0
ray_node_cpu_count{IsHeadNode="false",ip="10.0.0.2"} 2.0
ray_weird{label="with \\"quotes\\" and, commas"} NaN
"""


def test_the_header_is_exactly_the_agreed_columns():
    assert COLUMNS == ("t_unix", "workers", "nodes", "queue_depth", "consumer_lag",
                       "records_in", "records_out", "dead_letters")  # fmt: skip


def test_rows_leave_unknown_cells_empty_and_reopen_appends(tmp_path):
    path = tmp_path / "run" / "timeline.csv"
    with TimelineWriter(path) as w:
        w.row(t_unix=100.5, workers=2, consumer_lag=None, records_in=10.0)
        with pytest.raises(ValueError, match="no column 'lag'"):
            w.row(lag=1)
    with TimelineWriter(path) as w:  # a second writer on the same file: no second header
        w.row(t_unix=101, queue_depth=0)
    lines = path.read_text().splitlines()
    assert lines == [",".join(COLUMNS), "100.5,2,,,,10,,", "101,,,0,,,,"]


def test_prometheus_text_is_parsed_with_labels():
    m = parse_prometheus(METRICS)
    assert m["ray_node_cpu_count"][1] == ({"IsHeadNode": "false", "ip": "10.0.0.2"}, 2.0)
    assert m["ray_weird"][0][0] == {"label": 'with \\"quotes\\" and, commas'}
    assert "# HELP" not in str(m)


@pytest.fixture()
def endpoint():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = METRICS.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/metrics"
    srv.shutdown()


def test_sample_from_metrics_maps_ray_metrics_to_columns(endpoint, tmp_path):
    got = sample_from_metrics(endpoint, deployment="MaskIngress")
    assert got == {"workers": 2.0, "nodes": 2.0, "queue_depth": 3.0, "records_in": 1205.0,
                   "records_out": 1190.0, "dead_letters": 10.0}  # fmt: skip
    assert sample_from_metrics(endpoint)["workers"] == 3.0  # every deployment's replicas
    with TimelineWriter(tmp_path / "t.csv") as w:
        w.sample_from_metrics(endpoint, consumer_lag=7, workers=5)  # known values win
        w.sample_from_metrics("http://127.0.0.1:9/metrics")  # nobody there: an empty row
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert (rows[0]["workers"], rows[0]["consumer_lag"], rows[0]["records_out"]) == (
        "5",
        "7",
        "1190",
    )
    assert rows[1]["t_unix"] and not any(rows[1][c] for c in COLUMNS[1:])


def test_the_sampler_writes_a_row_a_tick(tmp_path):
    n = iter(range(100))
    with TimelineWriter(tmp_path / "t.csv") as w:
        s = Sampler(w, lambda: {"records_in": next(n)}, interval_s=0.05).start()
        threading.Event().wait(0.3)
        s.stop()
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) >= 3
    assert [int(r["records_in"]) for r in rows] == list(range(len(rows)))
