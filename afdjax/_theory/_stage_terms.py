"""Closed forms of the stochastic stage times (issue 13): per-layer noise, MoE routing skew
and the communication terms of [`StageNoise`][afdjax.StageNoise], [`ExpertRouting`][afdjax.ExpertRouting]
and [`Communication`][afdjax.Communication].

The step of ``L`` layers is ``tau = sum_l max(A_l, C_l, C'_l, F_l) / L`` with

* ``A_l = max_{j<r} t_A,j a_jl``: the slowest of ``r`` Attention instances; ``t_A,j`` the
  whole-step attention time of instance ``j`` (its KV load, the same at every layer),
  approximately Normal(``mu_A``, ``s^2``) as in the Gaussian barrier (``_barrier``),
  ``a_jl`` LogNormal factors of mean 1 and coefficient of variation ``attention_cv``;
* ``C_l = t_C c_l`` and ``C'_l = t_C' c'_l``: the two directions of communication
  ([`comm_time`][afdjax.LatencyModel.comm_time], [`comm_back_time`][afdjax.LatencyModel.comm_back_time]:
  per-peer and shared-link terms included), each with its own factor (``comm_cv``);
* ``F_l = (alpha_f R / k X_l + beta_f) f_l``: the FFN with ``X_l`` the busiest of ``R``
  expert-parallel ranks' routed token-expert pairs (``n = r B k`` pairs, multinomial with
  the rank shares ``q``), factor ``f_l`` (``ffn_cv``).

Every layer has the same distribution, so ``E[tau] = E[max(A, C, C', F)]`` of one layer for
any ``L`` (``L`` changes the spread of ``tau``, not its mean). With the four parts
independent given the loads and ``G`` the largest of the parts that are not random,

    E[max] = lower + integral_lower^inf (1 - F_A(x) F_C(x) F_C'(x) F_F(x)) dx,

``lower = max(G, the lowest point any random part reaches)``, computed by Gauss-Legendre on
panels cut at quantiles of every random part (so a narrow part next to a wide one is still
resolved). The distributions and where each approximation breaks:

* **attention** ``F_A = F_Y^r`` with ``Y = t_A a`` (normal x LogNormal), exact up to
  quadrature: a mixture over Gauss-Hermite nodes of the narrower of the two factors. It
  breaks where the Gaussian barrier does: a KV-load distribution far from normal (few slots,
  ``B`` below ~16, or very heavy-tailed lengths), and where loads are not independent across
  instances. Real ``r`` is a relaxation (``F_Y^r``).
* **routing** ``X = max_i N_i``, ``N`` multinomial(``n``, ``q``): Gaussian with the
  multinomial covariance ``n (diag q - q q^T)``. Its maximum is taken as that of independent
  ``N_i ~ Normal(n q_i, n q_i)`` (the multinomial is these conditioned on their sum), with the
  spread about the mean narrowed by the rank-one correction ``Var X = Var max - n q_max^2``
  (exact in mean and variance for uniform shares, close when one rank is the busiest). Ranks
  are grouped by share (the 8 largest alone, then groups of 8, 16, 32, ... sharing their mean
  share). It breaks for few pairs per rank (``n q`` below ~20: counts are discrete and
  skewed), for shares so skewed that the argmax rank is uncertain *and* the shares differ
  within a group, and it ignores ``redundant_experts``' per-token replica choice beyond the
  expected shares ([`rank_shares`][afdjax.ExpertRouting.rank_shares]).
* **FFN noise** on a routed FFN: a mixture over the LogNormal factor when the routed time is
  the wider part, else a LogNormal with the matched mean and variance (error about the
  square of the smaller relative spread).
* **communication**: exact LogNormal (a deterministic time times its factor).

All of it is differentiable in every parameter (the coefficients, the noise ``cv``, the
Zipf ``skew`` or histogram, ``per_peer``, ``alpha_back``, ``beta_back``, ``alpha_link``, a
real ``ratio``). Scalar coefficients (not batched leaves); ``jax.vmap`` for batches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri

from .._stage import lognormal_parameters
from ._base import as_float, check_batch_size

# quantiles (in standard units) at which every random part cuts the integration range
_EDGE_Z = np.array([-8.0, -4.5, -3.0, -2.0, -1.25, -0.6, 0.0, 0.6, 1.25, 2.0, 3.0, 4.5, 6.5, 9.5])
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(24)  # E[g(Z)], Z standard normal
_GH_WEIGHTS = _GH_WEIGHTS / np.sqrt(2.0 * np.pi)
_TINY = 1e-30
_SINGLE_RANKS = 8  # the largest shares each get their own group


def _log_ndtr_accurate(z):
    """``log Phi(z)``: ``log1p(-Phi(-z))`` above 0 (full precision of ``1 - Phi``), ``log Phi``
    below, floored at ``log 1e-30`` (a far lower tail only needs to be negligible)."""
    positive = z > 0
    upper = jnp.log1p(-ndtr(-jnp.where(positive, z, 0.0)))
    return jnp.where(positive, upper, jnp.log(jnp.maximum(ndtr(jnp.where(positive, 0.0, z)), _TINY)))


def _log_cdf(cdf, sf):
    """``log P(X <= x)`` from a CDF and survival function computed separately (accurate in
    both tails)."""
    return jnp.where(sf < 0.5, jnp.log1p(-jnp.minimum(sf, 0.5)), jnp.log(jnp.maximum(cdf, _TINY)))


def _lognormal_log_cdf(x, scale, sigma):
    """``log P(scale * LN <= x)`` with ``LN`` the mean-1 LogNormal of log-sd ``sigma > 0``."""
    safe_sigma = jnp.where(sigma > 0, sigma, 1.0)
    z = (jnp.log(jnp.maximum(x, _TINY) / jnp.maximum(scale, _TINY)) + 0.5 * sigma * sigma) / safe_sigma
    return _log_ndtr_accurate(z)


def _lognormal_edges(mean, sigma):
    """Quantiles of ``mean * LN(sigma)`` at ``_EDGE_Z``."""
    return mean * jnp.exp(-0.5 * sigma * sigma + sigma * jnp.asarray(_EDGE_Z))


# ----------------------------------------------------------------------------- attention
def _attention_log_cdf(x, mu, s, sigma):
    """``log P(Y <= x)`` for ``Y = t a``, ``t ~ Normal(mu, s^2)``, ``a`` mean-1 LogNormal of
    log-sd ``sigma``: a Gauss-Hermite mixture over the narrower factor (exact when either is
    deterministic). ``x`` any shape."""
    z, w = jnp.asarray(_GH_NODES), jnp.asarray(_GH_WEIGHTS)
    xe = x[..., None]
    # condition on the noise factor (Normal CDF of x / a) or on the load (LogNormal CDF of x / t)
    a = jnp.exp(-0.5 * sigma * sigma + sigma * z)
    safe_s = jnp.where(s > 0, s, 1.0)
    t = jnp.maximum(mu + s * z, _TINY)
    safe_sigma = jnp.where(sigma > 0, sigma, 1.0)
    use_t = s < sigma * mu
    zt = (jnp.log(jnp.maximum(xe, _TINY) / t) + 0.5 * sigma * sigma) / safe_sigma
    zz = jnp.where(use_t, zt, (xe / a - mu) / safe_s)
    both = ndtr(jnp.stack([zz, -zz]))  # one call: CDF and survival
    return _log_cdf(jnp.sum(w * both[0], -1), jnp.sum(w * both[1], -1))


def _max_of_r_z(ratio):
    """Standard-normal quantiles of the max of ``r`` draws at ``_EDGE_Z`` (for edges)."""
    log_u = _log_ndtr_accurate(jnp.asarray(_EDGE_Z)) / ratio
    return -ndtri(jnp.clip(-jnp.expm1(log_u), 1e-300, 1.0 - 1e-16))


# ----------------------------------------------------------------------------- routing
def _rank_groups(ranks: int) -> list[tuple[int, int]]:
    """Static ``(start, stop)`` slices of the ranks sorted by share: the
    ``_SINGLE_RANKS`` largest alone, then groups of 8, 16, 32, ..."""
    groups = [(i, i + 1) for i in range(min(ranks, _SINGLE_RANKS))]
    start, size = _SINGLE_RANKS, 8
    while start < ranks:
        groups.append((start, min(ranks, start + size)))
        start, size = start + size, size * 2
    return groups


class _Routed:
    """The busiest rank's pairs ``X`` (Gaussian, module docstring) for ``n`` pairs over
    ``shares``: ``log_cdf(x)`` in pairs, ``mean`` and ``sd``."""

    def __init__(self, shares, n):
        q = -jnp.sort(-shares)
        groups = _rank_groups(q.shape[-1])
        self.q = jnp.stack([jnp.mean(q[a:b]) for a, b in groups])
        self.m = jnp.asarray([b - a for a, b in groups], dtype=q.dtype)
        self.n = n
        q1 = q[0]
        # moments of the max of the independent Gaussians, in units of the top rank's sd
        top_mean, top_sd = n * q1, jnp.sqrt(n * q1)
        width = 10.0 + jnp.sqrt(2.0 * jnp.log(float(q.shape[-1])))
        u, wu = _panels(-9.0, width, 24)
        x = top_mean + top_sd * u
        tail = -jnp.expm1(self._log_cdf_independent(x))
        e_u = -9.0 + jnp.sum(wu * tail)
        e_u2 = 81.0 + 2.0 * jnp.sum(wu * u * tail)
        var_u = jnp.maximum(e_u2 - e_u * e_u, 0.0)
        self.mean = top_mean + top_sd * e_u
        # rank-one multinomial correction: Var X = Var(max of independent) - n q_max^2
        var = top_sd * top_sd * var_u
        var_x = jnp.maximum(var - n * q1 * q1, 0.05 * var)
        self.scale = jnp.sqrt(var_x / jnp.where(var > 0, var, 1.0))
        self.sd = jnp.sqrt(var_x)

    def _log_cdf_independent(self, x):
        sd = jnp.sqrt(self.n * self.q + _TINY)
        return jnp.sum(self.m * _log_ndtr_accurate((x[..., None] - self.n * self.q) / sd), -1)

    def log_cdf(self, x):
        return self._log_cdf_independent(self.mean + (x - self.mean) / self.scale)


def _panels(a, b, count):
    """Gauss-Legendre nodes and weights on ``count`` equal panels of ``[a, b]``."""
    edges = a + (b - a) * jnp.linspace(0.0, 1.0, count + 1)
    return _gl_on(edges)


def _gl_on(edges):
    """Gauss-Legendre nodes and weights on the panels between consecutive ``edges``."""
    lo, hi = edges[:-1, None], edges[1:, None]
    half = 0.5 * (hi - lo)
    nodes = lo + half * (jnp.asarray(_GL_NODES) + 1.0)
    return nodes.ravel(), (half * jnp.asarray(_GL_WEIGHTS)).ravel()


def routed_ffn_time(latency, ratio, batch_size):
    """``(mean, sd, routed)``: the mean and standard deviation of the routed FFN time
    ``alpha_f R / k X + beta_f`` of one layer (time units, whole-step scale) and the
    ``_Routed`` count distribution; without ``latency.routing`` the balanced line
    [`ffn_time`][afdjax.LatencyModel.ffn_time], sd 0 and ``None``."""
    check_batch_size(batch_size)
    if latency.routing is None:
        t = latency.ffn_time(ratio, batch_size)
        return t, jnp.zeros_like(t), None
    rt = latency.routing
    n = as_float(ratio) * batch_size * rt.top_k
    routed = _Routed(rt.rank_shares(), n)
    per_pair = latency.alpha_f * (rt.ranks / rt.top_k)
    return per_pair * routed.mean + latency.beta_f, per_pair * routed.sd, routed


# ----------------------------------------------------------------------------- one layer
def _noise_sigmas(latency):
    zero = jnp.zeros(())
    if latency.noise is None:
        return zero, zero, zero
    return tuple(lognormal_parameters(getattr(latency.noise, k))[1] for k in ("attention_cv", "ffn_cv", "comm_cv"))


def stage_layer_time(mu, s, latency, batch_size, ratio) -> jax.Array:
    """``E[max(A, C, C', F)]``: the expected time of one layer (time units, whole-step
    scale; the module docstring), for scalar ``batch_size`` and real ``ratio``, with the
    attention load ``Normal(mu, s^2)`` ([`attention_time_moments`][afdjax.attention_time_moments])."""
    check_batch_size(batch_size)
    ratio = as_float(ratio)
    sig_a, sig_f, sig_c = _noise_sigmas(latency)
    t_c, t_cb = latency.comm_time(ratio, batch_size), latency.comm_back_time(ratio, batch_size)
    f_mean, f_sd, routed = routed_ffn_time(latency, ratio, batch_size)
    per_pair = 0.0 if routed is None else latency.alpha_f * (latency.routing.ranks / latency.routing.top_k)

    parts = [_attention_part(mu, s, sig_a, ratio)]  # (random?, deterministic value, edges, log_cdf)
    # communication, both directions (independent factors): one part, the max of the two
    scales = jnp.stack([t_c, t_cb])
    comm_edges = jnp.concatenate([_lognormal_edges(t_c, sig_c), _lognormal_edges(t_cb, sig_c)])
    comm_edges = comm_edges.at[0].set(jnp.maximum(comm_edges[0], comm_edges[len(_EDGE_Z)]))
    comm_edges = comm_edges.at[-1].set(jnp.maximum(comm_edges[-1], comm_edges[len(_EDGE_Z) - 1]))
    parts.append(
        (
            sig_c > 0,
            jnp.maximum(t_c, t_cb),
            comm_edges,
            lambda x: jnp.sum(_lognormal_log_cdf(x[..., None], scales, sig_c), -1),
        )
    )
    # FFN: routed and/or noisy
    if routed is None:
        parts.append(
            (sig_f > 0, f_mean, _lognormal_edges(f_mean, sig_f), lambda x: _lognormal_log_cdf(x, f_mean, sig_f))
        )
    else:
        safe_pp = jnp.where(per_pair > 0, per_pair, 1.0)
        rel = f_sd / jnp.maximum(f_mean, _TINY)
        sig_tot = jnp.sqrt(jnp.log1p(jnp.expm1(sig_f * sig_f) * (1.0 + rel * rel) + rel * rel))

        def ffn_log_cdf(x):
            f = jnp.exp(-0.5 * sig_f * sig_f + sig_f * jnp.asarray(_GH_NODES))
            y = jnp.concatenate([x[..., None] / f, x[..., None]], -1)
            base = routed.log_cdf((y - latency.beta_f) / safe_pp)  # one call: mixture nodes and x
            mixed = jnp.log(jnp.maximum(jnp.sum(_GH_WEIGHTS * jnp.exp(base[..., :-1]), -1), _TINY))
            matched = _lognormal_log_cdf(x, f_mean, sig_tot)
            return jnp.where(sig_f > 0, jnp.where(rel < sig_f, matched, mixed), base[..., -1])

        edges = jnp.where(sig_f > 0, _lognormal_edges(f_mean, sig_tot), f_mean + f_sd * jnp.asarray(_EDGE_Z))
        parts.append(((per_pair > 0) | (sig_f > 0), f_mean, edges, ffn_log_cdf))

    return _expected_max(parts, mu)


def _attention_part(mu, s, sig_a, ratio):
    """The part ``max_{j<r} t_A,j a_j`` (random?, value if not, quadrature cuts, log CDF)."""
    random = (s > 0) | (sig_a > 0)
    sd_y = jnp.sqrt(s * s + jnp.expm1(sig_a * sig_a) * (mu * mu + s * s))
    sig_y = jnp.sqrt(jnp.log1p((sd_y / jnp.maximum(mu, _TINY)) ** 2))
    edges = mu * jnp.exp(-0.5 * sig_y * sig_y + sig_y * _max_of_r_z(ratio))
    return random, mu, edges, lambda x: ratio * _attention_log_cdf(x, mu, s, sig_a)


def attention_max_mean(mu, s, attention_cv, ratio) -> jax.Array:
    """``E[max_{j<r} t_A,j a_j]``: the expected slowest of ``r`` Attention instances (time
    units) with loads ``Normal(mu, s^2)`` and per-layer LogNormal factors of coefficient of
    variation ``attention_cv`` (scalars; real ``r``)."""
    sig_a = lognormal_parameters(as_float(attention_cv))[1]
    return _expected_max([_attention_part(mu, s, sig_a, as_float(ratio))], mu)


def _expected_max(parts, mu):
    """``E[max]`` of independent parts: ``lower + integral (1 - prod F)`` (module docstring)."""
    # The cuts only place the quadrature panels: the integral does not depend on them, so
    # they carry no gradient, except through the deterministic floor G (d E / d G = P(V < G)).
    parts = [(random, value, jax.lax.stop_gradient(edges), log_cdf) for random, value, edges, log_cdf in parts]
    floor = jnp.zeros_like(mu)
    for random, value, _, _ in parts:
        floor = jnp.where(random, floor, jnp.maximum(floor, value))
    lower = floor
    for random, _, edges, _ in parts:
        lower = jnp.where(random, jnp.maximum(lower, edges[0]), lower)
    upper = jax.lax.stop_gradient(lower)
    for random, _, edges, _ in parts:
        upper = jnp.where(random, jnp.maximum(upper, edges[-1]), upper)
    cuts = [jnp.stack([lower, upper])]
    cuts += [jnp.clip(jnp.where(random, edges, lower), lower, upper) for random, _, edges, _ in parts]
    x, w = _gl_on(jnp.sort(jnp.concatenate(cuts)))
    log_f = sum(jnp.where(random, log_cdf(x), 0.0) for random, _, _, log_cdf in parts)
    return lower + jnp.sum(w * -jnp.expm1(log_f))
