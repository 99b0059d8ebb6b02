"""Barrier refinement of the mean field: the Gaussian expected step time of the rA-1F
process (arXiv 2601.21351, section 4).

Per-instance attention time is approximately Normal(``mu_A``, ``s^2``) with
``mu_A = alpha_a B theta + beta_a`` and ``s = alpha_a sqrt(B) sigma``. With
``G = max(t_F, t_C)`` and ``M_r`` the maximum of ``r`` standard normals,

    E[tau] = E[max(G, mu_A + s M_r)] = G + s * integral_{(G - mu_A)/s}^inf (1 - Phi(x)^r) dx,

which is defined, and differentiable, for real ``r > 0`` (``_max_normal``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._latency import LatencyModel
from .._validate import filter_jit
from .._workload import Workload
from ._base import as_float, check_batch_size, per_instance_throughput
from ._max_normal import expected_max_normal_excess
from ._ratio_choice import check_max_ratio, maximise_ratio
from ._stage_terms import stage_layer_time


def attention_time_moments(workload: Workload, latency: LatencyModel, batch_size):
    """Mean and standard deviation of one instance's attention time in the
    stationary state (``alpha_a B theta + beta_a`` and ``alpha_a sqrt(B) sigma``; time
    units) for batch size ``B > 0``.

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).

    Returns:
        ``(mu_A, s)``, two arrays in time units.

    Examples:
        >>> workload = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
        >>> latency = afdjax.LatencyModel.from_preset("paper-910c")
        >>> mu_a, s = afdjax.attention_time_moments(workload, latency, 256)
        >>> round(float(mu_a), 2), round(float(s), 2)
        (303.44, 13.21)
    """
    check_batch_size(batch_size)
    B = as_float(batch_size)
    mu = latency.attention_time(B * workload.theta())
    var = workload.slot_variance()
    # sqrt guarded so that a zero-variance workload has finite (zero) gradients
    safe = jnp.where(var > 0, var, 1.0)
    s = latency.alpha_a * jnp.where(var > 0, jnp.sqrt(B * safe), 0.0)
    return mu, s


def barrier_cycle_time(workload: Workload, latency: LatencyModel, batch_size, ratio) -> jax.Array:
    """Barrier-aware expected step time ``E[max(G, mu_A + s M_r)]`` for real ``ratio``
    (time units).

    ``G = max(t_F(r), t_C(r))``. When ``s = 0`` this is the mean-field cycle time.

    With the stage-time parts of ``latency`` (``noise``, ``routing``, ``comm``): the
    expected per-layer barrier ``E[max(max_j t_A,j a_j, t_C c, t_C' c', t_F f)]`` of
    ``_stage_terms.stage_layer_time`` (per-layer noise, the busiest expert-parallel
    rank, both communication directions); ``G`` includes the F->A time with ``comm``. All
    three ``None``: exactly the Gaussian barrier above; noise with every ``cv = 0`` and no
    routing: the Gaussian barrier with ``G = max(t_F, t_C, t_C')``.

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        ratio: the A/F ratio ``r``, real-valued (``>= 1``); may be traced and differentiated.

    Returns:
        the expected step time ``E[tau]`` (time units), a scalar array.
    """
    ratio = as_float(ratio)
    mu, s = attention_time_moments(workload, latency, batch_size)
    floor = jnp.maximum(latency.ffn_time(ratio, batch_size), latency.comm_time(ratio, batch_size))
    if latency.comm is not None:
        floor = jnp.maximum(floor, latency.comm_back_time(ratio, batch_size))
    safe_s = jnp.where(s > 0, s, 1.0)
    z0 = (floor - mu) / safe_s
    with_noise = floor + safe_s * expected_max_normal_excess(z0, ratio)
    gaussian = jnp.where(s > 0, with_noise, jnp.maximum(floor, mu))
    if not latency.stochastic:
        return gaussian
    stochastic = _stage_barrier(latency, mu, s, as_float(batch_size), ratio)
    if latency.routing is not None:
        return stochastic
    n = latency.noise
    quiet = (n.attention_cv == 0) & (n.ffn_cv == 0) & (n.comm_cv == 0)
    return jnp.where(quiet, gaussian, stochastic)


@filter_jit
def _stage_barrier(latency, mu, s, batch_size, ratio):
    """``stage_layer_time`` broadcast over the arrays (one compilation per latency
    structure and shape, also when called eagerly)."""
    return jnp.vectorize(lambda m, sd, b, r: stage_layer_time(m, sd, latency, b, r))(mu, s, batch_size, ratio)


def barrier_throughput(workload: Workload, latency: LatencyModel, batch_size, ratio) -> jax.Array:
    """Barrier-aware throughput per instance ``r B / ((r+1) E[tau])`` (tokens per time unit
    per instance) for real ``ratio`` and batch size ``B > 0``.

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        ratio: the A/F ratio ``r``, real-valued (``>= 1``); may be traced and differentiated.

    Returns:
        tokens per time unit per instance, a scalar array.
    """
    ratio = as_float(ratio)
    return per_instance_throughput(ratio, batch_size, barrier_cycle_time(workload, latency, batch_size, ratio))


class BarrierOptimum(eqx.Module):
    """Optimum of the barrier-aware throughput."""

    ratio: jax.Array
    """Integer ratio in ``[1, max_ratio]`` with the highest barrier throughput."""
    r_continuous: jax.Array
    """Real-valued maximiser (grid of 1/64 over ``[1, max_ratio]``, refined by a few
    Newton steps on the derivative; not refined with ``noise`` or ``routing``)."""
    throughput: jax.Array
    """Barrier throughput at ``ratio``."""


def barrier_optimum(workload: Workload, latency: LatencyModel, batch_size, max_ratio: int) -> BarrierOptimum:
    """Integer and continuous maximisers of [`barrier_throughput`][afdjax.barrier_throughput] over ``[1, max_ratio]``.

    With an unbounded
    optimum (e.g. ``alpha_f = 0``) both maximisers are ``max_ratio``.

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        max_ratio: the largest ratio searched, a Python integer ``>= 1`` (static: one compilation per value).

    Returns:
        a [`BarrierOptimum`][afdjax.BarrierOptimum].
    """
    max_ratio = check_max_ratio(max_ratio)
    check_batch_size(batch_size)
    return _barrier_optimum_jit(workload, latency, batch_size, max_ratio)


@filter_jit
def _barrier_optimum_jit(workload, latency, batch_size, max_ratio: int) -> BarrierOptimum:
    # stage-time parts: no Newton polish (its second derivatives through the per-layer
    # quadrature take long to compile); the continuous optimum is then the 1/64 grid's
    newton_steps = 0 if latency.stochastic else 4
    fn = lambda r: barrier_throughput(workload, latency, batch_size, r)
    ratio, value, r = maximise_ratio(fn, max_ratio, newton_steps)
    return BarrierOptimum(ratio=ratio, r_continuous=r, throughput=value)
