"""The residual plot of a :class:`~afdjax.LatencyFit` (matplotlib, host side)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._latency_observations import STAGES, TIME_COLUMNS

_X_LABELS = {
    "attention": "KV tokens per Attention instance T",
    "ffn": "aggregated FFN batch r*B (tokens)",
    "comm": {"batch": "batch size B (tokens)", "ratio_batch": "r*B (tokens)"},
}


def plot_latency_residuals(self, path, time_unit: str = "time unit") -> Path:
    """Write a PNG: for each stage, measured times and the fitted line against ``x``
    (top) and the residuals (bottom; dashed: ``-+ delta`` for Huber)."""
    from .._plot import pyplot

    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"cannot write plot {str(path)!r}: folder {str(path.parent)!r} does not exist")
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), gridspec_kw=dict(height_ratios=[2, 1]))
    for col, stage in enumerate(STAGES):
        fit = self.stages[stage]
        top, bottom = axes[0, col], axes[1, col]
        label = _X_LABELS[stage]
        xlabel = label[self.comm_scaling] if isinstance(label, dict) else label
        top.set_title(f"{stage}: {TIME_COLUMNS[stage]}", fontsize=10)
        if fit.source != "fit":
            for ax in (top, bottom):
                ax.text(
                    0.5,
                    0.5,
                    "no observations:\nkept from defaults",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                )
                ax.set_xticks([])
                ax.set_yticks([])
            continue
        a, b = fit.estimate
        far = np.abs(fit.residuals) > fit.huber_delta if fit.huber_delta is not None else np.zeros(fit.num_rows, bool)
        ms = 3 if fit.num_rows <= 500 else 1
        top.plot(fit.x[~far], fit.y[~far], "o", ms=ms, color="C0", label="measured")
        if far.any():
            top.plot(fit.x[far], fit.y[far], "x", ms=ms + 2, color="C3", label="beyond Huber delta")
        grid = np.linspace(min(0.0, fit.x.min()), fit.x.max(), 100)
        top.plot(grid, a * grid + b, "-", color="C1", label=f"fit {a:.4g} x + {b:.4g}")
        top.set_ylabel(f"time ({time_unit})")
        top.grid(alpha=0.3)
        top.legend(loc="upper left", fontsize=8)
        bottom.axhline(0, color="C1", lw=1)
        bottom.sharex(top)
        bottom.plot(fit.x, fit.residuals, "o", ms=ms, color="C0")
        if fit.huber_delta is not None:
            for s in (-1, 1):
                bottom.axhline(s * fit.huber_delta, color="C3", ls="--", lw=0.8)
        bottom.set_xlabel(xlabel)
        bottom.set_ylabel(f"residual ({time_unit})")
        bottom.grid(alpha=0.3)
        bottom.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        top.tick_params(labelbottom=False)
    fig.suptitle(f"latency fit: {Path(self.source).name}, loss {self.loss}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
