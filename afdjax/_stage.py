"""Stochastic stage times: per-layer noise, MoE expert routing and communication terms.

Three optional parts of a [`LatencyModel`][afdjax.LatencyModel] (issue 13). Every float is an
array leaf (``_validate.float_leaf``), so it can be swept, vmapped and
differentiated without recompiling; integers (counts of experts, ranks, ...) are static.
Times are in the latency model's time unit.

* [`StageNoise`][afdjax.StageNoise]: per-layer random variation of the attention, FFN and
  communication times (LogNormal factors of mean 1).
* [`ExpertRouting`][afdjax.ExpertRouting]: the FFN instance as ``ranks`` expert-parallel ranks; the FFN
  time of a layer follows the busiest rank's routed token-expert pairs.
* [`Communication`][afdjax.Communication]: per-peer cost, a different F->A direction, the FFN's shared link.

The step (``Barrier``) with ``L`` layers:
``tau = sum_l max(max_{j<r} t_A,j a_jl, t_C c_l, t_C' c'_l, t_F,l f_l) / L``
(``a``, ``c``, ``c'``, ``f`` the noise factors, ``t_F,l`` the layer's routed FFN time).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._random import threefry2x32, uniform_open
from ._validate import check_array_parameter, check_int, float_leaf, invalid

_TRACED = (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError)

NOISE_NAMES = ("attention_cv", "ffn_cv", "comm_cv")
COMMUNICATION_NAMES = ("per_peer", "alpha_back", "beta_back", "alpha_link")


def lognormal_parameters(cv: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(mu, sigma)`` of the LogNormal factor with mean 1 and coefficient of variation
    ``cv``: ``sigma^2 = log1p(cv^2)``, ``mu = -sigma^2 / 2``.

    ``sigma`` is computed as ``cv sqrt(log1p(cv^2) / cv^2)`` so that ``cv = 0`` gives
    exactly ``sigma = 0`` (a factor of exactly 1) with a finite derivative (``d sigma /
    d cv = 1`` at 0)."""
    c2 = cv * cv
    # log1p(c2) / c2, by its series 1 - c2/2 + c2^2/3 below 1e-4 (relative error < 3e-13):
    # the quotient's derivative underflows to -inf in float32 at tiny cv otherwise.
    big = c2 > 1e-4
    safe = jnp.where(big, c2, 1.0)
    ratio = jnp.where(big, jnp.log1p(safe) / safe, 1.0 - c2 / 2.0 + c2 * c2 / 3.0)
    sigma = cv * jnp.sqrt(ratio)
    return -0.5 * sigma * sigma, sigma


def lognormal_factor(cv: jax.Array, z: jax.Array) -> jax.Array:
    """The LogNormal factor ``exp(mu + sigma z)`` (mean 1, coefficient of variation
    ``cv``) of standard normal draws ``z``; exactly 1 where ``cv = 0``."""
    mu, sigma = lognormal_parameters(cv)
    return jnp.exp(mu + sigma * z)


class StageNoise(eqx.Module):
    """Per-layer random variation of the stage times (dimensionless coefficients of variation).

    One layer's stage time is its mean time times a factor, LogNormal with mean 1 and
    coefficient of variation ``cv`` (``sigma^2 = log1p(cv^2)``, ``mu = -sigma^2 / 2``),
    independent across layers, steps and instances.

    Every coefficient is finite and ``>= 0``; ``0`` is no variation, exactly today's times.

    Arguments:
        attention_cv: of each Attention instance's time at each layer (one factor per
            instance per layer per step).
        ffn_cv: of the FFN time at each layer (one factor per layer per step).
        comm_cv: of each communication direction at each layer (one factor per
            direction per layer per step).

    """

    attention_cv: jax.Array = eqx.field(converter=float_leaf, default=0.0)
    ffn_cv: jax.Array = eqx.field(converter=float_leaf, default=0.0)
    comm_cv: jax.Array = eqx.field(converter=float_leaf, default=0.0)

    def __check_init__(self):
        for name in NOISE_NAMES:
            check_array_parameter(name, getattr(self, name), allow_zero=True)


class ExpertRouting(eqx.Module):
    """MoE routing on the FFN side: ``ranks`` expert-parallel ranks holding ``num_experts``
    experts (expert ``e`` on rank ``e % ranks`` before redundancy).

    Each of the ``r * B`` tokens of a layer picks ``top_k`` experts independently, with
    replacement, from the popularity ``p`` (``popularity``), so the token-expert pairs
    fall on the ranks as a multinomial with the shares ``rank_shares``, independently
    across layers and steps. The FFN time of one layer is
    ``(alpha_f * ranks / top_k * max_over_ranks(pairs) + beta_f) / L``: perfectly
    balanced routing gives today's ``(alpha_f r B + beta_f) / L``.

    Arguments:
        num_experts: ``E``, routed experts per layer (an integer >= 1; static).
        top_k: experts each token picks (an integer in ``[1, E]``; static).
        ranks: expert-parallel ranks of the FFN instance (an integer in ``[1, E]``; static).
        skew: Zipf exponent ``s`` of the popularity, ``p_e`` proportional to
            ``(e + 1)^-s`` (finite, ``>= 0``; 0 = uniform; an array leaf). Must be 0 when
            ``histogram`` is given.
        histogram: ``None``, or an ``(E,)`` array leaf of measured relative
            popularity (finite, ``>= 0``, positive sum; normalised here).
        redundant_experts: ``h``, the ``h`` most popular experts get one extra
            replica each, on the rank with the smallest expected load at that point (greedy,
            hottest first, excluding the expert's home rank), their traffic split evenly
            between the two replicas (an integer in ``[0, E]``; needs ``ranks >= 2`` when
            ``h > 0``; static).

    Routing is never neutral: even uniform popularity has multinomial imbalance.
    """

    num_experts: int = eqx.field(static=True)
    top_k: int = eqx.field(static=True)
    ranks: int = eqx.field(static=True)
    skew: jax.Array = eqx.field(converter=float_leaf, default=0.0)
    histogram: jax.Array | None = eqx.field(default=None, converter=lambda h: None if h is None else float_leaf(h))
    redundant_experts: int = eqx.field(static=True, default=0)

    def __check_init__(self):
        E = check_int("num_experts", self.num_experts, 1)
        check_int("top_k", self.top_k, 1, E)
        ranks = check_int("ranks", self.ranks, 1, E)
        check_int("redundant_experts", self.redundant_experts, 0, E)
        if self.redundant_experts > 0 and ranks < 2:
            raise invalid("redundant_experts", self.redundant_experts, "0 when ranks=1 (a replica needs another rank)")
        check_array_parameter("skew", self.skew, allow_zero=True)
        if self.histogram is not None:
            shape = jnp.shape(self.histogram)
            if len(shape) < 1 or shape[-1] != E:
                raise invalid(
                    "histogram", self.histogram, f"an array of shape ({E},) (num_experts={E}), got shape {shape}"
                )
            check_array_parameter("histogram", self.histogram, allow_zero=True)
            try:
                sums = np.sum(np.asarray(self.histogram, dtype=float), axis=-1)
                skews = np.asarray(self.skew, dtype=float)
            except _TRACED:
                return
            if np.any(sums <= 0):
                raise invalid("histogram", self.histogram, "relative popularities with a positive sum")
            if np.any(skews != 0):
                raise invalid("skew", skews, "0 when histogram is given (the histogram sets the popularity)")

    def popularity(self) -> jax.Array:
        """``(E,)`` probability that one pick is expert ``e`` (sums to 1)."""
        if self.histogram is not None:
            h = self.histogram
            return h / jnp.sum(h, axis=-1, keepdims=True)
        e = jnp.arange(1, self.num_experts + 1, dtype=self.skew.dtype)
        w = jnp.exp(-jnp.asarray(self.skew)[..., None] * jnp.log(e))
        return w / jnp.sum(w, axis=-1, keepdims=True)

    def rank_shares(self) -> jax.Array:
        """``(ranks,)`` expected share of the token-expert pairs on each rank (sums to 1),
        after the redundant replicas (see the class docstring)."""
        p = self.popularity()
        home = np.zeros((self.num_experts, self.ranks))
        home[np.arange(self.num_experts), np.arange(self.num_experts) % self.ranks] = 1.0
        home = jnp.asarray(home, dtype=p.dtype)
        loads = p @ home
        if self.redundant_experts == 0:
            return loads
        order = jnp.argsort(-p, axis=-1, stable=True)
        for i in range(self.redundant_experts):
            e = order[..., i]
            half = 0.5 * jnp.take_along_axis(p, e[..., None], axis=-1)  # (..., 1)
            own = home[e]  # (..., ranks) one-hot of the home rank
            loads = loads - half * own
            dest = jnp.argmin(jnp.where(own > 0, jnp.inf, loads), axis=-1)
            loads = loads + half * jax.nn.one_hot(dest, self.ranks, dtype=p.dtype)
        return loads


class Communication(eqx.Module):
    """Communication terms beyond ``alpha_c * tokens + beta_c``.

    A->F time ``t_C = max(alpha_c * tokens + beta_c + per_peer * r, alpha_link * r * B)``
    (``tokens = B`` or ``r B`` by ``comm_scaling``; a transfer of ``n`` tokens per peer
    lasts at least ``alpha_link * r * n``: the FFN's own link carries all ``r`` peers'
    tokens); F->A the same with ``alpha_back``/``beta_back``.

    Every term is finite and ``>= 0`` (array leaves).

    Arguments:
        per_peer: time per Attention peer per direction per step (time units).
        alpha_back: F->A time per token (time/token); ``None`` = ``alpha_c``.
        beta_back: F->A fixed time per step (time units); ``None`` = ``beta_c``.
        alpha_link: the FFN's shared link, time per token of the aggregated ``r * B``
            (time/token); 0 = no shared-link limit.

    """

    per_peer: jax.Array = eqx.field(converter=float_leaf, default=0.0)
    alpha_back: jax.Array | None = eqx.field(default=None, converter=lambda x: None if x is None else float_leaf(x))
    beta_back: jax.Array | None = eqx.field(default=None, converter=lambda x: None if x is None else float_leaf(x))
    alpha_link: jax.Array = eqx.field(converter=float_leaf, default=0.0)

    def __check_init__(self):
        for name in COMMUNICATION_NAMES:
            value = getattr(self, name)
            if value is not None:
                check_array_parameter(name, value, allow_zero=True)


# ----------------------------------------------------------------------- random draws
ROLE_ATTENTION, ROLE_FFN, ROLE_COMM, ROLE_COMM_BACK, ROLE_RANK = 0, 1, 2, 3, 4
"""Stream roles of the stage factors: entity word ``role << 24 | index``."""


def stage_normals(keys, role: int, index, groups: int, count: int) -> jax.Array:
    """Standard normal draws of the stage factors: ``(*index.shape, groups, count, S)``.

    ``keys``: ``(k1, k2)``, ``(S,)`` uint32 each, one counter key per step (the engine
    derives them from the run's key, the replica and the step's global index);
    ``role``: one of the ``ROLE_*`` constants; ``index``: uint32 array of instance or
    rank indices (``< 2^24``); ``groups``: micro-batches ``G``; ``count``: layers ``K``.
    Entity ``(role, index)``, group ``g`` and layer ``l`` of a step always get the same
    bits, whatever the ratio (common random numbers): word ``l // ceil(K/2)`` of
    ``threefry(k, role << 24 | index, g * ceil(K/2) + l % ceil(K/2))``, mapped to a normal by
    the inverse CDF.
    """
    half = (count + 1) // 2
    index = jnp.asarray(index, jnp.uint32)
    entity = (jnp.uint32(role) << 24) | index
    counter = jnp.arange(groups * half, dtype=jnp.uint32).reshape(groups, half)
    k1, k2 = (jnp.asarray(k, jnp.uint32) for k in keys)
    w1, w2 = threefry2x32(k1, k2, entity[..., None, None, None], counter[..., None])  # (*index, G, half, S)
    words = jnp.concatenate([w1, w2], axis=-2)[..., :count, :]
    return jax.scipy.special.ndtri(uniform_open(words))
