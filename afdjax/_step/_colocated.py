"""``Colocated``: the co-located (not disaggregated) decode step, as a step model.

The baseline that Attention-FFN disaggregation is measured against: ``N`` data-parallel
ranks (``attention_devices`` devices each), every rank running attention for its own
``B`` slots **and** a ``1/N`` share of the FFN (expert parallelism across the ranks, or
an equivalent tensor-parallel split of a dense FFN). Every layer has an all-to-all
dispatch and combine across the ``N`` ranks, so every layer waits for the slowest rank's
attention: a barrier across the ranks at each layer.

In the engine the *ratio* axis is the number of ranks: the system with "ratio" ``N`` is
the first ``N`` simulated instances (common random numbers, as for the AFD ratios).

Stage times, per rank and per layer (the unit of the [`LatencyModel`][afdjax.LatencyModel], whose
coefficients describe one AFD Attention instance of ``n_A = attention_devices`` devices
and one FFN instance of ``n_F = ffn_devices`` devices; the co-located rank reuses them):

* attention on rank ``j`` holding ``T_j`` KV tokens: ``t_A(T_j) = alpha_a T_j + beta_a``
  (the rank is an Attention instance);
* the FFN share: the FFN instance would take ``alpha_f N B + beta_f`` on ``n_F`` devices
  for the ``N B`` tokens of all ranks; spread over the ``N n_A`` devices of the ranks
  (work conserved, devices splitting it perfectly, as in ``derive_latency``) a rank takes
  ``t_F^c(N, B) = (n_F / n_A) (alpha_f B + beta_f / N)``: the per-token work of its own
  ``B`` tokens, and a ``1/N`` share of the weight reads (its experts). The fixed kernel
  overhead inside ``beta_f`` is shared out too (a small underestimate of the FFN time);
* dispatch and combine, each ``t_C^c(N, B) = (1 - 1/N) alpha_c' B + beta_c [N > 1]``: a
  token's experts are on its own rank with probability ``1/N`` (balanced routing), and
  ``alpha_c' = alpha_c`` (``comm_scaling="batch"``: the rank's own links) or
  ``alpha_c n_F / n_A`` (``"ratio_batch"``: ``alpha_c`` was per token over the FFN
  instance's ``n_F`` links). One rank needs no communication.

Step time (one layer-pass of every slot, exact for these stage times):

* one batch (``overlap=False``): ``tau(N) = max_{j<N} t_A(T_j) + t_F^c + 2 t_C^c``; the
  per-layer barrier is the per-step one because every layer of a step sees the same KV
  loads (a slot's tokens are cached in every layer);
* two-batch overlap (``overlap=True``, as DeepSeek's TBO): slot ``s`` is in micro-batch
  ``s % 2``, the fixed costs are paid per micro-batch, and the communication of one
  micro-batch hides under the computation of the other **perfectly**:
  ``tau = max(sum_g [max_{j<N} t_A(T_{j,g}) + t_F^c(N, B_g)], sum_g 2 t_C^c(N, B_g))``
  (an upper bound on what overlap gains: real schedules leave part of one transfer exposed).

Closed forms: the mean field (every load at its stationary mean ``B_g theta``) and the
Gaussian barrier ``E[max_j t_A] = mu_A + s E[M_N]`` (``M_N`` the maximum of ``N``
standard normals), exact in expectation under the Gaussian load for one batch; with
overlap ``max(E[compute], communication)`` (Jensen: a lower bound of ``E[tau]``).
[`throughput`][afdjax.Colocated.throughput] follows the engine's convention ``N B / ((N + 1) tau)``
(so the closed forms and ``simulate`` compare cell by cell); the co-located figure of
merit is ``colocated_throughput_per_device``, ``B / (n_A tau)``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._theory import (
    as_float,
    attention_time_moments,
    check_batch_size,
    expected_max_normal_excess,
    integer_argmax,
    per_instance_throughput,
)
from .._validate import check_int, filter_jit, invalid
from ._model import StepConstants, StepModel, StepTimes, prefix_over_instances

# E[M_N] = E[(M_N - z)^+] + z for a z below which Phi^N vanishes (Phi(-12) ~ 2e-33).
_Z_LOW = -12.0


def expected_max_normal(ranks) -> jax.Array:
    """``E[M_N]``: the expected maximum of ``N`` independent standard normals (real
    ``N >= 0.5``; 0 at ``N = 1``). Dimensionless."""
    return _expected_max_normal_jit(as_float(ranks))


@jax.jit
def _expected_max_normal_jit(ranks):
    return expected_max_normal_excess(_Z_LOW, ranks) + _Z_LOW


def _group_sizes(batch_size, groups: int) -> list:
    """Slots per micro-batch: ``ceil((B - g) / G)`` for integer-valued ``B`` (arrays too),
    ``B / G`` for a real or traced ``B``."""
    if groups == 1:
        return [as_float(batch_size)]
    if isinstance(batch_size, jax.core.Tracer):
        return [as_float(batch_size) / groups] * groups
    b = np.asarray(batch_size, dtype=float)
    if np.all(b == np.round(b)):
        return [as_float(np.floor((b - g + groups - 1) / groups)) for g in range(groups)]
    return [as_float(b / groups)] * groups


class ColocatedConstants(StepConstants):
    ffn_group: jax.Array
    """``(r_max ranks, G)``: a rank's FFN share for micro-batch ``g``."""
    comm_group: jax.Array
    """``(r_max ranks, G)``: one transfer (dispatch or combine) of micro-batch ``g``."""


class Colocated(StepModel):
    """The co-located step (final): ``N`` data-parallel ranks, each with attention for its
    own ``B`` slots and a ``1/N`` share of the FFN, an all-to-all dispatch and combine per
    layer, a barrier across the ranks (see the module docstring for the stage times).

    Arguments:
        ffn_devices: devices ``n_F`` of the FFN instance that the latency model's
            ``alpha_f``, ``beta_f`` describe (``HardwareDerivation.ffn_devices``; 1 when the
            coefficients are per device).
        attention_devices: devices ``n_A`` per rank (one Attention instance,
            ``HardwareDerivation.attention_devices``; default 1).
        overlap: two-batch overlap (communication hidden under the other micro-batch's
            computation; fixed costs paid per micro-batch). Default ``False``.

    In [`simulate`][afdjax.simulate] the ratios are the numbers of ranks ``N``; the result's
    ``throughput_per_instance`` is ``N B / ((N + 1) E[tau])`` as for AFD, so the
    co-located throughput per device is ``throughput_per_instance (N + 1) / (N n_A)``.
    """

    ffn_devices: int = eqx.field(static=True)
    attention_devices: int = eqx.field(static=True)
    overlap: bool = eqx.field(static=True)

    def __init__(self, ffn_devices: int = 1, attention_devices: int = 1, overlap: bool = False):
        self.ffn_devices = check_int("ffn_devices", ffn_devices, 1)
        self.attention_devices = check_int("attention_devices", attention_devices, 1)
        if not isinstance(overlap, (bool, np.bool_)):
            raise invalid("overlap", overlap, "True or False")
        self.overlap = bool(overlap)

    @property
    def micro_batches(self) -> int | None:
        return 2 if self.overlap else None

    # ------------------------------------------------------------ stage times
    def ffn_share_time(self, latency, ranks, group_slots) -> jax.Array:
        """``t_F^c = (n_F / n_A)(alpha_f B_g + beta_f / N)``: one rank's FFN share for a
        micro-batch of ``B_g`` slots with ``N`` ranks (time units)."""
        scale = self.ffn_devices / self.attention_devices
        return scale * (latency.alpha_f * group_slots + latency.beta_f / ranks)

    def transfer_time(self, latency, ranks, group_slots) -> jax.Array:
        """``t_C^c = (1 - 1/N) alpha_c' B_g + beta_c [N > 1]``: one dispatch (or combine)
        of a micro-batch of ``B_g`` slots among ``N`` ranks (time units)."""
        alpha = latency.alpha_c
        if latency.comm_scaling == "ratio_batch":
            alpha = alpha * (self.ffn_devices / self.attention_devices)
        remote = 1.0 - 1.0 / ranks
        return remote * alpha * group_slots + jnp.where(ranks > 1, latency.beta_c, 0.0)

    def _stage_constants(self, latency, batch_size, ranks, sizes=None):
        """``(ffn, comm)``, each of shape ``broadcast(B, N) + (G,)``."""
        _refuse_stage_parts(latency)
        sizes = _group_sizes(batch_size, self.slot_groups()) if sizes is None else sizes
        r = as_float(ranks)[..., None]
        bg = jnp.stack(jnp.broadcast_arrays(*sizes), axis=-1)
        return self.ffn_share_time(latency, r, bg), self.transfer_time(latency, r, bg)

    def _combine(self, attention_groups, ffn, comm):
        """Step time from the per-group slowest attention ``(..., G)`` and the stage times."""
        compute = jnp.sum(attention_groups + ffn, axis=-1)
        transfers = jnp.sum(2.0 * comm, axis=-1)
        return jnp.maximum(compute, transfers) if self.overlap else compute + transfers

    # ------------------------------------------------------------ engine timing
    def check(self, batch_size: int) -> None:
        if self.overlap and batch_size < 2:
            raise ValueError(
                f"batch_size={batch_size} is invalid with overlap=True: two-batch overlap needs at least 2 slots"
            )

    def slot_groups(self) -> int:
        return 2 if self.overlap else 1

    def default_warmup_steps(self) -> int:
        return 0  # stateless

    def replica_bytes(self, max_ratio: int, batch_size: int, chunk_steps: int) -> int:
        return max_ratio * self.slot_groups() * chunk_steps * 16

    def constants(self, workload, latency, batch_size: int, max_ratio: int) -> ColocatedConstants:
        ranks = jnp.arange(1, max_ratio + 1, dtype=jnp.zeros(()).dtype)
        ffn, comm = self._stage_constants(latency, batch_size, ranks)
        return ColocatedConstants(
            centre=self.cycle_time(workload, latency, batch_size, ranks),
            ffn_step=jnp.sum(ffn, axis=1),
            link_step=jnp.sum(comm, axis=1),
            ffn_group=ffn,
            comm_group=comm,
        )

    def initial_state(self, max_ratio: int, dtype):
        return jnp.zeros((), dtype)

    def step_times(self, constants: ColocatedConstants, state, group_load, latency, stage=None):
        attention_g = latency.attention_time(group_load)  # (r_max instances, G, L)
        slowest = jnp.stack(
            [prefix_over_instances(jnp.maximum, attention_g[:, g, :]) for g in range(attention_g.shape[1])], axis=-1
        )  # (r_max ranks, L, G): row N-1 is the slowest of the first N ranks
        tau = self._combine(slowest, constants.ffn_group[:, None, :], constants.comm_group[:, None, :])
        return state, StepTimes(cycle_time=tau, attention_busy=jnp.sum(attention_g, axis=1))

    # ------------------------------------------------------------ closed forms
    def _attention_groups(self, workload, latency, sizes, ranks, noise: bool):
        out = []
        for bg in sizes:
            mu, s = attention_time_moments(workload, latency, bg)
            out.append(mu + s * expected_max_normal(ranks) if noise else mu + 0.0 * ranks)
        return jnp.stack(out, axis=-1)

    def _cycle(self, workload, latency, batch_size, ranks, noise: bool):
        check_batch_size(batch_size)
        sizes = _group_sizes(batch_size, self.slot_groups())  # exact, before tracing
        return _cycle_jit(self, workload, latency, sizes, as_float(ranks), noise)

    def _cycle_traced(self, workload, latency, sizes, ranks, noise: bool):
        ffn, comm = self._stage_constants(latency, None, ranks, sizes)
        return self._combine(self._attention_groups(workload, latency, sizes, ranks, noise), ffn, comm)

    def cycle_time(self, workload, latency, batch_size, ratio) -> jax.Array:
        """Mean-field step time at ``N = ratio`` ranks (every load at its mean; time units)."""
        return self._cycle(workload, latency, batch_size, ratio, noise=False)

    def throughput(self, workload, latency, batch_size, ratio) -> jax.Array:
        """``N B / ((N + 1) tau)`` at the mean-field step time (the engine's convention)."""
        return per_instance_throughput(
            as_float(ratio), batch_size, self.cycle_time(workload, latency, batch_size, ratio)
        )

    def barrier_cycle_time(self, workload, latency, batch_size, ratio) -> jax.Array:
        """``E[tau]`` with Gaussian loads: ``mu_A + s E[M_N]`` per micro-batch (time units)."""
        return self._cycle(workload, latency, batch_size, ratio, noise=True)

    def barrier_throughput(self, workload, latency, batch_size, ratio) -> jax.Array:
        return per_instance_throughput(
            as_float(ratio), batch_size, self.barrier_cycle_time(workload, latency, batch_size, ratio)
        )

    def ratio_optima(self, workload, latency, batch_size, max_ratio: int) -> dict:
        """The numbers of ranks in ``1..max_ratio`` with the highest throughput **per
        device** (mean field and Gaussian barrier); ``r_barrier_continuous`` is the integer
        barrier optimum as a float (the rank count is an integer)."""

        mf, br = _rank_optima_jit(self, workload, latency, batch_size, int(max_ratio))
        return dict(
            ratio_mean_field=int(mf), ratio_barrier=int(br), r_barrier_continuous=float(br), mean_field_extra={}
        )

    def describe(self) -> str:
        how = "two-batch overlap (ideal)" if self.overlap else "no overlap"
        return (
            f"co-located DP attention + EP FFN over N ranks of {self.attention_devices} device(s), "
            f"per-layer barrier, {how}; tau = max_j t_A + t_F^c + 2 t_C^c"
        )


@filter_jit
def _cycle_jit(model, workload, latency, sizes, ranks, noise: bool):
    return model._cycle_traced(workload, latency, sizes, ranks, noise)


@filter_jit
def _rank_optima_jit(model, workload, latency, batch_size, max_ratio: int):
    def per_device(cycle):
        return lambda n: batch_size / (model.attention_devices * cycle(workload, latency, batch_size, n))

    return (
        integer_argmax(per_device(model.cycle_time), max_ratio)[0],
        integer_argmax(per_device(model.barrier_cycle_time), max_ratio)[0],
    )


def colocated_throughput_per_device(step_model: Colocated, cycle_time, batch_size) -> jax.Array:
    """Co-located throughput per device, ``B / (n_A tau)`` (tokens per time unit per
    device), from a step time ``cycle_time`` (time units) and ``B`` slots per rank."""
    if not isinstance(step_model, Colocated):
        raise invalid("step_model", step_model, "an afdjax Colocated step model")
    check_batch_size(batch_size)
    return as_float(batch_size) / (step_model.attention_devices * as_float(cycle_time))


def _refuse_stage_parts(latency) -> None:
    """``ValueError`` for the random stage times and communication terms of issue 13,
    which the co-located step does not model (``num_layers`` alone is accepted: with
    deterministic stage times every layer is the same)."""
    for name in ("noise", "routing", "comm"):
        value = getattr(latency, name, None)
        if value is not None:
            raise ValueError(
                f"latency.{name}={type(value).__name__}(...) is invalid for Colocated: expected None "
                "(the co-located step models no stage noise, expert routing or extra communication terms; "
                "use Barrier() or Pipeline(m))"
            )
