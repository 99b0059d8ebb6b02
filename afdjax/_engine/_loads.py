"""Stage 2, slot loads per instance: KV tokens of every instance (or slot group) at every step.

Between two request boundaries a slot's load grows by exactly one token per step, so an
instance's load is

    T_j(k) = T_j(0) + B k + sum of load *jumps* at request boundaries up to step k.

In a chunk of ``L`` steps each slot's next ``M`` requests start at a cumulative sum of
their lengths; the jumps (``P_new - P_old - D_old``) are scatter-added into an
``(r_max, G, L)`` buffer and one cumulative sum gives every group's load at every step
(cost: instance-steps plus requests, not slots x steps). Slot ``s`` is in group
``s % G``; the step model says how many groups it needs (1: per instance).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._step import micro_batch_sizes
from ._draws import SlotState


class ChunkLoads(eqx.Module):
    """The loads of one chunk of ``L`` steps."""

    group_load: jax.Array
    """``(r_max, G, L)``: KV tokens of slot group ``g`` on instance ``j`` at each step."""
    load: jax.Array
    """``(r_max, L)``: KV tokens of instance ``j`` at each step."""
    started: jax.Array
    """``(r_max, B, M)`` bool: the drawn request started inside the chunk."""
    covered: jax.Array
    """Scalar bool: the ``M`` drawn requests reached past the chunk's end for every slot."""
    starts: jax.Array
    """``(r_max, B, M)`` int: local start step of each drawn request (``> L``: after the chunk)."""
    jump: jax.Array
    """``(r_max, B, M)``: load jump ``P_new - P_old - D_old`` at each request's start."""


def cumsum_last(x, block: int = 32):
    """Cumulative sum along the last axis as two small triangular matmuls.

    Sums within blocks of ``block`` and then across block totals: a few times faster on
    CPU than ``jnp.cumsum`` for long axes, with the same accuracy class (each output is a
    sum of at most ``block + n / block`` rounded terms).
    """
    n = x.shape[-1]
    nb = -(-n // block)
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, nb * block - n)]).reshape(*x.shape[:-1], nb, block)
    inner = xp @ jnp.triu(jnp.ones((block, block), x.dtype))
    offsets = inner[..., -1] @ jnp.triu(jnp.ones((nb, nb), x.dtype), 1)
    return (inner + offsets[..., None]).reshape(*x.shape[:-1], nb * block)[..., :n]


def _cumsum_int(x, bound: int):
    """Exact cumulative sum of non-negative int32 values along the last axis, whose
    total is at most ``bound``: through float matmuls while floats hold it exactly."""
    exact = 2**53 if jnp.zeros(()).dtype == jnp.float64 else 2**24
    if bound < exact:
        dtype = jnp.zeros(()).dtype
        return jnp.round(cumsum_last(x.astype(dtype), block=16)).astype(jnp.int32)
    return jnp.cumsum(x, axis=-1)


def chunk_loads(slots: SlotState, new_prefill, new_decode, groups: int, chunk_steps: int):
    """Loads over one chunk, and the slot state after it.

    ``new_prefill``, ``new_decode``: ``(r_max, B, M)``, each slot's next ``M`` requests.
    Returns ``(next_slots, ChunkLoads)``.
    """
    fdtype = jnp.zeros(()).dtype
    prefill, decode, index = slots.prefill, slots.decode, slots.index
    rmax, B, M = new_decode.shape
    L, G = chunk_steps, groups
    steps_local = jnp.arange(L)
    remaining = jnp.minimum(decode - index, L + 1)  # >= 1
    # Lengths clipped at L + 1 give exact start steps for every request starting
    # inside this chunk and keep the cumulative sum far from int32 overflow.
    clipped = jnp.minimum(new_decode, L + 1)
    ends = remaining[..., None] + _cumsum_int(clipped, bound=M * (L + 1))
    starts = ends - clipped  # (rmax, B, M), increasing
    covered = jnp.all(ends[..., -1] > L)
    prev_prefill = jnp.concatenate([prefill[..., None], new_prefill[..., :-1]], axis=-1)
    prev_decode = jnp.concatenate([decode[..., None], new_decode[..., :-1]], axis=-1)
    jump = new_prefill - prev_prefill - prev_decode.astype(fdtype)
    if G == 1:
        flat_base = (jnp.arange(rmax) * L)[:, None, None]
    else:
        slot_group = np.arange(B) % G
        flat_base = jnp.asarray(((np.arange(rmax)[:, None] * G + slot_group[None, :]) * L)[..., None])
    flat = jnp.where(starts < L, flat_base + starts, rmax * G * L)
    jumps = jnp.zeros(rmax * G * L, fdtype).at[flat.reshape(-1)].add(jump.reshape(-1), mode="drop")
    if G == 1:
        load0 = jnp.sum(prefill + index.astype(fdtype), axis=1)  # (rmax,)
        load = load0[:, None] + B * steps_local.astype(fdtype)[None, :] + cumsum_last(jumps.reshape(rmax, L))
        group_load = load[:, None, :]
    else:
        group_size = jnp.asarray(micro_batch_sizes(B, G), fdtype)  # (G,)
        slot_load = prefill + index.astype(fdtype)  # (rmax, B)
        padded = jnp.pad(slot_load, ((0, 0), (0, (-B) % G))).reshape(rmax, -1, G)
        load0 = jnp.sum(padded, axis=1)  # (rmax, G)
        group_load = (
            load0[:, :, None]
            + group_size[None, :, None] * steps_local.astype(fdtype)
            + cumsum_last(jumps.reshape(rmax, G, L))
        )  # (rmax, G, L)
        load = jnp.sum(group_load, axis=1)  # (rmax, L)

    # Slot state at local step L: the last request started at or before L.
    started = jnp.sum(starts <= L, axis=-1)  # (rmax, B)
    last = jnp.maximum(started - 1, 0)[..., None]
    take = lambda a: jnp.take_along_axis(a, last, axis=-1)[..., 0]
    has_new = started > 0
    next_slots = SlotState(
        prefill=jnp.where(has_new, take(new_prefill), prefill),
        decode=jnp.where(has_new, take(new_decode), decode),
        index=jnp.where(has_new, L - take(starts), index + L),
        next_request=slots.next_request + started.astype(jnp.uint32),
    )
    return next_slots, ChunkLoads(
        group_load=group_load, load=load, started=starts < L, covered=covered, starts=starts, jump=jump
    )
