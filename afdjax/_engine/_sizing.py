"""Buffer sizing (host side): chunk length, requests drawn per chunk, replica batch.

None of these change the numbers, only speed and memory. ``requests_per_chunk`` is a
capacity sized by a Chernoff bound; running out is detected and the run repeated with a
larger buffer and the same random numbers (:func:`afdjax._engine._kernel.rerun_on_overflow`).
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from .._step import Barrier
from .._workload import Workload


def bucket(n: int) -> int:
    """Round up to the next value of the form 2^k or 3 * 2^(k-1) (limits recompiles)."""
    n = max(int(n), 1)
    p = 1 << (n - 1).bit_length()
    return 3 * p // 4 if 3 * p // 4 >= n and p >= 4 else p


def _concrete_float(x, name: str) -> float:
    try:
        return float(x)
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError) as err:
        raise ValueError(
            f"{name} is traced (simulate called under jit/grad/vmap); pass chunk_steps= and "
            "requests_per_chunk= explicitly so that buffer sizes do not depend on traced values"
        ) from err


def requests_bound(workload: Workload, chunk_steps: int, log_eps: float) -> int:
    """Smallest M with P(sum of M decode lengths <= L) <= exp(log_eps) (Chernoff bound)."""
    t = np.logspace(-8, 2, 600)
    log_phi = workload._decode_log_mgf_neg(t)
    L = chunk_steps

    def log_bound(m):
        return float(np.min(t * L + m * log_phi))

    lo, hi = 1, L + 1  # D >= 1: L + 1 requests always cover L steps
    while lo < hi:
        mid = (lo + hi) // 2
        if log_bound(mid) <= log_eps:
            hi = mid
        else:
            lo = mid + 1
    return lo


def plan_sizes(
    workload,
    cfg_kwargs: dict,
    chunk_steps=None,
    requests_per_chunk=None,
    replica_batch_size=None,
    memory_budget_bytes: int = 512 * 2**20,
) -> dict:
    """Choose chunk length, requests per chunk and replica batch size (those not given).

    ``cfg_kwargs``: ``max_ratio``, ``batch_size``, ``num_steps``, ``warmup_steps``,
    ``num_replicas``, ``num_bins`` and optionally ``step_model`` (default ``Barrier()``).
    Returns a dict with ``chunk_steps``, ``num_chunks``, ``requests_per_chunk`` and
    ``replica_batch_size``.
    """
    rmax, B, R = cfg_kwargs["max_ratio"], cfg_kwargs["batch_size"], cfg_kwargs["num_replicas"]
    total = cfg_kwargs["warmup_steps"] + cfg_kwargs["num_steps"]
    if chunk_steps is None:
        mean_d = _concrete_float(workload.mean_decode_steps(), "the workload's mean decode length")
        target = bucket(int(min(max(32 * mean_d, 256), 16384)))
        chunk_steps = total if total <= target else target
    num_chunks = -(-total // chunk_steps)
    if requests_per_chunk is None:
        _concrete_float(workload.mean_decode_steps(), "the workload's mean decode length")
        # An overflow is detected and the run repeated with a larger buffer and the same
        # random numbers, so the bound only trades speed: 1e-4 chance of a rerun per call.
        log_eps = math.log(1e-4) - math.log(R * rmax * B * num_chunks)
        requests_per_chunk = bucket(requests_bound(workload, chunk_steps, log_eps))
    if replica_batch_size is None:
        # Replicas advance together in batches (vmap) and batches follow each other
        # (lax.map), so memory is bounded by the batch. On CPU a batch of about one
        # replica per core measured fastest (XLA splits the batched work across cores
        # while it stays cache-resident); accelerators take as many as the budget allows.
        per_replica = replica_bytes(cfg_kwargs, chunk_steps, requests_per_chunk)
        fit = max(1, memory_budget_bytes // per_replica)
        if jax.default_backend() == "cpu":
            fit = min(fit, os.cpu_count() or 1)
        replica_batch_size = int(min(R, fit))
    return dict(
        chunk_steps=int(chunk_steps),
        num_chunks=int(num_chunks),
        requests_per_chunk=int(requests_per_chunk),
        replica_batch_size=int(replica_batch_size),
    )


def replica_bytes(cfg_kwargs: dict, chunk_steps: int, requests_per_chunk: int) -> int:
    """Working memory of one replica in flight (bytes, an estimate): what :func:`plan_sizes`
    uses to choose ``replica_batch_size``, and the sweep to size its chunks. The step
    model adds its own share (:meth:`~afdjax.StepModel.replica_bytes`)."""
    rmax, B = cfg_kwargs["max_ratio"], cfg_kwargs["batch_size"]
    per_replica = rmax * B * requests_per_chunk * 64 + rmax * chunk_steps * 96 + rmax * cfg_kwargs["num_bins"] * 8
    step_model = cfg_kwargs.get("step_model")
    step_model = Barrier() if step_model is None else step_model
    return per_replica + step_model.replica_bytes(rmax, B, chunk_steps)
