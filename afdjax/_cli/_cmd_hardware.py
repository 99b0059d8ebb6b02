"""``afdjax hardware`` (roofline derivation of the coefficients) and ``afdjax profile``
(measure this device and fit them)."""

from __future__ import annotations

import json
import sys

from ._errors import CliError
from ._files import check_output_path, check_plot_path, write_text
from ._parser import DERIVATION_OPTIONS, PROFILE_OPTIONS, option_names


def cmd_hardware(args) -> int:
    from .._hardware import derive_latency, format_presets
    from .._specs import parse_accelerator_spec, parse_model_spec

    if args.list:
        print(format_presets(), end="")
        return 0
    if args.out:
        check_output_path(args.out, "--out")
    accelerator, model = parse_accelerator_spec(args.accelerator), parse_model_spec(args.model)
    with option_names(*DERIVATION_OPTIONS):
        derivation = derive_latency(
            accelerator,
            model,
            dtype=args.dtype,
            memory_efficiency=args.memory_efficiency,
            compute_efficiency=args.compute_efficiency,
            network_efficiency=args.network_efficiency,
            kernel_overhead_us=args.kernel_overhead_us,
            attention_devices=args.attention_devices,
            ffn_devices=args.ffn_devices,
            comm_scaling=args.comm_scaling,
        )
    if args.out:
        write_text(args.out, derivation.to_toml())
    if args.json:
        out = derivation.to_dict()
        if args.out:
            out["toml"] = args.out
        print(json.dumps(out, indent=2))
        return 0
    print(derivation.format_text(), end="")
    if args.out:
        print(f"Hardware TOML written to {args.out} (use --hardware {args.out})")
    return 0


def _int_list(option: str, text: str | None):
    if text is None:
        return None
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CliError(f"{option} {text!r} is malformed: expected a comma list of integers like 64,128,256") from None
    if len(values) < 3 or min(values) < 1:
        raise CliError(f"{option} {text!r}: give at least 3 integers >= 1")
    return values


def cmd_profile(args) -> int:
    from .._profile import profile_hardware

    if args.scale is not None and not (0 < args.scale <= 1):
        raise CliError(f"--scale must be in (0, 1], got {args.scale:g}")
    if args.out:
        check_output_path(args.out, "--out")
    if args.plot:
        check_plot_path(args.plot)
    with option_names(*PROFILE_OPTIONS):
        result = profile_hardware(
            model=args.model,
            scale=args.scale,
            hidden_size=args.hidden_size,
            batch_size=args.batch_size,
            kv_lengths=_int_list("--kv-lengths", args.kv_lengths),
            ffn_batches=_int_list("--ffn-batches", args.ffn_batches),
            repeats=args.repeats,
            quantile=args.quantile,
            comm=args.comm,
            defaults=args.defaults,
            seed=args.seed,
            progress=not args.json and sys.stdout.isatty(),
        )
    if args.out:
        write_text(args.out, result.to_toml())
    if args.plot:
        result.plot(args.plot)
    if args.json:
        out = result.to_dict()
        if args.out:
            out["toml"] = args.out
        if args.plot:
            out["plot"] = args.plot
        print(json.dumps(out, indent=2))
        return 0
    print(result.format_text(), end="")
    if args.out:
        print(f"Hardware TOML written to {args.out} (use --hardware {args.out})")
    if args.plot:
        print(f"Plot written to {args.plot}")
    return 0
