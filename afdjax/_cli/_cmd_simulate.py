"""``afdjax simulate``: one Monte Carlo run over a range of ratios. The report (best ratio,
ratios within 2 paired standard errors, warnings, text and JSON) is the library's
:func:`afdjax.simulation_report`; this module parses, runs and prints."""

from __future__ import annotations

import json
import sys

from ._files import check_plot_path, short_spec
from ._parser import SIMULATION_OPTIONS, option_names, parse_ratios

NUM_BINS = 4096  # simulate's default num_bins (histogram bins), which the commands use


def check_run_fits(workload, batch_size: int, max_ratio: int, args) -> None:
    """Before any simulation: refuse a run that cannot work (micro-batches beyond ``B``,
    more steps than int32 counts, more memory than this machine holds), naming the
    options. The same checks :func:`afdjax.simulate` makes, made here before anything
    is compiled or allocated."""
    from .._engine._sizing import plan_sizes
    from .._step import as_step_model

    with option_names(*SIMULATION_OPTIONS):
        model = as_step_model(None, args.micro_batches)
        model.check(batch_size)
        warmup = getattr(args, "warmup", None)
        cfg = dict(
            max_ratio=max_ratio,
            batch_size=batch_size,
            num_steps=args.steps,
            warmup_steps=model.default_warmup_steps() if warmup is None else warmup,
            num_replicas=args.replicas,
            num_bins=NUM_BINS,
            step_model=model,
        )
        plan_sizes(workload, cfg)


def cmd_simulate(args) -> int:
    if args.plot:
        check_plot_path(args.plot)
    import jax

    from .. import __version__
    from .._engine import simulate
    from .._provision._simulation import simulation_report
    from .._specs import parse_hardware_spec, parse_workload_spec

    ratios = parse_ratios(args.ratios)
    workload = parse_workload_spec(args.workload)
    latency = parse_hardware_spec(args.hardware)
    check_run_fits(workload, args.batch_size, max(ratios), args)
    with option_names(*SIMULATION_OPTIONS):
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
