"""Text, JSON and TOML of a :class:`~afdjax.Calibration` (no numerics here)."""

from __future__ import annotations

import math

import numpy as np

from .._json import jsonable
from .._validate import format_number


def _held_out_dict(held) -> dict | None:
    if held is None:
        return None
    return dict(
        method=held.method,
        folds=held.folds,
        rms_relative_error=held.rms_relative_error,
        max_abs_relative_error=held.max_abs_relative_error,
        rows=[
            dict(row=int(i), observed=float(o), predicted=float(p))
            for i, o, p in zip(held.rows, held.observed, held.predicted)
        ],
    )


def calibration_to_dict(cal) -> dict:
    obs = cal.observations
    return jsonable(
        dict(
            quantity=obs.quantity,
            parameters={
                n: dict(
                    estimate=cal.estimate[n],
                    ci95=list(cal.interval[n]),
                    stderr_log=cal.stderr_log[n],
                    dof=cal.dof[n],
                    start=cal.start[n],
                    warm_start=cal.warm_start[n],
                    identified=n not in cal.not_identified,
                )
                for n in cal.names
            },
            not_identified=list(cal.not_identified),
            latency_coefficients=cal.latency.coefficients(),
            comm_scaling=cal.latency.comm_scaling,
            rows=[
                dict(
                    workload=w,
                    batch_size=int(b),
                    ratio=int(r),
                    observed=float(o),
                    predicted=float(p),
                    throughput_per_instance=float(t),
                    step_time=float(s),
                )
                for w, b, r, o, p, t, s in zip(
                    obs.workload,
                    obs.batch_size,
                    obs.ratio,
                    obs.value,
                    cal.predicted,
                    cal.predicted_throughput,
                    cal.predicted_step_time,
                )
            ],
            max_abs_rel_residual=cal.max_abs_rel_residual,
            held_out=_held_out_dict(cal.held_out),
        )
    )


def format_calibration(cal) -> str:
    obs = cal.observations
    lines = [
        f"afdjax fit throughput: {len(obs)} observed {obs.quantity} rows, "
        f"{len(obs.groups())} (workload, batch size) groups, calibrated through the Monte Carlo simulation",
        "",
        f"{'parameter':>10} {'estimate':>12} {'95% interval':>27} {'start':>12} {'warm start':>12}",
    ]
    for n in cal.names:
        lo, hi = cal.interval[n]
        note = "  (not identified: held at its start)" if n in cal.not_identified else ""
        lines.append(
            f"{n:>10} {cal.estimate[n]:>12.5g} [{lo:>11.5g}, {hi:>11.5g}] {cal.start[n]:>12.5g} "
            f"{cal.warm_start[n]:>12.5g}{note}"
        )
    lines += ["", f"{'workload':<34} {'B':>6} {'r':>4} {'observed':>11} {'predicted':>11} {'rel. resid':>10}"]
    for w, b, r, o, p in zip(obs.workload, obs.batch_size, obs.ratio, obs.value, cal.predicted):
        rel = format_number(100 * (p / o - 1), ">9.2f")
        lines.append(f"{(w or '-')[:34]:<34} {int(b):>6} {int(r):>4} {o:>11.5g} {p:>11.5g} {rel}%")
    lines.append(f"\nmax |relative residual| = {100 * cal.max_abs_rel_residual:.2f}%")
    held = cal.held_out
    if held is not None:
        what = "held-out rows" if held.method == "holdout" else f"{held.folds}-fold cross-validation"
        lines.append(
            f"{what}: {len(held.rows)} predicted rows, RMS relative error {100 * held.rms_relative_error:.2f}%, "
            f"max {100 * held.max_abs_relative_error:.2f}%"
        )
    return "\n".join(lines)


def _toml_float(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if math.isnan(v):
        return "nan"
    return repr(float(v))


def calibration_table(cal) -> dict:
    """The ``[calibration]`` table: fitted names, ``log`` estimates and their covariance."""
    return dict(
        parameters=list(cal.names),
        scale="log",
        estimate_log=[float(v) for v in cal.x],
        covariance_log=[[float(v) for v in row] for row in np.asarray(cal.covariance)],
        not_identified=list(cal.not_identified),
        quantity=cal.observations.quantity,
        rows=len(cal.observations),
        micro_batches=int(getattr(cal.step_model, "micro_batches", 0) or 0),
        num_layers=int(getattr(cal.latency, "num_layers", None) or 0),
    )


def calibration_toml(cal) -> str:
    """TOML text of :func:`calibration_table` (appended to the hardware TOML)."""
    table = calibration_table(cal)
    out = ["", "[calibration]"]
    for k, v in table.items():
        if isinstance(v, str):
            out.append(f'{k} = "{v}"')
        elif isinstance(v, list) and v and isinstance(v[0], list):
            out.append(f"{k} = [")
            out += ["  [" + ", ".join(_toml_float(x) for x in row) + "]," for row in v]
            out.append("]")
        elif isinstance(v, list):
            items = ", ".join(f'"{x}"' if isinstance(x, str) else _toml_float(x) for x in v)
            out.append(f"{k} = [{items}]")
        else:
            out.append(f"{k} = {v}")
    return "\n".join(out) + "\n"
