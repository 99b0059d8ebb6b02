"""The maximum-likelihood engine behind :func:`afdjax.fit_workload`: one family at a time.

Closed-form MLEs are used where they exist (geometric ``p = 1 / mean(D)``, exponential
``scale = mean(X)``, lognormal prefill ``mu, sigma`` = mean and population standard
deviation of ``log X``). The other families minimise the mean negative log-likelihood
with the fitters' one L-BFGS loop (:func:`~afdjax._fit._lbfgs.lbfgs_minimise`) under
``jax.jit`` over an unconstrained parametrisation, from moment-matched starting values
(the mixture also from a split at the median; the better optimum wins). The data enter as
distinct values with counts, zero-padded so that data of similar size share one
compilation. See :mod:`afdjax._fit._workload` for the uncertainty and the dtype notes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._json import jsonable
from .._validate import check_int, check_number
from .._workload import DECODE_CLASSES, PREFILL_CLASSES, validate_lengths
from ._lbfgs import lbfgs_minimise

DECODE_FIT_FAMILIES = ("geometric", "negative_binomial", "lognormal", "geometric_mixture")
"""Decode-length families :func:`fit_workload` knows, in its default order."""

PREFILL_FIT_FAMILIES = ("exponential", "gamma", "lognormal")
"""Prefill-length families :func:`fit_workload` knows, in its default order."""

Z95 = 1.959963984540054
"""Two-sided 95 % standard-normal quantile used for the Wald intervals."""


def _bucket(n: int) -> int:
    """Padded data length: 4096, 16384, 65536, ... (powers of 4).

    Fits of one family to data with a similar number of distinct values share one
    compilation; the padding (zero weights) costs a few vector operations.
    """
    size = 4096
    while size < n:
        size *= 4
    return size


def _padded(values: np.ndarray, counts: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Distinct values and their counts, padded with ``values[0]`` at weight 0."""
    size = _bucket(values.size)
    dtype = jnp.zeros(()).dtype
    v = np.full(size, values[0], dtype=np.float64)
    w = np.zeros(size, dtype=np.float64)
    v[: values.size] = values
    w[: values.size] = counts
    return jnp.asarray(v, dtype=dtype), jnp.asarray(w, dtype=dtype)


def _gradient_tolerance() -> float:
    """Stop when the gradient of the mean NLL (in ``u``) is below this."""
    return 1e-9 if jnp.zeros(()).dtype == jnp.float64 else 1e-4


@functools.partial(jax.jit, static_argnames=("cls",))
def _fit_core(starts, values, weights, max_value, tol, max_iter, *, cls):
    """Fit, observed information and summaries of one family, in one compilation.

    ``starts``: ``(S, k)`` unconstrained starting points (L-BFGS runs from each, vmapped;
    the lowest NLL wins); ``max_iter = 0`` evaluates at ``starts[0]`` (closed forms).
    ``values``/``weights``: distinct data values (decode steps, or prefill + shift) and
    counts, zero-padded. Everything returned is an array (host code converts).
    """
    total = jnp.sum(weights)

    def objective(u):
        return -jnp.sum(weights * cls.from_unconstrained(u)._log_density(values)) / total

    def run(u0):
        u, count = lbfgs_minimise(objective, u0, tol, max_iter, return_count=True)
        return u, objective(u), count

    if starts.shape[0] == 1:  # one start: skip the vmap (smaller program)
        us, nlls, counts = jax.tree.map(lambda x: x[None], run(starts[0]))
    else:
        us, nlls, counts = jax.vmap(run)(starts)
    best = jnp.argmin(jnp.where(jnp.isfinite(nlls), nlls, jnp.inf))
    u = cls._canonical(us[best])
    model = cls.from_unconstrained(u)
    out = {
        "u": u,
        "natural": model.natural(),
        "log_likelihood": -total * objective(u),
        "grad_norm": jnp.linalg.norm(jax.grad(objective)(u)),
        "iterations": counts[best],
        "hessian": jax.hessian(lambda u: total * objective(u))(u),
        "jacobian": jax.jacobian(lambda u: cls.from_unconstrained(u).natural())(u),
        "cdf_at": model._cdf_at(values),
        "cdf_left": model._cdf_left(values),
        "load_term_grad": jax.grad(lambda u: cls.from_unconstrained(u)._load_term())(u),
    }
    out.update(model._summary(max_value))
    return out


def _ks_distance(values: np.ndarray, counts: np.ndarray, cdf_at: np.ndarray, cdf_left: np.ndarray) -> float:
    """``sup_x |F_emp(x) - F(x)|`` from the distinct sorted values.

    ``cdf_at`` is ``F`` at each value, ``cdf_left`` its left limit there (``F(x - 1)``
    for an integer-valued model, ``F(x)`` for a continuous one). Both step functions
    are monotone between data points, so the supremum is attained at a value or just
    below one: this is exact, ties included.
    """
    cum = np.cumsum(counts) / counts.sum()
    before = cum - counts / counts.sum()
    return float(max(np.max(np.abs(cum - cdf_at)), np.max(np.abs(before - cdf_left))))


@dataclasses.dataclass(frozen=True)
class FamilyFit:
    """One fitted family.

    Attributes:
        kind: ``"decode"`` or ``"prefill"``.
        family: the family's name (one of [`DECODE_FIT_FAMILIES`][afdjax.DECODE_FIT_FAMILIES] or
            [`PREFILL_FIT_FAMILIES`][afdjax.PREFILL_FIT_FAMILIES]).
        model: the fitted [`DecodeDistribution`][afdjax.DecodeDistribution] /
            [`PrefillDistribution`][afdjax.PrefillDistribution].
        params: natural parameters (a dict).
        stderr: delta-method standard errors of ``params`` (NaN when the observed information
            is not positive definite, e.g. a mixture whose components coincide).
        ci95: Wald 95 % intervals of ``params``.
        log_likelihood: ``logL`` at the estimate.
        aic: ``2k - 2 logL``.
        bic: ``k log(n) - 2 logL``.
        ks: the Kolmogorov-Smirnov distance to the data.
        num_samples: ``n``, the rows fitted.
        method: ``"closed form"`` or ``"lbfgs"``.
        converged: whether the optimiser converged.
        iterations: optimiser iterations.
        grad_norm: gradient of the mean NLL in ``u`` (unconstrained) at the estimate.
        mean: of ``D`` (steps) or ``P`` (tokens).
        variance: of ``D`` or ``P``.
        moments: ``(E[D], E[D^2], E[D^3])`` or ``(E[P], E[P^2])``.
        load_term: the fit's contribution to ``theta``: the stationary mean decode index
            ``E[D(D-1)]/(2E[D])`` (decode) or ``E[P]`` (prefill).
        load_term_grad: gradient of ``load_term`` in ``u``, for the delta method.
        unconstrained_covariance: ``H^-1`` in ``u``, for the delta method.
        max_observed: the largest value in the data.
        tail_mass_beyond_max: the model's probability above ``max_observed``.
        truncated_load_term: ``load_term`` of the model conditioned on not exceeding
            ``max_observed`` (a trace capped at a maximum length and a model with mass beyond
            it differ there).
    """

    kind: str
    family: str
    model: eqx.Module
    params: dict
    stderr: dict
    ci95: dict
    log_likelihood: float
    aic: float
    bic: float
    ks: float
    num_samples: int
    method: str
    converged: bool
    iterations: int
    grad_norm: float
    mean: float
    variance: float
    moments: tuple
    load_term: float
    load_term_grad: np.ndarray
    unconstrained_covariance: np.ndarray
    max_observed: float
    tail_mass_beyond_max: float
    truncated_load_term: float

    @property
    def num_params(self) -> int:
        return len(self.params)

    @property
    def identifiable(self) -> bool:
        """Whether the observed information was positive definite."""
        return bool(np.all(np.isfinite(self.unconstrained_covariance)))

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (non-finite numbers become None)."""
        out = {
            "kind": self.kind,
            "family": self.family,
            "params": self.params,
            "stderr": self.stderr,
            "ci95": {k: list(v) for k, v in self.ci95.items()},
            "num_params": self.num_params,
            "num_samples": self.num_samples,
            "log_likelihood": self.log_likelihood,
            "aic": self.aic,
            "bic": self.bic,
            "ks": self.ks,
            "mean": self.mean,
            "variance": self.variance,
            "method": self.method,
            "converged": self.converged,
            "iterations": self.iterations,
            "max_observed": self.max_observed,
            "tail_mass_beyond_max": self.tail_mass_beyond_max,
        }
        if self.kind == "decode":
            out["stationary_mean_index"] = self.load_term
            out["stationary_mean_index_within_max"] = self.truncated_load_term
        else:
            out["shift"] = float(self.model.shift)
            out["mean_within_max"] = self.truncated_load_term
        return jsonable(out)


def _check_family(name: str, family, allowed: tuple[str, ...]) -> str:
    if not isinstance(family, str) or family not in allowed:
        raise ValueError(f"{name}={family!r} is not a known family; expected one of {', '.join(allowed)}")
    return family


def _check_families(name: str, families, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(families, str):
        families = (families,)
    try:
        families = tuple(families)
    except TypeError:
        raise ValueError(f"{name}={families!r} is invalid: expected a sequence of family names") from None
    if not families:
        raise ValueError(f"{name} is empty: expected one or more of {', '.join(allowed)}")
    for f in families:
        _check_family(name, f, allowed)
    return tuple(dict.fromkeys(families))


def _as_1d(name: str, values) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{name} must be an array of numbers, got {type(values).__name__}")
    try:
        arr = np.asarray(values)
    except Exception as err:  # ragged input and the like
        raise ValueError(f"{name} must be a 1-D array of numbers ({err})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: expected at least one request")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}")
    return arr


def _check_decode(decode) -> np.ndarray:
    arr = _as_1d("decode", decode)
    validate_lengths("decode", arr, minimum=1, integer=True)
    arr = arr.astype(np.float64)
    if np.unique(arr).size < 2:
        raise ValueError(
            f"decode has a single distinct value ({arr[0]:g}): a length distribution cannot be fitted to constant data"
        )
    return arr


def _check_shift(prefill_shift) -> float:
    return check_number("prefill_shift", prefill_shift, minimum=0.0, strict=False)


def _check_prefill(prefill, shift: float) -> np.ndarray:
    arr = _as_1d("prefill", prefill)
    validate_lengths("prefill", arr, minimum=0, integer=False)
    arr = arr.astype(np.float64)
    if shift == 0 and np.any(arr == 0):
        i = int(np.argmax(arr == 0))
        raise ValueError(
            f"prefill in record {i + 1} is 0, which prefill_shift=0 cannot model (the families need "
            "P + prefill_shift > 0); use prefill_shift=1 (the default)"
        )
    if np.unique(arr).size < 2:
        raise ValueError(
            f"prefill has a single distinct value ({arr[0]:g}): a length distribution cannot be fitted to constant data"
        )
    return arr


def _check_max_iter(max_iter) -> int:
    return check_int("max_iter", max_iter, 1)


def _fit_family(kind: str, cls, x: np.ndarray, shift: float, closed_form: bool, max_iter: int) -> FamilyFit:
    """Fit ``cls`` to samples ``x`` (decode steps, or prefill tokens + shift)."""
    values, counts = np.unique(x, return_counts=True)
    values = values.astype(np.float64)
    counts = counts.astype(np.float64)
    n = int(counts.sum())
    pv, pw = _padded(values, counts)
    dtype = pv.dtype
    start = cls._closed_form(values, counts) if closed_form else None
    if start is not None:
        starts, iterations_allowed, method = [start], 0, "closed form"
    else:
        starts, iterations_allowed, method = cls._initial(values, counts), max_iter, "lbfgs"
    tol = _gradient_tolerance()
    out = _fit_core(
        jnp.asarray(np.stack(starts), dtype=dtype),
        pv,
        pw,
        jnp.asarray(values[-1], dtype=dtype),
        jnp.asarray(tol, dtype=dtype),
        jnp.asarray(iterations_allowed, dtype=jnp.int32),
        cls=cls,
    )
    out = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    natural = out["natural"]
    model = cls(*natural) if kind == "decode" else cls(*natural, shift)
    grad_norm = float(out["grad_norm"])
    converged = math.isfinite(grad_norm) and grad_norm < 10 * tol
    k = natural.size
    hess, jac = out["hessian"], out["jacobian"]
    cov_u = np.full((k, k), np.nan)
    if np.all(np.isfinite(hess)):
        hess = 0.5 * (hess + hess.T)
        eig = np.linalg.eigvalsh(hess)
        if eig.min() > 1e-9 * abs(eig.max()):
            cov_u = np.linalg.inv(hess)
    cov = jac @ cov_u @ jac.T
    var = np.diag(cov)
    se = np.sqrt(np.where(var >= 0, var, np.nan))
    params = {name: float(natural[i]) for i, name in enumerate(cls.param_names)}
    stderr = {name: float(se[i]) for i, name in enumerate(cls.param_names)}
    ci95 = {name: (params[name] - Z95 * stderr[name], params[name] + Z95 * stderr[name]) for name in cls.param_names}
    log_lik = float(out["log_likelihood"])
    moments = tuple(float(m) for m in out["moments"])
    mean = float(out["mean"])
    if kind == "prefill":  # the engine fitted X = P + shift
        mean -= shift
        moments = (mean, float(out["variance"]) + mean**2)
    return FamilyFit(
        kind=kind,
        family=cls.family,
        model=model,
        params=params,
        stderr=stderr,
        ci95=ci95,
        log_likelihood=log_lik,
        aic=2 * k - 2 * log_lik,
        bic=k * math.log(n) - 2 * log_lik,
        ks=_ks_distance(values, counts, out["cdf_at"][: values.size], out["cdf_left"][: values.size]),
        num_samples=n,
        method=method,
        converged=bool(converged),
        iterations=int(out["iterations"]),
        grad_norm=grad_norm,
        mean=mean,
        variance=float(out["variance"]),
        moments=moments,
        load_term=mean if kind == "prefill" else float(out["load_term"]),
        load_term_grad=out["load_term_grad"],
        unconstrained_covariance=cov_u,
        max_observed=float(values[-1] - shift),
        tail_mass_beyond_max=float(1.0 - out["cdf_at"][values.size - 1]),
        truncated_load_term=float(out["truncated_load_term"]) - shift,
    )


def fit_decode(decode, family: str, *, closed_form: bool = True, max_iter: int = 500) -> FamilyFit:
    """Maximum-likelihood fit of one decode-length family.

    **Arguments:**

    - ``decode``: shape ``(n,)``, integer decode steps ``>= 1``.
    - ``family``: one of :data:`DECODE_FIT_FAMILIES`.
    - ``closed_form``: use the closed-form MLE where one exists (``geometric``); with
      ``False`` the optimiser is used for every family (to check it).
    - ``max_iter``: L-BFGS iteration limit.
    """
    cls = DECODE_CLASSES[_check_family("family", family, DECODE_FIT_FAMILIES)]
    max_iter = _check_max_iter(max_iter)
    d = _check_decode(decode)
    return _fit_family("decode", cls, d, 0.0, bool(closed_form), max_iter)


def fit_prefill(
    prefill, family: str, *, prefill_shift: float = 1.0, closed_form: bool = True, max_iter: int = 500
) -> FamilyFit:
    """Maximum-likelihood fit of one prefill-length family to ``X = prefill + prefill_shift``.

    **Arguments:**

    - ``prefill``: shape ``(n,)``, prompt tokens ``>= 0`` (real values allowed).
    - ``family``: one of :data:`PREFILL_FIT_FAMILIES`.
    - ``prefill_shift``: tokens added before fitting (see the module docstring).
    - ``closed_form``: use the closed-form MLE where one exists (``exponential``,
      ``lognormal``); with ``False`` the optimiser is used (to check it).
    - ``max_iter``: L-BFGS iteration limit.
    """
    cls = PREFILL_CLASSES[_check_family("family", family, PREFILL_FIT_FAMILIES)]
    max_iter = _check_max_iter(max_iter)
    shift = _check_shift(prefill_shift)
    p = _check_prefill(prefill, shift)
    return _fit_family("prefill", cls, p + shift, shift, bool(closed_form), max_iter)
