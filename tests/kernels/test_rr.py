"""k-ary randomized response: keep rate, uniform replacements, unbiased decoder, DP audit.

Statistical tests fail a correct kernel by chance with probability ALPHA (1e-6,
tests/chance.py) each, as stated per test.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from raymask.kernels import rr
from raymask.kernels.rng import SecureRandom
from tests.chance import ALPHA, Z

N = 1_000_000


@pytest.fixture(scope="module")
def rng() -> SecureRandom:
    return SecureRandom()


@pytest.mark.parametrize(("k", "eps"), [(2, 1.0), (5, 0.5), (64, 3.0)])
def test_threshold_rounds_down_and_effective_epsilon_is_within_eps(k, eps):
    p = math.exp(eps) / (math.exp(eps) + k - 1)
    t = rr.keep_threshold(k, eps)
    assert t / 2**62 <= p and p - t / 2**62 < 2**-52
    assert eps - 1e-12 < rr.effective_epsilon(k, eps) <= eps


@pytest.mark.parametrize(("k", "eps"), [(2, 1.0), (5, 0.5), (64, 3.0)])
def test_keep_rate_and_uniform_replacements(rng, k, eps):
    # keep rate: binomial z-test; replacements given the true index 0: chi-square against
    # uniform over the k - 1 others; each at ALPHA
    idx = np.zeros(N, np.int64)
    out = rr.randomize_indices(idx, np.ones(N, np.bool_), k, eps, rng)
    p = rr.keep_probability(k, eps)
    kept = np.mean(out == 0)
    assert abs(kept - p) <= Z * math.sqrt(p * (1 - p) / N)
    others = np.bincount(out[out != 0], minlength=k)[1:]
    if k > 2:  # with k = 2 there is one other category: nothing to test
        assert stats.chisquare(others).pvalue > ALPHA


def test_estimator_is_exactly_unbiased_on_expected_counts():
    k, eps, n = 4, 1.0, 10_000
    pi = np.array([0.5, 0.3, 0.2, 0.0])
    p = rr.keep_probability(k, eps)
    q = (1 - p) / (k - 1)
    expected_counts = n * (q + pi * (p - q))  # E[c_j]: the estimator is linear in the counts
    np.testing.assert_allclose(rr.estimate_frequencies(expected_counts, k, eps, n), pi, atol=1e-12)


def test_estimator_recovers_frequencies_within_its_ci(rng):
    # per category: |pi_hat - pi| <= z * sd, sd from the multinomial variance; Bonferroni over
    # the k categories at ALPHA
    k, eps = 4, 1.0
    pi = np.array([0.5, 0.3, 0.2, 0.0])
    idx = np.repeat(np.arange(k), (pi * N).astype(int))
    out = rr.randomize_indices(idx, np.ones(N, np.bool_), k, eps, rng)
    est = rr.estimate_frequencies(np.bincount(out, minlength=k), k, eps)
    p = rr.keep_probability(k, eps)
    q = (1 - p) / (k - 1)
    lam = q + pi * (p - q)
    sd = np.sqrt(lam * (1 - lam) / N) / (p - q)
    z = stats.norm.isf(ALPHA / (2 * k))
    assert np.all(np.abs(est - pi) <= z * sd)
    assert est.sum() == pytest.approx(1.0)


def test_strings_bools_nulls_and_unknown_values(rng):
    cats = ["red", "green", "blue"]
    a = pa.array(["red", None, "blue", "green"])
    out = rr.randomized_response(a, cats, 1.0, rng=rng)
    assert out.type == pa.string() and out.is_null().to_pylist() == [False, True, False, False]
    assert set(v for v in out.to_pylist() if v is not None) <= set(cats)
    d = rr.randomized_response(a.dictionary_encode(), cats, 1.0, rng=rng)
    assert d.type == pa.string() and d.null_count == 1
    b = rr.randomized_response(pa.array([True, False, None]), None, 2.0, rng=rng)
    assert b.type == pa.bool_() and b.null_count == 1
    with pytest.raises(ValueError, match="1 value") as exc:
        rr.randomized_response(pa.array(["red", "secret-value"]), cats, 1.0, rng=rng)
    assert "secret-value" not in str(exc.value)  # never a data value in a message
    with pytest.raises(ValueError, match="category list"):
        rr.randomized_response(a, None, 1.0, rng=rng)


def test_neighbouring_inputs_log_ratio_stays_within_epsilon(rng):
    """Audit: 10**6 reports of category 0 and of category 1 (k = 3, eps = 1); per output the
    log count ratio is within eps + z * se (Bonferroni over 3 outputs at ALPHA) and the
    largest reaches eps - z * se (the bound is tight for randomized response)."""
    k, eps = 3, 1.0
    ones = np.ones(N, np.bool_)
    o0 = rr.randomize_indices(np.zeros(N, np.int64), ones, k, eps, rng)
    o1 = rr.randomize_indices(np.ones(N, np.int64), ones, k, eps, rng)
    c0 = np.bincount(o0, minlength=k)
    c1 = np.bincount(o1, minlength=k)
    lr = np.log(c0 / c1)
    se = np.sqrt(1 / c0 + 1 / c1)
    z = stats.norm.isf(ALPHA / (2 * k))
    assert np.all(np.abs(lr) <= eps + z * se)
    assert np.max(np.abs(lr) + z * se) >= eps
