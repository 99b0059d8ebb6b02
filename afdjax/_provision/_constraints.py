"""Provisioning under real constraints: KV capacity, a TPOT target and a cost objective.

The paper's model answers "which r maximises tokens per instance?" for a fixed batch
size. An operator has more to respect (section 5 of PAPER.md lists what the paper leaves
out):

* **KV capacity.** An Attention instance holds ``T_j`` KV tokens, ``T_j *
  kv_bytes_per_token`` bytes over all layers. The batch size ``B`` is only usable if the
  probability that an instance's KV load exceeds its capacity stays below a tolerance.
  The probability is reported two ways: from simulation (the fraction of measured
  instance-steps above the capacity, :meth:`SimulationResult.kv_exceedance_probability`)
  and from the Gaussian approximation ``T_j ~ Normal(B theta, B sigma^2)`` of the
  stationary state (``theta``, ``sigma^2``: :meth:`Workload.theta`,
  :meth:`Workload.slot_variance`).
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

:func:`provision_constrained` evaluates every ``(B, r)`` on a grid (one simulation per
``B``, all ratios in one pass), marks each cell feasible or not with the constraint it
violates, and picks the feasible cell with the best objective. A constraint *binds* when
relaxing it alone would admit a better cell (reported with the gain); when no single
relaxation helps but the unconstrained best is excluded, the constraints bind jointly;
when the best cell overall is feasible, nothing binds but the objective's own peak.

This module is host-side assembly: every number comes from :func:`afdjax.simulate` and
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
from .._workload._core import Workload

OBJECTIVES = ("per_instance", "per_dollar", "per_joule")
TPOT_STATISTICS = ("p99", "mean")
OBJECTIVE_UNITS = {
    "per_instance": "tokens / time unit / instance",
    "per_dollar": "tokens / $",
    "per_joule": "tokens / J",
}


def _positive_or_none(name: str, value, allow_zero: bool = False):
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is invalid: expected a number") from None
    ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: expected a finite number {'>= 0' if allow_zero else '> 0'}")
    return v


@dataclasses.dataclass(frozen=True)
class Constraints:
    """Deployment limits for :func:`provision_constrained`. ``None`` switches a limit off.

    - ``kv_capacity_bytes``: KV-cache bytes available on one Attention instance (HBM
      left after weights and activations).
    - ``kv_bytes_per_token``: KV bytes of one token over all layers (from the model:
      :class:`afdjax.Deployment`'s ``kv_bytes_per_token``).
    - ``kv_overflow_tolerance``: largest allowed probability that an instance's KV load
      exceeds its capacity at a step (default ``1e-3``).
    - ``tpot_target_ms``: time-per-output-token target in milliseconds.
    - ``tpot_statistic``: ``"p99"`` (default) or ``"mean"``: which TPOT must meet the target.
    - ``num_layers``: layers per token (TPOT = layers x per-layer cycle time).
    - ``time_unit_us``: the latency coefficients' time unit in microseconds (default 1:
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
        _positive_or_none("kv_capacity_bytes", self.kv_capacity_bytes)
        _positive_or_none("kv_bytes_per_token", self.kv_bytes_per_token)
        _positive_or_none("tpot_target_ms", self.tpot_target_ms)
        _positive_or_none("time_unit_us", self.time_unit_us)
        tol = self.kv_overflow_tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0.0 <= float(tol) < 1.0):
            raise ValueError(f"kv_overflow_tolerance={tol!r} is invalid: expected a probability in [0, 1)")
        if self.tpot_statistic not in TPOT_STATISTICS:
            raise ValueError(f"tpot_statistic={self.tpot_statistic!r} is invalid: expected one of {', '.join(TPOT_STATISTICS)}")
        if self.num_layers is not None and (
            isinstance(self.num_layers, bool) or not isinstance(self.num_layers, (int, np.integer)) or self.num_layers < 1
        ):
            raise ValueError(f"num_layers={self.num_layers!r} is invalid: expected an integer >= 1")
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
        return [name for name, on in (("kv", self.kv_capacity_bytes is not None), ("tpot", self.tpot_target_ms is not None)) if on]


@dataclasses.dataclass(frozen=True)
class Costs:
    """Prices and powers of one Attention and one FFN instance (for the cost objectives).

    - ``attention_price_per_hour``, ``ffn_price_per_hour``: $ per instance-hour.
    - ``attention_power_w``, ``ffn_power_w``: watts per instance (board power under load).
    """

    attention_price_per_hour: float | None = None
    ffn_price_per_hour: float | None = None
    attention_power_w: float | None = None
    ffn_power_w: float | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            _positive_or_none(f.name, getattr(self, f.name), allow_zero=True)
        for a, b in (("attention_price_per_hour", "ffn_price_per_hour"), ("attention_power_w", "ffn_power_w")):
            va, vb = getattr(self, a), getattr(self, b)
            if (va is None) != (vb is None):
                raise ValueError(f"{a}={va!r}, {b}={vb!r} is invalid: give both or neither")
            if va is not None and va + vb <= 0:
                raise ValueError(f"{a}={va!r}, {b}={vb!r} is invalid: they cannot both be 0")


def kv_overflow_probability_gaussian(workload: Workload, batch_size: int, capacity_tokens: float) -> float:
    """``P(T_j > capacity)`` under the Gaussian approximation ``T_j ~ N(B theta, B sigma^2)``
    of one Attention instance's stationary KV load (``capacity_tokens`` in tokens)."""
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
            dict(
                batch_size=B,
                ratio=ratio,
                throughput_per_instance=float(thr[i]),
                stderr=float(se[i]),
                bundle_tokens_per_s=float(bundle_tokens_per_s[i]),
                tokens_per_dollar=None if per_dollar is None else float(per_dollar),
                tokens_per_joule=None if per_joule is None else float(per_joule),
                objective=None if value is None else float(value),
                objective_stderr=float(se[i] * scale),
                tpot_mean_ms=None if tpot_mean is None else float(tpot_mean[i]),
                tpot_p99_ms=None if tpot_p99 is None else float(tpot_p99[i]),
                kv_overflow_simulated=kv_sim,
                kv_overflow_gaussian=kv_gauss,
                feasible=not violated,
                violated=violated,
            )
        )
    return rows


_CONSTRAINT_NAMES = {"kv": "KV capacity", "tpot": "TPOT target"}


def _binding(cells: list[dict], recommendation: dict, constraints: Constraints) -> dict:
    """Which constraints hold the objective back, and by how much.

    A constraint *binds* when relaxing it alone admits a cell better than the
    recommendation (the cell that would be chosen instead is reported, with the gain).
    When no single relaxation helps but the unconstrained best is ruled out, the
    constraints bind only jointly."""
    rec_value = recommendation["objective"]
    better = [cell for cell in cells if cell["objective"] > rec_value]
    if not better:
        return dict(constraint=[], text="none: the recommendation is the objective's own peak on the grid"
                    + ("" if constraints.active() else " (no constraints given)"), relaxations={})
    relaxations = {}
    for name in constraints.active():
        alone = [cell for cell in better if cell["violated"] == [name]]
        if alone:
            top = max(alone, key=lambda cell: cell["objective"])
            relaxations[name] = dict(batch_size=top["batch_size"], ratio=top["ratio"], objective=top["objective"],
                                     gain=top["objective"] / rec_value - 1.0, violation=_describe_violation(top, constraints))
    unconstrained = max(better, key=lambda cell: cell["objective"])
    unc = dict(batch_size=unconstrained["batch_size"], ratio=unconstrained["ratio"], objective=unconstrained["objective"],
               gain=unconstrained["objective"] / rec_value - 1.0, violated=unconstrained["violated"])
    if relaxations:
        order = sorted(relaxations, key=lambda k: -relaxations[k]["gain"])
        parts = [
            f"{_CONSTRAINT_NAMES[k]} (relaxing it alone would allow B = {relaxations[k]['batch_size']}, "
            f"r = {relaxations[k]['ratio']}, {100 * relaxations[k]['gain']:+.1f}%, where {relaxations[k]['violation']})"
            for k in order
        ]
        text = "; ".join(parts)
        if unc["gain"] > max(v["gain"] for v in relaxations.values()) + 1e-12:
            text += (f"; relaxing {' and '.join(_CONSTRAINT_NAMES[v] for v in unc['violated'])} together would allow "
                     f"B = {unc['batch_size']}, r = {unc['ratio']} ({100 * unc['gain']:+.1f}%)")
        return dict(constraint=order, text=text, relaxations=relaxations, unconstrained_best=unc)
    return dict(
        constraint=list(unc["violated"]),
        text=(f"{' and '.join(_CONSTRAINT_NAMES[v] for v in unc['violated'])} jointly: no single relaxation helps, "
              f"both together would allow B = {unc['batch_size']}, r = {unc['ratio']} ({100 * unc['gain']:+.1f}%)"),
        relaxations={},
        unconstrained_best=unc,
    )


def _slack(row: dict, constraints: Constraints) -> list[str]:
    """How far the recommendation is from each active constraint."""
    out = []
    if constraints.kv_capacity_bytes is not None:
        out.append(f"P(KV overflow) {row['kv_overflow_simulated']:.3g} simulated / {row['kv_overflow_gaussian']:.3g} "
                   f"Gaussian (limit {constraints.kv_overflow_tolerance:g})")
    if constraints.tpot_target_ms is not None:
        key = "tpot_p99_ms" if constraints.tpot_statistic == "p99" else "tpot_mean_ms"
        out.append(f"TPOT {constraints.tpot_statistic} {row[key]:.4g} ms (target {constraints.tpot_target_ms:g} ms, "
                   f"{100 * (1 - row[key] / constraints.tpot_target_ms):.0f}% headroom)")
    return out


def _describe_violation(row: dict, constraints: Constraints) -> str:
    parts = []
    if "kv" in row["violated"]:
        parts.append(
            f"KV capacity (P(overflow) = {row['kv_overflow_simulated']:.3g} simulated, "
            f"{row['kv_overflow_gaussian']:.3g} Gaussian > {constraints.kv_overflow_tolerance:g})"
        )
    if "tpot" in row["violated"]:
        key = "tpot_p99_ms" if constraints.tpot_statistic == "p99" else "tpot_mean_ms"
        parts.append(f"TPOT {constraints.tpot_statistic} {row[key]:.4g} ms > {constraints.tpot_target_ms:g} ms")
    return "; ".join(parts)


@dataclasses.dataclass
class ConstrainedProvisionReport:
    """Everything ``afdjax provision`` prints when constraints or costs are given."""

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
            dict(
                objective=self.objective,
                objective_unit=OBJECTIVE_UNITS[self.objective],
                recommendation=self.recommendation,
                binding=self.binding,
                per_batch_size=self.per_batch,
                cells=self.cells,
                constraints=dataclasses.asdict(self.constraints),
                kv_capacity_tokens=self.constraints.kv_capacity_tokens,
                costs=dataclasses.asdict(self.costs),
                theta=self.theta,
                slot_std=self.slot_std,
                settings=self.settings,
            )
        )

    def format_text(self) -> str:
        c, s = self.constraints, self.settings
        unit = OBJECTIVE_UNITS[self.objective]
        lines = [
            f"afdjax provision (constrained)   workload {s.get('workload')}   hardware {s.get('hardware')}",
            f"  batch sizes {', '.join(str(p['batch_size']) for p in self.per_batch)}; "
            f"{s.get('steps')} steps x {s.get('replicas')} replicas"
            + (f", seed {s['seed']}" if s.get("seed") is not None else "")
            + (f"; {s['micro_batches']} micro-batches" if s.get("micro_batches") else "; ideal overlap (paper's step)"),
            f"  objective: {self.objective.replace('_', ' ')} ({unit})",
            "",
            "Constraints",
        ]
        if c.kv_capacity_bytes is not None:
            lines.append(
                f"  KV capacity per Attention instance  {c.kv_capacity_bytes / 1e9:.4g} GB = "
                f"{c.kv_capacity_tokens:.6g} tokens at {c.kv_bytes_per_token:.6g} bytes/token; "
                f"P(overflow) <= {c.kv_overflow_tolerance:g}"
            )
        if c.tpot_target_ms is not None:
            lines.append(
                f"  TPOT {c.tpot_statistic} <= {c.tpot_target_ms:g} ms   ({c.num_layers} layers x cycle time, "
                f"time unit {c.time_unit_us:g} us)"
            )
        if not c.active():
            lines.append("  none (cost objective only)")
        lines += ["", "Per batch size (best feasible ratio)"]
        header = (
            f"{'B':>6} {'KV load mean':>13} {'P(KV>cap) sim':>14} {'Gaussian':>9} {'best r':>7} "
            f"{'objective':>11} {'TPOT mean':>10} {'TPOT p99':>9}  note"
        )
        lines += [header, "-" * len(header)]
        for p in self.per_batch:
            best = p["best"]
            fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
            lines.append(
                f"{p['batch_size']:>6} {p['kv_load_mean_tokens']:>13.6g} {fmt(p['kv_overflow_simulated'], '>14.3g')} "
                f"{fmt(p['kv_overflow_gaussian'], '>9.3g')} "
                + (
                    f"{best['ratio']:>7d} {best['objective']:>11.5g} {fmt(best['tpot_mean_ms'], '>10.4g')} "
                    f"{fmt(best['tpot_p99_ms'], '>9.4g')}  "
                    if best
                    else f"{'-':>7} {'-':>11} {'-':>10} {'-':>9}  "
                )
                + p["note"]
            )
        lines.append("")
        rec = self.recommendation
        if rec is None:
            lines.append("No (B, r) on the grid meets the constraints. " + (self.binding or {}).get("text", ""))
            return "\n".join(lines)
        per_s = rec["bundle_tokens_per_s"] / (rec["ratio"] + 1)
        lines.append(
            f"Recommendation: B = {rec['batch_size']}, r = {rec['ratio']} Attention instances per FFN instance: "
            f"{rec['objective']:.5g} {unit} (+- {rec['objective_stderr']:.2g})"
            + (f" = {per_s:,.0f} output tokens/s per instance" if c.num_layers else "")
            + (f", TPOT mean {rec['tpot_mean_ms']:.4g} ms / p99 {rec['tpot_p99_ms']:.4g} ms" if rec["tpot_mean_ms"] is not None else "")
            + "."
        )
        slack = _slack(rec, c)
        if slack:
            lines.append("  at the recommendation: " + "; ".join(slack))
        lines.append(f"Binding constraint: {self.binding['text']}")
        return "\n".join(lines)

    def plot(self, path, title: str | None = None):
        """PNG: the (B, r) grid coloured by the objective, infeasible cells marked by the
        constraint they violate, the recommendation starred; and TPOT against r per B."""
        from matplotlib.colors import Normalize
        from matplotlib.patches import Patch

        from .._plot import pyplot

        plt = pyplot()
        batches = [p["batch_size"] for p in self.per_batch]
        ratios = sorted({cell["ratio"] for cell in self.cells})
        grid = np.full((len(batches), len(ratios)), np.nan)
        for cell in self.cells:
            if cell["objective"] is not None:
                grid[batches.index(cell["batch_size"]), ratios.index(cell["ratio"])] = cell["objective"]
        has_tpot = self.constraints.num_layers is not None
        fig, axes = plt.subplots(2 if has_tpot else 1, 1, figsize=(9, 7 if has_tpot else 4.2), squeeze=False)
        ax = axes[0, 0]
        norm = Normalize(vmin=np.nanmin(grid), vmax=np.nanmax(grid))
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", norm=norm,
                       extent=(ratios[0] - 0.5, ratios[-1] + 0.5, -0.5, len(batches) - 0.5))
        for cell in self.cells:
            if not cell["feasible"]:
                y = batches.index(cell["batch_size"])
                mark = "".join(sorted({"kv": "K", "tpot": "T"}[v] for v in cell["violated"]))
                ax.add_patch(plt.Rectangle((cell["ratio"] - 0.5, y - 0.5), 1, 1, fc="white", alpha=0.55, ec="none"))
                ax.text(cell["ratio"], y, mark, ha="center", va="center", fontsize=6, color="black")
        if self.recommendation:
            ax.plot(self.recommendation["ratio"], batches.index(self.recommendation["batch_size"]), "*", ms=14,
                    color="red", mec="white", label="recommendation")
        ax.set_yticks(range(len(batches)), [str(b) for b in batches])
        ax.set_xlabel("A/F ratio r")
        ax.set_ylabel("batch size B")
        fig.colorbar(im, ax=ax, label=OBJECTIVE_UNITS[self.objective])
        ax.legend(handles=[Patch(fc="white", ec="gray", alpha=0.55, label="infeasible (K: KV capacity, T: TPOT)")]
                  + ([plt.Line2D([], [], marker="*", ls="", color="red", ms=10, label="recommendation")]
                     if self.recommendation else []), loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2,
                  fontsize=7, frameon=False)
        if title:
            fig.suptitle(title, fontsize=9)
        if has_tpot:
            ax2 = axes[1, 0]
            key = "tpot_p99_ms" if self.constraints.tpot_statistic == "p99" else "tpot_mean_ms"
            for k, b in enumerate(batches):
                rows = [cell for cell in self.cells if cell["batch_size"] == b]
                ax2.plot([cell["ratio"] for cell in rows], [cell[key] for cell in rows], "o-", ms=2.5, color=f"C{k}",
                         label=f"B = {b}")
            if self.constraints.tpot_target_ms is not None:
                ax2.axhline(self.constraints.tpot_target_ms, color="red", ls="--", lw=1, label="target")
            ax2.set_xlabel("A/F ratio r")
            ax2.set_ylabel(f"TPOT {self.constraints.tpot_statistic} (ms)")
            ax2.grid(alpha=0.3)
            ax2.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


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

    **Arguments:**

    - ``key``, ``workload``, ``latency``: as for :func:`afdjax.simulate` (the same key at
      every ``B``: common random numbers across the grid).
    - ``batch_sizes``: one ``B`` or a list of them (slots per Attention instance).
    - ``ratios``: ratios to consider at every ``B`` (default: ``1..max(32, 1.5 r*)`` of
      the largest ``B``).
    - ``num_steps``, ``num_replicas``: Monte Carlo size per batch size.
    - ``constraints``: a :class:`Constraints`; ``costs``: a :class:`Costs`.
    - ``objective``: ``"per_instance"`` (the paper's), ``"per_dollar"`` or ``"per_joule"``.
    - ``micro_batches``: ``None`` (the paper's idealised overlap) or the number of
      pipelined micro-batches ``m`` (see :func:`afdjax.simulate`), a spelling of
      ``step_model=Pipeline(m)``; ``step_model``: a :class:`~afdjax.StepModel`.
    - ``progress``: a progress bar for each batch size's simulation.

    **Returns:** a :class:`ConstrainedProvisionReport` (``format_text``, ``to_dict``, ``plot``).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is invalid: expected one of {', '.join(OBJECTIVES)}")
    if objective == "per_dollar" and costs.attention_price_per_hour is None:
        raise ValueError("objective='per_dollar' needs prices: Costs(attention_price_per_hour=.., ffn_price_per_hour=..)")
    if objective == "per_joule" and costs.attention_power_w is None:
        raise ValueError("objective='per_joule' needs powers: Costs(attention_power_w=.., ffn_power_w=..)")
    bs = np.atleast_1d(np.asarray(batch_sizes))
    if bs.size == 0 or not np.all(bs == np.round(bs)) or np.any(bs < 1):
        raise ValueError(f"batch_sizes={batch_sizes!r} is invalid: expected positive integers")
    bs = sorted({int(b) for b in bs.tolist()})
    if ratios is None:
        ratios = _default_ratios(workload, latency, max(bs))
    levels = tuple(simulate_kwargs.pop("quantile_levels", (0.5, 0.9, 0.99)))
    if 0.99 not in levels:
        levels = levels + (0.99,)
    sim_kwargs = dict(simulate_kwargs)
    sim_kwargs["step_model"] = model = as_step_model(step_model, micro_batches)
    cells, per_batch = [], []
    theta = float(workload.theta())
    slot_std = math.sqrt(max(float(workload.slot_variance()), 0.0))
    for B in bs:
        result = simulate(key, workload, latency, B, ratios, num_steps, num_replicas, quantile_levels=levels,
                          progress=progress, **sim_kwargs)
        rows = evaluate_cells(result, workload, constraints, costs, objective)
        cells += rows
        feasible = [row for row in rows if row["feasible"]]
        best = max(feasible, key=lambda row: row["objective"]) if feasible else None
        if best is None:
            note = "infeasible at every r: " + _describe_violation(min(rows, key=lambda row: len(row["violated"])), constraints)
        elif best["ratio"] == rows[-1]["ratio"] and len(rows) > 1 and best is rows[-1]:
            note = "best at the largest ratio simulated: widen --ratios"
        else:
            worse = [row for row in rows if not row["feasible"] and row["objective"] > best["objective"]]
            note = ("limited by " + _describe_violation(max(worse, key=lambda row: row["objective"]), constraints)) if worse else "objective peak"
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
    feasible = [cell for cell in cells if cell["feasible"]]
    recommendation = max(feasible, key=lambda cell: cell["objective"]) if feasible else None
    if recommendation is None:
        counts = {name: sum(name in cell["violated"] for cell in cells) for name in _CONSTRAINT_NAMES}
        text = "every cell violates a constraint (" + ", ".join(f"{_CONSTRAINT_NAMES[k]}: {v} cells" for k, v in counts.items() if v) + ")"
        binding = dict(constraint=[k for k, v in counts.items() if v], text=text)
    else:
        binding = _binding(cells, recommendation, constraints)
    base = dict(workload=workload.describe(), hardware="custom", seed=None)
    return ConstrainedProvisionReport(
        settings=dict(base, **(settings or {}), steps=int(num_steps), replicas=int(num_replicas),
                      micro_batches=model.micro_batches, latency_coefficients=latency.coefficients(),
                      comm_scaling=latency.comm_scaling, ratios=[int(r) for r in np.atleast_1d(ratios)]),
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
