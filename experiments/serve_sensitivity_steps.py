"""Step size of ``serve_sensitivity``'s common-random-numbers differences (issue 14, scope 6),
and the pathwise derivative beside them.

The test configuration of ``tests/test_serve.py`` (B = 4, ratios 1 and 3, Uniform(50..150,
5..15) lengths, Poisson arrivals, prefill_beta 3, targets TPOT 16 and TTFT 40), at about 20 %
and 70 % of capacity (X = 0.003 and 0.0105 per Attention instance) and far above it (X =
0.2), float64. For each coefficient and relative step ``h / c`` the table prints the
central difference and its standard error (jackknife over replicas) of each quantity.
A step is good where the estimate no longer moves (no curvature bias) and its standard
error is still near the smallest one. The last rows are the pathwise derivative
(forward mode through the kernel, event order held fixed) of throughput, mean TPOT and mean
TTFT, for the kernel docstring's "Gradients." paragraph.

    PYTHONPATH=. python experiments/serve_sensitivity_steps.py [--steps 3000] [--replicas 32]
        [--coefficients alpha_f,alpha_a]
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx
import jax.numpy as jnp
import numpy as np

import afdjax
from afdjax._serve._kernel import replica_block
from afdjax._serve._serve import run_stats

COEF = dict(alpha_a=0.05, beta_a=5.0, alpha_f=0.5, beta_f=10.0, alpha_c=0.1, beta_c=2.0)
WORKLOAD = afdjax.Uniform(50, 150, 5, 15)
RATIOS, RATES = [1, 3], [0.003, 0.0105, 0.2]
LOADS = ("0.2", "0.7", "sat")
KW = dict(prefill_beta=3.0, slo_tpot=16.0, slo_ttft=40.0)
SHOWN = ("throughput_per_instance", "goodput_per_instance", "tpot_mean", "ttft_mean", "mean_queue_length")
SHORT = {"throughput_per_instance": "thr", "goodput_per_instance": "good", "tpot_mean": "TPOT",
         "ttft_mean": "TTFT", "mean_queue_length": "queue"}  # fmt: skip
STEPS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def pathwise(latency, name, steps, replicas):
    """Pathwise derivatives (jacfwd through the kernel) of throughput, mean TPOT and TTFT."""
    run = run_stats(jax.random.key(1), WORKLOAD, latency, 4, RATIOS, RATES, steps, replicas, **KW)

    def sums(c):
        lat = eqx.tree_at(lambda m: getattr(m, name), latency, c)
        ids = jnp.arange(replicas, dtype=jnp.uint32)
        st = replica_block(
            run.key_words, run.workload, run.arrivals, lat, run.inputs, run.cfg, run.ratios, run.rates, ids
        )
        return (st.time, st.tpot_sum, st.ttft_sum), (st.time, st.tokens, st.done)

    c = jnp.asarray(getattr(latency, name))
    (d_time, d_tpot, d_ttft), (t, tok, done) = jax.jacfwd(sums, has_aux=True)(c)
    t, tok, done = (np.asarray(x, dtype=np.float64).sum(0) for x in (t, tok, done))
    inst = np.asarray(RATIOS, dtype=np.float64)[:, None] + 1
    d_thr = -tok * np.asarray(d_time).sum(0) / t**2 / inst
    return {"thr": d_thr, "TPOT": np.asarray(d_tpot).sum(0) / done, "TTFT": np.asarray(d_ttft).sum(0) / done}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--replicas", type=int, default=32)
    ap.add_argument("--coefficients", default="alpha_f,alpha_a")
    a = ap.parse_args()
    latency = afdjax.LatencyModel(**COEF)
    print(f"B = 4, ratios {RATIOS}, rates {RATES} (loads {LOADS}), {a.replicas} x {a.steps} steps, float64")
    for name in a.coefficients.split(","):
        print(f"\n## d / d {name} (c = {COEF[name]})")
        for step in STEPS:
            t0 = time.perf_counter()
            s = afdjax.serve_sensitivity(
                jax.random.key(1), WORKLOAD, latency, 4, RATIOS, RATES, a.steps, a.replicas,
                coefficients=name, step=step, **KW,
            )  # fmt: skip
            dt = time.perf_counter() - t0
            for i, r in enumerate(RATIOS):
                cells = []
                for k, load in enumerate(LOADS):
                    for q in SHOWN:
                        d, se = s.derivative[q][name][i, k], s.stderr[q][name][i, k]
                        cells.append(f"{SHORT[q]}@{load} {d:.4g}+-{se:.2g}")
                print(f"h/c {step:<6} r {r}: " + "  ".join(cells) + f"  ({dt:.1f} s)")
        pw = pathwise(latency, name, a.steps, a.replicas)
        for i, r in enumerate(RATIOS):
            cells = [f"{q}@{load} {pw[q][i, k]:.4g}" for k, load in enumerate(LOADS) for q in pw]
            print(f"pathwise  r {r}: " + "  ".join(cells))


if __name__ == "__main__":
    main()
