"""The result of [`profile_hardware`][afdjax.profile_hardware] (numbers only; its report text, TOML and plot
are in ``afdjax._profile._text`` and ``afdjax._profile._plots``)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from .._hardware import ModelSpec
from .._json import jsonable


@dataclasses.dataclass(frozen=True)
class ProfileResult:
    """Result of [`profile_hardware`][afdjax.profile_hardware].

    Attributes:
        model: the profiled [`ModelSpec`][afdjax.ModelSpec] (after scaling).
        base_model: the name of the model preset it was scaled from.
        scale: the width scale applied to the preset (1 = full size).
        batch_size: attention slots ``B`` of the timed attention.
        measurements: ``{stage: (sizes, median_us, all_samples_us)}``: sizes ``T``
            (attention KV tokens), ``N`` (FFN batch) or ``B`` (comm tokens); medians in us.
        held_out: ``{stage: sizes}`` not used in the fit.
        fit: the [`LatencyFit`][afdjax.LatencyFit] of the other sizes (``latency``: its model).
        held_out_relative_error: ``{stage: array of (predicted - measured) / measured}``.
        comm_source: ``"device-to-device copy"``, ``"host<->device transfer"`` or
            ``"defaults (SPEC)"``.
        device: the JAX device description.
        dtype: the dtype of the timed arrays.
        grouped_matmul: how the MoE layer groups tokens by expert (``ragged_dot`` or capacity buffers).
        wall_s: wall time of the whole profile (s).
        settings: the inputs, for the report and the TOML.

    """

    model: ModelSpec
    base_model: str
    scale: float
    batch_size: int
    dtype: str
    device: str
    grouped_matmul: str
    comm_source: str
    measurements: dict
    held_out: dict
    fit: object
    held_out_relative_error: dict
    wall_s: float
    settings: dict

    @property
    def latency(self):
        return self.fit.latency

    def max_held_out_error(self) -> float:
        """Largest ``|relative error|`` over all held-out sizes of the measured stages."""
        errs = [np.abs(e).max() for e in self.held_out_relative_error.values() if len(e)]
        return float(max(errs)) if errs else math.nan

    def to_dict(self) -> dict:
        return jsonable(
            {
                "model": dataclasses.asdict(self.model),
                "base_model": self.base_model,
                "scale": self.scale,
                "batch_size": self.batch_size,
                "dtype": self.dtype,
                "device": self.device,
                "grouped_matmul": self.grouped_matmul,
                "comm_source": self.comm_source,
                "time_unit": "us per layer of the profiled shape",
                "latency": self.latency.coefficients(),
                "measurements": {
                    s: {
                        "sizes": list(map(int, v[0])),
                        "median_us": list(v[1]),
                        "held_out": [int(x) in set(map(int, self.held_out[s])) for x in v[0]],
                    }
                    for s, v in self.measurements.items()
                },
                "fit_quality": {s: fit.quality() for s, fit in self.fit.stages.items() if fit.source == "fit"},
                "held_out_relative_error": {s: list(v) for s, v in self.held_out_relative_error.items()},
                "max_held_out_relative_error": self.max_held_out_error(),
                "wall_s": self.wall_s,
                "settings": self.settings,
            }
        )

    def format_text(self) -> str:
        """The report of ``afdjax profile``: shape, coefficients, fit quality, held-out errors."""
        from ._text import format_profile

        return format_profile(self)

    def plot(self, path) -> Path:
        """Write a PNG: per measured stage, the measured times (fitted sizes as dots, held-out
        sizes as squares) with the fitted line (top), and the relative residuals
        ``(fit - measured) / measured`` in percent with the 15 % band (bottom)."""
        from ._plots import plot_profile

        return plot_profile(self, path)

    def to_toml(self) -> str:
        """Hardware TOML (``--hardware FILE``): fitted ``[latency]`` plus ``[model]`` with the
        profiled shape's layer count and KV bytes per token, and a header with the provenance."""
        from ._text import profile_toml

        return profile_toml(self)
