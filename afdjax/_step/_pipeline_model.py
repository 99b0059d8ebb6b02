"""``Pipeline(micro_batches=m)``: the micro-batch pipeline as a step model.

The recursion and its closed forms live in ``afdjax._step._pipeline``; this class
hands them to the engine (per-ratio stage times, the pipeline state carried across
steps, one ``lax.scan`` over the steps of a chunk) and to the provisioning reports.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._theory import grid_argmax, integer_argmax
from .._validate import check_int, filter_jit
from ._model import StepConstants, StepModel, StepTimes
from ._pipeline import (
    PipelineState,
    micro_batch_sizes,
    pipeline_advance,
    pipeline_barrier_cycle_time,
    pipeline_barrier_throughput,
    pipeline_cycle_time,
    pipeline_throughput,
)
from ._stage_times import (
    STAGE_LAYERS,
    attention_factors,
    block_steps,
    comm_layer_times,
    ffn_layer_times,
    layer_mean,
    sampled_layers,
    step_blocks,
    unblock,
)


class PipelineConstants(StepConstants):
    comm_time: jax.Array
    """``(r_max ratios, m)``: one A->F (and one F->A) transfer of each micro-batch."""
    ffn_time: jax.Array
    """``(r_max ratios, m)``: the FFN pass of each aggregated micro-batch."""
    active: jax.Array
    """``(r_max ratios, r_max instances)`` bool: instance ``j`` takes part in ratio ``r`` iff ``j < r``."""
    back_time: jax.Array | None = None
    """``(r_max ratios, m)``: one F->A transfer of each micro-batch (with ``latency.comm``;
    ``None``: the same as ``comm_time``)."""
    group_size: jax.Array | None = None
    """``(m,)``: slots per micro-batch as floats (only with random stage times)."""


class Pipeline(StepModel):
    """The explicit micro-batch pipeline (final): slot ``s`` is in micro-batch ``s % m``;
    every step each micro-batch passes attention (per instance, ``alpha_a T_{j,g} +
    beta_a``), A->F, FFN (``alpha_f r B_g + beta_f``) and F->A (``t_C(B_g)`` each), the
    ``beta`` costs paid per micro-batch; the step time is the time between completions of
    the last micro-batch of consecutive steps (see ``afdjax._step._pipeline``).

    The pipeline starts empty at time 0, so its first step includes the fill (one round
    trip of the first micro-batch before the others follow). ``default_warmup_steps``
    (``2 m``) discards it when ``simulate(warmup_steps=None)``.

    With random stage times (``latency.noise`` or ``latency.routing``) a decode step is
    ``K = min(L, stage_layers)`` layer passes of the same recursion, one after another
    (layer ``l + 1`` of a micro-batch starts after its F->A of layer ``l``), each stage of
    micro-batch ``g`` in pass ``l`` lasting its whole-step time over ``K`` times its own
    factor (one attention factor per instance, micro-batch and layer; one FFN and one
    factor per direction per micro-batch and layer; the FFN routed per micro-batch over
    ``r B_g top_k`` pairs); the step time is the sum of the ``K`` passes' completion
    intervals (``afdjax._step._stage_times``). With deterministic stage times the
    period of ``K`` passes of ``t / K`` equals that of one pass of ``t`` (the period is
    homogeneous in the stage times), so ``K = 1`` (``num_layers=None``) reproduces the
    single pass bit for bit and ``K > 1`` only redistributes the fill transient.

    Arguments:
        micro_batches: ``m >= 1`` (at most the batch size when simulated).
        stage_layers: ``K_MAX`` (an integer >= 1, default 16): the most layers sampled per step.

    Examples:
        >>> afdjax.Pipeline(micro_batches=2).default_warmup_steps()  # 2 m
        4
    """

    micro_batches: int = eqx.field(static=True)
    stage_layers: int = eqx.field(static=True, default=STAGE_LAYERS)

    def __init__(self, micro_batches: int, stage_layers: int = STAGE_LAYERS):
        self.micro_batches = check_int("micro_batches", micro_batches, 1)
        self.stage_layers = check_int("stage_layers", stage_layers, 1)

    def check(self, batch_size: int) -> None:
        if self.micro_batches > batch_size:
            raise ValueError(
                f"micro_batches={self.micro_batches} is invalid: expected an integer in "
                f"[1, batch_size={batch_size}] (or None for the paper's barrier step)"
            )

    def slot_groups(self) -> int:
        return self.micro_batches

    def default_warmup_steps(self) -> int:
        # From an empty pipeline the first step carries the fill; with constant stage
        # times every later step is already periodic. 2 m steps leave margin for loads
        # that vary and for unequal micro-batches.
        return 2 * self.micro_batches

    def replica_bytes(self, max_ratio: int, batch_size: int, chunk_steps: int) -> int:
        G = self.micro_batches  # group loads and the per-ratio pipeline
        return max_ratio * G * chunk_steps * 96 + max_ratio * max_ratio * G * 64

    def constants(self, workload, latency, batch_size: int, max_ratio: int) -> PipelineConstants:
        fdtype = jnp.zeros(()).dtype
        rmax, G = max_ratio, self.micro_batches
        ratio = jnp.arange(1, rmax + 1, dtype=fdtype)
        group_size = jnp.asarray(micro_batch_sizes(batch_size, G), fdtype)  # (G,)
        comm_g = latency.comm_time(ratio[:, None], group_size[None, :])  # (rmax ratios, G)
        ffn_g = latency.ffn_time(ratio[:, None], group_size[None, :])
        back_g = None if latency.comm is None else latency.comm_back_time(ratio[:, None], group_size[None, :])
        return PipelineConstants(
            centre=pipeline_cycle_time(workload, latency, batch_size, ratio, G),
            ffn_step=jnp.sum(ffn_g, axis=1),
            link_step=jnp.sum(comm_g, axis=1),
            comm_time=comm_g,
            ffn_time=ffn_g,
            active=jnp.arange(rmax)[None, :] < jnp.arange(1, rmax + 1)[:, None],
            back_time=back_g,
            group_size=group_size if latency.stochastic else None,
        )

    def initial_state(self, max_ratio: int, dtype) -> PipelineState:
        # one state per ratio; instances j >= r are masked
        return PipelineState.zeros((max_ratio,), max_ratio, self.micro_batches, dtype)

    def step_times(self, constants: PipelineConstants, state: PipelineState, group_load, latency, stage=None):
        attention_g = latency.attention_time(group_load)  # (rmax, G, L)
        if stage is not None:
            return self._stage_step_times(constants, state, attention_g, latency, stage)
        attention = jnp.sum(attention_g, axis=1)  # (rmax, L): busy time of instance j
        back = constants.back_time

        def pipeline_step(state, att):  # att: (instances, G) at one step
            state, events = pipeline_advance(
                state, att, constants.comm_time, constants.ffn_time, constants.active, back_time=back
            )
            done = events.step_completion  # (ratios,): relative to the previous step's
            return state.shift(done), done

        state, tau = jax.lax.scan(pipeline_step, state, jnp.moveaxis(attention_g, 2, 0))
        return state, StepTimes(cycle_time=tau.T, attention_busy=attention)

    def _stage_step_times(self, constants: PipelineConstants, state, attention_g, latency, keys):
        """``K`` layer passes per step with random stage factors (see the class docstring).
        The steps go in blocks (``_step._stage_times.step_blocks``): each block
        draws its factors at once (vectorised along its steps), then scans its ``b K``
        passes; the working memory does not grow with the chunk length."""
        rmax, G, S = attention_g.shape
        K = sampled_layers(latency, self.stage_layers)
        ratio = jnp.arange(1, rmax + 1, dtype=attention_g.dtype)
        back_g = constants.comm_time if constants.back_time is None else constants.back_time

        def layer_pass(state, xs):
            att_l, fwd_l, ffn_l, back_l = xs
            state, events = pipeline_advance(state, att_l, fwd_l, ffn_l, constants.active, back_time=back_l)
            done = events.step_completion
            return state.shift(done), done

        def one_block(state, xs):
            att, k1, k2 = xs  # att: (J, G, b); k1, k2: (b,)
            b = att.shape[-1]
            a = attention_factors(latency, (k1, k2), rmax, G, K)  # (J, G, K, b) or None
            if a is None:
                att_k, busy = att[:, :, None, :], jnp.sum(att, axis=1)
            else:
                att_k = att[:, :, None, :] * a
                busy = jnp.sum(att * layer_mean(a, axis=2), axis=1)
            ffn = ffn_layer_times(latency, (k1, k2), ratio, constants.group_size, constants.ffn_time, K)
            fwd, back = comm_layer_times(latency, (k1, k2), constants.comm_time, back_g, K)

            def passes(x):  # (r_max, G, K or 1, b or 1) -> (b K, r_max, G): whole-step times over K
                x = jnp.broadcast_to(x, x.shape[:2] + (K, b)) / K
                return jnp.moveaxis(x, (3, 2), (0, 1)).reshape((b * K,) + x.shape[:2])

            state, done = jax.lax.scan(layer_pass, state, (passes(att_k), passes(fwd), passes(ffn), passes(back)))
            tau = jnp.sum(done.reshape(b, K, rmax), axis=1).T  # (r_max, b)
            ffn_busy = None if latency.routing is None else jnp.sum(layer_mean(ffn, axis=2), axis=1)
            return state, (tau, busy, ffn_busy)

        # padded steps (the last block) must not advance the pipeline: blocks of whole steps only
        size = block_steps(latency, rmax, G, K, S)
        block = max(d for d in range(1, size + 1) if S % d == 0)
        state, out = jax.lax.scan(one_block, state, step_blocks((attention_g, keys[0], keys[1]), block))
        tau, busy, ffn_busy = unblock(out, S)
        return state, StepTimes(cycle_time=tau, attention_busy=busy, ffn_busy=ffn_busy)

    def cycle_time(self, workload, latency, batch_size, ratio):
        return pipeline_cycle_time(workload, latency, batch_size, ratio, self.micro_batches)

    def throughput(self, workload, latency, batch_size, ratio):
        return pipeline_throughput(workload, latency, batch_size, ratio, self.micro_batches)

    def barrier_cycle_time(self, workload, latency, batch_size, ratio):
        return pipeline_barrier_cycle_time(workload, latency, batch_size, ratio, self.micro_batches)

    def barrier_throughput(self, workload, latency, batch_size, ratio):
        return pipeline_barrier_throughput(workload, latency, batch_size, ratio, self.micro_batches)

    def ratio_optima(self, workload, latency, batch_size, max_ratio: int) -> dict:
        """Integer argmax of the pipeline mean-field and barrier-approximation curves over
        ``1..max_ratio``, the continuous argmax of each (1/64 grid); the mean-field one is
        reported as ``r_star_pipeline``."""
        mf, br, cont, mf_cont = _pipeline_optima_jit(workload, latency, batch_size, int(max_ratio), self.micro_batches)
        return dict(
            ratio_mean_field=int(mf),
            ratio_barrier=int(br),
            r_barrier_continuous=float(cont),
            mean_field_extra=dict(r_star_pipeline=float(mf_cont)),
        )

    def describe(self) -> str:
        return (
            f"pipeline of {self.micro_batches} micro-batch(es) per instance (beta costs per micro-batch); "
            "mean field = pipeline period at mean loads, barrier = its Gaussian expected-max approximation"
        )


@filter_jit
def _pipeline_optima_jit(workload, latency, batch_size, max_r: int, micro_batches: int):
    mf_fn = lambda x: pipeline_throughput(workload, latency, batch_size, x, micro_batches)
    br_fn = lambda x: pipeline_barrier_throughput(workload, latency, batch_size, x, micro_batches)
    return (
        integer_argmax(mf_fn, max_r)[0],
        integer_argmax(br_fn, max_r)[0],
        grid_argmax(br_fn, max_r),
        grid_argmax(mf_fn, max_r),
    )


def as_step_model(step_model=None, micro_batches=None) -> StepModel:
    """The step model of ``step_model=`` / ``micro_batches=`` (the older spelling):
    ``micro_batches=m`` is ``Pipeline(m)``, both ``None`` is ``Barrier()``; giving both
    is allowed only when they agree."""
    from ._barrier import Barrier

    if step_model is not None and not isinstance(step_model, StepModel):
        raise ValueError(f"step_model={step_model!r} is invalid: expected an afdjax StepModel (Barrier(), Pipeline(m))")
    if micro_batches is not None:
        spelled = Pipeline(micro_batches)
        if step_model is not None and step_model != spelled:
            raise ValueError(f"micro_batches={micro_batches!r} contradicts step_model={step_model!r}: give one of them")
        return spelled
    return Barrier() if step_model is None else step_model
