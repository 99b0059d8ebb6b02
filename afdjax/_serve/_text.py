"""Reports of open-loop runs: the JSON dictionary the command line prints, and text tables."""

from __future__ import annotations

import math

import numpy as np

from .._validate import format_number
from ._result import SATURATION_MARGIN

JSON_KEYS = (
    "throughput_per_instance",
    "stderr",
    "goodput_per_instance",
    "tpot_mean",
    "tpot_p99",
    "ttft_mean",
    "ttft_p99",
    "mean_queue_length",
    "mean_occupied_slots",
    "mean_kv_load",
    "mean_sojourn_time",
    "utilisation_attention",
    "utilisation_ffn",
    "utilisation_comm",
    "arrival_rate_total",
    "queue_growth",
    "full_fraction",
    "offered_load",
    "saturated",
)


def _clean(x):
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    x = float(x)
    return x if math.isfinite(x) else None


def serve_dict(result, settings: dict | None = None) -> dict:
    """A JSON-ready dict of a :class:`ServeResult`: ``ratios``, ``arrival_rates`` and per
    ratio (lists in the order of ``ratios``) each of :data:`JSON_KEYS`; with one arrival rate
    a value per ratio, with several a list per ratio over the rates. Non-finite numbers
    become ``null``."""
    single = np.asarray(result.arrival_rates).size == 1
    out = {"ratios": [int(r) for r in result.ratios], "arrival_rates": [float(x) for x in result.arrival_rates]}
    for key in JSON_KEYS:
        values = np.asarray(getattr(result, key))
        rows = [[_clean(v) for v in row] for row in values]
        out[key] = [row[0] for row in rows] if single else rows
    out["settings"] = {**result.settings, **(settings or {})}
    return out


def format_serve(result, time_unit: str = "time unit") -> str:
    """A table per arrival rate: throughput, goodput, TPOT, TTFT, queue, the offered load
    (``-`` where the bundle was never full) and saturation per ratio."""
    lines = []
    head = (
        f"{'r':>4} {'thr/inst':>10} {'+-':>8} {'good/inst':>10} {'TPOT':>9} {'TPOT p99':>9} "
        f"{'TTFT':>10} {'TTFT p99':>10} {'queue':>8} {'slots':>6} {'load':>5} {'sat':>4}"
    )
    for k, x in enumerate(np.asarray(result.arrival_rates)):
        lines.append(f"arrival rate {format_number(float(x), '.6g')} per Attention instance per {time_unit}")
        lines.append(head)
        for i, r in enumerate(result.ratios):

            def v(name, spec=".4g", i=i, k=k):
                return format_number(float(np.asarray(getattr(result, name))[i, k]), spec)

            sat = "yes" if bool(np.asarray(result.saturated)[i, k]) else "no"
            load = v("offered_load", ".3g") if math.isfinite(float(np.asarray(result.offered_load)[i, k])) else "-"
            lines.append(
                f"{int(r):>4} {v('throughput_per_instance'):>10} {v('stderr', '.2g'):>8} "
                f"{v('goodput_per_instance'):>10} {v('tpot_mean'):>9} {v('tpot_p99'):>9} {v('ttft_mean'):>10} "
                f"{v('ttft_p99'):>10} {v('mean_queue_length'):>8} {v('mean_occupied_slots', '.3g'):>6} "
                f"{load:>5} {sat:>4}"
            )
        lines.append("")
    if np.any(np.asarray(result.saturated)):
        lines.append(
            "sat = yes: the queue grows without bound at that rate (load: arrivals over the full bundle's "
            f"service rate, above {1 + SATURATION_MARGIN:g}); its throughput is the saturated one and its latencies "
            "only describe this finite run."
        )
    return "\n".join(lines).rstrip()


def format_capacity(cap, plan=None) -> str:
    """The capacity per ratio, the saturated bound, the KV-bound rates and the plan."""
    lines = [f"{'r':>4} {'capacity X':>11} {'r X':>10} {'limited by':>11} {'X_sat':>10} {'thr/inst':>9}"]
    kv = cap.kv_stability_rate is not None
    if kv:
        lines[0] += f" {'KV mu':>10} {'KV sim':>10}"
    for i, r in enumerate(cap.ratios):
        line = (
            f"{r:>4} {format_number(cap.capacity_rate[i], '.4g'):>11} "
            f"{format_number(cap.capacity_rate_total[i], '.4g'):>10} {cap.limited_by[i]:>11} "
            f"{format_number(cap.saturated_rate[i], '.4g'):>10} "
            f"{format_number(cap.throughput_at_capacity[i], '.4g'):>9}"
        )
        if kv:
            line += (
                f" {format_number(cap.kv_stability_rate[i], '.4g'):>10} "
                f"{format_number(cap.kv_simulated_rate[i], '.4g'):>10}"
            )
        lines.append(line)
    lines.append("Rates per Attention instance; X_sat is the saturated bound T_sat (r + 1) / (r E[D]).")
    if kv:
        lines.append("KV mu: Nie-Si-Zhou M / (b theta E[D]); KV sim: the engine's largest unsaturated grid rate.")
    if plan is not None and plan.best_ratio is not None:
        lines.append(
            f"Plan for a total rate {format_number(plan.total_rate, '.6g')}: r = {plan.best_ratio}, "
            f"{plan.best_bundles} bundles, {plan.best_instances} instances"
            + (f", cost {format_number(plan.best_cost, '.6g')}" if plan.objective == "cost" else "")
            + f" (the saturated throughput-per-instance optimum is r = {plan.saturated_optimum_ratio})."
        )
    elif plan is not None:
        lines.append("Plan: no ratio meets the targets at any rate tried.")
    return "\n".join(lines)
