"""Coverage of afdjax.calibrate's 95 % intervals over synthetic ratio sweeps, and the held-out
error of the fit with and without the stage-noise term (issue 13, scope 5).

Each seed: the truth (six coefficients, attention_cv = 0.1, one barrier per step) simulated
for two Fixed workloads (prefill 1000 and 3000, decode 100) at B = 32 and r = 1..6 with
``--obs-steps`` x 8 replicas gives 12 measured step times with their standard errors; then

* the default fit (six coefficients + attention_cv), ``--fit-steps`` x 4 replicas, a fresh
  key, a quarter of the rows held out: is the truth inside each identified parameter's 95 %
  interval, and what is the held-out error;
* the fit without the noise term (the six coefficients): its held-out error.

Usage: PYTHONPATH=. python experiments/calibration_coverage.py [--seeds 40]
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np

import afdjax
from afdjax._fit._calibrate_params import default_fit

SPECS = {"fixed:prefill=1000,decode=100": (1000.0, 100), "fixed:prefill=3000,decode=100": (3000.0, 100)}
TRUTH = dict(alpha_a=0.0015, beta_a=20.0, alpha_f=0.1, beta_f=60.0, alpha_c=0.001, beta_c=5.0)
CV = 0.1
B, RMAX = 32, 6


def sweep(seed: int, workloads, steps: int) -> afdjax.RatioSweep:
    truth = afdjax.LatencyModel(**TRUTH, noise=afdjax.StageNoise(attention_cv=CV))
    labels = [s for _ in range(RMAX) for s in SPECS]
    ratios = [r for r in range(1, RMAX + 1) for _ in SPECS]
    rows = afdjax.RatioSweep(ratio=np.asarray(ratios), batch_size=np.full(len(ratios), B), workload=tuple(labels))
    model = afdjax.CalibratedModel(truth, default_fit(truth))
    pred = afdjax.predict(model, rows, workloads, key=jax.random.key(seed), num_steps=steps, num_replicas=8)
    return afdjax.RatioSweep(
        rows.ratio, rows.batch_size, rows.workload, pred.step_time, "step_time", pred.step_time_stderr
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--obs-steps", type=int, default=2000)
    ap.add_argument("--fit-steps", type=int, default=1000)
    args = ap.parse_args()
    workloads = {s: afdjax.Fixed(*v) for s, v in SPECS.items()}
    truth = dict(TRUTH, attention_cv=CV)
    names = ("alpha_a", "beta_a", "alpha_f", "beta_f", "attention_cv")
    hits = {n: 0 for n in names}
    identified = {n: 0 for n in names}
    held_with, held_without = [], []
    t0 = time.time()
    for seed in range(args.seeds):
        obs = sweep(1000 + seed, workloads, args.obs_steps)
        key = jax.random.key(seed)
        fit = afdjax.calibrate(obs, workloads, key=key, num_steps=args.fit_steps, num_replicas=4, holdout=0.25)
        plain = afdjax.calibrate(
            obs, workloads, fit=tuple(TRUTH), key=key, num_steps=args.fit_steps, num_replicas=4, holdout=0.25
        )
        for n in names:
            if n in fit.not_identified:
                continue
            identified[n] += 1
            lo, hi = fit.interval[n]
            hits[n] += lo <= truth[n] <= hi
        held_with.append(fit.held_out.rms_relative_error)
        held_without.append(plain.held_out.rms_relative_error)
        covered = [
            n for n in names if n not in fit.not_identified and fit.interval[n][0] <= truth[n] <= fit.interval[n][1]
        ]
        print(
            f"seed {seed}: held-out RMS {100 * held_with[-1]:.2f}% with attention_cv, "
            f"{100 * held_without[-1]:.2f}% without; covered: {', '.join(covered)}",
            flush=True,
        )
    print(
        f"{args.seeds} synthetic sweeps (2 workloads x r = 1..{RMAX}, B = {B}; truth attention_cv = {CV}); "
        f"observations {args.obs_steps} x 8, fits {args.fit_steps} x 4; {time.time() - t0:.0f} s"
    )
    print(f"{'parameter':>13} {'identified':>10} {'95% coverage':>13}")
    for n in names:
        rate = hits[n] / identified[n] if identified[n] else float("nan")
        print(f"{n:>13} {identified[n]:>10} {100 * rate:>12.1f}%")
    hw, hp = np.asarray(held_with), np.asarray(held_without)
    print(
        f"held-out RMS relative error (a quarter of the rows): with attention_cv median {100 * np.median(hw):.2f}% "
        f"(mean {100 * hw.mean():.2f}%), without median {100 * np.median(hp):.2f}% (mean {100 * hp.mean():.2f}%); "
        f"with < without in {int(np.sum(hw < hp))} of {len(hw)} sweeps"
    )


if __name__ == "__main__":
    main()
