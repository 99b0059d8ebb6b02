"""Sweep benchmark (issue 6): configurations per second and peak memory of afdjax.sweep.

Grid: 2 batch sizes x 5 mu_p x 10 mu_d x 10 alpha_a x 10 beta_f = 10,000 points
(workload, batch, coefficients), each simulated for r = 1..32; ``--scale 10`` adds a
tenfold alpha_f axis (100,000 points). Each size runs in a fresh subprocess, so its peak
resident set size (``ru_maxrss``) is its own; device memory statistics are printed where
the backend reports them (GPU/TPU; not on CPU).

    python experiments/bench_sweep.py                 # 10,000 and 100,000 points (~5 min on 2 CPU cores)
    python experiments/bench_sweep.py --quick         # 1,000 and 10,000 points
    python experiments/bench_sweep.py --points 10000  # one size, in this process
    python experiments/bench_sweep.py --devices 1     # only the first device (default: all local devices)
    python experiments/bench_sweep.py --json

A "configuration" is one (grid point, ratio) pair: configs/s = points x 32 / seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEPS, REPLICAS, NUM_BINS, MAX_RATIO = 256, 2, 512, 32


def grid(points: int, steps: int, replicas: int) -> dict:
    if points not in (1_000, 10_000, 100_000):
        raise SystemExit("--points must be 1000, 10000 or 100000")
    hardware = {
        "preset": "paper-910c",
        "alpha_a": {"start": 0.001, "stop": 0.003, "num": 10},
        "beta_f": {"start": 50.0, "stop": 150.0, "num": 10},
    }
    mu_d = {"start": 100.0, "stop": 1000.0, "num": 10}
    if points == 100_000:
        hardware["alpha_f"] = {"start": 0.06, "stop": 0.1, "num": 10}
    if points == 1_000:
        mu_d = {"start": 100.0, "stop": 1000.0, "num": 1}
    return {
        "settings": {
            "steps": steps,
            "replicas": replicas,
            "seed": 0,
            "ratios": {"start": 1, "stop": MAX_RATIO, "step": 1},
            "num_bins": NUM_BINS,
        },
        "grid": {
            "batch_size": [32, 64],
            "workload": {"mu_p": {"start": 100.0, "stop": 500.0, "num": 5}, "mu_d": mu_d},
            "hardware": hardware,
        },
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_one(points: int, steps: int, replicas: int, budget_mb: int, devices: str) -> dict:
    import jax

    import afdjax

    devs = jax.local_devices() if devices == "all" else jax.local_devices()[: int(devices)]
    g = afdjax.load_grid(grid(points, steps, replicas))
    assert g.num_points == points, g.num_points
    rss_before = peak_rss_mib()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = afdjax.sweep(g, out, memory_budget_bytes=budget_mb * 2**20, progress=False, devices=devs)
        seconds = time.perf_counter() - t0
        files = len(list(Path(out).glob("chunk-*.parquet")))
    stats = {}
    for d in devs:
        try:
            m = d.memory_stats()
        except Exception:
            m = None
        if m:
            stats[str(d)] = {k: m[k] for k in ("peak_bytes_in_use", "bytes_limit") if k in m}
    return dict(
        points=points,
        configurations=points * MAX_RATIO,
        seconds=seconds,
        points_per_s=points / seconds,
        configurations_per_s=points * MAX_RATIO / seconds,
        chunk_files=files,
        peak_rss_mib=peak_rss_mib(),
        rss_after_import_mib=rss_before,
        device_memory=stats or None,
        devices=[str(d) for d in devs],
        backend=jax.default_backend(),
        steps=steps,
        replicas=replicas,
        num_bins=NUM_BINS,
        memory_budget_mb=budget_mb,
        complete=summary.complete,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, help="run one size in this process (1000, 10000, 100000)")
    ap.add_argument("--quick", action="store_true", help="1,000 and 10,000 points instead of 10,000 and 100,000")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"measured steps per replica (default {STEPS})")
    ap.add_argument("--replicas", type=int, default=REPLICAS, help=f"replicas per point (default {REPLICAS})")
    ap.add_argument("--memory-budget-mb", type=int, default=512, help="sweep chunk memory budget (default 512)")
    ap.add_argument("--devices", default="all", help="'all' local devices or a count (default all)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.points:
        print(json.dumps(run_one(args.points, args.steps, args.replicas, args.memory_budget_mb, args.devices)))
        return
    sizes = (1_000, 10_000) if args.quick else (10_000, 100_000)
    results = []
    for n in sizes:
        cmd = [
            sys.executable,
            __file__,
            "--points",
            str(n),
            "--steps",
            str(args.steps),
            "--replicas",
            str(args.replicas),
            "--memory-budget-mb",
            str(args.memory_budget_mb),
            "--devices",
            args.devices,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    small, large = results
    growth = 100.0 * (large["peak_rss_mib"] / small["peak_rss_mib"] - 1.0)
    summary = dict(
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
        cpu_count=os.cpu_count(),
        load_average=os.getloadavg(),
        python=platform.python_version(),
        results=results,
        peak_rss_growth_percent=growth,
    )
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"afdjax sweep benchmark: {small['steps']} steps x {small['replicas']} replicas per point, r = 1..{MAX_RATIO}, "
        f"num_bins {NUM_BINS}, memory budget {small['memory_budget_mb']} MiB, backend {small['backend']}, "
        f"{len(small['devices'])} device(s); load average {summary['load_average'][0]:.2f}"
    )
    print(
        f"{'points':>8} {'configs':>9} {'seconds':>8} {'points/s':>9} {'configs/s':>10} {'chunks':>7} "
        f"{'peak RSS MiB':>13}"
    )
    for r in results:
        print(
            f"{r['points']:>8} {r['configurations']:>9} {r['seconds']:>8.1f} {r['points_per_s']:>9.1f} "
            f"{r['configurations_per_s']:>10.0f} {r['chunk_files']:>7} {r['peak_rss_mib']:>13.1f}"
        )
        if r["device_memory"]:
            print(f"         device memory: {r['device_memory']}")
    print(f"peak RSS growth {small['points']} -> {large['points']} points: {growth:+.1f} %")


if __name__ == "__main__":
    main()
