"""Tests of the Monte Carlo engine ``afdjax.simulate``.

Independent oracles used here:

* ``reference_sim.simulate_reference``: a per-step NumPy simulator with its own random
  numbers (statistical comparisons; tolerances from standard errors, fixed seeds).
* ``_replay``: a per-step NumPy loop driven by the *same* random numbers as the engine
  (the engine documents its common-random-numbers contract: request ``n`` of slot ``s``
  of instance ``j`` in replica ``i`` gets ``threefry(threefry(key, i, j<<16 | s), n)``).
  It shares no code with the engine except the threefry primitive, so every metric must
  agree to float rounding; this checks the chunked jump/cumsum algorithm exactly.
* closed forms (zero-variance limit, deterministic FFN-bound regime, E[t_A] at r = 1).

Standard errors: the engine reports the delta-method standard error of throughput
across replicas. For metrics without a reported SE (attention idle fraction, slot load,
cycle-time std and quantiles) the SE of the engine's estimate is taken equal to the one
estimated from the reference run at the same (B, K, R, workload): both estimate the same
quantity from the same number of independent replicas. Combined SE = sqrt(se_e^2 + se_r^2).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import subprocess
import sys
import textwrap
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

import afdjax
import afdjax._engine._kernel as engine
from afdjax import Empirical, Geometric, LatencyModel
from afdjax._random import threefry2x32

try:
    from reference_sim import simulate_reference, stationary_theta_and_variance
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests.reference_sim import simulate_reference, stationary_theta_and_variance

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
Z_TWO = 3.0  # two-sample comparisons (engine vs reference), combined SE
Z_ONE = 4.0  # one estimate vs an exact value
# Cycle-time quantiles: 36 comparisons (3 workloads x 4 ratios x 3 levels); Bonferroni for a
# family-wise false-alarm rate of 1 %: z = Phi^-1(1 - 0.01 / 72) = 3.63.
Z_QUANTILE = 3.63
NUM_BINS = 4096
DLOG = 2 * math.log(16.0) / NUM_BINS  # log-width of one histogram bin
BIN_REL = math.expm1(DLOG)  # ~0.14 %

COEF_NAMES = ("alpha_a", "beta_a", "alpha_f", "beta_f", "alpha_c", "beta_c")


def _np(x):
    return np.asarray(x)


def _lat(d):
    return LatencyModel(**d)


def _times(lat: dict, r, B):
    """(t_F, t_C) from an independent re-statement of the latency formulas."""
    t_f = lat["alpha_f"] * r * B + lat["beta_f"]
    tokens = B if lat.get("comm_scaling", "batch") == "batch" else r * B
    return t_f, lat["alpha_c"] * tokens + lat["beta_c"]


def _ratio_se(x, y):
    """Delta-method SE of sum(x)/sum(y) over iid replica pairs (x_i, y_i)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rhat = x.sum() / y.sum()
    n = x.size
    return np.sqrt(np.sum((x - rhat * y) ** 2) / (n * (n - 1))) / y.mean()


# ============================================================================ workloads
RANDOM_LAT = dict(beta_a=5.0, alpha_f=0.2, beta_f=10.0, alpha_c=0.1, beta_c=5.0)
B_CMP, RATIOS_CMP, K_CMP, R_CMP = 32, [1, 2, 4, 8], 4000, 32


def _correlated_table():
    """Synthetic trace with strongly correlated P and D: P = 20 D + noise."""
    g = np.random.default_rng(2024)
    D = g.integers(1, 121, size=4000)
    P = np.clip(20.0 * D + g.normal(0.0, 40.0, size=D.size), 0.0, None)
    return P, D


def _make_case(name, azure):
    """(engine workload, reference workload dict, latency dict) for a named case."""
    if name == "geometric":
        wl = Geometric(100.0, 50.0, prefill="lognormal", prefill_sigma=1.0)
        ref = dict(kind="geometric", mu_p=100.0, mu_d=50.0, prefill="lognormal", prefill_sigma=1.0)
        theta = 150.0
        extra = {}
    else:
        P, D = azure if name == "azure" else _correlated_table()
        wl = Empirical(P, D)
        ref = dict(kind="empirical", prefill=P, decode=D)
        theta = stationary_theta_and_variance(P, D)[0]
        # the correlated case also exercises comm_scaling="ratio_batch" (binding at r = 8)
        extra = dict(alpha_c=0.25, comm_scaling="ratio_batch") if name == "correlated" else {}
    # attention time ~ 53 at the mean load: attention binds at small r, the barrier
    # over random loads matters at every ratio, FFN (61.2) / comm competes at r = 8.
    lat = dict(RANDOM_LAT, alpha_a=48.0 / (B_CMP * theta), **extra)
    return wl, ref, lat


_CACHE: dict = {}


@pytest.fixture(scope="module")
def compare(azure_conv_trace):
    """Lazily computed (engine result, reference result, latency dict, workload) per case."""

    def get(name):
        if name not in _CACHE:
            wl, ref_wl, lat = _make_case(name, azure_conv_trace)
            res = afdjax.simulate(jax.random.key(11), wl, _lat(lat), B_CMP, RATIOS_CMP, K_CMP, R_CMP)
            ref = simulate_reference(np.random.default_rng(12), ref_wl, lat, B_CMP, RATIOS_CMP, K_CMP, R_CMP)
            _CACHE[name] = (res, ref, lat, wl)
        return _CACHE[name]

    return get


CASES = ["geometric", "azure", "correlated"]


# ================================================================ 1. engine vs reference
@pytest.mark.parametrize("name", CASES)
def test_throughput_matches_reference(compare, name):
    res, ref, _lat, _ = compare(name)
    thr, se = _np(res.throughput_per_instance), _np(res.stderr)
    assert np.all(np.isfinite(se)) and np.all(se >= 0)
    for m, r in enumerate(RATIOS_CMP):
        comb = math.hypot(se[m], ref["stderr"][m])
        diff = thr[m] - ref["throughput_per_instance"][m]
        # (+ rounding: in a deterministic regime, e.g. comm-bound at r = 8, both SEs are 0)
        assert abs(diff) <= Z_TWO * comb + 1e-12 * thr[m], (r, thr[m], ref["throughput_per_instance"][m], comb)


@pytest.mark.parametrize("name", CASES)
def test_cycle_time_and_idle_fractions_match_reference(compare, name):
    res, ref, lat, _ = compare(name)
    thr, se = _np(res.throughput_per_instance), _np(res.stderr)
    ct = ref["cycle_times"]  # (R, n, K)
    S = ct.sum(axis=2)  # (R, n) per-replica total time
    loads = ref["instance_loads"]  # (R, r_max, K)
    for m, r in enumerate(RATIOS_CMP):
        t_f, _ = _times(lat, r, B_CMP)
        # mean cycle time: proportional to 1/throughput, so rel. SE = stderr / throughput
        mt_e = float(res.mean_cycle_time[m])
        se_e = mt_e * se[m] / thr[m]
        se_r = S[:, m].std(ddof=1) / (K_CMP * math.sqrt(R_CMP))
        assert abs(mt_e - ref["mean_cycle_time"][m]) <= Z_TWO * math.hypot(se_e, se_r) + 1e-12 * mt_e
        # FFN idle = 1 - t_F / E[tau]: SE = (1 - idle) * rel. SE of E[tau]
        fi_e = float(res.ffn_idle_fraction[m])
        se_fe = (1 - fi_e) * se[m] / thr[m]
        se_fr = _ratio_se(np.full(R_CMP, K_CMP * t_f), S[:, m])
        assert abs(fi_e - ref["ffn_idle_fraction"][m]) <= Z_TWO * math.hypot(se_fe, se_fr) + 1e-12
        # attention idle = 1 - sum busy / (r sum S): ratio estimator over replicas
        busy = (lat["alpha_a"] * loads[:, :r, :] + lat["beta_a"]).sum(axis=(1, 2))
        se_ar = _ratio_se(busy, r * S[:, m])
        ai_e = float(res.attention_idle_fraction[m])
        # (+1e-12: at r = 1 attention always binds and both idle fractions are 0 exactly)
        assert abs(ai_e - ref["attention_idle_fraction"][m]) <= Z_TWO * math.sqrt(2) * se_ar + 1e-12, (
            r,
            ai_e,
            ref["attention_idle_fraction"][m],
            se_ar,
        )
    # mean slot load (over all r_max instances)
    se_l = ref["slot_load_per_replica"].std(ddof=1) / math.sqrt(R_CMP)
    assert abs(float(res.mean_slot_load_tokens) - ref["mean_slot_load"]) <= Z_TWO * math.sqrt(2) * se_l


def test_reference_comparison_has_power(compare):
    """The throughput comparison detects a workload with the same theta but without the
    P-D correlation (rows shuffled): the correlated-trace difference is many SEs."""
    res, ref, _lat, _ = compare("correlated")
    P, D = _correlated_table()
    P_shuffled = np.random.default_rng(0).permutation(P)
    theta_shuf = stationary_theta_and_variance(P_shuffled, D)[0]
    theta = stationary_theta_and_variance(P, D)[0]
    assert abs(theta_shuf - theta) / theta > 0.2  # the correlation matters for theta
    se_l = ref["slot_load_per_replica"].std(ddof=1) / math.sqrt(R_CMP)
    assert abs(theta_shuf - float(res.mean_slot_load_tokens)) > 50 * se_l


def _cold_case():
    wl = Geometric(100.0, 50.0, prefill="constant")
    ref_wl = dict(kind="geometric", mu_p=100.0, mu_d=50.0, prefill="constant")
    lat = dict(RANDOM_LAT, alpha_a=48.0 / (B_CMP * 150.0))
    return wl, ref_wl, lat


def _cold_expected_slot_load(mu_p, mu_d, W, K):
    """Mean over steps k = W..W+K-1 of E[T_k]/B = mu_p + mu_d (1 - (1-p)^k) (arXiv 2601.21351 s.2)."""
    q = mu_d / (1.0 + mu_d)
    k = np.arange(W, W + K)
    return float(np.mean(mu_p + mu_d * (1 - q**k)))


def test_cold_start_with_warmup_matches_reference():
    wl, ref_wl, lat = _cold_case()
    W, K, R = 50, 100, 32
    res = afdjax.simulate(jax.random.key(21), wl, _lat(lat), B_CMP, RATIOS_CMP, K, R, start="cold", warmup_steps=W)
    ref = simulate_reference(
        np.random.default_rng(22), ref_wl, lat, B_CMP, RATIOS_CMP, K, R, start="cold", warmup_steps=W
    )
    thr, se = _np(res.throughput_per_instance), _np(res.stderr)
    S = ref["cycle_times"].sum(axis=2)
    for m in range(len(RATIOS_CMP)):
        comb = math.hypot(se[m], ref["stderr"][m])
        assert abs(thr[m] - ref["throughput_per_instance"][m]) <= Z_TWO * comb, m
        se_r = S[:, m].std(ddof=1) / (K * math.sqrt(R))
        se_e = float(res.mean_cycle_time[m]) * se[m] / thr[m]
        assert abs(float(res.mean_cycle_time[m]) - ref["mean_cycle_time"][m]) <= Z_TWO * math.hypot(se_e, se_r)
    # mean slot load over the measured window vs the closed-form cold-start transient
    se_l = ref["slot_load_per_replica"].std(ddof=1) / math.sqrt(R)
    expected = _cold_expected_slot_load(100.0, 50.0, W, K)
    assert abs(ref["mean_slot_load"] - expected) <= Z_ONE * se_l  # the oracle itself
    assert abs(float(res.mean_slot_load_tokens) - expected) <= Z_ONE * se_l
    # power: ignoring the warm-up (or measuring from a stationary start) is far off
    assert abs(_cold_expected_slot_load(100.0, 50.0, 0, K) - expected) > 10 * Z_ONE * se_l
    assert abs(150.0 - expected) > 10 * Z_ONE * se_l


def test_stationary_start_short_horizon_matches_theta():
    """Started in the stationary state, the load is at theta from step 0 (no warm-up):
    over a 100-step window (a cold start would still be ~20 tokens below theta)."""
    wl, ref_wl, lat = _cold_case()
    K, R = 100, 32
    res = afdjax.simulate(jax.random.key(23), wl, _lat(lat), B_CMP, RATIOS_CMP, K, R)
    ref = simulate_reference(np.random.default_rng(24), ref_wl, lat, B_CMP, RATIOS_CMP, K, R)
    thr, se = _np(res.throughput_per_instance), _np(res.stderr)
    for m in range(len(RATIOS_CMP)):
        assert abs(thr[m] - ref["throughput_per_instance"][m]) <= Z_TWO * math.hypot(se[m], ref["stderr"][m]), m
    se_l = ref["slot_load_per_replica"].std(ddof=1) / math.sqrt(R)
    assert abs(ref["mean_slot_load"] - 150.0) <= Z_ONE * se_l
    assert abs(float(res.mean_slot_load_tokens) - 150.0) <= Z_ONE * se_l
    assert abs(_cold_expected_slot_load(100.0, 50.0, 0, K) - 150.0) > 10 * Z_ONE * se_l  # power


# ============================================================ 2. exact zero-variance limit
ZV_BASE = dict(alpha_a=1e-3, beta_a=2.0, alpha_f=0.05, beta_f=1.0, alpha_c=0.02, beta_c=0.5)
ZV_CASES = {
    "attention": dict(alpha_a=1.0, beta_a=10.0),
    "ffn": dict(alpha_f=10.0),
    "comm": dict(alpha_c=50.0, beta_c=30.0),
    "mixed": dict(alpha_a=0.1, alpha_f=0.5),  # attention-bound for r <= 7, FFN-bound at 8
}
ZV_B, ZV_P, ZV_RATIOS = 16, 37.0, list(range(1, 9))


@pytest.mark.parametrize("comm_scaling", ["batch", "ratio_batch"])
@pytest.mark.parametrize("case", list(ZV_CASES))
def test_zero_variance_limit(case, comm_scaling):
    lat = dict(ZV_BASE, comm_scaling=comm_scaling, **ZV_CASES[case])
    res = afdjax.simulate(jax.random.key(0), Empirical([ZV_P], [1]), _lat(lat), ZV_B, ZV_RATIOS, 50, 3)
    _check_zero_variance(res, lat, case)


def test_zero_variance_limit_cold_start_with_warmup():
    lat = dict(ZV_BASE, **ZV_CASES["mixed"])
    res = afdjax.simulate(
        jax.random.key(1),
        Empirical([ZV_P, ZV_P], [1, 1]),
        _lat(lat),
        ZV_B,
        ZV_RATIOS,
        50,
        3,
        start="cold",
        warmup_steps=7,
    )
    _check_zero_variance(res, lat, "mixed")


def _check_zero_variance(res, lat, case):
    t_a = lat["alpha_a"] * ZV_B * ZV_P + lat["beta_a"]
    binding = []
    for m, r in enumerate(ZV_RATIOS):
        t_f, t_c = _times(lat, r, ZV_B)
        tau = max(t_a, t_c, t_f)
        binding.append(int(np.argmax([t_a, t_f, t_c])))
        expected = r * ZV_B / ((r + 1) * tau)
        thr = float(res.throughput_per_instance[m])
        assert thr == pytest.approx(expected, rel=1e-10), (r, thr, expected)
        np.testing.assert_allclose(_np(res.throughput_per_replica)[:, m], expected, rtol=1e-10)
        assert abs(float(res.stderr[m])) <= 1e-12 * expected  # zero up to rounding
        assert float(res.mean_cycle_time[m]) == pytest.approx(tau, rel=1e-10)
        assert float(res.attention_idle_fraction[m]) == pytest.approx(1 - t_a / tau, rel=1e-10, abs=1e-12)
        assert float(res.ffn_idle_fraction[m]) == pytest.approx(1 - t_f / tau, rel=1e-10, abs=1e-12)
        np.testing.assert_allclose(_np(res.cycle_time_quantiles)[m], tau, rtol=1e-10)
        # std is computed as sqrt(E[tau^2] - E[tau]^2): zero up to cancellation
        assert float(res.cycle_time_std[m]) <= 1e-6 * tau
    assert float(res.mean_slot_load_tokens) == pytest.approx(ZV_P, rel=1e-12)
    # the case really is in the intended regime
    which = {"attention": 0, "ffn": 1, "comm": 2}
    if case in which:
        assert all(b == which[case] for b in binding), binding
    else:
        assert binding == [0] * 7 + [1], binding


# ===================================================== 3. consistency of reported metrics
@pytest.mark.parametrize("name", CASES)
def test_metric_consistency(compare, name):
    res, ref, lat, wl = compare(name)
    ratios = np.asarray(RATIOS_CMP)
    np.testing.assert_array_equal(_np(res.ratios), ratios)
    thr, mt = _np(res.throughput_per_instance), _np(res.mean_cycle_time)
    assert res.batch_size == B_CMP and res.num_steps == K_CMP and res.num_replicas == R_CMP
    # throughput * (r + 1) * E[tau] = r B
    np.testing.assert_allclose(thr * (ratios + 1) * mt, ratios * B_CMP, rtol=1e-12)
    t_f, t_c = _times(lat, ratios, B_CMP)
    np.testing.assert_allclose(_np(res.ffn_idle_fraction), 1 - t_f / mt, rtol=1e-12, atol=1e-14)
    floor = np.maximum(t_f, t_c)
    assert np.all(mt >= floor * (1 - 1e-12))
    ai, fi = _np(res.attention_idle_fraction), _np(res.ffn_idle_fraction)
    # per step the attention busy time of each instance is <= tau, so idle is in [0, 1]
    assert np.all((ai >= -1e-12) & (ai <= 1)) and np.all((fi >= -1e-12) & (fi <= 1))
    # at r = r_max the attention busy time is over all instances: tied to the mean load
    t_a_mean = lat["alpha_a"] * B_CMP * float(res.mean_slot_load_tokens) + lat["beta_a"]
    assert ai[-1] == pytest.approx(1 - t_a_mean / mt[-1], rel=1e-10)
    # common random numbers: tau_r(k) is nondecreasing in r step by step (t_F, t_C
    # nondecreasing), hence E[tau] too
    assert np.all(np.diff(mt) >= -1e-12 * mt[1:])
    # quantiles: nondecreasing in level, at least the deterministic floor
    q = _np(res.cycle_time_quantiles)
    np.testing.assert_array_equal(_np(res.quantile_levels), [0.5, 0.9, 0.99])
    assert q.shape == (len(ratios), 3)
    assert np.all(np.diff(q, axis=1) >= 0)
    assert np.all(q >= floor[:, None] * (1 - 1e-12))
    # throughput pooled over replicas = harmonic mean of per-replica throughputs, and the
    # reported stderr is the delta-method SE recomputed from per-replica totals
    per = _np(res.throughput_per_replica)
    assert per.shape == (R_CMP, len(ratios))
    np.testing.assert_allclose(thr, R_CMP / np.sum(1 / per, axis=0), rtol=1e-12)
    S = (ratios * B_CMP * K_CMP / (ratios + 1))[None, :] / per
    se = thr * S.std(axis=0, ddof=1) / (S.mean(axis=0) * math.sqrt(R_CMP))
    np.testing.assert_allclose(_np(res.stderr), se, rtol=1e-8)
    # long-run slot load vs the workload's theta (SE from the reference's replica spread)
    se_l = ref["slot_load_per_replica"].std(ddof=1) / math.sqrt(R_CMP)
    assert abs(float(res.mean_slot_load_tokens) - float(wl.theta())) <= Z_ONE * se_l
    d = res.to_dict()
    assert d["best_ratio"] == res.best_ratio() == int(ratios[np.argmax(thr)])
    json.dumps(d)


# ============================================================ 4. cycle-time distribution
def _bootstrap_quantile_se(ct, levels, n_boot=200, seed=0):
    """SE of the pooled quantiles of ``ct`` (R, K) by resampling whole replicas.

    Steps within a replica are autocorrelated (slot loads persist for ~E[D] steps), so an
    iid binomial interval on the order statistic would be too narrow; replicas are the
    independent units. Each bootstrap quantile is the pooled order statistic of rank
    ceil(level * n) under replica multiplicities, found by bisection.
    """
    R, K = ct.shape
    rng = np.random.default_rng(seed)
    w = rng.multinomial(R, np.full(R, 1.0 / R), size=n_boot)  # (n_boot, R)
    per = np.sort(ct, axis=1)
    pooled = np.sort(ct.ravel())
    out = []
    for level in levels:
        target = level * K * R
        lo = np.zeros(n_boot, dtype=np.int64)
        hi = np.full(n_boot, pooled.size - 1)
        while np.any(lo < hi):
            mid = (lo + hi) // 2
            v = pooled[mid]
            counts = np.stack([np.searchsorted(per[i], v, side="right") for i in range(R)])  # (R, n_boot)
            ok = np.sum(w.T * counts, axis=0) >= target
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid + 1)
        out.append(pooled[lo].std(ddof=1) * math.sqrt(R / (R - 1)))
    return np.asarray(out)


@pytest.mark.parametrize("name", CASES)
def test_cycle_time_distribution_matches_reference(compare, name):
    res, ref, _lat, _ = compare(name)
    levels = _np(res.quantile_levels)
    q_e = _np(res.cycle_time_quantiles)
    std_e = _np(res.cycle_time_std)
    for m, r in enumerate(RATIOS_CMP):
        ct = ref["cycle_times"][:, m, :]  # (R, K)
        q_r = np.quantile(ct, levels)
        se = _bootstrap_quantile_se(ct, levels, seed=m)
        # histogram resolution (one bin) + sampling error of both estimates
        tol = Z_QUANTILE * math.sqrt(2) * se + BIN_REL * q_r
        assert np.all(np.abs(q_e[m] - q_r) <= tol), (r, q_e[m], q_r, se)
        # cycle-time std across steps: SE by the same replica bootstrap (per-replica sums)
        s1, s2 = ct.sum(axis=1), (ct**2).sum(axis=1)
        wb = np.random.default_rng(100 + m).multinomial(R_CMP, np.full(R_CMP, 1 / R_CMP), size=400)
        n = wb.sum(axis=1) * K_CMP
        mean_b = wb @ s1 / n
        std_b = np.sqrt(np.maximum(wb @ s2 / n - mean_b**2, 0))
        se_std = std_b.std(ddof=1) * math.sqrt(R_CMP / (R_CMP - 1))
        assert abs(std_e[m] - ct.std()) <= Z_TWO * math.sqrt(2) * se_std + 1e-6 * ct.mean(), (r, std_e[m], ct.std())


# ================================================= exact replay with the same random bits
def _threefry(k1, k2, x1, x2):
    arrs = np.broadcast_arrays(*[np.asarray(a).astype(np.uint32) for a in (k1, k2, x1, x2)])
    out = threefry2x32_p.bind(*[jnp.asarray(a, dtype=jnp.uint32) for a in arrs])
    return np.asarray(out[0]), np.asarray(out[1])


def _unif(bits):
    return (bits.astype(np.float64) + 0.5) * 2.0**-32


class _GeoSpec:
    def __init__(self, mu_p, mu_d, prefill):
        self.mu_p, self.mu_d, self.prefill = mu_p, mu_d, prefill
        self.log_q = math.log1p(-1.0 / (1.0 + mu_d))

    def count(self, bits):
        return np.clip(np.floor(np.log(_unif(bits)) / self.log_q), 0, 2**30).astype(np.int64)

    def prefill_of(self, bits):
        if self.prefill == "constant":
            return np.full(bits.shape, self.mu_p)
        assert self.prefill == "exponential"
        return -self.mu_p * np.log(_unif(bits))

    def fresh(self, bd, bp):
        return self.prefill_of(bp), 1 + self.count(bd)

    def stationary(self, b):
        index = self.count(b[0])
        return self.prefill_of(b[2]), index + 1 + self.count(b[1]), index


def _uniform_int_np(hi, lo, n):
    """floor((hi 2^32 + lo) n / 2^64) in uint64 NumPy: floor((hi n + floor(lo n / 2^32)) / 2^32)."""
    hi, lo, n = (np.asarray(a).astype(np.uint64) for a in (hi, lo, n))
    return ((hi * n + ((lo * n) >> np.uint64(32))) >> np.uint64(32)).astype(np.int64)


class _EmpSpec:
    def __init__(self, P, D):
        self.P, self.D = np.asarray(P, float), np.asarray(D, np.int64)

    def fresh(self, bd, bp):
        row = _uniform_int_np(bd, bp, self.D.size)
        return self.P[row], self.D[row]

    def stationary(self, b):
        cum = np.cumsum(self.D)
        row = np.searchsorted(cum, _uniform_int_np(b[0], b[1], cum[-1]), side="right")
        d = self.D[row]
        return self.P[row], d, _uniform_int_np(b[2], b[3], d)


def _replay(key, spec, lat, B, r_max, K, R, start, W):
    """Per-step loop over the engine's random numbers; returns loads (R, r_max, K)."""
    kw = np.asarray(jax.random.bits(key, (2,), dtype=jnp.uint32))
    rep = np.arange(R)[:, None, None]
    packed = (np.arange(r_max)[None, :, None] << 16) | np.arange(B)[None, None, :]
    k1, k2 = _threefry(kw[0], kw[1], rep, packed)  # (R, r_max, B)
    b0 = _threefry(k1, k2, 0, 0)
    if start == "stationary":
        b1 = _threefry(k1, k2, 0, 1)
        pre, dec, idx = spec.stationary((b0[0], b0[1], b1[0], b1[1]))
    else:
        pre, dec = spec.fresh(b0[0], b0[1])
        idx = np.zeros_like(dec)
    pre, dec, idx = (np.array(a) for a in (pre, dec, idx))
    n_max = W + K + 2  # at most one new request per slot per step
    n = np.arange(1, n_max + 1)
    bd, bp = _threefry(k1[..., None], k2[..., None], n, 0)  # request n >= 1
    new_pre, new_dec = spec.fresh(bd, bp)
    counter = np.zeros((R, r_max, B), dtype=np.int64)  # index into n - 1
    loads = np.empty((R, r_max, K))
    for step in range(W + K):
        if step >= W:
            loads[:, :, step - W] = (pre + idx).sum(axis=2)
        idx = idx + 1
        done = idx >= dec
        if done.any():
            sel = np.nonzero(done)
            c = counter[sel]
            pre[sel] = new_pre[sel + (c,)]
            dec[sel] = new_dec[sel + (c,)]
            idx[sel] = 0
            counter[sel] += 1
    return loads


def _metrics_from_loads(loads, lat, B, ratios):
    R, _, K = loads.shape
    t_a = lat["alpha_a"] * loads + lat["beta_a"]
    out = dict(thr=[], mean=[], std=[], ai=[], fi=[], taus=[])
    for r in ratios:
        t_f, t_c = _times(lat, r, B)
        tau = np.maximum(t_a[:, :r, :].max(axis=1), max(t_f, t_c))
        out["thr"].append(r * B * K * R / ((r + 1) * tau.sum()))
        out["mean"].append(tau.mean())
        out["std"].append(tau.std())
        out["ai"].append(1 - t_a[:, :r, :].sum() / (r * tau.sum()))
        out["fi"].append(1 - R * K * t_f / tau.sum())
        out["taus"].append(np.sort(tau.ravel()))
    out["slot_load"] = loads.mean() / B
    return out


def _assert_matches_replay(res, exact, levels=(0.5, 0.9, 0.99)):
    np.testing.assert_allclose(_np(res.throughput_per_instance), exact["thr"], rtol=1e-12)
    np.testing.assert_allclose(_np(res.mean_cycle_time), exact["mean"], rtol=1e-12)
    np.testing.assert_allclose(_np(res.attention_idle_fraction), exact["ai"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(res.ffn_idle_fraction), exact["fi"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(res.cycle_time_std), exact["std"], rtol=1e-6, atol=1e-6 * max(exact["mean"]))
    assert float(res.mean_slot_load_tokens) == pytest.approx(exact["slot_load"], rel=1e-12)
    q = _np(res.cycle_time_quantiles)
    for m, taus in enumerate(exact["taus"]):
        n = taus.size
        for i, level in enumerate(levels):
            # the histogram bin holding the order statistic of rank ceil(level n)
            x = taus[math.ceil(level * n) - 1]
            assert abs(math.log(q[m, i]) - math.log(x)) <= DLOG * (1 + 1e-9), (m, level, q[m, i], x)
            assert taus[0] * (1 - 1e-12) <= q[m, i] <= taus[-1] * (1 + 1e-12)


REPLAY_LAT = dict(alpha_a=0.05, beta_a=1.0, alpha_f=2.0, beta_f=2.0, alpha_c=0.1, beta_c=1.0)
SMALL = dict(batch_size=8, ratios=[1, 2, 3, 4], num_steps=300, num_replicas=6, start="cold", warmup_steps=37)
SMALL_WL = Geometric(40.0, 20.0, prefill="exponential")
SMALL_SPEC = _GeoSpec(40.0, 20.0, "exponential")

_SMALL_RUNS: dict = {}


def _small_run(variant):
    """The cold-start small case under different buffer settings (cached per variant)."""
    if variant not in _SMALL_RUNS:
        kwargs = dict(
            base={},
            chunked=dict(chunk_steps=50, replica_batch_size=4),  # 7 chunks, R=6 not a multiple of 4
            retry=dict(chunk_steps=64, requests_per_chunk=6, replica_batch_size=1),  # one retry (6 -> 12)
        )[variant]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = afdjax.simulate(jax.random.key(5), SMALL_WL, _lat(REPLAY_LAT), **SMALL, **kwargs)
        _SMALL_RUNS[variant] = (res, [w for w in caught if issubclass(w.category, RuntimeWarning)])
    return _SMALL_RUNS[variant]


@pytest.fixture(scope="module")
def small_exact():
    loads = _replay(
        jax.random.key(5),
        SMALL_SPEC,
        REPLAY_LAT,
        SMALL["batch_size"],
        4,
        SMALL["num_steps"],
        SMALL["num_replicas"],
        "cold",
        SMALL["warmup_steps"],
    )
    return _metrics_from_loads(loads, REPLAY_LAT, SMALL["batch_size"], SMALL["ratios"])


@pytest.mark.parametrize("variant", ["base", "chunked", "retry"])
def test_engine_equals_stepwise_replay_cold(small_exact, variant):
    res, _ = _small_run(variant)
    _assert_matches_replay(res, small_exact)


def test_engine_equals_stepwise_replay_stationary_empirical():
    P = np.array([0.0, 100.0, 7.5, 40.0, 3.0])
    D = np.array([1, 10, 3, 25, 2])
    lat = dict(REPLAY_LAT, alpha_a=0.2, comm_scaling="ratio_batch")
    key = jax.random.key(9)
    res = afdjax.simulate(key, Empirical(P, D), _lat(lat), 4, [1, 2, 3], 250, 2, chunk_steps=16)
    loads = _replay(key, _EmpSpec(P, D), lat, 4, 3, 250, 2, "stationary", 0)
    _assert_matches_replay(res, _metrics_from_loads(loads, lat, 4, [1, 2, 3]))


def test_replay_oracle_has_power(small_exact):
    """A different key gives a replay that the engine result does not match."""
    res, _ = _small_run("base")
    loads = _replay(jax.random.key(6), SMALL_SPEC, REPLAY_LAT, 8, 4, 300, 6, "cold", 37)
    other = _metrics_from_loads(loads, REPLAY_LAT, 8, [1, 2, 3, 4])
    assert not np.allclose(_np(res.mean_cycle_time), other["mean"], rtol=1e-6)


# ========================================================= 6. common random numbers
def _assert_same(a, b, rtol=1e-10, quantile_rtol=None):
    for field in (
        "throughput_per_instance",
        "stderr",
        "throughput_per_replica",
        "attention_idle_fraction",
        "ffn_idle_fraction",
        "mean_cycle_time",
        "mean_slot_load_tokens",
    ):
        np.testing.assert_allclose(_np(getattr(a, field)), _np(getattr(b, field)), rtol=rtol, atol=0, err_msg=field)
    np.testing.assert_allclose(_np(a.cycle_time_std), _np(b.cycle_time_std), rtol=max(rtol, 1e-6), err_msg="std")
    np.testing.assert_allclose(
        _np(a.cycle_time_quantiles),
        _np(b.cycle_time_quantiles),
        rtol=quantile_rtol if quantile_rtol is not None else rtol,
        err_msg="quantiles",
    )


def test_same_key_is_deterministic():
    res, _ = _small_run("base")
    again = afdjax.simulate(jax.random.key(5), SMALL_WL, _lat(REPLAY_LAT), **SMALL)
    for field in (
        "throughput_per_instance",
        "stderr",
        "throughput_per_replica",
        "attention_idle_fraction",
        "ffn_idle_fraction",
        "mean_cycle_time",
        "cycle_time_std",
        "cycle_time_quantiles",
        "mean_slot_load_tokens",
    ):
        np.testing.assert_array_equal(_np(getattr(res, field)), _np(getattr(again, field)), err_msg=field)
    other = afdjax.simulate(jax.random.key(6), SMALL_WL, _lat(REPLAY_LAT), **SMALL)
    assert float(other.mean_slot_load_tokens) != float(res.mean_slot_load_tokens)
    # PRNGKey-style (raw uint32) keys are accepted too
    raw = afdjax.simulate(jax.random.PRNGKey(5), SMALL_WL, _lat(REPLAY_LAT), **SMALL)
    assert np.all(np.isfinite(_np(raw.throughput_per_instance)))


def test_latency_change_keeps_random_loads():
    res, _ = _small_run("base")
    lat2 = dict(REPLAY_LAT, alpha_a=0.07, beta_f=3.5, alpha_c=0.2)
    res2 = afdjax.simulate(jax.random.key(5), SMALL_WL, _lat(lat2), **SMALL)
    assert float(res2.mean_slot_load_tokens) == float(res.mean_slot_load_tokens)  # bit-identical
    assert not np.allclose(_np(res2.throughput_per_instance), _np(res.throughput_per_instance))


def test_prefill_mean_change_keeps_decode_draws():
    """Constant prefill: mu_p -> mu_p + 5 shifts every slot load by exactly 5 (same D draws)."""
    wl = Geometric(40.0, 20.0, prefill="constant")
    a = afdjax.simulate(jax.random.key(5), wl, _lat(REPLAY_LAT), **SMALL)
    b = afdjax.simulate(jax.random.key(5), Geometric(45.0, 20.0, prefill="constant"), _lat(REPLAY_LAT), **SMALL)
    assert float(b.mean_slot_load_tokens) - float(a.mean_slot_load_tokens) == pytest.approx(5.0, rel=1e-10)


def test_ratio_r_uses_first_r_instances(small_exact):
    res, _ = _small_run("base")
    sub = afdjax.simulate(jax.random.key(5), SMALL_WL, _lat(REPLAY_LAT), **dict(SMALL, ratios=[3, 4]))
    np.testing.assert_array_equal(_np(sub.ratios), [3, 4])
    for field in (
        "throughput_per_instance",
        "stderr",
        "mean_cycle_time",
        "attention_idle_fraction",
        "ffn_idle_fraction",
        "cycle_time_std",
        "cycle_time_quantiles",
    ):
        np.testing.assert_allclose(_np(getattr(sub, field)), _np(getattr(res, field))[2:4], rtol=1e-12, err_msg=field)
    np.testing.assert_allclose(_np(sub.throughput_per_replica), _np(res.throughput_per_replica)[:, 2:4], rtol=1e-12)
    # a smaller r_max: instance j's random numbers do not depend on r_max
    small = afdjax.simulate(jax.random.key(5), SMALL_WL, _lat(REPLAY_LAT), **dict(SMALL, ratios=[2, 3]))
    np.testing.assert_allclose(_np(small.throughput_per_instance), _np(res.throughput_per_instance)[1:3], rtol=1e-12)
    np.testing.assert_allclose(_np(small.mean_cycle_time), small_exact["mean"][1:3], rtol=1e-12)
    # ratio order and repeats are honoured
    perm = afdjax.simulate(jax.random.key(5), SMALL_WL, _lat(REPLAY_LAT), **dict(SMALL, ratios=[4, 1, 3, 1]))
    np.testing.assert_allclose(
        _np(perm.throughput_per_instance), _np(res.throughput_per_instance)[[3, 0, 2, 0]], rtol=1e-12
    )


@pytest.mark.parametrize("variant", ["chunked", "retry"])
def test_results_independent_of_buffer_sizes(variant):
    base, _ = _small_run("base")
    res, caught = _small_run(variant)
    # quantiles: a cycle time within rounding of a bin edge may change bin
    _assert_same(res, base, rtol=1e-10, quantile_rtol=BIN_REL)
    if variant == "retry":
        assert len(caught) >= 1 and "requests_per_chunk" in str(caught[0].message)
    else:
        assert not caught


# ============================================================== 5. no recompilation
@pytest.fixture
def trace_counter(monkeypatch, caplog):
    """Counts traces of the jitted core (via _replica_sums, called once per trace) and
    XLA compilations of ``_simulate_jit`` reported by ``jax.log_compiles``."""
    count = {"traces": 0}
    original = engine.replica_sums

    def counting(*args, **kwargs):
        count["traces"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "replica_sums", counting)
    caplog.set_level(logging.DEBUG, logger="jax")

    def snapshot():
        compiles = sum(
            1 for rec in caplog.records if "Compiling" in rec.getMessage() and "_simulate_jit" in rec.getMessage()
        )
        return count["traces"], compiles

    with jax.log_compiles():
        yield snapshot


def _recompile_lat(alpha_a=0.0015, beta_f=100.0):
    return LatencyModel(alpha_a=alpha_a, beta_a=50.0, alpha_f=0.083, beta_f=beta_f, alpha_c=0.022, beta_c=20.0)


RC = dict(batch_size=16, num_steps=500, num_replicas=4)


def test_no_recompilation_explicit_sizes(trace_counter):
    sizes = dict(chunk_steps=128, requests_per_chunk=64, num_bins=2048)  # num_bins unique to this test
    key = jax.random.key(0)
    sweep = list(range(1, 7))
    afdjax.simulate(key, Geometric(100.0, 500.0), _recompile_lat(), ratios=sweep, **RC, **sizes)
    assert trace_counter() == (1, 1)  # a whole ratio sweep: one trace, one compilation
    afdjax.simulate(key, Geometric(100.0, 500.0), _recompile_lat(0.002, 90.0), ratios=sweep, **RC, **sizes)
    afdjax.simulate(key, Geometric(120.0, 510.0), _recompile_lat(), ratios=sweep, **RC, **sizes)
    afdjax.simulate(jax.random.key(1), Geometric(120.0, 510.0), _recompile_lat(), ratios=sweep, **RC, **sizes)
    # a different subset of the same length and max
    afdjax.simulate(key, Geometric(100.0, 500.0), _recompile_lat(), ratios=[6, 1, 2, 2, 5, 3], **RC, **sizes)
    # a parameter replaced with eqx.tree_at bypasses the constructors' float_leaf: a Python
    # float (static to filter_jit) or a weakly typed array is made a strong leaf first
    lat, wl = _recompile_lat(), Geometric(100.0, 500.0)
    afdjax.simulate(key, wl, eqx.tree_at(lambda m: m.alpha_a, lat, 0.003), ratios=sweep, **RC, **sizes)
    afdjax.simulate(key, wl, eqx.tree_at(lambda m: m.beta_a, lat, jnp.asarray(91.0)), ratios=sweep, **RC, **sizes)
    afdjax.simulate(key, eqx.tree_at(lambda w: w.mu_d, wl, 450.0), lat, ratios=sweep, **RC, **sizes)
    assert trace_counter() == (1, 1)


def test_no_recompilation_automatic_sizes(trace_counter):
    key = jax.random.key(0)
    afdjax.simulate(key, Geometric(100.0, 500.0), _recompile_lat(), ratios=[1, 2, 3, 4], num_bins=2049, **RC)
    assert trace_counter() == (1, 1)
    # modest changes: the automatic buffer sizes are rounded to a coarse grid
    afdjax.simulate(key, Geometric(120.0, 510.0), _recompile_lat(0.002), ratios=[1, 2, 3, 4], num_bins=2049, **RC)
    afdjax.simulate(key, Geometric(100.0, 480.0), _recompile_lat(beta_f=80.0), ratios=[1, 2, 3, 4], num_bins=2049, **RC)
    assert trace_counter() == (1, 1)


SHARED_SIZES = dict(chunk_steps=128, requests_per_chunk=64, num_bins=2050)  # shared by the two tests below


def test_no_recompilation_ratio_subset_of_other_length(trace_counter):
    """The ratio subset is picked outside the jitted core: any subset with the same max
    reuses the compiled program (regression test: it used to retrace per subset length)."""
    key = jax.random.key(0)
    afdjax.simulate(key, Geometric(100.0, 500.0), _recompile_lat(), ratios=list(range(1, 7)), **RC, **SHARED_SIZES)
    before = trace_counter()
    afdjax.simulate(key, Geometric(100.0, 500.0), _recompile_lat(), ratios=[2, 6], **RC, **SHARED_SIZES)
    afdjax.simulate(key, Geometric(100.0, 500.0), _recompile_lat(), ratios=[6], **RC, **SHARED_SIZES)
    assert trace_counter() == before


def test_no_recompilation_numpy_and_int_parameters(trace_counter):
    """Python floats, NumPy float64 scalars and integers give the same abstract signature
    (regression test: weak-typed vs strong-typed leaves used to retrace)."""
    key = jax.random.key(0)
    afdjax.simulate(key, Geometric(100.0, 500.0), _recompile_lat(), ratios=list(range(1, 7)), **RC, **SHARED_SIZES)
    before = trace_counter()
    coefs = {k: np.float64(v) for k, v in _recompile_lat().coefficients().items()}
    afdjax.simulate(key, Geometric(100, 500), LatencyModel(**coefs), ratios=list(range(1, 7)), **RC, **SHARED_SIZES)
    afdjax.simulate(
        key,
        Geometric(np.float64(120.5), jnp.asarray(510.0)),
        _recompile_lat(),
        ratios=list(range(1, 7)),
        **RC,
        **SHARED_SIZES,
    )
    assert trace_counter() == before


# ================================================================ 7. float32 vs float64
_F32_SCRIPT = textwrap.dedent(
    """
    import json, jax, numpy as np, afdjax
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    wl = afdjax.Geometric(100.0, 500.0, prefill="lognormal")
    res = afdjax.simulate(jax.random.key(0), wl, lat, 64, [1, 2, 4, 8, 16], 50000, 2)
    print(json.dumps({"dtype": str(res.throughput_per_instance.dtype),
                      "thr": np.asarray(res.throughput_per_instance).tolist(),
                      "load": float(res.mean_slot_load_tokens)}))
    """
)


@pytest.mark.slow  # a long float32 horizon in a subprocess
def test_float32_matches_float64_long_horizon(paper_latency):
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", _F32_SCRIPT],
        env=env,
        cwd=str(REPO_ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wl = Geometric(100.0, 500.0, prefill="lognormal")
        res = afdjax.simulate(jax.random.key(0), wl, paper_latency, 64, [1, 2, 4, 8, 16], 50000, 2)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    f32 = json.loads(out.strip().splitlines()[-1])
    assert f32["dtype"] == "float32"
    assert res.throughput_per_instance.dtype == jnp.float64
    np.testing.assert_allclose(f32["thr"], _np(res.throughput_per_instance), rtol=3e-5)
    assert f32["load"] == pytest.approx(float(res.mean_slot_load_tokens), rel=3e-5)


# ===================================================================== 8. validation
@pytest.fixture(scope="module")
def valid_args():
    return dict(
        key=jax.random.key(0),
        workload=Geometric(10.0, 10.0),
        latency=LatencyModel(**ZV_BASE),
        batch_size=4,
        ratios=[1, 2],
        num_steps=10,
        num_replicas=2,
    )


@pytest.mark.parametrize(
    "override, match",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(batch_size=2**16 + 1), "batch_size"),
        (dict(ratios=[]), "ratios"),
        (dict(ratios=[0]), "ratios"),
        (dict(ratios=[1.5]), "ratios"),
        (dict(ratios=[2, -1]), "ratios"),
        (dict(ratios="abc"), "ratios"),
        (dict(num_steps=0), "num_steps"),
        (dict(num_replicas=0), "num_replicas"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(start="hot"), "start"),
        (dict(workload="geometric"), "workload"),
        (dict(workload=dict(mu_p=1.0, mu_d=1.0)), "workload"),
        (dict(latency="paper-910c"), "latency"),
        (dict(latency=dict(ZV_BASE)), "latency"),
        (dict(quantile_levels=(0.5, 1.0)), "quantile_levels"),
        (dict(quantile_levels=(0.0,)), "quantile_levels"),
        (dict(chunk_steps=0), "chunk_steps"),
        (dict(requests_per_chunk=0), "requests_per_chunk"),
        (dict(replica_batch_size=0), "replica_batch_size"),
        (dict(num_bins=1), "num_bins"),
    ],
)
def test_simulate_validation(valid_args, override, match):
    with pytest.raises(ValueError, match=match):
        afdjax.simulate(**dict(valid_args, **override))


@pytest.mark.parametrize("name", COEF_NAMES)
def test_negative_coefficient_rejected(name):
    with pytest.raises(ValueError, match=name):
        LatencyModel(**dict(ZV_BASE, **{name: -0.5}))


@pytest.mark.parametrize(
    "P, D, match",
    [
        ([1.0, -2.0], [1, 2], "prefill_tokens"),
        ([1.0, 2.0], [1, 0], "decode_steps"),
        ([np.nan, 2.0], [1, 2], "prefill_tokens"),
        ([1.0, 2.0], [np.nan, 2.0], "decode_steps"),
        ([1.0, 2.0], [1.5, 2.0], "decode_steps"),
    ],
)
def test_empirical_validation(P, D, match):
    with pytest.raises(ValueError, match=match):
        Empirical(P, D)


def test_traced_parameters_need_explicit_sizes():
    lat = LatencyModel(**ZV_BASE)

    def f(mu_d):
        return afdjax.simulate(jax.random.key(0), Geometric(10.0, mu_d), lat, 4, [1, 2], 10, 2).throughput_per_instance

    with pytest.raises(ValueError, match="chunk_steps"):
        jax.jit(f)(10.0)


# ========================================================= 9. the paper's baseline
@pytest.fixture(scope="module")
def paper_baseline(paper_latency):
    t0 = time.perf_counter()
    res = afdjax.simulate(jax.random.key(0), Geometric(100.0, 500.0), paper_latency, 256, list(range(1, 33)), 4000, 8)
    res.throughput_per_instance.block_until_ready()
    return res, time.perf_counter() - t0


def test_paper_baseline_best_ratio(paper_baseline):
    res, elapsed = paper_baseline
    assert res.best_ratio() in (9, 10, 11), res.best_ratio()
    assert elapsed < 60.0, elapsed  # ~2.5 s on 2 CPU cores, compilation included


def test_paper_baseline_closed_form_regimes(paper_baseline, paper_latency):
    res, _ = paper_baseline
    B, theta = 256, 600.0
    thr, se = _np(res.throughput_per_instance), _np(res.stderr)
    # r = 1: attention always binds (t_A ~ 303 +- 13 vs t_F = 121), so E[tau] = E[t_A]
    t_a_bar = 0.00165 * B * theta + 50.0
    mt = float(res.mean_cycle_time[0])
    assert abs(mt - t_a_bar) <= Z_ONE * mt * se[0] / thr[0], (mt, t_a_bar)
    # r = 32: FFN always binds (t_F = 780 vs max of 32 t_A ~ 335): deterministic
    t_f = 0.083 * 32 * B + 100.0
    assert thr[31] == pytest.approx(32 * B / (33 * t_f), rel=1e-12)
    assert float(res.ffn_idle_fraction[31]) == pytest.approx(0.0, abs=1e-12)
    assert float(res.attention_idle_fraction[31]) > 0.6  # arXiv 2601.21351 section 4 idle pattern
    assert float(res.ffn_idle_fraction[0]) > 0.55


# ======================================================== 10. jit and grad (pathwise)
# The small cold-start case with its automatic buffer sizes made explicit (these are the
# sizes simulate() picks for it; the numbers do not depend on them in any case).
GRAD_SIZES = dict(chunk_steps=337, requests_per_chunk=64)


def _throughput_of_alpha_a(alpha_a):
    lat = LatencyModel(**dict(REPLAY_LAT, alpha_a=alpha_a))
    return afdjax.simulate(jax.random.key(5), SMALL_WL, lat, **SMALL, **GRAD_SIZES).throughput_per_instance


def test_simulate_under_jit_and_grad(small_exact):
    a0 = REPLAY_LAT["alpha_a"]  # r = 1, 2: attention binds often; r = 4: FFN always binds
    jitted = jax.jit(_throughput_of_alpha_a)
    value = _np(jitted(a0))
    base, _ = _small_run("base")
    np.testing.assert_allclose(value, _np(base.throughput_per_instance), rtol=1e-12)
    np.testing.assert_allclose(value, small_exact["thr"], rtol=1e-12)
    # forward mode for all ratios, reverse mode (jax.grad) for one
    jac = _np(jax.jit(jax.jacfwd(_throughput_of_alpha_a))(a0))
    g2 = float(jax.jit(jax.grad(lambda a: _throughput_of_alpha_a(a)[1]))(a0))
    assert g2 == pytest.approx(jac[1], rel=1e-12)
    assert np.all(jac[:3] < 0) and jac[3] == 0.0  # FFN-bound at r = 4: no dependence
    # central finite difference with common random numbers (same key); the sample path is
    # piecewise linear in alpha_a, so a small step crosses (almost surely) no kink
    h = 1e-6 * a0
    fd = (_np(jitted(a0 + h)) - _np(jitted(a0 - h))) / (2 * h)
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-9)


def test_float32_uniform_stays_below_one():
    """float32: (k + 0.5) 2^-24 rounds to exactly 1 for the top bit pattern (an infinite
    exponential prefill, a NaN throughput); it is kept at the largest float below 1 and
    every other value is unchanged."""
    from afdjax._random import uniform_open

    bits = jnp.asarray([0xFFFFFFFF, 0xFFFFFEFF, 0x80000000, 0], dtype=jnp.uint32)
    with jax.enable_x64(False):
        v = np.asarray(uniform_open(bits))
    assert v.dtype == np.float32 and np.all(v < 1.0) and np.all(v > 0.0)
    assert v[0] == np.float32(1.0 - 2.0**-24)
    expect = ((np.asarray(bits[1:]) >> 8).astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-24)
    np.testing.assert_array_equal(v[1:], expect)


def test_unrolled_threefry_is_bit_exact():
    """The engine's fused threefry equals JAX's threefry2x32 primitive bit for bit."""
    rng = np.random.default_rng(0)
    words = [jnp.asarray(rng.integers(0, 2**32, 4096, dtype=np.uint64).astype(np.uint32)) for _ in range(4)]
    mine = threefry2x32(*words)
    ref = threefry2x32_p.bind(*words)
    np.testing.assert_array_equal(np.asarray(mine[0]), np.asarray(ref[0]))
    np.testing.assert_array_equal(np.asarray(mine[1]), np.asarray(ref[1]))


# ============================================================ progress bar
@pytest.mark.slow  # four runs in replica blocks
def test_progress_bar_counts_every_replica_step_and_changes_nothing(monkeypatch):
    """simulate(progress=True): replicas run in host-side blocks that feed a tqdm bar whose
    total is replicas x chunks x chunk length; the numbers are those of progress=False."""
    import tqdm.auto

    bars = []

    class FakeBar:
        def __init__(self, total, **kwargs):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    wl, lat = Geometric(mu_p=50.0, mu_d=30.0), afdjax.LatencyModel.from_preset("paper-910c")
    for micro_batches in (None, 2):
        kw = dict(chunk_steps=64, replica_batch_size=2, micro_batches=micro_batches)
        quiet = afdjax.simulate(jax.random.key(2), wl, lat, 16, [1, 3, 5], 300, 5, **kw)
        loud = afdjax.simulate(jax.random.key(2), wl, lat, 16, [1, 3, 5], 300, 5, progress=True, **kw)
        np.testing.assert_array_equal(_np(loud.throughput_per_instance), _np(quiet.throughput_per_instance))
        np.testing.assert_array_equal(_np(loud.cycle_time_quantiles), _np(quiet.cycle_time_quantiles))
        bar = bars[-1]
        assert bar.closed and bar.total == 5 * 5 * 64 and bar.n == bar.total  # 5 chunks of 64 cover 300 steps
    # under an outer trace the bar is off (no host callbacks inside jit/grad)
    n_bars = len(bars)

    def lat_of(a):
        return afdjax.LatencyModel(**(afdjax.PRESETS["paper-910c"] | {"alpha_a": a}))

    jax.grad(
        lambda a: afdjax.simulate(
            jax.random.key(2), wl, lat_of(a), 16, [1, 3], 100, 2, chunk_steps=64, requests_per_chunk=64, progress=True
        ).throughput_per_instance[1]
    )(0.00165)
    assert len(bars) == n_bars
