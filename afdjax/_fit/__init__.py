"""Fitting: request-length families (``_workload``), stage latencies (``_latency``) and
throughput (``_throughput``), sharing one L-BFGS loop (``_lbfgs``)."""

from ._spec import FITTED_SPEC as FITTED_SPEC
from ._spec import parse_fitted_spec as parse_fitted_spec
