"""``afdjax provision`` (with and without constraints) and ``afdjax verify``. The numbers
and decisions (automatic KV capacity, per-instance power, the recommendation) are the
library's; this module turns options into arguments and prints the report."""

from __future__ import annotations

import json
import sys

from ._cmd_simulate import check_run_fits
from ._errors import CliError
from ._files import check_output_dir, check_plot_path, short_spec
from ._parser import (
    CONSTRAINT_FLAGS,
    CONSTRAINT_OPTIONS,
    SIMULATION_OPTIONS,
    option_names,
    parse_batch_sizes,
    parse_ratios,
)


def _constrained_mode(args) -> bool:
    return any(getattr(args, k) is not None for k in CONSTRAINT_FLAGS) or args.objective != "per-instance"


def _cmd_provision_constrained(args) -> int:
    import jax

    from .._provision._constraints import (
        Constraints,
        Costs,
        deployment_kv_capacity_bytes,
        provision_constrained,
    )
    from .._provision._report import default_ratio_range
    from .._specs import load_deployment, parse_workload_spec

    ratios = parse_ratios(args.ratios) if args.ratios else None
    batch_sizes = parse_batch_sizes(args.batch_sizes) if args.batch_sizes else [args.batch_size]
    workload = parse_workload_spec(args.workload)
    deployment = load_deployment(args.hardware)
    capacity = args.kv_capacity_gb  # bytes (the option's type converts GB), "auto" or None
    if capacity == "auto":
        try:
            capacity = deployment_kv_capacity_bytes(deployment)
        except ValueError as err:
            message = str(err).replace("the hardware spec", f"the hardware spec {args.hardware!r}")
            raise CliError(f"--kv-capacity-gb auto: {message}") from None
    if capacity is not None and args.kv_bytes_per_token is None and deployment.kv_bytes_per_token is None:
        raise CliError(
            f"--kv-capacity-gb needs the KV bytes per token: the hardware spec {args.hardware!r} has no "
            "model; use ACCELERATOR:MODEL (e.g. h100:deepseek-v3) or --kv-bytes-per-token"
        )
    if args.tpot_ms is not None and args.num_layers is None and deployment.num_layers is None:
        raise CliError(
            f"--tpot-ms needs the number of layers: the hardware spec {args.hardware!r} has no model; "
            "use ACCELERATOR:MODEL (e.g. h100:deepseek-v3) or --num-layers"
        )
    with option_names(*CONSTRAINT_OPTIONS):
        constraints = Constraints.for_deployment(
            deployment,
            kv_capacity_bytes=capacity,
            kv_bytes_per_token=args.kv_bytes_per_token,
            kv_overflow_tolerance=args.kv_overflow_prob,
            tpot_target_ms=args.tpot_ms,
            tpot_statistic=args.tpot_stat,
            num_layers=args.num_layers,
            time_unit_us=args.time_unit_us,
        )
    for a, b, flag in (
        (args.price_attention, args.price_ffn, "--price-attention and --price-ffn"),
        (args.power_attention_w, args.power_ffn_w, "--power-attention-w and --power-ffn-w"),
    ):
        if (a is None) != (b is None):
            raise CliError(f"give both {flag}, or neither")
    with option_names(*CONSTRAINT_OPTIONS):
        costs = Costs.for_deployment(
            deployment,
            attention_price_per_hour=args.price_attention,
            ffn_price_per_hour=args.price_ffn,
            attention_power_w=args.power_attention_w,
            ffn_power_w=args.power_ffn_w,
        )
    objective = args.objective.replace("-", "_")
    if objective == "per_dollar" and costs.attention_price_per_hour is None:
        raise CliError("--objective per-dollar needs --price-attention and --price-ffn ($ per instance-hour)")
    if objective == "per_joule" and costs.attention_power_w is None:
        raise CliError(
            f"--objective per-joule needs --power-attention-w and --power-ffn-w (the hardware spec "
            f"{args.hardware!r} gives no board power)"
        )
    top = max(ratios) if ratios else max(default_ratio_range(workload, deployment.latency, max(batch_sizes)))
    for b in batch_sizes:  # micro-batches against every B; sizes and memory at the largest
        check_run_fits(workload, b, top, args)
    settings = {
        **_run_settings(args),
        "deployment": {k: v for k, v in deployment.to_dict().items() if v is not None},
    }
    with option_names(*SIMULATION_OPTIONS, *CONSTRAINT_OPTIONS):
        report = provision_constrained(
            jax.random.key(args.seed),
            workload,
            deployment.latency,
            batch_sizes,
            ratios,
            args.steps,
            args.replicas,
            constraints=constraints,
            costs=costs,
            objective=objective,
            micro_batches=args.micro_batches,
            settings=settings,
            progress=not args.json and sys.stderr.isatty(),
            start=args.start,
            warmup_steps=args.warmup,
        )
    title = (
        f"workload {short_spec(args.workload)} | hardware {short_spec(args.hardware)}"
        + (f" | {args.micro_batches} micro-batches" if args.micro_batches else "")
        + f"\n{args.steps} steps x {args.replicas} replicas, seed {args.seed}"
    )
    return _emit_report(args, report, title)


def _emit_report(args, report, title: str) -> int:
    """Plot (``--plot``), then print the report as JSON (``--json``, warnings on stderr) or text."""
    if args.plot:
        report.plot(args.plot, title=title)
    if args.json:
        out = report.to_dict()
        if args.plot:
            out["plot"] = args.plot
        for warning in getattr(report, "warnings", ()):
            print(f"afdjax: warning: {warning}", file=sys.stderr)
        print(json.dumps(out, indent=2))
        return 0
    print(report.format_text())
    if args.plot:
        print(f"Plot written to {args.plot}")
    return 0


def cmd_provision(args) -> int:
    if args.plot:
        check_plot_path(args.plot)
    import jax

    if _constrained_mode(args):
        return _cmd_provision_constrained(args)

    from .._provision._report import default_ratio_range, provision
    from .._specs import parse_hardware_spec, parse_workload_spec

    ratios = parse_ratios(args.ratios) if args.ratios else None
    workload = parse_workload_spec(args.workload)
    latency = parse_hardware_spec(args.hardware)
    with option_names(*SIMULATION_OPTIONS):
        top = max(ratios) if ratios else max(default_ratio_range(workload, latency, args.batch_size))
    check_run_fits(workload, args.batch_size, top, args)
    settings = _run_settings(args)
    with option_names(*SIMULATION_OPTIONS):
        report = provision(
            jax.random.key(args.seed),
            workload,
            latency,
            args.batch_size,
            ratios,
            args.steps,
            args.replicas,
            settings=settings,
            start=args.start,
            warmup_steps=args.warmup,
            micro_batches=args.micro_batches,
            progress=not args.json and sys.stderr.isatty(),
        )
    title = (
        f"workload {short_spec(args.workload)} | hardware {short_spec(args.hardware)} | B = {args.batch_size}\n"
        f"{args.steps} steps x {args.replicas} replicas, seed {args.seed}"
    )
    return _emit_report(args, report, title)


def cmd_verify(args) -> int:
    check_output_dir(args.out)
    from .._provision._report import default_ratio_range
    from .._provision._verify import PAPER_CONFIGS, run_verification
    from .._specs import parse_hardware_spec
    from .._workload import Geometric

    latency = parse_hardware_spec(args.hardware)
    for _, _, mu_p, mu_d, b, _, _ in PAPER_CONFIGS:  # the traces' ranges are checked by the library
        workload = Geometric(mu_p, mu_d)
        check_run_fits(workload, b, max(default_ratio_range(workload, latency, b)), args)
    with option_names(*SIMULATION_OPTIONS):
        summary = run_verification(
            latency,
            out_dir=args.out,
            hardware_name=args.hardware,
            num_steps=args.steps,
            num_replicas=args.replicas,
            seed=args.seed,
            include_traces=not args.no_traces,
            progress=not args.json,
            micro_batches=args.micro_batches,
        )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(summary["markdown"])
        print(f"Results written to {args.out}/ (verification.md, verification.json, *.png)")
    return 0


def _run_settings(args) -> dict:
    """The settings a provision report records about the command that made it."""
    from .. import __version__

    return {
        "workload": args.workload,
        "hardware": args.hardware,
        "seed": args.seed,
        "start": args.start,
        "warmup_steps": args.warmup,
        "afdjax_version": __version__,
    }
