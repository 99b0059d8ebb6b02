"""Step models: how long one decode step takes (engine timing and closed forms)."""

from ._barrier import Barrier as Barrier
from ._barrier import BarrierConstants as BarrierConstants
from ._colocated import Colocated as Colocated
from ._colocated import colocated_throughput_per_device as colocated_throughput_per_device
from ._colocated import expected_max_normal as expected_max_normal
from ._model import StepConstants as StepConstants
from ._model import StepModel as StepModel
from ._model import StepTimes as StepTimes
from ._model import prefix_over_instances as prefix_over_instances
from ._pipeline import PipelineEvents as PipelineEvents
from ._pipeline import PipelineState as PipelineState
from ._pipeline import micro_batch_sizes as micro_batch_sizes
from ._pipeline import pipeline_advance as pipeline_advance
from ._pipeline import pipeline_barrier_cycle_time as pipeline_barrier_cycle_time
from ._pipeline import pipeline_barrier_throughput as pipeline_barrier_throughput
from ._pipeline import pipeline_cycle_time as pipeline_cycle_time
from ._pipeline import pipeline_event_times as pipeline_event_times
from ._pipeline import pipeline_period as pipeline_period
from ._pipeline import pipeline_throughput as pipeline_throughput
from ._pipeline_model import Pipeline as Pipeline
from ._pipeline_model import PipelineConstants as PipelineConstants
from ._pipeline_model import as_step_model as as_step_model
