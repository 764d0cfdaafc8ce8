"""The detection benchmark runs end to end when made tiny (figures are not asserted here)."""

from __future__ import annotations

from raymask.loadtest.detect_bench import PATTERNS, main, python_re, raymask_detect


def test_tiny_benchmark_runs_every_baseline(capsys):
    res = main(["--records", "300", "--re-sample", "100", "--presidio-sample", "5", "--engines"])
    for k in ("raymask", "python_re", "re2_replace", "re2_extract_first_match", "presidio",
              "hyperscan_find"):  # fmt: skip
        assert res[k]["seconds"] >= 0, k
    assert "raymask detect+replace" in capsys.readouterr().out


def test_baseline_patterns_cover_the_same_types():
    from raymask.kernels.detect import TYPES

    assert tuple(PATTERNS) == TYPES
    import pyarrow as pa

    text = "mail ann@ex.io card 4111 1111 1111 1111 ip 10.0.0.1"
    assert python_re([text]) == [raymask_detect(pa.array([text]))[0].as_py()]
