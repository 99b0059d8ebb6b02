"""Reproduce the paper's study (arXiv 2601.21351, section 4) and run it on the bundled traces.

Same as ``afdjax verify`` but with the results kept in the repository:
``experiments/results/verification.{md,json}`` and plots in ``docs/``.

    python experiments/verify_paper.py               # 4000 steps x 16 replicas (~1 minute on 2 CPU cores)
    python experiments/verify_paper.py --steps 16000 # tighter standard errors
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import afdjax
from afdjax._provision._verify import run_verification

KEEP_PLOTS = (
    "rstar_vs_batch.png",
    "rstar_vs_context.png",
    "idle_fractions.png",
    "provision_B_256__mu_p_100__mu_d_500.png",
    "provision_mooncake_conv.png",
    "provision_azure_conv.png",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    latency = afdjax.LatencyModel.from_preset("paper-910c")
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_verification(
            latency, out_dir=tmp, num_steps=args.steps, num_replicas=args.replicas, seed=args.seed
        )
        results = ROOT / "experiments" / "results"
        results.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(tmp) / "verification.md", results / "verification.md")
        shutil.copy(Path(tmp) / "verification.json", results / "verification.json")
        (ROOT / "docs").mkdir(exist_ok=True)
        for name in KEEP_PLOTS:
            shutil.copy(Path(tmp) / name, ROOT / "docs" / name)
    print(summary["markdown"])
    print(f"\nwritten: experiments/results/verification.md, .json; docs/*.png ({summary['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
