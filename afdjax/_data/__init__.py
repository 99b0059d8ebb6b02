"""Request traces: bundled traces, CSV / JSON Lines records, [`read_trace`][afdjax.read_trace],
[`load_trace`][afdjax.load_trace]."""

from ._traces import BUNDLED_TRACES as BUNDLED_TRACES
from ._traces import DATA_DIR as DATA_DIR
from ._traces import bundled_trace_path as bundled_trace_path
from ._traces import load_trace as load_trace
from ._traces import read_records as read_records
from ._traces import read_trace as read_trace
from ._traces import resolve_file as resolve_file
from ._traces import resolve_trace as resolve_trace
