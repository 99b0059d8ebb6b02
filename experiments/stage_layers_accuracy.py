"""K sampled layers against the exact per-layer simulation (issue 13).

With random stage times the engine represents a model's ``L`` layers by
``K = min(L, stage_layers)`` sampled layers, each standing for ``L / K`` layers
(:mod:`afdjax._step._stage_times`). For the barrier the mean step time is exact and the
per-step spread of the layer sum is overstated by up to ``sqrt(L / K)``; for the pipeline
``K`` passes approximate ``L``. This script runs the exact simulation (``stage_layers = L``,
every layer drawn) and the sampled one (``K`` = 4, 8, 16) on the same configuration and
prints, per ratio, the relative error of the mean step time (with its standard error) and of
the step-time quantiles, and the ratio of the step-time standard deviations.

    python experiments/stage_layers_accuracy.py           # ~ a few minutes on 2 CPU cores
    python experiments/stage_layers_accuracy.py --quick   # smaller
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import afdjax

LEVELS = (0.1, 0.5, 0.9, 0.99)


def latency(layers: int) -> afdjax.LatencyModel:
    """paper-910c with DeepSeek-V3-like stage randomness: 61 layers, 256 experts, top-8, 16 ranks."""
    base = afdjax.LatencyModel.from_preset("paper-910c")
    return afdjax.LatencyModel(
        **base.coefficients(),
        num_layers=layers,
        noise=afdjax.StageNoise(attention_cv=0.15, ffn_cv=0.1, comm_cv=0.2),
        routing=afdjax.ExpertRouting(256, 8, 16, skew=0.6),
    )


def run(step_model, lat, B, ratios, steps, replicas, seed):
    res = afdjax.simulate(
        jax.random.key(seed),
        afdjax.Geometric(2000.0, 500.0),
        lat,
        B,
        ratios,
        steps,
        replicas,
        step_model=step_model,
        quantile_levels=LEVELS,
    )
    r = np.asarray(ratios, float)
    per_replica = r * B / ((r + 1) * np.asarray(res.throughput_per_replica))  # (R, n) mean step time
    return dict(
        mean=np.asarray(res.mean_cycle_time),
        se=per_replica.std(axis=0, ddof=1) / np.sqrt(replicas),
        std=np.asarray(res.cycle_time_std),
        q=np.asarray(res.cycle_time_quantiles),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    L, B, ratios = 61, 64, [1, 2, 4, 8]
    steps, replicas = (300, 4) if args.quick else (1500, 8)
    lat = latency(L)
    print(f"L = {L} layers, B = {B}, Geometric(2000, 500), paper-910c + StageNoise(0.15, 0.1, 0.2) +")
    print(f"ExpertRouting(256, 8, ranks=16, skew=0.6); {steps} steps x {replicas} replicas per run")
    models = (("barrier", lambda k: afdjax.Barrier(stage_layers=k)), ("pipeline m=2", lambda k: afdjax.Pipeline(2, k)))
    for name, make in models:
        exact = run(make(L), lat, B, ratios, steps // (4 if "pipe" in name else 1), replicas, 1)
        print(f"\n{name}: exact (K = L = {L}) mean step time per ratio {np.round(exact['mean'], 3).tolist()}")
        print(
            f"{'K':>4} {'r':>3} {'mean err %':>10} {'(se %)':>8} {'std ratio':>9} "
            + " ".join(f"{'q' + format(lv, 'g') + ' err %':>11}" for lv in LEVELS)
        )
        for K in (4, 8, 16):
            approx = run(make(K), lat, B, ratios, steps // (4 if "pipe" in name else 1), replicas, 2)
            err = 100 * (approx["mean"] / exact["mean"] - 1)
            se = 100 * np.hypot(approx["se"], exact["se"]) / exact["mean"]
            qerr = 100 * (approx["q"] / exact["q"] - 1)
            for i, r in enumerate(ratios):
                print(
                    f"{K:>4} {r:>3} {err[i]:>10.3f} {se[i]:>8.3f} {approx['std'][i] / exact['std'][i]:>9.2f} "
                    + " ".join(f"{x:>11.3f}" for x in qerr[i])
                )
        print("  (spread bound sqrt(L/K): " + ", ".join(f"K={k} {np.sqrt(L / k):.2f}" for k in (4, 8, 16)) + ")")


if __name__ == "__main__":
    main()
