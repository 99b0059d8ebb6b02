"""Prefill-length families: continuous distributions of prompt tokens ``P``.

These are model inputs: [`fit_workload`][afdjax.fit_workload] fits them to traces and
[`FittedWorkload`][afdjax.FittedWorkload] simulates them.

Token counts are treated as continuous. Because a prompt may be empty (``P = 0``) and
the lognormal and gamma densities need a positive argument, every family models
``X = P + shift`` (the fits use ``prefill_shift = 1`` token by default) and the
distribution of ``P`` is that of ``X - shift``: ``E[P] = E[X] - shift``,
``Var P = Var X``. The parameters are those of ``X``.

* ``exponential`` -- ``X ~ Exp(mean = scale)`` (the 1-parameter special case of gamma),
* ``gamma`` -- ``X ~ Gamma(shape, scale)``,
* ``lognormal`` -- ``X ~ LogNormal(mu, sigma)``.

Sampling is by the inverse CDF of ``X`` (pathwise differentiable in the parameters):
closed form for the exponential and the lognormal, Newton's method on the regularised
incomplete gamma function for the gamma (``gamma_quantile``). A sampled ``P`` lies
in ``(-shift, 0)`` with probability ``F_X(shift)`` (tiny for prompts of hundreds of
tokens); such draws are kept, so that simulated loads have exactly the family's moments.
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammainc, gammaincc, gammaln, ndtr

from .._validate import float_leaf

GAMMA_NEWTON_STEPS = 16
"""Newton steps (in log x) of ``gamma_quantile``; quadratic convergence from the start."""


def _normal_quantile(u: jax.Array) -> jax.Array:
    """``Phi^-1(u) = sqrt(2) erfinv(2u - 1)`` (XLA's fused erf_inv: fast on CPU).

    ``2u - 1`` is capped just below 1: in float32 the largest uniform draw rounds to
    ``u = 1`` (probability ``2^-24`` per draw), where ``erfinv`` is infinite (an infinite
    prefill, and ``nan`` gradients through the masked, unused draws)."""
    x = jnp.minimum(2.0 * u - 1.0, jnp.nextafter(jnp.ones((), u.dtype), jnp.zeros((), u.dtype)))
    return jnp.sqrt(2.0).astype(u.dtype) * jax.lax.erf_inv(x)


def gamma_quantile(shape: jax.Array, u: jax.Array) -> jax.Array:
    """Quantile of the standard gamma distribution (scale 1) at ``u`` in ``(0, 1)``.

    Start: ``(u Gamma(k+1))^(1/k)`` (a lower bound, since ``F(x) <= x^k / Gamma(k+1)``)
    for ``u < 1/2``, otherwise the larger of it and the Wilson-Hilferty approximation; then ``GAMMA_NEWTON_STEPS``
    Newton steps in ``y = log x`` on ``log F(e^y) = log u`` (``u < 1/2``) or on
    ``log(1 - F(e^y)) = log(1 - u)`` (``u >= 1/2``), which are nearly linear in the
    tails and concave in ``y`` (``log X`` has a log-concave density), so the first
    converges monotonically from the lower bound; steps of the second are clipped to
    ``[-2, 2]``. Pure JAX; the derivative follows the converged iteration.
    """
    k = jnp.asarray(shape, dtype=u.dtype)
    z = _normal_quantile(u)
    c = 1.0 / (9.0 * k)
    wh = k * jnp.maximum(1.0 - c + z * jnp.sqrt(c), 1e-3) ** 3
    low = jnp.exp((jnp.log(u) + gammaln(k + 1.0)) / k)
    lower = u < 0.5
    # log F(e^y) and log(1 - F(e^y)) are concave in y (log X has a log-concave density):
    # from the lower bound, Newton on the first increases monotonically to the root.
    y = jnp.where(lower, jnp.log(low), jnp.log(jnp.maximum(wh, low)))
    target = jnp.where(lower, jnp.log(u), jnp.log1p(-u))

    def newton(_, y):
        x = jnp.exp(y)
        density_times_x = jnp.exp(k * y - x - gammaln(k))
        tail = jnp.where(lower, gammainc(k, x), gammaincc(k, x))
        slope = jnp.where(lower, density_times_x, -density_times_x) / tail
        step = (jnp.log(tail) - target) / slope
        step = jnp.where(jnp.isfinite(step), step, 0.0)
        return y - jnp.where(lower, step, jnp.clip(step, -2.0, 2.0))

    # A rolled loop (static trip count: reverse-mode differentiable) keeps the compiled
    # program small; unrolled, the incomplete-gamma kernels dominate compile time.
    return jnp.exp(jax.lax.fori_loop(0, GAMMA_NEWTON_STEPS, newton, y))


class PrefillDistribution(eqx.Module):
    """A continuous distribution of prefill tokens ``P``, modelled as ``X - shift``.

    ``X = P + shift > 0`` follows the family; ``shift`` (tokens, default 0) is fixed,
    not fitted (see the module docstring). ``log_pdf``, ``cdf``, ``mean`` and
    ``variance`` are those of ``P``.
    """

    family: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]]

    @classmethod
    @abc.abstractmethod
    def from_unconstrained(cls, u: jax.Array, shift=0.0) -> PrefillDistribution:
        """The distribution with unconstrained parameters ``u`` and the given shift."""

    @abc.abstractmethod
    def to_unconstrained(self) -> jax.Array:
        """Inverse of ``from_unconstrained`` (the shift is not included)."""

    @abc.abstractmethod
    def _log_pdf_x(self, x):
        """Log density of ``X`` at ``x > 0``."""

    @abc.abstractmethod
    def _cdf_x(self, x):
        """CDF of ``X`` at ``x > 0``."""

    @abc.abstractmethod
    def _mean_x(self):
        """``E[X]``."""

    @abc.abstractmethod
    def variance(self) -> jax.Array:
        """``Var P = Var X`` (tokens^2)."""

    @abc.abstractmethod
    def _quantile_x(self, u: jax.Array) -> jax.Array:
        """Inverse CDF of ``X`` at ``u`` in ``(0, 1)``."""

    def _sample(self, u: jax.Array) -> jax.Array:
        """Prefill tokens ``P = X - shift`` from uniforms ``u`` (inverse CDF)."""
        return self._quantile_x(u) - self.shift.astype(u.dtype)

    def natural(self) -> jax.Array:
        return jnp.stack([jnp.asarray(getattr(self, name)) for name in self.param_names])

    def params(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in self.param_names}

    def log_pdf(self, p: jax.Array) -> jax.Array:
        """Log density of ``P`` at ``p`` tokens (``-inf`` where ``p + shift <= 0``)."""
        x = jnp.asarray(p, dtype=jnp.zeros(()).dtype) + self.shift
        inside = x > 0
        return jnp.where(inside, self._log_pdf_x(jnp.where(inside, x, 1.0)), -jnp.inf)

    def cdf(self, p: jax.Array) -> jax.Array:
        """``P(P <= p)``."""
        x = jnp.asarray(p, dtype=jnp.zeros(()).dtype) + self.shift
        inside = x > 0
        return jnp.where(inside, self._cdf_x(jnp.where(inside, x, 1.0)), 0.0)

    def mean(self) -> jax.Array:
        """``E[P] = E[X] - shift`` (tokens)."""
        return self._mean_x() - self.shift

    def second_moment(self) -> jax.Array:
        """``E[P^2]`` (tokens^2)."""
        return self.variance() + self.mean() ** 2

    # ---- hooks for the fitting engine: it works on x = P + shift with a zero-shift model.
    def _log_density(self, x):
        return self._log_pdf_x(x)

    def _cdf_at(self, x):
        return self._cdf_x(x)

    def _cdf_left(self, x):
        return self._cdf_x(x)

    @abc.abstractmethod
    def _partial_mean_x(self, x):
        """``E[X; X <= x]``."""

    def truncated_mean(self, max_tokens) -> jax.Array:
        """``E[P | P <= max_tokens]`` (tokens): the mean without the tail above a trace's longest prompt."""
        x = jnp.asarray(max_tokens, dtype=jnp.zeros(()).dtype) + self.shift
        return self._partial_mean_x(x) / self._cdf_x(x) - self.shift

    def _summary(self, max_value) -> dict:
        mean, var = self._mean_x(), self.variance()
        return {
            "moments": jnp.stack([mean, var + mean**2]),
            "mean": mean,
            "variance": var,
            "load_term": mean,
            "truncated_load_term": self._partial_mean_x(max_value) / self._cdf_x(max_value),  # of X
        }

    def _load_term(self):
        return self._mean_x()

    @classmethod
    def _canonical(cls, u):
        return u

    @classmethod
    def _initial(cls, x: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    @classmethod
    def _closed_form(cls, x: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
        """The closed-form MLE as an unconstrained vector, or None when there is none."""
        return None


def _weighted_mean_var(x: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    w = counts / counts.sum()
    m = float(np.sum(w * x))
    return m, float(np.sum(w * (x - m) ** 2))


class ExponentialPrefill(PrefillDistribution):
    """``X = P + shift ~ Exponential`` with mean ``scale`` (tokens). Unconstrained: ``log scale``.

    Arguments:
        scale: mean of ``P + shift`` (tokens), ``> 0``.
        shift: ``>= 0`` tokens added before fitting, so that ``P = 0`` has positive density (default 0).
    """

    scale: jax.Array = eqx.field(converter=float_leaf)
    shift: jax.Array = eqx.field(converter=float_leaf, default=0.0)
    family: ClassVar[str] = "exponential"
    param_names: ClassVar[tuple[str, ...]] = ("scale",)

    @classmethod
    def from_unconstrained(cls, u, shift=0.0):
        return cls(jnp.exp(u[0]), shift)

    def to_unconstrained(self):
        return jnp.stack([jnp.log(self.scale)])

    def _log_pdf_x(self, x):
        return -jnp.log(self.scale) - x / self.scale

    def _cdf_x(self, x):
        return -jnp.expm1(-x / self.scale)

    def _mean_x(self):
        return self.scale

    def _partial_mean_x(self, x):
        # E[X; X <= x] = scale (1 - e^-z (1 + z)), z = x / scale
        z = x / self.scale
        return self.scale * -jnp.expm1(jnp.log1p(z) - z)

    def _quantile_x(self, u):
        return -self.scale * jnp.log1p(-u)

    def variance(self):
        return self.scale**2

    @classmethod
    def _closed_form(cls, x, counts):
        return np.array([math.log(_weighted_mean_var(x, counts)[0])])

    @classmethod
    def _initial(cls, x, counts):
        return [cls._closed_form(x, counts)]


class GammaPrefill(PrefillDistribution):
    """``X = P + shift ~ Gamma(shape, scale)``: density ``x^(k-1) e^(-x/s) / (Gamma(k) s^k)``.

    Unconstrained: ``(log shape, log scale)``. Starts from the moments
    ``shape = m^2 / v``, ``scale = v / m``.

    Arguments:
        shape: ``k > 0`` (dimensionless).
        scale: ``s > 0`` (tokens).
        shift: ``>= 0`` tokens added to ``P`` (default 0).
    """

    shape: jax.Array = eqx.field(converter=float_leaf)
    scale: jax.Array = eqx.field(converter=float_leaf)
    shift: jax.Array = eqx.field(converter=float_leaf, default=0.0)
    family: ClassVar[str] = "gamma"
    param_names: ClassVar[tuple[str, ...]] = ("shape", "scale")

    @classmethod
    def from_unconstrained(cls, u, shift=0.0):
        return cls(jnp.exp(u[0]), jnp.exp(u[1]), shift)

    def to_unconstrained(self):
        return jnp.stack([jnp.log(self.shape), jnp.log(self.scale)])

    def _log_pdf_x(self, x):
        k, s = self.shape, self.scale
        return (k - 1) * jnp.log(x) - x / s - gammaln(k) - k * jnp.log(s)

    def _cdf_x(self, x):
        return gammainc(self.shape, x / self.scale)

    def _mean_x(self):
        return self.shape * self.scale

    def _partial_mean_x(self, x):
        return self.shape * self.scale * gammainc(self.shape + 1, x / self.scale)

    def _quantile_x(self, u):
        return self.scale * gamma_quantile(self.shape, u)

    def variance(self):
        return self.shape * self.scale**2

    @classmethod
    def _initial(cls, x, counts):
        m, v = _weighted_mean_var(x, counts)
        return [np.array([math.log(m * m / v), math.log(v / m)])]


class LogNormalPrefill(PrefillDistribution):
    """``X = P + shift ~ LogNormal(mu, sigma)`` (``log X ~ Normal(mu, sigma^2)``).

    Unconstrained: ``(mu, log sigma)``. Closed-form MLE: mean and population standard
    deviation of ``log X``.

    Arguments:
        mu: mean of ``log X`` (``X`` in tokens).
        sigma: standard deviation of ``log X``, ``> 0``.
        shift: ``>= 0`` tokens added to ``P`` (default 0).
    """

    mu: jax.Array = eqx.field(converter=float_leaf)
    sigma: jax.Array = eqx.field(converter=float_leaf)
    shift: jax.Array = eqx.field(converter=float_leaf, default=0.0)
    family: ClassVar[str] = "lognormal"
    param_names: ClassVar[tuple[str, ...]] = ("mu", "sigma")

    @classmethod
    def from_unconstrained(cls, u, shift=0.0):
        return cls(u[0], jnp.exp(u[1]), shift)

    def to_unconstrained(self):
        return jnp.stack([self.mu, jnp.log(self.sigma)])

    def _log_pdf_x(self, x):
        z = (jnp.log(x) - self.mu) / self.sigma
        return -jnp.log(x) - jnp.log(self.sigma) - 0.5 * math.log(2 * math.pi) - 0.5 * z**2

    def _cdf_x(self, x):
        return ndtr((jnp.log(x) - self.mu) / self.sigma)

    def _mean_x(self):
        return jnp.exp(self.mu + 0.5 * self.sigma**2)

    def _partial_mean_x(self, x):
        return self._mean_x() * ndtr((jnp.log(x) - self.mu - self.sigma**2) / self.sigma)

    def _quantile_x(self, u):
        return jnp.exp(self.mu + self.sigma * _normal_quantile(u))

    def variance(self):
        return jnp.expm1(self.sigma**2) * jnp.exp(2 * self.mu + self.sigma**2)

    @classmethod
    def _closed_form(cls, x, counts):
        m, v = _weighted_mean_var(np.log(x), counts)
        return np.array([m, 0.5 * math.log(v)])

    @classmethod
    def _initial(cls, x, counts):
        return [cls._closed_form(x, counts)]


PREFILL_CLASSES: dict[str, type[PrefillDistribution]] = {
    c.family: c for c in (ExponentialPrefill, GammaPrefill, LogNormalPrefill)
}
