"""Closed forms of the stochastic stage times (issue 13 scope 4), the ``ACCEL:MODEL`` presets
that fill them and the hardware TOML tables (scope 2-3): exact reduction when the parts are
``None``, agreement with a NumPy Monte Carlo and with the engine, gradients of every new
parameter against central differences, TOML round trip and errors."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import afdjax
from afdjax import Communication, ExpertRouting, LatencyModel, StageNoise
from afdjax._hardware import latency_to_toml
from afdjax._theory import (
    attention_time_moments,
    expected_max_normal_excess,
    stage_layer_time,
    stage_pipeline_cycle_time,
)

COEF = dict(alpha_a=0.00165, beta_a=50.0, alpha_f=0.083, beta_f=100.0, alpha_c=0.022, beta_c=20.0)
B = 256
RATIOS = jnp.arange(1.0, 21.0)
WL = afdjax.Geometric(mu_p=100.0, mu_d=500.0)


def _today_barrier(workload, latency, batch_size, ratio):
    """The Gaussian barrier as it was before issue 13 (the reference for bit-for-bit)."""
    ratio = jnp.asarray(ratio, dtype=float)
    mu, s = attention_time_moments(workload, latency, batch_size)
    floor = jnp.maximum(latency.ffn_time(ratio, batch_size), latency.comm_time(ratio, batch_size))
    safe_s = jnp.where(s > 0, s, 1.0)
    with_noise = floor + safe_s * expected_max_normal_excess((floor - mu) / safe_s, ratio)
    return jnp.where(s > 0, with_noise, jnp.maximum(floor, mu))


def _today_mean_field(workload, latency, batch_size, ratio):
    t_a = latency.attention_time(batch_size * workload.theta())
    return jnp.maximum(jnp.maximum(t_a, latency.comm_time(ratio, batch_size)), latency.ffn_time(ratio, batch_size))


# ----------------------------------------------------------------------------- exact reduction
def test_parts_none_and_neutral_reduce_bit_for_bit():
    lat = LatencyModel(**COEF)
    ref = _today_barrier(WL, lat, B, RATIOS)
    assert np.array_equal(afdjax.barrier_cycle_time(WL, lat, B, RATIOS), ref)
    assert np.array_equal(afdjax.mean_field_cycle_time(WL, lat, B, RATIOS), _today_mean_field(WL, lat, B, RATIOS))
    # explicit neutral parts: no noise (cv = 0), a Communication of zeros, any num_layers
    neutral = LatencyModel(**COEF, num_layers=61, noise=StageNoise(), comm=Communication())
    assert np.array_equal(afdjax.barrier_cycle_time(WL, neutral, B, RATIOS), ref)
    assert np.array_equal(afdjax.mean_field_cycle_time(WL, neutral, B, RATIOS), _today_mean_field(WL, lat, B, RATIOS))
    # the pipeline helpers reproduce today's pipeline closed forms operation for operation
    for m in (1, 3):
        assert np.array_equal(
            stage_pipeline_cycle_time(WL, lat, B, RATIOS, m), afdjax.pipeline_barrier_cycle_time(WL, lat, B, RATIOS, m)
        )
        assert np.array_equal(
            stage_pipeline_cycle_time(WL, lat, B, RATIOS, m, barrier=False),
            afdjax.pipeline_cycle_time(WL, lat, B, RATIOS, m),
        )


def test_mean_field_optimum_with_communication_matches_a_fine_grid():
    # per-peer and shared-link terms: r* maximises the mean-field throughput
    lat = LatencyModel(**COEF, comm=Communication(per_peer=2.0, alpha_back=0.03, alpha_link=0.004))
    opt = afdjax.mean_field_optimum(WL, lat, B)
    grid = jnp.linspace(1.0, 40.0, 3901)
    best = float(grid[jnp.argmax(afdjax.mean_field_throughput(WL, lat, B, grid))])
    assert float(opt.r_star) == pytest.approx(best, abs=0.02)
    assert np.isnan(float(opt.r_communication))  # the communication time grows with r
    assert opt.regime_name in ("attention", "communication", "ffn")


# ----------------------------------------------------------------------------- Monte Carlo
def _lognormal(rng, cv, size):
    s2 = np.log1p(cv * cv)
    return np.exp(-s2 / 2 + np.sqrt(s2) * rng.standard_normal(size))


def _monte_carlo(rng, mu, s, lat, r, n):
    """E[max(A, C, C', F)] of one layer by brute force: normal loads, LogNormal factors,
    multinomial routing of every token-expert pair."""
    cv = [float(getattr(lat.noise, k)) for k in ("attention_cv", "ffn_cv", "comm_cv")]
    a = ((mu + s * rng.standard_normal((n, r))) * _lognormal(rng, cv[0], (n, r))).max(1)
    c = float(lat.comm_time(r, B)) * _lognormal(rng, cv[2], n)
    cb = float(lat.comm_back_time(r, B)) * _lognormal(rng, cv[2], n)
    rt = lat.routing
    pairs = rng.multinomial(r * B * rt.top_k, np.asarray(rt.rank_shares()), size=n).max(1)
    f = (float(lat.alpha_f) * rt.ranks / rt.top_k * pairs + float(lat.beta_f)) * _lognormal(rng, cv[1], n)
    m = np.maximum(np.maximum(a, c), np.maximum(cb, f))
    return m.mean(), m.std() / np.sqrt(n)


ALL = LatencyModel(
    **COEF,
    num_layers=61,
    noise=StageNoise(0.15, 0.1, 0.2),
    routing=ExpertRouting(256, 8, 16, skew=0.6),
    comm=Communication(per_peer=1.0, alpha_back=0.03, alpha_link=0.01),
)


@eqx.filter_jit
def _layer(lat, mu, s, r):
    return stage_layer_time(mu, s, lat, float(B), r)


def test_layer_time_matches_monte_carlo():
    rng = np.random.default_rng(7)
    mu, s = attention_time_moments(WL, ALL, B)
    for r in (2, 9, 24):
        theory = float(_layer(ALL, mu, s, jnp.asarray(float(r))))
        mc, se = _monte_carlo(rng, float(mu), float(s), ALL, r, 40_000)
        assert abs(theory - mc) <= 4 * se + 1e-3 * mc, (r, theory, mc, se)


# ----------------------------------------------------------------------------- gradients
PARAMS = ("attention_cv", "ffn_cv", "comm_cv", "skew", "per_peer", "alpha_back", "beta_back", "alpha_link")


def _with(lat, x):
    """``lat`` with the eight new parameters set from the vector ``x``."""
    noise = StageNoise(x[0], x[1], x[2])
    routing = ExpertRouting(256, 8, 16, skew=x[3])
    comm = Communication(per_peer=x[4], alpha_back=x[5], beta_back=x[6], alpha_link=x[7])
    return eqx.tree_at(lambda m: (m.noise, m.routing, m.comm), lat, (noise, routing, comm))


_value_and_grad = eqx.filter_jit(
    jax.value_and_grad(lambda x, lat, r: afdjax.barrier_cycle_time(WL, _with(lat, x), B, r))
)


def _value(x, lat, r):
    return float(_value_and_grad(x, lat, r)[0])


@pytest.mark.parametrize(
    ("x0", "r"),
    [
        # back direction on its per-peer line (alpha_back, beta_back matter)
        ([0.2, 0.15, 0.25, 0.7, 3.0, 0.5, 150.0, 0.01], 6.0),
        # back direction on the shared link (alpha_link matters), forward on per-peer
        ([0.2, 0.15, 0.25, 0.7, 3.0, 0.02, 5.0, 0.08], 14.0),
    ],
)
def test_gradients_match_central_differences(x0, r):
    lat = LatencyModel(
        **{**COEF, "alpha_c": 1.0}, num_layers=61, noise=StageNoise(), routing=ALL.routing, comm=ALL.comm
    )
    x0, r = jnp.asarray(x0), jnp.asarray(r)  # arrays: one compilation for both cases
    value, g = _value_and_grad(x0, lat, r)
    g = np.asarray(g)
    for i, name in enumerate(PARAMS):
        h = 1e-5 * max(1.0, abs(float(x0[i])))
        e = jnp.zeros(8).at[i].set(h)
        fd = (_value(x0 + e, lat, r) - _value(x0 - e, lat, r)) / (2 * h)
        assert g[i] == pytest.approx(fd, rel=2e-4, abs=1e-6 * float(value)), (name, g[i], fd)
    assert np.count_nonzero(g) >= 6  # the test point exercises most parameters


# ----------------------------------------------------------------------------- presets and TOML
def test_presets_fill_routing_layers_and_scale_out():
    d = afdjax.derive_latency("h100", "deepseek-v3")  # 1 + 16 H100: more than one 8-GPU node
    lat = d.latency
    assert lat.num_layers == 61
    assert (lat.routing.num_experts, lat.routing.top_k, lat.routing.ranks) == (256, 8, d.ffn_devices)
    assert any("scale-out 50 GB/s" in n for n in d.notes)
    flat = afdjax.derive_latency("h100", "deepseek-v3", stage_terms=False).latency
    assert flat.routing is None and flat.num_layers is None and flat.comm is None
    # within one domain (TPU v5p pod) the scale-up link stays: alpha_c 6x smaller than scale-out
    assert float(afdjax.derive_latency("tpu-v5p", "deepseek-v3").latency.alpha_c) < float(lat.alpha_c) / 5
    dense = afdjax.derive_latency("h100", "llama-3.1-70b").latency
    assert dense.routing is None and dense.num_layers == 80
    spec = afdjax.parse_hardware_spec("h100:deepseek-v3,stage_terms=false")
    assert spec.routing is None
    with pytest.raises(ValueError, match="stage_terms='maybe' is not a valid true or false"):
        afdjax.parse_hardware_spec("h100:deepseek-v3,stage_terms=maybe")


def test_toml_round_trip(tmp_path):
    lat = LatencyModel(
        **COEF,
        comm_scaling="ratio_batch",
        num_layers=61,
        noise=StageNoise(0.1, 0.05, 0.2),
        routing=ExpertRouting(8, 2, 4, histogram=[1, 2, 3, 4, 5, 6, 7, 8.5], redundant_experts=2),
        comm=Communication(per_peer=0.5, alpha_back=0.1, alpha_link=0.3),
    )
    text = latency_to_toml(lat)
    path = tmp_path / "hw.toml"
    path.write_text(text)
    back = afdjax.parse_hardware_spec(str(path))
    assert latency_to_toml(back) == text
    assert back.comm.beta_back is None and back.routing.redundant_experts == 2
    np.testing.assert_array_equal(back.routing.rank_shares(), lat.routing.rank_shares())
    # a derived deployment round-trips through its TOML, parts included
    dep_path = tmp_path / "dep.toml"
    dep_path.write_text(afdjax.derive_latency("h100", "deepseek-v3").to_toml())
    dep = afdjax.load_deployment(str(dep_path))
    assert dep.time_unit == "us per layer" and dep.latency.routing.ranks == 16
    assert latency_to_toml(dep.latency) == latency_to_toml(afdjax.derive_latency("h100", "deepseek-v3").latency)
    # no parts: the [latency] table as before
    assert "[noise]" not in latency_to_toml(LatencyModel(**COEF)) and "num_layers" not in latency_to_toml(
        LatencyModel(**COEF)
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[noise]\nattention_cv = -1\n", r"\[noise\] attention_cv=-1.0 is invalid: expected a finite number >= 0"),
        ("[noise]\nffn_cv = 'x'\n", r"\[noise\] ffn_cv='x' is invalid: expected a number"),
        ("[noise]\ncomm_cv = true\n", r"\[noise\] comm_cv=True is invalid: expected a number"),
        ("[routing]\nnum_experts = 8\ntop_k = 2\nranks = 9\n", r"\[routing\] ranks=9 is invalid"),
        ("[routing]\nnum_experts = 8.5\ntop_k = 2\nranks = 2\n", r"\[routing\] num_experts=8.5 is invalid"),
        ("[routing]\nnum_experts = 2\ntop_k = 1\nranks = 2\nhistogram = [1, 'a']\n", r"histogram=\[1, 'a'\]"),
        ("[communication]\nfoo = 1\n", r"unknown key\(s\) foo in \[communication\]; allowed: per_peer"),
        ("[communication]\nalpha_link = -2\n", r"\[communication\] alpha_link=-2.0 is invalid"),
        ("num_layers = 0\n", r"num_layers=0 is invalid: expected an integer >= 1"),
        ("num_layers = 2.5\n", r"\[latency\] num_layers=2.5 is invalid: expected an integer"),
        ("[noise]\nattention_cv = 0.1\n[noise.x]\n", r"unknown key\(s\) x in \[noise\]"),
    ],
)
def test_toml_errors_name_the_key(tmp_path, extra, message):
    head = "[latency]\n" + "".join(f"{k} = {v!r}\n" for k, v in COEF.items())
    if not extra.startswith("["):
        head, extra = head + extra, ""
    path = tmp_path / "bad.toml"
    path.write_text(head + extra)
    with pytest.raises(ValueError, match=message):
        afdjax.parse_hardware_spec(str(path))


# ----------------------------------------------------------------------------- against the engine
@pytest.mark.slow
@pytest.mark.parametrize(
    "parts",
    [
        dict(noise=StageNoise(0.2, 0.1, 0.2)),
        dict(routing=ExpertRouting(64, 4, 8, skew=1.0)),
        dict(comm=Communication(per_peer=4.0, alpha_back=0.05, alpha_link=0.01)),
        dict(noise=StageNoise(0.1, 0.1, 0.1), routing=ExpertRouting(64, 4, 8, skew=0.5), comm=Communication(1.0)),
    ],
)
def test_closed_form_matches_the_engine(parts):
    lat = LatencyModel(**COEF, num_layers=8, **parts)
    ratios = [1, 4, 8, 16]
    # B = 256: the Gaussian barrier of the KV loads (the same with or without the parts) is
    # within 1 % here; at B = 64 and r = 1 it alone is 3 % low
    res = afdjax.simulate(jax.random.key(3), WL, lat, B, ratios, 300, 8)
    closed = np.asarray(afdjax.barrier_cycle_time(WL, lat, B, jnp.asarray(ratios, dtype=float)))
    mean = np.asarray(res.mean_cycle_time)
    np.testing.assert_allclose(closed, mean, rtol=0.02)


@pytest.mark.slow
def test_mean_field_and_barrier_optima_with_routing():
    lat = LatencyModel(**COEF, routing=ExpertRouting(256, 8, 16, skew=0.5))
    opt = afdjax.mean_field_optimum(WL, lat, B)
    grid = jnp.linspace(1.0, 40.0, 3901)
    best = float(grid[jnp.argmax(afdjax.mean_field_throughput(WL, lat, B, grid))])
    assert float(opt.r_star) == pytest.approx(best, abs=0.02)

    # the implicit-function gradient of r_A in the skew against central differences
    def r_a(skew):
        return afdjax.mean_field_optimum(WL, eqx.tree_at(lambda m: m.routing.skew, lat, skew), B).r_attention

    g = float(jax.grad(r_a)(jnp.asarray(0.5)))
    fd = (float(r_a(jnp.asarray(0.5 + 1e-5))) - float(r_a(jnp.asarray(0.5 - 1e-5)))) / 2e-5
    assert g == pytest.approx(fd, rel=1e-3)
    bopt = afdjax.barrier_optimum(WL, lat, B, max_ratio=24)
    assert 1 <= int(bopt.ratio) <= 24
    assert abs(float(bopt.r_continuous) - int(bopt.ratio)) <= 1.0
