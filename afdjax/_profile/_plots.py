"""Plot of a profile: measured stage times against the fitted lines, and the residuals."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._plot import pyplot
from ._holdout import held_out_mask


def plot_profile(result, path) -> Path:
    """Write a PNG: per measured stage, the measured times (fitted sizes as dots, held-out
    sizes as squares) with the fitted line (top), and the relative residuals
    ``(fit - measured) / measured`` in percent with the 15 % band (bottom)."""
    r = result
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"cannot write plot {str(path)!r}: folder {str(path.parent)!r} does not exist")
    plt = pyplot()
    stages = list(r.measurements)
    fig, axes = plt.subplots(
        2, len(stages), figsize=(4.2 * len(stages), 6.2), squeeze=False, gridspec_kw={"height_ratios": [2, 1]}
    )
    labels = {"attention": "KV tokens T", "ffn": "FFN batch N (tokens)", "comm": "tokens B"}
    lat = r.latency
    for col, stage in enumerate(stages):
        sizes, med, _ = r.measurements[stage]
        hold = held_out_mask(len(sizes))
        if stage == "attention":
            line = lambda x: lat.alpha_a * x + lat.beta_a
        elif stage == "ffn":
            line = lambda x: lat.alpha_f * x + lat.beta_f
        else:
            line = lambda x: lat.alpha_c * x + lat.beta_c
        fitted = np.array([float(line(x)) for x in sizes])
        top, bottom = axes[0, col], axes[1, col]
        top.plot(sizes[~hold], med[~hold], "o", ms=4, color="C0", label="measured, fitted")
        top.plot(sizes[hold], med[hold], "s", ms=5, mfc="none", color="C3", label="measured, held out")
        grid = np.linspace(0, sizes.max(), 100)
        top.plot(grid, [float(line(x)) for x in grid], "-", color="C1", label="fit")
        top.set_title(f"{stage} (us per layer)", fontsize=10)
        top.grid(alpha=0.3)
        top.legend(fontsize=8, loc="upper left")
        rel = 100 * (fitted - med) / med
        bottom.axhline(0, color="C1", lw=1)
        for s_ in (-15, 15):
            bottom.axhline(s_, color="C3", ls="--", lw=0.8)
        bottom.plot(sizes[~hold], rel[~hold], "o", ms=4, color="C0")
        bottom.plot(sizes[hold], rel[hold], "s", ms=5, mfc="none", color="C3")
        bottom.set_xlabel(labels[stage])
        bottom.set_ylabel("(fit - measured) / measured, %")
        bottom.grid(alpha=0.3)
    fig.suptitle(f"afdjax profile: {r.base_model} x {r.scale:g} on {r.device}, {r.dtype}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
