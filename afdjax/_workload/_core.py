"""Workloads: distributions of (prefill tokens P, decode steps D) per request.

A request holds a slot for ``D >= 1`` decode steps; at its ``i``-th step
(``i = 0 .. D-1``) the slot's KV load is ``P + i`` tokens. Two workloads are
provided:

* :class:`Geometric` -- the paper's v1 model: each step a slot finishes with
  probability ``p``, so ``D`` is geometric on ``{1, 2, ...}`` with mean ``1/p``.
  Following arXiv 2601.21351, ``mu_d = (1 - p) / p`` is the *stationary mean
  decode index* (one less than the mean slot lifetime ``1/p``), so
  ``p = 1 / (1 + mu_d)``.
* :class:`Empirical` -- requests resampled with replacement from observed
  ``(prefill, decode)`` pairs, keeping any correlation between the two.

Every workload maps raw random bits to requests deterministically (see
``_fresh`` and ``_stationary``), so the engine can use common random numbers:
request ``n`` of a slot gets the same bits whatever the parameters.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtri

from .._random import uniform_int as _uniform_int, uniform_open as _uniform_open
from .._validate import float_leaf as float_leaf

PREFILL_FAMILIES = ("constant", "exponential", "lognormal")


class Workload(eqx.Module):
    """Abstract request-length distribution. See :class:`Geometric`, :class:`Empirical`."""

    @abc.abstractmethod
    def _fresh(self, bits_d: jax.Array, bits_p: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Fresh requests from two uint32 bit arrays: ``(prefill_tokens float, decode_steps int32)``."""

    @abc.abstractmethod
    def _stationary(self, bits: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Length-biased slot state from four uint32 arrays: ``(prefill, decode_steps, index)``."""

    def describe(self) -> str:
        """A short human-readable description (for reports)."""
        return type(self).__name__

    @abc.abstractmethod
    def theta(self) -> jax.Array:
        """Stationary mean per-slot KV load (tokens): ``E[D P + D (D-1)/2] / E[D]``."""

    @abc.abstractmethod
    def slot_variance(self) -> jax.Array:
        """Stationary per-slot load variance (tokens^2), PAPER.md section 2."""

    @abc.abstractmethod
    def mean_decode_steps(self) -> jax.Array:
        """``E[D]``: mean number of decode steps a request holds its slot."""

    def _decode_log_prob(self, decode: jax.Array) -> jax.Array:
        """``log P(D = decode)`` of a fresh request, as a differentiable function of the
        workload's parameters (score-function gradients); 0 when D has no parameters."""
        return jnp.zeros(jnp.shape(decode))

    def _stationary_log_prob(self, decode: jax.Array, index: jax.Array) -> jax.Array:
        """Log-probability of a stationary slot's ``(decode, index)``; 0 when parameter-free."""
        return jnp.zeros(jnp.shape(decode))

    @abc.abstractmethod
    def _decode_log_mgf_neg(self, t: np.ndarray) -> np.ndarray:
        """Host-side ``log E[exp(-t D)]`` for a grid of ``t > 0`` (sizes the engine's buffers)."""

    # ------------------------------------------------------------------ public sampling
    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        """Draw fresh requests.

        **Returns:** ``(prefill_tokens, decode_steps)`` of shape ``shape``; prefill
        is float (tokens), decode steps are int32 and ``>= 1``.
        """
        bits = jax.random.bits(key, (2, *shape), dtype=jnp.uint32)
        return self._fresh(bits[0], bits[1])

    def sample_stationary(
        self, key: jax.Array, shape: tuple[int, ...]
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Draw slot states from the stationary (length-biased) distribution.

        A slot holds request ``j`` with probability proportional to ``D_j``, at an
        index uniform in ``[0, D_j)``.

        **Returns:** ``(prefill_tokens, decode_steps, index)``; the slot's load is
        ``prefill_tokens + index``.
        """
        bits = jax.random.bits(key, (4, *shape), dtype=jnp.uint32)
        return self._stationary(tuple(bits))


def _check_positive(name: str, value, allow_zero: bool = False):
    """Validate a concrete scalar parameter (skipped for tracers)."""
    try:
        v = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return
    ok = (v >= 0 if allow_zero else v > 0) and math.isfinite(v)
    if not ok:
        allowed = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name}={value!r} is invalid: expected {allowed}")


class Geometric(Workload):
    """The paper's v1 workload: geometric decode lengths, prefill with mean ``mu_p``.

    **Arguments:**

    - ``mu_p``: mean prefill length (tokens), ``>= 0``.
    - ``mu_d``: the paper's ``mu_D = (1-p)/p``: the stationary mean decode index,
      i.e. one less than the mean number of decode steps ``E[D] = 1/p = 1 + mu_d``.
    - ``prefill``: ``"constant"`` (every prompt has ``mu_p`` tokens),
      ``"exponential"`` (mean ``mu_p``) or ``"lognormal"`` (mean ``mu_p``, log-sd
      ``prefill_sigma``). Prefill lengths are treated as continuous token counts.
    - ``prefill_sigma``: log-space standard deviation for ``"lognormal"``.

    ``mu_p``, ``mu_d`` and ``prefill_sigma`` are array leaves: they can be swept,
    vmapped and differentiated without recompiling.
    """

    mu_p: jax.Array = eqx.field(converter=float_leaf)
    mu_d: jax.Array = eqx.field(converter=float_leaf)
    prefill: str = eqx.field(static=True, default="constant")
    prefill_sigma: jax.Array = eqx.field(converter=float_leaf, default=1.0)

    def __check_init__(self):
        if self.prefill not in PREFILL_FAMILIES:
            raise ValueError(
                f"prefill={self.prefill!r} is not a known prefill family; "
                f"expected one of {', '.join(PREFILL_FAMILIES)}"
            )
        _check_positive("mu_p", self.mu_p, allow_zero=True)
        _check_positive("mu_d", self.mu_d, allow_zero=True)
        _check_positive("prefill_sigma", self.prefill_sigma, allow_zero=True)

    def describe(self) -> str:
        text = f"geometric:mu_p={_show_float(self.mu_p)},mu_d={_show_float(self.mu_d)}"
        if self.prefill != "constant":
            text += f",prefill={self.prefill}"
            if self.prefill == "lognormal":
                text += f",sigma={_show_float(self.prefill_sigma)}"
        return text

    @property
    def finish_probability(self) -> jax.Array:
        """Per-step termination probability ``p = 1 / (1 + mu_d)``."""
        return 1.0 / (1.0 + self.mu_d)

    def _geometric_count(self, u: jax.Array) -> jax.Array:
        """Number of failures before the first success: ``P(a) = p (1-p)^a``, ``a >= 0``."""
        p = self.finish_probability
        log_q = jnp.log1p(-p)
        # mu_d = 0 gives p = 1 and log_q = -inf: every request lasts one step.
        a = jnp.where(log_q < 0, jnp.floor(jnp.log(u) / jnp.where(log_q < 0, log_q, -1.0)), 0.0)
        return jnp.clip(a, 0, 2**30).astype(jnp.int32)

    def _prefill(self, u: jax.Array) -> jax.Array:
        mu_p = jnp.asarray(self.mu_p, dtype=u.dtype)
        if self.prefill == "constant":
            return jnp.broadcast_to(mu_p, u.shape)
        if self.prefill == "exponential":
            return -mu_p * jnp.log(u)
        sigma = self.prefill_sigma
        # Phi^-1(u) = sqrt(2) erfinv(2u - 1): XLA's erf_inv is a fused polynomial, ~10x
        # faster on CPU than ndtri and as accurate on the (0, 1) grid of u used here.
        z = jnp.sqrt(2.0).astype(u.dtype) * jax.lax.erf_inv(2.0 * u - 1.0)
        return mu_p * jnp.exp(sigma * z - 0.5 * sigma**2)

    def _prefill_variance(self) -> jax.Array:
        if self.prefill == "constant":
            return jnp.zeros_like(jnp.asarray(self.mu_p, dtype=float))
        if self.prefill == "exponential":
            return self.mu_p**2
        return self.mu_p**2 * jnp.expm1(self.prefill_sigma**2)

    def _fresh(self, bits_d, bits_p):
        decode = 1 + self._geometric_count(_uniform_open(bits_d))
        return self._prefill(_uniform_open(bits_p)), decode

    def _stationary(self, bits):
        # Memorylessness: the age of the request in a slot is geometric on {0,1,..}
        # and its remaining life is an independent fresh geometric on {1,2,..}.
        index = self._geometric_count(_uniform_open(bits[0]))
        remaining = 1 + self._geometric_count(_uniform_open(bits[1]))
        prefill = self._prefill(_uniform_open(bits[2]))
        return prefill, index + remaining, index

    def _decode_log_prob(self, decode):
        p = self.finish_probability
        return jnp.log(p) + (decode - 1).astype(p.dtype) * jnp.log1p(-p)

    def _stationary_log_prob(self, decode, index):
        # age ~ p (1-p)^index and remaining = decode - index ~ p (1-p)^(remaining - 1)
        p = self.finish_probability
        return 2 * jnp.log(p) + (decode - 1).astype(p.dtype) * jnp.log1p(-p)

    def theta(self):
        return self.mu_p + self.mu_d

    def slot_variance(self):
        # Load = P + age with P independent of the geometric age (variance (1-p)/p^2).
        p = self.finish_probability
        return self._prefill_variance() + (1.0 - p) / p**2

    def mean_decode_steps(self):
        return 1.0 + self.mu_d

    def _decode_log_mgf_neg(self, t):
        p = 1.0 / (1.0 + float(self.mu_d))
        t = np.asarray(t, dtype=np.float64)
        return np.log(p) - t - np.log1p(-(1.0 - p) * np.exp(-t))


class Empirical(Workload):
    """Requests resampled with replacement from observed ``(prefill, decode)`` pairs.

    **Arguments:**

    - ``prefill_tokens``: shape ``(n,)``, prompt tokens in the KV cache, finite ``>= 0``
      (real values are allowed, e.g. for scaled traces).
    - ``decode_steps``: shape ``(n,)``, integer decode steps, ``>= 1``. For a trace
      that records output tokens, one token is emitted per step, so decode steps =
      output tokens (see :func:`afdjax.load_trace` to change that mapping).

    Row ``j`` is drawn as a whole, so any correlation between P and D is kept.
    ``theta`` and ``slot_variance`` are the plug-in estimators of PAPER.md section 2.
    """

    prefill_tokens: jax.Array
    decode_steps: jax.Array

    def __init__(self, prefill_tokens, decode_steps):
        prefill = np.asarray(prefill_tokens) if not isinstance(prefill_tokens, jax.Array) else prefill_tokens
        decode = np.asarray(decode_steps) if not isinstance(decode_steps, jax.Array) else decode_steps
        if prefill.ndim != 1 or decode.ndim != 1 or prefill.shape != decode.shape:
            raise ValueError(
                f"prefill_tokens and decode_steps must be 1-D arrays of equal length; got shapes "
                f"{tuple(prefill.shape)} and {tuple(decode.shape)}"
            )
        if prefill.shape[0] == 0:
            raise ValueError("prefill_tokens and decode_steps are empty: expected at least one request")
        if isinstance(decode, np.ndarray):
            validate_lengths("prefill_tokens", prefill, minimum=0, integer=False)
            validate_lengths("decode_steps", decode, minimum=1, integer=True)
            if decode.max() >= 2**30:
                raise ValueError(f"decode_steps has a value {decode.max()} >= 2**30, which is not supported")
            total = int(np.sum(decode, dtype=np.int64))
            if total >= 2**31:
                raise ValueError(
                    f"decode_steps sums to {total} steps; at most 2**31 - 1 are supported (stationary "
                    "sampling counts steps in int32). Subsample the trace's rows: the workload's "
                    "statistics need far fewer requests"
                )
        self.prefill_tokens = jnp.asarray(prefill, dtype=jnp.zeros(()).dtype)
        self.decode_steps = jnp.asarray(decode, dtype=jnp.int32)

    def describe(self) -> str:
        return f"empirical ({self.num_requests} requests)"

    @property
    def num_requests(self) -> int:
        return int(self.decode_steps.shape[0])

    def _fresh(self, bits_d, bits_p):
        row = _uniform_int(bits_d, bits_p, self.num_requests)
        return self.prefill_tokens[row], self.decode_steps[row]

    def _stationary(self, bits):
        # Row j with probability D_j / sum(D) (integer target in [0, sum D), which the
        # constructor keeps below 2^31), then an index uniform in [0, D_j).
        cum = jnp.cumsum(self.decode_steps)
        target = _uniform_int(bits[0], bits[1], cum[-1])
        row = jnp.searchsorted(cum, target, side="right").astype(jnp.int32)
        decode = self.decode_steps[row]
        index = _uniform_int(bits[2], bits[3], decode)
        return self.prefill_tokens[row], decode, index

    def _moments(self):
        d = self.decode_steps.astype(self.prefill_tokens.dtype)
        p = self.prefill_tokens
        sum_d = jnp.sum(d)
        theta = jnp.sum(d * p + d * (d - 1) / 2) / sum_d
        second = jnp.sum(d * p**2 + p * d * (d - 1) + d * (d - 1) * (2 * d - 1) / 6) / sum_d
        return theta, second - theta**2

    def theta(self):
        return self._moments()[0]

    def slot_variance(self):
        return self._moments()[1]

    def mean_decode_steps(self):
        return jnp.mean(self.decode_steps.astype(self.prefill_tokens.dtype))

    def _decode_log_mgf_neg(self, t):
        d, counts = np.unique(np.asarray(self.decode_steps), return_counts=True)
        w = counts / counts.sum()
        t = np.asarray(t, dtype=np.float64)[:, None]
        # log-sum-exp for stability: log sum_i w_i exp(-t d_i)
        a = np.log(w)[None, :] - t * d[None, :]
        m = a.max(axis=1, keepdims=True)
        return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]


def _show_float(x) -> str:
    """A parameter for display, or '<traced>' when it has no concrete value."""
    try:
        return f"{float(x):g}"
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return "<traced>"


def _show(x) -> str:
    """A number as a user wrote it: 3 rather than np.float64(3.0)."""
    x = float(x)
    return str(int(x)) if math.isfinite(x) and x == int(x) else repr(x)


def validate_lengths(name: str, values: np.ndarray, minimum: int, integer: bool = True) -> None:
    """Raise ValueError unless ``values`` are finite (integers if ``integer``) ``>= minimum``."""
    values = np.asarray(values)
    kind = "integers" if integer else "numbers"
    if not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {values.dtype}")
    v = values.astype(np.float64)
    bad = ~np.isfinite(v)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} in record {i + 1} is {_show(values[i])}: not finite; expected {kind} >= {minimum}")
    bad = v < minimum
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} in record {i + 1} is {_show(values[i])}: expected {kind} >= {minimum}")
    bad = v != np.round(v)
    if integer and bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} in record {i + 1} is {_show(values[i])}: not an integer; expected {kind} >= {minimum}")
