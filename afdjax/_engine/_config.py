"""What fixes the shapes of one engine run (static under ``jit``)."""

from __future__ import annotations

import dataclasses

from .._step import Barrier, StepModel

START_MODES = ("stationary", "cold")
"""How slots start: in the length-biased stationary state, or each with a fresh request."""

MAX_INDEX = 2**16
"""Largest number of instances and of slots: both are packed into one 32-bit counter word."""

MAX_RATIO = 4096
"""Largest A/F ratio ``r`` that ``simulate`` (and ``provision``, the sweep and the command
line) accepts. The mean-field optimum in the attention-bound regime is about
``alpha_a theta / alpha_f``: at most about 260 for every bundled trace and hardware preset
(batch sizes 1 to 256), and about 2,600 for 128k-token contexts with the paper's
coefficients, so ranges up to ``1.5 r*`` fit. Memory and time grow linearly with it;
beyond it lies only the engine's packing limit ``MAX_INDEX``."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Everything that fixes shapes (static under jit; hashable, so one compiled program
    per configuration)."""

    max_ratio: int
    batch_size: int
    num_steps: int
    warmup_steps: int
    num_replicas: int
    chunk_steps: int
    num_chunks: int
    requests_per_chunk: int
    replica_batch_size: int
    start: str
    num_bins: int
    step_model: StepModel = dataclasses.field(default_factory=Barrier)
    progress: bool = False  # replicas run in host-side blocks that drive a progress bar
