"""Fitting: request-length families (``_workload``), stage latencies (``_latency``) and
throughput (``_throughput``), sharing one L-BFGS loop (``_lbfgs``)."""

from ._workload import DECODE_FIT_FAMILIES as DECODE_FIT_FAMILIES
from ._workload import PREFILL_FIT_FAMILIES as PREFILL_FIT_FAMILIES
from ._workload import fit_trace as fit_trace
