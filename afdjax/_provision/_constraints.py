"""Provisioning under real constraints: KV capacity, a TPOT target and a cost objective.

The paper's model answers "which r maximises tokens per instance?" for a fixed batch
size. An operator has more to respect, which the paper (arXiv 2601.21351) leaves out:

* **KV capacity.** An Attention instance holds ``T_j`` KV tokens, ``T_j *
  kv_bytes_per_token`` bytes over all layers. The batch size ``B`` is only usable if the
  probability that an instance's KV load exceeds its capacity stays below a tolerance.
  The probability is reported two ways: from simulation (the fraction of measured
  instance-steps above the capacity, [`kv_exceedance_probability`][afdjax.SimulationResult.kv_exceedance_probability])
  and from the Gaussian approximation ``T_j ~ Normal(B theta, B sigma^2)`` of the
  stationary state (``theta``, ``sigma^2``: [`theta`][afdjax.Workload.theta],
  [`slot_variance`][afdjax.Workload.slot_variance]).
* **Time per output token (TPOT).** Each simulated step is one pass through one layer
  at that step's loads (the latency coefficients are per layer), so a token takes
  ``num_layers`` steps: ``TPOT = num_layers * cycle time``. The mean uses the mean cycle
  time, the p99 the 99th percentile of the per-step cycle time (a token's layers share
  its step's loads). With ``m`` micro-batches the cycle time is the pipeline period, in
  which every micro-batch advances one layer.
* **Cost.** Attention and FFN instances need not cost the same. Tokens per dollar
  ``= bundle tokens per hour / (r * price_A + price_F)``, tokens per joule ``= bundle
  tokens per second / (r * power_A + power_F)``, instead of tokens per instance. These
  count *output tokens*: the bundle emits ``r B`` of them every ``num_layers`` steps,
  ``bundle_tokens_per_s = r B / (num_layers * E[tau] * time_unit)`` (with no
  ``num_layers`` a step counts as a token, as in the paper's throughput per instance).

[`provision_constrained`][afdjax.provision_constrained] evaluates every ``(B, r)`` on a grid (one simulation per
``B``, all ratios in one pass), marks each cell feasible or not with the constraint it
violates, and picks the feasible cell with the best objective. A constraint *binds* when
relaxing it alone would admit a better cell (reported with the gain); when no single
relaxation helps but the unconstrained best is excluded, the constraints bind jointly;
when the best cell overall is feasible, nothing binds but the objective's own peak.

This module is host-side assembly: every number comes from [`simulate`][afdjax.simulate] and
the workload's closed-form moments.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from .._engine import SimulationResult, simulate
from .._json import jsonable
from .._latency import LatencyModel
from .._step import as_step_model
from .._validate import check_choice, check_int, check_optional_number, invalid
from .._workload import Workload
from ._closed_cost import closed_form_cost
from ._compare import check_ratio_list
from ._text import _CONSTRAINT_NAMES, OBJECTIVE_UNITS, _describe_violation

OBJECTIVES = ("per_instance", "per_dollar", "per_joule")
"""What [`provision_constrained`][afdjax.provision_constrained] can maximise: output tokens per time
unit per instance (the paper's objective), per dollar (with prices) or per joule (with powers)."""
TPOT_STATISTICS = ("p99", "mean")


def deployment_kv_capacity_bytes(deployment) -> float:
    """The automatic KV capacity of one Attention instance (``--kv-capacity-gb auto``):
    ``attention_devices x HBM per device - resident Attention weights``, in bytes, from
    a [`Deployment`][afdjax.Deployment] (e.g. ``afdjax.load_deployment("h100:deepseek-v3")``).

    Raises ``ValueError`` when the deployment does not give the HBM capacity and the
    resident weights (a spec without ``ACCELERATOR:MODEL``), or when the weights leave
    no room (capacity <= 0).

    Arguments:
        deployment: a [`Deployment`][afdjax.Deployment] from an ``ACCELERATOR:MODEL`` spec.

    Returns:
        the KV-cache bytes one Attention instance can hold (float).

    Examples:
        >>> d = afdjax.load_deployment("h100:deepseek-v3")
        >>> round(afdjax.deployment_kv_capacity_bytes(d) / 1e9, 2)  # GB
        66.73
    """
    capacity = deployment.kv_capacity_bytes()
    if capacity is None:
        raise ValueError(
            "the hardware spec does not give HBM capacity and resident weights; use an "
            "ACCELERATOR:MODEL spec (e.g. h100:deepseek-v3) or a number"
        )
    if capacity <= 0:
        raise ValueError(
            f"the weights ({deployment.attention_weight_bytes / 1e9:.4g} GB) do not fit the Attention "
            "instance's HBM; give more attention_devices or a number"
        )
    return float(capacity)


def deployment_instance_power_w(deployment) -> tuple[float, float] | None:
    """Watts of one Attention and one FFN instance from a [`Deployment`][afdjax.Deployment]:
    ``devices per instance x board power per device`` (``attention_devices`` and
    ``ffn_devices`` default to 1); ``None`` when the accelerator's board power is unknown.

    Arguments:
        deployment: a [`Deployment`][afdjax.Deployment] (see [`load_deployment`][afdjax.load_deployment]).

    Returns:
        ``(attention_w, ffn_w)`` in watts, or ``None``.

    Examples:
        >>> afdjax.deployment_instance_power_w(afdjax.load_deployment("h100:deepseek-v3"))
        (700.0, 11200.0)
    """
    if deployment.power_watts is None:
        return None
    ffn_watts = deployment.power_watts if deployment.ffn_power_watts is None else deployment.ffn_power_watts
    return (
        deployment.power_watts * (deployment.attention_devices or 1),
        ffn_watts * (deployment.ffn_devices or 1),
    )


@dataclasses.dataclass(frozen=True)
class Constraints:
    """Deployment limits for [`provision_constrained`][afdjax.provision_constrained]. ``None`` switches a limit off.

    Attributes:
        kv_capacity_bytes: KV-cache bytes available on one Attention instance (HBM
            left after weights and activations).
        kv_bytes_per_token: KV bytes of one token over all layers (from the model:
            [`Deployment`][afdjax.Deployment]'s ``kv_bytes_per_token``).
        kv_overflow_tolerance: largest allowed probability that an instance's KV load
            exceeds its capacity at a step (default ``1e-3``).
        tpot_target_ms: time-per-output-token target in milliseconds.
        tpot_statistic: ``"p99"`` (default) or ``"mean"``: which TPOT must meet the target.
        num_layers: layers per token (TPOT = layers x per-layer cycle time).
        time_unit_us: the latency coefficients' time unit in microseconds (default 1:
            coefficients in microseconds per layer, as ``afdjax hardware`` writes them and as
            ``paper-910c`` plausibly is).

    """

    kv_capacity_bytes: float | None = None
    kv_bytes_per_token: float | None = None
    kv_overflow_tolerance: float = 1e-3
    tpot_target_ms: float | None = None
    tpot_statistic: str = "p99"
    num_layers: int | None = None
    time_unit_us: float = 1.0

    def __post_init__(self):
        check_optional_number("kv_capacity_bytes", self.kv_capacity_bytes)
        check_optional_number("kv_bytes_per_token", self.kv_bytes_per_token)
        check_optional_number("tpot_target_ms", self.tpot_target_ms)
        check_optional_number("time_unit_us", self.time_unit_us)
        tol = self.kv_overflow_tolerance
        if (
            isinstance(tol, (bool, np.bool_))
            or not isinstance(tol, (int, float, np.integer, np.floating))
            or not (0.0 <= float(tol) < 1.0)
        ):
            raise invalid("kv_overflow_tolerance", tol, "a probability in [0, 1)")
        check_choice("tpot_statistic", self.tpot_statistic, TPOT_STATISTICS)
        if self.num_layers is not None:
            if not isinstance(self.num_layers, (int, np.integer)):  # 61.0 is not a layer count
                raise invalid("num_layers", self.num_layers, "an integer >= 1")
            check_int("num_layers", self.num_layers, 1)
        if self.kv_capacity_bytes is not None and self.kv_bytes_per_token is None:
            raise ValueError(
                "kv_bytes_per_token=None is invalid with a KV capacity: the KV bytes per token (all layers) are "
                "needed to turn bytes into tokens (use a hardware spec with a [model] section, e.g. h100:deepseek-v3, "
                "or pass kv_bytes_per_token / --kv-bytes-per-token)"
            )
        if self.tpot_target_ms is not None and self.num_layers is None:
            raise ValueError(
                "num_layers=None is invalid with a TPOT target: TPOT = layers x per-layer cycle time (use a hardware "
                "spec with a [model] section, e.g. h100:deepseek-v3, or pass num_layers / --num-layers)"
            )

    @property
    def kv_capacity_tokens(self) -> float | None:
        """KV tokens one Attention instance can hold (``None`` without a capacity)."""
        if self.kv_capacity_bytes is None:
            return None
        return self.kv_capacity_bytes / self.kv_bytes_per_token

    def active(self) -> list[str]:
        """Names of the limits switched on: ``"kv"``, ``"tpot"``."""
        limits = (("kv", self.kv_capacity_bytes is not None), ("tpot", self.tpot_target_ms is not None))
        return [name for name, on in limits if on]

    @classmethod
    def for_deployment(
        cls,
        deployment,
        *,
        kv_capacity_bytes: float | str | None = None,
        kv_bytes_per_token: float | None = None,
        kv_overflow_tolerance: float = 1e-3,
        tpot_target_ms: float | None = None,
        tpot_statistic: str = "p99",
        num_layers: int | None = None,
        time_unit_us: float = 1.0,
    ) -> Constraints:
        """Constraints whose unspecified model quantities come from a
        [`Deployment`][afdjax.Deployment] (what ``afdjax provision --hardware ACCEL:MODEL`` does).

        - ``kv_capacity_bytes``: bytes, ``"auto"``
          ([`deployment_kv_capacity_bytes`][afdjax.deployment_kv_capacity_bytes]:
          HBM minus resident weights) or ``None`` (no KV limit).
        - ``kv_bytes_per_token``, ``num_layers``: default to the deployment's model.
        - the other arguments as for [`Constraints`][afdjax.Constraints].
        """
        if isinstance(kv_capacity_bytes, str):
            if kv_capacity_bytes != "auto":
                raise invalid("kv_capacity_bytes", kv_capacity_bytes, "a number of bytes, 'auto' or None")
            kv_capacity_bytes = deployment_kv_capacity_bytes(deployment)
        return cls(
            kv_capacity_bytes=kv_capacity_bytes,
            kv_bytes_per_token=deployment.kv_bytes_per_token if kv_bytes_per_token is None else kv_bytes_per_token,
            kv_overflow_tolerance=kv_overflow_tolerance,
            tpot_target_ms=tpot_target_ms,
            tpot_statistic=tpot_statistic,
            num_layers=deployment.num_layers if num_layers is None else num_layers,
            time_unit_us=time_unit_us,
        )


@dataclasses.dataclass(frozen=True)
class Costs:
    """Prices and powers of one Attention and one FFN instance (for the cost objectives).

    Attributes:
        attention_price_per_hour: $ per instance-hour.
        ffn_price_per_hour: see ``attention_price_per_hour``.
        attention_power_w: watts per instance (board power under load).
        ffn_power_w: see ``attention_power_w``.

    """

    attention_price_per_hour: float | None = None
    ffn_price_per_hour: float | None = None
    attention_power_w: float | None = None
    ffn_power_w: float | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check_optional_number(f.name, getattr(self, f.name), minimum=0.0, strict=False)
        for a, b in (("attention_price_per_hour", "ffn_price_per_hour"), ("attention_power_w", "ffn_power_w")):
            va, vb = getattr(self, a), getattr(self, b)
            if (va is None) != (vb is None):
                raise ValueError(f"{a}={va!r}, {b}={vb!r} is invalid: give both or neither")
            if va is not None and va + vb <= 0:
                raise ValueError(f"{a}={va!r}, {b}={vb!r} is invalid: they cannot both be 0")

    @classmethod
    def for_deployment(
        cls,
        deployment,
        *,
        attention_price_per_hour: float | None = None,
        ffn_price_per_hour: float | None = None,
        attention_power_w: float | None = None,
        ffn_power_w: float | None = None,
    ) -> Costs:
        """Costs whose powers, when neither is given, are the per-instance powers of a
        [`Deployment`][afdjax.Deployment] ([`deployment_instance_power_w`][afdjax.deployment_instance_power_w]:
        devices x board
        power), as ``afdjax provision`` does; prices are never guessed."""
        if attention_power_w is None and ffn_power_w is None:
            powers = deployment_instance_power_w(deployment)
            if powers is not None:
                attention_power_w, ffn_power_w = powers
        return cls(
            attention_price_per_hour=attention_price_per_hour,
            ffn_price_per_hour=ffn_price_per_hour,
            attention_power_w=attention_power_w,
            ffn_power_w=ffn_power_w,
        )


def kv_overflow_probability_gaussian(workload: Workload, batch_size: int, capacity_tokens: float) -> float:
    """``P(T_j > capacity)`` under the Gaussian approximation ``T_j ~ N(B theta, B sigma^2)``
    of one Attention instance's stationary KV load (``capacity_tokens`` in tokens).

    Arguments:
        workload: the [`Workload`][afdjax.Workload].
        batch_size: slots ``B`` per Attention instance.
        capacity_tokens: the KV capacity of one Attention instance (tokens).

    Returns:
        the probability (float) that one instance's stationary KV load exceeds the capacity.

    Examples:
        >>> workload = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
        >>> afdjax.kv_overflow_probability_gaussian(workload, 256, 155_000.0) > 0.01  # mean load 153,600
        True
    """
    mean = batch_size * float(workload.theta())
    sd = math.sqrt(batch_size * max(float(workload.slot_variance()), 0.0))
    if sd == 0.0:
        return 1.0 if mean > capacity_tokens else 0.0
    return 0.5 * math.erfc((capacity_tokens - mean) / (sd * math.sqrt(2.0)))


def bundle_cost_per_hour(ratio, costs: Costs) -> float | None:
    """$ per hour of an rA-1F bundle (``None`` without prices)."""
    if costs.attention_price_per_hour is None:
        return None
    return ratio * costs.attention_price_per_hour + costs.ffn_price_per_hour


def bundle_power_w(ratio, costs: Costs) -> float | None:
    """Watts of an rA-1F bundle (``None`` without powers)."""
    if costs.attention_power_w is None:
        return None
    return ratio * costs.attention_power_w + costs.ffn_power_w


def _quantile_index(result: SimulationResult, level: float) -> int:
    levels = np.asarray(result.quantile_levels, dtype=float)
    idx = np.nonzero(np.isclose(levels, level))[0]
    if len(idx) == 0:
        raise ValueError(f"quantile_levels={levels.tolist()!r} must include {level} for a p99 TPOT constraint")
    return int(idx[0])


def evaluate_cells(
    result: SimulationResult,
    workload: Workload,
    constraints: Constraints,
    costs: Costs,
    objective: str,
) -> list[dict]:
    """One row per simulated ratio of one batch size: objective, TPOT, KV overflow and
    feasibility (see the module docstring for the definitions and units)."""
    B = int(result.batch_size)
    r = np.asarray(result.ratios, dtype=int)
    thr = np.asarray(result.throughput_per_instance, dtype=float)
    se = np.asarray(result.stderr, dtype=float)
    mean_tau = np.asarray(result.mean_cycle_time, dtype=float)
    unit_s = constraints.time_unit_us * 1e-6  # seconds per time unit
    layers = constraints.num_layers
    # A simulated step is one layer-pass of every slot; an output token takes num_layers
    # of them (without num_layers a step counts as a token, the paper's convention).
    bundle_tokens_per_s = (r + 1) * thr / (unit_s * (layers or 1))
    tpot_mean = tpot_p99 = None
    if layers is not None:
        tpot_mean = layers * mean_tau * constraints.time_unit_us / 1000.0
        p99 = np.asarray(result.cycle_time_quantiles, dtype=float)[:, _quantile_index(result, 0.99)]
        tpot_p99 = layers * p99 * constraints.time_unit_us / 1000.0
    cap_tokens = constraints.kv_capacity_tokens
    kv_sim = kv_gauss = None
    if cap_tokens is not None:
        kv_sim = float(result.kv_exceedance_probability(cap_tokens))
        kv_gauss = kv_overflow_probability_gaussian(workload, B, cap_tokens)
    rows = []
    for i, ratio in enumerate(r.tolist()):
        cost = bundle_cost_per_hour(ratio, costs)
        power = bundle_power_w(ratio, costs)
        per_dollar = bundle_tokens_per_s[i] * 3600.0 / cost if cost else None
        per_joule = bundle_tokens_per_s[i] / power if power else None
        value = {"per_instance": thr[i], "per_dollar": per_dollar, "per_joule": per_joule}[objective]
        scale = value / thr[i] if (value is not None and thr[i] > 0) else float("nan")
        violated = []
        if kv_sim is not None and kv_sim > constraints.kv_overflow_tolerance:
            violated.append("kv")
        tpot = None
        if constraints.tpot_target_ms is not None:
            tpot = tpot_p99[i] if constraints.tpot_statistic == "p99" else tpot_mean[i]
            if tpot > constraints.tpot_target_ms:
                violated.append("tpot")
        rows.append(
            {
                "batch_size": B,
                "ratio": ratio,
                "throughput_per_instance": float(thr[i]),
                "stderr": float(se[i]),
                "bundle_tokens_per_s": float(bundle_tokens_per_s[i]),
                "tokens_per_dollar": None if per_dollar is None else float(per_dollar),
                "tokens_per_joule": None if per_joule is None else float(per_joule),
                "objective": None if value is None else float(value),
                "objective_stderr": float(se[i] * scale),
                "tpot_mean_ms": None if tpot_mean is None else float(tpot_mean[i]),
                "tpot_p99_ms": None if tpot_p99 is None else float(tpot_p99[i]),
                "kv_overflow_simulated": kv_sim,
                "kv_overflow_gaussian": kv_gauss,
                "feasible": not violated,
                "violated": violated,
            }
        )
    return rows


def _binding(cells: list[dict], recommendation: dict, constraints: Constraints) -> dict:
    """Which constraints hold the objective back, and by how much.

    A constraint *binds* when relaxing it alone admits a cell better than the
    recommendation (the cell that would be chosen instead is reported, with the gain).
    When no single relaxation helps but the unconstrained best is ruled out, the
    constraints bind only jointly."""
    rec_value = recommendation["objective"]
    better = [cell for cell in cells if cell["objective"] > rec_value]
    if not better:
        return {
            "constraint": [],
            "text": "none: the recommendation is the objective's own peak on the grid"
            + ("" if constraints.active() else " (no constraints given)"),
            "relaxations": {},
        }
    relaxations = {}
    for name in constraints.active():
        alone = [cell for cell in better if cell["violated"] == [name]]
        if alone:
            top = max(alone, key=lambda cell: cell["objective"])
            relaxations[name] = {
                "batch_size": top["batch_size"],
                "ratio": top["ratio"],
                "objective": top["objective"],
                "gain": top["objective"] / rec_value - 1.0,
                "violation": _describe_violation(top, constraints),
            }
    unconstrained = max(better, key=lambda cell: cell["objective"])
    unc = {
        "batch_size": unconstrained["batch_size"],
        "ratio": unconstrained["ratio"],
        "objective": unconstrained["objective"],
        "gain": unconstrained["objective"] / rec_value - 1.0,
        "violated": unconstrained["violated"],
    }
    if relaxations:
        order = sorted(relaxations, key=lambda k: -relaxations[k]["gain"])
        parts = [
            f"{_CONSTRAINT_NAMES[k]} (relaxing it alone would allow B = {relaxations[k]['batch_size']}, "
            f"r = {relaxations[k]['ratio']}, {100 * relaxations[k]['gain']:+.1f}%, where {relaxations[k]['violation']})"
            for k in order
        ]
        text = "; ".join(parts)
        if unc["gain"] > max(v["gain"] for v in relaxations.values()) + 1e-12:
            text += (
                f"; relaxing {' and '.join(_CONSTRAINT_NAMES[v] for v in unc['violated'])} together would allow "
                f"B = {unc['batch_size']}, r = {unc['ratio']} ({100 * unc['gain']:+.1f}%)"
            )
        return {"constraint": order, "text": text, "relaxations": relaxations, "unconstrained_best": unc}
    return {
        "constraint": list(unc["violated"]),
        "text": (
            f"{' and '.join(_CONSTRAINT_NAMES[v] for v in unc['violated'])} jointly: no single relaxation helps, "
            f"both together would allow B = {unc['batch_size']}, r = {unc['ratio']} ({100 * unc['gain']:+.1f}%)"
        ),
        "relaxations": {},
        "unconstrained_best": unc,
    }


@dataclasses.dataclass
class ConstrainedProvisionReport:
    """Everything ``afdjax provision`` prints when constraints or costs are given.

    Attributes:
        settings: the inputs (workload, hardware, batch sizes, ratios, steps, replicas, seed, ...).
        objective: one of [`OBJECTIVES`][afdjax.OBJECTIVES].
        constraints: the [`Constraints`][afdjax.Constraints] applied.
        costs: the [`Costs`][afdjax.Costs] (prices, powers) of the objective.
        cells: one dict per ``(B, r)``: objective, TPOT mean and p99 (ms), KV overflow
            probability simulated and Gaussian, and feasibility.
        recommendation: the best feasible cell, or ``None`` when no cell is feasible.
        binding: the constraint that binds and the cell and gain relaxing it would give
            (``None``: nothing binds).
        per_batch: one summary row per batch size (best ratio, objective, TPOT, note).
        theta: stationary mean KV tokens per slot (tokens).
        slot_std: their standard deviation (tokens).
    """

    settings: dict
    objective: str
    constraints: Constraints
    costs: Costs
    cells: list[dict]
    recommendation: dict | None
    binding: dict | None
    per_batch: list[dict]
    theta: float
    slot_std: float

    def to_dict(self) -> dict:
        return jsonable(
            {
                "objective": self.objective,
                "objective_unit": OBJECTIVE_UNITS[self.objective],
                "recommendation": self.recommendation,
                "binding": self.binding,
                "per_batch_size": self.per_batch,
                "cells": self.cells,
                "constraints": dataclasses.asdict(self.constraints),
                "kv_capacity_tokens": self.constraints.kv_capacity_tokens,
                "costs": dataclasses.asdict(self.costs),
                "theta": self.theta,
                "slot_std": self.slot_std,
                "settings": self.settings,
            }
        )

    # ------------------------------------------------------------------ typed views
    @property
    def recommended_batch_size(self) -> int | None:
        """``B`` of the recommended cell (``recommendation["batch_size"]``), ``None`` if nothing is feasible."""
        return None if self.recommendation is None else self.recommendation["batch_size"]

    @property
    def recommended_ratio(self) -> int | None:
        """``r`` of the recommended cell (``recommendation["ratio"]``), ``None`` if nothing is feasible."""
        return None if self.recommendation is None else self.recommendation["ratio"]

    @property
    def binding_constraints(self) -> list[str]:
        """Names of the binding constraints (``"kv"``, ``"tpot"``), most costly first
        (``binding["constraint"]``); empty when the recommendation is the objective's own peak."""
        return list((self.binding or {}).get("constraint", []))

    def cell(self, batch_size: int, ratio: int) -> dict:
        """The grid cell at ``(batch_size, ratio)`` (a row of ``cells``)."""
        for c in self.cells:
            if c["batch_size"] == batch_size and c["ratio"] == ratio:
                return c
        raise ValueError(f"(batch_size, ratio)={(batch_size, ratio)!r} is invalid: expected a cell of the grid")

    # ------------------------------------------------------------------ text and plot
    def format_text(self) -> str:
        """The report as text (what ``afdjax provision`` prints with constraints)."""
        from ._text import constrained_text

        return constrained_text(self)

    def plot(self, path, title: str | None = None):
        """PNG: the (B, r) grid coloured by the objective, infeasible cells marked by the
        constraint they violate, the recommendation starred; and TPOT against r per B."""
        from ._plots import constrained_plot

        return constrained_plot(self, path, title)


def _default_ratios(workload, latency, batch_size) -> list[int]:
    from ._report import default_ratio_range

    return default_ratio_range(workload, latency, batch_size)


def provision_constrained(
    key: jax.Array,
    workload: Workload,
    latency: LatencyModel,
    batch_sizes,
    ratios=None,
    num_steps: int = 2000,
    num_replicas: int = 8,
    *,
    constraints: Constraints = Constraints(),
    costs: Costs = Costs(),
    objective: str = "per_instance",
    micro_batches: int | None = None,
    step_model=None,
    settings: dict | None = None,
    progress: bool = False,
    **simulate_kwargs,
) -> ConstrainedProvisionReport:
    """Joint choice of batch size and A/F ratio ``(B, r)`` under KV-capacity and TPOT
    constraints, maximising throughput per instance, tokens per dollar or tokens per joule.

    Arguments:
        key: as for [`simulate`][afdjax.simulate] (the same key at
            every ``B``: common random numbers across the grid).
        workload: see ``key``.
        latency: see ``key``.
        batch_sizes: one ``B`` or a list of them (slots per Attention instance).
        ratios: ratios to consider at every ``B`` (default: ``1..max(32, 1.5 r*)`` of
            the largest ``B``).
        num_steps: Monte Carlo size per batch size.
        num_replicas: see ``num_steps``.
        constraints: a [`Constraints`][afdjax.Constraints].
        costs: a [`Costs`][afdjax.Costs] (prices or powers of the two instance kinds).
        objective: ``"per_instance"`` (the paper's), ``"per_dollar"`` or ``"per_joule"``.
        micro_batches: ``None`` (the paper's idealised overlap) or the number of
            pipelined micro-batches ``m`` (see [`simulate`][afdjax.simulate]), a spelling of
            ``step_model=Pipeline(m)``.
        step_model: a [`StepModel`][afdjax.StepModel].
        progress: a progress bar for each batch size's simulation.
        settings: extra entries for the report's ``settings``.
        **simulate_kwargs: further keyword arguments of [`simulate`][afdjax.simulate].

    Returns:
        a [`ConstrainedProvisionReport`][afdjax.ConstrainedProvisionReport] (``format_text``, ``to_dict``, ``plot``).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is invalid: expected one of {', '.join(OBJECTIVES)}")
    if objective == "per_dollar" and costs.attention_price_per_hour is None:
        raise ValueError(
            "objective='per_dollar' needs prices: Costs(attention_price_per_hour=.., ffn_price_per_hour=..)"
        )
    if objective == "per_joule" and costs.attention_power_w is None:
        raise ValueError("objective='per_joule' needs powers: Costs(attention_power_w=.., ffn_power_w=..)")
    bs = np.atleast_1d(np.asarray(batch_sizes))
    if bs.size == 0 or not np.all(bs == np.round(bs)) or np.any(bs < 1):
        raise ValueError(f"batch_sizes={batch_sizes!r} is invalid: expected positive integers")
    bs = sorted({int(b) for b in bs.tolist()})
    if ratios is None:
        ratios = _default_ratios(workload, latency, max(bs))
    check_ratio_list(ratios)
    levels = tuple(simulate_kwargs.pop("quantile_levels", (0.5, 0.9, 0.99)))
    if 0.99 not in levels:
        levels = levels + (0.99,)
    sim_kwargs = dict(simulate_kwargs)
    sim_kwargs["step_model"] = model = as_step_model(step_model, micro_batches)
    cells, per_batch = [], []
    theta = float(workload.theta())
    slot_std = math.sqrt(max(float(workload.slot_variance()), 0.0))
    for B in bs:
        result = simulate(
            key,
            workload,
            latency,
            B,
            ratios,
            num_steps,
            num_replicas,
            quantile_levels=levels,
            progress=progress,
            **sim_kwargs,
        )
        rows = evaluate_cells(result, workload, constraints, costs, objective)
        cells += rows
        feasible = [row for row in rows if row["feasible"]]
        best = max(feasible, key=lambda row: row["objective"]) if feasible else None
        if best is None:
            note = "infeasible at every r: " + _describe_violation(
                min(rows, key=lambda row: len(row["violated"])), constraints
            )
        elif best["ratio"] == rows[-1]["ratio"] and len(rows) > 1 and best is rows[-1]:
            note = "best at the largest ratio simulated: widen --ratios"
        else:
            worse = [row for row in rows if not row["feasible"] and row["objective"] > best["objective"]]
            note = (
                ("limited by " + _describe_violation(max(worse, key=lambda row: row["objective"]), constraints))
                if worse
                else "objective peak"
            )
        per_batch.append(
            dict(
                batch_size=B,
                kv_load_mean_tokens=B * theta,
                kv_overflow_simulated=rows[0]["kv_overflow_simulated"],
                kv_overflow_gaussian=rows[0]["kv_overflow_gaussian"],
                best=best,
                note=note,
            )
        )
        closed = closed_form_cost(workload, latency, B, costs, objective, max(np.atleast_1d(ratios)), model)
        if closed is not None:  # cost objectives: the closed-form optimum beside the simulated one
            per_batch[-1]["closed_form"] = closed
    feasible = [cell for cell in cells if cell["feasible"]]
    recommendation = max(feasible, key=lambda cell: cell["objective"]) if feasible else None
    if recommendation is None:
        counts = {name: sum(name in cell["violated"] for cell in cells) for name in _CONSTRAINT_NAMES}
        text = (
            "every cell violates a constraint ("
            + ", ".join(f"{_CONSTRAINT_NAMES[k]}: {v} cells" for k, v in counts.items() if v)
            + ")"
        )
        binding = dict(constraint=[k for k, v in counts.items() if v], text=text)
    else:
        binding = _binding(cells, recommendation, constraints)
    base = dict(workload=workload.describe(), hardware="custom", seed=None)
    return ConstrainedProvisionReport(
        settings=dict(
            base,
            **(settings or {}),
            steps=int(num_steps),
            replicas=int(num_replicas),
            micro_batches=model.micro_batches,
            latency_coefficients=latency.coefficients(),
            comm_scaling=latency.comm_scaling,
            ratios=[int(r) for r in np.atleast_1d(ratios)],
        ),
        objective=objective,
        constraints=constraints,
        costs=costs,
        cells=cells,
        recommendation=recommendation,
        binding=binding,
        per_batch=per_batch,
        theta=theta,
        slot_std=slot_std,
    )
