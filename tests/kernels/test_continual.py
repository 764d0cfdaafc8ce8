"""Continual counting: the published worst-case errors of the tree and the square-root
factorization, our exact-integer factorization's error, the zCDP calibration, and measured
errors against theory and against naive per-step release."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from raymask.kernels.continual import (
    SqrtCounter,
    TreeCounter,
    naive_worst_std,
    sqrt_worst_std,
    tree_worst_std,
)
from raymask.kernels.rng import SecureRandom


@pytest.mark.parametrize(("T", "tree", "sqrt"), [(2**10, 10.49, 3.27), (2**20, 20.49, 5.48)])
def test_published_worst_case_std(T, tree, sqrt):
    # Fichtenberger, Henzinger, Upadhyay 2023 / the table, in units of sigma0
    assert tree_worst_std(T) == pytest.approx(tree, abs=0.005)
    assert sqrt_worst_std(T) == pytest.approx(sqrt, abs=0.005)


@pytest.mark.parametrize("T", [2**10, 2**14])
def test_integer_square_root_is_within_1_percent_of_the_ideal(T):
    c = SqrtCounter(T, 0.5, SecureRandom._for_tests(1))
    ours = c.worst_std()
    assert sqrt_worst_std(T) <= ours <= 1.01 * sqrt_worst_std(T)
    assert ours * 3 < tree_worst_std(T) < naive_worst_std(T)  # ~3x better than the tree


@pytest.mark.parametrize("rho", [0.5, 0.01, 3.0])
def test_calibration_never_spends_more_than_rho(rho):
    r = Fraction(repr(rho))
    tree = TreeCounter(2**10, rho, SecureRandom._for_tests(1))
    assert Fraction(tree.levels) / (2 * tree.sigma2) <= r
    sq = SqrtCounter(2**10, rho, SecureRandom._for_tests(1))
    D2 = int(np.sum(sq.r.astype(object) ** 2))
    assert Fraction(D2) / (2 * sq.sigma2) <= r


@pytest.mark.parametrize("cls", [TreeCounter, SqrtCounter])
def test_outputs_are_the_prefix_sums_plus_the_same_noise(cls):
    T = 512
    x = np.random.default_rng(3).integers(0, 50, T)
    noisy = cls(T, 0.5, SecureRandom._for_tests(9)).step(x)
    noise_only = cls(T, 0.5, SecureRandom._for_tests(9)).step(np.zeros(T, np.int64))
    np.testing.assert_allclose(noisy - noise_only, np.cumsum(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", [TreeCounter, SqrtCounter])
def test_a_stream_fed_in_pieces_keeps_its_running_count(cls):
    x = np.arange(100) % 7
    a, b = cls(100, 1.0, SecureRandom._for_tests(4)), cls(100, 1.0, SecureRandom._for_tests(4))
    cuts = [0, 30, 31, 77, 100]
    got = np.concatenate([a.step(x[i:j]) - b.step(np.zeros(j - i, np.int64))
                          for i, j in zip(cuts, cuts[1:], strict=False)])  # fmt: skip
    np.testing.assert_allclose(got, np.cumsum(x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="releases 100 steps"):
        a.step(x[:1])


def _var_ci(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    n = len(samples)
    s2 = float(np.var(samples, ddof=1))
    return (
        (n - 1) * s2 / stats.chi2.ppf(1 - alpha / 2, n - 1),
        (n - 1) * s2 / stats.chi2.ppf(alpha / 2, n - 1),
    )


def test_measured_errors_match_theory_at_2_10():
    # 300 streams; each variance is inside its 99.9% chi-square interval (false failure 0.1%
    # per check, 4 checks)
    T, rho, runs = 2**10, 0.5, 300
    sigma0 = math.sqrt(1 / (2 * rho))
    tree_err, sqrt_err = [], []
    rng = SecureRandom._for_tests(17)
    for _ in range(runs):
        tree_err.append(TreeCounter(T, rho, rng).step(np.zeros(T, np.int64)))
        sqrt_err.append(SqrtCounter(T, rho, rng).step(np.zeros(T, np.int64)))
    tree_err, sqrt_err = np.array(tree_err), np.array(sqrt_err)
    t_worst = T - 1  # popcount 10: the tree's worst step
    tc = TreeCounter(T, rho, rng)
    want_tree = 10 * float(tc.sigma2)
    lo, hi = _var_ci(tree_err[:, t_worst - 1], 0.001)
    assert lo <= want_tree <= hi
    sq = SqrtCounter(T, rho, rng)
    for t in (T // 2, T):
        want = float(sq.sigma2) * float(np.sum(sq.l[:t] ** 2))
        lo, hi = _var_ci(sqrt_err[:, t - 1], 0.001)
        assert lo <= want <= hi
    # worst case over the stream, in sigma0 units, vs naive per-step release (sqrt(T) = 32)
    worst_sqrt = math.sqrt(float(np.var(sqrt_err[:, -1]))) / sigma0
    worst_tree = math.sqrt(float(np.var(tree_err[:, t_worst - 1]))) / sigma0
    assert worst_sqrt < worst_tree / 2.5 and worst_tree < naive_worst_std(T) / 2.5


def test_measured_error_at_2_14_matches_theory():
    # one long stream of each: the mean squared error over all steps against the theoretical
    # mean variance (steps are correlated, so the tolerance is wide: +-35%)
    T, rho = 2**14, 0.5
    rng = SecureRandom._for_tests(23)
    sq = SqrtCounter(T, rho, rng)
    err = sq.step(np.zeros(T, np.int64))
    want = float(sq.sigma2) * float(np.mean(np.cumsum(sq.l**2)))
    assert 0.65 * want <= float(np.mean(err**2)) <= 1.35 * want
    tr = TreeCounter(T, rho, rng)
    err_t = tr.step(np.zeros(T, np.int64))
    pop = np.array([bin(t).count("1") for t in range(1, T + 1)])
    want_t = float(tr.sigma2) * float(np.mean(pop))
    assert 0.65 * want_t <= float(np.mean(err_t**2)) <= 1.35 * want_t
    assert np.mean(err**2) < np.mean(err_t**2) / 4
