"""``afdjax sweep``: a large resumable sweep over a TOML grid, to Parquet."""

from __future__ import annotations

import json

from ._errors import set_interrupt_hint
from ._files import check_output_dir


def cmd_sweep(args) -> int:
    check_output_dir(args.out)  # before JAX is imported or the grid is read
    from .._sweep._core import sweep

    set_interrupt_hint(f"finished chunks are kept in {args.out}: run the same command again to resume")
    summary = sweep(  # an interrupt: run_guarded prints the line with this hint, exit 130
        args.grid,
        args.out,
        memory_budget_bytes=args.memory_budget_mb * 2**20,
        max_chunk_points=args.max_chunk_points,
        overwrite=args.overwrite,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    state = "complete" if summary.complete else "incomplete"
    print(
        f"afdjax sweep: {summary.points_computed} points computed, {summary.points_skipped} already done, "
        f"{summary.num_points} in the grid ({state}) in {summary.seconds:.1f} s on {summary.num_devices} device(s)"
    )
    print(f"Results in {summary.out_dir}/ (pandas.read_parquet({summary.out_dir!r}) or afdjax.read_sweep)")
    return 0
