"""The closed-form cost optimum shown by ``afdjax provision --objective per-dollar|per-joule``
next to the simulated one (issue 15; the formulas are ``_theory.cost_optimum``)."""

from __future__ import annotations

from .._step import Barrier
from .._theory import cost_optimum


def closed_form_cost(
    workload, latency, batch_size: int, costs, objective: str, max_ratio: int, step_model
) -> dict | None:
    """The mean-field and barrier-refined optimum of tokens per dollar (``per_dollar``: the
    prices) or per joule (``per_joule``: the powers) at one batch size, as a dict of
    Python numbers with the costs used; ``None`` for ``per_instance`` or for a step model
    other than the paper's [`Barrier`][afdjax.Barrier] (the closed form is for its step)."""
    if objective == "per_dollar":
        w_a, w_f = costs.attention_price_per_hour, costs.ffn_price_per_hour
    elif objective == "per_joule":
        w_a, w_f = costs.attention_power_w, costs.ffn_power_w
    else:
        return None
    if not isinstance(step_model, Barrier):
        return None
    out = cost_optimum(workload, latency, batch_size, float(w_a), float(w_f), int(max_ratio)).to_dict()
    out.update(attention_cost=float(w_a), ffn_cost=float(w_f))
    return out
