"""The mean-field optimum with the stage-time parts (routing, communication terms).

With [`ExpertRouting`][afdjax.ExpertRouting] or [`Communication`][afdjax.Communication] the rising stage floor
``h(r) = max(E[t_F(r)], t_C(r), t_C'(r))`` is no longer a line (the busiest rank grows like
``r + c sqrt(r)``, the per-peer and shared-link terms add kinks), so the ratios of
[`mean_field_optimum`][afdjax.mean_field_optimum] are found numerically on a log grid of ``r`` in
``[1e-3, 1e5]``, refined by bisection (``r_A``, ``r_C``) or golden section (``r_peak``), and
finished with one Newton step whose base point is held constant, so that ``jax.grad`` of a
ratio is the implicit-function derivative. Breaks: optima beyond ``r = 1e5`` are reported as
``1e5`` (not ``+inf``) unless no stage time grows with ``r`` at all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._validate import filter_jit
from ._base import as_float, check_batch_size
from ._stage_terms import routed_ffn_time

_GRID = np.logspace(-3.0, 5.0, 321)
_ITERATIONS = 48
_GOLDEN = 0.5 * (np.sqrt(5.0) - 1.0)


def _floor_parts(latency, batch_size, ratio):
    ratio = as_float(ratio)
    comm = jnp.maximum(latency.comm_time(ratio, batch_size), latency.comm_back_time(ratio, batch_size))
    return comm, routed_ffn_time(latency, ratio, batch_size)[0]


def stage_floor_mean(latency, batch_size, ratio) -> jax.Array:
    """``h(r) = max(t_C(r), t_C'(r), E[t_F(r)])``: the mean stage floor (time units) with the
    routed FFN's mean busiest rank; broadcasts ``batch_size`` and ``ratio``."""
    check_batch_size(batch_size)
    return _floor_mean(latency, as_float(batch_size), as_float(ratio))


@filter_jit
def _floor_mean(latency, batch_size, ratio):
    def one(b, r):
        comm, ffn = _floor_parts(latency, b, r)
        return jnp.maximum(comm, ffn)

    return jnp.vectorize(one)(batch_size, ratio)


def _solve_rising(fn, level, grid_values):
    """The smallest ``r`` on the grid's range with ``fn(r) = level`` for a non-decreasing
    ``fn``: 0 when ``fn`` starts above ``level``, ``+inf`` when it never reaches it."""
    grid = jnp.asarray(_GRID)
    above = grid_values >= level
    i = jnp.clip(jnp.argmax(above), 1, len(_GRID) - 1)

    def bisect(_, bounds):
        lo, hi = bounds
        mid = jnp.sqrt(lo * hi)
        up = fn(mid) >= level
        return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

    lo, hi = jax.lax.fori_loop(0, _ITERATIONS, bisect, (grid[i - 1], grid[i]))
    base = jax.lax.stop_gradient(jnp.sqrt(lo * hi))
    slope = jax.grad(fn)(base)
    root = base - (fn(base) - level) / jnp.where(slope > 0, slope, 1.0)
    root = jnp.where(slope > 0, root, base)
    return jnp.where(above[0], 0.0, jnp.where(above[-1], root, jnp.inf))


def _minimise(cost, grid_values):
    """The minimiser of ``cost`` over the grid's range (golden section in ``log r`` around the
    best grid point, then one Newton step with the base point held constant)."""
    grid = jnp.log(jnp.asarray(_GRID))
    i = jnp.clip(jnp.argmin(grid_values), 1, len(_GRID) - 2)
    c = lambda u: cost(jnp.exp(u))

    def golden(_, bounds):
        a, b = bounds
        u1, u2 = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
        left = c(u1) <= c(u2)
        return jnp.where(left, a, u1), jnp.where(left, u2, b)

    a, b = jax.lax.fori_loop(0, _ITERATIONS, golden, (grid[i - 1], grid[i + 1]))
    base = jax.lax.stop_gradient(jnp.exp(0.5 * (a + b)))
    d1, d2 = jax.grad(cost)(base), jax.grad(jax.grad(cost))(base)
    newton = base - d1 / jnp.where(d2 > 0, d2, 1.0)
    # At a kink (e.g. where the FFN's shared link starts to bind) the one-sided derivatives
    # do not vanish and a Newton step leaves the bracket: keep the golden-section point.
    lo, hi = jax.lax.stop_gradient(jnp.exp(a)), jax.lax.stop_gradient(jnp.exp(b))
    inside = (d2 > 0) & (newton >= lo) & (newton <= hi)
    return jnp.where(inside, newton, base)


@filter_jit
def stage_mean_field_optimum(latency, batch_size, t_a, weight=1.0):
    """``(r_A, r_C, r_peak, r_star, regime)`` of the mean field with the rising floor
    ``h(r)`` of ``stage_floor_mean`` (module docstring), for a scalar ``batch_size``
    and the mean-field attention time ``t_a``.

    ``r_A``: where ``h`` reaches ``t_a`` (0 when it starts above, ``+inf`` when it never
    does); ``r_C``: where ``E[t_F]`` reaches a communication time that does not grow with
    ``r`` (``comm_scaling="batch"``, ``per_peer = alpha_link = 0``; else NaN); ``r_peak``:
    the minimiser of ``(1 + w/r) h(r)`` (``w = weight``: 1 for throughput per instance, the
    FFN-to-Attention cost ratio for [`cost_optimum`][afdjax.cost_optimum]; ``+inf`` when ``w`` is);
    ``r_star = max(r_A, r_peak)``, ``+inf`` (regime 3, "unbounded") when ``h`` does not grow
    with ``r``."""
    B = as_float(batch_size)
    h = lambda r: stage_floor_mean(latency, B, r)
    ffn = lambda r: _floor_parts(latency, B, r)[1]
    grid = jnp.asarray(_GRID)
    h_grid = jax.vmap(h)(grid)
    grows = h_grid[-1] > h_grid[0]
    r_a = _solve_rising(h, t_a, h_grid)
    flat = latency.comm_scaling == "batch"
    comm_level = _floor_parts(latency, B, 1.0)[0]
    if latency.comm is not None:
        flat = flat & (latency.comm.per_peer == 0) & (latency.comm.alpha_link == 0)
    r_c = jnp.where(flat, _solve_rising(ffn, comm_level, jax.vmap(ffn)(grid)), jnp.nan)
    w = as_float(weight)
    w_safe = jnp.where(jnp.isinf(w), 1.0, w)
    cost = lambda r: (1.0 + w_safe / r) * h(r)
    r_peak = jnp.where(grows & ~jnp.isinf(w), _minimise(cost, (1.0 + w_safe / grid) * h_grid), jnp.inf)
    r_star = jnp.where(grows, jnp.maximum(r_a, r_peak), jnp.inf)
    at = jnp.where(jnp.isfinite(r_star), r_star, 1.0)
    comm_now, ffn_now = _floor_parts(latency, B, at)
    regime = jnp.where(r_a >= r_peak, 0, jnp.where(comm_now > ffn_now, 1, 2))
    regime = jnp.where(grows, regime, 3)
    return r_a, r_c, r_peak, r_star, regime
