"""Gradient benchmark (issues 4 and 12): the cost and the variance of one gradient of the
Monte Carlo throughput, against one forward, for both decode-length estimators.

Paper baseline (B = 256, Geometric(100, 500) with lognormal prefill so that every
parameter has a gradient, paper-910c), ratio 9.5 (interpolating systems 9 and 10,
r_max = 10). A gradient covers all six latency coefficients, mu_p, mu_d, prefill_sigma
and the ratio, in one reverse pass; ``mu_d`` comes from the coupled estimator
(``decode_estimator="coupled"``, the default) or the score function (``"score"``), the
others are pathwise in both. Each estimator is run on ``--keys`` independent keys: the
table gives, per component, the mean and the s.d. per call over the keys (relative s.d.
in %), and the cost line the median seconds per call after compilation and its ratio to
one forward ``simulate`` of the same size (no gradient, no jump term). Memory is XLA's
compiled temporary-buffer size for each program, next to what storing every slot at
every step would take.

``--workload`` swaps the decode family on the same system: ``lognormal``
(LogNormal(6.33, 0.621), the baseline's slot load), ``mixture`` (GeometricMixture(0.5,
1/200, 1/700)), ``empirical`` (a 4000-row trace at ``decode_scale`` 0.1); each with
exponential prefill of mean 100. Every scalar parameter gets a row.

    python experiments/bench_grad.py [--steps 4000] [--replicas 8] [--keys 8]
        [--workload geometric|lognormal|mixture|empirical] [--json]
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
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import afdjax
from afdjax._grad import _interpolate, throughput_estimate

LATENCY_KEYS = ("alpha_a", "beta_a", "alpha_f", "beta_f", "alpha_c", "beta_c")
ESTIMATORS = ("coupled", "score")


def _components(grads) -> dict:
    """Every scalar gradient component by name (array leaves such as a trace's prefill
    tokens are left out)."""
    w, lat, r = grads
    out = {k: float(getattr(lat, k)) for k in LATENCY_KEYS}
    for path, leaf in jax.tree_util.tree_flatten_with_path(w)[0]:
        if eqx.is_inexact_array(leaf) and leaf.ndim == 0:
            out[jax.tree_util.keystr(path).strip(".").replace(".", "/")] = float(leaf)
    out["ratio"] = float(r)
    return out


def make_workload(name: str):
    """The benchmarked workload: the paper baseline's geometric (lognormal prefill so that
    every parameter has a gradient), or a decode family matched to its load."""
    from afdjax._workload import ExponentialPrefill, GeometricMixtureDecode, LogNormalDecode

    if name == "geometric":
        return afdjax.Geometric(100.0, 500.0, prefill="lognormal", prefill_sigma=0.5)
    if name == "lognormal":  # theta 600, slot s.d. 500, as Geometric(100, 500)
        return afdjax.FittedWorkload(LogNormalDecode(6.33, 0.621), ExponentialPrefill(100.0))
    if name == "mixture":
        return afdjax.FittedWorkload(GeometricMixtureDecode(0.5, 1 / 200, 1 / 700), ExponentialPrefill(100.0))
    rng = np.random.default_rng(7)  # empirical: 4000 rows, decode lengths x 1.1
    return afdjax.Empirical(rng.exponential(100.0, 4000), rng.geometric(1 / 501, 4000), decode_scale=0.1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--keys", type=int, default=8, help="independent keys per estimator (variance)")
    parser.add_argument("--repeats", type=int, default=5, help="forward calls timed (median)")
    parser.add_argument("--no-optimise-ratio", action="store_true", help="skip the optimise_ratio compile count")
    parser.add_argument(
        "--workload",
        choices=("geometric", "lognormal", "mixture", "empirical"),
        default="geometric",
        help="decode family (default: the paper baseline's geometric)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    B, ratio, rmax = 256, 9.5, 10
    latency = afdjax.LatencyModel.from_preset("paper-910c")
    workload = make_workload(args.workload)
    sizes = afdjax.plan_buffers(workload, B, rmax, args.steps, args.replicas)
    systems = list(range(1, rmax + 1))

    def objective(params, key, jumps):
        w, lat, r = params
        res = afdjax.simulate(key, w, lat, B, systems, args.steps, args.replicas, decode_jumps=jumps, **sizes)
        return _interpolate(throughput_estimate(res), r)

    params = (workload, latency, jnp.asarray(ratio))
    forward = eqx.filter_jit(lambda p, k: objective(p, k, False))
    gradients = {
        est: eqx.filter_jit(eqx.filter_value_and_grad(lambda p, k, j=(est == "coupled"): objective(p, k, j)))
        for est in ESTIMATORS
    }

    def timed(fn, key):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(params, key))
        return time.perf_counter() - t0, out

    compile_fwd, _ = timed(forward, jax.random.key(0))
    t_fwd = statistics.median(timed(forward, jax.random.key(i + 1))[0] for i in range(args.repeats))
    per_estimator = {}
    for est, fn in gradients.items():
        compile_s, _ = timed(fn, jax.random.key(0))
        times, rows = [], []
        for i in range(args.keys):
            t, (_, grads) = timed(fn, jax.random.key(1000 + i))
            times.append(t)
            rows.append(_components(grads))
        table = {k: np.array([row[k] for row in rows]) for k in rows[0]}
        per_estimator[est] = dict(
            compile_s=compile_s,
            gradient_s=statistics.median(times),
            ratio_to_forward=statistics.median(times) / t_fwd,
            mean={k: float(v.mean()) for k, v in table.items()},
            sd_per_call={k: float(v.std(ddof=1)) for k, v in table.items()},
        )

    def temp_bytes(fn):
        try:
            lowered = jax.jit(lambda p, k: fn(p, k)).lower(params, jax.random.key(0))
            analysis = lowered.compile().memory_analysis()
            return int(analysis.temp_size_in_bytes)
        except Exception:  # memory analysis is backend-dependent
            return None

    mem_fwd = temp_bytes(lambda p, k: objective(p, k, False))
    mem_grad = temp_bytes(eqx.filter_value_and_grad(lambda p, k: objective(p, k, True)))
    slot_step_bytes = rmax * B * args.steps * args.replicas * 4
    report = dict(
        date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores",
        jax=jax.__version__,
        backend=jax.default_backend(),
        config=dict(
            workload=workload.describe(),
            batch_size=B,
            ratio=ratio,
            steps=args.steps,
            replicas=args.replicas,
            keys=args.keys,
            **sizes,
        ),
        forward_s=t_fwd,
        compile_forward_s=compile_fwd,
        estimators=per_estimator,
        temp_bytes_forward=mem_fwd,
        temp_bytes_gradient_coupled=mem_grad,
        bytes_if_every_slot_step_were_stored=slot_step_bytes,
        target=dict(ratio_gradient_to_forward=4.0, mu_d_relative_sd=0.02),
    )
    if not args.no_optimise_ratio:
        report["optimise_ratio"] = optimise_ratio_compiles(latency, workload, B)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    mb = lambda b: "n/a" if b is None else f"{b / 2**20:.1f} MiB"
    print(
        f"afdjax gradient benchmark ({report['date']}, {report['machine']}, jax {jax.__version__} "
        f"on {report['backend']})"
    )
    print(
        f"paper system B={B}, {workload.describe()}, ratio {ratio} (systems 9 and 10), {args.steps} steps x "
        f"{args.replicas} replicas, {args.keys} keys per estimator"
    )
    print(
        f"forward (simulate, no gradient): {t_fwd:.3f} s per call "
        f"(median of {args.repeats}; compile {compile_fwd:.1f} s)"
    )
    for est, r in per_estimator.items():
        print(
            f"gradient, {est:7s}: {r['gradient_s']:.3f} s per call = {r['ratio_to_forward']:.2f}x forward "
            f"(target <= 4x; compile {r['compile_s']:.1f} s)"
        )
    head = f"{'component':>13s}"
    for est in per_estimator:
        head += f" | {est + ' mean':>12s} {'s.d./call':>10s} {'rel.':>8s}"
    print(head)
    for k in per_estimator["coupled"]["mean"]:
        line = f"{k:>13s}"
        for r in per_estimator.values():
            m, sd = r["mean"][k], r["sd_per_call"][k]
            rel = f"{100 * sd / abs(m):.2f} %" if m != 0 else "n/a"
            line += f" | {m:12.4e} {sd:10.2e} {rel:>8s}"
        print(line)
    print(
        f"temporary memory: forward {mb(mem_fwd)}, gradient (coupled) {mb(mem_grad)}; "
        f"storing every slot at every step would need {mb(slot_step_bytes)}"
    )
    if "optimise_ratio" in report:
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
