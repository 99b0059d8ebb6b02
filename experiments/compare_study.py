"""AFD against co-located serving on the same devices (issue 15): the gain and its factors.

For DeepSeek-V3 (Geometric mu_p = 100, mu_d = 500, KV capacity auto) it prints, per
hardware (H100, H200, B200, and heterogeneous H200 attention with B200 FFN), device count
(32, 64, 128) and mean-TPOT target (none, 50, 30 ms), the best AFD and co-located
configurations, the throughput per device of each (output tokens/s) and the gain with its
four factors (batch expansion x FFN-instance tax x step-time ratio x device use). Closed
form only (Gaussian barrier); ``--steps N`` also simulates the two winners of each row.

    python experiments/compare_study.py            # closed form, ~1-2 min on 2 CPU cores
    python experiments/compare_study.py --steps 200
"""

from __future__ import annotations

import argparse
import time

import afdjax


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    workload = afdjax.Geometric(100, 500)
    start = time.perf_counter()
    print(
        "| hardware | devices | TPOT target | AFD (r, B, bundles) | tok/s/dev | co-located (EP g x groups, B) "
        "| tok/s/dev | gain | batch exp. | FFN tax | step ratio | device use |"
    )
    print("|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for hardware in ("h100:deepseek-v3", "h200:deepseek-v3", "b200:deepseek-v3", "h200/b200:deepseek-v3"):
        for devices in (32, 64, 128):
            for tpot in (None, 50.0, 30.0):
                try:
                    c = afdjax.compare(
                        workload, hardware, devices, tpot_ms=tpot, num_steps=args.steps, num_replicas=args.replicas
                    )
                except ValueError as err:
                    print(f"| {hardware} | {devices} | {tpot or '-'} | {err} |")
                    continue
                a, o, g = c.afd, c.colocated, c.gain
                sim = f" (sim {g['simulated_ratio']:.3f})" if "simulated_ratio" in g else ""
                print(
                    f"| {hardware} | {devices} | {'-' if tpot is None else f'{tpot:g} ms'} "
                    f"| {a['ratio']}, {a['batch_size']}, {a['bundles']} | {a['throughput_per_device']:,.0f} "
                    f"| {o['ranks_per_group']} x {o['groups']}, {o['batch_size']}"
                    f"{' TBO' if o['overlap'] else ''} | {o['throughput_per_device']:,.0f} "
                    f"| {g['ratio']:.3f}{sim} | {g['batch_expansion']:.3f} | {g['ffn_instance_tax']:.3f} "
                    f"| {g['step_time_ratio']:.3f} | {g['device_use_ratio']:.3f} |"
                )
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
