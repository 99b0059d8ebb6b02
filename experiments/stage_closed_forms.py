"""Closed forms of the stochastic stage times against the simulation (issue 13, scope 4).

For the paper's setting (``paper-910c`` coefficients, geometric lengths with means 100 and
500, ``B = 256``) with every combination of per-layer noise (``cv`` of attention, FFN and
communication), MoE routing (256 experts, top-8, 16 ranks; Zipf skew), per-peer
communication (with a different F->A direction and a shared FFN link) and the number of
layers ``L``, over ratios 1..32, it compares the closed-form expected step time
(:func:`afdjax.barrier_cycle_time`, the per-layer barrier of ``afdjax._theory._stage_terms``)
with the simulated mean step time (:func:`afdjax.simulate`, ``K = min(L, 16)`` sampled layers),
and prints the worst relative error, the relative error of the same closed form without the
new terms (today's Gaussian barrier) for scale, and every grid point where the error exceeds
2 %. A last section does the same for the micro-batch pipeline (``m = 2``) against
:func:`afdjax._theory.stage_pipeline_cycle_time` (an approximation even without the new terms).

    python experiments/stage_closed_forms.py            # full grid (~10-20 min on 2 busy cores)
    python experiments/stage_closed_forms.py --quick    # fewer steps and points
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import afdjax
from afdjax._theory import stage_pipeline_cycle_time

B = 256
RATIOS = [1, 2, 4, 6, 8, 10, 12, 16, 24, 32]
COEF = afdjax.LatencyModel.from_preset("paper-910c").coefficients()
WORKLOAD = afdjax.Geometric(mu_p=100.0, mu_d=500.0)


def latency(cv, skew, per_peer, layers) -> afdjax.LatencyModel:
    """One grid point: noise ``cv`` on all three stages (``None`` when 0), routing with Zipf
    ``skew`` (``None``: no routing), per-peer cost with F->A and shared-link terms (``None``
    when 0), ``layers`` layers."""
    noise = afdjax.StageNoise(cv, cv, cv) if cv else None
    routing = None if skew is None else afdjax.ExpertRouting(256, 8, 16, skew=skew)
    comm = afdjax.Communication(per_peer=per_peer, alpha_back=0.03, alpha_link=0.004) if per_peer else None
    return afdjax.LatencyModel(**COEF, num_layers=layers, noise=noise, routing=routing, comm=comm)


def simulated(lat, steps, replicas, micro_batches=None):
    res = afdjax.simulate(
        jax.random.key(5),
        WORKLOAD,
        lat,
        B,
        RATIOS,
        steps,
        replicas,
        micro_batches=micro_batches,
        warmup_steps=None if micro_batches is None else 2 * micro_batches,
    )
    r = np.asarray(RATIOS, float)
    mean = np.asarray(res.mean_cycle_time)
    rep = r * B / ((r + 1) * np.asarray(res.throughput_per_replica))
    se = rep.std(axis=0, ddof=1) / np.sqrt(replicas)
    return mean, se


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, replicas and grid points")
    args = parser.parse_args()
    steps, replicas = (150, 8) if args.quick else (200, 8)
    cvs = (0.0, 0.3) if args.quick else (0.0, 0.1, 0.3)
    skews = (None, 1.0) if args.quick else (None, 0.0, 1.0)
    peers = (0.0, 25.0)
    layers = (1, 61)
    r = jnp.asarray(RATIOS, dtype=float)
    print(f"paper-910c, geometric(100, 500), B = {B}, ratios {RATIOS}, {steps} steps x {replicas} replicas")
    print("columns: cv  skew  per_peer  L | worst |rel err| (at r) | today's Gaussian barrier's worst | worst z")
    worst, worst_at, over = 0.0, None, []
    t0 = time.perf_counter()
    for cv, skew, peer, L in itertools.product(cvs, skews, peers, layers):
        if cv == 0 and skew is None and peer == 0 and L == 61:
            continue  # identical to L = 1 without random stage times
        lat = latency(cv, skew, peer, L)
        mean, se = simulated(lat, steps, replicas)
        closed = np.asarray(afdjax.barrier_cycle_time(WORKLOAD, lat, B, r))
        today = np.asarray(afdjax.barrier_cycle_time(WORKLOAD, afdjax.LatencyModel(**COEF), B, r))
        rel = closed / mean - 1.0
        ok = se > 1e-9 * mean  # a deterministic step has no standard error
        z = np.where(ok, (closed - mean) / np.where(ok, se, 1.0), 0.0)
        i = int(np.argmax(np.abs(rel)))
        print(
            f"  {cv:4.2f}  {skew!s:>4}  {peer:3.1f}  {L:3d} | {abs(rel[i]):7.2%} (r={RATIOS[i]:2d}) | "
            f"{np.max(np.abs(today / mean - 1.0)):7.2%} | {np.max(np.abs(z)):6.1f}",
            flush=True,
        )
        if abs(rel[i]) > worst:
            worst, worst_at = abs(rel[i]), (cv, skew, peer, L, RATIOS[i])
        over += [(cv, skew, peer, L, RATIOS[j], rel[j]) for j in np.flatnonzero(np.abs(rel) > 0.02)]
    print(f"\nBarrier: worst relative error {worst:.2%} at (cv, skew, per_peer, L, r) = {worst_at}")
    print(f"grid points above 2 %: {len(over)}")
    for cv, skew, peer, L, rr, e in over:
        print(f"  cv={cv} skew={skew} per_peer={peer} L={L} r={rr}: {e:+.2%}")

    print("\nPipeline (m = 2): stage_pipeline_cycle_time against the simulation")
    for cv, skew, peer in [(0.0, None, 0.0), (0.1, None, 0.0), (0.0, 1.0, 0.0), (0.0, None, 25.0), (0.1, 1.0, 25.0)]:
        lat = latency(cv, skew, peer, 61)
        mean, se = simulated(lat, steps, replicas, micro_batches=2)
        closed = np.asarray(stage_pipeline_cycle_time(WORKLOAD, lat, B, r, 2))
        rel = closed / mean - 1.0
        i = int(np.argmax(np.abs(rel)))
        print(
            f"  cv={cv} skew={skew} per_peer={peer}: worst {rel[i]:+.2%} (r={RATIOS[i]}), at r = 1..32: "
            + " ".join(f"{x:+.1%}" for x in rel)
        )
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
