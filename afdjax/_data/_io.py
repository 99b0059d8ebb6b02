"""Host-side input/output: request traces, workload and hardware specs, hardware TOML.

Nothing here is traced by JAX; every function validates its input and raises
``ValueError`` (or ``FileNotFoundError``) with a message naming what is wrong.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tomllib
from pathlib import Path

import numpy as np

from .._latency import COEFFICIENT_NAMES, COMM_SCALINGS, PRESETS, LatencyModel
from .._workload._core import PREFILL_FAMILIES, Empirical, Geometric, Workload, validate_lengths
from .._workload import FIXED_SPEC, UNIFORM_SPEC, parse_fixed_spec, parse_uniform_spec

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

BUNDLED_TRACES: dict[str, str] = {
    "azure-code": "AzureLLMInferenceTrace_code.csv",
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
    "mooncake-conv": "mooncake_conversation_trace.jsonl",
}
"""Short names of the traces shipped with afdjax (see ``afdjax/data/README.md``)."""

# (prefill column, decode column) pairs recognised without being named.
_KNOWN_COLUMNS = (("ContextTokens", "GeneratedTokens"), ("input_length", "output_length"))


def bundled_trace_path(name: str) -> Path:
    """Path of a bundled trace by short name (``azure-code``, ``azure-conv``, ``mooncake-conv``)."""
    if name not in BUNDLED_TRACES:
        raise ValueError(f"unknown bundled trace {name!r}; available: {', '.join(BUNDLED_TRACES)}")
    return DATA_DIR / BUNDLED_TRACES[name]


def resolve_file(path, what: str) -> Path:
    """An existing file, or FileNotFoundError / ValueError naming ``what`` (e.g. "trace")."""
    text = os.fspath(path)
    p = Path(text).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} file {text!r} does not exist")
    if not p.is_file():
        raise ValueError(f"{what} path {text!r} is not a file")
    return p


def _resolve_trace(path) -> Path:
    text = os.fspath(path)
    if text in BUNDLED_TRACES:
        return bundled_trace_path(text)
    return resolve_file(text, "trace")


def read_records(p: Path) -> tuple[list[str], list[dict]]:
    """Rows of a CSV (header line; lines starting with ``#`` are comments) or JSON Lines
    file, with the column names seen (for JSONL, the union over records in first-seen
    order). A UTF-8 byte-order mark is ignored; a CSV row with more cells than the header
    is an error."""
    text = p.read_text(encoding="utf-8-sig")
    if p.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        columns: list[str] = []
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{p}: line {lineno} is not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{p}: line {lineno} is not a JSON object")
            for k in record:
                if k not in columns:
                    columns.append(k)
            rows.append(record)
        return columns, rows
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    if reader.fieldnames is None:
        raise ValueError(f"{p}: empty file, expected a CSV header line")
    fieldnames = [c.strip() for c in reader.fieldnames]
    rows = []
    for record in reader:
        if None in record:
            raise ValueError(f"{p}: row {len(rows) + 1} has more cells than the header has columns")
        rows.append({k.strip(): v for k, v in record.items() if k is not None})
    return fieldnames, rows


def read_trace(path, prefill_column: str | None = None, decode_column: str | None = None):
    """Read prefill and output token counts from a CSV or JSON Lines trace.

    **Arguments:**

    - ``path``: a file path, or a bundled trace name (``azure-conv``, ...).
    - ``prefill_column``, ``decode_column``: column names; by default the Azure LLM
      inference columns (``ContextTokens``, ``GeneratedTokens``) or the Mooncake ones
      (``input_length``, ``output_length``) are recognised.

    **Returns:** ``(prefill_tokens, output_tokens)`` as float64 NumPy arrays, validated
    to be finite, integer-valued, prefill ``>= 0`` and output ``>= 1``.
    """
    p = _resolve_trace(path)
    columns, rows = read_records(p)
    if not rows:
        raise ValueError(f"{p}: no records")
    if prefill_column is None and decode_column is None:
        for pc, dc in _KNOWN_COLUMNS:
            if pc in columns and dc in columns:
                prefill_column, decode_column = pc, dc
                break
        else:
            raise ValueError(
                f"{p}: cannot tell which columns hold prefill and decode lengths (columns: {', '.join(columns)}); "
                "name them, e.g. trace:PATH,prefill=COLUMN,decode=COLUMN"
            )
    elif prefill_column is None or decode_column is None:
        raise ValueError("name both the prefill and the decode column (prefill=COLUMN,decode=COLUMN)")
    for name in (prefill_column, decode_column):
        if name not in columns:
            raise ValueError(f"{p}: no column {name!r}; columns are: {', '.join(columns)}")

    def column(name: str) -> np.ndarray:
        out = np.empty(len(rows))
        for i, row in enumerate(rows):
            value = row.get(name)
            try:
                out[i] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{p}: record {i + 1}: {name}={value!r} is not a number") from None
        return out

    prefill, output = column(prefill_column), column(decode_column)
    for name, values, minimum in ((prefill_column, prefill, 0), (decode_column, output, 1)):
        try:
            validate_lengths(name, values, minimum=minimum, integer=True)
        except ValueError as err:
            raise ValueError(f"{p}: {err}") from None
    return prefill, output


def load_trace(
    path,
    *,
    prefill_column: str | None = None,
    decode_column: str | None = None,
    tokens_per_step: int = 1,
) -> Empirical:
    """An :class:`~afdjax.Empirical` workload from a request trace.

    Traces record *output tokens*; the model needs *decode steps*. With one token per
    step (plain autoregressive decoding, the default) decode steps = output tokens.
    With ``tokens_per_step = k`` (e.g. speculative decoding accepting k tokens per
    step on average) a request of ``n`` output tokens holds its slot for
    ``ceil(n / k)`` steps. Prefill tokens are the prompt tokens in the KV cache.

    See :func:`read_trace` for ``path`` and the column arguments.
    """
    if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, (int, np.integer)) or tokens_per_step < 1:
        raise ValueError(f"tokens_per_step={tokens_per_step!r} is invalid: expected an integer >= 1")
    prefill, output = read_trace(path, prefill_column, decode_column)
    decode = np.ceil(output / int(tokens_per_step)).astype(np.int64)
    return Empirical(prefill, decode)


# ------------------------------------------------------------------------- spec parsing
def _parse_pairs(text: str, what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"malformed {what} {text!r}: expected key=value items separated by commas, got {item!r}")
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

    - ``geometric:mu_p=100,mu_d=500`` with optional ``prefill=constant|exponential|lognormal``
      and ``sigma=1.0`` (lognormal log-sd);
    - ``trace:PATH`` (Azure LLM inference CSV or Mooncake JSONL, or a bundled name
      ``azure-code``, ``azure-conv``, ``mooncake-conv``), optionally
      ``trace:PATH,prefill=COLUMN,decode=COLUMN,tokens_per_step=K``;
    - ``fixed:prefill=P,decode=D`` (every request the same, :class:`~afdjax.Fixed`);
    - ``uniform:prefill=A..B,decode=C..D`` (integer ranges, inclusive, :class:`~afdjax.Uniform`).
    """
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if sep and kind in ("fixed", "uniform"):  # serving-benchmark workloads (issue 10)
        return (parse_fixed_spec if kind == "fixed" else parse_uniform_spec)(rest, spec)
    if not sep or kind not in ("geometric", "trace"):
        raise ValueError(
            f"malformed workload spec {spec!r}: expected 'geometric:mu_p=..,mu_d=..', 'trace:PATH[,prefill=COL,decode=COL]', "
            f"'{FIXED_SPEC}' or '{UNIFORM_SPEC}'"
        )
    if kind == "geometric":
        pairs = _parse_pairs(rest, "workload spec")
        allowed = {"mu_p", "mu_d", "prefill", "sigma"}
        unknown = set(pairs) - allowed
        if unknown:
            raise ValueError(
                f"workload spec {spec!r}: unknown key(s) {', '.join(sorted(unknown))}; allowed: mu_p, mu_d, prefill, sigma"
            )
        missing = {"mu_p", "mu_d"} - set(pairs)
        if missing:
            raise ValueError(f"workload spec {spec!r}: missing {', '.join(sorted(missing))}")
        prefill = pairs.get("prefill", "constant")
        if prefill not in PREFILL_FAMILIES:
            raise ValueError(f"workload spec {spec!r}: prefill={prefill!r}; expected one of {', '.join(PREFILL_FAMILIES)}")
        values = {k: _number(k, pairs[k], f"workload spec {spec!r}") for k in ("mu_p", "mu_d") if k in pairs}
        sigma = _number("sigma", pairs["sigma"], f"workload spec {spec!r}") if "sigma" in pairs else 1.0
        for k, v in {**values, "sigma": sigma}.items():
            if v < 0:
                raise ValueError(f"workload spec {spec!r}: {k}={v:g} must be >= 0")
        return Geometric(values["mu_p"], values["mu_d"], prefill=prefill, prefill_sigma=sigma)
    path, _, options = rest.partition(",")
    if not path.strip():
        raise ValueError(f"workload spec {spec!r}: missing trace path after 'trace:'")
    pairs = _parse_pairs(options, "workload spec")
    unknown = set(pairs) - {"prefill", "decode", "tokens_per_step"}
    if unknown:
        raise ValueError(
            f"workload spec {spec!r}: unknown key(s) {', '.join(sorted(unknown))}; allowed: prefill, decode, tokens_per_step"
        )
    tps = pairs.get("tokens_per_step", "1")
    if not tps.isdigit() or int(tps) < 1:
        raise ValueError(f"workload spec {spec!r}: tokens_per_step={tps!r} must be an integer >= 1")
    return load_trace(
        path.strip(),
        prefill_column=pairs.get("prefill"),
        decode_column=pairs.get("decode"),
        tokens_per_step=int(tps),
    )


def _latency_from_mapping(values: dict, source: str) -> LatencyModel:
    table = values.get("latency", values)
    if not isinstance(table, dict):
        raise ValueError(f"{source}: [latency] must be a table")
    known = set(COEFFICIENT_NAMES) | {"comm_scaling", "units", "description", "source"}
    unknown = set(table) - known
    if unknown:
        raise ValueError(
            f"{source}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(COEFFICIENT_NAMES)}, comm_scaling"
        )
    missing = [k for k in COEFFICIENT_NAMES if k not in table]
    if missing:
        raise ValueError(f"{source}: missing coefficient(s) {', '.join(missing)}")
    kwargs = {}
    for k in COEFFICIENT_NAMES:
        v = table[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{source}: {k}={v!r} is not a number")
        kwargs[k] = float(v)
    scaling = table.get("comm_scaling", "batch")
    if scaling not in COMM_SCALINGS:
        raise ValueError(f"{source}: comm_scaling={scaling!r}; expected one of {', '.join(COMM_SCALINGS)}")
    return LatencyModel(**kwargs, comm_scaling=scaling)


def parse_hardware_spec(spec: str) -> LatencyModel:
    """Build a latency model from a command-line spec.

    - a preset name (``paper-910c``), optionally with overrides:
      ``paper-910c,comm_scaling=ratio_batch,alpha_c=0.03``;
    - a TOML file (see :func:`latency_to_toml`);
    - inline coefficients ``alpha_a=..,beta_a=..,alpha_f=..,beta_f=..,alpha_c=..,beta_c=..``
      (optionally ``comm_scaling=batch|ratio_batch``);
    - ``ACCELERATOR:MODEL[,option=value,...]``, e.g. ``h100:deepseek-v3``: coefficients
      derived from the specs (``afdjax.derive_latency``; microseconds per layer).

    A TOML file may hold ``[model]``, ``[accelerator]`` and ``[deployment]`` tables besides
    ``[latency]``; they are ignored here and read by ``afdjax.load_deployment``.
    """
    text = spec.strip()
    head = text.split(",", 1)[0].strip()
    from .._hardware._core import ACCELERATORS, MODELS, derive_from_spec, is_accelerator_model_spec

    if is_accelerator_model_spec(text):  # ACCELERATOR:MODEL[,option=value,...] (afdjax hardware)
        return derive_from_spec(text).latency
    if head in ACCELERATORS or head in MODELS:
        raise ValueError(
            f"hardware spec {head!r} names an {'accelerator' if head in ACCELERATORS else 'model'}; "
            "give ACCELERATOR:MODEL, e.g. h100:deepseek-v3 (see afdjax hardware --list)"
        )
    if head.lower().endswith(".toml") or (head and "=" not in head and Path(head).expanduser().is_file()):
        p = Path(head).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"hardware file {head!r} does not exist")
        try:
            values = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"hardware file {head!r} is not valid TOML: {err}") from None
        return _latency_from_mapping(values, f"hardware file {head!r}")
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
    return _latency_from_mapping(base, f"hardware spec {spec!r}")


def latency_to_toml(latency: LatencyModel, description: str | None = None) -> str:
    """TOML text that :func:`parse_hardware_spec` (``--hardware FILE.toml``) reads back."""
    lines = []
    if description:
        lines += [f"# {line}" for line in description.splitlines()]
    lines.append("[latency]")
    for k, v in latency.coefficients().items():
        lines.append(f"{k} = {v!r}")
    lines.append(f'comm_scaling = "{latency.comm_scaling}"')
    return "\n".join(lines) + "\n"
