"""Tests of the NumPy reference simulator itself, against independent facts.

Statistical tolerances are 4 standard errors, with standard errors estimated from
independent units (replicas x instances; instances within a replica evolve
independently, only the cycle time couples them). Seeds are fixed.
"""

import itertools

import numpy as np
import pytest

try:
    from reference_sim import simulate_reference, stationary_theta_and_variance
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests.reference_sim import simulate_reference, stationary_theta_and_variance

Z = 4.0  # number of standard errors allowed

LAT = dict(alpha_a=1e-3, beta_a=2.0, alpha_f=0.05, beta_f=1.0, alpha_c=0.02, beta_c=0.5)

# An empirical workload with strong P-D correlation (resampling rows jointly matters).
EMP = dict(
    kind="empirical",
    prefill=np.array([0.0, 100.0, 7.5, 40.0, 3.0]),
    decode=np.array([1, 10, 3, 25, 2]),
)


def _zscore_mean(units, target):
    """(mean - target) / stderr for iid units."""
    units = np.asarray(units, dtype=np.float64).ravel()
    se = units.std(ddof=1) / np.sqrt(units.size)
    return (units.mean() - target) / se, se


# ---------------------------------------------------------------------------
# Analytic helper
# ---------------------------------------------------------------------------


def test_theta_variance_helper_bruteforce():
    # Hand case: P=2, D=3 -> loads 2,3,4: theta=3, var=2/3.
    th, var = stationary_theta_and_variance([2.0], [3])
    assert th == pytest.approx(3.0, rel=1e-14)
    assert var == pytest.approx(2.0 / 3.0, rel=1e-12)

    # Random rows vs explicit enumeration of the length-biased state.
    g = np.random.default_rng(1)
    P = g.exponential(20.0, size=30)
    D = g.integers(1, 40, size=30)
    vals = np.concatenate([p + np.arange(d) for p, d in zip(P, D)])
    th, var = stationary_theta_and_variance(P, D)
    assert th == pytest.approx(vals.mean(), rel=1e-12)
    assert var == pytest.approx(vals.var(), rel=1e-10)


# ---------------------------------------------------------------------------
# 1. Zero-variance limit
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("comm_scaling", ["batch", "ratio_batch"])
@pytest.mark.parametrize("start", ["stationary", "cold"])
@pytest.mark.parametrize(
    "lat_override",
    [
        dict(),  # mixture
        dict(alpha_a=1.0, beta_a=10.0),  # attention-bound
        dict(alpha_f=10.0),  # FFN-bound
        dict(alpha_c=50.0, beta_c=30.0),  # comm-bound
    ],
)
def test_zero_variance_limit(comm_scaling, start, lat_override):
    B, Pc = 16, 37.0
    ratios = [1, 2, 3, 5, 8]
    lat = dict(LAT, comm_scaling=comm_scaling, **lat_override)
    wl = dict(kind="empirical", prefill=np.full(4, Pc), decode=np.ones(4, dtype=int))
    out = simulate_reference(
        np.random.default_rng(0), wl, lat, B, ratios, 50, 3, start=start, warmup_steps=5 if start == "cold" else 0
    )
    assert np.all(out["instance_loads"] == B * Pc)
    assert out["mean_slot_load"] == pytest.approx(Pc, rel=1e-12)
    t_a = lat["alpha_a"] * B * Pc + lat["beta_a"]
    for m, r in enumerate(ratios):
        t_f = lat["alpha_f"] * r * B + lat["beta_f"]
        cb = B if comm_scaling == "batch" else r * B
        t_c = lat["alpha_c"] * cb + lat["beta_c"]
        tau = max(t_a, t_c, t_f)
        expected = r * B / ((r + 1) * tau)
        np.testing.assert_allclose(out["cycle_times"][:, m, :], tau, rtol=1e-12)
        assert out["throughput_per_instance"][m] == pytest.approx(expected, rel=1e-12)
        np.testing.assert_allclose(out["throughput_per_replica"][:, m], expected, rtol=1e-12)
        assert out["mean_cycle_time"][m] == pytest.approx(tau, rel=1e-12)
        assert abs(out["stderr"][m]) <= 1e-12 * expected


# ---------------------------------------------------------------------------
# 2. Long-run mean slot load = theta
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wl, theta",
    [
        (dict(kind="geometric", mu_p=50.0, mu_d=30.0, prefill="constant"), 80.0),
        (dict(kind="geometric", mu_p=20.0, mu_d=100.0, prefill="exponential"), 120.0),
        (dict(kind="geometric", mu_p=64.0, mu_d=9.0, prefill="lognormal", prefill_sigma=1.0), 73.0),
        (dict(kind="geometric", mu_p=0.0, mu_d=0.0, prefill="constant"), 0.0),
        (EMP, stationary_theta_and_variance(EMP["prefill"], EMP["decode"])[0]),
    ],
)
@pytest.mark.parametrize("start", ["stationary", "cold"])
def test_long_run_mean_slot_load(wl, theta, start):
    B, R, r_max, K = 8, 16, 4, 1500
    out = simulate_reference(
        np.random.default_rng(42),
        wl,
        LAT,
        B,
        [1, r_max],
        K,
        R,
        start=start,
        warmup_steps=0 if start == "stationary" else 600,
    )
    loads = out["instance_loads"] / B  # (R, r_max, K)
    units = loads.mean(axis=2)  # independent (replica, instance) time averages
    assert out["mean_slot_load"] == pytest.approx(units.mean(), rel=1e-12)
    np.testing.assert_allclose(out["slot_load_per_replica"], units.mean(axis=1), rtol=1e-12)
    if theta == 0.0:  # degenerate: every request has P=0, D=1
        assert np.all(loads == 0.0)
        return
    z, _ = _zscore_mean(units, theta)
    assert abs(z) < Z, (z, units.mean(), theta)


def test_empirical_stationary_variance():
    # Cross-sectional variance of one slot's load at a fixed step equals sigma^2
    # (B=1 so an instance is a single slot; all units independent).
    theta, sigma2 = stationary_theta_and_variance(EMP["prefill"], EMP["decode"])
    out = simulate_reference(np.random.default_rng(7), EMP, LAT, 1, [8], 40, 500)
    for k in (0, 39):
        x = out["instance_loads"][:, :, k].ravel()
        z, _ = _zscore_mean(x, theta)
        assert abs(z) < Z
        sq = (x - theta) ** 2  # unbiased for sigma^2 since theta is exact
        z, _ = _zscore_mean(sq, sigma2)
        assert abs(z) < Z, (z, sq.mean(), sigma2)


def test_empirical_correlation_matters():
    # Sanity that the check above has power: decorrelated theta is far off.
    theta, _ = stationary_theta_and_variance(EMP["prefill"], EMP["decode"])
    theta_indep = EMP["prefill"].mean() + stationary_theta_and_variance(np.zeros(5), EMP["decode"])[0]
    out = simulate_reference(np.random.default_rng(3), EMP, LAT, 8, [4], 1000, 8)
    units = out["instance_loads"].mean(axis=2) / 8
    z_true, _se = _zscore_mean(units, theta)
    z_wrong, _ = _zscore_mean(units, theta_indep)
    assert abs(z_true) < Z
    assert abs(z_wrong) > 10 * Z


# ---------------------------------------------------------------------------
# 3. Stationarity / cold-start transient
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wl",
    [
        dict(kind="geometric", mu_p=30.0, mu_d=200.0, prefill="exponential"),
        EMP,
    ],
)
def test_stationary_start_is_stationary(wl):
    B, R, r_max, K, w = 8, 24, 4, 600, 50
    if wl["kind"] == "geometric":
        theta = wl["mu_p"] + wl["mu_d"]
    else:
        theta = stationary_theta_and_variance(wl["prefill"], wl["decode"])[0]
    out = simulate_reference(np.random.default_rng(11), wl, LAT, B, [r_max], K, R)
    loads = out["instance_loads"] / B
    first = loads[:, :, :w].mean(axis=2)
    last = loads[:, :, -w:].mean(axis=2)
    # first window vs theta, and first vs last (paired differences), and last / theta
    z, _ = _zscore_mean(first, theta)
    assert abs(z) < Z, z
    z, _ = _zscore_mean(first - last, 0.0)
    assert abs(z) < Z, z
    z, _ = _zscore_mean(last / theta, 1.0)
    assert abs(z) < Z, z

    # Power check: the same comparison flags a cold start (over its first few
    # steps, since the empirical workload's transient is short).
    cold = simulate_reference(np.random.default_rng(11), wl, LAT, B, [r_max], K, R, start="cold")
    cl = cold["instance_loads"] / B
    z, _ = _zscore_mean(cl[:, :, :5].mean(axis=2) - cl[:, :, -w:].mean(axis=2), 0.0)
    assert z < -Z, z
    z, _ = _zscore_mean(loads[:, :, :5].mean(axis=2) - last, 0.0)
    assert abs(z) < Z, z


@pytest.mark.parametrize("prefill", ["constant", "exponential"])
def test_cold_start_transient_geometric(prefill):
    # E[T(k)] = B mu_p + B (1-p)/p (1 - (1-p)^k),  p = 1/(1+mu_d)
    mu_p, mu_d, B = 25.0, 40.0, 8
    p = 1.0 / (1.0 + mu_d)
    wl = dict(kind="geometric", mu_p=mu_p, mu_d=mu_d, prefill=prefill)
    out = simulate_reference(np.random.default_rng(5), wl, LAT, B, [8], 201, 250, start="cold")
    loads = out["instance_loads"]
    for k in (0, 1, 3, 10, 40, 200):
        expected = B * mu_p + B * (1 - p) / p * (1 - (1 - p) ** k)
        x = loads[:, :, k].ravel()
        se = x.std(ddof=1) / np.sqrt(x.size)
        assert abs(x.mean() - expected) <= Z * se + 1e-9 * expected, (k, x.mean(), expected)


def test_warmup_discards_exactly_the_first_steps():
    wl = dict(kind="geometric", mu_p=10.0, mu_d=20.0, prefill="lognormal")
    W, K = 37, 100
    full = simulate_reference(np.random.default_rng(9), wl, LAT, 4, [1, 3], W + K, 2, start="cold")
    warm = simulate_reference(np.random.default_rng(9), wl, LAT, 4, [1, 3], K, 2, start="cold", warmup_steps=W)
    np.testing.assert_array_equal(warm["instance_loads"], full["instance_loads"][:, :, W:])
    np.testing.assert_array_equal(warm["cycle_times"], full["cycle_times"][:, :, W:])


# ---------------------------------------------------------------------------
# 4. Idle fractions and metric bookkeeping
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lat_override",
    [dict(alpha_a=1.0), dict(alpha_f=10.0), dict(alpha_c=50.0), dict()],
)
def test_idle_fractions_deterministic_r1(lat_override):
    B, Pc = 16, 20.0
    lat = dict(LAT, **lat_override)
    wl = dict(kind="empirical", prefill=[Pc], decode=[1])
    out = simulate_reference(np.random.default_rng(0), wl, lat, B, [1], 30, 2)
    t_a = lat["alpha_a"] * B * Pc + lat["beta_a"]
    t_f = lat["alpha_f"] * B + lat["beta_f"]
    t_c = lat["alpha_c"] * B + lat["beta_c"]
    tau = max(t_a, t_f, t_c)
    assert out["attention_idle_fraction"][0] == pytest.approx(1 - t_a / tau, abs=1e-12)
    assert out["ffn_idle_fraction"][0] == pytest.approx(1 - t_f / tau, abs=1e-12)


def test_metrics_bookkeeping_random_loads():
    """Metrics recomputed from the returned loads by an explicit double loop."""
    wl = dict(kind="geometric", mu_p=15.0, mu_d=12.0, prefill="exponential")
    lat = dict(alpha_a=0.02, beta_a=1.0, alpha_f=0.1, beta_f=2.0, alpha_c=0.05, beta_c=0.3, comm_scaling="ratio_batch")
    B, ratios, K, R = 4, [3, 1, 2], 25, 3
    out = simulate_reference(np.random.default_rng(2), wl, lat, B, ratios, K, R)
    loads = out["instance_loads"]
    for m, r in enumerate(ratios):
        t_f = lat["alpha_f"] * r * B + lat["beta_f"]
        t_c = lat["alpha_c"] * r * B + lat["beta_c"]
        S = np.zeros(R)
        busy_a = 0.0
        for i, k in itertools.product(range(R), range(K)):
            ta = [lat["alpha_a"] * loads[i, j, k] + lat["beta_a"] for j in range(r)]
            tau = max(max(ta), t_c, t_f)
            assert out["cycle_times"][i, m, k] == pytest.approx(tau, rel=1e-13)
            S[i] += tau
            busy_a += sum(ta)
        c = r * B * K / (r + 1)
        thr = c * R / S.sum()
        assert out["throughput_per_instance"][m] == pytest.approx(thr, rel=1e-12)
        np.testing.assert_allclose(out["throughput_per_replica"][:, m], c / S, rtol=1e-12)
        # ratio estimator == harmonic mean of per-replica throughputs
        hm = R / np.sum(1.0 / out["throughput_per_replica"][:, m])
        assert out["throughput_per_instance"][m] == pytest.approx(hm, rel=1e-12)
        se = thr * S.std(ddof=1) / (S.mean() * np.sqrt(R))
        assert out["stderr"][m] == pytest.approx(se, rel=1e-10)
        assert out["mean_cycle_time"][m] == pytest.approx(S.sum() / (R * K), rel=1e-12)
        assert out["attention_idle_fraction"][m] == pytest.approx(1 - busy_a / (r * S.sum()), rel=1e-12, abs=1e-14)
        assert out["ffn_idle_fraction"][m] == pytest.approx(1 - R * K * t_f / S.sum(), rel=1e-12, abs=1e-14)
    assert out["throughput_per_replica"].shape == (R, len(ratios))
    assert out["cycle_times"].shape == (R, len(ratios), K)
    np.testing.assert_array_equal(out["ratios"], ratios)


def test_common_random_numbers_monotone_tau():
    # With comm_scaling="batch", tau_r(k) is nondecreasing in r step by step,
    # because system r is instances 0..r-1 of the same simulated set.
    wl = dict(kind="geometric", mu_p=40.0, mu_d=60.0, prefill="lognormal")
    out = simulate_reference(np.random.default_rng(4), wl, LAT, 8, [1, 2, 4, 8], 200, 3)
    ct = out["cycle_times"]
    assert np.all(np.diff(ct, axis=1) >= 0)


def test_prefill_distribution_means():
    # Fresh-request prefill draws have mean mu_p for every prefill kind: with
    # mu_d = 0 every request lasts one step, so the slot load is just P.
    for kind in ("constant", "exponential", "lognormal"):
        wl = dict(kind="geometric", mu_p=12.0, mu_d=0.0, prefill=kind, prefill_sigma=0.8)
        out = simulate_reference(np.random.default_rng(8), wl, LAT, 1, [4], 200, 50)
        x = out["instance_loads"].ravel()
        if kind == "constant":
            assert np.all(x == 12.0)
            continue
        z, _ = _zscore_mean(x, 12.0)
        assert abs(z) < Z, (kind, z)
        if kind == "lognormal":
            lx = np.log(x)
            z, _ = _zscore_mean(lx, np.log(12.0) - 0.5 * 0.8**2)
            assert abs(z) < Z
            z, _ = _zscore_mean((lx - lx.mean()) ** 2, 0.8**2)
            assert abs(z) < Z


def test_timing_reference_size():
    import time

    wl = dict(kind="geometric", mu_p=100.0, mu_d=500.0, prefill="lognormal")
    t0 = time.perf_counter()
    out = simulate_reference(np.random.default_rng(0), wl, LAT, 64, list(range(1, 9)), 4000, 8)
    elapsed = time.perf_counter() - t0
    assert out["cycle_times"].shape == (8, 8, 4000)
    assert elapsed < 30.0
