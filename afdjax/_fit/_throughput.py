"""Calibrate the stochastic model to observed throughput through the differentiable simulation.

Observations: throughput per instance measured at several (batch size B, ratio r) points
(from a running system or another simulator), optionally with standard errors, taken to
be independent from point to point.
Parameters: any of the six latency coefficients, the Geometric workload's ``mu_p`` and
``mu_d``, and the family parameters of a :class:`~afdjax.FittedWorkload`
(``decode_mu``, ``decode_sigma``, ...). Coefficients and ``mu_p`` / ``mu_d`` are fitted in
log space, so they stay positive; family parameters on the family's unconstrained scale
(:mod:`afdjax._fit._throughput_params`).

1. **Warm start**: weighted least squares on the barrier model (analytic, smooth,
   milliseconds per evaluation), minimised with optax L-BFGS.
2. **Refinement through the simulation**: Levenberg-Marquardt steps on the Monte Carlo
   predictions with a fixed key (common random numbers). The Jacobian comes from
   forward-mode autodiff through the engine: pathwise for coefficients and prefill, the
   coupled decode-jump estimator for decode-length parameters (:mod:`afdjax._grad`). This
   removes the barrier model's approximation error (about 0.5 %) from the fit.
3. **Uncertainty**: the estimate ``x`` solves ``J^T W (y - m(x)) = 0`` with
   ``W = 1 / (sigma_obs^2 + sigma_MC^2)``, so to first order it moves by
   ``G^T (e_obs - e_MC)`` with ``G = W J (J^T W J)^-1``: a sandwich covariance
   ``G^T (Sigma_obs + Sigma_MC) G``. ``Sigma_obs`` is diagonal (the stated ``stderr``, or,
   when none is given, one variance estimated from the residuals). ``Sigma_MC``, the
   covariance of the simulated predictions, is *not* diagonal: every ratio of a batch
   size is the first ``r`` instances of the same replicas (common random numbers), so
   their Monte Carlo errors are correlated (0.5 to 0.8 at the paper baseline) and move
   the estimate together; it is estimated from the ``R`` replicas (each replica's
   ``G^T m_i``). The Gauss-Newton ``(J^T W J)^-1`` equals the sandwich only when that
   covariance is diagonal; it under-stated the s.e. of ``mu_d`` by a factor of about 2
   (``experiments/fit_coverage.py``: 65 % coverage over 40 seeds). Because the Monte
   Carlo part is estimated from ``R`` replicas, the 95 % interval is
   ``x +- t_nu(0.975) se`` with Satterthwaite's ``nu`` (``R - 1`` degrees of freedom for
   the Monte Carlo part, ``n - p`` for a residual variance, infinite for a stated
   ``stderr``), mapped to the parameter's own scale (``exp`` for log-fitted ones).

Identifiability: at a single batch size, ``alpha_a`` and ``beta_a`` enter the
attention-bound throughput mostly through ``alpha_a B theta + beta_a``. Observe at least
two batch sizes to separate them, or fix one (see the ``fit`` argument). Likewise the
throughput sees the workload mostly through the stationary load ``theta`` (and a little
through its spread), so two decode parameters (a lognormal's ``mu`` and ``sigma``) are
nearly collinear: their intervals are wide and, being linearised, less reliable than a
single decode parameter's (``experiments/fit_coverage.py --family lognormal``).
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from .._data import read_records, resolve_file
from .._engine import simulate
from .._grad import decode_jumps_for, plan_buffers, throughput_estimate
from .._json import jsonable
from .._latency import LatencyModel
from .._theory import barrier_throughput
from .._validate import filter_jit
from .._workload import Workload
from . import _throughput_params as params
from ._lbfgs import lbfgs_minimise


@dataclasses.dataclass(frozen=True)
class ThroughputObservations:
    """Measured throughput per instance at ``(batch_size, ratio)`` points (arrays of one length).

    Attributes:
        batch_size: ``(n,)`` slots per Attention instance.
        ratio: ``(n,)`` A/F ratios.
        throughput: ``(n,)`` measured throughput per instance.
        stderr: ``(n,)`` its standard errors, or ``None``.
    """

    batch_size: np.ndarray
    ratio: np.ndarray
    throughput: np.ndarray
    stderr: np.ndarray | None = None

    def __post_init__(self):
        n = len(self.throughput)
        for name in ("batch_size", "ratio", "throughput"):
            a = np.asarray(getattr(self, name))
            if a.shape != (n,):
                raise ValueError(f"{name} has shape {a.shape}; expected ({n},) like throughput")
        if n < 2:
            raise ValueError(f"need at least 2 throughput observations, got {n}")
        for name in ("batch_size", "ratio"):
            a = np.asarray(getattr(self, name), dtype=float)
            if np.any(a < 1) or np.any(a != np.round(a)):
                raise ValueError(f"{name} must hold integers >= 1; got {a.tolist()}")
        t = np.asarray(self.throughput, dtype=float)
        if not np.all(np.isfinite(t)) or np.any(t <= 0):
            raise ValueError("throughput must be finite and > 0")
        if self.stderr is not None:
            s = np.asarray(self.stderr, dtype=float)
            if s.shape != (n,) or not np.all(np.isfinite(s)) or np.any(s < 0):
                raise ValueError("stderr must be finite, >= 0 and as long as throughput")


def read_throughput_observations(path) -> ThroughputObservations:
    """CSV with columns ``batch_size, ratio, throughput`` and optionally ``stderr``.

    Arguments:
        path: the CSV file.

    Returns:
        the [`ThroughputObservations`][afdjax.ThroughputObservations].
    """
    p = resolve_file(path, "observations")
    columns, rows = read_records(p)
    missing = [c for c in ("batch_size", "ratio", "throughput") if c not in columns]
    if missing:
        raise ValueError(f"{p}: missing column(s) {', '.join(missing)}; columns are: {', '.join(columns) or '(none)'}")
    has_se = "stderr" in columns
    data = {k: [] for k in ("batch_size", "ratio", "throughput", "stderr")}
    for i, row in enumerate(rows, 1):
        for k in ("batch_size", "ratio", "throughput") + (("stderr",) if has_se else ()):
            try:
                data[k].append(float(row.get(k)))
            except (TypeError, ValueError):
                raise ValueError(f"{p}: row {i}: {k}={row.get(k)!r} is not a number") from None
    return ThroughputObservations(
        batch_size=np.asarray(data["batch_size"]),
        ratio=np.asarray(data["ratio"]),
        throughput=np.asarray(data["throughput"]),
        stderr=np.asarray(data["stderr"]) if has_se else None,
    )


@dataclasses.dataclass
class ThroughputFit:
    """Result of [`fit_throughput`][afdjax.fit_throughput].

    Attributes:
        names: the fitted parameters.
        workload: the [`Workload`][afdjax.Workload] with the fitted values.
        latency: the [`LatencyModel`][afdjax.LatencyModel] with the fitted values.
        predicted: ``(rows,)`` simulated throughput at the estimate.
        observed: the [`ThroughputObservations`][afdjax.ThroughputObservations] fitted.
        warm_start: the values after the barrier-model warm start.
        max_abs_rel_residual: the largest ``|predicted / observed - 1|``.
    """

    names: tuple[str, ...]
    estimate: dict
    """Fitted value of each parameter, in its own units."""
    stderr_log: dict
    """Standard error on the fitted scale: of ``log`` value for coefficients and
    ``mu_p`` / ``mu_d``, of the family's unconstrained parameter otherwise (a lognormal's
    ``mu`` itself, ``log sigma``, ``logit p``)."""
    interval: dict
    """95 % interval ``(low, high)`` in the parameter's own units (module docstring)."""
    workload: Workload
    latency: LatencyModel
    predicted: np.ndarray
    observed: ThroughputObservations
    warm_start: dict
    max_abs_rel_residual: float
    dof: dict = dataclasses.field(default_factory=dict)
    """Satterthwaite degrees of freedom of each parameter's s.e. (module docstring)."""

    def to_dict(self) -> dict:
        return jsonable(
            dict(
                parameters={
                    n: dict(
                        estimate=self.estimate[n],
                        ci95=list(self.interval[n]),
                        stderr_log=self.stderr_log[n],
                        warm_start=self.warm_start[n],
                        dof=self.dof.get(n),
                    )
                    for n in self.names
                },
                latency_coefficients=self.latency.coefficients(),
                observations=[
                    dict(batch_size=int(b), ratio=int(r), observed=float(o), predicted=float(p))
                    for b, r, o, p in zip(
                        self.observed.batch_size, self.observed.ratio, self.observed.throughput, self.predicted
                    )
                ],
                max_abs_rel_residual=self.max_abs_rel_residual,
            )
        )

    def format_text(self) -> str:
        lines = [
            "afdjax fit throughput: calibrated through the Monte Carlo simulation",
            "",
            f"{'parameter':>10} {'estimate':>12} {'95% interval':>27} {'barrier warm start':>19}",
        ]
        for n in self.names:
            lo, hi = self.interval[n]
            lines.append(f"{n:>10} {self.estimate[n]:>12.5g} [{lo:>11.5g}, {hi:>11.5g}] {self.warm_start[n]:>19.5g}")
        lines += ["", f"{'B':>6} {'r':>4} {'observed':>10} {'predicted':>10} {'rel. resid':>10}"]
        for b, r, o, p in zip(self.observed.batch_size, self.observed.ratio, self.observed.throughput, self.predicted):
            lines.append(f"{int(b):>6} {int(r):>4} {o:>10.5g} {p:>10.5g} {100 * (p / o - 1):>9.2f}%")
        lines.append(f"\nmax |relative residual| = {100 * self.max_abs_rel_residual:.2f}%")
        return "\n".join(lines)


def _layout(obs: ThroughputObservations, sizes: dict) -> tuple:
    """Static description of the simulations: per distinct batch size ``(B, r_max,
    chunk_steps, requests_per_chunk, ratio indices, observation positions)``."""
    out = []
    for b in sorted(set(int(x) for x in obs.batch_size)):
        idx = np.nonzero(obs.batch_size == b)[0]
        out.append(
            (
                b,
                int(obs.ratio[idx].max()),
                sizes[b]["chunk_steps"],
                sizes[b]["requests_per_chunk"],
                tuple(int(v) - 1 for v in obs.ratio[idx]),
                tuple(int(i) for i in idx),
            )
        )
    return tuple(out)


def _mc_predict(x, key, workload, latency, names, layout, num_steps, num_replicas, decode_estimator):
    """Monte Carlo throughput at every observation (mean over replicas, whose gradient is
    pathwise plus ``decode_estimator``'s decode term), its s.e., and the replicas' own
    values ``(R, n)`` (no gradient); one simulation per distinct batch size, all with ``key``."""
    workload, latency = params.apply(workload, latency, names, x)
    preds, ses, pers = [], [], []
    order = []
    for b, rmax, chunk_steps, requests_per_chunk, r_idx, idx in layout:
        res = simulate(
            key,
            workload,
            latency,
            b,
            list(range(1, rmax + 1)),
            num_steps,
            num_replicas,
            decode_jumps=decode_jumps_for(workload, decode_estimator),
            chunk_steps=chunk_steps,
            requests_per_chunk=requests_per_chunk,
        )
        est = throughput_estimate(res)
        per = jax.lax.stop_gradient(res.throughput_per_replica)
        se = jnp.std(per, axis=0, ddof=1) / math.sqrt(per.shape[0])
        r_idx = jnp.asarray(r_idx)
        preds.append(est[r_idx])
        ses.append(se[r_idx])
        pers.append(per[:, r_idx])
        order.extend(idx)
    inverse = np.argsort(np.asarray(order))
    return jnp.concatenate(preds)[inverse], jnp.concatenate(ses)[inverse], jnp.concatenate(pers, axis=1)[:, inverse]


_mc = filter_jit(_mc_predict)


@filter_jit
def _mc_jacobian(x, key, workload, latency, *static):
    """``d prediction / d x`` ``(n, p)`` by forward-mode autodiff through the engine."""
    return jax.jacfwd(lambda v: _mc_predict(v, key, workload, latency, *static)[0])(x)


@filter_jit
def _warm_start(x0, y, b_arr, r_arr, workload, latency, names):
    """Weighted least squares of the barrier model's relative error, from ``x0``."""

    def warm_loss(x):
        w, lat = params.apply(workload, latency, names, x)
        pred = jax.vmap(lambda b, r: barrier_throughput(w, lat, b, r))(b_arr, r_arr)
        return jnp.sum((pred / y - 1.0) ** 2)

    return lbfgs_minimise(warm_loss, x0, tol=1e-12, maxiter=200)


def fit_throughput(
    observations: ThroughputObservations,
    workload: Workload,
    latency: LatencyModel,
    fit=("alpha_a", "beta_a", "alpha_f", "beta_f"),
    *,
    key: jax.Array,
    num_steps: int = 2000,
    num_replicas: int = 8,
    refine_iterations: int = 4,
    warm_start: bool = True,
    decode_estimator: str = "coupled",
) -> ThroughputFit:
    """Calibrate ``fit`` so that the simulated throughput matches ``observations``.

    ``fit``: names of latency coefficients, ``mu_p`` / ``mu_d`` of a
    [`Geometric`][afdjax.Geometric] workload, or ``decode_<name>`` / ``prefill_<name>`` of a
    [`FittedWorkload`][afdjax.FittedWorkload]'s families (e.g. ``decode_mu``, ``decode_sigma`` of
    ``LogNormalDecode``; ``afdjax._fit._throughput_params``). ``workload`` and
    ``latency`` hold the starting values and the parameters that stay fixed. ``key`` (a
    JAX PRNG key, required) fixes the random numbers of every simulated prediction
    (common random numbers across iterations). ``refine_iterations``: Levenberg-Marquardt
    steps through the simulation. ``warm_start``: start them from the barrier-model fit
    (default) or from the given values. ``decode_estimator``: ``"coupled"`` (default) or
    ``"score"``, the decode-length part of the Jacobian ([`expected_throughput`][afdjax.expected_throughput]).
    Module docstring: method and intervals. The simulation is compiled once per (parameter
    names, batch sizes and ratios, ``num_steps``, ``num_replicas``, buffer sizes, estimator):
    a second call with new observed values, key or starting values reuses it.

    Arguments:
        observations: the [`ThroughputObservations`][afdjax.ThroughputObservations].
        workload: the [`Workload`][afdjax.Workload]: starting values and fixed parameters.
        latency: the [`LatencyModel`][afdjax.LatencyModel]: starting values and fixed coefficients.
        fit: names of the parameters to fit (see above).
        key: a JAX PRNG key, required (common random numbers across iterations).
        num_steps: measured steps per simulated prediction.
        num_replicas: replicas per simulated prediction.
        refine_iterations: Levenberg-Marquardt steps through the simulation.
        warm_start: start from the barrier-model fit (default) or from the given values.
        decode_estimator: ``"coupled"`` (default) or ``"score"``.

    Returns:
        a [`ThroughputFit`][afdjax.ThroughputFit].
    """
    names = params.check_names(fit, workload)
    decode_jumps_for(workload, decode_estimator)  # ValueError for an unknown estimator
    obs = observations
    y = jnp.asarray(obs.throughput, dtype=jnp.zeros(()).dtype)
    x0 = params.start_vector(workload, latency, names).astype(y.dtype)
    if not bool(jnp.all(jnp.isfinite(x0))):
        raise ValueError("starting values of the fitted parameters must be > 0")
    obs_var = None if obs.stderr is None else jnp.asarray(obs.stderr, dtype=y.dtype) ** 2
    b_arr = jnp.asarray(obs.batch_size, dtype=y.dtype)
    r_arr = jnp.asarray(obs.ratio, dtype=y.dtype)

    # ---------------------------------------------------------------- 1. warm start
    x = _warm_start(x0, y, b_arr, r_arr, workload, latency, names) if warm_start else x0
    w_x, lat_x = params.apply(workload, latency, names, x)
    warm = {n: params.natural(w_x, lat_x, n) for n in names}

    # ---------------------------------------------------------------- 2. refine through the simulation
    sizes = {}
    for b in sorted(set(int(v) for v in obs.batch_size)):
        rmax = int(obs.ratio[obs.batch_size == b].max())
        sizes[b] = plan_buffers(w_x, b, rmax, num_steps, num_replicas)
    static = (names, _layout(obs, sizes), num_steps, num_replicas, decode_estimator)

    def mc(x):
        return _mc(x, key, workload, latency, *static)

    def jac(x):
        return _mc_jacobian(x, key, workload, latency, *static)

    damping = 1e-3
    for _ in range(refine_iterations):
        pred, se_mc, _ = mc(x)
        var = se_mc**2 + (obs_var if obs_var is not None else (0.005 * y) ** 2)
        J = jac(x)
        r = (y - pred) / jnp.sqrt(var)
        A = J / jnp.sqrt(var)[:, None]
        H = A.T @ A
        step = jnp.linalg.solve(H + damping * jnp.diag(jnp.diag(H)), A.T @ r)
        x_new = x + step
        if float(jnp.sum(((y - mc(x_new)[0]) ** 2) / var)) <= float(jnp.sum(r**2)):
            x, damping = x_new, damping * 0.3
        else:
            damping *= 10.0

    # ---------------------------------------------------------------- 3. uncertainty
    pred, se_mc, per = mc(x)
    J = jac(x)
    resid = y - pred
    n, p = len(obs.throughput), len(names)
    if obs_var is None:
        # residual variance (beyond the simulation's own noise), at least 1e-12
        dof = max(n - p, 1)
        sigma2 = max(float(jnp.sum(resid**2) / dof - jnp.mean(se_mc**2)), 1e-12)
        var = se_mc**2 + sigma2
    else:
        var = se_mc**2 + obs_var
    cov_obs, cov_mc = _covariance(J, var, var - se_mc**2, per)
    obs_dof = math.inf if obs_var is not None else max(n - p, 1)
    se_log, dof, half = [], [], []
    for j in range(p):
        a, c = float(cov_obs[j, j]), max(float(cov_mc[j, j]), 0.0)
        se_log.append(math.sqrt(max(a + c, 0.0)))
        dof.append(_satterthwaite(a, obs_dof, c, per.shape[0] - 1))
        half.append(_t_quantile(0.975, dof[-1]) * se_log[-1])
    w_fit, lat_fit = params.apply(workload, latency, names, x)
    return ThroughputFit(
        names=names,
        estimate={n: params.natural(w_fit, lat_fit, n) for n in names},
        stderr_log={n: float(v) for n, v in zip(names, se_log)},
        interval={n: params.natural_interval(workload, latency, names, x, i, half[i]) for i, n in enumerate(names)},
        workload=w_fit,
        latency=lat_fit,
        predicted=np.asarray(pred),
        observed=obs,
        warm_start=warm,
        max_abs_rel_residual=float(jnp.max(jnp.abs(pred / y - 1.0))),
        dof=dict(zip(names, dof)),
    )


def _covariance(J, var, obs_var, per):
    """The two parts of the sandwich covariance of the fitted vector (module docstring):
    ``G^T Sigma_obs G`` and ``G^T Sigma_MC G``, with ``G = W J (J^T W J)^-1``,
    ``W = 1/var``, ``Sigma_obs = diag(obs_var)`` and ``Sigma_MC`` the covariance of the
    replica mean, off-diagonal terms included, from the replicas' values ``per`` ``(R, n)``."""
    weighted = J / var[:, None]
    G = weighted @ jnp.linalg.pinv(J.T @ weighted)
    cov_obs = G.T @ (obs_var[:, None] * G)
    z = per @ G  # (R, p): each replica's contribution to the estimate
    cov_mc = jnp.atleast_2d(jnp.cov(z, rowvar=False)) / per.shape[0]
    return cov_obs, cov_mc


def _satterthwaite(a, dof_a, c, dof_c) -> float:
    """Welch-Satterthwaite degrees of freedom of ``a + c`` (variances with ``dof_a`` and
    ``dof_c`` degrees of freedom; ``inf`` when both are known or zero)."""
    denominator = (a * a / dof_a if math.isfinite(dof_a) else 0.0) + (c * c / dof_c if dof_c > 0 else 0.0)
    return (a + c) ** 2 / denominator if denominator > 0 else math.inf


def _t_quantile(q: float, dof: float) -> float:
    """Student-t quantile ``q`` in (0.5, 1) for ``dof > 0`` degrees of freedom (``inf``: the
    normal's), by bisection on ``P(T <= t) = 1 - I_{dof/(dof+t^2)}(dof/2, 1/2) / 2``."""
    z = statistics.NormalDist().inv_cdf(q)
    if not math.isfinite(dof) or dof > 1e6:
        return z
    lo, hi = z, 1e4
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        upper = 0.5 * _betainc(0.5 * dof, 0.5, dof / (dof + mid * mid))
        lo, hi = (mid, hi) if 1.0 - upper < q else (lo, mid)
    return 0.5 * (lo + hi)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)`` (float64): Lentz's continued fraction,
    on the side of ``x`` where it converges fast."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * f / a
