"""Timing one compiled call: calibration, one sample, and the host and device round trips that
stand in for the A<->F link (the protocol is described in ``afdjax._profile._profile``)."""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np


@dataclasses.dataclass
class Timed:
    """One size of one stage: ``call`` runs it once and blocks; ``number`` calls make a sample."""

    stage: str
    size: int  # x of the stage: T (attention), N (FFN), B (comm)
    call: object  # zero-argument callable that runs once and blocks
    number: int = 1
    samples_s: list = dataclasses.field(default_factory=list)


def calibrate(item: Timed, min_sample_s: float) -> None:
    """Two warm-up calls, then ``item.number`` so that one sample lasts at least ``min_sample_s``."""
    for _ in range(2):  # warm-up (first call may touch fresh memory)
        item.call()
    t0 = time.perf_counter()
    item.call()
    once = max(time.perf_counter() - t0, 1e-7)
    item.number = max(1, min(1000, math.ceil(min_sample_s / once)))


def sample(item: Timed) -> None:
    """Append one sample (seconds per call) to ``item.samples_s``."""
    item.call()  # untimed: the previous item left the caches and thread pool in another state
    t0 = time.perf_counter()
    for _ in range(item.number):
        item.call()
    item.samples_s.append((time.perf_counter() - t0) / item.number)


def compiled_call(fn, *args):
    """A zero-argument call of ``fn`` compiled ahead of time for ``args``, blocking on the result."""
    compiled = jax.jit(fn).lower(*args).compile()

    def call():
        jax.block_until_ready(compiled(*args))

    return call


def aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """A host array whose data starts on an ``align``-byte boundary. ``device_put`` takes a
    slower path for misaligned host buffers, and NumPy's alignment varies with the size:
    without this the transfer time jumps 2.5x between neighbouring sizes."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + n].view(dtype).reshape(shape)


def host_roundtrip_call(host: np.ndarray, device):
    """A call that copies ``host`` to ``device`` and back into a preallocated host buffer."""
    back = aligned_empty(host.shape, host.dtype)

    def call():
        on_device = jax.device_put(host, device, may_alias=False)  # a real copy, never a zero-copy view
        on_device.block_until_ready()
        np.copyto(back, np.asarray(on_device))  # device -> preallocated host buffer

    return call


def device_roundtrip_call(x, there, back):
    """A call that copies ``x`` to device ``there`` and back to ``back``."""

    def call():
        y = jax.device_put(x, there)
        y.block_until_ready()
        jax.device_put(y, back).block_until_ready()

    return call
