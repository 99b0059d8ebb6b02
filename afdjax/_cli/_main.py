"""The ``afdjax`` command line. A thin host-side shell around the library."""

from __future__ import annotations

import argparse
import json
import math
import sys

DEFAULT_WORKLOAD = "geometric:mu_p=100,mu_d=500"
DEFAULT_HARDWARE = "paper-910c"


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage by default)
        raise CliError(message)


def parse_ratios(text: str) -> list[int]:
    """``1:32`` (inclusive), ``1:32:2`` (step), or ``1,2,4,8``."""
    t = text.strip()
    try:
        if ":" in t:
            parts = [int(p) for p in t.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            lo, hi = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else 1
            if step < 1:
                raise CliError(f"--ratios {text!r}: the step must be >= 1")
            values = list(range(lo, hi + 1, step))
        else:
            values = [int(p) for p in t.split(",") if p.strip()]
    except ValueError:
        raise CliError(f"--ratios {text!r} is malformed: expected LO:HI, LO:HI:STEP or a comma list like 1,2,4") from None
    if not values:
        raise CliError(f"--ratios {text!r} is an empty range")
    if min(values) < 1:
        raise CliError(f"--ratios {text!r}: ratios must be >= 1")
    return sorted(set(values))


def _int_at_least(name: str, minimum: int):
    """argparse type: an integer >= minimum, with a one-line message naming the option."""

    def conv(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {v}")
        return v

    return conv


def _positive_int(name):
    return _int_at_least(name, 1)


def _nonneg_int(name):
    return _int_at_least(name, 0)


def _add_model_options(p, ratios_default, steps, replicas):
    p.add_argument(
        "--workload",
        default=DEFAULT_WORKLOAD,
        help="geometric:mu_p=100,mu_d=500[,prefill=constant|exponential|lognormal,sigma=1.0] | "
        "trace:PATH (Azure CSV / Mooncake JSONL, or azure-code, azure-conv, mooncake-conv) | "
        "trace:PATH,prefill=COLUMN,decode=COLUMN[,tokens_per_step=K]. Decode steps = output tokens. "
        f"Default: {DEFAULT_WORKLOAD}",
    )
    p.add_argument(
        "--hardware",
        default=DEFAULT_HARDWARE,
        help="preset name (paper-910c), TOML file, or alpha_a=..,beta_a=..,alpha_f=..,beta_f=..,alpha_c=..,beta_c=.. "
        f"[,comm_scaling=batch|ratio_batch]. Default: {DEFAULT_HARDWARE}",
    )
    p.add_argument("--batch-size", type=_positive_int("--batch-size"), default=256, help="slots B per Attention instance (default 256)")
    p.add_argument(
        "--ratios",
        default=ratios_default,
        help="ratios r: LO:HI, LO:HI:STEP or 1,2,4 (default "
        + (ratios_default or "1..max(32, 1.5 r*)") + ")",
    )
    p.add_argument("--steps", type=_positive_int("--steps"), default=steps, help=f"measured decode steps per replica (default {steps})")
    p.add_argument("--replicas", type=_positive_int("--replicas"), default=replicas, help=f"independent replicas (default {replicas})")
    p.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="random seed (default 0)")
    p.add_argument("--start", choices=("stationary", "cold"), default="stationary", help="initial slot state (default stationary)")
    p.add_argument("--warmup", type=_nonneg_int("--warmup"), default=None,
                   help="discarded steps before measuring (default: the step model's, 0 for the paper's step, "
                   "2 M with --micro-batches M to exclude the pipeline fill)")
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
    """``64,128,256`` or ``LO:HI:STEP`` (inclusive) or ``x2:LO:HI`` (powers-of-two ladder)."""
    t = text.strip()
    try:
        if t.startswith("x2:"):
            lo, hi = (int(p) for p in t[3:].split(":"))
            values, b = [], lo
            while b <= hi:
                values.append(b)
                b *= 2
        elif ":" in t:
            values = parse_ratios(t)
        else:
            values = [int(p) for p in t.split(",") if p.strip()]
    except (ValueError, CliError):
        raise CliError(f"--batch-sizes {text!r} is malformed: expected a comma list like 64,128,256, LO:HI:STEP "
                       "or x2:LO:HI (doubling)") from None
    if not values or min(values) < 1:
        raise CliError(f"--batch-sizes {text!r}: expected batch sizes >= 1")
    return sorted(set(values))


def _add_constraint_options(p):
    g = p.add_argument_group(
        "constraints and costs (any of these switches provision to the joint (B, r) choice under constraints)"
    )
    g.add_argument("--batch-sizes", metavar="LIST", help="choose B jointly with r among these: 64,128,256 | "
                   "LO:HI:STEP | x2:LO:HI (doubling); default: --batch-size only")
    g.add_argument("--kv-capacity-gb", type=_gb_or_auto("--kv-capacity-gb"), metavar="GB", help="KV-cache capacity of one Attention instance in GB (1e9 bytes), "
                   "or 'auto' = devices x HBM - resident weights from the hardware spec (e.g. h100:deepseek-v3)")
    g.add_argument("--kv-bytes-per-token", type=_float_at_least("--kv-bytes-per-token", 0.0), metavar="BYTES",
                   help="KV bytes per token over all layers (default: from the hardware spec's model)")
    g.add_argument("--kv-overflow-prob", type=_float_at_least("--kv-overflow-prob", 0.0, strict=False), default=1e-3,
                   metavar="P", help="largest allowed P(an instance's KV load > capacity) per step (default 0.001)")
    g.add_argument("--tpot-ms", type=_float_at_least("--tpot-ms", 0.0), metavar="MS",
                   help="time-per-output-token target in ms (TPOT = layers x per-layer cycle time)")
    g.add_argument("--tpot-stat", choices=("p99", "mean"), default="p99", help="which TPOT must meet --tpot-ms (default p99)")
    g.add_argument("--num-layers", type=_positive_int("--num-layers"), metavar="N",
                   help="layers per token (default: from the hardware spec's model)")
    g.add_argument("--time-unit-us", type=_float_at_least("--time-unit-us", 0.0), default=1.0, metavar="US",
                   help="the coefficients' time unit in microseconds (default 1: us per layer)")
    g.add_argument("--objective", choices=("per-instance", "per-dollar", "per-joule"), default="per-instance",
                   help="maximise tokens per instance (the paper's), per dollar or per joule (default per-instance)")
    g.add_argument("--price-attention", type=_float_at_least("--price-attention", 0.0, strict=False), metavar="USD_PER_H",
                   help="$ per hour of one Attention instance")
    g.add_argument("--price-ffn", type=_float_at_least("--price-ffn", 0.0, strict=False), metavar="USD_PER_H",
                   help="$ per hour of one FFN instance")
    g.add_argument("--power-attention-w", type=_float_at_least("--power-attention-w", 0.0, strict=False), metavar="W",
                   help="watts of one Attention instance (default: devices x board power from the hardware spec)")
    g.add_argument("--power-ffn-w", type=_float_at_least("--power-ffn-w", 0.0, strict=False), metavar="W",
                   help="watts of one FFN instance (default: devices x board power from the hardware spec)")


_CONSTRAINT_FLAGS = ("batch_sizes", "kv_capacity_gb", "tpot_ms", "price_attention", "price_ffn",
                     "power_attention_w", "power_ffn_w")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="afdjax",
        description="Size Attention-FFN disaggregated (rA-1F) LLM decoding: throughput per instance against the A/F ratio r.",
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
    prov.add_argument("--plot", metavar="PATH", help="write a PNG of the three throughput curves and the idle fractions "
                      "(with constraints: the feasible (B, r) region and TPOT against r)")
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
    ver.add_argument("--steps", type=_positive_int("--steps"), default=4000, help="measured steps per replica (default 4000)")
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
    fw.add_argument("--trace", required=True, help="CSV/JSONL trace path or bundled name (azure-code, azure-conv, mooncake-conv)")
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
    fl.add_argument("--observations", required=True, help="CSV/JSONL: attention_tokens, batch_size[, ratio], attention_time / ffn_time / comm_time")
    fl.add_argument("--loss", choices=("huber", "l2"), default="huber", help="robust Huber (default) or least squares")
    fl.add_argument("--comm-scaling", choices=("batch", "ratio_batch"), default="batch", help="communication scales with B (default) or rB")
    fl.add_argument("--bootstrap", type=_int_at_least("--bootstrap", 10), default=200, help="bootstrap replicates (default 200)")
    fl.add_argument("--defaults", default=None, help="hardware spec for stages without observations (e.g. paper-910c)")
    fl.add_argument("--out", metavar="TOML", help="write the fitted coefficients as a hardware TOML")
    fl.add_argument("--plot", metavar="PNG", help="write measured-vs-fitted and residual plots")
    fl.add_argument("--json", action="store_true", help="print one JSON object")
    ft = fit_sub.add_parser(
        "throughput",
        help="calibrate coefficients and workload parameters to observed throughput at several ratios",
        description="Calibrate the stochastic model through the differentiable simulation to throughput per "
        "instance observed at (batch_size, ratio) points (CSV: batch_size, ratio, throughput[, stderr]).",
    )
    ft.add_argument("--observations", required=True, help="CSV with batch_size, ratio, throughput[, stderr]")
    ft.add_argument("--workload", default=DEFAULT_WORKLOAD, help=f"workload spec (default {DEFAULT_WORKLOAD})")
    ft.add_argument("--hardware", default=DEFAULT_HARDWARE, help="starting values / fixed coefficients (default paper-910c)")
    ft.add_argument("--fit", default="alpha_a,beta_a,alpha_f,beta_f", help="parameters to fit (default alpha_a,beta_a,alpha_f,beta_f; also alpha_c, beta_c, mu_p, mu_d)")
    ft.add_argument("--steps", type=_positive_int("--steps"), default=2000, help="simulated steps per replica (default 2000)")
    ft.add_argument("--replicas", type=_positive_int("--replicas"), default=8, help="replicas (default 8)")
    ft.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="random seed (default 0)")
    ft.add_argument("--out", metavar="TOML", help="write the calibrated coefficients as a hardware TOML")
    ft.add_argument("--json", action="store_true", help="print one JSON object")
    _add_sweep_parser(sub)
    _add_hardware_commands(sub)
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
    sw.add_argument("--max-chunk-points", type=_positive_int("--max-chunk-points"), default=4096,
                    help="at most this many points per chunk file (default 4096)")
    sw.add_argument("--overwrite", action="store_true", help="discard the results of a different sweep in DIR")
    sw.add_argument("--json", action="store_true", help="print one JSON object (and no progress bar)")


def _cmd_sweep(args) -> int:
    from .._sweep._core import sweep

    try:
        summary = sweep(
            args.grid,
            args.out,
            memory_budget_bytes=args.memory_budget_mb * 2**20,
            max_chunk_points=args.max_chunk_points,
            overwrite=args.overwrite,
            progress=not args.json,
        )
    except KeyboardInterrupt:
        print(f"afdjax: interrupted; finished chunks are kept in {args.out}: run the same command again to resume",
              file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
        return 0
    state = "complete" if summary.complete else "incomplete"
    print(
        f"afdjax sweep: {summary.points_computed} points computed, {summary.points_skipped} already done, "
        f"{summary.num_points} in the grid ({state}) in {summary.seconds:.1f} s on {summary.num_devices} device(s)"
    )
    print(f"Results in {summary.out_dir}/ (pandas.read_parquet({summary.out_dir!r}) or afdjax.read_sweep)")
    return 0


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
    hw.add_argument("--accelerator", default="h100",
                    help="preset (h100, h200, a100, b200, mi300x, tpu-v5p), NAME,field=value,... "
                    "(e.g. h100,hbm_bandwidth_bytes_per_s=3e12) or a TOML file with an [accelerator] table (default h100)")
    hw.add_argument("--model", default="deepseek-v3",
                    help="preset (deepseek-v3, qwen3-235b-a22b, llama-3.1-70b), NAME,field=value,... or a TOML file "
                    "with a [model] table (default deepseek-v3)")
    hw.add_argument("--dtype", choices=("bf16", "fp8"), default=None, help="weight/compute dtype (default: the model's)")
    hw.add_argument("--memory-efficiency", type=_fraction("--memory-efficiency"), default=0.8,
                    help="fraction of peak HBM bandwidth reached (default 0.8)")
    hw.add_argument("--compute-efficiency", type=_fraction("--compute-efficiency"), default=0.6,
                    help="fraction of peak FLOP/s reached (default 0.6)")
    hw.add_argument("--network-efficiency", type=_fraction("--network-efficiency"), default=0.8,
                    help="fraction of link bandwidth reached (default 0.8)")
    hw.add_argument("--kernel-overhead-us", type=float, default=2.0, help="fixed time added to beta_a and beta_f (default 2)")
    hw.add_argument("--attention-devices", type=_positive_int("--attention-devices"), default=None,
                    help="devices per Attention instance (default: fewest powers of two holding the weights)")
    hw.add_argument("--ffn-devices", type=_positive_int("--ffn-devices"), default=None,
                    help="devices per FFN instance (default: fewest powers of two holding the weights)")
    hw.add_argument("--comm-scaling", choices=("batch", "ratio_batch"), default="batch", help="default batch")
    hw.add_argument("--out", metavar="TOML", help="write the hardware TOML ([latency], [model], [accelerator], [deployment])")
    hw.add_argument("--json", action="store_true", help="print one JSON object")

    prof = sub.add_parser(
        "profile",
        help="measure JAX decode attention and FFN on this device and fit the latency coefficients",
        description="Time real JAX decode attention over growing KV caches and FFN/MoE over growing batches on "
        "the device it runs on, fit the six coefficients with the latency fitter, check them on held-out sizes "
        "and write a hardware TOML. Times are microseconds per layer of the profiled (by default scaled-down) shape.",
    )
    prof.add_argument("--model", default="deepseek-v3", help="model preset or spec whose shape is profiled (default deepseek-v3)")
    prof.add_argument("--scale", type=float, default=None,
                      help="scale of widths, head and expert counts, in (0, 1] (default 1/16 on CPU, 1/2 on GPU/TPU)")
    prof.add_argument("--hidden-size", type=_positive_int("--hidden-size"), default=None, help="override the (scaled) hidden size")
    prof.add_argument("--batch-size", type=_positive_int("--batch-size"), default=None, help="decode slots B of the attention runs")
    prof.add_argument("--kv-lengths", default=None, help="KV tokens per slot to time, comma list (default on CPU: 15 lengths up to a 4.5 MiB cache)")
    prof.add_argument("--ffn-batches", default=None, help="FFN batch sizes to time, comma list (default on CPU: 96..672 step 48)")
    prof.add_argument("--repeats", type=_positive_int("--repeats"), default=None,
                      help="timed rounds over all sizes (default 21 on CPU)")
    prof.add_argument("--quantile", type=float, default=0.25,
                      help="quantile of each size's samples taken as its time (default 0.25; 0.5: median)")
    prof.add_argument("--comm", choices=("auto", "device", "host", "defaults"), default="auto",
                      help="communication: device-to-device copy, host<->device transfer, or keep --defaults (default auto)")
    prof.add_argument("--defaults", default=None, help="hardware spec whose alpha_c/beta_c are kept with --comm defaults")
    prof.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="random seed of the inputs (default 0)")
    prof.add_argument("--out", metavar="TOML", help="write the fitted coefficients as a hardware TOML")
    prof.add_argument("--plot", metavar="PNG", help="write measured-vs-fitted and residual plots")
    prof.add_argument("--json", action="store_true", help="print one JSON object")


def _cmd_hardware(args) -> int:
    from .._hardware._core import derive_latency, format_presets, parse_accelerator_spec, parse_model_spec

    if args.list:
        print(format_presets(), end="")
        return 0
    derivation = derive_latency(
        parse_accelerator_spec(args.accelerator),
        parse_model_spec(args.model),
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
        _write_text(args.out, derivation.to_toml())
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


def _cmd_profile(args) -> int:
    from .._profile._profile import profile_hardware

    if args.scale is not None and not (0 < args.scale <= 1):
        raise CliError(f"--scale must be in (0, 1], got {args.scale:g}")
    if args.out:
        import os

        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):
            raise CliError(f"cannot write {args.out!r}: folder {folder!r} does not exist")
    if args.plot:
        _check_plot_path(args.plot)
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
        _write_text(args.out, result.to_toml())
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


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _short_spec(spec: str) -> str:
    """A spec with any file path shortened to its base name (for plot titles)."""
    import os

    head, sep, rest = spec.partition(":")
    if sep and head == "trace":
        path, comma, options = rest.partition(",")
        return f"trace:{os.path.basename(path)}{comma}{options}"
    first, comma, options = spec.partition(",")
    return f"{os.path.basename(first)}{comma}{options}" if first.endswith(".toml") else spec


def _near_best(thr, se, best: int) -> list[int]:
    """Indices whose throughput is within 2 combined standard errors of the best."""
    out = []
    for i in range(len(thr)):
        tol = 2 * math.sqrt(se[i] ** 2 + se[best] ** 2) if not (math.isnan(se[i]) or math.isnan(se[best])) else 0.0
        if i == best or thr[best] - thr[i] <= tol:
            out.append(i)
    return out


def _cmd_simulate(args) -> int:
    import jax
    import numpy as np

    from .. import __version__
    from .._engine._simulate import simulate
    from .._data._io import parse_hardware_spec, parse_workload_spec

    ratios = parse_ratios(args.ratios)
    workload = parse_workload_spec(args.workload)
    latency = parse_hardware_spec(args.hardware)
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
    out = result.to_dict()
    thr, se = out["throughput_per_instance"], [float("nan") if s is None else s for s in out["stderr"]]
    best = result.best_index()
    near = [out["ratios"][i] for i in _near_best(thr, se, best)]
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
    theta = float(workload.theta())
    slot_sd = float(np.sqrt(workload.slot_variance()))
    if args.plot:
        from .._plot import plot_simulation

        title = (
            f"workload {_short_spec(args.workload)} | hardware {_short_spec(args.hardware)}\n"
            f"B = {args.batch_size}, {args.steps} steps x {args.replicas} replicas, seed {args.seed}"
        )
        plot_simulation(result, args.plot, title=title)
    if args.json:
        out.update(
            best_ratio_throughput=thr[best],
            best_ratio_stderr=out["stderr"][best],
            ratios_within_2_stderr_of_best=near,
            theta_tokens=theta,
            slot_std_tokens=slot_sd,
            settings=settings,
        )
        if args.plot:
            out["plot"] = args.plot
        print(json.dumps(out, indent=2))
        return 0
    print(f"afdjax {__version__} simulate")
    print(f"workload  {args.workload}   theta = {theta:.6g} tokens/slot, slot sd = {slot_sd:.4g}")
    coeffs = ", ".join(f"{k}={v:g}" for k, v in latency.coefficients().items())
    print(f"hardware  {args.hardware}   ({coeffs}; comm scales with {latency.comm_scaling.replace('_', '*')})")
    print(f"B = {args.batch_size}, {args.steps} steps x {args.replicas} replicas, seed {args.seed}, {args.start} start")
    if args.micro_batches is None:
        print("step      paper's idealised overlap: tau = max(max_j t_A, t_C, t_F) (use --micro-batches M to pipeline)")
    else:
        print(f"step      pipeline of {args.micro_batches} micro-batch(es) per instance; bubble = 1 - busiest "
              "resource's busy time / elapsed time")
    print()
    q = out["cycle_time_quantiles"]
    p99 = q.get("p99", [float("nan")] * len(thr))
    header = f"{'r':>4}  {'throughput/inst':>15}  {'+-stderr':>9}  {'attn idle':>9}  {'FFN idle':>8}  {'mean cycle':>10}  {'p99 cycle':>9}"
    bubble = args.micro_batches is not None
    if bubble:
        header += f"  {'bubble':>6}"
    print(header)
    print("-" * len(header))
    for i, r in enumerate(out["ratios"]):
        mark = "  <- best" if i == best else ""
        print(
            f"{r:>4}  {thr[i]:>15.5g}  {_fmt(se[i], 3):>9}  {out['attention_idle_fraction'][i]:>9.3f}  "
            f"{out['ffn_idle_fraction'][i]:>8.3f}  {out['mean_cycle_time'][i]:>10.5g}  {p99[i]:>9.5g}"
            + (f"  {max(out['pipeline_bubble_fraction'][i], 0.0):>6.3f}" if bubble else "")
            + mark
        )
    print()
    print(
        f"Simulated throughput peaks at r = {out['ratios'][best]} "
        f"({thr[best]:.5g} +- {_fmt(se[best], 3)} tokens per time unit per instance)."
    )
    others = [r for r in near if r != out["ratios"][best]]
    if others:
        print(f"Within 2 standard errors of the peak: r = {', '.join(map(str, others))}.")
    else:
        print("No other ratio is within 2 standard errors of the peak.")
    if args.plot:
        print(f"Plot written to {args.plot}")
    return 0


def _constrained_mode(args) -> bool:
    return any(getattr(args, k) is not None for k in _CONSTRAINT_FLAGS) or args.objective != "per-instance"


def _cmd_provision_constrained(args) -> int:
    import jax

    from .. import __version__
    from .._provision._constraints import Constraints, Costs, provision_constrained
    from .._hardware._core import load_deployment
    from .._data._io import parse_workload_spec

    ratios = parse_ratios(args.ratios) if args.ratios else None
    batch_sizes = parse_batch_sizes(args.batch_sizes) if args.batch_sizes else [args.batch_size]
    workload = parse_workload_spec(args.workload)
    deployment = load_deployment(args.hardware)
    kv_bytes = args.kv_bytes_per_token if args.kv_bytes_per_token is not None else deployment.kv_bytes_per_token
    capacity = None
    if args.kv_capacity_gb is not None:
        if args.kv_capacity_gb == "auto":
            capacity = deployment.kv_capacity_bytes()
            if capacity is None:
                raise CliError(f"--kv-capacity-gb auto: the hardware spec {args.hardware!r} does not give HBM capacity "
                               "and resident weights; use an ACCELERATOR:MODEL spec (e.g. h100:deepseek-v3) or a number")
            if capacity <= 0:
                raise CliError(f"--kv-capacity-gb auto: the weights ({deployment.attention_weight_bytes / 1e9:.4g} GB) "
                               "do not fit the Attention instance's HBM; give more attention_devices or a number")
        else:
            capacity = args.kv_capacity_gb  # bytes (the option's type converts GB)
        if kv_bytes is None:
            raise CliError(f"--kv-capacity-gb needs the KV bytes per token: the hardware spec {args.hardware!r} has no "
                           "model; use ACCELERATOR:MODEL (e.g. h100:deepseek-v3) or --kv-bytes-per-token")
    layers = args.num_layers if args.num_layers is not None else deployment.num_layers
    if args.tpot_ms is not None and layers is None:
        raise CliError(f"--tpot-ms needs the number of layers: the hardware spec {args.hardware!r} has no model; "
                       "use ACCELERATOR:MODEL (e.g. h100:deepseek-v3) or --num-layers")
    constraints = Constraints(
        kv_capacity_bytes=capacity,
        kv_bytes_per_token=kv_bytes,
        kv_overflow_tolerance=args.kv_overflow_prob,
        tpot_target_ms=args.tpot_ms,
        tpot_statistic=args.tpot_stat,
        num_layers=layers,
        time_unit_us=args.time_unit_us,
    )
    power_a, power_f = args.power_attention_w, args.power_ffn_w
    if power_a is None and power_f is None and deployment.power_watts is not None:
        power_a = deployment.power_watts * (deployment.attention_devices or 1)
        power_f = deployment.power_watts * (deployment.ffn_devices or 1)
    for a, b, flag in ((args.price_attention, args.price_ffn, "--price-attention and --price-ffn"),
                       (power_a, power_f, "--power-attention-w and --power-ffn-w")):
        if (a is None) != (b is None):
            raise CliError(f"give both {flag}, or neither")
    objective = args.objective.replace("-", "_")
    if objective == "per_dollar" and args.price_attention is None:
        raise CliError("--objective per-dollar needs --price-attention and --price-ffn ($ per instance-hour)")
    if objective == "per_joule" and power_a is None:
        raise CliError(f"--objective per-joule needs --power-attention-w and --power-ffn-w (the hardware spec "
                       f"{args.hardware!r} gives no board power)")
    costs = Costs(attention_price_per_hour=args.price_attention, ffn_price_per_hour=args.price_ffn,
                  attention_power_w=power_a, ffn_power_w=power_f)
    settings = dict(workload=args.workload, hardware=args.hardware, seed=args.seed, start=args.start,
                    warmup_steps=args.warmup, afdjax_version=__version__,
                    deployment={k: v for k, v in deployment.to_dict().items() if v is not None})
    report = provision_constrained(
        jax.random.key(args.seed), workload, deployment.latency, batch_sizes, ratios, args.steps, args.replicas,
        constraints=constraints, costs=costs, objective=objective, micro_batches=args.micro_batches,
        settings=settings, progress=not args.json and sys.stderr.isatty(), start=args.start, warmup_steps=args.warmup,
    )
    title = (f"workload {_short_spec(args.workload)} | hardware {_short_spec(args.hardware)}"
             + (f" | {args.micro_batches} micro-batches" if args.micro_batches else "")
             + f"\n{args.steps} steps x {args.replicas} replicas, seed {args.seed}")
    return _emit_report(args, report, title)


def _emit_report(args, report, title: str) -> int:
    """Plot (``--plot``), then print the report as JSON (``--json``) or text."""
    if args.plot:
        _check_plot_path(args.plot)
        report.plot(args.plot, title=title)
    if args.json:
        out = report.to_dict()
        if args.plot:
            out["plot"] = args.plot
        print(json.dumps(out, indent=2))
        return 0
    print(report.format_text())
    if args.plot:
        print(f"Plot written to {args.plot}")
    return 0


def _cmd_provision(args) -> int:
    import jax

    if _constrained_mode(args):
        return _cmd_provision_constrained(args)

    from .. import __version__
    from .._data._io import parse_hardware_spec, parse_workload_spec
    from .._provision._report import provision

    ratios = parse_ratios(args.ratios) if args.ratios else None
    workload = parse_workload_spec(args.workload)
    latency = parse_hardware_spec(args.hardware)
    settings = dict(
        workload=args.workload,
        hardware=args.hardware,
        seed=args.seed,
        start=args.start,
        warmup_steps=args.warmup,
        afdjax_version=__version__,
    )
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
        f"workload {_short_spec(args.workload)} | hardware {_short_spec(args.hardware)} | B = {args.batch_size}\n"
        f"{args.steps} steps x {args.replicas} replicas, seed {args.seed}"
    )
    return _emit_report(args, report, title)


def _cmd_verify(args) -> int:
    from .._data._io import parse_hardware_spec
    from .._provision._verify import run_verification

    latency = parse_hardware_spec(args.hardware)
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


def _split(text):
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


def _cmd_fit_workload(args) -> int:
    from .._fit._workload import DECODE_FIT_FAMILIES, PREFILL_FIT_FAMILIES, fit_trace

    fit = fit_trace(
        args.trace,
        prefill_column=args.prefill_column,
        decode_column=args.decode_column,
        decode_families=_split(args.family) or DECODE_FIT_FAMILIES,
        prefill_families=_split(args.prefill_family) or PREFILL_FIT_FAMILIES,
    )
    if args.json:
        print(json.dumps(fit.to_dict(), indent=2))
    else:
        print(fit.format_text())
    return 0


def _write_text(path: str, text: str) -> None:
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"cannot write {path!r}: folder {folder!r} does not exist")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _cmd_fit_latency(args) -> int:
    from .._fit._latency import fit_latency
    from .._data._io import parse_hardware_spec

    defaults = parse_hardware_spec(args.defaults) if args.defaults else None
    fit = fit_latency(args.observations, loss=args.loss, comm_scaling=args.comm_scaling,
                      n_bootstrap=args.bootstrap, defaults=defaults)
    if args.out:
        _write_text(args.out, fit.to_toml())
    if args.plot:
        _check_plot_path(args.plot)
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


def _cmd_fit_throughput(args) -> int:
    import jax

    from .._fit._throughput import fit_throughput, read_throughput_observations
    from .._data._io import latency_to_toml, parse_hardware_spec, parse_workload_spec

    obs = read_throughput_observations(args.observations)
    workload = parse_workload_spec(args.workload)
    latency = parse_hardware_spec(args.hardware)
    fit = fit_throughput(obs, workload, latency, _split(args.fit) or (), key=jax.random.key(args.seed),
                         num_steps=args.steps, num_replicas=args.replicas)
    if args.out:
        _write_text(args.out, latency_to_toml(fit.latency, description=(
            f"afdjax fit throughput from {args.observations}: {len(obs.throughput)} observations, "
            f"fitted {', '.join(fit.names)}; max |relative residual| {100 * fit.max_abs_rel_residual:.2f}%")))
    if args.json:
        print(json.dumps(fit.to_dict(), indent=2))
    else:
        print(fit.format_text())
        if args.out:
            print(f"Hardware TOML written to {args.out}")
    return 0


def _check_plot_path(path: str) -> None:
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CliError(f"cannot write plot {path!r}: folder {folder!r} does not exist")


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    print(f"afdjax: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    import warnings

    parser = build_parser()
    previous, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        return _main(parser, argv)
    finally:
        warnings.showwarning = previous


def _main(parser, argv) -> int:
    try:
        args = parser.parse_args(argv)
        if getattr(args, "warmup", 0) is None:  # the step model's default, recorded as given
            from .._step import as_step_model

            args.warmup = as_step_model(None, args.micro_batches).default_warmup_steps()
        if args.version:
            from .. import __version__

            print(f"afdjax {__version__}")
            return 0
        if args.command is None:
            parser.print_help()
            return 0
        if args.command == "simulate":
            return _cmd_simulate(args)
        if args.command == "provision":
            return _cmd_provision(args)
        if args.command == "verify":
            return _cmd_verify(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        if args.command == "hardware":
            return _cmd_hardware(args)
        if args.command == "profile":
            return _cmd_profile(args)
        if args.command == "fit":
            if args.fit_command is None:
                raise CliError("choose what to fit: afdjax fit workload|latency|throughput")
            return {"workload": _cmd_fit_workload, "latency": _cmd_fit_latency, "throughput": _cmd_fit_throughput}[
                args.fit_command
            ](args)
        raise CliError(f"unknown command {args.command!r}")
    except (CliError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"afdjax: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("afdjax: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not a user error: still one line unless debugging
        import os

        if os.environ.get("AFDJAX_DEBUG"):
            raise
        print(
            f"afdjax: internal error: {type(err).__name__}: {err} (set AFDJAX_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
