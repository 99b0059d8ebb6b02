"""How long the command line takes to answer when it has no simulation to run (issue 11).

Wall time of a fresh process, median of ``--repeats`` runs (with the minimum and
maximum), for: the bare interpreter (``python -c pass``, the floor), ``afdjax --help``,
``afdjax simulate --help``, ``afdjax --version``, an argument error (``afdjax simulate
--steps x``), and the full library import (``python -c "import afdjax; afdjax.simulate"``,
which imports JAX). The commands run as ``python -m afdjax._cli`` with ``PYTHONPATH`` set
to the tree under test. It is a benchmark, not a timed test: the numbers depend on the
machine and its load (the runs of all commands are interleaved so load hits them alike).

    python experiments/bench_cli_start.py                 # 9 runs each
    python experiments/bench_cli_start.py --repeats 21 --json
    python experiments/bench_cli_start.py --compare /path/to/older/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "python -c pass": ["-c", "pass"],
    "afdjax --help": ["-m", "afdjax._cli", "--help"],
    "afdjax simulate --help": ["-m", "afdjax._cli", "simulate", "--help"],
    "afdjax --version": ["-m", "afdjax._cli", "--version"],
    "afdjax simulate --steps x (error)": ["-m", "afdjax._cli", "simulate", "--steps", "x"],
    "import afdjax; afdjax.simulate": ["-c", "import afdjax; afdjax.simulate"],
}
EXPECTED_RC = {"afdjax simulate --steps x (error)": 2}


def run_once(tree: str, argv: list[str]) -> tuple[float, int]:
    env = dict(os.environ, PYTHONPATH=tree, JAX_PLATFORMS="cpu")
    t0 = time.perf_counter()
    # cwd=tree: `python -m` / `-c` put the working folder first on sys.path
    proc = subprocess.run([sys.executable, *argv], env=env, cwd=tree, capture_output=True, timeout=300)
    return time.perf_counter() - t0, proc.returncode


def measure(trees: dict[str, str], repeats: int) -> dict:
    times = {(label, case): [] for label in trees for case in CASES}
    for _ in range(repeats):
        for case, argv in CASES.items():
            for label, tree in trees.items():
                seconds, rc = run_once(tree, argv)
                if rc != EXPECTED_RC.get(case, 0):
                    raise SystemExit(f"{case} ({label}) exited with {rc}")
                times[label, case].append(seconds)
    return {
        f"{label}: {case}" if len(trees) > 1 else case: {
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "runs": len(ts),
        }
        for (label, case), ts in times.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--compare", metavar="TREE", help="another afdjax source tree, measured alongside this one")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    trees = {"this tree": str(REPO)}
    if args.compare:
        trees["compare"] = str(Path(args.compare).resolve())
    rows = measure(trees, args.repeats)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpus = os.cpu_count()
    print(f"CLI start-up: wall time of a fresh process, {args.repeats} runs each (load {load:.1f}, {cpus} CPUs)")
    width = max(len(k) for k in rows)
    print(f"{'command':<{width}}  median s     min s     max s")
    for name, r in rows.items():
        print(f"{name:<{width}}  {r['median_s']:8.3f}  {r['min_s']:8.3f}  {r['max_s']:8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
