"""Text output of a :class:`~afdjax.LatencyFit`: the report and the TOML header (formatting only)."""

from __future__ import annotations

import math
from pathlib import Path

from .._hardware import latency_to_toml
from .._validate import format_number
from ._latency_lines import HUBER_EFFICIENCY_CONSTANT, MAD_TO_SIGMA
from ._latency_observations import STAGES


def loss_description(fit) -> str:
    """One line on the loss and its scale."""
    if fit.loss == "huber":
        return f"huber (delta = {HUBER_EFFICIENCY_CONSTANT} * {MAD_TO_SIGMA:.4f} * MAD of least-squares residuals)"
    return "l2 (least squares)"


def method_description(fit, method: str) -> str:
    """One line on an interval method."""
    if method == "bootstrap":
        return f"bootstrap expanded percentile, {fit.n_bootstrap} row resamples, seed {fit.seed}"
    return "sandwich (Laplace with robust scores), Student t"


def format_latency_fit(self) -> str:
    """A readable report: coefficients with both intervals, then the fit quality."""
    lines = [
        f"afdjax fit latency   {self.source}   {self.num_rows} rows   comm_scaling {self.comm_scaling}",
        f"  loss: {loss_description(self)}",
        f"  95 % intervals: {method_description(self, 'bootstrap') if self.n_bootstrap else 'bootstrap off'};"
        f" {method_description(self, 'sandwich')}",
        "",
        f"  {'coefficient':<12}{'estimate':>13}   {'bootstrap 95 % CI':<27}{'sandwich 95 % CI':<27}{'sandwich se':>11}",
    ]

    def fmt(iv):
        if not all(map(math.isfinite, iv)):
            return "-"
        return f"[{format_number(iv[0], '.5g')}, {format_number(iv[1], '.5g')}]"

    boot, sand, se = self.bootstrap_intervals, self.sandwich_intervals, self.standard_errors
    coefficients = self.latency.coefficients()
    for stage in STAGES:
        fit = self.stages[stage]
        for name in fit.coefficient_names:
            tail = ""
            if fit.source != "fit":
                tail = f"   (kept from defaults{f' {self.defaults_name}' if self.defaults_name else ''})"
            elif name in fit.at_bound:
                tail = "   (at the >= 0 bound)"
            se_text = f"{se[name]:.3g}" if math.isfinite(se[name]) else "-"
            lines.append(
                f"  {name:<12}{format_number(coefficients[name], '>13.6g')}   "
                f"{fmt(boot[name]):<27}{fmt(sand[name]):<27}"
                f"{se_text:>11}{tail}"
            )
    lines += [
        "",
        f"  {'stage':<11}{'rows':>6}{'R^2':>10}{'resid sd':>12}{'max rel resid':>15}"
        + (f"{'huber delta':>13}{'beyond delta':>14}" if self.loss == "huber" else ""),
    ]
    for stage in STAGES:
        fit = self.stages[stage]
        if fit.source != "fit":
            lines.append(f"  {stage:<11}{0:>6}   no observations: coefficients kept from defaults")
            continue
        q = fit.quality()
        row = (
            f"  {stage:<11}{q['rows']:>6}{q['r_squared']:>10.5f}{q['residual_std']:>12.4g}"
            f"{100 * q['max_relative_residual']:>14.2f}%"
        )
        if self.loss == "huber":
            row += f"{q['huber_delta']:>13.4g}{q['rows_downweighted']:>14d}"
        lines.append(row)
    if self.notes:
        lines += ["", "Notes"] + [f"  - {note}" for note in self.notes]
    return "\n".join(lines) + "\n"


def latency_fit_toml(self) -> str:
    """Hardware TOML (read back by ``afdjax.parse_hardware_spec`` / ``--hardware FILE``),
    with a header comment recording the provenance and the fit quality."""
    name = Path(self.source).name if self.source and not self.source.startswith("<") else self.source
    header = [
        "Step-latency coefficients fitted by afdjax (afdjax fit latency).",
        f"observations: {name}, {self.num_rows} rows" + (f", sha256 {self.sha256[:16]}" if self.sha256 else ""),
        f"loss: {loss_description(self)}; comm_scaling: {self.comm_scaling}",
        f"95 % intervals ({method_description(self, self.interval_method)}):",
    ]
    for coefficient, (lo, hi) in self.intervals.items():
        if all(map(math.isfinite, (lo, hi))):
            header.append(f"  {coefficient} in [{lo:.6g}, {hi:.6g}]")
    for stage in STAGES:
        fit = self.stages[stage]
        if fit.source != "fit":
            header.append(
                f"{stage}: no observations, kept from defaults"
                + (f" ({self.defaults_name})" if self.defaults_name else "")
            )
            continue
        q = fit.quality()
        header.append(
            f"{stage}: {q['rows']} rows, R^2 = {q['r_squared']:.5f}, residual sd = {q['residual_std']:.4g}, "
            f"max relative residual = {100 * q['max_relative_residual']:.2f}%"
        )
    header += [f"note: {note}" for note in self.notes]
    return latency_to_toml(self.latency, description="\n".join(header))
