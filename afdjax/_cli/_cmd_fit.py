"""``afdjax fit workload|latency|throughput``: fit the model's inputs to data."""

from __future__ import annotations

import json

from ._errors import CliError
from ._files import check_output_path, check_plot_path, split_names, write_text
from ._parser import SIMULATION_OPTIONS, option_names


def cmd_fit_workload(args) -> int:
    from .._fit._workload import DECODE_FIT_FAMILIES, PREFILL_FIT_FAMILIES, fit_trace

    fit = fit_trace(
        args.trace,
        prefill_column=args.prefill_column,
        decode_column=args.decode_column,
        decode_families=split_names(args.family) or DECODE_FIT_FAMILIES,
        prefill_families=split_names(args.prefill_family) or PREFILL_FIT_FAMILIES,
    )
    if args.json:
        print(json.dumps(fit.to_dict(), indent=2))
    else:
        print(fit.format_text())
    return 0


def cmd_fit_latency(args) -> int:
    if args.out:
        check_output_path(args.out, "--out")
    if args.plot:
        check_plot_path(args.plot)
    from .._fit._latency import fit_latency
    from .._specs import parse_hardware_spec

    defaults = parse_hardware_spec(args.defaults) if args.defaults else None
    with option_names("n_bootstrap"):
        fit = fit_latency(
            args.observations,
            loss=args.loss,
            comm_scaling=args.comm_scaling,
            n_bootstrap=args.bootstrap,
            defaults=defaults,
        )
    if args.out:
        write_text(args.out, fit.to_toml())
    if args.plot:
        fit.plot_residuals(args.plot)
    if args.json:
        out = fit.to_dict()
        if args.out:
            out["toml"] = args.out
        print(json.dumps(out, indent=2))
    else:
        print(fit.format_text().rstrip())
        if args.out:
            print(f"Hardware TOML written to {args.out} (use --hardware {args.out})")
    return 0


def cmd_fit_throughput(args) -> int:
    if args.out:
        check_output_path(args.out, "--out")
    import jax

    from .._fit._throughput import fit_throughput, read_throughput_observations
    from .._specs import latency_to_toml, parse_hardware_spec, parse_workload_spec

    obs = read_throughput_observations(args.observations)
    workload = parse_workload_spec(args.workload)
    latency = parse_hardware_spec(args.hardware)
    with option_names(*SIMULATION_OPTIONS):
        fit = fit_throughput(
            obs,
            workload,
            latency,
            split_names(args.fit) or (),
            key=jax.random.key(args.seed),
            num_steps=args.steps,
            num_replicas=args.replicas,
        )
    if args.out:
        write_text(
            args.out,
            latency_to_toml(
                fit.latency,
                description=(
                    f"afdjax fit throughput from {args.observations}: {len(obs.throughput)} observations, "
                    f"fitted {', '.join(fit.names)}; max |relative residual| {100 * fit.max_abs_rel_residual:.2f}%"
                ),
            ),
        )
    if args.json:
        print(json.dumps(fit.to_dict(), indent=2))
    else:
        print(fit.format_text())
        if args.out:
            print(f"Hardware TOML written to {args.out}")
    return 0


def cmd_fit(args) -> int:
    if args.fit_command is None:
        raise CliError("choose what to fit: afdjax fit workload|latency|throughput")
    return {"workload": cmd_fit_workload, "latency": cmd_fit_latency, "throughput": cmd_fit_throughput}[
        args.fit_command
    ](args)
