"""Exact samplers against their exact laws and OpenDP's; noise columns; an empirical DP audit.

Every statistical test below fails a correct sampler by chance with probability ALPHA (1e-6,
tests/chance.py) or less; the random streams are OS-seeded, so a failure is never replayed by
a fixed seed.
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
from tests.chance import ALPHA, Z

N = 1_000_000


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
    if exp[-1] < 20:
        # a pooled tail with a tiny expected count (e.g. 0.02 for N_Z(0, 1/4)) would turn one
        # legitimate far value into chi2 ~ 40: keep every cell >= 20 by merging it into the
        # last value cell (the chi-square approximation needs large expected counts)
        obs = np.concatenate([obs[:-2], [obs[-2] + obs[-1]]])
        exp = np.concatenate([exp[:-2], [exp[-2] + exp[-1]]])
    return stats.chisquare(obs, exp).pvalue


def _moments_in_ci(sample: np.ndarray, pmf, L: int) -> None:
    """Mean and variance inside their 1 - ALPHA confidence intervals (exact moments of the law)."""
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
    # binomial z-test at two-sided ALPHA per gamma
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
    # chi-square goodness of fit, then mean and variance CIs: each at ALPHA
    z = noise.discrete_laplace(N, t, s, rng)
    scale = t / s
    assert _chi2_gof(z, lambda v: _dlap_pmf(v, scale)) > ALPHA
    _moments_in_ci(z, lambda v: _dlap_pmf(v, scale), int(60 * scale) + 10)


def test_discrete_laplace_agrees_with_opendp(rng):
    # two-sample chi-square (contingency table) of 10**6 of ours vs 10**5 of OpenDP's
    # (OpenDP's sampler runs at ~80k/s here), at ALPHA
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
    # as for Laplace: 10**6 ours vs 10**5 OpenDP, two-sample chi-square at ALPHA
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
    # less than KS can see at n = 10**6; at ALPHA
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
    c = noise.laplace_noise(pa.array(np.linspace(0, 50, 5000)), 0.0, 50.0, 1.0, integer=False,
                            rng=rng, round_to=0.01)  # fmt: skip
    assert all(len(repr(x).partition(".")[2]) <= 2 for x in c.to_pylist())  # 49.98, never
    # 49.980000000000004
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
    Bonferroni ALPHA quantile over the values compared. For Laplace the bound is tight: the
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


# --- table inversion: ties, escapes and the Gaussian tail (raymask.kernels._invert) ----------
# In production a tie (the first 32 bits of U equal a threshold's) has probability about 2**-20
# per draw, an escape of the top digit below e**-12 and the Gaussian tail below 2**-40: the
# parameters below make each frequent (fewer bits, smaller bases, a low escape bound, a short
# table), so the rare paths decide thousands of values here. Each chi-square test fails by
# chance with probability ALPHA.


@pytest.fixture()
def count_ties(monkeypatch):
    calls = []
    real = noise._invert.resolve

    def resolve(*a):
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(noise._invert, "resolve", resolve)
    return calls


@pytest.mark.parametrize(
    ("t", "s", "kw"),
    [
        (3, 1, {"c": 2, "escape": 1}),  # three levels, top escapes ~1/e of the time
        (40, 1, {"c": 3, "escape": 2, "prec": 12}),  # ties: 12-bit prefixes, 8-digit levels
        (7, 1, {"c": 2, "escape": 1, "prec": 12}),  # both
    ],
    ids=["escapes", "ties", "ties-and-escapes"],
)
def test_table_laplace_rare_paths_match_exact_law(rng, count_ties, t, s, kw):
    z = noise._lap_z(N, t, s, rng, **kw)
    scale = t / s
    assert _chi2_gof(z, lambda v: _dlap_pmf(v, scale)) > ALPHA
    _moments_in_ci(z, lambda v: _dlap_pmf(v, scale), int(60 * scale) + 10)
    if "prec" in kw:
        assert len(count_ties) > 100


@pytest.mark.parametrize(
    "kw", [{"ymax": 3}, {"prec": 12, "ymax": 8}], ids=["tail", "ties-and-tail"]
)
def test_table_gaussian_rare_paths_match_exact_law(rng, count_ties, kw):
    s2 = 30.0
    z = noise._gauss_z(N, 30, 1, rng, **kw)
    assert np.mean(np.abs(z) >= kw["ymax"]) > 0.1  # the exact tail sampler ran
    assert _chi2_gof(z, lambda v: _dgauss_pmf(v, s2)) > ALPHA
    _moments_in_ci(z, lambda v: _dgauss_pmf(v, s2), int(40 * math.sqrt(s2)) + 10)
    if "prec" in kw:
        assert len(count_ties) > 100


def test_table_thresholds_are_the_exact_floors():
    # oracle: the folded one-level CDF recomputed at 200 digits (the tables start at 80 and keep
    # a floor only when their error bound cannot move it)
    from decimal import Context, Decimal

    tab = noise._invert.lap_tables(3, 1)
    ctx = Context(prec=200)
    rho = ctx.exp(Decimal(-1) / Decimal(3))
    for k in (1, 2, 5, 40):
        f = 1 - ctx.multiply(ctx.divide(2, 1 + rho), ctx.power(rho, k))  # folded one level
        assert int(
            ctx.multiply(f, Decimal(2**32)).to_integral_value(rounding="ROUND_FLOOR")
        ) == int(tab.levels[0].thr[k - 1])


def test_float_column_pass_equals_the_numpy_steps():
    # the one-pass float kernel against _grid_values + addition + _finish, bit for bit
    gen = np.random.default_rng(5)
    for integer, bounds in ((False, [(0.0, 10.0), (-5.0, 1000.0), (-1e-3, 2e-3), (0.0, 1e-305), (-1e300, 1e300)]),
                            (True, [(0.0, 10.0), (-5.0, 1000.0), (0.0, 1e12)])):  # fmt: skip
        for lo, hi in bounds:
            x = gen.normal(0, 3 * (hi - lo), 20_000)
            x[::7], x[::11], x[::13], x[::17], x[::19] = np.nan, lo, hi, 0.5, 2.5
            plan = noise.laplace_plan(lo, hi, 1.0, integer)
            for mask in (None, np.arange(len(x)) % 5 == 0):
                for a in (pa.array(x, mask=mask), pa.array(x, mask=mask).slice(3)):
                    xr, valid, nan, ot = noise._grid_values(a, lo, hi, plan.j, integer)
                    z = gen.integers(-(10**6), 10**6, int(valid.sum()))
                    noise._add_valid(xr, valid, z)
                    ref = noise._finish(xr, valid, nan, ot, plan.j, integer, None)
                    got = noise._float_noise(a, lo, hi, plan.j, integer, None, lambda nv, z=z: z)
                    assert got.is_null().equals(ref.is_null())
                    assert np.array_equal(
                        got.to_numpy(zero_copy_only=False),
                        ref.to_numpy(zero_copy_only=False),
                        equal_nan=True,
                    )


def test_seeded_generator_reproduces_the_noise():
    x = pa.array(np.linspace(0.0, 10.0, 50_000))
    a = noise.laplace_noise(x, 0.0, 10.0, 1.0, integer=False, rng=SecureRandom._for_tests(4))
    b = noise.laplace_noise(x, 0.0, 10.0, 1.0, integer=False, rng=SecureRandom._for_tests(4))
    g = noise.gaussian_noise(x, 0.0, 10.0, 1.0, 1e-6, integer=False, rng=SecureRandom._for_tests(4))
    assert a.equals(b) and not a.equals(g)


@pytest.mark.parametrize("step", [0.01, 0.25, 2.5, 10.0, 0.1, 0.3, 1e-7, 0.125, 1 / 3, 1e20])
def test_round_to_gives_the_double_nearest_each_decimal_multiple(step):
    """m = round(x / step) as NumPy rounds it, then the double nearest the exact decimal
    m * step (Python's float of a Fraction is correctly rounded): what a user reads back is
    the multiple itself (49.98, not 49.980000000000004). A step whose shortest decimal has
    more than 15 digits is taken as the double it is. NaN stays NaN."""
    from decimal import Decimal

    x = np.random.default_rng(7).uniform(-1e5, 1e5, 3000)
    x[:4] = [np.nan, 0.0, -0.0, step * 0.5]
    got = noise.round_multiple(x, step)
    q = Fraction(Decimal(repr(step)))
    if not q.denominator < 2**53:  # (1/3: its 16 digits are not exact; the double's value is)
        q = Fraction(step)
    for xv, g in zip(x[1:], got[1:], strict=True):
        assert g == float(Fraction(float(np.round(xv / step))) * q)
    assert math.isnan(got[0])


DECIMALS = {0.01: 2, 0.25: 2, 2.5: 1, 10.0: 0, 0.1: 1, 0.3: 1, 1e-7: 7, 0.125: 3, 1 / 3: None}


@pytest.mark.parametrize(("step", "digits"), DECIMALS.items())
def test_round_decimals_counts_the_steps_digits(step, digits):
    assert noise.round_decimals(step) == digits
