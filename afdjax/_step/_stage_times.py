"""Random stage times per layer (issue 13) for the engine's step models.

With ``latency.noise`` or ``latency.routing`` set the stage times of a step are random
given the loads. A model with ``L = latency.num_layers`` layers (1 when ``None``) hands
off A -> F -> A at every layer; the engine represents the ``L`` layers by
``K = min(L, stage_layers)`` sampled layers, each standing for ``L / K`` layers: the
stage times of a sampled layer are the whole-step times over ``K`` times its factors.

* The mean step time of the barrier is exact (each sampled layer has the distribution
  of every layer); the per-step spread of the layer-sum is overstated by up to
  ``sqrt(L / K)`` (``K`` independent terms of weight ``1/K`` instead of ``L`` of weight
  ``1/L``). The mean over many steps, hence the throughput, is unaffected; quantiles of
  the step time are wider than exact. ``experiments/stage_layers_accuracy.py`` measures it.
* Noise factors: LogNormal with mean 1 (``_stage.lognormal_factor``), one per
  Attention instance per layer (per micro-batch in the pipeline), one per layer (per
  micro-batch) for the FFN and for each communication direction.
* Routing: the token-expert pairs of a layer fall on the ranks as
  ``Multinomial(N, q)`` (``N = r B_g top_k``, ``q = routing.rank_shares()``). The engine
  uses the Gaussian approximation ``count_i = N q_i + sqrt(N) X_i`` with
  ``X ~ Normal(0, diag(q) - q q^T)`` (drawn as ``X_i = sqrt(q_i) z_i - q_i sum_j sqrt(q_j)
  z_j``; the counts still sum to ``N`` exactly), so the cost is ranks x layers x steps
  (x ratios for the max), not tokens. It is accurate when every rank expects many pairs
  (``N q_i >~ 20``); for a handful of pairs per rank it misses the discreteness of the
  counts. The same normals serve every ratio (common random numbers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._stage import (
    ROLE_ATTENTION,
    ROLE_COMM,
    ROLE_COMM_BACK,
    ROLE_FFN,
    ROLE_RANK,
    lognormal_factor,
    stage_normals,
)

STAGE_LAYERS = 16
"""Default ``K_MAX``: at most this many sampled layers per step (``stage_layers``)."""


BLOCK_ELEMENTS = 2**22
"""Largest per-layer array (elements) of one block of steps timed together with random stage
times: blocks follow each other, so the working memory does not grow with the chunk
length. Blocks are as long as this allows (a loop over short blocks ran up to 6 times
slower on CPU than one vectorised pass)."""


def block_steps(latency, max_ratio: int, groups: int, layers: int, steps: int) -> int:
    """Steps per block: the per-layer arrays are ``(r_max, G, K)`` per step, times the
    ranks with routing (the busiest rank is taken per ratio)."""
    per_step = max_ratio * groups * layers * (1 if latency.routing is None else latency.routing.ranks)
    return max(1, min(steps, BLOCK_ELEMENTS // per_step))


def step_blocks(arrays, block: int):
    """Split the last (step) axis of each array into blocks: ``(..., S)`` ->
    ``(n, ..., b)`` with ``b = min(S, block)``, ``n = ceil(S / b)``; the last block is padded
    by repeating the last step (``unblock`` drops the padding)."""
    S = arrays[0].shape[-1]
    b = min(S, block)
    n = -(-S // b)

    def split(x):
        x = jnp.concatenate([x, jnp.repeat(x[..., -1:], n * b - S, axis=-1)], axis=-1) if n * b > S else x
        return jnp.moveaxis(x.reshape(x.shape[:-1] + (n, b)), -2, 0)

    return jax.tree_util.tree_map(split, arrays)


def unblock(arrays, steps: int):
    """Inverse of ``step_blocks``: ``(n, ..., b)`` -> ``(..., steps)`` (``None`` stays ``None``)."""

    def join(x):
        x = jnp.moveaxis(x, 0, -2)
        return x.reshape(x.shape[:-2] + (-1,))[..., :steps]

    return jax.tree_util.tree_map(join, arrays)


def sampled_layers(latency, stage_layers: int) -> int:
    """``K = min(L, stage_layers)``, ``L = latency.num_layers`` (1 when ``None``)."""
    return min(latency.layers(), int(stage_layers))


def layer_mean(x: jax.Array, axis: int) -> jax.Array:
    """Mean over the layer axis, exact when every layer is equal: ``x_0 + sum_l (x_l - x_0) / K``
    (so neutral noise reproduces the deterministic step bit for bit)."""
    x0 = jnp.take(x, 0, axis=axis)
    return x0 + jnp.sum(x - jnp.expand_dims(x0, axis), axis=axis) / x.shape[axis]


def attention_factors(latency, keys, num_instances: int, groups: int, layers: int):
    """``(J, G, K, S)`` factors of each instance's attention at each micro-batch and layer,
    or ``None`` without noise."""
    if latency.noise is None:
        return None
    z = stage_normals(keys, ROLE_ATTENTION, jnp.arange(num_instances, dtype=jnp.uint32), groups, layers)
    return lognormal_factor(latency.noise.attention_cv, z)


def _shared_factors(latency, keys, role: int, cv_name: str, groups: int, layers: int):
    if latency.noise is None:
        return None
    z = stage_normals(keys, role, jnp.zeros((), jnp.uint32), groups, layers)  # (G, K, S)
    return lognormal_factor(getattr(latency.noise, cv_name), z)


def ffn_layer_times(latency, keys, ratio, group_size, ffn_time, layers: int):
    """``(r_max, G, K, S)`` FFN time of each ratio, micro-batch and sampled layer (whole-step
    units, i.e. ``L`` times one layer's time), routed and with its noise factor.

    ``ratio``: ``(r_max,)``; ``group_size``: ``(G,)`` slots per micro-batch;
    ``ffn_time``: ``(r_max, G)`` the balanced ``alpha_f r B_g + beta_f``."""
    S = keys[0].shape[0]
    G = group_size.shape[0]
    routing = latency.routing
    if routing is None:
        times = ffn_time[:, :, None, None]
    else:
        q = routing.rank_shares()  # (n,)
        z = stage_normals(keys, ROLE_RANK, jnp.arange(routing.ranks, dtype=jnp.uint32), G, layers)  # (n, G, K, S)
        sq = jnp.sqrt(q)
        x = sq[:, None, None, None] * z - q[:, None, None, None] * jnp.sum(sq[:, None, None, None] * z, axis=0)
        pairs = ratio[:, None] * group_size[None, :] * routing.top_k  # (r_max, G)
        scale = jax.lax.rsqrt(pairs)[:, None, :, None, None]  # (r_max, 1, G, 1, 1)
        busiest = jnp.max(q[None, :, None, None, None] + x[None] * scale, axis=1)  # (r_max, G, K, S)
        tokens = ratio[:, None] * group_size[None, :]
        times = latency.alpha_f * (tokens * routing.ranks)[:, :, None, None] * busiest + latency.beta_f
    f = _shared_factors(latency, keys, ROLE_FFN, "ffn_cv", G, layers)
    if f is not None:
        times = times * f[None]
    return jnp.broadcast_to(times, (ffn_time.shape[0], G, layers, S))


def comm_layer_times(latency, keys, comm_time, back_time, layers: int):
    """``(fwd, back)``, each ``(r_max, G, K, S)`` (or ``(r_max, G, 1, 1)`` without noise):
    the A->F and F->A times with their noise factors. ``comm_time``, ``back_time``: ``(r_max, G)``."""
    G = comm_time.shape[1]
    fwd, back = comm_time[:, :, None, None], back_time[:, :, None, None]
    c = _shared_factors(latency, keys, ROLE_COMM, "comm_cv", G, layers)
    if c is None:
        return fwd, back
    c_back = _shared_factors(latency, keys, ROLE_COMM_BACK, "comm_cv", G, layers)
    return fwd * c[None], back * c_back[None]
