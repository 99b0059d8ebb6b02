"""Derivatives of the open-loop quantities in the latency coefficients:
:func:`serve_sensitivity`.

**What is differentiable, and how.** For a fixed key, each replica's throughput, goodput,
TPOT, TTFT, sojourn time and queue length are piecewise smooth in the six coefficients:
between two changes of the order of events (an arrival before or after a step's start, a
request's TPOT or TTFT crossing its target, a KV fit, a tie in the admission policy) every
time is a sum of maxima of linear stage times, and at a change the quantity jumps. The
derivative of the expectation is the smooth part plus the rate of the jumps times their
size. The pathwise derivative (forward mode through the kernel's ``while_loop`` s; reverse
mode is not available through them) holds the order fixed and so returns the smooth part
only. Wherever requests wait, the jumps carry much of the derivative: with the order fixed
a longer step delays every later step start and each queued request's wait grows with it,
while in fact some arrivals that came just after a start now come before the (later) next
one and join a step earlier (their wait drops by a step, their batch is fuller, the steps
are longer). So pathwise TTFT derivatives are too high and TPOT derivatives too low.
Measured (``experiments/serve_sensitivity_steps.py``: ``tests/test_serve.py``'s system,
B = 4, r = 1 and 3, 32 x 3000 steps, about 20 % and 70 % of capacity), central
differences with common random numbers (h/c = 0.05, +- a standard error) against pathwise
(load 0.2 at r = 1, r = 3; load 0.7 at r = 1, r = 3):

    d TPOT / d alpha_a   CRN 126 +- 2, 97 +- 1, 451 +- 8, 620 +- 11            pathwise 109, 87, 278, 302
    d TTFT / d alpha_a   CRN 44 +- 5, 39 +- 5, 3740 +- 260, 1710 +- 100        pathwise 253, 735, 7370, 51200
    d TPOT / d alpha_f   CRN 0.45 +- 0.02, 0.80 +- 0.04, 0.19 +- 0.03, 0.7 +- 0.4  pathwise 0.41, 0.71, 0.12, 0.13
    d TTFT / d alpha_f   CRN 0.06 +- 0.14, 0.9 +- 0.3, 0.6 +- 0.4, 0.5 +- 2.3   pathwise 1.1, 6.1, 3.2, 51

Mean TPOT pathwise is 10-50 % low, mean TTFT 2-30 times too high (more where the CRN
estimate is near 0); goodput (indicators of
meeting a target: pathwise derivative 0 almost surely) and the queue length (waits) are
wrong the same way. So ``method="crn"`` (the default) takes central differences with
common random numbers: the same key, so request ``n`` of a replica has the same lengths
and arrival gap in both runs and they differ only through the coefficient, jumps
included. The latency model is a traced argument of the compiled kernel, so the perturbed
runs compile nothing.

**Throughput** is the exception, and ``method="pathwise"`` is offered for it alone. Far
above capacity every slot stays occupied and the order of admissions does not depend on
the coefficients: the open-loop bundle is the saturated one, whose pathwise derivative is
exact in expectation (d/d alpha_a: pathwise -1.243 and -1.736 against CRN -1.245 +- 0.001
and -1.737 +- 0.002 at r = 1 and 3). Below capacity the throughput is the arrival rate's,
``r X E[D] / (r + 1)`` whatever the coefficients: its derivative is exactly 0. The
pathwise derivative is not 0 there where the bundle rarely empties (fixed order, fixed
tokens per step, longer steps: -0.077 at r = 3 and 70 % load, where CRN gives 0.04 +-
0.03), so ``pathwise`` returns the forward-mode derivative where the rate is flagged
``saturated`` and 0 elsewhere (the derivative of ``min(arrival rate's, saturated)``).

Quantiles (TPOT and TTFT p50/p90/p99) are not offered: they come from log-binned
histograms whose resolution (one bin, 0.34 % for TPOT, 0.56 % for TTFT with 4096 bins) is
of the order of what a step of 5 % moves a quantile (the step times the quantile's
elasticity: 15 bins at an elasticity of 1, 1.5 at 0.1), so their differences would be
dominated by the binning; per-request values (not kept) would be needed.

Step size: see :data:`DEFAULT_STEP`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._latency import COEFFICIENT_NAMES, LatencyModel
from .._validate import check_choice, filter_jit, float_leaf, invalid
from ._kernel import replica_block
from ._result import POOLED_SUMS, jackknife, pooled_quantities
from ._serve import StatsRun, _run_groups, as_arrivals, request_workload, result_of, run_stats

QUANTITIES = (
    "throughput_per_instance",
    "goodput_per_instance",
    "tpot_mean",
    "ttft_mean",
    "mean_sojourn_time",
    "mean_queue_length",
)
"""The quantities :func:`serve_sensitivity` differentiates (names of
:class:`~afdjax.ServeResult` fields)."""

PATHWISE_QUANTITIES = ("throughput_per_instance",)
"""The quantities ``method="pathwise"`` is right for (module docstring)."""

METHODS = ("crn", "pathwise")

DEFAULT_STEP = 0.05
"""Relative step ``h / c`` of the central differences. The quantities are piecewise smooth
in a coefficient: a too small step sees few event-order changes between the two runs,
each weighing ``1 / h`` (standard error growing like ``h^-1/2``, or like ``1 / h`` where
the two runs decouple, as for d/d alpha_f at r = 3, 70 % load), a too large one adds
curvature bias. Measured (``experiments/serve_sensitivity_steps.py``, d/d alpha_a, h/c =
0.005, 0.01, 0.02, 0.05, 0.1, 0.2): far above capacity d throughput = -1.736, -1.736,
-1.735, -1.737, -1.747, -1.786 (+- 0.0012; the bias is about ``(h e)^2`` with ``e = 0.8``
the elasticity: 0.1 %, 0.6 %, 2.9 % at 0.05, 0.1, 0.2); at 70 % load (r = 3) d TTFT =
1697, 1641, 1623, 1706, 1795, 2461 (standard errors 260, 220, 130, 100, 93, 130); at 20 %
load (r = 1) the standard error of d TTFT is 22, 16, 8.9, 5.3, 4.7, 3.6. At 0.05 the bias
is below the noise and the noise 1.5-2 times below that at 0.02. Near capacity the waits
are steep (their elasticity grows like ``1 / (1 - rho)``) and so is the bias: for the
M/D/1 queue's mean wait (closed form, the service time proportional to the coefficient)
the central difference at h/c = 0.05 is 0.09 %, 0.8 % and 6.8 % above the derivative at
loads 0.3, 0.6 and 0.84 (1 % at 0.84 with 0.02; the engine's differences match the closed
form's at the same step, ``tests/test_serve_sensitivity.py``); and the perturbed run must
stay on the same side of capacity (``h / c < (1 - rho) / rho`` for the binding stage).
Take a smaller step there."""


class ServeSensitivity(eqx.Module):
    """Derivatives of open-loop quantities in the latency coefficients, per ratio and rate.

    ``derivative[q][c]`` and ``stderr[q][c]`` are arrays ``(ratios, rates)``: the derivative
    of the pooled quantity ``q`` (as in [`ServeResult`][afdjax.ServeResult]) with respect to the
    coefficient ``c``, in ``q``'s unit per ``c``'s unit (``alpha_*``: time per token,
    ``beta_*``: time), and its standard error across replicas (jackknife; NaN with one
    replica).

    Attributes:
        result: the [`ServeResult`][afdjax.ServeResult] at the given coefficients.
        value: ``{quantity: (ratios, rates) array}``, the pooled quantities at the given
            coefficients (``result``'s).
        derivative: ``{quantity: {coefficient: (ratios, rates) array}}``.
        stderr: the same shape: standard errors (jackknife over replicas).
        steps: ``{coefficient: h}``, the absolute step of each coefficient (``crn``;
            0 for ``pathwise``).
        quantities: the quantities (static).
        coefficients: the coefficients (static).
        method: ``"crn"`` or ``"pathwise"`` (static).
    """

    result: object
    value: dict
    derivative: dict
    stderr: dict
    steps: dict = eqx.field(static=True)
    quantities: tuple = eqx.field(static=True)
    coefficients: tuple = eqx.field(static=True)
    method: str = eqx.field(static=True)


def _sums(st) -> dict:
    """The per-replica sums the quantities need (:data:`POOLED_SUMS`), float64 NumPy
    ``(replicas, ratios, rates)``."""
    s = {n: np.asarray(getattr(st, n), dtype=np.float64) for n in POOLED_SUMS if n != "queue"}
    s["queue"] = np.asarray(st.queue_area, dtype=np.float64) + np.asarray(st.arrival_area, dtype=np.float64)
    return s


def _full_and_leave_one_out(s: dict, inst) -> tuple[dict, dict]:
    """Pooled quantities over all replicas ``(ratios, rates)`` and leaving each one out
    ``(replicas, ratios, rates)``."""
    total = {k: v.sum(axis=0) for k, v in s.items()}
    loo = {k: total[k][None] - v for k, v in s.items()}
    return pooled_quantities(total, inst), pooled_quantities(loo, inst)


def _check_names(name, value, allowed, default):
    if value is None:
        return tuple(default)
    items = (value,) if isinstance(value, str) else value
    try:
        items = tuple(items)
    except TypeError:
        raise invalid(name, value, f"a name or a list of names among {', '.join(allowed)}") from None
    if not items or any(not isinstance(v, str) or v not in allowed for v in items) or len(set(items)) != len(items):
        raise invalid(name, value, f"a name or a list of distinct names among {', '.join(allowed)}")
    return items


def _with(latency: LatencyModel, name: str, value: float) -> LatencyModel:
    """The model with one coefficient replaced (a leaf of the same type: no recompilation)."""
    return eqx.tree_at(lambda m: getattr(m, name), latency, float_leaf(value))


def _multiplier(name: str, run: StatsRun, latency: LatencyModel, theta: float) -> float:
    """Tokens a coefficient multiplies in the full-batch step at ``r_max`` (1 for ``beta_*``)."""
    B, r = run.cfg.batch_size, float(max(run.ratio_list))
    return {
        "alpha_a": B * theta,
        "alpha_f": r * B,
        "alpha_c": B if latency.comm_scaling == "batch" else r * B,
    }.get(name, 1.0)


def _tangent_block(key_words, workload, arrivals, latency, names, inp, cfg, ratios, rates, ids):
    """``(time, tokens, d time / d coefficients (..., len(names)))`` of the replicas ``ids``
    (forward mode through the kernel's loops: ``jacfwd``)."""

    def times(values):
        lat = latency
        for i, name in enumerate(names):
            lat = eqx.tree_at(lambda m, name=name: getattr(m, name), lat, values[i])
        st = replica_block(key_words, workload, arrivals, lat, inp, cfg, ratios, rates, ids)
        return st.time, (st.time, st.tokens.astype(st.time.dtype))

    values = jnp.stack([jnp.asarray(getattr(latency, n), jnp.zeros(()).dtype) for n in names])
    d_time, (time, tokens) = jax.jacfwd(times, has_aux=True)(values)
    return time, tokens, d_time


_tangent_jit = filter_jit(_tangent_block)


def _pathwise(run: StatsRun, latency: LatencyModel, names: tuple, inst, saturated):
    """d throughput / d coefficients: forward mode where the rate is flagged saturated
    (exact there in expectation), 0 elsewhere (the throughput is the arrival rate's); the
    forward pass runs only when some rate is saturated."""
    zero = {n: np.zeros(saturated.shape) for n in names}
    if not np.any(saturated):
        return {"throughput_per_instance": zero}, {"throughput_per_instance": dict(zero)}

    def runner(key_words, workload, arrivals, lat, inp, ratios, rates, cfg):
        ids = jnp.arange(cfg.num_replicas, dtype=jnp.uint32)
        return _tangent_jit(key_words, workload, arrivals, lat, names, inp, cfg, ratios, rates, ids)

    time, tokens, d_time = _run_groups(
        runner, run.key_words, run.workload, run.arrivals, latency, run.inputs, run.ratio_list, run.rates, run.cfg
    )
    time, tokens, d_time = (np.asarray(x, dtype=np.float64) for x in (time, tokens, d_time))
    T, N, dT = time.sum(0), tokens.sum(0), d_time.sum(0)
    Tl, Nl, dTl = T[None] - time, N[None] - tokens, dT[None] - d_time
    full = -N[..., None] * dT / T[..., None] ** 2 / inst[..., None]
    loo = -Nl[..., None] * dTl / Tl[..., None] ** 2 / inst[None, ..., None]
    se = jackknife(loo)
    sat = saturated[..., None]
    full, se = np.where(sat, full, 0.0), np.where(sat, se, 0.0)
    derivative = {"throughput_per_instance": {n: full[..., i] for i, n in enumerate(names)}}
    stderr = {"throughput_per_instance": {n: se[..., i] for i, n in enumerate(names)}}
    return derivative, stderr


def serve_sensitivity(
    key: jax.Array,
    workload,
    latency: LatencyModel,
    batch_size: int,
    ratios,
    arrival_rates,
    num_steps: int,
    num_replicas: int = 8,
    *,
    coefficients=None,
    quantities=None,
    method: str = "crn",
    step: float = DEFAULT_STEP,
    **serve_kwargs,
) -> ServeSensitivity:
    """Derivatives of open-loop throughput, goodput, TPOT, TTFT, sojourn time and queue
    length with respect to the latency coefficients, per ratio and arrival rate, with
    standard errors across replicas.

    ``method="crn"`` (default): for each coefficient ``c > 0`` the central difference
    ``(Q(c + h) - Q(c - h)) / 2h`` with ``h = step c`` of two runs of
    [`serve`][afdjax.serve] with the same key (common random numbers: request ``n`` has the
    same lengths and arrival gap in both, so they differ only through ``c``); for
    ``c = 0`` (the derivative is one-sided there) the forward difference
    ``(Q(h) - Q(0)) / h`` with ``h`` the step that moves the stage's full-batch time
    by ``step`` times the full-batch cycle time. Event-order changes between the two runs
    are counted (what the pathwise derivative misses at any load where requests wait).
    ``2 k + 1`` runs for ``k`` coefficients (one for ``c = 0``), one compilation.

    ``method="pathwise"``: for ``throughput_per_instance`` only, forward mode through the
    kernel (``jax.jacfwd``; one more run and a compilation of its own) where the rate is
    flagged ``saturated`` (there the bundle is the saturated one and the pathwise
    derivative is exact in expectation, as [`throughput_gradients`][afdjax.throughput_gradients]),
    and 0 elsewhere (below capacity the throughput is the arrival rate's, whatever the
    coefficients). Other quantities are refused: their pathwise derivative holds the order
    of events fixed and misses what moving events contribute (measured: mean TPOT 10-50 %
    low, mean TTFT 2-30 times too high; ``afdjax._serve._sensitivity``).

    Arguments:
        key: a JAX PRNG key (the same key as a [`serve`][afdjax.serve] run gives its values).
        workload: request lengths (as in [`serve`][afdjax.serve]).
        latency: the [`LatencyModel`][afdjax.LatencyModel] at which to differentiate.
        batch_size: slots per Attention instance ``B``.
        ratios: A/F ratios ``r``.
        arrival_rates: ``X``, requests per time unit per Attention instance.
        num_steps: measured steps per bundle and replica.
        num_replicas: replicas (standard errors need 2).
        coefficients: a name or names among ``alpha_a, beta_a, alpha_f, beta_f, alpha_c,
            beta_c`` (default: all six).
        quantities: names among ``throughput_per_instance``, ``goodput_per_instance``,
            ``tpot_mean``, ``ttft_mean``, ``mean_sojourn_time``, ``mean_queue_length``
            (the [`ServeResult`][afdjax.ServeResult] fields; default: all of them; with
            ``pathwise``, the throughput).
        method: ``"crn"`` (default) or ``"pathwise"``.
        step: the relative step ``h / c`` of the differences, in ``(0, 1)``
            (default 0.05: measured to keep the curvature bias below the noise; see
            [Open-loop serving](../concepts/serving.md#derivatives-in-the-latency-coefficients)).
        **serve_kwargs: further keyword arguments of [`serve`][afdjax.serve] (arrivals,
            kv_capacity, targets, policy, ...).

    Returns:
        a [`ServeSensitivity`][afdjax.ServeSensitivity]: ``derivative[q][c]`` and
        ``stderr[q][c]`` arrays ``(len(ratios), len(arrival_rates))`` in ``q``'s unit per
        ``c``'s unit (tokens per time unit per instance, time units or requests, per time
        unit per token for ``alpha_*``, per time unit for ``beta_*``), and the
        [`ServeResult`][afdjax.ServeResult] at ``latency``.
    """
    method = check_choice("method", method, METHODS)
    names = _check_names("coefficients", coefficients, COEFFICIENT_NAMES, COEFFICIENT_NAMES)
    default_q = QUANTITIES if method == "crn" else PATHWISE_QUANTITIES
    wanted = _check_names("quantities", quantities, QUANTITIES, default_q)
    if method == "pathwise":
        other = [q for q in wanted if q not in PATHWISE_QUANTITIES]
        if other:
            raise ValueError(
                f"quantities={list(wanted)!r} is invalid with method='pathwise': only throughput_per_instance "
                f"has a sound pathwise derivative; {', '.join(other)} change mostly through event-order "
                "changes (arrivals crossing step starts, TPOT crossing a target), whose pathwise derivative "
                "is 0: use method='crn'"
            )
    if not _is_step(step):
        raise invalid("step", step, "a relative step in (0, 1)")
    step = float(step)
    if not isinstance(latency, LatencyModel):
        raise invalid("latency", latency, "an afdjax LatencyModel")
    args = (key, workload, latency, batch_size, ratios, arrival_rates, num_steps, num_replicas)
    base = run_stats(*args, **serve_kwargs)
    result = result_of(base)
    inst = np.asarray(base.ratio_list, dtype=np.float64)[:, None] + 1.0
    s0 = _sums(base.stats)
    value = {q: v for q, v in _full_and_leave_one_out(s0, inst)[0].items() if q in wanted}
    if method == "pathwise":
        saturated = np.asarray(result.saturated, dtype=bool)
        derivative, stderr = _pathwise(base, latency, names, inst, saturated)
        return ServeSensitivity(result, value, derivative, stderr, dict.fromkeys(names, 0.0), wanted, names, method)

    # later runs reuse the base run's buffers (no rerun, no new shape)
    kwargs = dict(serve_kwargs, max_admissions=base.settings["max_admissions"])
    kwargs["replica_batch_size"] = base.cfg.replica_batch_size
    theta = float(request_workload(workload, as_arrivals(serve_kwargs.get("arrivals"))).theta())
    derivative = {q: {} for q in wanted}
    stderr = {q: {} for q in wanted}
    steps = {}
    for name in names:
        c = float(np.asarray(getattr(latency, name)))
        if c > 0:
            h = step * c
            lo_sums = _sums(run_stats(*_replace(args, _with(latency, name, c - h)), **kwargs).stats)
            width = 2 * h
        else:
            h = step * base.scale / _multiplier(name, base, latency, theta)
            lo_sums, width = s0, h
        hi_sums = _sums(run_stats(*_replace(args, _with(latency, name, c + h)), **kwargs).stats)
        steps[name] = h
        hi_full, hi_loo = _full_and_leave_one_out(hi_sums, inst)
        lo_full, lo_loo = _full_and_leave_one_out(lo_sums, inst)
        for q in wanted:
            derivative[q][name] = (hi_full[q] - lo_full[q]) / width
            stderr[q][name] = jackknife((hi_loo[q] - lo_loo[q]) / width)
    return ServeSensitivity(result, value, derivative, stderr, steps, wanted, names, method)


def _is_step(step) -> bool:
    try:
        return not isinstance(step, (bool, str)) and 0.0 < float(step) < 1.0
    except (TypeError, ValueError):
        return False


def _replace(args: tuple, latency: LatencyModel) -> tuple:
    return (*args[:2], latency, *args[3:])
