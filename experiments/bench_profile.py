"""Issue 5 acceptance: `afdjax profile` with its defaults on this machine.

Prints the wall time (target < 120 s on the 2-core CPU), the fit quality per stage, the
relative error at every held-out size (target: all within 15 %) and the machine load
(1-minute load average and the CPU time other processes used during the run), since the
timings of a shared machine depend on it.

    python experiments/bench_profile.py [--json] [--out hw.toml] [--plot fit.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def _cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (user + nice + system, from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[0]) + int(fields[1]) + int(fields[2])) / ticks
    except (OSError, ValueError, IndexError):
        return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", help="write the fitted hardware TOML")
    parser.add_argument("--plot", help="write the residual plot PNG")
    args = parser.parse_args()

    import jax

    import afdjax

    load_before = os.getloadavg()
    busy0, own0, t0 = _cpu_busy_seconds(), time.process_time(), time.perf_counter()
    result = afdjax.profile_hardware()
    wall = time.perf_counter() - t0
    busy = _cpu_busy_seconds() - busy0
    own = time.process_time() - own0
    load_after = os.getloadavg()
    cores = os.cpu_count() or 1
    other_cores = max(0.0, (busy - own) / wall)
    errors = {s: [round(100 * float(e), 2) for e in v] for s, v in result.held_out_relative_error.items()}
    summary = dict(
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
        cores=cores,
        jax=jax.__version__,
        device=result.device,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        command="afdjax profile (defaults: deepseek-v3 scaled by 1/16 on CPU)",
        wall_s=round(wall, 1),
        held_out_error_percent=errors,
        max_held_out_error_percent=round(100 * result.max_held_out_error(), 2),
        fit_r_squared={s: round(result.fit.stages[s].quality()["r_squared"], 5) for s in result.measurements},
        latency_us=result.latency.coefficients(),
        load_average_1min_before_after=[round(load_before[0], 2), round(load_after[0], 2)],
        other_processes_cores_busy=round(other_cores, 2),
        within_targets=bool(wall < 120 and result.max_held_out_error() < 0.15),
    )
    if args.out:
        with open(args.out, "w") as f:
            f.write(result.to_toml())
    if args.plot:
        result.plot(args.plot)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(result.format_text())
    print(
        f"wall time {wall:.1f} s (target < 120 s); max |held-out error| "
        f"{summary['max_held_out_error_percent']:.2f} % (target < 15 %)"
    )
    print(
        f"machine load: 1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"other processes kept {other_cores:.2f} of {cores} cores busy during the run"
    )


if __name__ == "__main__":
    main()
