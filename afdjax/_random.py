"""Counter-based random bits and their conversion to numbers (a leaf module).

The engine draws every random number from ``threefry2x32(key, counter)`` with counters
laid out by (replica, instance, slot, request), so a parameter change never reshuffles
the randomness (common random numbers across ratios, coefficients and buffer sizes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32 (20 rounds) of counters ``(x1, x2)`` under key ``(k1, k2)``.

    Bit-for-bit the same as ``jax.extend.random.threefry2x32_p`` (tested), written out
    in array operations so that XLA fuses and vectorises it: on CPU this is about ten
    times faster than the primitive, whose lowering loops over rounds.
    """
    k1, k2, x1, x2 = (jnp.asarray(v, jnp.uint32) for v in (k1, k2, x1, x2))
    keys = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
    a, b = x1 + keys[0], x2 + keys[1]
    for i in range(5):
        for rot in _THREEFRY_ROTATIONS[i % 2]:
            a = a + b
            b = ((b << jnp.uint32(rot)) | (b >> jnp.uint32(32 - rot))) ^ a
        a = a + keys[(i + 1) % 3]
        b = b + keys[(i + 2) % 3] + jnp.uint32(i + 1)
    return a, b


def uniform_open(bits: jax.Array) -> jax.Array:
    """Map uint32 bits to floats strictly inside (0, 1), at the default float dtype."""
    dtype = jnp.zeros(()).dtype
    if dtype == jnp.float64:
        return (bits.astype(jnp.float64) + 0.5) * (2.0**-32)
    # k + 0.5 is not representable for k >= 2^23 and rounds to even: the top pattern
    # (k = 2^24 - 1) became exactly 1.0 (an infinite exponential prefill). It is kept
    # at the largest float32 below 1; every other value is unchanged.
    value = ((bits >> 8).astype(jnp.float32) + 0.5) * jnp.float32(2.0**-24)
    return jnp.minimum(value, jnp.float32(1.0 - 2.0**-24))


def mulhi_u32(a: jax.Array, b: jax.Array) -> jax.Array:
    """High 32 bits of the 64-bit product of two uint32 arrays (16-bit limbs)."""
    mask = jnp.uint32(0xFFFF)
    a0, a1, b0, b1 = a & mask, a >> 16, b & mask, b >> 16
    low, cross1, cross2 = a0 * b0, a1 * b0, a0 * b1
    mid = (low >> 16) + (cross1 & mask) + (cross2 & mask)
    return a1 * b1 + (cross1 >> 16) + (cross2 >> 16) + (mid >> 16)


def uniform_int(hi: jax.Array, lo: jax.Array, n: jax.Array) -> jax.Array:
    """``floor(x n / 2^64)`` for the 64-bit ``x = hi 2^32 + lo``: an integer in ``[0, n)``.

    Uniform up to a relative bias of at most ``n / 2^64`` (one 32-bit word and ``% n``
    would be biased by up to ``n / 2^32``, which matters for ``n`` near 2^31).
    Requires ``1 <= n < 2^31``.
    """
    n = jnp.asarray(n).astype(jnp.uint32)
    low_word = hi * n  # low 32 bits of hi * n (wraps)
    total = low_word + mulhi_u32(lo, n)
    carry = (total < low_word).astype(jnp.uint32)
    return (mulhi_u32(hi, n) + carry).astype(jnp.int32)
