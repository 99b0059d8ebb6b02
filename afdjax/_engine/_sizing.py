"""Buffer sizing (host side): chunk length, requests drawn per chunk, replica batch, and
the checks that a run can work at all (counts within int32, ratios within
``_config.MAX_RATIO``, memory within what the machine holds), made before anything
is allocated or compiled.

None of the sizes change the numbers, only speed and memory. ``requests_per_chunk`` is a
capacity sized by a Chernoff bound; running out is detected and the run repeated with a
larger buffer and the same random numbers (``_engine._kernel.rerun_on_overflow``).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from .._step import Barrier
from .._validate import INT32_MAX
from .._workload import Workload
from ._config import MAX_RATIO


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

    Raises ``ValueError`` for a run that cannot work, before anything is allocated: a
    largest ratio beyond ``_engine._config.MAX_RATIO``, more steps than int32
    counts, or an estimated memory (``memory_estimate``) beyond what this machine (or
    the accelerator) holds.
    """
    rmax, B, R = cfg_kwargs["max_ratio"], cfg_kwargs["batch_size"], cfg_kwargs["num_replicas"]
    if rmax > MAX_RATIO:
        raise ValueError(f"ratios has max {rmax}: expected ratios <= {MAX_RATIO} (afdjax's largest A/F ratio)")
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
    sizes = dict(
        chunk_steps=int(chunk_steps),
        num_chunks=int(num_chunks),
        requests_per_chunk=int(requests_per_chunk),
        replica_batch_size=int(replica_batch_size),
    )
    if num_chunks * chunk_steps > INT32_MAX:
        raise ValueError(
            f"num_steps={cfg_kwargs['num_steps']} with warmup_steps={cfg_kwargs['warmup_steps']} is invalid: "
            f"expected at most {INT32_MAX} steps in all (int32 step counters; "
            f"{num_chunks * chunk_steps} in chunks of {chunk_steps})"
        )
    estimate = memory_estimate(cfg_kwargs, sizes)
    if not estimate.fits:
        raise RunTooLarge(estimate)
    return sizes


def replica_bytes(cfg_kwargs: dict, chunk_steps: int, requests_per_chunk: int) -> int:
    """Working memory of one replica in flight (bytes, an estimate): what ``plan_sizes``
    uses to choose ``replica_batch_size``, and the sweep to size its chunks. The step
    model adds its own share ([`replica_bytes`][afdjax.StepModel.replica_bytes])."""
    rmax, B = cfg_kwargs["max_ratio"], cfg_kwargs["batch_size"]
    per_replica = rmax * B * requests_per_chunk * 64 + rmax * chunk_steps * 96 + rmax * cfg_kwargs["num_bins"] * 8
    step_model = cfg_kwargs.get("step_model")
    step_model = Barrier() if step_model is None else step_model
    return per_replica + step_model.replica_bytes(rmax, B, chunk_steps)


def statistics_bytes(max_ratio: int, num_bins: int) -> int:
    """Bytes of one replica's statistics (an estimate), kept for every replica until they
    are pooled: a cycle-time histogram per ratio, a KV-load histogram and nine float64
    sums per instance or ratio."""
    return 4 * num_bins * (max_ratio + 1) + 72 * max_ratio + 64


def available_memory() -> tuple[int | None, str]:
    """``(bytes, where)``: the memory a run can use, and what it is. On an accelerator
    the default device's ``bytes_limit``; on the CPU the physical memory, or the
    container's (cgroup) limit when lower. ``(None, ...)`` when it cannot be told."""
    if jax.default_backend() != "cpu":
        device = jax.devices()[0]
        try:
            limit = (device.memory_stats() or {}).get("bytes_limit")
        except Exception:  # some backends do not report memory statistics
            limit = None
        if limit:
            return int(limit), f"memory of {device.platform}:{device.id}"
    try:
        total, where = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "physical memory"
    except (ValueError, OSError, AttributeError):
        total, where = None, "memory"
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total, where = int(text), "container's memory limit"
        break
    return total, f"{where} of this machine"


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Estimated memory of one engine run against what the machine holds (bytes)."""

    statistics: int
    """Statistics of all replicas (``num_replicas x`` ``statistics_bytes``)."""
    working: int
    """Working memory of the replicas in flight (``replica_batch_size x`` ``replica_bytes``)."""
    available: int | None
    """What the machine holds (``available_memory``; ``None``: unknown)."""
    where: str
    num_replicas: int
    max_ratio: int
    batch_size: int

    @property
    def total(self) -> int:
        return self.statistics + self.working

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= self.available

    def message(self, names: dict | None = None) -> str:
        """Why the run does not fit and what to lower. ``names`` spells ``num_replicas``,
        ``ratios`` and ``batch_size`` as the caller's user knows them (e.g. CLI options)."""
        n = {"num_replicas": "num_replicas", "ratios": "ratios", "batch_size": "batch_size", **(names or {})}
        if self.statistics >= self.working:
            advice = (
                f"{self.num_replicas} replicas keep {_gb(self.statistics)} GB of statistics; lower {n['num_replicas']}"
            )
        else:
            advice = (
                f"one replica's working memory grows with the largest ratio ({self.max_ratio}) times the "
                f"batch size ({self.batch_size}); lower the largest of {n['ratios']} or {n['batch_size']}"
            )
        return (
            f"the simulation needs about {_gb(self.total)} GB of memory, more than the "
            f"{_gb(self.available)} GB {self.where}: {advice}"
        )


class RunTooLarge(ValueError):
    """A run whose estimated memory exceeds what the machine holds; ``estimate`` is the
    ``MemoryEstimate`` (so that a caller can word the advice its own way)."""

    def __init__(self, estimate: MemoryEstimate):
        super().__init__(estimate.message())
        self.estimate = estimate


def _gb(n: int) -> str:
    """Bytes as GB: 3 significant digits, whole GB with thousands separators from 1000 GB."""
    x = n / 1e9
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def memory_estimate(cfg_kwargs: dict, sizes: dict) -> MemoryEstimate:
    """The estimated memory of a run (``cfg_kwargs`` as for ``plan_sizes``, ``sizes``
    its result) against ``available_memory``."""
    available, where = available_memory()
    rmax = cfg_kwargs["max_ratio"]
    per = replica_bytes(cfg_kwargs, sizes["chunk_steps"], sizes["requests_per_chunk"])
    return MemoryEstimate(
        statistics=cfg_kwargs["num_replicas"] * statistics_bytes(rmax, cfg_kwargs["num_bins"]),
        working=sizes["replica_batch_size"] * per,
        available=available,
        where=where,
        num_replicas=int(cfg_kwargs["num_replicas"]),
        max_ratio=int(rmax),
        batch_size=int(cfg_kwargs["batch_size"]),
    )
