"""Random stage times in the engine (issue 13): per-layer noise, MoE routing, communication.

* The new parts' inputs are checked (``ValueError`` naming argument, value, allowed).
* Neutral values (cv = 0, per_peer = 0, alpha_link = 0, F->A = A->F) reproduce the
  deterministic engine bit for bit (float64), in the step models and end to end.
* An independent brute-force NumPy reference (below) draws every layer's noise and
  routes every token (exact multinomial routing, greedy replica placement written
  again here); the engine's mean step time, its quantiles and the throughput agree
  within 3 combined standard errors on four configurations (slow).
* Pathwise gradients of the throughput in every new float parameter agree with central
  differences under common random numbers (slow).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_sim import _instance_loads

import afdjax
from afdjax import Barrier, Communication, ExpertRouting, LatencyModel, Pipeline, StageNoise

COEF = dict(alpha_a=0.001, beta_a=20.0, alpha_f=0.5, beta_f=10.0, alpha_c=0.3, beta_c=5.0)
WORKLOAD = dict(kind="geometric", mu_p=1000.0, mu_d=50.0)
B = 32
RATIOS = [1, 2, 3]


def _workload():
    return afdjax.parse_workload_spec(f"geometric:mu_p={WORKLOAD['mu_p']},mu_d={WORKLOAD['mu_d']}")


# --------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: StageNoise(attention_cv=-0.1), "attention_cv=-0.1 is invalid: expected a finite number >= 0"),
        (lambda: StageNoise(ffn_cv=float("inf")), "ffn_cv=inf is invalid"),
        (lambda: ExpertRouting(8, 0, 2), "top_k=0 is invalid: expected an integer in [1, 8]"),
        (lambda: ExpertRouting(8, 2, 9), "ranks=9 is invalid: expected an integer in [1, 8]"),
        (
            lambda: ExpertRouting(8, 2, 1, redundant_experts=1),
            "redundant_experts=1 is invalid: expected 0 when ranks=1",
        ),
        (lambda: ExpertRouting(4, 2, 2, histogram=[1.0, 2.0]), "expected an array of shape (4,)"),
        (lambda: ExpertRouting(2, 1, 2, histogram=[0.0, 0.0]), "expected relative popularities with a positive sum"),
        (lambda: ExpertRouting(2, 1, 2, skew=1.0, histogram=[1.0, 1.0]), "skew=1.0 is invalid: expected 0 when"),
        (lambda: Communication(per_peer=-1.0), "per_peer=-1.0 is invalid"),
        (lambda: Communication(alpha_back=float("nan")), "alpha_back=nan is invalid"),
        (lambda: LatencyModel(**COEF, num_layers=0), "num_layers=0 is invalid: expected an integer >= 1"),
        (lambda: LatencyModel(**COEF, noise=0.1), "noise=0.1 is invalid: expected None or an afdjax.StageNoise"),
        (lambda: Barrier(stage_layers=0), "stage_layers=0 is invalid"),
        (lambda: Pipeline(2, stage_layers=0), "stage_layers=0 is invalid"),
    ],
)
def test_stage_parts_refuse_bad_input(make, fragment):
    with pytest.raises(ValueError) as err:
        make()
    assert fragment in str(err.value)


def test_routing_popularity_and_rank_shares():
    r = ExpertRouting(8, 2, 4, skew=1.0, redundant_experts=2)
    p = np.asarray(r.popularity())
    np.testing.assert_allclose(p, (1 / np.arange(1, 9)) / np.sum(1 / np.arange(1, 9)))
    np.testing.assert_allclose(np.asarray(r.rank_shares()), _greedy_shares(p, 4, 2), rtol=1e-12)
    assert np.sum(np.asarray(r.rank_shares())) == pytest.approx(1.0)
    h = ExpertRouting(4, 1, 2, histogram=[3.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(np.asarray(h.rank_shares()), [0.75, 0.25])
    np.testing.assert_allclose(np.asarray(ExpertRouting(6, 2, 3).rank_shares()), [1 / 3] * 3)


def test_comm_terms():
    lat = LatencyModel(**COEF, comm=Communication(per_peer=2.0, alpha_back=0.1, beta_back=1.0, alpha_link=0.2))
    r = jnp.asarray([1.0, 4.0])
    # A->F: max(0.3*32 + 5 + 2r, 0.2 r 32) = [16.6, 25.6]; F->A: max(0.1*32 + 1 + 2r, 6.4 r) = [6.4, 25.6]
    np.testing.assert_allclose(np.asarray(lat.comm_time(r, B)), [16.6, 25.6])
    np.testing.assert_allclose(np.asarray(lat.comm_back_time(r, B)), [6.4, 25.6])
    plain = LatencyModel(**COEF)
    assert np.array_equal(np.asarray(plain.comm_back_time(r, B)), np.asarray(plain.comm_time(r, B)))


def test_colocated_refuses_stage_parts():
    lat = LatencyModel(**COEF, noise=StageNoise(attention_cv=0.1))
    with pytest.raises(ValueError, match=r"latency.noise=StageNoise\(...\) is invalid for Colocated"):
        afdjax.Colocated().constants(_workload(), lat, B, 2)


# --------------------------------------------------------------------------- neutral values

NEUTRAL = dict(noise=StageNoise(0.0, 0.0, 0.0), comm=Communication(per_peer=0.0, alpha_link=0.0))


def _neutral_step_times(model, layers, load, keys):
    wl = _workload()
    base = LatencyModel(**COEF)
    neutral = LatencyModel(**COEF, num_layers=layers, **NEUTRAL)
    c0, c1 = model.constants(wl, base, B, 3), model.constants(wl, neutral, B, 3)
    out0 = model.step_times(c0, model.initial_state(3, jnp.float64), load, base)
    out1 = model.step_times(c1, model.initial_state(3, jnp.float64), load, neutral, keys)
    return out0, out1


def test_neutral_parts_step_times_bit_for_bit():
    """The step models' timing with explicit neutral parts equals the deterministic timing
    exactly: Barrier with one and with several layers, Pipeline(2) with one (with K > 1
    passes the pipeline has the same period but not the same rounding; documented)."""
    assert LatencyModel(**COEF, **NEUTRAL).stochastic and not LatencyModel(**COEF).stochastic
    S = 40
    keys = afdjax._engine._draws.stage_keys(jnp.asarray([7, 9], jnp.uint32), jnp.uint32(3), jnp.arange(S))
    loads = jnp.asarray(np.random.default_rng(1).uniform(1e4, 5e4, size=(3, 2, S)))

    @jax.jit
    def run(loads, keys):
        return [
            _neutral_step_times(Barrier(), None, loads[:, :1], keys),
            _neutral_step_times(Barrier(), 5, loads[:, :1], keys),
            _neutral_step_times(Pipeline(2), None, loads, keys),
        ]

    for out0, out1 in run(loads, keys):
        leaves0, leaves1 = jax.tree_util.tree_leaves(out0), jax.tree_util.tree_leaves(out1)
        assert len(leaves0) == len(leaves1)
        for a, b in zip(leaves0, leaves1):
            assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_neutral_parts_simulate_bit_for_bit():
    """End to end: explicit neutral parts (num_layers set) give today's numbers bit for bit."""
    wl, key = _workload(), jax.random.key(5)
    args = (B, [1, 2], 60, 2)
    r0 = afdjax.simulate(key, wl, LatencyModel(**COEF), *args)
    r1 = afdjax.simulate(key, wl, LatencyModel(**COEF, num_layers=7, **NEUTRAL), *args)
    for name in (
        "throughput_per_instance",
        "stderr",
        "mean_cycle_time",
        "cycle_time_quantiles",
        "attention_idle_fraction",
        "ffn_idle_fraction",
        "link_idle_fraction",
    ):
        assert np.array_equal(np.asarray(getattr(r0, name)), np.asarray(getattr(r1, name))), name


# --------------------------------------------------------------------------- NumPy reference


def _greedy_shares(p, ranks, hot, placement=False):
    """Expected share per rank after the replicas of the ``hot`` most popular experts
    (written independently of afdjax: a plain loop over experts)."""
    E = len(p)
    loads = [0.0] * ranks
    for e in range(E):
        loads[e % ranks] += p[e]
    replica = {}
    for e in sorted(range(E), key=lambda e: (-p[e], e))[:hot]:
        loads[e % ranks] -= p[e] / 2
        dest = min((x for x in range(ranks) if x != e % ranks), key=lambda x: (loads[x], x))
        loads[dest] += p[e] / 2
        replica[e] = dest
    return replica if placement else np.array(loads)


def _lognormal(rng, cv, shape):
    if cv == 0:
        return np.ones(shape)
    s2 = np.log1p(cv * cv)
    return rng.lognormal(-s2 / 2, np.sqrt(s2), size=shape)


class _Router:
    """Routes every token: each picks ``top_k`` experts with replacement from ``p``; a pair
    on a replicated expert goes to either replica with probability 1/2."""

    def __init__(self, E, k, ranks, skew, hot):
        p = np.arange(1, E + 1.0) ** -skew
        self.p, self.k, self.ranks = p / p.sum(), k, ranks
        self.cdf = np.cumsum(self.p)
        self.home = np.arange(E) % ranks
        self.other = self.home.copy()
        for e, dest in _greedy_shares(self.p, ranks, hot, placement=True).items():
            self.other[e] = dest

    def busiest(self, rng, shape, tokens):
        """Max pairs over ranks, ``shape`` independent layers of ``tokens`` tokens each."""
        e = np.minimum(np.searchsorted(self.cdf, rng.random(shape + (tokens * self.k,))), len(self.p) - 1)
        rank = np.where(rng.random(e.shape) < 0.5, self.home[e], self.other[e])
        counts = (rank[..., None] == np.arange(self.ranks)).sum(axis=-2)
        return counts.max(axis=-1)


def _comm(c, r, n, back):
    a, b = (c.get("alpha_back", COEF["alpha_c"]), c.get("beta_back", COEF["beta_c"])) if back else (None, None)
    a = COEF["alpha_c"] if a is None else a
    b = COEF["beta_c"] if b is None else b
    return max(a * n + b + c.get("per_peer", 0.0) * r, c.get("alpha_link", 0.0) * r * n)


def reference(rng, spec, steps, replicas, warmup, micro_batches=None):
    """Brute force: cycle times and FFN busy times, ``(R, n_ratios, steps)`` each, of every
    ratio in ``RATIOS``.

    ``spec``: ``layers`` (L), ``noise`` (three cvs), ``routing`` ((E, k, ranks, skew, hot)
    or None), ``comm`` (dict). Every one of the ``L`` layers draws its own factors."""
    m = micro_batches or 1
    L = spec.get("layers") or 1
    cva, cvf, cvc = spec.get("noise", (0.0, 0.0, 0.0))
    router = _Router(*spec["routing"]) if spec.get("routing") else None
    comm = spec.get("comm", {})
    rmax = max(RATIOS)
    loads = _instance_loads(rng, WORKLOAD, B, rmax, warmup + steps, replicas, "stationary", 0, groups=m)
    tA = COEF["alpha_a"] * loads + COEF["beta_a"]  # (R, rmax, m, W + K)
    sizes = np.array([len(range(g, B, m)) for g in range(m)])
    R = replicas
    out, busy = np.empty((R, len(RATIOS), steps)), np.zeros((R, len(RATIOS), steps))
    for i, r in enumerate(RATIOS):

        def ffn(g, shape):
            if router is None:
                return np.full(shape, COEF["alpha_f"] * r * sizes[g] + COEF["beta_f"])
            pairs = router.busiest(rng, shape, r * sizes[g])
            return COEF["alpha_f"] * router.ranks / router.k * pairs + COEF["beta_f"]

        tc = [_comm(comm, r, sizes[g], False) for g in range(m)]
        tb = [_comm(comm, r, sizes[g], True) for g in range(m)]
        if micro_batches is None:  # the barrier, per layer
            for t in range(warmup, warmup + steps):
                att = tA[:, :r, 0, t][:, None, :] * _lognormal(rng, cva, (R, L, r))
                tf = ffn(0, (R, L)) * _lognormal(rng, cvf, (R, L))
                per_layer = np.maximum.reduce(
                    [att.max(axis=2), tc[0] * _lognormal(rng, cvc, (R, L)), tb[0] * _lognormal(rng, cvc, (R, L)), tf]
                )
                out[:, i, t - warmup] = per_layer.sum(axis=1) / L
                busy[:, i, t - warmup] = tf.sum(axis=1) / L
            continue
        # the pipeline: L layer passes per step, micro-batches in order on every resource
        att_free, a2f, ffn_free, f2a_free = np.zeros((R, r)), np.zeros(R), np.zeros(R), np.zeros(R)
        f2a_end, before = np.zeros((R, m)), np.zeros(R)
        for t in range(warmup + steps):
            for _ in range(L):
                for g in range(m):
                    start = np.maximum(att_free, f2a_end[:, g][:, None])
                    att_free = start + tA[:, :r, g, t] / L * _lognormal(rng, cva, (R, r))
                    a2f = np.maximum(a2f, att_free.max(axis=1)) + tc[g] / L * _lognormal(rng, cvc, R)
                    tf = ffn(g, (R,)) / L * _lognormal(rng, cvf, R)
                    ffn_free = np.maximum(ffn_free, a2f) + tf
                    if t >= warmup:
                        busy[:, i, t - warmup] += tf
                    f2a_free = np.maximum(f2a_free, ffn_free) + tb[g] / L * _lognormal(rng, cvc, R)
                    f2a_end[:, g] = f2a_free
            done = f2a_end[:, m - 1]
            if t >= warmup:
                out[:, i, t - warmup] = done - before
            before = done.copy()
    return out, busy


def _latency(spec):
    routing = spec.get("routing")
    return LatencyModel(
        **COEF,
        num_layers=spec.get("layers"),
        noise=StageNoise(*spec["noise"]) if "noise" in spec else None,
        routing=None if routing is None else ExpertRouting(*routing[:3], skew=routing[3], redundant_experts=routing[4]),
        comm=Communication(**spec["comm"]) if "comm" in spec else None,
    )


CONFIGS = {
    "noise": dict(layers=4, noise=(0.3, 0.2, 0.2)),
    "skew": dict(layers=4, routing=(16, 4, 4, 1.0, 2)),
    "comm": dict(comm=dict(per_peer=6.0, alpha_back=0.5, beta_back=2.0, alpha_link=0.4)),
    "all_m2": dict(
        layers=3,
        noise=(0.3, 0.2, 0.2),
        routing=(16, 4, 4, 0.8, 1),
        comm=dict(per_peer=3.0, alpha_back=0.4, alpha_link=0.3),
        micro_batches=2,
    ),
}


def _compare(name, steps=400, replicas=16):
    spec = CONFIGS[name]
    m = spec.get("micro_batches")
    warmup = 0 if m is None else 2 * m
    levels = (0.1, 0.5, 0.9)
    res = afdjax.simulate(
        jax.random.key(11),
        _workload(),
        _latency(spec),
        B,
        RATIOS,
        steps,
        replicas,
        micro_batches=m,
        warmup_steps=warmup,
        quantile_levels=levels,
    )
    ref, ffn_busy = reference(np.random.default_rng(12), spec, steps, replicas, warmup, m)  # (R, n, K) each
    r = np.asarray(RATIOS, float)
    # throughput per instance (ratio estimators, delta-method standard errors)
    thr_ref = r * B * steps * replicas / ((r + 1) * ref.sum(axis=(0, 2)))
    per_rep = ref.sum(axis=2)  # (R, n)
    se_ref = thr_ref * per_rep.std(axis=0, ddof=1) / (per_rep.mean(axis=0) * np.sqrt(replicas))
    thr, se = np.asarray(res.throughput_per_instance), np.asarray(res.stderr)
    assert np.all(np.abs(thr - thr_ref) <= 3 * np.hypot(se, se_ref)), (name, thr, thr_ref, se, se_ref)
    # mean step time, standard errors from the replicas
    mean_ref = ref.mean(axis=(0, 2))
    se_mean_ref = ref.mean(axis=2).std(axis=0, ddof=1) / np.sqrt(replicas)
    rep = r * B / ((r + 1) * np.asarray(res.throughput_per_replica))  # (R, n) per-replica mean step time
    mean = np.asarray(res.mean_cycle_time)
    se_mean = rep.std(axis=0, ddof=1) / np.sqrt(replicas)
    assert np.all(np.abs(mean - mean_ref) <= 3 * np.hypot(se_mean, se_mean_ref)), (name, mean, mean_ref)
    # quantiles: bootstrap over replicas (the engine's error taken as the reference's), plus a bin
    q_ref = np.quantile(ref.transpose(1, 0, 2).reshape(len(RATIOS), -1), levels, axis=1).T  # (n, levels)
    boot = np.random.default_rng(13)
    qs = [
        np.quantile(ref[boot.integers(0, replicas, replicas)].transpose(1, 0, 2).reshape(len(RATIOS), -1), levels, 1).T
        for _ in range(100)
    ]
    se_q = np.std(qs, axis=0, ddof=1)
    q = np.asarray(res.cycle_time_quantiles)
    bin_width = q * 2 * np.log(16.0) / 4096
    assert np.all(np.abs(q - q_ref) <= 3 * np.sqrt(2) * se_q + bin_width), (name, q, q_ref, se_q)
    # FFN idle fraction (random with routing): per-replica fractions, standard errors from the replicas
    idle_ref = 1 - ffn_busy.sum(axis=(0, 2)) / ref.sum(axis=(0, 2))
    se_idle_ref = (1 - ffn_busy.sum(axis=2) / ref.sum(axis=2)).std(axis=0, ddof=1) / np.sqrt(replicas)
    idle = np.asarray(res.ffn_idle_fraction)
    assert np.all(np.abs(idle - idle_ref) <= 3 * np.sqrt(2) * se_idle_ref + 1e-9), (name, idle, idle_ref)
    return mean


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_engine_matches_brute_force_reference(name):
    mean = _compare(name)
    baseline = afdjax.simulate(jax.random.key(11), _workload(), LatencyModel(**COEF), B, RATIOS, 400, 16)
    if name != "comm":  # the random stage times lengthen the step measurably
        base = np.asarray(baseline.mean_cycle_time)
        assert np.all(mean >= base) and np.max(mean / base) > 1.02, (mean, base)


# --------------------------------------------------------------------------- gradients

GRAD_LATENCY = dict(
    layers=4,
    noise=(0.3, 0.25, 0.3),
    routing=(16, 4, 4, 0.8, 1),
    comm=dict(per_peer=2.0, alpha_back=1.2, beta_back=2.0, alpha_link=0.6),
)
GRAD_PARAMS = {
    "attention_cv": lambda lat: lat.noise.attention_cv,
    "ffn_cv": lambda lat: lat.noise.ffn_cv,
    "comm_cv": lambda lat: lat.noise.comm_cv,
    "skew": lambda lat: lat.routing.skew,
    "per_peer": lambda lat: lat.comm.per_peer,
    "alpha_back": lambda lat: lat.comm.alpha_back,
    "beta_back": lambda lat: lat.comm.beta_back,
    "alpha_link": lambda lat: lat.comm.alpha_link,
}


@pytest.mark.slow
@pytest.mark.parametrize("micro_batches", [None, 2])
def test_gradients_match_central_differences(micro_batches):
    """Pathwise d throughput / d parameter against central differences with the same key
    (common random numbers), over four keys: the paired difference is within 3 of its
    standard errors (plus 1 % of the gradient for the difference quotient's own error)."""
    import equinox as eqx

    wl, lat = _workload(), _latency(GRAD_LATENCY)
    steps, replicas = 120, 4
    keys = [jax.random.key(k) for k in range(4)]
    kw = dict(num_steps=steps, num_replicas=replicas, micro_batches=micro_batches)
    grads = [afdjax.throughput_gradients(k, wl, lat, B, 2.0, **kw) for k in keys]

    def value(k, latency):  # the same estimate as throughput_gradients' value at r = 2 (ratios 1..3)
        res = afdjax.simulate(k, wl, latency, B, [1, 2, 3], steps, replicas, micro_batches=micro_batches)
        return float(np.mean(np.asarray(res.throughput_per_replica)[:, 1]))

    assert value(keys[0], lat) == pytest.approx(float(grads[0].value), rel=1e-12)
    for name, where in GRAD_PARAMS.items():
        x = float(where(lat))
        h = 1e-4 * max(abs(x), 1.0)
        diffs, gs = [], []
        for k, g in zip(keys, grads):
            fd = (value(k, eqx.tree_at(where, lat, x + h)) - value(k, eqx.tree_at(where, lat, x - h))) / (2 * h)
            gs.append(float(where(g.latency)))
            diffs.append(gs[-1] - fd)
        d, gmean = np.asarray(diffs), np.mean(gs)
        assert gmean != 0.0, name
        tol = 3 * d.std(ddof=1) / np.sqrt(len(d)) + 0.01 * abs(gmean)
        assert abs(d.mean()) <= tol, (name, gs, diffs)
