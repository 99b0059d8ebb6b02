"""The ``fitted:`` workload spec: a trace's fitted families as a simulatable workload.

``fitted:TRACE[,decode=FAMILY][,prefill=FAMILY][,tokens_per_step=K]`` fits the trace
(a path or a bundled name) with :func:`afdjax.fit_trace` and returns
:meth:`~afdjax.WorkloadFit.to_workload` of the named families (default: the lowest AIC of
each margin; naming both fits only those two families, which is faster). Self-contained,
for the spec grammar's ``parse_workload_spec`` (specs layer) to dispatch to; the fitted
pair ignores the trace's P-D correlation (see :class:`~afdjax.FittedWorkload`).
"""

from __future__ import annotations

from .._workload import FittedWorkload
from ._workload import DECODE_FIT_FAMILIES, PREFILL_FIT_FAMILIES, fit_trace

FITTED_SPEC = "fitted:TRACE[,decode=FAMILY][,prefill=FAMILY][,tokens_per_step=K]"


def parse_fitted_spec(rest: str, spec: str) -> FittedWorkload:
    """:class:`~afdjax.FittedWorkload` from ``TRACE[,decode=..][,prefill=..][,tokens_per_step=K]``
    (the text after ``fitted:``); ``ValueError`` naming the key, the value and what is allowed."""
    path, _, options = rest.partition(",")
    path = path.strip()
    if not path:
        raise ValueError(f"workload spec {spec!r}: missing trace after 'fitted:'; expected {FITTED_SPEC!r}")
    pairs: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in options.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not value:
            raise ValueError(f"workload spec {spec!r}: {item!r} is not KEY=VALUE; expected {FITTED_SPEC!r}")
        if key not in ("decode", "prefill", "tokens_per_step"):
            raise ValueError(f"workload spec {spec!r}: unknown key {key!r}; allowed: decode, prefill, tokens_per_step")
        pairs[key] = value
    for key, allowed in (("decode", DECODE_FIT_FAMILIES), ("prefill", PREFILL_FIT_FAMILIES)):
        if key in pairs and pairs[key] not in allowed:
            raise ValueError(
                f"workload spec {spec!r}: {key}={pairs[key]!r} is invalid: expected one of {', '.join(allowed)}"
            )
    tps = pairs.get("tokens_per_step", "1")
    if not tps.isdigit() or int(tps) < 1:
        raise ValueError(f"workload spec {spec!r}: tokens_per_step={tps!r} is invalid: expected an integer >= 1")
    families = {}
    if "decode" in pairs and "prefill" in pairs:  # nothing to compare: fit the two named families only
        families = {"decode_families": [pairs["decode"]], "prefill_families": [pairs["prefill"]]}
    fit = fit_trace(path, tokens_per_step=int(tps), **families)
    return fit.to_workload(pairs.get("decode"), pairs.get("prefill"))
