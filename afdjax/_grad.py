"""Differentiable expected throughput per instance, and gradient ascent on the ratio.

Estimators (what ``jax.grad`` of :func:`expected_throughput` computes)
----------------------------------------------------------------------
* **Latency coefficients and prefill parameters** (``mu_p``, ``prefill_sigma``): pathwise
  derivatives with common random numbers. Prefill lengths are smooth functions of their
  uniforms (inverse CDF), loads are linear in them, and the step time is a max of affine
  functions. So each replica's throughput is piecewise smooth in these parameters, and
  autodiff returns its exact (sub)gradient. Unbiased for the gradient of the expectation
  whenever the max is attained uniquely with probability one, which holds for continuous
  prefill or non-degenerate coefficients; variance comes from the replicas (stated s.e.).
* **Decode-length parameters** (``mu_d`` of :class:`Geometric`): decode lengths are integers,
  so the pathwise derivative is zero almost surely (biased). afdjax uses the
  score-function (likelihood-ratio) estimator ``E[(f - b) d log p(D)/d theta]``. It sums the
  log-likelihood of every decode length drawn for the first ``r`` instances of a replica,
  including the stationary initial state, and uses a leave-one-out baseline ``b`` (the
  mean throughput of the other replicas). Unbiased; its variance grows with the number of
  requests per replica, so it needs more replicas than the pathwise terms (measured in
  the tests and ``experiments/bench_grad.py``).
* **A continuous ratio** ``r``: the integer systems ``floor(r)`` and ``floor(r) + 1`` are
  interpolated linearly (``(1 - f) T(n) + f T(n+1)``, ``f = r - n``). The value is exact at
  integers, and the r-derivative is the common-random-numbers difference
  ``T(n+1) - T(n)``. For a smooth objective in r use the barrier model
  (:func:`~afdjax.barrier_throughput`), which is defined for real r; :func:`optimise_ratio`
  climbs it by gradient ascent.

The value returned is the mean over replicas of per-replica throughput (tokens / time /
(r+1)). It differs from :attr:`SimulationResult.throughput_per_instance`, the pooled ratio
of sums, only by O(1/steps).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._engine import SimulationResult, plan_sizes, simulate
from ._latency import LatencyModel
from ._theory._closed_forms import barrier_optimum, barrier_throughput, mean_field_optimum
from ._workload._core import Workload


def throughput_estimate(result: SimulationResult) -> jax.Array:
    """Per-ratio throughput estimate ``(n,)`` whose gradient is pathwise + score function.

    ``mean_i [T_i + stop_gradient(T_i - b_i) (log p_i - stop_gradient(log p_i))]`` where
    ``T_i`` is replica ``i``'s throughput, ``log p_i`` the log-likelihood of its decode
    lengths and ``b_i`` the mean of the other replicas. Its value equals ``mean_i T_i``.
    """
    per = result.throughput_per_replica
    log_prob = result.decode_log_prob
    R = per.shape[0]
    if R > 1:
        baseline = (jnp.sum(per, axis=0, keepdims=True) - per) / (R - 1)
    else:
        baseline = per
    score = jax.lax.stop_gradient(per - baseline) * (log_prob - jax.lax.stop_gradient(log_prob))
    return jnp.mean(per + score, axis=0)


def _interpolate(values: jax.Array, ratio) -> jax.Array:
    """Linear interpolation of ``values[r - 1]`` (r = 1..n) at a real ratio in [1, n]."""
    n = values.shape[0]
    ratio = jnp.clip(jnp.asarray(ratio, dtype=values.dtype), 1.0, float(n))
    lo = jnp.clip(jnp.floor(ratio), 1.0, float(max(n - 1, 1)))
    frac = ratio - lo
    i = lo.astype(jnp.int32) - 1
    hi_value = values[jnp.minimum(i + 1, n - 1)]
    return (1.0 - frac) * values[i] + frac * hi_value


def expected_throughput(
    key: jax.Array,
    workload: Workload,
    latency: LatencyModel,
    batch_size: int,
    ratio,
    num_steps: int,
    num_replicas: int,
    *,
    max_ratio: int,
    chunk_steps: int,
    requests_per_chunk: int,
    **simulate_kwargs,
) -> jax.Array:
    """Monte Carlo throughput per instance at a (possibly traced, real) ratio, differentiable
    in the workload, the latency coefficients and the ratio (estimators: module docstring).

    Buffer sizes must be given because the parameters may be traced; take them from
    :func:`plan_buffers`. ``max_ratio`` (static) bounds the ratio. Other keyword
    arguments go to :func:`~afdjax.simulate`, e.g. ``micro_batches=m`` for the
    micro-batch pipeline (its event times are max/plus of the stage times, so the
    pathwise gradient is exact there too).
    """
    result = simulate(
        key,
        workload,
        latency,
        batch_size,
        list(range(1, max_ratio + 1)),
        num_steps,
        num_replicas,
        chunk_steps=chunk_steps,
        requests_per_chunk=requests_per_chunk,
        **simulate_kwargs,
    )
    return _interpolate(throughput_estimate(result), ratio)


def plan_buffers(workload: Workload, batch_size: int, max_ratio: int, num_steps: int, num_replicas: int,
                 warmup_steps: int = 0) -> dict:
    """Buffer sizes (``chunk_steps``, ``requests_per_chunk``) for a concrete workload, so that
    :func:`expected_throughput` can run with traced parameters."""
    base = dict(max_ratio=max_ratio, batch_size=batch_size, num_steps=num_steps, warmup_steps=warmup_steps,
                num_replicas=num_replicas, num_bins=4096)
    sizes = plan_sizes(workload, base, None, None, None, 512 * 2**20)
    # head-room: traced parameters may move away from the planning point
    return dict(chunk_steps=sizes["chunk_steps"], requests_per_chunk=min(2 * sizes["requests_per_chunk"],
                                                                          sizes["chunk_steps"] + 1))


class ThroughputGradient(eqx.Module):
    """Value and gradients of the Monte Carlo throughput per instance."""

    value: jax.Array
    """Throughput per instance (mean over replicas), tokens per time unit per instance."""
    stderr: jax.Array
    """Standard error of ``value`` across replicas."""
    workload: Workload
    """d value / d workload parameters (same pytree as the workload)."""
    latency: LatencyModel
    """d value / d latency coefficients (same pytree as the latency model)."""
    ratio: jax.Array
    """d value / d r (linear interpolation between neighbouring integer systems)."""


def throughput_gradients(
    key: jax.Array,
    workload: Workload,
    latency: LatencyModel,
    batch_size: int,
    ratio: float,
    num_steps: int = 4000,
    num_replicas: int = 16,
    **simulate_kwargs,
) -> ThroughputGradient:
    """Throughput per instance at ``ratio`` and its gradient with respect to every workload
    parameter, every latency coefficient and the ratio, in one reverse-mode pass.

    Standard errors of the gradient: call with several keys (or see
    ``experiments/bench_grad.py``); the score-function part for ``mu_d`` is the noisiest.
    ``simulate_kwargs`` (e.g. ``micro_batches=m``, ``start``, ``warmup_steps``) go to
    :func:`~afdjax.simulate`.
    """
    if not (isinstance(ratio, (int, float, np.integer, np.floating)) and math.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"ratio={ratio!r} is invalid: expected a real number >= 1")
    max_ratio = max(2, math.floor(ratio) + 1)
    sizes = plan_buffers(workload, batch_size, max_ratio, num_steps, num_replicas,
                         simulate_kwargs.get("warmup_steps", 0))
    value, grads = _value_and_grad(key, workload, latency, batch_size, jnp.asarray(float(ratio)), num_steps,
                                   num_replicas, max_ratio, sizes["chunk_steps"], sizes["requests_per_chunk"],
                                   tuple(sorted(simulate_kwargs.items())))
    (value, stderr) = value
    g_workload, g_latency, g_ratio = grads
    return ThroughputGradient(value=value, stderr=stderr, workload=g_workload, latency=g_latency, ratio=g_ratio)


@eqx.filter_jit
def _value_and_grad(key, workload, latency, batch_size, ratio, num_steps, num_replicas, max_ratio, chunk_steps,
                    requests_per_chunk, extra):
    kwargs = dict(extra)

    def objective(params):
        w, lat, r = params
        result = simulate(key, w, lat, batch_size, list(range(1, max_ratio + 1)), num_steps, num_replicas,
                          chunk_steps=chunk_steps, requests_per_chunk=requests_per_chunk, **kwargs)
        value = _interpolate(throughput_estimate(result), r)
        per = _interpolate(jnp.moveaxis(result.throughput_per_replica, 0, 1), r)  # (R,)
        stderr = jnp.std(per, ddof=1) / jnp.sqrt(per.shape[0]) if per.shape[0] > 1 else jnp.nan
        return value, jax.lax.stop_gradient(stderr)

    (value, stderr), grads = eqx.filter_value_and_grad(objective, has_aux=True)((workload, latency, ratio))
    return (value, stderr), grads


class RatioOptimum(eqx.Module):
    """Result of :func:`optimise_ratio`."""

    ratio: jax.Array
    """Continuous maximiser of the barrier-model throughput found by gradient ascent."""
    gradient: jax.Array
    """d throughput / d r at ``ratio`` (close to 0 at an interior optimum)."""
    throughput: jax.Array
    """Barrier-model throughput per instance at ``ratio``."""
    r_star_mean_field: jax.Array
    """The closed-form mean-field optimum, for comparison."""
    best_integer: jax.Array
    """Best integer ratio of the barrier model over ``[1, max_ratio]`` (integer sweep)."""
    steps: int = eqx.field(static=True)
    """Optimiser steps taken."""


def optimise_ratio(
    workload: Workload,
    latency: LatencyModel,
    batch_size: int,
    r0: float | None = None,
    *,
    max_ratio: int | None = None,
    learning_rate: float = 0.05,
    num_steps: int = 300,
) -> RatioOptimum:
    """Gradient ascent (optax Adam on ``log r``) of the barrier-model throughput over a
    continuous ratio; compared with the mean-field r* and the integer sweep.

    Starts from the mean-field ``r*`` unless ``r0`` is given. The barrier objective is
    smooth in r, so at an interior optimum the reported ``gradient`` is ~0.
    """
    mf = mean_field_optimum(workload, latency, batch_size)
    start = float(mf.r_star) if r0 is None else float(r0)
    if not (math.isfinite(start) and start > 0):
        start = 1.0
    start = max(start, 1.0)
    if max_ratio is None:
        max_ratio = max(2, math.ceil(2 * start) + 2)
    x = jnp.log(jnp.asarray(start, dtype=jnp.zeros(()).dtype))
    opt = optax.adam(learning_rate)
    state = opt.init(x)

    def loss(x):  # maximise throughput; scale to O(1) for Adam
        return -barrier_throughput(workload, latency, batch_size, jnp.exp(x))

    @jax.jit
    def step(x, state):
        g = jax.grad(loss)(x)
        updates, state = opt.update(g, state)
        return optax.apply_updates(x, updates), state

    for _ in range(num_steps):
        x, state = step(x, state)
    # polish with Newton steps on the derivative (the objective is smooth)
    f = lambda r: barrier_throughput(workload, latency, batch_size, r)  # noqa: E731
    df, d2f = jax.grad(f), jax.grad(jax.grad(f))
    r = jnp.clip(jnp.exp(x), 1.0, float(max_ratio))
    for _ in range(8):
        curvature = d2f(r)
        r = jnp.where(curvature < 0, jnp.clip(r - df(r) / curvature, 1.0, float(max_ratio)), r)
    return RatioOptimum(
        ratio=r,
        gradient=df(r),
        throughput=f(r),
        r_star_mean_field=mf.r_star,
        best_integer=barrier_optimum(workload, latency, batch_size, int(max_ratio)).ratio,
        steps=num_steps,
    )
