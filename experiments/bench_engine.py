"""Engine throughput benchmark (issue 2): effective slot-steps per second.

Paper baseline: B = 256, Geometric(mu_p=100, mu_d=500), paper-910c, r = 1..32.
Effective slot-steps of a sweep = sum over r of r * B * steps * replicas (what a
naive simulator that runs every ratio separately would have to advance).

Prints, in one run: the engine's compile time and steady-state rate (median of
repeats, compile excluded), the per-step NumPy reference simulator's rate
(tests/reference_sim.py, which also shares the r_max instances across ratios), their
ratio, and a scaling table showing that the engine's cost follows instance-steps plus
requests rather than slots x steps.

    python experiments/bench_engine.py            # full run (~1 minute on 2 CPU cores)
    python experiments/bench_engine.py --quick    # smaller sizes, for a smoke test
    python experiments/bench_engine.py --json     # machine-readable
    python experiments/bench_engine.py --compare 238646b   # side by side with an older commit
    python experiments/bench_engine.py --stage    # random stage times (issue 13) on and off

``--stage`` times the same engine call with the stage-time terms of issue 13 off (the
deterministic step) and on (61 layers sampled as K = 16, LogNormal noise on every stage,
MoE routing over ``ranks`` expert-parallel ranks, per-peer and shared-link communication),
alternated in one loop, for several batch sizes, ranks and step models, and fits the
extra cost per instance-layer-step (noise) and per ratio-rank-layer-step (routing: the
busiest rank is taken per ratio).

``--compare REV`` exports ``REV`` with ``git archive`` into a temporary folder and runs the
identical engine call in two long-lived worker processes, one importing afdjax from this
tree and one from the export (``PYTHONPATH`` set to each). Each worker compiles once; then
the two are asked for one timed run in turn, ``--rounds`` times, so that load on a shared
machine hits both alike. Prints the best (and median) time of each and the ratio.
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

from reference_sim import simulate_reference

import afdjax

RATIOS = list(range(1, 33))
LATENCY = dict(alpha_a=0.00165, beta_a=50.0, alpha_f=0.083, beta_f=100.0, alpha_c=0.022, beta_c=20.0)


def effective_slot_steps(batch_size, steps, replicas, ratios=RATIOS):
    return sum(ratios) * batch_size * steps * replicas


def _engine_call(workload, batch_size, steps, replicas, ratios=RATIOS):
    latency = afdjax.LatencyModel.from_preset("paper-910c")

    def call(seed):
        res = afdjax.simulate(jax.random.key(seed), workload, latency, batch_size, ratios, steps, replicas)
        jax.block_until_ready(res)
        return res

    return call


def time_engine(workload, batch_size, steps, replicas, repeats, ratios=RATIOS):
    """Compile time (first call minus a steady call) and the median steady run time."""
    call = _engine_call(workload, batch_size, steps, replicas, ratios)
    jax.clear_caches()
    t0 = time.perf_counter()
    call(0)
    first = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        res = call(i + 1)
        times.append(time.perf_counter() - t0)
    run = statistics.median(times)
    return dict(
        first_call_s=first, compile_s=max(first - run, 0.0), run_s=run, times_s=times, best_ratio=res.best_ratio()
    )


def time_side_by_side(batch_size, steps, replicas, ref_steps, repeats):
    """Engine and NumPy reference alternated in one loop, so drift hits both alike."""
    call = _engine_call(afdjax.Geometric(100.0, 500.0), batch_size, steps, replicas)
    jax.clear_caches()
    t0 = time.perf_counter()
    call(0)
    first = time.perf_counter() - t0
    workload = dict(kind="geometric", mu_p=100.0, mu_d=500.0, prefill="constant")
    engine_times, ref_times = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        res = call(i + 1)
        engine_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        simulate_reference(np.random.default_rng(i), workload, LATENCY, batch_size, RATIOS, ref_steps, replicas)
        ref_times.append(time.perf_counter() - t0)
    run = statistics.median(engine_times)
    engine = dict(
        first_call_s=first,
        compile_s=max(first - run, 0.0),
        run_s=run,
        times_s=engine_times,
        best_ratio=res.best_ratio(),
    )
    return engine, dict(run_s=statistics.median(ref_times), times_s=ref_times)


# A worker: compiles the engine call once, then times one run per "run" line on stdin.
_WORKER = """
import json, sys, time
import jax, afdjax
cfg = json.loads(sys.argv[1])
latency = afdjax.LatencyModel.from_preset("paper-910c")
workload = afdjax.Geometric(100.0, cfg["mu_d"])
def call(seed):
    ratios = list(range(1, cfg["max_ratio"] + 1))
    res = afdjax.simulate(jax.random.key(seed), workload, latency, cfg["batch_size"], ratios, cfg["steps"],
                          cfg["replicas"], micro_batches=cfg["micro_batches"],
                          **({} if cfg["warmup"] is None else dict(warmup_steps=cfg["warmup"])))
    return jax.block_until_ready(res)
t0 = time.perf_counter()
call(0)
print(json.dumps(dict(first_s=time.perf_counter() - t0, module=afdjax.__file__)), flush=True)
seed = 1
for line in sys.stdin:
    t0 = time.perf_counter()
    res = call(seed)
    print(json.dumps(dict(run_s=time.perf_counter() - t0, thr=float(res.throughput_per_instance[-1]))), flush=True)
    seed += 1
"""


def _start_worker(root: Path, cfg: dict):
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, json.dumps(cfg)],
        cwd=str(root),
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    return proc, json.loads(proc.stdout.readline())


def compare(rev: str, cfg: dict, rounds: int) -> dict:
    """Time this tree's engine and ``rev``'s on the same call, alternating (see the module docstring)."""
    import subprocess
    import tempfile

    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="afdjax-bench-") as tmp:
        archive = subprocess.run(["git", "-C", str(repo), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        workers = {}
        try:
            for name, root in (("this tree", repo), (rev, Path(tmp))):
                workers[name] = _start_worker(root, cfg)
            times = {name: [] for name in workers}
            for _ in range(rounds):
                for name, (proc, _) in workers.items():
                    proc.stdin.write("run\n")
                    proc.stdin.flush()
                    times[name].append(json.loads(proc.stdout.readline())["run_s"])
        finally:
            for proc, _ in workers.values():
                proc.stdin.close()
                proc.wait(timeout=60)
    first = {name: info["first_s"] for name, (_, info) in workers.items()}
    modules = {name: info["module"] for name, (_, info) in workers.items()}
    return dict(
        config=cfg,
        rev=rev,
        rounds=rounds,
        times_s=times,
        first_call_s=first,
        modules=modules,
        best_s={k: min(v) for k, v in times.items()},
        median_s={k: statistics.median(v) for k, v in times.items()},
    )


def _print_compare(out: dict) -> None:
    cfg, rev = out["config"], out["rev"]
    step = "barrier" if cfg["micro_batches"] is None else f"pipeline m={cfg['micro_batches']}"
    new, old = out["best_s"]["this tree"], out["best_s"][rev]
    print(
        f"B={cfg['batch_size']}, Geometric(100, {cfg['mu_d']:g}), r = 1..{cfg['max_ratio']}, {step}, "
        f"{cfg['steps']} steps x {cfg['replicas']} replicas, {out['rounds']} alternated rounds"
    )
    for name in ("this tree", rev):
        print(
            f"  {name:>10}: best {out['best_s'][name] * 1e3:8.1f} ms, "
            f"median {out['median_s'][name] * 1e3:8.1f} ms, "
            f"first call (compile + run) {out['first_call_s'][name]:.2f} s   [{out['modules'][name]}]"
        )
    print(
        f"  ratio this tree / {rev} (best): {new / old:.3f}   (median: "
        f"{out['median_s']['this tree'] / out['median_s'][rev]:.3f})"
    )


def _stage_latency(terms: str, ranks: int):
    base = afdjax.LatencyModel.from_preset("paper-910c")
    if terms == "off":
        return base
    noise = afdjax.StageNoise(0.1, 0.1, 0.1)
    routing = afdjax.ExpertRouting(256, 8, ranks, skew=0.5) if terms in ("routing", "all") else None
    comm = afdjax.Communication(per_peer=1.0, alpha_link=0.002) if terms == "all" else None
    return afdjax.LatencyModel(
        **base.coefficients(),
        num_layers=61,
        noise=noise if terms in ("noise", "all") else None,
        routing=routing,
        comm=comm,
    )


def stage_section(quick: bool) -> list[dict]:
    """Engine run time with the stage-time terms off and on, alternated (see the docstring)."""
    steps, replicas, repeats, rmax = (500, 2, 3, 16) if quick else (2000, 4, 5, 32)
    rows = []
    for micro_batches in (None, 2):
        for b, ranks in ((64, 8), (256, 8), (256, 32)):
            workload = afdjax.Geometric(100.0, 500.0)
            n = max(steps // (2 if micro_batches else 1), 1)
            calls = {}
            for terms in ("off", "noise", "routing", "all"):
                latency = _stage_latency(terms, ranks)

                def call(seed, latency=latency):
                    res = afdjax.simulate(
                        jax.random.key(seed),
                        workload,
                        latency,
                        b,
                        list(range(1, rmax + 1)),
                        n,
                        replicas,
                        micro_batches=micro_batches,
                        warmup_steps=0,
                    )
                    return jax.block_until_ready(res)

                t0 = time.perf_counter()
                call(0)
                calls[terms] = (call, time.perf_counter() - t0)
            times = {terms: [] for terms in calls}
            for i in range(repeats):
                for terms, (call, _) in calls.items():
                    t0 = time.perf_counter()
                    call(i + 1)
                    times[terms].append(time.perf_counter() - t0)
            rows.append(
                dict(
                    step="barrier" if micro_batches is None else f"pipeline m={micro_batches}",
                    batch_size=b,
                    ranks=ranks,
                    max_ratio=rmax,
                    steps=n,
                    replicas=replicas,
                    sampled_layers=16,
                    first_call_s={k: v[1] for k, v in calls.items()},
                    run_s={k: statistics.median(v) for k, v in times.items()},
                )
            )
    return rows


def _print_stage(rows: list[dict]) -> None:
    print("random stage times (issue 13): run time with the terms off and on, alternated (median ms)")
    print("  on: num_layers=61 sampled as K=16; noise = StageNoise(0.1, 0.1, 0.1); routing = ExpertRouting(256, 8,")
    print("  ranks, skew=0.5); all = noise + routing + Communication(per_peer=1, alpha_link=0.002)")
    print(
        f"{'step':>14} {'B':>5} {'ranks':>5} {'r_max':>5} {'steps':>6} {'off':>8} {'noise':>8} {'routing':>8} "
        f"{'all':>8} {'all/off':>8}"
    )
    for row in rows:
        t = row["run_s"]
        print(
            f"{row['step']:>14} {row['batch_size']:>5} {row['ranks']:>5} {row['max_ratio']:>5} {row['steps']:>6} "
            + " ".join(f"{t[k] * 1e3:>8.1f}" for k in ("off", "noise", "routing", "all"))
            + f" {t['all'] / t['off']:>8.2f}"
        )
    for step in sorted({row["step"] for row in rows}):
        sub = [row for row in rows if row["step"] == step]
        # extra cost of noise per instance-layer-step; of routing per ratio-rank-layer-step
        noise = [
            (r["run_s"]["noise"] - r["run_s"]["off"])
            / (r["max_ratio"] * r["sampled_layers"] * r["steps"] * r["replicas"])
            for r in sub
        ]
        routing = [
            (r["run_s"]["routing"] - r["run_s"]["off"])
            / (r["max_ratio"] * r["ranks"] * r["sampled_layers"] * r["steps"] * r["replicas"])
            for r in sub
        ]
        print(
            f"  {step}: noise adds {np.median(noise) * 1e9:.2f} ns per instance-layer-step, routing adds "
            f"{np.median(routing) * 1e9:.2f} ns per ratio-rank-layer-step (median over the rows)"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--compare", metavar="REV", help="compare with git revision REV side by side (only that)")
    parser.add_argument("--rounds", type=int, default=7, help="alternated runs per side with --compare (default 7)")
    parser.add_argument("--steps", type=int, default=None, help="steps per run with --compare (default 4000)")
    parser.add_argument("--only", choices=("barrier", "pipeline"), help="with --compare: one step model only")
    parser.add_argument("--stage", action="store_true", help="only the random stage times on/off section")
    args = parser.parse_args()

    if args.stage:
        rows = stage_section(args.quick)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_stage(rows)
        return

    if args.compare:
        steps = args.steps or (1000 if args.quick else 4000)
        results = []
        for micro_batches, scale in ((None, 1), (2, 4)):  # the pipeline steps one scan per step: fewer steps
            if args.only and args.only != ("barrier" if micro_batches is None else "pipeline"):
                continue
            cfg = dict(
                batch_size=256,
                mu_d=500.0,
                max_ratio=32,
                steps=max(steps // scale, 1),
                replicas=4,
                micro_batches=micro_batches,
                warmup=0,
            )
            results.append(compare(args.compare, cfg, args.rounds))
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            for out in results:
                _print_compare(out)
        return

    B = 256
    steps, replicas, repeats = (2000, 4, 3) if args.quick else (16000, 8, 7)
    ref_steps = 100 if args.quick else 400

    engine, ref = time_side_by_side(B, steps, replicas, ref_steps, repeats)
    engine_rate = effective_slot_steps(B, steps, replicas) / engine["run_s"]
    ref_rate = effective_slot_steps(B, ref_steps, replicas) / ref["run_s"]

    scaling = []
    scale_steps, scale_reps = (1000, 2) if args.quick else (8000, 4)
    for mu_d in (50.0, 500.0):
        for b in (64, 256, 1024):
            t = time_engine(afdjax.Geometric(100.0, mu_d), b, scale_steps, scale_reps, 3)
            instance_steps = max(RATIOS) * scale_steps * scale_reps
            requests = max(RATIOS) * b * scale_steps * scale_reps / (1.0 + mu_d)
            scaling.append(
                dict(
                    mu_d=mu_d,
                    batch_size=b,
                    run_s=t["run_s"],
                    slot_steps=max(RATIOS) * b * scale_steps * scale_reps,
                    instance_steps=instance_steps,
                    expected_requests=requests,
                    effective_slot_steps_per_s=effective_slot_steps(b, scale_steps, scale_reps) / t["run_s"],
                )
            )

    # Least-squares fit: run time = a * instance-steps + b * requests (no slot x step term).
    X = np.array([[row["instance_steps"], row["expected_requests"]] for row in scaling])
    y = np.array([row["run_s"] for row in scaling])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    r2 = 1.0 - np.sum((X @ coef - y) ** 2) / np.sum((y - y.mean()) ** 2)
    Xs = np.array([[row["slot_steps"]] for row in scaling])
    cs, *_ = np.linalg.lstsq(Xs, y, rcond=None)
    r2_slots = 1.0 - np.sum((Xs @ cs - y) ** 2) / np.sum((y - y.mean()) ** 2)
    cost_model = dict(
        ns_per_instance_step=coef[0] * 1e9,
        ns_per_request=coef[1] * 1e9,
        r2=r2,
        r2_slot_steps_only=r2_slots,
    )

    report = dict(
        date=time.strftime("%Y-%m-%d"),
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.platform()}",
        jax=jax.__version__,
        backend=jax.default_backend(),
        devices=[str(d) for d in jax.devices()],
        config=dict(batch_size=B, ratios="1..32", workload="Geometric(mu_p=100, mu_d=500)", hardware="paper-910c"),
        engine=dict(steps=steps, replicas=replicas, **engine, effective_slot_steps_per_s=engine_rate),
        reference=dict(steps=ref_steps, replicas=replicas, **ref, effective_slot_steps_per_s=ref_rate),
        speedup_vs_reference=engine_rate / ref_rate,
        scaling=scaling,
        cost_model=cost_model,
        targets=dict(effective_slot_steps_per_s=1e10, speedup_vs_reference=25.0, compile_s=5.0),
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"afdjax engine benchmark  ({report['date']}, {report['machine']}, "
        f"jax {jax.__version__} on {report['backend']})"
    )
    print(f"paper baseline: B={B}, Geometric(100, 500), paper-910c, r = 1..32 in one sweep")
    print()
    print(
        f"engine     {steps} steps x {replicas} replicas: compile {engine['compile_s']:.2f} s, "
        f"run {engine['run_s'] * 1e3:.1f} ms (median of {repeats}), best r = {engine['best_ratio']}"
    )
    print(f"           effective slot-steps/s = {engine_rate:.3g}   (target >= 1e10)")
    print(
        f"reference  {ref_steps} steps x {replicas} replicas (NumPy, per step): run {ref['run_s'] * 1e3:.1f} ms "
        f"(median of {repeats}, alternated with the engine runs)"
    )
    print(f"           effective slot-steps/s = {ref_rate:.3g}")
    print(f"speed-up engine / reference = {engine_rate / ref_rate:.1f}x   (target >= 25x)")
    print(f"compile time = {engine['compile_s']:.2f} s   (target < 5 s)")
    print()
    print("scaling (r_max = 32): run time against slots x steps, instance-steps and requests")
    print(
        f"{'mu_d':>6} {'B':>6} {'run ms':>9} {'slot-steps':>12} {'instance-steps':>15} {'requests':>10} "
        f"{'eff. slot-steps/s':>18}"
    )
    for row in scaling:
        print(
            f"{row['mu_d']:>6g} {row['batch_size']:>6} {row['run_s'] * 1e3:>9.1f} {row['slot_steps']:>12.3g} "
            f"{row['instance_steps']:>15.3g} {row['expected_requests']:>10.3g} "
            f"{row['effective_slot_steps_per_s']:>18.3g}"
        )
    print(
        f"fit: run time = {cost_model['ns_per_instance_step']:.1f} ns x instance-steps + "
        f"{cost_model['ns_per_request']:.1f} ns x requests   (R^2 = {r2:.3f}; "
        f"proportional to slot-steps alone: R^2 = {r2_slots:.3f})"
    )


if __name__ == "__main__":
    main()
