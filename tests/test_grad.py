"""Gradients of the Monte Carlo throughput against central finite differences (float64,
common random numbers) and against the barrier model's analytic gradient."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import afdjax
from afdjax import Geometric, LatencyModel

B, K, R, RMAX = 32, 600, 8, 4
COEFS = ("alpha_a", "beta_a", "alpha_f", "beta_f", "alpha_c", "beta_c")
# coefficients at which attention, FFN and communication all bind on some steps at r ~ 2-3
LAT = dict(alpha_a=0.002, beta_a=20.0, alpha_f=0.9, beta_f=30.0, alpha_c=0.02, beta_c=45.0)


def _value(key, workload, latency, ratio, sizes, steps=K, replicas=R):
    return afdjax.expected_throughput(key, workload, latency, B, ratio, steps, replicas, max_ratio=RMAX, **sizes)


@pytest.fixture(scope="module")
def setup():
    w = Geometric(100.0, 50.0, prefill="lognormal", prefill_sigma=0.6)
    lat = LatencyModel(**LAT)
    sizes = afdjax.plan_buffers(w, B, RMAX, K, R)
    grad = afdjax.throughput_gradients(jax.random.key(3), w, lat, B, 2.4, K, R)
    return w, lat, sizes, grad


@pytest.mark.parametrize(
    # alpha_c: 12 s, the communication line is checked by default through beta_c
    "name",
    [pytest.param(c, marks=pytest.mark.slow) if c == "alpha_c" else c for c in COEFS],
)
def test_latency_gradients_match_finite_differences(setup, name):
    """Pathwise: the sample path is piecewise linear in each coefficient, so the central
    difference with the same random numbers equals the derivative unless a kink is crossed."""
    w, lat, sizes, grad = setup
    x0 = float(getattr(lat, name))
    h = 1e-6 * max(abs(x0), 1e-3)

    def f(x):
        moved = eqx.tree_at(lambda m: getattr(m, name), lat, jnp.asarray(x))
        return float(_value(jax.random.key(3), w, moved, 2.4, sizes))

    fd = (f(x0 + h) - f(x0 - h)) / (2 * h)
    g = float(getattr(grad.latency, name))
    roundoff = 1e-13 * float(grad.value) / h  # float64 rounding in the difference quotient
    assert g == pytest.approx(fd, rel=1e-5, abs=roundoff)


@pytest.mark.parametrize("name", ["mu_p", "prefill_sigma"])
def test_prefill_gradients_match_finite_differences(setup, name):
    w, lat, sizes, grad = setup
    x0 = float(getattr(w, name))
    h = 1e-6 * x0

    def f(x):
        moved = eqx.tree_at(lambda m: getattr(m, name), w, jnp.asarray(x))
        return float(_value(jax.random.key(3), moved, lat, 2.4, sizes))

    fd = (f(x0 + h) - f(x0 - h)) / (2 * h)
    assert float(getattr(grad.workload, name)) == pytest.approx(fd, rel=1e-5)


def test_ratio_gradient_is_the_neighbour_difference(setup):
    w, lat, sizes, grad = setup
    t2 = float(_value(jax.random.key(3), w, lat, 2.0, sizes))
    t3 = float(_value(jax.random.key(3), w, lat, 3.0, sizes))
    assert float(grad.ratio) == pytest.approx(t3 - t2, rel=1e-9)
    # and the interpolated value sits on the chord
    assert float(grad.value) == pytest.approx(0.6 * t2 + 0.4 * t3, rel=1e-12)


def test_value_equals_mean_of_replica_throughputs(setup):
    w, lat, sizes, grad = setup
    res = afdjax.simulate(jax.random.key(3), w, lat, B, [2, 3], K, R, **sizes)
    per = np.asarray(res.throughput_per_replica).mean(axis=0)
    assert float(grad.value) == pytest.approx(0.6 * per[0] + 0.4 * per[1], rel=1e-12)


@pytest.mark.slow  # long run; the default suite covers the path with a smaller case
def test_decode_score_function_against_finite_differences():
    """mu_d: the score-function estimate and a central finite difference with common random
    numbers are both unbiased (up to O(h^2)) for d E[T] / d mu_d; compare their means over
    independent keys within 4 combined standard errors, and the analytic barrier gradient
    within its Gaussian-model error (10 % here)."""
    # attention binds: t_A ~ 0.05 * 32 * 80 + 10 = 138 against t_F(3) = 0.5 * 96 + 20 = 68
    lat = LatencyModel(alpha_a=0.05, beta_a=10.0, alpha_f=0.5, beta_f=20.0, alpha_c=0.0, beta_c=0.0)
    w = Geometric(50.0, 30.0)
    ratio, steps, reps = 3.0, 400, 32
    sizes = afdjax.plan_buffers(Geometric(50.0, 40.0), B, RMAX, steps, reps)
    h = 3.0
    sf, fd = [], []
    for seed in range(12):
        key = jax.random.key(100 + seed)
        g = afdjax.throughput_gradients(key, w, lat, B, ratio, steps, reps)
        sf.append(float(g.workload.mu_d))
        up = _value(key, Geometric(50.0, 30.0 + h), lat, ratio, sizes, steps, reps)
        down = _value(key, Geometric(50.0, 30.0 - h), lat, ratio, sizes, steps, reps)
        fd.append(float(up - down) / (2 * h))
    sf, fd = np.array(sf), np.array(fd)
    se = math.sqrt(sf.var(ddof=1) / len(sf) + fd.var(ddof=1) / len(fd))
    assert abs(sf.mean() - fd.mean()) <= 4 * se, (sf.mean(), fd.mean(), se)
    # the estimate is informative: clearly negative (longer requests, more load)
    assert sf.mean() + 3 * sf.std(ddof=1) / math.sqrt(len(sf)) < 0
    analytic = float(eqx.filter_grad(lambda m: afdjax.barrier_throughput(m, lat, B, ratio))(w).mu_d)
    assert abs(fd.mean() - analytic) <= 0.10 * abs(analytic) + 4 * fd.std(ddof=1) / math.sqrt(len(fd))


@pytest.mark.slow  # long statistical run (4 x 1500 steps at B = 256); the FD tests above check the path
def test_latency_gradient_agrees_with_barrier_model():
    """Long run, attention-bound ratio: the Monte Carlo gradient in alpha_a approaches the
    analytic gradient of the barrier model (within its ~1 % model error plus 4 s.e.)."""
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    w = Geometric(100.0, 500.0)
    vals = [
        float(afdjax.throughput_gradients(jax.random.key(s), w, lat, 256, 6.0, 1500, 8).latency.alpha_a)
        for s in range(4)
    ]
    analytic = float(eqx.filter_grad(lambda m: afdjax.barrier_throughput(w, m, 256, 6.0))(lat).alpha_a)
    m, se = np.mean(vals), np.std(vals, ddof=1) / 2
    assert abs(m - analytic) <= 0.02 * abs(analytic) + 4 * se


def test_optimise_ratio_derivative_vanishes():
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    w = Geometric(100.0, 500.0)
    opt = afdjax.optimise_ratio(w, lat, 256)
    f = jax.jit(lambda r: afdjax.barrier_throughput(w, lat, 256, r))  # one program, not op by op
    # acceptance: the r-derivative of the relaxed objective vanishes at the reported r*
    assert abs(float(jax.jit(jax.grad(f))(opt.ratio))) <= 1e-8 * float(f(opt.ratio))
    assert abs(float(opt.gradient)) <= 1e-8 * float(opt.throughput)
    # it is a maximum: both neighbours on a fine grid are lower
    assert float(f(opt.ratio - 0.01)) < float(opt.throughput) > float(f(opt.ratio + 0.01))
    # compared with the closed form and the integer sweep
    assert float(opt.r_star_mean_field) == pytest.approx(9.5745, abs=1e-4)
    assert abs(float(opt.ratio) - int(opt.best_integer)) < 1.0
    bo = afdjax.barrier_optimum(w, lat, 256, int(opt.best_integer) + 5)
    assert float(opt.ratio) == pytest.approx(float(bo.r_continuous), abs=1e-3)


@pytest.mark.slow  # a compile-count property, several shapes
def test_optimise_ratio_compiles_once_per_shape():
    """Acceptance (issue 10): a second call with new coefficients, workload parameters,
    start and learning rate (same batch size, max_ratio and num_steps) compiles nothing.
    Counted with jax.monitoring's backend-compile events; the old Python loop of eager
    Adam and Newton steps compiled 186 programs on the first call and 1 on every later one."""
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    lat1, w1 = afdjax.LatencyModel.from_preset("paper-910c"), Geometric(100.0, 500.0)
    lat2 = LatencyModel(alpha_a=0.002, beta_a=40.0, alpha_f=0.09, beta_f=90.0, alpha_c=0.03, beta_c=25.0)
    w2 = Geometric(120.0, 450.0)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        first = afdjax.optimise_ratio(w1, lat1, 256, max_ratio=24, num_steps=100)
        n_first = len(compiles)
        second = afdjax.optimise_ratio(w2, lat2, 256, 5.0, max_ratio=24, num_steps=100, learning_rate=0.04)
        jax.block_until_ready(second)
        n_second = len(compiles) - n_first
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert 0 < n_first <= 30, n_first
    assert n_second == 0
    # and the second answer is for the new inputs: its derivative vanishes there
    f = lambda r: afdjax.barrier_throughput(w2, lat2, 256, r)
    assert abs(float(jax.grad(f)(second.ratio))) <= 1e-8 * float(f(second.ratio))
    assert float(second.ratio) != pytest.approx(float(first.ratio), abs=1e-3)


def test_optimise_ratio_validation():
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    w = Geometric(100.0, 500.0)
    for kwargs, match in [
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(num_steps=-1), "num_steps"),
        (dict(max_ratio=0), "max_ratio"),
        (dict(max_ratio=2.5), "max_ratio"),
    ]:
        with pytest.raises(ValueError, match=match):
            afdjax.optimise_ratio(w, lat, 256, **kwargs)
    with pytest.raises(ValueError, match="r0"):
        afdjax.optimise_ratio(w, lat, 256, float("nan"))


def test_throughput_gradients_validation():
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    with pytest.raises(ValueError, match="ratio=0.5"):
        afdjax.throughput_gradients(jax.random.key(0), Geometric(1.0, 1.0), lat, 8, 0.5, 10, 2)


@pytest.mark.parametrize("metric", ["mean_cycle_time", "attention_idle_fraction", "ffn_idle_fraction"])
@pytest.mark.parametrize("name", ["alpha_a", pytest.param("beta_f", marks=pytest.mark.slow)])
def test_cycle_time_and_idle_fraction_gradients(setup, metric, name):
    """Pathwise gradients of the other simulated metrics against central differences (CRN)."""
    w, lat, sizes, _ = setup

    def metric_at(latency):
        res = afdjax.simulate(jax.random.key(3), w, latency, B, [2, 3], K, R, **sizes)
        return getattr(res, metric)[1]

    g = float(getattr(eqx.filter_grad(metric_at)(lat), name))
    x0 = float(getattr(lat, name))
    h = 1e-6 * x0
    up = float(metric_at(eqx.tree_at(lambda m: getattr(m, name), lat, jnp.asarray(x0 + h))))
    down = float(metric_at(eqx.tree_at(lambda m: getattr(m, name), lat, jnp.asarray(x0 - h))))
    fd = (up - down) / (2 * h)
    assert g == pytest.approx(fd, rel=1e-5, abs=1e-12 / h)
