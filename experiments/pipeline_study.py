"""Micro-batch pipelining on the paper baseline: period and throughput against m.

Paper baseline (paper-910c, B = 256, Geometric mu_p = 100, mu_d = 500), r = 8, 9, 10.
For the paper's idealised step (m = none) and m = 1..4 micro-batches per instance it
prints the simulated time per step (period), throughput per instance (+- s.e.) and
pipeline bubble fraction, next to the closed-form pipeline period at mean loads. A
second table repeats the closed form with the fixed costs beta set to 0 (where more
micro-batches only help), and a third shows the "A/F > 2C" rule.

    python experiments/pipeline_study.py          # ~30-60 s on 2 CPU cores
    python experiments/pipeline_study.py --quick  # fewer steps
"""

from __future__ import annotations

import argparse
import time

import jax

import afdjax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    steps = 300 if args.quick else args.steps
    t0 = time.perf_counter()
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    wl = afdjax.Geometric(100.0, 500.0)
    B, ratios = 256, [8, 9, 10]
    print(f"paper-910c, B = {B}, Geometric(mu_p=100, mu_d=500); {steps} steps x {args.replicas} replicas, seed 0")
    print("period = simulated time per decode step (all micro-batches); closed form = pipeline period at mean loads")
    print()
    header = f"{'m':>4} {'r':>3} {'period':>9} {'closed form':>11} {'throughput/inst':>16} {'+-se':>7} {'bubble':>7}"
    print(header)
    print("-" * len(header))
    for model in (afdjax.Barrier(), *(afdjax.Pipeline(m) for m in (1, 2, 3, 4))):
        # default warm-up: the step model's (the pipeline fill is not measured)
        res = afdjax.simulate(jax.random.key(0), wl, lat, B, ratios, steps, args.replicas, step_model=model)
        m = model.micro_batches
        for i, r in enumerate(ratios):
            closed = float(model.cycle_time(wl, lat, B, r))
            print(
                f"{'none' if m is None else m:>4} {r:>3} {float(res.mean_cycle_time[i]):>9.2f} {closed:>11.2f} "
                f"{float(res.throughput_per_instance[i]):>16.4f} {float(res.stderr[i]):>7.4f} "
                f"{max(float(res.pipeline_bubble_fraction[i]), 0.0):>7.3f}"
            )
    print()
    zero = afdjax.LatencyModel(alpha_a=0.00165, beta_a=0.0, alpha_f=0.083, beta_f=0.0, alpha_c=0.022, beta_c=0.0)
    print(
        "closed form, same alphas with beta_a = beta_f = beta_c = 0, r = 9 (period; paper max = "
        f"{float(afdjax.mean_field_cycle_time(wl, zero, B, 9)):.2f}):"
    )
    print(
        "  " + "  ".join(f"m={m}: {float(afdjax.Pipeline(m).cycle_time(wl, zero, B, 9)):.2f}" for m in (1, 2, 3, 4, 8))
    )
    print()
    print("A/F > 2C rule (m = 3, t_A = t_F = c per micro-batch, t_C = 1): period / 3c")
    print(
        "  "
        + "  ".join(
            f"c={c:g}: {float(afdjax.pipeline_period(c, 1.0, c, 3)) / (3 * c):.3f}" for c in (1.0, 1.5, 2.0, 2.5, 3.0)
        )
    )
    print()
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
