"""Differentiable expected throughput per instance, and gradient ascent on the ratio.

Estimators (what ``jax.grad`` of [`expected_throughput`][afdjax.expected_throughput] computes)
----------------------------------------------------------------------
* **Latency coefficients and prefill parameters** (``mu_p``, ``prefill_sigma``): pathwise
  derivatives with common random numbers. Prefill lengths are smooth functions of their
  uniforms (inverse CDF), loads are linear in them, and the step time is a max of affine
  functions. So each replica's throughput is piecewise smooth in these parameters, and
  autodiff returns its exact (sub)gradient. Unbiased for the gradient of the expectation
  whenever the max is attained uniquely with probability one, which holds for continuous
  prefill or non-degenerate coefficients; variance comes from the replicas (stated s.e.).
* **Decode-length parameters** (``mu_d`` of [`Geometric`][afdjax.Geometric]; the geometric, negative
  binomial, discretised lognormal and geometric-mixture families of
  [`FittedWorkload`][afdjax.FittedWorkload]; ``decode_scale`` of [`Empirical`][afdjax.Empirical]): decode lengths
  are integers, so the pathwise derivative is zero almost surely. The default
  (``decode_estimator="coupled"``) is smoothed perturbation analysis with coupled
  alternative paths, *not pruned*: each inverse-CDF draw ``D_i`` jumps to ``D_i + 1`` at
  rate ``w_i = -dF(D_i)/dtheta / p(D_i)`` and ``dE[T]/dtheta = E[sum_i w_i (T_i^+ - T)]``
  where ``T_i^+`` is the path with only ``D_i`` one longer (the counter-based draws give
  it every other draw unchanged). The sum over *all* requests is computed exactly in the
  same pass (``afdjax._engine._jumps``): the alternative path differs from the primal
  one only in one slot, by a load shift of -1 and a spike at each later boundary, and for
  the barrier step a step's time depends only on that step's loads, so every
  ``T_i^+ - T`` decomposes into per-step effects of the max (top-2 over instances) that
  cumulative weights sum in one pass. Why not the alternatives: pruning to one (or a
  few) alternative paths per replica is unbiased but its variance is that of one
  request's effect, whose end-of-run term (the load of the slot at the last step) has a
  coefficient of variation above 1, so it needs hundreds of alternative paths per
  replica for 2 %; the score function sums ``O(requests)`` score terms, so its variance
  grows with the run length; a continuous relaxation of the renewal times is biased by
  the max's curvature at the load spikes (about ``P + D`` tokens on one instance). Exact
  for the barrier up to the linearisation ``1/(time + Delta) ~ 1/time - Delta/time^2``
  per request (relative bias of order one request's effect over the run's time, below
  1e-3 at the paper baseline). With the micro-batch pipeline (a step with state) the
  score function is used: the first-order form through the step model's own derivative
  (``_engine._jumps.load_perturbation``) disagreed with common-random-numbers
  differences (opposite sign at ``micro_batches=1``, off by more than 100 % at 2): the
  spikes at request boundaries change a load by hundreds of tokens, far outside the
  linear range of the max-plus recursion. An exact form is not a sum of per-step effects
  there: a change at one step moves the pipeline's state and so every later step, each
  request's alternative path would need its own pass over the steps after it
  (``O(requests x steps)``), and the critical-path slack from one forward and one
  backward pass gives the exact effect of one changed stage time, not of a request's
  many (-1 on every later step plus the spikes). The
  first request of a stationary slot adds an *age* jump (load +1 while it lasts).
  [`Empirical`][afdjax.Empirical] traces through ``decode_scale`` (lengths x ``(1 + s)``): given the
  row, ``D'`` is ``k`` or ``k + 1`` and ``d/ds E[g(D')] = D (g(k+1) - g(k))``, so every
  request carries weight ``D``, with an up jump from ``k`` and a *down* jump (the path
  with ``D' - 1``, sign -) from ``k + 1``; the one-sided form (rate ``D / (1 - f)`` from
  ``k`` only) is exact too but heavy-tailed as ``f -> 1`` (5.1 % s.d. per call on the
  paper system, where the two-sided form has 1.5 %). The geometric mixture is sampled by
  its own inverse CDF (not a component, then that component: a draw would leap between
  the components' lengths as the weight moves), so all three of its parameters have jumps.
* The older estimator (``decode_estimator="score"``) is the score-function
  (likelihood-ratio) estimator ``E[(f - b) d log p(D)/d theta]``. It sums the
  log-likelihood of every decode length drawn for the first ``r`` instances of a replica,
  including the stationary initial state, and uses a leave-one-out baseline ``b`` (the
  mean throughput of the other replicas). Unbiased; its variance grows with the number of
  requests per replica, so it needs more replicas than the pathwise terms (measured in
  the tests and ``experiments/bench_grad.py``).
* **A continuous ratio** ``r``: the integer systems ``floor(r)`` and ``floor(r) + 1`` are
  interpolated linearly (``(1 - f) T(n) + f T(n+1)``, ``f = r - n``). The value is exact at
  integers, and the r-derivative is the common-random-numbers difference
  ``T(n+1) - T(n)``. For a smooth objective in r use the barrier model
  ([`barrier_throughput`][afdjax.barrier_throughput]), which is defined for real r;
  [`optimise_ratio`][afdjax.optimise_ratio]
  climbs it by gradient ascent.

The value returned is the mean over replicas of per-replica throughput (tokens / time /
(r+1)). It differs from [`throughput_per_instance`][afdjax.SimulationResult.throughput_per_instance], the pooled ratio
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
from ._theory import (
    as_float,
    barrier_optimum,
    barrier_throughput,
    check_batch_size,
    check_max_ratio,
    mean_field_optimum,
    newton_polish,
)
from ._validate import check_choice, check_int, check_number, filter_jit
from ._workload import Workload

DECODE_ESTIMATORS = ("coupled", "score")


def decode_jumps_for(workload: Workload, decode_estimator: str) -> bool:
    """Whether the coupled estimator applies (``simulate(..., decode_jumps=...)``)."""
    if check_choice("decode_estimator", decode_estimator, DECODE_ESTIMATORS) != "coupled":
        return False
    return workload._has_decode_jumps()


def throughput_estimate(result: SimulationResult) -> jax.Array:
    """Per-ratio throughput estimate ``(n,)`` whose gradient is pathwise + the decode
    estimator: the coupled jump term when the simulation computed it
    (``decode_jumps=True``), else the score function
    ``mean_i [T_i + stop_gradient(T_i - b_i) (log p_i - stop_gradient(log p_i))]`` where
    ``T_i`` is replica ``i``'s throughput, ``log p_i`` the log-likelihood of its decode
    lengths and ``b_i`` the mean of the other replicas. Its value equals ``mean_i T_i``.

    Arguments:
        result: a [`SimulationResult`][afdjax.SimulationResult].

    Returns:
        ``(n,)`` throughput per instance per ratio (tokens per time unit per instance).
    """
    per = result.throughput_per_replica
    if result.decode_jumps:
        return jnp.mean(per + result.decode_jump, axis=0)
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
    decode_estimator: str = "coupled",
    **simulate_kwargs,
) -> jax.Array:
    """Monte Carlo throughput per instance at a (possibly traced, real) ratio, differentiable
    in the workload, the latency coefficients and the ratio (estimators: module docstring).

    Buffer sizes must be given because the parameters may be traced; take them from
    [`plan_buffers`][afdjax.plan_buffers]. ``max_ratio`` (static) bounds the ratio. Other keyword
    arguments go to [`simulate`][afdjax.simulate], e.g. ``micro_batches=m`` for the
    micro-batch pipeline (its event times are max/plus of the stage times, so the
    pathwise gradient is exact there too). ``decode_estimator``: ``"coupled"`` (default)
    or ``"score"`` for decode-length parameters (module docstring).

    Arguments:
        key: a JAX PRNG key (``jax.random.key(seed)``); the same key gives the same random numbers (common random
            numbers).
        workload: the [`Workload`][afdjax.Workload].
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units).
        batch_size: slots ``B`` per Attention instance.
        ratio: the A/F ratio ``r``, real-valued in ``[1, max_ratio]`` (may be traced).
        num_steps: measured steps per replica.
        num_replicas: independent replicas.
        max_ratio: the largest ratio simulated (static; bounds ``ratio``).
        chunk_steps: buffer size from [`plan_buffers`][afdjax.plan_buffers] (static).
        requests_per_chunk: buffer size from [`plan_buffers`][afdjax.plan_buffers] (static).
        decode_estimator: ``"coupled"`` (default) or ``"score"`` for decode-length parameters.
        **simulate_kwargs: further keyword arguments of [`simulate`][afdjax.simulate].

    Returns:
        the throughput per instance (tokens per time unit per instance), a scalar whose gradient
        is the estimator.
    """
    jumps = decode_jumps_for(workload, decode_estimator)
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
        decode_jumps=jumps,
        **simulate_kwargs,
    )
    return _interpolate(throughput_estimate(result), ratio)


def plan_buffers(
    workload: Workload, batch_size: int, max_ratio: int, num_steps: int, num_replicas: int, warmup_steps: int = 0
) -> dict:
    """Buffer sizes (``chunk_steps``, ``requests_per_chunk``) for a concrete workload, so that
    [`expected_throughput`][afdjax.expected_throughput] can run with traced parameters.

    Arguments:
        workload: the [`Workload`][afdjax.Workload]. Concrete (not traced).
        batch_size: slots ``B`` per Attention instance.
        max_ratio: the largest ratio simulated.
        num_steps: measured steps per replica.
        num_replicas: independent replicas.
        warmup_steps: discarded steps before measuring (default 0).

    Returns:
        ``{"chunk_steps": int, "requests_per_chunk": int}``.
    """
    base = dict(
        max_ratio=max_ratio,
        batch_size=batch_size,
        num_steps=num_steps,
        warmup_steps=warmup_steps,
        num_replicas=num_replicas,
        num_bins=4096,
    )
    sizes = plan_sizes(workload, base, None, None, None, 512 * 2**20)
    # head-room: traced parameters may move away from the planning point
    return dict(
        chunk_steps=sizes["chunk_steps"],
        requests_per_chunk=min(2 * sizes["requests_per_chunk"], sizes["chunk_steps"] + 1),
    )


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
    decode_estimator: str = "coupled",
    **simulate_kwargs,
) -> ThroughputGradient:
    """Throughput per instance at ``ratio`` and its gradient with respect to every workload
    parameter, every latency coefficient and the ratio, in one reverse-mode pass.

    Standard errors of the gradient: call with several keys (or see
    ``experiments/bench_grad.py``). ``decode_estimator``: ``"coupled"`` (default) or
    ``"score"`` (the older score-function estimator) for decode-length parameters.
    ``simulate_kwargs`` (e.g. ``micro_batches=m``, ``start``, ``warmup_steps``) go to
    [`simulate`][afdjax.simulate].

    Arguments:
        key: a JAX PRNG key (``jax.random.key(seed)``); the same key gives the same random numbers (common random
            numbers).
        workload: the [`Workload`][afdjax.Workload].
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units).
        batch_size: slots ``B`` per Attention instance.
        ratio: the A/F ratio ``r``, real-valued (``>= 1``).
        num_steps: measured steps per replica (default 4000).
        num_replicas: independent replicas (default 16).
        decode_estimator: ``"coupled"`` (default) or ``"score"``.
        **simulate_kwargs: further keyword arguments of [`simulate`][afdjax.simulate].

    Returns:
        a [`ThroughputGradient`][afdjax.ThroughputGradient] (value, standard error and the gradients).
    """
    if not (isinstance(ratio, (int, float, np.integer, np.floating)) and math.isfinite(ratio) and ratio >= 1):
        raise ValueError(f"ratio={ratio!r} is invalid: expected a real number >= 1")
    jumps = decode_jumps_for(workload, decode_estimator)
    max_ratio = max(2, math.floor(ratio) + 1)
    sizes = plan_buffers(
        workload, batch_size, max_ratio, num_steps, num_replicas, simulate_kwargs.get("warmup_steps", 0)
    )
    value, grads = _value_and_grad(
        key,
        workload,
        latency,
        batch_size,
        jnp.asarray(float(ratio)),
        num_steps,
        num_replicas,
        max_ratio,
        sizes["chunk_steps"],
        sizes["requests_per_chunk"],
        tuple(sorted(dict(simulate_kwargs, decode_jumps=jumps).items())),
    )
    (value, stderr) = value
    g_workload, g_latency, g_ratio = grads
    return ThroughputGradient(value=value, stderr=stderr, workload=g_workload, latency=g_latency, ratio=g_ratio)


@filter_jit
def _value_and_grad(
    key,
    workload,
    latency,
    batch_size,
    ratio,
    num_steps,
    num_replicas,
    max_ratio,
    chunk_steps,
    requests_per_chunk,
    extra,
):
    kwargs = dict(extra)

    def objective(params):
        w, lat, r = params
        result = simulate(
            key,
            w,
            lat,
            batch_size,
            list(range(1, max_ratio + 1)),
            num_steps,
            num_replicas,
            chunk_steps=chunk_steps,
            requests_per_chunk=requests_per_chunk,
            **kwargs,
        )
        value = _interpolate(throughput_estimate(result), r)
        per = _interpolate(jnp.moveaxis(result.throughput_per_replica, 0, 1), r)  # (R,)
        stderr = jnp.std(per, ddof=1) / jnp.sqrt(per.shape[0]) if per.shape[0] > 1 else jnp.nan
        return value, jax.lax.stop_gradient(stderr)

    (value, stderr), grads = eqx.filter_value_and_grad(objective, has_aux=True)((workload, latency, ratio))
    return (value, stderr), grads


class RatioOptimum(eqx.Module):
    """Result of [`optimise_ratio`][afdjax.optimise_ratio]."""

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
    continuous ratio, polished by Newton steps; compared with the mean-field r* and the
    integer sweep.

    Arguments:
        workload: the model inputs (array leaves: new values reuse the
            compiled program).
        latency: see ``workload``.
        batch_size: slots per Attention instance ``B > 0``.
        r0: start of the ascent; default the mean-field ``r*`` (1 when that is not finite,
            e.g. in the "unbounded" regime), never below 1.
        max_ratio: the ratio is kept in ``[1, max_ratio]`` and the integer sweep covers
            ``1..max_ratio``; default ``max(2, ceil(2 * start) + 2)``.
        learning_rate: Adam's step size on ``log r`` (> 0).
        num_steps: Adam steps (an integer >= 0).

    The barrier objective is smooth in r, so at an interior optimum the reported
    ``gradient`` is ~0.

    **Compilation:** the ascent and the polish are one jitted program (a ``lax.fori_loop``
    over the Adam steps). Its static settings are ``num_steps``, the batch size and the
    pytree structure of the inputs; the integer sweep is compiled once per ``max_ratio``.
    A second call with new coefficients, workload parameters, ``r0`` or learning rate
    and the same settings compiles nothing (with the default ``max_ratio``, it depends on
    the start, so give ``max_ratio`` to be sure).
    """
    check_batch_size(batch_size)
    check_number("learning_rate", learning_rate)
    num_steps = check_int("num_steps", num_steps, 0)
    mf = mean_field_optimum(workload, latency, batch_size)
    start = float(mf.r_star) if r0 is None else check_number("r0", r0)
    if not (math.isfinite(start) and start > 0):
        start = 1.0
    start = max(start, 1.0)
    if max_ratio is None:
        max_ratio = max(2, math.ceil(2 * start) + 2)
    max_ratio = check_max_ratio(max_ratio)
    ratio, gradient, throughput = _ascend(
        workload, latency, batch_size, as_float(start), as_float(learning_rate), as_float(max_ratio), num_steps
    )
    return RatioOptimum(
        ratio=ratio,
        gradient=gradient,
        throughput=throughput,
        r_star_mean_field=mf.r_star,
        best_integer=barrier_optimum(workload, latency, batch_size, max_ratio).ratio,
        steps=num_steps,
    )


_NEWTON_STEPS = 8


@filter_jit
def _ascend(workload, latency, batch_size, start, learning_rate, max_ratio, num_steps: int):
    """Adam on ``log r`` from ``start`` (a ``fori_loop`` of ``num_steps``), then Newton polish
    in ``[1, max_ratio]``: ``(ratio, d throughput / d r, throughput)``."""
    f = lambda r: barrier_throughput(workload, latency, batch_size, r)
    opt = optax.adam(learning_rate)

    def loss(x):  # maximise throughput
        return -f(jnp.exp(x))

    def step(_, carry):
        x, state = carry
        updates, state = opt.update(jax.grad(loss)(x), state)
        return optax.apply_updates(x, updates), state

    x = jnp.log(start)
    x, _ = jax.lax.fori_loop(0, num_steps, step, (x, opt.init(x)))
    r = newton_polish(f, jnp.clip(jnp.exp(x), 1.0, max_ratio), 1.0, max_ratio, _NEWTON_STEPS)
    return r, jax.grad(f)(r), f(r)
