"""Closed-form theory of the rA-1F decode process (arXiv 2601.21351, PAPER.md section 3).

Everything here is pure JAX: it works under ``jit``, ``vmap`` over parameter grids and
``grad`` with respect to every continuous input, including a real-valued ratio ``r``.

Mean field
----------
With ``theta`` the stationary mean per-slot load, an Attention instance needs
``t_A_bar = alpha_a B theta + beta_a`` per step. The step time is the largest of
``t_A_bar``, ``t_C(r)`` and ``t_F(r) = alpha_f r B + beta_f``:

* attention-bound up to ``r_A = (t_A_bar - beta_f) / (alpha_f B)``,
* communication-bound (``t_C = alpha_c B + beta_c``) up to ``r_C = (t_C - beta_f) / (alpha_f B)``,
* FFN-bound beyond: ``r B / ((r+1)(alpha_f r B + beta_f))`` peaks at ``r_peak = sqrt(beta_f / (alpha_f B))``,

and the optimum is ``r* = max(r_A, r_C, r_peak)``. With communication scaling with
``r B`` (``comm_scaling="ratio_batch"``) there is no communication plateau (``r_C`` is
NaN): the rising stage time is ``max(t_F(r), t_C(r))``, ``r_A`` is where it reaches
``t_A_bar``, and ``r_peak`` minimises ``(1 + 1/r) max(t_F(r), t_C(r))``; the binding
regime is "communication" when the communication line is the larger one there.

Barrier refinement
------------------
Per-instance attention time is approximately Normal(``mu_A``, ``s^2``) with
``mu_A = alpha_a B theta + beta_a`` and ``s = alpha_a sqrt(B) sigma``. With
``G = max(t_F, t_C)`` and ``M_r`` the maximum of ``r`` standard normals,

    E[tau] = E[max(G, mu_A + s M_r)] = G + s * integral_{(G - mu_A)/s}^inf (1 - Phi(x)^r) dx,

which is defined, and differentiable, for real ``r > 0``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr, ndtr

from .._latency import LatencyModel
from .._workload._core import Workload

REGIMES = ("attention", "communication", "ffn")
"""Names of the binding regimes, indexed by :attr:`MeanFieldOptimum.regime`."""

# The barrier integrand 1 - Phi(x)^r is 1 to double precision below _X_LO (for r >= 0.5)
# and below 1e-16 above _X_HI (for r <= 1e6); composite Gauss-Legendre in between.
_X_LO, _X_HI = -12.0, 10.0
_GL_PANELS, _GL_ORDER = 24, 20
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(_GL_ORDER)


def _float(x):
    return jnp.asarray(x, dtype=jnp.zeros(()).dtype)


def _per_instance(ratio, batch_size, cycle_time):
    """Throughput per instance: ``r B`` tokens per step over ``r + 1`` instances."""
    return ratio * batch_size / ((ratio + 1.0) * cycle_time)


# ----------------------------------------------------------------------------- mean field
def attention_time_mean_field(workload: Workload, latency: LatencyModel, batch_size) -> jax.Array:
    """``t_A_bar = alpha_a B theta + beta_a``: attention time at the stationary mean load."""
    return latency.attention_time(batch_size * workload.theta())


def mean_field_cycle_time(workload: Workload, latency: LatencyModel, batch_size, ratio) -> jax.Array:
    """Mean-field step time ``max(t_A_bar, t_C(r), t_F(r))`` for real ``ratio`` (time units)."""
    ratio = _float(ratio)
    t_a = attention_time_mean_field(workload, latency, batch_size)
    return jnp.maximum(jnp.maximum(t_a, latency.comm_time(ratio, batch_size)), latency.ffn_time(ratio, batch_size))


def mean_field_throughput(workload: Workload, latency: LatencyModel, batch_size, ratio) -> jax.Array:
    """Mean-field throughput per instance ``r B / ((r + 1) * cycle time)`` (tokens per time unit)."""
    ratio = _float(ratio)
    return _per_instance(ratio, batch_size, mean_field_cycle_time(workload, latency, batch_size, ratio))


class MeanFieldOptimum(eqx.Module):
    """The mean-field optimal ratio and its ingredients (all real-valued arrays)."""

    r_attention: jax.Array
    """``r_A``: the ratio at which the FFN (or communication) time reaches ``t_A_bar``."""
    r_communication: jax.Array
    """``r_C``: where the FFN time reaches a constant communication time (NaN when
    communication scales with ``r B``)."""
    r_peak: jax.Array
    """``r_peak``: the peak of the FFN/communication-bound branch
    (``sqrt(beta_f / (alpha_f B))`` in the paper's convention)."""
    r_star: jax.Array
    """``max(r_A, r_C, r_peak)``: the mean-field optimal (real) ratio."""
    regime: jax.Array
    """Index into :data:`REGIMES` of the binding stage at ``r_star``."""
    attention_time: jax.Array
    """``t_A_bar`` (time units)."""

    @property
    def regime_name(self) -> str:
        return REGIMES[int(self.regime)]


def _line_peak(a, b):
    """argmin over r > 0 of (1 + 1/r)(a r + b): sqrt(b / a) (inf when a = 0)."""
    return jnp.where(a > 0, jnp.sqrt(b / jnp.where(a > 0, a, 1.0)), jnp.inf)


def mean_field_optimum(workload: Workload, latency: LatencyModel, batch_size) -> MeanFieldOptimum:
    """Mean-field optimal ratio ``r* = max(r_A, r_C, r_peak)`` and the binding regime."""
    B = _float(batch_size)
    t_a = attention_time_mean_field(workload, latency, B)
    a_f, b_f = latency.alpha_f * B, latency.beta_f
    if latency.comm_scaling == "batch":
        t_c = latency.comm_time(1.0, B)
        r_a = (t_a - b_f) / a_f
        r_c = (t_c - b_f) / a_f
        r_peak = _line_peak(a_f, b_f)
        candidates = jnp.stack([r_a, r_c, r_peak])
        r_star = jnp.max(candidates)
        regime = jnp.argmax(candidates)
    else:
        a_c, b_c = latency.alpha_c * B, latency.beta_c
        # r_A: where the rising line max(a_f r + b_f, a_c r + b_c) reaches t_A_bar.
        r_a = jnp.minimum((t_a - b_f) / a_f, jnp.where(a_c > 0, (t_a - b_c) / jnp.where(a_c > 0, a_c, 1.0), jnp.inf))
        r_c = jnp.full_like(r_a, jnp.nan)

        def cost(r):  # (1 + 1/r) * max of the two lines: convex in r > 0
            return (1.0 + 1.0 / r) * jnp.maximum(a_f * r + b_f, a_c * r + b_c)

        crossing = jnp.where(a_f != a_c, (b_c - b_f) / jnp.where(a_f != a_c, a_f - a_c, 1.0), jnp.inf)
        options = jnp.stack([_line_peak(a_f, b_f), _line_peak(a_c, b_c), crossing])
        options = jnp.where((options > 0) & jnp.isfinite(options), options, jnp.inf)
        costs = jnp.where(jnp.isfinite(options), cost(jnp.where(jnp.isfinite(options), options, 1.0)), jnp.inf)
        r_peak = options[jnp.argmin(costs)]
        r_star = jnp.maximum(r_a, r_peak)
        comm_on_top = a_c * r_star + b_c > a_f * r_star + b_f
        regime = jnp.where(r_a >= r_peak, 0, jnp.where(comm_on_top, 1, 2))
    return MeanFieldOptimum(
        r_attention=r_a, r_communication=r_c, r_peak=r_peak, r_star=r_star, regime=regime, attention_time=t_a
    )


def best_integer_neighbour(r_star, throughput_fn, max_ratio: int | None = None) -> jax.Array:
    """The better of ``floor(r*)`` and ``ceil(r*)`` under ``throughput_fn`` (never below 1,
    never above ``max_ratio`` when given); ties go to the smaller ratio."""
    if max_ratio is not None and (
        isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, np.integer)) or max_ratio < 1
    ):
        raise ValueError(f"max_ratio={max_ratio!r} is invalid: expected an integer >= 1")
    lo = jnp.maximum(jnp.floor(r_star), 1.0)
    hi = jnp.maximum(jnp.ceil(r_star), 1.0)
    if max_ratio is not None:
        lo, hi = jnp.minimum(lo, max_ratio), jnp.minimum(hi, max_ratio)
    return jnp.where(throughput_fn(hi) > throughput_fn(lo), hi, lo).astype(jnp.int32)


def mean_field_integer_ratio(workload, latency, batch_size, max_ratio: int | None = None) -> jax.Array:
    """Integer recommendation of the mean field: the better neighbour of ``r*`` (>= 1)."""
    opt = mean_field_optimum(workload, latency, batch_size)
    return best_integer_neighbour(
        opt.r_star, lambda r: mean_field_throughput(workload, latency, batch_size, r), max_ratio
    )


# -------------------------------------------------------------------------------- barrier
def _panel_nodes(a, b):
    """Composite Gauss-Legendre nodes and weights on [a, b] (a, b scalars or arrays)."""
    edges = jnp.linspace(0.0, 1.0, _GL_PANELS + 1)
    left = edges[:-1, None]
    half = 0.5 / _GL_PANELS
    unit = left + half * (jnp.asarray(_GL_NODES)[None, :] + 1.0)  # in [0, 1]
    weights = jnp.broadcast_to(half * jnp.asarray(_GL_WEIGHTS)[None, :], unit.shape)
    a, b = jnp.asarray(a)[..., None, None], jnp.asarray(b)[..., None, None]
    return a + (b - a) * unit, (b - a) * weights


def expected_max_normal_excess(z0, ratio) -> jax.Array:
    """``integral_{z0}^inf (1 - Phi(x)^r) dx = E[(M_r - z0)^+]`` for real ``r >= 0.5``.

    ``M_r`` is the maximum of ``r`` independent standard normals (``Phi^r`` is its CDF for
    real ``r``). Pure JAX: exact below ``-12`` (integrand 1), zero above ``10``, composite
    Gauss-Legendre (24 panels x 20 nodes) in between; relative error below 1e-10 in
    float64 against adaptive quadrature.
    """
    z0, ratio = jnp.broadcast_arrays(_float(z0), _float(ratio))
    lower = jnp.maximum(z0, _X_LO)
    # The integrand decays like r * phi(x) / x: 8 units past the lower limit it is below
    # 1e-14 of its value there, so the upper limit follows the lower one beyond _X_HI.
    upper = jnp.maximum(_X_HI, lower + 8.0)
    x, w = _panel_nodes(lower, upper)
    r = ratio[..., None, None]
    integrand = -jnp.expm1(r * _log_ndtr_accurate(x))
    body = jnp.sum(w * integrand, axis=(-2, -1))
    return body + jnp.maximum(_X_LO - z0, 0.0)


def _log_ndtr_accurate(x):
    """``log Phi(x)`` with full relative precision of ``1 - Phi(x)`` for ``x > 0``
    (``log1p(-Phi(-x))``); ``log_ndtr`` (asymptotic series) below 0."""
    positive = x > 0
    return jnp.where(positive, jnp.log1p(-ndtr(-jnp.where(positive, x, 0.0))), log_ndtr(jnp.where(positive, 0.0, x)))


def attention_time_moments(workload: Workload, latency: LatencyModel, batch_size):
    """``(mu_A, s)``: mean and standard deviation of one instance's attention time in the
    stationary state (``alpha_a B theta + beta_a`` and ``alpha_a sqrt(B) sigma``)."""
    B = _float(batch_size)
    mu = latency.attention_time(B * workload.theta())
    var = workload.slot_variance()
    # sqrt guarded so that a zero-variance workload has finite (zero) gradients
    safe = jnp.where(var > 0, var, 1.0)
    s = latency.alpha_a * jnp.where(var > 0, jnp.sqrt(B * safe), 0.0)
    return mu, s


def barrier_cycle_time(workload: Workload, latency: LatencyModel, batch_size, ratio) -> jax.Array:
    """Barrier-aware expected step time ``E[max(G, mu_A + s M_r)]`` for real ``ratio``.

    ``G = max(t_F(r), t_C(r))``. When ``s = 0`` this is the mean-field cycle time.
    """
    ratio = _float(ratio)
    mu, s = attention_time_moments(workload, latency, batch_size)
    floor = jnp.maximum(latency.ffn_time(ratio, batch_size), latency.comm_time(ratio, batch_size))
    safe_s = jnp.where(s > 0, s, 1.0)
    z0 = (floor - mu) / safe_s
    with_noise = floor + safe_s * expected_max_normal_excess(z0, ratio)
    return jnp.where(s > 0, with_noise, jnp.maximum(floor, mu))


def barrier_throughput(workload: Workload, latency: LatencyModel, batch_size, ratio) -> jax.Array:
    """Barrier-aware throughput per instance ``r B / ((r+1) E[tau])`` (tokens per time unit)."""
    ratio = _float(ratio)
    return _per_instance(ratio, batch_size, barrier_cycle_time(workload, latency, batch_size, ratio))


class BarrierOptimum(eqx.Module):
    """Optimum of the barrier-aware throughput."""

    ratio: jax.Array
    """Integer ratio in ``[1, max_ratio]`` with the highest barrier throughput."""
    r_continuous: jax.Array
    """Real-valued maximiser (grid of 1/64 over ``[1, max_ratio]``, refined by a few
    Newton steps on the derivative)."""
    throughput: jax.Array
    """Barrier throughput at ``ratio``."""


def barrier_optimum(workload: Workload, latency: LatencyModel, batch_size, max_ratio: int) -> BarrierOptimum:
    """Integer and continuous maximisers of :func:`barrier_throughput` over ``[1, max_ratio]``."""
    if isinstance(max_ratio, bool) or not isinstance(max_ratio, (int, np.integer)) or max_ratio < 1:
        raise ValueError(f"max_ratio={max_ratio!r} is invalid: expected an integer >= 1")
    return _barrier_optimum_jit(workload, latency, batch_size, int(max_ratio))


@eqx.filter_jit
def _barrier_optimum_jit(workload, latency, batch_size, max_ratio: int) -> BarrierOptimum:
    integers = jnp.arange(1, max_ratio + 1, dtype=jnp.zeros(()).dtype)
    f = lambda r: barrier_throughput(workload, latency, batch_size, r)  # noqa: E731
    values = jax.vmap(f)(integers)
    best = jnp.argmax(values)
    grid = jnp.linspace(1.0, float(max_ratio), 64 * (max_ratio - 1) + 1) if max_ratio > 1 else jnp.ones(1)
    r = grid[jnp.argmax(jax.vmap(f)(grid))]
    df, d2f = jax.grad(f), jax.grad(jax.grad(f))
    for _ in range(4):  # Newton on f'(r) = 0, kept inside the grid cell
        step = df(r) / jnp.where(d2f(r) < 0, d2f(r), -1.0)
        r = jnp.clip(r - jnp.clip(step, -1 / 64, 1 / 64), 1.0, float(max_ratio))
    return BarrierOptimum(ratio=(best + 1).astype(jnp.int32), r_continuous=r, throughput=values[best])
