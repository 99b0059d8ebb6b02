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

from .._latency import COEFFICIENT_NAMES, LatencyModel

STAGE_PARAMETERS: dict[str, tuple[str, str]] = {}
"""Flat name -> (``LatencyModel`` field holding the part, the part's field)."""
STAGE_STARTS: dict[str, float] = {}
"""Starting value of each stage-time parameter when the latency model does not give one."""
DEFAULT_FIT = COEFFICIENT_NAMES


def allowed_names(latency: LatencyModel) -> tuple[str, ...]:
    """Every name ``fit`` may hold."""
    return tuple(COEFFICIENT_NAMES) + tuple(n for n in STAGE_PARAMETERS if hasattr(latency, STAGE_PARAMETERS[n][0]))


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
        holder = eqx.tree_at(lambda h, f=field: getattr(h, f), holder, jnp.asarray(STAGE_STARTS[name]))
        latency = eqx.tree_at(lambda m, p=part: getattr(m, p), latency, holder, is_leaf=lambda x: x is None)
    return latency


def _default_part(part: str):
    raise ValueError(f"cannot add the latency model's {part!r} part: give a starting value in the hardware")


def start_vector(latency: LatencyModel, names) -> jnp.ndarray:
    """``log`` of each fitted parameter's value in ``latency``."""
    return jnp.log(jnp.asarray([natural(latency, n) for n in names], dtype=jnp.zeros(()).dtype))


def apply(latency: LatencyModel, names, x) -> LatencyModel:
    """``latency`` with ``names`` set to ``exp(x)`` (traceable)."""
    for i, name in enumerate(names):
        if name in COEFFICIENT_NAMES:
            latency = eqx.tree_at(lambda m, n=name: getattr(m, n), latency, jnp.exp(x[i]))
        else:
            part, field = STAGE_PARAMETERS[name]
            latency = eqx.tree_at(lambda m, p=part, f=field: getattr(getattr(m, p), f), latency, jnp.exp(x[i]))
    return latency
