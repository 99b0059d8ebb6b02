"""Closed-form optima of tokens per dollar and tokens per joule (issue 15).

When an Attention instance costs ``w_A`` and an FFN instance ``w_F`` (dollars per hour,
or watts), an rA-1F bundle produces ``r B / tau`` tokens per time unit for
``r w_A + w_F`` per time unit, and the objective is

    f_w(r) = r B / ((r w_A + w_F) tau(r))

(tokens per time unit per unit of cost; ``w_A = w_F`` gives the paper's throughput per
instance times a constant). With ``c = w_F / w_A``:

* **attention- and communication-bound** (``tau`` constant up to ``r_A`` and ``r_C``):
  ``r / (r w_A + w_F)`` rises with ``r``, so the boundaries ``r_A = (t_A_bar - beta_F) /
  (alpha_F B)`` and ``r_C`` **do not move** with the prices;
* **FFN-bound**: ``(w_A + w_F / r)(alpha_F r B + beta_F)`` is smallest at the stationary
  point ``r_peak = sqrt(c beta_F / (alpha_F B)) = sqrt(beta_F w_F / (alpha_F B w_A))``:
  a dearer FFN instance (``c > 1``) pushes the optimum to more Attention instances per FFN,
  by ``sqrt(c)``;
* the optimum is ``r* = max(r_A, r_C, r_peak)``; with communication scaling with ``r B``
  (``comm_scaling="ratio_batch"``) ``r_peak`` minimises ``(1 + c / r) max(t_F(r), t_C(r))``
  over the two lines' stationary points and their crossing, as in the mean field.
* ``w_A = 0`` (free Attention): ``f_w`` rises for ever (regime "unbounded", ``r* = +inf``);
  ``w_F = 0``: ``r_peak = 0`` and ``r*`` is the attention (or communication) boundary.

The barrier refinement replaces ``tau`` by the Gaussian ``E[tau]``
([`barrier_cycle_time`][afdjax.barrier_cycle_time]) and is maximised numerically over ``[1, max_ratio]``
(grid then Newton). The integer recommendation is the better neighbour of ``r*`` under
``f_w`` (mean field) and the best integer of the barrier curve.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._latency import LatencyModel
from .._validate import check_number, filter_jit, invalid
from .._workload import Workload
from ._barrier import barrier_cycle_time
from ._base import as_float, check_batch_size
from ._mean_field import REGIMES, _reach, attention_time_mean_field, mean_field_cycle_time
from ._ratio_choice import best_integer_neighbour, check_max_ratio, maximise_ratio
from ._stage_optimum import stage_mean_field_optimum


def _check_costs(attention_cost, ffn_cost) -> None:
    for name, value in (("attention_cost", attention_cost), ("ffn_cost", ffn_cost)):
        if not isinstance(value, jax.core.Tracer):
            check_number(name, value, strict=False)
    concrete = not isinstance(attention_cost, jax.core.Tracer) and not isinstance(ffn_cost, jax.core.Tracer)
    if concrete and float(attention_cost) + float(ffn_cost) <= 0:
        raise invalid("attention_cost + ffn_cost", float(attention_cost) + float(ffn_cost), "a number > 0")


def cost_objective(
    workload: Workload, latency: LatencyModel, batch_size, ratio, attention_cost, ffn_cost, *, barrier: bool = False
) -> jax.Array:
    """``r B / ((r w_A + w_F) tau(r))``: tokens per time unit per unit of cost (``w_A``,
    ``w_F`` = ``attention_cost``, ``ffn_cost``: cost per instance per time, e.g. $/h or W),
    at the mean-field ``tau`` or, with ``barrier=True``, the Gaussian barrier ``E[tau]``;
    real ``ratio``.

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        ratio: the A/F ratio ``r``, real-valued (``>= 1``); may be traced and differentiated.
        attention_cost: ``w_A``, cost of one Attention instance per unit time ($/h, W, ...).
        ffn_cost: ``w_F``, cost of one FFN instance in the same unit.
        barrier: ``False``: the mean-field step time; ``True``: the Gaussian barrier ``E[tau]``.

    Returns:
        tokens per time unit per unit of cost, a scalar array.

    Examples:
        >>> workload = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
        >>> latency = afdjax.LatencyModel.from_preset("paper-910c")
        >>> round(float(afdjax.cost_objective(workload, latency, 256, 8.0, 1.0, 2.0)), 4)
        0.6749
    """
    ratio = as_float(ratio)
    cycle = barrier_cycle_time if barrier else mean_field_cycle_time
    tau = cycle(workload, latency, batch_size, ratio)
    return ratio * batch_size / ((ratio * attention_cost + ffn_cost) * tau)


class CostOptimum(eqx.Module):
    """The closed-form optimum of [`cost_objective`][afdjax.cost_objective] (see the module docstring)."""

    r_attention: jax.Array
    """``r_A``: where the rising stage time reaches ``t_A_bar`` (independent of the costs)."""
    r_communication: jax.Array
    """``r_C``: where the FFN time reaches a constant communication time (NaN for ``ratio_batch``)."""
    r_peak: jax.Array
    """The FFN-bound stationary point ``sqrt(beta_F w_F / (alpha_F B w_A))`` (``+inf`` when
    ``w_A = 0`` or ``alpha_F = 0``)."""
    r_star: jax.Array
    """``max(r_A, r_C, r_peak)``, the mean-field optimum (real)."""
    regime: jax.Array
    """Index into [`REGIMES`][afdjax.REGIMES] of the binding stage at ``r_star``."""
    ratio_mean_field: jax.Array
    """The better integer neighbour of ``r_star`` in ``[1, max_ratio]`` under the mean field."""
    ratio_barrier: jax.Array
    """The best integer in ``1..max_ratio`` of the barrier-refined objective."""
    r_barrier_continuous: jax.Array
    """The continuous maximiser of the barrier-refined objective over ``[1, max_ratio]``."""

    @property
    def regime_name(self) -> str:
        return REGIMES[int(self.regime)]

    def to_dict(self) -> dict:
        """Python numbers (``r_star`` may be ``inf``)."""
        return {
            "r_attention": float(self.r_attention),
            "r_communication": float(self.r_communication),
            "r_peak": float(self.r_peak),
            "r_star": float(self.r_star),
            "regime": self.regime_name,
            "ratio_mean_field": int(self.ratio_mean_field),
            "ratio_barrier": int(self.ratio_barrier),
            "r_barrier_continuous": float(self.r_barrier_continuous),
        }


def _weighted_peak(a, b, c):
    """argmin over r > 0 of (1 + c / r)(a r + b): ``sqrt(c b / a)`` (inf when a = 0)."""
    return jnp.where(a > 0, jnp.sqrt(c * b / jnp.where(a > 0, a, 1.0)), jnp.inf)


def _mean_field_parts(workload, latency, batch_size, attention_cost, ffn_cost):
    B = as_float(batch_size)
    w_a, w_f = as_float(attention_cost), as_float(ffn_cost)
    c = jnp.where(w_a > 0, w_f / jnp.where(w_a > 0, w_a, 1.0), jnp.inf)
    t_a = attention_time_mean_field(workload, latency, B)
    if latency.routing is not None or latency.comm is not None:  # h(r) is not a line: numerically
        return stage_mean_field_optimum(latency, B, t_a, c)
    a_f, b_f = latency.alpha_f * B, latency.beta_f
    if latency.comm_scaling == "batch":
        r_a = _reach(t_a, a_f, b_f)
        r_c = _reach(latency.comm_time(1.0, B), a_f, b_f)
        r_peak = jnp.where(jnp.isinf(c), jnp.inf, _weighted_peak(a_f, b_f, jnp.where(jnp.isinf(c), 1.0, c)))
        candidates = jnp.stack([r_a, r_c, r_peak])
        r_star, regime = jnp.max(candidates), jnp.argmax(candidates)
    else:
        a_c, b_c = latency.alpha_c * B, latency.beta_c
        r_a_comm = jnp.where(a_c > 0, (t_a - b_c) / jnp.where(a_c > 0, a_c, 1.0), jnp.inf)
        r_a = jnp.minimum(_reach(t_a, a_f, b_f), r_a_comm)
        r_c = jnp.full_like(r_a, jnp.nan)
        c_safe = jnp.where(jnp.isinf(c), 1.0, c)

        def cost(r):
            return (1.0 + c_safe / r) * jnp.maximum(a_f * r + b_f, a_c * r + b_c)

        crossing = jnp.where(a_f != a_c, (b_c - b_f) / jnp.where(a_f != a_c, a_f - a_c, 1.0), jnp.inf)
        options = jnp.stack([_weighted_peak(a_f, b_f, c_safe), _weighted_peak(a_c, b_c, c_safe), crossing])
        options = jnp.where((options > 0) & jnp.isfinite(options), options, jnp.inf)
        costs = jnp.where(jnp.isfinite(options), cost(jnp.where(jnp.isfinite(options), options, 1.0)), jnp.inf)
        r_peak = jnp.where(jnp.isinf(c), jnp.inf, options[jnp.argmin(costs)])
        r_star = jnp.maximum(r_a, r_peak)
        comm_on_top = a_c * r_star + b_c > a_f * r_star + b_f
        regime = jnp.where(r_a >= r_peak, 0, jnp.where(comm_on_top, 1, 2))
    regime = jnp.where(r_star == jnp.inf, REGIMES.index("unbounded"), regime)
    return r_a, r_c, r_peak, r_star, regime


def cost_optimum(
    workload: Workload, latency: LatencyModel, batch_size, attention_cost, ffn_cost, max_ratio: int
) -> CostOptimum:
    """The ratio that maximises tokens per unit of cost when an Attention instance costs
    ``attention_cost`` and an FFN instance ``ffn_cost`` (the same unit: $/h for tokens per
    dollar, W for tokens per joule; only their ratio matters): the mean-field optimum
    ``r* = max(r_A, r_C, sqrt(beta_F w_F / (alpha_F B w_A)))`` with its regime and integer
    choice, and the barrier-refined optimum over ``[1, max_ratio]``.

    With ``latency.routing`` or ``latency.comm`` the mean-field ratios are found numerically
    (``r_peak`` minimises ``(1 + w_F / (w_A r)) h(r)``, ``_stage_optimum.stage_mean_field_optimum``);
    with ``noise`` or ``routing`` the barrier optimum is the best point of the 1/64 grid.

    Arguments:
        workload: the [`Workload`][afdjax.Workload] (its stationary per-slot load ``theta``, tokens, and its variance).
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units per token and time units).
        batch_size: slots ``B`` per Attention instance (``> 0``; may be traced).
        attention_cost: ``w_A``, cost of one Attention instance (finite, ``>= 0``).
        ffn_cost: ``w_F``, cost of one FFN instance in the same unit (finite, ``>= 0``; not both 0).
        max_ratio: the largest ratio of the barrier search, a Python integer ``>= 1``.

    Returns:
        a [`CostOptimum`][afdjax.CostOptimum].
    """
    check_batch_size(batch_size)
    _check_costs(attention_cost, ffn_cost)
    max_ratio = check_max_ratio(max_ratio)
    costs = as_float(attention_cost), as_float(ffn_cost)  # array leaves: new prices do not recompile
    return _cost_optimum_jit(workload, latency, as_float(batch_size), *costs, max_ratio)


@filter_jit
def _cost_optimum_jit(workload, latency, batch_size, attention_cost, ffn_cost, max_ratio: int) -> CostOptimum:
    r_a, r_c, r_peak, r_star, regime = _mean_field_parts(workload, latency, batch_size, attention_cost, ffn_cost)

    def mean_field(r):
        return cost_objective(workload, latency, batch_size, r, attention_cost, ffn_cost)

    def barrier(r):
        return cost_objective(workload, latency, batch_size, r, attention_cost, ffn_cost, barrier=True)

    ratio_mf = best_integer_neighbour(jnp.minimum(r_star, max_ratio), mean_field, max_ratio)
    ratio_br, _, r_cont = maximise_ratio(barrier, max_ratio, 0 if latency.stochastic else 4)
    return CostOptimum(
        r_attention=r_a,
        r_communication=r_c,
        r_peak=r_peak,
        r_star=r_star,
        regime=regime,
        ratio_mean_field=ratio_mf,
        ratio_barrier=ratio_br,
        r_barrier_continuous=r_cont,
    )
