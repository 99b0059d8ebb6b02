"""Open-loop serving (issue 14): the engine against an independent per-step NumPy reference
(:mod:`tests.test_serve_reference`), its limits, and bad input.

The default tests share one compiled shape (``B = 4``, ratios ``[1, 3]``, Poisson arrivals,
``STEPS`` x ``REPLICAS``; a KV capacity is a traced value) plus a trace replay; the
many-replica and saturation variants are ``slow``.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from test_serve_reference import run_bundle, summarise

import afdjax
from afdjax._serve import GammaArrivals, TraceArrivals, load_arrival_trace, read_arrival_times, serve

COEF = dict(alpha_a=0.05, beta_a=5.0, alpha_f=0.5, beta_f=10.0, alpha_c=0.1, beta_c=2.0)
LAT = afdjax.LatencyModel(**COEF)
WORKLOAD = afdjax.Uniform(50, 150, 5, 15)
B, RATIOS, STEPS, REPLICAS = 4, [1, 3], 3000, 8
RATES = [0.002, 0.008, 0.011]
PREFILL_BETA, SLO_TPOT, SLO_TTFT = 3.0, 16.0, 40.0
BIN_WIDTH = {"tpot": math.log(1e6) / 4096, "ttft": math.log(1e10) / 4096}  # _kernel's spans, 4096 bins
COMPARED = (
    "throughput_per_instance",
    "goodput_per_instance",
    "tpot_mean",
    "tpot_p99",
    "ttft_mean",
    "ttft_p99",
    "mean_queue_length",
    "mean_in_system",
)


def _uniform_lengths(rng, n):
    return float(rng.integers(50, 151)), int(rng.integers(5, 16))


def _exp_gap(rng, n):
    return rng.exponential()


def _engine(kv=None, rates=RATES, **kw):
    return serve(
        jax.random.key(1),
        WORKLOAD,
        LAT,
        B,
        RATIOS,
        rates,
        STEPS,
        REPLICAS,
        kv_capacity=kv,
        prefill_beta=PREFILL_BETA,
        slo_tpot=SLO_TPOT,
        slo_ttft=SLO_TTFT,
        **kw,
    )


def _reference(
    r, rate, seed, kv=math.inf, lengths=_uniform_lengths, gap=_exp_gap, warmup=None, steps=STEPS, reps=REPLICAS
):
    rng = np.random.default_rng(seed)
    warmup = 64 if warmup is None else warmup
    runs = [
        run_bundle(
            rng,
            r,
            B,
            rate,
            steps,
            warmup,
            COEF,
            lengths,
            gap,
            kv_capacity=kv,
            prefill_beta=PREFILL_BETA,
            slo_tpot=SLO_TPOT,
            slo_ttft=SLO_TTFT,
        )
        for _ in range(reps)
    ]
    return summarise(runs, r)


def _engine_value(res, name, i, k):
    if name in ("tpot_p99", "ttft_p99"):
        return float(np.asarray(getattr(res, name))[i, k]), float(np.asarray(getattr(res, name + "_stderr"))[i, k])
    se_name = {"throughput_per_instance": "stderr", "goodput_per_instance": "goodput_stderr"}.get(
        name, name + "_stderr"
    )
    return float(np.asarray(getattr(res, name))[i, k]), float(np.asarray(getattr(res, se_name))[i, k])


def _compare(res, ref, i, k, names=COMPARED):
    label = f"ratio {res.ratios[i]}, rate {res.arrival_rates[k]}"
    bad = []
    for name in names:
        e, se_e = _engine_value(res, name, i, k)
        v, se_r = ref[name]
        if name.endswith("_p99"):  # the histogram's resolution: one log-spaced bin
            se_e = math.hypot(se_e, e * BIN_WIDTH[name[:4]])
        z = abs(e - v) / math.sqrt(se_e**2 + se_r**2)
        if not z <= 3.0:
            bad.append(f"{name}: engine {e:.6g} +- {se_e:.3g}, reference {v:.6g} +- {se_r:.3g} (z = {z:.1f})")
    assert not bad, f"{label}:\n" + "\n".join(bad)


@pytest.fixture(scope="module")
def unlimited():
    return _engine()


@pytest.fixture(scope="module")
def kv_bound():
    return _engine(kv=250.0)


@pytest.mark.parametrize("i, k", [(0, 1), (1, 2)])
def test_matches_reference_poisson(unlimited, i, k):
    _compare(unlimited, _reference(RATIOS[i], RATES[k], seed=10 + 3 * i + k), i, k)


def test_matches_reference_kv_capacity_bound(kv_bound, unlimited):
    i, k = 1, 1
    # the capacity binds: fewer occupied slots and a longer queue than without it
    assert kv_bound.mean_occupied_slots[i, k] < 0.9 * unlimited.mean_occupied_slots[i, k]
    assert kv_bound.mean_queue_length[i, k] > 2 * unlimited.mean_queue_length[i, k]
    _compare(kv_bound, _reference(RATIOS[i], RATES[k], seed=20, kv=250.0), i, k)


def test_light_load_littles_law_and_throughput(unlimited):
    """At light load: requests in the bundle = r X x mean sojourn (2 %); throughput per
    instance = r X E[D] / (r + 1) (3 standard errors)."""
    k = 0
    ED = 10.0
    for i, r in enumerate(RATIOS):
        lam = r * RATES[k]
        little = float(unlimited.mean_in_system[i, k]) / (lam * float(unlimited.mean_sojourn_time[i, k]))
        assert abs(little - 1.0) < 0.02, (r, little)
        want = lam * ED / (r + 1)
        got, se = float(unlimited.throughput_per_instance[i, k]), float(unlimited.stderr[i, k])
        assert abs(got - want) < 3 * se + 0.01 * want, (r, got, want, se)
        assert not bool(unlimited.saturated[i, k])


def test_result_fields_and_settings(unlimited):
    assert unlimited.throughput_per_instance.shape == (2, 3)
    assert unlimited.tpot_quantiles.shape == (2, 3, 3)
    np.testing.assert_allclose(np.asarray(unlimited.arrival_rate_total), np.outer(RATIOS, RATES))
    assert unlimited.settings["policy"] == "balanced"
    assert np.all(np.asarray(unlimited.utilisation_attention) <= 1.0 + 1e-9)
    assert np.all(np.asarray(unlimited.goodput_per_instance) <= np.asarray(unlimited.throughput_per_instance) + 1e-12)
    # common random numbers: a rate's column does not depend on the other rates (nor on the
    # targets); far above capacity the queue grows (saturated) and every slot stays occupied;
    # without targets every token is good: goodput is the throughput
    one = serve(
        jax.random.key(1), WORKLOAD, LAT, B, RATIOS, [RATES[1], 0.05, 0.2], STEPS, REPLICAS, prefill_beta=PREFILL_BETA
    )
    np.testing.assert_array_equal(np.asarray(one.goodput_per_instance), np.asarray(one.throughput_per_instance))
    assert np.all(np.asarray(one.saturated)[:, 1:]) and not np.any(np.asarray(one.saturated)[:, 0])
    assert np.all(np.asarray(one.mean_occupied_slots)[:, 2] > B - 0.01)
    np.testing.assert_allclose(
        np.asarray(one.throughput_per_instance)[:, 0], np.asarray(unlimited.throughput_per_instance)[:, 1], rtol=1e-12
    )


# ------------------------------------------------------------------------- trace replay
TRACE_T = np.cumsum(np.random.default_rng(5).choice([0.0, 0.2, 3.0], size=400, p=[0.3, 0.5, 0.2]))
TRACE_P = np.random.default_rng(6).integers(20, 200, size=400).astype(float)
TRACE_D = np.random.default_rng(7).integers(3, 20, size=400)


def test_trace_replay_matches_reference():
    trace = TraceArrivals(TRACE_T, TRACE_P, TRACE_D)
    rate = 0.009
    res = serve(
        jax.random.key(2),
        None,
        LAT,
        B,
        [3],
        [rate],
        STEPS,
        REPLICAS,
        arrivals=trace,
        prefill_beta=PREFILL_BETA,
        slo_tpot=SLO_TPOT,
        slo_ttft=SLO_TTFT,
    )
    gaps = np.append(np.diff(TRACE_T), (TRACE_T[-1] - TRACE_T[0]) / 399)
    gaps = gaps / gaps.mean()
    offsets = {}

    def start(rng, n):
        if n == 0:
            offsets["o"] = int(rng.integers(0, 400))
        return gaps[(offsets["o"] + n - 1) % 400]

    def lengths(rng, n):
        row = (offsets["o"] + n) % 400
        return float(TRACE_P[row]), int(TRACE_D[row])

    _compare(res, _reference(3, rate, seed=30, lengths=lengths, gap=start), 0, 0)


def test_bundled_trace_timestamps(azure_conv_path, mooncake_conv_path):
    t = read_arrival_times("azure-conv")
    assert t.size > 1000 and np.all(np.diff(t) >= 0)
    assert abs((t[1] - t[0]) - (50.9951690 - 46.6805900)) < 1e-5  # the CSV's first two TIMESTAMPs
    m = read_arrival_times(mooncake_conv_path)
    assert m[0] == 0.0 and m[-1] > 0  # milliseconds converted to seconds
    arrivals = load_arrival_trace("azure-code")
    assert arrivals.has_lengths() and arrivals.num_requests > 100
    assert abs(float(np.mean(np.asarray(arrivals.gaps))) - 1.0) < 1e-9


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(arrival_rates=[0.0]), "arrival_rates=[0.0] is invalid: expected a non-empty list of finite numbers > 0"),
        (dict(arrival_rates=[-1.0]), "arrival_rates=[-1.0] is invalid"),
        (dict(arrival_rates=[]), "arrival_rates=[] is invalid"),
        (dict(slo_tpot=0.0), "slo_tpot=0.0 is invalid: expected a finite number > 0"),
        (dict(slo_ttft=-1.0), "slo_ttft=-1.0 is invalid: expected a finite number > 0"),
        (dict(kv_capacity=0.0), "kv_capacity=0.0 is invalid: expected a finite number > 0"),
        (
            dict(policy="fastest"),
            "policy='fastest' is invalid: expected one of balanced, least_kv, round_robin, random",
        ),
        (dict(ratios=[0]), "ratios=[0] is invalid"),
        (dict(arrivals="weibull"), "arrivals='weibull' is invalid"),
        (dict(step_model=afdjax.Pipeline(2)), "step_model="),
    ],
)
def test_bad_input(kwargs, fragment):
    args = dict(arrival_rates=[0.001], ratios=[1])
    args.update(kwargs)
    rates, ratios = args.pop("arrival_rates"), args.pop("ratios")
    with pytest.raises(ValueError) as err:
        serve(jax.random.key(0), WORKLOAD, LAT, B, ratios, rates, 10, 2, **args)
    assert fragment in str(err.value)


def test_bad_traces(tmp_path):
    with pytest.raises(ValueError, match="no timestamps"):
        p = tmp_path / "t.csv"
        p.write_text("ContextTokens,GeneratedTokens\n10,2\n20,3\n")
        load_arrival_trace(p)
    with pytest.raises(ValueError, match="no records"):
        p = tmp_path / "e.csv"
        p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
        load_arrival_trace(p)
    with pytest.raises(ValueError, match="timestamps"):
        TraceArrivals([])
    with pytest.raises(ValueError, match="cv=0.0 is invalid"):
        GammaArrivals(0.0)


# ------------------------------------------------------------------------- limits
@pytest.mark.slow  # compiles simulate as well; the saturation flag is checked by default above
def test_far_above_capacity_is_the_saturated_engine():
    """Far above capacity every slot is refilled at once: throughput per instance is
    ``simulate``'s (3 combined standard errors) and the rate is flagged saturated."""
    res = _engine(rates=[0.002, 0.05, 0.2])
    sim = afdjax.simulate(jax.random.key(3), WORKLOAD, LAT, B, RATIOS, STEPS, REPLICAS)
    assert not bool(res.saturated[1, 0])
    for i in range(len(RATIOS)):
        assert bool(res.saturated[i, 2]) and bool(res.saturated[i, 1])
        got, se = float(res.throughput_per_instance[i, 2]), float(res.stderr[i, 2])
        want, se_sim = float(sim.throughput_per_instance[i]), float(sim.stderr[i])
        assert abs(got - want) < 3 * math.hypot(se, se_sim), (RATIOS[i], got, want, se, se_sim)
        assert float(res.mean_occupied_slots[i, 2]) > B - 0.01


@pytest.mark.slow  # another compiled shape (one slot)
def test_one_slot_deterministic_is_md1():
    """One slot, deterministic lengths and stages: the M/D/1 queue (Pollaczek-Khinchine)."""
    wl = afdjax.Fixed(100.0, 5)
    S = 5 * 10.5  # every step is the FFN's alpha_f + beta_f
    rates = [0.006, 0.012, 0.016]
    res = serve(jax.random.key(4), wl, LAT, 1, [1], rates, 40000, 8)
    for k, lam in enumerate(rates):
        rho = lam * S
        wq = lam * S**2 / (2 * (1 - rho))
        got, se = float(res.ttft_mean[0, k]), float(res.ttft_mean_stderr[0, k])
        assert abs(got - wq) < 3 * se, (lam, got, wq, se)
        lq = lam * wq
        got, se = float(res.mean_queue_length[0, k]), float(res.mean_queue_length_stderr[0, k])
        assert abs(got - lq) < 3 * se, (lam, got, lq, se)
        np.testing.assert_allclose(float(res.tpot_mean[0, k]), 10.5, rtol=1e-12)
        np.testing.assert_allclose(float(res.mean_sojourn_time[0, k]), wq + S, rtol=0.05)
        np.testing.assert_allclose(float(res.throughput_per_instance[0, k]), lam * 5 / 2, rtol=0.03)


@pytest.mark.slow  # another compiled program (gamma arrivals) and a long reference
def test_gamma_arrivals_match_reference():
    """Bursty renewal arrivals (cv = 2): the engine's gamma quantile against NumPy's gamma."""
    cv = 2.0
    res = serve(
        jax.random.key(5),
        WORKLOAD,
        LAT,
        B,
        RATIOS,
        RATES,
        STEPS,
        REPLICAS,
        arrivals=GammaArrivals(cv),
        prefill_beta=PREFILL_BETA,
        slo_tpot=SLO_TPOT,
        slo_ttft=SLO_TTFT,
    )
    shape = 1 / cv**2

    def gap(rng, n):
        return rng.gamma(shape) / shape

    for i, k in ((0, 1), (1, 1)):
        _compare(res, _reference(RATIOS[i], RATES[k], seed=40 + i, gap=gap), i, k)


@pytest.mark.slow  # many replicas: the reference comparison with tighter standard errors
def test_matches_reference_many_replicas():
    res = serve(
        jax.random.key(6),
        WORKLOAD,
        LAT,
        B,
        RATIOS,
        RATES,
        STEPS,
        32,
        kv_capacity=250.0,
        prefill_beta=PREFILL_BETA,
        slo_tpot=SLO_TPOT,
        slo_ttft=SLO_TTFT,
    )
    for i, k in ((0, 0), (1, 1), (1, 2)):
        _compare(res, _reference(RATIOS[i], RATES[k], seed=50 + 3 * i + k, kv=250.0, reps=32), i, k)


@pytest.mark.slow  # one compiled program per policy
@pytest.mark.parametrize("policy", ["least_kv", "round_robin", "random"])
def test_other_policies_conserve_work(policy):
    """Every policy serves the same requests: below capacity the throughput is the arrival
    rate's (r X E[D] / (r + 1)) whatever the assignment."""
    res = serve(jax.random.key(7), WORKLOAD, LAT, B, RATIOS, RATES[:2], STEPS, REPLICAS, policy=policy)
    base = serve(jax.random.key(7), WORKLOAD, LAT, B, RATIOS, RATES[:2], STEPS, REPLICAS)
    assert res.settings["policy"] == policy
    for i, r in enumerate(RATIOS):
        for k, x in enumerate(RATES[:2]):
            want = r * x * 10.0 / (r + 1)
            got, se = float(res.throughput_per_instance[i, k]), float(res.stderr[i, k])
            assert abs(got - want) < 3 * se + 0.02 * want, (policy, r, x, got, want)
    # one instance: every policy makes the same choice (the same numbers); with three the
    # default's balance keeps the barrier lowest (random assignment unbalances the loads)
    np.testing.assert_allclose(np.asarray(res.tpot_mean)[0], np.asarray(base.tpot_mean)[0], rtol=1e-12)
    assert np.all(np.asarray(res.tpot_mean)[1] >= 0.98 * np.asarray(base.tpot_mean)[1])


@pytest.mark.slow  # simulate and several serve grids
def test_capacity_and_kv_stability_rate():
    from afdjax._serve import capacity, plan

    cap = capacity(
        jax.random.key(8),
        WORKLOAD,
        LAT,
        B,
        [1, 3],
        slo_tpot=20.0,
        num_steps=2000,
        num_replicas=4,
        kv_capacity=250.0,
        prefill_beta=PREFILL_BETA,
    )
    for i in range(2):
        assert 0 < cap.capacity_rate[i] < cap.saturated_rate[i]
        assert cap.limited_by[i] in ("saturation", "tpot")
        assert cap.tpot_p99_at_capacity[i] <= 20.0
        # the closed form uses the saturated (full-batch) step: a lower bound of the simulated KV-bound rate
        assert 0 < cap.kv_stability_rate[i] <= 1.05 * cap.kv_simulated_rate[i]
    p = plan(cap, 1.0)
    assert p.best_ratio in (1, 3) and p.best_instances == min(p.instances)


@pytest.mark.slow  # four compiled programs
@pytest.mark.parametrize("policy", ["balanced", "random"])
def test_ratio_groups_change_no_number(monkeypatch, policy):
    """Ratios simulated in padded groups (8, 16, 17 instances here) give every number of
    one group padded to r_max, bit for bit, in the caller's ratio order."""
    from afdjax._serve import _serve as serve_module

    ratios = [17, 1, 9, 3]
    assert serve_module.ratio_groups(ratios) == [(8, [1, 3]), (16, [2]), (17, [0])]

    def run():
        res = serve(jax.random.key(5), WORKLOAD, LAT, B, ratios, RATES[:2], 300, 2, warmup_steps=100, policy=policy)
        return {k: np.asarray(v) for k, v in vars(res).items() if isinstance(v, np.ndarray)}

    grouped = run()
    monkeypatch.setattr(serve_module, "MIN_GROUP_PAD", 1000)
    assert len(serve_module.ratio_groups(ratios)) == 1
    single = run()
    for name, value in grouped.items():
        np.testing.assert_array_equal(value, single[name], err_msg=name)
