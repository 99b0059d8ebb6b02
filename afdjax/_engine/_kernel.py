"""The engine kernel: one replica as a scan over chunks of steps, the stages in order.

For each chunk of ``L`` steps: request draws (``_draws``) -> slot loads per instance
(``_loads``) -> step timing (the [`StepModel`][afdjax.StepModel]) -> accumulated
statistics (``_stats``). Every ratio ``r = 1..r_max`` is timed in the same pass (the
system with ratio ``r`` is the first ``r`` of ``r_max`` instances), so a ratio sweep is
one pass and one compilation. The per-ratio constants of the step model and the
histogram ranges are computed once per configuration, outside the replica loop.

``simulate_all_ratios`` is the one pure entry point (``simulate``, the sweep and the
gradients all go through it) and ``rerun_on_overflow`` the one retry loop.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._interrupt import deliver_interrupts
from .._validate import filter_jit
from ._config import EngineConfig
from ._draws import draw_requests, initial_jump_weights, initial_slots, slot_streams, stage_keys
from ._jumps import JumpState, barrier_jump_time, chunk_jumps, load_perturbation
from ._loads import chunk_loads
from ._stats import HistogramRanges, Statistics, aggregate


def replica_sums(
    replica_id, key_words, workload, latency, constants, ranges: HistogramRanges, cfg: EngineConfig, jumps=False
):
    """Simulate one replica; return its ``Statistics`` (one entry per r = 1..r_max).

    ``jumps`` (static): also accumulate the coupled decode-length jump term
    (``_jumps``; value 0, for gradients only). The other numbers are the same."""
    rmax, B, L, M = cfg.max_ratio, cfg.batch_size, cfg.chunk_steps, cfg.requests_per_chunk
    model = cfg.step_model
    fdtype = jnp.zeros(()).dtype
    streams = slot_streams(key_words, replica_id, rmax, B)
    slots0, log_prob0 = initial_slots(streams, workload, cfg.start)
    steps_local = jnp.arange(L)

    # The exact decode-jump term assumes tau = max(slowest attention, floor): not with
    # random stage times, which take the first-order path through the step model.
    exact_jumps = jumps and model.supports_decode_jumps() and not latency.stochastic

    def chunk(carry, c):
        slots, timing_state, stats, jstate = carry
        drawn = draw_requests(streams, slots.next_request, workload, M, jumps)  # 1. draws
        new_prefill, new_decode = drawn[:2]
        next_slots, loads = chunk_loads(slots, new_prefill, new_decode, model.slot_groups(), L)  # 2. loads
        # Score-function carrier: log-likelihood of the decode lengths of every request
        # that started in this chunk (one sum per instance).
        log_prob = jnp.sum(jnp.where(loads.started, workload._decode_log_prob(new_decode), 0.0), axis=(1, 2))
        step = c * L + steps_local
        measured = (step >= cfg.warmup_steps) & (step < cfg.warmup_steps + cfg.num_steps)
        group_load, jump_time = loads.group_load, jnp.zeros(rmax, fdtype)
        if jumps:  # 2b. coupled decode-length jumps (gradients only; value 0)
            new_weight, new_down = drawn[2:]
            jstate, cj = chunk_jumps(jstate, loads.starts, loads.jump, new_weight, model.slot_groups(), L, new_down)
            if exact_jumps:
                jump_time = barrier_jump_time(
                    cj, loads.load, constants.floor_time, latency.alpha_a, latency.beta_a, measured
                )
            else:  # first order through the step model's own derivative
                group_load = group_load + load_perturbation(cj, B, L)
        if latency.stochastic:  # 3. timing (random stage times: their own counter stream)
            keys = stage_keys(key_words, replica_id, step)
            timing_state, times = model.step_times(constants, timing_state, group_load, latency, keys)
        else:
            timing_state, times = model.step_times(constants, timing_state, group_load, latency)
        stats = stats.add(
            times,
            loads.load,
            measured,
            constants.centre,
            ranges,
            cfg.num_bins,  # 4. statistics
            loads.covered,
            log_prob,
            jump_time,
        )
        return (next_slots, timing_state, stats, jstate), None

    if jumps:
        weights = initial_jump_weights(streams, workload, cfg.start, slots0)
        jstate0 = JumpState.initial(*(None if x is None else x.astype(fdtype) for x in weights))
    else:
        jstate0 = None
    stats0 = Statistics.zeros(rmax, cfg.num_bins, log_prob0, ffn_busy=latency.routing is not None)
    carry0 = (slots0, model.initial_state(rmax, fdtype), stats0, jstate0)
    # checkpoint: reverse-mode differentiation stores only the carry between chunks and
    # recomputes each chunk's internals, so gradient memory does not grow with steps.
    (_, _, stats, _), _ = jax.lax.scan(jax.checkpoint(chunk), carry0, jnp.arange(cfg.num_chunks))
    return stats


def run_constants(workload, latency, cfg: EngineConfig):
    """The step model's per-ratio constants and the histogram ranges of a configuration."""
    constants = cfg.step_model.constants(workload, latency, cfg.batch_size, cfg.max_ratio)
    return constants, HistogramRanges.make(constants.centre, workload, cfg.batch_size, cfg.num_bins)


def _map_replicas(key_words, workload, latency, constants, ranges, cfg: EngineConfig, replica_ids, jumps=False):
    """Stacked ``Statistics`` of the replicas ``replica_ids``, advanced
    ``replica_batch_size`` at a time (vmap inside a batch, batches one after another)."""
    return jax.lax.map(
        lambda i: replica_sums(i, key_words, workload, latency, constants, ranges, cfg, jumps),
        replica_ids,
        batch_size=min(cfg.replica_batch_size, replica_ids.shape[0]),
    )


def block_sums(key_words, workload, latency, cfg: EngineConfig, replica_ids):
    """Stacked per-replica sums of the replicas ``replica_ids`` (a block of the progress mode)."""
    constants, ranges = run_constants(workload, latency, cfg)
    return _map_replicas(key_words, workload, latency, constants, ranges, cfg, replica_ids)


def simulate_all_ratios(key_words, workload, latency, levels, cfg: EngineConfig, jumps: bool = False):
    """The pure (un-jitted) simulation of one configuration: ``(SimulationResult, covered)``
    for every ratio ``r = 1..cfg.max_ratio``.

    ``key_words`` is a ``(2,)`` uint32 array; ``workload`` and ``latency`` may be traced
    (the sweep vmaps over them); ``levels`` (quantile levels, a tuple) and ``cfg`` are static.
    """
    replica_ids = jnp.arange(cfg.num_replicas, dtype=jnp.uint32)
    constants, ranges = run_constants(workload, latency, cfg)
    sums = _map_replicas(key_words, workload, latency, constants, ranges, cfg, replica_ids, jumps)
    return aggregate(sums, constants, ranges, levels, cfg, jumps)


@filter_jit
def _simulate_jit(key_words, workload, latency, levels, cfg: EngineConfig, jumps: bool = False):
    """All ratios r = 1..r_max; the caller selects the requested ones outside this jit
    (so a different subset of ratios never recompiles the simulation)."""
    return simulate_all_ratios(key_words, workload, latency, levels, cfg, jumps)


_block_sums_jit = filter_jit(block_sums)


@filter_jit
def _aggregate_jit(sums, workload, latency, levels, cfg: EngineConfig):
    constants, ranges = run_constants(workload, latency, cfg)
    return aggregate(sums, constants, ranges, levels, cfg)


def _simulate_with_progress(key_words, workload, latency, levels, cfg: EngineConfig):
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


def run_engine(key_words, workload, latency, levels, cfg: EngineConfig, jumps: bool = False):
    """One engine run of a configuration (jitted; blocks with a progress bar when
    ``cfg.progress``): ``(SimulationResult for r = 1..r_max, covered)``. ``jumps``: also
    the coupled decode-length term (gradients; not with the progress mode)."""
    if cfg.progress and not jumps:
        return _simulate_with_progress(key_words, workload, latency, levels, cfg)
    return _simulate_jit(key_words, workload, latency, levels, cfg, jumps)


def _traced(x) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def rerun_on_overflow(run, sizes: dict, *, who: str = "afdjax.simulate", warn: bool = True):
    """The one overflow-retry loop: ``run(sizes) -> (out, covered)``.

    ``covered`` (a bool or an array of them) says the drawn-request buffer
    (``sizes["requests_per_chunk"]``) reached past every chunk. If not, the run is
    repeated with twice the buffer (the same random numbers, so the same numbers come
    out); ``sizes`` is updated in place, so later calls start from the larger buffer.
    Under tracing (``covered`` a tracer) no rerun is possible: the output carries an
    ``eqx.error_if`` instead. Returns ``out``.

    Every engine run (``simulate``, each sweep chunk) goes through here, so this is also
    where a Ctrl-C is made certain to arrive (``_interrupt.deliver_interrupts``).
    """
    with deliver_interrupts():
        while True:
            out, covered = run(sizes)
            if _traced(covered):
                return eqx.error_if(
                    out, ~jnp.all(covered), f"{who}: requests_per_chunk was too small for this run; increase it"
                )
            if bool(np.all(np.asarray(covered))):
                return out
            if sizes["requests_per_chunk"] > sizes["chunk_steps"]:  # cannot happen: D >= 1
                raise RuntimeError(f"{who}: internal error, request buffer cannot cover a chunk")
            if warn:
                warnings.warn(
                    f"{who}: requests_per_chunk={sizes['requests_per_chunk']} ran out in some chunk; "
                    "rerunning with twice the buffer (same random numbers)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            sizes["requests_per_chunk"] = min(2 * sizes["requests_per_chunk"], sizes["chunk_steps"] + 1)
