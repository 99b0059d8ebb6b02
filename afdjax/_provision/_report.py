"""``provision``: the three answers to "which r?" (mean field, barrier, Monte Carlo), side by side.

Host-side assembly around the pure functions of ``_theory`` and ``_engine``; the
numbers are computed by those, this module only compares and formats them.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._engine._simulate import SimulationResult, simulate
from .._json import jsonable
from .._latency import LatencyModel
from .._step._pipeline import pipeline_barrier_throughput, pipeline_throughput
from .._theory import (
    barrier_optimum,
    barrier_throughput,
    grid_argmax,
    integer_argmax,
    mean_field_integer_ratio,
    mean_field_optimum,
    mean_field_throughput,
)
from .._workload._core import Workload


def default_ratio_range(workload: Workload, latency: LatencyModel, batch_size: int) -> list[int]:
    """``1..max(32, ceil(1.5 r*))``: wide enough to show the optimum and the fall beyond it."""
    r_star = float(mean_field_optimum(workload, latency, batch_size).r_star)
    top = 32 if not math.isfinite(r_star) else max(32, math.ceil(1.5 * r_star))
    return list(range(1, top + 1))


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


def _crossing(ratios: np.ndarray, a: np.ndarray, f: np.ndarray) -> float | None:
    """First r (linear interpolation) where attention idle rises to meet FFN idle."""
    d = a - f
    for i in range(1, len(ratios)):
        if d[i - 1] < 0 <= d[i]:
            t = -d[i - 1] / (d[i] - d[i - 1])
            return float(ratios[i - 1] + t * (ratios[i] - ratios[i - 1]))
    return None


def _paired(result: SimulationResult, i: int, j: int) -> dict:
    """Paired (common random numbers) comparison of ratios at indices i and j."""
    per = np.asarray(result.throughput_per_replica, dtype=float)
    d = per[:, i] - per[:, j]
    mean = float(np.mean(d))
    se = float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    if se > 0:
        z = mean / se
    else:
        z = math.inf if mean > 0 else (0.0 if mean == 0 else -math.inf)
    return dict(ratio=int(np.asarray(result.ratios)[j]), difference=mean, stderr=se, z=z)


@dataclasses.dataclass
class ProvisionReport:
    """Everything ``afdjax provision`` prints. Throughputs are tokens per time unit per instance."""

    settings: dict
    theta: float
    slot_variance: float
    mean_field: dict
    barrier: dict
    simulated: dict
    table: list[dict]
    errors: dict
    idle_crossing: float | None

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (non-finite numbers become None)."""

        return jsonable(
            dict(
                theta=self.theta,
                slot_variance=self.slot_variance,
                slot_std=math.sqrt(max(self.slot_variance, 0.0)),
                r_star=self.mean_field["r_star"],
                regime=self.mean_field["regime"],
                r_attention=self.mean_field["r_attention"],
                r_communication=self.mean_field["r_communication"],
                r_peak=self.mean_field["r_peak"],
                ratio_mean_field=self.mean_field["ratio"],
                ratio_barrier=self.barrier["ratio"],
                r_barrier_continuous=self.barrier["r_continuous"],
                ratio_simulated=self.simulated["ratio"],
                simulated=self.simulated,
                idle_crossing=self.idle_crossing,
                errors=self.errors,
                table=self.table,
                settings=self.settings,
            )
        )

    # ------------------------------------------------------------------ text
    def format_text(self, max_rows: int = 40) -> str:
        mf, br, sim, err = self.mean_field, self.barrier, self.simulated, self.errors
        s = self.settings
        lines = [
            f"afdjax provision   workload {s['workload']}   hardware {s['hardware']}   B = {s['batch_size']}",
            f"  Monte Carlo: {s['steps']} steps x {s['replicas']} replicas"
            + (f", seed {s['seed']}" if s.get("seed") is not None else "")
            + ", ratios "
            f"{self.table[0]['ratio']}..{self.table[-1]['ratio']}",
            _step_model_line(s.get("micro_batches")),
            "",
            "Workload",
            f"  theta (stationary mean KV tokens per slot)  {self.theta:12.6g}",
            f"  slot standard deviation (tokens)            {math.sqrt(max(self.slot_variance, 0)):12.6g}",
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
            f"  integer choice      {mf['ratio']:9d}   (better of floor/ceil under the mean field, >= 1)",
            "",
            "Barrier refinement (Gaussian attention times, max over r instances)",
            f"  best integer ratio  {br['ratio']:9d}   (continuous optimum {br['r_continuous']:.3f})",
            "",
            "Monte Carlo",
            f"  best ratio          {sim['ratio']:9d}   throughput {sim['throughput']:.5g} +- {sim['stderr']:.2g}",
        ]
        for nb in sim["neighbours"]:
            verdict = "distinguishable" if abs(nb["z"]) > 2 else "NOT distinguishable"
            se = "0" if nb["stderr"] == 0 else f"{nb['stderr']:.2g}"
            lines.append(
                f"  vs r = {nb['ratio']:<4d}         better by {nb['difference']:.3g} +- {se} "
                f"(paired, common random numbers; z = {nb['z']:.1f}): {verdict}"
            )
        near = [r for r in sim["within_2_stderr"] if r != sim["ratio"]]
        lines.append("  within 2 paired standard errors of the best: " + (_ranges(near) if near else "none"))
        if self.idle_crossing is not None:
            lines.append(f"  attention and FFN idle fractions cross at r = {self.idle_crossing:.2f}")
        lines += ["", "Per ratio (throughput per instance; rel. err = prediction / simulated - 1)"]
        header = (
            f"{'r':>4} {'mean field':>11} {'barrier':>9} {'simulated':>10} {'+-stderr':>9} "
            f"{'err MF':>8} {'err bar':>8} {'attn idle':>9} {'FFN idle':>8}"
        )
        lines += [header, "-" * len(header)]
        rows = self.table
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
                f"{row['stderr']:>9.2g} {100 * row['rel_err_mean_field']:>7.2f}% {100 * row['rel_err_barrier']:>7.2f}% "
                f"{max(row['attention_idle_fraction'], 0.0):>9.3f} {max(row['ffn_idle_fraction'], 0.0):>8.3f}"
                + (f"  <- {', '.join(tags)}" if tags else "")
            )
            last = row["ratio"]
        lines += [
            "",
            "Accuracy against simulation over all ratios shown",
            f"  mean field: max |rel. err| {100 * err['max_abs_rel_err_mean_field']:.2f}% (at r = {err['worst_ratio_mean_field']})",
            f"  barrier:    max |rel. err| {100 * err['max_abs_rel_err_barrier']:.2f}% (at r = {err['worst_ratio_barrier']})",
            f"  throughput lost by choosing r = {mf['ratio']} (mean field) instead of the simulated best: "
            f"{100 * err['loss_mean_field']:.2f}%",
            f"  throughput lost by choosing r = {br['ratio']} (barrier) instead of the simulated best: "
            f"{100 * err['loss_barrier']:.2f}%",
            "",
            f"Recommendation: r = {sim['ratio']} Attention instances per FFN instance"
            + (
                f" (mean field says {mf['ratio']}, barrier model {br['ratio']})."
                if (mf["ratio"], br["ratio"]) != (sim["ratio"], sim["ratio"])
                else " (mean field, barrier model and simulation agree)."
            ),
        ]
        return "\n".join(lines)

    # ------------------------------------------------------------------ plot
    def plot(self, path, title: str | None = None):
        """PNG: mean-field, barrier and simulated throughput against r, and idle fractions."""
        from .._plot import pyplot

        plt = pyplot()
        r = np.array([row["ratio"] for row in self.table])
        col = lambda k: np.array([row[k] for row in self.table], dtype=float)  # noqa: E731
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, gridspec_kw=dict(height_ratios=[2.2, 1]))
        ax.plot(r, col("mean_field"), "-", color="C1", lw=1.6, label="mean field (closed form)")
        ax.plot(r, col("barrier"), "-", color="C2", lw=1.6, label="barrier refinement (Gaussian)")
        ax.errorbar(r, col("simulated"), yerr=2 * np.nan_to_num(col("stderr")), fmt="o", ms=3.2, capsize=2,
                    color="C0", label="Monte Carlo (±2 s.e.)")
        mf, br, sim = self.mean_field, self.barrier, self.simulated
        ax.axvline(mf["r_star"], color="C1", ls=":", lw=1.2)
        ax.axvline(br["r_continuous"], color="C2", ls=":", lw=1.2)
        ax.axvline(sim["ratio"], color="C0", ls="--", lw=1.0)
        ymin, ymax = ax.get_ylim()
        ax.text(mf["r_star"], ymin + 0.04 * (ymax - ymin), f" r*={mf['r_star']:.2f}", color="C1", fontsize=8)
        ax.text(br["r_continuous"], ymin + 0.10 * (ymax - ymin), f" barrier {br['r_continuous']:.2f}",
                color="C2", fontsize=8)
        ax.text(sim["ratio"], ymin + 0.16 * (ymax - ymin), f" simulated best {sim['ratio']}", color="C0", fontsize=8)
        ax.set_ylabel("throughput per instance\n(tokens / time unit / instance)")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        if title:
            ax.set_title(title, fontsize=9)
        ax2.plot(r, col("attention_idle_fraction"), "o-", ms=2.5, label="attention idle")
        ax2.plot(r, col("ffn_idle_fraction"), "s-", ms=2.5, label="FFN idle")
        if self.idle_crossing is not None:
            ax2.axvline(self.idle_crossing, color="gray", ls=":", lw=1)
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_xlabel("A/F ratio r (Attention instances per FFN instance)")
        ax2.set_ylabel("idle fraction (simulated)")
        ax2.grid(alpha=0.3)
        ax2.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _step_model_line(micro_batches) -> str:
    if micro_batches is None:
        return "  step model: the paper's idealised overlap, tau = max(max_j t_A, t_C, t_F)"
    return (f"  step model: pipeline of {micro_batches} micro-batch(es) per instance (beta costs per micro-batch); "
            "mean field = pipeline period at mean loads, barrier = its Gaussian expected-max approximation")


def _pipeline_optima(workload, latency, batch_size, max_r: int, micro_batches: int):
    """Integer argmax of the pipeline mean-field and barrier-approximation curves over
    ``1..max_r``, and the continuous argmax of each (1/64 grid)."""
    mf, br, cont, mf_cont = _pipeline_optima_jit(workload, latency, batch_size, max_r, micro_batches)
    return int(mf), int(br), float(cont), float(mf_cont)


@eqx.filter_jit
def _pipeline_optima_jit(workload, latency, batch_size, max_r: int, micro_batches: int):
    mf_fn = lambda x: pipeline_throughput(workload, latency, batch_size, x, micro_batches)
    br_fn = lambda x: pipeline_barrier_throughput(workload, latency, batch_size, x, micro_batches)
    return (integer_argmax(mf_fn, max_r)[0], integer_argmax(br_fn, max_r)[0], grid_argmax(br_fn, max_r),
            grid_argmax(mf_fn, max_r))


def provision(
    key: jax.Array,
    workload: Workload,
    latency: LatencyModel,
    batch_size: int,
    ratios=None,
    num_steps: int = 4000,
    num_replicas: int = 16,
    *,
    settings: dict | None = None,
    micro_batches: int | None = None,
    **simulate_kwargs,
) -> ProvisionReport:
    """Answer "which r?" three ways and compare them.

    Runs :func:`~afdjax.simulate` over ``ratios`` (default :func:`default_ratio_range`)
    and evaluates the mean-field and barrier models at the same ratios.

    With ``micro_batches=m`` the simulation runs the micro-batch pipeline and the theory
    curves follow it: the mean-field curve is :func:`~afdjax.pipeline_throughput` (the
    pipeline period at mean loads) and the barrier curve
    :func:`~afdjax.pipeline_barrier_throughput`, an *approximation* (per-micro-batch
    attention time replaced by the Gaussian expected maximum over ``r`` instances). Their
    integer recommendations are the argmax of these curves over ``1..max(ratios)``; the
    reported ``r_star`` stays the paper's idealised closed form, and
    ``mean_field["r_star_pipeline"]`` is the continuous argmax of the pipeline mean-field
    curve (1/64 grid, at most ``max(ratios)``).

    **Returns:** a :class:`ProvisionReport` (``.format_text()``, ``.to_dict()``, ``.plot(path)``).
    """
    if ratios is None:
        ratios = default_ratio_range(workload, latency, batch_size)
    result = simulate(key, workload, latency, batch_size, ratios, num_steps, num_replicas,
                      micro_batches=micro_batches, **simulate_kwargs)
    r = np.asarray(result.ratios)
    rf = jnp.asarray(r, dtype=jnp.zeros(()).dtype)
    if micro_batches is None:
        mf_curve = np.asarray(jax.vmap(lambda x: mean_field_throughput(workload, latency, batch_size, x))(rf))
        br_curve = np.asarray(jax.vmap(lambda x: barrier_throughput(workload, latency, batch_size, x))(rf))
    else:
        m = result.micro_batches
        mf_curve = np.asarray(jax.vmap(lambda x: pipeline_throughput(workload, latency, batch_size, x, m))(rf))
        br_curve = np.asarray(jax.vmap(lambda x: pipeline_barrier_throughput(workload, latency, batch_size, x, m))(rf))
    sim = np.asarray(result.throughput_per_instance, dtype=float)
    se = np.asarray(result.stderr, dtype=float)
    att = np.asarray(result.attention_idle_fraction, dtype=float)
    ffn = np.asarray(result.ffn_idle_fraction, dtype=float)

    opt = mean_field_optimum(workload, latency, batch_size)
    max_r = int(r.max())
    mf_ratio = int(mean_field_integer_ratio(workload, latency, batch_size, max_ratio=max_r))
    bopt = barrier_optimum(workload, latency, batch_size, max_r)
    bopt_ratio, bopt_continuous = int(bopt.ratio), float(bopt.r_continuous)
    r_star_pipeline = None
    if micro_batches is not None:
        mf_ratio, bopt_ratio, bopt_continuous, r_star_pipeline = _pipeline_optima(
            workload, latency, batch_size, max_r, result.micro_batches)
    best = int(np.argmax(sim))
    neighbours = [_paired(result, best, j) for j in (best - 1, best + 1) if 0 <= j < len(r)]
    within = [int(r[j]) for j in range(len(r)) if j == best or _paired(result, best, j)["z"] <= 2]
    rel_mf = mf_curve / sim - 1.0
    rel_br = br_curve / sim - 1.0

    def sim_at(ratio: int) -> float:
        idx = np.nonzero(r == ratio)[0]
        return float(sim[idx[0]]) if len(idx) else float("nan")

    table = [
        dict(
            ratio=int(r[i]),
            mean_field=float(mf_curve[i]),
            barrier=float(br_curve[i]),
            simulated=float(sim[i]),
            stderr=float(se[i]),
            rel_err_mean_field=float(rel_mf[i]),
            rel_err_barrier=float(rel_br[i]),
            attention_idle_fraction=float(att[i]),
            ffn_idle_fraction=float(ffn[i]),
        )
        for i in range(len(r))
    ]
    i_mf, i_br = int(np.argmax(np.abs(rel_mf))), int(np.argmax(np.abs(rel_br)))
    errors = dict(
        max_abs_rel_err_mean_field=float(np.abs(rel_mf[i_mf])),
        worst_ratio_mean_field=int(r[i_mf]),
        max_abs_rel_err_barrier=float(np.abs(rel_br[i_br])),
        worst_ratio_barrier=int(r[i_br]),
        loss_mean_field=1.0 - sim_at(mf_ratio) / sim[best],
        loss_barrier=1.0 - sim_at(bopt_ratio) / sim[best],
        rel_gap_r_star=(float(opt.r_star) - int(r[best])) / int(r[best]),
    )
    base_settings = dict(workload=workload.describe(), hardware="custom", seed=None)
    return ProvisionReport(
        settings=dict(base_settings, **(settings or {}), batch_size=int(batch_size), steps=int(num_steps), replicas=int(num_replicas),
                      latency_coefficients=latency.coefficients(), comm_scaling=latency.comm_scaling,
                      micro_batches=result.micro_batches),
        theta=float(workload.theta()),
        slot_variance=float(workload.slot_variance()),
        mean_field=dict(
            r_attention=float(opt.r_attention),
            r_communication=float(opt.r_communication),
            r_peak=float(opt.r_peak),
            r_star=float(opt.r_star),
            regime=opt.regime_name,
            ratio=mf_ratio,
            **({} if r_star_pipeline is None else dict(r_star_pipeline=r_star_pipeline)),
        ),
        barrier=dict(ratio=bopt_ratio, r_continuous=bopt_continuous),
        simulated=dict(
            ratio=int(r[best]),
            throughput=float(sim[best]),
            stderr=float(se[best]),
            neighbours=neighbours,
            distinguishable=bool(all(abs(nb["z"]) > 2 for nb in neighbours)),
            within_2_stderr=within,
        ),
        table=table,
        errors=errors,
        idle_crossing=_crossing(r, att, ffn),
    )
