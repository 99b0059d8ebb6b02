"""``Pipeline(micro_batches=m)``: the micro-batch pipeline as a step model.

The recursion and its closed forms live in :mod:`afdjax._step._pipeline`; this class
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


class PipelineConstants(StepConstants):
    comm_time: jax.Array
    """``(r_max ratios, m)``: one A->F (and one F->A) transfer of each micro-batch."""
    ffn_time: jax.Array
    """``(r_max ratios, m)``: the FFN pass of each aggregated micro-batch."""
    active: jax.Array
    """``(r_max ratios, r_max instances)`` bool: instance ``j`` takes part in ratio ``r`` iff ``j < r``."""


class Pipeline(StepModel):
    """The explicit micro-batch pipeline (final): slot ``s`` is in micro-batch ``s % m``;
    every step each micro-batch passes attention (per instance, ``alpha_a T_{j,g} +
    beta_a``), A->F, FFN (``alpha_f r B_g + beta_f``) and F->A (``t_C(B_g)`` each), the
    ``beta`` costs paid per micro-batch; the step time is the time between completions of
    the last micro-batch of consecutive steps (see :mod:`afdjax._step._pipeline`).

    **Arguments:** ``micro_batches``: ``m >= 1`` (at most the batch size when simulated).

    The pipeline starts empty at time 0, so its first step includes the fill (one round
    trip of the first micro-batch before the others follow). :meth:`default_warmup_steps`
    (``2 m``) discards it when ``simulate(warmup_steps=None)``.
    """

    micro_batches: int = eqx.field(static=True)

    def __init__(self, micro_batches: int):
        self.micro_batches = check_int("micro_batches", micro_batches, 1)

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
        return PipelineConstants(
            centre=pipeline_cycle_time(workload, latency, batch_size, ratio, G),
            ffn_step=jnp.sum(ffn_g, axis=1),
            link_step=jnp.sum(comm_g, axis=1),
            comm_time=comm_g,
            ffn_time=ffn_g,
            active=jnp.arange(rmax)[None, :] < jnp.arange(1, rmax + 1)[:, None],
        )

    def initial_state(self, max_ratio: int, dtype) -> PipelineState:
        # one state per ratio; instances j >= r are masked
        return PipelineState.zeros((max_ratio,), max_ratio, self.micro_batches, dtype)

    def step_times(self, constants: PipelineConstants, state: PipelineState, group_load, latency):
        attention_g = latency.attention_time(group_load)  # (rmax, G, L)
        attention = jnp.sum(attention_g, axis=1)  # (rmax, L): busy time of instance j

        def pipeline_step(state, att):  # att: (instances, G) at one step
            state, events = pipeline_advance(state, att, constants.comm_time, constants.ffn_time, constants.active)
            done = events.step_completion  # (ratios,): relative to the previous step's
            return state.shift(done), done

        state, tau = jax.lax.scan(pipeline_step, state, jnp.moveaxis(attention_g, 2, 0))
        return state, StepTimes(cycle_time=tau.T, attention_busy=attention)

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
