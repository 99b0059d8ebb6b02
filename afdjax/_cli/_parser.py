"""The ``afdjax`` argument parser: argument types (one-line messages naming the option),
the shared option groups and every subcommand's options."""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import sys

from ._errors import CliError
from ._parser_compare import add_compare_parser
from ._parser_predict import add_fit_throughput_parser, add_predict_parser
from ._parser_serve import add_serve_parser

DEFAULT_WORKLOAD = "geometric:mu_p=100,mu_d=500"
DEFAULT_HARDWARE = "paper-910c"

# Limits checked at parse time (the library's own limits, repeated here so that the parser
# needs no JAX import): int32 counters, the engine's largest ratio and batch size.
INT32_MAX = 2**31 - 1  # afdjax._validate.INT32_MAX
MAX_RATIO = 4096  # afdjax._engine._config.MAX_RATIO
MAX_BATCH_SIZE = 2**16  # afdjax._engine._config.MAX_INDEX


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage by default)
        raise CliError(message)


def parse_ratios(text: str, option: str = "--ratios", maximum: int = MAX_RATIO, noun: str = "ratio") -> list[int]:
    """``1:32`` (inclusive), ``1:32:2`` (step), or ``1,2,4,8`` (each ratio once), sorted;
    every ratio in ``[1, maximum]`` (checked before the range is built). ``option``,
    ``maximum`` and ``noun`` serve other integer lists (``--batch-sizes``)."""
    t = text.strip()
    try:
        if ":" in t:
            parts = [int(p) for p in t.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            lo, hi = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1
        else:
            values = [int(p) for p in t.split(",") if p.strip()]
    except ValueError:
        raise CliError(
            f"{option} {text!r} is malformed: expected LO:HI, LO:HI:STEP or a comma list like 1,2,4"
        ) from None
    if ":" in t:
        if step < 1:
            raise CliError(f"{option} {text!r}: the step must be >= 1")
        if lo > hi:
            raise CliError(f"{option} {text!r} is an empty range: LO={lo} is above HI={hi}")
        if lo < 1:
            raise CliError(f"{option} {text!r}: {noun}s must be >= 1")
        if hi > maximum:
            raise CliError(f"{option} {text!r}: {noun}s must be <= {maximum}, got HI={hi}")
        values = list(range(lo, hi + 1, step))
    if not values:
        raise CliError(f"{option} {text!r} is an empty range")
    if min(values) < 1:
        raise CliError(f"{option} {text!r}: {noun}s must be >= 1")
    if max(values) > maximum:
        raise CliError(f"{option} {text!r}: {noun}s must be <= {maximum}, got {max(values)}")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise CliError(f"{option} {text!r} repeats {', '.join(map(str, repeated))}: give each {noun} once")
    return sorted(values)


def _int_at_least(name: str, minimum: int, maximum: int = INT32_MAX):
    """argparse type: an integer in ``[minimum, maximum]`` (by default at most the int32
    maximum: every count the engine keeps is an int32), with a one-line message naming
    the option."""

    def conv(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {v}")
        if v > maximum:
            why = " (the int32 maximum)" if maximum == INT32_MAX else ""
            raise argparse.ArgumentTypeError(f"{name} must be <= {maximum}{why}, got {v}")
        return v

    return conv


def _positive_int(name, maximum: int = INT32_MAX):
    return _int_at_least(name, 1, maximum)


def _nonneg_int(name):
    return _int_at_least(name, 0)


def _add_model_options(p, ratios_default, steps, replicas):
    p.add_argument(
        "--workload",
        default=DEFAULT_WORKLOAD,
        help="geometric:mu_p=100,mu_d=500[,prefill=constant|exponential|lognormal,sigma=1.0] | "
        "trace:PATH (Azure CSV / Mooncake JSONL, or azure-code, azure-conv, mooncake-conv) | "
        "trace:PATH,prefill=COLUMN,decode=COLUMN[,tokens_per_step=K] (quote a PATH with commas: "
        'trace:"a,b.csv",decode=COL). Decode steps = output tokens. '
        f"Default: {DEFAULT_WORKLOAD}",
    )
    p.add_argument(
        "--hardware",
        default=DEFAULT_HARDWARE,
        help="preset name (paper-910c), TOML file, or alpha_a=..,beta_a=..,alpha_f=..,beta_f=..,alpha_c=..,beta_c=.. "
        f"[,comm_scaling=batch|ratio_batch]. Default: {DEFAULT_HARDWARE}",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int("--batch-size", MAX_BATCH_SIZE),
        default=256,
        help=f"slots B per Attention instance, 1..{MAX_BATCH_SIZE} (default 256)",
    )
    p.add_argument(
        "--ratios",
        default=ratios_default,
        help=f"ratios r: LO:HI, LO:HI:STEP or 1,2,4, each in 1..{MAX_RATIO} (default "
        + (ratios_default or "1..max(32, 1.5 r*)")
        + ")",
    )
    p.add_argument(
        "--steps",
        type=_positive_int("--steps"),
        default=steps,
        help=f"measured decode steps per replica (default {steps})",
    )
    p.add_argument(
        "--replicas",
        type=_positive_int("--replicas"),
        default=replicas,
        help=f"independent replicas (default {replicas})",
    )
    p.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="random seed (default 0)")
    p.add_argument(
        "--start", choices=("stationary", "cold"), default="stationary", help="initial slot state (default stationary)"
    )
    p.add_argument(
        "--warmup",
        type=_nonneg_int("--warmup"),
        default=None,
        help="discarded steps before measuring (default: the step model's, 0 for the paper's step, "
        "2 M with --micro-batches M to exclude the pipeline fill)",
    )
    _add_micro_batches_option(p)


def _add_micro_batches_option(p):
    p.add_argument(
        "--micro-batches",
        type=_positive_int("--micro-batches"),
        default=None,
        metavar="M",
        help="split each Attention instance's B slots into M micro-batches and simulate the explicit "
        "A->F->FFN->F->A pipeline (fixed costs beta paid per micro-batch; 1 <= M <= B). "
        "Default: none, the paper's idealised overlap (step time max(t_A, t_C, t_F))",
    )


def _float_in(name: str, ok, allowed: str):
    """argparse type: a finite float for which ``ok(v)`` holds; ``allowed`` says what is."""

    def conv(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r} is not a number") from None
        if not math.isfinite(v) or not ok(v):
            raise argparse.ArgumentTypeError(f"{name} must be {allowed}, got {text}")
        return v

    return conv


def _float_at_least(name: str, minimum: float, strict: bool = True):
    """argparse type: a finite float > minimum (or >= with strict=False)."""
    if strict:
        return _float_in(name, lambda v: v > minimum, f"> {minimum:g}")
    return _float_in(name, lambda v: v >= minimum, f">= {minimum:g}")


def _gb_or_auto(name: str):
    """argparse type: ``auto`` or a capacity in GB (> 0), returned in bytes (1 GB = 1e9 bytes)."""
    number = _float_at_least(name, 0.0)

    def conv(text):
        if text.strip().lower() == "auto":
            return "auto"
        try:
            float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r} is not a number or 'auto'") from None
        return number(text) * 1e9

    return conv


def parse_batch_sizes(text: str) -> list[int]:
    """``64,128,256`` or ``LO:HI:STEP`` (inclusive) or ``x2:LO:HI`` (powers-of-two ladder);
    every batch size in ``[1, 65536]``."""
    t = text.strip()
    usage = "expected a comma list like 64,128,256, LO:HI:STEP or x2:LO:HI (doubling)"
    if t.startswith("x2:"):
        try:
            lo, hi = (int(p) for p in t[3:].split(":"))
        except ValueError:
            raise CliError(
                f"--batch-sizes {text!r} is malformed: x2:LO:HI needs two integers, like x2:64:1024"
            ) from None
        if lo < 1:
            raise CliError(f"--batch-sizes {text!r}: x2:LO:HI needs LO >= 1, got LO={lo}")
        if lo > hi:
            raise CliError(f"--batch-sizes {text!r}: x2:LO:HI needs LO <= HI, got LO={lo} above HI={hi}")
        if hi > MAX_BATCH_SIZE:
            raise CliError(f"--batch-sizes {text!r}: batch sizes must be <= {MAX_BATCH_SIZE}, got HI={hi}")
        values, b = [], lo
        while b <= hi:
            values.append(b)
            b *= 2
        return values
    if ":" in t:
        return parse_ratios(t, "--batch-sizes", MAX_BATCH_SIZE, "batch size")
    try:
        values = [int(p) for p in t.split(",") if p.strip()]
    except ValueError:
        raise CliError(f"--batch-sizes {text!r} is malformed: {usage}") from None
    if not values:
        raise CliError(f"--batch-sizes {text!r} is empty: {usage}")
    if min(values) < 1 or max(values) > MAX_BATCH_SIZE:
        bad = min(values) if min(values) < 1 else max(values)
        raise CliError(f"--batch-sizes {text!r}: batch sizes must be in 1..{MAX_BATCH_SIZE}, got {bad}")
    return sorted(set(values))


def _add_constraint_options(p):
    g = p.add_argument_group(
        "constraints and costs (any of these switches provision to the joint (B, r) choice under constraints)"
    )
    g.add_argument(
        "--batch-sizes",
        metavar="LIST",
        help="choose B jointly with r among these: 64,128,256 | "
        "LO:HI:STEP | x2:LO:HI (doubling); default: --batch-size only",
    )
    g.add_argument(
        "--kv-capacity-gb",
        type=_gb_or_auto("--kv-capacity-gb"),
        metavar="GB",
        help="KV-cache capacity of one Attention instance in GB (1e9 bytes), "
        "or 'auto' = devices x HBM - resident weights from the hardware spec (e.g. h100:deepseek-v3)",
    )
    g.add_argument(
        "--kv-bytes-per-token",
        type=_float_at_least("--kv-bytes-per-token", 0.0),
        metavar="BYTES",
        help="KV bytes per token over all layers (default: from the hardware spec's model)",
    )
    g.add_argument(
        "--kv-overflow-prob",
        type=_float_in("--kv-overflow-prob", lambda v: 0 <= v < 1, "a probability in [0, 1)"),
        default=1e-3,
        metavar="P",
        help="largest allowed P(an instance's KV load > capacity) per step (default 0.001)",
    )
    g.add_argument(
        "--tpot-ms",
        type=_float_at_least("--tpot-ms", 0.0),
        metavar="MS",
        help="time-per-output-token target in ms (TPOT = layers x per-layer cycle time)",
    )
    g.add_argument(
        "--tpot-stat", choices=("p99", "mean"), default="p99", help="which TPOT must meet --tpot-ms (default p99)"
    )
    g.add_argument(
        "--num-layers",
        type=_positive_int("--num-layers"),
        metavar="N",
        help="layers per token (default: from the hardware spec's model)",
    )
    g.add_argument(
        "--time-unit-us",
        type=_float_at_least("--time-unit-us", 0.0),
        default=1.0,
        metavar="US",
        help="the coefficients' time unit in microseconds (default 1: us per layer)",
    )
    g.add_argument(
        "--objective",
        choices=("per-instance", "per-dollar", "per-joule"),
        default="per-instance",
        help="maximise tokens per instance (the paper's), per dollar or per joule (default per-instance)",
    )
    g.add_argument(
        "--price-attention",
        type=_float_at_least("--price-attention", 0.0, strict=False),
        metavar="USD_PER_H",
        help="$ per hour of one Attention instance",
    )
    g.add_argument(
        "--price-ffn",
        type=_float_at_least("--price-ffn", 0.0, strict=False),
        metavar="USD_PER_H",
        help="$ per hour of one FFN instance",
    )
    g.add_argument(
        "--power-attention-w",
        type=_float_at_least("--power-attention-w", 0.0, strict=False),
        metavar="W",
        help="watts of one Attention instance (default: devices x board power from the hardware spec)",
    )
    g.add_argument(
        "--power-ffn-w",
        type=_float_at_least("--power-ffn-w", 0.0, strict=False),
        metavar="W",
        help="watts of one FFN instance (default: devices x board power from the hardware spec)",
    )


CONSTRAINT_FLAGS = (
    "batch_sizes",
    "kv_capacity_gb",
    "tpot_ms",
    "price_attention",
    "price_ffn",
    "power_attention_w",
    "power_ffn_w",
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="afdjax",
        description="Size Attention-FFN disaggregated (rA-1F) LLM decoding: throughput per instance against the "
        "A/F ratio r.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sim = sub.add_parser(
        "simulate",
        help="Monte Carlo simulation of the rA-1F decode process over a range of ratios",
        description=(
            "Monte Carlo simulation of the saturated rA-1F decode process. Prints throughput per instance "
            "(tokens per time unit of the hardware coefficients per instance) for each ratio r."
        ),
    )
    _add_model_options(sim, ratios_default="1:32", steps=4000, replicas=8)
    sim.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    sim.add_argument("--plot", metavar="PATH", help="write a PNG of throughput per instance against r")

    prov = sub.add_parser(
        "provision",
        help="the main job: which A/F ratio? mean field, barrier model and Monte Carlo side by side",
        description=(
            "Answer 'how many Attention instances per FFN instance?' three ways: the mean-field closed form "
            "of arXiv 2601.21351 (r* = max(r_A, r_C, r_peak)), the Gaussian barrier refinement, and Monte Carlo "
            "simulation, with the confidence of the simulated optimum and the error of each prediction. "
            "With no arguments: the paper's baseline (Geometric mu_p=100, mu_d=500; paper-910c; B=256)."
        ),
    )
    _add_model_options(prov, ratios_default=None, steps=4000, replicas=16)
    prov.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    prov.add_argument(
        "--plot",
        metavar="PATH",
        help="write a PNG of the three throughput curves and the idle fractions "
        "(with constraints: the feasible (B, r) region and TPOT against r)",
    )
    _add_constraint_options(prov)

    ver = sub.add_parser(
        "verify",
        help="reproduce the paper's study (batch and workload ablations) and the bundled traces",
        description=(
            "Closed form against simulation on the paper's configurations (B in 128/256/512 with mu_p=100, "
            "mu_d=500; (mu_p, mu_d) in (100,100)/(100,500)/(500,500) with B=256; paper-910c) and on the bundled "
            "traces. Writes verification.md, verification.json and plots to --out."
        ),
    )
    ver.add_argument("--out", default="afdjax-verify", metavar="DIR", help="output folder (default afdjax-verify)")
    ver.add_argument(
        "--steps", type=_positive_int("--steps"), default=4000, help="measured steps per replica (default 4000)"
    )
    ver.add_argument("--replicas", type=_positive_int("--replicas"), default=16, help="replicas (default 16)")
    ver.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="random seed (default 0)")
    ver.add_argument("--hardware", default=DEFAULT_HARDWARE, help=f"hardware spec (default {DEFAULT_HARDWARE})")
    ver.add_argument("--no-traces", action="store_true", help="only the paper's synthetic configurations")
    _add_micro_batches_option(ver)
    ver.add_argument("--json", action="store_true", help="print the JSON summary instead of the Markdown table")
    fit = sub.add_parser(
        "fit",
        help="fit model parameters to observations: workload (trace), latency (step times), throughput",
        description="Fit afdjax's model to data. See 'afdjax fit workload|latency|throughput --help'.",
    )
    fit_sub = fit.add_subparsers(dest="fit_command", parser_class=_Parser)
    fw = fit_sub.add_parser(
        "workload",
        help="maximum-likelihood fits of decode and prefill length distributions of a trace",
        description="Fit decode-length (geometric, negative_binomial, lognormal, geometric_mixture) and "
        "prefill-length (exponential, gamma, lognormal) families by maximum likelihood; report KS distance, "
        "log-likelihood, AIC, and theta of the fitted model against the trace's nonparametric theta.",
    )
    fw.add_argument(
        "--trace", required=True, help="CSV/JSONL trace path or bundled name (azure-code, azure-conv, mooncake-conv)"
    )
    fw.add_argument("--prefill-column", help="prefill column (default: recognised Azure/Mooncake names)")
    fw.add_argument("--decode-column", help="decode column (default: recognised Azure/Mooncake names)")
    fw.add_argument("--family", help="comma list of decode families (default: all)")
    fw.add_argument("--prefill-family", help="comma list of prefill families (default: all)")
    fw.add_argument("--json", action="store_true", help="print one JSON object")
    fl = fit_sub.add_parser(
        "latency",
        help="fit the six latency coefficients to step-latency measurements",
        description="Robust (Huber) linear fits of attention, FFN and communication times with bootstrap 95%% "
        "intervals; writes a hardware TOML usable by --hardware.",
    )
    fl.add_argument(
        "--observations",
        required=True,
        help="CSV/JSONL: attention_tokens, batch_size[, ratio], attention_time / ffn_time / comm_time",
    )
    fl.add_argument("--loss", choices=("huber", "l2"), default="huber", help="robust Huber (default) or least squares")
    fl.add_argument(
        "--comm-scaling",
        choices=("batch", "ratio_batch"),
        default="batch",
        help="communication scales with B (default) or rB",
    )
    fl.add_argument(
        "--bootstrap", type=_int_at_least("--bootstrap", 10), default=200, help="bootstrap replicates (default 200)"
    )
    fl.add_argument("--defaults", default=None, help="hardware spec for stages without observations (e.g. paper-910c)")
    fl.add_argument("--out", metavar="TOML", help="write the fitted coefficients as a hardware TOML")
    fl.add_argument("--plot", metavar="PNG", help="write measured-vs-fitted and residual plots")
    fl.add_argument("--json", action="store_true", help="print one JSON object")
    add_fit_throughput_parser(fit_sub, sys.modules[__name__])
    _add_sweep_parser(sub)
    _add_hardware_commands(sub)
    add_serve_parser(sub, sys.modules[__name__], add_compare_parser)  # compare, then serve and capacity
    add_predict_parser(sub, sys.modules[__name__])
    return parser


# ------------------------------------------------------------------------ afdjax sweep
def _add_sweep_parser(sub) -> None:
    sw = sub.add_parser(
        "sweep",
        help="large resumable Monte Carlo sweeps over a grid (workloads x hardware x batch sizes), to Parquet",
        description="Simulate every point of a TOML grid for all ratios r = 1..r_max, in memory-bounded chunks "
        "sharded over the local devices; results are written to DIR as Parquet files as chunks finish. "
        "Run the same command again to resume an interrupted sweep. Open the results with "
        "pandas.read_parquet(DIR) or afdjax.read_sweep(DIR).",
    )
    sw.add_argument("--grid", required=True, metavar="GRID.toml", help="the grid (see experiments/sweep_example.toml)")
    sw.add_argument("--out", required=True, metavar="DIR", help="results folder (created; an existing one is resumed)")
    sw.add_argument(
        "--memory-budget-mb",
        type=_positive_int("--memory-budget-mb"),
        default=512,
        help="bound on one chunk's working memory in MiB (default 512)",
    )
    sw.add_argument(
        "--max-chunk-points",
        type=_positive_int("--max-chunk-points"),
        default=4096,
        help="at most this many points per chunk file (default 4096)",
    )
    sw.add_argument("--overwrite", action="store_true", help="discard the results of a different sweep in DIR")
    sw.add_argument("--json", action="store_true", help="print one JSON object (and no progress bar)")


def _fraction(name):
    """argparse type: a number in (0, 1]."""
    return _float_in(name, lambda v: 0 < v <= 1, "in (0, 1]")


def _add_hardware_commands(sub) -> None:
    hw = sub.add_parser(
        "hardware",
        help="derive the six latency coefficients (us per layer) from accelerator and model specs",
        description="Roofline derivation of alpha_a, beta_a, alpha_f, beta_f, alpha_c, beta_c (microseconds per "
        "layer) from an accelerator spec and a model spec; prints each formula with its numbers and writes the "
        "hardware TOML that --hardware reads. The same derivation is available anywhere as "
        "--hardware ACCELERATOR:MODEL.",
    )
    hw.add_argument("--list", action="store_true", help="list the accelerator and model presets with their sources")
    hw.add_argument(
        "--accelerator",
        default="h100",
        help="preset (h100, h200, a100, b200, mi300x, tpu-v5p), NAME,field=value,... "
        "(e.g. h100,hbm_bandwidth_bytes_per_s=3e12) or a TOML file with an [accelerator] table (default h100)",
    )
    hw.add_argument(
        "--model",
        default="deepseek-v3",
        help="preset (deepseek-v3, qwen3-235b-a22b, llama-3.1-70b), NAME,field=value,... or a TOML file "
        "with a [model] table (default deepseek-v3)",
    )
    hw.add_argument(
        "--dtype", choices=("bf16", "fp8"), default=None, help="weight/compute dtype (default: the model's)"
    )
    hw.add_argument(
        "--memory-efficiency",
        type=_fraction("--memory-efficiency"),
        default=0.8,
        help="fraction of peak HBM bandwidth reached (default 0.8)",
    )
    hw.add_argument(
        "--compute-efficiency",
        type=_fraction("--compute-efficiency"),
        default=0.6,
        help="fraction of peak FLOP/s reached (default 0.6)",
    )
    hw.add_argument(
        "--network-efficiency",
        type=_fraction("--network-efficiency"),
        default=0.8,
        help="fraction of link bandwidth reached (default 0.8)",
    )
    hw.add_argument(
        "--kernel-overhead-us", type=float, default=2.0, help="fixed time added to beta_a and beta_f (default 2)"
    )
    hw.add_argument(
        "--attention-devices",
        type=_positive_int("--attention-devices"),
        default=None,
        help="devices per Attention instance (default: fewest powers of two holding the weights)",
    )
    hw.add_argument(
        "--ffn-devices",
        type=_positive_int("--ffn-devices"),
        default=None,
        help="devices per FFN instance (default: fewest powers of two holding the weights)",
    )
    hw.add_argument("--comm-scaling", choices=("batch", "ratio_batch"), default="batch", help="default batch")
    hw.add_argument(
        "--out", metavar="TOML", help="write the hardware TOML ([latency], [model], [accelerator], [deployment])"
    )
    hw.add_argument("--json", action="store_true", help="print one JSON object")

    prof = sub.add_parser(
        "profile",
        help="measure JAX decode attention and FFN on this device and fit the latency coefficients",
        description="Time real JAX decode attention over growing KV caches and FFN/MoE over growing batches on "
        "the device it runs on, fit the six coefficients with the latency fitter, check them on held-out sizes "
        "and write a hardware TOML. Times are microseconds per layer of the profiled (by default scaled-down) shape.",
    )
    prof.add_argument(
        "--model", default="deepseek-v3", help="model preset or spec whose shape is profiled (default deepseek-v3)"
    )
    prof.add_argument(
        "--scale",
        type=float,
        default=None,
        help="scale of widths, head and expert counts, in (0, 1] (default 1/16 on CPU, 1/2 on GPU/TPU)",
    )
    prof.add_argument(
        "--hidden-size", type=_positive_int("--hidden-size"), default=None, help="override the (scaled) hidden size"
    )
    prof.add_argument(
        "--batch-size", type=_positive_int("--batch-size"), default=None, help="decode slots B of the attention runs"
    )
    prof.add_argument(
        "--kv-lengths",
        default=None,
        help="KV tokens per slot to time, comma list (default on CPU: 15 lengths up to a 4.5 MiB cache)",
    )
    prof.add_argument(
        "--ffn-batches", default=None, help="FFN batch sizes to time, comma list (default on CPU: 96..672 step 48)"
    )
    prof.add_argument(
        "--repeats",
        type=_positive_int("--repeats"),
        default=None,
        help="timed rounds over all sizes (default 21 on CPU)",
    )
    prof.add_argument(
        "--quantile",
        type=float,
        default=0.25,
        help="quantile of each size's samples taken as its time (default 0.25; 0.5: median)",
    )
    prof.add_argument(
        "--comm",
        choices=("auto", "device", "host", "defaults"),
        default="auto",
        help="communication: device-to-device copy, host<->device transfer, or keep --defaults (default auto)",
    )
    prof.add_argument(
        "--defaults", default=None, help="hardware spec whose alpha_c/beta_c are kept with --comm defaults"
    )
    prof.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="random seed of the inputs (default 0)")
    prof.add_argument("--out", metavar="TOML", help="write the fitted coefficients as a hardware TOML")
    prof.add_argument("--plot", metavar="PNG", help="write measured-vs-fitted and residual plots")
    prof.add_argument("--json", action="store_true", help="print one JSON object")


# ------------------------------------------------------------------------ option names in library messages
OPTION_NAMES = {
    "batch_size": "--batch-size",
    "num_steps": "--steps",
    "num_replicas": "--replicas",
    "warmup_steps": "--warmup",
    "micro_batches": "--micro-batches",
    "kv_overflow_tolerance": "--kv-overflow-prob",
    "kv_bytes_per_token": "--kv-bytes-per-token",
    "tpot_target_ms": "--tpot-ms",
    "num_layers": "--num-layers",
    "time_unit_us": "--time-unit-us",
    "attention_price_per_hour": "--price-attention",
    "ffn_price_per_hour": "--price-ffn",
    "attention_power_w": "--power-attention-w",
    "ffn_power_w": "--power-ffn-w",
    "memory_efficiency": "--memory-efficiency",
    "compute_efficiency": "--compute-efficiency",
    "network_efficiency": "--network-efficiency",
    "kernel_overhead_us": "--kernel-overhead-us",
    "attention_devices": "--attention-devices",
    "ffn_devices": "--ffn-devices",
    "scale": "--scale",
    "hidden_size": "--hidden-size",
    "repeats": "--repeats",
    "quantile": "--quantile",
    "n_bootstrap": "--bootstrap",
}
"""Library argument names and the options that set them (for messages of library calls)."""

SIMULATION_OPTIONS = ("batch_size", "num_steps", "num_replicas", "warmup_steps", "micro_batches")
CONSTRAINT_OPTIONS = (
    "kv_overflow_tolerance",
    "kv_bytes_per_token",
    "tpot_target_ms",
    "num_layers",
    "time_unit_us",
    "attention_price_per_hour",
    "ffn_price_per_hour",
    "attention_power_w",
    "ffn_power_w",
)
DERIVATION_OPTIONS = (
    "memory_efficiency",
    "compute_efficiency",
    "network_efficiency",
    "kernel_overhead_us",
    "attention_devices",
    "ffn_devices",
)
PROFILE_OPTIONS = ("scale", "hidden_size", "batch_size", "repeats", "quantile")


def with_option_names(message: str, names) -> str:
    """``message`` with each ``name=value`` of a library argument in ``names`` written as
    the option a user typed: ``num_steps=0 is invalid`` -> ``--steps 0 is invalid``. Names
    inside a spec (after a quote, comma or colon) are left alone."""
    for name in names:
        message = re.sub(rf"(?<![\w'\",:.-]){name}=", f"{OPTION_NAMES[name]} ", message)
    return message


@contextlib.contextmanager
def option_names(*names: str):
    """Turn a library ``ValueError`` raised inside into a :class:`CliError` that names the
    options (:func:`with_option_names`); a run too large for this machine's memory is
    reworded with ``--replicas``, ``--ratios`` and ``--batch-size``."""
    try:
        yield
    except ValueError as err:
        estimate = getattr(err, "estimate", None)
        if estimate is not None:
            raise CliError(
                estimate.message({"num_replicas": "--replicas", "ratios": "--ratios", "batch_size": "--batch-size"})
            ) from None
        raise CliError(with_option_names(str(err), names)) from None
