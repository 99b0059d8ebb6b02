"""The parameters :func:`~afdjax.fit_throughput` can free, and the scale each is fitted on.

* Latency coefficients (``alpha_a`` .. ``beta_c``) and the :class:`~afdjax.Geometric`
  workload's ``mu_p`` and ``mu_d``: fitted as ``log`` of the value (they are positive).
* The families of a :class:`~afdjax.FittedWorkload`: ``decode_<name>`` and
  ``prefill_<name>`` for each of the family's ``param_names`` (for example ``decode_mu``
  and ``decode_sigma`` of ``LogNormalDecode``, ``decode_p`` of ``GeometricDecode``,
  ``prefill_scale`` of ``ExponentialPrefill``). Fitted on the family's own unconstrained
  scale (``to_unconstrained``): ``log`` of a positive parameter (``sigma``, ``n``,
  ``scale``), ``logit`` of a probability (``p``), the value itself for a lognormal's
  ``mu`` (already a logarithm). Each of these maps is one parameter at a time and
  increasing, so an interval on the fitted scale maps to one on the natural scale.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

from .._latency import COEFFICIENT_NAMES
from .._workload import FittedWorkload, Geometric

GEOMETRIC_PARAMETERS = ("mu_p", "mu_d")
FAMILIES = ("decode", "prefill")


def allowed_names(workload) -> tuple[str, ...]:
    """Every name ``fit`` may hold for this workload."""
    names = tuple(COEFFICIENT_NAMES)
    if isinstance(workload, Geometric):
        names += GEOMETRIC_PARAMETERS
    if isinstance(workload, FittedWorkload):
        for part in FAMILIES:
            names += tuple(f"{part}_{p}" for p in getattr(workload, part).param_names)
    return names


def check_names(fit, workload) -> tuple[str, ...]:
    """``fit`` as a tuple, or ``ValueError`` naming what this workload allows."""
    names = tuple(fit)
    allowed = allowed_names(workload)
    bad = [n for n in names if n not in allowed]
    if bad and all(n in GEOMETRIC_PARAMETERS for n in bad):
        raise ValueError("fitting mu_p / mu_d needs a Geometric workload")
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(f"fit={fit!r} is invalid: choose from {', '.join(allowed)} (each at most once)")
    return names


def _family(name):
    part, _, param = name.partition("_")
    return (part, param) if part in FAMILIES else (None, None)


def start_vector(workload, latency, names) -> jnp.ndarray:
    """The fitted-scale values of ``names`` at the starting point."""
    values = []
    for name in names:
        part, param = _family(name)
        if part is None:
            model = workload if name in GEOMETRIC_PARAMETERS else latency
            values.append(jnp.log(jnp.asarray(float(getattr(model, name)))))
        else:
            family = getattr(workload, part)
            values.append(family.to_unconstrained()[family.param_names.index(param)])
    return jnp.stack(values)


def apply(workload, latency, names, x):
    """``(workload, latency)`` with ``names`` set from the fitted-scale vector ``x``."""
    for i, name in enumerate(names):
        part, param = _family(name)
        if part is None:
            if name in GEOMETRIC_PARAMETERS:
                workload = eqx.tree_at(lambda m, n=name: getattr(m, n), workload, jnp.exp(x[i]))
            else:
                latency = eqx.tree_at(lambda m, n=name: getattr(m, n), latency, jnp.exp(x[i]))
        else:
            family = getattr(workload, part)
            u = family.to_unconstrained().at[family.param_names.index(param)].set(x[i])
            if part == "prefill":
                new = type(family).from_unconstrained(u, family.shift)
            else:
                new = type(family).from_unconstrained(u)
            workload = eqx.tree_at(lambda w, p=part: getattr(w, p), workload, new)
    return workload, latency


def natural(workload, latency, name) -> float:
    """The value of ``name`` in its own units."""
    part, param = _family(name)
    if part is None:
        return float(getattr(workload if name in GEOMETRIC_PARAMETERS else latency, name))
    return float(getattr(getattr(workload, part), param))


def natural_interval(workload, latency, names, x, i, half_width) -> tuple[float, float]:
    """``names[i]`` at ``x[i] -+ half_width`` (the others at ``x``), in its own units."""
    ends = []
    for sign in (-1.0, 1.0):
        w, lat = apply(workload, latency, names, x.at[i].add(sign * half_width))
        ends.append(natural(w, lat, names[i]))
    return min(ends), max(ends)
