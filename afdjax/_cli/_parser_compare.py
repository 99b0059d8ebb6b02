"""Options of ``afdjax compare`` (AFD against co-located serving on the same devices)."""

from __future__ import annotations

DEFAULT_COMPARE_HARDWARE = "h100:deepseek-v3"


def add_compare_parser(sub, types) -> None:
    """Register ``compare`` on the subcommands ``sub``; ``types`` is the argument-type module
    (:mod:`afdjax._cli._parser`, passed in so that this module does not import it back)."""
    DEFAULT_WORKLOAD = types.DEFAULT_WORKLOAD
    _float_at_least, _gb_or_auto = types._float_at_least, types._gb_or_auto
    _nonneg_int, _positive_int = types._nonneg_int, types._positive_int
    p = sub.add_parser(
        "compare",
        help="is AFD worth it? the best rA-1F configuration against the best co-located one on the same devices",
        description=(
            "The best AFD configuration (ratio r, batch size, bundles) against the best co-located one "
            "(data-parallel attention, expert-parallel FFN over groups of ranks, per-layer all-to-all and "
            "barrier) on the same devices, from the same ACCELERATOR:MODEL spec: output tokens/s per device of "
            "both, the gain and its factors (batch expansion, FFN-instance tax, step-time ratio, device use). "
            "Closed form (Gaussian barrier) over every shape and batch size; the two best are simulated."
        ),
    )
    p.add_argument("--workload", default=DEFAULT_WORKLOAD, help=f"workload spec (default {DEFAULT_WORKLOAD})")
    p.add_argument(
        "--hardware",
        default=DEFAULT_COMPARE_HARDWARE,
        help=f"ACCELERATOR:MODEL[,option=value] spec (default {DEFAULT_COMPARE_HARDWARE})",
    )
    p.add_argument("--devices", type=_positive_int("--devices"), default=64, help="accelerators available (default 64)")
    p.add_argument(
        "--kv-capacity-gb",
        type=_gb_or_auto("--kv-capacity-gb"),
        default="auto",
        help="KV-cache GB of one Attention instance, or auto (HBM minus attention weights; default); the "
        "co-located rank has this minus its share of the FFN weights",
    )
    p.add_argument(
        "--tpot-ms", type=_float_at_least("--tpot-ms", 0.0), default=None, help="mean TPOT target (ms) for both sides"
    )
    p.add_argument(
        "--max-batch-size",
        type=_positive_int("--max-batch-size", 65536),
        default=4096,
        help="largest slots per Attention instance or rank considered (default 4096)",
    )
    p.add_argument(
        "--overlap",
        choices=("auto", "on", "off"),
        default="auto",
        help="co-located two-batch overlap: on, off, or auto (the better of the two; default)",
    )
    p.add_argument(
        "--afd-micro-batches",
        type=_positive_int("--afd-micro-batches"),
        default=None,
        help="AFD side as an explicit pipeline of M micro-batches (default: the paper's ideal overlap)",
    )
    p.add_argument(
        "--steps",
        type=_nonneg_int("--steps"),
        default=100,
        help="simulated steps per replica for the two best configurations (default 100; 0: closed form only)",
    )
    p.add_argument("--replicas", type=_positive_int("--replicas"), default=2, help="replicas (default 2)")
    p.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of AFD throughput per device against r")
