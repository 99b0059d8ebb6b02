"""Input checks and leaf conversions shared by every layer (a leaf module: it imports no
other afdjax module).

Every check raises ``ValueError`` naming the argument, the value and what is allowed, in
one wording: ``"{name}={value!r} is invalid: expected {allowed}"``. Checks of array
parameters are skipped for tracers (values under ``jit``/``grad``/``vmap`` are checked
where they are concrete, or with ``eqx.error_if``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Collection

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

_TRACED = (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError)


def float_leaf(x) -> jax.Array:
    """Convert a parameter to an array of the default float dtype (never weak-typed).

    A Python float, a NumPy float64 and a JAX array then all give the same abstract
    signature, so swapping one for another never recompiles.
    """
    return jnp.asarray(x, dtype=jnp.zeros(()).dtype)


def strong_leaves(tree):
    """``tree`` with every Python float leaf made a ``float_leaf`` and every weakly
    typed array leaf made strongly typed (same dtype, same values).

    Constructors convert their parameters with ``float_leaf``, but a leaf replaced
    afterwards (``eqx.tree_at(lambda m: m.alpha_a, latency, 0.5)``, a common way to move
    one coefficient) bypasses them: a Python float is a *static* leaf to
    ``eqx.filter_jit`` and a weakly typed array another abstract signature, so each such
    call compiled the engine again (about 5 s on a CPU). ``filter_jit`` passes every
    module argument through here. Tracers are left as they are."""

    def strong(x):
        if isinstance(x, float):
            return float_leaf(x)
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and x.weak_type:
            return jnp.asarray(x, dtype=x.dtype)
        return x

    return jax.tree_util.tree_map(strong, tree)


def filter_jit(fun):
    """``eqx.filter_jit`` that first passes every ``eqx.Module`` argument (workloads,
    latency models, step models) through ``strong_leaves``, so a parameter replaced
    with ``eqx.tree_at`` never compiles the program again. afdjax's jitted entry points
    use this instead of ``eqx.filter_jit``."""
    jitted = eqx.filter_jit(fun)

    def strong(x):
        return strong_leaves(x) if isinstance(x, eqx.Module) else x

    @functools.wraps(fun)
    def call(*args, **kwargs):
        return jitted(*map(strong, args), **{k: strong(v) for k, v in kwargs.items()})

    return call


INT32_MAX = 2**31 - 1
"""Largest count (steps, replicas, ...) the engine's int32 counters hold."""


def plain(value):
    """A value as a user reads it in a message: NumPy and JAX arrays become Python numbers
    (a 0-d array) or nested lists, so ``mu_p=-1.0`` is printed, not
    ``mu_p=Array(-1., dtype=float32)``; anything else (and a traced value) is returned as is."""
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        try:
            array = np.asarray(value)
        except _TRACED:
            return value
        return array.item() if array.ndim == 0 else array.tolist()
    return value


def invalid(name: str, value, allowed: str) -> ValueError:
    """The one wording of a bad argument: ``name=value is invalid: expected allowed``
    (array values shown as plain numbers, see ``plain``)."""
    return ValueError(f"{name}={plain(value)!r} is invalid: expected {allowed}")


def format_number(value, spec: str = "") -> str:
    """``format(value, spec)``, except that a number which rounds to zero prints without a
    minus sign (``-0.000`` -> ``0.000``, ``-0.00%`` -> ``0.00%``): the one formatting rule of
    the text reports. Non-finite values format as Python does (``nan``, ``-inf``)."""
    text = format(value, spec)
    if "-" in text and isinstance(value, (float, np.floating)) and math.isfinite(value):
        mantissa = text.lower().split("e")[0]
        if not any(c in "123456789" for c in mantissa):
            return format(0.0, spec)
    return text


def _bound_text(minimum, maximum, strict: bool) -> str:
    if maximum is not None and minimum is not None:
        return f"a finite number in {'(' if strict else '['}{minimum:g}, {maximum:g}]"
    if minimum is not None:
        return f"a finite number {'>' if strict else '>='} {minimum:g}"
    if maximum is not None:
        return f"a finite number <= {maximum:g}"
    return "a finite number"


def check_number(
    name: str, value, *, minimum: float | None = 0.0, strict: bool = True, maximum: float | None = None
) -> float:
    """A concrete real number (not a bool), finite, ``> minimum`` (``>=`` unless ``strict``)
    and ``<= maximum``; returns it as a Python float. ``minimum=None``: no lower bound."""
    allowed = _bound_text(minimum, maximum, strict)
    if isinstance(value, (bool, np.bool_, str)) or value is None:
        raise invalid(name, value, allowed)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise invalid(name, value, allowed) from None
    ok = math.isfinite(v)
    if ok and minimum is not None:
        ok = v > minimum if strict else v >= minimum
    if ok and maximum is not None:
        ok = v <= maximum
    if not ok:
        raise invalid(name, value, allowed)
    return v


def check_optional_number(name: str, value, **bounds) -> float | None:
    """``None`` passes through; anything else as ``check_number``."""
    return None if value is None else check_number(name, value, **bounds)


def check_array_parameter(name: str, value, *, allow_zero: bool = False) -> None:
    """A workload or latency leaf: every element finite and ``> 0`` (``>= 0`` with
    ``allow_zero``). Skipped for traced values."""
    try:
        v = np.asarray(value, dtype=float)
    except _TRACED:
        return
    ok = bool(np.all(np.isfinite(v)) and np.all(v >= 0 if allow_zero else v > 0))
    if not ok:
        shown = v.item() if v.ndim == 0 else value
        raise invalid(name, shown, "a finite number >= 0" if allow_zero else "a finite number > 0")


def check_int(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """An integer (a float with an integer value is accepted, a bool is not) in
    ``[minimum, maximum]``; returns it as a Python int."""
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise invalid(name, value, allowed)
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise invalid(name, value, allowed)
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        raise invalid(name, value, allowed)
    return value


def check_choice(name: str, value, allowed: Collection[str]) -> str:
    """One of ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise invalid(name, value, f"one of {', '.join(allowed)}")
    return value


def check_fraction(name: str, value) -> float:
    """A number in (0, 1]."""
    return check_number(name, value, minimum=0.0, strict=True, maximum=1.0)


def check_name(what: str, name) -> str:
    """A non-empty string."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what}: name={name!r} is invalid: expected a non-empty string")
    return name
