"""``afdjax serve`` and ``afdjax capacity``: open-loop serving (issue 14). The numbers come
from :func:`afdjax.serve`, :func:`afdjax.capacity` and :func:`afdjax.plan`; this module
parses, runs and prints."""

from __future__ import annotations

import contextlib
import json
import re
import sys

from ._errors import CliError
from ._files import check_plot_path, short_spec

_OPTIONS = {
    "arrival_rates": "--arrival-rate",
    "num_steps": "--steps",
    "num_replicas": "--replicas",
    "batch_size": "--batch-size",
    "slo_tpot": "--slo-tpot",
    "slo_ttft": "--slo-ttft",
    "kv_capacity": "--kv-capacity",
    "prefill_alpha": "--prefill-alpha",
    "prefill_beta": "--prefill-beta",
    "warmup_steps": "--warmup",
    "cv": "--arrivals gamma:cv",
    "arrivals": "--arrivals",
    "total_rate": "--total-rate",
}


@contextlib.contextmanager
def _named():
    """A library ``ValueError`` as one line naming the options (``num_steps=0`` -> ``--steps 0``)."""
    try:
        yield
    except ValueError as err:
        message = str(err)
        for name, option in _OPTIONS.items():
            message = re.sub(rf"(?<![\w'\",:.-]){name}=", f"{option} ", message)
        raise CliError(message) from None


def _trace_path(workload_spec: str) -> str:
    spec = workload_spec.strip()
    if not spec.startswith("trace:"):
        raise CliError(
            f"--arrivals trace replays the timestamps of a trace workload, but --workload is {spec!r}: "
            "use --workload trace:PATH (e.g. trace:azure-conv) or --arrivals trace:PATH"
        )
    path = spec[len("trace:") :]
    if path.startswith('"'):
        return path[1:].split('"', 1)[0]
    return path.split(",", 1)[0]


def _setup(args):
    """``(workload or None, latency, arrivals, kv tokens or None, ratios)`` from the options."""
    from .._serve import GammaArrivals, load_arrival_trace
    from .._specs import parse_hardware_spec, parse_workload_spec
    from ._parser import parse_ratios

    ratios = parse_ratios(args.ratios)
    latency = parse_hardware_spec(args.hardware)
    arrivals = args.arrivals.strip()
    workload = None
    if arrivals == "trace" or arrivals.startswith("trace:"):
        path = _trace_path(args.workload) if arrivals == "trace" else arrivals[len("trace:") :]
        with _named():
            arrivals = load_arrival_trace(path)
    else:
        if arrivals.startswith("gamma:"):
            m = re.fullmatch(r"gamma:cv=(\S+)", arrivals)
            try:
                cv = float(m.group(1)) if m else None
            except ValueError:
                cv = None
            if cv is None:
                raise CliError(f"--arrivals {arrivals!r} is malformed: expected gamma:cv=C, e.g. gamma:cv=2")
            with _named():
                arrivals = GammaArrivals(cv)
        elif arrivals != "poisson":
            raise CliError(f"--arrivals {arrivals!r} is invalid: expected poisson, gamma:cv=C, trace or trace:PATH")
        workload = parse_workload_spec(args.workload)
    kv = args.kv_capacity_tokens
    if args.kv_capacity_gb is not None:
        if kv is not None:
            raise CliError("give --kv-capacity-gb or --kv-capacity-tokens, not both")
        if args.kv_bytes_per_token is None:
            raise CliError("--kv-capacity-gb needs --kv-bytes-per-token (KV-cache bytes per token over all layers)")
        kv = args.kv_capacity_gb * 1e9 / args.kv_bytes_per_token
    return workload, latency, arrivals, kv, ratios


def _settings(args, latency, kv):
    from .. import __version__

    return {
        "workload": args.workload,
        "hardware": args.hardware,
        "latency_coefficients": latency.coefficients(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "replicas": args.replicas,
        "seed": args.seed,
        "kv_capacity_tokens": kv,
        "afdjax_version": __version__,
    }


def cmd_serve(args) -> int:
    if args.plot:
        check_plot_path(args.plot)
    import jax

    from .._serve import format_serve, plot_serve, serve, serve_dict

    workload, latency, arrivals, kv, ratios = _setup(args)
    with _named():
        result = serve(
            jax.random.key(args.seed),
            workload,
            latency,
            args.batch_size,
            ratios,
            args.arrival_rate,
            args.steps,
            args.replicas,
            arrivals=arrivals,
            kv_capacity=kv,
            prefill_alpha=args.prefill_alpha,
            prefill_beta=args.prefill_beta,
            slo_tpot=args.slo_tpot,
            slo_ttft=args.slo_ttft,
            policy=args.policy,
            warmup_steps=args.serve_warmup,
            progress=not args.json and sys.stderr.isatty(),
        )
    if args.plot:
        title = (
            f"workload {short_spec(args.workload)} | hardware {short_spec(args.hardware)} | "
            f"arrivals {result.settings['arrivals']}\nB = {args.batch_size}, {args.steps} steps x "
            f"{args.replicas} replicas, seed {args.seed}"
        )
        plot_serve(result, args.plot, title=title)
    if args.json:
        out = serve_dict(result, _settings(args, latency, kv))
        if args.plot:
            out["plot"] = args.plot
        print(json.dumps(out, indent=2))
        return 0
    print(format_serve(result))
    if args.plot:
        print(f"Plot written to {args.plot}")
    return 0


def cmd_capacity(args) -> int:
    import jax

    from .._serve import capacity, format_capacity, plan

    workload, latency, arrivals, kv, ratios = _setup(args)
    with _named():
        cap = capacity(
            jax.random.key(args.seed),
            workload,
            latency,
            args.batch_size,
            ratios,
            slo_tpot=args.slo_tpot,
            slo_ttft=args.slo_ttft,
            num_steps=args.steps,
            num_replicas=args.replicas,
            grid_points=max(2, args.grid_points),
            kv_capacity=kv,
            arrivals=arrivals,
            prefill_alpha=args.prefill_alpha,
            prefill_beta=args.prefill_beta,
            policy=args.policy,
            warmup_steps=args.serve_warmup,
        )
        answer = None
        if args.total_rate is not None:
            answer = plan(cap, args.total_rate, price_attention=args.price_attention, price_ffn=args.price_ffn)
    if args.json:
        out = cap.to_dict()
        out["settings"] = {**out["settings"], **_settings(args, latency, kv)}
        if answer is not None:
            out["plan"] = answer.to_dict()
        print(json.dumps(out, indent=2, default=lambda x: None))
        return 0
    print(format_capacity(cap, answer))
    return 0
