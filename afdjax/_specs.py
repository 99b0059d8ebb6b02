"""Every user-facing string and file grammar of afdjax, in one module.

- workload specs: ``geometric:...`` and ``trace:PATH,...`` (``parse_workload_spec``); a file path ends at the
  first comma unless quoted: ``trace:"a,b.csv",decode=COL`` (``split_spec_path``);
- accelerator and model specs: ``NAME``, ``NAME,field=value,...`` or a TOML file with an ``[accelerator]`` /
  ``[model]`` table (``parse_accelerator_spec``, ``parse_model_spec``);
- hardware specs: a latency preset with overrides, inline coefficients, a hardware TOML file, or
  ``ACCELERATOR:MODEL[,option=value,...]`` (``parse_hardware_spec``, ``load_deployment``);
- TOML: the one TOML file reader (``read_toml``); the hardware TOML writers (``latency_to_toml``,
  ``deployment_to_toml``) are re-exported from ``afdjax._hardware``, which shares the table layout with the
  reader below.

Layer "specs": above the numerics it builds (workloads, latency models, hardware, traces, fitting), below the
applications and the CLI. Nothing here is traced by JAX; every parser raises ``ValueError`` (or
``FileNotFoundError``) with a message naming the spec and what is wrong.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from pathlib import Path

from ._data import load_trace, resolve_file
from ._fit import DECODE_FIT_FAMILIES, PREFILL_FIT_FAMILIES, fit_trace
from ._hardware import (
    ACCELERATOR_TABLE_KEYS,
    ACCELERATORS,
    DEPLOYMENT_TABLE_KEYS,
    LATENCY_PRESET_MODELS,
    LATENCY_TABLE_KEYS,
    MODEL_TABLE_KEYS,
    MODELS,
    STAGE_TABLES,
    Accelerator,
    Deployment,
    HardwareDerivation,
    ModelSpec,
    deployment_to_toml,
    derive_latency,
    latency_to_toml,
)
from ._latency import COEFFICIENT_NAMES, COMM_SCALINGS, PRESETS, LatencyModel
from ._validate import invalid
from ._workload import PREFILL_FAMILIES, FittedWorkload, Fixed, Geometric, Uniform, Workload

__all__ = [
    "SPEC_PATH_QUOTING",
    "deployment_to_toml",
    "derive_from_spec",
    "is_accelerator_model_spec",
    "latency_to_toml",
    "load_deployment",
    "parse_accelerator_spec",
    "parse_hardware_spec",
    "parse_model_spec",
    "parse_workload_spec",
    "read_toml",
    "split_spec_path",
]


# ============================================================================ TOML files and key=value lists
def read_toml(path, what: str) -> dict:
    """The parsed mapping of a TOML file.

    Arguments: ``path`` (a path, ``~`` expanded) and ``what`` (what the file is, e.g. ``"hardware"`` or
    ``"grid"``: errors say ``"{what} file 'PATH' ..."``). Raises ``FileNotFoundError`` if the file does not
    exist, ``ValueError`` if it is not a file, not UTF-8 text or not valid TOML."""
    text = os.fspath(path)
    p = resolve_file(text, what)
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{what} file {text!r} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{what} file {text!r} is not valid TOML: {err}") from None


def _bad_content(where: str, what: str) -> ValueError:
    """A spec or file whose content has the wrong shape: ``"{where}: {what}"``."""
    return ValueError(f"{where}: {what}")


SPEC_PATH_QUOTING = (
    "a file path in a spec ends at the first comma; quote a path that contains commas, "
    """e.g. trace:"logs/a,b.csv",decode=COL (double or single quotes; the quotes are not part of the path)"""
)
"""How a spec names a file whose path contains commas (``trace:``, ``fitted:``)."""


def split_spec_path(text: str, spec: str) -> tuple[str, str]:
    """``(path, options)`` of the text after ``trace:`` or ``fitted:``: the path runs to the
    first comma, or, when it starts with a double or single quote, to the matching
    closing quote (so it may hold commas; see ``SPEC_PATH_QUOTING``); ``options`` is
    what follows the comma after it."""
    stripped = text.strip()
    if stripped[:1] in ("'", '"'):
        quote = stripped[0]
        end = stripped.find(quote, 1)
        if end < 0:
            raise ValueError(f"workload spec {spec!r}: the quoted path has no closing {quote}")
        path, after = stripped[1:end], stripped[end + 1 :].strip()
        if after and not after.startswith(","):
            raise ValueError(f"workload spec {spec!r}: expected a comma after the quoted path, got {after!r}")
        return path, after[1:]
    path, _, options = text.partition(",")
    return path.strip(), options


def _parse_pairs(text: str, what: str, spec: str | None = None) -> dict[str, str]:
    """``key=value`` items separated by commas. ``spec``: the whole spec the items come
    from, shown in messages (after a file path, a stray item may be the rest of a path
    holding a comma: the message then says how to quote it)."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(
                f"malformed {what} {spec or text!r}: expected key=value items separated by commas, got {item!r}"
                + (f"; {SPEC_PATH_QUOTING}" if spec is not None else "")
            )
        k, v = item.split("=", 1)
        k, v = k.strip(), v.strip()
        if k in pairs:
            raise ValueError(f"malformed {what} {text!r}: {k!r} given twice")
        pairs[k] = v
    return pairs


def _number(key: str, value: str, what: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{what}: {key}={value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{what}: {key}={value!r} is not finite")
    return x


def parse_workload_spec(spec: str) -> Workload:
    """Build a workload from a command-line spec.

    - ``geometric:mu_p=100,mu_d=500`` with optional ``prefill=constant|exponential|lognormal`` and ``sigma=1.0``
      (lognormal log-sd);
    - ``trace:PATH`` (Azure LLM inference CSV or Mooncake JSONL, or a bundled name ``azure-code``, ``azure-conv``,
      ``mooncake-conv``), optionally ``trace:PATH,prefill=COLUMN,decode=COLUMN,tokens_per_step=K``; a PATH
      holding commas is quoted: ``trace:"logs/a,b.csv",decode=COLUMN`` (``SPEC_PATH_QUOTING``);
    - ``fixed:prefill=P,decode=D`` (every request the same, [`Fixed`][afdjax.Fixed]);
    - ``uniform:prefill=A..B,decode=C..D`` (integer ranges, inclusive, [`Uniform`][afdjax.Uniform]);
    - ``fitted:TRACE[,decode=FAMILY][,prefill=FAMILY][,tokens_per_step=K]``: the length families fitted to a
      trace (best by AIC unless named), as a simulatable [`FittedWorkload`][afdjax.FittedWorkload] (it ignores
      the P-D correlation that ``trace:`` keeps).

    Arguments:
        spec: the ``--workload`` string."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if sep and kind in ("fixed", "uniform"):  # serving-benchmark workloads
        return (parse_fixed_spec if kind == "fixed" else parse_uniform_spec)(rest, spec)
    if sep and kind == "fitted":
        return parse_fitted_spec(rest, spec)
    if not sep or kind not in ("geometric", "trace"):
        raise ValueError(
            f"malformed workload spec {spec!r}: expected 'geometric:mu_p=..,mu_d=..', "
            f"'trace:PATH[,prefill=COL,decode=COL]', '{FIXED_SPEC}', '{UNIFORM_SPEC}' or '{FITTED_SPEC}'"
        )
    if kind == "geometric":
        pairs = _parse_pairs(rest, "workload spec")
        allowed = {"mu_p", "mu_d", "prefill", "sigma"}
        unknown = set(pairs) - allowed
        if unknown:
            raise ValueError(
                f"workload spec {spec!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                "allowed: mu_p, mu_d, prefill, sigma"
            )
        missing = {"mu_p", "mu_d"} - set(pairs)
        if missing:
            raise ValueError(f"workload spec {spec!r}: missing {', '.join(sorted(missing))}")
        prefill = pairs.get("prefill", "constant")
        if prefill not in PREFILL_FAMILIES:
            raise ValueError(
                f"workload spec {spec!r}: prefill={prefill!r}; expected one of {', '.join(PREFILL_FAMILIES)}"
            )
        values = {k: _number(k, pairs[k], f"workload spec {spec!r}") for k in ("mu_p", "mu_d") if k in pairs}
        sigma = _number("sigma", pairs["sigma"], f"workload spec {spec!r}") if "sigma" in pairs else 1.0
        for k, v in {**values, "sigma": sigma}.items():
            if v < 0:
                raise ValueError(f"workload spec {spec!r}: {k}={v:g} must be >= 0")
        return Geometric(values["mu_p"], values["mu_d"], prefill=prefill, prefill_sigma=sigma)
    path, options = split_spec_path(rest, spec)
    if not path.strip():
        raise ValueError(f"workload spec {spec!r}: missing trace path after 'trace:'")
    pairs = _parse_pairs(options, "workload spec", spec)
    unknown = set(pairs) - {"prefill", "decode", "tokens_per_step"}
    if unknown:
        raise ValueError(
            f"workload spec {spec!r}: unknown key(s) {', '.join(sorted(unknown))}; "
            "allowed: prefill, decode, tokens_per_step"
        )
    tps = pairs.get("tokens_per_step", "1")
    if not tps.isdigit() or int(tps) < 1:
        raise ValueError(f"workload spec {spec!r}: tokens_per_step={tps!r} must be an integer >= 1")
    return load_trace(
        path,
        prefill_column=pairs.get("prefill"),
        decode_column=pairs.get("decode"),
        tokens_per_step=int(tps),
    )


# ============================================================================ accelerator and model specs
_ACCEL_TABLE, _MODEL_TABLE = "accelerator", "model"


def _coerce(cls, name: str, key: str, value, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields or key in ("description",):
        allowed = [f for f in fields if f not in ("name", "description", "sources")]
        raise ValueError(f"{where}: unknown {name} field {key!r}; allowed: {', '.join(allowed)}")
    kind = fields[key].type
    if key == "sources":
        return tuple(value) if isinstance(value, (list, tuple)) else (str(value),)
    if isinstance(value, str):
        text = value.strip()
        if "int" in str(kind) and "float" not in str(kind):
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{where}: {key}={value!r} is not an integer") from None
        if "float" in str(kind):
            if text.lower() in ("none", "null", ""):
                return None
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"{where}: {key}={value!r} is not a number") from None
        if "bool" in str(kind):
            if text.lower() not in ("true", "false"):
                raise ValueError(f"{where}: {key}={value!r} is not true or false")
            return text.lower() == "true"
        return text
    if "float" in str(kind) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _parse_spec(text: str, presets: dict, cls, what: str):
    """``NAME``, ``NAME,key=value,...`` (override preset fields) or a TOML file with a
    ``[accelerator]`` / ``[model]`` table (full spec, or ``base = "NAME"`` plus fields)."""
    spec = text.strip()
    head, _, rest = spec.partition(",")
    head = head.strip()
    table_name = _ACCEL_TABLE if cls is Accelerator else _MODEL_TABLE
    if head.lower().endswith(".toml"):
        p = Path(head).expanduser()
        data = read_toml(head, what)
        table = data.get(table_name)
        if not isinstance(table, dict):
            raise ValueError(f"{what} file {head!r}: no [{table_name}] table")
        table = dict(table)
        base = table.pop("base", None)
        where = f"{what} file {head!r}"
        values = {} if base is None else dataclasses.asdict(_parse_spec(str(base), presets, cls, what))
        if base is None and "name" not in table:
            table["name"] = p.stem
        for k, v in table.items():
            values[k] = v if k == "name" else _coerce(cls, what, k, v, where)
        if rest.strip():
            values.update(_overrides(rest, cls, what, f"{what} spec {text!r}"))
    else:
        if head not in presets:
            raise ValueError(
                f"unknown {what} {head!r}; available: {', '.join(presets)} "
                f"(or NAME,field=value,... or a TOML file with a [{table_name}] table)"
            )
        values = dataclasses.asdict(presets[head])
        over = _overrides(rest, cls, what, f"{what} spec {text!r}")
        if over:
            values.update(over)
            values["sources"] = tuple(values["sources"]) + (f"overridden: {', '.join(sorted(over))}",)
    values["sources"] = tuple(values.get("sources", ()))
    try:
        return cls(**values)
    except TypeError as err:
        raise ValueError(f"{what} spec {text!r}: {err}") from None


def _overrides(text: str, cls, what: str, where: str) -> dict:
    out = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"{where}: expected field=value items after the name, got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        if k == "name":
            out[k] = v
            continue
        out[k] = _coerce(cls, what, k, v, where)
    return out


def parse_accelerator_spec(text: str) -> Accelerator:
    """An [`Accelerator`][afdjax.Accelerator] from a spec string.

    - ``NAME``: a preset (``afdjax.ACCELERATORS``), e.g. ``h100``;
    - ``NAME,field=value,...``: a preset with fields overridden (field names and SI units as in
      [`Accelerator`][afdjax.Accelerator]), e.g. ``h100,hbm_bandwidth_bytes_per_s=1.675e12``;
    - ``FILE.toml[,field=value,...]``: an ``[accelerator]`` table, a full spec or ``base = "NAME"`` plus fields
      (the name defaults to the file's stem).

    Arguments:
        text: the spec string."""
    return _parse_spec(text, ACCELERATORS, Accelerator, "accelerator")


def parse_model_spec(text: str) -> ModelSpec:
    """A [`ModelSpec`][afdjax.ModelSpec] from a spec string: ``NAME`` (``afdjax.MODELS``), ``NAME,field=value,...``
    (fields as in [`ModelSpec`][afdjax.ModelSpec], e.g. ``llama-3.1-70b,num_layers=40``) or
    ``FILE.toml[,field=value,...]`` with a ``[model]`` table (a full spec or ``base = "NAME"`` plus fields).

    Arguments:
        text: the spec string."""
    return _parse_spec(text, MODELS, ModelSpec, "model")


# ============================================================================ hardware specs
_DERIVE_OPTIONS = {
    "dtype": str,
    "memory_efficiency": float,
    "compute_efficiency": float,
    "network_efficiency": float,
    "kernel_overhead_us": float,
    "attention_devices": int,
    "ffn_devices": int,
    "comm_scaling": str,
    "stage_terms": lambda v: {"true": True, "false": False}[v.lower()],
}


def derive_from_spec(spec: str) -> HardwareDerivation:
    """``ACCELERATOR:MODEL[,option=value,...]`` (options: the keyword arguments of
    [`derive_latency`][afdjax.derive_latency]), e.g. ``h100:deepseek-v3,dtype=bf16,ffn_devices=32``; for
    heterogeneous AFD ``ATTENTION_ACCELERATOR/FFN_ACCELERATOR:MODEL``, e.g.
    ``h200/h100:deepseek-v3`` (Attention on H200, FFN on H100)."""
    accel, sep, rest = spec.strip().partition(":")
    if not sep:
        raise ValueError(f"hardware spec {spec!r}: expected ACCELERATOR:MODEL")
    model, _, options = rest.partition(",")
    kwargs = {}
    for item in options.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"hardware spec {spec!r}: expected option=value after ACCELERATOR:MODEL, got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in _DERIVE_OPTIONS:
            raise ValueError(f"hardware spec {spec!r}: unknown option {k!r}; allowed: {', '.join(_DERIVE_OPTIONS)}")
        try:
            kwargs[k] = _DERIVE_OPTIONS[k](v)
        except (ValueError, KeyError):
            kind = "true or false" if k == "stage_terms" else _DERIVE_OPTIONS[k].__name__
            raise ValueError(f"hardware spec {spec!r}: {k}={v!r} is not a valid {kind}") from None
    attention_accel, slash, ffn_accel = accel.partition("/")  # heterogeneous: ATTENTION_ACCEL/FFN_ACCEL
    if slash:
        kwargs["ffn_accelerator"] = parse_accelerator_spec(ffn_accel.strip())
    return derive_latency(parse_accelerator_spec(attention_accel.strip()), parse_model_spec(model), **kwargs)


def is_accelerator_model_spec(text: str) -> bool:
    """True for ``ACCELERATOR:MODEL[,...]`` (a colon before any comma or ``=``, not a file)."""
    head = text.strip().split(",", 1)[0]
    return ":" in head and "=" not in head and not head.lower().endswith(".toml") and not Path(head).is_file()


def _latency_from_mapping(values: dict, source: str) -> LatencyModel:
    table = values.get("latency", values)
    if not isinstance(table, dict):
        raise _bad_content(source, "[latency] must be a table")
    known = set(COEFFICIENT_NAMES) | {"comm_scaling", "num_layers", *LATENCY_TABLE_KEYS}
    unknown = set(table) - known
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(COEFFICIENT_NAMES)}, comm_scaling, num_layers"
        )
    missing = [k for k in COEFFICIENT_NAMES if k not in table]
    if missing:
        raise ValueError(f"{source}: missing coefficient(s) {', '.join(missing)}")
    kwargs = {}
    for k in COEFFICIENT_NAMES:
        v = table[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _bad_content(source, f"{k}={v!r} is not a number")
        kwargs[k] = float(v)
    scaling = table.get("comm_scaling", "batch")
    if scaling not in COMM_SCALINGS:
        raise ValueError(f"{source}: comm_scaling={scaling!r}; expected one of {', '.join(COMM_SCALINGS)}")
    parts = _stage_parts(values if table is not values else {}, source)
    layers = table.get("num_layers")
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int)):
        raise ValueError(f"{source}: [latency] num_layers={layers!r} is invalid: expected an integer")
    try:
        return LatencyModel(**kwargs, comm_scaling=scaling, num_layers=layers, **parts)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def _stage_parts(data: dict, where: str) -> dict:
    """The ``[noise]``, ``[routing]``, ``[communication]`` tables as ``LatencyModel`` arguments."""
    out = {}
    for name, (field, cls, keys) in STAGE_TABLES.items():
        section = data.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise _bad_content(where, f"[{name}] must be a table")
        if bad := ", ".join(sorted(set(section) - set(keys))):
            raise ValueError(f"{where}: unknown key(s) {bad} in [{name}]; allowed: {', '.join(keys)}")
        kwargs = {}
        for k, v in section.items():
            number = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
            ok = {int: isinstance(v, int) and number(v), float: number(v), list: isinstance(v, list)}[keys[k]]
            if not ok or (keys[k] is list and not all(number(x) for x in v)):
                want = {int: "an integer", float: "a number", list: "an array of numbers"}[keys[k]]
                raise ValueError(f"{where}: [{name}] {k}={v!r} is invalid: expected {want}")
            kwargs[k] = [float(x) for x in v] if keys[k] is list else (v if keys[k] is int else float(v))
        try:
            out[field] = cls(**kwargs)
        except ValueError as err:
            raise ValueError(f"{where}: [{name}] {err}") from None
    return out


def parse_hardware_spec(spec: str) -> LatencyModel:
    """Build a latency model from a command-line spec.

    - a preset name (``paper-910c``), optionally with overrides: ``paper-910c,comm_scaling=ratio_batch,alpha_c=0.03``;
    - a TOML file (see [`latency_to_toml`][afdjax.latency_to_toml]);
    - inline coefficients ``alpha_a=..,beta_a=..,alpha_f=..,beta_f=..,alpha_c=..,beta_c=..``
      (optionally ``comm_scaling=batch|ratio_batch``);
    - ``ACCELERATOR:MODEL[,option=value,...]``, e.g. ``h100:deepseek-v3``: coefficients derived from the specs
      (``afdjax.derive_latency``; microseconds per layer).

    A TOML file may hold ``[model]``, ``[accelerator]`` and ``[deployment]`` tables besides ``[latency]``; they
    are ignored here and read by ``afdjax.load_deployment``.

    Arguments:
        spec: the ``--hardware`` string."""
    return _read_hardware(spec)[0]


def _names_a_file(head: str) -> bool:
    """Whether the first item of a hardware spec is a TOML file (by suffix, or an existing file)."""
    return head.lower().endswith(".toml") or (bool(head) and "=" not in head and Path(head).expanduser().is_file())


def _read_hardware(spec: str) -> tuple[LatencyModel, dict | None]:
    """The latency model of a hardware spec, and the parsed TOML file when the spec is one."""
    text = spec.strip()
    head = text.split(",", 1)[0].strip()
    if is_accelerator_model_spec(text):  # ACCELERATOR:MODEL[,option=value,...] (afdjax hardware)
        return derive_from_spec(text).latency, None
    if head in ACCELERATORS or head in MODELS:
        raise ValueError(
            f"hardware spec {head!r} names an {'accelerator' if head in ACCELERATORS else 'model'}; "
            "give ACCELERATOR:MODEL, e.g. h100:deepseek-v3 (see afdjax hardware --list)"
        )
    if _names_a_file(head):
        data = read_toml(head, "hardware")
        return _latency_from_mapping(data, f"hardware file {head!r}"), data
    if head and "=" not in head:
        if head not in PRESETS:
            raise ValueError(
                f"unknown hardware preset {head!r}; available: {', '.join(sorted(PRESETS))} "
                "(or a TOML file, or inline alpha_a=..,beta_a=..,alpha_f=..,beta_f=..,alpha_c=..,beta_c=..)"
            )
        base: dict = dict(PRESETS[head])
        overrides = text[len(head) :].lstrip(",")
    else:
        base, overrides = {}, text
    pairs = _parse_pairs(overrides, "hardware spec")
    for k, v in pairs.items():
        if k == "comm_scaling":
            base[k] = v
        elif k in COEFFICIENT_NAMES:
            base[k] = _number(k, v, f"hardware spec {spec!r}")
        else:
            raise ValueError(
                f"hardware spec {spec!r}: unknown key {k!r}; allowed: {', '.join(COEFFICIENT_NAMES)}, comm_scaling"
            )
    return _latency_from_mapping(base, f"hardware spec {spec!r}"), None


# ============================================================================ deployment
def _read_section(data: dict, section: str, keys: dict, where: str) -> dict:
    table = data.get(section)
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise _bad_content(where, f"[{section}] must be a table")
    out = {}
    for k, kind in keys.items():
        if k not in table:
            continue
        v = table[k]
        ok = isinstance(v, kind) and not isinstance(v, bool)
        if not ok:
            want = "a string" if kind is str else ("an integer" if kind is int else "a number")
            raise ValueError(f"{where}: [{section}] {k}={v!r} is invalid: expected {want}")
        if kind is not str and (not math.isfinite(v) or v < (1 if kind is int else 0)):
            raise ValueError(
                f"{where}: [{section}] {k}={v!r} is invalid: expected "
                f"{'an integer >= 1' if kind is int else 'a finite number >= 0'}"
            )
        out[k] = v
    return out


def load_deployment(spec: str) -> Deployment:
    """A [`Deployment`][afdjax.Deployment] from any ``--hardware`` spec.

    - ``ACCELERATOR:MODEL[,option=value,...]``: derived by [`derive_latency`][afdjax.derive_latency] (everything
      known);
    - a TOML file: ``[latency]`` plus the optional ``[model]`` (``name``, ``num_layers``, ``kv_bytes_per_token``
      over all layers), ``[accelerator]`` (``name``, ``hbm_capacity_bytes`` or ``hbm_capacity_gb`` (1e9 bytes),
      ``power_watts``) and ``[deployment]`` (``attention_devices``, ``ffn_devices``, ``attention_weight_bytes``)
      tables, and ``units`` in ``[latency]``;
    - a latency preset (``paper-910c``: DeepSeek-V3 layers and KV bytes, nothing about the accelerator) or
      inline coefficients (only ``latency`` known).

    Arguments:
        spec: any ``--hardware`` string (preset, ``ACCELERATOR:MODEL``, TOML path or inline coefficients)."""
    if not isinstance(spec, str):
        raise invalid("spec", spec, "a hardware spec string")
    if is_accelerator_model_spec(spec):
        return derive_from_spec(spec).deployment()
    latency, data = _read_hardware(spec)
    head = spec.strip().split(",", 1)[0].strip()
    if data is not None:
        where = f"hardware file {head!r}"
        model = _read_section(data, "model", MODEL_TABLE_KEYS, where)
        accel = _read_section(data, "accelerator", ACCELERATOR_TABLE_KEYS, where)
        dep = _read_section(data, "deployment", DEPLOYMENT_TABLE_KEYS, where)
        if "hbm_capacity_bytes" in accel and "hbm_capacity_gb" in accel:
            raise ValueError(f"{where}: [accelerator] gives both hbm_capacity_bytes and hbm_capacity_gb; give one")
        hbm = accel.get("hbm_capacity_bytes", accel["hbm_capacity_gb"] * 1e9 if "hbm_capacity_gb" in accel else None)
        units = data.get("latency", {}).get("units") if isinstance(data.get("latency"), dict) else None
        return Deployment(
            latency=latency,
            num_layers=model.get("num_layers"),
            kv_bytes_per_token=model.get("kv_bytes_per_token"),
            hbm_capacity_bytes=None if hbm is None else float(hbm),
            accelerator=accel.get("name"),
            model=model.get("name"),
            power_watts=None if "power_watts" not in accel else float(accel["power_watts"]),
            attention_devices=dep.get("attention_devices"),
            ffn_devices=dep.get("ffn_devices"),
            attention_weight_bytes=dep.get("attention_weight_bytes"),
            time_unit=units if isinstance(units, str) else dep.get("time_unit"),
            ffn_power_watts=None if "ffn_power_watts" not in accel else float(accel["ffn_power_watts"]),
        )
    if head in PRESETS and head in LATENCY_PRESET_MODELS:
        m = MODELS[LATENCY_PRESET_MODELS[head]]
        return Deployment(
            latency=latency,
            num_layers=m.num_layers,
            kv_bytes_per_token=m.kv_bytes_per_token,
            model=m.name,
            accelerator="ascend-910c" if head == "paper-910c" else None,
            time_unit="unstated (plausibly us per layer)",
        )
    return Deployment(latency=latency)


# ------------------------------------------------ serving-benchmark and fitted workload specs
# fixed:prefill=P,decode=D -> Fixed; uniform:prefill=A..B,decode=C..D -> Uniform (integer ranges,
# both ends included; one integer A means A..A); fitted:TRACE[,decode=..][,prefill=..] -> the
# trace's fitted families (FittedWorkload; it ignores the P-D correlation that trace: keeps).
FIXED_SPEC = "fixed:prefill=P,decode=D"
UNIFORM_SPEC = "uniform:prefill=A..B,decode=C..D"


def _benchmark_pairs(rest: str, spec: str, usage: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not key or not value:
            raise ValueError(f"workload spec {spec!r}: {item.strip()!r} is not KEY=VALUE; expected {usage!r}")
        if key in pairs:
            raise ValueError(f"workload spec {spec!r}: {key} is given twice; expected {usage!r}")
        pairs[key] = value
    allowed = ("prefill", "decode")
    unknown = sorted(set(pairs) - set(allowed))
    if unknown:
        raise ValueError(
            f"workload spec {spec!r}: unknown key(s) {', '.join(unknown)}; allowed: prefill, decode ({usage})"
        )
    missing = [k for k in allowed if k not in pairs]
    if missing:
        raise ValueError(f"workload spec {spec!r}: missing {', '.join(missing)}; expected {usage!r}")
    return pairs


def _spec_integer(spec: str, key: str, text: str, minimum: int, what: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value == int(value) and value >= minimum):
        raise ValueError(f"workload spec {spec!r}: {key}={text!r} is invalid: expected {what}")
    return int(value)


def parse_fixed_spec(rest: str, spec: str) -> Fixed:
    """[`Fixed`][afdjax.Fixed] from ``prefill=P,decode=D`` (the text after ``fixed:``)."""
    pairs = _benchmark_pairs(rest, spec, FIXED_SPEC)
    try:
        prefill = float(pairs["prefill"])
    except ValueError:
        prefill = math.nan
    if not (math.isfinite(prefill) and prefill >= 0):
        raise ValueError(
            f"workload spec {spec!r}: prefill={pairs['prefill']!r} is invalid: expected a number of tokens >= 0"
        )
    decode = _spec_integer(spec, "decode", pairs["decode"], 1, "an integer number of decode steps >= 1")
    try:
        return Fixed(prefill, decode)
    except ValueError as err:
        raise ValueError(f"workload spec {spec!r}: {err}") from None


def _spec_range(spec: str, key: str, text: str, minimum: int) -> tuple[int, int]:
    what = f"an integer range LOW..HIGH with {minimum} <= LOW <= HIGH (or one integer >= {minimum})"
    low_text, dots, high_text = text.partition("..")
    if not dots:
        high_text = low_text
    try:
        low = _spec_integer(spec, key, low_text.strip(), minimum, what)
        high = _spec_integer(spec, key, high_text.strip(), minimum, what)
    except ValueError:
        low = high = None
    if low is None or high is None or high < low:
        raise ValueError(f"workload spec {spec!r}: {key}={text!r} is invalid: expected {what}")
    return low, high


def parse_uniform_spec(rest: str, spec: str) -> Uniform:
    """[`Uniform`][afdjax.Uniform] from ``prefill=A..B,decode=C..D`` (the text after ``uniform:``)."""
    pairs = _benchmark_pairs(rest, spec, UNIFORM_SPEC)
    prefill = _spec_range(spec, "prefill", pairs["prefill"], 0)
    decode = _spec_range(spec, "decode", pairs["decode"], 1)
    try:
        return Uniform(*prefill, *decode)
    except ValueError as err:
        raise ValueError(f"workload spec {spec!r}: {err}") from None


FITTED_SPEC = "fitted:TRACE[,decode=FAMILY][,prefill=FAMILY][,tokens_per_step=K]"


def parse_fitted_spec(rest: str, spec: str) -> FittedWorkload:
    """[`FittedWorkload`][afdjax.FittedWorkload] from ``TRACE[,decode=..][,prefill=..][,tokens_per_step=K]``
    (the text after ``fitted:``); ``ValueError`` naming the key, the value and what is allowed."""
    path, options = split_spec_path(rest, spec)
    if not path:
        raise ValueError(f"workload spec {spec!r}: missing trace after 'fitted:'; expected {FITTED_SPEC!r}")
    pairs: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in options.split(","))):
        key, eq, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not value:
            raise ValueError(
                f"workload spec {spec!r}: {item!r} is not KEY=VALUE; expected {FITTED_SPEC!r}; {SPEC_PATH_QUOTING}"
            )
        if key not in ("decode", "prefill", "tokens_per_step"):
            raise ValueError(f"workload spec {spec!r}: unknown key {key!r}; allowed: decode, prefill, tokens_per_step")
        pairs[key] = value
    for key, allowed in (("decode", DECODE_FIT_FAMILIES), ("prefill", PREFILL_FIT_FAMILIES)):
        if key in pairs and pairs[key] not in allowed:
            raise ValueError(
                f"workload spec {spec!r}: {key}={pairs[key]!r} is invalid: expected one of {', '.join(allowed)}"
            )
    tps = pairs.get("tokens_per_step", "1")
    if not tps.isdigit() or int(tps) < 1:
        raise ValueError(f"workload spec {spec!r}: tokens_per_step={tps!r} is invalid: expected an integer >= 1")
    families = {}
    if "decode" in pairs and "prefill" in pairs:  # nothing to compare: fit the two named families only
        families = {"decode_families": [pairs["decode"]], "prefill_families": [pairs["prefill"]]}
    fit = fit_trace(path, tokens_per_step=int(tps), **families)
    return fit.to_workload(pairs.get("decode"), pairs.get("prefill"))
