"""Fit the six stage-latency coefficients of :class:`~afdjax.LatencyModel` to measurements.

The model (arXiv 2601.21351, section 1) is three independent straight lines:

* attention: ``t_A = alpha_a * T + beta_a``, ``T`` = KV tokens held by one Attention instance;
* FFN:       ``t_F = alpha_f * (r * B) + beta_f``;
* comm:      ``t_C = alpha_c * B + beta_c`` (``comm_scaling="batch"``) or
  ``alpha_c * (r * B) + beta_c`` (``comm_scaling="ratio_batch"``).

Each stage is fitted by its own regression on the rows that measured it.

**Observations** (CSV with a header line, or JSON Lines with one object per line), one row
per measured decode step (or per averaged configuration):

- ``attention_tokens``: ``T``, KV tokens held by one Attention instance (needed in rows that
  give ``attention_time``).
- ``batch_size``: ``B``, decode slots per Attention instance, ``> 0`` (needed in rows that
  give ``ffn_time`` or ``comm_time``).
- ``ratio``: ``r``, Attention instances per FFN instance, ``> 0``, optional. Without the
  column ``r = 1`` in every row; with it, rows that give ``ffn_time`` or ``comm_time`` must
  fill it.
- ``attention_time``, ``ffn_time``, ``comm_time``: measured stage times (at least one of
  the columns), in one time unit of your choice; the coefficients come out in that unit
  (``alpha_*`` per token, ``beta_*`` per step). An empty cell (JSON: ``null`` or an absent
  key) means "not measured in this row"; each row may give any subset.

Every given value must be a finite number ``>= 0``. Other columns are ignored; lines of a
CSV file that start with ``#`` are comments. Errors name the file, the row (1-based, data
rows only: the header and comment lines are not counted) and the column. A fitted stage
needs at least 2 distinct ``x`` values.

**Loss.** ``loss="huber"`` (default) minimises ``sum_i rho_delta(y_i - a x_i - b)`` with
Huber's ``rho`` (quadratic within ``delta``, linear beyond), so a few gross outliers (a
straggling step, a GC pause) cannot drag the line. The scale is set from the data:
``delta = 1.345 * 1.4826 * MAD``, where MAD is the median absolute deviation (about their
median) of the ordinary-least-squares residuals: ``1.4826 * MAD`` estimates the noise
standard deviation robustly and 1.345 gives 95 % efficiency under Gaussian noise. The
minimisation runs ``optax.lbfgs`` under ``jax.jit``, started from the least-squares line,
in standardised coordinates (centred and scaled ``x`` and ``y``) so that the problem is well
conditioned whatever the units. ``loss="l2"`` is plain least squares in closed form.

**Non-negativity.** ``LatencyModel`` requires every coefficient ``>= 0``. The fit is the
exact minimiser of the (convex) loss over ``a >= 0, b >= 0``: if the unconstrained minimiser
is feasible it is the answer, otherwise the best feasible minimiser on the faces ``a = 0``
(fit ``b`` alone), ``b = 0`` (fit ``a`` alone) and the vertex ``a = b = 0`` is (for a
convex loss the constrained minimiser is one of these). This is *not* clipping: the other
coefficient is re-fitted. When it happens for the point estimate a
:class:`LatencyFitWarning` names the coefficient and its unconstrained value, and the note is
kept in the result (``notes``, the text report and the TOML header).

**Uncertainty** (95 % intervals, two methods, both reported):

* *bootstrap* (default for ``intervals``): rows of a stage are resampled with replacement
  ``n_bootstrap`` times (the whole estimator is re-run, including ``delta`` and the
  non-negativity constraint, so the intervals are never below 0); expanded percentile
  intervals (Hesterberg 2015): the ``q`` and ``1 - q`` percentiles of the replicates with
  ``q = 1 - Phi(sqrt(n / (n - 2)) t_{0.975, n-2})`` rather than 0.025, which corrects the
  known narrowness of the plain percentile interval in small samples (``q`` = 2.1 % at 60
  rows, 2.4 % at 1000). Replicate ``i`` of stage ``s`` draws from
  ``fold_in(fold_in(key(seed), s), i)``, so adding replicates or stages does not reshuffle
  the others. Stages are resampled independently (the stages are fitted independently, and
  the intervals are per coefficient).
* *sandwich*: the Laplace approximation (inverse Hessian ``A = sum_i psi'(r_i) g_i g_i^T``
  of the loss at the optimum, ``g_i = (1, x_i)``) corrected by the outer product of the
  per-row scores: ``cov = A^-1 [sum_i (psi(r_i) / (1 - h_i))^2 g_i g_i^T] A^-1`` with the
  leverages ``h_i = psi'(r_i) g_i^T A^-1 g_i`` (Huber's sandwich with the HC3 small-sample
  correction; for ``l2``, ``psi(r) = r``, it is the HC3 heteroskedasticity-consistent
  estimator). Interval ``estimate -+ t_{0.975, n-2} * se``, lower end clipped at 0. When a
  non-negativity constraint is active the sandwich interval is only indicative; prefer the
  bootstrap.

Observed coverage (tests/test_fit_latency.py design: 60 rows, ``x`` spread over its range,
Gaussian noise of 2 % of the mean time, Huber, 300 seeds): bootstrap 0.94-0.96, sandwich
0.93-0.96 per coefficient; with 5 % one-sided straggler outliers 0.93-0.97 (Huber's
estimate is then biased upward by 0.1-0.4 of its standard deviation). The sandwich
under-covers the slopes when a few high-leverage rows carry most of the information and
the noise grows with the time (B and r drawn from powers of two, noise sd = 1 + 2 % of the
time, 60 rows: 0.88-0.90, while the bootstrap held 0.93-0.97); spread the ``x`` values of
a calibration sweep evenly, and prefer the bootstrap.

**Cost.** The bootstrap re-runs the whole fit per replicate, ``jax.vmap``-ed over
replicates in chunks of about ``2**19`` (replicate, row) elements under ``lax.map``; the
face problems of the non-negativity constraint run only for chunks that need them. On 2
CPU cores, 200 Huber replicates take ~15 ms per stage at 60 rows and ~3 s at 20,000 rows,
after a one-off compilation of a few seconds per (loss, padded row count) pair (rows are
padded with zero weight to a power of two).

Fewer than 3 rows in a stage leave its intervals undefined (NaN; ``None`` in JSON).

**Fit quality** per stage: ``R^2``, residual standard deviation
``sqrt(sum r_i^2 / (n - 2))``, rows used, the largest relative residual
``max |y_i - fit_i| / y_i`` (over rows with ``y_i > 0``), and for Huber ``delta`` and the
number of rows beyond it (down-weighted).

A stage without any observation keeps the coefficients of ``defaults`` (e.g.
``LatencyModel.from_preset("paper-910c")``); the result says so. Without ``defaults`` that
is an error.

The bundled ``afdjax/data/example_step_latency.csv`` is synthetic: see
:func:`_example_observations_csv` for the process that wrote it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._json import jsonable
from .._latency import COEFFICIENT_NAMES, LatencyModel
from ._latency_lines import (
    _CHUNK_ELEMENTS,
    HUBER_EFFICIENCY_CONSTANT,
    MAD_TO_SIGMA,
    _fit_replicates,
    _padded_size,
    _weighted_median,
)
from ._latency_observations import (
    LOSSES,
    OBSERVATION_COLUMNS,
    STAGE_COEFFICIENTS,
    STAGES,
    TIME_COLUMNS,
    LatencyObservations,
    _check_comm_scaling,
    _example_observations_csv,
    read_latency_observations,
)

__all__ = [
    "CONFIDENCE",
    "HUBER_EFFICIENCY_CONSTANT",
    "LOSSES",
    "MAD_TO_SIGMA",
    "OBSERVATION_COLUMNS",
    "STAGES",
    "STAGE_COEFFICIENTS",
    "TIME_COLUMNS",
    "LatencyFit",
    "LatencyFitWarning",
    "LatencyObservations",
    "StageFit",
    "_example_observations_csv",
    "_fit_replicates",
    "_padded_size",
    "_t_quantile",
    "_weighted_median",
    "fit_latency",
    "read_latency_observations",
]

CONFIDENCE = 0.95


class LatencyFitWarning(UserWarning):
    """A fitted coefficient hit the ``>= 0`` bound (its unconstrained estimate was negative)."""


# ==================================================================== statistics (host)
def _t_quantile(p: float, dof: int) -> float:
    """Student-t quantile: exact for 1 and 2 degrees of freedom, otherwise the Cornish-Fisher
    expansion (Abramowitz & Stegun 26.7.5). At p = 0.975 it is low by 0.12 % at 3 degrees of
    freedom, 0.03 % at 4 and less than 0.011 % from 5 on (3 degrees of freedom = 5 rows)."""
    if dof < 1:
        return math.nan
    if dof == 1:
        return math.tan(math.pi * (p - 0.5))
    if dof == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    from statistics import NormalDist

    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / dof + g2 / dof**2 + g3 / dof**3 + g4 / dof**4


def _sandwich_se(x: np.ndarray, y: np.ndarray, a: float, b: float, delta: float | None) -> np.ndarray:
    """Sandwich standard errors of ``(a, b)`` (float64, standardised coordinates inside)."""
    n = x.size
    if n < 3:
        return np.full(2, np.nan)
    mx, sx = x.mean(), x.std()
    z = (x - mx) / sx
    design = np.stack([np.ones(n), z], axis=1)  # coefficients (c0, c1): a = c1 / sx, b = c0 - c1 mx / sx
    r = y - a * x - b
    if delta is None:
        psi, dpsi = r, np.ones(n)
    else:
        psi, dpsi = np.clip(r, -delta, delta), (np.abs(r) <= delta).astype(float)
    hessian = design.T @ (dpsi[:, None] * design)
    try:
        inv = np.linalg.inv(hessian)
    except np.linalg.LinAlgError:
        return np.full(2, np.nan)
    leverage = np.minimum(dpsi * np.einsum("ij,jk,ik->i", design, inv, design), 1 - 1e-12)
    scores = design.T @ ((psi / (1 - leverage))[:, None] ** 2 * design)
    cov_c = inv @ scores @ inv
    jac = np.array([[0.0, 1 / sx], [1.0, -mx / sx]])
    cov = jac @ cov_c @ jac.T
    return np.sqrt(np.clip(np.diag(cov), 0, None))


@dataclasses.dataclass(frozen=True)
class StageFit:
    """The fit of one stage (``attention``, ``ffn`` or ``comm``).

    ``source`` is ``"fit"`` or ``"defaults"`` (no observations: coefficients kept from the
    ``defaults`` model, every statistic NaN). ``estimate``, ``unconstrained``,
    ``bootstrap_interval``, ``sandwich_interval`` and ``sandwich_se`` are ``(alpha, beta)``
    pairs in the time unit of the observations; ``bootstrap_replicates`` has shape
    ``(n_valid, 2)``.
    """

    stage: str
    coefficient_names: tuple[str, str]
    source: str
    estimate: tuple[float, float]
    x: np.ndarray
    y: np.ndarray
    unconstrained: tuple[float, float] = (math.nan, math.nan)
    at_bound: tuple[str, ...] = ()
    huber_delta: float | None = None
    bootstrap_replicates: np.ndarray | None = None
    bootstrap_interval: tuple[tuple[float, float], tuple[float, float]] = ((math.nan,) * 2,) * 2
    bootstrap_se: tuple[float, float] = (math.nan, math.nan)
    sandwich_se: tuple[float, float] = (math.nan, math.nan)
    sandwich_interval: tuple[tuple[float, float], tuple[float, float]] = ((math.nan,) * 2,) * 2

    @property
    def num_rows(self) -> int:
        return int(self.x.size)

    @property
    def fitted(self) -> np.ndarray:
        return self.estimate[0] * self.x + self.estimate[1]

    @property
    def residuals(self) -> np.ndarray:
        return self.y - self.fitted

    @property
    def r_squared(self) -> float:
        total = float(np.sum((self.y - self.y.mean()) ** 2)) if self.y.size else 0.0
        return 1.0 - float(np.sum(self.residuals**2)) / total if total > 0 else math.nan

    @property
    def residual_std(self) -> float:
        n = self.num_rows
        return math.sqrt(float(np.sum(self.residuals**2)) / (n - 2)) if n > 2 else math.nan

    @property
    def max_relative_residual(self) -> float:
        positive = self.y > 0
        if not positive.any():
            return math.nan
        return float(np.max(np.abs(self.residuals[positive]) / self.y[positive]))

    @property
    def num_downweighted(self) -> int | None:
        """Rows with ``|residual| > delta`` (Huber only)."""
        if self.huber_delta is None or self.source != "fit":
            return None
        return int(np.sum(np.abs(self.residuals) > self.huber_delta))

    def quality(self) -> dict:
        return dict(
            rows=self.num_rows,
            r_squared=self.r_squared,
            residual_std=self.residual_std,
            max_relative_residual=self.max_relative_residual,
            huber_delta=self.huber_delta,
            rows_downweighted=self.num_downweighted,
        )


def _expanded_tail(num_rows: int) -> float:
    """Tail probability for the expanded percentile interval (Hesterberg 2015, "What teachers
    should know about the bootstrap", section 4.3, with ``n - 2`` degrees of freedom for a
    line): ``1 - Phi(sqrt(n / (n - 2)) * t_{0.975, n-2})``, instead of 0.025. The plain
    percentile interval is too narrow by about ``sqrt((n - 2) / n)`` and uses a normal
    rather than a t quantile; at 60 rows this gives the 2.1 % and 97.9 % percentiles."""
    from statistics import NormalDist

    z = math.sqrt(num_rows / (num_rows - 2)) * _t_quantile((1 + CONFIDENCE) / 2, num_rows - 2)
    return 1 - NormalDist().cdf(z)


def _percentile_interval(samples: np.ndarray, num_rows: int) -> tuple[float, float]:
    if samples.size == 0 or num_rows < 3:
        return (math.nan, math.nan)
    tail = _expanded_tail(num_rows)
    lo, hi = np.percentile(samples, [100 * tail, 100 * (1 - tail)])
    return (float(lo), float(hi))


def _fit_stage(stage, x, y, *, loss, n_bootstrap, key) -> tuple[StageFit, list[str]]:
    notes: list[str] = []
    names = STAGE_COEFFICIENTS[stage]
    n = x.size
    dtype = jnp.zeros(()).dtype  # the default float dtype: never flip x64 here
    size = _padded_size(n)
    xp = np.zeros(size)
    yp = np.zeros(size)
    xp[:n], yp[:n] = x, y
    xj, yj = (jnp.asarray(v, dtype=dtype) for v in (xp, yp))
    huber = loss == "huber"
    n_boot = n_bootstrap if n >= 3 else 0
    chunk = max(1, min(n_boot + 1, _CHUNK_ELEMENTS // size))
    fits = jax.device_get(_fit_replicates(xj, yj, n, key, huber=huber, n_bootstrap=n_boot, chunk=chunk))
    point = {k: v[0] for k, v in fits.items()}
    a, b = (float(v) for v in point["estimate"])
    unconstrained = tuple(float(v) for v in point["unconstrained"])
    delta = float(point["delta"]) if huber else None
    at_bound: tuple[str, ...] = ()
    if min(unconstrained) < 0:
        at_bound = tuple(name for name, value in zip(names, (a, b)) if value == 0.0)
        negative = " and ".join(f"{name} = {value:.6g}" for name, value in zip(names, unconstrained) if value < 0)
        message = (
            f"{stage}: the unconstrained {loss} fit has {negative} < 0; refitted under {names[0]}, {names[1]} >= 0 "
            f"(latency coefficients must be >= 0): {names[0]} = {a:.6g}, {names[1]} = {b:.6g}, "
            f"{' and '.join(at_bound)} at the bound"
        )
        notes.append(message)
        warnings.warn(message, LatencyFitWarning, stacklevel=3)

    se = tuple(float(s) for s in _sandwich_se(x, y, a, b, delta))
    tq = _t_quantile((1 + CONFIDENCE) / 2, n - 2)
    sandwich_interval = tuple(
        (max(est - tq * s, 0.0), est + tq * s) if math.isfinite(s) else (math.nan, math.nan)
        for est, s in zip((a, b), se)
    )
    replicates = None
    boot_interval = ((math.nan, math.nan), (math.nan, math.nan))
    boot_se = (math.nan, math.nan)
    if n_boot:
        valid = np.asarray(fits["valid"][1:], dtype=bool)
        replicates = np.asarray(fits["estimate"][1:], dtype=np.float64)[valid]
        if valid.sum() < n_boot:
            notes.append(
                f"{stage}: {n_boot - int(valid.sum())} of {n_boot} bootstrap replicates drew a single "
                "distinct x value and were dropped"
            )
        boot_interval = tuple(_percentile_interval(replicates[:, k], n) for k in range(2))
        boot_se = tuple(float(np.std(replicates[:, k], ddof=1)) if len(replicates) > 1 else math.nan for k in range(2))
    if n < 3:
        notes.append(f"{stage}: only {n} rows; intervals need at least 3")
    fit = StageFit(
        stage=stage,
        coefficient_names=names,
        source="fit",
        estimate=(a, b),
        x=np.asarray(x, dtype=np.float64),
        y=np.asarray(y, dtype=np.float64),
        unconstrained=unconstrained,
        at_bound=at_bound,
        huber_delta=delta,
        bootstrap_replicates=replicates,
        bootstrap_interval=boot_interval,
        bootstrap_se=boot_se,
        sandwich_se=se,
        sandwich_interval=sandwich_interval,
    )
    return fit, notes


# ====================================================================== result object
@dataclasses.dataclass(frozen=True)
class LatencyFit:
    """Result of [`fit_latency`][afdjax.fit_latency].

    Attributes:
        latency: the [`LatencyModel`][afdjax.LatencyModel] of the point estimates.
        stages: ``{stage: StageFit}`` with the data, residuals and fit quality.
        loss: ``"huber"`` or ``"l2"``.
        comm_scaling: the communication scaling fitted.
        n_bootstrap: bootstrap replicates (0: sandwich intervals only).
        seed: the bootstrap seed.
        source: the observations' file or label.
        sha256: the file's hash (``None`` for arrays).
        num_rows: observations read.
        notes: what a reader must know (defaults kept, coefficients at the bound).
        defaults_name: the hardware spec of the stages kept from defaults (``None``: none).

    Properties:

    - ``intervals``: ``{coefficient: (lo, hi)}``, 95 %, by ``interval_method``
      (``"bootstrap"``, or ``"sandwich"`` when ``n_bootstrap == 0``); NaN where undefined
      (a stage kept from the defaults, or fewer than 3 rows).
    - ``bootstrap_intervals``, ``sandwich_intervals``, ``standard_errors`` (sandwich) and
      ``bootstrap_standard_errors``: the same per coefficient for each method.
    - ``stages``: ``{stage: StageFit}`` with the data, residuals and fit quality.
    - ``notes``: what a reader must know (defaults kept, coefficients at the bound).
    """

    latency: LatencyModel
    stages: dict
    loss: str
    comm_scaling: str
    n_bootstrap: int
    seed: int
    source: str
    sha256: str | None
    num_rows: int
    notes: tuple[str, ...]
    defaults_name: str | None = None

    # ------------------------------------------------------------------ per coefficient
    def _per_coefficient(self, attribute: str) -> dict:
        out = {}
        for stage in STAGES:
            fit = self.stages[stage]
            for k, name in enumerate(fit.coefficient_names):
                out[name] = getattr(fit, attribute)[k]
        return out

    @property
    def interval_method(self) -> str:
        return "bootstrap" if self.n_bootstrap else "sandwich"

    @property
    def bootstrap_intervals(self) -> dict[str, tuple[float, float]]:
        return self._per_coefficient("bootstrap_interval")

    @property
    def sandwich_intervals(self) -> dict[str, tuple[float, float]]:
        return self._per_coefficient("sandwich_interval")

    @property
    def standard_errors(self) -> dict[str, float]:
        """Sandwich standard errors."""
        return self._per_coefficient("sandwich_se")

    @property
    def bootstrap_standard_errors(self) -> dict[str, float]:
        return self._per_coefficient("bootstrap_se")

    @property
    def intervals(self) -> dict[str, tuple[float, float]]:
        return self.bootstrap_intervals if self.n_bootstrap else self.sandwich_intervals

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict:
        """A JSON-serialisable dict (non-finite numbers become None)."""
        stages = {}
        for stage in STAGES:
            fit = self.stages[stage]
            entry = dict(source=fit.source, **fit.quality())
            if fit.source == "fit":
                entry["unconstrained_estimate"] = dict(zip(fit.coefficient_names, fit.unconstrained))
                entry["at_bound"] = list(fit.at_bound)
                entry["bootstrap_replicates_used"] = (
                    0 if fit.bootstrap_replicates is None else len(fit.bootstrap_replicates)
                )
            stages[stage] = entry
        interval_dict = lambda d: {k: (None if not all(map(math.isfinite, v)) else list(v)) for k, v in d.items()}
        return jsonable(
            dict(
                latency=dict(**self.latency.coefficients(), comm_scaling=self.comm_scaling),
                intervals=interval_dict(self.intervals),
                interval_method=self.interval_method,
                confidence=CONFIDENCE,
                bootstrap_intervals=interval_dict(self.bootstrap_intervals) if self.n_bootstrap else None,
                sandwich_intervals=interval_dict(self.sandwich_intervals),
                standard_errors=self.standard_errors,
                bootstrap_standard_errors=self.bootstrap_standard_errors if self.n_bootstrap else None,
                stages=stages,
                loss=self.loss,
                comm_scaling=self.comm_scaling,
                n_bootstrap=self.n_bootstrap,
                seed=self.seed,
                source=self.source,
                sha256=self.sha256,
                rows=self.num_rows,
                defaults=self.defaults_name,
                notes=list(self.notes),
            )
        )

    def format_text(self) -> str:
        """A readable report: coefficients with both intervals, then the fit quality."""
        from ._latency_text import format_latency_fit

        return format_latency_fit(self)

    def to_toml(self) -> str:
        """Hardware TOML (read back by ``afdjax.parse_hardware_spec`` / ``--hardware FILE``),
        with a header comment recording the provenance and the fit quality."""
        from ._latency_text import latency_fit_toml

        return latency_fit_toml(self)

    def plot_residuals(self, path, time_unit: str = "time unit") -> Path:
        """Write a PNG: for each stage, measured times and the fitted line against ``x``
        (top) and the residuals (bottom; dashed: ``-+ delta`` for Huber)."""
        from ._latency_plots import plot_latency_residuals

        return plot_latency_residuals(self, path, time_unit)


# ====================================================================== entry point
def fit_latency(
    observations,
    loss: str = "huber",
    comm_scaling: str = "batch",
    n_bootstrap: int = 200,
    seed: int = 0,
    defaults: LatencyModel | None = None,
) -> LatencyFit:
    """Fit the [`LatencyModel`][afdjax.LatencyModel] coefficients to step-latency observations.

    Arguments:
        observations: a CSV / JSON Lines path (see [`read_latency_observations`][afdjax.read_latency_observations]), a
            ``LatencyObservations``, or a mapping of column name to values.
        loss: ``"huber"`` (robust, default) or ``"l2"`` (least squares).
        comm_scaling: ``"batch"`` (``t_C = alpha_c B + beta_c``) or ``"ratio_batch"``
            (``alpha_c r B + beta_c``).
        n_bootstrap: bootstrap replicates for the intervals (0: sandwich intervals only,
            otherwise at least 20).
        seed: seed of the bootstrap resampling (``jax.random.key(seed)``).
        defaults: a ``LatencyModel`` (e.g. a preset) whose coefficients are kept for any
            stage without observations; its ``comm_scaling`` must match when the comm stage is
            kept. A preset name (``"paper-910c"``) is accepted too.

    Returns:
        a [`LatencyFit`][afdjax.LatencyFit]. The method is described in the module docstring.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss={loss!r} is not allowed; expected one of {', '.join(LOSSES)}")
    _check_comm_scaling(comm_scaling)
    if (
        isinstance(n_bootstrap, bool)
        or not isinstance(n_bootstrap, (int, np.integer))
        or not (n_bootstrap == 0 or n_bootstrap >= 20)
    ):
        raise ValueError(f"n_bootstrap={n_bootstrap!r} is invalid: expected 0 (no bootstrap) or an integer >= 20")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed={seed!r} is invalid: expected an integer")
    defaults_name = None
    if isinstance(defaults, str):
        defaults_name = defaults
        defaults = LatencyModel.from_preset(defaults)
    elif defaults is not None and not isinstance(defaults, LatencyModel):
        raise ValueError(f"defaults={defaults!r} is invalid: expected a LatencyModel, a preset name or None")

    if isinstance(observations, LatencyObservations):
        obs = observations
    elif isinstance(observations, Mapping):
        obs = LatencyObservations.from_columns(observations)
    elif isinstance(observations, (str, os.PathLike)):
        obs = read_latency_observations(observations)
    else:
        raise ValueError(
            f"observations={observations!r} is invalid: "
            "expected a file path, a mapping of columns or LatencyObservations"
        )
    obs.check_identifiable(comm_scaling)

    key = jax.random.key(int(seed))
    stages: dict[str, StageFit] = {}
    notes: list[str] = []
    coefficients: dict[str, float] = {}
    for index, stage in enumerate(STAGES):
        x, y = obs.stage_data(stage, comm_scaling)
        names = STAGE_COEFFICIENTS[stage]
        if y.size == 0:
            if defaults is None:
                raise ValueError(
                    f"{obs.source}: no {stage} observations (column {TIME_COLUMNS[stage]} is absent or empty); "
                    "give defaults (e.g. a preset such as paper-910c) to keep its coefficients for this stage"
                )
            if stage == "comm" and defaults.comm_scaling != comm_scaling:
                raise ValueError(
                    f"defaults have comm_scaling={defaults.comm_scaling!r} but the fit uses comm_scaling="
                    f"{comm_scaling!r}: their alpha_c means different things; pick matching ones"
                )
            kept = defaults.coefficients()
            estimate = (kept[names[0]], kept[names[1]])
            stages[stage] = StageFit(stage, names, "defaults", estimate, np.zeros(0), np.zeros(0))
            notes.append(
                f"{stage}: no observations; {names[0]} = {estimate[0]:.6g}, {names[1]} = {estimate[1]:.6g} kept "
                f"from the defaults{f' ({defaults_name})' if defaults_name else ''}"
            )
        else:
            fit, stage_notes = _fit_stage(
                stage,
                x,
                y,
                loss=loss,
                n_bootstrap=int(n_bootstrap),
                key=jax.random.fold_in(key, index),
            )
            stages[stage] = fit
            notes += stage_notes
        coefficients.update(zip(names, stages[stage].estimate))
    latency = LatencyModel(**{k: coefficients[k] for k in COEFFICIENT_NAMES}, comm_scaling=comm_scaling)
    return LatencyFit(
        latency=latency,
        stages=stages,
        loss=loss,
        comm_scaling=comm_scaling,
        n_bootstrap=int(n_bootstrap),
        seed=int(seed),
        source=obs.source,
        sha256=obs.sha256,
        num_rows=obs.num_rows,
        notes=tuple(notes),
        defaults_name=defaults_name,
    )
