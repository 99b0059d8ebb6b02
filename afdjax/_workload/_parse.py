"""The ``fixed:`` and ``uniform:`` workload specs (called by ``parse_workload_spec``).

* ``fixed:prefill=P,decode=D`` -- :class:`~afdjax.Fixed` (``P`` a number ``>= 0``,
  ``D`` an integer ``>= 1``);
* ``uniform:prefill=A..B,decode=C..D`` -- :class:`~afdjax.Uniform` (integer ranges,
  both ends included; a single integer ``A`` means ``A..A``).

Self-contained: each function takes the text after the colon and the whole spec (for
messages) and raises ``ValueError`` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import math

from ._benchmark import Fixed, Uniform

FIXED_SPEC = "fixed:prefill=P,decode=D"
UNIFORM_SPEC = "uniform:prefill=A..B,decode=C..D"


def _pairs(rest: str, spec: str, usage: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not key or not value:
            raise ValueError(f"workload spec {spec!r}: {item.strip()!r} is not KEY=VALUE; expected {usage!r}")
        if key in pairs:
            raise ValueError(f"workload spec {spec!r}: {key} is given twice; expected {usage!r}")
        pairs[key] = value
    allowed = ("prefill", "decode")
    unknown = sorted(set(pairs) - set(allowed))
    if unknown:
        raise ValueError(
            f"workload spec {spec!r}: unknown key(s) {', '.join(unknown)}; allowed: prefill, decode ({usage})"
        )
    missing = [k for k in allowed if k not in pairs]
    if missing:
        raise ValueError(f"workload spec {spec!r}: missing {', '.join(missing)}; expected {usage!r}")
    return pairs


def _integer(spec: str, key: str, text: str, minimum: int, what: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value == int(value) and value >= minimum):
        raise ValueError(f"workload spec {spec!r}: {key}={text!r} is invalid: expected {what}")
    return int(value)


def parse_fixed_spec(rest: str, spec: str) -> Fixed:
    """:class:`Fixed` from ``prefill=P,decode=D`` (the text after ``fixed:``)."""
    pairs = _pairs(rest, spec, FIXED_SPEC)
    try:
        prefill = float(pairs["prefill"])
    except ValueError:
        prefill = math.nan
    if not (math.isfinite(prefill) and prefill >= 0):
        raise ValueError(
            f"workload spec {spec!r}: prefill={pairs['prefill']!r} is invalid: expected a number of tokens >= 0"
        )
    decode = _integer(spec, "decode", pairs["decode"], 1, "an integer number of decode steps >= 1")
    try:
        return Fixed(prefill, decode)
    except ValueError as err:
        raise ValueError(f"workload spec {spec!r}: {err}") from None


def _range(spec: str, key: str, text: str, minimum: int) -> tuple[int, int]:
    what = f"an integer range LOW..HIGH with {minimum} <= LOW <= HIGH (or one integer >= {minimum})"
    low_text, dots, high_text = text.partition("..")
    if not dots:
        high_text = low_text
    try:
        low = _integer(spec, key, low_text.strip(), minimum, what)
        high = _integer(spec, key, high_text.strip(), minimum, what)
    except ValueError:
        low = high = None
    if low is None or high is None or high < low:
        raise ValueError(f"workload spec {spec!r}: {key}={text!r} is invalid: expected {what}")
    return low, high


def parse_uniform_spec(rest: str, spec: str) -> Uniform:
    """:class:`Uniform` from ``prefill=A..B,decode=C..D`` (the text after ``uniform:``)."""
    pairs = _pairs(rest, spec, UNIFORM_SPEC)
    prefill = _range(spec, "prefill", pairs["prefill"], 0)
    decode = _range(spec, "decode", pairs["decode"], 1)
    try:
        return Uniform(*prefill, *decode)
    except ValueError as err:
        raise ValueError(f"workload spec {spec!r}: {err}") from None
