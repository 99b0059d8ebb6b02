"""Large resumable sweeps: ``_grid`` (schema), ``_core`` (running), ``_store`` (files)."""

from ._core import SweepSummary as SweepSummary
from ._core import sweep as sweep
from ._grid import SweepGrid as SweepGrid
from ._grid import load_grid as load_grid
from ._store import read_manifest as read_manifest
from ._store import read_sweep as read_sweep
