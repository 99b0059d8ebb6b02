"""Options of ``afdjax serve`` and ``afdjax capacity`` (open-loop serving, issue 14)."""

from __future__ import annotations

import argparse

POLICY_CHOICES = ("balanced", "least_kv", "round_robin", "random")  # afdjax._serve.POLICIES


def _rates(types):
    """argparse type: one arrival rate or a comma list, each a finite number > 0."""
    one = types._float_at_least("--arrival-rate", 0.0)

    def conv(text):
        parts = [p for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"--arrival-rate {text!r} is empty: expected numbers > 0")
        return [one(p) for p in parts]

    return conv


def _add_open_loop_options(p, types, *, steps: int, replicas: int) -> None:
    _float_at_least, _positive_int, _nonneg_int = types._float_at_least, types._positive_int, types._nonneg_int
    p.add_argument("--workload", default=types.DEFAULT_WORKLOAD, help="workload spec, as for simulate")
    p.add_argument("--hardware", default=types.DEFAULT_HARDWARE, help="hardware spec, as for simulate")
    p.add_argument(
        "--batch-size",
        type=_positive_int("--batch-size", types.MAX_BATCH_SIZE),
        default=64,
        help="slots B per Attention instance (default 64)",
    )
    p.add_argument("--ratios", default="1:8", help="ratios r: LO:HI, LO:HI:STEP or 1,2,4 (default 1:8)")
    p.add_argument("--steps", type=_positive_int("--steps"), default=steps, help=f"measured steps (default {steps})")
    p.add_argument(
        "--replicas", type=_positive_int("--replicas"), default=replicas, help=f"replicas (default {replicas})"
    )
    p.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="random seed (default 0)")
    p.add_argument(
        "--warmup",
        dest="serve_warmup",
        type=_nonneg_int("--warmup"),
        default=None,
        help="steps before measuring; the bundles start empty (default: 4 E[D], at least 64)",
    )
    p.add_argument(
        "--arrivals",
        default="poisson",
        help="poisson (default), gamma:cv=C (renewal, coefficient of variation C), trace (the --workload "
        "trace's timestamps, its rows replayed in order) or trace:PATH",
    )
    p.add_argument("--slo-tpot", type=_float_at_least("--slo-tpot", 0.0), help="p99 TPOT target (time units)")
    p.add_argument("--slo-ttft", type=_float_at_least("--slo-ttft", 0.0), help="p99 TTFT target (time units)")
    p.add_argument(
        "--kv-capacity-gb",
        type=_float_at_least("--kv-capacity-gb", 0.0),
        help="KV-cache GB per Attention instance (needs --kv-bytes-per-token); admission waits until a prefill fits",
    )
    p.add_argument(
        "--kv-bytes-per-token",
        type=_float_at_least("--kv-bytes-per-token", 0.0),
        help="KV-cache bytes per token over all layers (with --kv-capacity-gb)",
    )
    p.add_argument(
        "--kv-capacity-tokens",
        type=_float_at_least("--kv-capacity-tokens", 0.0),
        help="KV capacity per Attention instance in tokens (instead of --kv-capacity-gb)",
    )
    p.add_argument(
        "--prefill-alpha",
        type=_float_at_least("--prefill-alpha", 0.0, strict=False),
        default=0.0,
        help="TTFT = wait + ALPHA P + BETA: time per prompt token (default 0)",
    )
    p.add_argument(
        "--prefill-beta",
        type=_float_at_least("--prefill-beta", 0.0, strict=False),
        default=0.0,
        help="TTFT = wait + ALPHA P + BETA: fixed prefill and transfer time (default 0)",
    )
    p.add_argument("--policy", choices=POLICY_CHOICES, default="balanced", help="admission policy (default balanced)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def add_serve_parser(sub, types, add_compare_parser) -> None:
    """Register ``compare`` (``add_compare_parser``), then ``serve`` and ``capacity``, on
    the subcommands ``sub``; ``types`` is :mod:`afdjax._cli._parser`."""
    add_compare_parser(sub, types)
    p = sub.add_parser(
        "serve",
        help="open-loop serving: arrivals, queueing, TTFT/TPOT and goodput per ratio and arrival rate",
        description=(
            "Monte Carlo of rA-1F bundles fed by an arrival stream (one FIFO queue per bundle; admission at "
            "each step's start to the instance with the most free slots). Prints throughput and goodput per "
            "instance, TPOT and TTFT (mean, p99), queue length and a saturation flag per ratio and rate."
        ),
    )
    _add_open_loop_options(p, types, steps=4000, replicas=4)
    p.add_argument(
        "--arrival-rate",
        type=_rates(types),
        required=True,
        metavar="X",
        help="requests per time unit per Attention instance (a bundle with ratio r receives r X); a comma list "
        "sweeps several rates in one compiled run. With --arrivals trace it sets the replay's mean rate (the "
        "trace's gaps are scaled to it), so it is required there too",
    )
    p.add_argument("--plot", metavar="PATH", help="write a PNG of TPOT and TTFT against the rate and against r")
    c = sub.add_parser(
        "capacity",
        help="the largest arrival rate each ratio sustains under TPOT/TTFT targets, and the plan for a total rate",
        description=(
            "Per ratio: the largest arrival rate per Attention instance that is not saturated and meets the p99 "
            "targets (a grid up to the saturated bound, then a finer one), the saturated bound, the KV-bound "
            "stability rate of Nie, Si and Zhou with a KV capacity, and with --total-rate the bundles and ratio "
            "that minimise instances (or cost with --price-attention/--price-ffn)."
        ),
    )
    _add_open_loop_options(c, types, steps=3000, replicas=4)
    c.add_argument(
        "--total-rate", type=types._float_at_least("--total-rate", 0.0), help="requests per time unit in all"
    )
    c.add_argument(
        "--price-attention",
        type=types._float_at_least("--price-attention", 0.0, strict=False),
        default=1.0,
        help="price of one Attention instance (default 1: count instances)",
    )
    c.add_argument(
        "--price-ffn",
        type=types._float_at_least("--price-ffn", 0.0, strict=False),
        default=1.0,
        help="price of one FFN instance (default 1)",
    )
    c.add_argument(
        "--grid-points", type=types._positive_int("--grid-points"), default=8, help="rates per grid (default 8)"
    )
