"""Calibrate the stochastic model to observed throughput through the differentiable simulation.

Observations: throughput per instance measured at several (batch size B, ratio r) points
(from a running system or another simulator), optionally with standard errors.
Parameters: any of the six latency coefficients and the Geometric workload's ``mu_p``
and ``mu_d``. They are fitted in log space, so they stay positive.

1. **Warm start**: weighted least squares on the barrier model (analytic, smooth,
   milliseconds per evaluation), minimised with optax L-BFGS.
2. **Refinement through the simulation**: Levenberg-Marquardt steps on the Monte Carlo
   predictions with a fixed key (common random numbers). The Jacobian comes from
   forward-mode autodiff through the engine: pathwise for coefficients and prefill, the
   coupled decode-jump estimator for ``mu_d`` (:mod:`afdjax._grad`). This removes the
   barrier model's approximation error (about 0.5 %) from the fit.
3. **Uncertainty**: Gauss-Newton covariance ``(J^T W J)^-1`` at the optimum. Here
   ``W = 1 / (sigma_obs^2 + sigma_MC^2)``; when no ``stderr`` is given, ``sigma_obs`` is
   estimated from the residuals. 95 % intervals are ``exp(log theta +- 1.96 se)``.

Identifiability: at a single batch size, ``alpha_a`` and ``beta_a`` enter the
attention-bound throughput mostly through ``alpha_a B theta + beta_a``. Observe at least
two batch sizes to separate them, or fix one (see the ``fit`` argument).
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._data import read_records, resolve_file
from .._engine import simulate
from .._grad import decode_jumps_for, throughput_estimate
from .._json import jsonable
from .._latency import COEFFICIENT_NAMES, LatencyModel
from .._theory import barrier_throughput
from .._workload import Geometric, Workload
from ._lbfgs import lbfgs_minimise

WORKLOAD_PARAMETERS = ("mu_p", "mu_d")


@dataclasses.dataclass(frozen=True)
class ThroughputObservations:
    """Measured throughput per instance at ``(batch_size, ratio)`` points (arrays of one length)."""

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
    """CSV with columns ``batch_size, ratio, throughput`` and optionally ``stderr``."""
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


def _get(workload, latency, name):
    return getattr(workload if name in WORKLOAD_PARAMETERS else latency, name)


def _set(workload, latency, names, values):
    for name, v in zip(names, values):
        if name in WORKLOAD_PARAMETERS:
            workload = eqx.tree_at(lambda m, n=name: getattr(m, n), workload, v)
        else:
            latency = eqx.tree_at(lambda m, n=name: getattr(m, n), latency, v)
    return workload, latency


@dataclasses.dataclass
class ThroughputFit:
    """Result of :func:`fit_throughput`."""

    names: tuple[str, ...]
    estimate: dict
    stderr_log: dict
    interval: dict
    workload: Workload
    latency: LatencyModel
    predicted: np.ndarray
    observed: ThroughputObservations
    warm_start: dict
    max_abs_rel_residual: float

    def to_dict(self) -> dict:
        return jsonable(
            dict(
                parameters={
                    n: dict(
                        estimate=self.estimate[n],
                        ci95=list(self.interval[n]),
                        stderr_log=self.stderr_log[n],
                        warm_start=self.warm_start[n],
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


def _mc_predict(key, workload, latency, obs: ThroughputObservations, num_steps, num_replicas, sizes):
    """Monte Carlo throughput (mean over replicas, with the coupled decode gradient) and its s.e.
    at every observation, one simulation per distinct batch size."""
    preds, ses = [], []
    order = []
    for b in sorted(set(int(x) for x in obs.batch_size)):
        idx = np.nonzero(obs.batch_size == b)[0]
        rmax = int(obs.ratio[idx].max())
        res = simulate(
            key,
            workload,
            latency,
            b,
            list(range(1, rmax + 1)),
            num_steps,
            num_replicas,
            decode_jumps=decode_jumps_for(workload, "coupled"),
            **sizes[b],
        )
        est = throughput_estimate(res)
        per = res.throughput_per_replica
        se = jax.lax.stop_gradient(jnp.std(per, axis=0, ddof=1) / math.sqrt(per.shape[0]))
        r_idx = jnp.asarray(obs.ratio[idx].astype(int) - 1)
        preds.append(est[r_idx])
        ses.append(se[r_idx])
        order.append(idx)
    order = np.concatenate(order)
    inverse = np.argsort(order)
    return jnp.concatenate(preds)[inverse], jnp.concatenate(ses)[inverse]


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
) -> ThroughputFit:
    """Calibrate ``fit`` (names of latency coefficients and/or ``mu_p``, ``mu_d``) so that
    the simulated throughput matches ``observations``. ``workload`` and ``latency`` hold
    the starting values and the parameters that stay fixed. ``key`` (a JAX PRNG key, required)
    fixes the random numbers of every simulated prediction (common random numbers across
    iterations). Module docstring: method."""
    names = tuple(fit)
    allowed = set(COEFFICIENT_NAMES) | set(WORKLOAD_PARAMETERS)
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"fit={fit!r} is invalid: choose from {', '.join(COEFFICIENT_NAMES + WORKLOAD_PARAMETERS)}")
    if any(n in WORKLOAD_PARAMETERS for n in names) and not isinstance(workload, Geometric):
        raise ValueError("fitting mu_p / mu_d needs a Geometric workload")
    obs = observations
    y = jnp.asarray(obs.throughput, dtype=jnp.zeros(()).dtype)
    x0 = jnp.log(jnp.asarray([float(_get(workload, latency, n)) for n in names]))
    if not bool(jnp.all(jnp.isfinite(x0))):
        raise ValueError("starting values of the fitted parameters must be > 0")
    obs_var = None if obs.stderr is None else jnp.asarray(obs.stderr, dtype=y.dtype) ** 2
    b_arr = jnp.asarray(obs.batch_size, dtype=y.dtype)
    r_arr = jnp.asarray(obs.ratio, dtype=y.dtype)

    # ---------------------------------------------------------------- 1. warm start
    def barrier_pred(x):
        w, lat = _set(workload, latency, names, jnp.exp(x))
        return jax.vmap(lambda b, r: barrier_throughput(w, lat, b, r))(b_arr, r_arr)

    def warm_loss(x):
        rel = barrier_pred(x) / y - 1.0
        return jnp.sum(rel**2)

    x = jax.jit(lambda x_init: lbfgs_minimise(warm_loss, x_init, tol=1e-12, maxiter=200))(x0)
    warm = {n: float(v) for n, v in zip(names, jnp.exp(x))}

    # ---------------------------------------------------------------- 2. refine through the simulation
    w_x, _ = _set(workload, latency, names, jnp.exp(x))
    from .._grad import plan_buffers

    sizes = {}
    for b in sorted(set(int(v) for v in obs.batch_size)):
        rmax = int(obs.ratio[obs.batch_size == b].max())
        sizes[b] = plan_buffers(w_x, b, rmax, num_steps, num_replicas)

    @jax.jit
    def mc(x):
        w, lat = _set(workload, latency, names, jnp.exp(x))
        return _mc_predict(key, w, lat, obs, num_steps, num_replicas, sizes)

    jac = jax.jit(jax.jacfwd(lambda x: mc(x)[0]))
    damping = 1e-3
    for _ in range(refine_iterations):
        pred, se_mc = mc(x)
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
    pred, se_mc = mc(x)
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
    A = J / jnp.sqrt(var)[:, None]
    cov = jnp.linalg.pinv(A.T @ A)
    se_log = jnp.sqrt(jnp.clip(jnp.diag(cov), 0.0))
    est = jnp.exp(x)
    w_fit, lat_fit = _set(workload, latency, names, est)
    return ThroughputFit(
        names=names,
        estimate={n: float(v) for n, v in zip(names, est)},
        stderr_log={n: float(v) for n, v in zip(names, se_log)},
        interval={
            n: (float(v * math.exp(-1.96 * s)), float(v * math.exp(1.96 * s))) for n, v, s in zip(names, est, se_log)
        },
        workload=w_fit,
        latency=lat_fit,
        predicted=np.asarray(pred),
        observed=obs,
        warm_start=warm,
        max_abs_rel_residual=float(jnp.max(jnp.abs(pred / y - 1.0))),
    )
