"""The Monte Carlo engine: ``simulate`` and the pieces the sweep and the gradients share."""

from ._config import MAX_INDEX as MAX_INDEX
from ._config import START_MODES as START_MODES
from ._config import EngineConfig as EngineConfig
from ._kernel import rerun_on_overflow as rerun_on_overflow
from ._kernel import run_engine as run_engine
from ._kernel import simulate_all_ratios as simulate_all_ratios
from ._result import SimulationResult as SimulationResult
from ._simulate import simulate as simulate
from ._sizing import plan_sizes as plan_sizes
from ._sizing import replica_bytes as replica_bytes
