"""Starting values of :func:`afdjax.calibrate` from the data: the mean-field stage lines.

The mean-field step time of a row is ``max(t_A, t_F, t_C)`` with
``t_A = alpha_a B theta + beta_a`` (``theta`` the workload's mean slot load),
``t_F = alpha_f r B + beta_f`` and ``t_C = alpha_c B + beta_c`` (``r B`` with
``comm_scaling="ratio_batch"``): piecewise linear in the coefficients.

* :func:`start_from_data`: without a starting model, alternating least squares: each row is
  assigned to the attention or the FFN line (first guess: the upper half of each group's
  ratios is FFN-bound), each line is refitted by non-negative least squares on its rows,
  and the rows are reassigned to the larger line, until nothing changes (at most 20
  rounds); communication starts small (5 % of the smallest step time).
* :func:`mean_field_fit`: then Levenberg-Marquardt (NumPy, milliseconds) of the relative
  error of the mean-field step time in the ``log`` of the fitted coefficients, the others
  held; the Jacobian of a max is that of the line that attains it. This is the warm start
  of the simulation fit: it ignores the barrier (the slowest of ``r`` instances) and any
  stage-time noise, which the refinement through the simulation then adds.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._latency import COEFFICIENT_NAMES, LatencyModel
from ._sweep_data import RatioSweep, step_time_to_throughput


def _features(observations: RatioSweep, workloads: dict, comm_scaling: str):
    """``(tau, features (n, 6))``: the observed step times and each coefficient's multiplier."""
    thr, _ = observations.throughput()
    r, b = observations.ratio.astype(float), observations.batch_size.astype(float)
    tau = step_time_to_throughput(thr, r, b)  # the conversion is its own inverse
    theta = np.asarray([float(workloads[w].theta()) for w in observations.workload])
    comm_tokens = b if comm_scaling == "batch" else r * b
    ones = np.ones_like(r)
    return tau, np.stack([b * theta, ones, r * b, ones, comm_tokens, ones], axis=1)


def _line(x, y):
    """Least-squares ``y = a x + b`` with ``a, b >= 0``."""
    if len(x) == 0:
        return 0.0, 0.0
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0, float(np.mean(y))
    a, b = np.polyfit(x, y, 1)
    if a < 0:
        return 0.0, float(np.mean(y))
    if b < 0:
        return float(np.sum(x * y) / np.sum(x * x)), 0.0
    return float(a), float(b)


def start_from_data(observations: RatioSweep, workloads: dict, comm_scaling: str = "batch") -> LatencyModel:
    """A starting latency model from the measured step times alone (module docstring)."""
    tau, feat = _features(observations, workloads, comm_scaling)
    x_att, x_ffn = feat[:, 0], feat[:, 2]
    r = observations.ratio.astype(float)
    ffn = np.zeros(len(tau), dtype=bool)
    for _, _, idx in observations.groups():
        ffn[idx] = r[idx] > np.median(r[idx])
    att_line = ffn_line = (0.0, float(np.min(tau)))
    for _ in range(20):
        att_line, ffn_line = _line(x_att[~ffn], tau[~ffn]), _line(x_ffn[ffn], tau[ffn])
        new = ffn_line[0] * x_ffn + ffn_line[1] > att_line[0] * x_att + att_line[1]
        if np.array_equal(new, ffn) or new.all() or (~new).all():
            break
        ffn = new
    scale = float(np.min(tau))
    return LatencyModel(
        alpha_a=max(att_line[0], 1e-3 * scale / float(np.mean(x_att))),
        beta_a=max(att_line[1], 1e-3 * scale),
        alpha_f=max(ffn_line[0], 1e-3 * scale / float(np.mean(x_ffn))),
        beta_f=max(ffn_line[1], 1e-3 * scale),
        alpha_c=1e-3 * scale / float(np.mean(feat[:, 4])),
        beta_c=0.05 * scale,
        comm_scaling=comm_scaling,
    )


def mean_field_fit(
    observations: RatioSweep, workloads: dict, latency: LatencyModel, names, weight=None, iterations: int = 100
) -> LatencyModel:
    """``latency`` with the coefficients among ``names`` fitted to the mean-field step time
    (module docstring); rows with ``weight`` 0 are left out. Coefficients at 0 stay at 0."""
    tau, feat = _features(observations, workloads, latency.comm_scaling)
    weight = np.ones(len(tau)) if weight is None else np.asarray(weight, dtype=float)
    coef = np.asarray([float(getattr(latency, n)) for n in COEFFICIENT_NAMES])
    free = np.asarray([n in names and c > 0 for n, c in zip(COEFFICIENT_NAMES, coef)])
    if not free.any():
        return latency
    logc = np.log(np.where(coef > 0, coef, 1.0))

    def evaluate(lc):
        c = np.where(coef > 0, np.exp(lc), 0.0)
        lines = np.stack([feat[:, 2 * k] * c[2 * k] + feat[:, 2 * k + 1] * c[2 * k + 1] for k in range(3)], axis=1)
        which = np.argmax(lines, axis=1)
        pred = lines[np.arange(len(tau)), which]
        J = np.zeros((len(tau), 6))
        for k in range(3):
            on = which == k
            J[on, 2 * k] = feat[on, 2 * k] * c[2 * k]
            J[on, 2 * k + 1] = feat[on, 2 * k + 1] * c[2 * k + 1]
        w = np.sqrt(weight) / tau
        return (pred - tau) * w, J * w[:, None]

    damping = 1e-3
    res, J = evaluate(logc)
    cost = float(res @ res)
    for _ in range(iterations):
        A = J[:, free]
        H = A.T @ A
        scale = np.diag(H) + 1e-12 * max(float(np.trace(H)), 1e-300)
        step = np.zeros(6)
        step[free] = -np.linalg.solve(H + damping * np.diag(scale), A.T @ res)
        step = np.clip(step, -3.0, 3.0)
        res_new, J_new = evaluate(logc + step)
        cost_new = float(res_new @ res_new)
        if cost_new <= cost:
            converged = cost - cost_new <= 1e-14 * max(cost, 1e-300)
            logc, res, J, cost, damping = logc + step, res_new, J_new, cost_new, damping * 0.3
            if converged:
                break
        else:
            damping *= 10.0
            if damping > 1e12:
                break
    values = np.where(coef > 0, np.exp(logc), 0.0)
    for name, value in zip(COEFFICIENT_NAMES, values.tolist()):  # keeps every other part of the model
        latency = eqx.tree_at(lambda m, n=name: getattr(m, n), latency, jnp.asarray(value))
    return latency
