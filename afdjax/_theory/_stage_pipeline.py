"""Closed-form helpers of the micro-batch pipeline (``Pipeline(m)``) with the stage-time parts.

The pipeline's closed forms live in ``afdjax._step._pipeline`` (above this layer); these
helpers compute the same period with the parts of issue 13, and reduce to
``pipeline_cycle_time`` / ``pipeline_barrier_cycle_time`` operation for operation when
``latency.noise``, ``routing`` and ``comm`` are ``None``. Per micro-batch of ``B/m`` slots:

* attention: ``E[max_{j<r} t_A,j a_j]`` (Gaussian loads of ``B/m`` slots, per-stage noise
  factors; ``_stage_terms.attention_max_mean``); the mean field takes ``mu_g``;
* A->F and F->A: ``t_C(r, B/m)`` and ``t_C'(r, B/m)`` (per-peer and shared-link terms
  included: one FFN link serving ``r`` senders per micro-batch); factors of mean 1;
* FFN: the routed mean ``E[alpha_f R/k X + beta_f]`` over ``r B k / m`` pairs.

Then ``period = max(m max(t_A, t_C, t_C', t_F), t_A + t_C + t_F + t_C')``. An approximation
like ``pipeline_barrier_cycle_time``: it also ignores that noise in one stage delays the
following ones (the expectation of a max-plus recursion is above this period), which grows
with the noise ``cv`` and the number of stages that are close to the busiest one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._validate import filter_jit
from ._barrier import attention_time_moments
from ._base import as_float, check_batch_size, per_instance_throughput
from ._max_normal import expected_max_normal_excess
from ._stage_terms import attention_max_mean, routed_ffn_time


def check_micro_batches(micro_batches) -> None:
    """``ValueError`` unless a concrete ``micro_batches`` is an integer >= 1 (a real number
    equal to one, for the relaxation; traced values are not checked)."""
    bad = isinstance(micro_batches, (bool, np.bool_)) or (
        isinstance(micro_batches, (int, np.integer, float, np.floating))
        and not (float(micro_batches) >= 1 and float(micro_batches).is_integer())
    )
    if bad:
        raise ValueError(f"micro_batches={micro_batches!r} is invalid: expected an integer >= 1")


def pipeline_period(attention_time, comm_time, ffn_time, micro_batches, back_time=None) -> jax.Array:
    """Deterministic period (time per decode step of all ``m`` micro-batches) from the
    per-micro-batch stage times: ``max(m * max(t_A, t_C, t_F), t_A + 2 t_C + t_F)``; with a
    different F->A time ``back_time`` (``t_C'``) ``max(m * max(t_A, t_C, t_C', t_F),
    t_A + t_C + t_F + t_C')``.

    Arguments:
        attention_time: ``t_A``, one micro-batch's attention time (time units); arrays broadcast together.
        comm_time: ``t_C``, one A->F transfer of a micro-batch (time units).
        ffn_time: ``t_F``, one FFN pass of a micro-batch (time units).
        micro_batches: ``m``, the number of micro-batches (``>= 1``).
        back_time: ``t_C'``, the F->A transfer when it differs from ``comm_time`` (``None``: the same).

    Returns:
        the period (time units per decode step), with the inputs' broadcast shape.

    Examples:
        >>> float(afdjax.pipeline_period(10.0, 2.0, 10.0, 3))  # m max(...) = 30 >= 10 + 4 + 10
        30.0
        >>> float(afdjax.pipeline_period(10.0, 8.0, 10.0, 3))  # the round trip binds
        36.0
    """
    check_micro_batches(micro_batches)
    m = as_float(micro_batches)
    if back_time is None:
        busiest = jnp.maximum(jnp.maximum(attention_time, comm_time), ffn_time)
        return jnp.maximum(m * busiest, attention_time + 2.0 * comm_time + ffn_time)
    busiest = jnp.maximum(jnp.maximum(jnp.maximum(attention_time, comm_time), back_time), ffn_time)
    return jnp.maximum(m * busiest, attention_time + comm_time + ffn_time + back_time)


def stage_pipeline_cycle_time(workload, latency, batch_size, ratio, micro_batches, barrier: bool = True):
    """Period of the ``m``-micro-batch pipeline (time units per decode step) with the
    stage-time parts (module docstring); ``barrier=False``: the mean field (attention at
    ``mu_g``). Equal to ``afdjax.pipeline_barrier_cycle_time`` (``barrier=True``) or
    ``afdjax.pipeline_cycle_time`` bit for bit when the parts are ``None``."""
    check_micro_batches(micro_batches)
    check_batch_size(batch_size)
    ratio = as_float(ratio)
    B, r, m = as_float(batch_size), as_float(ratio), as_float(micro_batches)
    per_group = B / m
    t_c = latency.comm_time(r, per_group)
    if barrier:
        mu, s = attention_time_moments(workload, latency, per_group)
    else:
        mu, s = latency.attention_time(per_group * workload.theta()), None
    if latency.noise is None and latency.routing is None and latency.comm is None:
        t_f = latency.ffn_time(r, per_group)
        if barrier:
            z0 = -12.0  # as pipeline_barrier_cycle_time
            t_a = mu + s * (expected_max_normal_excess(z0, ratio) + z0)
        else:
            t_a = mu
        return pipeline_period(t_a, t_c, t_f, micro_batches)
    t_cb = latency.comm_back_time(r, per_group)
    t_f, t_max = _stage_means(latency, mu, jnp.zeros_like(mu) if s is None else s, per_group, r)
    t_a = t_max if barrier else mu
    return pipeline_period(t_a, t_c, t_f, micro_batches, back_time=t_cb)


@filter_jit
def _stage_means(latency, mu, s, per_group, r):
    """The routed FFN mean and the expected slowest attention per micro-batch, broadcast."""
    cv = 0.0 if latency.noise is None else latency.noise.attention_cv
    t_f = jnp.vectorize(lambda b, x: routed_ffn_time(latency, x, b)[0])(per_group, r)
    t_a = jnp.vectorize(lambda a, b, x: attention_max_mean(a, b, cv, x))(mu, s, r)
    return t_f, t_a


def stage_pipeline_throughput(workload, latency, batch_size, ratio, micro_batches, barrier: bool = True) -> jax.Array:
    """Throughput per instance ``r B / ((r + 1) period)`` at ``stage_pipeline_cycle_time``."""
    ratio = as_float(ratio)
    period = stage_pipeline_cycle_time(workload, latency, batch_size, ratio, micro_batches, barrier)
    return per_instance_throughput(ratio, batch_size, period)
