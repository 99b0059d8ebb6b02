"""Stage latency model of one rA-1F decode step (linear, roofline-motivated).

* attention on one instance holding ``T`` KV tokens: ``t_A(T) = alpha_a * T + beta_a``
* FFN on the aggregated ``r * B`` tokens:            ``t_F = alpha_f * r * B + beta_f``
* A<->F communication: ``t_C = alpha_c * B + beta_c`` (paper v1, ``comm_scaling="batch"``)
  or ``alpha_c * r * B + beta_c`` (``comm_scaling="ratio_batch"``, as in a v4-based
  third-party implementation). ``t_C`` is one direction (A->F); the F->A transfer back
  takes the same time. The paper's step overlaps the two (full-duplex links), the
  micro-batch pipeline (``simulate(..., micro_batches=m)``) runs both.

Optional parts (issue 13, ``afdjax._stage``): ``num_layers`` with per-layer random stage
times (``noise``), MoE expert routing on the FFN side (``routing``) and per-peer, F->A and
shared-link communication terms (``comm``); all ``None`` is the deterministic model above.

Times are in one consistent *time unit*; throughput comes out in tokens per that unit.
The ``paper-910c`` preset (DeepSeek-V3 on Ascend 910C, arXiv 2601.21351) does not state
its unit; it is plausibly microseconds per layer. ``alpha_*`` are time units per token,
``beta_*`` time units.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._stage import Communication, ExpertRouting, StageNoise
from ._validate import check_array_parameter, check_choice, check_int, float_leaf, invalid

COMM_SCALINGS = ("batch", "ratio_batch")
COEFFICIENT_NAMES = ("alpha_a", "beta_a", "alpha_f", "beta_f", "alpha_c", "beta_c")

PRESETS: dict[str, dict[str, float]] = {
    # arXiv 2601.21351, section 4 (DeepSeek-V3 on Huawei Ascend 910C; linear
    # regression on traces; unit not stated, plausibly microseconds per layer).
    "paper-910c": {
        "alpha_a": 0.00165,
        "beta_a": 50.0,
        "alpha_f": 0.083,
        "beta_f": 100.0,
        "alpha_c": 0.022,
        "beta_c": 20.0,
    },
}
"""Named latency coefficient sets for [`LatencyModel.from_preset`][afdjax.LatencyModel.from_preset] and
``--hardware NAME``: ``paper-910c`` is DeepSeek-V3 on Ascend 910C as fitted in arXiv 2601.21351
(unit not stated, plausibly microseconds per layer)."""


class LatencyModel(eqx.Module):
    """Linear stage latencies of an rA-1F bundle.

    The six coefficients are finite and ``>= 0``, not all zero; they are array leaves, so they
    can be swept, vmapped and differentiated without recompiling.

    Arguments:
        alpha_a: attention time per KV token held by one instance (time/token).
        beta_a: attention fixed time per step (time).
        alpha_f: FFN time per token of the aggregated ``r*B`` batch (time/token).
        beta_f: FFN fixed time per step (time).
        alpha_c: communication time per token (time/token).
        beta_c: communication fixed time per step (time).
        comm_scaling: ``"batch"`` (``t_C = alpha_c B + beta_c``, the paper's v1,
            default) or ``"ratio_batch"`` (``t_C = alpha_c r B + beta_c``).
        num_layers: layers of the model (an integer >= 1, static), each with its own
            A -> F -> A hand-off (a barrier per layer); ``None`` = one barrier per step. Only
            matters with ``noise`` or ``routing`` (otherwise every layer is the same).
        noise: a [`StageNoise`][afdjax.StageNoise] (per-layer random stage times) or ``None``.
        routing: an [`ExpertRouting`][afdjax.ExpertRouting] (the FFN time follows the busiest
            expert-parallel rank) or ``None`` (balanced: ``t_F = alpha_f r B + beta_f``).
        comm: a [`Communication`][afdjax.Communication] (per-peer, F->A and shared-link terms)
            or ``None``.

    All four ``None`` (the default) is the paper's deterministic stage times.

    Examples:
        >>> latency = afdjax.LatencyModel.from_preset("paper-910c")
        >>> latency.coefficients()["alpha_a"], latency.comm_scaling
        (0.00165, 'batch')
    """

    alpha_a: jax.Array = eqx.field(converter=float_leaf)
    beta_a: jax.Array = eqx.field(converter=float_leaf)
    alpha_f: jax.Array = eqx.field(converter=float_leaf)
    beta_f: jax.Array = eqx.field(converter=float_leaf)
    alpha_c: jax.Array = eqx.field(converter=float_leaf)
    beta_c: jax.Array = eqx.field(converter=float_leaf)
    comm_scaling: str = eqx.field(static=True, default="batch")
    num_layers: int | None = eqx.field(static=True, default=None)
    noise: StageNoise | None = None
    routing: ExpertRouting | None = None
    comm: Communication | None = None

    def __check_init__(self):
        check_choice("comm_scaling", self.comm_scaling, COMM_SCALINGS)
        if self.num_layers is not None:
            check_int("num_layers", self.num_layers, 1)
        for name, cls in (("noise", StageNoise), ("routing", ExpertRouting), ("comm", Communication)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise invalid(name, value, f"None or an afdjax.{cls.__name__}")
        for name in COEFFICIENT_NAMES:  # every element finite and >= 0; traced values are skipped
            check_array_parameter(name, getattr(self, name), allow_zero=True)
        _check_some_stage_takes_time(self)

    @classmethod
    def from_preset(cls, name: str, comm_scaling: str | None = None) -> LatencyModel:
        """A named preset (see ``afdjax.PRESETS``), e.g. ``"paper-910c"``."""
        if name not in PRESETS:
            raise ValueError(f"unknown hardware preset {name!r}; available: {', '.join(sorted(PRESETS))}")
        kwargs = dict(PRESETS[name])
        if comm_scaling is not None:
            kwargs["comm_scaling"] = comm_scaling
        return cls(**kwargs)

    def attention_time(self, tokens: jax.Array) -> jax.Array:
        """``t_A(T)`` for ``T`` KV tokens held by one Attention instance (time units)."""
        return self.alpha_a * tokens + self.beta_a

    def ffn_time(self, ratio: jax.Array, batch_size: jax.Array) -> jax.Array:
        """``t_F(rB) = alpha_f r B + beta_f`` (time units); ``ratio`` may be real."""
        return self.alpha_f * ratio * batch_size + self.beta_f

    @property
    def stochastic(self) -> bool:
        """Whether the stage times are random given the loads (``noise`` or ``routing`` set)."""
        return self.noise is not None or self.routing is not None

    def layers(self) -> int:
        """``L``: ``num_layers``, or 1 (one barrier per step) when it is ``None``."""
        return 1 if self.num_layers is None else self.num_layers

    def comm_time(self, ratio: jax.Array, batch_size: jax.Array) -> jax.Array:
        """``t_C`` of the A->F direction (time units): ``alpha_c B + beta_c`` or
        ``alpha_c r B + beta_c`` by ``comm_scaling``; with ``comm``,
        ``max(that + per_peer r, alpha_link r B)``."""
        return self._comm(self.alpha_c, self.beta_c, ratio, batch_size)

    def comm_back_time(self, ratio: jax.Array, batch_size: jax.Array) -> jax.Array:
        """``t_C'`` of the F->A direction (time units): ``comm_time`` with
        ``comm.alpha_back``/``comm.beta_back`` where given (``None``: the same as A->F)."""
        if self.comm is None:
            return self.comm_time(ratio, batch_size)
        alpha = self.alpha_c if self.comm.alpha_back is None else self.comm.alpha_back
        beta = self.beta_c if self.comm.beta_back is None else self.comm.beta_back
        return self._comm(alpha, beta, ratio, batch_size)

    def _comm(self, alpha, beta, ratio, batch_size):
        tokens = batch_size if self.comm_scaling == "batch" else ratio * batch_size
        if self.comm is None:
            return alpha * tokens + beta + 0.0 * ratio
        per_peer = alpha * tokens + beta + self.comm.per_peer * ratio
        return jnp.maximum(per_peer, self.comm.alpha_link * ratio * batch_size)

    def coefficients(self) -> dict[str, float]:
        """The six coefficients as Python floats (for reports and TOML)."""
        # str() of a NumPy scalar is the shortest decimal that round-trips at its own
        # precision, so float32 storage reports 0.083 rather than 0.0829999968.
        return {name: float(str(np.asarray(getattr(self, name))[()])) for name in COEFFICIENT_NAMES}


def _check_some_stage_takes_time(latency: LatencyModel) -> None:
    """``ValueError`` when all six coefficients are zero (for some element of a batch of
    coefficients): every step would take no time and the throughput would be infinite.
    Traced coefficients are not checked."""
    try:
        values = [np.asarray(getattr(latency, name), dtype=float) for name in COEFFICIENT_NAMES]
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return
    all_zero = np.all(np.stack(np.broadcast_arrays(*values)) == 0.0, axis=0)
    if np.any(all_zero):
        where = "" if all_zero.ndim == 0 else f" at index {tuple(int(i) for i in np.argwhere(all_zero)[0])}"
        raise ValueError(
            f"latency coefficients {' = '.join(COEFFICIENT_NAMES)} = 0{where}: with all six zero every step "
            "takes no time (infinite throughput); expected at least one coefficient > 0"
        )
