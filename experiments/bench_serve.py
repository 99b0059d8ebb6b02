"""Open-loop engine benchmark (issue 14): effective slot-steps per second.

Baseline: Geometric(mu_p=100, mu_d=500), paper-910c, B = 64, r = 1..32, Poisson arrivals at
three loads (0.3, 0.7 and 0.95 of the saturated rate of r = 16, the same rates for every
ratio, so small ratios run light and large ones near or past saturation). Effective
slot-steps = sum over ratios and rates of r * B * (warm-up + measured steps) * replicas:
what a simulator that runs every bundle separately advances. ``--batch-size 1483`` runs the
same at the batch size ``afdjax compare`` picks for a real AFD deployment (B = 128..1500
per Attention instance in practice).

The engine keeps per-instance state (occupied slots, KV load) and a calendar of
completions, so its cost per step grows with the admissions per step, not with B; the
reference below visits every occupied slot every step.

Prints, in one run: the engine's compile time and steady-state rate (median of repeats,
compile excluded), the rate of the per-step NumPy reference (tests/test_serve_reference.py)
measured on a few bundles (r = 1, 8, 32 at the middle load, the same warm-up), and their
ratio, by wall time and by this process's CPU time (the machine is shared: the load
average before and after is printed; CPU-time rates are the steadier ones).

    python experiments/bench_serve.py                    # full run, B = 64
    python experiments/bench_serve.py --batch-size 1483  # a deployment's batch size
    python experiments/bench_serve.py --quick            # smaller sizes, for a smoke test
    python experiments/bench_serve.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_serve_reference import run_bundle

import afdjax

LOADS = (0.3, 0.7, 0.95)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    a = ap.parse_args()
    B, rmax = a.batch_size, 32
    steps, replicas = (500, 2) if a.quick else (2000, 4)
    ref_steps = 200 if a.quick else 600
    wl = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    coef = lat.coefficients()
    ratios = list(range(1, rmax + 1))
    sat = afdjax.simulate(jax.random.key(9), wl, lat, B, [16], 2000, 2)
    mean_d = float(wl.mean_decode_steps())
    x_sat = float(sat.throughput_per_instance[0]) * 17 / (16 * mean_d)
    rates = [load * x_sat for load in LOADS]
    warmup = 4 * int(mean_d)

    def run():
        res = afdjax.serve(jax.random.key(0), wl, lat, B, ratios, rates, steps, replicas, warmup_steps=warmup)
        return np.asarray(res.throughput_per_instance)

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(a.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    run_s, cpu_s = statistics.median(times), statistics.median(cpu)
    effective = sum(ratios) * B * (steps + warmup) * replicas * len(rates)
    engine_rate = effective / run_s

    # the per-step NumPy reference on a few bundles (r = 1, 8, 32 at the middle load)
    rng = np.random.default_rng(0)
    p = 1.0 / mean_d

    def lengths(rng, n):
        return float(rng.exponential(100.0)), int(rng.geometric(p))

    ref, ref_cpu = [], 0.0
    for r in (1, 8, 32):
        t0, c0 = time.perf_counter(), time.process_time()
        run_bundle(rng, r, B, rates[1], ref_steps, warmup, coef, lengths, lambda rng, n: rng.exponential())
        dt = time.perf_counter() - t0
        ref_cpu += time.process_time() - c0
        ref.append((r, r * B * (ref_steps + warmup) / dt))
    work = [r * B * (ref_steps + warmup) for r, _ in ref]
    ref_rate = sum(work) / sum(w / v for w, (_, v) in zip(work, ref, strict=True))
    ref_cpu_rate = sum(work) / ref_cpu
    out = dict(
        machine=f"{platform.machine()} {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()})",
        batch_size=B,
        ratios=f"1..{rmax}",
        rates=rates,
        loads_of_r16_saturation=LOADS,
        steps=steps,
        warmup=warmup,
        replicas=replicas,
        compile_and_first_run_s=round(first, 2),
        run_s=round(run_s, 3),
        effective_slot_steps=effective,
        engine_slot_steps_per_s=engine_rate,
        reference_slot_steps_per_s=ref_rate,
        reference_by_ratio={str(r): v for r, v in ref},
        speedup=engine_rate / ref_rate,
        engine_cpu_s=round(cpu_s, 3),
        engine_slot_steps_per_cpu_s=effective / cpu_s,
        reference_slot_steps_per_cpu_s=ref_cpu_rate,
        speedup_cpu=effective / cpu_s / ref_cpu_rate,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
    )
    if a.json:
        print(json.dumps(out, indent=2))
        return
    for k, v in out.items():
        print(f"{k:>28}: {v:.4g}" if isinstance(v, float) else f"{k:>28}: {v}")


if __name__ == "__main__":
    main()
