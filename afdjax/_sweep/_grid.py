"""Sweep grids: the TOML schema, its validation and its expansion into groups of points.

A grid (README, "Large sweeps"; ``experiments/sweep_example.toml``) names workloads,
hardware, batch sizes and micro-batch counts; its product is the sweep's *points*.
Points that share what fixes shapes (batch size, micro-batches, the prefill family or the
trace, ``comm_scaling``) form a *group*, numbered in grid order; the float parameters of
a group's points are columns of arrays. Every error names the file, the key and what
is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .._data import BUNDLED_TRACES, bundled_trace_path, load_trace, resolve_file
from .._engine import MAX_INDEX, START_MODES
from .._latency import COEFFICIENT_NAMES, COMM_SCALINGS, PRESETS
from .._specs import parse_hardware_spec, parse_workload_spec, read_toml
from .._workload import PREFILL_FAMILIES, Geometric

_FORMAT = "afdjax-sweep/1"

WORKLOAD_FLOATS = ("mu_p", "mu_d", "prefill_sigma")
SETTINGS_DEFAULTS = {
    "steps": 2000,
    "replicas": 8,
    "seed": 0,
    "start": "stationary",
    "warmup": None,  # None: each group's step model default (0 for the barrier, 2 m for a pipeline)
    "ratios": None,  # default 1..32
    "quantile_levels": [0.5, 0.9, 0.99],
    "num_bins": 4096,
    "common_random_numbers": True,
}
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
        start, stop = (
            _scalar(value[k], f"{key}.{k}", source, integer=False, minimum=-math.inf) for k in ("start", "stop")
        )
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
            n = math.floor((stop - start) / step + 1e-9) + 1
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
                raise ValueError(f'{source}: missing key {k!r} (kind = "geometric" needs mu_p and mu_d)')
        mu_p = _axis(block["mu_p"], "mu_p", source)
        mu_d = _axis(block["mu_d"], "mu_d", source)
        sigma = _axis(block.get("sigma", 1.0), "sigma", source)
        out = []
        for family in _strings(block.get("prefill", "constant"), "prefill", source, PREFILL_FAMILIES):
            # sigma only shapes the lognormal family; other families ignore it (NaN column).
            floats = _product(
                {"mu_p": mu_p, "mu_d": mu_d, "prefill_sigma": sigma if family == "lognormal" else [math.nan]}
            )
            static = {"workload": "geometric", "prefill": family, "trace": "", "tokens_per_step": 1}
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
                static = {
                    "workload": f"trace:{trace}",
                    "prefill": "trace",
                    "trace": trace,
                    "tokens_per_step": tps,
                    "_workload": wl,
                }
                out.append(_Variant(static, {"mu_p": nan, "mu_d": nan, "prefill_sigma": nan}))
        return out
    out = []
    for spec in _strings(block["spec"], "spec", source):
        wl = parse_workload_spec(spec)
        if isinstance(wl, Geometric):
            floats = {
                "mu_p": np.array([float(wl.mu_p)]),
                "mu_d": np.array([float(wl.mu_d)]),
                "prefill_sigma": np.array([float(wl.prefill_sigma) if wl.prefill == "lognormal" else math.nan]),
            }
            out.append(
                _Variant({"workload": "geometric", "prefill": wl.prefill, "trace": "", "tokens_per_step": 1}, floats)
            )
        else:
            kind = spec.partition(":")[0].strip().lower()  # trace, or a parametric spec (fixed:, uniform:, fitted:)
            trace = spec if kind == "trace" else ""
            prefill = "trace" if trace else kind
            static = {"workload": spec, "prefill": prefill, "trace": trace, "tokens_per_step": 1, "_workload": wl}
            out.append(_Variant(static, {"mu_p": nan, "mu_d": nan, "prefill_sigma": nan}))
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
                f'{source}: missing coefficient {missing[0]!r}: give preset = "..." ({", ".join(sorted(PRESETS))}), '
                f'spec = "...", or all of {", ".join(COEFFICIENT_NAMES)}'
            )
        bases.append(("custom", {"comm_scaling": "batch"}))
    out = []
    for label, base in bases:
        scalings = _strings(block.get("comm_scaling", base["comm_scaling"]), "comm_scaling", source, COMM_SCALINGS)
        axes = {k: _axis(block[k], k, source) if k in block else [base[k]] for k in COEFFICIENT_NAMES}
        floats = _product(axes)
        for scaling in scalings:
            out.append(_Variant({"hardware": label, "comm_scaling": scaling}, floats))
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
        raise ValueError(
            f"{source}: common_random_numbers={s['common_random_numbers']!r} is invalid: expected true or false"
        )
    ratios = s["ratios"] if s["ratios"] is not None else {"start": 1, "stop": 32, "step": 1}
    ratios = sorted(set(_axis(ratios, "ratios", source, integer=True, minimum=1)))
    if ratios[-1] > MAX_INDEX:
        raise ValueError(f"{source}: ratios has max {ratios[-1]}: expected ratios <= {MAX_INDEX}")
    s["ratios"] = ratios
    levels = s["quantile_levels"]
    if (
        not isinstance(levels, list)
        or not levels
        or not all(isinstance(q, (int, float)) and not isinstance(q, bool) and 0 < q < 1 for q in levels)
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
    """A parsed, validated sweep grid (see [`load_grid`][afdjax.load_grid] and the README's TOML schema).

    ``groups`` partition the points by what fixes shapes; ``num_points`` is the grid size
    and ``settings`` the run settings (steps, replicas, seed, ...).

    Arguments:
        mapping: the parsed TOML table with ``[grid]`` and ``[settings]``.
        source: a name for error messages (the file name).
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
            if b > MAX_INDEX:
                raise ValueError(
                    f"{source}: [grid]: batch_size={b} is invalid: expected an integer in [1, {MAX_INDEX}]"
                )
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
        self._traces = sorted({g.static["trace"] for g in self.groups if g.static.get("trace")})

    def identity(self) -> dict:
        """What a sweep's numbers depend on (compared on resume)."""
        traces = {}
        for t in self._traces:
            head = t.split(",", 1)[0] if t.startswith("trace:") else t
            name = head.removeprefix("trace:")
            path = bundled_trace_path(name) if name in BUNDLED_TRACES else resolve_file(name, "trace")
            traces[t] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        from .. import __version__

        return {
            "format": _FORMAT,
            "grid": self.mapping.get("grid"),
            "settings": self.settings,
            "trace_sha256": traces,
            "afdjax_version": __version__,
            "float_dtype": str(jnp.zeros(()).dtype),
        }

    def grid_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def load_grid(grid) -> SweepGrid:
    """A [`SweepGrid`][afdjax.SweepGrid] from a TOML file path, a TOML string's parsed mapping, or a grid.

    Arguments:
        grid: a TOML file path, a parsed mapping with ``[grid]`` and ``[settings]``, or a
            [`SweepGrid`][afdjax.SweepGrid].

    Returns:
        the validated [`SweepGrid`][afdjax.SweepGrid].
    """
    if isinstance(grid, SweepGrid):
        return grid
    if isinstance(grid, dict):
        return SweepGrid(grid)
    mapping = read_toml(grid, "grid")
    return SweepGrid(mapping, source=f"grid file {os.fspath(grid)!r}")
