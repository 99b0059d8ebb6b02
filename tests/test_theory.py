"""Tests of the closed-form theory (``afdjax._theory``; arXiv 2601.21351 sections 2-4).

Every expected value here is computed independently of the code under test:

* mean-field quantities by hand (the formulas of arXiv 2601.21351 section 3, written out in
  plain Python/NumPy below) and by brute-force search over fine grids;
* the barrier integral ``integral_{z0}^inf (1 - Phi(x)^r) dx`` by ``scipy.integrate.quad``
  in float64 (integrand ``-expm1(r * scipy.stats.norm.logcdf(x))``), by the r = 1 closed
  form and by Monte Carlo;
* stationary slot moments by hand, by the NumPy oracle ``reference_sim`` and by the
  Monte Carlo engine ``afdjax.simulate``;
* gradients by central finite differences in float64.

Statistical tests use fixed seeds and tolerances of 4 standard errors; the standard
errors of engine quantities come from independent calls with different keys (the
engine's pooled means are autocorrelated in time, so a naive per-step SE would be
far too small).
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats

import afdjax
from afdjax import Empirical, Geometric, LatencyModel
from afdjax import _theory as th

try:
    from reference_sim import stationary_theta_and_variance
except ImportError:  # pragma: no cover - run from the repository root as a package
    from tests.reference_sim import stationary_theta_and_variance

# Jitted entry points (batch size static). They keep the file fast: eager dispatch
# compiles every primitive separately for each new shape. Eager calls are tested too.
BCT = jax.jit(th.barrier_cycle_time, static_argnums=2)
BTH = jax.jit(th.barrier_throughput, static_argnums=2)
MFC = jax.jit(th.mean_field_cycle_time, static_argnums=2)
MFT = jax.jit(th.mean_field_throughput, static_argnums=2)
EXCESS = jax.jit(th.expected_max_normal_excess)
DBTH_DR = jax.jit(jax.grad(th.barrier_throughput, argnums=3), static_argnums=2)

PAPER = dict(alpha_a=0.00165, beta_a=50.0, alpha_f=0.083, beta_f=100.0, alpha_c=0.022, beta_c=20.0)
COEFS = ("alpha_a", "beta_a", "alpha_f", "beta_f", "alpha_c", "beta_c")


def lat_of(comm_scaling="batch", **overrides) -> LatencyModel:
    kw = dict(PAPER)
    kw.update(overrides)
    return LatencyModel(**kw, comm_scaling=comm_scaling)


# ----------------------------------------------------------------- independent helpers
def hand_stage_times(c: dict, comm_scaling: str, theta: float, B: float, r):
    """(t_A_bar, t_C, t_F) by hand (arXiv 2601.21351 section 1/3)."""
    r = np.asarray(r, dtype=np.float64)
    t_a = c["alpha_a"] * B * theta + c["beta_a"]
    t_f = c["alpha_f"] * r * B + c["beta_f"]
    tokens = B if comm_scaling == "batch" else r * B
    t_c = c["alpha_c"] * tokens + c["beta_c"]
    return t_a, t_c, t_f


def hand_mf_throughput(c: dict, comm_scaling: str, theta: float, B: float, r):
    t_a, t_c, t_f = hand_stage_times(c, comm_scaling, theta, B, r)
    r = np.asarray(r, dtype=np.float64)
    return r * B / ((r + 1.0) * np.maximum(np.maximum(t_a, t_c), t_f))


@functools.cache
def ref_excess(z0: float, r: float) -> float:
    """``integral_{z0}^inf (1 - Phi(x)^r) dx`` by adaptive quadrature (float64).

    Below ``lo = -30`` the integrand is 1 to double precision for r >= 0.5
    (``Phi(-30)^0.5 ~ 1e-99``), so that piece is added analytically; above 40 the
    integrand is below 1e-340.
    """
    z0, r = float(z0), float(r)
    lo, hi = -30.0, 40.0

    def f(x):
        return -np.expm1(r * scipy.special.log_ndtr(x))  # = norm.logcdf, without its overhead

    a = max(z0, lo)
    pts = [p for p in (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0) if a < p < hi]
    # Subdivide just above a as well: for large z0 the integrand decays on a scale 1/z0.
    for k in (0.05, 0.2, 0.5, 1.0):
        if a + k < hi and all(abs(a + k - p) > 1e-9 for p in pts):
            pts.append(a + k)
    val, _ = scipy.integrate.quad(f, a, hi, points=sorted(pts), limit=1000, epsabs=0.0, epsrel=1e-13)
    return val + max(lo - z0, 0.0)


def ref_excess_dr(z0: float, r: float) -> float:
    """d/dr of ``ref_excess``: ``-integral_{z0}^inf Phi(x)^r log Phi(x) dx`` (quad)."""

    def f(x):
        lc = scipy.special.log_ndtr(x)
        return -np.exp(r * lc) * lc

    a = max(z0, -40.0)
    pts = [p for p in (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0) if a < p < 40.0]
    val, _ = scipy.integrate.quad(f, a, 40.0, points=pts, limit=1000, epsabs=0.0, epsrel=1e-12)
    return val


def ref_barrier_cycle(G: float, mu: float, s: float, r: float) -> float:
    """``E[max(G, mu + s M_r)] = G + s * integral_{(G - mu)/s}^inf (1 - Phi^r)`` (quad)."""
    if s == 0:
        return max(G, mu)
    return G + s * ref_excess((G - mu) / s, r)


def hand_moments(c: dict, comm_scaling: str, theta: float, var: float, B: float, r: float):
    """(G, mu_A, s) by hand (arXiv 2601.21351 section 3, barrier refinement)."""
    t_a, t_c, t_f = hand_stage_times(c, comm_scaling, theta, B, r)
    return float(max(t_c, t_f)), float(t_a), float(c["alpha_a"] * math.sqrt(B * var))


def geometric_moments_by_renewal_sum(mu_p, mu_d, var_p, d_max=400_000):
    """Renewal-reward formulas of arXiv 2601.21351 section 2 summed over a truncated geometric pmf.

    theta = E[D P + D(D-1)/2] / E[D] and
    sigma^2 = E[D P^2 + P D (D-1) + D(D-1)(2D-1)/6] / E[D] - theta^2, with P independent
    of D (E[P] = mu_p, E[P^2] = var_p + mu_p^2) and P(D = d) = p (1-p)^(d-1).
    """
    p = 1.0 / (1.0 + mu_d)
    d = np.arange(1, d_max + 1, dtype=np.float64)
    pmf = p * np.exp((d - 1) * np.log1p(-p))
    ed = np.sum(pmf * d)
    ep2 = var_p + mu_p**2
    theta = np.sum(pmf * (d * mu_p + d * (d - 1) / 2)) / ed
    second = np.sum(pmf * (d * ep2 + mu_p * d * (d - 1) + d * (d - 1) * (2 * d - 1) / 6)) / ed
    return theta, second - theta**2


# ======================================================================================
# 1. Mean-field closed forms, paper convention (comm_scaling="batch"), paper-910c
# ======================================================================================
def test_paper_baseline_hand_values(paper_latency):
    B, mu_p, mu_d = 256, 100.0, 500.0
    c = PAPER
    t_a = c["alpha_a"] * B * (mu_p + mu_d) + c["beta_a"]  # 303.44
    r_a = (t_a - c["beta_f"]) / (c["alpha_f"] * B)
    r_c = (c["alpha_c"] * B + c["beta_c"] - c["beta_f"]) / (c["alpha_f"] * B)
    r_peak = math.sqrt(c["beta_f"] / (c["alpha_f"] * B))
    assert t_a == pytest.approx(303.44, rel=1e-12)
    assert r_a == pytest.approx(9.575, rel=1e-3)
    assert r_peak == pytest.approx(2.169, rel=1e-3)
    assert r_c == pytest.approx(-3.5, rel=1e-9)

    opt = th.mean_field_optimum(Geometric(mu_p, mu_d), paper_latency, B)
    assert float(opt.attention_time) == pytest.approx(t_a, rel=1e-12)
    assert float(opt.r_attention) == pytest.approx(9.575, rel=1e-3)
    assert float(opt.r_attention) == pytest.approx(r_a, rel=1e-12)
    assert float(opt.r_communication) == pytest.approx(r_c, rel=1e-12)
    assert float(opt.r_peak) == pytest.approx(r_peak, rel=1e-12)
    assert float(opt.r_peak) == pytest.approx(2.169, rel=1e-3)
    assert float(opt.r_star) == pytest.approx(max(r_a, r_c, r_peak), rel=1e-12)
    assert int(opt.regime) == 0 and opt.regime_name == "attention"
    assert th.REGIMES[int(opt.regime)] == "attention"
    # The mean-field cycle time at the stationary mean load is t_A_bar for r <= r_A.
    assert float(th.attention_time_mean_field(Geometric(mu_p, mu_d), paper_latency, B)) == pytest.approx(t_a, rel=1e-12)


# (B, mu_p, mu_d, value printed in arXiv 2601.21351 section 4, expected regime)
SIX_CONFIGS = [
    (128, 100.0, 500.0, 7.22, "attention"),
    (256, 100.0, 500.0, 9.58, "attention"),
    (512, 100.0, 500.0, 10.75, "attention"),
    (256, 100.0, 100.0, 2.17, "ffn"),
    (256, 100.0, 500.0, 9.58, "attention"),
    (256, 500.0, 500.0, 17.53, "attention"),
]


@pytest.mark.parametrize("B, mu_p, mu_d, printed, regime", SIX_CONFIGS)
def test_paper_six_configurations(paper_latency, B, mu_p, mu_d, printed, regime):
    c = PAPER
    t_a = c["alpha_a"] * B * (mu_p + mu_d) + c["beta_a"]
    r_a = (t_a - c["beta_f"]) / (c["alpha_f"] * B)
    r_c = (c["alpha_c"] * B + c["beta_c"] - c["beta_f"]) / (c["alpha_f"] * B)
    r_peak = math.sqrt(c["beta_f"] / (c["alpha_f"] * B))
    formula = max(r_a, r_c, r_peak)
    opt = th.mean_field_optimum(Geometric(mu_p, mu_d), paper_latency, B)
    assert float(opt.r_star) == pytest.approx(formula, rel=1e-3)
    assert float(opt.r_star) == pytest.approx(formula, rel=1e-12)
    # arXiv 2601.21351 prints two decimals. Note: 9.5745 is printed there as "9.58" (a double
    # rounding 9.5745 -> 9.575 -> 9.58); allow one unit in the last printed place.
    assert abs(float(opt.r_star) - printed) <= 0.01 + 1e-12
    assert opt.regime_name == regime


def test_paper_rounding_of_printed_values(paper_latency):
    """The formula values to two decimals (correct rounding of the hand formula)."""
    got = [
        round(float(th.mean_field_optimum(Geometric(mp, md), paper_latency, B).r_star), 2)
        for B, mp, md in [(128, 100, 500), (512, 100, 500), (256, 100, 100), (256, 500, 500)]
    ]
    assert got == [7.22, 10.75, 2.17, 17.53]
    base = float(th.mean_field_optimum(Geometric(100, 500), paper_latency, 256).r_star)
    assert base == pytest.approx(203.44 / 21.248, rel=1e-12)  # = 9.5745..., 9.57 to 2 d.p.


@pytest.mark.parametrize(
    "B, mu_p, mu_d", [(128, 100, 500), (256, 100, 500), (512, 100, 500), (256, 100, 100), (256, 500, 500)]
)
def test_mean_field_throughput_and_integer_recommendation(paper_latency, B, mu_p, mu_d):
    wl = Geometric(mu_p, mu_d)
    theta = mu_p + mu_d
    rs = np.arange(1, 200, dtype=np.float64)
    hand = hand_mf_throughput(PAPER, "batch", theta, B, rs)
    got = np.asarray(jax.vmap(lambda r: th.mean_field_throughput(wl, paper_latency, B, r))(rs))
    np.testing.assert_allclose(got, hand, rtol=1e-13)
    np.testing.assert_allclose(
        np.asarray(th.mean_field_cycle_time(wl, paper_latency, B, rs)),
        rs * B / ((rs + 1) * hand),
        rtol=1e-13,
    )
    r_star = float(th.mean_field_optimum(wl, paper_latency, B).r_star)
    lo, hi = max(math.floor(r_star), 1), max(math.ceil(r_star), 1)
    t_lo, t_hi = (float(hand_mf_throughput(PAPER, "batch", theta, B, x)) for x in (lo, hi))
    expected = hi if t_hi > t_lo else lo
    rec = th.mean_field_integer_ratio(wl, paper_latency, B)
    assert int(rec) == expected
    assert jnp.issubdtype(rec.dtype, jnp.integer)
    # The mean field is unimodal in r: the better neighbour is the integer argmax.
    assert int(rec) == int(rs[np.argmax(hand)])


def test_integer_recommendation_baseline_is_9(paper_latency):
    # floor: 9 * 256 / (10 * 303.44); ceil: FFN binds, 10 * 256 / (11 * (21.248 * 10 + 100))
    f9 = 9 * 256 / (10 * 303.44)
    f10 = 10 * 256 / (11 * (0.083 * 256 * 10 + 100))
    assert f9 > f10
    assert int(th.mean_field_integer_ratio(Geometric(100, 500), paper_latency, 256)) == 9


def test_integer_recommendation_never_below_one():
    # Huge alpha_f: r_A = 203.44 / 2560 ~ 0.08, r_peak = sqrt(100 / 2560) ~ 0.198 < 1.
    lat = lat_of(alpha_f=10.0)
    opt = th.mean_field_optimum(Geometric(100, 500), lat, 256)
    assert float(opt.r_star) == pytest.approx(math.sqrt(100 / 2560), rel=1e-12)
    assert float(opt.r_star) < 1
    assert int(th.mean_field_integer_ratio(Geometric(100, 500), lat, 256)) == 1
    assert int(th.mean_field_integer_ratio(Geometric(100, 500), lat, 256, max_ratio=3)) == 1
    # r* < 0 is impossible here but floor/ceil of tiny r* are clipped to 1 as well.
    assert int(th.best_integer_neighbour(jnp.asarray(0.3), lambda r: -r)) == 1
    assert int(th.best_integer_neighbour(jnp.asarray(-2.5), lambda r: r)) == 1


@pytest.mark.parametrize("max_ratio, expected", [(1, 1), (5, 5), (9, 9), (10, 9), (100, 9)])
def test_integer_recommendation_max_ratio_clipping(paper_latency, max_ratio, expected):
    assert int(th.mean_field_integer_ratio(Geometric(100, 500), paper_latency, 256, max_ratio=max_ratio)) == expected


def test_integer_recommendation_clipping_above(paper_latency):
    # (500, 500): r* = 17.53; clipped to 17 or below.
    wl = Geometric(500, 500)
    assert int(th.mean_field_integer_ratio(wl, paper_latency, 256)) in (17, 18)
    assert int(th.mean_field_integer_ratio(wl, paper_latency, 256, max_ratio=17)) == 17
    assert int(th.mean_field_integer_ratio(wl, paper_latency, 256, max_ratio=12)) == 12


@pytest.mark.parametrize("max_ratio", [0, -3])
def test_integer_recommendation_invalid_max_ratio(paper_latency, max_ratio):
    try:
        rec = int(th.mean_field_integer_ratio(Geometric(100, 500), paper_latency, 256, max_ratio=max_ratio))
    except ValueError:
        return
    assert rec >= 1


def test_integer_recommendation_tie_goes_to_smaller():
    # B = 1, t_A = t_C = 0, t_F = r + 2: f(1) = 1/(2*3) = f(2) = 2/(3*4) exactly, r* = sqrt(2).
    lat = LatencyModel(alpha_a=0.0, beta_a=0.0, alpha_f=1.0, beta_f=2.0, alpha_c=0.0, beta_c=0.0)
    wl = Geometric(0.0, 0.0)
    assert float(th.mean_field_optimum(wl, lat, 1).r_star) == pytest.approx(math.sqrt(2), rel=1e-14)
    assert float(th.mean_field_throughput(wl, lat, 1, 1.0)) == float(th.mean_field_throughput(wl, lat, 1, 2.0))
    assert int(th.mean_field_integer_ratio(wl, lat, 1)) == 1


def test_batch_communication_regime_hand():
    # beta_c = 400: t_C = 0.022 * 256 + 400 = 405.632 > t_A_bar = 303.44.
    lat = lat_of(beta_c=400.0)
    opt = th.mean_field_optimum(Geometric(100, 500), lat, 256)
    r_c = (0.022 * 256 + 400 - 100) / (0.083 * 256)
    assert float(opt.r_communication) == pytest.approx(r_c, rel=1e-12)
    assert float(opt.r_star) == pytest.approx(r_c, rel=1e-12)
    assert opt.regime_name == "communication"


# ======================================================================================
# 2. comm_scaling="ratio_batch" and brute-force optima
# ======================================================================================
def test_ratio_batch_attention_bound(paper_latency):
    lat = lat_of("ratio_batch")
    B = 256
    # FFN line 21.248 r + 100 lies above the comm line 5.632 r + 20 for all r > 0.
    t_a = 0.00165 * B * 600 + 50
    r_a = (t_a - 100) / (0.083 * B)
    opt = th.mean_field_optimum(Geometric(100, 500), lat, B)
    assert math.isnan(float(opt.r_communication))
    assert float(opt.r_attention) == pytest.approx(r_a, rel=1e-12)
    assert float(opt.r_peak) == pytest.approx(math.sqrt(100 / (0.083 * B)), rel=1e-12)
    assert float(opt.r_star) == pytest.approx(r_a, rel=1e-12)
    assert opt.regime_name == "attention"


def test_ratio_batch_communication_bound():
    # Comm line 51.2 r + 2000 is above the FFN line everywhere; t_A_bar = 303.44 < 2000, so
    # attention never binds. Throughput r B / ((r+1)(a_c r + b_c)) peaks at sqrt(b_c / a_c).
    B = 256
    lat = lat_of("ratio_batch", alpha_c=0.2, beta_c=2000.0)
    opt = th.mean_field_optimum(Geometric(100, 500), lat, B)
    expected = math.sqrt(2000.0 / (0.2 * B))  # 6.25
    assert expected == pytest.approx(6.25, rel=1e-14)
    assert math.isnan(float(opt.r_communication))
    assert float(opt.r_star) == pytest.approx(expected, rel=1e-12)
    assert float(opt.r_peak) == pytest.approx(expected, rel=1e-12)
    assert float(opt.r_attention) < 0  # the rising comm line starts above t_A_bar
    assert opt.regime_name == "communication"


def test_ratio_batch_crossing_optimum():
    # Comm line 0.256 r + 150 starts above the FFN line 21.248 r + 100 and is crossed at
    # r_x = 50 / (a_f - a_c) = 2.38; each line alone would peak elsewhere:
    # FFN at sqrt(b_f / a_f) < r_x, comm at sqrt(b_c / a_c) > r_x -> optimum at the crossing.
    B = 256
    lat = LatencyModel(
        alpha_a=0.0, beta_a=50.0, alpha_f=0.083, beta_f=100.0, alpha_c=0.001, beta_c=150.0, comm_scaling="ratio_batch"
    )
    a_f, a_c = 0.083 * B, 0.001 * B
    r_x = 50.0 / (a_f - a_c)
    assert math.sqrt(100 / a_f) < r_x < math.sqrt(150 / a_c)
    opt = th.mean_field_optimum(Geometric(0.0, 0.0), lat, B)
    assert float(opt.r_star) == pytest.approx(r_x, rel=1e-12)
    assert opt.regime_name in ("communication", "ffn")  # both lines bind at the crossing


def test_ratio_batch_ffn_bound(paper_latency):
    # (100, 100): t_A_bar = 134.48, r_A = min(34.48 / 21.248, 114.48 / 5.632) = 1.6227 < r_peak.
    B = 256
    lat = lat_of("ratio_batch")
    opt = th.mean_field_optimum(Geometric(100, 100), lat, B)
    t_a = 0.00165 * B * 200 + 50
    assert float(opt.r_attention) == pytest.approx(min((t_a - 100) / (0.083 * B), (t_a - 20) / (0.022 * B)), rel=1e-12)
    assert float(opt.r_star) == pytest.approx(math.sqrt(100 / (0.083 * B)), rel=1e-12)
    assert opt.regime_name == "ffn"
    assert math.isnan(float(opt.r_communication))


def test_ratio_batch_attention_bound_on_comm_line():
    # The comm line binds first: t_A_bar is reached by a_c r + b_c before a_f r + b_f.
    B = 256
    lat = lat_of("ratio_batch", alpha_c=0.05, beta_c=200.0)  # comm: 12.8 r + 200
    t_a = 0.00165 * B * 600 + 50  # 303.44
    r_a_hand = min((t_a - 100) / (0.083 * B), (t_a - 200) / (0.05 * B))  # min(9.57, 8.08)
    opt = th.mean_field_optimum(Geometric(100, 500), lat, B)
    assert float(opt.r_attention) == pytest.approx((t_a - 200) / (0.05 * B), rel=1e-12)
    assert float(opt.r_star) == pytest.approx(r_a_hand, rel=1e-12)
    assert opt.regime_name == "attention"


def _random_coefficients(rng, regime_bias):
    c = dict(
        alpha_a=float(np.exp(rng.uniform(np.log(2e-4), np.log(5e-3)))),
        beta_a=float(rng.uniform(0, 200)),
        alpha_f=float(np.exp(rng.uniform(np.log(0.01), np.log(0.3)))),
        beta_f=float(rng.uniform(10, 300)),
        alpha_c=float(np.exp(rng.uniform(np.log(1e-3), np.log(0.3)))),
        beta_c=float(np.exp(rng.uniform(np.log(1.0), np.log(400.0)))),
    )
    if regime_bias == "comm":  # large beta_c so that the communication stage binds
        c["beta_c"] = float(rng.uniform(500, 3000))
    return c


def _brute_force_check(wl, c, comm_scaling, B, theta):
    lat = LatencyModel(**c, comm_scaling=comm_scaling)
    opt = th.mean_field_optimum(wl, lat, B)
    r_star = float(opt.r_star)
    assert np.isfinite(r_star) and r_star > 0
    R = 3.0 * r_star + 2.0
    grid = np.linspace(R / 400_000, R, 400_000)
    h = grid[1] - grid[0]
    values = np.asarray(MFT(wl, lat, B, jnp.asarray(grid)))
    np.testing.assert_allclose(values, hand_mf_throughput(c, comm_scaling, theta, B, grid), rtol=1e-12)
    r_grid = grid[np.argmax(values)]
    assert abs(r_grid - r_star) <= h * (1 + 1e-6), (c, B, r_grid, r_star, h)
    return opt


def test_brute_force_optimum_batch_random():
    rng = np.random.default_rng(20240601)
    regimes = []
    for i in range(24):
        c = _random_coefficients(rng, "comm" if i % 3 == 0 else None)
        B = int(rng.choice([32, 64, 128, 256, 512]))
        mu_p, mu_d = float(rng.uniform(0, 1000)), float(rng.uniform(1, 1000))
        wl = Geometric(mu_p, mu_d)
        opt = _brute_force_check(wl, c, "batch", B, mu_p + mu_d)
        # the regime is the index of the largest of the hand-computed r_A, r_C, r_peak
        t_a = c["alpha_a"] * B * (mu_p + mu_d) + c["beta_a"]
        hand = [
            (t_a - c["beta_f"]) / (c["alpha_f"] * B),
            (c["alpha_c"] * B + c["beta_c"] - c["beta_f"]) / (c["alpha_f"] * B),
            math.sqrt(c["beta_f"] / (c["alpha_f"] * B)),
        ]
        np.testing.assert_allclose(
            [float(opt.r_attention), float(opt.r_communication), float(opt.r_peak)], hand, rtol=1e-12
        )
        assert int(opt.regime) == int(np.argmax(hand))
        regimes.append(int(opt.regime))
    # the seeded sample exercises every regime, including r_C binding (large beta_c)
    assert all(regimes.count(k) >= 2 for k in range(3)), regimes


def test_brute_force_optimum_ratio_batch_random():
    rng = np.random.default_rng(7)
    regimes = []
    for i in range(24):
        c = _random_coefficients(rng, "comm" if i % 3 == 0 else None)
        B = int(rng.choice([32, 64, 128, 256, 512]))
        mu_p, mu_d = float(rng.uniform(0, 1000)), float(rng.uniform(1, 1000))
        opt = _brute_force_check(Geometric(mu_p, mu_d), c, "ratio_batch", B, mu_p + mu_d)
        assert math.isnan(float(opt.r_communication))
        # regime by hand: attention iff r* is where the rising stage time reaches t_A_bar;
        # else the larger of the two lines just above r*.
        t_a, t_c, t_f = hand_stage_times(c, "ratio_batch", mu_p + mu_d, B, float(opt.r_star) * (1 + 1e-9))
        if int(opt.regime) == 0:
            assert max(t_c, t_f) == pytest.approx(t_a, rel=1e-6)
        elif int(opt.regime) == 1:
            assert t_c >= t_f * (1 - 1e-9) and t_c > t_a
        else:
            assert t_f >= t_c * (1 - 1e-9) and t_f > t_a
        regimes.append(int(opt.regime))
    assert all(regimes.count(k) >= 2 for k in range(3)), regimes


# ======================================================================================
# 3. theta and slot variance
# ======================================================================================
@pytest.mark.parametrize(
    "mu_p, mu_d, prefill, sigma",
    [
        (100.0, 500.0, "constant", 1.0),
        (250.0, 40.0, "exponential", 1.0),
        (800.0, 200.0, "lognormal", 1.2),
        (0.0, 0.0, "constant", 1.0),
    ],
)
def test_geometric_theta_variance_closed_form(mu_p, mu_d, prefill, sigma):
    wl = Geometric(mu_p, mu_d, prefill=prefill, prefill_sigma=sigma)
    var_p = {"constant": 0.0, "exponential": mu_p**2, "lognormal": mu_p**2 * math.expm1(sigma**2)}[prefill]
    # hand: theta = mu_p + mu_d; sigma^2 = Var(P) + Var(age) with age ~ Geom on {0,1,..}
    # of mean mu_d: Var(age) = mu_d (1 + mu_d).
    assert float(wl.theta()) == pytest.approx(mu_p + mu_d, rel=1e-14, abs=1e-14)
    assert float(wl.slot_variance()) == pytest.approx(var_p + mu_d * (1 + mu_d), rel=1e-12, abs=1e-12)
    if mu_d > 0:  # the general renewal-reward formula summed over the geometric pmf
        theta_r, var_r = geometric_moments_by_renewal_sum(mu_p, mu_d, var_p)
        assert float(wl.theta()) == pytest.approx(theta_r, rel=1e-10)
        assert float(wl.slot_variance()) == pytest.approx(var_r, rel=1e-9)


def test_geometric_moments_against_stationary_monte_carlo():
    """Direct NumPy sampling of the length-biased slot state (D ~ p^-1 D pmf, index uniform)."""
    mu_p, mu_d, sigma = 300.0, 150.0, 0.9
    wl = Geometric(mu_p, mu_d, prefill="lognormal", prefill_sigma=sigma)
    rng = np.random.default_rng(3)
    n = 400_000
    p = 1 / (1 + mu_d)
    # length-biased D: P(D = d) ~ d p (1-p)^(d-1) = Negative binomial: 1 + NB(2, p) failures
    d = 1 + rng.negative_binomial(2, p, size=n)
    idx = np.floor(rng.random(n) * d)
    pre = rng.lognormal(np.log(mu_p) - 0.5 * sigma**2, sigma, size=n)
    load = pre + idx
    m, v = load.mean(), load.var()
    se_m = load.std() / math.sqrt(n)
    c = load - m
    se_v = math.sqrt(max(np.mean(c**4) - v**2, 0.0) / n)
    assert abs(float(wl.theta()) - m) <= 4 * se_m
    assert abs(float(wl.slot_variance()) - v) <= 4 * se_v


def test_empirical_hand_example():
    # rows (P=10, D=1) and (P=0, D=3): slot states equally likely: loads {10, 0, 1, 2}.
    wl = Empirical([10.0, 0.0], [1, 3])
    assert float(wl.theta()) == pytest.approx(13 / 4, rel=1e-14)
    assert float(wl.slot_variance()) == pytest.approx(105 / 4 - (13 / 4) ** 2, rel=1e-13)


def test_empirical_azure_plugin_matches_reference(azure_conv_trace):
    wl = afdjax.load_trace("azure-conv")
    prefill, decode = azure_conv_trace
    theta, var = stationary_theta_and_variance(prefill, decode)
    assert float(wl.theta()) == pytest.approx(theta, rel=1e-11)
    assert float(wl.slot_variance()) == pytest.approx(var, rel=1e-9)
    # theta/variance feed the barrier moments: mu_A and s by hand
    lat = lat_of()
    mu, s = th.attention_time_moments(wl, lat, 64)
    assert float(mu) == pytest.approx(0.00165 * 64 * theta + 50, rel=1e-11)
    assert float(s) == pytest.approx(0.00165 * math.sqrt(64 * var), rel=1e-9)


def test_empirical_correlated_trace_matches_reference():
    rng = np.random.default_rng(11)
    d = rng.integers(1, 400, size=3000)
    p = np.round(2.0 * d + rng.exponential(300, size=3000))  # strongly correlated with D
    wl = Empirical(p, d)
    theta, var = stationary_theta_and_variance(p, d)
    assert float(wl.theta()) == pytest.approx(theta, rel=1e-12)
    assert float(wl.slot_variance()) == pytest.approx(var, rel=1e-10)


ENGINE_B = 256
ENGINE_RATIOS = list(range(1, 17))
ENGINE_KEYS = 12


@pytest.fixture(scope="module")
def engine_runs():
    """Independent engine calls (different keys): per-call mean cycle times and loads."""
    wl = Geometric(100.0, 500.0)
    lat = lat_of()
    cycles, loads = [], []
    for k in range(ENGINE_KEYS):
        res = afdjax.simulate(jax.random.key(1000 + k), wl, lat, ENGINE_B, ENGINE_RATIOS, 4000, 4)
        cycles.append(np.asarray(res.mean_cycle_time))
        loads.append(float(res.mean_slot_load_tokens))
    return np.asarray(cycles), np.asarray(loads)


def _mean_and_se(samples):
    samples = np.asarray(samples, dtype=np.float64)
    return samples.mean(axis=0), samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])


def test_theta_against_engine_geometric(engine_runs):
    # Each call's mean slot load pools its replicas and steps (autocorrelated in time:
    # slots live ~500 steps); the SE comes from the spread of independent calls.
    _, loads = engine_runs
    m, se = _mean_and_se(loads)
    theta = float(Geometric(100.0, 500.0).theta())
    assert theta == 600.0
    assert se > 0
    assert abs(m - theta) <= 4 * se, (m, se)


@pytest.mark.slow  # the geometric case runs by default; test_fit_workload checks a fitted trace's theta
def test_theta_against_engine_azure():
    wl = afdjax.load_trace("azure-conv")
    lat = lat_of()
    loads = []
    for k in range(8):
        res = afdjax.simulate(jax.random.key(2000 + k), wl, lat, 64, [1, 2, 4], 2000, 4)
        loads.append(float(res.mean_slot_load_tokens))
    m, se = _mean_and_se(loads)
    assert abs(m - float(wl.theta())) <= 4 * se, (m, se, float(wl.theta()))


# ======================================================================================
# 4. expected_max_normal_excess against quadrature
# ======================================================================================
Z0_GRID_OK = np.array(
    [-40.0, -25.0, -13.0, -12.0, -11.5, -8.0, -5.0, -3.0, -1.7, -0.5, 0.0, 0.3, 1.0, 2.2, 3.0, 4.0, 5.0, 6.0]
)
R_GRID = np.array([0.5, 0.75, 1.0, 1.5, 2.0, 3.7, 8.0, 16.0, 64.0, 333.3, 1000.0, 1e4])


def _excess_grid(z0s, rs):
    Z, R = np.meshgrid(z0s, rs, indexing="ij")
    got = np.asarray(EXCESS(Z, R))
    ref = np.array([[ref_excess(float(z), float(r)) for r in rs] for z in z0s])
    return got, ref


def test_excess_against_quad_relative():
    """Relative error <= 1e-6 (acceptance) on z0 in [-40, 6]; <= 1e-10 for z0 <= 5."""
    got, ref = _excess_grid(Z0_GRID_OK, R_GRID)
    rel = np.abs(got - ref) / ref
    assert np.all(ref > 0)
    assert rel.max() <= 1e-6, rel.max()
    assert rel[Z0_GRID_OK <= 5.0].max() <= 1e-10, rel[Z0_GRID_OK <= 5.0].max()


def test_excess_absolute_error_full_grid():
    """On the whole z0 range [-40, 12] the *absolute* error is at double-precision level
    (the integrand 1 - Phi^r ~ r (1 - Phi) carries rounding errors of order r * 1e-16)."""
    z0s = np.array([-40.0, -12.0, 0.0, 5.0, 6.5, 7.0, 7.75, 9.0, 9.9, 10.0, 11.0, 12.0])
    got, ref = _excess_grid(z0s, R_GRID)
    tol = 2e-17 * R_GRID[None, :] + 1e-13 * np.abs(ref)
    assert np.all(np.abs(got - ref) <= tol), np.max(np.abs(got - ref) / tol)


def test_excess_relative_error_upper_tail_6p5_to_10():
    z0s = np.array([6.75, 7.0, 7.75, 9.0, 9.75])
    got, ref = _excess_grid(z0s, R_GRID[::3])
    assert (np.abs(got - ref) / ref).max() <= 1e-6


def test_excess_relative_error_z0_10_to_12():
    z0s = np.array([10.0, 11.0, 12.0])
    got, ref = _excess_grid(z0s, R_GRID[::3])
    assert (np.abs(got - ref) / ref).max() <= 1e-6


def test_excess_r1_closed_form():
    z0 = np.linspace(-30, 5, 71)
    expected = scipy.stats.norm.pdf(z0) - z0 * scipy.stats.norm.sf(z0)
    got = np.asarray(EXCESS(z0, 1.0))
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_excess_r2_limit():
    # E[max(Z1, Z2)] = 1 / sqrt(pi): for z0 -> -inf the excess is -z0 + E[M_2].
    for z0 in (-15.0, -40.0, -1e3):
        got = float(EXCESS(z0, 2.0))
        assert got - (-z0) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-12 * max(1.0, -z0))
    # and E[M_1] = 0: the excess is exactly -z0 far below
    assert float(EXCESS(-30.0, 1.0)) == pytest.approx(30.0, abs=1e-12)


def test_excess_gradients_against_analytic_and_quad():
    z0s = np.array([-20.0, -11.0, -3.0, -0.4, 0.8, 2.5, 4.0])
    d_z0 = jax.jit(jax.vmap(jax.grad(th.expected_max_normal_excess, argnums=0), in_axes=(0, None)))
    d_r = jax.jit(jax.vmap(jax.grad(th.expected_max_normal_excess, argnums=1), in_axes=(0, None)))
    for r in (0.5, 1.0, 3.0, 17.5, 500.0):
        dz = np.asarray(d_z0(z0s, r))
        # d/dz0 integral_{z0}^inf (1 - Phi^r) = -(1 - Phi(z0)^r)
        expected = np.expm1(r * scipy.stats.norm.logcdf(z0s))
        np.testing.assert_allclose(dz, expected, rtol=1e-9, atol=1e-15)
        dr = np.asarray(d_r(z0s, r))
        expected_r = np.array([ref_excess_dr(z, r) for z in z0s])
        np.testing.assert_allclose(dr, expected_r, rtol=1e-8, atol=1e-14)


# ======================================================================================
# 5. barrier_cycle_time: Monte Carlo, s = 0, engine
# ======================================================================================
BARRIER_CASES = [
    # (mu_p, mu_d, prefill, sigma, latency overrides, comm_scaling, B, r)
    (100.0, 500.0, "constant", 1.0, {}, "batch", 256, 4),
    (100.0, 500.0, "constant", 1.0, {}, "batch", 256, 9),
    (100.0, 500.0, "constant", 1.0, {}, "batch", 256, 10),
    (100.0, 500.0, "constant", 1.0, {}, "batch", 256, 12),
    (800.0, 200.0, "lognormal", 1.2, {}, "batch", 64, 3),
    (800.0, 200.0, "lognormal", 1.2, {}, "batch", 64, 16),
    (100.0, 500.0, "constant", 1.0, {"beta_c": 300.0}, "batch", 256, 2),
    (100.0, 500.0, "constant", 1.0, {"alpha_c": 0.05, "beta_c": 200.0}, "ratio_batch", 256, 7),
    (100.0, 500.0, "constant", 1.0, {}, "batch", 256, 1),
]


@pytest.mark.parametrize("case", BARRIER_CASES)
def test_barrier_cycle_time_monte_carlo(case):
    mu_p, mu_d, prefill, sigma, over, scaling, B, r = case
    wl = Geometric(mu_p, mu_d, prefill=prefill, prefill_sigma=sigma)
    c = dict(PAPER, **over)
    lat = LatencyModel(**c, comm_scaling=scaling)
    var_p = {"constant": 0.0, "lognormal": mu_p**2 * math.expm1(sigma**2)}[prefill]
    G, mu, s = hand_moments(c, scaling, mu_p + mu_d, var_p + mu_d * (1 + mu_d), B, r)
    mu_code, s_code = th.attention_time_moments(wl, lat, B)
    assert float(mu_code) == pytest.approx(mu, rel=1e-12)
    assert float(s_code) == pytest.approx(s, rel=1e-12)

    rng = np.random.default_rng(1234 + r)
    n = 200_000
    m_r = rng.standard_normal((n, r)).max(axis=1)
    x = np.maximum(G, mu + s * m_r)
    mc, se = x.mean(), x.std(ddof=1) / math.sqrt(n)
    got = float(BCT(wl, lat, B, float(r)))
    assert abs(got - mc) <= 4 * se + 1e-9 * abs(mc), (got, mc, se)
    # and the quadrature reference (much tighter)
    assert got == pytest.approx(ref_barrier_cycle(G, mu, s, r), rel=1e-10)


@pytest.mark.parametrize("r", [0.5, 2.5, 7.3])
def test_barrier_cycle_time_real_ratio_monte_carlo(r):
    # M_r with CDF Phi^r sampled by inversion: M_r = Phi^{-1}(U^{1/r}).
    wl = Geometric(100.0, 500.0)
    lat = lat_of()
    B = 256
    G, mu, s = hand_moments(PAPER, "batch", 600.0, 500.0 * 501.0, B, r)
    rng = np.random.default_rng(99)
    n = 400_000
    m_r = scipy.special.ndtri(rng.random(n) ** (1.0 / r))
    x = np.maximum(G, mu + s * m_r)
    mc, se = x.mean(), x.std(ddof=1) / math.sqrt(n)
    got = float(BCT(wl, lat, B, float(r)))
    assert abs(got - mc) <= 4 * se, (got, mc, se)
    assert got == pytest.approx(ref_barrier_cycle(G, mu, s, r), rel=1e-10)


def test_barrier_s_zero_is_mean_field():
    # mu_d = 0 and constant prefill: every slot holds exactly mu_p tokens, s = 0.
    wl = Geometric(350.0, 0.0)
    assert float(wl.slot_variance()) == 0.0
    for scaling in ("batch", "ratio_batch"):
        lat = lat_of(scaling)
        rs = jnp.asarray([0.5, 1.0, 2.0, 3.3, 5.0, 8.0, 13.0, 32.0])
        bar = np.asarray(BCT(wl, lat, 256, rs))
        mf = np.asarray(MFC(wl, lat, 256, rs))
        np.testing.assert_array_equal(bar, mf)
        t_a, t_c, t_f = hand_stage_times(PAPER, scaling, 350.0, 256, np.asarray(rs))
        np.testing.assert_allclose(bar, np.maximum(np.maximum(t_a, t_c), t_f), rtol=1e-14)
        np.testing.assert_array_equal(np.asarray(BTH(wl, lat, 256, rs)), np.asarray(MFT(wl, lat, 256, rs)))
    # alpha_a = 0 also gives s = 0
    lat0 = lat_of(alpha_a=0.0)
    wl2 = Geometric(100.0, 500.0)
    np.testing.assert_array_equal(np.asarray(BCT(wl2, lat0, 256, 4.0)), np.asarray(MFC(wl2, lat0, 256, 4.0)))


def test_zero_variance_gradients_latency_and_ratio(paper_latency):
    """With a deterministic load (s = 0) the barrier throughput *is* the mean field; so
    are its gradients with respect to the latency coefficients and the ratio."""
    wl = Geometric(350.0, 0.0)  # every slot holds 350 tokens: mu_A = 197.84 < G(8) = 270
    for r in (3.0, 8.0):
        g_bar = eqx.filter_grad(lambda lt: BTH(wl, lt, 256, r))(paper_latency)
        g_mf = eqx.filter_grad(lambda lt: MFT(wl, lt, 256, r))(paper_latency)
        for k in COEFS:
            assert float(getattr(g_bar, k)) == pytest.approx(float(getattr(g_mf, k)), rel=1e-12, abs=1e-300), k
        assert float(DBTH_DR(wl, paper_latency, 256, r)) == pytest.approx(
            float(jax.grad(lambda x: MFT(wl, paper_latency, 256, x))(r)), rel=1e-12
        )


def test_zero_variance_gradients_workload(paper_latency):
    r = 8.0  # G = t_F(8) = 269.98 > mu_A = 197.84: the barrier term vanishes (z0 -> +inf)
    for wl in (Geometric(350.0, 0.0), Empirical([350.0, 350.0], [1, 1])):
        g_bar = eqx.filter_grad(lambda w: BTH(w, paper_latency, 256, r))(wl)
        g_mf = eqx.filter_grad(lambda w: MFT(w, paper_latency, 256, r))(wl)
        for a, b in zip(jax.tree_util.tree_leaves(g_bar), jax.tree_util.tree_leaves(g_mf)):
            assert np.all(np.isfinite(np.asarray(a)))
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-15)


def test_barrier_at_least_mean_field(paper_latency):
    # For r >= 1, M_r dominates one standard normal, so by Jensen
    # E[max(G, mu + s M_r)] >= E[max(G, mu + s Z)] >= max(G, mu). (For real r < 1 the
    # CDF Phi^r puts M_r below Z and the barrier time may fall below the mean field.)
    wl = Geometric(100.0, 500.0)
    rs = jnp.linspace(1.0, 40.0, 300)
    bar = np.asarray(BCT(wl, paper_latency, 256, rs))
    mf = np.asarray(MFC(wl, paper_latency, 256, rs))
    assert np.all(bar >= mf * (1 - 1e-15))


# Model-error budget for the Gaussian barrier approximation against the engine: the
# per-instance load is a sum of 256 skewed (geometric-age) slot loads, so M_r of a
# Normal is an approximation. Measured bias is about 0.35 % at r = 9-10; we budget 1 %.
GAUSSIAN_MODEL_ERROR = 0.01


def test_barrier_cycle_time_against_engine(engine_runs, paper_latency):
    cycles, _ = engine_runs
    m, se = _mean_and_se(cycles)
    wl = Geometric(100.0, 500.0)
    theory = np.asarray(BCT(wl, paper_latency, ENGINE_B, jnp.asarray(ENGINE_RATIOS, dtype=float)))
    tol = np.maximum(GAUSSIAN_MODEL_ERROR * m, 4 * se)
    assert np.all(np.abs(theory - m) <= tol), np.c_[ENGINE_RATIOS, theory, m, se]
    # The barrier matters where the mean field says attention binds: the engine shows
    # cycle times clearly above t_A_bar = 303.44 at r = 8..10, and so does the theory.
    mf = np.asarray(MFC(wl, paper_latency, ENGINE_B, jnp.asarray(ENGINE_RATIOS, dtype=float)))
    for r in (8, 9):
        assert m[r - 1] - mf[r - 1] > 4 * se[r - 1] + 10.0
        assert theory[r - 1] - mf[r - 1] > 10.0
    # The theory's relative error is within budget, and better than the mean field's there.
    assert np.all(np.abs(theory - m)[7:10] < np.abs(mf - m)[7:10])


# ======================================================================================
# 6. Gradients, jit and vmap
# ======================================================================================
def _build(p, prefill="lognormal", comm_scaling="batch"):
    wl = Geometric(p["mu_p"], p["mu_d"], prefill=prefill, prefill_sigma=p["prefill_sigma"])
    lat = LatencyModel(**{k: p[k] for k in COEFS}, comm_scaling=comm_scaling)
    return wl, lat


@functools.cache
def _jitted(kind, B, prefill, comm_scaling):
    """(jit(f), jit(grad f)) for a parameter dict, compiled once per combination."""
    f = _fn(kind, B, prefill, comm_scaling)
    return jax.jit(f), jax.jit(jax.grad(f))


def _fn(kind, B, prefill, comm_scaling):
    fun = th.barrier_throughput if kind == "barrier" else th.mean_field_throughput

    def f(p):
        wl, lat = _build(p, prefill, comm_scaling)
        return fun(wl, lat, B, p["r"])

    return f


GRAD_POINTS = [
    # (name, function, comm_scaling, overrides, r): points inside a regime (away from kinks)
    ("mf-attention", "mean_field", "batch", {}, 5.0),
    ("mf-ffn", "mean_field", "batch", {}, 14.0),
    ("mf-comm", "mean_field", "batch", {"beta_c": 400.0}, 3.0),
    ("mf-comm-rb", "mean_field", "ratio_batch", {"alpha_c": 0.2, "beta_c": 2000.0}, 6.0),
    ("mf-ffn-rb", "mean_field", "ratio_batch", {}, 13.0),
    ("bar-attention", "barrier", "batch", {}, 8.0),
    ("bar-near-G", "barrier", "batch", {}, 10.3),
    ("bar-comm", "barrier", "batch", {"beta_c": 280.0}, 4.0),
    ("bar-rb", "barrier", "ratio_batch", {"alpha_c": 0.05, "beta_c": 200.0}, 7.5),
    ("bar-small-r", "barrier", "batch", {}, 0.7),
]


@pytest.mark.parametrize("name, kind, scaling, over, r", GRAD_POINTS, ids=[g[0] for g in GRAD_POINTS])
def test_gradients_against_finite_differences(name, kind, scaling, over, r):
    p0 = dict(PAPER, **over, mu_p=100.0, mu_d=500.0, prefill_sigma=0.8, r=r)
    B = 256
    f, grad_f = _jitted(kind, B, "lognormal", scaling)
    p0 = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in p0.items()}
    g = grad_f(p0)
    f0 = float(f(p0))
    nonzero = 0
    for k in p0:
        x = float(p0[k])
        h = 1e-6 * abs(x)
        up, dn = dict(p0), dict(p0)
        up[k], dn[k] = jnp.asarray(x + h), jnp.asarray(x - h)
        fd = (float(f(up)) - float(f(dn))) / (2 * h)
        ad = float(g[k])
        tol = 1e-6 * abs(fd) + 1e-8 * abs(f0) / abs(x)
        assert abs(ad - fd) <= tol, (name, k, ad, fd)
        nonzero += abs(fd) > 1e-6 * abs(f0) / abs(x)
    if kind == "barrier":
        # barrier throughput depends smoothly on attention, workload and floor inputs
        assert nonzero >= 6, nonzero
        assert abs(float(g["prefill_sigma"])) > 0
    else:
        assert float(g["prefill_sigma"]) == 0.0  # the mean field ignores the variance


def test_gradients_mean_field_regimes_hand():
    """Which inputs matter in which regime (hand-derived derivatives)."""
    B, r = 256, 5.0
    wl = Geometric(100.0, 500.0)
    lat = lat_of()
    g_lat = eqx.filter_grad(lambda lt: th.mean_field_throughput(wl, lt, B, r))(lat)
    # attention regime: f = r B / ((r+1)(alpha_a B theta + beta_a)); df/dbeta_a = -f / t_a
    f = r * B / ((r + 1) * 303.44)
    assert float(g_lat.beta_a) == pytest.approx(-f / 303.44, rel=1e-12)
    assert float(g_lat.alpha_a) == pytest.approx(-f * B * 600 / 303.44, rel=1e-12)
    for k in ("alpha_f", "beta_f", "alpha_c", "beta_c"):
        assert float(getattr(g_lat, k)) == 0.0
    dr = float(jax.grad(lambda x: th.mean_field_throughput(wl, lat, B, x))(r))
    assert dr == pytest.approx(B / ((r + 1) ** 2 * 303.44), rel=1e-12)
    g_wl = eqx.filter_grad(lambda w: th.mean_field_throughput(w, lat, B, r))(wl)
    assert float(g_wl.mu_p) == pytest.approx(-f * 0.00165 * B / 303.44, rel=1e-12)
    assert float(g_wl.mu_d) == pytest.approx(-f * 0.00165 * B / 303.44, rel=1e-12)


def test_filter_grad_and_tree_at_barrier():
    """eqx.filter_grad over whole modules, checked leaf by leaf with eqx.tree_at perturbations."""
    B, r = 256, 9.0
    wl = Geometric(100.0, 500.0, prefill="exponential")
    lat = lat_of(beta_c=250.0)

    def f(w, lt):
        return th.barrier_throughput(w, lt, B, r)

    g_wl, g_lat = eqx.filter_grad(lambda pair: f(*pair))((wl, lat))
    f0 = float(f(wl, lat))
    for k in COEFS:
        x = float(getattr(lat, k))
        h = 1e-6 * x
        up = eqx.tree_at(lambda m: getattr(m, k), lat, jnp.asarray(x + h))
        dn = eqx.tree_at(lambda m: getattr(m, k), lat, jnp.asarray(x - h))
        fd = (float(f(wl, up)) - float(f(wl, dn))) / (2 * h)
        assert float(getattr(g_lat, k)) == pytest.approx(fd, rel=1e-6, abs=1e-8 * f0 / x), k
    for k in ("mu_p", "mu_d"):
        x = float(getattr(wl, k))
        h = 1e-6 * x
        up = eqx.tree_at(lambda m: getattr(m, k), wl, jnp.asarray(x + h))
        dn = eqx.tree_at(lambda m: getattr(m, k), wl, jnp.asarray(x - h))
        fd = (float(f(up, lat)) - float(f(dn, lat))) / (2 * h)
        assert float(getattr(g_wl, k)) == pytest.approx(fd, rel=1e-6, abs=1e-8 * f0 / x), k


def test_jit_and_vmap_over_ratios(paper_latency):
    wl = Geometric(100.0, 500.0, prefill="lognormal", prefill_sigma=0.5)
    rs = np.linspace(0.5, 24.0, 16)
    for fun in (th.barrier_throughput, th.mean_field_throughput, th.barrier_cycle_time, th.mean_field_cycle_time):
        loop = np.array([float(fun(wl, paper_latency, 256, float(r))) for r in rs])  # eager
        jt = np.asarray(jax.jit(jax.vmap(lambda r: fun(wl, paper_latency, 256, r)))(jnp.asarray(rs)))
        jscalar = jax.jit(fun)  # batch size traced too
        js = np.array([float(jscalar(wl, paper_latency, 256, float(r))) for r in rs[::6]])
        np.testing.assert_allclose(jt, loop, rtol=1e-12)
        np.testing.assert_allclose(js, loop[::6], rtol=1e-12)
        if fun is th.barrier_throughput:  # eager vmap as well
            vm = np.asarray(jax.vmap(lambda r: fun(wl, paper_latency, 256, r))(jnp.asarray(rs)))
            np.testing.assert_allclose(vm, loop, rtol=1e-12)


def test_vmap_over_latency_models():
    wl = Geometric(100.0, 500.0)
    alphas = np.linspace(0.0008, 0.003, 9)
    B = 256

    def make(a):
        return LatencyModel(alpha_a=a, beta_a=50.0, alpha_f=0.083, beta_f=100.0, alpha_c=0.022, beta_c=20.0)

    for fun in (th.barrier_throughput, th.mean_field_throughput):
        vm = np.asarray(jax.jit(jax.vmap(lambda a: fun(wl, make(a), B, 8.0)))(jnp.asarray(alphas)))
        loop = np.array([float(fun(wl, make(float(a)), B, 8.0)) for a in alphas])
        np.testing.assert_allclose(vm, loop, rtol=1e-12)
    vm_star = np.asarray(jax.jit(jax.vmap(lambda a: th.mean_field_optimum(wl, make(a), B).r_star))(jnp.asarray(alphas)))
    hand = [
        max((a * B * 600 + 50 - 100) / (0.083 * B), (0.022 * B + 20 - 100) / (0.083 * B), math.sqrt(100 / (0.083 * B)))
        for a in alphas
    ]
    np.testing.assert_allclose(vm_star, hand, rtol=1e-12)
    # a batch of whole modules (stacked leaves) vmapped as a pytree
    lats = [make(float(a)) for a in alphas]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *lats)
    vm2 = np.asarray(jax.jit(jax.vmap(lambda lt: th.barrier_throughput(wl, lt, B, 8.0)))(stacked))
    np.testing.assert_allclose(vm2, [float(th.barrier_throughput(wl, lt, B, 8.0)) for lt in lats], rtol=1e-12)
    # and vmapped gradients equal a loop of gradients
    grad_a = jax.grad(lambda a: th.barrier_throughput(wl, make(a), B, 8.0))
    gv = np.asarray(jax.jit(jax.vmap(grad_a))(jnp.asarray(alphas)))
    gl = [float(jax.jit(grad_a)(float(a))) for a in alphas[::4]]
    np.testing.assert_allclose(gv[::4], gl, rtol=1e-10)


# ======================================================================================
# 7. barrier_optimum
# ======================================================================================
OPT_CASES = [
    # (mu_p, mu_d, overrides, comm_scaling, B, max_ratio)
    (100.0, 500.0, {}, "batch", 256, 24),
    (100.0, 100.0, {}, "batch", 256, 24),
    (500.0, 500.0, {}, "batch", 256, 24),
    (100.0, 500.0, {"alpha_c": 0.05, "beta_c": 200.0}, "ratio_batch", 256, 24),
    (100.0, 500.0, {}, "batch", 128, 24),
]


# barrier_optimum is plain JAX with static max_ratio; jit it (max_ratio static, the batch
# size traced) so that the tests compile once per max_ratio instead of dispatching eagerly.
_barrier_optimum = jax.jit(th.barrier_optimum, static_argnums=3)


def _ref_barrier_throughput(c, scaling, theta, var, B, r):
    G, mu, s = hand_moments(c, scaling, theta, var, B, r)
    return r * B / ((r + 1) * ref_barrier_cycle(G, mu, s, r))


@pytest.mark.parametrize("case", OPT_CASES)
def test_barrier_optimum(case):
    mu_p, mu_d, over, scaling, B, max_ratio = case
    wl = Geometric(mu_p, mu_d)
    c = dict(PAPER, **over)
    lat = LatencyModel(**c, comm_scaling=scaling)
    theta, var = mu_p + mu_d, mu_d * (1 + mu_d)
    opt = _barrier_optimum(wl, lat, B, max_ratio)
    ref = np.array([_ref_barrier_throughput(c, scaling, theta, var, B, r) for r in range(1, max_ratio + 1)])
    order = np.argsort(ref)[::-1]
    assert (ref[order[0]] - ref[order[1]]) / ref[order[0]] > 1e-8  # the brute-force argmax is unambiguous
    assert int(opt.ratio) == int(order[0]) + 1
    assert float(opt.throughput) == pytest.approx(ref[order[0]], rel=1e-10)

    rc = float(opt.r_continuous)
    assert 1.0 <= rc <= max_ratio
    assert abs(rc - int(opt.ratio)) < 1.0
    f_rc = _ref_barrier_throughput(c, scaling, theta, var, B, rc)
    if 1.0 < rc < max_ratio:
        # a local maximiser: derivative ~ 0 relative to f, and no better neighbour
        d = float(DBTH_DR(wl, lat, B, rc))
        assert abs(d) <= 1e-7 * f_rc, d
        for delta in (1e-3, 1e-2):
            for x in (rc - delta, rc + delta):
                assert _ref_barrier_throughput(c, scaling, theta, var, B, x) <= f_rc * (1 + 1e-12)
    # the continuous maximiser is at least as good as every integer (within quadrature error)
    assert f_rc >= ref.max() * (1 - 1e-12)


def test_barrier_optimum_boundary(paper_latency):
    # (1500, 1500): r_A = (0.00165*256*3000 + 50 - 100) / 21.248 = 57.3, far above
    # max_ratio = 24: both maximisers sit on the upper boundary, where f' > 0.
    wl = Geometric(1500.0, 1500.0)
    opt = _barrier_optimum(wl, paper_latency, 256, 24)
    assert int(opt.ratio) == 24
    assert float(opt.r_continuous) == pytest.approx(24.0, abs=1e-12)
    assert float(DBTH_DR(wl, paper_latency, 256, 24.0)) > 0
    # lower boundary: an FFN so slow that r = 1 is best (f' < 0 at 1)
    slow = lat_of(alpha_f=10.0)
    low = _barrier_optimum(Geometric(100.0, 500.0), slow, 256, 24)
    assert int(low.ratio) == 1 and float(low.r_continuous) == pytest.approx(1.0, abs=1e-12)
    assert float(DBTH_DR(Geometric(100.0, 500.0), slow, 256, 1.0)) < 0
    # max_ratio = 1 (no grid to search); numpy integers are accepted
    wl = Geometric(100.0, 500.0)
    one = _barrier_optimum(wl, paper_latency, 256, np.int64(1))
    assert int(one.ratio) == 1 and float(one.r_continuous) == 1.0
    assert float(one.throughput) == pytest.approx(float(BTH(wl, paper_latency, 256, 1.0)), rel=1e-14)


@pytest.mark.parametrize("bad", [0, -1, 2.5, 3.0, True, "4", None])
def test_barrier_optimum_invalid_max_ratio(paper_latency, bad):
    with pytest.raises(ValueError, match="max_ratio"):
        th.barrier_optimum(Geometric(100.0, 500.0), paper_latency, 256, bad)


def test_barrier_optimum_matches_engine_argmax(engine_runs, paper_latency):
    """The straggler effect on the paper baseline: the barrier throughput is below the
    mean field where attention (nearly) binds, and the barrier optimum (r = 10) differs
    from the mean-field recommendation (r = 9); the engine agrees with the barrier model.

    Each engine call simulates all ratios with common random numbers, so the per-call
    throughput *differences* between neighbouring ratios are compared against 4 of their
    own standard errors across independent calls.
    """
    wl = Geometric(100.0, 500.0)
    r = jnp.arange(2.0, 11.0)
    assert np.all(np.asarray(BTH(wl, paper_latency, 256, r)) < np.asarray(MFT(wl, paper_latency, 256, r)))
    best = int(_barrier_optimum(wl, paper_latency, 256, 24).ratio)
    assert best == 10
    assert int(th.mean_field_integer_ratio(wl, paper_latency, 256)) == 9
    cycles, _ = engine_runs
    rs = np.asarray(ENGINE_RATIOS, dtype=np.float64)
    thr = rs * ENGINE_B / ((rs + 1) * cycles)  # (calls, ratios): per-call throughput per instance
    for other in (best - 2, best - 1, best + 1, best + 2):
        diff = thr[:, best - 1] - thr[:, other - 1]
        m, se = _mean_and_se(diff)
        assert m > 4 * se, (other, m, se)


# ------------------------------------------------ zero slope: the "unbounded" regime (issue 10)
ZERO_SLOPE = dict(alpha_a=0.0, beta_a=2.0, alpha_f=0.0, beta_f=2.0, alpha_c=0.0, beta_c=2.0)


@pytest.mark.parametrize("scaling", ["batch", "ratio_batch"])
def test_zero_slope_is_unbounded(scaling):
    """alpha_f = 0 (and alpha_c = 0): no stage time grows with r, so the hand throughput
    rB / ((r+1) * 2) rises for ever. r* = +inf, regime "unbounded", no NaN anywhere, and
    every integer recommendation is the top of the range."""
    lat = LatencyModel(**ZERO_SLOPE, comm_scaling=scaling)
    wl = Geometric(100.0, 500.0)
    rs = np.arange(1.0, 200.0)
    hand = hand_mf_throughput(ZERO_SLOPE, scaling, 600.0, 16, rs)
    assert np.all(np.diff(hand) > 0)
    opt = th.mean_field_optimum(wl, lat, 16)
    assert float(opt.r_star) == math.inf
    assert opt.regime_name == "unbounded" and th.REGIMES[int(opt.regime)] == "unbounded"
    for name in ("r_attention", "r_peak", "r_star", "attention_time"):
        assert not math.isnan(float(getattr(opt, name))), name
    if scaling == "batch":
        # t_A_bar = t_C = beta_f = 2: the flat FFN line sits on both levels
        assert float(opt.r_attention) == 0.0 and float(opt.r_communication) == 0.0
    assert int(th.mean_field_integer_ratio(wl, lat, 16, max_ratio=7)) == 7
    bo = th.barrier_optimum(wl, lat, 16, 7)
    assert int(bo.ratio) == 7 and float(bo.r_continuous) == 7.0
    assert float(bo.throughput) == pytest.approx(hand[6], rel=1e-12)
    with pytest.raises(ValueError, match="unbounded"):
        th.mean_field_integer_ratio(wl, lat, 16)


def test_zero_ffn_slope_with_attention_above_or_below():
    """Flat FFN line below t_A_bar: attention binds for ever (r_A = +inf); above it: never
    (r_A = -inf). Both unbounded, since the cycle time stays constant."""
    wl = Geometric(100.0, 500.0)
    above = th.mean_field_optimum(wl, lat_of(alpha_f=0.0), 256)  # t_A_bar = 303.44 > beta_f = 100
    assert float(above.r_attention) == math.inf and above.regime_name == "unbounded"
    below = th.mean_field_optimum(wl, lat_of(alpha_f=0.0, beta_f=1000.0), 256)
    assert float(below.r_attention) == -math.inf and float(below.r_communication) == -math.inf
    assert below.regime_name == "unbounded" and float(below.r_star) == math.inf


def test_zero_ffn_slope_ratio_batch_rising_communication_is_bounded():
    """alpha_f = 0 but communication grows with rB: the optimum is finite and equals a
    brute-force search of the hand throughput."""
    c = dict(PAPER, alpha_f=0.0, alpha_c=0.05)
    lat = LatencyModel(**c, comm_scaling="ratio_batch")
    wl, B = Geometric(100.0, 500.0), 64
    opt = th.mean_field_optimum(wl, lat, B)
    grid = np.linspace(0.05, 200.0, 400_001)
    best = grid[np.argmax(hand_mf_throughput(c, "ratio_batch", 600.0, B, grid))]
    assert math.isfinite(float(opt.r_star)) and opt.regime_name != "unbounded"
    assert float(opt.r_star) == pytest.approx(best, abs=1e-3)


def test_zero_slope_provision_recommends_top_of_range():
    """The command of issue 10 (provision, ratios 1..7): mean field, barrier model and
    simulation all recommend 7, and neither the JSON nor the text holds a NaN."""
    import contextlib
    import io
    import json

    lat = LatencyModel(**ZERO_SLOPE)
    with contextlib.redirect_stdout(io.StringIO()):
        rep = afdjax.provision(
            jax.random.key(0), Geometric(100.0, 500.0), lat, 16, ratios=range(1, 8), num_steps=200, num_replicas=4
        )
    data = rep.to_dict()
    assert data["ratio_mean_field"] == data["ratio_barrier"] == data["ratio_simulated"] == 7
    assert data["regime"] == "unbounded" and data["r_star"] is None  # +inf: null in JSON
    json.dumps(data, allow_nan=False)
    assert "nan" not in rep.format_text().lower()


def test_unbounded_or_nan_r_star_without_range_raises_under_jit():
    lat = LatencyModel(**ZERO_SLOPE)
    f = eqx.filter_jit(lambda lt: th.mean_field_integer_ratio(Geometric(100.0, 500.0), lt, 16))
    with pytest.raises(Exception, match="unbounded"):
        jax.block_until_ready(f(lat))
    with pytest.raises(ValueError, match="NaN"):
        th.best_integer_neighbour(jnp.asarray(jnp.nan), lambda r: r, max_ratio=4)
    assert int(th.best_integer_neighbour(jnp.asarray(jnp.inf), lambda r: r, max_ratio=4)) == 4
    assert int(th.best_integer_neighbour(jnp.asarray(-jnp.inf), lambda r: r, max_ratio=4)) == 1


# ------------------------------------------------------------------ batch size <= 0 (issue 11)
@pytest.mark.parametrize("bad", [0, -16, 0.0, np.array([8.0, 0.0])])
def test_every_theory_function_rejects_batch_size(bad, paper_latency):
    wl = Geometric(100.0, 500.0)
    calls = [
        lambda: th.attention_time_mean_field(wl, paper_latency, bad),
        lambda: th.mean_field_cycle_time(wl, paper_latency, bad, 3.0),
        lambda: th.mean_field_throughput(wl, paper_latency, bad, 3.0),
        lambda: th.mean_field_optimum(wl, paper_latency, bad),
        lambda: th.mean_field_integer_ratio(wl, paper_latency, bad, max_ratio=8),
        lambda: th.attention_time_moments(wl, paper_latency, bad),
        lambda: th.barrier_cycle_time(wl, paper_latency, bad, 3.0),
        lambda: th.barrier_throughput(wl, paper_latency, bad, 3.0),
        lambda: th.barrier_optimum(wl, paper_latency, bad, 8),
        lambda: afdjax.optimise_ratio(wl, paper_latency, bad, max_ratio=8),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="batch_size"):
            call()


# -------------------------------------------------------- grid argmax and Newton polish
def test_ratio_choice_on_a_parabola():
    """f(r) = -(r - 3.3)^2: best integer 3, nearest grid point 211/64, one Newton step
    lands on 3.3 (within the 1/64 cell); at the boundary the clip holds."""
    f = lambda r: -((r - 3.3) ** 2)
    ratio, value = th.integer_argmax(f, 8)
    assert int(ratio) == 3 and float(value) == pytest.approx(-0.09, rel=1e-12)
    assert float(th.grid_argmax(f, 8)) == 211 / 64
    assert float(th.grid_argmax(f, 1)) == 1.0
    ratio, value, r = th.maximise_ratio(f, 8)
    assert int(ratio) == 3 and float(r) == pytest.approx(3.3, abs=1e-14)
    assert float(th.newton_polish(f, 2.0, 1.0, 8.0, 1)) == pytest.approx(3.3, abs=1e-14)
    assert float(th.newton_polish(f, 2.0, 1.0, 8.0, 2, max_step=0.25)) == 2.5  # clipped steps
    assert float(th.maximise_ratio(f, 3)[2]) == 3.0  # boundary maximum
    # convex stretch: the gradient step (+f') instead of a Newton step
    g = lambda r: r**2
    assert float(th.newton_polish(g, 2.0, 1.0, 8.0, 1)) == 6.0
