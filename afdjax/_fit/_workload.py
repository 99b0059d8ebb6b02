"""Maximum-likelihood fits of request-length distributions, and the load they imply.

A request trace gives pairs ``(P_j, D_j)``: prefill tokens ``P >= 0`` and decode steps
``D >= 1`` (one output token per step, see :func:`afdjax.load_trace`). This module fits
parametric families to each margin, scores them (log-likelihood, AIC, BIC,
Kolmogorov-Smirnov distance) and compares the stationary per-slot load ``theta`` of the
fitted model with the trace's own plug-in value (PAPER.md section 2).

Decode families (support ``{1, 2, ...}``)
-----------------------------------------
* ``geometric`` -- ``P(D=d) = p (1-p)^(d-1)``, the paper's v1 model (``mu_D = (1-p)/p``
  is the stationary mean decode index, one less than ``E[D] = 1/p``).
* ``negative_binomial`` -- ``D = 1 + K`` with ``K ~ NB(n, p)`` failures before the
  ``n``-th success (``n > 0`` real; ``n = 1`` is the geometric).
* ``lognormal`` -- discretised: ``D = ceil(X)``, ``X ~ LogNormal(mu, sigma)``, so
  ``P(D=d) = F(d) - F(d-1)`` for ``d >= 2`` and ``P(D=1) = F(1)``.
* ``geometric_mixture`` -- ``weight * Geometric(p1) + (1 - weight) * Geometric(p2)``
  with the label fixed by ``p1 >= p2`` (component 1 is the short one).

Prefill families (continuous)
-----------------------------
Token counts are treated as continuous. Because a prompt may be empty (``P = 0``) and
the lognormal and gamma densities need a positive argument, every prefill family models
``X = P + prefill_shift`` (default ``prefill_shift = 1`` token) and the reported
distribution of ``P`` is that of ``X - prefill_shift``: ``E[P] = E[X] - shift``,
``Var P = Var X``. The parameters reported are those of ``X``. With
``prefill_shift = 0`` the families model ``P`` itself (then ``P`` must be ``> 0``). The
shift moves mass ``F_X(shift)`` below ``P = 0``; for prompts of hundreds of tokens it
is negligible.

* ``exponential`` -- ``X ~ Exp(mean = scale)`` (the 1-parameter special case of gamma),
* ``gamma`` -- ``X ~ Gamma(shape, scale)``,
* ``lognormal`` -- ``X ~ LogNormal(mu, sigma)``.

Estimation
----------
Closed-form MLEs are used where they exist (geometric ``p = 1 / mean(D)``, exponential
``scale = mean(X)``, lognormal prefill ``mu, sigma`` = mean and population standard
deviation of ``log X``). The other families minimise the mean negative log-likelihood
with ``optax.lbfgs`` (zoom line search) under ``jax.jit`` over an unconstrained
parametrisation (logits for probabilities and weights, logs for positive parameters),
from moment-matched starting values (the mixture also from a split at the median; the
better optimum wins). The data enter as distinct values with counts, zero-padded so that
data of similar size share one compilation.

Uncertainty: the observed Fisher information is ``jax.hessian`` of the total negative
log-likelihood with respect to the unconstrained parameters ``u`` at the optimum;
``Cov(u) = H^-1`` and the natural parameters get ``Cov = J Cov(u) J^T`` (delta method,
``J = d natural / d u``). Standard errors and the symmetric Wald intervals
``estimate +- 1.96 se`` are reported **for the natural parameters** (``p``, ``n``,
``mu``, ``sigma``, ...). Where the Hessian is not positive definite (e.g. a mixture
whose components coincide) they are NaN.

Run with ``jax.config.update("jax_enable_x64", True)``: in float32 the fits run, but
the gradient tolerance is 1e-4 instead of 1e-9, some optimised fits stop at the
iteration limit (``converged`` is then False) and the Hessians are noisy.

Each family compiles once per padded data length (4096, 16384, ... distinct values), a
second or two on a CPU; later fits of that family reuse the compilation.

Load implied by a fit
---------------------
The stationary slot is length-biased (PAPER.md section 2): a slot holds request ``j``
with probability proportional to ``D_j``, at an index uniform in ``[0, D_j)``. With ``P``
independent of ``D`` this gives

    theta = E[P] + E[D (D - 1)] / (2 E[D]),
    sigma^2 = (E[D] E[P^2] + E[P] E[D (D-1)] + E[D (D-1)(2D-1)] / 6) / E[D] - theta^2.

The second term of ``theta`` is the stationary mean decode index (``(1-p)/p`` for the
geometric). It is compared with the trace's paired plug-in
``theta_np = sum(D P + D (D-1)/2) / sum(D)`` (which keeps any P-D correlation) and with
``theta_independent_np = mean(P) + sum(D (D-1)/2) / sum(D)`` (the plug-in after
breaking the pairing): ``theta_independent_np - theta_np`` is the part of a gap that no
fit of the two margins can close, ``theta_fit - theta_independent_np`` the part due to
the fitted families (``WorkloadFit.theta_gap_parts`` splits it into the prefill mean
and the decode index). Both family terms are tail-sensitive: ``E[D(D-1)]/(2E[D])``
weighs a request by ``D^2``, so a trace whose longest requests carry most of
``sum D(D-1)/2`` (``plugin["decode_top1_share"]``), or a trace capped at a maximum
length that a fitted family extrapolates beyond (``FamilyFit.truncated_load_term``),
can give a ``theta_fit`` off by a few percent even from the family with the best AIC.

Usage::

    fit = fit_trace("azure-conv")                  # or fit_workload(prefill, decode)
    print(fit.format_text())
    fit.best_decode, fit.theta_fit, fit.theta_np   # 'lognormal', 1384.4, 1226.5
    fit.decode["geometric"].ci95["p"]              # (0.00467, 0.00480)
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import os
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import betainc, gammainc, gammaln, log_ndtr, ndtr

from .._json import jsonable
from .._data import read_trace
from .._workload._core import validate_lengths, float_leaf

DECODE_FIT_FAMILIES = ("geometric", "negative_binomial", "lognormal", "geometric_mixture")
"""Decode-length families :func:`fit_workload` knows, in its default order."""

PREFILL_FIT_FAMILIES = ("exponential", "gamma", "lognormal")
"""Prefill-length families :func:`fit_workload` knows, in its default order."""

Z95 = 1.959963984540054
"""Two-sided 95 % standard-normal quantile used for the Wald intervals."""

LOGNORMAL_SUM_TERMS = 1 << 16
"""Terms ``d = 1 .. 65536`` summed exactly for the discretised lognormal's moments."""


def _log1mexp(x: jax.Array) -> jax.Array:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (Maechler 2012)."""
    near = jnp.log(-jnp.expm1(jnp.maximum(x, -0.6931471805599453)))
    far = jnp.log1p(-jnp.exp(jnp.minimum(x, -0.6931471805599453)))
    return jnp.where(x > -0.6931471805599453, near, far)


def _is_support(d: jax.Array) -> jax.Array:
    return (d >= 1) & (d == jnp.floor(d))


# ============================================================================ decode
class DecodeDistribution(eqx.Module):
    """A distribution of decode steps ``D`` on ``{1, 2, ...}``.

    Subclasses hold their natural parameters as array leaves (so fitted models can be
    vmapped and differentiated) and map them to and from an unconstrained vector ``u``
    (``from_unconstrained`` / ``to_unconstrained``) for the optimiser.
    """

    family: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]]

    @classmethod
    @abc.abstractmethod
    def from_unconstrained(cls, u: jax.Array) -> "DecodeDistribution":
        """The distribution with unconstrained parameters ``u`` (shape ``(k,)``)."""

    @abc.abstractmethod
    def to_unconstrained(self) -> jax.Array:
        """Inverse of :meth:`from_unconstrained`."""

    @abc.abstractmethod
    def log_pmf(self, d: jax.Array) -> jax.Array:
        """``log P(D = d)`` elementwise; ``-inf`` off the support."""

    @abc.abstractmethod
    def cdf(self, d: jax.Array) -> jax.Array:
        """``P(D <= d)`` elementwise (``d`` real: ``P(D <= floor(d))``)."""

    @abc.abstractmethod
    def raw_moments(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(E[D], E[D^2], E[D^3])`` in steps, steps^2, steps^3."""

    def natural(self) -> jax.Array:
        """The natural parameters as a vector, in the order of ``param_names``."""
        return jnp.stack([jnp.asarray(getattr(self, name)) for name in self.param_names])

    def params(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in self.param_names}

    def mean(self) -> jax.Array:
        """``E[D]`` (steps)."""
        return self.raw_moments()[0]

    def variance(self) -> jax.Array:
        """``Var D`` (steps^2)."""
        m1, m2, _ = self.raw_moments()
        return m2 - m1**2

    def stationary_mean_index(self) -> jax.Array:
        """``E[D (D-1)] / (2 E[D])``: mean decode index of the length-biased slot (steps).

        Equals the paper's ``mu_D = (1-p)/p`` for the geometric.
        """
        m1, m2, _ = self.raw_moments()
        return (m2 - m1) / (2 * m1)

    def truncated_stationary_mean_index(self, max_steps) -> jax.Array:
        """The stationary mean index of ``D`` conditioned on ``D <= max_steps`` (steps).

        Summed over ``d = 1 .. min(max_steps, LOGNORMAL_SUM_TERMS)``; NaN if
        ``max_steps`` exceeds that grid. Compares a fit with a trace whose lengths are
        capped (a model's mass beyond the trace's largest request is then extrapolation).
        """
        d = jnp.arange(1, LOGNORMAL_SUM_TERMS + 1, dtype=jnp.zeros(()).dtype)
        pmf = jnp.where(d <= max_steps, jnp.exp(self.log_pmf(d)), 0.0)
        value = jnp.sum(d * (d - 1) * pmf) / (2 * jnp.sum(d * pmf))
        return jnp.where(max_steps <= LOGNORMAL_SUM_TERMS, value, jnp.nan)

    # ---- hooks for the fitting engine
    def _log_density(self, x):
        return self.log_pmf(x)

    def _cdf_at(self, x):
        return self.cdf(x)

    def _cdf_left(self, x):
        return self.cdf(x - 1)

    def _summary(self, max_value) -> dict:
        m1, m2, m3 = self.raw_moments()
        return dict(
            moments=jnp.stack([m1, m2, m3]),
            mean=m1,
            variance=m2 - m1**2,
            load_term=(m2 - m1) / (2 * m1),
            truncated_load_term=self.truncated_stationary_mean_index(max_value),
        )

    def _load_term(self):
        return self.stationary_mean_index()

    @classmethod
    def _canonical(cls, u):
        return u

    @classmethod
    def _initial(cls, values: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
        """Moment-matched starting points (unconstrained), one or more."""
        raise NotImplementedError

    @classmethod
    def _closed_form(cls, values: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
        """The closed-form MLE as an unconstrained vector, or None when there is none."""
        return None


def _logit(p):
    return jnp.log(p) - jnp.log1p(-p)


class GeometricDecode(DecodeDistribution):
    """``P(D = d) = p (1-p)^(d-1)``, ``d >= 1``; ``E[D] = 1/p``. Unconstrained: ``logit p``."""

    p: jax.Array = eqx.field(converter=float_leaf)
    family: ClassVar[str] = "geometric"
    param_names: ClassVar[tuple[str, ...]] = ("p",)

    @classmethod
    def from_unconstrained(cls, u):
        return cls(jax.nn.sigmoid(u[0]))

    def to_unconstrained(self):
        return jnp.stack([_logit(self.p)])

    def log_pmf(self, d):
        d = jnp.asarray(d, dtype=self.p.dtype)
        value = jnp.log(self.p) + (d - 1) * jnp.log1p(-self.p)
        return jnp.where(_is_support(d), value, -jnp.inf)

    def cdf(self, d):
        k = jnp.floor(jnp.asarray(d, dtype=self.p.dtype))
        return jnp.where(k >= 1, -jnp.expm1(jnp.maximum(k, 0) * jnp.log1p(-self.p)), 0.0)

    def raw_moments(self):
        p = self.p
        return 1 / p, (2 - p) / p**2, (p**2 - 6 * p + 6) / p**3

    @classmethod
    def _closed_form(cls, values, counts):
        return np.array([_logit_np(np.sum(counts) / np.sum(counts * values))])

    @classmethod
    def _initial(cls, values, counts):
        return [cls._closed_form(values, counts)]


class NegativeBinomialDecode(DecodeDistribution):
    """``D = 1 + K``, ``P(K = k) = Gamma(k+n) / (Gamma(n) k!) p^n (1-p)^k`` (``n > 0`` real).

    ``E[D] = 1 + n (1-p)/p``. Unconstrained: ``(log n, logit p)``. The CDF uses the
    regularised incomplete beta function, ``P(K <= k) = I_p(n, k + 1)``.
    """

    n: jax.Array = eqx.field(converter=float_leaf)
    p: jax.Array = eqx.field(converter=float_leaf)
    family: ClassVar[str] = "negative_binomial"
    param_names: ClassVar[tuple[str, ...]] = ("n", "p")

    @classmethod
    def from_unconstrained(cls, u):
        return cls(jnp.exp(u[0]), jax.nn.sigmoid(u[1]))

    def to_unconstrained(self):
        return jnp.stack([jnp.log(self.n), _logit(self.p)])

    def log_pmf(self, d):
        d = jnp.asarray(d, dtype=self.p.dtype)
        k = jnp.maximum(d - 1, 0)
        value = (
            gammaln(k + self.n) - gammaln(self.n) - gammaln(k + 1) + self.n * jnp.log(self.p) + k * jnp.log1p(-self.p)
        )
        return jnp.where(_is_support(d), value, -jnp.inf)

    def cdf(self, d):
        k = jnp.floor(jnp.asarray(d, dtype=self.p.dtype)) - 1
        return jnp.where(k >= 0, betainc(self.n, jnp.maximum(k, 0) + 1, self.p), 0.0)

    def raw_moments(self):
        # Cumulants of K: n q/p, n q/p^2, n q (1+q)/p^3; raw moments of D = 1 + K.
        n, p = self.n, self.p
        q = 1 - p
        k1, k2, k3 = n * q / p, n * q / p**2, n * q * (1 + q) / p**3
        m1 = k1
        m2 = k2 + k1**2
        m3 = k3 + 3 * k2 * k1 + k1**3
        return 1 + m1, 1 + 2 * m1 + m2, 1 + 3 * m1 + 3 * m2 + m3

    @classmethod
    def _initial(cls, values, counts):
        k = values - 1
        w = counts / counts.sum()
        m = float(np.sum(w * k))
        v = float(np.sum(w * (k - m) ** 2))
        m = max(m, 1e-3)
        if v > m * (1 + 1e-6):
            p = m / v
            n = m * p / (1 - p)
        else:  # under-dispersed: start near the Poisson limit
            p = 0.99
            n = m * p / (1 - p)
        return [np.array([math.log(n), math.log(p) - math.log1p(-p)])]


class LogNormalDecode(DecodeDistribution):
    """Discretised lognormal: ``D = ceil(X)``, ``X ~ LogNormal(mu, sigma)``.

    ``P(D = d) = Phi((log d - mu)/sigma) - Phi((log(d-1) - mu)/sigma)`` for ``d >= 2``
    and ``P(D = 1) = Phi(-mu/sigma)``, computed as a stable log-difference of normal
    CDFs. Unconstrained: ``(mu, log sigma)``.

    **Moments** have no closed form. ``E[D^k]`` sums ``d^k P(D=d)`` exactly over
    ``d = 1 .. LOGNORMAL_SUM_TERMS`` (65,536; by parts, from the survival function)
    and adds the tail ``D > 65536``
    analytically, treating ``ceil(X)`` there as ``X + U`` with ``U ~ Uniform(0, 1)``
    independent of ``X`` (the fractional part of a smooth density spread over many
    units): ``E[(X+U)^k; X > N] = sum_j C(k,j) E[X^j; X > N] / (k - j + 1)`` with the
    lognormal partial moments ``E[X^j; X > N] = exp(j mu + j^2 sigma^2/2)
    Phi((mu + j sigma^2 - log N)/sigma)``. For fitted decode lengths (medians of tens to
    hundreds of steps) the tail holds a negligible mass; for very heavy tails it carries
    the higher moments, which are then the model's extrapolation, not the data's.
    """

    mu: jax.Array = eqx.field(converter=float_leaf)
    sigma: jax.Array = eqx.field(converter=float_leaf)
    family: ClassVar[str] = "lognormal"
    param_names: ClassVar[tuple[str, ...]] = ("mu", "sigma")

    @classmethod
    def from_unconstrained(cls, u):
        return cls(u[0], jnp.exp(u[1]))

    def to_unconstrained(self):
        return jnp.stack([self.mu, jnp.log(self.sigma)])

    def log_pmf(self, d):
        d = jnp.asarray(d, dtype=self.mu.dtype)
        first = d <= 1
        b = (jnp.log(jnp.maximum(d, 1)) - self.mu) / self.sigma
        a = (jnp.log(jnp.where(first, 1.0, d - 1)) - self.mu) / self.sigma
        a = jnp.where(first, b - 1, a)  # keeps the unused branch finite (no NaN gradients)
        # log(Phi(b) - Phi(a)), through the upper tail when a > 0; one log_ndtr call
        # (its graph is large: fewer call sites compile faster).
        upper = a > 0
        lo_hi = log_ndtr(jnp.stack([jnp.where(upper, -b, a), jnp.where(upper, -a, b)]))
        diff = lo_hi[1] + _log1mexp(lo_hi[0] - lo_hi[1])
        value = jnp.where(first, lo_hi[1], diff)  # d = 1: a <= 0, so lo_hi[1] = log Phi(b)
        return jnp.where(_is_support(d), value, -jnp.inf)

    def cdf(self, d):
        k = jnp.floor(jnp.asarray(d, dtype=self.mu.dtype))
        return jnp.where(k >= 1, ndtr((jnp.log(jnp.maximum(k, 1)) - self.mu) / self.sigma), 0.0)

    def _survival(self, d):
        """``P(D > d) = P(X > d)`` for integers ``d >= 0``."""
        positive = d >= 1
        z = (self.mu - jnp.log(jnp.where(positive, d, 1.0))) / self.sigma
        return jnp.where(positive, ndtr(z), 1.0)

    def _head_moments(self, limit):
        """``sum_{d=1}^{limit} d^k P(D=d)`` for ``k = 1, 2, 3`` (``limit <= LOGNORMAL_SUM_TERMS``).

        Summation by parts, ``sum_{d=0}^{limit-1} ((d+1)^k - d^k) P(D>d) - limit^k P(D>limit)``:
        only survival probabilities, no differences of nearly equal CDF values.
        """
        limit = jnp.asarray(limit, dtype=self.mu.dtype)
        d = jnp.arange(0, LOGNORMAL_SUM_TERMS, dtype=self.mu.dtype)
        surv = jnp.where(d < limit, self._survival(d), 0.0)
        surv_limit = self._survival(limit)
        steps = (jnp.ones_like(d), 2 * d + 1, 3 * d**2 + 3 * d + 1)  # (d+1)^k - d^k, no cancellation
        return [jnp.sum(steps[k - 1] * surv) - limit**k * surv_limit for k in (1, 2, 3)]

    def raw_moments(self):
        n_terms = LOGNORMAL_SUM_TERMS
        mu, s = self.mu, self.sigma
        j = jnp.arange(4, dtype=mu.dtype)
        # E[X^j; X > N] for j = 0..3, in logs (one vectorised log_ndtr call).
        partial = jnp.exp(j * mu + 0.5 * j**2 * s**2 + log_ndtr((mu + j * s**2 - math.log(n_terms)) / s))
        head = self._head_moments(n_terms)
        out = []
        for k in (1, 2, 3):
            tail = sum(math.comb(k, i) * partial[i] / (k - i + 1) for i in range(k + 1))
            out.append(head[k - 1] + tail)
        return tuple(out)

    def truncated_stationary_mean_index(self, max_steps):
        m1, m2, _ = self._head_moments(jnp.minimum(max_steps, LOGNORMAL_SUM_TERMS))
        return jnp.where(max_steps <= LOGNORMAL_SUM_TERMS, (m2 - m1) / (2 * m1), jnp.nan)

    @classmethod
    def _initial(cls, values, counts):
        w = counts / counts.sum()
        logs = np.log(values - 0.5)
        m = float(np.sum(w * logs))
        s = math.sqrt(max(float(np.sum(w * (logs - m) ** 2)), 1e-4))
        return [np.array([m, math.log(s)])]


class GeometricMixtureDecode(DecodeDistribution):
    """``weight * Geometric(p1) + (1 - weight) * Geometric(p2)`` on ``{1, 2, ...}``.

    Fitted models are labelled so that ``p1 >= p2`` (component 1 is the shorter one).
    Unconstrained: ``(logit weight, logit p1, logit p2)``. If the two components
    coincide the model is not identifiable and its standard errors are NaN.
    """

    weight: jax.Array = eqx.field(converter=float_leaf)
    p1: jax.Array = eqx.field(converter=float_leaf)
    p2: jax.Array = eqx.field(converter=float_leaf)
    family: ClassVar[str] = "geometric_mixture"
    param_names: ClassVar[tuple[str, ...]] = ("weight", "p1", "p2")

    @classmethod
    def from_unconstrained(cls, u):
        return cls(jax.nn.sigmoid(u[0]), jax.nn.sigmoid(u[1]), jax.nn.sigmoid(u[2]))

    def to_unconstrained(self):
        return jnp.stack([_logit(self.weight), _logit(self.p1), _logit(self.p2)])

    def _components(self):
        return GeometricDecode(self.p1), GeometricDecode(self.p2)

    @classmethod
    def _canonical(cls, u):
        # Label the components so that p1 >= p2 (logit(1 - w) = -logit(w)).
        return jnp.where(u[1] < u[2], jnp.stack([-u[0], u[2], u[1]]), u)

    def log_pmf(self, d):
        g1, g2 = self._components()
        return jnp.logaddexp(jnp.log(self.weight) + g1.log_pmf(d), jnp.log1p(-self.weight) + g2.log_pmf(d))

    def cdf(self, d):
        g1, g2 = self._components()
        return self.weight * g1.cdf(d) + (1 - self.weight) * g2.cdf(d)

    def raw_moments(self):
        g1, g2 = self._components()
        w = self.weight
        return tuple(w * a + (1 - w) * b for a, b in zip(g1.raw_moments(), g2.raw_moments()))

    @classmethod
    def _initial(cls, values, counts):
        """Two starts: the method of moments on ``K = D - 1``, and a split at the median.

        ``K_i`` geometric on ``{0, 1, ..}`` with mean ``a_i = (1-p_i)/p_i`` has factorial
        moments ``E[K^(m)] = m! a_i^m``, so ``f_m = E[K^(m)] / m!`` are the power moments
        of the two-point distribution ``{a_1: w, a_2: 1-w}``: ``a_1, a_2`` are the roots
        of ``t^2 + b1 t + b0`` with ``f_2 + b1 f_1 + b0 = 0``, ``f_3 + b1 f_2 + b0 f_1 = 0``.
        """
        w = counts / counts.sum()
        k = values - 1
        starts = []
        f1 = np.sum(w * k)
        f2 = np.sum(w * k * (k - 1)) / 2
        f3 = np.sum(w * k * (k - 1) * (k - 2)) / 6
        det = f1 * f1 - f2
        if abs(det) > 1e-12 * max(f2, 1.0):
            b1 = (f3 - f2 * f1) / det
            b0 = -f2 - b1 * f1
            disc = b1 * b1 - 4 * b0
            if disc > 0:
                a1, a2 = (-b1 - math.sqrt(disc)) / 2, (-b1 + math.sqrt(disc)) / 2
                if a1 > 0 and a2 > a1:
                    weight = (a2 - f1) / (a2 - a1)
                    if 0.01 < weight < 0.99:
                        p1, p2 = 1 / (1 + a1), 1 / (1 + a2)
                        starts.append(np.array([_logit_np(weight), _logit_np(p1), _logit_np(p2)]))
        cum = np.cumsum(w)
        median = values[min(int(np.searchsorted(cum, 0.5)), len(values) - 1)]
        low = values <= median
        if low.all() or not low.any():
            low = values <= values[0]
        wl = float(np.sum(w[low]))
        m_low = np.sum(w[low] * values[low]) / wl
        m_high = np.sum(w[~low] * values[~low]) / (1 - wl) if wl < 1 else 2 * m_low
        m_high = max(m_high, m_low * 1.5)
        wl = min(max(wl, 0.05), 0.95)
        starts.append(np.array([_logit_np(wl), _logit_np(1 / m_low), _logit_np(1 / m_high)]))
        return (starts * 2)[:2]  # always two starts: one compilation per data size


def _logit_np(p: float) -> float:
    p = min(max(float(p), 1e-12), 1 - 1e-12)
    return math.log(p) - math.log1p(-p)


# ============================================================================ prefill
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
    def from_unconstrained(cls, u: jax.Array, shift=0.0) -> "PrefillDistribution":
        """The distribution with unconstrained parameters ``u`` and the given shift."""

    @abc.abstractmethod
    def to_unconstrained(self) -> jax.Array:
        """Inverse of :meth:`from_unconstrained` (the shift is not included)."""

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
        return dict(
            moments=jnp.stack([mean, var + mean**2]),
            mean=mean,
            variance=var,
            load_term=mean,
            truncated_load_term=self._partial_mean_x(max_value) / self._cdf_x(max_value),  # of X
        )

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
    """``X = P + shift ~ Exponential`` with mean ``scale`` (tokens). Unconstrained: ``log scale``."""

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

    def variance(self):
        return jnp.expm1(self.sigma**2) * jnp.exp(2 * self.mu + self.sigma**2)

    @classmethod
    def _closed_form(cls, x, counts):
        m, v = _weighted_mean_var(np.log(x), counts)
        return np.array([m, 0.5 * math.log(v)])

    @classmethod
    def _initial(cls, x, counts):
        return [cls._closed_form(x, counts)]


DECODE_CLASSES: dict[str, type[DecodeDistribution]] = {
    c.family: c for c in (GeometricDecode, NegativeBinomialDecode, LogNormalDecode, GeometricMixtureDecode)
}
PREFILL_CLASSES: dict[str, type[PrefillDistribution]] = {
    c.family: c for c in (ExponentialPrefill, GammaPrefill, LogNormalPrefill)
}


# ============================================================================ fitting engine
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

    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def run(u0):
        def step(carry):
            u, state = carry
            value, grad = value_and_grad(u, state=state)
            updates, state = solver.update(grad, state, u, value=value, grad=grad, value_fn=objective)
            return optax.apply_updates(u, updates), state

        def keep_going(carry):
            _, state = carry
            count = optax.tree.get(state, "count")
            grad = optax.tree.get(state, "grad")
            return (count < max_iter) & ((count == 0) | (optax.tree.norm(grad) >= tol))

        u, state = jax.lax.while_loop(keep_going, step, (u0, solver.init(u0)))
        return u, objective(u), optax.tree.get(state, "count")

    if starts.shape[0] == 1:  # one start: skip the vmap (smaller program)
        us, nlls, counts = jax.tree.map(lambda x: x[None], run(starts[0]))
    else:
        us, nlls, counts = jax.vmap(run)(starts)
    best = jnp.argmin(jnp.where(jnp.isfinite(nlls), nlls, jnp.inf))
    u = cls._canonical(us[best])
    model = cls.from_unconstrained(u)
    out = dict(
        u=u,
        natural=model.natural(),
        log_likelihood=-total * objective(u),
        grad_norm=jnp.linalg.norm(jax.grad(objective)(u)),
        iterations=counts[best],
        hessian=jax.hessian(lambda u: total * objective(u))(u),
        jacobian=jax.jacobian(lambda u: cls.from_unconstrained(u).natural())(u),
        cdf_at=model._cdf_at(values),
        cdf_left=model._cdf_left(values),
        load_term_grad=jax.grad(lambda u: cls.from_unconstrained(u)._load_term())(u),
    )
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

    **Fields:**

    - ``kind`` (``"decode"`` or ``"prefill"``), ``family``, ``model`` (the fitted
      :class:`DecodeDistribution` / :class:`PrefillDistribution`).
    - ``params``: natural parameters; ``stderr``, ``ci95``: delta-method standard
      errors and Wald 95 % intervals of them (NaN when the observed information is not
      positive definite, e.g. a mixture whose components coincide).
    - ``log_likelihood``, ``aic = 2k - 2 logL``, ``bic = k log(n) - 2 logL``, ``ks``
      (Kolmogorov-Smirnov distance), ``num_samples``.
    - ``method`` (``"closed form"`` or ``"lbfgs"``), ``converged``, ``iterations``,
      ``grad_norm`` (gradient of the mean NLL in ``u`` at the estimate).
    - ``mean``, ``variance``: of ``D`` (steps) or ``P`` (tokens); ``moments``:
      ``(E[D], E[D^2], E[D^3])`` or ``(E[P], E[P^2])``.
    - ``load_term``: the fit's contribution to ``theta`` -- the stationary mean decode
      index ``E[D(D-1)]/(2E[D])`` (decode) or ``E[P]`` (prefill), with
      ``load_term_grad`` (gradient in ``u``) and ``unconstrained_covariance``
      (``H^-1`` in ``u``) for the delta method.
    - ``max_observed``: the largest value in the data; ``tail_mass_beyond_max``: the
      model's probability above it; ``truncated_load_term``: ``load_term`` of the model
      conditioned on not exceeding ``max_observed`` (the stationary mean index given
      ``D <= max D``, or ``E[P | P <= max P]``). A trace capped at a maximum length
      (``max_tokens``, a context limit) and a model with mass beyond it differ there.
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
        out = dict(
            kind=self.kind,
            family=self.family,
            params=self.params,
            stderr=self.stderr,
            ci95={k: list(v) for k, v in self.ci95.items()},
            num_params=self.num_params,
            num_samples=self.num_samples,
            log_likelihood=self.log_likelihood,
            aic=self.aic,
            bic=self.bic,
            ks=self.ks,
            mean=self.mean,
            variance=self.variance,
            method=self.method,
            converged=self.converged,
            iterations=self.iterations,
            max_observed=self.max_observed,
            tail_mass_beyond_max=self.tail_mass_beyond_max,
        )
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
            f"decode has a single distinct value ({arr[0]:g}): a length distribution cannot be fitted "
            "to constant data"
        )
    return arr


def _check_shift(prefill_shift) -> float:
    try:
        shift = float(prefill_shift)
    except (TypeError, ValueError):
        raise ValueError(f"prefill_shift={prefill_shift!r} is invalid: expected a finite number >= 0") from None
    if not (math.isfinite(shift) and shift >= 0):
        raise ValueError(f"prefill_shift={prefill_shift!r} is invalid: expected a finite number >= 0")
    return shift


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
            f"prefill has a single distinct value ({arr[0]:g}): a length distribution cannot be fitted to "
            "constant data"
        )
    return arr


def _check_max_iter(max_iter) -> int:
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter={max_iter!r} is invalid: expected an integer >= 1")
    return int(max_iter)


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


# ============================================================================ load
def model_theta(decode_model: DecodeDistribution, prefill_model: PrefillDistribution) -> jax.Array:
    """``theta = E[P] + E[D (D-1)] / (2 E[D])`` (tokens) for ``P`` independent of ``D``.

    Pure JAX (differentiable in both models' parameters).
    """
    return prefill_model.mean() + decode_model.stationary_mean_index()


def _slot_variance(decode_moments, mean_p, second_p):
    m1, m2, m3 = decode_moments
    theta = mean_p + (m2 - m1) / (2 * m1)
    triple = 2 * m3 - 3 * m2 + m1  # E[D (D-1) (2D-1)]
    return (m1 * second_p + mean_p * (m2 - m1) + triple / 6) / m1 - theta**2


def model_slot_variance(decode_model: DecodeDistribution, prefill_model: PrefillDistribution) -> jax.Array:
    """Stationary per-slot load variance (tokens^2) for ``P`` independent of ``D``.

    ``(E[D] E[P^2] + E[P] E[D(D-1)] + E[D(D-1)(2D-1)]/6) / E[D] - theta^2`` (PAPER.md
    section 2 with the expectations factorised). Pure JAX.
    """
    return _slot_variance(decode_model.raw_moments(), prefill_model.mean(), prefill_model.second_moment())


def _plugin(prefill: np.ndarray, decode: np.ndarray) -> dict:
    """Nonparametric plug-ins (float64): paired and with the P-D pairing broken."""
    p, d = prefill.astype(np.float64), decode.astype(np.float64)
    sum_d = d.sum()
    pairs = d * (d - 1) / 2
    theta = np.sum(d * p + pairs) / sum_d
    second = np.sum(d * p**2 + p * d * (d - 1) + d * (d - 1) * (2 * d - 1) / 6) / sum_d
    index = np.sum(pairs) / sum_d
    mean_p = p.mean()
    theta_ind = mean_p + index
    var_ind = _slot_variance((d.mean(), np.mean(d**2), np.mean(d**3)), mean_p, np.mean(p**2))
    top = max(1, math.ceil(0.01 * d.size))
    top_share = np.sort(pairs)[-top:].sum() / pairs.sum() if pairs.sum() > 0 else float("nan")
    return dict(
        theta_np=float(theta),
        slot_variance_np=float(second - theta**2),
        theta_independent_np=float(theta_ind),
        slot_variance_independent_np=float(var_ind),
        mean_prefill_np=float(mean_p),
        mean_decode_np=float(d.mean()),
        stationary_mean_index_np=float(index),
        correlation_pd=float(np.corrcoef(p, d)[0, 1]) if p.std() > 0 and d.std() > 0 else float("nan"),
        max_decode=float(d.max()),
        max_prefill=float(p.max()),
        decode_top1_share=float(top_share),
    )


@dataclasses.dataclass(frozen=True)
class WorkloadFit:
    """Fits of both margins of a trace and the stationary load they imply (tokens).

    **Fields:**

    - ``decode``, ``prefill``: ``{family: FamilyFit}``.
    - ``best_decode``, ``best_prefill``: the lowest-AIC family of each margin.
    - ``theta_fit``, ``theta_fit_stderr`` (delta method, the margins fitted
      independently), ``slot_variance_fit`` (tokens^2): of the best pair, ``P``
      independent of ``D``.
    - ``theta_np``, ``slot_variance_np``: paired plug-ins of the trace (they keep the
      P-D correlation); ``theta_independent_np``, ``slot_variance_independent_np``: the
      plug-ins with the pairing broken.
    - ``plugin``: trace summaries -- means, ``stationary_mean_index_np``
      (``sum D(D-1)/2 / sum D``), ``correlation_pd``, ``max_decode``, ``max_prefill``,
      ``decode_top1_share`` (share of ``sum D(D-1)/2`` held by the 1 % longest
      requests: near 1 means the stationary index is set by a handful of requests).
    - ``prefill_shift``, ``num_requests``, ``source``.

    The relative gap ``theta_relative_gap = theta_fit / theta_np - 1`` splits exactly
    (see :attr:`theta_gap_parts`) into the P-D correlation, the prefill family's mean
    and the decode family's stationary mean index.
    """

    decode: dict
    prefill: dict
    best_decode: str
    best_prefill: str
    theta_fit: float
    theta_fit_stderr: float
    slot_variance_fit: float
    theta_np: float
    slot_variance_np: float
    theta_independent_np: float
    slot_variance_independent_np: float
    plugin: dict
    prefill_shift: float
    num_requests: int
    source: str | None = None

    @property
    def theta_relative_gap(self) -> float:
        """``theta_fit / theta_np - 1``."""
        return self.theta_fit / self.theta_np - 1

    @property
    def correlation_relative_gap(self) -> float:
        """``theta_independent_np / theta_np - 1``: the P-D correlation, which no fit of the margins reproduces."""
        return self.theta_independent_np / self.theta_np - 1

    @property
    def fit_relative_gap(self) -> float:
        """``theta_fit / theta_independent_np - 1``: what the fitted families add."""
        return self.theta_fit / self.theta_independent_np - 1

    @property
    def theta_gap_parts(self) -> dict:
        """``theta_fit - theta_np`` (tokens) as the exact sum of three parts.

        ``correlation = theta_independent_np - theta_np``,
        ``prefill_family = E_fit[P] - mean(P)``,
        ``decode_family = E_fit[D(D-1)]/(2 E_fit[D]) - sum D(D-1)/2 / sum D``.
        """
        return dict(
            correlation=self.theta_independent_np - self.theta_np,
            prefill_family=self.prefill[self.best_prefill].mean - self.plugin["mean_prefill_np"],
            decode_family=self.decode[self.best_decode].load_term - self.plugin["stationary_mean_index_np"],
        )

    def theta_for(self, decode_family: str, prefill_family: str) -> float:
        """``theta`` (tokens) of any fitted pair, ``P`` independent of ``D``."""
        d = self.decode[_check_family("decode_family", decode_family, tuple(self.decode))]
        p = self.prefill[_check_family("prefill_family", prefill_family, tuple(self.prefill))]
        return p.mean + d.load_term

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (non-finite numbers become None)."""
        return jsonable(
            dict(
                source=self.source,
                num_requests=self.num_requests,
                prefill_shift=self.prefill_shift,
                best_decode=self.best_decode,
                best_prefill=self.best_prefill,
                decode={k: v.to_dict() for k, v in self.decode.items()},
                prefill={k: v.to_dict() for k, v in self.prefill.items()},
                theta_fit=self.theta_fit,
                theta_fit_stderr=self.theta_fit_stderr,
                slot_variance_fit=self.slot_variance_fit,
                theta_np=self.theta_np,
                slot_variance_np=self.slot_variance_np,
                theta_independent_np=self.theta_independent_np,
                slot_variance_independent_np=self.slot_variance_independent_np,
                theta_relative_gap=self.theta_relative_gap,
                correlation_relative_gap=self.correlation_relative_gap,
                fit_relative_gap=self.fit_relative_gap,
                theta_gap_parts=self.theta_gap_parts,
                theta_by_pair={f"{d}+{p}": self.theta_for(d, p) for d in self.decode for p in self.prefill},
                plugin=self.plugin,
            )
        )

    def format_text(self) -> str:
        """A readable report: a table per margin, then the load comparison."""
        pl = self.plugin
        head = f"Request-length fit: {self.source}" if self.source else "Request-length fit"
        lines = [
            f"{head}   ({self.num_requests} requests; prefill families fit P + {self.prefill_shift:g} tokens)",
            "",
            f"Decode steps D   trace: mean {pl['mean_decode_np']:.6g}, max {pl['max_decode']:.0f}, "
            f"stationary mean index {pl['stationary_mean_index_np']:.6g}",
        ]
        lines += _family_table(self.decode, self.best_decode, decode=True)
        lines += ["", f"Prefill tokens P   trace: mean {pl['mean_prefill_np']:.6g}, max {pl['max_prefill']:.0f}"]
        lines += _family_table(self.prefill, self.best_prefill, decode=False)
        se = self.theta_fit_stderr
        best_d, best_p = self.decode[self.best_decode], self.prefill[self.best_prefill]
        parts = self.theta_gap_parts
        lines += [
            "",
            "Stationary slot load, tokens (PAPER.md section 2: the slot is length-biased)",
            f"  fitted {self.best_decode} D x {self.best_prefill} P (independent):  theta_fit = {self.theta_fit:.6g}"
            + (f" +- {se:.3g}" if math.isfinite(se) else "")
            + f"   slot sd {math.sqrt(max(self.slot_variance_fit, 0)):.6g}",
            f"  trace plug-in, paired (corr(P, D) = {pl['correlation_pd']:+.3f}):  theta_np = {self.theta_np:.6g}"
            f"   slot sd {math.sqrt(max(self.slot_variance_np, 0)):.6g}",
            f"  trace plug-in, P-D pairing broken:  theta_independent_np = {self.theta_independent_np:.6g}",
            f"  gap theta_fit / theta_np - 1 = {100 * self.theta_relative_gap:+.2f} %"
            f"   (P-D correlation {100 * self.correlation_relative_gap:+.2f} %,"
            f" fitted families {100 * self.fit_relative_gap:+.2f} %)",
            f"  gap in tokens: correlation {parts['correlation']:+.4g}, prefill family {parts['prefill_family']:+.4g},"
            f" decode family {parts['decode_family']:+.4g}",
            f"  decode tail: the 1 % longest requests hold {100 * pl['decode_top1_share']:.0f} % of the trace's"
            f" sum D(D-1)/2; the fitted {self.best_decode} puts {best_d.tail_mass_beyond_max:.2g} of its mass above"
            f" {pl['max_decode']:.0f} steps and, given D <= {pl['max_decode']:.0f}, has stationary index"
            f" {best_d.truncated_load_term:.5g} (trace {pl['stationary_mean_index_np']:.5g})",
            f"  prefill tail: the fitted {self.best_prefill} puts {best_p.tail_mass_beyond_max:.2g} of its mass above"
            f" {pl['max_prefill']:.0f} tokens and, given P <= {pl['max_prefill']:.0f}, has mean"
            f" {best_p.truncated_load_term:.6g} (trace {pl['mean_prefill_np']:.6g})",
            "  theta_fit per decode family (with the best prefill family): "
            + ", ".join(f"{d} {self.theta_for(d, self.best_prefill):.6g}" for d in self.decode),
        ]
        return "\n".join(lines)


def _format_params(fit: FamilyFit) -> str:
    parts = []
    for name, value in fit.params.items():
        lo, hi = fit.ci95[name]
        ci = f" [{lo:.4g}, {hi:.4g}]" if math.isfinite(lo) and math.isfinite(hi) else " [n/a]"
        parts.append(f"{name}={value:.4g}{ci}")
    return "  ".join(parts)


def _family_table(fits: dict, best: str, decode: bool) -> list[str]:
    best_aic = min(f.aic for f in fits.values())
    header = f"    {'family':<18} {'logL':>12} {'AIC':>12} {'dAIC':>9} {'BIC':>12} {'KS':>7} {'mean':>9}"
    if decode:
        header += f" {'index':>9}"
    rows = [header + "   parameters [95% CI]"]
    for name, f in sorted(fits.items(), key=lambda kv: kv[1].aic):
        row = (
            f"  {'*' if name == best else ' '} {name:<18} {f.log_likelihood:12.6g} {f.aic:12.6g} "
            f"{f.aic - best_aic:9.4g} {f.bic:12.6g} {f.ks:7.4f} {f.mean:9.5g}"
        )
        if decode:
            row += f" {f.load_term:9.5g}"
        row += "   " + _format_params(f)
        if not f.converged:
            row += "   (not converged)"
        elif not f.identifiable:
            row += "   (not identifiable here)"
        rows.append(row)
    note = "    * lowest AIC; KS = max |F_trace - F_model|; CIs: delta method on the observed information"
    if decode:
        note += "; index = E[D(D-1)]/(2E[D])"
    rows.append(note)
    return rows


def fit_workload(
    prefill,
    decode,
    decode_families=DECODE_FIT_FAMILIES,
    prefill_families=PREFILL_FIT_FAMILIES,
    *,
    prefill_shift: float = 1.0,
    source: str | None = None,
    max_iter: int = 500,
) -> WorkloadFit:
    """Fit decode and prefill length families to a trace and compare the load they imply.

    **Arguments:**

    - ``prefill``: shape ``(n,)``, prompt tokens per request, ``>= 0``.
    - ``decode``: shape ``(n,)``, integer decode steps per request, ``>= 1``.
    - ``decode_families``: names from :data:`DECODE_FIT_FAMILIES` (default: all).
    - ``prefill_families``: names from :data:`PREFILL_FIT_FAMILIES` (default: all).
    - ``prefill_shift``: the prefill families model ``P + prefill_shift`` (tokens).
    - ``source``: a label for reports (e.g. the trace name).
    - ``max_iter``: L-BFGS iteration limit per family.

    **Returns:** a :class:`WorkloadFit`. The best pair (lowest AIC per margin) gives
    ``theta_fit``, compared with the trace plug-ins ``theta_np`` and
    ``theta_independent_np``.
    """
    decode_families = _check_families("decode_families", decode_families, DECODE_FIT_FAMILIES)
    prefill_families = _check_families("prefill_families", prefill_families, PREFILL_FIT_FAMILIES)
    shift = _check_shift(prefill_shift)
    max_iter = _check_max_iter(max_iter)
    p = _check_prefill(prefill, shift)
    d = _check_decode(decode)
    if p.shape != d.shape:
        raise ValueError(f"prefill and decode must have equal lengths; got {p.size} and {d.size}")
    decode_fits = {f: _fit_family("decode", DECODE_CLASSES[f], d, 0.0, True, max_iter) for f in decode_families}
    prefill_fits = {
        f: _fit_family("prefill", PREFILL_CLASSES[f], p + shift, shift, True, max_iter) for f in prefill_families
    }
    def aic(fit: FamilyFit) -> float:  # a failed fit (NaN) never wins
        return fit.aic if math.isfinite(fit.aic) else math.inf

    best_d = min(decode_fits, key=lambda f: aic(decode_fits[f]))
    best_p = min(prefill_fits, key=lambda f: aic(prefill_fits[f]))
    fd, fp = decode_fits[best_d], prefill_fits[best_p]
    var = (
        fd.load_term_grad @ fd.unconstrained_covariance @ fd.load_term_grad
        + fp.load_term_grad @ fp.unconstrained_covariance @ fp.load_term_grad
    )
    plugin = _plugin(p, d)
    return WorkloadFit(
        decode=decode_fits,
        prefill=prefill_fits,
        best_decode=best_d,
        best_prefill=best_p,
        theta_fit=fp.mean + fd.load_term,
        theta_fit_stderr=float(math.sqrt(var)) if var >= 0 else float("nan"),
        slot_variance_fit=float(_slot_variance(fd.moments, fp.moments[0], fp.moments[1])),
        theta_np=plugin["theta_np"],
        slot_variance_np=plugin["slot_variance_np"],
        theta_independent_np=plugin["theta_independent_np"],
        slot_variance_independent_np=plugin["slot_variance_independent_np"],
        plugin=plugin,
        prefill_shift=shift,
        num_requests=int(d.size),
        source=source,
    )


def fit_trace(
    path_or_name,
    *,
    prefill_column: str | None = None,
    decode_column: str | None = None,
    tokens_per_step: int = 1,
    **kwargs,
) -> WorkloadFit:
    """:func:`fit_workload` on a trace file or a bundled trace name (``azure-conv``, ...).

    Columns are read with :func:`afdjax.read_trace`; a request of ``n`` output tokens
    holds its slot for ``ceil(n / tokens_per_step)`` steps (as in
    :func:`afdjax.load_trace`). Other keyword arguments go to :func:`fit_workload`;
    ``source`` defaults to ``path_or_name``.
    """
    if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, (int, np.integer)) or tokens_per_step < 1:
        raise ValueError(f"tokens_per_step={tokens_per_step!r} is invalid: expected an integer >= 1")
    prefill, output = read_trace(path_or_name, prefill_column, decode_column)
    decode = np.ceil(output / int(tokens_per_step))
    kwargs.setdefault("source", os.fspath(path_or_name))
    return fit_workload(prefill, decode, **kwargs)
