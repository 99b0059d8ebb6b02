"""Figures of the provisioning reports and of ``afdjax verify`` (host-side matplotlib only,
imported lazily through ``_plot.pyplot``; the numbers come from ``_report``,
``_constraints`` and ``_verify``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._plot import pyplot
from ._text import OBJECTIVE_UNITS


def provision_plot(report, path, title: str | None = None):
    """PNG: mean-field, barrier and simulated throughput against r, and idle fractions."""
    plt = pyplot()
    r = np.array([row["ratio"] for row in report.table])
    col = lambda k: np.array([row[k] for row in report.table], dtype=float)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
    ax.plot(r, col("mean_field"), "-", color="C1", lw=1.6, label="mean field (closed form)")
    ax.plot(r, col("barrier"), "-", color="C2", lw=1.6, label="barrier refinement (Gaussian)")
    ax.errorbar(
        r,
        col("simulated"),
        yerr=2 * np.nan_to_num(col("stderr")),
        fmt="o",
        ms=3.2,
        capsize=2,
        color="C0",
        label="Monte Carlo (±2 s.e.)",
    )
    mf, br, sim = report.mean_field, report.barrier, report.simulated
    ax.axvline(mf["r_star"], color="C1", ls=":", lw=1.2)
    ax.axvline(br["r_continuous"], color="C2", ls=":", lw=1.2)
    ax.axvline(sim["ratio"], color="C0", ls="--", lw=1.0)
    ymin, ymax = ax.get_ylim()
    ax.text(mf["r_star"], ymin + 0.04 * (ymax - ymin), f" r*={mf['r_star']:.2f}", color="C1", fontsize=8)
    ax.text(
        br["r_continuous"], ymin + 0.10 * (ymax - ymin), f" barrier {br['r_continuous']:.2f}", color="C2", fontsize=8
    )
    ax.text(sim["ratio"], ymin + 0.16 * (ymax - ymin), f" simulated best {sim['ratio']}", color="C0", fontsize=8)
    ax.set_ylabel("throughput per instance\n(tokens / time unit / instance)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    ax2.plot(r, col("attention_idle_fraction"), "o-", ms=2.5, label="attention idle")
    ax2.plot(r, col("ffn_idle_fraction"), "s-", ms=2.5, label="FFN idle")
    if report.idle_crossing is not None:
        ax2.axvline(report.idle_crossing, color="gray", ls=":", lw=1)
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("A/F ratio r (Attention instances per FFN instance)")
    ax2.set_ylabel("idle fraction (simulated)")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def constrained_plot(report, path, title: str | None = None):
    """PNG: the (B, r) grid coloured by the objective, infeasible cells marked by the
    constraint they violate, the recommendation starred; and TPOT against r per B."""
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    plt = pyplot()
    batches = [p["batch_size"] for p in report.per_batch]
    ratios = sorted({cell["ratio"] for cell in report.cells})
    grid = np.full((len(batches), len(ratios)), np.nan)
    for cell in report.cells:
        if cell["objective"] is not None:
            grid[batches.index(cell["batch_size"]), ratios.index(cell["ratio"])] = cell["objective"]
    has_tpot = report.constraints.num_layers is not None
    fig, axes = plt.subplots(2 if has_tpot else 1, 1, figsize=(9, 7 if has_tpot else 4.2), squeeze=False)
    ax = axes[0, 0]
    norm = Normalize(vmin=np.nanmin(grid), vmax=np.nanmax(grid))
    im = ax.imshow(
        grid,
        aspect="auto",
        origin="lower",
        cmap="viridis",
        norm=norm,
        extent=(ratios[0] - 0.5, ratios[-1] + 0.5, -0.5, len(batches) - 0.5),
    )
    for cell in report.cells:
        if not cell["feasible"]:
            y = batches.index(cell["batch_size"])
            mark = "".join(sorted({"kv": "K", "tpot": "T"}[v] for v in cell["violated"]))
            ax.add_patch(plt.Rectangle((cell["ratio"] - 0.5, y - 0.5), 1, 1, fc="white", alpha=0.55, ec="none"))
            ax.text(cell["ratio"], y, mark, ha="center", va="center", fontsize=6, color="black")
    if report.recommendation:
        ax.plot(
            report.recommendation["ratio"],
            batches.index(report.recommendation["batch_size"]),
            "*",
            ms=14,
            color="red",
            mec="white",
            label="recommendation",
        )
    ax.set_yticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel("A/F ratio r")
    ax.set_ylabel("batch size B")
    fig.colorbar(im, ax=ax, label=OBJECTIVE_UNITS[report.objective])
    ax.legend(
        handles=[Patch(fc="white", ec="gray", alpha=0.55, label="infeasible (K: KV capacity, T: TPOT)")]
        + (
            [plt.Line2D([], [], marker="*", ls="", color="red", ms=10, label="recommendation")]
            if report.recommendation
            else []
        ),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=2,
        fontsize=7,
        frameon=False,
    )
    if title:
        fig.suptitle(title, fontsize=9)
    if has_tpot:
        ax2 = axes[1, 0]
        key = "tpot_p99_ms" if report.constraints.tpot_statistic == "p99" else "tpot_mean_ms"
        for k, b in enumerate(batches):
            rows = [cell for cell in report.cells if cell["batch_size"] == b]
            ax2.plot(
                [cell["ratio"] for cell in rows],
                [cell[key] for cell in rows],
                "o-",
                ms=2.5,
                color=f"C{k}",
                label=f"B = {b}",
            )
        if report.constraints.tpot_target_ms is not None:
            ax2.axhline(report.constraints.tpot_target_ms, color="red", ls="--", lw=1, label="target")
        ax2.set_xlabel("A/F ratio r")
        ax2.set_ylabel(f"TPOT {report.constraints.tpot_statistic} (ms)")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def verification_plots(out: Path, rows: list[dict], reports: dict) -> list[str]:
    """The figures of ``afdjax verify`` in ``out``; returns their file names."""
    plt = pyplot()
    written = []
    batch = [r for r in rows if r["study"] == "batch"]
    if batch:
        fig, ax = plt.subplots(figsize=(6, 4))
        B = [r["batch_size"] for r in batch]
        ax.plot(B, [r["r_star"] for r in batch], "o-", label="mean-field r*")
        ax.plot(B, [r["r_barrier_continuous"] for r in batch], "s--", label="barrier optimum (continuous)")
        ax.plot(B, [r["ratio_simulated"] for r in batch], "D", ms=7, label="simulated best (integer)")
        ax.plot(B, [r["r_star_paper_reported"] for r in batch], "x", ms=8, color="k", label="paper, reported")
        ax.set_xscale("log", base=2)
        ax.set_xticks(B, [str(b) for b in B])
        ax.set_xlabel("batch size B (slots per Attention instance)")
        ax.set_ylabel("optimal A/F ratio")
        ax.set_title("r* against batch size (mu_p = 100, mu_d = 500)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "rstar_vs_batch.png", dpi=120)
        plt.close(fig)
        written.append("rstar_vs_batch.png")
    ctx = sorted([r for r in rows if r["study"] in ("workload", "trace")], key=lambda r: r["theta"])
    if ctx:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        th = [r["theta"] for r in ctx]
        ax.plot(th, [r["r_star"] for r in ctx], "o", label="mean-field r*")
        ax.plot(th, [r["r_barrier_continuous"] for r in ctx], "s", mfc="none", label="barrier optimum")
        ax.plot(th, [r["ratio_simulated"] for r in ctx], "D", ms=4, label="simulated best")
        for r in ctx:
            ax.annotate(
                r["label"].replace("B=256, ", ""),
                (r["theta"], r["r_star"]),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("context length: stationary mean KV tokens per slot theta")
        ax.set_ylabel("optimal A/F ratio")
        ax.set_title("r* against context length (B = 256)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "rstar_vs_context.png", dpi=120)
        plt.close(fig)
        written.append("rstar_vs_context.png")
    base = reports.get("B=256, mu_p=100, mu_d=500")
    if base is not None:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        r = [row["ratio"] for row in base.table]
        ax.plot(r, [row["attention_idle_fraction"] for row in base.table], "o-", ms=3, label="attention idle")
        ax.plot(r, [row["ffn_idle_fraction"] for row in base.table], "s-", ms=3, label="FFN idle")
        if base.idle_crossing is not None:
            ax.axvline(base.idle_crossing, color="gray", ls=":")
            ax.text(base.idle_crossing, 0.9, f" cross at r = {base.idle_crossing:.2f}", fontsize=8)
        ax.axvline(base.mean_field["r_star"], color="C1", ls="--", lw=1)
        ax.set_xlabel("A/F ratio r")
        ax.set_ylabel("idle fraction (simulated)")
        ax.set_title("Idle fractions, paper baseline (B = 256, mu_p = 100, mu_d = 500)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "idle_fractions.png", dpi=120)
        plt.close(fig)
        written.append("idle_fractions.png")
    for name, rep in reports.items():
        fname = "provision_" + "".join(c if c.isalnum() else "_" for c in name).strip("_") + ".png"
        rep.plot(out / fname, title=name)
        written.append(fname)
    return written
