"""What afdjax knows about a hardware spec beyond its latency coefficients: layers, KV bytes
per token, HBM, power, instance sizes (read from a spec by [`load_deployment`][afdjax.load_deployment])."""

from __future__ import annotations

import dataclasses

from .._latency import LatencyModel
from .._validate import invalid


@dataclasses.dataclass(frozen=True)
class Deployment:
    """What afdjax knows about a hardware spec, beyond the latency coefficients.

    Every field other than ``latency`` is ``None`` when the spec does not say.

    Attributes:
        latency: the [`LatencyModel`][afdjax.LatencyModel] (its unit is ``time_unit``).
        num_layers: decoder layers; with per-layer coefficients the time per output
            token is ``num_layers * E[tau]`` (TPOT, in the coefficients' unit).
        kv_bytes_per_token: KV-cache bytes per token **over all layers** (bytes); an
            Attention instance with ``K`` bytes free for KV cache holds ``K / kv_bytes_per_token``
            tokens, i.e. ``B * theta <= K / kv_bytes_per_token``.
        hbm_capacity_bytes: HBM of **one device** (bytes).
        accelerator: the accelerator's name.
        model: the model's name.
        power_watts: board power of one device (W).
        attention_devices: devices per Attention instance.
        ffn_devices: devices per FFN instance.
        attention_weight_bytes: weights resident on one Attention instance, all layers
            (bytes); see ``kv_capacity_bytes``.
        time_unit: unit of the coefficients, e.g. ``"us per layer"``.
        ffn_power_watts: board power of one FFN device (W) when the FFN runs on another
            accelerator than the Attention (heterogeneous AFD); ``None``: ``power_watts``.
    """

    latency: LatencyModel
    num_layers: int | None = None
    kv_bytes_per_token: float | None = None
    hbm_capacity_bytes: float | None = None
    accelerator: str | None = None
    model: str | None = None
    power_watts: float | None = None
    attention_devices: int | None = None
    ffn_devices: int | None = None
    attention_weight_bytes: float | None = None
    time_unit: str | None = None
    ffn_power_watts: float | None = None

    def kv_capacity_bytes(self, reserve_fraction: float = 0.0) -> float | None:
        """HBM left for KV cache on one Attention instance:
        ``attention_devices * hbm_capacity_bytes * (1 - reserve_fraction) - attention_weight_bytes``
        (bytes, ``None`` if any input is unknown; ``attention_devices`` defaults to 1)."""
        if self.hbm_capacity_bytes is None or self.attention_weight_bytes is None:
            return None
        if isinstance(reserve_fraction, bool) or not (0 <= reserve_fraction < 1):
            raise invalid("reserve_fraction", reserve_fraction, "a number in [0, 1)")
        n = self.attention_devices or 1
        return n * self.hbm_capacity_bytes * (1 - reserve_fraction) - self.attention_weight_bytes

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "latency"}
        if self.ffn_power_watts is None:  # only heterogeneous deployments have it
            del out["ffn_power_watts"]
        out["latency"] = self.latency.coefficients()
        out["comm_scaling"] = self.latency.comm_scaling
        return out
