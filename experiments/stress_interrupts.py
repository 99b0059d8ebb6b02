"""Ctrl-C / SIGTERM at random moments (issue 11): does every command end cleanly?

Starts ``python -m afdjax._cli provision|simulate|sweep|verify`` (small but non-trivial
sizes, each runs for several seconds), sends SIGINT (or SIGTERM) after a random delay,
sometimes a second SIGINT shortly after the first (an impatient user), and records the
exit code, how long the process took to end after the signal, the number of
``afdjax: interrupted`` lines, and whether stderr holds ``Segmentation``, ``Traceback``,
``Exception ignored`` or ``Fatal Python error`` (``PYTHONFAULTHANDLER=1`` is set, so a
crash prints one). After a sweep, every finished chunk file must be readable. A run that
ends on its own before the signal is counted as ``finished first``.

    python experiments/stress_interrupts.py                 # 24 tries, delays 0.2-8 s
    python experiments/stress_interrupts.py --tries 40 --seed 1 --max-delay 4
    python experiments/stress_interrupts.py --repo /path/to/older/checkout   # before/after
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BAD = ("Segmentation", "Traceback", "Exception ignored", "Fatal Python error")
GRID = """[settings]
steps = 1500
replicas = 4
seed = 0
ratios = { start = 1, stop = 16, step = 1 }

[grid]
batch_size = [64, 128]

[[grid.workload]]
kind = "geometric"
mu_p = 100
mu_d = [100, 300, 500]
prefill = ["constant", "exponential"]

[[grid.hardware]]
preset = "paper-910c"
alpha_a = [0.001, 0.002]
"""


def commands(tmp: Path, i: int) -> dict[str, list[str]]:
    grid = tmp / "grid.toml"
    grid.write_text(GRID)
    return {
        "provision": ["provision", "--steps", "2000", "--replicas", "8"],
        "simulate": ["simulate", "--steps", "4000", "--replicas", "8"],
        "sweep": ["sweep", "--grid", str(grid), "--out", str(tmp / f"sweep-{i}"), "--max-chunk-points", "2"],
        "verify": ["verify", "--steps", "1000", "--replicas", "4", "--no-traces", "--out", str(tmp / f"verify-{i}")],
    }


def check_chunks(out: Path) -> str:
    import pyarrow.parquet as pq

    for f in out.glob("chunk-*.parquet"):
        try:
            pq.read_table(f)
        except Exception as err:  # a torn chunk would be a lost-work bug
            return f"unreadable {f.name}: {err}"
    return ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tries", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-delay", type=float, default=0.2)
    ap.add_argument("--max-delay", type=float, default=8.0)
    ap.add_argument("--sigterm-share", type=float, default=0.25, help="share of tries that send SIGTERM")
    ap.add_argument("--double-share", type=float, default=0.25, help="share of SIGINT tries with a second Ctrl-C")
    ap.add_argument("--repo", default=str(REPO), help="the afdjax source tree to run (default: this one)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = dict(os.environ, PYTHONPATH=args.repo, PYTHONFAULTHANDLER="1", JAX_PLATFORMS="cpu")
    rows, counts, problems = [], collections.Counter(), []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for i in range(args.tries):
            name = rng.choice(["provision", "simulate", "sweep", "verify"])
            sig = signal.SIGTERM if rng.random() < args.sigterm_share else signal.SIGINT
            double = sig == signal.SIGINT and rng.random() < args.double_share
            delay = rng.uniform(args.min_delay, args.max_delay)
            argv = commands(tmp, i)[name]
            proc = subprocess.Popen(
                [sys.executable, "-m", "afdjax._cli", *argv],
                env=env,
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(delay)
            sent = time.monotonic()
            finished_first = proc.poll() is not None
            if not finished_first:
                proc.send_signal(sig)
                if double:
                    time.sleep(rng.uniform(0.0, 0.3))
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
                err += "\n<HUNG: killed after 30 s>"
            took = time.monotonic() - sent
            bad = [b for b in BAD if b in err] + (["HUNG"] if "<HUNG" in err else [])
            lines = sum(line.startswith("afdjax: interrupted") for line in err.splitlines())
            extra = [line for line in err.splitlines() if line.strip() and not line.startswith("afdjax: interrupted")]
            note = check_chunks(tmp / f"sweep-{i}") if name == "sweep" else ""
            want = 128 + sig
            if finished_first:
                outcome = f"finished first (rc {proc.returncode})"
            elif proc.returncode == want and lines == 1 and not bad and not extra and not note and took < 2.0:
                outcome = "clean"
            else:
                outcome = "PROBLEM"
                problems.append((i, name, sig.name, err[-1500:], note))
            counts[outcome] += 1
            counts[f"rc {proc.returncode}"] += 1
            for b in bad:
                counts[b] += 1
            label = sig.name + ("x2" if double else "")
            rows.append((i, name, label, delay, proc.returncode, took, lines, outcome))
            print(
                f"{i:3d} {name:9s} {label:9s} at {delay:4.1f} s: rc {proc.returncode:4d}, "
                f"ended {took:5.2f} s after the signal, {lines} interrupt line(s), {outcome}"
                + (f" [{', '.join(bad)}]" if bad else "")
                + (f" [{note}]" if note else ""),
                flush=True,
            )
    print("\nsummary:", dict(sorted(counts.items())))
    ends = sorted(r[5] for r in rows if not r[7].startswith("finished"))
    if ends:
        print(f"time from signal to exit: median {ends[len(ends) // 2]:.3f} s, max {ends[-1]:.3f} s")
    for i, name, sig, err, note in problems:
        print(f"\n--- try {i} ({name}, {sig}) stderr tail:\n{err}\n{note}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
