"""``serve``: the public entry point of the open-loop (arrivals and queueing) engine."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._interrupt import deliver_interrupts
from .._latency import LatencyModel
from .._step import Barrier, as_step_model
from .._validate import check_choice, check_int, check_number, filter_jit, float_leaf, invalid
from .._workload import Empirical, Fixed, Uniform, Workload
from ._arrivals import Arrivals, GammaArrivals, PoissonArrivals
from ._kernel import POLICIES, Inputs, ServeConfig, Stats, replica_block
from ._result import QUANTILE_LEVELS, ServeResult, aggregate

MAX_SLOTS = 2**16
"""Largest ``max(ratios)`` and ``batch_size`` (as in :func:`afdjax.simulate`)."""


def _check_ratios(ratios) -> list[int]:
    try:
        values = [int(r) for r in np.atleast_1d(np.asarray(ratios)).tolist()]
        ok = np.all(np.asarray(ratios, dtype=float) == np.asarray(values, dtype=float))
    except (TypeError, ValueError):
        ok, values = False, []
    if not ok or not values or min(values) < 1 or max(values) > MAX_SLOTS:
        raise invalid("ratios", ratios, f"a non-empty list of integers in [1, {MAX_SLOTS}]")
    if len(set(values)) != len(values):
        raise invalid("ratios", ratios, "each ratio once")
    return values


def _check_rates(arrival_rates) -> np.ndarray:
    try:
        x = np.atleast_1d(np.asarray(arrival_rates, dtype=float))
    except (TypeError, ValueError):
        raise invalid("arrival_rates", arrival_rates, "a non-empty list of finite numbers > 0") from None
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)) or not np.all(x > 0):
        raise invalid("arrival_rates", arrival_rates, "a non-empty list of finite numbers > 0")
    return x


def as_arrivals(arrivals) -> Arrivals:
    """``None`` or ``"poisson"`` -> Poisson, ``"gamma:cv=C"`` -> :class:`GammaArrivals`, an
    :class:`Arrivals` as it is."""
    if arrivals is None or arrivals == "poisson":
        return PoissonArrivals()
    if isinstance(arrivals, Arrivals):
        return arrivals
    if isinstance(arrivals, str) and arrivals.startswith("gamma:cv="):
        try:
            cv = float(arrivals.split("=", 1)[1])
        except ValueError:
            raise invalid("arrivals", arrivals, "poisson, gamma:cv=C or an Arrivals object") from None
        return GammaArrivals(cv)
    raise invalid("arrivals", arrivals, "poisson, gamma:cv=C or an Arrivals object (e.g. load_arrival_trace(...))")


def request_workload(workload, arrivals: Arrivals) -> Workload:
    """The request-length distribution of a run: the workload, or a replayed trace's rows."""
    if arrivals.has_lengths():
        if workload is not None:
            raise ValueError(
                "workload: give workload=None with a trace replay that carries its request lengths "
                "(load_arrival_trace); the requests are then the trace's rows in order"
            )
        return Empirical(np.asarray(arrivals.prefill_tokens), np.asarray(arrivals.decode_steps))
    if not isinstance(workload, Workload):
        raise invalid("workload", workload, "an afdjax Workload (Geometric, Empirical, Fixed, ...)")
    return workload


def default_warmup(mean_decode: float, num_steps: int) -> int:
    """Steps simulated before measuring: four mean request lifetimes (the bundle starts
    empty), at least 64."""
    return int(max(64, math.ceil(4.0 * mean_decode)))


def _completions(max_ratio: int, batch_size: int, mean_decode: float) -> float:
    """Mean completions per step of a full bundle."""
    return max_ratio * batch_size / max(mean_decode, 1.0)


def _upper(m: float, z: float) -> float:
    """A count of mean ``m`` plus ``z`` of its (Poisson) standard deviations and 4."""
    return m + z * math.sqrt(m) + 4.0


def _pow2(x: float) -> int:
    return 1 << max(0, math.ceil(x) - 1).bit_length()


def default_admissions(
    max_ratio: int, batch_size: int, mean_decode: float, bundle_steps: int = 1, arrivals_per_step: float = 0.0
) -> int:
    """Admissions (and arrivals) per step the buffers hold before a rerun: ``m`` plus ``z``
    standard deviations (``sqrt(m)``) and 4, at least 16 (at most every slot). ``m`` is
    the larger of the mean completions of a full bundle and ``arrivals_per_step`` (the
    mean arrivals in a full step at the highest rate: while a bundle fills, all of them
    may be admitted in one step). ``z = max(4, sqrt(2 ln N) + 1)`` for the ``N``
    bundle-steps of the run: the largest of ``N`` such counts rarely exceeds it, so a long
    sweep is not run twice for one rare step. A step that needs more repeats the run with
    more (same numbers)."""
    m = max(_completions(max_ratio, batch_size, mean_decode), arrivals_per_step)
    z = max(4.0, math.sqrt(2.0 * math.log(max(bundle_steps, 1))) + 1.0)
    return int(min(max_ratio * batch_size, math.ceil(max(16.0, _upper(m, z)))))


def _decode_bound(req: Workload) -> int | None:
    """The longest decode length of a workload with a known finite one (else ``None``)."""
    if isinstance(req, Fixed):
        return int(req.decode_steps)
    if isinstance(req, Uniform):
        return int(req.decode_high)
    if isinstance(req, Empirical):  # rows (or a trace's) scaled by 1 + decode_scale
        try:
            scale = 1.0 + max(float(req.decode_scale), 0.0)
            return math.ceil(float(np.max(np.asarray(req.decode_steps))) * scale) + 1
        except (TypeError, jax.errors.ConcretizationTypeError):
            return None
    return None


def default_horizon(req: Workload, mean_decode: float) -> int:
    """Rows of the completion calendar: a power of two above the longest decode length
    where it is known, else above 16 mean decode lengths (a run that admits a longer
    request is repeated with a calendar long enough: same numbers)."""
    bound = _decode_bound(req)
    return _pow2(max(64, bound if bound is not None else 16.0 * mean_decode))


def default_request_ring(max_ratio: int, batch_size: int, mean_decode: float, horizon: int, admissions: int) -> int:
    """Requests admitted and not yet resolved the ring holds: the admissions of a full
    bundle over ``horizon`` steps, with margin (a power of two; a rerun doubles it)."""
    m = horizon * max_ratio * batch_size / max(mean_decode, 1.0)
    return _pow2(m + 4.0 * math.sqrt(m) + 2 * admissions + 64)


def default_resolved(max_ratio: int, batch_size: int, mean_decode: float) -> int:
    """Finished requests resolved per step: the mean completions of a full bundle plus 4
    standard deviations and 4, at least 8."""
    return math.ceil(max(8.0, _upper(_completions(max_ratio, batch_size, mean_decode), 4.0)))


_block_jit = filter_jit(replica_block)

MIN_GROUP_PAD = 8
"""Ratios up to this many instances share one padded group (see :func:`ratio_groups`)."""


def ratio_groups(ratios: list[int]) -> list[tuple[int, list[int]]]:
    """``(padded instances, positions in ratios)`` per group of ratios simulated together.

    A bundle is simulated with its instances padded to its group's size (the per-instance
    arrays, the calendar and the buffers scale with it): ratio ``r`` joins the group of
    ``min(r_max, max(8, 2^ceil(log2 r)))``, so r = 1..32 pads 704 instance rows instead of
    1024 in one group.
    Each group is one compiled program; padding never changes a number (the padded
    instances are masked everywhere)."""
    rmax = max(ratios)
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(ratios):
        pad = min(rmax, max(MIN_GROUP_PAD, 1 << (r - 1).bit_length()))
        groups.setdefault(pad, []).append(i)
    return sorted(groups.items())


def group_config(cfg: ServeConfig, pad: int) -> ServeConfig:
    """The configuration of a group padded to ``pad`` instances: the request ring scales
    with the group's slots. The admission buffer and the resolutions per step stay those of
    ``r_max``: they set the order of the sums, and padding must not change a bit."""
    return dataclasses.replace(cfg, max_ratio=pad, request_ring=max(256, _pow2(cfg.request_ring * pad / cfg.max_ratio)))


def _run_groups(runner, key_words, workload, arrivals, latency, inp, ratio_list, rates_arr, cfg: ServeConfig):
    """Run every ratio group; the stacked :class:`Stats` in the order of ``ratio_list``."""
    parts, order = [], []
    for pad, pos in ratio_groups(ratio_list):
        ratios = jnp.asarray([ratio_list[i] for i in pos], jnp.int32)
        cfg_g = group_config(cfg, pad)
        parts.append(runner(key_words, workload, arrivals, latency, inp, ratios, rates_arr, cfg_g))
        order.extend(pos)
    if len(parts) == 1:
        return parts[0]
    inverse = np.argsort(np.asarray(order))
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=1)[:, inverse], *parts)


def _run(key_words, workload, arrivals, latency, inp, ratios, rates, cfg: ServeConfig):
    ids = jnp.arange(cfg.num_replicas, dtype=jnp.uint32)
    st = _block_jit(key_words, workload, arrivals, latency, inp, cfg, ratios, rates, ids)
    return st


def _run_with_progress(key_words, workload, arrivals, latency, inp, ratios, rates, cfg: ServeConfig):
    from tqdm.auto import tqdm

    R, block = cfg.num_replicas, cfg.replica_batch_size
    steps = cfg.num_chunks * cfg.chunk_steps
    bar = tqdm(total=R * steps, unit="step", unit_scale=True, desc="afdjax.serve", leave=False, mininterval=0.5)
    try:
        parts = []
        for first in range(0, R, block):
            n = min(block, R - first)
            ids = jnp.asarray(np.arange(first, first + block) % R, jnp.uint32)
            out = _block_jit(key_words, workload, arrivals, latency, inp, cfg, ratios, rates, ids)
            parts.append(jax.tree_util.tree_map(lambda x, n=n: x[:n], jax.block_until_ready(out)))
            bar.update(n * steps)
        return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)
    finally:
        bar.close()


def serve(
    key: jax.Array,
    workload: Workload | None,
    latency: LatencyModel,
    batch_size: int,
    ratios,
    arrival_rates,
    num_steps: int,
    num_replicas: int = 8,
    *,
    arrivals=None,
    kv_capacity: float | None = None,
    prefill_alpha: float = 0.0,
    prefill_beta: float = 0.0,
    slo_ttft: float | None = None,
    slo_tpot: float | None = None,
    policy: str = "balanced",
    warmup_steps: int | None = None,
    queue_capacity: int = 4096,
    max_admissions: int | None = None,
    chunk_steps: int = 256,
    replica_batch_size: int | None = None,
    num_bins: int = 4096,
    step_model=None,
    progress: bool = False,
) -> ServeResult:
    """Monte Carlo simulation of open-loop serving: rA-1F bundles fed by an arrival stream.

    Every bundle (``r`` Attention instances of ``batch_size`` slots, one FFN) has one FIFO
    queue fed at ``r X`` requests per time unit (``X`` in ``arrival_rates``, per Attention
    instance). At the start of each step the requests that have arrived are admitted in
    arrival order while a slot is free, each to the instance chosen by ``policy``
    (default: the most free slots, ties to the smaller KV load, then the lower index);
    with ``kv_capacity`` only where its prefill fits (head-of-line waiting, no
    preemption). The step is the paper's barrier with the occupied slots' loads
    (``_serve._kernel.step_time``); an empty bundle idles until the next
    arrival. See ``afdjax._serve._kernel`` for the exact process.

    Arguments:
        key: a JAX PRNG key. Request ``n`` of a replica has the same lengths and unit
            gap whatever the ratio and the rate (common random numbers).
        workload: request lengths, or ``None`` with a trace replay carrying lengths.
        latency: a [`LatencyModel`][afdjax.LatencyModel] (time unit of every result).
        batch_size: slots per Attention instance ``B``.
        ratios: A/F ratios ``r`` (distinct integers >= 1).
        arrival_rates: ``X``, requests per time unit per Attention instance (> 0).
        num_steps: measured steps per bundle and replica (after ``warmup_steps``).
        num_replicas: independent replicas (standard errors need 2).
        arrivals: ``"poisson"`` (default), ``"gamma:cv=C"``, a [`GammaArrivals`][afdjax.GammaArrivals],
            or a [`TraceArrivals`][afdjax.TraceArrivals] ([`load_arrival_trace`][afdjax.load_arrival_trace]: the
            trace's gaps scaled to
            the rate, replayed from a random row per replica).
        kv_capacity: KV tokens per Attention instance (``None``: unlimited). A request
            is admitted only where ``load + P <= kv_capacity``; one with ``P > kv_capacity``
            is refused (``ServeResult.rejected``). Loads may grow past it while decoding.
        prefill_alpha: TTFT = queue wait + ``prefill_alpha P +
            prefill_beta`` (prefill runs elsewhere; time units per token and time units).
        prefill_beta: see ``prefill_alpha``.
        slo_ttft: targets for the goodput (``None``: no target), > 0.
        slo_tpot: see ``slo_ttft``.
        policy: one of ``POLICIES``.
        warmup_steps: steps before measuring (the bundle starts empty); default
            ``default_warmup``.
        queue_capacity: requests the queue holds (ring buffer); reaching it flags the
            rate saturated.
        max_admissions: admissions per step in the loop (default from the workload; a run
            that needs more is repeated with twice as many, same numbers).
        chunk_steps: buffer sizes (never change the numbers).
        replica_batch_size: see ``chunk_steps``.
        num_bins: bins of the TPOT and TTFT histograms (quantile resolution).
        step_model: ``None`` or [`Barrier`][afdjax.Barrier] (the pipeline is not supported).
        progress: a progress bar over replica blocks (tqdm, stderr).

    Returns:
        a [`ServeResult`][afdjax.ServeResult] (arrays ``(len(ratios), len(arrival_rates))``).
        One compilation per shape: new rates, coefficients or ``cv`` reuse it.
    """
    run = run_stats(
        key,
        workload,
        latency,
        batch_size,
        ratios,
        arrival_rates,
        num_steps,
        num_replicas,
        arrivals=arrivals,
        kv_capacity=kv_capacity,
        prefill_alpha=prefill_alpha,
        prefill_beta=prefill_beta,
        slo_ttft=slo_ttft,
        slo_tpot=slo_tpot,
        policy=policy,
        warmup_steps=warmup_steps,
        queue_capacity=queue_capacity,
        max_admissions=max_admissions,
        chunk_steps=chunk_steps,
        replica_batch_size=replica_batch_size,
        num_bins=num_bins,
        step_model=step_model,
        progress=progress,
    )
    return result_of(run)


def result_of(run: StatsRun) -> ServeResult:
    """The :class:`ServeResult` of a :func:`run_stats` run (replicas pooled)."""
    fields = aggregate(run.stats, run.ratios, run.rates, run.scale, run.cfg.num_bins, mean_decode=run.mean_decode)
    return ServeResult(
        ratios=np.asarray(run.ratio_list),
        arrival_rates=run.rate_values,
        quantile_levels=QUANTILE_LEVELS,
        batch_size=run.cfg.batch_size,
        num_steps=run.cfg.num_steps,
        num_replicas=run.cfg.num_replicas,
        settings=run.settings,
        **fields,
    )


class StatsRun(NamedTuple):
    """What :func:`run_stats` returns: the stacked per-replica :class:`Stats`
    ``(replicas, ratios, rates)`` and what a rerun (same shapes) or the pooling needs."""

    stats: Stats
    ratios: jax.Array
    """``(ratios,)`` int32."""
    rates: jax.Array
    """``(rates,)`` the arrival rates per Attention instance."""
    ratio_list: list
    rate_values: np.ndarray
    """``(rates,)`` float64, as given."""
    scale: float
    """The full-batch cycle time at ``r_max`` (centres the histograms)."""
    cfg: ServeConfig
    """The configuration of the last (final) run, buffers included."""
    settings: dict
    """``ServeResult.settings``."""
    key_words: jax.Array
    workload: object
    """The workload the kernel draws from (``None`` for a trace carrying its lengths)."""
    arrivals: Arrivals
    inputs: Inputs
    mean_decode: float
    """``E[D]`` of the request lengths (the offered load of the saturation flag)."""


def run_stats(
    key,
    workload,
    latency,
    batch_size,
    ratios,
    arrival_rates,
    num_steps,
    num_replicas=8,
    *,
    arrivals=None,
    kv_capacity=None,
    prefill_alpha=0.0,
    prefill_beta=0.0,
    slo_ttft=None,
    slo_tpot=None,
    policy="balanced",
    warmup_steps=None,
    queue_capacity=4096,
    max_admissions=None,
    chunk_steps=256,
    replica_batch_size=None,
    num_bins=4096,
    step_model=None,
    progress=False,
) -> StatsRun:
    """:func:`serve`'s checks and run (arguments as there), without the pooling: the
    stacked per-replica sums, for :func:`serve` and the derivatives
    (``_serve._sensitivity``)."""
    arrivals = as_arrivals(arrivals)
    req = request_workload(workload, arrivals)
    if not isinstance(latency, LatencyModel):
        raise invalid("latency", latency, "an afdjax LatencyModel")
    batch_size = check_int("batch_size", batch_size, 1, MAX_SLOTS)
    ratio_list = _check_ratios(ratios)
    rates = _check_rates(arrival_rates)
    num_steps = check_int("num_steps", num_steps, 1)
    num_replicas = check_int("num_replicas", num_replicas, 1)
    policy = check_choice("policy", policy, POLICIES)
    queue_capacity = check_int("queue_capacity", queue_capacity, 1, 2**24)
    chunk_steps = check_int("chunk_steps", chunk_steps, 1)
    num_bins = check_int("num_bins", num_bins, 16)
    model = as_step_model(step_model, None)
    if not isinstance(model, Barrier):
        raise invalid("step_model", model, "None or Barrier() (open-loop serving times the barrier step only)")
    kv = None if kv_capacity is None else check_number("kv_capacity", kv_capacity, minimum=0.0)
    alpha_p = check_number("prefill_alpha", prefill_alpha, minimum=0.0, strict=False)
    beta_p = check_number("prefill_beta", prefill_beta, minimum=0.0, strict=False)
    ttft = math.inf if slo_ttft is None else check_number("slo_ttft", slo_ttft, minimum=0.0)
    tpot = math.inf if slo_tpot is None else check_number("slo_tpot", slo_tpot, minimum=0.0)
    mean_decode = float(req.mean_decode_steps())
    if warmup_steps is None:
        warmup_steps = default_warmup(mean_decode, num_steps)
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)
    rmax = max(ratio_list)
    fdtype = jnp.zeros(()).dtype
    scale = jnp.maximum(
        jnp.maximum(latency.attention_time(batch_size * req.theta()), latency.ffn_time(float(rmax), batch_size)),
        latency.comm_time(float(rmax), batch_size),
    ).astype(fdtype)
    if max_admissions is None:
        bundle_steps = num_replicas * len(ratio_list) * rates.size * (warmup_steps + num_steps)
        per_step = rmax * float(np.max(rates)) * float(scale)  # arrivals in a full step of r_max
        max_admissions = default_admissions(rmax, batch_size, mean_decode, bundle_steps, per_step)
    max_admissions = check_int("max_admissions", max_admissions, 1)
    total_steps = warmup_steps + num_steps
    num_chunks = -(-total_steps // chunk_steps)
    if num_chunks * chunk_steps >= 2**30:
        raise invalid("num_steps", num_steps, f"warmup_steps + num_steps below {2**30 - chunk_steps}")
    horizon = default_horizon(req, mean_decode)
    max_resolved = default_resolved(rmax, batch_size, mean_decode)
    ring_scale = 1

    def ring_size():
        return ring_scale * default_request_ring(rmax, batch_size, mean_decode, horizon, max_admissions)

    if replica_batch_size is None:
        per_bundle = 8 * (2 * horizon * rmax + 4 * horizon + ring_size() + 3 * queue_capacity) + 8 * (num_bins + 2)
        bundles = len(ratio_list) * rates.size
        replica_batch_size = max(1, min(num_replicas, (256 * 2**20) // max(1, per_bundle * bundles)))
    replica_batch_size = check_int("replica_batch_size", replica_batch_size, 1)
    inp = Inputs(
        kv_capacity=float_leaf(math.inf if kv is None else kv),
        alpha_p=float_leaf(alpha_p),
        beta_p=float_leaf(beta_p),
        slo_ttft=float_leaf(ttft),
        slo_tpot=float_leaf(tpot),
        scale=scale,
    )
    ratios_arr = jnp.asarray(ratio_list, jnp.int32)
    rates_arr = jnp.asarray(rates, fdtype)
    sim_workload = None if arrivals.has_lengths() else req
    with deliver_interrupts():
        key_words = jax.random.bits(key, (2,), dtype=jnp.uint32)
        while True:
            cfg = ServeConfig(
                max_ratio=rmax,
                batch_size=batch_size,
                num_steps=num_steps,
                warmup_steps=warmup_steps,
                num_replicas=num_replicas,
                chunk_steps=chunk_steps,
                num_chunks=num_chunks,
                queue_capacity=queue_capacity,
                max_admissions=max_admissions,
                num_bins=num_bins,
                policy=policy,
                replica_batch_size=replica_batch_size,
                horizon=horizon,
                request_ring=ring_size(),
                max_resolved=max_resolved,
                clock_ring=2 * horizon * ring_scale,
                arrival_block=min(max_admissions, max(4, math.ceil(rmax * batch_size / max(mean_decode, 1.0) / 2))),
            )
            runner = _run_with_progress if progress else _run
            st = _run_groups(runner, key_words, sim_workload, arrivals, latency, inp, ratio_list, rates_arr, cfg)
            # a buffer too small repeats the run with a larger one (same random numbers)
            rerun = False
            if bool(np.any(np.asarray(st.truncated))) and max_admissions < rmax * batch_size:
                need = max(2 * max_admissions, int(np.max(np.asarray(st.need))))
                max_admissions = min(need, rmax * batch_size)
                rerun = True
            longest = int(np.max(np.asarray(st.max_decode)))
            if longest > horizon:
                horizon = _pow2(longest)
                rerun = True
            elif bool(np.any(np.asarray(st.ring_full))):
                ring_scale *= 2
                rerun = True
            if not rerun:
                break
    settings = dict(
        arrivals=arrivals.describe(),
        kv_capacity=kv,
        prefill_alpha=alpha_p,
        prefill_beta=beta_p,
        slo_ttft=slo_ttft,
        slo_tpot=slo_tpot,
        policy=policy,
        warmup_steps=warmup_steps,
        max_admissions=max_admissions,
        queue_capacity=queue_capacity,
    )
    return StatsRun(
        st,
        ratios_arr,
        rates_arr,
        ratio_list,
        rates,
        float(scale),
        cfg,
        settings,
        key_words,
        sim_workload,
        arrivals,
        inp,
        mean_decode,
    )
