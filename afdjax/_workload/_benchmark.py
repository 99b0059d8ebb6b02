"""Workloads of serving benchmarks: every request the same, or lengths uniform on ranges.

* [`Fixed`][afdjax.Fixed] -- ``P = prefill_tokens`` and ``D = decode_steps`` for every request
  (spec ``fixed:prefill=P,decode=D``).
* [`Uniform`][afdjax.Uniform] -- ``P`` uniform on the integers ``prefill_low .. prefill_high`` and,
  independently, ``D`` uniform on ``decode_low .. decode_high`` (both inclusive; spec
  ``uniform:prefill=A..B,decode=C..D``).

``theta`` and ``slot_variance`` are exact: ``independent_load_moments`` of the
prefill mean and variance and the decode raw moments, which are finite sums here
(``Fixed``: ``theta = P + (D-1)/2``, ``sigma^2 = (D^2 - 1)/12``).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._random import mulhi_u32
from .._random import uniform_int as _uniform_int
from .._validate import check_array_parameter, check_int, float_leaf, invalid
from ._base import Workload, independent_load_moments, show_float

MAX_DECODE_STEPS = 2**30 - 1
"""Longest decode length a workload may give (the engine counts steps in int32)."""


class Fixed(Workload):
    """Every request has ``prefill_tokens`` prompt tokens and ``decode_steps`` decode steps.

    Arguments:
        prefill_tokens: prompt tokens in the KV cache, a finite number ``>= 0`` (an
            array leaf: differentiable, sweepable without recompiling).
        decode_steps: an integer ``>= 1`` (static: the decode length has no gradient).

    Each slot is then periodic: its load runs ``P, P+1, .., P+D-1`` and starts again, so
    ``theta = P + (D-1)/2`` and the slot variance is ``(D^2 - 1)/12`` (tokens^2).

    Examples:
        >>> float(afdjax.Fixed(prefill_tokens=100, decode_steps=50).theta())  # P + (D - 1) / 2
        124.5
    """

    prefill_tokens: jax.Array = eqx.field(converter=float_leaf)
    decode_steps: int = eqx.field(static=True)

    def __init__(self, prefill_tokens, decode_steps):
        self.prefill_tokens = prefill_tokens
        self.decode_steps = check_int("decode_steps", decode_steps, 1, MAX_DECODE_STEPS)

    def __check_init__(self):
        check_array_parameter("prefill_tokens", self.prefill_tokens, allow_zero=True)

    def describe(self) -> str:
        return f"fixed:prefill={show_float(self.prefill_tokens)},decode={self.decode_steps}"

    def _fresh(self, bits_d, bits_p):
        prefill = jnp.broadcast_to(self.prefill_tokens.astype(jnp.zeros(()).dtype), bits_p.shape)
        return prefill, jnp.full(bits_d.shape, self.decode_steps, jnp.int32)

    def _stationary(self, bits):
        decode = jnp.full(bits[0].shape, self.decode_steps, jnp.int32)
        prefill = jnp.broadcast_to(self.prefill_tokens.astype(jnp.zeros(()).dtype), bits[0].shape)
        return prefill, decode, _uniform_int(bits[0], bits[1], decode)

    def _moments(self):
        d = float(self.decode_steps)
        return self._independent_moments(self.prefill_tokens, 0.0, (d, d * d, d * d * d))

    def theta(self):
        return self._moments()[0]

    def slot_variance(self):
        return float_leaf(self._moments()[1])

    def mean_decode_steps(self):
        return float_leaf(self.decode_steps)

    def _decode_log_mgf_neg(self, t):
        return -np.asarray(t, dtype=np.float64) * self.decode_steps


def _power_sums(n: int) -> tuple[int, int, int]:
    """``sum_{d=1}^{n} d^k`` for ``k = 1, 2, 3`` (exact integers)."""
    s1 = n * (n + 1) // 2
    return s1, n * (n + 1) * (2 * n + 1) // 6, s1 * s1


class Uniform(Workload):
    """Prefill tokens uniform on ``prefill_low .. prefill_high`` and, independently, decode
    steps uniform on ``decode_low .. decode_high`` (integers, both ends included).

    Arguments:
        prefill_low: the shortest prompt (tokens), an integer ``>= 0`` (static).
        prefill_high: the longest prompt (tokens), an integer ``>= prefill_low``.
        decode_low: the fewest decode steps, an integer ``>= 1``.
        decode_high: the most decode steps, an integer ``>= decode_low``.

    The stationary
    sampler draws ``D*`` with probability ``d / sum(d)`` by an exact integer search, so
    ``decode_low + .. + decode_high`` must stay below ``2**31`` (``decode_high`` up to
    about 65,000).

    Fresh draws use one 32-bit word per length (``floor(bits n / 2^32)``: uniform up to
    a relative ``n / 2^32``), the stationary index likewise.

    Examples:
        >>> round(float(afdjax.Uniform(0, 100, 1, 9).theta()), 2)
        52.67
    """

    prefill_low: int = eqx.field(static=True)
    prefill_high: int = eqx.field(static=True)
    decode_low: int = eqx.field(static=True)
    decode_high: int = eqx.field(static=True)

    def __init__(self, prefill_low, prefill_high, decode_low, decode_high):
        self.prefill_low = check_int("prefill_low", prefill_low, 0, 2**31 - 1)
        self.prefill_high = check_int("prefill_high", prefill_high, self.prefill_low, 2**31 - 1)
        self.decode_low = check_int("decode_low", decode_low, 1, MAX_DECODE_STEPS)
        self.decode_high = check_int("decode_high", decode_high, self.decode_low, MAX_DECODE_STEPS)
        total = self._decode_sum()
        if total >= 2**31:
            raise invalid(
                "decode_high",
                self.decode_high,
                f"a range whose steps sum below 2**31 (decode_low .. decode_high sums to {total}); "
                "at decode_low=1 that is decode_high <= 65535",
            )

    def _decode_sum(self) -> int:
        return _power_sums(self.decode_high)[0] - _power_sums(self.decode_low - 1)[0]

    def describe(self) -> str:
        return f"uniform:prefill={self.prefill_low}..{self.prefill_high},decode={self.decode_low}..{self.decode_high}"

    @property
    def _num_prefill(self) -> int:
        return self.prefill_high - self.prefill_low + 1

    @property
    def _num_decode(self) -> int:
        return self.decode_high - self.decode_low + 1

    def _prefill(self, bits):
        offset = mulhi_u32(bits, jnp.uint32(self._num_prefill)).astype(jnp.zeros(()).dtype)
        return self.prefill_low + offset

    def _fresh(self, bits_d, bits_p):
        decode = self.decode_low + mulhi_u32(bits_d, jnp.uint32(self._num_decode)).astype(jnp.int32)
        return self._prefill(bits_p), decode

    def _stationary(self, bits):
        # D* = d with probability d / sum(d): an integer target uniform on [0, sum d) (64
        # random bits) searched in the cumulative sums (exact integers below 2^31).
        d = np.arange(self.decode_low, self.decode_high + 1, dtype=np.int64)
        cum = jnp.asarray(np.cumsum(d), dtype=jnp.int32)
        target = _uniform_int(bits[0], bits[1], self._decode_sum())
        decode = self.decode_low + jnp.searchsorted(cum, target, side="right").astype(jnp.int32)
        index = mulhi_u32(bits[3], decode.astype(jnp.uint32)).astype(jnp.int32)
        return self._prefill(bits[2]), decode, index

    def _moments_host(self) -> tuple[float, float]:
        """``(theta, slot variance)`` in float64 on the host (the parameters are static)."""
        lo, n = self.decode_low, self._num_decode
        sums = [a - b for a, b in zip(_power_sums(self.decode_high), _power_sums(lo - 1))]
        decode_moments = tuple(s / n for s in sums)
        prefill_mean = (self.prefill_low + self.prefill_high) / 2
        prefill_variance = (self._num_prefill**2 - 1) / 12
        index_mean, variance = independent_load_moments(0.0, prefill_variance, decode_moments)
        return prefill_mean + index_mean, variance

    def theta(self):
        return float_leaf(self._moments_host()[0])

    def slot_variance(self):
        return float_leaf(self._moments_host()[1])

    def mean_decode_steps(self):
        return float_leaf((self.decode_low + self.decode_high) / 2)

    def _decode_log_mgf_neg(self, t):
        # mean of e^{-t d} over d = lo .. hi: e^{-t lo} (1 - e^{-t n}) / ((1 - e^{-t}) n)
        t = np.asarray(t, dtype=np.float64)
        n = self._num_decode
        return -t * self.decode_low + np.log(-np.expm1(-t * n)) - np.log(-np.expm1(-t)) - np.log(n)
