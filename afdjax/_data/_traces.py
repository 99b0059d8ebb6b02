"""Request traces: the bundled traces, reading CSV / JSON Lines records, and turning a trace
into an [`Empirical`][afdjax.Empirical] workload.

Nothing here is traced by JAX; every function validates its input and raises
``ValueError`` (or ``FileNotFoundError``) with a message naming what is wrong. The
``trace:PATH,...`` workload spec is parsed in ``afdjax._specs``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from .._validate import check_int
from .._workload import Empirical, validate_lengths

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
    """Path of a bundled trace by short name (``azure-code``, ``azure-conv``, ``mooncake-conv``).

    Arguments:
        name: ``azure-code``, ``azure-conv`` or ``mooncake-conv`` (the keys of
            [`BUNDLED_TRACES`][afdjax.BUNDLED_TRACES]).

    Returns:
        the ``pathlib.Path`` of the file inside the installed package.

    Examples:
        >>> afdjax.bundled_trace_path("azure-conv").name
        'AzureLLMInferenceTrace_conv.csv'
    """
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


def resolve_trace(path) -> Path:
    """The file of a trace: a bundled trace name (see [`BUNDLED_TRACES`][afdjax.BUNDLED_TRACES]) or an existing
    file path (``FileNotFoundError`` / ``ValueError`` otherwise)."""
    text = os.fspath(path)
    if text in BUNDLED_TRACES:
        return bundled_trace_path(text)
    return resolve_file(text, "trace")


def _bad_content(p: Path, what: str) -> ValueError:
    return ValueError(f"{p}: {what}")


def read_records(p: Path, what: str = "file") -> tuple[list[str], list[dict]]:
    """Rows of a CSV (header line; lines starting with ``#`` are comments) or JSON Lines
    file, with the column names seen (for JSONL, the union over records in first-seen
    order). A UTF-8 byte-order mark is ignored; a CSV row with more cells than the header
    is an error, and so is a file that is not UTF-8 text (a binary file), named with
    ``what`` (e.g. ``"trace"``)."""
    label = "file" if what == "file" else f"{what} file"
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{label} {str(p)!r} is not a text CSV or JSON Lines {what} (byte 0x{err.object[err.start]:02x} "
            f"at offset {err.start} is not UTF-8)"
        ) from None
    if "\x00" in text:
        raise ValueError(f"{label} {str(p)!r} is not a text CSV or JSON Lines {what} (it holds NUL bytes)")
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
                raise _bad_content(p, f"line {lineno} is not a JSON object")
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

    Arguments:
        path: a file path, or a bundled trace name (``azure-conv``, ...).
        prefill_column: column names; by default the Azure LLM
            inference columns (``ContextTokens``, ``GeneratedTokens``) or the Mooncake ones
            (``input_length``, ``output_length``) are recognised.
        decode_column: see ``prefill_column``.

    Returns:
        ``(prefill_tokens, output_tokens)`` as float64 NumPy arrays, validated
        to be finite, integer-valued, prefill ``>= 0`` and output ``>= 1``.
    """
    p = resolve_trace(path)
    columns, rows = read_records(p, "trace")
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
    """An [`Empirical`][afdjax.Empirical] workload from a request trace.

    Traces record *output tokens*; the model needs *decode steps*. With one token per
    step (plain autoregressive decoding, the default) decode steps = output tokens.
    With ``tokens_per_step = k`` (e.g. speculative decoding accepting k tokens per
    step on average) a request of ``n`` output tokens holds its slot for
    ``ceil(n / k)`` steps. Prefill tokens are the prompt tokens in the KV cache.

    Arguments:
        path: a CSV or JSON Lines file, or a bundled name (``azure-conv``; see
            [`read_trace`][afdjax.read_trace]).
        prefill_column: the column of prompt tokens (default: the Azure or Mooncake name).
        decode_column: the column of output tokens (default: the Azure or Mooncake name).
        tokens_per_step: output tokens per decode step ``k >= 1`` (default 1).

    Returns:
        an [`Empirical`][afdjax.Empirical] workload over the trace's rows.

    Examples:
        >>> round(float(afdjax.load_trace("azure-conv").theta()), 1)  # tokens per slot
        1226.5
    """
    tokens_per_step = check_int("tokens_per_step", tokens_per_step, 1)
    prefill, output = read_trace(path, prefill_column, decode_column)
    decode = np.ceil(output / tokens_per_step).astype(np.int64)
    return Empirical(prefill, decode)
