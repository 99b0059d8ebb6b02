"""Stage 1, request draws: counter-based random numbers for every slot's requests.

Every slot is a renewal process: request after request, each holding the slot for ``D``
steps. Request ``n`` of slot ``s`` of instance ``j`` in replica ``i`` always gets the bits
``threefry(threefry(key, i, j<<16 | s), n)``, whatever the ratio, the coefficients, the
workload parameters, the chunking or the buffer sizes (common random numbers). Request 0
is the one in the slot at step 0 (stationary or fresh).

The random stage times (``latency.noise``/``latency.routing``) draw from their own
stream: step ``t`` of replica ``i`` has the key ``threefry(stage_key, i, t)`` with
``stage_key = threefry(key, 0xFFFFFFFF, STAGE_TAG)``. The request streams hash
``(i, j<<16 | s)`` with ``i <= 2^31 - 1``, so the counter ``(0xFFFFFFFF, STAGE_TAG)``
never occurs among them.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._random import threefry2x32 as _hash


class SlotState(eqx.Module):
    """Each slot's current request at the start of a chunk (``(r_max, B)`` arrays)."""

    prefill: jax.Array
    """Prompt tokens of the current request (float)."""
    decode: jax.Array
    """Decode steps of the current request (int)."""
    index: jax.Array
    """Decode steps of the current request already done (int)."""
    next_request: jax.Array
    """Counter of the slot's next request (uint32)."""


class SlotStreams(eqx.Module):
    """The per-slot counter keys ``threefry(key, i, j<<16 | s)`` of one replica (``(r_max, B)`` uint32 each)."""

    k1: jax.Array
    k2: jax.Array


def slot_streams(key_words, replica_id, max_ratio: int, batch_size: int) -> SlotStreams:
    instance = jnp.arange(max_ratio, dtype=jnp.uint32)[:, None]
    slot = jnp.arange(batch_size, dtype=jnp.uint32)[None, :]
    k1, k2 = _hash(key_words[0], key_words[1], replica_id, (instance << 16) | slot)  # (rmax, B)
    return SlotStreams(k1, k2)


STAGE_TAG = 0x53544147  # "STAG"


def stage_keys(key_words, replica_id, steps):
    """``(k1, k2)``, ``(S,)`` uint32 each: the stage-time key of each global step index in
    ``steps`` (``(S,)``) of replica ``replica_id`` (see the module docstring)."""
    s1, s2 = _hash(key_words[0], key_words[1], jnp.uint32(0xFFFFFFFF), jnp.uint32(STAGE_TAG))
    return _hash(s1, s2, replica_id, jnp.asarray(steps).astype(jnp.uint32))


def initial_jump_weights(streams: SlotStreams, workload, start: str, state: SlotState):
    """``(age, remaining, age_down, remaining_down)`` value-zero jump surrogates of the
    requests in the slots at step 0 (coupled decode estimator, ``_jumps``), the last
    two ``None`` unless the workload has down jumps; the same bits as ``initial_slots``."""
    k1, k2 = streams.k1, streams.k2
    b0 = _hash(k1, k2, 0, 0)
    down = workload._has_down_jumps()
    if start == "stationary":
        b1 = _hash(k1, k2, 0, 1)
        bits = (b0[0], b0[1], b1[0], b1[1])
        age, remaining = workload._stationary_jump_weights(bits, state.decode, state.index)
        age_down, remaining_down = (
            workload._stationary_down_weights(bits, state.decode, state.index) if down else (None, None)
        )
        return age, remaining, age_down, remaining_down
    zero = jnp.zeros(state.decode.shape, jnp.zeros(()).dtype)
    remaining = workload._fresh_jump_weight(b0[0], b0[1], state.decode)
    if down:
        return zero, remaining, zero, workload._fresh_down_weight(b0[0], b0[1], state.decode)
    return zero, remaining, None, None


def initial_slots(streams: SlotStreams, workload, start: str):
    """``(SlotState, log_prob)``: the requests in the slots at step 0 and the log-likelihood
    of their decode lengths summed per instance (``(r_max,)``, the score-function carrier)."""
    fdtype = jnp.zeros(()).dtype
    k1, k2 = streams.k1, streams.k2
    b0 = _hash(k1, k2, 0, 0)
    if start == "stationary":
        b1 = _hash(k1, k2, 0, 1)
        prefill, decode, index = workload._stationary((b0[0], b0[1], b1[0], b1[1]))
        log_prob = jnp.sum(workload._stationary_log_prob(decode, index), axis=1)
    else:
        prefill, decode = workload._fresh(b0[0], b0[1])
        index = jnp.zeros_like(decode)
        log_prob = jnp.sum(workload._decode_log_prob(decode), axis=1)
    state = SlotState(prefill.astype(fdtype), decode, index, jnp.ones(decode.shape, jnp.uint32))
    return state, log_prob.astype(fdtype)


def draw_requests(streams: SlotStreams, next_request, workload, count: int, jumps: bool = False):
    """The next ``count`` requests of every slot: ``(prefill, decode)``, ``(r_max, B, count)``,
    and with ``jumps`` their coupled-estimator jump surrogates (``_jumps``) third and
    their down-jump surrogates fourth (``None`` unless the workload has down jumps)."""
    offsets = jnp.arange(count, dtype=jnp.uint32)
    bits = _hash(streams.k1[..., None], streams.k2[..., None], next_request[..., None] + offsets, 0)
    prefill, decode = workload._fresh(bits[0], bits[1])
    fdtype = jnp.zeros(()).dtype
    if jumps:
        weight = workload._fresh_jump_weight(bits[0], bits[1], decode).astype(fdtype)
        down = None
        if workload._has_down_jumps():
            down = workload._fresh_down_weight(bits[0], bits[1], decode).astype(fdtype)
        return prefill.astype(fdtype), decode, weight, down
    return prefill.astype(fdtype), decode
