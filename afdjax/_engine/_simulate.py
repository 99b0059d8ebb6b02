"""Monte Carlo engine for the saturated rA-1F decode process.

How it works (cost grows with instance-steps plus requests, not slots x steps)
-------------------------------------------------------------------------------
Every slot is a renewal process: request after request, each holding the slot for
``D`` steps. Between two request boundaries a slot's load grows by exactly one token
per step, so an instance's load is

    T_j(k) = T_j(0) + B k + sum of load *jumps* at request boundaries up to step k.

Time is cut into chunks of ``L`` steps. In a chunk each slot draws its next ``M``
requests, their start steps are a cumulative sum of their lengths, the jumps
(``P_new - P_old - D_old``) are scatter-added into an ``(r_max, L)`` buffer and one
cumulative sum gives every instance's load at every step. The barrier for *every* ratio
``r = 1..r_max`` is then a prefix maximum over instances (the system with ratio ``r``
is the first ``r`` of ``r_max`` instances), so a whole ratio sweep is one pass and one
compilation.

Common random numbers: request ``n`` of slot ``s`` of instance ``j`` in replica ``i``
always gets the bits ``threefry(threefry(key, i, j<<16 | s), n)``, whatever the ratio,
the coefficients, the workload parameters, the chunking or the buffer sizes.

``M`` is a capacity, not a modelling choice: it is sized by a Chernoff bound so that
running out of drawn requests inside a chunk has probability below 1e-12 for the whole
run; if it ever happens the run is repeated with a larger buffer (same numbers), or,
under an outer ``jit``, an error is raised.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._json import jsonable
from .._random import threefry2x32 as _hash
from .._latency import LatencyModel
from .._step._pipeline import PipelineState, micro_batch_sizes, pipeline_advance, pipeline_cycle_time
from .._workload._core import Workload

START_MODES = ("stationary", "cold")

_MAX_INDEX = 2**16  # instances and slots are packed into one 32-bit counter word
_HIST_SPAN = 16.0  # histogram covers [c/16, 16 c] around the mean-field cycle time c
_KV_SPAN = 64.0  # KV-load histogram covers [T/64, 64 T] around the mean load T = B theta


class SimulationResult(eqx.Module):
    """Per-ratio results of :func:`simulate`. Arrays are indexed like ``ratios``.

    Times are in the latency model's time unit; throughput in tokens per time unit.
    """

    ratios: jax.Array
    """``(n,)`` int: the A/F ratios r simulated."""
    throughput_per_instance: jax.Array
    """``(n,)``: long-run tokens / time / (r + 1), pooled over replicas."""
    stderr: jax.Array
    """``(n,)``: standard error of ``throughput_per_instance`` across replicas
    (delta method on the ratio estimator; NaN with one replica)."""
    throughput_per_replica: jax.Array
    """``(num_replicas, n)``: each independent replica's throughput per instance."""
    attention_idle_fraction: jax.Array
    """``(n,)``: 1 - attention busy time / (r * elapsed time)."""
    ffn_idle_fraction: jax.Array
    """``(n,)``: 1 - FFN busy time / elapsed time."""
    mean_cycle_time: jax.Array
    """``(n,)``: mean step time ``E[tau]``. With micro-batches: elapsed time of the
    measured steps / their number, where step ``k`` takes ``C(k) - C(k-1)`` and ``C(k)`` is
    when the last micro-batch of step ``k`` is back from the FFN (``C(-1) = 0``)."""
    cycle_time_std: jax.Array
    """``(n,)``: standard deviation of the step time across steps."""
    cycle_time_quantiles: jax.Array
    """``(n, q)``: step-time quantiles at ``quantile_levels`` (from a log histogram
    with relative bin width 0.14 %, clamped to the observed min and max)."""
    quantile_levels: jax.Array
    """``(q,)``: the quantile levels."""
    mean_slot_load_tokens: jax.Array
    """Scalar: long-run mean KV tokens per slot over all ``r_max`` instances (compare
    with ``workload.theta()``)."""
    link_idle_fraction: jax.Array
    """``(n,)``: 1 - busy time of one A<->F link / elapsed time. The barrier step counts
    one ``t_C`` per step; the pipeline two links (A->F, F->A), each ``sum_g t_C(B_g)``
    per step."""
    pipeline_bubble_fraction: jax.Array
    """``(n,)``: 1 - busy time of the busiest resource / elapsed time, the resources
    being each of the ``r`` Attention instances, the FFN and a link. 0 when one resource
    is never idle (a perfect pipeline at its bottleneck); what it is above 0 is time the
    bottleneck waits: pipeline fill and drain, bubbles from stage imbalance, and (with
    or without micro-batches) the barrier waiting for the slowest instance."""
    kv_load_quantiles: jax.Array
    """``(q,)``: quantiles (at ``quantile_levels``) of one Attention instance's KV load
    ``T_j`` in tokens, over measured instance-steps pooled over all ``r_max`` instances
    and replicas (log histogram, relative bin width 0.2 %, clamped to min and max)."""
    kv_load_min_tokens: jax.Array
    """Scalar: smallest KV load of an instance over measured steps (exact)."""
    kv_load_max_tokens: jax.Array
    """Scalar: largest KV load of an instance over measured steps (exact)."""
    kv_load_histogram: jax.Array
    """``(num_bins,)`` int: counts of measured instance-steps per KV-load bin (the first
    and last bins also hold everything below and above the range)."""
    kv_load_bin_edges_tokens: jax.Array
    """``(num_bins + 1,)``: log-spaced bin edges of ``kv_load_histogram`` (tokens)."""
    decode_log_prob: jax.Array
    """``(num_replicas, n)``: log-likelihood of the decode lengths drawn for the first
    ``r`` instances of each replica, as a function of the workload parameters. Its value
    is not a result; its gradient carries the score-function estimator (see
    :func:`afdjax.throughput_estimate`)."""
    batch_size: int = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    num_replicas: int = eqx.field(static=True)
    micro_batches: int | None = eqx.field(static=True, default=None)
    """Micro-batches per Attention instance, or None for the paper's barrier step."""

    def kv_exceedance_probability(self, capacity_tokens):
        """Fraction of measured instance-steps whose KV load exceeds ``capacity_tokens``
        (strictly), pooled over all ``r_max`` instances and replicas.

        Interpolated inside a histogram bin (linear in log load); exactly 0 at or above
        the observed maximum and 1 below the observed minimum. Host-side (NumPy);
        ``capacity_tokens`` may be a scalar or an array. Returns float or ndarray.
        """
        cap = np.asarray(capacity_tokens, dtype=float)
        hist = np.asarray(self.kv_load_histogram, dtype=float)
        edges = np.asarray(self.kv_load_bin_edges_tokens, dtype=float)
        lo, hi = float(self.kv_load_min_tokens), float(self.kv_load_max_tokens)
        total = hist.sum()
        if total == 0:
            return np.full(cap.shape, np.nan)[()] if cap.shape else float("nan")
        below = np.concatenate([[0.0], np.cumsum(hist)])  # counts below each edge
        # effective bin intervals: the outer bins extend to the observed min and max
        left = np.maximum(edges[:-1], lo)
        right = np.minimum(edges[1:], hi)
        left[0], right[-1] = min(lo, edges[1]), max(hi, edges[-2])
        c = np.clip(cap, lo, hi)
        i = np.clip(np.searchsorted(edges[1:-1], c, side="right"), 0, len(hist) - 1)
        width = np.log(np.maximum(right[i], 1e-300)) - np.log(np.maximum(left[i], 1e-300))
        frac = np.where(width > 0, (np.log(np.maximum(c, 1e-300)) - np.log(np.maximum(left[i], 1e-300)))
                        / np.where(width > 0, width, 1.0), 1.0)
        frac = np.clip(frac, 0.0, 1.0)
        p = 1.0 - (below[i] + frac * hist[i]) / total
        p = np.where(cap >= hi, 0.0, np.where(cap < lo, 1.0, np.clip(p, 0.0, 1.0)))
        return float(p) if p.ndim == 0 else p

    def best_index(self) -> int:
        """Index into ``ratios`` of the highest simulated throughput per instance."""
        return int(np.argmax(np.asarray(self.throughput_per_instance)))

    def best_ratio(self) -> int:
        """The ratio r with the highest simulated throughput per instance."""
        return int(np.asarray(self.ratios)[self.best_index()])

    def to_dict(self) -> dict:
        """Plain Python lists and numbers (JSON-serialisable; NaN becomes None)."""

        def clean(x):
            return jsonable(np.asarray(x).tolist())

        levels = np.asarray(self.quantile_levels).tolist()
        q = np.asarray(self.cycle_time_quantiles)
        return {
            "ratios": clean(self.ratios),
            "throughput_per_instance": clean(self.throughput_per_instance),
            "stderr": clean(self.stderr),
            "attention_idle_fraction": clean(self.attention_idle_fraction),
            "ffn_idle_fraction": clean(self.ffn_idle_fraction),
            "mean_cycle_time": clean(self.mean_cycle_time),
            "cycle_time_std": clean(self.cycle_time_std),
            "cycle_time_quantiles": {f"p{100 * lv:g}": clean(q[:, i]) for i, lv in enumerate(levels)},
            "mean_slot_load_tokens": float(self.mean_slot_load_tokens),
            "best_ratio": self.best_ratio(),
            "micro_batches": self.micro_batches,
            "link_idle_fraction": clean(self.link_idle_fraction),
            "pipeline_bubble_fraction": clean(self.pipeline_bubble_fraction),
            "kv_load_quantiles": {f"p{100 * lv:g}": float(np.asarray(self.kv_load_quantiles)[i])
                                  for i, lv in enumerate(levels)},
            "kv_load_min_tokens": float(self.kv_load_min_tokens),
            "kv_load_max_tokens": float(self.kv_load_max_tokens),
        }


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything that fixes shapes (static under jit)."""

    max_ratio: int
    batch_size: int
    num_steps: int
    warmup_steps: int
    num_replicas: int
    chunk_steps: int
    num_chunks: int
    requests_per_chunk: int
    replica_batch_size: int
    start: str
    num_bins: int
    micro_batches: int | None = None  # None: the paper's barrier step (ideal overlap)
    progress: bool = False  # replicas run in host-side blocks that drive a progress bar


def _prefix(op, x):
    """Inclusive prefix ``op`` (``jnp.maximum`` or ``jnp.add``) along axis 0.

    Unrolled for the short instance axis: XLA fuses the chain into one pass, an order of
    magnitude faster on CPU than the associative scan behind ``cummax``/``cumsum``.
    """
    if x.shape[0] > 128:
        return (jax.lax.cummax if op is jnp.maximum else jax.lax.cumsum)(x, axis=0)
    rows = [x[0]]
    for j in range(1, x.shape[0]):
        rows.append(op(rows[-1], x[j]))
    return jnp.stack(rows)


def _cumsum_int(x, bound: int):
    """Exact cumulative sum of non-negative int32 values along the last axis, whose
    total is at most ``bound``: through float matmuls while floats hold it exactly."""
    exact = 2**53 if jnp.zeros(()).dtype == jnp.float64 else 2**24
    if bound < exact:
        dtype = jnp.zeros(()).dtype
        return jnp.round(_cumsum_last(x.astype(dtype), block=16)).astype(jnp.int32)
    return jnp.cumsum(x, axis=-1)


def _cumsum_last(x, block: int = 32):
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


def _replica_sums(replica_id, key_words, workload: Workload, latency: LatencyModel, cfg: _Config):
    """Simulate one replica; return its accumulated sums (one entry per r = 1..r_max)."""
    rmax, B, L, M = cfg.max_ratio, cfg.batch_size, cfg.chunk_steps, cfg.requests_per_chunk
    fdtype = jnp.zeros(()).dtype
    instance = jnp.arange(rmax, dtype=jnp.uint32)[:, None]
    slot = jnp.arange(B, dtype=jnp.uint32)[None, :]
    k1, k2 = _hash(key_words[0], key_words[1], replica_id, (instance << 16) | slot)  # (rmax, B)

    b0 = _hash(k1, k2, 0, 0)
    if cfg.start == "stationary":
        b1 = _hash(k1, k2, 0, 1)
        prefill, decode, index = workload._stationary((b0[0], b0[1], b1[0], b1[1]))
        log_prob0 = jnp.sum(workload._stationary_log_prob(decode, index), axis=1)
    else:
        prefill, decode = workload._fresh(b0[0], b0[1])
        index = jnp.zeros_like(decode)
        log_prob0 = jnp.sum(workload._decode_log_prob(decode), axis=1)
    prefill = prefill.astype(fdtype)
    next_request = jnp.ones((rmax, B), jnp.uint32)

    ratio = jnp.arange(1, rmax + 1, dtype=fdtype)
    pipelined = cfg.micro_batches is not None
    G = cfg.micro_batches if pipelined else 1
    if pipelined:
        # micro-batch g holds the slots s with s % G == g
        group_size = jnp.asarray(micro_batch_sizes(B, G), fdtype)  # (G,)
        comm_g = latency.comm_time(ratio[:, None], group_size[None, :])  # (rmax ratios, G)
        ffn_g = latency.ffn_time(ratio[:, None], group_size[None, :])
        active = jnp.arange(rmax)[None, :] < jnp.arange(1, rmax + 1)[:, None]  # (ratios, instances)
        centre = pipeline_cycle_time(workload, latency, B, ratio, G)
        ffn_step = jnp.sum(ffn_g, axis=1)  # (rmax,): FFN busy time per step
        link_step = jnp.sum(comm_g, axis=1)  # one link's busy time per step
    else:
        floor_time = jnp.maximum(latency.ffn_time(ratio, B), latency.comm_time(ratio, B))  # (rmax,)
        centre = jnp.maximum(floor_time, latency.attention_time(B * workload.theta()))
        ffn_step = latency.ffn_time(ratio, B)
        link_step = latency.comm_time(ratio, B)
    log_lo = jnp.log(centre) - math.log(_HIST_SPAN)
    dlog = 2 * math.log(_HIST_SPAN) / cfg.num_bins
    kv_log_lo, kv_dlog = _kv_histogram_range(workload, B, cfg.num_bins)

    steps_local = jnp.arange(L)
    offsets = jnp.arange(M, dtype=jnp.uint32)
    if pipelined:
        slot_group = np.arange(B) % G
        flat_base = jnp.asarray(((np.arange(rmax)[:, None] * G + slot_group[None, :]) * L)[..., None])
    else:
        flat_base = (jnp.arange(rmax) * L)[:, None, None]

    def chunk(carry, c):
        prefill, decode, index, next_request, pipe, acc = carry
        remaining = jnp.minimum(decode - index, L + 1)  # >= 1
        bits = _hash(k1[..., None], k2[..., None], next_request[..., None] + offsets, 0)
        new_prefill, new_decode = workload._fresh(bits[0], bits[1])
        new_prefill = new_prefill.astype(fdtype)
        # Lengths clipped at L + 1 give exact start steps for every request starting
        # inside this chunk and keep the cumulative sum far from int32 overflow.
        clipped = jnp.minimum(new_decode, L + 1)
        ends = remaining[..., None] + _cumsum_int(clipped, bound=M * (L + 1))
        starts = ends - clipped  # (rmax, B, M), increasing
        covered = jnp.all(ends[..., -1] > L)
        prev_prefill = jnp.concatenate([prefill[..., None], new_prefill[..., :-1]], axis=-1)
        prev_decode = jnp.concatenate([decode[..., None], new_decode[..., :-1]], axis=-1)
        jump = new_prefill - prev_prefill - prev_decode.astype(fdtype)
        flat = jnp.where(starts < L, flat_base + starts, rmax * G * L)
        jumps = jnp.zeros(rmax * G * L, fdtype).at[flat.reshape(-1)].add(jump.reshape(-1), mode="drop")
        if pipelined:
            slot_load = prefill + index.astype(fdtype)  # (rmax, B)
            padded = jnp.pad(slot_load, ((0, 0), (0, (-B) % G))).reshape(rmax, -1, G)
            load0 = jnp.sum(padded, axis=1)  # (rmax, G)
            group_load = (load0[:, :, None] + group_size[None, :, None] * steps_local.astype(fdtype)
                          + _cumsum_last(jumps.reshape(rmax, G, L)))  # (rmax, G, L)
            load = jnp.sum(group_load, axis=1)  # (rmax, L)
        else:
            load0 = jnp.sum(prefill + index.astype(fdtype), axis=1)  # (rmax,)
            load = load0[:, None] + B * steps_local.astype(fdtype)[None, :] + _cumsum_last(jumps.reshape(rmax, L))

        # Score-function carrier: log-likelihood of the decode lengths of every request
        # that started in this chunk (one sum per instance).
        log_prob = jnp.sum(jnp.where(starts < L, workload._decode_log_prob(new_decode), 0.0), axis=(1, 2))

        # Slot state at local step L: the last request started at or before L.
        started = jnp.sum(starts <= L, axis=-1)  # (rmax, B)
        last = jnp.maximum(started - 1, 0)[..., None]
        take = lambda a: jnp.take_along_axis(a, last, axis=-1)[..., 0]  # noqa: E731
        has_new = started > 0
        prefill_next = jnp.where(has_new, take(new_prefill), prefill)
        decode_next = jnp.where(has_new, take(new_decode), decode)
        index_next = jnp.where(has_new, L - take(starts), index + L)
        next_request = next_request + started.astype(jnp.uint32)

        # Step statistics for every ratio r = 1..r_max at once.
        step = c * L + steps_local
        measured = (step >= cfg.warmup_steps) & (step < cfg.warmup_steps + cfg.num_steps)
        weight = measured.astype(fdtype)[None, :]
        if pipelined:
            attention_g = latency.attention_time(group_load)  # (rmax, G, L)
            attention = jnp.sum(attention_g, axis=1)  # (rmax, L): busy time of instance j

            def pipeline_step(state, att):  # att: (instances, G) at one step
                state, events = pipeline_advance(state, att, comm_g, ffn_g, active)
                done = events.step_completion  # (ratios,): relative to the previous step's
                return state.shift(done), done

            pipe, tau = jax.lax.scan(pipeline_step, pipe, jnp.moveaxis(attention_g, 2, 0))
            tau = tau.T  # (rmax ratios, L): time of each step
        else:
            attention = latency.attention_time(load)  # (rmax, L): instance j
            barrier = _prefix(jnp.maximum, attention)  # row r-1: max over the first r instances
            tau = jnp.maximum(barrier, floor_time[:, None])
        busy = _prefix(jnp.add, attention)  # row r-1: sum over the first r instances
        kv_index = jnp.clip(jnp.floor((jnp.log(jax.lax.stop_gradient(load)) - kv_log_lo) / kv_dlog),
                            0, cfg.num_bins - 1).astype(jnp.int32)
        kv_index = jnp.where(measured[None, :], kv_index, cfg.num_bins)
        b = jnp.clip(jnp.floor((jnp.log(tau) - log_lo[:, None]) / dlog), 0, cfg.num_bins - 1).astype(jnp.int32)
        hist_index = jnp.where(measured[None, :], jnp.arange(rmax)[:, None] * cfg.num_bins + b, rmax * cfg.num_bins)
        dev = tau - centre[:, None]  # centred, so the variance does not cancel
        acc = dict(
            tau=acc["tau"] + jnp.sum(tau * weight, axis=1),
            dev=acc["dev"] + jnp.sum(dev * weight, axis=1),
            dev2=acc["dev2"] + jnp.sum(dev**2 * weight, axis=1),
            busy=acc["busy"] + jnp.sum(busy * weight, axis=1),
            instance_busy=acc["instance_busy"] + jnp.sum(attention * weight, axis=1),
            kv_hist=acc["kv_hist"].at[kv_index.reshape(-1)].add(1, mode="drop"),
            kv_min=jnp.minimum(acc["kv_min"], jnp.min(jnp.where(measured[None, :], load, jnp.inf))),
            kv_max=jnp.maximum(acc["kv_max"], jnp.max(jnp.where(measured[None, :], load, -jnp.inf))),
            load=acc["load"] + jnp.sum(load * weight, axis=1),
            tau_min=jnp.minimum(acc["tau_min"], jnp.min(jnp.where(measured, tau, jnp.inf), axis=1)),
            tau_max=jnp.maximum(acc["tau_max"], jnp.max(jnp.where(measured, tau, -jnp.inf), axis=1)),
            hist=acc["hist"].at[hist_index.reshape(-1)].add(1, mode="drop"),
            covered=acc["covered"] & covered,
            log_prob=acc["log_prob"] + log_prob,
        )
        return (prefill_next, decode_next, index_next, next_request, pipe, acc), None

    zeros = jnp.zeros(rmax, fdtype)
    acc0 = dict(
        tau=zeros,
        dev=zeros,
        dev2=zeros,
        busy=zeros,
        instance_busy=zeros,
        kv_hist=jnp.zeros(cfg.num_bins, jnp.int32),
        kv_min=jnp.asarray(jnp.inf, fdtype),
        kv_max=jnp.asarray(-jnp.inf, fdtype),
        load=zeros,
        tau_min=zeros + jnp.inf,
        tau_max=zeros - jnp.inf,
        hist=jnp.zeros(rmax * cfg.num_bins, jnp.int32),
        covered=jnp.array(True),
        log_prob=log_prob0.astype(fdtype),
    )
    # pipeline state per ratio (instances j >= r masked); None-mode carries a dummy
    pipe0 = PipelineState.zeros((rmax,), rmax, G, fdtype) if pipelined else jnp.zeros((), fdtype)
    carry0 = (prefill, decode, index, next_request, pipe0, acc0)
    # checkpoint: reverse-mode differentiation stores only the carry between chunks and
    # recomputes each chunk's internals, so gradient memory does not grow with steps.
    (_, _, _, _, _, acc), _ = jax.lax.scan(jax.checkpoint(chunk), carry0, jnp.arange(cfg.num_chunks))
    acc["log_lo"] = log_lo
    acc["kv_log_lo"] = kv_log_lo
    acc["ffn_step"] = ffn_step
    acc["link_step"] = link_step
    return acc


def _kv_histogram_range(workload: Workload, batch_size: int, num_bins: int):
    """``(log of the lowest edge, log bin width)`` of the KV-load histogram: ``num_bins``
    log-spaced bins over ``[T/64, 64 T]`` around the mean load ``T = B theta``."""
    centre = jnp.maximum(batch_size * workload.theta(), 1.0)
    return jnp.log(centre) - math.log(_KV_SPAN), 2 * math.log(_KV_SPAN) / num_bins


def _quantiles_from_histogram(hist, log_lo, dlog, tau_min, tau_max, levels):
    """Quantiles per row of a log-spaced histogram, interpolated inside a bin."""
    cum = jnp.cumsum(hist, axis=-1)
    total = cum[..., -1:]

    def one(level):
        target = level * total
        i = jax.vmap(lambda c, t: jnp.searchsorted(c, t, side="left"))(cum, target[:, 0])
        i = jnp.clip(i, 0, hist.shape[-1] - 1)
        below = jnp.where(i > 0, jnp.take_along_axis(cum, (i - 1)[:, None], -1)[:, 0], 0)
        count = jnp.take_along_axis(hist, i[:, None], -1)[:, 0]
        frac = jnp.clip((target[:, 0] - below) / jnp.maximum(count, 1), 0.0, 1.0)
        value = jnp.exp(log_lo + (i + frac) * dlog)
        return jnp.clip(value, tau_min, tau_max)

    return jnp.stack([one(lv) for lv in levels], axis=-1)


@eqx.filter_jit
def _simulate_jit(key_words, workload, latency, levels, cfg: _Config):
    """All ratios r = 1..r_max; the caller selects the requested ones outside this jit
    (so a different subset of ratios never recompiles the simulation)."""
    return _simulate_core(key_words, workload, latency, levels, cfg)


def _simulate_core(key_words, workload, latency, levels, cfg: _Config):
    """The pure (un-jitted) simulation of one configuration: ``(SimulationResult, covered)``.

    ``key_words`` is a ``(2,)`` uint32 array; ``workload`` and ``latency`` may be traced
    (vmapped over by :mod:`afdjax._sweep`); ``cfg`` is static.
    """
    replica_ids = jnp.arange(cfg.num_replicas, dtype=jnp.uint32)
    return _aggregate(_block_sums(key_words, workload, latency, cfg, replica_ids), workload, latency, levels, cfg)


def _block_sums(key_words, workload, latency, cfg: _Config, replica_ids):
    """Per-replica sums of the replicas ``replica_ids`` (advanced ``replica_batch_size`` at a time)."""
    return jax.lax.map(
        lambda i: _replica_sums(i, key_words, workload, latency, cfg),
        replica_ids,
        batch_size=min(cfg.replica_batch_size, replica_ids.shape[0]),
    )


def _aggregate(sums, workload, latency, levels, cfg: _Config):
    """``(SimulationResult, covered)`` from the per-replica sums of all ``num_replicas``."""
    fdtype = jnp.zeros(()).dtype
    B, K, R = cfg.batch_size, cfg.num_steps, cfg.num_replicas
    steps_total = float(K) * float(R)  # Python floats: products of sizes can exceed int32
    ratio = jnp.arange(1, cfg.max_ratio + 1, dtype=fdtype)
    time = sums["tau"]  # (R, rmax)
    total_time = jnp.sum(time, axis=0)
    tokens = ratio * (float(B) * float(K))
    throughput = tokens * R / ((ratio + 1) * total_time)
    per_replica = tokens / ((ratio + 1) * time)
    if R > 1:
        rel = jnp.std(time, axis=0, ddof=1) / (jnp.mean(time, axis=0) * math.sqrt(R))
    else:
        rel = jnp.full_like(total_time, jnp.nan)
    stderr = throughput * rel
    attention_idle = 1.0 - jnp.sum(sums["busy"], axis=0) / (ratio * total_time)
    ffn_step, link_step = sums["ffn_step"][0], sums["link_step"][0]
    if cfg.micro_batches is None:
        ffn_idle = 1.0 - steps_total * latency.ffn_time(ratio, B) / total_time  # (kept bit-for-bit)
    else:
        ffn_idle = 1.0 - steps_total * ffn_step / total_time
    link_idle = 1.0 - steps_total * link_step / total_time
    busiest_instance = _prefix(jnp.maximum, jnp.sum(sums["instance_busy"], axis=0))  # (rmax,)
    busiest = jnp.maximum(busiest_instance, steps_total * jnp.maximum(ffn_step, link_step))
    bubble = 1.0 - busiest / total_time
    mean_tau = total_time / steps_total
    mean_dev = jnp.sum(sums["dev"], axis=0) / steps_total
    var_tau = jnp.maximum(jnp.sum(sums["dev2"], axis=0) / steps_total - mean_dev**2, 0.0)
    hist = jnp.sum(sums["hist"], axis=0).reshape(cfg.max_ratio, cfg.num_bins)
    dlog = 2 * math.log(_HIST_SPAN) / cfg.num_bins
    quantiles = _quantiles_from_histogram(
        hist,
        sums["log_lo"][0],
        dlog,
        jnp.min(sums["tau_min"], axis=0),
        jnp.max(sums["tau_max"], axis=0),
        levels,
    )
    mean_load = jnp.sum(sums["load"]) / (float(cfg.max_ratio) * steps_total * B)
    kv_hist = jnp.sum(sums["kv_hist"], axis=0)
    kv_min, kv_max = jnp.min(sums["kv_min"]), jnp.max(sums["kv_max"])
    kv_log_lo = sums["kv_log_lo"][0]
    kv_dlog = 2 * math.log(_KV_SPAN) / cfg.num_bins
    kv_quantiles = _quantiles_from_histogram(kv_hist[None], kv_log_lo[None], kv_dlog, kv_min[None], kv_max[None],
                                             levels)[0]
    kv_edges = jnp.exp(kv_log_lo + kv_dlog * jnp.arange(cfg.num_bins + 1, dtype=fdtype))
    covered = jnp.all(sums["covered"])
    result = SimulationResult(
        ratios=jnp.arange(1, cfg.max_ratio + 1),
        throughput_per_instance=throughput,
        stderr=stderr,
        throughput_per_replica=per_replica,
        attention_idle_fraction=attention_idle,
        ffn_idle_fraction=ffn_idle,
        mean_cycle_time=mean_tau,
        cycle_time_std=jnp.sqrt(var_tau),
        cycle_time_quantiles=quantiles,
        quantile_levels=jnp.asarray(levels, dtype=fdtype),
        mean_slot_load_tokens=mean_load,
        link_idle_fraction=link_idle,
        pipeline_bubble_fraction=bubble,
        kv_load_quantiles=kv_quantiles,
        kv_load_min_tokens=kv_min,
        kv_load_max_tokens=kv_max,
        kv_load_histogram=kv_hist,
        kv_load_bin_edges_tokens=kv_edges,
        decode_log_prob=jnp.cumsum(sums["log_prob"], axis=1),
        batch_size=B,
        num_steps=K,
        num_replicas=R,
        micro_batches=cfg.micro_batches,
    )
    return result, covered


def _traced(*trees) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(trees))


_block_sums_jit = eqx.filter_jit(_block_sums)
_aggregate_jit = eqx.filter_jit(_aggregate)


def _simulate_with_progress(key_words, workload, latency, levels, cfg: _Config):
    """The same simulation with the replicas run in host-side blocks of
    ``replica_batch_size`` (one compiled block, the last one padded), a tqdm bar over
    simulated replica-steps (rate and ETA) advancing after each block."""
    from tqdm.auto import tqdm

    R, block = cfg.num_replicas, cfg.replica_batch_size
    steps = cfg.num_chunks * cfg.chunk_steps
    bar = tqdm(total=R * steps, unit="step", unit_scale=True, desc="afdjax.simulate", leave=False, mininterval=0.5)
    try:
        parts = []
        for first in range(0, R, block):
            n = min(block, R - first)
            ids = np.arange(first, first + block) % R  # pad the last block with replicas already run
            out = _block_sums_jit(key_words, workload, latency, cfg, jnp.asarray(ids, jnp.uint32))
            parts.append(jax.tree_util.tree_map(lambda x, n=n: x[:n], jax.block_until_ready(out)))
            bar.update(n * steps)
        sums = jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)
        return _aggregate_jit(sums, workload, latency, levels, cfg)
    finally:
        bar.close()


def _select_ratios(result: SimulationResult, ratio_index: np.ndarray) -> SimulationResult:
    """Keep the requested ratios (index r - 1) of a result computed for r = 1..r_max."""
    if len(ratio_index) == result.ratios.shape[0] and np.all(ratio_index == np.arange(len(ratio_index))):
        return result
    idx = jnp.asarray(ratio_index)
    return dataclasses.replace(
        result,
        ratios=result.ratios[idx],
        throughput_per_instance=result.throughput_per_instance[idx],
        stderr=result.stderr[idx],
        throughput_per_replica=result.throughput_per_replica[:, idx],
        attention_idle_fraction=result.attention_idle_fraction[idx],
        ffn_idle_fraction=result.ffn_idle_fraction[idx],
        mean_cycle_time=result.mean_cycle_time[idx],
        cycle_time_std=result.cycle_time_std[idx],
        cycle_time_quantiles=result.cycle_time_quantiles[idx],
        link_idle_fraction=result.link_idle_fraction[idx],
        pipeline_bubble_fraction=result.pipeline_bubble_fraction[idx],
        decode_log_prob=result.decode_log_prob[:, idx],
    )


# ---------------------------------------------------------------------- sizing (host side)
def _bucket(n: int) -> int:
    """Round up to the next value of the form 2^k or 3 * 2^(k-1) (limits recompiles)."""
    n = max(int(n), 1)
    p = 1 << (n - 1).bit_length()
    return 3 * p // 4 if 3 * p // 4 >= n and p >= 4 else p


def _concrete_float(x, name: str) -> float:
    try:
        return float(x)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError) as err:
        raise ValueError(
            f"{name} is traced (simulate called under jit/grad/vmap); pass chunk_steps= and "
            "requests_per_chunk= explicitly so that buffer sizes do not depend on traced values"
        ) from err


def _requests_bound(workload: Workload, chunk_steps: int, log_eps: float) -> int:
    """Smallest M with P(sum of M decode lengths <= L) <= exp(log_eps) (Chernoff bound)."""
    t = np.logspace(-8, 2, 600)
    log_phi = workload._decode_log_mgf_neg(t)
    L = chunk_steps

    def log_bound(m):
        return float(np.min(t * L + m * log_phi))

    lo, hi = 1, L + 1  # D >= 1: L + 1 requests always cover L steps
    while lo < hi:
        mid = (lo + hi) // 2
        if log_bound(mid) <= log_eps:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _plan(workload, cfg_kwargs, chunk_steps, requests_per_chunk, replica_batch_size, memory_budget_bytes):
    """Choose chunk length, requests per chunk and replica batch size."""
    rmax, B, R = cfg_kwargs["max_ratio"], cfg_kwargs["batch_size"], cfg_kwargs["num_replicas"]
    total = cfg_kwargs["warmup_steps"] + cfg_kwargs["num_steps"]
    if chunk_steps is None:
        mean_d = _concrete_float(workload.mean_decode_steps(), "the workload's mean decode length")
        target = _bucket(int(min(max(32 * mean_d, 256), 16384)))
        chunk_steps = total if total <= target else target
    num_chunks = -(-total // chunk_steps)
    if requests_per_chunk is None:
        _concrete_float(workload.mean_decode_steps(), "the workload's mean decode length")
        # An overflow is detected and the run repeated with a larger buffer and the same
        # random numbers, so the bound only trades speed: 1e-4 chance of a rerun per call.
        log_eps = math.log(1e-4) - math.log(R * rmax * B * num_chunks)
        requests_per_chunk = _bucket(_requests_bound(workload, chunk_steps, log_eps))
    if replica_batch_size is None:
        # Replicas advance together in batches (vmap) and batches follow each other
        # (lax.map), so memory is bounded by the batch. On CPU a batch of about one
        # replica per core measured fastest (XLA splits the batched work across cores
        # while it stays cache-resident); accelerators take as many as the budget allows.
        per_replica = _replica_bytes(cfg_kwargs, chunk_steps, requests_per_chunk)
        fit = max(1, memory_budget_bytes // per_replica)
        if jax.default_backend() == "cpu":
            fit = min(fit, os.cpu_count() or 1)
        replica_batch_size = int(min(R, fit))
    return dict(
        chunk_steps=int(chunk_steps),
        num_chunks=int(num_chunks),
        requests_per_chunk=int(requests_per_chunk),
        replica_batch_size=int(replica_batch_size),
    )


def _replica_bytes(cfg_kwargs, chunk_steps: int, requests_per_chunk: int) -> int:
    """Working memory of one replica in flight (bytes, an estimate): what :func:`_plan`
    uses to choose ``replica_batch_size``, and :mod:`afdjax._sweep` to size its chunks."""
    rmax, B = cfg_kwargs["max_ratio"], cfg_kwargs["batch_size"]
    per_replica = rmax * B * requests_per_chunk * 64 + rmax * chunk_steps * 96 + rmax * cfg_kwargs["num_bins"] * 8
    if cfg_kwargs.get("micro_batches") is not None:  # group loads and the per-ratio pipeline
        G = cfg_kwargs["micro_batches"]
        per_replica += rmax * G * chunk_steps * 96 + rmax * rmax * G * 64
    return per_replica


def _as_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name}={value!r} is invalid: expected an integer >= {minimum}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}={value!r} is invalid: expected an integer {allowed}")
    return value


def simulate(
    key: jax.Array,
    workload: Workload,
    latency: LatencyModel,
    batch_size: int,
    ratios,
    num_steps: int,
    num_replicas: int = 8,
    *,
    start: str = "stationary",
    warmup_steps: int = 0,
    quantile_levels=(0.5, 0.9, 0.99),
    chunk_steps: int | None = None,
    requests_per_chunk: int | None = None,
    replica_batch_size: int | None = None,
    memory_budget_bytes: int = 512 * 2**20,
    num_bins: int = 4096,
    micro_batches: int | None = None,
    progress: bool = False,
) -> SimulationResult:
    """Monte Carlo simulation of the saturated rA-1F decode process.

    Each of ``num_replicas`` independent replicas runs ``r_max = max(ratios)`` Attention
    instances with ``batch_size`` slots each for ``num_steps`` measured steps; the
    system with ratio ``r`` is the first ``r`` instances (common random numbers across
    ratios). Every step ``tau = max(max_{j<r} t_A(T_j), t_C, t_F(rB))``.

    **Arguments:**

    - ``key``: a JAX PRNG key (``jax.random.key(seed)`` or ``PRNGKey(seed)``).
    - ``workload``: a :class:`~afdjax.Workload` (``Geometric``, ``Empirical``).
    - ``latency``: a :class:`~afdjax.LatencyModel`.
    - ``batch_size``: slots per Attention instance ``B`` (1 .. 65536).
    - ``ratios``: the A/F ratios to report (positive integers); all of ``1..max`` are
      simulated in the same pass, one compilation per ``max``.
    - ``num_steps``: measured decode steps per replica.
    - ``num_replicas``: independent replicas (standard errors need at least 2).
    - ``start``: ``"stationary"`` (slots start in the length-biased stationary state)
      or ``"cold"`` (every slot starts a fresh request at step 0).
    - ``warmup_steps``: steps simulated before measuring (discarded).
    - ``quantile_levels``: cycle-time quantile levels in (0, 1).
    - ``chunk_steps``, ``requests_per_chunk``, ``replica_batch_size``: buffer sizes;
      chosen automatically (they fix shapes, so pass them explicitly when calling
      ``simulate`` under ``jit``/``grad``/``vmap`` with traced workload parameters).
      They never change the numbers, only speed and memory.
    - ``memory_budget_bytes``: rough bound on per-batch working memory used to choose
      ``replica_batch_size``.
    - ``num_bins``: cycle-time and KV-load histogram bins (quantile resolution).
    - ``progress``: show a progress bar (tqdm, on stderr) with the rate and ETA in
      simulated replica-steps. The replicas then run in host-side blocks of
      ``replica_batch_size`` and the bar advances after each block; the numbers are
      those of ``progress=False`` (ignored when tracing under ``jit``/``grad``/``vmap``).
    - ``micro_batches``: ``None`` (default) for the paper's idealised barrier step above;
      an integer ``m`` in ``[1, batch_size]`` for the explicit micro-batch pipeline of
      :mod:`afdjax._pipeline`: slot ``s`` is in micro-batch ``s % m``, every step each
      micro-batch passes attention (per instance, ``alpha_a T_{j,g} + beta_a``), A->F,
      FFN (``alpha_f r B_g + beta_f``) and F->A (``t_C(B_g)`` each), the ``beta`` costs paid
      per micro-batch, and the step time is the time between completions of the last
      micro-batch of consecutive steps (from time 0, so the pipeline fill is included).
      Same random loads whatever ``m`` (common random numbers).

    **Returns:** a :class:`SimulationResult`.

    Float parameters (coefficients, workload means) are array leaves: new values reuse
    the compiled program as long as the automatically chosen buffer sizes (rounded up
    to a coarse grid) do not change; fix them explicitly to guarantee it.
    """
    if not isinstance(workload, Workload):
        raise ValueError(f"workload={workload!r} is invalid: expected an afdjax Workload (Geometric, Empirical)")
    if not isinstance(latency, LatencyModel):
        raise ValueError(f"latency={latency!r} is invalid: expected an afdjax LatencyModel")
    batch_size = _as_int("batch_size", batch_size, 1, _MAX_INDEX)
    try:
        ratio_list = [int(r) for r in np.atleast_1d(np.asarray(ratios)).tolist()]
        ok = np.all(np.asarray(ratios, dtype=float) == np.asarray(ratio_list, dtype=float))
    except (TypeError, ValueError):
        ok, ratio_list = False, []
    if not ok or len(ratio_list) == 0 or min(ratio_list) < 1:
        raise ValueError(f"ratios={ratios!r} is invalid: expected a non-empty list of integers >= 1")
    if max(ratio_list) > _MAX_INDEX:
        raise ValueError(f"ratios has max {max(ratio_list)}: expected ratios <= {_MAX_INDEX}")
    num_steps = _as_int("num_steps", num_steps, 1)
    num_replicas = _as_int("num_replicas", num_replicas, 1)
    warmup_steps = _as_int("warmup_steps", warmup_steps, 0)
    num_bins = _as_int("num_bins", num_bins, 16)
    if start not in START_MODES:
        raise ValueError(f"start={start!r} is invalid: expected one of {', '.join(START_MODES)}")
    levels = tuple(float(q) for q in np.atleast_1d(np.asarray(quantile_levels, dtype=float)))
    if not all(0.0 < q < 1.0 for q in levels):
        raise ValueError(f"quantile_levels={quantile_levels!r} is invalid: expected levels in (0, 1)")
    if chunk_steps is not None:
        chunk_steps = _as_int("chunk_steps", chunk_steps, 1)
    if requests_per_chunk is not None:
        requests_per_chunk = _as_int("requests_per_chunk", requests_per_chunk, 1)
    if replica_batch_size is not None:
        replica_batch_size = _as_int("replica_batch_size", replica_batch_size, 1)
    if micro_batches is not None:
        if isinstance(micro_batches, (int, np.integer)) and not isinstance(micro_batches, bool) \
                and int(micro_batches) > batch_size:
            raise ValueError(f"micro_batches={int(micro_batches)} is invalid: expected an integer in "
                             f"[1, batch_size={batch_size}] (or None for the paper's barrier step)")
        micro_batches = _as_int("micro_batches", micro_batches, 1, batch_size)

    base = dict(
        max_ratio=max(ratio_list),
        batch_size=batch_size,
        num_steps=num_steps,
        warmup_steps=warmup_steps,
        num_replicas=num_replicas,
        start=start,
        num_bins=num_bins,
        micro_batches=micro_batches,
    )
    sizes = _plan(workload, base, chunk_steps, requests_per_chunk, replica_batch_size, memory_budget_bytes)
    key_words = jax.random.bits(key, (2,), dtype=jnp.uint32)
    ratio_index = np.asarray(ratio_list, dtype=np.int32) - 1
    while True:
        cfg = _Config(**base, **sizes, progress=bool(progress) and not _traced(workload, latency))
        if cfg.progress:
            result, covered = _simulate_with_progress(key_words, workload, latency, levels, cfg)
        else:
            result, covered = _simulate_jit(key_words, workload, latency, levels, cfg)
        if isinstance(covered, jax.core.Tracer):
            result = eqx.error_if(
                result,
                ~covered,
                "afdjax.simulate: requests_per_chunk was too small for this run; increase it",
            )
            return _select_ratios(result, ratio_index)
        if bool(covered):
            return _select_ratios(result, ratio_index)
        if sizes["requests_per_chunk"] > sizes["chunk_steps"]:  # cannot happen: D >= 1
            raise RuntimeError("afdjax.simulate: internal error, request buffer cannot cover a chunk")
        warnings.warn(
            f"afdjax.simulate: requests_per_chunk={sizes['requests_per_chunk']} ran out in some chunk; "
            "rerunning with twice the buffer (same random numbers)",
            RuntimeWarning,
            stacklevel=2,
        )
        sizes["requests_per_chunk"] = min(2 * sizes["requests_per_chunk"], sizes["chunk_steps"] + 1)
