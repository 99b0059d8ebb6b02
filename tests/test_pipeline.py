"""Micro-batch pipeline: the max-plus recursion, its closed form, and ``simulate(micro_batches=m)``.

Independent oracles:

* ``reference_pipeline.simulate_pipeline_events``: an event-driven simulator (priority
  queue of events, resources serving one micro-batch at a time) sharing no code with
  ``afdjax._step._pipeline``; every event time must agree to float rounding.
* ``reference_sim.simulate_reference_pipeline``: the per-step NumPy load simulator
  (slot ``s`` in group ``s % m``) feeding that event-driven pipeline; compared
  statistically (3 combined standard errors, fixed seeds) and, with zero-variance
  workloads or the engine's own random numbers replayed, exactly.
* closed forms: the sequential sum at ``m = 1``, the paper's ``max`` for large ``m``, the
  cyclic-queue period, the "A/F > 2C" rule, and central finite differences.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import afdjax
import afdjax._engine._kernel as engine
from afdjax import Empirical, Geometric, LatencyModel
from afdjax._cli._main import main
from afdjax._step._pipeline import (
    micro_batch_sizes,
    pipeline_barrier_cycle_time,
    pipeline_cycle_time,
    pipeline_event_times,
    pipeline_period,
    pipeline_throughput,
)

try:
    from reference_pipeline import simulate_pipeline_events
    from reference_sim import simulate_reference_pipeline
    from test_engine import _GeoSpec, _threefry
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests.reference_pipeline import simulate_pipeline_events
    from tests.reference_sim import simulate_reference_pipeline
    from tests.test_engine import _GeoSpec, _threefry

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
Z_TWO = 3.0
EVENT_NAMES = (
    "attention_start",
    "attention_end",
    "a2f_start",
    "a2f_end",
    "ffn_start",
    "ffn_end",
    "f2a_start",
    "f2a_end",
)
COEF_NAMES = ("alpha_a", "beta_a", "alpha_f", "beta_f", "alpha_c", "beta_c")


def _np(x):
    return np.asarray(x)


# ============================================================ (a) recursion vs event-driven
@pytest.mark.parametrize(
    "steps, instances, micro_batches, active, seed",
    [(7, 3, 1, 3, 0), (9, 4, 3, 2, 1), (6, 2, 4, 2, 2), (11, 1, 2, 1, 3), (5, 5, 7, 4, 4), (40, 3, 3, 3, 5)],
)
def test_event_times_match_event_driven_reference(steps, instances, micro_batches, active, seed):
    rng = np.random.default_rng(seed)
    # wide spread of stage times so every kind of bottleneck occurs somewhere
    a = rng.lognormal(0.0, 1.0, (steps, instances, micro_batches))
    c = rng.lognormal(-1.0, 1.0, (steps, micro_batches))
    f = rng.lognormal(0.0, 1.0, (steps, micro_batches))
    mask = jnp.asarray(np.arange(instances) < active)
    events = jax.jit(pipeline_event_times)(a, c, f, mask)
    ref = simulate_pipeline_events(a, c, f, num_active=active)
    for name in EVENT_NAMES:
        mine, theirs = _np(getattr(events, name)), ref[name]
        if name.startswith("attention"):
            mine, theirs = mine[:, :active], theirs[:, :active]
        assert mine.shape == theirs.shape, name
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(_np(events.step_completion), ref["f2a_end"][:, -1], rtol=1e-12)
    # power: the reference notices a change of one attention time in the middle
    b = a.copy()
    b[steps // 2, 0, -1] += 100.0  # long enough to be on the critical path
    other = simulate_pipeline_events(b, c, f, num_active=active)
    assert not np.allclose(other["f2a_end"][-1], _np(events.f2a_end)[-1], rtol=1e-9)


def test_m1_is_the_sequential_sum():
    """One micro-batch: nothing overlaps, step k takes max_j t_A + t_C + t_F + t_C."""
    rng = np.random.default_rng(7)
    K, J = 30, 4
    a = rng.uniform(1.0, 3.0, (K, J, 1))
    c = rng.uniform(0.1, 1.0, (K, 1))
    f = rng.uniform(0.5, 2.0, (K, 1))
    done = _np(pipeline_event_times(a, c, f).step_completion)
    step = np.diff(np.concatenate([[0.0], done]))
    np.testing.assert_allclose(step, a.max(axis=1)[:, 0] + 2 * c[:, 0] + f[:, 0], rtol=1e-12)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 6])
def test_closed_form_period_is_the_steady_state(m):
    """Deterministic stage times: the recursion's long-run period equals
    max(m max(tA, tC, tF), tA + 2 tC + tF), over many random draws covering every regime
    (so no mixed circuit of the max-plus graph exceeds it)."""
    rng = np.random.default_rng(100 + m)
    K, J = 240, 2
    draws = rng.lognormal(0.0, 1.0, (40, 3))
    a = np.broadcast_to(draws[:, None, None, None, 0], (40, K, J, m))
    c = np.broadcast_to(draws[:, None, None, 1], (40, K, m))
    f = np.broadcast_to(draws[:, None, None, 2], (40, K, m))
    done = _np(jax.vmap(lambda a, c, f: pipeline_event_times(a, c, f).step_completion)(a, c, f))
    measured = (done[:, -1] - done[:, K // 2 - 1]) / (K - K // 2)
    expected = _np(pipeline_period(draws[:, 0], draws[:, 1], draws[:, 2], m))
    np.testing.assert_allclose(measured, expected, rtol=1e-10)
    # the closed form is the max of a resource bound and a round-trip bound: both bind
    # somewhere for m = 2, 3 (for m >= 4 the trip tA + 2tC + tF <= 4 max never exceeds m max)
    if m in (2, 3):
        resource = m * draws.max(axis=1)
        trip = draws[:, 0] + 2 * draws[:, 1] + draws[:, 2]
        assert np.any(resource > trip) and np.any(trip > resource)


def test_af_greater_than_2c_remark():
    """m = 3, t_A = t_F = c: communication is hidden (period 3c) iff c >= 2 t_C."""
    t_c = 1.0
    for c in [0.5, 1.0, 1.5, 1.99, 2.0, 2.01, 3.0, 5.0]:
        K = 150
        done = _np(pipeline_event_times(np.full((K, 2, 3), c), np.full(3, t_c), np.full(3, c)).step_completion)
        period = (done[-1] - done[K // 2 - 1]) / (K - K // 2)
        hidden = abs(period - 3 * c) <= 1e-9 * period
        assert hidden == (c >= 2 * t_c), (c, period)


def test_limits_of_the_mean_field_pipeline(paper_latency):
    wl = Geometric(100.0, 500.0)
    B = 256
    # m = 1: the sequential sum of the full-batch stages
    for r in (1.0, 8.0, 9.5):
        t_a = paper_latency.attention_time(B * 600.0)
        t_c = paper_latency.comm_time(r, B)
        t_f = paper_latency.ffn_time(r, B)
        assert float(pipeline_cycle_time(wl, paper_latency, B, r, 1)) == pytest.approx(
            float(t_a + 2 * t_c + t_f), rel=1e-12
        )
    # large m with zero fixed costs and small communication: the paper's max(tA, tC, tF)
    lat = LatencyModel(alpha_a=0.00165, beta_a=0.0, alpha_f=0.083, beta_f=0.0, alpha_c=0.002, beta_c=0.0)
    for r in (2.0, 8.0, 9.575, 16.0):
        paper = float(afdjax.mean_field_cycle_time(wl, lat, B, r))
        periods = [float(pipeline_cycle_time(wl, lat, B, r, m)) for m in (1, 2, 4, 8, 64, 256)]
        assert all(p1 >= p2 * (1 - 1e-12) for p1, p2 in itertools.pairwise(periods))  # non-increasing
        assert periods[0] > paper * (1 + 1e-3)  # m = 1 pays the sum
        assert periods[-1] == pytest.approx(paper, rel=1e-12)  # m >= sum / max: exactly the max
    # with the paper's fixed costs (paid per micro-batch) many micro-batches hurt
    periods = [float(pipeline_cycle_time(wl, paper_latency, B, 9.0, m)) for m in range(1, 17)]
    best = int(np.argmin(periods))
    assert 0 < best < 15 and periods[-1] > 1.5 * periods[best]


def test_pipeline_theory_gradients_and_barrier_approximation(paper_latency):
    wl = Geometric(100.0, 500.0, prefill="lognormal")
    B, m = 256, 2

    def f(lat, r):
        return pipeline_throughput(wl, lat, B, r, m)

    g_lat, g_r = jax.grad(f, argnums=(0, 1))(paper_latency, 9.3)
    h = 1e-6
    for name in COEF_NAMES:
        v = float(getattr(paper_latency, name))
        up = eqx.tree_at(lambda l: getattr(l, name), paper_latency, jnp.asarray(v + h * max(v, 1e-3)))
        dn = eqx.tree_at(lambda l: getattr(l, name), paper_latency, jnp.asarray(v - h * max(v, 1e-3)))
        fd = (float(f(up, 9.3)) - float(f(dn, 9.3))) / (2 * h * max(v, 1e-3))
        assert float(getattr(g_lat, name)) == pytest.approx(fd, rel=1e-6, abs=1e-12), name
    fd_r = (float(f(paper_latency, 9.3 + 1e-6)) - float(f(paper_latency, 9.3 - 1e-6))) / 2e-6
    assert float(g_r) == pytest.approx(fd_r, rel=1e-6)
    # the barrier approximation: zero variance gives the mean field; noise lengthens the period
    zero = Empirical([600.0], [1])
    for r in (1.0, 4.0, 9.0):
        assert float(pipeline_barrier_cycle_time(zero, paper_latency, B, r, m)) == pytest.approx(
            float(pipeline_cycle_time(zero, paper_latency, B, r, m)), rel=1e-12
        )
        assert float(pipeline_barrier_cycle_time(wl, paper_latency, B, r, m)) >= float(
            pipeline_cycle_time(wl, paper_latency, B, r, m)
        ) * (1 - 1e-12)


def test_micro_batch_sizes():
    for B in (1, 7, 10, 256):
        for m in range(1, min(B, 9) + 1):
            sizes = micro_batch_sizes(B, m)
            assert sizes.sum() == B and sizes.max() - sizes.min() <= 1
            np.testing.assert_array_equal(sizes, np.bincount(np.arange(B) % m, minlength=m))


# ====================================================== (c) engine vs references: exact
ZV_LAT = dict(alpha_a=0.01, beta_a=2.0, alpha_f=0.3, beta_f=1.5, alpha_c=0.05, beta_c=0.7)


@pytest.mark.parametrize(
    "m, comm_scaling", [(1, "batch"), (3, "ratio_batch"), pytest.param(2, "batch", marks=pytest.mark.slow)]
)
def test_zero_variance_matches_event_driven_exactly(m, comm_scaling):
    """Constant loads (every request: P = 37 tokens, D = 1): engine == event-driven
    pipeline at every ratio, unequal micro-batches (B = 10, m = 3: 4, 3, 3 slots)."""
    lat = dict(ZV_LAT, comm_scaling=comm_scaling)
    B, P, ratios, K, W, R = 10, 37.0, list(range(1, 7)), 40, 5, 2
    res = afdjax.simulate(
        jax.random.key(0), Empirical([P], [1]), LatencyModel(**lat), B, ratios, K, R, warmup_steps=W, micro_batches=m
    )
    sizes = micro_batch_sizes(B, m).astype(float)
    loads = np.broadcast_to((P * sizes)[None, None, :, None], (R, max(ratios), m, W + K))
    ref = simulate_reference_pipeline(None, None, lat, B, ratios, K, R, m, warmup_steps=W, loads=loads)
    np.testing.assert_allclose(_np(res.throughput_per_instance), ref["throughput_per_instance"], rtol=1e-10)
    np.testing.assert_allclose(_np(res.throughput_per_replica), ref["throughput_per_replica"], rtol=1e-10)
    np.testing.assert_allclose(_np(res.mean_cycle_time), ref["mean_cycle_time"], rtol=1e-10)
    np.testing.assert_allclose(_np(res.attention_idle_fraction), ref["attention_idle_fraction"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(res.ffn_idle_fraction), ref["ffn_idle_fraction"], rtol=1e-10, atol=1e-12)
    ct = ref["cycle_times"]  # (R, n, K)
    np.testing.assert_allclose(_np(res.cycle_time_std), ct.std(axis=(0, 2)), rtol=1e-6, atol=1e-6 * ct.mean())
    q = _np(res.cycle_time_quantiles)
    assert np.all(q >= ct.min(axis=(0, 2))[:, None] * (1 - 1e-12))
    assert np.all(q <= ct.max(axis=(0, 2))[:, None] * (1 + 1e-12))
    assert res.micro_batches == m
    # after the fill, the steady state is the cyclic-queue period with the equal-size
    # closed form exact when m divides B (m = 1), and bounded by the largest group's
    t_a = ZV_LAT["alpha_a"] * P * sizes + ZV_LAT["beta_a"]
    for i, r in enumerate(ratios):
        t_f = ZV_LAT["alpha_f"] * r * sizes + ZV_LAT["beta_f"]
        t_c = ZV_LAT["alpha_c"] * (sizes if comm_scaling == "batch" else r * sizes) + ZV_LAT["beta_c"]
        upper = float(pipeline_period(t_a.max(), t_c.max(), t_f.max(), m))
        lower = float(pipeline_period(t_a.min(), t_c.min(), t_f.min(), m))
        late = ct[0, i, K // 2 :].mean()
        assert lower * (1 - 1e-9) <= late <= upper * (1 + 1e-9), (r, lower, late, upper)
        if np.all(sizes == sizes[0]):  # equal micro-batches: exactly the closed form at the mean load
            assert late == pytest.approx(upper, rel=1e-10)
            closed = pipeline_cycle_time(Empirical([P], [1]), LatencyModel(**lat), B, r, m)
            assert late == pytest.approx(float(closed), rel=1e-10)
    # KV statistics: every instance always holds exactly B P tokens
    np.testing.assert_allclose(_np(res.kv_load_quantiles), B * P, rtol=1e-12)
    assert float(res.kv_load_min_tokens) == float(res.kv_load_max_tokens) == pytest.approx(B * P, rel=1e-12)
    assert res.kv_exceedance_probability(B * P) == 0.0
    assert res.kv_exceedance_probability(B * P - 1) == 1.0


def _replay_group_loads(key, spec, B, r_max, K, R, start, W, m):
    """The engine's random numbers replayed step by step: loads (R, r_max, m, W + K)."""
    kw = np.asarray(jax.random.bits(key, (2,), dtype=jnp.uint32))
    rep = np.arange(R)[:, None, None]
    packed = (np.arange(r_max)[None, :, None] << 16) | np.arange(B)[None, None, :]
    k1, k2 = _threefry(kw[0], kw[1], rep, packed)
    b0 = _threefry(k1, k2, 0, 0)
    if start == "stationary":
        b1 = _threefry(k1, k2, 0, 1)
        pre, dec, idx = spec.stationary((b0[0], b0[1], b1[0], b1[1]))
    else:
        pre, dec = spec.fresh(b0[0], b0[1])
        idx = np.zeros_like(dec)
    pre, dec, idx = (np.array(a) for a in (pre, dec, idx))
    n = np.arange(1, W + K + 3)
    bd, bp = _threefry(k1[..., None], k2[..., None], n, 0)
    new_pre, new_dec = spec.fresh(bd, bp)
    counter = np.zeros((R, r_max, B), dtype=np.int64)
    loads = np.empty((R, r_max, m, W + K))
    for step in range(W + K):
        for g in range(m):
            loads[:, :, g, step] = (pre + idx)[:, :, g::m].sum(axis=2)
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


REPLAY_LAT = dict(alpha_a=0.05, beta_a=1.0, alpha_f=0.7, beta_f=2.0, alpha_c=0.1, beta_c=1.0)


@pytest.mark.parametrize("m", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_engine_equals_event_driven_replay(m):
    """Random loads, the engine's own random numbers replayed: every metric equals the
    event-driven pipeline on them (chunked, so the pipeline state crosses chunks)."""
    B, ratios, K, R, W = 8, [1, 2, 3], 150, 3, 9
    key = jax.random.key(5)
    wl = Geometric(40.0, 20.0, prefill="exponential")
    res = afdjax.simulate(
        key,
        wl,
        LatencyModel(**REPLAY_LAT),
        B,
        ratios,
        K,
        R,
        start="cold",
        warmup_steps=W,
        micro_batches=m,
        chunk_steps=32,
    )
    loads = _replay_group_loads(key, _GeoSpec(40.0, 20.0, "exponential"), B, 3, K, R, "cold", W, m)
    ref = simulate_reference_pipeline(None, None, REPLAY_LAT, B, ratios, K, R, m, warmup_steps=W, loads=loads)
    for name in ("throughput_per_instance", "throughput_per_replica", "mean_cycle_time", "stderr"):
        np.testing.assert_allclose(_np(getattr(res, name)), ref[name], rtol=1e-10, err_msg=name)
    np.testing.assert_allclose(_np(res.attention_idle_fraction), ref["attention_idle_fraction"], rtol=1e-10)
    np.testing.assert_allclose(_np(res.ffn_idle_fraction), ref["ffn_idle_fraction"], rtol=1e-10, atol=1e-12)
    ct = ref["cycle_times"]
    np.testing.assert_allclose(_np(res.cycle_time_std), ct.std(axis=(0, 2)), rtol=1e-6)
    # bubble: 1 - busiest resource's busy time / elapsed (computed here from the loads)
    sizes = micro_batch_sizes(B, m)
    att = REPLAY_LAT["alpha_a"] * loads[..., W:] + REPLAY_LAT["beta_a"]  # (R, r_max, m, K)
    per_instance = att.sum(axis=(0, 2, 3))  # (r_max,)
    for i, r in enumerate(ratios):
        ffn = R * K * np.sum(REPLAY_LAT["alpha_f"] * r * sizes + REPLAY_LAT["beta_f"])
        link = R * K * np.sum(REPLAY_LAT["alpha_c"] * sizes + REPLAY_LAT["beta_c"])
        busiest = max(per_instance[:r].max(), ffn, link)
        elapsed = ref["elapsed"][:, i].sum()
        assert float(res.pipeline_bubble_fraction[i]) == pytest.approx(1 - busiest / elapsed, rel=1e-10, abs=1e-12)
        assert float(res.link_idle_fraction[i]) == pytest.approx(1 - link / elapsed, rel=1e-10)
    # KV statistics pooled over the r_max instances and replicas
    kv = loads[..., W:].sum(axis=2).ravel()
    assert float(res.kv_load_min_tokens) == pytest.approx(kv.min(), rel=1e-12)
    assert float(res.kv_load_max_tokens) == pytest.approx(kv.max(), rel=1e-12)
    _check_kv_quantiles(res, np.sort(kv))


def _check_kv_quantiles(res, kv_sorted):
    edges = _np(res.kv_load_bin_edges_tokens)
    dlog = math.log(edges[1] / edges[0])
    n = kv_sorted.size
    for level, q in zip(_np(res.quantile_levels), _np(res.kv_load_quantiles)):
        x = kv_sorted[math.ceil(level * n) - 1]
        assert abs(math.log(q) - math.log(x)) <= dlog * (1 + 1e-9), (level, q, x)
    for cap in np.quantile(kv_sorted, [0.1, 0.5, 0.9, 0.99]):
        exact = np.mean(kv_sorted > cap)
        # interpolation error: at most the mass of the bins around the capacity
        lo, hi = cap * math.exp(-dlog), cap * math.exp(dlog)
        mass = np.mean((kv_sorted >= lo) & (kv_sorted <= hi))
        assert abs(res.kv_exceedance_probability(cap) - exact) <= mass + 1e-12, (cap, exact)
    assert res.kv_exceedance_probability(kv_sorted[-1]) == 0.0
    assert res.kv_exceedance_probability(10 * kv_sorted[-1]) == 0.0
    assert res.kv_exceedance_probability(0.5 * kv_sorted[0]) == 1.0
    p = res.kv_exceedance_probability(np.array([kv_sorted[0] * 0.5, np.median(kv_sorted), kv_sorted[-1]]))
    assert p.shape == (3,) and p[0] == 1.0 and p[2] == 0.0 and 0.4 < p[1] < 0.6


# ================================================== (c) engine vs reference: statistical
STAT_LAT = dict(alpha_a=48.0 / (12 * 150.0), beta_a=2.0, alpha_f=0.6, beta_f=3.0, alpha_c=0.08, beta_c=1.0)
STAT = dict(B=12, ratios=[1, 2, 4], K=600, R=16)


@pytest.mark.parametrize("m", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_engine_matches_reference_statistically(m):
    wl = Geometric(100.0, 50.0, prefill="lognormal", prefill_sigma=1.0)
    ref_wl = dict(kind="geometric", mu_p=100.0, mu_d=50.0, prefill="lognormal", prefill_sigma=1.0)
    B, ratios, K, R = STAT["B"], STAT["ratios"], STAT["K"], STAT["R"]
    res = afdjax.simulate(jax.random.key(31 + m), wl, LatencyModel(**STAT_LAT), B, ratios, K, R, micro_batches=m)
    ref = simulate_reference_pipeline(
        np.random.default_rng(41 + m), ref_wl, STAT_LAT, B, ratios, K, R, m, warmup_steps=2 * m
    )  # the engine's default warm-up
    thr, se = _np(res.throughput_per_instance), _np(res.stderr)
    for i, r in enumerate(ratios):
        comb = math.hypot(se[i], ref["stderr"][i])
        assert comb > 0
        ref_thr = ref["throughput_per_instance"][i]
        assert abs(thr[i] - ref_thr) <= Z_TWO * comb, (r, thr[i], ref_thr)
        # attention idle: ratio estimator over replicas (SE from the reference's replicas)
        busy = (STAT_LAT["alpha_a"] * ref["group_loads"][:, :r] + STAT_LAT["beta_a"]).sum(axis=(1, 2, 3))
        x, y = busy, r * ref["elapsed"][:, i]
        rhat = x.sum() / y.sum()
        se_a = np.sqrt(np.sum((x - rhat * y) ** 2) / (R * (R - 1))) / y.mean()
        ai = float(res.attention_idle_fraction[i])
        assert abs(ai - ref["attention_idle_fraction"][i]) <= Z_TWO * math.sqrt(2) * se_a + 1e-12
    # KV loads: P(T > q_ref(level)) from the engine's histogram against the level
    kv = ref["instance_loads"]  # (R, r_max, K)
    for level in (0.5, 0.9, 0.99):
        cap = np.quantile(kv, level)
        per_replica = (kv > cap).mean(axis=(1, 2))
        se_p = per_replica.std(ddof=1) / math.sqrt(R)
        p = res.kv_exceedance_probability(cap)
        assert abs(p - (kv > cap).mean()) <= Z_TWO * math.sqrt(2) * se_p + 0.003, (level, p)


# ========================================================== (d) gradients vs differences
def test_pipeline_throughput_gradients_match_finite_differences():
    """d throughput / d coefficient through simulate(micro_batches=2), pathwise with common
    random numbers, against central differences (the path is piecewise linear in the
    coefficients; a small step crosses no kink)."""
    base = dict(alpha_a=0.02, beta_a=1.5, alpha_f=0.5, beta_f=2.5, alpha_c=0.3, beta_c=1.2)
    wl = Geometric(40.0, 20.0, prefill="exponential")
    kwargs = dict(max_ratio=3, chunk_steps=64, requests_per_chunk=48, micro_batches=2, start="cold", warmup_steps=5)

    def f(lat):
        return afdjax.expected_throughput(jax.random.key(2), wl, lat, 8, 2.0, 150, 3, **kwargs)

    lat0 = LatencyModel(**base)
    # reverse mode through the checkpointed chunks and the pipeline scan, via the public
    # throughput_gradients (which passes micro_batches through to simulate)
    tg = afdjax.throughput_gradients(
        jax.random.key(2), wl, lat0, 8, 2.0, 150, 3, micro_batches=2, start="cold", warmup_steps=5
    )
    grads = tg.latency
    fj = jax.jit(f)
    assert float(tg.value) == pytest.approx(float(fj(lat0)), rel=1e-10)
    nonzero = 0
    for name in COEF_NAMES:
        v = base[name]
        h = 1e-6 * v
        fd = (
            float(fj(LatencyModel(**dict(base, **{name: v + h}))))
            - float(fj(LatencyModel(**dict(base, **{name: v - h}))))
        ) / (2 * h)
        g = float(getattr(grads, name))
        assert g == pytest.approx(fd, rel=1e-5, abs=1e-10), (name, g, fd)
        nonzero += g != 0
    assert nonzero >= 4  # several stages bind somewhere along the path


# ======================================================= (e) API, validation, compiles
SMALL = dict(batch_size=8, ratios=[1, 2, 3], num_steps=60, num_replicas=2)


def test_micro_batches_none_is_the_barrier_step():
    wl = Geometric(40.0, 20.0)
    lat = LatencyModel(**REPLAY_LAT)
    default = afdjax.simulate(jax.random.key(1), wl, lat, **SMALL)
    explicit = afdjax.simulate(jax.random.key(1), wl, lat, **SMALL, micro_batches=None)
    assert default.micro_batches is None
    for field in ("throughput_per_instance", "mean_cycle_time", "cycle_time_quantiles", "attention_idle_fraction"):
        np.testing.assert_array_equal(_np(getattr(default, field)), _np(getattr(explicit, field)))
    # the barrier step is the idealised overlap: m = 1 (sequential) is slower at every ratio
    # (same measured steps: the pipeline's default warm-up would skip its fill)
    seq = afdjax.simulate(jax.random.key(1), wl, lat, **SMALL, micro_batches=1, warmup_steps=0)
    assert np.all(_np(seq.mean_cycle_time) > _np(default.mean_cycle_time))
    # same loads whatever m (common random numbers)
    assert float(seq.mean_slot_load_tokens) == pytest.approx(float(default.mean_slot_load_tokens), rel=1e-12)
    np.testing.assert_array_equal(_np(seq.kv_load_histogram), _np(default.kv_load_histogram))
    d = seq.to_dict()
    assert d["micro_batches"] == 1 and default.to_dict()["micro_batches"] is None
    for key in ("pipeline_bubble_fraction", "link_idle_fraction", "kv_load_quantiles", "kv_load_max_tokens"):
        assert key in d
    json.dumps(d)
    sub = afdjax.simulate(jax.random.key(1), wl, lat, **dict(SMALL, ratios=[3, 1]), micro_batches=1, warmup_steps=0)
    np.testing.assert_allclose(_np(sub.pipeline_bubble_fraction), _np(seq.pipeline_bubble_fraction)[[2, 0]], rtol=1e-12)


def test_step_model_objects_are_the_micro_batches_spellings():
    """``Barrier()`` is ``micro_batches=None`` and ``Pipeline(m)`` is ``micro_batches=m``,
    bit for bit; contradicting spellings are refused."""
    wl = Geometric(40.0, 20.0)
    lat = LatencyModel(**REPLAY_LAT)
    for model, m in ((afdjax.Barrier(), None), (afdjax.Pipeline(micro_batches=2), 2)):
        a = afdjax.simulate(jax.random.key(1), wl, lat, **SMALL, step_model=model)
        b = afdjax.simulate(jax.random.key(1), wl, lat, **SMALL, micro_batches=m)
        assert a.micro_batches == b.micro_batches == m and a.step_model == b.step_model == model
        for field in (
            "throughput_per_instance",
            "mean_cycle_time",
            "cycle_time_quantiles",
            "attention_idle_fraction",
            "ffn_idle_fraction",
            "link_idle_fraction",
            "pipeline_bubble_fraction",
            "kv_load_histogram",
        ):
            np.testing.assert_array_equal(_np(getattr(a, field)), _np(getattr(b, field)))
    assert (
        afdjax.simulate(
            jax.random.key(1), wl, lat, **SMALL, step_model=afdjax.Pipeline(2), micro_batches=2
        ).micro_batches
        == 2
    )
    with pytest.raises(ValueError, match="contradicts"):
        afdjax.simulate(jax.random.key(1), wl, lat, **SMALL, step_model=afdjax.Barrier(), micro_batches=2)
    with pytest.raises(ValueError, match="step_model"):
        afdjax.simulate(jax.random.key(1), wl, lat, **SMALL, step_model="pipeline")
    assert isinstance(afdjax.Pipeline(3), afdjax.StepModel) and afdjax.Pipeline(3).micro_batches == 3
    with pytest.raises(ValueError, match="micro_batches"):
        afdjax.Pipeline(0)


def test_step_model_closed_forms_are_the_functions(paper_latency):
    wl, B = Geometric(100.0, 500.0), 64
    bar, pipe = afdjax.Barrier(), afdjax.Pipeline(3)
    for r in (1.0, 2.5, 9.0):
        assert float(bar.cycle_time(wl, paper_latency, B, r)) == float(
            afdjax.mean_field_cycle_time(wl, paper_latency, B, r)
        )
        assert float(bar.barrier_throughput(wl, paper_latency, B, r)) == float(
            afdjax.barrier_throughput(wl, paper_latency, B, r)
        )
        assert float(pipe.cycle_time(wl, paper_latency, B, r)) == float(pipeline_cycle_time(wl, paper_latency, B, r, 3))
        assert float(pipe.throughput(wl, paper_latency, B, r)) == float(pipeline_throughput(wl, paper_latency, B, r, 3))
    assert "idealised" in bar.describe() and "3 micro-batch" in pipe.describe()
    assert set(pipe.ratio_optima(wl, paper_latency, B, 8)["mean_field_extra"]) == {"r_star_pipeline"}
    assert bar.ratio_optima(wl, paper_latency, B, 8)["mean_field_extra"] == {}
    assert bar.default_warmup_steps() == 0 and pipe.default_warmup_steps() == 6


@pytest.mark.slow  # 9 s a case; the pipeline engine is checked against its event-driven replay by default
@pytest.mark.parametrize("m", [2, 3])
def test_default_warmup_excludes_the_pipeline_fill(m):
    """Constant loads (every request P tokens, D = 1) and equal micro-batches: every step
    after the fill takes exactly the closed-form period, so the default measurement is
    unbiased while measuring from time 0 is not (the first step carries the fill)."""
    B, P, K, R, ratios = 12, 37.0, 50, 2, [1, 2, 5]
    wl, lat = Empirical([P], [1]), LatencyModel(**ZV_LAT)
    default = afdjax.simulate(jax.random.key(0), wl, lat, B, ratios, K, R, micro_batches=m)
    from_zero = afdjax.simulate(jax.random.key(0), wl, lat, B, ratios, K, R, micro_batches=m, warmup_steps=0)
    for i, r in enumerate(ratios):
        closed = float(pipeline_cycle_time(wl, lat, B, r, m))
        assert float(default.mean_cycle_time[i]) == pytest.approx(closed, rel=1e-12)
        assert float(from_zero.mean_cycle_time[i]) > closed * (1 + 1e-3)  # the fill, spread over K steps
    # an explicit warm-up keeps its numbers; the barrier's default is 0 (bit for bit)
    explicit = afdjax.simulate(jax.random.key(0), wl, lat, B, ratios, K, R, micro_batches=m, warmup_steps=2 * m)
    np.testing.assert_array_equal(_np(explicit.mean_cycle_time), _np(default.mean_cycle_time))
    barrier = afdjax.simulate(jax.random.key(0), Geometric(40.0, 20.0), lat, B, ratios, K, R)
    barrier0 = afdjax.simulate(jax.random.key(0), Geometric(40.0, 20.0), lat, B, ratios, K, R, warmup_steps=0)
    np.testing.assert_array_equal(_np(barrier.throughput_per_replica), _np(barrier0.throughput_per_replica))


@pytest.mark.parametrize("bad", [0, -1, 2.5, 9, True, "2"])
def test_bad_micro_batches_raise(bad):
    with pytest.raises(ValueError, match="micro_batches"):
        afdjax.simulate(jax.random.key(0), Geometric(4.0, 4.0), LatencyModel(**REPLAY_LAT), **SMALL, micro_batches=bad)


def test_one_compilation_for_all_ratios(monkeypatch, caplog):
    count = {"traces": 0}
    original = engine.replica_sums

    def counting(*args, **kwargs):
        count["traces"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "replica_sums", counting)
    caplog.set_level(logging.DEBUG, logger="jax")
    sizes = dict(chunk_steps=32, requests_per_chunk=32, num_bins=2051, micro_batches=2)
    with jax.log_compiles():
        afdjax.simulate(
            jax.random.key(0), Geometric(40.0, 20.0), LatencyModel(**REPLAY_LAT), 8, range(1, 6), 60, 2, **sizes
        )
        afdjax.simulate(
            jax.random.key(1),
            Geometric(45.0, 21.0),
            LatencyModel(**dict(REPLAY_LAT, beta_f=3.0)),
            8,
            [5, 2],
            60,
            2,
            **sizes,
        )
    compiles = sum(
        1 for rec in caplog.records if "Compiling" in rec.getMessage() and "_simulate_jit" in rec.getMessage()
    )
    assert (count["traces"], compiles) == (1, 1)


_F32_SCRIPT = textwrap.dedent(
    """
    import json, jax, numpy as np, afdjax
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    wl = afdjax.Geometric(100.0, 500.0, prefill="lognormal")
    res = afdjax.simulate(jax.random.key(0), wl, lat, 32, [1, 2, 4, 8], 12000, 2, micro_batches=3)
    print(json.dumps({"dtype": str(res.throughput_per_instance.dtype),
                      "thr": np.asarray(res.throughput_per_instance).tolist(),
                      "bubble": np.asarray(res.pipeline_bubble_fraction).tolist()}))
    """
)


@pytest.mark.slow  # long run; the default suite covers the path with a smaller case
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
        res = afdjax.simulate(jax.random.key(0), wl, paper_latency, 32, [1, 2, 4, 8], 12000, 2, micro_batches=3)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    f32 = json.loads(out.strip().splitlines()[-1])
    assert f32["dtype"] == "float32"
    np.testing.assert_allclose(f32["thr"], _np(res.throughput_per_instance), rtol=3e-5)
    np.testing.assert_allclose(f32["bubble"], _np(res.pipeline_bubble_fraction), atol=3e-5)


# ================================================================== CLI and reports
CLI_SMALL = ["--batch-size", "16", "--ratios", "1:4", "--steps", "200", "--replicas", "3"]


@pytest.mark.slow  # test_golden.py compares `simulate --micro-batches 2` with saved output by default
def test_cli_simulate_micro_batches(capsys):
    assert main(["simulate", *CLI_SMALL, "--micro-batches", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["micro_batches"] == 2 and out["settings"]["micro_batches"] == 2
    assert out["settings"]["warmup_steps"] == 4  # the step model's default: the fill is excluded
    r = np.array(out["ratios"])
    np.testing.assert_allclose(
        np.array(out["throughput_per_instance"]) * (r + 1) * np.array(out["mean_cycle_time"]), r * 16, rtol=1e-5
    )
    assert main(["simulate", *CLI_SMALL, "--micro-batches", "2"]) == 0
    text = capsys.readouterr().out
    assert "micro-batch" in text and "bubble" in text


@pytest.mark.parametrize("value", ["0", "x", "2.5", "17"])
def test_cli_bad_micro_batches(capsys, value):
    code = main(["simulate", *CLI_SMALL, "--micro-batches", value])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "micro" in err and "Traceback" not in err


def test_cli_help_mentions_idealised_default(capsys):
    with pytest.raises(SystemExit):
        main(["provision", "--help"])
    out = capsys.readouterr().out
    assert "--micro-batches" in out and "ideal" in out


@pytest.mark.slow  # provision with m = 2; test_cli_simulate_micro_batches covers the pipelined CLI
def test_provision_with_micro_batches(paper_latency):
    wl = Geometric(100.0, 500.0)
    rep = afdjax.provision(jax.random.key(0), wl, paper_latency, 64, range(1, 9), 300, 3, micro_batches=2)
    d = rep.to_dict()
    assert d["settings"]["micro_batches"] == 2
    rf = np.arange(1, 9, dtype=float)
    mf = np.array([row["mean_field"] for row in d["table"]])
    np.testing.assert_allclose(
        mf, _np(jax.vmap(lambda r: pipeline_throughput(wl, paper_latency, 64, r, 2))(rf)), rtol=1e-12
    )
    assert d["ratio_mean_field"] == int(np.argmax(mf)) + 1
    assert "micro-batch" in rep.format_text()
