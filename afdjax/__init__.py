"""afdjax: a differentiable JAX performance model of Attention-FFN disaggregated decoding."""

import importlib.metadata as _metadata

from ._engine import SimulationResult as SimulationResult, simulate as simulate
from ._latency import PRESETS as PRESETS, LatencyModel as LatencyModel
from ._workload import Empirical as Empirical, Geometric as Geometric, Workload as Workload

try:
    __version__ = _metadata.version("afdjax")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"
