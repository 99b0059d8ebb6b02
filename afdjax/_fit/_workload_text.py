"""Text report of a :class:`~afdjax.WorkloadFit` (formatting only; the numbers come from the fit)."""

from __future__ import annotations

import math

from .._validate import format_number as _num


def format_workload_fit(result) -> str:
    """A readable report: a table per margin, then the load comparison."""
    pl = result.plugin
    head = f"Request-length fit: {result.source}" if result.source else "Request-length fit"
    lines = [
        f"{head}   ({result.num_requests} requests; prefill families fit P + {result.prefill_shift:g} tokens)",
        "",
        (
            f"Decode steps D   trace: mean {pl['mean_decode_np']:.6g}, max {pl['max_decode']:.0f}, "
            f"stationary mean index {pl['stationary_mean_index_np']:.6g}"
        ),
    ]
    lines += _family_table(result.decode, result.best_decode, decode=True)
    lines += ["", f"Prefill tokens P   trace: mean {pl['mean_prefill_np']:.6g}, max {pl['max_prefill']:.0f}"]
    lines += _family_table(result.prefill, result.best_prefill, decode=False)
    se = result.theta_fit_stderr
    best_d, best_p = result.decode[result.best_decode], result.prefill[result.best_prefill]
    parts = result.theta_gap_parts
    lines += [
        "",
        "Stationary slot load, tokens (arXiv 2601.21351 section 2: the slot is length-biased)",
        f"  fitted {result.best_decode} D x {result.best_prefill} P (independent):  theta_fit = {result.theta_fit:.6g}"
        + (f" +- {se:.3g}" if math.isfinite(se) else "")
        + f"   slot sd {math.sqrt(max(result.slot_variance_fit, 0)):.6g}",
        (
            f"  trace plug-in, paired (corr(P, D) = {_num(pl['correlation_pd'], '+.3f')}):  "
            f"theta_np = {result.theta_np:.6g}"
            f"   slot sd {math.sqrt(max(result.slot_variance_np, 0)):.6g}"
        ),
        f"  trace plug-in, P-D pairing broken:  theta_independent_np = {result.theta_independent_np:.6g}",
        (
            f"  gap theta_fit / theta_np - 1 = {_num(100 * result.theta_relative_gap, '+.2f')} %"
            f"   (P-D correlation {_num(100 * result.correlation_relative_gap, '+.2f')} %,"
            f" fitted families {_num(100 * result.fit_relative_gap, '+.2f')} %)"
        ),
        (
            f"  gap in tokens: correlation {_num(parts['correlation'], '+.4g')}, "
            f"prefill family {_num(parts['prefill_family'], '+.4g')},"
            f" decode family {_num(parts['decode_family'], '+.4g')}"
        ),
        (
            f"  decode tail: the 1 % longest requests hold {100 * pl['decode_top1_share']:.0f} % of the trace's"
            f" sum D(D-1)/2; the fitted {result.best_decode} puts {best_d.tail_mass_beyond_max:.2g} of its mass above"
            f" {pl['max_decode']:.0f} steps and, given D <= {pl['max_decode']:.0f}, has stationary index"
            f" {best_d.truncated_load_term:.5g} (trace {pl['stationary_mean_index_np']:.5g})"
        ),
        (
            f"  prefill tail: the fitted {result.best_prefill} puts {best_p.tail_mass_beyond_max:.2g} of its mass above"
            f" {pl['max_prefill']:.0f} tokens and, given P <= {pl['max_prefill']:.0f}, has mean"
            f" {best_p.truncated_load_term:.6g} (trace {pl['mean_prefill_np']:.6g})"
        ),
        "  theta_fit per decode family (with the best prefill family): "
        + ", ".join(f"{d} {result.theta_for(d, result.best_prefill):.6g}" for d in result.decode),
    ]
    return "\n".join(lines)


def _format_params(fit) -> str:
    parts = []
    for name, value in fit.params.items():
        lo, hi = fit.ci95[name]
        ci = f" [{lo:.4g}, {hi:.4g}]" if math.isfinite(lo) and math.isfinite(hi) else " [n/a]"
        parts.append(f"{name}={value:.4g}{ci}")
    return "  ".join(parts)


def _family_table(fits: dict, best: str, decode: bool) -> list[str]:
    best_aic = min(f.aic for f in fits.values())
    header = f"    {'family':<18} {'logL':>12} {'AIC':>12} {'dAIC':>9} {'BIC':>12} {'KS':>7} {'mean':>9}"
    if decode:
        header += f" {'index':>9}"
    rows = [header + "   parameters [95% CI]"]
    for name, f in sorted(fits.items(), key=lambda kv: kv[1].aic):
        row = (
            f"  {'*' if name == best else ' '} {name:<18} {f.log_likelihood:12.6g} {f.aic:12.6g} "
            f"{f.aic - best_aic:9.4g} {f.bic:12.6g} {f.ks:7.4f} {f.mean:9.5g}"
        )
        if decode:
            row += f" {f.load_term:9.5g}"
        row += "   " + _format_params(f)
        if not f.converged:
            row += "   (not converged)"
        elif not f.identifiable:
            row += "   (not identifiable here)"
        rows.append(row)
    note = "    * lowest AIC; KS = max |F_trace - F_model|; CIs: delta method on the observed information"
    if decode:
        note += "; index = E[D(D-1)]/(2E[D])"
    rows.append(note)
    return rows
