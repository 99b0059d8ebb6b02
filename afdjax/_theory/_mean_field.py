"""Mean-field theory of the rA-1F decode process (arXiv 2601.21351, section 3).

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

When no stage time grows with ``r`` (``alpha_f = 0``, and ``alpha_c = 0`` under
``"ratio_batch"``) the throughput per instance rises for ever: ``r* = +inf`` and the
regime is "unbounded". The integer recommendation is then the top of the range given.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._latency import LatencyModel
from .._workload import Workload
from ._base import as_float, check_batch_size, per_instance_throughput
from ._ratio_choice import best_integer_neighbour
from ._stage_optimum import stage_floor_mean, stage_mean_field_optimum

REGIMES = ("attention", "communication", "ffn", "unbounded")
"""Names of the binding regimes, indexed by [`regime`][afdjax.MeanFieldOptimum.regime]. "unbounded":
no stage time grows with ``r`` (e.g. ``alpha_f = 0``), so throughput per instance rises
with ``r`` for ever and ``r_star`` is ``+inf`` (``null`` in JSON reports)."""


def attention_time_mean_field(workload: Workload, latency: LatencyModel, batch_size) -> jax.Array:
    """``t_A_bar = alpha_a B theta + beta_a``: attention time at the stationary mean load
    (time units); ``batch_size`` ``B > 0`` slots per Attention instance."""
    check_batch_size(batch_size)
    return latency.attention_time(batch_size * workload.theta())


def mean_field_cycle_time(workload: Workload, latency: LatencyModel, batch_size, ratio) -> jax.Array:
    """Mean-field step time ``max(t_A_bar, t_C(r), t_F(r))`` for real ``ratio`` (time units).

    With ``latency.routing`` or ``latency.comm``: ``max(t_A_bar, t_C(r), t_C'(r),
    E[t_F(r)])``, the F->A time ``t_C'`` and the routed FFN time's mean (the busiest rank,
    ``_stage_terms.routed_ffn_time``); noise factors have mean 1 and do not enter.

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        ratio: the A/F ratio ``r``, real-valued (``>= 1``); may be traced and differentiated.

    Returns:
        the mean-field step time (time units), a scalar array.

    Examples:
        >>> workload = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
        >>> latency = afdjax.LatencyModel.from_preset("paper-910c")
        >>> round(float(afdjax.mean_field_cycle_time(workload, latency, 256, 8.0)), 2)  # t_A_bar binds
        303.44
    """
    ratio = as_float(ratio)
    t_a = attention_time_mean_field(workload, latency, batch_size)
    if latency.routing is None and latency.comm is None:
        return jnp.maximum(jnp.maximum(t_a, latency.comm_time(ratio, batch_size)), latency.ffn_time(ratio, batch_size))
    return jnp.maximum(t_a, stage_floor_mean(latency, batch_size, ratio))


def mean_field_throughput(workload: Workload, latency: LatencyModel, batch_size, ratio) -> jax.Array:
    """Mean-field throughput per instance ``r B / ((r + 1) * cycle time)`` (tokens per time
    unit per instance) for real ``ratio`` and batch size ``B > 0``.

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        ratio: the A/F ratio ``r``, real-valued (``>= 1``); may be traced and differentiated.

    Returns:
        tokens per time unit per instance, a scalar array.

    Examples:
        >>> workload = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
        >>> latency = afdjax.LatencyModel.from_preset("paper-910c")
        >>> round(float(afdjax.mean_field_throughput(workload, latency, 256, 8.0)), 3)
        0.75
    """
    ratio = as_float(ratio)
    return per_instance_throughput(ratio, batch_size, mean_field_cycle_time(workload, latency, batch_size, ratio))


class MeanFieldOptimum(eqx.Module):
    """The mean-field optimal ratio and its ingredients (all real-valued arrays)."""

    r_attention: jax.Array
    """``r_A``: the ratio at which the FFN (or communication) time reaches ``t_A_bar``
    (``+inf`` when a flat FFN line stays below it, ``-inf`` when it stays above)."""
    r_communication: jax.Array
    """``r_C``: where the FFN time reaches a constant communication time (NaN when
    communication scales with ``r B``)."""
    r_peak: jax.Array
    """``r_peak``: the peak of the FFN/communication-bound branch
    (``sqrt(beta_f / (alpha_f B))`` in the paper's convention; ``+inf`` when ``alpha_f = 0``)."""
    r_star: jax.Array
    """``max(r_A, r_C, r_peak)``: the mean-field optimal (real) ratio; ``+inf`` in the
    "unbounded" regime."""
    regime: jax.Array
    """Index into [`REGIMES`][afdjax.REGIMES] of the binding stage at ``r_star`` (3, "unbounded", when
    ``r_star = +inf``)."""
    attention_time: jax.Array
    """``t_A_bar`` (time units)."""

    @property
    def regime_name(self) -> str:
        """The name of ``regime`` in [`REGIMES`][afdjax.REGIMES]."""
        return REGIMES[int(self.regime)]


def _line_peak(a, b):
    """argmin over r > 0 of (1 + 1/r)(a r + b): sqrt(b / a) (inf when a = 0)."""
    return jnp.where(a > 0, jnp.sqrt(b / jnp.where(a > 0, a, 1.0)), jnp.inf)


def _reach(level, slope, intercept):
    """Where the line ``slope r + intercept`` reaches ``level``. A flat line (slope 0) never
    does: ``+inf`` when it stays below ``level``, ``-inf`` above, 0 on it."""
    flat = jnp.where(level > intercept, jnp.inf, jnp.where(level < intercept, -jnp.inf, 0.0))
    return jnp.where(slope > 0, (level - intercept) / jnp.where(slope > 0, slope, 1.0), flat)


def mean_field_optimum(workload: Workload, latency: LatencyModel, batch_size) -> MeanFieldOptimum:
    """Mean-field optimal ratio ``r* = max(r_A, r_C, r_peak)`` and the binding regime.

    ``r* = +inf`` with regime "unbounded" when no stage time grows
    with ``r`` (module docstring). With ``latency.routing`` or ``latency.comm`` the rising
    floor ``h(r) = max(E[t_F(r)], t_C(r), t_C'(r))`` is not a line: ``r_A`` is where ``h``
    reaches ``t_A_bar`` and ``r_peak`` minimises ``(1 + 1/r) h(r)``, both found numerically
    (``_stage_optimum.stage_mean_field_optimum``).

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).

    Returns:
        a [`MeanFieldOptimum`][afdjax.MeanFieldOptimum] (``regime`` indexes [`REGIMES`][afdjax.REGIMES]).

    Examples:
        >>> workload = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
        >>> latency = afdjax.LatencyModel.from_preset("paper-910c")
        >>> opt = afdjax.mean_field_optimum(workload, latency, 256)
        >>> round(float(opt.r_star), 3), round(float(opt.r_peak), 3), afdjax.REGIMES[int(opt.regime)]
        (9.575, 2.169, 'attention')
    """
    check_batch_size(batch_size)
    B = as_float(batch_size)
    t_a = attention_time_mean_field(workload, latency, B)
    if latency.routing is not None or latency.comm is not None:
        r_a, r_c, r_peak, r_star, regime = stage_mean_field_optimum(latency, B, t_a)
        return MeanFieldOptimum(
            r_attention=r_a, r_communication=r_c, r_peak=r_peak, r_star=r_star, regime=regime, attention_time=t_a
        )
    a_f, b_f = latency.alpha_f * B, latency.beta_f
    if latency.comm_scaling == "batch":
        t_c = latency.comm_time(1.0, B)
        r_a = _reach(t_a, a_f, b_f)
        r_c = _reach(t_c, a_f, b_f)
        r_peak = _line_peak(a_f, b_f)
        candidates = jnp.stack([r_a, r_c, r_peak])
        r_star = jnp.max(candidates)
        regime = jnp.argmax(candidates)
    else:
        a_c, b_c = latency.alpha_c * B, latency.beta_c
        # r_A: where the rising line max(a_f r + b_f, a_c r + b_c) reaches t_A_bar.
        r_a_comm = jnp.where(a_c > 0, (t_a - b_c) / jnp.where(a_c > 0, a_c, 1.0), jnp.inf)
        r_a = jnp.minimum(_reach(t_a, a_f, b_f), r_a_comm)
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
    regime = jnp.where(r_star == jnp.inf, REGIMES.index("unbounded"), regime)
    return MeanFieldOptimum(
        r_attention=r_a, r_communication=r_c, r_peak=r_peak, r_star=r_star, regime=regime, attention_time=t_a
    )


def mean_field_integer_ratio(workload, latency, batch_size, max_ratio: int | None = None) -> jax.Array:
    """Integer recommendation of the mean field (int32): the better neighbour of ``r*``
    under [`mean_field_throughput`][afdjax.mean_field_throughput], never below 1 and never above ``max_ratio``.

    In the "unbounded" regime (``r* = +inf``) it is ``max_ratio``, the top of the range;
    without ``max_ratio`` that case raises ``ValueError`` (see
    ``best_integer_neighbour``).

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        max_ratio: the top of the ratio range (a Python integer ``>= 1``), or ``None`` (no upper limit).

    Returns:
        the recommended integer ratio, an int32 scalar array.

    Examples:
        >>> workload = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
        >>> latency = afdjax.LatencyModel.from_preset("paper-910c")
        >>> int(afdjax.mean_field_integer_ratio(workload, latency, 256))
        9
    """
    check_batch_size(batch_size)
    opt = mean_field_optimum(workload, latency, batch_size)
    return best_integer_neighbour(
        opt.r_star, lambda r: mean_field_throughput(workload, latency, batch_size, r), max_ratio
    )
