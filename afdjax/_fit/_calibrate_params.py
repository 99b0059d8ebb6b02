"""The latency-model parameters :func:`afdjax.calibrate` can free, each fitted as ``log`` of
its value (every one is positive; a parameter at 0 is not fitted: start it above 0).

* the six coefficients ``alpha_a`` .. ``beta_c`` of :class:`~afdjax.LatencyModel`;
* stage-time parameters, by a flat name (:data:`STAGE_PARAMETERS`: the part of the latency
  model that holds it, and its field); fitting one whose part is ``None`` adds the part
  with that field at its starting value (:data:`STAGE_STARTS`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._latency import COEFFICIENT_NAMES, LatencyModel

STAGE_PARAMETERS: dict[str, tuple[str, str]] = {
    "attention_cv": ("noise", "attention_cv"),
    "ffn_cv": ("noise", "ffn_cv"),
    "comm_cv": ("noise", "comm_cv"),
    "routing_skew": ("routing", "skew"),
    "comm_per_peer": ("comm", "per_peer"),
    "comm_alpha_link": ("comm", "alpha_link"),
}
"""Flat name -> (``LatencyModel`` field holding the part, the part's field)."""
STAGE_STARTS: dict[str, float | None] = {
    "attention_cv": 0.05,
    "ffn_cv": 0.05,
    "comm_cv": 0.05,
    "routing_skew": 0.2,
    "comm_per_peer": None,  # 1 % of beta_a + beta_f (a time: it needs the model's scale)
    "comm_alpha_link": None,  # 1 % of alpha_f
}
"""Starting value of each stage-time parameter when the latency model gives 0 or none
(``None``: 1 % of the model's matching scale, see :func:`with_starts`)."""
FLOORS: dict[str, float] = {"attention_cv": 1e-3, "ffn_cv": 1e-3, "comm_cv": 1e-3, "routing_skew": 1e-3}
"""Smallest fitted value of a dimensionless stage parameter: below it the effect is
indistinguishable from 0, and ``log`` space would run off towards ``-inf`` (where float32
gradients of the LogNormal factor lose their precision)."""
IDENTIFIABLE_BY_DEFAULT = ("attention_cv",)
"""Stage parameters fitted by default besides the six coefficients (see :func:`default_fit`)."""
DEFAULT_FIT = COEFFICIENT_NAMES


def default_fit(latency: LatencyModel) -> tuple[str, ...]:
    """The six coefficients, ``attention_cv`` and, when the model routes experts
    (``routing`` set), ``routing_skew``.

    Why these: a measured ratio sweep sees a stage-time parameter only through the mean
    step time. ``attention_cv`` raises it by the expected maximum of ``r`` per-layer factors
    (about ``cv sqrt(2 log r)`` of the attention time), a smooth rise with ``r`` at
    attention-bound rows that no coefficient makes; ``routing_skew`` raises the FFN time
    by the busiest rank's excess, growing with ``r B``, at FFN-bound rows. ``ffn_cv`` and
    ``comm_cv`` move the mean only where two stages are within about a ``cv`` of each other
    (near the balance ratio), and ``comm_per_peer`` (linear in ``r``) is nearly collinear
    with ``alpha_f`` and with ``attention_cv`` over a few ratios: fit them explicitly (``fit``)
    when the data cover those regions."""
    extra = IDENTIFIABLE_BY_DEFAULT + (("routing_skew",) if getattr(latency, "routing", None) is not None else ())
    return tuple(COEFFICIENT_NAMES) + extra


def allowed_names(latency: LatencyModel) -> tuple[str, ...]:
    """Every name ``fit`` may hold."""
    stage = tuple(n for n in STAGE_PARAMETERS if n != "routing_skew" or getattr(latency, "routing", None) is not None)
    return tuple(COEFFICIENT_NAMES) + stage


def check_names(fit, latency: LatencyModel) -> tuple[str, ...]:
    """``fit`` as a tuple of distinct allowed names, or ``ValueError`` naming them."""
    names = (fit,) if isinstance(fit, str) else tuple(fit)
    allowed = allowed_names(latency)
    if not names or len(set(names)) != len(names) or any(n not in allowed for n in names):
        raise ValueError(f"fit={fit!r} is invalid: expected distinct names from {', '.join(allowed)}")
    return names


def natural(latency: LatencyModel, name: str) -> float:
    """The value of ``name`` in ``latency`` (0 when its part is ``None``)."""
    if name in COEFFICIENT_NAMES:
        return float(getattr(latency, name))
    part, field = STAGE_PARAMETERS[name]
    holder = getattr(latency, part)
    return 0.0 if holder is None else float(getattr(holder, field))


def with_starts(latency: LatencyModel, names) -> LatencyModel:
    """``latency`` with every stage-time part that ``names`` needs present, and each fitted
    stage parameter at 0 moved to its starting value (:data:`STAGE_STARTS`)."""
    for name in names:
        if name in COEFFICIENT_NAMES or natural(latency, name) > 0:
            continue
        part, field = STAGE_PARAMETERS[name]
        holder = getattr(latency, part)
        if holder is None:
            holder = _default_part(part)
        start = STAGE_STARTS[name]
        if start is None:
            scale = latency.beta_a + latency.beta_f if name == "comm_per_peer" else latency.alpha_f
            start = 0.01 * max(float(scale), 1e-12)
        holder = eqx.tree_at(lambda h, f=field: getattr(h, f), holder, jnp.asarray(float(start)))
        latency = eqx.tree_at(lambda m, p=part: getattr(m, p), latency, holder, is_leaf=lambda x: x is None)
    return latency


def _default_part(part: str):
    """A neutral part to hold a stage parameter (routing has no neutral default: it needs the
    model's experts and ranks, so ``routing_skew`` is only allowed when ``routing`` is set)."""
    from .._stage import Communication, StageNoise

    return StageNoise() if part == "noise" else Communication()


def start_vector(latency: LatencyModel, names) -> jnp.ndarray:
    """``log`` of each fitted parameter's value in ``latency``."""
    return jnp.log(jnp.asarray([natural(latency, n) for n in names], dtype=jnp.zeros(()).dtype))


def lower_bounds(names) -> np.ndarray:
    """``log`` of each parameter's floor (:data:`FLOORS`; ``-inf`` for the others)."""
    return np.asarray([np.log(FLOORS[n]) if n in FLOORS else -np.inf for n in names], dtype=float)


def apply(latency: LatencyModel, names, x) -> LatencyModel:
    """``latency`` with ``names`` set to ``exp(x)`` (traceable)."""
    for i, name in enumerate(names):
        if name in COEFFICIENT_NAMES:
            latency = eqx.tree_at(lambda m, n=name: getattr(m, n), latency, jnp.exp(x[i]))
        else:
            part, field = STAGE_PARAMETERS[name]
            latency = eqx.tree_at(lambda m, p=part, f=field: getattr(getattr(m, p), f), latency, jnp.exp(x[i]))
    return latency
