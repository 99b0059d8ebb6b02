"""``simulate``: the public entry point of the Monte Carlo engine.

How the engine works, in the order a step is computed (one module each):

1. ``_draws``: counter-based random numbers give every slot its requests (common
   random numbers across ratios, coefficients, workload parameters and buffer sizes);
2. ``_loads``: the KV load of every instance (or micro-batch) at every step of a
   chunk, from the request boundaries (cost: instance-steps plus requests);
3. the step model ([`Barrier`][afdjax.Barrier], [`Pipeline`][afdjax.Pipeline]): the time of
   each step for every ratio ``r = 1..r_max`` at once;
4. ``_stats``: sums over the measured steps, pooled into a
   [`SimulationResult`][afdjax.SimulationResult] (``_result``).

``_kernel`` strings the stages into one ``lax.scan`` over chunks per replica and
holds the one retry loop; ``_sizing`` chooses the buffer sizes.

**Interrupting a long call** (Ctrl-C in a script, a kernel interrupt in a notebook):
``KeyboardInterrupt`` is raised in the calling (main) thread within a fraction of a
second, whether the call is tracing, compiling or waiting for results, since JAX's
compilation and its waits poll for signals and every engine run (``simulate``, each
chunk of a sweep) is wrapped in ``_interrupt.deliver_interrupts``, which
re-delivers an interrupt that Python would otherwise drop inside JAX's garbage-collector
callback, and gives the ``KeyboardInterrupt`` a short traceback that a notebook shows at
once (measured on 2 loaded cores, interrupts at random moments: in a script 40 of 40
arrived, within 0.19 s; in a Jupyter kernel 24 of 24, the cell ending 0.35-1.35 s after
the interrupt, where before 1 of 12 was dropped and cells took up to 11 s to end).
The call returns nothing and leaves nothing half-done behind (a sweep keeps its finished
chunk files and resumes). What it cannot do is cancel the XLA program already running:
it goes on in the background until it ends, so the next call may wait for it (with
``progress=True`` the replicas run in host-side blocks and only the current block is
left running), and a Python process that exits while it still runs may crash at
shutdown (a JAX limitation; the ``afdjax`` command line leaves with ``os._exit`` instead).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._interrupt import deliver_interrupts
from .._latency import LatencyModel
from .._step import as_step_model
from .._validate import check_int
from .._workload import Workload
from ._config import MAX_INDEX, START_MODES, EngineConfig
from ._kernel import _traced, rerun_on_overflow, run_engine
from ._result import SimulationResult, select_ratios
from ._sizing import plan_sizes


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
    warmup_steps: int | None = None,
    quantile_levels=(0.5, 0.9, 0.99),
    chunk_steps: int | None = None,
    requests_per_chunk: int | None = None,
    replica_batch_size: int | None = None,
    memory_budget_bytes: int = 512 * 2**20,
    num_bins: int = 4096,
    micro_batches: int | None = None,
    step_model=None,
    progress: bool = False,
    decode_jumps: bool = False,
) -> SimulationResult:
    """Monte Carlo simulation of the saturated rA-1F decode process.

    Each of ``num_replicas`` independent replicas runs ``r_max = max(ratios)`` Attention
    instances with ``batch_size`` slots each for ``num_steps`` measured steps; the
    system with ratio ``r`` is the first ``r`` instances (common random numbers across
    ratios). With the default step model every step takes
    ``tau = max(max_{j<r} t_A(T_j), t_C, t_F(rB))``.

    Arguments:
        key: a JAX PRNG key (``jax.random.key(seed)`` or ``PRNGKey(seed)``).
        workload: a [`Workload`][afdjax.Workload] (``Geometric``, ``Empirical``).
        latency: a [`LatencyModel`][afdjax.LatencyModel].
        batch_size: slots per Attention instance ``B`` (1 .. 65536).
        ratios: the A/F ratios to report (positive integers); all of ``1..max`` are
            simulated in the same pass, one compilation per ``max``.
        num_steps: measured decode steps per replica.
        num_replicas: independent replicas (standard errors need at least 2).
        start: ``"stationary"`` (slots start in the length-biased stationary state)
            or ``"cold"`` (every slot starts a fresh request at step 0).
        warmup_steps: steps simulated before measuring (discarded). ``None``
            (default): the step model's [`default_warmup_steps`][afdjax.StepModel.default_warmup_steps], 0 for
            ``Barrier()`` (its step has no state: the loads already start stationary) and
            ``2 m`` for ``Pipeline(m)``, whose pipeline starts empty at time 0 so that its
            first step carries the fill (one round trip before the micro-batches follow each
            other); measuring from time 0 would bias the mean cycle time upwards by about the
            fill over ``num_steps``. An explicit integer is used as given.
        quantile_levels: cycle-time quantile levels in (0, 1).
        chunk_steps: buffer sizes;
            chosen automatically (they fix shapes, so pass them explicitly when calling
            ``simulate`` under ``jit``/``grad``/``vmap`` with traced workload parameters).
            They never change the numbers, only speed and memory.
        requests_per_chunk: see ``chunk_steps``.
        replica_batch_size: see ``chunk_steps``.
        memory_budget_bytes: rough bound on per-batch working memory used to choose
            ``replica_batch_size``.
        num_bins: cycle-time and KV-load histogram bins (quantile resolution).
        step_model: a [`StepModel`][afdjax.StepModel]: ``Barrier()`` (the paper's idealised
            step above, the default) or ``Pipeline(micro_batches=m)``, the explicit micro-batch
            pipeline of ``afdjax._step._pipeline``: slot ``s`` is in micro-batch ``s % m``,
            every step each micro-batch passes attention (per instance, ``alpha_a T_{j,g} +
            beta_a``), A->F, FFN (``alpha_f r B_g + beta_f``) and F->A (``t_C(B_g)`` each), the
            ``beta`` costs paid per micro-batch, and the step time is the time between
            completions of the last micro-batch of consecutive steps. Same random loads
            whatever the step model (common random numbers).
        micro_batches: the older spelling: ``None`` is ``Barrier()``, an integer ``m``
            in ``[1, batch_size]`` is ``Pipeline(m)`` (give it or ``step_model``, not two
            different ones).
        progress: show a progress bar (tqdm, on stderr) with the rate and ETA in
            simulated replica-steps. The replicas then run in host-side blocks of
            ``replica_batch_size`` and the bar advances after each block; the numbers are
            those of ``progress=False`` (ignored when tracing under ``jit``/``grad``/``vmap``).
        decode_jumps: also compute ``SimulationResult.decode_jump``, the coupled
            estimator's term for decode-length gradients (value 0; see
            [`expected_throughput`][afdjax.expected_throughput]). Costs about one more forward; no number changes.
            Barrier step only: with a micro-batch pipeline it is ignored (``result.decode_jumps``
            is False and gradients use the score function).

    Returns:
        a [`SimulationResult`][afdjax.SimulationResult].

    Float parameters (coefficients, workload means) are array leaves: new values reuse
    the compiled program as long as the automatically chosen buffer sizes (rounded up
    to a coarse grid) do not change; fix them explicitly to guarantee it.

    Examples:
        >>> import jax
        >>> workload = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
        >>> latency = afdjax.LatencyModel.from_preset("paper-910c")
        >>> result = afdjax.simulate(jax.random.key(0), workload, latency, 256, range(1, 33), 4000)  # doctest: +SKIP
        >>> result.best_ratio()  # doctest: +SKIP
        10
    """
    if not isinstance(workload, Workload):
        raise ValueError(f"workload={workload!r} is invalid: expected an afdjax Workload (Geometric, Empirical)")
    if not isinstance(latency, LatencyModel):
        raise ValueError(f"latency={latency!r} is invalid: expected an afdjax LatencyModel")
    batch_size = check_int("batch_size", batch_size, 1, MAX_INDEX)
    try:
        ratio_list = [int(r) for r in np.atleast_1d(np.asarray(ratios)).tolist()]
        ok = np.all(np.asarray(ratios, dtype=float) == np.asarray(ratio_list, dtype=float))
    except (TypeError, ValueError):
        ok, ratio_list = False, []
    if not ok or len(ratio_list) == 0 or min(ratio_list) < 1:
        raise ValueError(f"ratios={ratios!r} is invalid: expected a non-empty list of integers >= 1")
    if max(ratio_list) > MAX_INDEX:
        raise ValueError(f"ratios has max {max(ratio_list)}: expected ratios <= {MAX_INDEX}")
    num_steps = check_int("num_steps", num_steps, 1)
    num_replicas = check_int("num_replicas", num_replicas, 1)
    num_bins = check_int("num_bins", num_bins, 16)
    if start not in START_MODES:
        raise ValueError(f"start={start!r} is invalid: expected one of {', '.join(START_MODES)}")
    levels = tuple(float(q) for q in np.atleast_1d(np.asarray(quantile_levels, dtype=float)))
    if not all(0.0 < q < 1.0 for q in levels):
        raise ValueError(f"quantile_levels={quantile_levels!r} is invalid: expected levels in (0, 1)")
    if chunk_steps is not None:
        chunk_steps = check_int("chunk_steps", chunk_steps, 1)
    if requests_per_chunk is not None:
        requests_per_chunk = check_int("requests_per_chunk", requests_per_chunk, 1)
    if replica_batch_size is not None:
        replica_batch_size = check_int("replica_batch_size", replica_batch_size, 1)
    model = as_step_model(step_model, micro_batches)
    model.check(batch_size)
    # The coupled term is exact for the barrier step only. Its first-order form for step
    # models with state (``_jumps.load_perturbation``) was measured wrong against
    # common-random-numbers differences (micro_batches=1: opposite sign; 2: off by more
    # than 100 %), so those models keep the score function (decode_jump is 0).
    decode_jumps = bool(decode_jumps) and model.supports_decode_jumps()
    if warmup_steps is None:
        warmup_steps = model.default_warmup_steps()
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)

    base = dict(
        max_ratio=max(ratio_list),
        batch_size=batch_size,
        num_steps=num_steps,
        warmup_steps=warmup_steps,
        num_replicas=num_replicas,
        start=start,
        num_bins=num_bins,
        step_model=model,
    )
    with deliver_interrupts():  # a Ctrl-C from here on is never dropped (see the module docstring)
        sizes = plan_sizes(workload, base, chunk_steps, requests_per_chunk, replica_batch_size, memory_budget_bytes)
        key_words = jax.random.bits(key, (2,), dtype=jnp.uint32)
        show = bool(progress) and not _traced((workload, latency))

        def run(sizes):
            cfg = EngineConfig(**base, **sizes, progress=show)
            return run_engine(key_words, workload, latency, levels, cfg, bool(decode_jumps))

        result = rerun_on_overflow(run, sizes)
        return select_ratios(result, np.asarray(ratio_list, dtype=np.int32) - 1)
