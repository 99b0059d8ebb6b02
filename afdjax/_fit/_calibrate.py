"""Calibrate the latency model to measured ratio sweeps through the Monte Carlo simulation.

Observations (:class:`~afdjax.RatioSweep`): rows of (ratio ``r``, batch size ``B``,
workload, measured throughput per instance or mean step time, optional standard error),
from several workloads and batch sizes at once. Every (workload, ``B``) group is one
simulation of ratios ``1 .. r_max`` (common random numbers across ratios, iterations and
parameter values). Parameters: the six coefficients by default, any subset of them and
of the stage-time parameters (:mod:`afdjax._fit._calibrate_params`), each fitted as ``log``
of its value.

1. **Start** (:mod:`afdjax._fit._calibrate_start`): the given model, or, without one, the
   mean-field stage lines fitted to the measured step times by alternating least squares.
2. **Warm start**: Levenberg-Marquardt (NumPy) of the mean-field step time's relative error
   in the fitted coefficients (no simulation, no compilation).
3. **Refinement through the simulation**: Levenberg-Marquardt steps on the Monte Carlo
   throughput, Jacobian by forward-mode autodiff through the engine (pathwise).
4. **Identifiability**: a parameter whose weighted Jacobian column is below ``1e-6`` of the
   largest does not move the predictions (for example ``beta_c`` when communication never
   bounds the step): it stays at its start and is reported in ``not_identified``.
5. **Uncertainty**: the sandwich covariance of :mod:`afdjax._fit._throughput` (observation
   part plus the Monte Carlo part, off-diagonal terms included) and Satterthwaite's degrees
   of freedom. Without a ``stderr`` column the observation variance is one *relative*
   variance ``s^2 y_i^2`` estimated from the relative residuals (``n - p`` degrees of
   freedom): measured sweeps mix throughputs that differ by orders of magnitude.
6. **Held-out error**: ``holdout=f`` refits on a random ``1 - f`` of the rows and predicts
   the rest; ``folds=K`` does it for ``K`` folds so that every row is predicted once.
   The same compiled simulation serves every fit: held-out rows get weight 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .._engine import simulate
from .._grad import plan_buffers
from .._latency import COEFFICIENT_NAMES, LatencyModel
from .._validate import check_int, check_number, filter_jit, invalid
from .._workload import Workload
from . import _calibrate_params as params
from ._calibrate_start import mean_field_fit, start_candidates, start_from_data
from ._sweep_data import RatioSweep, step_time_to_throughput
from ._throughput import _covariance, _satterthwaite, _t_quantile

IDENTIFIED_TOLERANCE = 1e-6
MAX_STEP = 1.0
"""Largest change of one ``log`` parameter in one refinement step (a factor e)."""
STEP_TOLERANCE = 1e-5
"""The refinement stops once an accepted step moves no ``log`` parameter by more than this."""
VARIANCE_FLOOR = 1e-4
"""Relative standard deviation added to every row's variance (a deterministic step, e.g. an
FFN-bound one, has no Monte Carlo spread; a stated stderr may be 0)."""


@dataclasses.dataclass
class HeldOut:
    """Prediction error on rows the fit did not see (in the observed quantity).

    Attributes:
        observed: ``(rows,)`` observed values of the held-out rows.
        predicted: ``(rows,)`` their predictions by fits without them.
        folds: the number of folds (1 for a holdout).
    """

    method: str
    """``"holdout"`` or ``"folds"``."""
    rows: np.ndarray
    """Indices of the predicted rows (file order)."""
    observed: np.ndarray
    predicted: np.ndarray
    folds: int = 1

    @property
    def relative_error(self) -> np.ndarray:
        return self.predicted / self.observed - 1.0

    @property
    def rms_relative_error(self) -> float:
        return float(np.sqrt(np.mean(self.relative_error**2)))

    @property
    def max_abs_relative_error(self) -> float:
        return float(np.max(np.abs(self.relative_error)))


@dataclasses.dataclass
class Calibration:
    """Result of [`calibrate`][afdjax.calibrate]. Times in the observations' time unit.

    Attributes:
        dof: Satterthwaite degrees of freedom of each parameter's standard error.
        latency: the calibrated [`LatencyModel`][afdjax.LatencyModel].
        observations: the [`RatioSweep`][afdjax.RatioSweep] fitted.
        predicted_throughput: ``(rows,)`` predicted throughput per instance.
        predicted_step_time: ``(rows,)`` predicted mean step time.
        held_out: the [`HeldOut`][afdjax.HeldOut] error, or ``None`` without ``holdout``/``folds``.
        step_model: the step model simulated.
    """

    names: tuple[str, ...]
    """Fitted parameters (identified or not)."""
    not_identified: tuple[str, ...]
    """Parameters the observations do not move (left at their start; infinite interval)."""
    estimate: dict
    """Fitted value of each parameter."""
    interval: dict
    """95 % interval ``(low, high)`` of each parameter (Student t, Satterthwaite dof)."""
    stderr_log: dict
    """Standard error of ``log`` of each parameter."""
    dof: dict
    start: dict
    """Starting values (given or derived from the data)."""
    warm_start: dict
    """Values after the mean-field warm start (module docstring, 2)."""
    x: np.ndarray
    """``log`` of the fitted values (``names`` order)."""
    covariance: np.ndarray
    """Covariance of ``x`` (``inf`` on the diagonal of parameters not identified)."""
    latency: LatencyModel
    observations: RatioSweep
    predicted_throughput: np.ndarray
    predicted_step_time: np.ndarray
    held_out: HeldOut | None
    step_model: object = None

    @property
    def predicted(self) -> np.ndarray:
        """Predictions in the observed quantity (throughput or step time)."""
        q = self.observations.quantity
        return self.predicted_throughput if q == "throughput" else self.predicted_step_time

    @property
    def max_abs_rel_residual(self) -> float:
        return float(np.max(np.abs(self.predicted / self.observations.value - 1.0)))

    def to_dict(self) -> dict:
        from ._calibrate_text import calibration_to_dict

        return calibration_to_dict(self)

    def format_text(self) -> str:
        from ._calibrate_text import format_calibration

        return format_calibration(self)

    def calibration_table(self) -> dict:
        """The ``[calibration]`` table of the hardware TOML (read back by
        ``calibration_from_mapping``)."""
        from ._calibrate_text import calibration_table

        return calibration_table(self)


def _exp(v: float) -> float:
    """``exp(v)``, ``inf`` past the largest float (an interval of a barely identified parameter)."""
    return math.exp(v) if v < 709.0 else math.inf


# ------------------------------------------------------------------------ the simulation
def workload_per_label(observations: RatioSweep, workloads) -> dict:
    labels = sorted(set(observations.workload))
    if isinstance(workloads, Workload):
        return {label: workloads for label in labels}
    if not isinstance(workloads, Mapping):
        raise invalid("workloads", workloads, "a Workload or a mapping from workload label to Workload")
    missing = [label for label in labels if label not in workloads]
    if missing:
        raise ValueError(f"workloads has no Workload for the observations' label(s) {', '.join(map(repr, missing))}")
    for label in labels:
        if not isinstance(workloads[label], Workload):
            raise invalid(f"workloads[{label!r}]", workloads[label], "an afdjax Workload")
    return {label: workloads[label] for label in labels}


def build_layout(observations: RatioSweep, workloads: dict, num_steps: int, num_replicas: int, max_ratio: int = 1):
    """Static simulation layout: ``(layout, workload tuple, column of each row)``; ``layout``
    holds ``(B, r_max, chunk_steps, requests_per_chunk)`` per (workload, ``B``) group, the
    columns are the concatenated per-group ratio curves ``1 .. r_max`` (``r_max`` the
    group's largest ratio, at least ``max_ratio``)."""
    layout, group_workloads, column = [], [], np.zeros(len(observations), dtype=int)
    offset = 0
    for label, b, idx in observations.groups():
        w = workloads[label]
        rmax = max(int(observations.ratio[idx].max()), max_ratio)
        sizes = plan_buffers(w, b, rmax, num_steps, num_replicas)
        layout.append((b, rmax, sizes["chunk_steps"], sizes["requests_per_chunk"]))
        group_workloads.append(w)
        column[idx] = offset + observations.ratio[idx] - 1
        offset += rmax
    return tuple(layout), tuple(group_workloads), column


def _curves(x, key, workloads, latency, names, layout, num_steps, num_replicas, step_model):
    """Per-replica throughput ``(R, sum r_max)``: each group's ratios ``1 .. r_max``."""
    lat = params.apply(latency, names, x)
    out = []
    for w, (b, rmax, chunk_steps, requests_per_chunk) in zip(workloads, layout):
        res = simulate(
            key,
            w,
            lat,
            b,
            list(range(1, rmax + 1)),
            num_steps,
            num_replicas,
            chunk_steps=chunk_steps,
            requests_per_chunk=requests_per_chunk,
            step_model=step_model,
        )
        out.append(res.throughput_per_replica)
    return jnp.concatenate(out, axis=1)


simulated_curves = filter_jit(_curves)


@filter_jit
def curves_jacobian(x, key, workloads, latency, *static):
    """``d mean curves / d x`` ``(sum r_max, p)`` by forward-mode autodiff (pathwise)."""
    return jax.jacfwd(lambda v: jnp.mean(_curves(v, key, workloads, latency, *static), axis=0))(x)


# ------------------------------------------------------------------------ one fit
def _fit_once(x0, base, y, obs_var, weight, problem, refine_iterations):
    """Levenberg-Marquardt from ``x0`` (``base``: the model the fitted values go into) on the
    rows with ``weight`` 1; returns ``(x, active, cost)``.

    The row weights are fixed at the start (observation variance plus the Monte Carlo
    variance there), so that a step cannot lower the cost by making the simulation noisier;
    a step moves no ``log`` parameter by more than :data:`MAX_STEP`. ``active``: the
    parameters that move the weighted predictions at the end (identified); ``cost``: the
    sum of squared residuals over the observation variance alone (comparable between starts)."""
    column = problem["column"]

    def mc(v):
        return problem["mc"](v, base)

    def jac(v):
        return problem["jac"](v, base)

    p = x0.shape[0]
    x = x0
    per = mc(x)
    se = (jnp.std(per, axis=0, ddof=1) / math.sqrt(per.shape[0]))[column]
    var = se**2 + (obs_var if obs_var is not None else (0.005 * y) ** 2) + (VARIANCE_FLOOR * y) ** 2
    w = weight / jnp.sqrt(var)
    pred = jnp.mean(per, axis=0)[column]
    A = np.asarray(jac(x)[column] * w[:, None])
    damping = 1e-3
    for _ in range(refine_iterations):
        res = np.asarray((y - pred) * w)
        H = A.T @ A
        ridge = damping * np.diag(np.diag(H)) + 1e-12 * max(np.trace(H), 1e-300) / p * np.eye(p)
        step = np.clip(np.linalg.solve(H + ridge, A.T @ res), -MAX_STEP, MAX_STEP)
        x_new = jnp.maximum(x + jnp.asarray(step, dtype=x.dtype), jnp.asarray(problem["floor"], dtype=x.dtype))
        pred_new = jnp.mean(mc(x_new), axis=0)[column]
        if float(jnp.sum(((y - pred_new) * w) ** 2)) <= float(np.sum(res**2)):
            x, pred, damping = x_new, pred_new, damping * 0.3
            if np.max(np.abs(step)) < STEP_TOLERANCE:
                break
            A = np.asarray(jac(x)[column] * w[:, None])
        else:
            damping *= 10.0
            if damping > 1e10:
                break
    norms = np.linalg.norm(A, axis=0)
    active = norms > IDENTIFIED_TOLERANCE * max(float(norms.max()), 1e-300)
    plain = (obs_var if obs_var is not None else (0.005 * y) ** 2) + (VARIANCE_FLOOR * y) ** 2
    return x, active, float(jnp.sum(weight * (y - pred) ** 2 / plain))


def calibrate(
    observations: RatioSweep,
    workloads,
    latency: LatencyModel | None = None,
    fit=None,
    *,
    key: jax.Array,
    num_steps: int = 2000,
    num_replicas: int = 8,
    refine_iterations: int = 30,
    holdout: float | None = None,
    folds: int | None = None,
    step_model=None,
    comm_scaling: str = "batch",
) -> Calibration:
    """Fit latency parameters so that the simulated throughput matches measured ratio sweeps.

    Arguments:
        observations: a [`RatioSweep`][afdjax.RatioSweep] with measured values (at least as
            many rows as identified parameters plus one).
        workloads: the [`Workload`][afdjax.Workload] of every row, or a mapping from each
            row label (``observations.workload``) to its Workload.
        latency: starting values, and the fixed values of what is not fitted; ``None``
            (default): a start derived from the data (module docstring, 1; ``comm_scaling``
            chooses its communication scaling).
        fit: parameter names: the six coefficients and the stage-time parameters
            ``attention_cv``, ``ffn_cv``, ``comm_cv``, ``routing_skew`` (needs ``latency.routing``),
            ``comm_per_peer``, ``comm_alpha_link``; default
            ``_fit._calibrate_params.default_fit`` (the six and ``attention_cv``, plus
            ``routing_skew`` with routing). Parameters the data do not move are reported in
            ``not_identified``.
        key: JAX PRNG key of every simulation (common random numbers).
        num_steps: measured steps of each simulation.
        num_replicas: replicas of each simulation.
        refine_iterations: at most this many Levenberg-Marquardt steps through the simulation
            (they stop once an accepted step moves no ``log`` parameter by more than ``1e-5``).
        holdout: fraction in (0, 1) of the rows to hold out for a held-out error.
        folds: ``K >= 2`` folds (at most the number of rows) instead of ``holdout``; not both.
        step_model: ``None`` (``Barrier()``) or a step model such as ``Pipeline(m)``.
        comm_scaling: the communication scaling of the start derived from the data
            (``latency=None`` only).

    Returns:
        a [`Calibration`][afdjax.Calibration] fitted on every row, with ``held_out`` from the
        extra fits. Times are in the observations' time unit."""
    if not isinstance(observations, RatioSweep):
        raise invalid("observations", observations, "a RatioSweep (afdjax.read_ratio_sweep)")
    y_np, se_np = observations.throughput()
    per_label = workload_per_label(observations, workloads)
    if latency is not None and not isinstance(latency, LatencyModel):
        raise invalid("latency", latency, "a LatencyModel or None")
    num_steps = check_int("num_steps", num_steps, 1)
    num_replicas = check_int("num_replicas", num_replicas, 2)
    refine_iterations = check_int("refine_iterations", refine_iterations, 0)
    if holdout is not None and folds is not None:
        raise ValueError(f"holdout={holdout!r} and folds={folds!r}: give at most one of them")
    if holdout is not None:
        holdout = check_number("holdout", holdout, minimum=0.0, maximum=1.0)
        if holdout >= 1.0:
            raise invalid("holdout", holdout, "a fraction in (0, 1)")
    if folds is not None:
        folds = check_int("folds", folds, 2, len(observations))
    starts = [latency] if latency is not None else start_candidates(observations, per_label, comm_scaling)
    names = params.check_names(params.default_fit(starts[0]) if fit is None else fit, starts[0])
    keep_noise = "attention_cv" in names  # data starts keep their polished cv (start_candidates)
    if latency is None and keep_noise:
        starts = start_candidates(observations, per_label, comm_scaling, keep_noise)
    starts = [params.with_starts(s, names) for s in starts]
    x0 = params.start_vector(starts[0], names)
    if not bool(jnp.all(jnp.isfinite(x0))):
        zero = [n for n, v in zip(names, np.asarray(x0)) if not np.isfinite(v)]
        raise ValueError(f"the starting value of {', '.join(zero)} is 0: fitted parameters must start above 0")
    n, p = len(observations), len(names)
    if n < 2:
        raise ValueError(f"observations has {n} row; calibrate needs at least 2")

    layout, group_workloads, column = build_layout(observations, per_label, num_steps, num_replicas)
    static = (names, layout, num_steps, num_replicas, step_model)
    dtype = x0.dtype
    problem = dict(
        mc=lambda x, base: simulated_curves(x, key, group_workloads, base, *static),
        jac=lambda x, base: curves_jacobian(x, key, group_workloads, base, *static),
        column=jnp.asarray(column),
        floor=params.lower_bounds(names),
    )
    y = jnp.asarray(y_np, dtype=dtype)
    obs_var = None if se_np is None else jnp.asarray(se_np, dtype=dtype) ** 2

    def fit_rows(weight):
        """From each start: the mean-field warm start, then the refinement; the best. A
        held-out fit derives its starts from its own rows only."""
        bases = starts
        if latency is None and not np.all(weight > 0):
            train = observations.subset(np.nonzero(weight > 0)[0])
            candidates = start_candidates(train, per_label, comm_scaling, keep_noise)
            bases = [params.with_starts(m, names) for m in candidates]
        best = None
        for base in bases:
            warm = mean_field_fit(observations, per_label, base, names, weight)
            xw = jnp.maximum(params.start_vector(warm, names), jnp.asarray(params.lower_bounds(names), dtype=dtype))
            x, active, cost = _fit_once(
                xw, base, y, obs_var, jnp.asarray(weight, dtype=dtype), problem, refine_iterations
            )
            if best is None or cost < best[-1]:
                best = (base, xw, x, active, cost)
        return best[:-1]

    # ---------------------------------------------------------------- the fit on every row
    start, x_warm, x, active = fit_rows(np.ones(n))
    if active.sum() + (obs_var is None) > n:  # a residual variance needs a spare row
        raise ValueError(
            f"observations has {n} rows for {int(active.sum())} identified parameters; give more rows or fit fewer"
        )
    per = problem["mc"](x, start)
    pred = jnp.mean(per, axis=0)[problem["column"]]
    se_mc = (jnp.std(per, axis=0, ddof=1) / math.sqrt(per.shape[0]))[problem["column"]]
    J = np.asarray(problem["jac"](x, start)[problem["column"]])[:, active]
    pa = int(active.sum())
    if obs_var is None:
        dof_obs = max(n - pa, 1)
        rel2 = float(jnp.sum((pred / y - 1.0) ** 2)) / dof_obs - float(jnp.mean((se_mc / y) ** 2))
        var_obs = max(rel2, 1e-12) * y**2
    else:
        dof_obs, var_obs = math.inf, obs_var
    cov_obs, cov_mc = _covariance(
        jnp.asarray(J), se_mc**2 + var_obs + (VARIANCE_FLOOR * y) ** 2, var_obs, per[:, problem["column"]]
    )
    cov = np.full((p, p), 0.0)
    cov[np.ix_(active, active)] = np.asarray(cov_obs + cov_mc)
    cov[~active, ~active] = np.inf
    estimate, interval, se_log, dof = {}, {}, {}, {}
    lat_fit = params.apply(start, names, x)
    k = 0
    for i, name in enumerate(names):
        estimate[name] = params.natural(lat_fit, name)
        if not active[i]:
            se_log[name], dof[name], interval[name] = math.inf, math.nan, (0.0, math.inf)
            continue
        a, c = float(cov_obs[k, k]), max(float(cov_mc[k, k]), 0.0)
        k += 1
        se_log[name] = math.sqrt(max(a + c, 0.0))
        dof[name] = _satterthwaite(a, dof_obs, c, per.shape[0] - 1)
        half = _t_quantile(0.975, dof[name]) * se_log[name]
        interval[name] = (_exp(float(x[i]) - half), _exp(float(x[i]) + half))
    lat_warm = params.apply(start, names, x_warm)
    pred_np = np.asarray(pred)
    r_np, b_np = observations.ratio, observations.batch_size

    # ---------------------------------------------------------------- held-out error
    held = None
    if holdout is not None or folds is not None:
        rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
        order = rng.permutation(n)
        if holdout is not None:
            n_test = min(max(1, round(holdout * n)), n - pa)
            if n_test < 1:
                raise ValueError(f"holdout={holdout!r} leaves too few rows to fit {pa} parameters on {n} rows")
            splits = [np.sort(order[:n_test])]
        else:
            splits = [np.sort(s) for s in np.array_split(order, folds)]
            if max(len(s) for s in splits) > n - pa:
                raise ValueError(f"folds={folds!r} leaves too few rows to fit {pa} parameters on {n} rows")
        rows, predicted = [], []
        for test in splits:
            weight = np.ones(n)
            weight[test] = 0.0
            base_k, _, x_k, _ = fit_rows(weight)
            pred_k = np.asarray(jnp.mean(problem["mc"](x_k, base_k), axis=0)[problem["column"]])[test]
            rows.append(test)
            predicted.append(pred_k)
        rows_all, pred_thr = np.concatenate(rows), np.concatenate(predicted)
        if observations.quantity == "step_time":
            pred_obs = step_time_to_throughput(pred_thr, r_np[rows_all], b_np[rows_all])
        else:
            pred_obs = pred_thr
        held = HeldOut(
            method="holdout" if holdout is not None else "folds",
            rows=rows_all,
            observed=observations.value[rows_all],
            predicted=pred_obs,
            folds=len(splits),
        )
    return Calibration(
        names=names,
        not_identified=tuple(n_ for n_, a in zip(names, active) if not a),
        estimate=estimate,
        interval=interval,
        stderr_log=se_log,
        dof=dof,
        start={n_: params.natural(start, n_) for n_ in names},
        warm_start={n_: params.natural(lat_warm, n_) for n_ in names},
        x=np.asarray(x),
        covariance=cov,
        latency=lat_fit,
        observations=observations,
        predicted_throughput=pred_np,
        predicted_step_time=step_time_to_throughput(pred_np, r_np, b_np),
        held_out=held,
        step_model=step_model,
    )


DEFAULT_FIT = params.DEFAULT_FIT
__all__ = ["COEFFICIENT_NAMES", "Calibration", "HeldOut", "calibrate", "start_from_data"]
