"""Compatibility: the names other layers imported from ``afdjax._workload._core`` before
the workload modules were split by concept (import from ``afdjax._workload`` instead)."""

from .._validate import float_leaf
from ._base import PREFILL_FAMILIES, Workload, validate_lengths
from ._empirical import Empirical
from ._geometric import Geometric

__all__ = ["PREFILL_FAMILIES", "Empirical", "Geometric", "Workload", "float_leaf", "validate_lengths"]
