"""The GIL benchmark runs end to end on a few requests (its figures are not checked here)."""

from __future__ import annotations

import os

import pytest

from raymask.loadtest.gil_bench import VIEWS, main


@pytest.mark.skipif(
    not os.path.exists("/proc/self/status"),
    reason="gil_bench counts context switches in /proc (Linux only)",
)
def test_gil_bench_runs_every_view_alone_and_beside_a_busy_thread(capsys):
    res = main(["--requests", "2", "--repeat", "1"])
    assert set(res) == {"alone", "beside a busy thread"}
    for per_view in res.values():
        assert set(per_view) == set(VIEWS)
        assert all(
            wall > 0 and cpu > 0 and switches >= 0 for wall, cpu, switches in per_view.values()
        )
    assert "| fraud |" in capsys.readouterr().out
