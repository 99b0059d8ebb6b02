"""The concept pages' figures (docs/figures/*.png), from afdjax's own functions.

Run from the repository root: ``python docs/scripts/make_figures.py [NAME ...]`` (about a
minute on 2 CPU cores; the serving figure runs a small open-loop simulation, the others
are closed forms). The PNGs are committed; rerun this after a change that moves a curve.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import afdjax

OUT = Path(__file__).resolve().parents[1] / "figures"
WORKLOAD = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
LATENCY = afdjax.LatencyModel.from_preset("paper-910c")
B = 256
RATIOS = np.arange(1.0, 32.01, 0.25)


def _save(fig, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(OUT / f"{name}.png", dpi=110)
    plt.close(fig)
    print("wrote", OUT / f"{name}.png")


def model() -> None:
    """Throughput per instance against r: mean field and Gaussian barrier, with r_A and r_peak."""
    mf = [float(afdjax.mean_field_throughput(WORKLOAD, LATENCY, B, r)) for r in RATIOS]
    br = np.asarray(jax.vmap(lambda r: afdjax.barrier_throughput(WORKLOAD, LATENCY, B, r))(RATIOS))
    opt = afdjax.mean_field_optimum(WORKLOAD, LATENCY, B)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(RATIOS, mf, label="mean field")
    ax.plot(RATIOS, br, label="Gaussian barrier")
    ax.axvline(float(opt.r_attention), color="grey", ls="--", lw=1)
    ax.text(float(opt.r_attention) + 0.3, min(mf) + 0.05, "$r_A$", color="grey")
    ax.axvline(float(opt.r_peak), color="grey", ls=":", lw=1)
    ax.text(float(opt.r_peak) + 0.3, min(mf) + 0.05, "$r_{peak}$", color="grey")
    ax.set_xlabel("A/F ratio r")
    ax.set_ylabel("tokens / time unit / instance")
    ax.set_title("paper-910c, B = 256, Geometric(mu_P = 100, mu_D = 500)")
    ax.legend()
    _save(fig, "model")


def workloads() -> None:
    """Decode lengths of the Azure conversation trace against the geometric law of the same mean."""
    trace = afdjax.load_trace("azure-conv")
    _, decode = trace.sample(jax.random.key(0), (200_000,))
    decode = np.asarray(decode)
    mean = decode.mean()
    geometric = afdjax.Geometric(mu_p=100.0, mu_d=float(mean - 1.0))
    _, gdecode = geometric.sample(jax.random.key(1), (200_000,))
    bins = np.unique(np.round(np.logspace(0, np.log10(max(decode.max(), 2.0)) + 0.01, 40))) + 0.5
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.hist(decode, bins=bins, density=True, alpha=0.6, label="azure-conv trace (resampled)")
    ax.hist(np.asarray(gdecode), bins=bins, density=True, histtype="step", lw=2, label="geometric, same mean")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("decode steps D")
    ax.set_ylabel("density")
    ax.set_title(f"decode lengths (mean {mean:.0f} steps)")
    ax.legend()
    _save(fig, "workloads")


def step_models() -> None:
    """Closed-form throughput of the m-micro-batch pipeline against the paper's idealised step."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    mf = [float(afdjax.mean_field_throughput(WORKLOAD, LATENCY, B, r)) for r in RATIOS]
    ax.plot(RATIOS, mf, color="black", label="idealised overlap (paper)")
    for m in (1, 2, 3, 4):
        tp = np.asarray(jax.vmap(lambda r, m=m: afdjax.pipeline_throughput(WORKLOAD, LATENCY, B, r, m))(RATIOS))
        ax.plot(RATIOS, tp, label=f"pipeline, m = {m}")
    ax.set_xlabel("A/F ratio r")
    ax.set_ylabel("tokens / time unit / instance")
    ax.set_title("mean-field throughput, paper-910c, B = 256")
    ax.legend(fontsize=8)
    _save(fig, "step_models")


def stage_times() -> None:
    """Barrier throughput with per-layer attention jitter: the optimum moves down."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    base = LATENCY.coefficients()
    for cv in (0.0, 0.1, 0.2, 0.3):
        lat = afdjax.LatencyModel(**base, num_layers=61, noise=afdjax.StageNoise(attention_cv=cv))
        tp = np.asarray(jax.vmap(lambda r, lat=lat: afdjax.barrier_throughput(WORKLOAD, lat, B, r))(RATIOS))
        best = RATIOS[int(np.argmax(tp))]
        ax.plot(RATIOS, tp, label=f"attention cv = {cv:g} (best r = {best:.1f})")
    ax.set_xlabel("A/F ratio r")
    ax.set_ylabel("tokens / time unit / instance")
    ax.set_title("barrier closed form, 61 layers, paper-910c, B = 256")
    ax.legend(fontsize=8)
    _save(fig, "stage_times")


def serving() -> None:
    """TPOT p99 against the arrival rate per Attention instance (open loop)."""
    rates = np.linspace(0.0004, 0.0016, 7)
    res = afdjax.serve(
        jax.random.key(0),
        afdjax.load_trace("azure-conv"),
        LATENCY,
        64,
        [2, 4, 8],
        rates.tolist(),
        num_steps=1500,
        num_replicas=2,
    )
    tpot = np.asarray(res.tpot_quantiles)  # (ratios, rates, levels)
    levels = list(np.asarray(res.quantile_levels))
    k = int(np.argmin(np.abs(np.asarray(levels) - 0.99)))
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, r in enumerate([2, 4, 8]):
        ax.plot(rates * 1e3, tpot[i, :, k], marker="o", label=f"r = {r}")
    ax.set_xlabel("arrival rate per Attention instance (per 1000 time units)")
    ax.set_ylabel("TPOT p99 (time units)")
    ax.set_title("azure-conv, paper-910c, B = 64")
    ax.legend()
    _save(fig, "serving")


def colocated() -> None:
    """AFD throughput per device against r, with the co-located optimum as a line (closed form)."""
    cmp = afdjax.compare(afdjax.Geometric(mu_p=100.0, mu_d=500.0), "h100:deepseek-v3", 64, num_steps=0)
    curve = cmp.curve
    ratios = np.asarray(curve["ratios"], dtype=float)
    values = np.asarray([np.nan if v is None else v for v in curve["afd_throughput_per_device"]], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(ratios, values, marker=".", label="AFD, best batch per r")
    ax.axhline(cmp.colocated["throughput_per_device"], color="C1", ls="--", label="co-located, best")
    ax.set_xlabel("A/F ratio r")
    ax.set_ylabel("output tokens / s / device")
    ax.set_title("h100:deepseek-v3, 64 devices (closed form)")
    ax.legend()
    _save(fig, "colocated")


FIGURES = {f.__name__: f for f in (model, workloads, step_models, stage_times, serving, colocated)}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(FIGURES):
        FIGURES[name]()
