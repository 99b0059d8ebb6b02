"""The figure of ``afdjax compare --plot`` (host-side matplotlib via ``_plot.pyplot``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._plot import pyplot


def comparison_plot(comparison, path, title: str | None = None) -> Path:
    """PNG: the best AFD throughput per device at each ratio r (over batch sizes), the
    chosen AFD configuration marked, and the best co-located level as a horizontal line."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(f"cannot write plot {str(path)!r}: folder {str(path.parent)!r} does not exist")
    plt = pyplot()
    curve, a, c = comparison.curve, comparison.afd, comparison.colocated
    r = np.asarray(curve["ratios"], dtype=float)
    thr = np.array([np.nan if v is None else v for v in curve["afd_throughput_per_device"]], dtype=float)
    used = np.array([np.nan if v is None else v for v in curve["afd_throughput_per_used_device"]], dtype=float)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.plot(r, thr, "o-", ms=3, color="C0", label="AFD, best batch size at each r (closed form)")
    ax.plot(r, used, ":", color="C0", lw=1, label="AFD per device used (idle leftover devices not counted)")
    ax.plot([a["ratio"]], [a["throughput_per_device"]], "*", ms=12, color="C0", label=f"AFD best: r = {a['ratio']}")
    ax.axhline(
        c["throughput_per_device"],
        color="C3",
        ls="--",
        label=f"co-located: EP {c['ranks_per_group']} x {c['groups']}, B = {c['batch_size']}",
    )
    ax.set_xlabel("A/F ratio r (Attention instances per FFN instance)")
    ax.set_ylabel("output tokens / s per device")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
