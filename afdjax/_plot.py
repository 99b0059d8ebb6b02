"""Matplotlib figures (host side; imported lazily so the library never needs a display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """pyplot, with the non-interactive Agg backend unless the user already chose one
    (an imported pyplot, or ``MPLBACKEND`` as Jupyter kernels set it): figures are only
    ever written to files, and a notebook's inline plotting must keep working."""
    import os
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_simulation(result, path, title: str | None = None, time_unit: str = "time unit") -> Path:
    """Write a PNG: throughput per instance against r (error bars: 2 standard errors),
    and the attention / FFN idle fractions below it.

    Arguments:
        result: a [`SimulationResult`][afdjax.SimulationResult].
        path: the PNG file to write.
        title: the figure title (``None``: none).
        time_unit: the coefficients' time unit, for the axis labels.

    Returns:
        the ``pathlib.Path`` written.
    """
    plt = pyplot()
    r = np.asarray(result.ratios)
    thr = np.asarray(result.throughput_per_instance)
    se = np.nan_to_num(np.asarray(result.stderr))
    best = result.best_index()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    ax.errorbar(r, thr, yerr=2 * se, fmt="o-", ms=3.5, capsize=2.5, color="C0", label="simulated (±2 s.e.)")
    ax.axvline(r[best], color="C3", ls="--", lw=1)
    right_half = r[best] > (r.min() + r.max()) / 2
    ax.annotate(
        f"best r = {r[best]}",
        xy=(r[best], thr[best]),
        xytext=(-8 if right_half else 8, -16),
        textcoords="offset points",
        ha="right" if right_half else "left",
        color="C3",
    )
    ax.set_ylabel(f"throughput per instance\n(tokens / {time_unit} / instance)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    ax2.plot(r, np.asarray(result.attention_idle_fraction), "o-", ms=3, label="attention idle")
    ax2.plot(r, np.asarray(result.ffn_idle_fraction), "s-", ms=3, label="FFN idle")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_xlabel("A/F ratio r (Attention instances per FFN instance)")
    ax2.set_ylabel("idle fraction")
    ax2.grid(alpha=0.3)
    ax2.legend(loc="best")
    fig.tight_layout()
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"cannot write plot {str(path)!r}: folder {str(path.parent)!r} does not exist")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
