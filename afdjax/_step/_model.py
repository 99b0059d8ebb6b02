"""The step model: how one decode step's time follows from the Attention loads.

A [`StepModel`][afdjax.StepModel] is one answer to "how long does a step take?". It carries both
sides of afdjax:

* **engine timing** (used by [`simulate`][afdjax.simulate] and the sweep): how slots are
  grouped ([`slot_groups`][afdjax.StepModel.slot_groups]), the per-ratio constants of a run
  ([`constants`][afdjax.StepModel.constants], computed once per configuration, outside the replica
  loop), the state carried from step to step ([`initial_state`][afdjax.StepModel.initial_state]), the step
  times of a chunk of steps for every ratio at once ([`step_times`][afdjax.StepModel.step_times]), the
  default warm-up ([`default_warmup_steps`][afdjax.StepModel.default_warmup_steps]) and the extra working memory
  per replica ([`replica_bytes`][afdjax.StepModel.replica_bytes]);
* **closed forms** (used by ``provision``, ``verify`` and the constraints): the
  mean-field cycle time and throughput, the Gaussian barrier (or its analogue) and the
  integer and continuous optima, and a one-line description.

The implementations are final: [`Barrier`][afdjax.Barrier] (the paper's idealised step) and
[`Pipeline`][afdjax.Pipeline] (the micro-batch pipeline). A new step model is a new subclass;
no caller branches on the kind of step.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp


def prefix_over_instances(op, x):
    """Inclusive prefix ``op`` (``jnp.maximum`` or ``jnp.add``) along axis 0 (instances):
    row ``r - 1`` is the max (sum) over the first ``r`` instances, i.e. the system with ratio ``r``.

    Unrolled for the short instance axis: XLA fuses the chain into one pass, an order of
    magnitude faster on CPU than the associative scan behind ``cummax``/``cumsum``.
    """
    if x.shape[0] > 128:
        return (jax.lax.cummax if op is jnp.maximum else jax.lax.cumsum)(x, axis=0)
    rows = [x[0]]
    for j in range(1, x.shape[0]):
        rows.append(op(rows[-1], x[j]))
    return jnp.stack(rows)


class StepConstants(eqx.Module):
    """Per-ratio constants of one run (``(r_max,)`` arrays, ratio ``r`` at index ``r - 1``).

    Every step model's constants carry at least these three; subclasses add what their
    timing needs.
    """

    centre: jax.Array
    """Mean-field cycle time: the centre of the engine's log-spaced cycle-time histogram."""
    ffn_step: jax.Array
    """FFN busy time per step."""
    link_step: jax.Array
    """Busy time of one A<->F link per step."""


class StepTimes(eqx.Module):
    """What a step model returns for a chunk of ``L`` steps."""

    cycle_time: jax.Array
    """``(r_max ratios, L)``: the time of each step for every ratio."""
    attention_busy: jax.Array
    """``(r_max instances, L)``: busy time of Attention instance ``j`` in each step."""
    ffn_busy: jax.Array | None = None
    """``(r_max ratios, L)``: the FFN's busy time in each step, where it is random (MoE
    routing); ``None``: ``StepConstants.ffn_step`` every step."""


class StepModel(eqx.Module):
    """Abstract step model (see the module docstring). Subclasses are final."""

    # Every step model also has ``micro_batches``: its micro-batches per Attention
    # instance, or None for a step without micro-batches (``SimulationResult.micro_batches``).

    # ----------------------------------------------------------------- engine timing
    @abc.abstractmethod
    def check(self, batch_size: int) -> None:
        """Raise ``ValueError`` if this model cannot run with ``batch_size`` slots."""

    @abc.abstractmethod
    def slot_groups(self) -> int:
        """Number of slot groups whose loads the timing needs (slot ``s`` is in group ``s % G``)."""

    @abc.abstractmethod
    def default_warmup_steps(self) -> int:
        """Steps simulated before measuring when ``simulate(warmup_steps=None)``."""

    def supports_decode_jumps(self) -> bool:
        """Whether the engine's coupled decode-length derivative (``simulate(decode_jumps=True)``,
        the default gradient estimator for decode parameters) is exact for this timing. Only
        a stateless step whose time is a max over instances qualifies; others use the score
        function."""
        return False

    @abc.abstractmethod
    def replica_bytes(self, max_ratio: int, batch_size: int, chunk_steps: int) -> int:
        """Working memory (bytes, an estimate) this timing adds to one replica in flight."""

    @abc.abstractmethod
    def constants(self, workload, latency, batch_size: int, max_ratio: int) -> StepConstants:
        """The per-ratio constants of a run (may be traced in the workload and latency)."""

    @abc.abstractmethod
    def initial_state(self, max_ratio: int, dtype):
        """The timing state carried across steps at time 0 (a pytree)."""

    @abc.abstractmethod
    def step_times(self, constants: StepConstants, state, group_load, latency, stage=None):
        """Time ``L`` steps for every ratio at once.

        ``group_load``: ``(r_max instances, G, L)`` KV tokens of slot group ``g`` on
        instance ``j`` at each step (``G = slot_groups()``). ``stage``: ``None`` when the
        stage times are deterministic given the loads (``latency.stochastic`` false; the
        engine then never passes it), else ``(k1, k2)``, ``(L,)`` uint32 each, the
        counter key of each step for the random stage factors
        (``_stage.stage_normals``; common across ratios). A model that cannot
        time random stages raises ``ValueError`` in ``constants``.
        Returns ``(state, StepTimes)``.
        """

    # ------------------------------------------------------------------ closed forms
    @abc.abstractmethod
    def cycle_time(self, workload, latency, batch_size, ratio) -> jax.Array:
        """Mean-field cycle time (time units per step) at a real ``ratio``."""

    @abc.abstractmethod
    def throughput(self, workload, latency, batch_size, ratio) -> jax.Array:
        """Mean-field throughput per instance (tokens per time unit per instance)."""

    @abc.abstractmethod
    def barrier_cycle_time(self, workload, latency, batch_size, ratio) -> jax.Array:
        """Cycle time with random loads (the Gaussian barrier or this model's analogue)."""

    @abc.abstractmethod
    def barrier_throughput(self, workload, latency, batch_size, ratio) -> jax.Array:
        """Throughput per instance at [`barrier_cycle_time`][afdjax.barrier_cycle_time]."""

    @abc.abstractmethod
    def ratio_optima(self, workload, latency, batch_size, max_ratio: int) -> dict:
        """Recommendations over ``1..max_ratio``: a dict with ``ratio_mean_field`` (int),
        ``ratio_barrier`` (int), ``r_barrier_continuous`` (float) and ``mean_field_extra``
        (a dict of further mean-field entries for reports, e.g. ``r_star_pipeline``)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line saying what the step is and what the closed forms mean."""
