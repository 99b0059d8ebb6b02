"""Helpers shared by the closed forms: the float dtype, throughput per instance, and the
checks of concrete inputs (``ValueError``) and of traced values (``eqx.error_if``)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._validate import check_array_parameter


def as_float(x) -> jax.Array:
    """``x`` as an array of the default float dtype (float64 under x64, else float32)."""
    return jnp.asarray(x, dtype=jnp.zeros(()).dtype)


def per_instance_throughput(ratio, batch_size, cycle_time) -> jax.Array:
    """Throughput per instance: ``r B`` tokens per step over ``r + 1`` instances
    (tokens per time unit per instance, with ``cycle_time`` in time units); a concrete
    ``batch_size`` must be ``> 0`` (``check_batch_size``)."""
    check_batch_size(batch_size)
    return ratio * batch_size / ((ratio + 1.0) * cycle_time)


def check_batch_size(batch_size) -> None:
    """``ValueError`` unless every element of a concrete ``batch_size`` is finite and
    ``> 0``; traced values (under ``jit``/``vmap``/``grad``) are not checked."""
    check_array_parameter("batch_size", batch_size)


def fail_if(x, bad, message: str):
    """``x``, or an error when ``bad`` holds anywhere: ``ValueError`` for a concrete
    ``bad``, ``eqx.error_if`` (a runtime error) for a traced one."""
    if isinstance(bad, jax.core.Tracer):
        return eqx.error_if(x, bad, message)
    if bool(np.any(np.asarray(bad))):
        raise ValueError(message)
    return x
