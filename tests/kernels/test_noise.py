"""Exact samplers against their exact laws and OpenDP's; noise columns; an empirical DP audit.

Every statistical test below fails by chance with probability 0.001 (alpha) or less, stated
per test; the random streams are OS-seeded, so a failure is never replayed by a fixed seed.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
from scipy import optimize, stats

from raymask.kernels import noise
from raymask.kernels.rng import SecureRandom

N = 1_000_000
ALPHA = 0.001
Z = stats.norm.isf(ALPHA / 2)  # two-sided 0.001


@pytest.fixture(scope="module")
def rng() -> SecureRandom:
    return SecureRandom()


def _dlap_pmf(z: np.ndarray, scale: float) -> np.ndarray:
    r = math.exp(-1 / scale)
    return (1 - r) / (1 + r) * np.exp(-np.abs(z) / scale)


def _dgauss_pmf(z: np.ndarray, sigma2: float) -> np.ndarray:
    L = int(40 * math.sqrt(sigma2)) + 10
    norm = np.exp(-(np.arange(-L, L + 1) ** 2) / (2 * sigma2)).sum()
    return np.exp(-(z.astype(np.float64) ** 2) / (2 * sigma2)) / norm


def _chi2_gof(sample: np.ndarray, pmf) -> float:
    """Chi-square p-value over the values with expected count >= 20, both tails pooled."""
    lo, hi = int(sample.min()), int(sample.max())
    support = np.arange(lo - 1, hi + 2)
    expected = pmf(support) * len(sample)
    keep = expected >= 20
    vals = support[keep]
    a, b = vals.min(), vals.max()
    inside = np.bincount(sample[(sample >= a) & (sample <= b)] - a, minlength=b - a + 1)
    obs = np.concatenate([inside, [np.sum(sample < a) + np.sum(sample > b)]])
    exp_in = pmf(np.arange(a, b + 1)) * len(sample)
    exp = np.concatenate([exp_in, [len(sample) - exp_in.sum()]])
    return stats.chisquare(obs, exp).pvalue


def _moments_in_ci(sample: np.ndarray, pmf, L: int) -> None:
    """Mean and variance inside their 0.001 confidence intervals (exact moments of the law)."""
    z = np.arange(-L, L + 1)
    p = pmf(z)
    var = float((p * z**2).sum())
    m4 = float((p * z.astype(np.float64) ** 4).sum())
    n = len(sample)
    assert abs(sample.mean()) <= Z * math.sqrt(var / n)
    s2 = float((sample.astype(np.float64) ** 2).mean())  # mean is 0: E[z**2] = var
    assert abs(s2 - var) <= Z * math.sqrt((m4 - var**2) / n)


# --- Bernoulli(exp(-gamma)) ------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [Fraction(0), Fraction(1, 3), Fraction(1), Fraction(7, 3)])
def test_bernoulli_exp_rate(rng, gamma):
    # binomial z-test at two-sided alpha = 0.001 per gamma
    b = noise.bernoulli_exp(N, gamma, rng)
    p = math.exp(-gamma)
    assert abs(b.mean() - p) <= Z * math.sqrt(p * (1 - p) / N) + 1e-12


# --- discrete Laplace ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "s"),
    [(3, 1), (7 * 2**20 + 1, 2**20), (5, 2)],  # integer scale, rational near 7, scale 2.5
    ids=["scale-3", "scale-7+2^-20", "scale-5/2"],
)
def test_discrete_laplace_matches_exact_law(rng, t, s):
    # chi-square goodness of fit, then mean and variance CIs: each alpha = 0.001
    z = noise.discrete_laplace(N, t, s, rng)
    scale = t / s
    assert _chi2_gof(z, lambda v: _dlap_pmf(v, scale)) > ALPHA
    _moments_in_ci(z, lambda v: _dlap_pmf(v, scale), int(60 * scale) + 10)


def test_discrete_laplace_agrees_with_opendp(rng):
    # two-sample chi-square (contingency table) of 10**6 of ours vs 10**5 of OpenDP's
    # (OpenDP's sampler runs at ~80k/s here), alpha = 0.001
    import opendp.prelude as dp

    dp.enable_features("contrib")
    m = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int), 3.0)
    theirs = np.array(m([0] * 100_000))
    ours = noise.discrete_laplace(N, 3, 1, rng)
    _two_sample(ours, theirs)


def _two_sample(a: np.ndarray, b: np.ndarray) -> None:
    edges = np.unique(np.quantile(np.concatenate([a, b]), np.linspace(0, 1, 41)))
    edges[-1] += 1
    ca = np.histogram(a, edges)[0]
    cb = np.histogram(b, edges)[0]
    keep = (ca + cb) > 0
    assert stats.chi2_contingency(np.vstack([ca[keep], cb[keep]])).pvalue > ALPHA


# --- discrete Gaussian -----------------------------------------------------------------------


@pytest.mark.parametrize("sigma2", [Fraction(5, 2), Fraction(1, 4), Fraction(1_000_000, 3)])
def test_discrete_gaussian_matches_exact_law(rng, sigma2):
    z = noise.discrete_gaussian(N, sigma2, rng)
    s2 = float(sigma2)
    assert _chi2_gof(z, lambda v: _dgauss_pmf(v, s2)) > ALPHA
    _moments_in_ci(z, lambda v: _dgauss_pmf(v, s2), int(40 * math.sqrt(s2)) + 10)


def test_discrete_gaussian_agrees_with_opendp(rng):
    # as for Laplace: 10**6 ours vs 10**5 OpenDP, two-sample chi-square at alpha = 0.001
    import opendp.prelude as dp

    dp.enable_features("contrib")
    m = dp.m.make_gaussian(
        dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int), math.sqrt(30.0)
    )
    theirs = np.array(m([0] * 100_000))
    ours = noise.discrete_gaussian(N, Fraction(30), rng)
    _two_sample(ours, theirs)


# --- calibration -----------------------------------------------------------------------------


@pytest.mark.parametrize(("lo", "hi", "eps"), [(0, 1, 1.0), (0, 10, 0.3), (-5, 1000, 2.0)])
@pytest.mark.parametrize("integer", [True, False])
def test_laplace_scale_is_never_below_the_exact_one(lo, hi, eps, integer):
    p = noise.laplace_plan(float(lo), float(hi), eps, integer)
    exact = Fraction(p.D) / Fraction(eps)
    assert Fraction(p.t, p.s) >= exact
    assert Fraction(p.t, p.s) - exact <= Fraction(1, p.s)  # within 2**-20 relative
    assert p.t / p.s / float(exact) - 1 < 2**-19
    if integer:
        assert p.j == 0 and p.D == hi - lo


def _analytic_gaussian_sigma(delta_f: float, eps: float, delta: float) -> float:
    """Balle & Wang 2018 Theorem 8: the continuous Gaussian's exact (eps, delta) curve."""

    def d(sig: float) -> float:
        a = delta_f / (2 * sig)
        b = eps * sig / delta_f
        return stats.norm.cdf(a - b) - math.exp(eps) * stats.norm.cdf(-a - b) - delta

    return optimize.brentq(d, 1e-6 * delta_f, 1e6 * delta_f, xtol=1e-12)


@pytest.mark.parametrize(("eps", "delta"), [(1.0, 1e-5), (0.3, 1e-6), (3.0, 1e-9)])
def test_gaussian_sigma_meets_delta_and_is_close_to_analytic(eps, delta):
    p = noise.gaussian_plan(0.0, 10.0, eps, delta, False)
    assert noise.gaussian_delta(Fraction(p.sn, p.sd), p.D, eps) <= delta
    # one grid step less variance would break delta: the smallest such sigma**2
    assert noise.gaussian_delta(Fraction(p.sn - 1, p.sd), p.D, eps) > delta * (1 - 1e-6)
    sigma = p.sigma * 2.0**p.j
    ref = _analytic_gaussian_sigma(10.0, eps, delta)
    assert abs(sigma / ref - 1) < 0.01


def test_gaussian_integer_plan_for_unit_sensitivity():
    p = noise.gaussian_plan(0.0, 1.0, 1.0, 1e-5, True)
    assert p.j == 0 and p.D == 1
    assert noise.gaussian_delta(Fraction(p.sn, p.sd), 1, 1.0) <= 1e-5


# --- columns ---------------------------------------------------------------------------------


def test_float_laplace_column_is_on_the_grid_and_laplace_shaped(rng):
    x = pa.array(np.full(N, 3.0))
    out = noise.laplace_noise(x, 0.0, 10.0, 1.0, integer=False, rng=rng).to_numpy()
    p = noise.laplace_plan(0.0, 10.0, 1.0, False)
    steps = np.ldexp(out, -p.j)
    assert np.array_equal(steps, np.rint(steps))  # every output a multiple of 2**j (Mironov)
    # KS against the continuous Laplace(3, 10): the grid (2**-17 here) moves the CDF by far
    # less than KS can see at n = 10**6; alpha = 0.001
    assert stats.kstest(out, stats.laplace(loc=3.0, scale=10.0).cdf).pvalue > ALPHA


def test_float_gaussian_column_is_on_the_grid_and_gaussian_shaped(rng):
    x = pa.array(np.full(N, -2.0))
    out = noise.gaussian_noise(x, -5.0, 5.0, 1.0, 1e-5, integer=False, rng=rng).to_numpy()
    p = noise.gaussian_plan(-5.0, 5.0, 1.0, 1e-5, False)
    steps = np.ldexp(out, -p.j)
    assert np.array_equal(steps, np.rint(steps))
    sigma = p.sigma * 2.0**p.j
    assert stats.kstest(out, stats.norm(loc=-2.0, scale=sigma).cdf).pvalue > ALPHA


def test_nulls_nan_clamp_types_and_rounding(rng):
    a = pa.array([1.5, None, 1e9, -1e9, float("nan")])
    out = noise.laplace_noise(a, 0.0, 10.0, 50.0, integer=False, rng=rng)
    assert out.type == pa.float64() and out.is_null().to_pylist() == [
        False,
        True,
        False,
        False,
        False,
    ]
    v = out.to_pylist()
    assert math.isnan(v[4])
    assert abs(v[2] - 10.0) < 5 and abs(v[3]) < 5  # clamped first (noise scale 0.2)
    ints = pa.array([1, None, 7, 100], pa.int32())
    g = noise.gaussian_noise(ints, 0, 10, 1.0, 1e-5, integer=True, rng=rng)
    assert g.type == pa.int64() and g.null_count == 1
    r = noise.laplace_noise(ints, 0, 10, 1.0, integer=True, rng=rng, round_to=5)
    assert all(x % 5 == 0 for x in r.to_pylist() if x is not None)
    f = noise.laplace_noise(a, 0.0, 10.0, 1.0, integer=False, rng=rng, round_to=0.5)
    assert all(x * 2 == round(x * 2) for x in f.to_pylist()[:4] if x is not None)
    const = noise.laplace_noise(pa.array([3.0, 9.0]), 4.0, 4.0, 1.0, integer=False, rng=rng)
    assert const.to_pylist() == [4.0, 4.0]  # no sensitivity, no noise
    with pytest.raises(ValueError, match="integer bounds"):
        noise.laplace_noise(ints, 0, 1.5, 1.0, integer=True, rng=rng)
    with pytest.raises(ValueError, match="epsilon"):
        noise.laplace_noise(ints, 0, 1, 0.0, integer=True, rng=rng)


# --- empirical privacy audit -----------------------------------------------------------------


@pytest.mark.parametrize("mech", ["laplace", "gaussian"])
def test_neighbouring_inputs_log_ratio_stays_within_epsilon(rng, mech):
    """Inputs lo and hi (the farthest neighbours), 10**6 outputs each, integer noise: per output
    value with >= 2000 hits in both, |log(count ratio)| <= eps + z * its standard error, z the
    Bonferroni 0.001 quantile over the values compared. For Laplace the bound is tight: the
    largest log ratio also reaches eps - that margin (the audit would see too little noise)."""
    eps = 1.0
    x0 = pa.array(np.zeros(N, np.int64))
    x1 = pa.array(np.ones(N, np.int64))
    if mech == "laplace":
        o0 = noise.laplace_noise(x0, 0, 1, eps, integer=True, rng=rng).to_numpy()
        o1 = noise.laplace_noise(x1, 0, 1, eps, integer=True, rng=rng).to_numpy()
    else:
        o0 = noise.gaussian_noise(x0, 0, 1, eps, 1e-5, integer=True, rng=rng).to_numpy()
        o1 = noise.gaussian_noise(x1, 0, 1, eps, 1e-5, integer=True, rng=rng).to_numpy()
    lo = min(o0.min(), o1.min())
    c0 = np.bincount(o0 - lo)
    c1 = np.bincount(o1 - lo, minlength=len(c0))
    c0 = np.pad(c0, (0, len(c1) - len(c0)))
    keep = (c0 >= 2000) & (c1 >= 2000)
    lr = np.log(c0[keep] / c1[keep])
    se = np.sqrt(1 / c0[keep] + 1 / c1[keep])
    z = stats.norm.isf(ALPHA / (2 * keep.sum()))
    assert np.all(np.abs(lr) <= eps + z * se)
    if mech == "laplace":
        assert np.max(np.abs(lr) + z * se) >= eps
