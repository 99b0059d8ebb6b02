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


def row_workloads(obs, default_spec):
    """The Workload of each row label of ``obs`` (a ``--workload`` spec; ``""``: ``default_spec``)."""
    from .._specs import parse_workload_spec
    from ._parser import DEFAULT_WORKLOAD

    out = {}
    for label in sorted(set(obs.workload)):
        spec = label or default_spec or DEFAULT_WORKLOAD
        try:
            out[label] = parse_workload_spec(spec)
        except ValueError as err:
            raise CliError(f"--observations: workload {spec!r}: {err}" if label else str(err)) from None
    return out


def cmd_fit_throughput(args) -> int:
    if args.out:
        check_output_path(args.out, "--out")
    names = split_names(args.fit)
    if names and any(
        n in ("mu_p", "mu_d") or n.startswith(("decode_", "prefill_")) for n in names
    ):  # workload parameters
        return _cmd_fit_throughput_workload(args, names)
    import jax

    from .._fit._calibrate import calibrate
    from .._fit._calibrate_text import calibration_toml
    from .._fit._sweep_data import read_ratio_sweep
    from .._specs import latency_to_toml, parse_hardware_spec
    from .._step import Pipeline

    obs = read_ratio_sweep(args.observations)
    workloads = row_workloads(obs, args.workload)
    latency = parse_hardware_spec(args.hardware) if args.hardware else None
    with option_names(*SIMULATION_OPTIONS):
        cal = calibrate(
            obs,
            workloads,
            latency,
            names,
            key=jax.random.key(args.seed),
            num_steps=args.steps,
            num_replicas=args.replicas,
            holdout=args.holdout,
            folds=args.folds,
            step_model=Pipeline(args.micro_batches) if args.micro_batches else None,
            comm_scaling=args.comm_scaling,
        )
    if args.out:
        held = cal.held_out
        unit = "step_time" if obs.quantity == "step_time" else "throughput denominator"
        note = "" if held is None else f"; held-out RMS relative error {100 * held.rms_relative_error:.2f}%"
        description = (
            f"afdjax fit throughput from {args.observations}: {len(obs)} {obs.quantity} rows, "
            f"fitted {', '.join(cal.names)}; max |relative residual| {100 * cal.max_abs_rel_residual:.2f}%{note}\n"
            f"time unit: that of the observations' {unit}"
        )
        write_text(args.out, latency_to_toml(cal.latency, description=description) + calibration_toml(cal))
    if args.json:
        out = cal.to_dict()
        if args.out:
            out["toml"] = args.out
        print(json.dumps(out, indent=2))
    else:
        print(cal.format_text())
        if args.out:
            print(
                f"Hardware TOML written to {args.out} (use --hardware {args.out}; afdjax predict reads its covariance)"
            )
    return 0


def _cmd_fit_throughput_workload(args, names) -> int:
    """Workload parameters in ``--fit``: the single-workload fitter (:func:`afdjax.fit_throughput`)."""
    import jax

    from .._fit._throughput import fit_throughput, read_throughput_observations
    from .._specs import latency_to_toml, parse_hardware_spec, parse_workload_spec
    from ._parser import DEFAULT_HARDWARE, DEFAULT_WORKLOAD

    obs = read_throughput_observations(args.observations)
    workload = parse_workload_spec(args.workload or DEFAULT_WORKLOAD)
    latency = parse_hardware_spec(args.hardware or DEFAULT_HARDWARE)
    with option_names(*SIMULATION_OPTIONS):
        fit = fit_throughput(
            obs,
            workload,
            latency,
            names,
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
