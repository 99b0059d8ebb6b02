"""The report of one simulation run: what ``afdjax simulate`` prints, reachable from Python.

[`simulation_report`][afdjax.simulation_report] takes a [`SimulationResult`][afdjax.SimulationResult] and decides what
the
command reports: the best ratio, the ratios within 2 paired standard errors of it (the
same definition as [`provision`][afdjax.provision], see ``_compare``), the workload's
stationary moments, the run's settings and warnings. ``to_dict()`` is the JSON of
``afdjax simulate --json``; ``format_text()`` its table.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .._engine import SimulationResult
from .._latency import LatencyModel
from .._workload import Workload
from ._compare import range_warnings, ratios_within_2_stderr, replica_warnings


@dataclasses.dataclass
class SimulationReport:
    """What ``afdjax simulate`` reports about one [`simulate`][afdjax.simulate] run.

    Attributes:
        result: the [`SimulationResult`][afdjax.SimulationResult].
        settings: the run's settings (workload and hardware as given, coefficients,
            ``batch_size``, ``steps``, ``replicas``, ``seed``, ...).
        theta: stationary mean KV tokens per slot (tokens).
        slot_std: their standard deviation (tokens).
        best_index: index into ``result.ratios`` of the highest simulated throughput per
            instance.
        within_2_stderr: the ratios within 2 paired standard errors of the best (best
            included; see [`ratios_within_2_stderr`][afdjax.ratios_within_2_stderr]).
        warnings: sentences on what limits the answer (the best ratio at the top or
            the bottom of the range simulated, no standard errors with one replica).

    """

    result: SimulationResult
    settings: dict
    theta: float
    slot_std: float
    best_index: int
    within_2_stderr: list[int]
    warnings: list[str]

    @property
    def best_ratio(self) -> int:
        """The ratio r with the highest simulated throughput per instance."""
        return int(np.asarray(self.result.ratios)[self.best_index])

    @property
    def best_throughput(self) -> float:
        """Throughput per instance at the best ratio (tokens per time unit per instance)."""
        return float(np.asarray(self.result.throughput_per_instance)[self.best_index])

    @property
    def best_stderr(self) -> float:
        """Standard error of ``best_throughput`` (NaN with one replica)."""
        return float(np.asarray(self.result.stderr)[self.best_index])

    def to_dict(self) -> dict:
        """The JSON of ``afdjax simulate --json``: [`to_dict`][afdjax.SimulationResult.to_dict] plus
        ``best_ratio_throughput``, ``best_ratio_stderr``, ``ratios_within_2_stderr_of_best``,
        ``theta_tokens``, ``slot_std_tokens``, ``settings`` (non-finite numbers: None) and,
        when there are any, ``warnings``."""
        out = self.result.to_dict()
        out.update(
            best_ratio_throughput=out["throughput_per_instance"][self.best_index],
            best_ratio_stderr=out["stderr"][self.best_index],
            ratios_within_2_stderr_of_best=list(self.within_2_stderr),
            theta_tokens=self.theta,
            slot_std_tokens=self.slot_std,
            settings=self.settings,
        )
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def format_text(self) -> str:
        """The table and conclusions that ``afdjax simulate`` prints."""
        from ._text import simulation_text

        return simulation_text(self)

    def plot(self, path, title: str | None = None):
        """PNG: throughput per instance against r (2 standard errors) and the idle fractions."""
        from .._plot import plot_simulation

        return plot_simulation(self.result, path, title=title)


def simulation_report(
    result: SimulationResult,
    workload: Workload,
    latency: LatencyModel,
    *,
    settings: dict | None = None,
) -> SimulationReport:
    """The report of a simulation (what ``afdjax simulate`` prints and its ``--json``).

    Arguments:
        result: a [`SimulationResult`][afdjax.SimulationResult] of [`simulate`][afdjax.simulate].
        workload: the [`Workload`][afdjax.Workload] and
            [`LatencyModel`][afdjax.LatencyModel] it simulated (for the stationary moments and the
            coefficients in the settings).
        latency: see ``workload``.
        settings: extra or overriding settings to record (e.g. the spec strings
            ``workload=``/``hardware=``, ``seed=``, ``start=``, ``warmup_steps=``); by default
            the workload's description, ``hardware="custom"`` and the run's sizes.

    Returns:
        a [`SimulationReport`][afdjax.SimulationReport] (``to_dict()``, ``format_text()``, ``plot(path)``).
    """
    if not isinstance(result, SimulationResult):
        raise ValueError(f"result={type(result).__name__} is invalid: expected an afdjax SimulationResult")
    base = {
        "workload": workload.describe(),
        "hardware": "custom",
        "latency_coefficients": latency.coefficients(),
        "comm_scaling": latency.comm_scaling,
        "batch_size": int(result.batch_size),
        "steps": int(result.num_steps),
        "replicas": int(result.num_replicas),
        "seed": None,
        "micro_batches": result.micro_batches,
    }
    base.update(settings or {})
    best = result.best_index()
    ratios = [int(r) for r in np.asarray(result.ratios).tolist()]
    warnings = range_warnings(ratios, ratios[best], "best ratio") + replica_warnings(int(result.num_replicas))
    return SimulationReport(
        result=result,
        settings=base,
        theta=float(workload.theta()),
        slot_std=float(np.sqrt(workload.slot_variance())),
        best_index=best,
        within_2_stderr=ratios_within_2_stderr(result, best),
        warnings=warnings,
    )
