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
import functools
import hashlib
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._json import jsonable
from .._data import read_records, resolve_file
from .._hardware import latency_to_toml
from .._latency import COEFFICIENT_NAMES, COMM_SCALINGS, PRESETS, LatencyModel
from ._lbfgs import lbfgs_minimise

STAGES = ("attention", "ffn", "comm")
LOSSES = ("huber", "l2")
TIME_COLUMNS = {"attention": "attention_time", "ffn": "ffn_time", "comm": "comm_time"}
STAGE_COEFFICIENTS = {"attention": ("alpha_a", "beta_a"), "ffn": ("alpha_f", "beta_f"), "comm": ("alpha_c", "beta_c")}
OBSERVATION_COLUMNS = ("attention_tokens", "batch_size", "ratio", "attention_time", "ffn_time", "comm_time")

HUBER_EFFICIENCY_CONSTANT = 1.345
"""Huber's tuning constant (95 % efficiency under Gaussian noise), times the robust sigma."""
MAD_TO_SIGMA = 1.482602218505602
"""``1 / Phi^-1(3/4)``: MAD times this estimates the standard deviation of Gaussian noise."""
CONFIDENCE = 0.95

_X_LABELS = {
    "attention": "KV tokens per Attention instance T",
    "ffn": "aggregated FFN batch r*B (tokens)",
    "comm": {"batch": "batch size B (tokens)", "ratio_batch": "r*B (tokens)"},
}


class LatencyFitWarning(UserWarning):
    """A fitted coefficient hit the ``>= 0`` bound (its unconstrained estimate was negative)."""


# ================================================================== observations (host side)
@dataclasses.dataclass(frozen=True)
class LatencyObservations:
    """Validated step-latency measurements (float64 NumPy arrays of shape ``(n_rows,)``).

    Times are NaN where a row did not measure that stage. ``attention_tokens`` and
    ``batch_size`` are NaN only in rows that do not need them; ``ratio`` is 1 where the
    column was absent. Build with :func:`read_latency_observations` or
    :meth:`from_columns`.
    """

    attention_tokens: np.ndarray
    batch_size: np.ndarray
    ratio: np.ndarray
    attention_time: np.ndarray
    ffn_time: np.ndarray
    comm_time: np.ndarray
    source: str = "<arrays>"
    sha256: str | None = None

    @property
    def num_rows(self) -> int:
        return int(self.attention_tokens.shape[0])

    @classmethod
    def from_columns(cls, columns: Mapping, source: str = "<arrays>") -> LatencyObservations:
        """From a mapping of column name to a sequence of values (``None``, NaN or ``""``
        marks an empty cell), validated like a file; rows are numbered from 1."""
        if not isinstance(columns, Mapping):
            raise ValueError(
                f"observations must be a path, a mapping of columns or LatencyObservations, got {columns!r}"
            )
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{source}: columns have different lengths: {lengths}")
        n = next(iter(lengths.values()), 0)
        rows = [{name: _cell(columns[name][i]) for name in columns} for i in range(n)]
        return _observations_from_rows(list(columns), rows, source)

    def stage_data(self, stage: str, comm_scaling: str = "batch") -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the rows that measured ``stage``: ``x`` is ``T`` (attention), ``r*B``
        (FFN), ``B`` or ``r*B`` (comm, by ``comm_scaling``); ``y`` the measured time."""
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r} is not allowed; expected one of {', '.join(STAGES)}")
        _check_comm_scaling(comm_scaling)
        y = getattr(self, TIME_COLUMNS[stage])
        rows = ~np.isnan(y)
        if stage == "attention":
            x = self.attention_tokens
        elif stage == "ffn" or comm_scaling == "ratio_batch":
            x = self.ratio * self.batch_size
        else:
            x = self.batch_size
        return x[rows], y[rows]

    def check_identifiable(self, comm_scaling: str | None = None) -> None:
        """``ValueError`` unless every measured stage has at least 2 distinct ``x`` values
        (the comm stage is checked only when ``comm_scaling`` is given)."""
        for stage in STAGES:
            if stage == "comm" and comm_scaling is None:
                continue
            x, y = self.stage_data(stage, comm_scaling or "batch")
            distinct = np.unique(x).size
            if y.size and distinct < 2:
                what = {
                    "attention": "attention_tokens",
                    "ffn": "ratio * batch_size",
                    "comm": "batch_size" if comm_scaling == "batch" else "ratio * batch_size",
                }[stage]
                raise ValueError(
                    f"{self.source}: column {TIME_COLUMNS[stage]}: {y.size} row(s) but only {distinct} distinct "
                    f"value(s) of {what}; a straight line needs at least 2 distinct values"
                )


def _cell(value):
    if value is None:
        return None
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None  # NaN in an array means "not measured"
    return value


def _check_comm_scaling(comm_scaling) -> None:
    if comm_scaling not in COMM_SCALINGS:
        raise ValueError(f"comm_scaling={comm_scaling!r} is not allowed; expected one of {', '.join(COMM_SCALINGS)}")


def _observations_from_rows(columns: list[str], rows: list[dict], source: str, sha256: str | None = None):
    if not rows:
        raise ValueError(f"{source}: no data rows")
    time_columns = [c for c in TIME_COLUMNS.values() if c in columns]
    if not time_columns:
        raise ValueError(
            f"{source}: none of the time columns {', '.join(TIME_COLUMNS.values())} is present "
            f"(columns: {', '.join(columns) or 'none'})"
        )
    needs = {"attention_time": ("attention_tokens",), "ffn_time": ("batch_size",), "comm_time": ("batch_size",)}
    n = len(rows)
    values = {name: np.full(n, np.nan) for name in OBSERVATION_COLUMNS}
    for i, row in enumerate(rows):
        for name in OBSERVATION_COLUMNS:
            if name not in columns:
                continue
            raw = row.get(name)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                continue
            where = f"{source}: row {i + 1}, column {name}"
            shown = repr(raw) if isinstance(raw, str) else str(raw)
            if isinstance(raw, (bool, np.bool_)) or not isinstance(raw, (str, int, float, np.integer, np.floating)):
                raise ValueError(f"{where}: {shown} is not a number")
            try:
                v = float(raw)
            except ValueError:
                raise ValueError(f"{where}: {shown} is not a number") from None
            if not math.isfinite(v):
                raise ValueError(f"{where}: {shown} is not finite")
            if name in ("batch_size", "ratio"):
                if v <= 0:
                    raise ValueError(f"{where}: {shown} must be > 0")
            elif v < 0:
                raise ValueError(f"{where}: {shown} is negative; times and token counts must be >= 0")
            values[name][i] = v
    for t in time_columns:  # an x column is required once a row gives the time that needs it
        if np.isnan(values[t]).all():
            continue
        for x in needs[t]:
            if x not in columns:
                raise ValueError(f"{source}: no column {x!r} (needed for {t}); columns are: {', '.join(columns)}")
    for i in range(n):
        for t in time_columns:
            if np.isnan(values[t][i]):
                continue
            required = needs[t] + (("ratio",) if t != "attention_time" and "ratio" in columns else ())
            for x in required:
                if np.isnan(values[x][i]):
                    raise ValueError(f"{source}: row {i + 1}, column {x}: empty, but {t} is given in this row")
    if "ratio" not in columns:
        values["ratio"] = np.ones(n)
    if all(np.isnan(values[t]).all() for t in time_columns):
        raise ValueError(f"{source}: every cell of {', '.join(time_columns)} is empty: nothing to fit")
    return LatencyObservations(**values, source=source, sha256=sha256)


def read_latency_observations(path, comm_scaling: str | None = None) -> LatencyObservations:
    """Read and validate step-latency observations from a CSV or JSON Lines file.

    See the module documentation for the columns. Raises ``FileNotFoundError`` for a missing
    file and ``ValueError`` naming the file, the row (1-based) and the column for a missing
    column, a non-numeric, non-finite or negative value, or a stage whose rows hold fewer
    than 2 distinct ``x`` values (the comm stage only when ``comm_scaling`` is given, as its
    ``x`` is ``B`` or ``r*B`` by scaling).
    """
    p = resolve_file(path, "observations")
    columns, rows = read_records(p)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    obs = _observations_from_rows(columns, rows, str(p), sha256=digest)
    if comm_scaling is not None:
        _check_comm_scaling(comm_scaling)
    obs.check_identifiable(comm_scaling)
    return obs


# ====================================================================== fitting (JAX)
def _weighted_median(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Median of ``values`` with non-negative weights (integer weights: the median of the
    sample with each value repeated ``weight`` times; the mean of the two middle values when
    the total weight is even, like ``numpy.median``)."""
    order = jnp.argsort(values)
    v, w = values[order], weights[order]
    cumulative = jnp.cumsum(w)
    half = 0.5 * cumulative[-1]
    lower = jnp.argmax(cumulative >= half)
    upper = jnp.argmax(cumulative > half)
    return 0.5 * (v[lower] + v[upper])


def _line_statistics(x: jax.Array, y: jax.Array, w: jax.Array, huber: bool) -> dict:
    """Weighted moments, the least-squares line in standardised units and the Huber scale.

    ``w`` are row weights: 1 for data and 0 for padding in the point fit, resampling
    counts in a bootstrap replicate. ``valid`` is False when ``x`` is constant."""
    dtype = x.dtype
    eps = jnp.finfo(dtype).eps
    total = jnp.sum(w)
    mx = jnp.sum(w * x) / total
    my = jnp.sum(w * y) / total
    sxx = jnp.sum(w * (x - mx) ** 2) / total
    syy = jnp.sum(w * (y - my) ** 2) / total
    valid = sxx > (eps * jnp.maximum(jnp.max(jnp.abs(x) * (w > 0)), 1.0)) ** 2
    sx = jnp.where(valid, jnp.sqrt(sxx), 1.0)
    sy = jnp.maximum(jnp.sqrt(syy), eps * jnp.maximum(jnp.abs(my), 1.0))
    z = (x - mx) / sx  # weighted-centred, so the columns 1 and z are w-orthogonal
    slope_std = jnp.sum(w * z * (y - my) / sy) / jnp.sum(w * z * z)  # OLS slope, standardised
    rx = jnp.sqrt(jnp.sum(w * x * x) / total)
    rx = jnp.where(rx > 0, rx, 1.0)
    q = x / rx
    through_origin_std = jnp.sum(w * q * (y / sy)) / jnp.sum(w * q * q)  # OLS with b = 0
    if huber:
        residual = (y - my) / sy - slope_std * z
        mad = _weighted_median(jnp.abs(residual - _weighted_median(residual, w)), w)
        delta_std = jnp.maximum(HUBER_EFFICIENCY_CONSTANT * MAD_TO_SIGMA * mad, 100 * eps)
    else:
        delta_std = jnp.asarray(jnp.nan, dtype)
    return dict(
        w=w,
        total=total,
        mx=mx,
        my=my,
        sx=sx,
        sy=sy,
        rx=rx,
        valid=valid,
        delta_std=delta_std,
        slope_std=slope_std,
        through_origin_std=through_origin_std,
    )


def _mean_loss(residual_std: jax.Array, st: dict, huber: bool) -> jax.Array:
    """Weighted mean loss of residuals in units of ``sy``."""
    if huber:
        rho = optax.losses.huber_loss(residual_std, delta=st["delta_std"])
    else:
        rho = 0.5 * residual_std**2
    return jnp.sum(st["w"] * rho) / st["total"]


def _huber_solve(x, y, st, offset, col0, col1, init):
    """Minimise the Huber loss of ``(y - offset) / sy - c0 (col0[0] + col0[1] x) - ...`` over
    ``c`` (one entry per given column) with L-BFGS; columns are built from scalars so that no
    (problem, row) array is stored."""
    eps = jnp.finfo(x.dtype).eps
    tol = eps ** (2 / 3) * st["delta_std"]
    target = (y - offset) / st["sy"]

    def objective(c):
        fitted = c[0] * (col0[0] + col0[1] * x)
        if col1 is not None:
            fitted = fitted + c[1] * (col1[0] + col1[1] * x)
        return _mean_loss(target - fitted, st, True)

    return lbfgs_minimise(objective, init, tol)


def _free_line(x, y, st, huber: bool) -> tuple[jax.Array, jax.Array]:
    """The unconstrained minimiser ``(a, b)``: Huber by L-BFGS from the least-squares line
    in the coordinates ``(y - my) / sy ~ c0 + c1 (x - mx) / sx``; l2 in closed form."""
    mx, my, sx, sy, slope = st["mx"], st["my"], st["sx"], st["sy"], st["slope_std"]
    if not huber:
        a = slope * sy / sx
        return a, my - a * mx
    one, zero = jnp.ones_like(mx), jnp.zeros_like(mx)
    c = _huber_solve(x, y, st, my, jnp.stack([one, zero]), jnp.stack([-mx / sx, 1 / sx]), jnp.stack([zero, slope]))
    return c[1] * sy / sx, my + sy * (c[0] - c[1] * mx / sx)


def _face_lines(x, y, st, huber: bool) -> tuple[jax.Array, jax.Array]:
    """Minimisers on the faces of the feasible set: ``b`` with ``a = 0`` (a location
    problem, ``y / sy ~ c``) and ``a`` with ``b = 0`` (``y / sy ~ c x / rx``), each started
    from its least-squares solution; the two Huber problems run as one vmapped solve."""
    my, sy, rx = st["my"], st["sy"], st["rx"]
    if not huber:
        return my, st["through_origin_std"] * sy / rx
    one, zero = jnp.ones_like(my), jnp.zeros_like(my)
    offsets = jnp.stack([my, zero])
    cols = jnp.array([[one, zero], [zero, 1 / rx]])
    inits = jnp.stack([zero, st["through_origin_std"]])[:, None]
    c = jax.vmap(lambda o, col, c0: _huber_solve(x, y, st, o, col, None, c0))(offsets, cols, inits)
    return my + sy * c[0, 0], c[1, 0] * sy / rx


def _select(x, y, st, huber, free, faces) -> dict:
    """The minimiser over ``a >= 0, b >= 0``: the free line if feasible, else the feasible
    face minimiser (or the vertex 0, 0) of least loss. Exact for a convex loss: the
    constrained minimiser minimises the loss over the affine hull of the face it lies on."""
    a_u, b_u = free
    b_face, a_face = faces
    zero = jnp.zeros_like(a_u)
    candidates = jnp.array([[a_u, b_u], [zero, b_face], [a_face, zero], [zero, zero]])
    feasible = jnp.array([(a_u >= 0) & (b_u >= 0), b_face >= 0, a_face >= 0, True])  # NaN: not feasible

    def loss_at(a, b):
        return _mean_loss((y - a * x - b) / st["sy"], st, huber)

    losses = jnp.where(feasible, jax.vmap(loss_at)(candidates[:, 0], candidates[:, 1]), jnp.inf)
    best = jnp.where(feasible[0], 0, jnp.argmin(losses))
    return dict(
        estimate=candidates[best],
        unconstrained=candidates[0],
        delta=st["delta_std"] * st["sy"],
        valid=st["valid"] & jnp.all(jnp.isfinite(candidates[best])),
    )


def _fit_lines(x: jax.Array, y: jax.Array, weights: jax.Array, huber: bool) -> dict:
    """Non-negative lines ``y ~ a x + b`` for a batch of row-weight vectors ``weights``
    (shape ``(k, rows)``), vmapped. The face problems are solved only when some line of the
    batch needs them (a ``lax.cond`` on the whole batch, outside the vmap, so it stays a
    real branch). Returns ``estimate`` and ``unconstrained`` ``(k, 2)``, ``delta`` (units
    of ``y``) and ``valid`` ``(k,)``."""
    stats = jax.vmap(lambda w: _line_statistics(x, y, w, huber))(weights)
    free = jax.vmap(lambda st: _free_line(x, y, st, huber))(stats)
    needs_faces = ~((free[0] >= 0) & (free[1] >= 0)) & stats["valid"]
    faces = jax.lax.cond(
        jnp.any(needs_faces),
        lambda: jax.vmap(lambda st: _face_lines(x, y, st, huber))(stats),
        lambda: (jnp.full_like(free[0], jnp.nan), jnp.full_like(free[1], jnp.nan)),
    )
    return jax.vmap(lambda st, f, g: _select(x, y, st, huber, f, g))(stats, free, faces)


@functools.partial(jax.jit, static_argnames=("huber", "n_bootstrap", "chunk"))
def _fit_replicates(x, y, num_rows, key, *, huber: bool, n_bootstrap: int, chunk: int):
    """The point fit (index 0) and ``n_bootstrap`` pairs-bootstrap replicates: index
    ``i >= 1`` resamples the first ``num_rows`` rows (the rest is padding) with replacement
    using ``fold_in(key, i - 1)``. Replicates run ``chunk`` at a time under ``jax.vmap``
    (``lax.map`` over chunks bounds the memory); rows of an array ``(n_bootstrap + 1, ...)``."""
    in_data = (jnp.arange(x.shape[0]) < num_rows).astype(x.dtype)
    total = n_bootstrap + 1
    n_chunks = -(-total // chunk)

    def weights(i):
        rows = jax.random.randint(jax.random.fold_in(key, i - 1), x.shape, 0, num_rows)
        counts = jnp.zeros_like(x).at[rows].add(in_data)
        return jnp.where(i == 0, in_data, counts)

    def run_chunk(indices):
        return _fit_lines(x, y, jax.vmap(weights)(indices), huber)

    out = jax.lax.map(run_chunk, jnp.arange(n_chunks * chunk).reshape(n_chunks, chunk))
    return jax.tree.map(lambda a: a.reshape((n_chunks * chunk,) + a.shape[2:])[:total], out)


_CHUNK_ELEMENTS = 1 << 19
"""Bootstrap replicates run in chunks of about this many (replicate, row) elements."""


def _padded_size(n: int) -> int:
    """Rows are padded (weight 0) to a power of two >= 8: few distinct shapes, few compiles."""
    return max(8, 1 << (n - 1).bit_length())


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
    """Result of :func:`fit_latency`.

    - ``latency``: the :class:`~afdjax.LatencyModel` of the point estimates.
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
    def _loss_description(self) -> str:
        if self.loss == "huber":
            return f"huber (delta = {HUBER_EFFICIENCY_CONSTANT} * {MAD_TO_SIGMA:.4f} * MAD of least-squares residuals)"
        return "l2 (least squares)"

    def _method_description(self, method: str) -> str:
        if method == "bootstrap":
            return f"bootstrap expanded percentile, {self.n_bootstrap} row resamples, seed {self.seed}"
        return "sandwich (Laplace with robust scores), Student t"

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
                    0 if fit.bootstrap_replicates is None else int(len(fit.bootstrap_replicates))
                )
            stages[stage] = entry
        interval_dict = lambda d: {k: (None if not all(map(math.isfinite, v)) else list(v)) for k, v in d.items()}  # noqa: E731
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
        lines = [
            f"afdjax fit latency   {self.source}   {self.num_rows} rows   comm_scaling {self.comm_scaling}",
            f"  loss: {self._loss_description()}",
            f"  95 % intervals: {self._method_description('bootstrap') if self.n_bootstrap else 'bootstrap off'};"
            f" {self._method_description('sandwich')}",
            "",
            f"  {'coefficient':<12}{'estimate':>13}   {'bootstrap 95 % CI':<27}{'sandwich 95 % CI':<27}"
            f"{'sandwich se':>11}",
        ]
        fmt = lambda iv: "-" if not all(map(math.isfinite, iv)) else f"[{iv[0]:.5g}, {iv[1]:.5g}]"  # noqa: E731
        boot, sand, se = self.bootstrap_intervals, self.sandwich_intervals, self.standard_errors
        coefficients = self.latency.coefficients()
        for stage in STAGES:
            fit = self.stages[stage]
            for name in fit.coefficient_names:
                tail = ""
                if fit.source != "fit":
                    tail = f"   (kept from defaults{f' {self.defaults_name}' if self.defaults_name else ''})"
                elif name in fit.at_bound:
                    tail = "   (at the >= 0 bound)"
                se_text = f"{se[name]:.3g}" if math.isfinite(se[name]) else "-"
                lines.append(
                    f"  {name:<12}{coefficients[name]:>13.6g}   {fmt(boot[name]):<27}{fmt(sand[name]):<27}"
                    f"{se_text:>11}{tail}"
                )
        lines += [
            "",
            f"  {'stage':<11}{'rows':>6}{'R^2':>10}{'resid sd':>12}{'max rel resid':>15}"
            + (f"{'huber delta':>13}{'beyond delta':>14}" if self.loss == "huber" else ""),
        ]
        for stage in STAGES:
            fit = self.stages[stage]
            if fit.source != "fit":
                lines.append(f"  {stage:<11}{0:>6}   no observations: coefficients kept from defaults")
                continue
            q = fit.quality()
            row = (
                f"  {stage:<11}{q['rows']:>6}{q['r_squared']:>10.5f}{q['residual_std']:>12.4g}"
                f"{100 * q['max_relative_residual']:>14.2f}%"
            )
            if self.loss == "huber":
                row += f"{q['huber_delta']:>13.4g}{q['rows_downweighted']:>14d}"
            lines.append(row)
        if self.notes:
            lines += ["", "Notes"] + [f"  - {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def to_toml(self) -> str:
        """Hardware TOML (read back by ``afdjax.parse_hardware_spec`` / ``--hardware FILE``),
        with a header comment recording the provenance and the fit quality."""
        name = Path(self.source).name if self.source and not self.source.startswith("<") else self.source
        header = [
            "Step-latency coefficients fitted by afdjax (afdjax fit latency).",
            f"observations: {name}, {self.num_rows} rows" + (f", sha256 {self.sha256[:16]}" if self.sha256 else ""),
            f"loss: {self._loss_description()}; comm_scaling: {self.comm_scaling}",
            f"95 % intervals ({self._method_description(self.interval_method)}):",
        ]
        for coefficient, (lo, hi) in self.intervals.items():
            if all(map(math.isfinite, (lo, hi))):
                header.append(f"  {coefficient} in [{lo:.6g}, {hi:.6g}]")
        for stage in STAGES:
            fit = self.stages[stage]
            if fit.source != "fit":
                header.append(
                    f"{stage}: no observations, kept from defaults"
                    + (f" ({self.defaults_name})" if self.defaults_name else "")
                )
                continue
            q = fit.quality()
            header.append(
                f"{stage}: {q['rows']} rows, R^2 = {q['r_squared']:.5f}, residual sd = {q['residual_std']:.4g}, "
                f"max relative residual = {100 * q['max_relative_residual']:.2f}%"
            )
        header += [f"note: {note}" for note in self.notes]
        return latency_to_toml(self.latency, description="\n".join(header))

    def plot_residuals(self, path, time_unit: str = "time unit") -> Path:
        """Write a PNG: for each stage, measured times and the fitted line against ``x``
        (top) and the residuals (bottom; dashed: ``-+ delta`` for Huber)."""
        from .._plot import pyplot

        path = Path(path)
        if path.parent and not path.parent.exists():
            raise FileNotFoundError(f"cannot write plot {str(path)!r}: folder {str(path.parent)!r} does not exist")
        plt = pyplot()
        fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), gridspec_kw=dict(height_ratios=[2, 1]))
        for col, stage in enumerate(STAGES):
            fit = self.stages[stage]
            top, bottom = axes[0, col], axes[1, col]
            label = _X_LABELS[stage]
            xlabel = label[self.comm_scaling] if isinstance(label, dict) else label
            top.set_title(f"{stage}: {TIME_COLUMNS[stage]}", fontsize=10)
            if fit.source != "fit":
                for ax in (top, bottom):
                    ax.text(
                        0.5,
                        0.5,
                        "no observations:\nkept from defaults",
                        ha="center",
                        va="center",
                        transform=ax.transAxes,
                    )
                    ax.set_xticks([])
                    ax.set_yticks([])
                continue
            a, b = fit.estimate
            far = (
                np.abs(fit.residuals) > fit.huber_delta if fit.huber_delta is not None else np.zeros(fit.num_rows, bool)
            )
            ms = 3 if fit.num_rows <= 500 else 1
            top.plot(fit.x[~far], fit.y[~far], "o", ms=ms, color="C0", label="measured")
            if far.any():
                top.plot(fit.x[far], fit.y[far], "x", ms=ms + 2, color="C3", label="beyond Huber delta")
            grid = np.linspace(min(0.0, fit.x.min()), fit.x.max(), 100)
            top.plot(grid, a * grid + b, "-", color="C1", label=f"fit {a:.4g} x + {b:.4g}")
            top.set_ylabel(f"time ({time_unit})")
            top.grid(alpha=0.3)
            top.legend(loc="upper left", fontsize=8)
            bottom.axhline(0, color="C1", lw=1)
            bottom.sharex(top)
            bottom.plot(fit.x, fit.residuals, "o", ms=ms, color="C0")
            if fit.huber_delta is not None:
                for s in (-1, 1):
                    bottom.axhline(s * fit.huber_delta, color="C3", ls="--", lw=0.8)
            bottom.set_xlabel(xlabel)
            bottom.set_ylabel(f"residual ({time_unit})")
            bottom.grid(alpha=0.3)
            bottom.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
            top.tick_params(labelbottom=False)
        fig.suptitle(f"latency fit: {Path(self.source).name}, loss {self.loss}", fontsize=11)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


# ====================================================================== entry point
def fit_latency(
    observations,
    loss: str = "huber",
    comm_scaling: str = "batch",
    n_bootstrap: int = 200,
    seed: int = 0,
    defaults: LatencyModel | None = None,
) -> LatencyFit:
    """Fit the :class:`~afdjax.LatencyModel` coefficients to step-latency observations.

    **Arguments:**

    - ``observations``: a CSV / JSON Lines path (see :func:`read_latency_observations`), a
      :class:`LatencyObservations`, or a mapping of column name to values.
    - ``loss``: ``"huber"`` (robust, default) or ``"l2"`` (least squares).
    - ``comm_scaling``: ``"batch"`` (``t_C = alpha_c B + beta_c``) or ``"ratio_batch"``
      (``alpha_c r B + beta_c``).
    - ``n_bootstrap``: bootstrap replicates for the intervals (0: sandwich intervals only,
      otherwise at least 20).
    - ``seed``: seed of the bootstrap resampling (``jax.random.key(seed)``).
    - ``defaults``: a ``LatencyModel`` (e.g. a preset) whose coefficients are kept for any
      stage without observations; its ``comm_scaling`` must match when the comm stage is
      kept. A preset name (``"paper-910c"``) is accepted too.

    **Returns:** a :class:`LatencyFit`. The method is described in the module docstring.
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


# ====================================================================== bundled example
def _example_observations_csv(seed: int = 0) -> str:
    """The text of ``afdjax/data/example_step_latency.csv``: SYNTHETIC data, not measured.

    Process (NumPy ``default_rng(seed)``, 64 rows): ``B`` uniform on {64, 128, 256, 512},
    ``r`` uniform on {1, 2, 4, 8}, mean KV tokens per slot uniform on [100, 1000) and
    ``T = round(B * that)``; times from the ``paper-910c`` preset (``comm_scaling="batch"``)
    plus Gaussian noise of standard deviation ``1 + 2 %`` of the true time; 4 % of the
    measurements (independently per stage) are multiplied by a factor uniform on [1.5, 3)
    (straggling steps); ``comm_time`` is left empty in every fourth row. Times are rounded to
    0.01. Regenerate with::

        python -c "from afdjax._fit_latency import _example_observations_csv as f; print(f(), end='')" \\
            > afdjax/data/example_step_latency.csv
    """
    rng = np.random.default_rng(seed)
    p = PRESETS["paper-910c"]
    n = 64
    batch = rng.choice([64, 128, 256, 512], size=n)
    ratio = rng.choice([1, 2, 4, 8], size=n)
    tokens = np.round(batch * rng.uniform(100, 1000, size=n)).astype(int)
    true = {
        "attention_time": p["alpha_a"] * tokens + p["beta_a"],
        "ffn_time": p["alpha_f"] * ratio * batch + p["beta_f"],
        "comm_time": p["alpha_c"] * batch + p["beta_c"],
    }
    measured = {}
    for name, t in true.items():
        y = t + rng.normal(size=n) * (1.0 + 0.02 * t)
        spikes = rng.uniform(size=n) < 0.04
        y = np.where(spikes, y * rng.uniform(1.5, 3.0, size=n), y)
        measured[name] = np.round(y, 2)
    lines = [
        "# SYNTHETIC step-latency observations for afdjax fit latency (not measured on hardware).",
        "# Generated by afdjax._fit_latency._example_observations_csv(seed=0): paper-910c coefficients",
        "# (alpha_a=0.00165 beta_a=50 alpha_f=0.083 beta_f=100 alpha_c=0.022 beta_c=20, comm_scaling=batch),",
        "# Gaussian noise sd = 1 + 2% of the time, 4% straggler spikes (x1.5-3), comm_time empty in every 4th row.",
        "attention_tokens,batch_size,ratio,attention_time,ffn_time,comm_time",
    ]
    for i in range(n):
        comm = "" if i % 4 == 3 else f"{measured['comm_time'][i]:.2f}"
        lines.append(
            f"{tokens[i]},{batch[i]},{ratio[i]},{measured['attention_time'][i]:.2f},{measured['ffn_time'][i]:.2f},{comm}"
        )
    return "\n".join(lines) + "\n"
