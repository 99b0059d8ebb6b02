"""Text and JSON of a :class:`~afdjax.Prediction` (no numerics here)."""

from __future__ import annotations

from .._json import jsonable


def prediction_to_dict(pred) -> dict:
    obs = pred.observations
    observed = obs.value if obs.value is not None else [None] * len(obs)
    rows = []
    for i in range(len(obs)):
        row = dict(
            workload=obs.workload[i],
            batch_size=int(obs.batch_size[i]),
            ratio=int(obs.ratio[i]),
            step_time=float(pred.step_time[i]),
            step_time_stderr=float(pred.step_time_stderr[i]),
            throughput_per_instance=float(pred.throughput[i]),
            throughput_per_instance_stderr=float(pred.throughput_stderr[i]),
            monte_carlo_stderr=float(pred.monte_carlo_stderr[i]),
        )
        if obs.value is not None:
            row[f"observed_{obs.quantity}"] = float(observed[i])
        rows.append(row)
    groups = []
    for g in pred.groups:
        prob = g.best_ratio_probability
        groups.append(
            dict(
                workload=g.workload,
                batch_size=g.batch_size,
                recommended_ratio=g.recommended_ratio,
                ratios=[int(r) for r in g.ratios],
                throughput_per_instance=[float(v) for v in g.throughput],
                throughput_per_instance_stderr=[float(v) for v in g.throughput_stderr],
                best_ratio_probability=None
                if prob is None
                else {str(int(r)): float(p) for r, p in zip(g.ratios, prob)},
            )
        )
    return jsonable(dict(rows=rows, groups=groups, calibrated=pred.calibrated, posterior_draws=pred.posterior_draws))


def format_prediction(pred) -> str:
    obs = pred.observations
    lines = [
        f"afdjax predict: {len(obs)} rows, {len(pred.groups)} (workload, batch size) groups"
        + ("" if pred.calibrated else " (no calibration covariance: Monte Carlo standard errors only)"),
        "",
        f"{'workload':<34} {'B':>6} {'r':>4} {'step time':>11} {'s.e.':>9} {'thr/inst':>11} {'s.e.':>9}",
    ]
    for i in range(len(obs)):
        lines.append(
            f"{(obs.workload[i] or '-')[:34]:<34} {int(obs.batch_size[i]):>6} {int(obs.ratio[i]):>4} "
            f"{pred.step_time[i]:>11.5g} {pred.step_time_stderr[i]:>9.3g} "
            f"{pred.throughput[i]:>11.5g} {pred.throughput_stderr[i]:>9.3g}"
        )
    lines.append("")
    for g in pred.groups:
        head = f"{g.workload or '-'}, B={g.batch_size}: recommended r = {g.recommended_ratio}"
        if g.best_ratio_probability is not None:
            top = sorted(zip(g.best_ratio_probability, g.ratios), reverse=True)[:3]
            shown = ", ".join(f"r={int(r)}: {p:.2f}" for p, r in top if p > 0)
            head += f"; P(best) over {pred.posterior_draws} posterior draws: {shown}"
        lines.append(head)
    return "\n".join(lines)
