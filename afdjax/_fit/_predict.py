"""Predict measured configurations from a (calibrated) latency model, with the probability
that each ratio is the best one given the calibration's uncertainty.

Per row: the simulated throughput per instance and mean step time (``r B / ((r + 1) T)``),
with standard errors that combine the Monte Carlo error and, for a calibrated model, the
parameter uncertainty by the delta method: ``se^2 = se_MC^2 + g^T Sigma g``, ``g`` the
gradient of the row's throughput in the fitted ``log`` parameters (forward-mode autodiff
through the simulation) and ``Sigma`` their covariance from :func:`afdjax.calibrate`.

Best ratio: per (workload, batch size) group the ratios ``1 .. r_max`` are simulated in one
pass; the recommended ratio maximises the predicted throughput. The probability that ratio
``r`` is the best one is the fraction of ``posterior_draws`` parameter vectors drawn from the
Laplace posterior ``N(x_hat, Sigma)`` (the fitted ``log`` values and their sandwich
covariance) at which ``r`` has the highest simulated throughput, every draw simulated with
the same random numbers (common random numbers: the comparison sees the parameters, not
Monte Carlo noise). Parameters the calibration could not identify are held at their value.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._latency import COEFFICIENT_NAMES, LatencyModel
from .._validate import check_int, invalid
from . import _calibrate_params as params
from ._calibrate import Calibration, build_layout, curves_jacobian, simulated_curves, workload_per_label
from ._sweep_data import RatioSweep, step_time_to_throughput


@dataclasses.dataclass(frozen=True)
class CalibratedModel:
    """A latency model with the covariance of its calibrated parameters.

    Attributes:
        latency: the calibrated [`LatencyModel`][afdjax.LatencyModel].
        names: the calibrated parameters.
        covariance: ``(p, p)`` covariance of their ``log`` values (``inf`` on the diagonal of
            one not identified), or ``None`` for an uncalibrated model.
        step_model: the step model it was calibrated with.
    """

    latency: LatencyModel
    names: tuple[str, ...] = ()
    covariance: np.ndarray | None = None
    step_model: object = None

    @classmethod
    def of(cls, model) -> CalibratedModel:
        """From a [`CalibratedModel`][afdjax.CalibratedModel], a [`Calibration`][afdjax.Calibration] or a plain
        [`LatencyModel`][afdjax.LatencyModel] (no covariance)."""
        if isinstance(model, CalibratedModel):
            return model
        if isinstance(model, Calibration):
            return cls(model.latency, model.names, np.asarray(model.covariance), model.step_model)
        if isinstance(model, LatencyModel):
            return cls(model)
        raise invalid("model", model, "a LatencyModel, a Calibration or a CalibratedModel")


def calibration_from_mapping(table: dict, latency: LatencyModel, source: str) -> CalibratedModel:
    """The :class:`CalibratedModel` of a hardware TOML's ``[calibration]`` table (written by
    ``afdjax fit throughput --out``), centred on ``latency`` (the file's ``[latency]``)."""
    if not isinstance(table, dict):
        raise ValueError(f"{source}: [calibration] must be a table")
    names = table.get("parameters")
    cov = table.get("covariance_log")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
        raise ValueError(f"{source}: [calibration] parameters must be a non-empty list of names")
    try:
        names = params.check_names(names, latency)
        cov = np.asarray(cov, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: [calibration] {err}") from None
    p = len(names)
    if cov.shape != (p, p) or np.any(np.isnan(cov)):
        raise ValueError(f"{source}: [calibration] covariance_log must be a {p} x {p} array of numbers")
    layers = table.get("num_layers", 0)
    if isinstance(layers, int) and layers > 0 and latency.num_layers is None:
        latency = eqx.tree_at(lambda m: m.num_layers, latency, layers, is_leaf=lambda v: v is None)
    stage = [i for i, n in enumerate(names) if n not in COEFFICIENT_NAMES]
    if stage:  # stage-time values the [latency] table may not carry: from the estimates
        est = np.asarray(table.get("estimate_log", []), dtype=float)
        if est.shape != (p,):
            raise ValueError(f"{source}: [calibration] estimate_log must hold {p} numbers")
        stage_names = tuple(names[i] for i in stage)
        latency = params.apply(params.with_starts(latency, stage_names), stage_names, jnp.asarray(est[stage]))
    micro = table.get("micro_batches", 0)
    step_model = None
    if isinstance(micro, int) and micro > 0:
        from .._step import Pipeline

        step_model = Pipeline(micro)
    return CalibratedModel(latency, names, cov, step_model)


@dataclasses.dataclass
class GroupPrediction:
    """One (workload, batch size) group: the predicted curve over ratios ``1 .. r_max``."""

    workload: str
    batch_size: int
    ratios: np.ndarray
    throughput: np.ndarray
    throughput_stderr: np.ndarray
    recommended_ratio: int
    best_ratio_probability: np.ndarray | None
    """``(r_max,)`` probability that each ratio is the best (``None`` without a covariance)."""


@dataclasses.dataclass
class Prediction:
    """Result of [`predict`][afdjax.predict] (rows in the observations' order).

    Attributes:
        observations: the [`RatioSweep`][afdjax.RatioSweep] predicted.
        throughput: ``(rows,)`` predicted throughput per instance.
        throughput_stderr: ``(rows,)`` its standard error (calibration and Monte Carlo).
        step_time: ``(rows,)`` predicted mean step time.
        step_time_stderr: ``(rows,)`` its standard error.
        groups: per (workload, batch size) group: the recommended ratio and each ratio's probability of being the best.
        posterior_draws: Laplace posterior draws behind the probabilities.
        calibrated: whether the model carried a covariance.
    """

    observations: RatioSweep
    throughput: np.ndarray
    throughput_stderr: np.ndarray
    step_time: np.ndarray
    step_time_stderr: np.ndarray
    monte_carlo_stderr: np.ndarray
    """Monte Carlo part of ``throughput_stderr``."""
    groups: list
    posterior_draws: int
    calibrated: bool

    def to_dict(self) -> dict:
        from ._predict_text import prediction_to_dict

        return prediction_to_dict(self)

    def format_text(self) -> str:
        from ._predict_text import format_prediction

        return format_prediction(self)


def predict(
    model,
    observations: RatioSweep,
    workloads,
    *,
    key: jax.Array,
    num_steps: int = 2000,
    num_replicas: int = 8,
    posterior_draws: int = 200,
    max_ratio: int = 1,
    step_model=None,
) -> Prediction:
    """Predict every row of ``observations`` from ``model``.

    Arguments:
        model: a [`Calibration`][afdjax.Calibration], a [`CalibratedModel`][afdjax.CalibratedModel] (for example
            from a hardware TOML written by ``afdjax fit throughput --out``) or a plain
            [`LatencyModel`][afdjax.LatencyModel] (Monte Carlo standard errors only, no best-ratio
            probability).
        observations: a [`RatioSweep`][afdjax.RatioSweep] (measured values are not needed).
        workloads: a [`Workload`][afdjax.Workload] or a mapping from row label to Workload.
        key: JAX PRNG key shared by every simulation (common random numbers).
        num_steps: simulation size.
        num_replicas: see ``num_steps``.
        posterior_draws: parameter draws for the best-ratio probability (module
            docstring); ``0`` skips it.
        max_ratio: simulate every group's ratios up to at least this (the candidates for
            the recommended ratio are ``1 .. max(group's largest ratio, max_ratio)``).
        step_model: ``None`` uses the model's own (a calibration's), else ``Barrier()``.

    Returns:
        a [`Prediction`][afdjax.Prediction]; times in the latency model's time unit."""
    cm = CalibratedModel.of(model)
    if not isinstance(observations, RatioSweep):
        raise invalid("observations", observations, "a RatioSweep (afdjax.read_ratio_sweep)")
    per_label = workload_per_label(observations, workloads)
    num_steps = check_int("num_steps", num_steps, 1)
    num_replicas = check_int("num_replicas", num_replicas, 2)
    posterior_draws = check_int("posterior_draws", posterior_draws, 0)
    max_ratio = check_int("max_ratio", max_ratio, 1, 4096)
    step_model = cm.step_model if step_model is None else step_model
    names = cm.names or ("alpha_a",)  # without a calibration: any name, its value unchanged
    latency = cm.latency
    x = params.start_vector(latency, names)  # log 0 = -inf maps back to 0 exactly
    layout, group_workloads, column = build_layout(observations, per_label, num_steps, num_replicas, max_ratio)
    static = (names, layout, num_steps, num_replicas, step_model)
    per = simulated_curves(x, key, group_workloads, latency, *static)
    mean = np.asarray(jnp.mean(per, axis=0))
    se_mc = np.asarray(jnp.std(per, axis=0, ddof=1)) / math.sqrt(per.shape[0])
    var_param = np.zeros_like(mean)
    cov = cm.covariance
    use_cov = cov is not None and bool(cm.names)
    active = np.zeros(0, dtype=bool)
    if use_cov:
        active = np.isfinite(np.diag(cov))
        J = np.asarray(curves_jacobian(x, key, group_workloads, latency, *static))[:, active]
        sub = cov[np.ix_(active, active)]
        var_param = np.einsum("ij,jk,ik->i", J, sub, J)
    se_total = np.sqrt(se_mc**2 + np.maximum(var_param, 0.0))
    draws = None
    if use_cov and posterior_draws > 0 and active.any():
        rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
        sub = cov[np.ix_(active, active)]
        z = rng.multivariate_normal(np.zeros(int(active.sum())), sub, size=posterior_draws, method="eigh")
        xs = np.tile(np.asarray(x), (posterior_draws, 1))
        xs[:, active] += z
        # one draw at a time through the compiled simulation (a vmapped or mapped one would
        # compile a second program and run no faster on one device)
        draws = np.stack(
            [
                np.asarray(
                    jnp.mean(
                        simulated_curves(jnp.asarray(v, dtype=x.dtype), key, group_workloads, latency, *static), axis=0
                    )
                )
                for v in xs
            ]
        )
    groups, offset = [], 0
    for (label, b, _), (_, rmax, _, _) in zip(observations.groups(), layout):
        cols = slice(offset, offset + rmax)
        curve = mean[cols]
        prob = None
        if draws is not None:
            best = np.argmax(draws[:, cols], axis=1)
            prob = np.bincount(best, minlength=rmax) / len(best)
        groups.append(
            GroupPrediction(
                workload=label,
                batch_size=int(b),
                ratios=np.arange(1, rmax + 1),
                throughput=curve,
                throughput_stderr=se_total[cols],
                recommended_ratio=int(np.argmax(curve)) + 1,
                best_ratio_probability=prob,
            )
        )
        offset += rmax
    thr = mean[column]
    thr_se = se_total[column]
    tau = step_time_to_throughput(thr, observations.ratio, observations.batch_size)
    return Prediction(
        observations=observations,
        throughput=thr,
        throughput_stderr=thr_se,
        step_time=tau,
        step_time_stderr=tau * thr_se / thr,
        monte_carlo_stderr=se_mc[column],
        groups=groups,
        posterior_draws=0 if draws is None else posterior_draws,
        calibrated=use_cov,
    )
