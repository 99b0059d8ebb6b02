"""Micro-batch pipeline timing of an rA-1F bundle (a max-plus recursion).

The paper's step time ``tau = max(max_j t_A(T_j), t_C, t_F(rB))`` assumes perfect
overlap. Real AFD systems (MegaScale-Infer, Step-3) get the overlap by splitting each
Attention instance's ``B`` slots into ``m`` micro-batches and pipelining them. This
module models that pipeline explicitly.

The model
---------
Slot ``s`` of an instance belongs to micro-batch (group) ``g = s % m``; group ``g`` holds
``B_g = ceil((B - g) / m)`` slots (sizes differ by at most one). Decode step ``k`` is one
layer-pass of every micro-batch. Per micro-batch ``(k, g)`` the stages are

* attention on every instance ``j < r``: ``t_A = alpha_a T_{j,g}(k) + beta_a``
  (``T_{j,g}`` = KV tokens of group ``g`` on instance ``j``),
* A->F transfer ``t_C = alpha_c B_g + beta_c`` (``alpha_c r B_g + beta_c`` with
  ``comm_scaling="ratio_batch"``),
* FFN on the aggregated micro-batch ``t_F = alpha_f r B_g + beta_f``,
* F->A transfer, ``t_C`` again.

The fixed costs ``beta_*`` are paid **per micro-batch** (kernel launch, synchronisation),
so splitting a step into more micro-batches adds ``(m - 1) beta`` of work to every
resource: beyond a few micro-batches pipelining costs more than it hides.

Resources, each serving one micro-batch at a time in the order ``(k, g)``: every
Attention instance, the A->F link, the FFN instance and the F->A link. Dependencies:
attention ``(k, g, j)`` starts after the previous micro-batch on instance ``j`` and after
F->A ``(k-1, g)`` (the next layer of a micro-batch needs its FFN result); A->F ``(k, g)``
after all ``r`` attentions of ``(k, g)`` and the previous A->F; FFN ``(k, g)`` after A->F
``(k, g)`` and the previous FFN; F->A ``(k, g)`` after FFN ``(k, g)`` and the previous
F->A. Everything is free at time 0. Each resource follows
``end(g) = max(end(g - 1), ready(g)) + t(g)``, solved for all ``g`` of a step at once as
``end(g) = S(g) + max(end_prev, max_{g' <= g} (ready(g') - S(g' - 1)))`` with ``S`` the
cumulative stage time: a ``lax.scan`` over steps, vectorised over micro-batches.

Closed form (deterministic, equal micro-batches)
------------------------------------------------
With constant per-micro-batch stage times this is a closed cyclic tandem queue with
``m`` customers and four single-server stations (the ``r`` attention instances act as
one fork-join station). Its period, the time per decode step of all ``m`` micro-batches,
is the largest circuit mean of the max-plus graph:

    period = max(m * max(t_A, t_C, t_F),  t_A + 2 t_C + t_F)

(the busiest resource serving ``m`` micro-batches back to back, or one micro-batch's
round trip). ``m = 1`` gives the sequential sum ``t_A + t_C + t_F + t_C``. With
``beta = 0`` the per-micro-batch times are the full-batch ones over ``m``, so for large
``m`` the period tends to the paper's ``max(t_A, t_C, t_F)`` of the full batch.
Communication is hidden when the compute stages are long enough: with ``m = 3`` and
``t_A = t_F = c`` the period is ``3 c`` (compute-bound) iff ``c >= 2 t_C``, the
"A/F > 2C" rule.

Units: every time is in the latency model's time unit; loads in tokens.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._latency import LatencyModel
from .._theory import as_float as _float
from .._theory import check_batch_size, pipeline_period, stage_pipeline_cycle_time
from .._theory import per_instance_throughput as _per_instance
from .._workload import Workload

_UNROLL_MAX = 32  # prefix ops along the micro-batch axis are unrolled up to this length


def micro_batch_sizes(batch_size: int, micro_batches: int) -> np.ndarray:
    """Slots per micro-batch, ``B_g = ceil((B - g) / m)`` (slot ``s`` is in
    group ``s % m``); they sum to ``B`` and differ by at most one.

    Arguments:
        batch_size: slots ``B`` per Attention instance, an integer ``>= 1``.
        micro_batches: ``m``, an integer in ``[1, B]``.

    Returns:
        ``(m,)`` int NumPy array of slots per micro-batch.

    Examples:
        >>> afdjax.micro_batch_sizes(256, 3).tolist()
        [86, 85, 85]
    """
    check_batch_size(batch_size)
    B, m = int(batch_size), int(micro_batches)
    return np.array([(B - g + m - 1) // m for g in range(m)], dtype=np.int64)


def _prefix_last(op, x):
    """Inclusive prefix ``op`` (``jnp.add`` or ``jnp.maximum``) along the last axis."""
    n = x.shape[-1]
    if n > _UNROLL_MAX:
        return (jax.lax.cumsum if op is jnp.add else jax.lax.cummax)(x, axis=x.ndim - 1)
    cols = [x[..., 0]]
    for i in range(1, n):
        cols.append(op(cols[-1], x[..., i]))
    return jnp.stack(cols, axis=-1)


def _fifo(prev_end, ready, duration):
    """One resource serving micro-batches ``g = 0..m-1`` in order.

    ``end(g) = max(end(g-1), ready(g)) + duration(g)`` with ``end(-1) = prev_end``.
    ``prev_end``: ``(...)``; ``ready``, ``duration``: ``(..., m)``. Returns ``(start, end)``.
    """
    total = _prefix_last(jnp.add, duration)
    before = total - duration
    end = total + jnp.maximum(prev_end[..., None], _prefix_last(jnp.maximum, ready - before))
    return end - duration, end


class PipelineState(eqx.Module):
    """When each resource is next free, and when each micro-batch's FFN result is back.

    Leading batch dimensions ``...`` (e.g. one state per ratio) are allowed.
    """

    attention_free: jax.Array
    """``(..., J)``: end of the last attention on each instance."""
    a2f_free: jax.Array
    """``(...)``: end of the last A->F transfer."""
    ffn_free: jax.Array
    """``(...)``: end of the last FFN pass."""
    f2a_end: jax.Array
    """``(..., m)``: end of the last F->A transfer of each micro-batch (the last entry is
    when the F->A link is next free)."""

    @staticmethod
    def zeros(batch_shape, num_instances: int, micro_batches: int, dtype=None) -> PipelineState:
        dtype = dtype or jnp.zeros(()).dtype
        shape = tuple(batch_shape)
        return PipelineState(
            attention_free=jnp.zeros(shape + (num_instances,), dtype),
            a2f_free=jnp.zeros(shape, dtype),
            ffn_free=jnp.zeros(shape, dtype),
            f2a_end=jnp.zeros(shape + (micro_batches,), dtype),
        )

    def shift(self, offset) -> PipelineState:
        """All times minus ``offset`` (``(...)``): re-basing keeps float32 accurate."""
        return PipelineState(
            attention_free=self.attention_free - offset[..., None],
            a2f_free=self.a2f_free - offset,
            ffn_free=self.ffn_free - offset,
            f2a_end=self.f2a_end - offset[..., None],
        )


class PipelineEvents(eqx.Module):
    """Start and end times of every stage of every micro-batch (time units).

    Shapes for ``K`` steps, ``J`` instances, ``m`` micro-batches (plus any leading batch
    dimensions of the inputs after the step axis).

    Attributes:
        a2f_end: ``(K, ..., m)``: end of the A->F transfer.
        ffn_end: ``(K, ..., m)``: end of the FFN pass.
        f2a_end: ``(K, ..., m)``: end of the F->A transfer (the micro-batch is back).
    """

    attention_start: jax.Array
    """``(K, ..., J, m)``."""
    attention_end: jax.Array
    """``(K, ..., J, m)``."""
    a2f_start: jax.Array
    """``(K, ..., m)``: A->F transfer."""
    a2f_end: jax.Array
    ffn_start: jax.Array
    """``(K, ..., m)``: FFN pass."""
    ffn_end: jax.Array
    f2a_start: jax.Array
    """``(K, ..., m)``: F->A transfer."""
    f2a_end: jax.Array

    @property
    def step_completion(self) -> jax.Array:
        """``(K, ...)``: when the last micro-batch of step ``k`` is back (``f2a_end[k, ..., -1]``);
        step ``k`` takes ``step_completion[k] - step_completion[k-1]`` (from 0 for ``k = 0``)."""
        return self.f2a_end[..., -1]


def pipeline_advance(state: PipelineState, attention_time, comm_time, ffn_time, instance_mask=None, back_time=None):
    """Advance the pipeline by one decode step (all ``m`` micro-batches).

    Arguments:
        state: a [`PipelineState`][afdjax.PipelineState] (batch shape ``...``).
        attention_time: ``(..., J, m)`` attention time of micro-batch ``g`` on instance ``j``.
        comm_time: ``(..., m)`` time of one transfer (A->F, and again F->A).
        ffn_time: ``(..., m)`` FFN time of each aggregated micro-batch.
        instance_mask: optional ``(..., J)`` bool; instances with ``False`` take no part
            (their attention does not gate the A->F transfer).
        back_time: optional ``(..., m)`` time of the F->A transfer (default ``comm_time``).

    Returns:
        ``(new_state, events)``, ``events`` a [`PipelineEvents`][afdjax.PipelineEvents] without the
        step axis. Inputs broadcast against each other and the state.
    """
    attention_time = jnp.asarray(attention_time)
    a_start, a_end = _fifo(state.attention_free, state.f2a_end[..., None, :], attention_time)
    gated = a_end if instance_mask is None else jnp.where(instance_mask[..., None], a_end, -jnp.inf)
    ready = jnp.max(gated, axis=-2)  # (..., m): all r attentions of the micro-batch done
    comm_time = jnp.broadcast_to(comm_time, ready.shape)
    ffn_time = jnp.broadcast_to(ffn_time, ready.shape)
    back_time = comm_time if back_time is None else jnp.broadcast_to(back_time, ready.shape)
    c_start, c_end = _fifo(state.a2f_free, ready, comm_time)
    f_start, f_end = _fifo(state.ffn_free, c_end, ffn_time)
    b_start, b_end = _fifo(state.f2a_end[..., -1], f_end, back_time)
    new_state = PipelineState(
        attention_free=a_end[..., -1],
        a2f_free=c_end[..., -1],
        ffn_free=f_end[..., -1],
        f2a_end=b_end,
    )
    events = PipelineEvents(a_start, a_end, c_start, c_end, f_start, f_end, b_start, b_end)
    return new_state, events


def pipeline_event_times(attention_time, comm_time, ffn_time, instance_mask=None) -> PipelineEvents:
    """Every event time of the micro-batch pipeline over ``K`` decode steps, from time 0.

    Pure, jit-able and differentiable in every input; all times in time units.

    Arguments:
        attention_time: ``(K, J, m)`` attention time of micro-batch ``g`` on instance
            ``j`` at step ``k`` (``alpha_a T_{j,g}(k) + beta_a``).
        comm_time: ``(m,)`` or ``(K, m)``: one A->F (and one F->A) transfer.
        ffn_time: ``(m,)`` or ``(K, m)``: the FFN pass of each micro-batch.
        instance_mask: optional ``(J,)`` bool of the instances taking part.

    Returns:
        a [`PipelineEvents`][afdjax.PipelineEvents] with arrays ``(K, J, m)`` and ``(K, m)``.

    Times are absolute (from 0); for long float32 runs use [`pipeline_advance`][afdjax.pipeline_advance] and
    re-base the state every step, as [`simulate`][afdjax.simulate] does.
    """
    attention_time = jnp.asarray(attention_time)
    if attention_time.ndim != 3:
        raise ValueError(f"attention_time has shape {attention_time.shape}: expected (steps, instances, micro_batches)")
    K, J, m = attention_time.shape
    comm_time = jnp.broadcast_to(jnp.asarray(comm_time, attention_time.dtype), (K, m))
    ffn_time = jnp.broadcast_to(jnp.asarray(ffn_time, attention_time.dtype), (K, m))
    state = PipelineState.zeros((), J, m, attention_time.dtype)

    def step(state, xs):
        a, c, f = xs
        return pipeline_advance(state, a, c, f, instance_mask)

    _, events = jax.lax.scan(step, state, (attention_time, comm_time, ffn_time))
    return events


# --------------------------------------------------------------------------- closed form
def pipeline_cycle_time(workload: Workload, latency: LatencyModel, batch_size, ratio, micro_batches) -> jax.Array:
    """Mean-field period of the ``m``-micro-batch pipeline (time units per decode step).

    Per-micro-batch stage times at the stationary mean load with ``B / m`` slots per
    micro-batch (exact when ``m`` divides ``B``): ``t_A = alpha_a (B/m) theta + beta_a``,
    ``t_C = t_C(r, B/m)``, ``t_F = alpha_f r B / m + beta_f``; then
    [`pipeline_period`][afdjax.pipeline_period]. Differentiable in every coefficient, the workload and a real
    ``ratio``; ``micro_batches`` may be a real number too (a relaxation).

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        ratio: the A/F ratio ``r``, real-valued (``>= 1``); may be traced and differentiated.
        micro_batches: the number ``m`` of micro-batches per Attention instance (``>= 1``; may be real, a relaxation).

    Returns:
        the mean-field period (time units per decode step), a scalar array.
    """
    return stage_pipeline_cycle_time(workload, latency, batch_size, ratio, micro_batches, barrier=False)


def pipeline_throughput(workload: Workload, latency: LatencyModel, batch_size, ratio, micro_batches) -> jax.Array:
    """Mean-field throughput per instance ``r B / ((r + 1) period)`` of the pipeline.

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        ratio: the A/F ratio ``r``, real-valued (``>= 1``); may be traced and differentiated.
        micro_batches: the number ``m`` of micro-batches per Attention instance (``>= 1``; may be real, a relaxation).

    Returns:
        tokens per time unit per instance, a scalar array.
    """
    ratio = _float(ratio)
    return _per_instance(ratio, batch_size, pipeline_cycle_time(workload, latency, batch_size, ratio, micro_batches))


def pipeline_barrier_cycle_time(
    workload: Workload, latency: LatencyModel, batch_size, ratio, micro_batches
) -> jax.Array:
    """Approximate period of the pipeline with random loads (time units per step).

    **An approximation**, not an expectation of the recursion: the per-micro-batch
    attention time is replaced by the Gaussian expected maximum over ``r`` instances,
    ``mu_g + s_g E[M_r]`` with ``mu_g = alpha_a (B/m) theta + beta_a`` and
    ``s_g = alpha_a sqrt(B/m) sigma`` (``M_r`` the max of ``r`` standard normals, defined
    for real ``r``), and put into [`pipeline_period`][afdjax.pipeline_period]. It ignores that the ``m``
    micro-batches of an instance share its load fluctuations, that queues absorb part of
    the variation, and the max over resources inside the expectation. For ``m = 1`` it is
    the sequential sum with the expected-max attention time.

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        ratio: the A/F ratio ``r``, real-valued (``>= 1``); may be traced and differentiated.
        micro_batches: the number ``m`` of micro-batches per Attention instance (``>= 1``; may be real, a relaxation).

    Returns:
        the approximate period (time units per decode step), a scalar array.
    """
    return stage_pipeline_cycle_time(workload, latency, batch_size, ratio, micro_batches)


def pipeline_barrier_throughput(
    workload: Workload, latency: LatencyModel, batch_size, ratio, micro_batches
) -> jax.Array:
    """Throughput per instance at [`pipeline_barrier_cycle_time`][afdjax.pipeline_barrier_cycle_time] (an
    approximation).

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        ratio: the A/F ratio ``r``, real-valued (``>= 1``); may be traced and differentiated.
        micro_batches: the number ``m`` of micro-batches per Attention instance (``>= 1``; may be real, a relaxation).

    Returns:
        tokens per time unit per instance, a scalar array.
    """
    ratio = _float(ratio)
    return _per_instance(
        ratio, batch_size, pipeline_barrier_cycle_time(workload, latency, batch_size, ratio, micro_batches)
    )


__all__ = [
    "PipelineEvents",
    "PipelineState",
    "micro_batch_sizes",
    "pipeline_advance",
    "pipeline_barrier_cycle_time",
    "pipeline_barrier_throughput",
    "pipeline_cycle_time",
    "pipeline_event_times",
    "pipeline_period",
    "pipeline_throughput",
]
