"""The paper's idealised step: ``tau = max(max_j t_A(T_j), t_C, t_F(rB))``.

Attention, communication and FFN overlap perfectly (full-duplex links, ideal
pipelining), so a step lasts as long as its slowest resource, and the Attention side as
long as its slowest instance (the barrier). Closed forms: the mean field (every load at
its stationary mean) and the Gaussian barrier ``E[max(G, mu_A + s M_r)]`` of
arXiv 2601.21351.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._theory import (
    barrier_cycle_time,
    barrier_optimum,
    barrier_throughput,
    mean_field_cycle_time,
    mean_field_integer_ratio,
    mean_field_throughput,
)
from .._validate import check_int
from ._model import StepConstants, StepModel, StepTimes, prefix_over_instances
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


class BarrierConstants(StepConstants):
    floor_time: jax.Array
    """``(r_max,)``: ``max(t_F(r), t_C(r))`` (and ``t_C'(r)`` with ``latency.comm``), the step
    time when the Attention side is fast."""
    comm_back: jax.Array | None = None
    """``(r_max,)``: the F->A time ``t_C'`` (only with random stage times)."""
    group_size: jax.Array | None = None
    """``(1,)``: the batch size as a float (only with random stage times; routing needs it)."""


class Barrier(StepModel):
    """The paper's idealised step ``tau = max(max_{j<r} t_A(T_j), t_C, t_F(rB))`` (final).

    ``simulate(..., step_model=Barrier())`` is the default (``micro_batches=None``).
    Its default warm-up is 0 steps: the step has no state of its own.

    With random stage times (``latency.noise`` or ``latency.routing``) the barrier is per
    layer: ``tau = sum_l max(max_{j<r} t_A,j a_jl, t_C c_l, t_C' c'_l, t_F,l f_l) / L``
    (``afdjax._step._stage_times``), simulated with ``K = min(L, stage_layers)``
    sampled layers (mean exact, per-step spread overstated by up to ``sqrt(L / K)``).

    Arguments:
        stage_layers: ``K_MAX``, an integer >= 1 (default 16; static): the most layers sampled per step.

    Examples:
        >>> afdjax.Barrier().default_warmup_steps()
        0
    """

    stage_layers: int = eqx.field(static=True, default=STAGE_LAYERS)

    def __check_init__(self):
        check_int("stage_layers", self.stage_layers, 1)

    @property
    def micro_batches(self) -> None:
        return None

    def check(self, batch_size: int) -> None:
        return None

    def slot_groups(self) -> int:
        return 1

    def default_warmup_steps(self) -> int:
        return 0

    def supports_decode_jumps(self) -> bool:
        return True

    def replica_bytes(self, max_ratio: int, batch_size: int, chunk_steps: int) -> int:
        return 0

    def constants(self, workload, latency, batch_size: int, max_ratio: int) -> BarrierConstants:
        ratio = jnp.arange(1, max_ratio + 1, dtype=jnp.zeros(()).dtype)
        B = batch_size
        floor_time = jnp.maximum(latency.ffn_time(ratio, B), latency.comm_time(ratio, B))
        comm_back = group_size = None
        if latency.comm is not None:
            floor_time = jnp.maximum(floor_time, latency.comm_back_time(ratio, B))
        if latency.stochastic:
            comm_back = latency.comm_back_time(ratio, B)
            group_size = jnp.full((1,), B, ratio.dtype)
        return BarrierConstants(
            centre=jnp.maximum(floor_time, latency.attention_time(B * workload.theta())),
            ffn_step=latency.ffn_time(ratio, B),
            link_step=latency.comm_time(ratio, B),
            floor_time=floor_time,
            comm_back=comm_back,
            group_size=group_size,
        )

    def initial_state(self, max_ratio: int, dtype):
        return jnp.zeros((), dtype)  # stateless: a placeholder carry

    def step_times(self, constants: BarrierConstants, state, group_load, latency, stage=None):
        attention = latency.attention_time(group_load[:, 0, :])  # (r_max, L): instance j
        if stage is None:  # deterministic stage times given the loads (today's step)
            slowest = prefix_over_instances(jnp.maximum, attention)  # row r-1: max over the first r instances
            tau = jnp.maximum(slowest, constants.floor_time[:, None])
            return state, StepTimes(cycle_time=tau, attention_busy=attention)
        # Steps are independent given the loads: time them in blocks (the step axis last, so
        # each block is vectorised along it), one block after another, so the per-layer arrays
        # (ratios x ranks x layers for the routing) stay bounded whatever the chunk length.
        rmax, S = attention.shape
        size = block_steps(latency, rmax, 1, sampled_layers(latency, self.stage_layers), S)
        blocks = step_blocks((attention, stage[0], stage[1]), size)

        def block(xs):
            att, k1, k2 = xs
            times = self._stage_step_times(constants, att, latency, (k1, k2))
            return times.cycle_time, times.attention_busy, times.ffn_busy

        tau, busy, ffn = unblock(jax.lax.map(block, blocks), attention.shape[1])
        return state, StepTimes(cycle_time=tau, attention_busy=busy, ffn_busy=ffn)

    def _stage_step_times(self, constants: BarrierConstants, attention, latency, keys) -> StepTimes:
        """The per-layer barrier with random stage times: ``(r_max, S)`` cycle times from
        ``K`` sampled layers (``keys``: the per-step stage keys)."""
        rmax = attention.shape[0]
        K = sampled_layers(latency, self.stage_layers)
        a = attention_factors(latency, keys, rmax, 1, K)  # (J, 1, K, S) or None
        if a is None:
            slowest, busy = prefix_over_instances(jnp.maximum, attention)[:, None, :], attention
        else:
            a = a[:, 0]
            slowest = prefix_over_instances(jnp.maximum, attention[:, None, :] * a)  # (r_max, K, S)
            busy = attention * layer_mean(a, axis=1)
        ratio = jnp.arange(1, rmax + 1, dtype=attention.dtype)
        ffn = ffn_layer_times(latency, keys, ratio, constants.group_size, constants.ffn_step[:, None], K)[
            :, 0
        ]  # (r_max, K, S)
        fwd, back = comm_layer_times(latency, keys, constants.link_step[:, None], constants.comm_back[:, None], K)
        per_layer = jnp.maximum(jnp.maximum(slowest, fwd[:, 0]), jnp.maximum(back[:, 0], ffn))
        ffn_busy = None if latency.routing is None else layer_mean(ffn, axis=1)
        return StepTimes(cycle_time=layer_mean(per_layer, axis=1), attention_busy=busy, ffn_busy=ffn_busy)

    def cycle_time(self, workload, latency, batch_size, ratio):
        return mean_field_cycle_time(workload, latency, batch_size, ratio)

    def throughput(self, workload, latency, batch_size, ratio):
        return mean_field_throughput(workload, latency, batch_size, ratio)

    def barrier_cycle_time(self, workload, latency, batch_size, ratio):
        return barrier_cycle_time(workload, latency, batch_size, ratio)

    def barrier_throughput(self, workload, latency, batch_size, ratio):
        return barrier_throughput(workload, latency, batch_size, ratio)

    def ratio_optima(self, workload, latency, batch_size, max_ratio: int) -> dict:
        bopt = barrier_optimum(workload, latency, batch_size, max_ratio)
        return dict(
            ratio_mean_field=int(mean_field_integer_ratio(workload, latency, batch_size, max_ratio=max_ratio)),
            ratio_barrier=int(bopt.ratio),
            r_barrier_continuous=float(bopt.r_continuous),
            mean_field_extra={},
        )

    def describe(self) -> str:
        return "the paper's idealised overlap, tau = max(max_j t_A, t_C, t_F)"
