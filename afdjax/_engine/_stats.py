"""Stage 4, accumulated statistics: per-replica sums over the measured steps, and the
per-ratio results computed from them.

``Statistics`` is the loop state of a replica (one entry per ratio ``r = 1..r_max``
where it depends on ``r``); ``aggregate`` pools the replicas into a
[`SimulationResult`][afdjax.SimulationResult].
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._step import StepConstants, StepTimes, prefix_over_instances
from ._config import EngineConfig
from ._result import SimulationResult

_HIST_SPAN = 16.0  # histogram covers [c/16, 16 c] around the mean-field cycle time c
_KV_SPAN = 64.0  # KV-load histogram covers [T/64, 64 T] around the mean load T = B theta


class HistogramRanges(eqx.Module):
    """Log-spaced histogram bins: cycle times per ratio around the step model's centre,
    KV loads around the mean load ``B theta``."""

    log_lo: jax.Array
    """``(r_max,)``: log of the lowest cycle-time bin edge."""
    kv_log_lo: jax.Array
    """Scalar: log of the lowest KV-load bin edge."""
    dlog: float = eqx.field(static=True)
    kv_dlog: float = eqx.field(static=True)

    @staticmethod
    def make(centre, workload, batch_size: int, num_bins: int) -> HistogramRanges:
        kv_centre = jnp.maximum(batch_size * workload.theta(), 1.0)
        return HistogramRanges(
            log_lo=jnp.log(centre) - math.log(_HIST_SPAN),
            kv_log_lo=jnp.log(kv_centre) - math.log(_KV_SPAN),
            dlog=2 * math.log(_HIST_SPAN) / num_bins,
            kv_dlog=2 * math.log(_KV_SPAN) / num_bins,
        )


class Statistics(eqx.Module):
    """Sums over the measured steps of one replica (``(r_max,)`` per ratio unless noted)."""

    tau: jax.Array
    """Total time of the measured steps."""
    dev: jax.Array
    """Sum of ``tau - centre`` (centred, so the variance does not cancel)."""
    dev2: jax.Array
    """Sum of ``(tau - centre)^2``."""
    busy: jax.Array
    """Attention busy time summed over the first ``r`` instances."""
    instance_busy: jax.Array
    """``(r_max instances,)``: busy time of each instance."""
    kv_hist: jax.Array
    """``(num_bins,)`` int: KV-load histogram over instance-steps (all ``r_max`` instances)."""
    kv_min: jax.Array
    kv_max: jax.Array
    load: jax.Array
    """``(r_max instances,)``: sum of each instance's KV load."""
    tau_min: jax.Array
    tau_max: jax.Array
    hist: jax.Array
    """``(r_max * num_bins,)`` int: cycle-time histogram of every ratio, flattened."""
    covered: jax.Array
    """Scalar bool: no chunk ran out of drawn requests."""
    log_prob: jax.Array
    """``(r_max instances,)``: log-likelihood of the decode lengths drawn per instance."""
    jump_time: jax.Array
    """``(r_max,)``: coupled decode-jump term ``sum_i w~_i Delta time_i`` (value 0)."""
    ffn_busy: jax.Array | None = None
    """``(r_max,)``: FFN busy time, where the step model reports it (random FFN times)."""

    @staticmethod
    def zeros(max_ratio: int, num_bins: int, log_prob, ffn_busy: bool = False) -> Statistics:
        fdtype = jnp.zeros(()).dtype
        zeros = jnp.zeros(max_ratio, fdtype)
        return Statistics(
            tau=zeros,
            dev=zeros,
            dev2=zeros,
            busy=zeros,
            instance_busy=zeros,
            kv_hist=jnp.zeros(num_bins, jnp.int32),
            kv_min=jnp.asarray(jnp.inf, fdtype),
            kv_max=jnp.asarray(-jnp.inf, fdtype),
            load=zeros,
            tau_min=zeros + jnp.inf,
            tau_max=zeros - jnp.inf,
            hist=jnp.zeros(max_ratio * num_bins, jnp.int32),
            covered=jnp.array(True),
            log_prob=log_prob,
            jump_time=zeros,
            ffn_busy=zeros if ffn_busy else None,
        )

    def add(
        self,
        times: StepTimes,
        load,
        measured,
        centre,
        ranges: HistogramRanges,
        num_bins: int,
        covered,
        log_prob,
        jump_time=0.0,
    ) -> Statistics:
        """Add one chunk: ``times`` from the step model, ``load`` ``(r_max, L)`` per
        instance, ``measured`` ``(L,)`` bool (after the warm-up, before the end)."""
        fdtype = jnp.zeros(()).dtype
        rmax = load.shape[0]
        tau, attention = times.cycle_time, times.attention_busy
        weight = measured.astype(fdtype)[None, :]
        busy = prefix_over_instances(jnp.add, attention)  # row r-1: sum over the first r instances
        kv_index = jnp.clip(
            jnp.floor((jnp.log(jax.lax.stop_gradient(load)) - ranges.kv_log_lo) / ranges.kv_dlog), 0, num_bins - 1
        ).astype(jnp.int32)
        kv_index = jnp.where(measured[None, :], kv_index, num_bins)
        b = jnp.clip(jnp.floor((jnp.log(tau) - ranges.log_lo[:, None]) / ranges.dlog), 0, num_bins - 1).astype(
            jnp.int32
        )
        hist_index = jnp.where(measured[None, :], jnp.arange(rmax)[:, None] * num_bins + b, rmax * num_bins)
        dev = tau - centre[:, None]  # centred, so the variance does not cancel
        return Statistics(
            tau=self.tau + jnp.sum(tau * weight, axis=1),
            dev=self.dev + jnp.sum(dev * weight, axis=1),
            dev2=self.dev2 + jnp.sum(dev**2 * weight, axis=1),
            busy=self.busy + jnp.sum(busy * weight, axis=1),
            instance_busy=self.instance_busy + jnp.sum(attention * weight, axis=1),
            kv_hist=self.kv_hist.at[kv_index.reshape(-1)].add(1, mode="drop"),
            kv_min=jnp.minimum(self.kv_min, jnp.min(jnp.where(measured[None, :], load, jnp.inf))),
            kv_max=jnp.maximum(self.kv_max, jnp.max(jnp.where(measured[None, :], load, -jnp.inf))),
            load=self.load + jnp.sum(load * weight, axis=1),
            tau_min=jnp.minimum(self.tau_min, jnp.min(jnp.where(measured, tau, jnp.inf), axis=1)),
            tau_max=jnp.maximum(self.tau_max, jnp.max(jnp.where(measured, tau, -jnp.inf), axis=1)),
            hist=self.hist.at[hist_index.reshape(-1)].add(1, mode="drop"),
            covered=self.covered & covered,
            log_prob=self.log_prob + log_prob,
            jump_time=self.jump_time + jump_time,
            ffn_busy=None if self.ffn_busy is None else self.ffn_busy + jnp.sum(times.ffn_busy * weight, axis=1),
        )


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


def aggregate(
    sums: Statistics, constants: StepConstants, ranges: HistogramRanges, levels, cfg: EngineConfig, jumps=False
):
    """``(SimulationResult, covered)`` from the stacked per-replica sums of all ``num_replicas``."""
    fdtype = jnp.zeros(()).dtype
    B, K, R = cfg.batch_size, cfg.num_steps, cfg.num_replicas
    steps_total = float(K) * float(R)  # Python floats: products of sizes can exceed int32
    ratio = jnp.arange(1, cfg.max_ratio + 1, dtype=fdtype)
    time = sums.tau  # (R, rmax)
    total_time = jnp.sum(time, axis=0)
    tokens = ratio * (float(B) * float(K))
    throughput = tokens * R / ((ratio + 1) * total_time)
    per_replica = tokens / ((ratio + 1) * time)
    if R > 1:
        rel = jnp.std(time, axis=0, ddof=1) / (jnp.mean(time, axis=0) * math.sqrt(R))
    else:
        rel = jnp.full_like(total_time, jnp.nan)
    stderr = throughput * rel
    attention_idle = 1.0 - jnp.sum(sums.busy, axis=0) / (ratio * total_time)
    ffn_step, link_step = constants.ffn_step, constants.link_step
    ffn_total = steps_total * ffn_step if sums.ffn_busy is None else jnp.sum(sums.ffn_busy, axis=0)
    ffn_idle = 1.0 - ffn_total / total_time
    link_idle = 1.0 - steps_total * link_step / total_time
    busiest_instance = prefix_over_instances(jnp.maximum, jnp.sum(sums.instance_busy, axis=0))  # (rmax,)
    busiest = jnp.maximum(busiest_instance, jnp.maximum(ffn_total, steps_total * link_step))
    bubble = 1.0 - busiest / total_time
    mean_tau = total_time / steps_total
    mean_dev = jnp.sum(sums.dev, axis=0) / steps_total
    var_tau = jnp.maximum(jnp.sum(sums.dev2, axis=0) / steps_total - mean_dev**2, 0.0)
    hist = jnp.sum(sums.hist, axis=0).reshape(cfg.max_ratio, cfg.num_bins)
    quantiles = _quantiles_from_histogram(
        hist, ranges.log_lo, ranges.dlog, jnp.min(sums.tau_min, axis=0), jnp.max(sums.tau_max, axis=0), levels
    )
    mean_load = jnp.sum(sums.load) / (float(cfg.max_ratio) * steps_total * B)
    kv_hist = jnp.sum(sums.kv_hist, axis=0)
    kv_min, kv_max = jnp.min(sums.kv_min), jnp.max(sums.kv_max)
    kv_log_lo, kv_dlog = ranges.kv_log_lo, ranges.kv_dlog
    kv_quantiles = _quantiles_from_histogram(
        kv_hist[None], kv_log_lo[None], kv_dlog, kv_min[None], kv_max[None], levels
    )[0]
    kv_edges = jnp.exp(kv_log_lo + kv_dlog * jnp.arange(cfg.num_bins + 1, dtype=fdtype))
    covered = jnp.all(sums.covered)
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
        decode_log_prob=jnp.cumsum(sums.log_prob, axis=1),
        decode_jump=-jax.lax.stop_gradient(per_replica / time) * sums.jump_time,
        decode_jumps=bool(jumps),
        batch_size=B,
        num_steps=K,
        num_replicas=R,
        micro_batches=cfg.step_model.micro_batches,
        step_model=cfg.step_model,
    )
    return result, covered
