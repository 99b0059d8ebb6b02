"""Capacity of a bundle under latency targets, the KV-bound stability rate, and the
planning question (how many bundles, at which ratio, for a total arrival rate).

* :func:`capacity`: per ratio, the largest arrival rate ``X`` per Attention instance at
  which the open-loop engine is not saturated and meets the targets (p99 TPOT and TTFT by
  default), below the saturated bound ``X_sat``: a vectorised grid up to the saturated
  bound, then a finer grid between the last rate that met them and the first that did not
  (the same shape: one compilation).
  The saturated throughput (:func:`afdjax.simulate`) bounds it: a bundle serves at most
  ``X_sat = T_sat (r + 1) / (r E[D])`` requests per time unit per Attention instance.
* With a KV capacity ``M`` tokens per instance, the closed-form KV-bound stability rate of
  Nie, Si and Zhou (arXiv 2605.04595), ``mu = M / (b E[g])`` requests per time unit per
  instance, with the lifetime KV demand ``E[g] = theta E[D]`` (token-steps; afdjax's
  renewal numerator ``E[D P + D (D - 1) / 2]``) and ``b`` the step time, here the
  saturated engine's mean step time ``r B / ((r + 1) T_sat)`` (an upper bound on the step
  at the KV bound, so ``mu`` is a lower bound on that closed form).
* :func:`plan`: for a total rate, the bundles ``ceil(rate / (r X*))`` and instances (or the
  cost ``bundles (r price_A + price_F)``) of every ratio, the best one, and the ratio of
  the saturated throughput-per-instance optimum beside it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .._engine import simulate
from .._validate import check_int, check_number
from ._serve import as_arrivals, request_workload, serve


@dataclasses.dataclass(frozen=True)
class CapacityResult:
    """Per ratio (lists in the order of ``ratios``); rates per Attention instance.

    Attributes:
        ratios: the A/F ratios.
        saturated_throughput_per_instance: throughput per instance of the saturated bundle.
        saturated_stderr: its standard error.
        throughput_at_capacity: throughput per instance at ``capacity_rate``.
        goodput_at_capacity: goodput per instance at ``capacity_rate``.
        tpot_p99_at_capacity: TPOT p99 at ``capacity_rate`` (time units).
        ttft_p99_at_capacity: TTFT p99 at ``capacity_rate`` (time units).
        settings: the inputs.
    """

    ratios: list
    capacity_rate: list
    """Largest rate ``X`` meeting the targets (0 if even the lowest grid rate failed)."""
    capacity_rate_total: list
    """The bundle's rate ``r X`` at capacity."""
    saturated_rate: list
    """``X_sat`` from the saturated throughput (the upper bound)."""
    saturated_throughput_per_instance: list
    saturated_stderr: list
    kv_stability_rate: list | None
    """Nie-Si-Zhou ``mu = M / (b theta E[D])`` (None without a KV capacity)."""
    kv_simulated_rate: list | None
    """The largest grid rate the engine ran unsaturated with the KV capacity and no targets."""
    throughput_at_capacity: list
    goodput_at_capacity: list
    tpot_p99_at_capacity: list
    ttft_p99_at_capacity: list
    limited_by: list
    """What stopped the rate: ``"saturation"``, ``"tpot"``, ``"ttft"`` or ``"none"``."""
    settings: dict

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _meets(res, i, k, slo_tpot, slo_ttft, bound):
    """``(ok, reason)`` at ratio index ``i``, rate index ``k``. A rate at or above ``bound``
    (the saturated rate ``X_sat``) is saturation whatever the run's flag: no bundle serves
    more than its saturated throughput, and a finite run near the bound cannot tell a
    slowly growing queue from a stable one (the flag's 3 % margin)."""
    if float(res.arrival_rates[k]) >= bound or bool(res.saturated[i, k]):
        return False, "saturation"
    if slo_tpot is not None and not float(res.tpot_p99[i, k]) <= slo_tpot:
        return False, "tpot"
    if slo_ttft is not None and not float(res.ttft_p99[i, k]) <= slo_ttft:
        return False, "ttft"
    return True, "none"


def _largest(res, i, slo_tpot, slo_ttft, bound):
    """Index of the last grid rate before the first failure (-1 if the first fails) and the reason."""
    for k in range(res.arrival_rates.size):
        ok, why = _meets(res, i, k, slo_tpot, slo_ttft, bound)
        if not ok:
            return k - 1, why
    return res.arrival_rates.size - 1, "none"


def capacity(
    key,
    workload,
    latency,
    batch_size: int,
    ratios,
    *,
    slo_tpot: float | None = None,
    slo_ttft: float | None = None,
    num_steps: int = 4000,
    num_replicas: int = 4,
    grid_points: int = 8,
    refinements: int = 1,
    kv_capacity: float | None = None,
    **serve_kwargs,
) -> CapacityResult:
    """The largest arrival rate per Attention instance each ratio sustains under the targets
    (see the module docstring). ``serve_kwargs`` go to [`serve`][afdjax.serve] (``arrivals``,
    ``prefill_alpha``, ``prefill_beta``, ``policy``, ...). Rates on the grid are fractions
    ``(k + 1) / grid_points`` of 1.05 ``X_sat``, then ``refinements`` finer grids.

    Arguments:
        key: a JAX PRNG key (common random numbers across ratios and rates).
        workload: the [`Workload`][afdjax.Workload] of the requests.
        latency: the [`LatencyModel`][afdjax.LatencyModel] (time unit of every result).
        batch_size: slots ``B`` per Attention instance.
        ratios: the A/F ratios (distinct integers ``>= 1``).
        slo_tpot: the TPOT p99 target (time units; ``None``: none).
        slo_ttft: the TTFT p99 target (time units; ``None``: none).
        num_steps: measured steps per simulation.
        num_replicas: replicas per simulation.
        grid_points: rates on the first grid.
        refinements: finer grids after the first.
        kv_capacity: KV tokens per Attention instance (``None``: unlimited).
        **serve_kwargs: keyword arguments of [`serve`][afdjax.serve].

    Returns:
        a [`CapacityResult`][afdjax.CapacityResult].
    """
    grid_points = check_int("grid_points", grid_points, 2, 256)
    refinements = check_int("refinements", refinements, 0, 8)
    if slo_tpot is not None:
        slo_tpot = check_number("slo_tpot", slo_tpot, minimum=0.0)
    if slo_ttft is not None:
        slo_ttft = check_number("slo_ttft", slo_ttft, minimum=0.0)
    if kv_capacity is not None:
        kv_capacity = check_number("kv_capacity", kv_capacity, minimum=0.0)
    arrivals = as_arrivals(serve_kwargs.pop("arrivals", None))
    req = request_workload(workload, arrivals)
    ratio_list = [int(r) for r in np.atleast_1d(ratios)]
    sim = simulate(key, req, latency, batch_size, ratio_list, num_steps, max(2, num_replicas))
    t_sat = np.asarray(sim.throughput_per_instance, dtype=float)
    t_se = np.asarray(sim.stderr, dtype=float)
    r = np.asarray(ratio_list, dtype=float)
    mean_d = float(req.mean_decode_steps())
    x_sat = t_sat * (r + 1) / (r * mean_d)
    step = r * batch_size / ((r + 1) * t_sat)  # saturated mean step time
    theta = float(req.theta())
    kv_mu = None if kv_capacity is None else (kv_capacity / (step * theta * mean_d)).tolist()

    def run(rate_rows):
        # one call per ratio (each its own rate grid, the same shape: one compilation)
        return [
            serve(
                key,
                workload,
                latency,
                batch_size,
                [ratio],
                rates,
                num_steps,
                num_replicas,
                arrivals=arrivals,
                kv_capacity=kv_capacity,
                slo_tpot=slo_tpot,
                slo_ttft=slo_ttft,
                **serve_kwargs,
            )
            for ratio, rates in zip(ratio_list, rate_rows, strict=True)
        ]

    fractions = 1.05 * (np.arange(grid_points) + 1) / grid_points
    grids = [x * fractions for x in x_sat]
    coarse_results = results = run(grids)
    reasons = [_largest(res, 0, slo_tpot, slo_ttft, b)[1] for res, b in zip(results, x_sat, strict=True)]
    for _ in range(refinements):
        new_grids = []
        for res, b in zip(results, x_sat, strict=True):
            k, why = _largest(res, 0, slo_tpot, slo_ttft, b)
            rates = res.arrival_rates
            if why == "none":
                new_grids.append(rates)
                continue
            lo = 0.0 if k < 0 else float(rates[k])
            hi = float(rates[k + 1])
            new_grids.append(lo + (hi - lo) * (np.arange(grid_points) + 1) / (grid_points + 1))
        finer = run(new_grids)
        # the finer grid where it found a rate above the coarse one, else the coarse one
        results = [
            f if _largest(f, 0, slo_tpot, slo_ttft, b)[0] >= 0 else c
            for f, c, b in zip(finer, results, x_sat, strict=True)
        ]
    best = []
    for res, coarse, b in zip(results, reasons, x_sat, strict=True):
        k, why = _largest(res, 0, slo_tpot, slo_ttft, b)
        best.append((res, k, coarse if why == "none" else why))  # a finer grid below the coarse failure
    kv_sim = None
    if kv_capacity is not None:
        # the largest stable rate of the coarse grid, whatever the targets: the targets only
        # enter the goodput, not the queue (same key, same grid), so no second simulation
        kv_sim = []
        for res, b in zip(coarse_results, x_sat, strict=True):
            k, _ = _largest(res, 0, None, None, b)
            kv_sim.append(0.0 if k < 0 else float(res.arrival_rates[k]))

    def at(res, k, name):
        return float(np.asarray(getattr(res, name))[0, k]) if k >= 0 else math.nan

    cap = [0.0 if k < 0 else float(res.arrival_rates[k]) for res, k, _ in best]
    return CapacityResult(
        ratios=ratio_list,
        capacity_rate=cap,
        capacity_rate_total=[c * q for c, q in zip(cap, ratio_list, strict=True)],
        saturated_rate=x_sat.tolist(),
        saturated_throughput_per_instance=t_sat.tolist(),
        saturated_stderr=t_se.tolist(),
        kv_stability_rate=kv_mu,
        kv_simulated_rate=kv_sim,
        throughput_at_capacity=[at(res, k, "throughput_per_instance") for res, k, _ in best],
        goodput_at_capacity=[at(res, k, "goodput_per_instance") for res, k, _ in best],
        tpot_p99_at_capacity=[at(res, k, "tpot_p99") for res, k, _ in best],
        ttft_p99_at_capacity=[at(res, k, "ttft_p99") for res, k, _ in best],
        limited_by=[why for _, _, why in best],
        settings=dict(
            slo_tpot=slo_tpot,
            slo_ttft=slo_ttft,
            kv_capacity=kv_capacity,
            batch_size=batch_size,
            num_steps=num_steps,
            num_replicas=num_replicas,
            grid_points=grid_points,
            refinements=refinements,
            arrivals=arrivals.describe(),
        ),
    )


@dataclasses.dataclass(frozen=True)
class Plan:
    """The answer to "how many bundles, at which ratio" for a total arrival rate.

    Attributes:
        total_rate: the total arrival rate planned for (requests per time unit).
        ratios: the ratios considered.
        instances: instances each ratio needs (``None`` where its capacity is 0).
        cost: the cost of each ratio's plan.
        best_ratio: the cheapest ratio (``None``: none sustains the rate).
        best_bundles: its bundles.
        best_instances: its instances.
        best_cost: its cost.
        objective: ``"instances"`` or ``"cost"``.
    """

    total_rate: float
    ratios: list
    bundles: list
    """Bundles each ratio needs (``None`` where its capacity is 0)."""
    instances: list
    cost: list
    best_ratio: int | None
    best_bundles: int | None
    best_instances: int | None
    best_cost: float | None
    saturated_optimum_ratio: int
    """The ratio of the highest saturated throughput per instance (the closed-loop answer)."""
    objective: str

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def plan(cap: CapacityResult, total_rate: float, *, price_attention: float = 1.0, price_ffn: float = 1.0) -> Plan:
    """Bundles and ratio for ``total_rate`` requests per time unit in all, from a
    [`capacity`][afdjax.capacity] answer: ``ceil(total_rate / (r X*))`` bundles of ``r + 1`` instances;
    the best minimises the cost ``bundles (r price_attention + price_ffn)`` (with the default
    prices of 1: the instances), ties to the smaller ratio.

    Arguments:
        cap: a [`CapacityResult`][afdjax.CapacityResult].
        total_rate: requests per time unit in all, ``> 0``.
        price_attention: the price of one Attention instance (default 1).
        price_ffn: the price of one FFN instance (default 1).

    Returns:
        a [`Plan`][afdjax.Plan].
    """
    total_rate = check_number("total_rate", total_rate, minimum=0.0)
    price_attention = check_number("price_attention", price_attention, minimum=0.0, strict=False)
    price_ffn = check_number("price_ffn", price_ffn, minimum=0.0, strict=False)
    bundles, instances, cost = [], [], []
    for r, x in zip(cap.ratios, cap.capacity_rate_total, strict=True):
        if x > 0:
            n = math.ceil(total_rate / x - 1e-12)
            bundles.append(n)
            instances.append(n * (r + 1))
            cost.append(n * (r * price_attention + price_ffn))
        else:
            bundles.append(None)
            instances.append(None)
            cost.append(None)
    finite = [(c, r, i) for i, (c, r) in enumerate(zip(cost, cap.ratios, strict=True)) if c is not None]
    sat_best = cap.ratios[int(np.argmax(cap.saturated_throughput_per_instance))]
    objective = "instances" if price_attention == price_ffn == 1.0 else "cost"
    if not finite:
        return Plan(total_rate, cap.ratios, bundles, instances, cost, None, None, None, None, sat_best, objective)
    _, _, i = min(finite)
    return Plan(
        total_rate,
        cap.ratios,
        bundles,
        instances,
        cost,
        cap.ratios[i],
        bundles[i],
        instances[i],
        cost[i],
        sat_best,
        objective,
    )
