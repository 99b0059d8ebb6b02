"""Choosing a ratio: the best integer in ``1..max_ratio``, the best point of a fine grid,
Newton polish of a continuous maximiser, and the better integer neighbour of a real
optimum. The one implementation behind [`barrier_optimum`][afdjax.barrier_optimum],
[`mean_field_integer_ratio`][afdjax.mean_field_integer_ratio], [`optimise_ratio`][afdjax.optimise_ratio] and the
pipeline curves of ``provision``.

``fn`` is a throughput (or any objective to maximise) of a real ratio, a scalar function
of a scalar that ``jax.vmap`` and ``jax.grad`` accept. ``max_ratio`` fixes shapes, so it is
a static Python integer; everything else may be traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._validate import check_int, invalid
from ._base import as_float, fail_if

GRID_POINTS_PER_UNIT = 64
"""Resolution of ``grid_argmax``: points per unit of ratio (a grid step of 1/64)."""

_INT32_MAX = float(np.iinfo(np.int32).max)


def check_max_ratio(max_ratio) -> int:
    """``max_ratio`` as a Python int: an integer (not a bool, not a float) ``>= 1``."""
    if isinstance(max_ratio, (bool, np.bool_)) or not isinstance(max_ratio, (int, np.integer)):
        raise invalid("max_ratio", max_ratio, "an integer >= 1")
    return check_int("max_ratio", max_ratio, 1)


def integer_argmax(fn, max_ratio: int) -> tuple[jax.Array, jax.Array]:
    """``(ratio, value)``: the integer ``ratio`` in ``1..max_ratio`` (int32) where ``fn`` is
    largest (ties go to the smaller ratio) and ``fn(ratio)``."""
    integers = jnp.arange(1, max_ratio + 1, dtype=jnp.zeros(()).dtype)
    values = jax.vmap(fn)(integers)
    best = jnp.argmax(values)
    return (best + 1).astype(jnp.int32), values[best]


def grid_argmax(fn, max_ratio: int, points_per_unit: int = GRID_POINTS_PER_UNIT) -> jax.Array:
    """The point of the grid ``1, 1 + 1/points_per_unit, ..., max_ratio`` where ``fn`` is
    largest (ties go to the smaller ratio); ``1.0`` when ``max_ratio = 1``."""
    if max_ratio > 1:
        grid = jnp.linspace(1.0, float(max_ratio), points_per_unit * (max_ratio - 1) + 1)
    else:
        grid = jnp.ones(1)
    return grid[jnp.argmax(jax.vmap(fn)(grid))]


def newton_polish(fn, ratio, lower, upper, num_steps: int, max_step: float | None = None) -> jax.Array:
    """``num_steps`` Newton steps on ``fn'(r) = 0`` from ``ratio``, kept in ``[lower, upper]``.

    Where the curvature ``fn''`` is not negative (not near a maximum) the step is the
    gradient step ``+fn'(r)`` instead. With ``max_step`` each step is clipped to
    ``[-max_step, max_step]`` (e.g. to stay inside the cell of a grid).
    """
    df, d2f = jax.grad(fn), jax.grad(jax.grad(fn))

    def newton_step(_, r):
        step = df(r) / jnp.where(d2f(r) < 0, d2f(r), -1.0)
        if max_step is not None:
            step = jnp.clip(step, -max_step, max_step)
        return jnp.clip(r - step, lower, upper)

    return jax.lax.fori_loop(0, num_steps, newton_step, as_float(ratio))


def maximise_ratio(fn, max_ratio: int, newton_steps: int = 4) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(ratio, value, r_continuous)``: the best integer in ``1..max_ratio`` with its value,
    and the continuous maximiser over ``[1, max_ratio]``: ``grid_argmax`` refined by
    ``newton_steps`` steps of ``newton_polish`` that stay inside the grid cell (none,
    and no derivatives traced, when ``newton_steps = 0``)."""
    ratio, value = integer_argmax(fn, max_ratio)
    r = grid_argmax(fn, max_ratio)
    if newton_steps:
        r = newton_polish(fn, r, 1.0, float(max_ratio), newton_steps, max_step=1 / GRID_POINTS_PER_UNIT)
    return ratio, value, r


def best_integer_neighbour(r_star, throughput_fn, max_ratio: int | None = None) -> jax.Array:
    """The better of ``floor(r*)`` and ``ceil(r*)`` under ``throughput_fn`` (int32; ties go
    to the smaller ratio), never below 1 and never above ``max_ratio`` when given.

    An unbounded optimum (``r* = +inf``) gives ``max_ratio``: the top of the range. Without
    ``max_ratio`` it has no integer answer, nor has ``r*`` beyond the int32 range, nor a NaN
    ``r*``: those raise ``ValueError`` (concrete ``r*``) or fail at run time under ``jit``
    (``eqx.error_if``).
    """
    if max_ratio is not None:
        max_ratio = check_max_ratio(max_ratio)
    r_star = jnp.asarray(r_star)
    if max_ratio is None:
        bad = ~(r_star < _INT32_MAX)
        message = "r_star is NaN, +inf (an unbounded optimum) or beyond int32: give max_ratio (the top of the range)"
    else:
        bad = jnp.isnan(r_star)
        message = "r_star is NaN: no integer neighbour"
    r_star = fail_if(r_star, bad, message)
    lo = jnp.maximum(jnp.floor(r_star), 1.0)
    hi = jnp.maximum(jnp.ceil(r_star), 1.0)
    if max_ratio is not None:
        lo, hi = jnp.minimum(lo, max_ratio), jnp.minimum(hi, max_ratio)
    return jnp.where(throughput_fn(hi) > throughput_fn(lo), hi, lo).astype(jnp.int32)
