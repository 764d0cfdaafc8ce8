"""The format benchmark runs end to end on a tiny input (its figures are not checked here)."""

from __future__ import annotations

from raymask.loadtest.format_bench import main, run


def test_format_bench_runs_tiny_for_both_formats(capsys):
    main(["--records", "60", "--repeat", "1"])
    out = capsys.readouterr().out
    assert "| xml | 60 |" in out and "| protobuf | 60 |" in out


def test_format_bench_reports_a_ratio():
    r = run("protobuf", 40, 1)
    assert r["records"] == 40 and r["ratio"] > 0
