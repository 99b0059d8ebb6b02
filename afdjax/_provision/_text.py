"""Text of the provisioning reports: tables, recommendations and the ``afdjax verify``
Markdown (host-side formatting only; the numbers come from ``_report``, ``_constraints``,
``_simulation`` and ``_verify``)."""

from __future__ import annotations

import math

from .._step import as_step_model
from .._validate import format_number as _num
from ._compare import replica_note

OBJECTIVE_UNITS = {
    "per_instance": "tokens / time unit / instance",
    "per_dollar": "tokens / $",
    "per_joule": "tokens / J",
}


def _fmt(x, digits: int = 4) -> str:
    """A number with ``digits`` significant digits; ``nan`` for None or NaN."""
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else _num(x, f".{digits}g")


def _cell(value, width: int, spec: str) -> str:
    """A right-aligned table cell of ``width`` characters: ``value`` formatted with
    ``spec``, or ``-`` for a missing value (so columns stay aligned either way)."""
    return ("-" if value is None else _num(value, spec)).rjust(width)


def _ranges(values: list[int]) -> str:
    """Compact list of integers: [1, 2, 3, 5, 7, 8] -> '1-3, 5, 7-8'."""
    parts, start, prev = [], None, None
    for v in sorted(values):
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = prev = v
    if start is not None:
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(parts)


def _step_model_line(micro_batches) -> str:
    return "  step model: " + as_step_model(None, micro_batches).describe()


def provision_text(report, max_rows: int = 40) -> str:
    mf, br, sim, err = report.mean_field, report.barrier, report.simulated, report.errors
    s = report.settings
    lines = [
        f"afdjax provision   workload {s['workload']}   hardware {s['hardware']}   B = {s['batch_size']}",
        f"  Monte Carlo: {s['steps']} steps x {s['replicas']} replicas"
        + (f", seed {s['seed']}" if s.get("seed") is not None else "")
        + ", ratios "
        f"{report.table[0]['ratio']}..{report.table[-1]['ratio']}",
        _step_model_line(s.get("micro_batches")),
        "",
        "Workload",
        f"  theta (stationary mean KV tokens per slot)  {report.theta:12.6g}",
        f"  slot standard deviation (tokens)            {math.sqrt(max(report.slot_variance, 0)):12.6g}",
        "",
        "Mean field (arXiv 2601.21351)",
        f"  r_A (attention)     {mf['r_attention']:9.4f}",
        (
            f"  r_C (communication) {mf['r_communication']:9.4f}"
            + ("   (< 1: communication never binds)" if mf["r_communication"] < 1 else "")
        )
        if mf["r_communication"] is not None and math.isfinite(mf["r_communication"])
        else "  r_C (communication)       n/a  (communication scales with rB)",
        f"  r_peak (FFN)        {mf['r_peak']:9.4f}",
        f"  r* = max(...)       {mf['r_star']:9.4f}   binding regime: {mf['regime']}",
        f"  integer choice      {mf['ratio']:9d}   "
        + (
            "(r* unbounded: the top of the ratio range)"
            if mf["regime"] == "unbounded"
            else "(better of floor/ceil under the mean field, >= 1)"
        ),
        "",
        "Barrier refinement (Gaussian attention times, max over r instances)",
        f"  best integer ratio  {br['ratio']:9d}   (continuous optimum {br['r_continuous']:.3f})",
        "",
        "Monte Carlo",
        f"  best ratio          {sim['ratio']:9d}   throughput {sim['throughput']:.5g}"
        + (f" +- {sim['stderr']:.2g}" if s["replicas"] >= 2 else ""),
    ]
    for nb in sim["neighbours"]:
        if s["replicas"] < 2:
            lines.append(
                f"  vs r = {nb['ratio']:<4d}         better by {_num(nb['difference'], '.3g')} "
                "(no standard error: it needs at least 2 replicas)"
            )
            continue
        verdict = "distinguishable" if abs(nb["z"]) > 2 else "NOT distinguishable"
        se = "0" if nb["stderr"] == 0 else f"{nb['stderr']:.2g}"
        lines.append(
            f"  vs r = {nb['ratio']:<4d}         better by {_num(nb['difference'], '.3g')} +- {se} "
            f"(paired, common random numbers; z = {_num(nb['z'], '.1f')}): {verdict}"
        )
    near = [r for r in sim["within_2_stderr"] if r != sim["ratio"]]
    if s["replicas"] >= 2:
        lines.append("  within 2 paired standard errors of the best: " + (_ranges(near) if near else "none"))
    if report.idle_crossing is not None:
        lines.append(f"  attention and FFN idle fractions cross at r = {report.idle_crossing:.2f}")
    lines += ["", "Per ratio (throughput per instance; rel. err = prediction / simulated - 1)"]
    header = (
        f"{'r':>4} {'mean field':>11} {'barrier':>9} {'simulated':>10} {'+-stderr':>9} "
        f"{'err MF':>8} {'err bar':>8} {'attn idle':>9} {'FFN idle':>8}"
    )
    lines += [header, "-" * len(header)]
    rows = report.table
    if len(rows) > max_rows:
        keep = {0, len(rows) - 1}
        marks = {mf["ratio"], br["ratio"], sim["ratio"]}
        for i, row in enumerate(rows):
            if any(abs(row["ratio"] - m) <= 2 for m in marks):
                keep.add(i)
        step = max(1, len(rows) // (max_rows - len(keep)) if max_rows > len(keep) else len(rows))
        keep |= set(range(0, len(rows), step))
        rows_to_show = [rows[i] for i in sorted(keep)]
    else:
        rows_to_show = rows
    last = None
    for row in rows_to_show:
        if last is not None and row["ratio"] != last + 1:
            lines.append(f"{'...':>4}")
        tags = []
        if row["ratio"] == sim["ratio"]:
            tags.append("sim")
        if row["ratio"] == br["ratio"]:
            tags.append("barrier")
        if row["ratio"] == mf["ratio"]:
            tags.append("MF")
        lines.append(
            f"{row['ratio']:>4} {row['mean_field']:>11.5g} {row['barrier']:>9.5g} {row['simulated']:>10.5g} "
            f"{row['stderr']:>9.2g} {_num(100 * row['rel_err_mean_field'], '>7.2f')}% "
            f"{_num(100 * row['rel_err_barrier'], '>7.2f')}% "
            f"{max(row['attention_idle_fraction'], 0.0):>9.3f} {max(row['ffn_idle_fraction'], 0.0):>8.3f}"
            + (f"  <- {', '.join(tags)}" if tags else "")
        )
        last = row["ratio"]
    lines += [
        "",
        "Accuracy against simulation over all ratios shown",
        f"  mean field: max |rel. err| {100 * err['max_abs_rel_err_mean_field']:.2f}% "
        f"(at r = {err['worst_ratio_mean_field']})",
        f"  barrier:    max |rel. err| {100 * err['max_abs_rel_err_barrier']:.2f}% "
        f"(at r = {err['worst_ratio_barrier']})",
        (
            f"  throughput lost by choosing r = {mf['ratio']} (mean field) instead of the simulated best: "
            f"{100 * err['loss_mean_field']:.2f}%"
        ),
        (
            f"  throughput lost by choosing r = {br['ratio']} (barrier) instead of the simulated best: "
            f"{100 * err['loss_barrier']:.2f}%"
        ),
        "",
        f"Recommendation: r = {sim['ratio']} Attention instances per FFN instance"
        + (
            f" (mean field says {mf['ratio']}, barrier model {br['ratio']})."
            if (mf["ratio"], br["ratio"]) != (sim["ratio"], sim["ratio"])
            else " (mean field, barrier model and simulation agree)."
        ),
    ]
    note = replica_note(s["replicas"])
    lines += ([note] if note else []) + [f"Warning: {w}" for w in report.warnings]
    return "\n".join(lines)


_CONSTRAINT_NAMES = {"kv": "KV capacity", "tpot": "TPOT target"}


def _slack(row: dict, constraints) -> list[str]:
    """How far the recommendation is from each active constraint."""
    out = []
    if constraints.kv_capacity_bytes is not None:
        out.append(
            f"P(KV overflow) {row['kv_overflow_simulated']:.3g} simulated / {row['kv_overflow_gaussian']:.3g} "
            f"Gaussian (limit {constraints.kv_overflow_tolerance:g})"
        )
    if constraints.tpot_target_ms is not None:
        key = "tpot_p99_ms" if constraints.tpot_statistic == "p99" else "tpot_mean_ms"
        out.append(
            f"TPOT {constraints.tpot_statistic} {row[key]:.4g} ms (target {constraints.tpot_target_ms:g} ms, "
            f"{100 * (1 - row[key] / constraints.tpot_target_ms):.0f}% headroom)"
        )
    return out


def _describe_violation(row: dict, constraints) -> str:
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


def constrained_text(report) -> str:
    c, s = report.constraints, report.settings
    unit = OBJECTIVE_UNITS[report.objective]
    lines = [
        f"afdjax provision (constrained)   workload {s.get('workload')}   hardware {s.get('hardware')}",
        f"  batch sizes {', '.join(str(p['batch_size']) for p in report.per_batch)}; "
        f"{s.get('steps')} steps x {s.get('replicas')} replicas"
        + (f", seed {s['seed']}" if s.get("seed") is not None else "")
        + (f"; {s['micro_batches']} micro-batches" if s.get("micro_batches") else "; ideal overlap (paper's step)"),
        f"  objective: {report.objective.replace('_', ' ')} ({unit})",
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
    for p in report.per_batch:
        best = p["best"]
        lines.append(
            f"{p['batch_size']:>6} {p['kv_load_mean_tokens']:>13.6g} {_cell(p['kv_overflow_simulated'], 14, '.3g')} "
            f"{_cell(p['kv_overflow_gaussian'], 9, '.3g')} "
            + (
                f"{best['ratio']:>7d} {_cell(best['objective'], 11, '.5g')} {_cell(best['tpot_mean_ms'], 10, '.4g')} "
                f"{_cell(best['tpot_p99_ms'], 9, '.4g')}  "
                if best
                else f"{'-':>7} {'-':>11} {'-':>10} {'-':>9}  "
            )
            + p["note"]
        )
    lines += _closed_cost_lines(report.per_batch)
    lines.append("")
    rec = report.recommendation
    if rec is None:
        lines.append("No (B, r) on the grid meets the constraints. " + (report.binding or {}).get("text", ""))
        return "\n".join(lines)
    per_s = rec["bundle_tokens_per_s"] / (rec["ratio"] + 1)
    lines.append(
        f"Recommendation: B = {rec['batch_size']}, r = {rec['ratio']} Attention instances per FFN instance: "
        f"{rec['objective']:.5g} {unit}"
        + (f" (+- {rec['objective_stderr']:.2g})" if s.get("replicas", 2) >= 2 else "")
        + (f" = {per_s:,.0f} output tokens/s per instance" if c.num_layers else "")
        + (
            f", TPOT mean {rec['tpot_mean_ms']:.4g} ms / p99 {rec['tpot_p99_ms']:.4g} ms"
            if rec["tpot_mean_ms"] is not None
            else ""
        )
        + "."
    )
    slack = _slack(rec, c)
    if slack:
        lines.append("  at the recommendation: " + "; ".join(slack))
    lines.append(f"Binding constraint: {report.binding['text']}")
    return "\n".join(lines)


def _closed_cost_lines(per_batch: list[dict]) -> list[str]:
    """The closed-form cost optimum beside the simulated best ratio (cost objectives only)."""
    rows = [p for p in per_batch if p.get("closed_form")]
    if not rows:
        return []
    lines = ["", "Closed form, cost-weighted: r* = max(r_A, r_C, sqrt(beta_F w_F / (alpha_F B w_A)))"]
    for p in rows:
        cf, best = p["closed_form"], p["best"]
        lines.append(
            f"  B = {p['batch_size']}: r* = {_fmt(cf['r_star'])} ({cf['regime']}-bound), "
            f"integer {cf['ratio_mean_field']}; "
            f"barrier {cf['ratio_barrier']} ({_fmt(cf['r_barrier_continuous'])}); "
            f"simulated best feasible {best['ratio'] if best else '-'}"
        )
    return lines


def _explain(row: dict) -> str:
    """One sentence on where and why the mean field and the barrier model deviate."""
    parts = []
    gap_pp = 100 * row["max_abs_rel_err_mean_field"]
    if gap_pp > 0.5:
        parts.append(
            f"mean field overestimates throughput by up to {gap_pp:.1f}% (r = {row['worst_ratio_mean_field']}): "
            f"it ignores the straggler barrier (slot sd {row['slot_std']:.0f} tokens vs theta {row['theta']:.0f})"
        )
    else:
        parts.append(f"mean field within {gap_pp:.2f}% everywhere")
    verb = (
        "cuts the worst error to"
        if row["max_abs_rel_err_barrier"] < 0.8 * row["max_abs_rel_err_mean_field"]
        else "has worst error"
    )
    parts.append(
        f"the barrier model {verb} {100 * row['max_abs_rel_err_barrier']:.2f}% (r = {row['worst_ratio_barrier']})"
    )
    if row["barrier_exceptions"]:
        worst = max(row["barrier_exceptions"], key=lambda e: abs(e["rel_err_barrier"]))
        worst_pct = _num(100 * worst["rel_err_barrier"], "+.2f")
        parts.append(
            f"{len(row['barrier_exceptions'])} ratio(s) beyond 2%: worst {worst_pct}% at "
            f"r = {worst['ratio']} (per-instance load not Gaussian enough: heavy-tailed request lengths make the "
            "max over instances larger than the Gaussian predicts)"
        )
    if not row["within_10_percent"]:
        name, r_ref = (
            ("pipeline r*", row["r_star_pipeline"]) if row.get("r_star_pipeline") is not None else ("r*", row["r_star"])
        )
        if row["regime"] == "ffn" or row["ratio_simulated"] <= 3:
            parts.append(
                f"{name} = {r_ref:.2f} vs simulated {row['ratio_simulated']}: at small r an integer step is "
                f"a large relative change, so 10% cannot be met by any integer near r*"
            )
        else:
            parts.append(
                f"{name} = {r_ref:.2f} vs simulated {row['ratio_simulated']}: the barrier raises the attention "
                f"time above t_A_bar, moving the optimum (barrier predicts {row['ratio_barrier']})"
            )
    return "; ".join(parts) + "."


def _markdown(rows: list[dict], settings: dict) -> str:
    lines = [
        "# afdjax verify: closed form against simulation",
        "",
        (
            f"Hardware `{settings['hardware']}`; Monte Carlo {settings['steps']} steps x {settings['replicas']} "
            "replicas, "
            f"seed {settings['seed']}; integer ratios over the range shown. Throughput per instance; "
            "'loss' = throughput lost by choosing that model's integer ratio instead of the simulated best."
        ),
        "",
        (
            "Step model: the paper's idealised overlap (tau = max(max_j t_A, t_C, t_F))."
            if settings.get("micro_batches") is None
            else f"Step model: pipeline of {settings['micro_batches']} micro-batches per instance; the mean-field and "
            "barrier "
            "columns use the pipeline period (barrier: Gaussian expected-max approximation)."
        ),
        "",
        "| study | configuration | theta | r* (paper reported / formula) | r* afdjax"
        + (" (pipeline)" if settings.get("micro_batches") is not None else "")
        + " | regime | MF int | barrier int "
        "(cont.) | simulated best | gap r* vs sim | loss MF | loss barrier | idle crossing | max err MF | "
        "max err barrier |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        paper = (
            f"{row['r_star_paper_reported']:.2f} / {row['r_star_paper_formula']:.2f}"
            if row["r_star_paper_reported"] is not None
            else "-"
        )
        crossing = f"{row['idle_crossing']:.2f}" if row["idle_crossing"] is not None else "-"
        tie = not row["simulated_distinguishable"] and settings["replicas"] >= 2
        sim = f"{row['ratio_simulated']}" + (" (tie)" if tie else "")
        lines.append(
            f"| {row['study']} | {row['label']} | {row['theta']:.0f} | {paper} | {row['r_star']:.3f}"
            + (f" ({row['r_star_pipeline']:.3f})" if row.get("r_star_pipeline") is not None else "")
            + " | "
            f"{row['regime']} | {row['ratio_mean_field']} | "
            f"{row['ratio_barrier']} ({row['r_barrier_continuous']:.2f}) | "
            f"{sim} | {_num(100 * row['rel_gap_r_star'], '+.1f')}% | {100 * row['loss_mean_field']:.2f}% | "
            f"{100 * row['loss_barrier']:.2f}% | {crossing} | {100 * row['max_abs_rel_err_mean_field']:.2f}% | "
            f"{100 * row['max_abs_rel_err_barrier']:.2f}% |"
        )
    lines += ["", "## Findings", ""]
    for row in rows:
        lines.append(f"- **{row['label']}**: {_explain(row)}")
    n_ok = sum(r["within_10_percent"] for r in rows if r["study"] != "trace")  # pipeline r* when pipelined
    n_paper = sum(1 for r in rows if r["study"] != "trace")
    exc = [(r["label"], e) for r in rows for e in r["barrier_exceptions"]]
    lines += [
        "",
        (
            f"- Simulated integer optimum within 10% of the closed-form r*: {n_ok} of {n_paper} paper configurations "
            "(the paper's claim); the others are explained above."
        ),
        "- Barrier throughput within 2% of simulation (beyond 2 s.e.) at every ratio: "
        + ("yes, for every configuration." if not exc else f"no: {len(exc)} exception(s), listed above."),
        (
            "- '(tie)' marks a simulated best that is not distinguishable from a neighbouring ratio (paired "
            "difference under 2 standard errors, common random numbers)."
            if settings["replicas"] >= 2
            else "- With one replica there are no standard errors (they need at least 2 replicas): no ratio is "
            "marked '(tie)' and the 2% test has no error bar; use --replicas 2 or more."
        ),
    ]
    return "\n".join(lines)


def simulation_text(report) -> str:
    """The text ``afdjax simulate`` prints: settings, one row per ratio, the best ratio and
    the ratios within 2 paired standard errors of it, and the report's warnings."""
    out = report.result.to_dict()
    s = report.settings
    thr = out["throughput_per_instance"]
    se = [float("nan") if v is None else v for v in out["stderr"]]
    best = report.best_index
    coeffs = ", ".join(f"{k}={v:g}" for k, v in s["latency_coefficients"].items())
    run = f"B = {s['batch_size']}, {s['steps']} steps x {s['replicas']} replicas"
    if s.get("seed") is not None:
        run += f", seed {s['seed']}"
    if s.get("start") is not None:
        run += f", {s['start']} start"
    lines = [
        " ".join(["afdjax", *([s["afdjax_version"]] if s.get("afdjax_version") else []), "simulate"]),
        f"workload  {s['workload']}   theta = {report.theta:.6g} tokens/slot, slot sd = {report.slot_std:.4g}",
        f"hardware  {s['hardware']}   ({coeffs}; comm scales with {s['comm_scaling'].replace('_', '*')})",
        run,
    ]
    if s.get("micro_batches") is None:
        lines.append(
            "step      paper's idealised overlap: tau = max(max_j t_A, t_C, t_F) (use --micro-batches M to pipeline)"
        )
    else:
        lines.append(
            f"step      pipeline of {s['micro_batches']} micro-batch(es) per instance; bubble = 1 - busiest "
            "resource's busy time / elapsed time"
        )
    lines.append("")
    q = out["cycle_time_quantiles"]
    p99 = q.get("p99", [float("nan")] * len(thr))
    header = (
        f"{'r':>4}  {'throughput/inst':>15}  {'+-stderr':>9}  {'attn idle':>9}  {'FFN idle':>8}  "
        f"{'mean cycle':>10}  {'p99 cycle':>9}"
    )
    bubble = s.get("micro_batches") is not None
    if bubble:
        header += f"  {'bubble':>6}"
    lines += [header, "-" * len(header)]
    for i, r in enumerate(out["ratios"]):
        mark = "  <- best" if i == best else ""
        lines.append(
            f"{r:>4}  {_num(thr[i], '>15.5g')}  {_fmt(se[i], 3):>9}  "
            f"{_num(out['attention_idle_fraction'][i], '>9.3f')}  "
            f"{_num(out['ffn_idle_fraction'][i], '>8.3f')}  {_num(out['mean_cycle_time'][i], '>10.5g')}  "
            f"{_num(p99[i], '>9.5g')}"
            + (f"  {max(out['pipeline_bubble_fraction'][i], 0.0):>6.3f}" if bubble else "")
            + mark
        )
    error = f" +- {_fmt(se[best], 3)}" if s["replicas"] >= 2 else ""
    lines += [
        "",
        (
            f"Simulated throughput peaks at r = {out['ratios'][best]} "
            f"({thr[best]:.5g}{error} tokens per time unit per instance)."
        ),
    ]
    others = [r for r in report.within_2_stderr if r != out["ratios"][best]]
    if s["replicas"] < 2:
        pass  # no standard errors: the warning below says so
    elif others:
        lines.append(f"Within 2 paired standard errors of the peak: r = {_ranges(others)}.")
    else:
        lines.append("No other ratio is within 2 paired standard errors of the peak.")
    note = replica_note(s["replicas"])
    lines += ([note] if note else []) + [f"Warning: {w}" for w in report.warnings]
    return "\n".join(lines)
