"""Gradient benchmark (issue 4): one gradient of the Monte Carlo throughput against one forward.

Paper baseline (B = 256, Geometric(100, 500) with lognormal prefill so that every
parameter has a gradient, paper-910c), ratio 9.5 (interpolating systems 9 and 10,
r_max = 10). The gradient covers all six latency coefficients, mu_p, mu_d (score
function), prefill_sigma and the ratio, in one reverse pass. Forward and gradient are
timed alternately in one loop (medians); memory is XLA's compiled temporary-buffer size
for each program, next to what storing every slot at every step would take.

    python experiments/bench_grad.py [--steps 4000] [--replicas 8] [--json]
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

import equinox as eqx
import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import afdjax
from afdjax._grad import _interpolate, throughput_estimate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    B, ratio, rmax = 256, 9.5, 10
    latency = afdjax.LatencyModel.from_preset("paper-910c")
    workload = afdjax.Geometric(100.0, 500.0, prefill="lognormal", prefill_sigma=0.5)
    sizes = afdjax.plan_buffers(workload, B, rmax, args.steps, args.replicas)

    def objective(params, key):
        w, lat, r = params
        res = afdjax.simulate(key, w, lat, B, list(range(1, rmax + 1)), args.steps, args.replicas, **sizes)
        return _interpolate(throughput_estimate(res), r)

    params = (workload, latency, jnp.asarray(ratio))
    forward = eqx.filter_jit(objective)
    gradient = eqx.filter_jit(eqx.filter_value_and_grad(objective))

    def timed(fn, key):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, key))
        return time.perf_counter() - t0

    compile_fwd = timed(forward, jax.random.key(0))
    compile_grad = timed(gradient, jax.random.key(0))
    fwd, grd = [], []
    for i in range(args.repeats):
        fwd.append(timed(forward, jax.random.key(i + 1)))
        grd.append(timed(gradient, jax.random.key(i + 1)))
    t_fwd, t_grad = statistics.median(fwd), statistics.median(grd)

    def temp_bytes(fn):
        try:
            lowered = jax.jit(lambda p, k: fn(p, k)).lower(params, jax.random.key(0))
            analysis = lowered.compile().memory_analysis()
            return int(analysis.temp_size_in_bytes)
        except Exception:  # memory analysis is backend-dependent
            return None

    mem_fwd = temp_bytes(objective)
    mem_grad = temp_bytes(eqx.filter_value_and_grad(objective))
    slot_step_bytes = rmax * B * args.steps * args.replicas * 4
    value, grads = gradient(params, jax.random.key(1))
    report = dict(
        date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores",
        jax=jax.__version__,
        backend=jax.default_backend(),
        config=dict(batch_size=B, ratio=ratio, steps=args.steps, replicas=args.replicas, **sizes),
        forward_s=t_fwd,
        gradient_s=t_grad,
        ratio_gradient_to_forward=t_grad / t_fwd,
        compile_forward_s=compile_fwd,
        compile_gradient_s=compile_grad,
        temp_bytes_forward=mem_fwd,
        temp_bytes_gradient=mem_grad,
        bytes_if_every_slot_step_were_stored=slot_step_bytes,
        value=float(value),
        gradient=dict(
            **{k: float(getattr(grads[1], k)) for k in ("alpha_a", "beta_a", "alpha_f", "beta_f", "alpha_c", "beta_c")},
            mu_p=float(grads[0].mu_p),
            mu_d=float(grads[0].mu_d),
            prefill_sigma=float(grads[0].prefill_sigma),
            ratio=float(grads[2]),
        ),
        target=dict(ratio_gradient_to_forward=4.0),
    )
    report["optimise_ratio"] = optimise_ratio_compiles(latency, workload, B)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    mb = lambda b: "n/a" if b is None else f"{b / 2**20:.1f} MiB"
    print(
        f"afdjax gradient benchmark ({report['date']}, {report['machine']}, jax {jax.__version__} "
        f"on {report['backend']})"
    )
    print(f"paper baseline B={B}, ratio {ratio} (systems 9 and 10), {args.steps} steps x {args.replicas} replicas")
    print(f"forward  : {t_fwd * 1e3:8.1f} ms (median of {args.repeats}; compile {compile_fwd:.1f} s)")
    print(f"gradient : {t_grad * 1e3:8.1f} ms (all 10 parameters, one reverse pass; compile {compile_grad:.1f} s)")
    print(f"gradient / forward = {t_grad / t_fwd:.2f}x   (target <= 4x)")
    print(
        f"temporary memory: forward {mb(mem_fwd)}, gradient {mb(mem_grad)}; "
        f"storing every slot at every step would need {mb(slot_step_bytes)}"
    )
    print("gradient:", ", ".join(f"{k}={v:.4g}" for k, v in report["gradient"].items()))
    opt = report["optimise_ratio"]
    print(
        f"optimise_ratio: first call {opt['first_compiles']} compilations, {opt['first_s']:.1f} s; "
        f"second call (new coefficients) {opt['second_compiles']} compilations, {opt['second_s']:.2f} s"
    )


def optimise_ratio_compiles(latency, workload, batch_size) -> dict:
    """Compilations (jax.monitoring backend-compile events) and wall time of two
    :func:`afdjax.optimise_ratio` calls with different coefficients (issue 10: the second
    compiles nothing)."""
    events = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    other = eqx.tree_at(
        lambda m: (m.alpha_a, m.beta_f),
        latency,
        (jnp.asarray(1.2 * latency.alpha_a), jnp.asarray(0.9 * latency.beta_f)),
    )
    jax.monitoring.register_event_duration_secs_listener(listener)
    out = {}
    try:
        for name, lat in (("first", latency), ("second", other)):
            n0, t0 = len(events), time.perf_counter()
            jax.block_until_ready(afdjax.optimise_ratio(workload, lat, batch_size, max_ratio=24).ratio)
            out[f"{name}_s"], out[f"{name}_compiles"] = time.perf_counter() - t0, len(events) - n0
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return out


if __name__ == "__main__":
    main()
