"""Requests resampled from a trace: the empirical workload."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._random import uniform_int as _uniform_int
from ._base import Workload, validate_lengths


class Empirical(Workload):
    """Requests resampled with replacement from observed ``(prefill, decode)`` pairs.

    **Arguments:**

    - ``prefill_tokens``: shape ``(n,)``, prompt tokens in the KV cache, finite ``>= 0``
      (real values are allowed, e.g. for scaled traces).
    - ``decode_steps``: shape ``(n,)``, integer decode steps, ``>= 1``. For a trace
      that records output tokens, one token is emitted per step, so decode steps =
      output tokens (see :func:`afdjax.load_trace` to change that mapping).

    Row ``j`` is drawn as a whole, so any correlation between P and D is kept.
    ``theta`` and ``slot_variance`` are the plug-in estimators of arXiv 2601.21351 section 2.
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
