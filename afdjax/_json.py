"""JSON-safe conversion of results (a leaf module)."""

from __future__ import annotations

import math

import numpy as np


def jsonable(x):
    """Nested dicts/lists of NumPy or Python numbers -> JSON-safe Python (non-finite -> None)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
