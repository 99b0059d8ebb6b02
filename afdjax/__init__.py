"""afdjax: a differentiable JAX performance model of Attention-FFN disaggregated decoding.

The public names are imported on first use (PEP 562 ``__getattr__``): ``import afdjax``
and the command line's ``--help`` do not import JAX; ``afdjax.simulate`` (or any other
name, ``from afdjax import ...``, ``dir(afdjax)``) imports the module that defines it.
The ``TYPE_CHECKING`` block below gives type checkers and IDEs the same names.
"""

from typing import TYPE_CHECKING

# submodule -> the public names it defines (the one table of the package's interface)
_EXPORTS = {
    "_compare": ("Comparison", "compare"),
    "_data": ("BUNDLED_TRACES", "bundled_trace_path", "load_trace", "read_trace"),
    "_engine": ("SimulationResult", "simulate"),
    "_fit._calibrate": ("Calibration", "HeldOut", "calibrate"),
    "_fit._latency": ("LatencyFit", "fit_latency", "read_latency_observations"),
    "_fit._predict": ("CalibratedModel", "Prediction", "predict"),
    "_fit._sweep_data": ("RatioSweep", "read_ratio_sweep"),
    "_fit._throughput": ("ThroughputFit", "ThroughputObservations", "fit_throughput", "read_throughput_observations"),
    "_fit._workload": (
        "DECODE_FIT_FAMILIES",
        "PREFILL_FIT_FAMILIES",
        "FamilyFit",
        "WorkloadFit",
        "fit_trace",
        "fit_workload",
    ),
    "_grad": (
        "RatioOptimum",
        "ThroughputGradient",
        "expected_throughput",
        "optimise_ratio",
        "plan_buffers",
        "throughput_estimate",
        "throughput_gradients",
    ),
    "_hardware": (
        "ACCELERATORS",
        "MODELS",
        "Accelerator",
        "Deployment",
        "HardwareDerivation",
        "ModelSpec",
        "derive_latency",
    ),
    "_latency": ("PRESETS", "LatencyModel"),
    "_stage": ("Communication", "ExpertRouting", "StageNoise"),
    "_plot": ("plot_simulation",),
    "_profile": ("ProfileResult", "profile_hardware"),
    "_provision._compare": ("PairedDifference", "paired_difference", "ratios_within_2_stderr"),
    "_provision._constraints": (
        "OBJECTIVES",
        "ConstrainedProvisionReport",
        "Constraints",
        "Costs",
        "deployment_instance_power_w",
        "deployment_kv_capacity_bytes",
        "kv_overflow_probability_gaussian",
        "provision_constrained",
    ),
    "_provision._report": ("ProvisionReport", "default_ratio_range", "provision"),
    "_provision._simulation": ("SimulationReport", "simulation_report"),
    "_serve": (
        "CapacityResult",
        "GammaArrivals",
        "Plan",
        "PoissonArrivals",
        "ServeResult",
        "ServeSensitivity",
        "TraceArrivals",
        "capacity",
        "load_arrival_trace",
        "plan",
        "serve",
        "serve_sensitivity",
    ),
    "_specs": (
        "deployment_to_toml",
        "latency_to_toml",
        "load_deployment",
        "parse_accelerator_spec",
        "parse_hardware_spec",
        "parse_model_spec",
        "parse_workload_spec",
    ),
    "_step": ("Barrier", "Colocated", "Pipeline", "StepModel"),
    "_step._pipeline": (
        "PipelineEvents",
        "PipelineState",
        "micro_batch_sizes",
        "pipeline_advance",
        "pipeline_barrier_cycle_time",
        "pipeline_barrier_throughput",
        "pipeline_cycle_time",
        "pipeline_event_times",
        "pipeline_period",
        "pipeline_throughput",
    ),
    "_sweep._core": ("SweepGrid", "SweepSummary", "load_grid", "read_manifest", "read_sweep", "sweep"),
    "_theory": (
        "REGIMES",
        "BarrierOptimum",
        "CostOptimum",
        "MeanFieldOptimum",
        "attention_time_moments",
        "barrier_cycle_time",
        "barrier_optimum",
        "barrier_throughput",
        "cost_objective",
        "cost_optimum",
        "expected_max_normal_excess",
        "mean_field_cycle_time",
        "mean_field_integer_ratio",
        "mean_field_optimum",
        "mean_field_throughput",
    ),
    "_workload": (
        "DecodeDistribution",
        "Empirical",
        "ExponentialPrefill",
        "FittedWorkload",
        "Fixed",
        "GammaPrefill",
        "Geometric",
        "GeometricDecode",
        "GeometricMixtureDecode",
        "LogNormalDecode",
        "LogNormalPrefill",
        "NegativeBinomialDecode",
        "PrefillDistribution",
        "Uniform",
        "Workload",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """Import the submodule that defines ``name`` on first use (PEP 562); ``__version__``
    reads the installed package's metadata on first use; a private submodule name
    (``afdjax._engine``) imports that submodule."""
    if name == "__version__":
        import importlib.metadata

        try:
            value = importlib.metadata.version("afdjax")
        except importlib.metadata.PackageNotFoundError:  # running from a source tree
            value = "0.0.0+unknown"
    elif name in _MODULE_OF:
        import importlib

        value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    elif name.startswith("_") and not name.startswith("__"):  # afdjax._engine etc., as before
        import importlib

        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | {"__version__"})


if TYPE_CHECKING:
    __version__: str
    from ._compare import Comparison as Comparison
    from ._compare import compare as compare
    from ._data import BUNDLED_TRACES as BUNDLED_TRACES
    from ._data import bundled_trace_path as bundled_trace_path
    from ._data import load_trace as load_trace
    from ._data import read_trace as read_trace
    from ._engine import SimulationResult as SimulationResult
    from ._engine import simulate as simulate
    from ._fit._calibrate import Calibration as Calibration
    from ._fit._calibrate import HeldOut as HeldOut
    from ._fit._calibrate import calibrate as calibrate
    from ._fit._latency import LatencyFit as LatencyFit
    from ._fit._latency import fit_latency as fit_latency
    from ._fit._latency import read_latency_observations as read_latency_observations
    from ._fit._predict import CalibratedModel as CalibratedModel
    from ._fit._predict import Prediction as Prediction
    from ._fit._predict import predict as predict
    from ._fit._sweep_data import RatioSweep as RatioSweep
    from ._fit._sweep_data import read_ratio_sweep as read_ratio_sweep
    from ._fit._throughput import ThroughputFit as ThroughputFit
    from ._fit._throughput import ThroughputObservations as ThroughputObservations
    from ._fit._throughput import fit_throughput as fit_throughput
    from ._fit._throughput import read_throughput_observations as read_throughput_observations
    from ._fit._workload import DECODE_FIT_FAMILIES as DECODE_FIT_FAMILIES
    from ._fit._workload import PREFILL_FIT_FAMILIES as PREFILL_FIT_FAMILIES
    from ._fit._workload import FamilyFit as FamilyFit
    from ._fit._workload import WorkloadFit as WorkloadFit
    from ._fit._workload import fit_trace as fit_trace
    from ._fit._workload import fit_workload as fit_workload
    from ._grad import RatioOptimum as RatioOptimum
    from ._grad import ThroughputGradient as ThroughputGradient
    from ._grad import expected_throughput as expected_throughput
    from ._grad import optimise_ratio as optimise_ratio
    from ._grad import plan_buffers as plan_buffers
    from ._grad import throughput_estimate as throughput_estimate
    from ._grad import throughput_gradients as throughput_gradients
    from ._hardware import ACCELERATORS as ACCELERATORS
    from ._hardware import MODELS as MODELS
    from ._hardware import Accelerator as Accelerator
    from ._hardware import Deployment as Deployment
    from ._hardware import HardwareDerivation as HardwareDerivation
    from ._hardware import ModelSpec as ModelSpec
    from ._hardware import derive_latency as derive_latency
    from ._latency import PRESETS as PRESETS
    from ._latency import LatencyModel as LatencyModel
    from ._plot import plot_simulation as plot_simulation
    from ._profile import ProfileResult as ProfileResult
    from ._profile import profile_hardware as profile_hardware
    from ._provision._compare import PairedDifference as PairedDifference
    from ._provision._compare import paired_difference as paired_difference
    from ._provision._compare import ratios_within_2_stderr as ratios_within_2_stderr
    from ._provision._constraints import OBJECTIVES as OBJECTIVES
    from ._provision._constraints import ConstrainedProvisionReport as ConstrainedProvisionReport
    from ._provision._constraints import Constraints as Constraints
    from ._provision._constraints import Costs as Costs
    from ._provision._constraints import deployment_instance_power_w as deployment_instance_power_w
    from ._provision._constraints import deployment_kv_capacity_bytes as deployment_kv_capacity_bytes
    from ._provision._constraints import kv_overflow_probability_gaussian as kv_overflow_probability_gaussian
    from ._provision._constraints import provision_constrained as provision_constrained
    from ._provision._report import ProvisionReport as ProvisionReport
    from ._provision._report import default_ratio_range as default_ratio_range
    from ._provision._report import provision as provision
    from ._provision._simulation import SimulationReport as SimulationReport
    from ._provision._simulation import simulation_report as simulation_report
    from ._serve import CapacityResult as CapacityResult
    from ._serve import GammaArrivals as GammaArrivals
    from ._serve import Plan as Plan
    from ._serve import PoissonArrivals as PoissonArrivals
    from ._serve import ServeResult as ServeResult
    from ._serve import ServeSensitivity as ServeSensitivity
    from ._serve import TraceArrivals as TraceArrivals
    from ._serve import capacity as capacity
    from ._serve import load_arrival_trace as load_arrival_trace
    from ._serve import plan as plan
    from ._serve import serve as serve
    from ._serve import serve_sensitivity as serve_sensitivity
    from ._specs import deployment_to_toml as deployment_to_toml
    from ._specs import latency_to_toml as latency_to_toml
    from ._specs import load_deployment as load_deployment
    from ._specs import parse_accelerator_spec as parse_accelerator_spec
    from ._specs import parse_hardware_spec as parse_hardware_spec
    from ._specs import parse_model_spec as parse_model_spec
    from ._specs import parse_workload_spec as parse_workload_spec
    from ._stage import Communication as Communication
    from ._stage import ExpertRouting as ExpertRouting
    from ._stage import StageNoise as StageNoise
    from ._step import Barrier as Barrier
    from ._step import Colocated as Colocated
    from ._step import Pipeline as Pipeline
    from ._step import StepModel as StepModel
    from ._step._pipeline import PipelineEvents as PipelineEvents
    from ._step._pipeline import PipelineState as PipelineState
    from ._step._pipeline import micro_batch_sizes as micro_batch_sizes
    from ._step._pipeline import pipeline_advance as pipeline_advance
    from ._step._pipeline import pipeline_barrier_cycle_time as pipeline_barrier_cycle_time
    from ._step._pipeline import pipeline_barrier_throughput as pipeline_barrier_throughput
    from ._step._pipeline import pipeline_cycle_time as pipeline_cycle_time
    from ._step._pipeline import pipeline_event_times as pipeline_event_times
    from ._step._pipeline import pipeline_period as pipeline_period
    from ._step._pipeline import pipeline_throughput as pipeline_throughput
    from ._sweep._core import SweepGrid as SweepGrid
    from ._sweep._core import SweepSummary as SweepSummary
    from ._sweep._core import load_grid as load_grid
    from ._sweep._core import read_manifest as read_manifest
    from ._sweep._core import read_sweep as read_sweep
    from ._sweep._core import sweep as sweep
    from ._theory import REGIMES as REGIMES
    from ._theory import BarrierOptimum as BarrierOptimum
    from ._theory import CostOptimum as CostOptimum
    from ._theory import MeanFieldOptimum as MeanFieldOptimum
    from ._theory import attention_time_moments as attention_time_moments
    from ._theory import barrier_cycle_time as barrier_cycle_time
    from ._theory import barrier_optimum as barrier_optimum
    from ._theory import barrier_throughput as barrier_throughput
    from ._theory import cost_objective as cost_objective
    from ._theory import cost_optimum as cost_optimum
    from ._theory import expected_max_normal_excess as expected_max_normal_excess
    from ._theory import mean_field_cycle_time as mean_field_cycle_time
    from ._theory import mean_field_integer_ratio as mean_field_integer_ratio
    from ._theory import mean_field_optimum as mean_field_optimum
    from ._theory import mean_field_throughput as mean_field_throughput
    from ._workload import DecodeDistribution as DecodeDistribution
    from ._workload import Empirical as Empirical
    from ._workload import ExponentialPrefill as ExponentialPrefill
    from ._workload import FittedWorkload as FittedWorkload
    from ._workload import Fixed as Fixed
    from ._workload import GammaPrefill as GammaPrefill
    from ._workload import Geometric as Geometric
    from ._workload import GeometricDecode as GeometricDecode
    from ._workload import GeometricMixtureDecode as GeometricMixtureDecode
    from ._workload import LogNormalDecode as LogNormalDecode
    from ._workload import LogNormalPrefill as LogNormalPrefill
    from ._workload import NegativeBinomialDecode as NegativeBinomialDecode
    from ._workload import PrefillDistribution as PrefillDistribution
    from ._workload import Uniform as Uniform
    from ._workload import Workload as Workload
