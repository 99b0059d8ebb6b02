"""afdjax: a differentiable JAX performance model of Attention-FFN disaggregated decoding."""

import importlib.metadata as _metadata

from ._engine import SimulationResult as SimulationResult, simulate as simulate
from ._latency import PRESETS as PRESETS, LatencyModel as LatencyModel
from ._workload._core import Empirical as Empirical, Geometric as Geometric, Workload as Workload

try:
    __version__ = _metadata.version("afdjax")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"

from ._data import (
    BUNDLED_TRACES as BUNDLED_TRACES,
    bundled_trace_path as bundled_trace_path,
    load_trace as load_trace,
    read_trace as read_trace,
)
from ._specs import (
    latency_to_toml as latency_to_toml,
    parse_hardware_spec as parse_hardware_spec,
    parse_workload_spec as parse_workload_spec,
)
from ._plot import plot_simulation as plot_simulation
from ._sweep._core import (
    SweepGrid as SweepGrid,
    SweepSummary as SweepSummary,
    load_grid as load_grid,
    read_manifest as read_manifest,
    read_sweep as read_sweep,
    sweep as sweep,
)
from ._provision._report import ProvisionReport as ProvisionReport, provision as provision
from ._theory import (
    REGIMES as REGIMES,
    BarrierOptimum as BarrierOptimum,
    MeanFieldOptimum as MeanFieldOptimum,
    attention_time_moments as attention_time_moments,
    barrier_cycle_time as barrier_cycle_time,
    barrier_optimum as barrier_optimum,
    barrier_throughput as barrier_throughput,
    expected_max_normal_excess as expected_max_normal_excess,
    mean_field_cycle_time as mean_field_cycle_time,
    mean_field_integer_ratio as mean_field_integer_ratio,
    mean_field_optimum as mean_field_optimum,
    mean_field_throughput as mean_field_throughput,
)
from ._step._pipeline import (
    PipelineEvents as PipelineEvents,
    PipelineState as PipelineState,
    micro_batch_sizes as micro_batch_sizes,
    pipeline_advance as pipeline_advance,
    pipeline_barrier_cycle_time as pipeline_barrier_cycle_time,
    pipeline_barrier_throughput as pipeline_barrier_throughput,
    pipeline_cycle_time as pipeline_cycle_time,
    pipeline_event_times as pipeline_event_times,
    pipeline_period as pipeline_period,
    pipeline_throughput as pipeline_throughput,
)
from ._grad import (
    RatioOptimum as RatioOptimum,
    ThroughputGradient as ThroughputGradient,
    expected_throughput as expected_throughput,
    optimise_ratio as optimise_ratio,
    plan_buffers as plan_buffers,
    throughput_estimate as throughput_estimate,
    throughput_gradients as throughput_gradients,
)
from ._fit._latency import LatencyFit as LatencyFit, fit_latency as fit_latency, read_latency_observations as read_latency_observations
from ._fit._throughput import (
    ThroughputFit as ThroughputFit,
    ThroughputObservations as ThroughputObservations,
    fit_throughput as fit_throughput,
    read_throughput_observations as read_throughput_observations,
)
from ._fit._workload import (
    DECODE_FIT_FAMILIES as DECODE_FIT_FAMILIES,
    PREFILL_FIT_FAMILIES as PREFILL_FIT_FAMILIES,
    FamilyFit as FamilyFit,
    WorkloadFit as WorkloadFit,
    fit_trace as fit_trace,
    fit_workload as fit_workload,
)
from ._hardware import (
    ACCELERATORS as ACCELERATORS,
    MODELS as MODELS,
    Accelerator as Accelerator,
    Deployment as Deployment,
    HardwareDerivation as HardwareDerivation,
    ModelSpec as ModelSpec,
    derive_latency as derive_latency,
)
from ._specs import (
    deployment_to_toml as deployment_to_toml,
    load_deployment as load_deployment,
    parse_accelerator_spec as parse_accelerator_spec,
    parse_model_spec as parse_model_spec,
)
from ._profile import ProfileResult as ProfileResult, profile_hardware as profile_hardware
from ._provision._constraints import (
    OBJECTIVES as OBJECTIVES,
    ConstrainedProvisionReport as ConstrainedProvisionReport,
    Constraints as Constraints,
    Costs as Costs,
    kv_overflow_probability_gaussian as kv_overflow_probability_gaussian,
    provision_constrained as provision_constrained,
)

# What the commands decide and print, reachable from Python (issue 10: the library decides, the CLI prints).
from ._provision._compare import (
    PairedDifference as PairedDifference,
    paired_difference as paired_difference,
    ratios_within_2_stderr as ratios_within_2_stderr,
)
from ._provision._constraints import (
    deployment_instance_power_w as deployment_instance_power_w,
    deployment_kv_capacity_bytes as deployment_kv_capacity_bytes,
)
from ._provision._report import default_ratio_range as default_ratio_range
from ._provision._simulation import SimulationReport as SimulationReport, simulation_report as simulation_report

# Workloads: serving-benchmark specs and fitted families (issue 10).
from ._workload import (
    DecodeDistribution as DecodeDistribution,
    ExponentialPrefill as ExponentialPrefill,
    FittedWorkload as FittedWorkload,
    Fixed as Fixed,
    GammaPrefill as GammaPrefill,
    GeometricDecode as GeometricDecode,
    GeometricMixtureDecode as GeometricMixtureDecode,
    LogNormalDecode as LogNormalDecode,
    LogNormalPrefill as LogNormalPrefill,
    NegativeBinomialDecode as NegativeBinomialDecode,
    PrefillDistribution as PrefillDistribution,
    Uniform as Uniform,
)

# step models (issue 10)
from ._step import Barrier as Barrier, Pipeline as Pipeline, StepModel as StepModel
