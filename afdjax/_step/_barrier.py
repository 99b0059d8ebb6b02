"""The paper's idealised step: ``tau = max(max_j t_A(T_j), t_C, t_F(rB))``.

Attention, communication and FFN overlap perfectly (full-duplex links, ideal
pipelining), so a step lasts as long as its slowest resource, and the Attention side as
long as its slowest instance (the barrier). Closed forms: the mean field (every load at
its stationary mean) and the Gaussian barrier ``E[max(G, mu_A + s M_r)]`` of
arXiv 2601.21351.
"""

from __future__ import annotations

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
from ._model import StepConstants, StepModel, StepTimes, prefix_over_instances


class BarrierConstants(StepConstants):
    floor_time: jax.Array
    """``(r_max,)``: ``max(t_F(r), t_C(r))``, the step time when the Attention side is fast."""


class Barrier(StepModel):
    """The paper's idealised step ``tau = max(max_{j<r} t_A(T_j), t_C, t_F(rB))`` (final).

    ``simulate(..., step_model=Barrier())`` is the default (``micro_batches=None``).
    Its default warm-up is 0 steps: the step has no state of its own.
    """

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
        return BarrierConstants(
            centre=jnp.maximum(floor_time, latency.attention_time(B * workload.theta())),
            ffn_step=latency.ffn_time(ratio, B),
            link_step=latency.comm_time(ratio, B),
            floor_time=floor_time,
        )

    def initial_state(self, max_ratio: int, dtype):
        return jnp.zeros((), dtype)  # stateless: a placeholder carry

    def step_times(self, constants: BarrierConstants, state, group_load, latency):
        attention = latency.attention_time(group_load[:, 0, :])  # (r_max, L): instance j
        slowest = prefix_over_instances(jnp.maximum, attention)  # row r-1: max over the first r instances
        tau = jnp.maximum(slowest, constants.floor_time[:, None])
        return state, StepTimes(cycle_time=tau, attention_busy=attention)

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
