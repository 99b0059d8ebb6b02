"""Derivatives of the open-loop quantities in the latency coefficients (issue 14, scope 6):
:func:`afdjax.serve_sensitivity` against closed forms at very light load and far above
capacity, no recompilation for perturbed coefficients, and bad input.

The default tests reuse the compiled shape of :mod:`tests.test_serve` (``B = 4``, ratios
``[1, 3]``, three rates, ``STEPS`` x ``REPLICAS``, Uniform lengths): the rates and the
coefficients are traced values. The comparison with the saturated engine's gradient and the
pathwise method (each a compilation of its own) are ``slow``.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from test_serve import RATIOS, REPLICAS, STEPS, WORKLOAD, B

import afdjax

# test_serve's coefficients with beta_a moved off the integer tie of the light-load kink
# (0.05 T + 5.01 = alpha_f + beta_f = 10.5 at T = 109.8, never an integer load)
COEF = dict(alpha_a=0.05, beta_a=5.01, alpha_f=0.5, beta_f=10.0, alpha_c=0.1, beta_c=2.0)
LAT = afdjax.LatencyModel(**COEF)
LAT0 = afdjax.LatencyModel(**dict(COEF, alpha_c=0.0))
RATES = [1e-5, 0.008, 0.2]  # alone in the bundle; below capacity; far above it
KW = dict(prefill_beta=3.0, slo_tpot=16.0, slo_ttft=40.0)


def _light_load_tpot_derivatives(coef=COEF):
    """d mean TPOT / d coefficient for a request alone in its bundle (``n = 1``), exact
    over the Uniform(50..150, 5..15) lengths: at its ``k``-th step the step is
    ``tau = max(alpha_a (P + k) + beta_a, alpha_f + beta_f, alpha_c / r + beta_c)``
    (``_kernel.step_time`` with one occupied slot), TPOT the mean over its ``D`` steps, so
    ``d TPOT / d alpha_a = E[(1/D) sum_k (P + k) 1{attention binds}]`` and so on."""
    P = np.arange(50, 151, dtype=float)[:, None, None]
    D = np.arange(5, 16)[None, :, None]
    k = np.arange(15)[None, None, :]
    T = P + k
    steps = k < D
    att = coef["alpha_a"] * T + coef["beta_a"]
    ffn = coef["alpha_f"] + coef["beta_f"]
    assert ffn > coef["alpha_c"] + coef["beta_c"]  # the link never binds here

    def mean(x):
        return float((np.where(steps, x, 0.0).sum(-1) / D[..., 0]).mean())

    return {
        "alpha_a": mean(np.where(att > ffn, T, 0.0)),
        "beta_a": mean(att > ffn),
        "alpha_f": mean(att < ffn),
        "beta_f": mean(att < ffn),
        "alpha_c": 0.0,
        "beta_c": 0.0,
    }


@pytest.fixture(scope="module")
def sens():
    return afdjax.serve_sensitivity(
        jax.random.key(1),
        WORKLOAD,
        LAT,
        B,
        RATIOS,
        RATES,
        STEPS,
        REPLICAS,
        coefficients=("alpha_a", "beta_a"),
        **KW,
    )


def _close(got, se, want, label, rel=0.0):
    assert abs(got - want) <= 3 * se + rel * abs(want) + 1e-12, f"{label}: {got} +- {se}, expected {want}"


def test_values_are_serves_and_light_load_closed_form(sens):
    """The values are :func:`afdjax.serve`'s pooled ones; alone in its bundle, a request's
    TPOT derivatives are the closed form's, its TTFT (no wait) and the queue do not move,
    and the throughput (the arrival rate's) has derivative 0."""
    for q in sens.quantities:
        np.testing.assert_allclose(sens.value[q], np.asarray(getattr(sens.result, q)), rtol=1e-12, err_msg=q)
    want = _light_load_tpot_derivatives()
    for c in sens.coefficients:
        assert sens.steps[c] == pytest.approx(0.05 * COEF[c])
        for i in range(len(RATIOS)):
            d, se = sens.derivative["tpot_mean"][c][i, 0], sens.stderr["tpot_mean"][c][i, 0]
            _close(d, se, want[c], f"d TPOT / d {c}, r {RATIOS[i]}", rel=0.01)
            assert 0 < se < 0.05 * want[c]
            # sojourn = D x TPOT for a request alone: E[D] x ... at least the TPOT's
            assert sens.derivative["mean_sojourn_time"][c][i, 0] > 4 * d
            # (a request rarely arrives while another decodes: 3 standard errors)
            for q in ("ttft_mean", "mean_queue_length", "throughput_per_instance"):
                dq, se_q = sens.derivative[q][c][i, 0], sens.stderr[q][c][i, 0]
                assert abs(dq) <= 3 * se_q + 1e-3 * abs(d), (q, c, i, dq, se_q)


def test_below_capacity_throughput_and_saturated_closed_form(sens):
    """Below capacity the throughput is the arrival rate's: derivative 0 within 3
    standard errors. Far above it every slot is occupied and attention binds at every
    step (its load is at least ``B x 50`` tokens): ``throughput = r B / (r + 1) / E[tau]``
    and ``d / d beta_a = -throughput^2 (r + 1) / (r B)`` (0.2 % and 3 standard errors: an
    event-order change in the run's first, unsaturated steps can last)."""
    thr = np.asarray(sens.result.throughput_per_instance)
    for i, r in enumerate(RATIOS):
        for c in sens.coefficients:
            d, se = sens.derivative["throughput_per_instance"][c][i, 1], sens.stderr["throughput_per_instance"][c][i, 1]
            assert se > 0 and abs(d) <= 3 * se, (r, c, d, se)
        assert bool(sens.result.saturated[i, 2])
        want = -(thr[i, 2] ** 2) * (r + 1) / (r * B)
        d = sens.derivative["throughput_per_instance"]["beta_a"][i, 2]
        se = sens.stderr["throughput_per_instance"]["beta_a"][i, 2]
        _close(d, se, want, f"saturated d throughput / d beta_a, r {r}", rel=2e-3)
        assert sens.derivative["throughput_per_instance"]["alpha_a"][i, 2] < 0


def test_perturbed_runs_do_not_compile(sens):
    """A second call with other coefficient values compiles nothing (the latency model is
    a traced argument); ``d TPOT / d beta_f`` at light load is the closed form's; a zero
    coefficient gets a forward difference."""
    traced = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_trace_duration":
            traced.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        other = afdjax.serve_sensitivity(
            jax.random.key(1),
            WORKLOAD,
            LAT0,
            B,
            RATIOS,
            RATES,
            STEPS,
            REPLICAS,
            coefficients=["beta_f", "alpha_c"],
            **KW,
        )
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert traced == []
    want = _light_load_tpot_derivatives()["beta_f"]
    # far above capacity attention binds at (almost) every step: the FFN's beta_f moves the
    # throughput only through the run's first, unsaturated steps (another assignment of
    # requests to instances that lasts): 0 within 3 standard errors
    d = other.derivative["throughput_per_instance"]["beta_f"][:, 2]
    assert np.all(np.abs(d) <= 3 * other.stderr["throughput_per_instance"]["beta_f"][:, 2]), d
    for i in range(len(RATIOS)):
        d, se = other.derivative["tpot_mean"]["beta_f"][i, 0], other.stderr["tpot_mean"]["beta_f"][i, 0]
        _close(d, se, want, f"d TPOT / d beta_f, r {RATIOS[i]}", rel=0.01)
    assert other.coefficients == ("beta_f", "alpha_c") and other.method == "crn"
    # a zero coefficient: a forward difference (the derivative is one-sided there) whose
    # step moves the full-batch link time by 5 % of the cycle; the link never binds
    cycle = COEF["alpha_a"] * B * float(WORKLOAD.theta()) + COEF["beta_a"]  # attention binds at full batch
    assert other.steps["alpha_c"] == pytest.approx(0.05 * cycle / B)
    for q in other.quantities:
        np.testing.assert_array_equal(other.derivative[q]["alpha_c"][:, :2], 0.0, err_msg=q)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(coefficients="gamma_a"), "coefficients='gamma_a' is invalid: expected a name or a list of distinct"),
        (dict(coefficients=["alpha_a", "alpha_a"]), "coefficients=['alpha_a', 'alpha_a'] is invalid"),
        (dict(coefficients=[]), "coefficients=[] is invalid"),
        (dict(quantities=["tpot_p99"]), "quantities=['tpot_p99'] is invalid"),
        (dict(step=0.0), "step=0.0 is invalid: expected a relative step in (0, 1)"),
        (dict(step=-0.1), "step=-0.1 is invalid"),
        (dict(step=1.0), "step=1.0 is invalid: expected a relative step in (0, 1)"),
        (dict(step=math.nan), "step=nan is invalid"),
        (dict(method="adjoint"), "method='adjoint' is invalid: expected one of crn, pathwise"),
        (
            dict(method="pathwise", quantities=["tpot_mean"]),
            "quantities=['tpot_mean'] is invalid with method='pathwise': only throughput_per_instance",
        ),
        (dict(method="pathwise"), None),  # the default quantities with pathwise: throughput only (no error here)
    ],
)
def test_bad_input(kwargs, fragment):
    if fragment is None:
        kwargs = dict(kwargs, quantities=afdjax._serve._sensitivity.QUANTITIES)
        fragment = "only throughput_per_instance has a sound pathwise derivative"
    with pytest.raises(ValueError) as err:
        afdjax.serve_sensitivity(jax.random.key(0), WORKLOAD, LAT, B, [1], [0.001], 10, 2, **kwargs)
    assert fragment in str(err.value)


# ------------------------------------------------------------------------- slow
@pytest.mark.slow  # compiles simulate's reverse-mode gradient and the pathwise program
def test_far_above_capacity_matches_saturated_gradient():
    """Far above capacity the open-loop bundle is the saturated one: d throughput / d
    coefficient (central differences, and the pathwise forward mode) matches
    :func:`afdjax.throughput_gradients` within 3 combined standard errors (plus 0.25 %, the
    central difference's curvature bias ``(h e)^2`` for an elasticity ``e <= 1``: at r = 3
    the FFN binds at every step and both are exact)."""
    names = ("alpha_a", "beta_a", "alpha_f", "beta_f")
    lat = afdjax.LatencyModel(alpha_a=0.02, beta_a=5.0, alpha_f=1.0, beta_f=8.0, alpha_c=0.1, beta_c=2.0)
    kw = dict(coefficients=names, quantities="throughput_per_instance")
    crn = afdjax.serve_sensitivity(jax.random.key(3), WORKLOAD, lat, B, RATIOS, [0.3], STEPS, 16, **kw)
    pw = afdjax.serve_sensitivity(
        jax.random.key(3), WORKLOAD, lat, B, RATIOS, [0.3], STEPS, 16, method="pathwise", **kw
    )
    for i, r in enumerate(RATIOS):
        assert bool(crn.result.saturated[i, 0])
        grads = [afdjax.throughput_gradients(jax.random.key(10 + s), WORKLOAD, lat, B, r, STEPS, 16) for s in range(4)]
        for c in names:
            g = np.array([float(getattr(x.latency, c)) for x in grads])
            want, se_w = g.mean(), g.std(ddof=1) / 2
            for est in (crn, pw):
                d = est.derivative["throughput_per_instance"][c][i, 0]
                se = est.stderr["throughput_per_instance"][c][i, 0]
                assert abs(d - want) <= 3 * math.hypot(se, se_w) + 2.5e-3 * abs(want), (
                    est.method,
                    r,
                    c,
                    d,
                    se,
                    want,
                    se_w,
                )


@pytest.mark.slow  # another compiled shape (Fixed lengths)
def test_fixed_workload_light_load_closed_form():
    """Deterministic lengths at very light load (a request alone): every derivative of
    the mean TPOT is exact, with no spread (attention binds at every step: P = 200)."""
    wl = afdjax.Fixed(200.0, 6)
    s = afdjax.serve_sensitivity(jax.random.key(4), wl, LAT, B, RATIOS, [1e-6], 600, 4, **KW)
    # tau = 0.05 (200 + k) + 5.01 > 10.5 for k = 0..5
    want = dict(alpha_a=202.5, beta_a=1.0, alpha_f=0.0, beta_f=0.0, alpha_c=0.0, beta_c=0.0)
    for c, w in want.items():
        np.testing.assert_allclose(s.derivative["tpot_mean"][c][:, 0], w, rtol=1e-9, atol=1e-9, err_msg=c)
        np.testing.assert_allclose(s.derivative["mean_sojourn_time"][c][:, 0], 6 * w, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(s.derivative["ttft_mean"][c][:, 0], 0.0, atol=1e-9)


@pytest.mark.slow  # test_serve's M/D/1 shape (one slot, 40000 steps)
def test_one_slot_deterministic_md1_waits():
    """One slot, deterministic lengths and stages: the M/D/1 queue, ``W_q = lambda S^2 /
    (2 (1 - lambda S))`` with ``S`` the five steps' sum (the FFN's 10.5 each; at ``beta_f -
    h`` attention's ``10 + 0.05 k`` binds from the second step). The
    central differences of the mean TTFT (= W_q), queue length (lambda W_q) and sojourn
    (W_q + S) are the closed form's differences at the same step (their expectation exactly)
    within 3 standard errors at 30 %, 60 % and 80 % load; TPOT moves by ``dS / 5`` and the
    throughput (the arrival rate's) not at all."""
    from test_serve import COEF as COEF_SERVE
    from test_serve import LAT as MD1_LAT

    wl = afdjax.Fixed(100.0, 5)
    rates = [0.006, 0.012, 0.016]
    s = afdjax.serve_sensitivity(jax.random.key(4), wl, MD1_LAT, 1, [1], rates, 40000, 8, coefficients="beta_f")
    h = s.steps["beta_f"]
    assert h == pytest.approx(0.5)

    def service(beta_f):  # _kernel.step_time with one occupied slot, loads 100 + k
        c = dict(COEF_SERVE, beta_f=beta_f)
        att = c["alpha_a"] * (100.0 + np.arange(5)) + c["beta_a"]
        return float(np.sum(np.maximum(np.maximum(att, c["alpha_f"] + c["beta_f"]), c["alpha_c"] + c["beta_c"])))

    def wq(lam, beta_f):
        S = service(beta_f)
        return lam * S**2 / (2 * (1 - lam * S))

    dS = (service(10.0 + h) - service(10.0 - h)) / (2 * h)  # 4.75: attention binds at 10 - h
    for k, lam in enumerate(rates):
        fd = (wq(lam, 10.0 + h) - wq(lam, 10.0 - h)) / (2 * h)
        for q, want in (("ttft_mean", fd), ("mean_queue_length", lam * fd), ("mean_sojourn_time", fd + dS)):
            d, se = s.derivative[q]["beta_f"][0, k], s.stderr[q]["beta_f"][0, k]
            _close(d, se, want, f"{q} at rate {lam}")
            assert se < 0.1 * want
        np.testing.assert_allclose(s.derivative["tpot_mean"]["beta_f"][0, k], dS / 5, rtol=1e-9)
        d, se = (
            s.derivative["throughput_per_instance"]["beta_f"][0, k],
            s.stderr["throughput_per_instance"]["beta_f"][0, k],
        )
        assert abs(d) <= 3 * se + 1e-12
