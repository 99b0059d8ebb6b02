"""Hardware TOML writing: ``[latency]`` and the optional ``[model]``, ``[accelerator]`` and
``[deployment]`` tables, and the keys a reader accepts in each (the reader is
``_specs.load_deployment``; writer and reader share the tables below).

The writer lives here, below the fitting layer, because [`to_toml`][afdjax.HardwareDerivation.to_toml]
and ``LatencyFit.to_toml`` write hardware files; every string and file *grammar* (reading)
is in ``afdjax._specs``, which re-exports these writers.
"""

from __future__ import annotations

import numpy as np

from .._latency import LatencyModel
from .._stage import Communication, ExpertRouting, StageNoise
from ._deployment import Deployment

LATENCY_TABLE_KEYS = ("units", "description", "source")
"""Keys of ``[latency]`` besides the six coefficients and ``comm_scaling`` (read and ignored,
except ``units``: the time unit of a [`Deployment`][afdjax.Deployment])."""
MODEL_TABLE_KEYS = {"name": str, "num_layers": int, "kv_bytes_per_token": (int, float)}
"""``[model]`` keys a [`Deployment`][afdjax.Deployment] reads, with their TOML types (other keys are ignored)."""
ACCELERATOR_TABLE_KEYS = {
    "name": str,
    "hbm_capacity_bytes": (int, float),
    "hbm_capacity_gb": (int, float),
    "power_watts": (int, float),
    "ffn_power_watts": (int, float),
}
"""``[accelerator]`` keys a [`Deployment`][afdjax.Deployment] reads (``hbm_capacity_gb`` in 1e9 bytes;
``ffn_power_watts`` only for heterogeneous AFD, the FFN device's board power)."""
DEPLOYMENT_TABLE_KEYS = {
    "attention_devices": int,
    "ffn_devices": int,
    "attention_weight_bytes": (int, float),
    "time_unit": str,
}
"""``[deployment]`` keys a [`Deployment`][afdjax.Deployment] reads."""


STAGE_TABLES = {
    "noise": ("noise", StageNoise, {"attention_cv": float, "ffn_cv": float, "comm_cv": float}),
    "routing": (
        "routing",
        ExpertRouting,
        {
            "num_experts": int,
            "top_k": int,
            "ranks": int,
            "skew": float,
            "histogram": list,
            "redundant_experts": int,
        },
    ),
    "communication": (
        "comm",
        Communication,
        {"per_peer": float, "alpha_back": float, "beta_back": float, "alpha_link": float},
    ),
}
"""The hardware TOML tables of the stage-time parts: table name -> (``LatencyModel`` field,
class, ``{key: TOML type}``); ``num_layers`` is a key of ``[latency]``. A key left out takes
the class default (``None`` for ``alpha_back``/``beta_back``/``histogram``)."""


def _plain(v):
    """A leaf as a Python float (shortest decimal that round-trips at its precision), an
    ``(E,)`` leaf as a list of them, an int as is."""
    if isinstance(v, int):
        return v
    a = np.asarray(v)
    if a.ndim:
        return [float(str(x)) for x in a]
    return float(str(a[()]))


def stage_tables_toml(latency: LatencyModel) -> str:
    """The ``[noise]``, ``[routing]`` and ``[communication]`` tables of ``latency``'s parts
    that are set (empty text when none is); read back by [`parse_hardware_spec`][afdjax.parse_hardware_spec]."""
    text = ""
    for table, (field, _, keys) in STAGE_TABLES.items():
        part = getattr(latency, field)
        if part is None:
            continue
        values = {k: _plain(getattr(part, k)) for k in keys if getattr(part, k) is not None}
        text += f"\n[{table}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
    return text


def toml_value(v) -> str:
    """A TOML literal for a string, bool, int or float (floats by ``repr``: exact round trip)."""
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v)


def latency_to_toml(latency: LatencyModel, description: str | None = None) -> str:
    """TOML text with a ``[latency]`` table (the six coefficients, ``comm_scaling`` and
    ``num_layers`` when set) and the tables of ``STAGE_TABLES`` that are set, which
    [`parse_hardware_spec`][afdjax.parse_hardware_spec] (``--hardware FILE.toml``) reads back exactly.

    Arguments:
        latency: the [`LatencyModel`][afdjax.LatencyModel] to write.
        description: lines written as ``#`` comments at the top (``None``: none).

    Returns:
        the TOML text (str).

    Examples:
        >>> print(afdjax.latency_to_toml(afdjax.LatencyModel.from_preset("paper-910c")).splitlines()[1])
        alpha_a = 0.00165
    """
    return _latency_table(latency, description) + stage_tables_toml(latency)


def _latency_table(latency: LatencyModel, description: str | None) -> str:
    lines = []
    if description:
        lines += [f"# {line}" for line in description.splitlines()]
    lines.append("[latency]")
    for k, v in latency.coefficients().items():
        lines.append(f"{k} = {v!r}")
    lines.append(f'comm_scaling = "{latency.comm_scaling}"')
    if latency.num_layers is not None:
        lines.append(f"num_layers = {latency.num_layers}")
    return "\n".join(lines) + "\n"


def deployment_to_toml(
    deployment: Deployment,
    description: str | None = None,
    *,
    extra_model=None,
    extra_accelerator=None,
    extra_deployment=None,
) -> str:
    """TOML text for a [`Deployment`][afdjax.Deployment], read back by [`load_deployment`][afdjax.load_deployment].

    ``[latency]`` (with ``units`` when the time unit is known), then ``[model]``,
    ``[accelerator]`` and ``[deployment]`` with the fields that are not ``None``.
    Arguments:
        deployment: the [`Deployment`][afdjax.Deployment] to write.
        description: ``#`` comment lines at the top (``None``: none).
        extra_model: further keys of ``[model]`` for the record (readers ignore them).
        extra_accelerator: further keys of ``[accelerator]``.
        extra_deployment: further keys of ``[deployment]``.

    Returns:
        the TOML text (str).
    """
    dep = deployment
    text = _latency_table(dep.latency, description)
    if dep.time_unit:
        text += f"units = {toml_value(dep.time_unit)}\n"
    text += stage_tables_toml(dep.latency)
    sections = {
        "model": dict(
            name=dep.model, num_layers=dep.num_layers, kv_bytes_per_token=dep.kv_bytes_per_token, **(extra_model or {})
        ),
        "accelerator": dict(
            name=dep.accelerator,
            hbm_capacity_bytes=dep.hbm_capacity_bytes,
            power_watts=dep.power_watts,
            ffn_power_watts=dep.ffn_power_watts,
            **(extra_accelerator or {}),
        ),
        "deployment": dict(
            attention_devices=dep.attention_devices,
            ffn_devices=dep.ffn_devices,
            attention_weight_bytes=dep.attention_weight_bytes,
            **(extra_deployment or {}),
        ),
    }
    for section, values in sections.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            text += f"\n[{section}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
    return text


def derivation_to_toml(derivation) -> str:
    """The TOML of [`to_toml`][afdjax.HardwareDerivation.to_toml]: the deployment, with the derivation's
    formulas, numbers and sources as comments and its dtype and efficiencies for the record."""
    d = derivation
    head = [
        (
            f"Latency coefficients derived from specs by afdjax hardware ({d.accelerator.name}:{d.model.name}, "
            f"dtype {d.dtype}), microseconds per layer."
        )
    ]
    head += [f"{k} = {c.value_us:.6g}: {c.formula} = {c.numbers}" for k, c in d.coefficients.items()]
    head += [f"source: {s}" for s in d.accelerator.sources + d.model.sources]
    return deployment_to_toml(
        d.deployment(),
        "\n".join(head),
        extra_model={"weight_dtype": d.dtype},
        extra_accelerator={
            "memory_efficiency": d.memory_efficiency,
            "compute_efficiency": d.compute_efficiency,
            "network_efficiency": d.network_efficiency,
        },
    )
