"""Large resumable sweeps: ``_grid`` (schema), ``_core`` (running), ``_store`` (files),
``_lock`` (one writer per folder; the processes of a multi-host sweep share it)."""

from ._core import SweepSummary as SweepSummary
from ._core import sweep as sweep
from ._grid import SweepGrid as SweepGrid
from ._grid import load_grid as load_grid
from ._store import read_manifest as read_manifest
from ._store import read_sweep as read_sweep
