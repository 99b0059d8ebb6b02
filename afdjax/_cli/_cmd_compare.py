"""``afdjax compare``: AFD against co-located serving on the same devices. The numbers are
:func:`afdjax._compare.compare`'s; this module turns options into arguments and prints."""

from __future__ import annotations

import json
import re

from ._errors import CliError
from ._files import check_plot_path, short_spec

_OPTIONS = {
    "devices": "--devices",
    "hardware": "--hardware",
    "tpot_ms": "--tpot-ms",
    "kv_capacity_bytes": "--kv-capacity-gb",
    "max_batch_size": "--max-batch-size",
    "num_steps": "--steps",
    "num_replicas": "--replicas",
    "workload": "--workload",
    "afd_step_model": "--afd-micro-batches",
}


def _as_option(message: str) -> str:
    """``devices=8 is invalid`` -> ``--devices 8 is invalid`` (names inside a spec are left alone)."""
    for name, option in _OPTIONS.items():
        message = re.sub(rf"(?<![\w'\",:.-]){name}=", f"{option} ", message)
    return message


def cmd_compare(args) -> int:
    if args.plot:
        check_plot_path(args.plot)
    import jax

    from .._compare import compare
    from .._specs import parse_workload_spec
    from .._step import Pipeline

    workload = parse_workload_spec(args.workload)
    try:
        result = compare(
            workload,
            args.hardware,
            args.devices,
            kv_capacity_bytes=args.kv_capacity_gb,
            tpot_ms=args.tpot_ms,
            max_batch_size=args.max_batch_size,
            colocated_overlap={"auto": None, "on": True, "off": False}[args.overlap],
            num_steps=args.steps,
            num_replicas=args.replicas,
            key=jax.random.key(args.seed),
            afd_step_model=None if args.afd_micro_batches is None else Pipeline(args.afd_micro_batches),
        )
    except ValueError as err:
        raise CliError(_as_option(str(err))) from None
    if args.plot:
        result.plot(
            args.plot,
            title=f"workload {short_spec(args.workload)} | {short_spec(args.hardware)} | {args.devices} devices",
        )
    if args.json:
        out = result.to_dict()
        out["settings"]["seed"] = args.seed
        if args.plot:
            out["plot"] = args.plot
        print(json.dumps(out, indent=2))
        return 0
    print(result.format_text())
    if args.plot:
        print(f"Plot written to {args.plot}")
    return 0
