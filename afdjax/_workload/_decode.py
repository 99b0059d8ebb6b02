"""Decode-length families: distributions of decode steps ``D`` on ``{1, 2, ...}``.

These are model inputs: [`fit_workload`][afdjax.fit_workload] fits them to traces and
[`FittedWorkload`][afdjax.FittedWorkload] simulates them.

* ``geometric`` -- ``P(D=d) = p (1-p)^(d-1)``, the paper's v1 model (``mu_D = (1-p)/p``
  is the stationary mean decode index, one less than ``E[D] = 1/p``).
* ``negative_binomial`` -- ``D = 1 + K`` with ``K ~ NB(n, p)`` failures before the
  ``n``-th success (``n > 0`` real; ``n = 1`` is the geometric).
* ``lognormal`` -- discretised: ``D = ceil(X)``, ``X ~ LogNormal(mu, sigma)``, so
  ``P(D=d) = F(d) - F(d-1)`` for ``d >= 2`` and ``P(D=1) = F(1)``.
* ``geometric_mixture`` -- ``weight * Geometric(p1) + (1 - weight) * Geometric(p2)``
  with the label fixed by ``p1 >= p2`` (component 1 is the short one).

Sampling (from uniforms, so the engine keeps common random numbers)
--------------------------------------------------------------------
A fresh ``D`` and the stationary (length-biased) pair ``(D*, index)`` are drawn as
follows. ``D*`` has ``P(D* = d) = d P(D = d) / E[D]`` and the index is uniform on
``[0, D*)``.

* geometric: inverse CDF ``1 + floor(log u / log(1-p))``; the stationary pair is exact by
  memorylessness: age ``~ Geometric`` on ``{0, 1, ..}`` and remaining life an independent
  fresh ``D``, so ``D* = age + remaining`` (as [`Geometric`][afdjax.Geometric]).
* geometric_mixture: inverse CDF of the mixture itself, ``D = min{d : P(D > d) < u}``
  from the closed-form survival ``sum_k w_k (1-p_k)^d`` by bisection from a bracket, and
  for the stationary ``D*`` from ``P(D* > d) = sum_k w_k (1-p_k)^d (d + 1/p_k) / E[D]``,
  the index uniform on ``[0, D*)``. Exact. (Until issue 12 it picked a component and
  then drew that geometric: the same law, other draws. The mixture's own inverse CDF
  moves each draw by single steps as any of the three parameters moves, which the
  coupled decode estimator needs; picking a component makes a draw leap between the
  components' lengths as the weight moves.)
* lognormal: fresh ``D = max(1, ceil(exp(mu + sigma Phi^-1(u))))``, exact.
* negative_binomial (fresh and stationary) and lognormal (stationary): inverse CDF on a
  table of ``d = 1 .. SAMPLING_TABLE_STEPS`` (65,536). A draw beyond the table's last
  cumulative probability is set to ``SAMPLING_TABLE_STEPS``, so the sampled law differs
  from the family by at most the mass beyond the table (``P(D > 65536)`` fresh,
  ``E[D; D > 65536] / E[D]`` stationary: [`table_truncation`][afdjax.DecodeDistribution.table_truncation]).
  [`FittedWorkload`][afdjax.FittedWorkload] refuses a family for which this exceeds
  ``MAX_TABLE_TRUNCATION`` (1e-6). The table's cumulative sums carry float rounding (in
  float32 a relative ``1e-7 .. 1e-5`` of the probabilities).

Draws are clipped at ``2**30`` steps (as the engine requires).
"""

from __future__ import annotations

import abc
import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc, gammaln, log_ndtr, ndtr

from .._random import uniform_int as _uniform_int
from .._random import uniform_open as _uniform_open
from .._validate import float_leaf

SAMPLING_TABLE_STEPS = 1 << 16
"""Decode steps ``d = 1 .. 65536`` tabulated for inverse-CDF sampling where no closed form exists."""

MAX_TABLE_TRUNCATION = 1e-6
"""Largest probability mass beyond the sampling table that a simulated family may have."""

_MAX_STEPS = 2**30

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
    def from_unconstrained(cls, u: jax.Array) -> DecodeDistribution:
        """The distribution with unconstrained parameters ``u`` (shape ``(k,)``)."""

    @abc.abstractmethod
    def to_unconstrained(self) -> jax.Array:
        """Inverse of ``from_unconstrained``."""

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

    # ---- sampling (simulation): from uniforms in (0, 1) and uint32 bits
    def _table(self, size_biased: bool) -> jax.Array:
        """Cumulative probabilities of ``D`` (or of the length-biased ``D*``) at
        ``d = 1 .. SAMPLING_TABLE_STEPS`` (unnormalised beyond the table: the last entry is
        ``1 -`` the truncated mass)."""
        d = jnp.arange(1, SAMPLING_TABLE_STEPS + 1, dtype=jnp.zeros(()).dtype)
        pmf = jnp.exp(self.log_pmf(d))
        if size_biased:
            pmf = d * pmf / self.mean()
        return jnp.cumsum(pmf)

    def table_truncation(self, size_biased: bool = True) -> jax.Array:
        """Probability mass beyond the sampling table: ``P(D > 65536)`` (fresh) or
        ``E[D; D > 65536] / E[D]`` (``size_biased``, the stationary slot)."""
        return jnp.maximum(1.0 - self._table(size_biased)[-1], 0.0)

    def _sample(self, u: jax.Array) -> jax.Array:
        """Fresh decode steps (int32, ``>= 1``) from uniforms ``u``: inverse CDF on the table."""
        return self._from_table(self._table(False), u)

    @staticmethod
    def _from_table(cum: jax.Array, u: jax.Array) -> jax.Array:
        i = jnp.searchsorted(cum, u.astype(cum.dtype), side="left")  # smallest d with F(d) >= u
        return jnp.minimum(i + 1, SAMPLING_TABLE_STEPS).astype(jnp.int32)

    def _sample_stationary(self, bits0, bits1, bits3) -> tuple[jax.Array, jax.Array]:
        """``(D*, index)`` of the length-biased slot from three uint32 arrays: ``D*`` by
        inverse CDF on the size-biased table, the index uniform on ``[0, D*)`` (64 bits)."""
        decode = self._from_table(self._table(True), _uniform_open(bits0))
        return decode, _uniform_int(bits1, bits3, decode)

    def _stationary_log_prob(self, decode: jax.Array) -> jax.Array:
        """``log P(D* = d, index = i) = log P(D = d) - log E[D]`` (any index)."""
        return self.log_pmf(decode) - jnp.log(self.mean())

    # ---- coupled decode-length jumps (afdjax._engine._jumps): value-zero surrogates
    def _jump_weight(self, d: jax.Array) -> jax.Array:
        """``w~`` with value 0 and derivative ``-dF_theta(d)/dtheta / p_theta(d)`` (the rate
        at which the inverse-CDF draw ``d`` becomes ``d + 1``): from the closed-form CDF."""
        return _surrogate(-self.cdf(d), self.log_pmf(d))

    def _stationary_jump_weights(self, bits0, bits1, bits3, decode, index):
        """Table sampling: ``D*`` jumps to ``D* + 1`` at the size-biased table's rate; the
        index ``floor(x D*)`` then becomes ``floor(x (D* + 1))``: one more (an age jump) or
        the same (a remaining-life jump)."""
        table = self._table(True)
        i = jnp.clip(decode - 1, 0, SAMPLING_TABLE_STEPS - 1)
        d = decode.astype(table.dtype)
        log_p = self.log_pmf(d) + jnp.log(d) - jnp.log(self.mean())
        w = _surrogate(-table[i], log_p)
        w = jnp.where(decode < SAMPLING_TABLE_STEPS, w, 0.0)
        grows = _uniform_int(bits1, bits3, decode + 1) > index
        return jnp.where(grows, w, 0.0), jnp.where(grows, 0.0, w)

    def _log_mgf_neg(self, t: np.ndarray) -> np.ndarray:
        """Host-side ``log E[exp(-t D)]`` (float64) from the table, with the mass beyond it
        counted at ``d = 65537`` (an upper bound: conservative buffers)."""
        d = np.arange(1, SAMPLING_TABLE_STEPS + 1, dtype=np.float64)
        log_pmf = np.asarray(self.log_pmf(jnp.asarray(d, dtype=jnp.zeros(()).dtype)), dtype=np.float64)
        keep = np.isfinite(log_pmf) & (log_pmf > -745.0)
        d, log_pmf = d[keep], log_pmf[keep]
        tail = max(1.0 - float(np.exp(log_pmf).sum()), 0.0)
        t = np.asarray(t, dtype=np.float64)
        out = np.empty(t.shape)
        for start in range(0, t.size, 32):  # bounded memory: 32 x 65536 at a time
            a = log_pmf[None, :] - t[start : start + 32, None] * d[None, :]
            m = a.max(axis=1)
            total = np.exp(a - m[:, None]).sum(axis=1) + tail * np.exp(-t[start : start + 32] * (d[-1] + 1) - m)
            out[start : start + 32] = m + np.log(total)
        return out

    # ---- hooks for the fitting engine
    def _log_density(self, x):
        return self.log_pmf(x)

    def _cdf_at(self, x):
        return self.cdf(x)

    def _cdf_left(self, x):
        return self.cdf(x - 1)

    def _summary(self, max_value) -> dict:
        m1, m2, m3 = self.raw_moments()
        return {
            "moments": jnp.stack([m1, m2, m3]),
            "mean": m1,
            "variance": m2 - m1**2,
            "load_term": (m2 - m1) / (2 * m1),
            "truncated_load_term": self.truncated_stationary_mean_index(max_value),
        }

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


def _surrogate(g, log_p):
    """``(g - stop_gradient(g)) / stop_gradient(p)``: value 0, derivative ``g' / p``."""
    p = jax.lax.stop_gradient(jnp.exp(log_p))
    return jnp.where(p > 0, (g - jax.lax.stop_gradient(g)) / jnp.where(p > 0, p, 1.0), 0.0)


def _logit(p):
    return jnp.log(p) - jnp.log1p(-p)


class GeometricDecode(DecodeDistribution):
    """``P(D = d) = p (1-p)^(d-1)``, ``d >= 1``; ``E[D] = 1/p``. Unconstrained: ``logit p``.

    Arguments:
        p: the per-step stopping probability, in ``(0, 1]``.
    """

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

    def _count(self, u):
        """Failures before the first success, ``P(a) = p (1-p)^a``, ``a >= 0``."""
        log_q = jnp.log1p(-self.p)
        a = jnp.where(log_q < 0, jnp.floor(jnp.log(u) / jnp.where(log_q < 0, log_q, -1.0)), 0.0)
        return jnp.clip(a, 0, _MAX_STEPS).astype(jnp.int32)

    def _sample(self, u):
        return 1 + self._count(u)

    def _count_jump(self, n):
        """Jump rate ``n p`` of ``1 + count`` as ``q0/p0 ((q/q0)^n - 1)``, ``q = 1 - p``."""
        log_q = jnp.log1p(-self.p)
        q0 = jax.lax.stop_gradient(1 - self.p)
        return q0 / (1 - q0) * jnp.expm1(n.astype(log_q.dtype) * (log_q - jax.lax.stop_gradient(log_q)))

    def _jump_weight(self, d):
        return self._count_jump(d)

    def _stationary_jump_weights(self, bits0, bits1, bits3, decode, index):
        return self._count_jump(index + 1), self._count_jump(decode - index)

    def _sample_stationary(self, bits0, bits1, bits3):
        # Memorylessness: age ~ Geometric on {0, 1, ..}, remaining life an independent fresh D.
        index = self._count(_uniform_open(bits0))
        return index + 1 + self._count(_uniform_open(bits1)), index

    def _log_mgf_neg(self, t):
        p = float(self.p)
        t = np.asarray(t, dtype=np.float64)
        return np.log(p) - t - np.log1p(-(1.0 - p) * np.exp(-t))

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

    Arguments:
        n: the number of successes, real ``> 0``.
        p: the success probability, in ``(0, 1]``.
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

    def _jump_weight(self, d):
        # the sampler is the inverse CDF on the table: F(d) = table[d - 1] (no betainc
        # derivative in n is needed)
        table = self._table(False)
        g = -table[jnp.clip(d - 1, 0, SAMPLING_TABLE_STEPS - 1)]
        return jnp.where(d < SAMPLING_TABLE_STEPS, _surrogate(g, self.log_pmf(d)), 0.0)

    def _log_mgf_neg(self, t):
        # E[exp(-t K)] = (p / (1 - (1-p) e^-t))^n for K ~ NB(n, p); D = 1 + K.
        n, p = float(self.n), float(self.p)
        t = np.asarray(t, dtype=np.float64)
        return -t + n * np.log(p) - n * np.log1p(-(1.0 - p) * np.exp(-t))

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

    Arguments:
        mu: mean of ``log X`` (``X`` in steps).
        sigma: standard deviation of ``log X``, ``> 0``.
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

    def _sample(self, u):
        # D = ceil(X), X = exp(mu + sigma z), z = Phi^-1(u) = sqrt(2) erfinv(2u - 1).
        z = jnp.sqrt(2.0).astype(u.dtype) * jax.lax.erf_inv(2.0 * u - 1.0)
        x = jnp.exp(jnp.minimum(self.mu + self.sigma * z, math.log(_MAX_STEPS)))
        return jnp.clip(jnp.ceil(x), 1, _MAX_STEPS).astype(jnp.int32)

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
    Sampled by the mixture's own inverse CDF (bisection on the closed-form survival; see
    the module docstring), which gives the coupled decode estimator single-step jumps in
    all three parameters.
    Unconstrained: ``(logit weight, logit p1, logit p2)``. If the two components
    coincide the model is not identifiable and its standard errors are NaN.

    Arguments:
        weight: the probability of component 1, in ``[0, 1]``.
        p1: the stopping probability of component 1, in ``(0, 1]``.
        p2: the stopping probability of component 2, in ``(0, 1]``.
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

    # ---- sampling: inverse CDF of the mixture (not a component, then that component),
    # so that a draw moves by +1 steps as any parameter moves (the coupled estimator).
    def _log_survival(self, d, size_biased: bool):
        """``log P(D > d)`` (``log P(D* > d)`` if ``size_biased``) at integers ``d >= 0``:
        ``sum_k w_k q_k^d`` and ``sum_k w_k q_k^d (d + 1/p_k) / E[D]`` (``E[D_k; D_k > d] =
        q_k^d (d + 1/p_k)`` for a geometric), in logs."""
        d = jnp.asarray(d).astype(self.p1.dtype)
        a = jnp.log(self.weight) + d * jnp.log1p(-self.p1)
        b = jnp.log1p(-self.weight) + d * jnp.log1p(-self.p2)
        if size_biased:
            a = a + jnp.log(d + 1 / self.p1)
            b = b + jnp.log(d + 1 / self.p2)
            return jnp.logaddexp(a, b) - jnp.log(self.mean())
        return jnp.logaddexp(a, b)

    def _invert(self, log_u, size_biased: bool):
        """``min{d >= 1 : log P(D > d) < log u}`` (int32, clipped at ``2^30``) by bisection
        from a bracket: ``P(D > d) >= q_min^d`` and ``P(D > d) <= exp(-p_min d)`` (fresh),
        ``<= 1.214 exp(-p_min d / 2)`` (stationary: ``(1 + x) e^-x <= 2 e^-1/2 e^-x/2``),
        halved until every draw's bracket is one step wide (about ``log2`` of the widest
        bracket, not 31 halvings). With ``weight = 1`` it is the geometric's
        ``1 + floor(log u / log(1 - p))``."""
        log_u = jax.lax.stop_gradient(log_u)
        model = jax.lax.stop_gradient(self)
        log_q_min = jnp.log1p(-jnp.maximum(model.p1, model.p2))
        p_min = jnp.minimum(model.p1, model.p2)
        top = float(_MAX_STEPS)
        lo = jnp.where(log_q_min < 0, jnp.floor(log_u / jnp.where(log_q_min < 0, log_q_min, -1.0)), 0.0)
        hi = 2 * (0.1942 - log_u) / p_min if size_biased else -log_u / p_min
        lo = jnp.clip(lo - 1, 0, top - 1).astype(jnp.int32)  # P(D > lo) >= u (one step of margin)
        hi = jnp.clip(jnp.floor(hi) + 2, 1, top).astype(jnp.int32)  # P(D > hi) < u, or the clip

        def wide(bounds):
            lo, hi = bounds
            return jnp.any(hi - lo > 1)

        def halve(bounds):
            lo, hi = bounds
            mid = lo + (hi - lo) // 2
            below = model._log_survival(mid, size_biased) < log_u
            return jnp.where(below, lo, mid), jnp.where(below, mid, hi)

        _, hi = jax.lax.while_loop(wide, halve, (lo, hi))
        return jnp.maximum(hi, 1)

    def _sample(self, u):
        return self._invert(jnp.log(u), False)

    def _sample_stationary(self, bits0, bits1, bits3):
        """``D*`` by inverse CDF of the length-biased mixture (closed-form survival, no
        table), the index uniform on ``[0, D*)`` (as the table families)."""
        decode = self._invert(jnp.log(_uniform_open(bits0)), True)
        return decode, _uniform_int(bits1, bits3, decode)

    def _jump_weight(self, d):
        # D = min{d : S(d) < u} becomes d + 1 when S(d) rises past u: rate S'(d) / p(d)
        # (from the survival: no difference of nearly equal CDF values)
        return _surrogate(jnp.exp(self._log_survival(d, False)), self.log_pmf(d))

    def _stationary_jump_weights(self, bits0, bits1, bits3, decode, index):
        d = decode.astype(self.p1.dtype)
        log_p = self.log_pmf(d) + jnp.log(d) - jnp.log(self.mean())
        w = _surrogate(jnp.exp(self._log_survival(decode, True)), log_p)
        w = jnp.where(decode < _MAX_STEPS, w, 0.0)
        grows = _uniform_int(bits1, bits3, decode + 1) > index
        return jnp.where(grows, w, 0.0), jnp.where(grows, 0.0, w)

    def _log_mgf_neg(self, t):
        g1, g2 = self._components()
        w = float(self.weight)
        return np.logaddexp(np.log(w) + g1._log_mgf_neg(t), np.log1p(-w) + g2._log_mgf_neg(t))

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


DECODE_CLASSES: dict[str, type[DecodeDistribution]] = {
    c.family: c for c in (GeometricDecode, NegativeBinomialDecode, LogNormalDecode, GeometricMixtureDecode)
}
