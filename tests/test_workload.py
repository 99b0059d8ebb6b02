"""Tests of afdjax workloads (Geometric, Empirical) against closed forms, the reference
plug-in helper and sampling statistics.

Statistical checks use fixed seeds and 4 standard errors; standard errors come from
iid draws (``sample``/``sample_stationary`` return independent requests / slots), with
the delta method for ratio estimators.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import afdjax
from afdjax import Empirical, Geometric

try:
    from reference_sim import stationary_theta_and_variance
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests.reference_sim import stationary_theta_and_variance

Z = 4.0
N_BIG = 2**19

# A small table with strong P-D correlation and distinct prefill values (so a drawn
# prefill identifies its row).
TABLE_P = np.array([0.0, 100.0, 7.5, 40.0, 3.0])
TABLE_D = np.array([1, 10, 3, 25, 2])


def _np(x):
    return np.asarray(x)


def _plugin_with_se(P, D):
    """Plug-in theta and sigma^2 of arXiv 2601.21351 section 2 with delta-method standard errors.

    theta = sum a / sum D, m2 = sum b / sum D, sigma^2 = m2 - theta^2, with
    a = D P + D(D-1)/2 and b = D P^2 + P D (D-1) + D (D-1)(2D-1)/6; influence functions
    (a - theta D)/E[D] and (b - m2 D)/E[D] - 2 theta (a - theta D)/E[D].
    """
    P = np.asarray(P, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    theta, var = stationary_theta_and_variance(P, D)
    a = D * P + D * (D - 1) / 2
    b = D * P**2 + P * D * (D - 1) + D * (D - 1) * (2 * D - 1) / 6
    ed = D.mean()
    m2 = var + theta**2
    infl_theta = (a - theta * D) / ed
    infl_var = (b - m2 * D) / ed - 2 * theta * infl_theta
    n = P.size
    return theta, var, infl_theta.std(ddof=1) / np.sqrt(n), infl_var.std(ddof=1) / np.sqrt(n)


def _prefill_variance(mu_p, family, sigma):
    if family == "constant":
        return 0.0
    if family == "exponential":
        return mu_p**2
    return mu_p**2 * np.expm1(sigma**2)


GEOMETRIC_CASES = [
    (100.0, 50.0, "constant", 1.0),
    (100.0, 50.0, "exponential", 1.0),
    (100.0, 50.0, "lognormal", 1.0),
    (30.0, 400.0, "lognormal", 0.5),
    (0.0, 9.0, "exponential", 1.0),
]


@pytest.mark.parametrize("mu_p, mu_d, family, sigma", GEOMETRIC_CASES)
def test_geometric_closed_forms(mu_p, mu_d, family, sigma):
    wl = Geometric(mu_p, mu_d, prefill=family, prefill_sigma=sigma)
    p = 1.0 / (1.0 + mu_d)
    assert float(wl.finish_probability) == pytest.approx(p, rel=1e-15)
    assert float(wl.theta()) == pytest.approx(mu_p + mu_d, rel=1e-15)
    assert float(wl.mean_decode_steps()) == pytest.approx(1.0 + mu_d, rel=1e-15)
    expected_var = _prefill_variance(mu_p, family, sigma) + (1 - p) / p**2
    assert float(wl.slot_variance()) == pytest.approx(expected_var, rel=1e-12)


@pytest.mark.parametrize("mu_p, mu_d, family, sigma", GEOMETRIC_CASES)
def test_geometric_closed_forms_vs_plugin_on_fresh_sample(mu_p, mu_d, family, sigma):
    """(a) theta / slot_variance vs the plug-in formulas on 2^19 fresh requests."""
    wl = Geometric(mu_p, mu_d, prefill=family, prefill_sigma=sigma)
    P, D = wl.sample(jax.random.key(101), (N_BIG,))
    P, D = _np(P), _np(D)
    assert P.dtype == np.float64 and D.dtype == np.int32
    assert D.min() >= 1 and P.min() >= 0
    theta, var, se_theta, se_var = _plugin_with_se(P, D)
    assert abs(theta - float(wl.theta())) <= Z * se_theta, (theta, float(wl.theta()), se_theta)
    assert abs(var - float(wl.slot_variance())) <= Z * se_var, (var, float(wl.slot_variance()), se_var)


@pytest.mark.parametrize("mu_p, mu_d, family, sigma", GEOMETRIC_CASES)
def test_geometric_stationary_moments(mu_p, mu_d, family, sigma):
    """(b) mean / variance of prefill + index under sample_stationary."""
    wl = Geometric(mu_p, mu_d, prefill=family, prefill_sigma=sigma)
    P, D, idx = (_np(a) for a in wl.sample_stationary(jax.random.key(202), (N_BIG,)))
    assert np.all(idx >= 0) and np.all(idx < D)
    x = P + idx
    theta, var = float(wl.theta()), float(wl.slot_variance())
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert abs(x.mean() - theta) <= Z * se, (x.mean(), theta, se)
    sq = (x - theta) ** 2  # unbiased for sigma^2 since theta is exact
    se2 = sq.std(ddof=1) / np.sqrt(sq.size)
    assert abs(sq.mean() - var) <= Z * se2, (sq.mean(), var, se2)
    # Length bias: the slot's request has E[D^2]/E[D] = (2 - p)/p = 1 + 2 mu_d steps.
    se_d = D.std(ddof=1) / np.sqrt(D.size)
    assert abs(D.mean() - (1 + 2 * mu_d)) <= Z * se_d


def test_geometric_decode_distribution():
    mu_d = 50.0
    p = 1 / (1 + mu_d)
    _, D = Geometric(10.0, mu_d).sample(jax.random.key(3), (N_BIG,))
    D = _np(D).astype(np.float64)
    sd = np.sqrt(1 - p) / p
    assert abs(D.mean() - (1 + mu_d)) <= Z * sd / np.sqrt(D.size)
    # P(D = 1) = p and P(D > 100) = (1-p)^100
    for frac, prob in [((D == 1).mean(), p), ((D > 100).mean(), (1 - p) ** 100)]:
        assert abs(frac - prob) <= Z * np.sqrt(prob * (1 - prob) / D.size)


@pytest.mark.parametrize("family", ["constant", "exponential", "lognormal"])
def test_prefill_families(family):
    mu_p, sigma = 64.0, 0.8
    P, _ = Geometric(mu_p, 5.0, prefill=family, prefill_sigma=sigma).sample(jax.random.key(4), (N_BIG,))
    P = _np(P)
    if family == "constant":
        assert np.all(mu_p == P)
        return
    se = P.std(ddof=1) / np.sqrt(P.size)
    assert abs(P.mean() - mu_p) <= Z * se
    sd_expected = np.sqrt(_prefill_variance(mu_p, family, sigma))
    sq = (P - mu_p) ** 2
    assert abs(sq.mean() - sd_expected**2) <= Z * sq.std(ddof=1) / np.sqrt(sq.size)
    if family == "lognormal":
        lp = np.log(P)
        assert abs(lp.mean() - (np.log(mu_p) - sigma**2 / 2)) <= Z * lp.std(ddof=1) / np.sqrt(lp.size)
        assert lp.std() == pytest.approx(sigma, rel=Z / np.sqrt(2 * lp.size))  # sd of a normal sd: sigma/sqrt(2n)


@pytest.mark.parametrize("family", ["constant", "exponential", "lognormal"])
def test_mu_d_zero_means_one_step(family):
    wl = Geometric(12.0, 0.0, prefill=family)
    _, D = wl.sample(jax.random.key(5), (N_BIG,))
    assert np.all(_np(D) == 1)
    _, D, idx = wl.sample_stationary(jax.random.key(6), (N_BIG,))
    assert np.all(_np(D) == 1) and np.all(_np(idx) == 0)
    assert float(wl.theta()) == 12.0
    assert float(wl.slot_variance()) == pytest.approx(_prefill_variance(12.0, family, 1.0), rel=1e-12)


def test_geometric_validation():
    with pytest.raises(ValueError, match="mu_p"):
        Geometric(-1.0, 10.0)
    with pytest.raises(ValueError, match="mu_d"):
        Geometric(1.0, float("nan"))
    with pytest.raises(ValueError, match="prefill_sigma"):
        Geometric(1.0, 1.0, prefill="lognormal", prefill_sigma=-0.5)
    with pytest.raises(ValueError, match="prefill"):
        Geometric(1.0, 1.0, prefill="gamma")


@pytest.mark.parametrize("mu_d", [0.0, 3.0, 500.0])
def test_geometric_decode_log_mgf(mu_d):
    # log E[exp(-t D)] by direct summation of the geometric pmf on {1, 2, ...}
    p = 1 / (1 + mu_d)
    t = np.array([1e-4, 1e-2, 0.3, 2.0])
    d = np.arange(1, 200_000)
    direct = np.log(np.sum(p * (1 - p) ** (d[None, :] - 1) * np.exp(-t[:, None] * d[None, :]), axis=1))
    np.testing.assert_allclose(Geometric(1.0, mu_d)._decode_log_mgf_neg(t), direct, rtol=1e-9)


# ----------------------------------------------------------------------------- Empirical
def test_empirical_theta_variance_vs_reference_helper(azure_conv_trace, mooncake_conv_trace):
    g = np.random.default_rng(0)
    cases = [
        (TABLE_P, TABLE_D),
        (g.exponential(50.0, 300), g.integers(1, 80, 300)),
        azure_conv_trace,
        mooncake_conv_trace,
        ([37.0], [1]),
    ]
    for P, D in cases:
        wl = Empirical(P, D)
        theta, var = stationary_theta_and_variance(P, D)
        assert float(wl.theta()) == pytest.approx(theta, rel=1e-12)
        assert float(wl.slot_variance()) == pytest.approx(var, rel=1e-12, abs=1e-9)
        assert float(wl.mean_decode_steps()) == pytest.approx(np.mean(D), rel=1e-12)
        assert wl.num_requests == len(D)


def test_empirical_decode_log_mgf():
    wl = Empirical(TABLE_P, TABLE_D)
    t = np.array([1e-3, 0.1, 1.0, 50.0])
    direct = np.log(np.mean(np.exp(-t[:, None] * TABLE_D[None, :]), axis=1))
    np.testing.assert_allclose(wl._decode_log_mgf_neg(t), direct, rtol=1e-12)


def _rows_of(P):
    """Row index of each drawn prefill (TABLE_P values are distinct)."""
    match = P[:, None] == TABLE_P[None, :]
    assert np.all(match.sum(axis=1) == 1), "drawn prefill not in the table"
    return np.argmax(match, axis=1)


def _check_frequencies(rows, probs, n):
    counts = np.bincount(rows, minlength=len(probs))
    expected = n * np.asarray(probs)
    # per-row binomial z-scores and a chi-square test (p-value 1e-4)
    z = (counts - expected) / np.sqrt(expected * (1 - np.asarray(probs)))
    assert np.all(np.abs(z) <= Z), z
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 <= scipy.stats.chi2.isf(1e-4, len(probs) - 1), chi2


def test_empirical_sample_uniform_rows_keeps_pairs():
    n = 200_000
    wl = Empirical(TABLE_P, TABLE_D)
    P, D = (_np(a) for a in wl.sample(jax.random.key(7), (n,)))
    rows = _rows_of(P)
    np.testing.assert_array_equal(D, TABLE_D[rows])  # (P, D) drawn as a pair
    _check_frequencies(rows, np.full(5, 0.2), n)


def test_empirical_sample_stationary_length_biased():
    n = 200_000
    wl = Empirical(TABLE_P, TABLE_D)
    P, D, idx = (_np(a) for a in wl.sample_stationary(jax.random.key(8), (n,)))
    rows = _rows_of(P)
    np.testing.assert_array_equal(D, TABLE_D[rows])
    _check_frequencies(rows, TABLE_D / TABLE_D.sum(), n)  # row frequencies proportional to D
    assert np.all(idx >= 0) and np.all(idx < D)
    # index uniform on {0..D-1} within the longest row (D = 25)
    sel = idx[rows == 3]
    _check_frequencies(sel, np.full(25, 1 / 25), sel.size)
    # power check: the fresh-request (not length-biased) frequencies are rejected
    counts = np.bincount(rows, minlength=5)
    chi2_uniform = np.sum((counts - n / 5) ** 2 / (n / 5))
    assert chi2_uniform > 100 * scipy.stats.chi2.isf(1e-4, 4)


def test_empirical_rejects_total_decode_beyond_int32():
    D = np.array([2**30 - 1, 2**30 - 1, 2**30 - 1, 5])  # sum(D) ~ 3.2e9 > 2**31
    with pytest.raises(ValueError, match="decode_steps sums to"):
        Empirical([0.0, 1.0, 2.0, 3.0], D)


def test_empirical_stationary_large_total_decode_is_unbiased():
    # sum(D) ~ 1.6e9: a single 32-bit word modulo sum(D) would give rows 0 and 1 weight
    # 3/8 each and row 2 weight 1/4; 64-bit sampling keeps them at 1/3.
    D = np.array([2**29, 2**29, 2**29, 5])
    wl = Empirical([0.0, 1.0, 2.0, 3.0], D)
    n = 100_000
    P, d, idx = (_np(a) for a in wl.sample_stationary(jax.random.key(10), (n,)))
    assert np.all(idx < d) and np.all(idx >= 0)
    rows = P.astype(int)
    _check_frequencies(rows[rows < 3], np.full(3, 1 / 3), int(np.sum(rows < 3)))
    assert np.sum(rows == 3) <= 5  # P(row 3) = 5 / sum(D) ~ 3e-9
    # the index inside a 2^29-step request is uniform: mean (D - 1) / 2 within 4 SE
    big = idx[rows < 3].astype(float)
    se = 2**29 / math.sqrt(12 * big.size)
    assert abs(big.mean() - (2**29 - 1) / 2) <= 4 * se


def test_uniform_int_matches_64bit_formula():
    from afdjax._random import uniform_int as _uniform_int

    rng = np.random.default_rng(0)
    hi = rng.integers(0, 2**32, 10_000, dtype=np.uint64)
    lo = rng.integers(0, 2**32, 10_000, dtype=np.uint64)
    n = rng.integers(1, 2**31, 10_000, dtype=np.uint64)
    expected = (hi * n + ((lo * n) >> np.uint64(32))) >> np.uint64(32)
    got = _uniform_int(
        jnp.asarray(hi.astype(np.uint32)), jnp.asarray(lo.astype(np.uint32)), jnp.asarray(n.astype(np.uint32))
    )
    np.testing.assert_array_equal(np.asarray(got).astype(np.uint64), expected)
    assert np.all(np.asarray(got) < n.astype(np.int64))


def test_empirical_stationary_moments_vs_theta():
    P0 = np.random.default_rng(1).exponential(30.0, 200)
    D0 = np.random.default_rng(2).integers(1, 60, 200)
    wl = Empirical(P0, D0)
    P, _, idx = (_np(a) for a in wl.sample_stationary(jax.random.key(9), (N_BIG,)))
    x = P + idx
    theta, var = stationary_theta_and_variance(P0, D0)
    assert abs(x.mean() - theta) <= Z * x.std(ddof=1) / np.sqrt(x.size)
    sq = (x - theta) ** 2
    assert abs(sq.mean() - var) <= Z * sq.std(ddof=1) / np.sqrt(sq.size)


def test_empirical_accepts_real_prefill_and_integer_floats():
    wl = Empirical([0.5, 2.25], [1.0, 3.0])
    assert _np(wl.decode_steps).dtype == np.int32
    np.testing.assert_array_equal(_np(wl.decode_steps), [1, 3])
    np.testing.assert_array_equal(_np(wl.prefill_tokens), [0.5, 2.25])


@pytest.mark.parametrize(
    "P, D, match",
    [
        ([1.0, -2.0], [1, 2], "prefill_tokens"),
        ([1.0, 2.0], [1, 0], "decode_steps"),
        ([1.0, np.nan], [1, 2], "prefill_tokens"),
        ([1.0, 2.0], [1.0, np.nan], "decode_steps"),
        ([1.0, 2.0], [1.0, 2.5], "decode_steps"),
        ([1.0, 2.0], [1], "equal length"),
        ([], [], "empty"),
        ([[1.0]], [[1]], "1-D"),
    ],
)
def test_empirical_validation(P, D, match):
    with pytest.raises(ValueError, match=match):
        Empirical(P, D)


def test_workload_is_exported():
    assert issubclass(afdjax.Geometric, afdjax.Workload)
    assert issubclass(afdjax.Empirical, afdjax.Workload)


# =========================================================================== Fixed, Uniform
def _exact_pairs_moments(prefill_values, decode_values):
    """theta and slot variance by brute force over every equally likely (P, D) pair
    (the renewal-reward sums of the reference helper, on the full product)."""
    P, D = np.meshgrid(np.asarray(prefill_values, float), np.asarray(decode_values, float), indexing="ij")
    return stationary_theta_and_variance(P.ravel(), D.ravel())


def test_fixed_moments_and_sampling():
    w = afdjax.Fixed(prefill_tokens=700, decode_steps=9)
    theta, var = _exact_pairs_moments([700], [9])
    assert float(w.theta()) == pytest.approx(theta, rel=1e-14) and theta == 700 + 4
    assert float(w.slot_variance()) == pytest.approx(var, abs=1e-9) and var == pytest.approx((81 - 1) / 12)
    assert float(w.mean_decode_steps()) == 9
    p, d = w.sample(jax.random.key(0), (1000,))
    assert np.all(_np(p) == 700) and np.all(_np(d) == 9)
    p, d, i = w.sample_stationary(jax.random.key(1), (9 * 20000,))
    assert np.all(_np(d) == 9) and np.all(_np(p) == 700)
    counts = np.bincount(_np(i), minlength=9)
    assert counts.size == 9  # index in [0, 9)
    se = math.sqrt(20000 * (1 - 1 / 9))
    assert np.all(np.abs(counts - 20000) < Z * se)
    assert w.describe() == "fixed:prefill=700,decode=9"
    # t -> log E[exp(-t D)] = -9 t
    assert np.allclose(w._decode_log_mgf_neg(np.array([0.1, 2.0])), [-0.9, -18.0])


def test_uniform_moments_match_exact_sums():
    for bounds in [(0, 0, 1, 1), (3, 7, 2, 5), (100, 2000, 1, 300), (5, 5, 40, 41)]:
        w = afdjax.Uniform(*bounds)
        theta, var = _exact_pairs_moments(np.arange(bounds[0], bounds[1] + 1), np.arange(bounds[2], bounds[3] + 1))
        assert float(w.theta()) == pytest.approx(theta, rel=1e-12), bounds
        assert float(w.slot_variance()) == pytest.approx(var, rel=1e-9, abs=1e-9), bounds
        assert float(w.mean_decode_steps()) == pytest.approx((bounds[2] + bounds[3]) / 2)


def test_uniform_sampling_frequencies():
    w = afdjax.Uniform(3, 7, 2, 5)
    n = 200_000
    p, d = w.sample(jax.random.key(2), (n,))
    for values, lo, hi in ((_np(p), 3, 7), (_np(d), 2, 5)):
        assert values.min() == lo and values.max() == hi
        k = hi - lo + 1
        freq = np.bincount((values - lo).astype(int), minlength=k) / n
        assert np.all(np.abs(freq - 1 / k) < Z * math.sqrt((1 / k) * (1 - 1 / k) / n))
    # Stationary: each (d, i) with i < d has probability 1 / sum(d); P independent, uniform.
    p, d, i = w.sample_stationary(jax.random.key(3), (n,))
    p, d, i = _np(p), _np(d), _np(i)
    assert np.all((i >= 0) & (i < d))
    total = sum(range(2, 6))
    for dv in range(2, 6):
        for iv in range(dv):
            freq = np.mean((d == dv) & (i == iv))
            assert abs(freq - 1 / total) < Z * math.sqrt((1 / total) * (1 - 1 / total) / n), (dv, iv)
    freq = np.bincount((p - 3).astype(int), minlength=5) / n
    assert np.all(np.abs(freq - 0.2) < Z * math.sqrt(0.16 / n))
    load = p + i
    theta = float(w.theta())
    assert abs(load.mean() - theta) < Z * load.std() / math.sqrt(n)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("fixed:prefill=128,decode=64", afdjax.Fixed(128, 64)),
        ("fixed:decode=1,prefill=0.5", afdjax.Fixed(0.5, 1)),
        ("uniform:prefill=10..20,decode=1..8", afdjax.Uniform(10, 20, 1, 8)),
        ("Uniform:prefill=7,decode=3..3", afdjax.Uniform(7, 7, 3, 3)),
    ],
)
def test_benchmark_specs(spec, expected):
    w = afdjax.parse_workload_spec(spec)
    assert type(w) is type(expected) and w.describe() == expected.describe()
    assert float(w.theta()) == float(expected.theta())


@pytest.mark.parametrize(
    "spec, match",
    [
        ("fixed:prefill=10", "missing decode"),
        ("fixed:prefill=-1,decode=3", "prefill='-1' is invalid: expected a number of tokens >= 0"),
        ("fixed:prefill=10,decode=2.5", "decode='2.5' is invalid: expected an integer"),
        ("fixed:prefill=10,decode=0", "decode='0' is invalid"),
        ("fixed:prefill=10,decode=3,extra=1", "unknown key"),
        ("uniform:prefill=20..10,decode=1..5", r"prefill='20..10' is invalid: expected an integer range LOW..HIGH"),
        ("uniform:prefill=1..2,decode=0..5", "decode='0..5' is invalid"),
        ("uniform:prefill=1..x,decode=1..5", "prefill='1..x' is invalid"),
        ("uniform:prefill=1..2,decode=1..70000", "decode_high=70000 is invalid: expected a range whose steps sum"),
        ("uniform:prefill=1..2", "missing decode"),
        ("zipf:a=1", "fixed:prefill=P,decode=D"),
    ],
)
def test_benchmark_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        afdjax.parse_workload_spec(spec)


def test_benchmark_constructor_errors():
    with pytest.raises(ValueError, match="decode_steps=0 is invalid: expected an integer in"):
        afdjax.Fixed(10, 0)
    with pytest.raises(ValueError, match="prefill_tokens=-2.0 is invalid: expected a finite number >= 0"):
        afdjax.Fixed(-2.0, 3)
    with pytest.raises(ValueError, match="prefill_high=1 is invalid: expected an integer in \\[2,"):
        afdjax.Uniform(2, 1, 1, 1)
    with pytest.raises(ValueError, match="decode_low=0 is invalid"):
        afdjax.Uniform(0, 1, 0, 1)


@pytest.mark.slow  # two workload types compiled for the closed forms and the engine (9 s)
def test_benchmark_workloads_in_closed_forms_and_the_engine():
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    for w in (afdjax.Fixed(300.0, 40), afdjax.Uniform(100, 500, 1, 79)):
        mf = afdjax.mean_field_optimum(w, lat, 64)
        assert math.isfinite(float(mf.r_star))
        bo = afdjax.barrier_optimum(w, lat, 64, max_ratio=12)
        assert 1 <= int(bo.ratio) <= 12
        res = afdjax.simulate(jax.random.key(5), w, lat, batch_size=32, ratios=[1, 2], num_steps=160, num_replicas=2)
        # Stationary start: the mean slot load is unbiased for theta. Slot loads repeat
        # with the request (at most 80 steps), so 160 steps x 32 slots x 2 instances x 2
        # replicas give >= 256 independent request cycles: 4 sd / sqrt(256) bounds the error.
        sd = math.sqrt(float(w.slot_variance()))
        assert abs(float(res.mean_slot_load_tokens) - float(w.theta())) < Z * sd / math.sqrt(256)


# =========================================================================== fitted families
def _decode_pmf(family, d):
    """Decode pmf with scipy (independent of afdjax)."""
    d = np.asarray(d, dtype=float)
    if family == "geometric":
        return scipy.stats.geom.pmf(d, 0.02)
    if family == "negative_binomial":
        return scipy.stats.nbinom.pmf(d - 1, 2.5, 0.04)
    if family == "lognormal":
        dist = scipy.stats.lognorm(0.7, scale=math.exp(3.5))
        return dist.cdf(d) - dist.cdf(d - 1)
    if family == "geometric_mixture":
        return 0.7 * scipy.stats.geom.pmf(d, 0.1) + 0.3 * scipy.stats.geom.pmf(d, 0.01)
    raise AssertionError(family)


DECODE_MODELS = {
    "geometric": afdjax.GeometricDecode(0.02),
    "negative_binomial": afdjax.NegativeBinomialDecode(2.5, 0.04),
    "lognormal": afdjax.LogNormalDecode(3.5, 0.7),
    "geometric_mixture": afdjax.GeometricMixtureDecode(0.7, 0.1, 0.01),
}
PREFILL_MODELS = {
    "exponential": (afdjax.ExponentialPrefill(500.0, 1.0), scipy.stats.expon(scale=500.0)),
    "gamma": (afdjax.GammaPrefill(0.6, 900.0, 1.0), scipy.stats.gamma(0.6, scale=900.0)),
    "lognormal": (afdjax.LogNormalPrefill(6.0, 0.9, 1.0), scipy.stats.lognorm(0.9, scale=math.exp(6.0))),
}
N_FAMILY = 100_000


def _check_discrete_cdf(samples, pmf, label):
    """Empirical CDF of integer samples against a pmf on 1..len(pmf), at six quantile
    points, within 5 binomial standard errors (48 correlated comparisons in all)."""
    n = samples.size
    cdf = np.cumsum(pmf)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        d = int(np.searchsorted(cdf, q)) + 1
        f = cdf[d - 1]
        se = math.sqrt(max(f * (1 - f), 1e-12) / n)
        assert abs(np.mean(samples <= d) - f) < 5 * se + 1e-12, (label, q, d)


@pytest.mark.parametrize("family", list(DECODE_MODELS))
def test_decode_family_fresh_and_stationary_sampling(family):
    """Fresh draws follow the pmf; stationary draws follow d P(d) / E[D] with the index
    uniform on [0, d) (the renewal process's length-biased slot), all against scipy."""
    model = DECODE_MODELS[family]
    w = afdjax.FittedWorkload(model, PREFILL_MODELS["exponential"][0])
    d_grid = np.arange(1, 20001)
    pmf = _decode_pmf(family, d_grid)
    _, d = w.sample(jax.random.key(10), (N_FAMILY,))
    d = _np(d)
    assert d.min() >= 1
    _check_discrete_cdf(d, pmf, f"{family} fresh")
    biased = d_grid * pmf / np.sum(d_grid * pmf)
    _, ds, i = w.sample_stationary(jax.random.key(11), (N_FAMILY,))
    ds, i = _np(ds), _np(i)
    assert np.all((i >= 0) & (i < ds))
    _check_discrete_cdf(ds, biased, f"{family} stationary")
    u = (i + 0.5) / ds  # uniform on (0, 1) given D* when the index is uniform
    assert abs(u.mean() - 0.5) < Z * math.sqrt(1 / 12 / N_FAMILY)
    # Moments against sums of the scipy pmf.
    m = [np.sum(d_grid**k * pmf) for k in (1, 2, 3)]
    assert float(w.mean_decode_steps()) == pytest.approx(m[0], rel=1e-6)
    index_mean = (m[1] - m[0]) / (2 * m[0])
    assert abs(i.mean() - index_mean) < Z * i.std() / math.sqrt(N_FAMILY)
    # Score-function hooks: log P(D = d) and log P(D* = d, I = i) = log P(d) - log E[D].
    assert np.allclose(np.exp(_np(w._decode_log_prob(jnp.arange(1, 50)))), pmf[:49], rtol=1e-6)
    assert np.allclose(
        np.exp(_np(w._stationary_log_prob(jnp.arange(1, 50), jnp.zeros(49, int)))), pmf[:49] / m[0], rtol=1e-6
    )
    # Host-side Laplace transform (sizes the engine's buffers).
    t = np.array([1e-3, 0.05, 1.0])
    ref = np.log(np.array([np.sum(pmf * np.exp(-s * d_grid)) for s in t]))
    assert np.allclose(w._decode_log_mgf_neg(t), ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("family", list(PREFILL_MODELS))
def test_prefill_family_sampling(family):
    model, dist = PREFILL_MODELS[family]
    w = afdjax.FittedWorkload(afdjax.GeometricDecode(0.1), model)
    p, _ = w.sample(jax.random.key(12), (N_FAMILY,))
    x = _np(p) + 1.0  # the families model X = P + shift
    assert scipy.stats.kstest(x, dist.cdf).pvalue > 1e-4
    mean = dist.mean() - 1.0
    assert float(model.mean()) == pytest.approx(mean, rel=1e-10)
    assert abs(_np(p).mean() - mean) < Z * dist.std() / math.sqrt(N_FAMILY)


@pytest.mark.parametrize("decode", list(DECODE_MODELS))
def test_fitted_workload_moments_against_sums(decode):
    model, dist = PREFILL_MODELS["gamma"]
    w = afdjax.FittedWorkload(DECODE_MODELS[decode], model)
    d = np.arange(1, 200_001, dtype=float)
    pmf = _decode_pmf(decode, d)
    m1, m2, _ = (np.sum(d**k * pmf) for k in (1, 2, 3))
    mean_p, var_p = dist.mean() - 1.0, dist.var()
    theta = mean_p + (m2 - m1) / (2 * m1)
    index_var = np.sum(d * (d - 1) * (2 * d - 1) / 6 * pmf) / m1 - ((m2 - m1) / (2 * m1)) ** 2
    assert float(w.theta()) == pytest.approx(theta, rel=1e-6)
    assert float(w.slot_variance()) == pytest.approx(var_p + index_var, rel=1e-6)


def test_fitted_workload_validation_and_description():
    with pytest.raises(ValueError, match="decode=.*is invalid: expected a decode family"):
        afdjax.FittedWorkload(afdjax.GammaPrefill(1.0, 2.0), afdjax.GammaPrefill(1.0, 2.0))
    with pytest.raises(ValueError, match="prefill=.*is invalid: expected a prefill family"):
        afdjax.FittedWorkload(afdjax.GeometricDecode(0.1), afdjax.GeometricDecode(0.1))
    with pytest.raises(ValueError, match="beyond 65536 steps"):
        afdjax.FittedWorkload(afdjax.LogNormalDecode(9.0, 2.0), afdjax.GammaPrefill(1.0, 2.0))
    w = afdjax.FittedWorkload(afdjax.LogNormalDecode(3.0, 0.5), afdjax.LogNormalPrefill(5.0, 1.0, 1.0))
    assert w.describe() == "fitted:decode=lognormal(mu=3,sigma=0.5),prefill=lognormal(mu=5,sigma=1,shift=1)"


def test_geometric_decode_pair_matches_the_geometric_workload():
    """FittedWorkload(GeometricDecode(p), ExponentialPrefill) has the moments of Geometric."""
    p, mean_p = 1 / 301, 250.0
    w = afdjax.FittedWorkload(afdjax.GeometricDecode(p), afdjax.ExponentialPrefill(mean_p + 1.0, 1.0))
    g = Geometric(mu_p=mean_p, mu_d=300.0, prefill="exponential")
    assert float(w.theta()) == pytest.approx(float(g.theta()), rel=1e-12)
    # The fitted prefill is X - 1 with X exponential of mean 251: variance 251^2, not 250^2.
    assert float(w.slot_variance()) == pytest.approx(float(g.slot_variance()) + 251.0**2 - 250.0**2, rel=1e-12)
    assert np.allclose(w._decode_log_mgf_neg(np.array([0.01, 1.0])), g._decode_log_mgf_neg(np.array([0.01, 1.0])))


def test_benchmark_specs_in_a_sweep_grid():
    """A sweep grid takes the new specs (the grid's identity hashes trace files only)."""
    grid = {
        "settings": {"steps": 64, "replicas": 2, "ratios": [1, 2]},
        "grid": {
            "batch_size": [16],
            "workload": {"kind": "spec", "spec": ["fixed:prefill=200,decode=30", "uniform:prefill=1..9,decode=2..4"]},
            "hardware": {"preset": "paper-910c"},
        },
    }
    g = afdjax.load_grid(grid)
    assert g.num_points == 2
    assert g.identity()["trace_sha256"] == {}
    assert sorted(grp.static["prefill"] for grp in g.groups) == ["fixed", "uniform"]
