"""Closed-form theory: mean field, Gaussian barrier refinement and the choice of a ratio.

Re-exports only; the modules are ``_mean_field`` (mean field), ``_max_normal`` (expected
maximum of normals), ``_barrier`` (Gaussian barrier refinement), ``_ratio_choice`` (integer
and grid argmax, Newton polish), ``_base`` (shared helpers, used by ``afdjax._step``) and,
for the stochastic stage times of issue 13 (``StageNoise``, ``ExpertRouting``,
``Communication``), ``_stage_terms`` (the per-layer barrier), ``_stage_optimum`` (the mean
field's numerical optimum) and ``_stage_pipeline`` (the pipeline's closed form with them).
"""

from ._barrier import BarrierOptimum as BarrierOptimum
from ._barrier import attention_time_moments as attention_time_moments
from ._barrier import barrier_cycle_time as barrier_cycle_time
from ._barrier import barrier_optimum as barrier_optimum
from ._barrier import barrier_throughput as barrier_throughput
from ._base import as_float as as_float
from ._base import check_batch_size as check_batch_size
from ._base import fail_if as fail_if
from ._base import per_instance_throughput as per_instance_throughput
from ._cost import CostOptimum as CostOptimum
from ._cost import cost_objective as cost_objective
from ._cost import cost_optimum as cost_optimum
from ._max_normal import expected_max_normal_excess as expected_max_normal_excess
from ._mean_field import REGIMES as REGIMES
from ._mean_field import MeanFieldOptimum as MeanFieldOptimum
from ._mean_field import attention_time_mean_field as attention_time_mean_field
from ._mean_field import mean_field_cycle_time as mean_field_cycle_time
from ._mean_field import mean_field_integer_ratio as mean_field_integer_ratio
from ._mean_field import mean_field_optimum as mean_field_optimum
from ._mean_field import mean_field_throughput as mean_field_throughput
from ._ratio_choice import GRID_POINTS_PER_UNIT as GRID_POINTS_PER_UNIT
from ._ratio_choice import best_integer_neighbour as best_integer_neighbour
from ._ratio_choice import check_max_ratio as check_max_ratio
from ._ratio_choice import grid_argmax as grid_argmax
from ._ratio_choice import integer_argmax as integer_argmax
from ._ratio_choice import maximise_ratio as maximise_ratio
from ._ratio_choice import newton_polish as newton_polish
from ._stage_optimum import stage_floor_mean as stage_floor_mean
from ._stage_pipeline import check_micro_batches as check_micro_batches
from ._stage_pipeline import pipeline_period as pipeline_period
from ._stage_pipeline import stage_pipeline_cycle_time as stage_pipeline_cycle_time
from ._stage_pipeline import stage_pipeline_throughput as stage_pipeline_throughput
from ._stage_terms import attention_max_mean as attention_max_mean
from ._stage_terms import routed_ffn_time as routed_ffn_time
from ._stage_terms import stage_layer_time as stage_layer_time
