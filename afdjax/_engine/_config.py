"""What fixes the shapes of one engine run (static under ``jit``)."""

from __future__ import annotations

import dataclasses

from .._step import Barrier, StepModel

START_MODES = ("stationary", "cold")
"""How slots start: in the length-biased stationary state, or each with a fresh request."""

MAX_INDEX = 2**16
"""Largest number of instances and of slots: both are packed into one 32-bit counter word."""


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
