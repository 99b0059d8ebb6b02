"""One prepared check for a lent accelerator (GPU or TPU): correctness against the CPU,
then the engine, gradient, sweep and open-loop serve benchmarks, in under 8 minutes at ``--size full``.

    PYTHONPATH=. python experiments/accelerator_check.py                 # full (accelerator)
    PYTHONPATH=. python experiments/accelerator_check.py --size small    # a few minutes on 2 CPU cores
    PYTHONPATH=. python experiments/accelerator_check.py --size tiny     # smoke test (the test suite runs it)
    ... --out check.json                                                 # results written after every phase

1. **Correctness**: the same simulations (barrier step and a 2-micro-batch pipeline,
   float32, common random numbers) on the default device and on the CPU; the largest
   relative difference of throughput, mean cycle time and idle fractions must be below
   ``--rtol`` (1e-4: the two backends round differently, the random numbers are the same
   bit for bit). On a CPU-only machine both runs are on the CPU and must agree exactly.
2. **Engine**: paper baseline (B = 256, Geometric(100, 500), paper-910c, r = 1..32 in one
   pass): compile time and effective slot-steps per second (sum over r of r B steps
   replicas / run time, median of repeats).
3. **Gradient**: value and gradient of the throughput at r = 9.5 with respect to every
   latency coefficient, mu_p, mu_d, the prefill sigma and the ratio, against one forward
   evaluation of the same program (their ratio is the cost of the gradient).
4. **Sweep**: an ``afdjax.sweep`` grid over workload and hardware parameters (points per
   second, configurations = points x 32 ratios).
5. **Serve**: the open-loop engine (``afdjax.serve``) of ``experiments/bench_serve.py``,
   effective slot-steps per second at three loads.

Every phase has its own time limit and is skipped with a note when the budget is spent;
the JSON report (``--json`` on stdout, ``--out`` to a file updated after each phase) holds
the device, the sizes and every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmark scripts beside this one

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import afdjax

SIZES = {
    # engine (steps, replicas, repeats), gradient (steps, replicas, repeats), sweep (mu_d num, alpha_a num, steps)
    # serve (steps, replicas, repeats, warm-up steps, r_max): the open-loop engine of experiments/bench_serve.py
    "tiny": dict(check=(64, 8, 200, 2), engine=(200, 2, 2), gradient=(100, 2, 2), sweep=(2, 2, 64)),
    "small": dict(check=(64, 12, 1000, 4), engine=(2000, 4, 3), gradient=(1000, 4, 3), sweep=(10, 10, 256)),
    "full": dict(check=(64, 12, 2000, 8), engine=(16000, 64, 5), gradient=(4000, 16, 5), sweep=(25, 40, 256)),
}
SIZES["tiny"]["serve"] = (100, 2, 1, 100, 4)
SIZES["small"]["serve"] = (500, 2, 2, 2000, 32)
SIZES["full"]["serve"] = (4000, 16, 3, 2000, 32)
# largest ratio of the engine, gradient and sweep phases: the smoke test (tiny) compiles
# small programs; the figures recorded in BENCHMARKS.md use r = 1..32 (gradient: 10)
SIZES["tiny"]["max_ratio"] = 4


def _devices() -> dict:
    return dict(
        backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
        device_kind=jax.devices()[0].device_kind,
        jax=jax.__version__,
        host=f"{platform.machine()}, {os.cpu_count()} CPU cores",
        x64=bool(jax.config.jax_enable_x64),
    )


def check_against_cpu(batch_size: int, max_ratio: int, steps: int, replicas: int, rtol: float) -> dict:
    """Simulate on the default device and on the CPU with the same key; compare."""
    latency = afdjax.LatencyModel.from_preset("paper-910c")
    workload = afdjax.Geometric(100.0, 500.0, prefill="lognormal", prefill_sigma=0.5)
    cpu = jax.devices("cpu")[0]
    rows = []
    for micro_batches in (None, 2):

        def run(device):
            with jax.default_device(device):
                wl = jax.device_put(workload, device)
                lat = jax.device_put(latency, device)
                res = afdjax.simulate(
                    jax.random.key(11),
                    wl,
                    lat,
                    batch_size,
                    range(1, max_ratio + 1),
                    steps,
                    replicas,
                    micro_batches=micro_batches,
                    warmup_steps=0,
                )
                return jax.device_get(res)

        acc, ref = run(jax.devices()[0]), run(cpu)
        worst = {}
        for name in ("throughput_per_instance", "mean_cycle_time", "attention_idle_fraction", "ffn_idle_fraction"):
            a, b = np.asarray(getattr(acc, name), float), np.asarray(getattr(ref, name), float)
            worst[name] = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))
        rows.append(
            dict(
                micro_batches=micro_batches,
                max_relative_difference=worst,
                best_ratio_device=int(acc.best_ratio()),
                best_ratio_cpu=int(ref.best_ratio()),
                passed=bool(max(worst.values()) <= rtol),
            )
        )
    return dict(
        batch_size=batch_size,
        ratios=f"1..{max_ratio}",
        steps=steps,
        replicas=replicas,
        rtol=rtol,
        cases=rows,
        passed=all(r["passed"] for r in rows),
    )


def bench_engine(steps: int, replicas: int, repeats: int, max_ratio: int = 32) -> dict:
    """The engine benchmark of ``experiments/bench_engine.py`` (paper baseline, r = 1..32)."""
    from bench_engine import effective_slot_steps, time_engine

    ratios = list(range(1, max_ratio + 1))
    t = time_engine(afdjax.Geometric(100.0, 500.0), 256, steps, replicas, repeats, ratios)
    return dict(
        steps=steps,
        replicas=replicas,
        max_ratio=max_ratio,
        first_call_s=t["first_call_s"],
        compile_s=t["compile_s"],
        run_s=t["run_s"],
        times_s=t["times_s"],
        effective_slot_steps_per_s=effective_slot_steps(256, steps, replicas, ratios) / t["run_s"],
        best_ratio=int(t["best_ratio"]),
    )


def bench_gradient(steps: int, replicas: int, repeats: int, max_ratio: int = 10) -> dict:
    batch_size = 256
    latency = afdjax.LatencyModel.from_preset("paper-910c")
    workload = afdjax.Geometric(100.0, 500.0, prefill="lognormal", prefill_sigma=0.5)
    sizes = afdjax.plan_buffers(workload, batch_size, max_ratio, steps, replicas)

    def objective(params, key):
        w, lat, r = params
        return afdjax.expected_throughput(key, w, lat, batch_size, r, steps, replicas, max_ratio=max_ratio, **sizes)

    params = (workload, latency, jnp.asarray(max_ratio - 0.5))
    forward = eqx.filter_jit(objective)
    gradient = eqx.filter_jit(eqx.filter_value_and_grad(objective))

    def timed(fn, key):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, key))
        return time.perf_counter() - t0

    compile_forward = timed(forward, jax.random.key(0))
    compile_gradient = timed(gradient, jax.random.key(0))
    fwd, grad = [], []
    for i in range(repeats):
        fwd.append(timed(forward, jax.random.key(i + 1)))
        grad.append(timed(gradient, jax.random.key(i + 1)))
    _, g = gradient(params, jax.random.key(0))
    finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(g))
    return dict(
        steps=steps,
        replicas=replicas,
        forward_s=statistics.median(fwd),
        gradient_s=statistics.median(grad),
        gradient_over_forward=statistics.median(grad) / statistics.median(fwd),
        first_forward_s=compile_forward,
        first_gradient_s=compile_gradient,
        gradients_finite=finite,
    )


def bench_sweep(mu_d_num: int, alpha_a_num: int, steps: int, max_ratio: int = 32) -> dict:
    grid = {
        "settings": {
            "steps": steps,
            "replicas": 2,
            "seed": 0,
            "ratios": {"start": 1, "stop": max_ratio, "step": 1},
            "num_bins": 512,
        },
        "grid": {
            "batch_size": [64],
            "workload": {
                "mu_p": {"start": 100.0, "stop": 500.0, "num": 4},
                "mu_d": {"start": 100.0, "stop": 1000.0, "num": mu_d_num},
            },
            "hardware": {"preset": "paper-910c", "alpha_a": {"start": 0.001, "stop": 0.003, "num": alpha_a_num}},
        },
    }
    g = afdjax.load_grid(grid)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        summary = afdjax.sweep(g, out, progress=False)
        seconds = time.perf_counter() - t0
    return dict(
        points=g.num_points,
        max_ratio=max_ratio,
        configurations=g.num_points * max_ratio,
        seconds=seconds,
        points_per_s=g.num_points / seconds,
        configurations_per_s=g.num_points * max_ratio / seconds,
        complete=bool(summary.complete),
    )


def bench_serve(steps: int, replicas: int, repeats: int, warmup: int, max_ratio: int) -> dict:
    """The open-loop engine of ``experiments/bench_serve.py``: B = 64, r = 1..max_ratio, Poisson
    arrivals at 0.3, 0.7 and 0.95 of the saturated rate of r = 16 (r_max if smaller), effective slot-steps
    (sum over ratios and rates of r B (warm-up + steps) replicas) per second (bench_serve.py's
    warm-up is 4 E[D] = 2000 steps)."""
    wl, lat, B = afdjax.Geometric(100.0, 500.0), afdjax.LatencyModel.from_preset("paper-910c"), 64
    ratios = list(range(1, max_ratio + 1))
    r_sat = min(16, max_ratio)  # the tiny smoke test compiles no r = 16 program
    sat = afdjax.simulate(jax.random.key(9), wl, lat, B, [r_sat], 2000, 2)
    mean_d = float(wl.mean_decode_steps())
    x_sat = float(sat.throughput_per_instance[0]) * (r_sat + 1) / (r_sat * mean_d)
    rates = [load * x_sat for load in (0.3, 0.7, 0.95)]

    def run():
        res = afdjax.serve(jax.random.key(0), wl, lat, B, ratios, rates, steps, replicas, warmup_steps=warmup)
        return jax.block_until_ready(res.throughput_per_instance)

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    run_s = statistics.median(times)
    effective = sum(ratios) * B * (steps + warmup) * replicas * len(rates)
    return dict(
        steps=steps,
        replicas=replicas,
        warmup=warmup,
        max_ratio=max_ratio,
        first_call_s=first,
        run_s=run_s,
        effective_slot_steps_per_s=effective / run_s,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--rtol", type=float, default=1e-4, help="device vs CPU relative tolerance (default 1e-4)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip phases once this much time is spent")
    parser.add_argument("--out", help="write the JSON report here after every phase")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of text")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    start = time.perf_counter()
    report = dict(date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), size=args.size, device=_devices(), phases={})

    def save():
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    top = {"max_ratio": size["max_ratio"]} if "max_ratio" in size else {}
    phases = (
        ("correctness", lambda: check_against_cpu(*size["check"], rtol=args.rtol)),
        ("engine", lambda: bench_engine(*size["engine"], **top)),
        ("gradient", lambda: bench_gradient(*size["gradient"], **top)),
        ("sweep", lambda: bench_sweep(*size["sweep"], **top)),
        ("serve", lambda: bench_serve(*size["serve"])),
    )
    for name, fn in phases:
        spent = time.perf_counter() - start
        if spent > args.budget_s:
            report["phases"][name] = dict(skipped=f"time budget spent ({spent:.0f} s > {args.budget_s:.0f} s)")
            continue
        t0 = time.perf_counter()
        report["phases"][name] = dict(fn(), wall_s=time.perf_counter() - t0)
        save()
        if not args.json:
            print(f"[{time.perf_counter() - start:6.1f} s] {name}: done", file=sys.stderr)
    report["total_s"] = time.perf_counter() - start
    save()
    ok = report["phases"]["correctness"].get("passed", False)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(report))
    return 0 if ok else 1


def _text(report: dict) -> str:
    d, p = report["device"], report["phases"]
    lines = [
        f"afdjax accelerator check ({report['date']}, size {report['size']}): {d['device_kind']} "
        f"[{d['backend']}, {len(d['devices'])} device(s)], jax {d['jax']}, host {d['host']}"
    ]
    c = p["correctness"]
    for case in c.get("cases", []):
        step = "barrier" if case["micro_batches"] is None else f"pipeline m={case['micro_batches']}"
        worst = max(case["max_relative_difference"].values())
        lines.append(
            f"  correctness ({step}): max relative difference vs CPU {worst:.2e} (rtol {c['rtol']:g}), "
            f"best r {case['best_ratio_device']} vs {case['best_ratio_cpu']}: "
            f"{'PASS' if case['passed'] else 'FAIL'}"
        )
    for name, fmt in (
        (
            "engine",
            lambda e: (
                f"{e['steps']} steps x {e['replicas']} replicas, r = 1..{e['max_ratio']}, B = 256: compile "
                f"{e['compile_s']:.2f} s, run {e['run_s'] * 1e3:.1f} ms, "
                f"{e['effective_slot_steps_per_s']:.3g} effective slot-steps/s"
            ),
        ),
        (
            "gradient",
            lambda g: (
                f"{g['steps']} steps x {g['replicas']} replicas: forward {g['forward_s'] * 1e3:.1f} ms, "
                f"value and gradient {g['gradient_s'] * 1e3:.1f} ms "
                f"({g['gradient_over_forward']:.2f}x forward)"
            ),
        ),
        (
            "sweep",
            lambda s: (
                f"{s['points']} points x {s['max_ratio']} ratios in {s['seconds']:.1f} s: {s['points_per_s']:.0f} "
                f"points/s, {s['configurations_per_s']:.0f} configurations/s"
            ),
        ),
        (
            "serve",
            lambda v: (
                f"open loop, {v['steps']} steps x {v['replicas']} replicas, r = 1..{v['max_ratio']}, B = 64, "
                "three loads: first call "
                f"{v['first_call_s']:.1f} s, run {v['run_s']:.2f} s, "
                f"{v['effective_slot_steps_per_s']:.3g} effective slot-steps/s"
            ),
        ),
    ):
        entry = p.get(name, {})
        lines.append(f"  {name}: " + (entry["skipped"] if "skipped" in entry else fmt(entry)))
    lines.append(f"  total {report['total_s']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
