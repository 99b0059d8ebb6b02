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
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import time
import tomllib
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._data._io import BUNDLED_TRACES, _resolve_trace, load_trace, parse_hardware_spec, parse_workload_spec
from .._engine import MAX_INDEX as _MAX_INDEX
from .._engine import START_MODES, EngineConfig, plan_sizes, replica_bytes, rerun_on_overflow, simulate_all_ratios
from .._latency import COEFFICIENT_NAMES, COMM_SCALINGS, PRESETS, LatencyModel
from .._step import as_step_model
from .._workload._core import PREFILL_FAMILIES, Geometric

MANIFEST = "_manifest.json"
_FORMAT = "afdjax-sweep/1"

WORKLOAD_FLOATS = ("mu_p", "mu_d", "prefill_sigma")
METRICS = (
    "throughput_per_instance",
    "stderr",
    "attention_idle_fraction",
    "ffn_idle_fraction",
    "mean_cycle_time",
    "cycle_time_std",
    "link_idle_fraction",
    "pipeline_bubble_fraction",
)
SETTINGS_DEFAULTS = dict(
    steps=2000,
    replicas=8,
    seed=0,
    start="stationary",
    warmup=None,  # None: each group's step model default (0 for the barrier, 2 m for a pipeline)
    ratios=None,  # default 1..32
    quantile_levels=[0.5, 0.9, 0.99],
    num_bins=4096,
    common_random_numbers=True,
)
_WORKLOAD_KEYS = {
    "geometric": ("kind", "mu_p", "mu_d", "prefill", "sigma"),
    "trace": ("kind", "trace", "prefill_column", "decode_column", "tokens_per_step"),
    "spec": ("kind", "spec"),
}
_HARDWARE_KEYS = ("preset", "spec", "comm_scaling", *COEFFICIENT_NAMES)
_GRID_KEYS = ("workload", "hardware", "batch_size", "micro_batches")


# ------------------------------------------------------------------------ grid parsing
def _where(source: str, key: str) -> str:
    return f"{source}: {key}"


def _axis(value, key: str, source: str, *, integer: bool = False, minimum: float = 0.0) -> list:
    """A scalar, a list, or a range table ``{start, stop, num[, spacing]}`` / ``{start, stop, step}``."""
    kind = "integers" if integer else "numbers"
    allowed = f"a number, a list of {kind} or a range table {{start, stop, num}} / {{start, stop, step}}"
    if isinstance(value, dict):
        extra = set(value) - {"start", "stop", "num", "step", "spacing"}
        if extra or "start" not in value or "stop" not in value or (("num" in value) == ("step" in value)):
            raise ValueError(
                f"{_where(source, key)}={value!r} is not a valid range: expected {{start, stop, num[, spacing]}} "
                "or {start, stop, step}"
            )
        start, stop = (_scalar(value[k], f"{key}.{k}", source, integer=False, minimum=-math.inf) for k in ("start", "stop"))
        if "num" in value:
            num = _scalar(value["num"], f"{key}.num", source, integer=True, minimum=1)
            spacing = value.get("spacing", "linear")
            if spacing not in ("linear", "log"):
                raise ValueError(f"{_where(source, key)}.spacing={spacing!r} is invalid: expected linear or log")
            if spacing == "log":
                if start <= 0 or stop <= 0:
                    raise ValueError(f"{_where(source, key)}={value!r}: a log range needs start > 0 and stop > 0")
                values = np.geomspace(start, stop, int(num)).tolist()
            else:
                values = np.linspace(start, stop, int(num)).tolist()
        else:
            if "spacing" in value:
                raise ValueError(f"{_where(source, key)}: spacing applies to {{start, stop, num}} ranges only")
            step = _scalar(value["step"], f"{key}.step", source, integer=False, minimum=-math.inf)
            if step <= 0 or stop < start:
                raise ValueError(f"{_where(source, key)}={value!r}: expected step > 0 and stop >= start")
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [start + i * step for i in range(n)]
        if integer:
            rounded = [round(v) for v in values]
            if any(abs(v - r) > 1e-9 for v, r in zip(values, rounded)):
                raise ValueError(f"{_where(source, key)}={value!r}: the range does not give integers")
            values = rounded
        return [_scalar(v, key, source, integer=integer, minimum=minimum) for v in values]
    if isinstance(value, list):
        if not value:
            raise ValueError(f"{_where(source, key)}=[] is empty: expected {allowed}")
        return [_scalar(v, key, source, integer=integer, minimum=minimum) for v in value]
    return [_scalar(value, key, source, integer=integer, minimum=minimum)]


def _scalar(value, key: str, source: str, *, integer: bool, minimum: float):
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{_where(source, key)}={value!r} is invalid: expected {kind} >= {minimum:g}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{_where(source, key)}={value!r} is invalid: expected {kind} >= {minimum:g}")
        value = int(value)
    elif not math.isfinite(value):
        raise ValueError(f"{_where(source, key)}={value!r} is invalid: expected {kind} >= {minimum:g}")
    if value < minimum:
        raise ValueError(f"{_where(source, key)}={value!r} is invalid: expected {kind} >= {minimum:g}")
    return int(value) if integer else float(value)


def _strings(value, key: str, source: str, allowed=None) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ValueError(f"{_where(source, key)}={value!r} is invalid: expected a string or a list of strings")
    if allowed is not None:
        for v in values:
            if v not in allowed:
                raise ValueError(f"{_where(source, key)}={v!r} is invalid: expected one of {', '.join(allowed)}")
    return values


def _check_keys(table, allowed, source: str) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{source} must be a table, got {table!r}")
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise ValueError(f"{source}: unknown key {unknown[0]!r}; allowed: {', '.join(allowed)}")


def _blocks(value, name: str) -> list[dict]:
    if isinstance(value, dict):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return value
    raise ValueError(f"grid.{name} must be a table or a non-empty array of tables ([[grid.{name}]])")


@dataclasses.dataclass
class _Variant:
    """Points of one workload or hardware block that share their static part."""

    static: dict  # column name -> value (strings/ints), plus private "_workload"
    floats: dict  # column name -> (n,) float64


def _product(axes: dict[str, list]) -> dict[str, np.ndarray]:
    names = list(axes)
    rows = list(itertools.product(*(axes[n] for n in names)))
    return {n: np.asarray([r[i] for r in rows], dtype=np.float64) for i, n in enumerate(names)}


def _workload_variants(block: dict, source: str) -> list[_Variant]:
    kind = block.get("kind", "spec" if "spec" in block else "trace" if "trace" in block else "geometric")
    if kind not in _WORKLOAD_KEYS:
        raise ValueError(f"{source}: kind={kind!r} is invalid: expected one of {', '.join(_WORKLOAD_KEYS)}")
    _check_keys(block, _WORKLOAD_KEYS[kind], source)
    nan = np.full(1, np.nan)
    if kind == "geometric":
        for k in ("mu_p", "mu_d"):
            if k not in block:
                raise ValueError(f"{source}: missing key {k!r} (kind = \"geometric\" needs mu_p and mu_d)")
        mu_p = _axis(block["mu_p"], "mu_p", source)
        mu_d = _axis(block["mu_d"], "mu_d", source)
        sigma = _axis(block.get("sigma", 1.0), "sigma", source)
        out = []
        for family in _strings(block.get("prefill", "constant"), "prefill", source, PREFILL_FAMILIES):
            # sigma only shapes the lognormal family; other families ignore it (NaN column).
            floats = _product(dict(mu_p=mu_p, mu_d=mu_d, prefill_sigma=sigma if family == "lognormal" else [math.nan]))
            static = dict(workload="geometric", prefill=family, trace="", tokens_per_step=1)
            out.append(_Variant(static, floats))
        return out
    if kind == "trace":
        if "trace" not in block:
            raise ValueError(f"{source}: missing key 'trace' (a bundled name {', '.join(BUNDLED_TRACES)} or a path)")
        columns = {}
        for k in ("prefill_column", "decode_column"):
            if k in block:
                columns[k] = _strings(block[k], k, source)
                if len(columns[k]) != 1:
                    raise ValueError(f"{_where(source, k)} must be one string")
                columns[k] = columns[k][0]
        out = []
        for trace in _strings(block["trace"], "trace", source):
            for tps in _axis(block.get("tokens_per_step", 1), "tokens_per_step", source, integer=True, minimum=1):
                wl = load_trace(trace, tokens_per_step=tps, **columns)
                static = dict(workload=f"trace:{trace}", prefill="trace", trace=trace, tokens_per_step=tps, _workload=wl)
                out.append(_Variant(static, dict(mu_p=nan, mu_d=nan, prefill_sigma=nan)))
        return out
    out = []
    for spec in _strings(block["spec"], "spec", source):
        wl = parse_workload_spec(spec)
        if isinstance(wl, Geometric):
            floats = dict(
                mu_p=np.array([float(wl.mu_p)]),
                mu_d=np.array([float(wl.mu_d)]),
                prefill_sigma=np.array([float(wl.prefill_sigma) if wl.prefill == "lognormal" else math.nan]),
            )
            out.append(_Variant(dict(workload="geometric", prefill=wl.prefill, trace="", tokens_per_step=1), floats))
        else:
            static = dict(workload=spec, prefill="trace", trace=spec, tokens_per_step=1, _workload=wl)
            out.append(_Variant(static, dict(mu_p=nan, mu_d=nan, prefill_sigma=nan)))
    return out


def _hardware_variants(block: dict, source: str) -> list[_Variant]:
    _check_keys(block, _HARDWARE_KEYS, source)
    if "preset" in block and "spec" in block:
        raise ValueError(f"{source}: give preset or spec, not both")
    bases: list[tuple[str, dict]] = []
    if "preset" in block:
        for name in _strings(block["preset"], "preset", source, sorted(PRESETS)):
            bases.append((name, dict(PRESETS[name]) | {"comm_scaling": "batch"}))
    elif "spec" in block:
        for spec in _strings(block["spec"], "spec", source):
            lat = parse_hardware_spec(spec)
            bases.append((spec, lat.coefficients() | {"comm_scaling": lat.comm_scaling}))
    else:
        missing = [k for k in COEFFICIENT_NAMES if k not in block]
        if missing:
            raise ValueError(
                f"{source}: missing coefficient {missing[0]!r}: give preset = \"...\" ({', '.join(sorted(PRESETS))}), "
                f"spec = \"...\", or all of {', '.join(COEFFICIENT_NAMES)}"
            )
        bases.append(("custom", {"comm_scaling": "batch"}))
    out = []
    for label, base in bases:
        scalings = _strings(block.get("comm_scaling", base["comm_scaling"]), "comm_scaling", source, COMM_SCALINGS)
        axes = {k: _axis(block[k], k, source) if k in block else [base[k]] for k in COEFFICIENT_NAMES}
        floats = _product(axes)
        for scaling in scalings:
            out.append(_Variant(dict(hardware=label, comm_scaling=scaling), floats))
    return out


def _settings(table: dict, source: str) -> dict:
    _check_keys(table, tuple(SETTINGS_DEFAULTS), source)
    s = dict(SETTINGS_DEFAULTS) | table
    s["steps"] = _scalar(s["steps"], "steps", source, integer=True, minimum=1)
    s["replicas"] = _scalar(s["replicas"], "replicas", source, integer=True, minimum=1)
    s["seed"] = _scalar(s["seed"], "seed", source, integer=True, minimum=0)
    if s["warmup"] is not None:
        s["warmup"] = _scalar(s["warmup"], "warmup", source, integer=True, minimum=0)
    s["num_bins"] = _scalar(s["num_bins"], "num_bins", source, integer=True, minimum=16)
    if s["start"] not in START_MODES:
        raise ValueError(f"{source}: start={s['start']!r} is invalid: expected one of {', '.join(START_MODES)}")
    if not isinstance(s["common_random_numbers"], bool):
        raise ValueError(f"{source}: common_random_numbers={s['common_random_numbers']!r} is invalid: expected true or false")
    ratios = s["ratios"] if s["ratios"] is not None else {"start": 1, "stop": 32, "step": 1}
    ratios = sorted(set(_axis(ratios, "ratios", source, integer=True, minimum=1)))
    if ratios[-1] > _MAX_INDEX:
        raise ValueError(f"{source}: ratios has max {ratios[-1]}: expected ratios <= {_MAX_INDEX}")
    s["ratios"] = ratios
    levels = s["quantile_levels"]
    if not isinstance(levels, list) or not levels or not all(
        isinstance(q, (int, float)) and not isinstance(q, bool) and 0 < q < 1 for q in levels
    ):
        raise ValueError(f"{source}: quantile_levels={levels!r} is invalid: expected a list of levels in (0, 1)")
    s["quantile_levels"] = [float(q) for q in levels]
    return s


@dataclasses.dataclass
class _Group:
    static: dict  # columns shared by the group's points (+ "_workload" for traces)
    batch_size: int
    micro_batches: int | None
    floats: dict  # column -> (n,) float64: mu_p, mu_d, prefill_sigma, six coefficients
    first_point: int = 0
    index: int = 0

    @property
    def size(self) -> int:
        return len(self.floats["mu_d"])


class SweepGrid:
    """A parsed, validated sweep grid (see :func:`load_grid` and the README's TOML schema).

    ``groups`` partition the points by what fixes shapes; ``num_points`` is the grid size
    and ``settings`` the run settings (steps, replicas, seed, ...).
    """

    def __init__(self, mapping: dict, source: str = "grid"):
        if not isinstance(mapping, dict):
            raise ValueError(f"{source}: expected a table with [grid] and [settings]")
        _check_keys(mapping, ("grid", "settings"), source)
        if "grid" not in mapping:
            raise ValueError(f"{source}: missing the [grid] table")
        grid = mapping["grid"]
        _check_keys(grid, _GRID_KEYS, f"{source}: [grid]")
        for k in ("workload", "hardware"):
            if k not in grid:
                raise ValueError(f"{source}: [grid] is missing {k!r} (add a [[grid.{k}]] table)")
        self.source = source
        self.settings = _settings(mapping.get("settings", {}), f"{source}: [settings]")
        batch = _axis(grid.get("batch_size", 256), "batch_size", f"{source}: [grid]", integer=True, minimum=1)
        for b in batch:
            if b > _MAX_INDEX:
                raise ValueError(f"{source}: [grid]: batch_size={b} is invalid: expected an integer in [1, {_MAX_INDEX}]")
        micro = grid.get("micro_batches")
        micro = [None] if micro is None else _axis(micro, "micro_batches", f"{source}: [grid]", integer=True, minimum=1)
        for m in micro:
            if m is not None and m > min(batch):
                raise ValueError(
                    f"{source}: [grid]: micro_batches={m} is invalid with batch_size={min(batch)}: "
                    "expected micro_batches <= every batch_size (each micro-batch needs a slot)"
                )
        workloads = [
            v
            for i, b in enumerate(_blocks(grid["workload"], "workload"))
            for v in _workload_variants(b, f"{source}: [[grid.workload]] {i + 1}")
        ]
        hardware = [
            v
            for i, b in enumerate(_blocks(grid["hardware"], "hardware"))
            for v in _hardware_variants(b, f"{source}: [[grid.hardware]] {i + 1}")
        ]
        groups: dict[tuple, _Group] = {}
        for wv, hv, B, m in itertools.product(workloads, hardware, batch, micro):
            static = {**wv.static, **hv.static}
            key = (tuple((k, v) for k, v in static.items() if k != "_workload"), B, m)
            nw, nh = len(wv.floats["mu_d"]), len(hv.floats["alpha_a"])
            floats = {k: np.repeat(v, nh) for k, v in wv.floats.items()}
            floats |= {k: np.tile(v, nw) for k, v in hv.floats.items()}
            if key in groups:
                g = groups[key]
                g.floats = {k: np.concatenate([g.floats[k], floats[k]]) for k in floats}
            else:
                groups[key] = _Group(static, B, m, floats)
        self.groups = list(groups.values())
        first = 0
        for i, g in enumerate(self.groups):
            g.first_point, g.index = first, i
            first += g.size
        self.num_points = first
        self.mapping = json.loads(json.dumps(mapping))  # plain JSON types
        self._traces = sorted({g.static["trace"] for g in self.groups if "_workload" in g.static})

    def identity(self) -> dict:
        """What a sweep's numbers depend on (compared on resume)."""
        traces = {}
        for t in self._traces:
            head = t.split(",", 1)[0] if t.startswith("trace:") else t
            path = _resolve_trace(head.removeprefix("trace:"))
            traces[t] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        from .. import __version__

        return dict(
            format=_FORMAT,
            grid=self.mapping.get("grid"),
            settings=self.settings,
            trace_sha256=traces,
            afdjax_version=__version__,
            float_dtype=str(jnp.zeros(()).dtype),
        )

    def grid_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def load_grid(grid) -> SweepGrid:
    """A :class:`SweepGrid` from a TOML file path, a TOML string's parsed mapping, or a grid."""
    if isinstance(grid, SweepGrid):
        return grid
    if isinstance(grid, dict):
        return SweepGrid(grid)
    path = Path(os.fspath(grid)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"grid file {os.fspath(grid)!r} does not exist")
    try:
        mapping = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"grid file {os.fspath(grid)!r} is not valid TOML: {err}") from None
    return SweepGrid(mapping, source=f"grid file {os.fspath(grid)!r}")


# --------------------------------------------------------------------------- evaluation
@dataclasses.dataclass
class SweepSummary:
    """What :func:`sweep` did."""

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
                keys, workload, latency)
            out = jax.tree_util.tree_map(lambda x: np.asarray(x)[: len(local)], out)
            return out, np.asarray(covered)[: len(local)]

        # the engine's retry loop: same random numbers with a larger request buffer
        return rerun_on_overflow(run, sizes, who="afdjax.sweep", warn=False), floats


def _theta(g: _Group, floats: dict) -> np.ndarray:
    if "_workload" in g.static:
        return np.full(len(floats["mu_d"]), float(g.static["_workload"].theta()))
    return floats["mu_p"] + floats["mu_d"]


def _table(g: _Group, points: np.ndarray, floats: dict, out: dict, settings: dict):
    import pyarrow as pa

    ratios = np.asarray(settings["ratios"])
    idx = ratios - 1
    n, k = len(points), len(ratios)
    thr = out["throughput_per_instance"][:, idx]  # (n, k)
    best = ratios[np.argmax(thr, axis=1)]
    rep = lambda a: np.repeat(np.asarray(a)[: n], k)  # noqa: E731
    cols = {
        "point": pa.array(rep(points), pa.int64()),
        "group": pa.array(np.full(n * k, g.index), pa.int32()),
        "workload": pa.array([g.static["workload"]] * (n * k), pa.string()),
        "prefill": pa.array([g.static["prefill"]] * (n * k), pa.string()),
        "trace": pa.array([g.static["trace"]] * (n * k), pa.string()),
        "tokens_per_step": pa.array(np.full(n * k, g.static["tokens_per_step"]), pa.int64()),
    }
    for name in WORKLOAD_FLOATS:
        cols[name] = pa.array(rep(floats[name][:n]), pa.float64())
    cols["theta_tokens"] = pa.array(rep(_theta(g, floats)[:n]), pa.float64())
    cols["hardware"] = pa.array([g.static["hardware"]] * (n * k), pa.string())
    cols["comm_scaling"] = pa.array([g.static["comm_scaling"]] * (n * k), pa.string())
    for name in COEFFICIENT_NAMES:
        cols[name] = pa.array(rep(floats[name][:n]), pa.float64())
    cols["batch_size"] = pa.array(np.full(n * k, g.batch_size), pa.int64())
    cols["micro_batches"] = pa.array([g.micro_batches] * (n * k), pa.int64())
    cols["ratio"] = pa.array(np.tile(ratios, n), pa.int64())
    for name in METRICS:
        cols[name] = pa.array(np.asarray(out[name][:, idx], np.float64).reshape(-1), pa.float64())
    q = out["cycle_time_quantiles"][:, idx, :]
    for i, level in enumerate(settings["quantile_levels"]):
        cols[f"cycle_time_p{100 * level:g}".replace(".", "_")] = pa.array(
            np.asarray(q[..., i], np.float64).reshape(-1), pa.float64()
        )
    cols["mean_slot_load_tokens"] = pa.array(rep(out["mean_slot_load_tokens"]), pa.float64())
    kv = out["kv_load_quantiles"]  # (n, q): per point, pooled over instances (independent of r)
    for i, level in enumerate(settings["quantile_levels"]):
        cols[f"kv_load_p{100 * level:g}_tokens".replace(".", "_")] = pa.array(rep(kv[:, i]), pa.float64())
    cols["kv_load_max_tokens"] = pa.array(rep(out["kv_load_max_tokens"]), pa.float64())
    cols["best_ratio"] = pa.array(rep(best), pa.int64())
    cols["is_best"] = pa.array((np.tile(ratios, n) == rep(best)), pa.bool_())
    return pa.table(cols)


# ------------------------------------------------------------------------- the sweep
def _chunk_name(g: _Group, points: np.ndarray) -> str:
    return f"chunk-g{g.index:04d}-{int(points[0]):09d}-n{len(points):06d}.parquet"


def _done_points(out: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    done = [np.unique(pq.read_table(f, columns=["point"]).column("point").to_numpy()) for f in sorted(out.glob("chunk-*.parquet"))]
    return np.concatenate(done) if done else np.zeros(0, np.int64)


def _prepare_dir(out: Path, manifest: dict, overwrite: bool, clean_temporaries: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {os.fspath(out)!r} is a file, expected a folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    if path.exists() and not overwrite:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise ValueError(f"{os.fspath(path)!r} is unreadable; remove the folder or use overwrite") from None
        if old.get("grid_hash") != manifest["grid_hash"]:
            diff = [k for k in manifest["identity"] if old.get("identity", {}).get(k) != manifest["identity"][k]]
            raise ValueError(
                f"output folder {os.fspath(out)!r} holds a different sweep (its {', '.join(diff) or 'grid'} "
                "differ); use another --out, or --overwrite to discard its results"
            )
    else:
        entries = [p for p in out.iterdir() if p.name != MANIFEST]
        ours = [p for p in entries if p.name.startswith(("chunk-", ".chunk-"))]
        if len(entries) != len(ours) and not path.exists():
            raise ValueError(f"output folder {os.fspath(out)!r} is not empty and is not an afdjax sweep; use another --out")
        if ours and not path.exists() and not overwrite:
            raise ValueError(
                f"output folder {os.fspath(out)!r} holds chunk files but no {MANIFEST}, so they cannot be checked "
                "against this grid; use another --out, or --overwrite to discard them"
            )
        if overwrite:
            for p in ours:
                p.unlink()
        _atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True))
    if clean_temporaries:
        for p in out.glob(".chunk-*"):
            p.unlink(missing_ok=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_chunk(out: Path, name: str, table) -> None:
    import pyarrow.parquet as pq

    tmp = out / f".{name}.tmp-{os.getpid()}"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out / name)


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

    **Arguments:**

    - ``grid``: a TOML file path, the parsed mapping of one, or a :class:`SweepGrid`
      (schema: README, "Large sweeps"; example ``experiments/sweep_example.toml``).
    - ``out_dir``: results folder. An existing folder holding the same sweep is resumed
      (finished chunks are kept); one holding a different sweep is refused.
    - ``memory_budget_bytes``: bound on one chunk's working memory (summed over
      devices), from the engine's per-replica sizing; the chunk size follows from it.
    - ``progress``: a tqdm bar (points, rate, ETA) on stderr when it is a terminal.
    - ``overwrite``: discard the results of a different sweep in ``out_dir``.
    - ``devices``: devices to shard chunks over (default ``jax.local_devices()``).
    - ``max_chunk_points``: upper bound on points per chunk (so results land in files
      regularly); ``None`` for memory-only sizing.
    - ``process_index``, ``process_count``: the multi-host share (default
      ``jax.process_index()``, ``jax.process_count()``): process ``p`` takes the points
      whose id is ``p`` modulo ``process_count``.

    **Returns:** a :class:`SweepSummary`. Read the results with :func:`read_sweep` or
    ``pandas.read_parquet(out_dir)``.
    """
    from tqdm.auto import tqdm

    g_obj = load_grid(grid)
    s = g_obj.settings
    if isinstance(memory_budget_bytes, bool) or not isinstance(memory_budget_bytes, (int, np.integer)) or memory_budget_bytes < 2**20:
        raise ValueError(f"memory_budget_bytes={memory_budget_bytes!r} is invalid: expected an integer >= 1 MiB")
    if max_chunk_points is not None and (not isinstance(max_chunk_points, (int, np.integer)) or max_chunk_points < 1):
        raise ValueError(f"max_chunk_points={max_chunk_points!r} is invalid: expected an integer >= 1 or None")
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
    manifest = dict(
        format=_FORMAT,
        grid_hash=grid_hash,
        identity=identity,
        num_points=g_obj.num_points,
        key=dict(
            seed=s["seed"],
            key_words=_key_words(s["seed"]).tolist(),
            common_random_numbers=s["common_random_numbers"],
            rule="every point uses jax.random.key(seed)" if s["common_random_numbers"] else "point i uses fold_in(key(seed), i)",
        ),
        afdjax_version=__version__,
        groups=[
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
    )
    out = Path(os.fspath(out_dir)).expanduser()
    _prepare_dir(out, manifest, overwrite, clean_temporaries=pc == 1)
    done = _done_points(out)
    t0 = time.perf_counter()
    evaluator = _Evaluator(s, devices)
    n_dev = len(devices)
    owned_total = sum(1 for i in range(g_obj.num_points) if i % pc == pi) if pc > 1 else g_obj.num_points
    done_set = np.zeros(g_obj.num_points, bool)
    done_set[done[(done >= 0) & (done < g_obj.num_points)]] = True
    skipped = int(np.sum(done_set[np.arange(pi, g_obj.num_points, pc)]))
    computed = chunks = 0
    bar = tqdm(total=owned_total, initial=skipped, unit="pt", desc="afdjax sweep", disable=None if progress else True,
               dynamic_ncols=True, smoothing=0.1)
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


def read_sweep(out_dir):
    """The results of a sweep as a pandas DataFrame, one row per (point, ratio), sorted.

    Equivalent to ``pandas.read_parquet(out_dir)`` plus sorting; the manifest is
    ``out_dir/_manifest.json``. Raises ``ValueError`` if ``out_dir`` holds no sweep.
    """
    import pandas as pd

    out = Path(os.fspath(out_dir)).expanduser()
    if not (out / MANIFEST).is_file():
        raise ValueError(f"{os.fspath(out)!r} is not an afdjax sweep folder (no {MANIFEST})")
    if not any(out.glob("chunk-*.parquet")):
        raise ValueError(f"{os.fspath(out)!r} holds no finished chunks yet")
    return pd.read_parquet(out).sort_values(["point", "ratio"]).reset_index(drop=True)


def read_manifest(out_dir) -> dict:
    """The sweep's ``_manifest.json`` (grid, settings, key, version, grid hash)."""
    return json.loads((Path(os.fspath(out_dir)).expanduser() / MANIFEST).read_text(encoding="utf-8"))
