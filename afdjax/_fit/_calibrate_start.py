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

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._latency import COEFFICIENT_NAMES, LatencyModel
from .._stage import StageNoise
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


def _alternate(tau, x_att, x_ffn, ffn):
    """Alternating least squares of ``max(attention line, FFN line)`` from the assignment ``ffn``."""
    att_line = ffn_line = (0.0, 0.0)
    for _ in range(20):
        att_line, ffn_line = _line(x_att[~ffn], tau[~ffn]), _line(x_ffn[ffn], tau[ffn])
        new = ffn_line[0] * x_ffn + ffn_line[1] > att_line[0] * x_att + att_line[1]
        if np.array_equal(new, ffn) or new.all() or (~new).all():
            break
        ffn = new
    return att_line, ffn_line


def _envelope_assignment(observations: RatioSweep, tau, x_ffn):
    """Rows on the lower envelope: the FFN time does not depend on the workload, so at each
    ``(r, B)`` the smallest step time over workloads bounds it; the FFN line through those
    minima, and the rows within 2 % of it, are the first guess of the FFN-bound rows."""
    keys = {}
    for i, (r, b) in enumerate(zip(observations.ratio, observations.batch_size)):
        keys.setdefault((int(r), int(b)), []).append(i)
    lows = np.asarray([min(rows, key=lambda i: tau[i]) for rows in keys.values()])
    a, b = _line(x_ffn[lows], tau[lows])
    return tau <= 1.02 * (a * x_ffn + b)


def start_candidates(
    observations: RatioSweep, workloads: dict, comm_scaling: str = "batch", keep_noise: bool = False
) -> list:
    """Starting latency models from the measured step times alone (module docstring): the
    alternating least squares from three first guesses (the lower envelope, the upper half
    of each group's ratios, every row attention-bound), each polished by
    :func:`mean_field_fit` with ``attention_cv``; distinct ones, smallest mean-field error
    first. The best fit may put the FFN line out of play where the noise explains a rise;
    :func:`afdjax.calibrate` refines from each and keeps the best.

    ``keep_noise``: keep each start's polished ``attention_cv`` (for a fit of
    ``attention_cv``: a start whose attention line binds only through its straggler factor
    loses that line at a smaller ``cv``, where neither the warm start nor the refinement can
    move ``cv`` back, since a line that binds no row has no gradient); ``False`` (default):
    the coefficients only."""
    tau, feat = _features(observations, workloads, comm_scaling)
    x_att, x_ffn = feat[:, 0], feat[:, 2]
    r = observations.ratio.astype(float)
    upper = np.zeros(len(tau), dtype=bool)
    for _, _, idx in observations.groups():
        upper[idx] = r[idx] > np.median(r[idx])
    guesses = (_envelope_assignment(observations, tau, x_ffn), upper, np.zeros(len(tau), dtype=bool))
    scale = float(np.min(tau))
    found = []
    for ffn in guesses:
        att_line, ffn_line = _alternate(tau, x_att, x_ffn, ffn)
        if ffn_line == (0.0, 0.0):  # no FFN-bound row: an FFN line just below the data
            ffn_line = (0.0, 0.9 * scale)
        start = LatencyModel(
            alpha_a=max(att_line[0], 1e-3 * scale / float(np.mean(x_att))),
            beta_a=max(att_line[1], 1e-3 * scale),
            alpha_f=max(ffn_line[0], 1e-3 * scale / float(np.mean(x_ffn))),
            beta_f=max(ffn_line[1], 1e-3 * scale),
            alpha_c=1e-3 * scale / float(np.mean(feat[:, 4])),
            beta_c=0.05 * scale,
            comm_scaling=comm_scaling,
        )
        noisy = eqx.tree_at(lambda m: m.noise, start, StageNoise(attention_cv=0.05), is_leaf=lambda v: v is None)
        polished = mean_field_fit(observations, workloads, noisy, COEFFICIENT_NAMES[:4] + ("attention_cv",))
        fitted = polished if keep_noise else eqx.tree_at(lambda m: m.noise, polished, None)
        values = np.asarray(list(fitted.coefficients().values()))
        if not any(np.allclose(values, v, rtol=1e-3) for _, v, _ in found):
            found.append((_cost(observations, workloads, polished), values, fitted))
    return [m for _, _, m in sorted(found, key=lambda t: t[0])]


def start_from_data(observations: RatioSweep, workloads: dict, comm_scaling: str = "batch") -> LatencyModel:
    """The start of :func:`start_candidates` with the smallest mean-field error."""
    return start_candidates(observations, workloads, comm_scaling)[0]


def mean_field_step_time(observations: RatioSweep, workloads: dict, latency: LatencyModel) -> np.ndarray:
    """The mean-field step time of every row (module docstring; the attention line times
    the expected largest of ``r`` factors when ``latency`` has ``attention_cv``), in the
    coefficients' time unit."""
    _, feat = _features(observations, workloads, latency.comm_scaling)
    c = np.asarray([float(getattr(latency, n)) for n in COEFFICIENT_NAMES])
    lines = np.stack([feat[:, 2 * k] * c[2 * k] + feat[:, 2 * k + 1] * c[2 * k + 1] for k in range(3)], axis=1)
    noise = getattr(latency, "noise", None)
    if noise is not None and float(noise.attention_cv) > 0:
        lines[:, 0] *= expected_max_factor(float(noise.attention_cv), observations.ratio)
    return lines.max(axis=1)


def _cost(observations, workloads, latency) -> float:
    tau, _ = _features(observations, workloads, latency.comm_scaling)
    return float(np.sum((mean_field_step_time(observations, workloads, latency) / tau - 1.0) ** 2))


CV_FLOOR_LOG = math.log(1e-3)  # afdjax._fit._calibrate_params.FLOORS["attention_cv"]
_Z = np.linspace(-9.0, 9.0, 1201)
_PDF = np.exp(-0.5 * _Z**2) / math.sqrt(2.0 * math.pi)
_CDF = np.asarray([0.5 * math.erfc(-z / math.sqrt(2.0)) for z in _Z])


def expected_max_factor(cv: float, ratio) -> np.ndarray:
    """``E[max of r factors]``, the factors LogNormal with mean 1 and coefficient of
    variation ``cv`` (:class:`~afdjax.StageNoise`), for each ``r`` of ``ratio`` (numerical
    integration over the standard normal on a fine grid)."""
    r = np.asarray(ratio, dtype=float)[..., None]
    sigma2 = math.log1p(cv * cv)
    factor = np.exp(-0.5 * sigma2 + math.sqrt(sigma2) * _Z)
    density = r * _PDF * _CDF ** np.maximum(r - 1.0, 0.0)
    return np.trapezoid(factor * density, _Z, axis=-1) / np.trapezoid(density, _Z, axis=-1)


def mean_field_fit(
    observations: RatioSweep, workloads: dict, latency: LatencyModel, names, weight=None, iterations: int = 100
) -> LatencyModel:
    """``latency`` with the coefficients among ``names`` (and ``attention_cv``, when it is
    one of them) fitted to the mean-field step time (module docstring); rows with ``weight``
    0 are left out. Coefficients at 0 stay at 0.

    With attention noise the attention line is multiplied by the expected largest of ``r``
    LogNormal factors (:func:`expected_max_factor`): the rise of the step time with ``r``
    that the per-layer barrier adds (its average over layers is that of one layer)."""
    tau, feat = _features(observations, workloads, latency.comm_scaling)
    ratio = observations.ratio
    weight = np.ones(len(tau)) if weight is None else np.asarray(weight, dtype=float)
    noise = getattr(latency, "noise", None)
    cv0 = 0.0 if noise is None else float(noise.attention_cv)
    coef = np.asarray([float(getattr(latency, n)) for n in COEFFICIENT_NAMES] + [cv0])
    free = np.asarray([n in names and c > 0 for n, c in zip(COEFFICIENT_NAMES + ("attention_cv",), coef)])
    if not free.any():
        return latency
    logc = np.log(np.where(coef > 0, coef, 1.0))

    def evaluate(lc):
        c = np.where(coef > 0, np.exp(lc), 0.0)
        m = expected_max_factor(c[6], ratio) if c[6] > 0 else np.ones(len(tau))
        lines = np.stack([feat[:, 2 * k] * c[2 * k] + feat[:, 2 * k + 1] * c[2 * k + 1] for k in range(3)], axis=1)
        lines[:, 0] *= m
        which = np.argmax(lines, axis=1)
        pred = lines[np.arange(len(tau)), which]
        J = np.zeros((len(tau), 7))
        for k in range(3):
            on = which == k
            J[on, 2 * k] = feat[on, 2 * k] * c[2 * k]
            J[on, 2 * k + 1] = feat[on, 2 * k + 1] * c[2 * k + 1]
        J[:, :2] *= m[:, None]
        if c[6] > 0:
            h = 1e-4 * c[6]
            dm = (expected_max_factor(c[6] + h, ratio) - expected_max_factor(c[6] - h, ratio)) / (2 * h)
            on = which == 0
            J[on, 6] = (feat[on, 0] * c[0] + c[1]) * dm[on] * c[6]
        w = np.sqrt(weight) / tau
        return (pred - tau) * w, J * w[:, None]

    damping = 1e-3
    res, J = evaluate(logc)
    cost = float(res @ res)
    for _ in range(iterations):
        A = J[:, free]
        H = A.T @ A
        scale = np.diag(H) + 1e-12 * max(float(np.trace(H)), 1e-300)
        step = np.zeros(7)
        step[free] = -np.linalg.solve(H + damping * np.diag(scale), A.T @ res)
        step = np.clip(step, -3.0, 3.0)
        step[6] = max(step[6], CV_FLOOR_LOG - logc[6]) if free[6] else 0.0
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
    for name, value in zip(COEFFICIENT_NAMES, values[:6].tolist()):  # keeps every other part of the model
        latency = eqx.tree_at(lambda m, n=name: getattr(m, n), latency, jnp.asarray(value))
    if free[6]:
        latency = eqx.tree_at(lambda m: m.noise.attention_cv, latency, jnp.asarray(float(values[6])))
    return latency
