"""Large parameter sweeps: bounded memory, several devices, resumable Parquet results.

A sweep is a grid of *points* (workload x hardware x batch size x micro-batches); every
point is simulated for all ratios ``r = 1..r_max`` in one pass of the engine. The data
flow is the engine's, vectorised over points:

* **Groups.** What fixes shapes (batch size, micro-batches, the prefill family or the
  trace, ``comm_scaling``) is static: points that share it form a *group*. Point ids are
  assigned group by group (``point`` column), in grid order within a group.
* **Chunks.** Inside a group the float parameters (``mu_p``, ``mu_d``, ``prefill_sigma``
  and the six latency coefficients) are array leaves of a batched ``Workload`` /
  ``LatencyModel``; the pure engine core ``simulate_all_ratios`` is ``vmap``-ed over a chunk
  of points under one ``jax.jit``. Buffer sizes come from the engine's own ``plan_sizes``
  for the worst case in the group (the smallest mean decode length), so one compilation
  serves the group; the last chunk is padded to the same shape. The chunk size is the
  largest multiple of the device count whose working memory (``replica_bytes``, the per-replica
  estimate times replicas in flight, plus the per-replica sums) fits
  ``memory_budget_bytes``.
* **Devices.** Every chunk's point axis is sharded over a 1-D mesh of the local devices
  (``NamedSharding(Mesh(devices, ("points",)), P("points"))``); XLA partitions the
  vmapped program, so each device runs its share of the points.
* **Keys.** By default every point uses the same key (common random numbers across the
  grid: differences between points are not sampling noise). With
  ``common_random_numbers = false`` point ``i`` uses ``fold_in(key, i)``. Either way a
  point's numbers depend only on its parameters, the key and the settings, never on
  the chunking, the device count or on resuming.
* **Files.** ``OUT/_manifest.json`` (grid, settings, key, version, grid hash) and one
  Parquet file per finished chunk, ``OUT/chunk-gGGGG-PPPPPPPPP-nNNNNN.parquet``, written
  to a dot-prefixed temporary name and then ``os.replace``-d. ``pd.read_parquet(OUT)``
  reads every finished chunk (pyarrow skips names starting with ``.`` or ``_``, so
  neither the manifest nor temporary files are read as results).
* **Resume.** Running the same sweep again reads the ``point`` column of the finished
  chunk files and computes only the missing points. A different grid, settings,
  afdjax version or float dtype is refused.
* **One writer.** A running sweep holds ``OUT/_lock.<process index>`` (``_lock``); a
  second sweep into ``OUT`` is refused, except the other processes of the same
  multi-process split of the same grid, which write disjoint points.

Layout: ``_grid`` (the TOML schema and its expansion into groups of points), this
module (running: chunk sizes, the compiled chunk function, devices, [`sweep`][afdjax.sweep]),
``_store`` (the folder, manifest, Parquet chunks, resume and [`read_sweep`][afdjax.read_sweep]) and
``_lock`` (the folder's writer locks).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._engine import EngineConfig, plan_sizes, replica_bytes, rerun_on_overflow, simulate_all_ratios
from .._latency import COEFFICIENT_NAMES, LatencyModel
from .._step import as_step_model
from .._validate import check_int
from .._workload import Geometric
from ._grid import _FORMAT, WORKLOAD_FLOATS, SweepGrid, _Group, load_grid
from ._lock import acquire as acquire_lock
from ._store import (
    MANIFEST,
    METRICS,
    _chunk_name,
    _done_points,
    _prepare_dir,
    _table,
    _write_chunk,
    check_dir,
    clean_temporaries,
    read_manifest,
    read_sweep,
)

__all__ = [
    "MANIFEST",
    "METRICS",
    "WORKLOAD_FLOATS",
    "SweepGrid",
    "SweepSummary",
    "load_grid",
    "read_manifest",
    "read_sweep",
    "sweep",
]


# --------------------------------------------------------------------------- evaluation
@dataclasses.dataclass
class SweepSummary:
    """What [`sweep`][afdjax.sweep] did.

    Attributes:
        out_dir: the results folder.
        num_points: grid points in the sweep.
        points_computed: points simulated by this call.
        points_skipped: points already in ``out_dir`` (resumed).
        chunks_written: Parquet files written by this call.
        seconds: wall time of this call (s).
        grid_hash: the hash of grid, settings, key and version in the manifest.
        num_devices: local devices the chunks were sharded over.
        complete: whether every point of the grid now has results.
    """

    out_dir: str
    num_points: int
    points_computed: int
    points_skipped: int
    chunks_written: int
    seconds: float
    grid_hash: str
    num_devices: int
    complete: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _key_words(seed: int) -> np.ndarray:
    return np.asarray(jax.random.bits(jax.random.key(seed), (2,), dtype=jnp.uint32))


def _point_key_words(seed: int, points: np.ndarray) -> np.ndarray:
    key = jax.random.key(seed)
    words = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(key, i), (2,), dtype=jnp.uint32))(
        jnp.asarray(points, dtype=jnp.uint32)
    )
    return np.asarray(words)


def _group_sizes(g: _Group, settings: dict, memory_budget_bytes: int, n_dev: int, max_chunk_points: int | None):
    """Buffer sizes (worst case in the group) and the chunk size in points."""
    s = settings
    model = as_step_model(None, g.micro_batches)
    base = dict(
        max_ratio=s["ratios"][-1],
        batch_size=g.batch_size,
        num_steps=s["steps"],
        warmup_steps=model.default_warmup_steps() if s["warmup"] is None else s["warmup"],
        num_replicas=s["replicas"],
        start=s["start"],
        num_bins=s["num_bins"],
        step_model=model,
    )
    if "_workload" in g.static:
        worst = g.static["_workload"]
    else:  # the smallest mean decode length needs the most requests per chunk
        worst = Geometric(0.0, float(np.min(g.floats["mu_d"])))
    sizes = plan_sizes(worst, base, None, None, 1, memory_budget_bytes)
    per_replica = replica_bytes(base, sizes["chunk_steps"], sizes["requests_per_chunk"])
    # The engine stacks each replica's sums (histogram and per-ratio accumulators).
    stacked = s["replicas"] * base["max_ratio"] * (4 * s["num_bins"] + 8 * 12)
    inflight = max(1, memory_budget_bytes // per_replica)  # point-replicas advancing together
    group_padded = -(-g.size // n_dev) * n_dev
    replica_batch = int(min(s["replicas"], max(1, inflight // group_padded)))
    per_point = replica_batch * per_replica + stacked
    chunk = max(1, memory_budget_bytes // per_point)
    if per_point * n_dev > memory_budget_bytes:
        warnings.warn(
            f"afdjax.sweep: one point of group {g.index} (batch_size={g.batch_size}) needs about "
            f"{per_point / 2**20:.0f} MiB, over memory_budget_bytes / devices = "
            f"{memory_budget_bytes / n_dev / 2**20:.0f} MiB; running one point per device",
            RuntimeWarning,
            stacklevel=3,
        )
    if max_chunk_points is not None:
        chunk = min(chunk, max_chunk_points)
    chunk = max(n_dev, chunk // n_dev * n_dev)
    chunk = min(chunk, group_padded)
    sizes["replica_batch_size"] = replica_batch
    return base, sizes, chunk, per_point


def _batched_workload(g: _Group, floats: dict):
    if "_workload" in g.static:
        return g.static["_workload"], False
    sigma = np.where(np.isnan(floats["prefill_sigma"]), 1.0, floats["prefill_sigma"])
    return Geometric(floats["mu_p"], floats["mu_d"], prefill=g.static["prefill"], prefill_sigma=sigma), True


def _batched_latency(g: _Group, floats: dict):
    return LatencyModel(**{k: floats[k] for k in COEFFICIENT_NAMES}, comm_scaling=g.static["comm_scaling"])


@functools.lru_cache(maxsize=64)
def _make_chunk_fn(cfg: EngineConfig, levels: tuple, workload_batched: bool, crn: bool):
    """One jitted, vmapped engine call per group shape (cached across sweeps in a process;
    jit itself keys the compiled program on the chunk's shape and sharding)."""

    def one(key_words, workload, latency):
        result, covered = simulate_all_ratios(key_words, workload, latency, levels, cfg)
        out = {name: getattr(result, name) for name in METRICS}
        out["cycle_time_quantiles"] = result.cycle_time_quantiles
        out["mean_slot_load_tokens"] = result.mean_slot_load_tokens
        out["kv_load_quantiles"] = result.kv_load_quantiles
        out["kv_load_max_tokens"] = result.kv_load_max_tokens
        return out, covered

    in_axes = (None if crn else 0, 0 if workload_batched else None, 0)
    return jax.jit(jax.vmap(one, in_axes=in_axes))


class _Evaluator:
    """Compiled chunk functions and the device mesh, reused across chunks."""

    def __init__(self, settings: dict, devices):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        self.settings = settings
        self.devices = list(devices)
        mesh = Mesh(np.asarray(self.devices), ("points",))
        self.sharded = NamedSharding(mesh, PartitionSpec("points"))
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.levels = tuple(settings["quantile_levels"])

    def put(self, tree, sharding):
        return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)

    def run(self, g: _Group, base: dict, sizes: dict, points: np.ndarray, chunk: int) -> tuple[dict, dict]:
        """Simulate ``points`` (global ids inside group ``g``), padded to ``chunk``."""
        s = self.settings
        local = points - g.first_point
        padded = np.concatenate([local, np.full(chunk - len(local), local[0])])
        floats = {k: v[padded] for k, v in g.floats.items()}
        workload, wl_batched = _batched_workload(g, floats)
        latency = _batched_latency(g, floats)
        crn = s["common_random_numbers"]
        if crn:
            keys = self.put(jnp.asarray(_key_words(s["seed"])), self.replicated)
        else:
            keys = self.put(jnp.asarray(_point_key_words(s["seed"], g.first_point + padded)), self.sharded)
        workload = self.put(workload, self.sharded if wl_batched else self.replicated)
        latency = self.put(latency, self.sharded)

        def run(sizes):
            out, covered = _make_chunk_fn(EngineConfig(**base, **sizes), self.levels, wl_batched, crn)(
                keys, workload, latency
            )
            out = jax.tree_util.tree_map(lambda x: np.asarray(x)[: len(local)], out)
            return out, np.asarray(covered)[: len(local)]

        # the engine's retry loop: same random numbers with a larger request buffer
        return rerun_on_overflow(run, sizes, who="afdjax.sweep", warn=False), floats


def sweep(
    grid,
    out_dir,
    *,
    memory_budget_bytes: int = 512 * 2**20,
    progress: bool = True,
    overwrite: bool = False,
    devices=None,
    max_chunk_points: int | None = 4096,
    process_index: int | None = None,
    process_count: int | None = None,
) -> SweepSummary:
    """Run (or resume) a sweep over a grid; results go to Parquet files in ``out_dir``.

    Arguments:
        grid: a TOML file path, the parsed mapping of one, or a [`SweepGrid`][afdjax.SweepGrid]
            (schema: README, "Large sweeps"; example ``experiments/sweep_example.toml``).
        out_dir: results folder. An existing folder holding the same sweep is resumed
            (finished chunks are kept); one holding a different sweep is refused. One writer
            at a time: see "One writer per folder" below.
        memory_budget_bytes: bound on one chunk's working memory (summed over
            devices), from the engine's per-replica sizing; the chunk size follows from it.
        progress: a tqdm bar (points, rate, ETA) on stderr when it is a terminal.
        overwrite: discard the results of a different sweep in ``out_dir`` (in a
            multi-process sweep process 0 does it; the others wait for it, at most two minutes).
        devices: devices to shard chunks over (default ``jax.local_devices()``).
        max_chunk_points: upper bound on points per chunk (so results land in files
            regularly); ``None`` for memory-only sizing.
        process_index: the multi-host share (default
            ``jax.process_index()``, ``jax.process_count()``): process ``p`` takes the points
            whose id is ``p`` modulo ``process_count``.
        process_count: see ``process_index``.

    **One writer per folder.** While it runs, a sweep holds the lock file
    ``out_dir/_lock.<p>`` (``p`` its process index, ``0`` for one process): JSON with its
    pid, host, start time (UTC), process index and count and grid hash, created
    atomically and held under ``fcntl.flock``; it is removed when the call ends, also on
    an exception. A second sweep into the same folder is refused with a ``ValueError``
    that names the folder and the owner (the command line: ``afdjax: error: ...``, exit
    code 2). A lock left by a process that ended without removing it (``kill -9``,
    ``os._exit``) is *stale* when it was written on this host and its ``flock`` is free
    (or, without ``flock``, its pid is gone): it is taken over with a ``RuntimeWarning``
    saying so. A lock from another host is never judged stale: the message names its
    host and pid and the file to remove if that process is gone.

    **Several processes** (the multi-host mode: every process of a ``jax.distributed``
    job calls ``sweep(grid, out_dir)`` with the same grid): process ``p`` of ``n`` holds
    ``_lock.<p>`` and cooperates with every other live lock of the same grid hash and
    the same ``n``; any other live lock (another grid, another ``n``, or the same slot
    ``p``) is refused, so of two jobs at most one writes. Each process writes only its own
    points, so no ``(point, ratio)`` row is written twice. Every process writes the same
    manifest atomically and accepts an identical one. Leftover temporary files are only
    removed by a process that sees no other live writer. ``complete`` in the summary is
    whether every point of the grid was in ``out_dir`` when this process finished: when
    processes end at different times only the last to finish reports ``True``;
    [`read_sweep`][afdjax.read_sweep] reads whatever is there.

    Returns:
        a [`SweepSummary`][afdjax.SweepSummary]. Read the results with [`read_sweep`][afdjax.read_sweep] or
        ``pandas.read_parquet(out_dir)``.
    """
    g_obj = load_grid(grid)
    s = g_obj.settings
    memory_budget_bytes = check_int("memory_budget_bytes", memory_budget_bytes, 2**20)  # at least 1 MiB
    if max_chunk_points is not None:
        max_chunk_points = check_int("max_chunk_points", max_chunk_points, 1)
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices=[] is invalid: expected at least one device")
    pi = jax.process_index() if process_index is None else int(process_index)
    pc = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= pi < pc:
        raise ValueError(f"process_index={pi} is invalid: expected 0 <= process_index < process_count={pc}")
    from .. import __version__

    identity = g_obj.identity()
    grid_hash = g_obj.grid_hash()
    manifest = {
        "format": _FORMAT,
        "grid_hash": grid_hash,
        "identity": identity,
        "num_points": g_obj.num_points,
        "key": {
            "seed": s["seed"],
            "key_words": _key_words(s["seed"]).tolist(),
            "common_random_numbers": s["common_random_numbers"],
            "rule": (
                "every point uses jax.random.key(seed)"
                if s["common_random_numbers"]
                else "point i uses fold_in(key(seed), i)"
            ),
        },
        "afdjax_version": __version__,
        "groups": [
            dict(
                index=i,
                first_point=g.first_point,
                num_points=g.size,
                batch_size=g.batch_size,
                micro_batches=g.micro_batches,
                **{k: v for k, v in g.static.items() if not k.startswith("_")},
            )
            for i, g in enumerate(g_obj.groups)
        ],
    }
    out = Path(os.fspath(out_dir)).expanduser()
    check_dir(out)
    lock = acquire_lock(out, pi, pc, grid_hash)
    try:
        _prepare_dir(out, manifest, overwrite, leader=pi == 0)
        if lock.alone:
            clean_temporaries(out, lock.mtime_ns)
        return _run(g_obj, out, devices, pi, pc, memory_budget_bytes, max_chunk_points, progress, grid_hash)
    finally:
        lock.release()


def _run(g_obj, out, devices, pi, pc, memory_budget_bytes, max_chunk_points, progress, grid_hash) -> SweepSummary:
    """The sweep proper, under the folder's lock: this process's missing points, chunk by chunk."""
    from tqdm.auto import tqdm

    s = g_obj.settings
    done = _done_points(out)
    t0 = time.perf_counter()
    evaluator = _Evaluator(s, devices)
    n_dev = len(devices)
    owned_total = sum(1 for i in range(g_obj.num_points) if i % pc == pi) if pc > 1 else g_obj.num_points
    done_set = np.zeros(g_obj.num_points, bool)
    done_set[done[(done >= 0) & (done < g_obj.num_points)]] = True
    skipped = int(np.sum(done_set[np.arange(pi, g_obj.num_points, pc)]))
    computed = chunks = 0
    bar = tqdm(
        total=owned_total,
        initial=skipped,
        unit="pt",
        desc="afdjax sweep",
        disable=None if progress else True,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    try:
        for g in g_obj.groups:
            ids = np.arange(g.first_point, g.first_point + g.size)
            todo = ids[(ids % pc == pi) & ~done_set[ids]]
            if len(todo) == 0:
                continue
            base, sizes, chunk, _ = _group_sizes(g, s, memory_budget_bytes, n_dev, max_chunk_points)
            for start in range(0, len(todo), chunk):
                points = todo[start : start + chunk]
                result, floats = evaluator.run(g, base, sizes, points, chunk)
                _write_chunk(out, _chunk_name(g, points), _table(g, points, floats, result, s))
                computed += len(points)
                chunks += 1
                bar.update(len(points))
    finally:
        bar.close()
    return SweepSummary(
        out_dir=os.fspath(out),
        num_points=g_obj.num_points,
        points_computed=computed,
        points_skipped=skipped,
        chunks_written=chunks,
        seconds=time.perf_counter() - t0,
        grid_hash=grid_hash,
        num_devices=n_dev,
        complete=bool(len(np.unique(_done_points(out))) == g_obj.num_points),
    )
