"""Figures of open-loop runs: TPOT and TTFT against the arrival rate and against r."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._plot import pyplot


def plot_serve(result, path, title: str | None = None, time_unit: str = "time unit") -> Path:
    """Write a PNG: mean and p99 TPOT and TTFT against the arrival rate (one line per ratio)
    and against r (one line per rate); saturated points are drawn hollow."""
    plt = pyplot()
    r = np.asarray(result.ratios)
    x = np.asarray(result.arrival_rates)
    sat = np.asarray(result.saturated)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for row, name in enumerate(("tpot", "ttft")):
        mean = np.asarray(getattr(result, f"{name}_mean"))
        p99 = np.asarray(getattr(result, f"{name}_p99"))
        ax = axes[row, 0]
        for i, ratio in enumerate(r):
            line = ax.plot(x, mean[i], "o-", ms=3, label=f"r = {ratio} mean")[0]
            ax.plot(x, p99[i], "s--", ms=3, color=line.get_color(), label=f"r = {ratio} p99")
            ax.plot(x[sat[i]], p99[i][sat[i]], "s", mfc="none", color="k", ms=7)
        ax.set_xlabel(f"arrival rate per Attention instance (per {time_unit})")
        ax.set_ylabel(f"{name.upper()} ({time_unit})")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        for k, rate in enumerate(x):
            line = ax.plot(r, mean[:, k], "o-", ms=3, label=f"X = {rate:.3g} mean")[0]
            ax.plot(r, p99[:, k], "s--", ms=3, color=line.get_color(), label=f"X = {rate:.3g} p99")
        ax.set_xlabel("A/F ratio r")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
