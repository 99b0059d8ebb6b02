"""Requests resampled from a trace: the empirical workload."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._random import mulhi_u32 as _mulhi_u32
from .._random import uniform_int as _uniform_int
from .._random import uniform_open as _uniform_open
from .._validate import float_leaf, invalid
from ._base import Workload, validate_lengths

_TRACED = (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError)


def _uniform_int_and_fraction(hi, lo, n):
    """``(floor(x n / 2^64), V)`` for the 64-bit ``x = hi 2^32 + lo``: the integer of
    ``_random.uniform_int`` (bit for bit the same arithmetic) and ``V`` in
    (0, 1) from bits 32..63 of ``x n mod 2^64``, the fractional part of ``x n / 2^64``,
    which is uniform and independent of the integer up to ``2^-32`` (no extra draw)."""
    n = jnp.asarray(n).astype(jnp.uint32)
    low_word = hi * n
    total = low_word + _mulhi_u32(lo, n)
    carry = (total < low_word).astype(jnp.uint32)
    return (_mulhi_u32(hi, n) + carry).astype(jnp.int32), _uniform_open(total)


class Empirical(Workload):
    """Requests resampled with replacement from observed ``(prefill, decode)`` pairs.

    Arguments:
        prefill_tokens: shape ``(n,)``, prompt tokens in the KV cache, finite ``>= 0``
            (real values are allowed, e.g. for scaled traces).
        decode_steps: shape ``(n,)``, integer decode steps, ``>= 1``. For a trace
            that records output tokens, one token is emitted per step, so decode steps =
            output tokens (see [`load_trace`][afdjax.load_trace] to change that mapping).
        decode_scale: ``s > -1``, default 0: decode lengths x ``(1 + s)``, so
            ``decode_scale=0.1`` asks how throughput and the optimum move if outputs grow by
            10 %. A drawn row's ``D`` becomes ``D' = max(1, floor(D (1 + s) + V))`` with ``V``
            uniform on (0, 1) (the fractional part of the row draw, no extra random number):
            ``E[D' | row] = D (1 + s)`` (exact while ``D (1 + s) >= 1``), the ratio of ``D'``
            to ``D`` stays within one step of ``1 + s``, and ``s = 0`` gives ``D' = D`` bit
            for bit. ``s`` is an array leaf: differentiable with the coupled decode estimator
            (``decode_estimator="coupled"``, the default, with two-sided jumps: every request
            carries weight ``D``, up from the row's lower length, down from its upper one; the
            score function gives it no derivative, and the micro-batch pipeline uses the score
            function), e.g.
            ``throughput_gradients(...).workload.decode_scale`` is
            ``d T / d s``.

    Row ``j`` is drawn as a whole, so any correlation between P and D is kept.
    ``theta`` and ``slot_variance`` are the plug-in estimators of arXiv 2601.21351 section 2
    (over the scaled lengths: each row's ``D'`` takes ``k = floor(D (1 + s))`` with
    probability ``1 - f`` and ``k + 1`` with probability ``f = D (1 + s) - k``).
    """

    prefill_tokens: jax.Array
    decode_steps: jax.Array
    decode_scale: jax.Array

    def __init__(self, prefill_tokens, decode_steps, decode_scale=0.0):
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
        try:
            scale = float(decode_scale)
        except _TRACED:
            scale = None
        if scale is not None and not (math.isfinite(scale) and scale > -1.0):
            raise invalid("decode_scale", scale, "a finite number > -1")
        self.prefill_tokens = jnp.asarray(prefill, dtype=jnp.zeros(()).dtype)
        self.decode_steps = jnp.asarray(decode, dtype=jnp.int32)
        self.decode_scale = float_leaf(decode_scale)

    def describe(self) -> str:
        try:
            scale = float(self.decode_scale)
        except _TRACED:
            return f"empirical ({self.num_requests} requests, decode x (1 + <traced>))"
        if scale == 0.0:
            return f"empirical ({self.num_requests} requests)"
        return f"empirical ({self.num_requests} requests, decode x {1.0 + scale:g})"

    @property
    def num_requests(self) -> int:
        return int(self.decode_steps.shape[0])

    def _cell(self, d):
        """``(k, f)`` of rows with trace length ``d`` (int): ``D (1 + s) = k + f``,
        ``k = floor(D (1 + s))`` (no gradient), ``f`` in [0, 1) carrying ``d/ds = D``."""
        s = jnp.asarray(self.decode_scale, self.prefill_tokens.dtype)
        ds = d.astype(s.dtype) * s  # D s: the extra length, exactly 0 at s = 0
        k_extra = jax.lax.stop_gradient(jnp.floor(ds))
        return d + k_extra.astype(jnp.int32), ds - k_extra

    def _scaled(self, d, v):
        """``D' = max(1, D + floor(D s + V))`` (int32): exactly ``D`` at ``s = 0``."""
        s = jax.lax.stop_gradient(jnp.asarray(self.decode_scale, self.prefill_tokens.dtype))
        extra = jnp.floor(d.astype(s.dtype) * s + v.astype(s.dtype))
        return jnp.maximum(d + extra.astype(jnp.int32), 1)

    def _fresh(self, bits_d, bits_p):
        row, v = _uniform_int_and_fraction(bits_d, bits_p, self.num_requests)
        return self.prefill_tokens[row], self._scaled(self.decode_steps[row], v)

    def _stationary_parts(self, bits):
        """``(row, k, f, c, D', index)`` of the length-biased slot state. ``E[D' | row] =
        D (1 + s)`` is proportional to ``D``, so the row is drawn with probability
        ``D_j / sum(D)`` at every ``s`` (integer target in [0, sum D), which the
        constructor keeps below 2^31); then ``D'`` is ``k + 1`` with the length-biased
        probability ``c = f (k + 1) / (D (1 + s))`` (``V < c``), else ``k``; the index is
        uniform in ``[0, D')``."""
        cum = jnp.cumsum(self.decode_steps)
        target, v = _uniform_int_and_fraction(bits[0], bits[1], cum[-1])
        row = jnp.searchsorted(cum, target, side="right").astype(jnp.int32)
        d = self.decode_steps[row]
        k, f = self._cell(d)
        c = f * (k + 1).astype(f.dtype) / (k.astype(f.dtype) + f)
        decode = jnp.maximum(jnp.where(v < jax.lax.stop_gradient(c), k + 1, k), 1)
        index = _uniform_int(bits[2], bits[3], decode)
        return row, k, f, c, decode, index

    def _stationary(self, bits):
        row, _, _, _, decode, index = self._stationary_parts(bits)
        return self.prefill_tokens[row], decode, index

    # ------------------------------------------------------------ coupled decode jumps
    # Given the row, D' is k (V < 1 - f) or k + 1 and d/ds E[g(D')] = D (g(k+1) - g(k))
    # exactly (df/ds = D). Two-sided: a request at k carries weight D with an up jump
    # (k -> k + 1), one at k + 1 weight -D with a down jump (k + 1 -> k): both have the
    # same difference g(k+1) - g(k) of the path with every other draw fixed, so the
    # expectation over V is D (g(k+1) - g(k)) whatever f. (The one-sided form, weight
    # D / (1 - f) on k only, is exact too but heavy-tailed as f -> 1.) Rows with k = 0
    # (D (1 + s) < 1) always give D' = 1: no jump.
    def _has_decode_jumps(self) -> bool:
        return True

    def _has_down_jumps(self) -> bool:
        return True

    def _fresh_cell(self, bits_d, bits_p):
        row, _ = _uniform_int_and_fraction(bits_d, bits_p, self.num_requests)
        k, f = self._cell(self.decode_steps[row])
        return k, f - jax.lax.stop_gradient(f)  # surrogate: value 0, derivative D

    def _fresh_jump_weight(self, bits_d, bits_p, decode):
        k, w = self._fresh_cell(bits_d, bits_p)
        return jnp.where((decode == k) & (k >= 1), w, 0.0)

    def _fresh_down_weight(self, bits_d, bits_p, decode):
        k, w = self._fresh_cell(bits_d, bits_p)
        return jnp.where((decode == k + 1) & (k >= 1), -w, 0.0)

    def _stationary_cell(self, bits, index):
        """``(k, c~, D', index at k, index at k + 1)``: ``c~`` value 0, derivative ``c'(s)``
        (the row does not move; ``D' = k + 1`` when ``V < c``). With the index's uniform
        ``x`` fixed, ``floor(x k)`` and ``floor(x (k + 1))`` differ by 0 or 1."""
        _, k, _, c, dec, _ = self._stationary_parts(bits)
        w = jnp.where(k >= 1, c - jax.lax.stop_gradient(c), 0.0)
        return k, w, dec, _uniform_int(bits[2], bits[3], k), _uniform_int(bits[2], bits[3], k + 1)

    def _stationary_jump_weights(self, bits, decode, index):
        # D' = k -> k + 1: the index grows by one (an "age" jump) or the remaining life does.
        k, w, dec, _, index_up = self._stationary_cell(bits, index)
        w = jnp.where(dec == k, w, 0.0)
        age = jnp.where(index_up > index, w, 0.0)
        return age, w - age

    def _stationary_down_weights(self, bits, decode, index):
        # D' = k + 1 -> k, weight -c': the index falls by one (age) or the remaining life does.
        k, w, dec, index_down, _ = self._stationary_cell(bits, index)
        w = jnp.where(dec == k + 1, -w, 0.0)
        age = jnp.where(index_down < index, w, 0.0)
        return age, w - age

    def _moments(self):
        fdtype = self.prefill_tokens.dtype
        k, f = self._cell(self.decode_steps)
        p = self.prefill_tokens

        def per_row(g):
            lo, hi = jnp.maximum(k, 1).astype(fdtype), (k + 1).astype(fdtype)
            return jnp.sum((1 - f) * g(lo) + f * g(hi))

        sum_d = per_row(lambda d: d)
        theta = per_row(lambda d: d * p + d * (d - 1) / 2) / sum_d
        second = per_row(lambda d: d * p**2 + p * d * (d - 1) + d * (d - 1) * (2 * d - 1) / 6) / sum_d
        return theta, second - theta**2

    def theta(self):
        return self._moments()[0]

    def slot_variance(self):
        return self._moments()[1]

    def mean_decode_steps(self):
        k, f = self._cell(self.decode_steps)
        return jnp.mean(jnp.maximum(k, 1).astype(f.dtype) * (1 - f) + (k + 1).astype(f.dtype) * f)

    def _decode_log_mgf_neg(self, t):
        raw = np.asarray(self.decode_steps)
        scale = float(self.decode_scale)
        if scale == 0.0:
            d, counts = np.unique(raw, return_counts=True)
            w = counts / counts.sum()
        else:
            x = raw.astype(np.float64) * (1.0 + scale)
            k = np.floor(x)
            frac = x - k
            values = np.concatenate([np.maximum(k, 1), k + 1])
            d, inverse = np.unique(values, return_inverse=True)
            w = np.bincount(inverse, weights=np.concatenate([1 - frac, frac]), minlength=len(d)) / len(raw)
            d, w = d[w > 0], w[w > 0]
        t = np.asarray(t, dtype=np.float64)[:, None]
        # log-sum-exp for stability: log sum_i w_i exp(-t d_i)
        a = np.log(w)[None, :] - t * d[None, :]
        m = a.max(axis=1, keepdims=True)
        return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]
