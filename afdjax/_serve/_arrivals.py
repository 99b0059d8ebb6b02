"""Arrival processes of the open-loop engine: Poisson, gamma renewal (a coefficient of
variation), and a trace's timestamps replayed.

Every process is a sequence of *unit gaps* ``g_n`` with mean 1 (the gap before request
``n + 1``), scaled by the bundle's total rate ``lambda = r X``: request ``n + 1`` arrives
``g_n / lambda`` after request ``n``, request 0 at time ``g_{-1} / lambda`` (a first gap).
Gap ``n`` of replica ``i`` comes from the counter bits ``threefry(stream_i, n, 1)``
whatever the rate, the ratio or the buffer sizes (common random numbers).

* :class:`PoissonArrivals`: ``g = -log U`` (exponential).
* :class:`GammaArrivals`: ``g`` gamma with mean 1 and coefficient of variation ``cv``
  (shape ``1 / cv^2``), by its quantile at ``U`` (so ``cv`` is a traced leaf: a new
  value does not recompile, and ``cv = 1`` is the Poisson process in distribution).
* :class:`TraceArrivals`: the gaps between a trace's consecutive timestamps, divided by
  their mean (the last gap wraps round to the first with the mean gap), replayed in
  order from a random row per replica; with the trace's request lengths (request ``n``
  is row ``(o_i + n) mod N``). A rate rescales time: ``X`` per Attention instance is the
  trace's shape at mean rate ``r X``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._data import read_records, resolve_trace
from .._random import uniform_open
from .._validate import check_int, float_leaf, invalid
from .._workload import gamma_quantile, validate_lengths


class Arrivals(eqx.Module):
    """An arrival process (abstract): unit gaps with mean 1 from random bits."""

    def unit_gap(self, n, bits):
        """The unit gap after request ``n`` (``n = -1``: before request 0) from uint32 bits."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def has_lengths(self) -> bool:
        """Whether the process carries its requests' lengths (a trace replay)."""
        return False


class PoissonArrivals(Arrivals):
    """Poisson arrivals: exponential gaps."""

    def unit_gap(self, n, bits):
        return -jnp.log(uniform_open(bits))

    def describe(self) -> str:
        return "poisson"


class GammaArrivals(Arrivals):
    """A gamma renewal process: gaps gamma-distributed with mean 1 and coefficient of
    variation ``cv`` (``cv > 1`` bursty, ``cv < 1`` regular; ``cv`` an array leaf).

    Arguments:
        cv: the coefficient of variation of the gaps, ``> 0`` (1 is Poisson).
    """

    cv: jax.Array

    def __init__(self, cv):
        try:
            value = float(cv)
        except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            value = None
        if value is not None and not (math.isfinite(value) and 0.01 <= value <= 100.0):
            raise invalid("cv", cv, "a finite number in [0.01, 100]")
        self.cv = float_leaf(cv)

    def unit_gap(self, n, bits):
        shape = 1.0 / (self.cv * self.cv)
        return gamma_quantile(shape, uniform_open(bits)) / shape

    def describe(self) -> str:
        try:
            return f"gamma:cv={float(self.cv):g}"
        except (TypeError, jax.errors.ConcretizationTypeError):
            return "gamma:cv=<traced>"


class TraceArrivals(Arrivals):
    """A trace replayed: its gaps (normalised to mean 1) in order, from a random row per
    replica, and with ``prefill_tokens``/``decode_steps`` its rows' lengths in the same
    order. Build it with [`load_arrival_trace`][afdjax.load_arrival_trace] or from arrays of timestamps (any
    unit; only ratios of gaps matter, the rate sets the scale).

    Arguments:
        timestamps: ``(n,)`` arrival times of the trace's rows (any unit).
        prefill_tokens: ``(n,)`` prompt tokens of the rows, or ``None`` (lengths from the workload).
        decode_steps: ``(n,)`` decode steps of the rows, or ``None``.
    """

    gaps: jax.Array
    prefill_tokens: jax.Array | None
    decode_steps: jax.Array | None
    recorded_rate: float = eqx.field(static=True)
    """Mean arrival rate of the trace (requests per unit of its timestamps)."""

    def __init__(self, timestamps, prefill_tokens=None, decode_steps=None):
        t = np.asarray(timestamps, dtype=np.float64)
        if t.ndim != 1 or t.size == 0:
            raise invalid("timestamps", f"shape {t.shape}", "a non-empty 1-D array of arrival times")
        if t.size < 2:
            raise invalid("timestamps", f"{t.size} record", "at least 2 arrival times")
        if not np.all(np.isfinite(t)):
            raise invalid("timestamps", "a non-finite value", "finite arrival times")
        if np.any(np.diff(t) < 0):
            i = int(np.argmax(np.diff(t) < 0)) + 1
            raise invalid("timestamps", f"record {i + 1} earlier than record {i}", "times in arrival order")
        span = float(t[-1] - t[0])
        if span <= 0.0:
            raise invalid("timestamps", "all equal", "arrival times spanning a positive duration")
        n = t.size
        mean_gap = span / (n - 1)
        gaps = np.append(np.diff(t), mean_gap) / mean_gap  # the last gap wraps round
        self.gaps = jnp.asarray(gaps, dtype=jnp.zeros(()).dtype)
        self.recorded_rate = 1.0 / mean_gap
        if (prefill_tokens is None) != (decode_steps is None):
            raise ValueError("give both prefill_tokens and decode_steps with a trace's timestamps, or neither")
        if prefill_tokens is not None:
            p = np.asarray(prefill_tokens, dtype=np.float64)
            d = np.asarray(decode_steps)
            if p.shape != t.shape or d.shape != t.shape:
                raise ValueError(
                    f"timestamps, prefill_tokens and decode_steps must have one entry per request; got "
                    f"shapes {t.shape}, {p.shape} and {d.shape}"
                )
            validate_lengths("prefill_tokens", p, minimum=0, integer=False)
            validate_lengths("decode_steps", d, minimum=1, integer=True)
            self.prefill_tokens = jnp.asarray(p, dtype=jnp.zeros(()).dtype)
            self.decode_steps = jnp.asarray(d, dtype=jnp.int32)
        else:
            self.prefill_tokens = None
            self.decode_steps = None

    @property
    def num_requests(self) -> int:
        return int(self.gaps.shape[0])

    def has_lengths(self) -> bool:
        return self.prefill_tokens is not None

    def row(self, offset, n):
        """Trace row of request ``n`` in a replica starting at row ``offset`` (``n = -1``: the
        row before the first)."""
        N = self.num_requests
        return jnp.mod(offset + n, N).astype(jnp.int32)

    def unit_gap(self, n, bits, offset=0):
        return self.gaps[self.row(offset, n)]

    def lengths(self, offset, n):
        row = self.row(offset, n)
        return self.prefill_tokens[row], self.decode_steps[row]

    def mean_decode_steps(self) -> float:
        return float(np.mean(np.asarray(self.decode_steps, dtype=np.float64)))

    def describe(self) -> str:
        return f"trace ({self.num_requests} arrivals)"


_TIME_COLUMNS = (("TIMESTAMP", "s"), ("timestamp", "ms"))


def _parse_time(value) -> float:
    """A timestamp in seconds: a number, or an ISO date-time such as Azure's
    ``2023-11-16 18:17:03.9799600`` (digits beyond microseconds are cut)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    import datetime

    if "." in text:
        head, frac = text.split(".", 1)
        text = f"{head}.{frac[:6]}"
    return datetime.datetime.fromisoformat(text).timestamp()


def read_arrival_times(path, time_column: str | None = None) -> np.ndarray:
    """Arrival times in seconds of a CSV or JSON Lines trace (a file or a bundled trace name).

    ``time_column``: by default Azure's ``TIMESTAMP`` (date-times or seconds) or
    Mooncake's ``timestamp`` (milliseconds). Raises ``ValueError`` for a trace without
    timestamps, with an empty one or with unreadable times."""
    p = resolve_trace(path)
    columns, rows = read_records(p, "trace")
    if not rows:
        raise ValueError(f"{p}: no records")
    scale = 1.0
    if time_column is None:
        for name, unit in _TIME_COLUMNS:
            if name in columns:
                time_column, scale = name, (1e-3 if unit == "ms" else 1.0)
                break
        else:
            raise ValueError(
                f"{p}: the trace has no timestamps (columns: {', '.join(columns)}); expected a TIMESTAMP "
                "or timestamp column for arrivals=trace"
            )
    elif time_column not in columns:
        raise ValueError(f"{p}: no column {time_column!r}; columns are: {', '.join(columns)}")
    out = np.empty(len(rows))
    for i, row in enumerate(rows):
        value = row.get(time_column)
        try:
            out[i] = _parse_time(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{p}: record {i + 1}: {time_column}={value!r} is not a time") from None
    return out * scale


def load_arrival_trace(path, *, time_column: str | None = None, tokens_per_step: int = 1) -> TraceArrivals:
    """A [`TraceArrivals`][afdjax.TraceArrivals] replaying a request trace: its timestamps and its rows'
    prefill and decode lengths in order (see [`load_trace`][afdjax.load_trace] for the columns and
    ``tokens_per_step``). Rows are sorted by time (stable) when the file is not.

    Arguments:
        path: a trace file or a bundled name (Azure ``TIMESTAMP``, Mooncake ``timestamp``).
        time_column: the timestamp column (default: the Azure or Mooncake name).
        tokens_per_step: output tokens per decode step (default 1).

    Returns:
        a [`TraceArrivals`][afdjax.TraceArrivals].
    """
    from .._data import read_trace

    tokens_per_step = check_int("tokens_per_step", tokens_per_step, 1)
    times = read_arrival_times(path, time_column)
    prefill, output = read_trace(path)
    order = np.argsort(times, kind="stable")
    decode = np.ceil(output / tokens_per_step).astype(np.int64)
    return TraceArrivals(times[order], prefill[order], decode[order])
