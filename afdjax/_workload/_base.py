"""The abstract workload and the stationary load moments shared by every workload.

A workload is a distribution of requests ``(P, D)``: prefill tokens ``P`` and decode
steps ``D >= 1``. A request holds a slot for ``D`` decode steps; at its ``i``-th step
(``i = 0 .. D-1``) the slot's KV load is ``P + i`` tokens. Slots are refilled at once, so
each slot is a renewal process and its stationary state is *length-biased*: the slot holds
request ``j`` with probability proportional to ``D_j``, at an index uniform in
``[0, D_j)`` (arXiv 2601.21351, section 2). Hence

    theta = E[D P + D (D-1)/2] / E[D],
    sigma^2 = E[D P^2 + P D (D-1) + D (D-1)(2D-1)/6] / E[D] - theta^2.

With ``P`` independent of ``D`` these factorise into the prefill moments and the decode
raw moments (``independent_load_moments``, the one implementation used by every
workload whose two lengths are independent and by the fits of ``afdjax._fit``).

Every workload maps raw random bits to requests deterministically (``_fresh`` and
``_stationary``), so the engine can use common random numbers: request ``n`` of a slot
gets the same bits whatever the parameters.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

PREFILL_FAMILIES = ("constant", "exponential", "lognormal")


def independent_load_moments(prefill_mean, prefill_second_moment, decode_moments):
    """``(theta, slot variance)`` of the stationary slot load for ``P`` independent of ``D``.

    **Arguments:** ``prefill_mean`` ``E[P]`` (tokens), ``prefill_second_moment``
    ``E[P^2]`` (tokens^2), ``decode_moments`` ``(E[D], E[D^2], E[D^3])`` (steps, steps^2,
    steps^3). Works on Python floats, NumPy and JAX values alike (arithmetic only).

    ``theta = E[P] + E[D(D-1)] / (2 E[D])`` and
    ``sigma^2 = (E[D] E[P^2] + E[P] E[D(D-1)] + E[D(D-1)(2D-1)]/6) / E[D] - theta^2``.
    The variance is shift-invariant in ``P``: callers that need it accurately in float32
    pass the *centred* prefill (``0, Var P``) and add ``E[P]`` to ``theta`` afterwards
    (see ``Workload._independent_moments``), so no large ``theta^2`` cancels.
    """
    m1, m2, m3 = decode_moments
    theta = prefill_mean + (m2 - m1) / (2 * m1)
    triple = 2 * m3 - 3 * m2 + m1  # E[D (D-1) (2D-1)]
    return theta, (m1 * prefill_second_moment + prefill_mean * (m2 - m1) + triple / 6) / m1 - theta**2


class Workload(eqx.Module):
    """Abstract request-length distribution.

    Implementations: [`Geometric`][afdjax.Geometric] (the paper's model),
    [`Empirical`][afdjax.Empirical] (a trace), [`Fixed`][afdjax.Fixed] and
    [`Uniform`][afdjax.Uniform] (serving benchmarks) and [`FittedWorkload`][afdjax.FittedWorkload]
    (fitted families, from [`to_workload`][afdjax.WorkloadFit.to_workload]).

    The engine calls ``_fresh``, ``_stationary``, ``_decode_log_prob``,
    ``_stationary_log_prob``, ``_decode_log_mgf_neg`` (host side), ``mean_decode_steps``,
    ``theta`` and ``slot_variance``.
    """

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
        """Stationary per-slot load variance (tokens^2), arXiv 2601.21351 section 2."""

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

    def _decode_jump_weight(self, decode: jax.Array):
        """Value-zero surrogate ``w~`` of each fresh decode length's jump ``D -> D + 1``:
        its value is 0 and its derivative in the workload's parameters is the jump rate
        ``-dF_theta(D)/dtheta / p_theta(D)`` (coupled estimator, ``afdjax._engine._jumps``).
        ``None``: the family has no such estimator (the score function is used)."""
        return None

    def _fresh_jump_weight(self, bits_d: jax.Array, bits_p: jax.Array, decode: jax.Array):
        """``_decode_jump_weight`` of the fresh requests drawn from ``(bits_d, bits_p)``
        (the same bits as ``_fresh``), for families whose jump rate depends on more
        than the drawn length ([`Empirical`][afdjax.Empirical]'s ``decode_scale``)."""
        return self._decode_jump_weight(decode)

    def _has_decode_jumps(self) -> bool:
        """Whether the coupled decode estimator applies (else the score function)."""
        return self._decode_jump_weight(jnp.ones((1,), jnp.int32)) is not None

    def _stationary_jump_weights(self, bits, decode, index):
        """``(age, remaining)`` value-zero surrogates of the stationary slot's two jump
        kinds: the index grows by one (load +1 while the request lasts) or the remaining
        life grows by one (its end moves one step later). ``None``: not available."""
        return None

    def _has_down_jumps(self) -> bool:
        """Whether the coupled estimator also has *down* jumps (a request one step
        shorter, ``_fresh_down_weight``, ``_stationary_down_weights``). Static."""
        return False

    def _fresh_down_weight(self, bits_d: jax.Array, bits_p: jax.Array, decode: jax.Array):
        """Value-zero surrogate ``v~`` of each fresh request's down jump ``D -> D - 1``: its
        derivative is the signed weight of ``time(path with D - 1) - time(path)`` in the
        estimator (only with ``_has_down_jumps``)."""
        raise NotImplementedError

    def _stationary_down_weights(self, bits, decode, index):
        """``(age, remaining)`` down-jump surrogates of the stationary slot: the index one
        less (load -1 while the request lasts) or the remaining life one less (its end
        one step earlier); only with ``_has_down_jumps``."""
        raise NotImplementedError

    @abc.abstractmethod
    def _decode_log_mgf_neg(self, t: np.ndarray) -> np.ndarray:
        """Host-side ``log E[exp(-t D)]`` for a grid of ``t > 0`` (sizes the engine's buffers)."""

    def _independent_moments(self, prefill_mean, prefill_variance, decode_moments):
        """``(theta, slot variance)`` for ``P`` independent of ``D`` through
        ``independent_load_moments``, with the prefill centred (float32-safe)."""
        index_mean, variance = independent_load_moments(0.0, prefill_variance, decode_moments)
        return prefill_mean + index_mean, variance

    # ------------------------------------------------------------------ public sampling
    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        """Draw fresh requests.

        Returns:
            ``(prefill_tokens, decode_steps)`` of shape ``shape``; prefill
            is float (tokens), decode steps are int32 and ``>= 1``.
        """
        bits = jax.random.bits(key, (2, *shape), dtype=jnp.uint32)
        return self._fresh(bits[0], bits[1])

    def sample_stationary(self, key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Draw slot states from the stationary (length-biased) distribution.

        A slot holds request ``j`` with probability proportional to ``D_j``, at an
        index uniform in ``[0, D_j)``.

        Returns:
            ``(prefill_tokens, decode_steps, index)``; the slot's load is
            ``prefill_tokens + index``.
        """
        bits = jax.random.bits(key, (4, *shape), dtype=jnp.uint32)
        return self._stationary(tuple(bits))


def show_float(x) -> str:
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
        raise ValueError(
            f"{name} in record {i + 1} is {_show(values[i])}: not an integer; expected {kind} >= {minimum}"
        )
