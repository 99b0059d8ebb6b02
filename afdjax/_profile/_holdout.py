"""The validation split of a profile: every third size (indices 1, 4, 7, ...) is held out of
the fit and used to measure the fitted line's relative error."""

from __future__ import annotations

import numpy as np

HOLDOUT_EVERY = 3


def held_out_mask(num_sizes: int) -> np.ndarray:
    """Boolean mask over ``num_sizes`` sorted sizes: ``True`` where the size is held out."""
    return np.arange(num_sizes) % HOLDOUT_EVERY == 1
