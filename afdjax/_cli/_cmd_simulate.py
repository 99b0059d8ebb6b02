"""``afdjax simulate``: one Monte Carlo run over a range of ratios. The report (best ratio,
ratios within 2 paired standard errors, warnings, text and JSON) is the library's
:func:`afdjax.simulation_report`; this module parses, runs and prints."""

from __future__ import annotations

import json
import sys

from ._files import check_plot_path, short_spec
from ._parser import parse_ratios


def cmd_simulate(args) -> int:
    import jax

    from .. import __version__
    from .._engine import simulate
    from .._provision._simulation import simulation_report
    from .._specs import parse_hardware_spec, parse_workload_spec

    ratios = parse_ratios(args.ratios)
    workload = parse_workload_spec(args.workload)
    latency = parse_hardware_spec(args.hardware)
    if args.plot:
        check_plot_path(args.plot)
    result = simulate(
        jax.random.key(args.seed),
        workload,
        latency,
        args.batch_size,
        ratios,
        args.steps,
        args.replicas,
        start=args.start,
        warmup_steps=args.warmup,
        micro_batches=args.micro_batches,
        progress=not args.json and sys.stderr.isatty(),
    )
    settings = {
        "workload": args.workload,
        "hardware": args.hardware,
        "latency_coefficients": latency.coefficients(),
        "comm_scaling": latency.comm_scaling,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "replicas": args.replicas,
        "seed": args.seed,
        "start": args.start,
        "warmup_steps": args.warmup,
        "micro_batches": args.micro_batches,
        "afdjax_version": __version__,
    }
    report = simulation_report(result, workload, latency, settings=settings)
    if args.plot:
        title = (
            f"workload {short_spec(args.workload)} | hardware {short_spec(args.hardware)}\n"
            f"B = {args.batch_size}, {args.steps} steps x {args.replicas} replicas, seed {args.seed}"
        )
        report.plot(args.plot, title=title)
    if args.json:
        out = report.to_dict()
        if args.plot:
            out["plot"] = args.plot
        for warning in report.warnings:
            print(f"afdjax: warning: {warning}", file=sys.stderr)
        print(json.dumps(out, indent=2))
        return 0
    print(report.format_text())
    if args.plot:
        print(f"Plot written to {args.plot}")
    return 0
