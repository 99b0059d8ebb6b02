"""The result of a simulation: [`SimulationResult`][afdjax.SimulationResult] (per-ratio arrays, ``to_dict``)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._json import jsonable
from .._step import StepModel


class SimulationResult(eqx.Module):
    """Per-ratio results of [`simulate`][afdjax.simulate]. Arrays are indexed like ``ratios``.

    Times are in the latency model's time unit; throughput in tokens per time unit.

    Attributes:
        batch_size: slots ``B`` per Attention instance (static).
        num_steps: measured steps per replica (static).
        num_replicas: independent replicas (static).
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
    when the last micro-batch of step ``k`` is back from the FFN (``C(-1) = 0``: the
    pipeline starts empty, and the default warm-up of ``Pipeline(m)`` leaves that fill out)."""
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
    [`throughput_estimate`][afdjax.throughput_estimate])."""
    decode_jump: jax.Array | None = None
    """``(num_replicas, n)``: the coupled decode-length jump term of each replica's
    throughput (value 0; its gradient is the coupled estimator's part for decode-length
    parameters, see ``afdjax._engine._jumps``). Zero unless ``decode_jumps``."""
    decode_jumps: bool = eqx.field(static=True, default=False)
    """Whether ``simulate(..., decode_jumps=True)`` computed ``decode_jump``."""
    batch_size: int = eqx.field(static=True, default=0)
    num_steps: int = eqx.field(static=True, default=0)
    num_replicas: int = eqx.field(static=True, default=0)
    micro_batches: int | None = eqx.field(static=True, default=None)
    """Micro-batches per Attention instance, or None for the paper's barrier step."""
    step_model: StepModel | None = eqx.field(static=True, default=None)
    """The [`StepModel`][afdjax.StepModel] simulated (``Barrier()`` or ``Pipeline(m)``)."""

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
        frac = np.where(
            width > 0,
            (np.log(np.maximum(c, 1e-300)) - np.log(np.maximum(left[i], 1e-300))) / np.where(width > 0, width, 1.0),
            1.0,
        )
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
            "kv_load_quantiles": {
                f"p{100 * lv:g}": float(np.asarray(self.kv_load_quantiles)[i]) for i, lv in enumerate(levels)
            },
            "kv_load_min_tokens": float(self.kv_load_min_tokens),
            "kv_load_max_tokens": float(self.kv_load_max_tokens),
        }


def select_ratios(result: SimulationResult, ratio_index: np.ndarray) -> SimulationResult:
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
        decode_jump=None if result.decode_jump is None else result.decode_jump[:, idx],
    )
