"""Options of ``afdjax fit throughput`` (calibration to measured ratio sweeps) and
``afdjax predict``."""

from __future__ import annotations

import argparse

OBSERVATIONS_HELP = (
    "CSV: ratio, batch_size, optional workload (a --workload spec per row, quoted when it has commas), "
    "throughput (tokens per time unit per instance) or step_time (mean time of one decode step), optional stderr"
)


def _open_fraction(name: str):
    def conv(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r} is not a number") from None
        if not 0.0 < v < 1.0:
            raise argparse.ArgumentTypeError(f"{name} must be a fraction in (0, 1), got {text}")
        return v

    return conv


def _add_common(p, types, *, steps: int, replicas: int, micro_default: str = "the barrier step") -> None:
    _nonneg_int, _positive_int, _int_at_least = types._nonneg_int, types._positive_int, types._int_at_least
    p.add_argument(
        "--workload",
        default=None,
        help=f"workload spec of the rows without a workload column or cell (default {types.DEFAULT_WORKLOAD})",
    )
    p.add_argument(
        "--steps", type=_positive_int("--steps"), default=steps, help=f"simulated steps per replica (default {steps})"
    )
    p.add_argument(
        "--replicas", type=_int_at_least("--replicas", 2), default=replicas, help=f"replicas (default {replicas})"
    )
    p.add_argument("--seed", type=_nonneg_int("--seed"), default=0, help="random seed (default 0)")
    p.add_argument(
        "--micro-batches",
        type=_positive_int("--micro-batches"),
        default=None,
        help=f"simulate the micro-batch pipeline with m micro-batches (default: {micro_default})",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_fit_throughput_parser(fit_sub, types) -> None:
    """Register ``fit throughput`` on the ``fit`` subcommands; ``types`` is
    :mod:`afdjax._cli._parser` (its argument types)."""
    ft = fit_sub.add_parser(
        "throughput",
        help="calibrate the latency model to measured ratio sweeps (throughput or step time)",
        description="Calibrate the stochastic model through the differentiable simulation to measured rows "
        "(ratio, batch size, workload, throughput per instance or mean step time): several workloads and batch "
        "sizes in one file. Fits the six coefficients and the attention noise by default, reports which the data "
        "identify, their 95% "
        "intervals and the held-out error; times are in the unit of the observations.",
    )
    ft.add_argument("--observations", required=True, help=OBSERVATIONS_HELP)
    _add_common(ft, types, steps=2000, replicas=8)
    ft.add_argument(
        "--hardware",
        default=None,
        help="starting values and fixed coefficients (a hardware spec or TOML); default: a start derived from "
        "the data (mean-field stage lines fitted to the step times)",
    )
    ft.add_argument(
        "--fit",
        default=None,
        help="parameters to fit (default the six alpha_a,beta_a,alpha_f,beta_f,alpha_c,beta_c and attention_cv, "
        "plus routing_skew when the hardware routes experts; also ffn_cv, comm_cv, comm_per_peer, comm_alpha_link; "
        "a single-workload file may instead fit mu_p, mu_d or decode_NAME / prefill_NAME of a fitted: workload)",
    )
    ft.add_argument(
        "--comm-scaling",
        choices=("batch", "ratio_batch"),
        default="batch",
        help="communication of the data-derived start scales with B (default) or rB",
    )
    held = ft.add_mutually_exclusive_group()
    held.add_argument(
        "--holdout",
        type=_open_fraction("--holdout"),
        default=None,
        metavar="FRACTION",
        help="also refit on a random 1 - FRACTION of the rows and report the error on the rest",
    )
    held.add_argument(
        "--folds",
        type=types._int_at_least("--folds", 2),
        default=None,
        metavar="K",
        help="also report the K-fold cross-validated error (every row predicted once by a fit without it)",
    )
    ft.add_argument("--out", metavar="TOML", help="write the calibrated model (with its covariance) as hardware TOML")


def add_predict_parser(sub, types) -> None:
    """Register ``predict``."""
    p = sub.add_parser(
        "predict",
        help="predict step time and throughput of measured configurations; the best ratio and its probability",
        description="Predict every row of an observations file (file order) from a hardware model: step time and "
        "throughput per instance with standard errors (Monte Carlo and, for a model calibrated by 'afdjax fit "
        "throughput --out', the calibration's uncertainty), the recommended ratio of each (workload, batch size) "
        "group and the probability that each ratio is the best one (posterior draws, common random numbers).",
    )
    p.add_argument("--hardware", required=True, help="hardware spec or TOML (a calibrated TOML carries a covariance)")
    p.add_argument("--observations", required=True, help=OBSERVATIONS_HELP + " (the values are not needed)")
    _add_common(p, types, steps=2000, replicas=8, micro_default="the calibration's, else the barrier step")
    p.add_argument(
        "--max-ratio",
        type=types._positive_int("--max-ratio", types.MAX_RATIO),
        default=1,
        help="candidate ratios for the recommendation: 1 .. max(group's largest ratio, this) (default 1)",
    )
    p.add_argument(
        "--posterior-draws",
        type=types._nonneg_int("--posterior-draws"),
        default=200,
        help="parameter draws for the best-ratio probability (default 200; 0 skips it)",
    )
