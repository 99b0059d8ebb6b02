"""Measured ratio sweeps: the observations of :func:`afdjax.calibrate` and :func:`afdjax.predict`.

One row per measured configuration: the A/F ratio ``r``, the batch size ``B`` (slots per
Attention instance), optionally the workload it ran (a ``--workload`` spec, so each row may
have its own context) and the measured value, either ``throughput`` (output tokens per time
unit per instance, the bundle having ``r + 1`` instances) or ``step_time`` (the mean time of
one decode step, in any time unit), with an optional ``stderr`` of that value.

The two are the same measurement: every step emits one token per slot, so
``throughput = r B / ((r + 1) step_time)``; the calibration works in throughput and reports
both. The time unit of everything fitted is the unit of ``step_time`` (or of the
throughput's denominator).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .._data import read_records, resolve_file
from .._validate import check_int, invalid

QUANTITIES = ("throughput", "step_time")
MAX_RATIO = 4096  # afdjax._engine._config.MAX_RATIO
MAX_BATCH_SIZE = 2**16


@dataclasses.dataclass(frozen=True)
class RatioSweep:
    """Rows of measured (or to-be-predicted) configurations, in file order.

    Arguments:
        ratio: ``(n,)`` integer A/F ratios ``r`` in ``[1, 4096]``.
        batch_size: ``(n,)`` integer slots per Attention instance ``B`` in ``[1, 65536]``.
        workload: ``n`` labels, one per row: the ``--workload`` spec text the row ran
            (``""`` where the file has no ``workload`` column). Rows of one label share one
            [`Workload`][afdjax.Workload] (the ``workloads`` argument of [`calibrate`][afdjax.calibrate]).
        value: ``(n,)`` measured values (finite, ``> 0``), or ``None`` (rows to predict).
        quantity: what ``value`` is: ``"throughput"`` (tokens per time unit per
            instance) or ``"step_time"`` (time units per decode step); ignored without ``value``.
        stderr: ``(n,)`` standard errors of ``value`` (finite, ``>= 0``), or ``None``.

    """

    ratio: np.ndarray
    batch_size: np.ndarray
    workload: tuple[str, ...]
    value: np.ndarray | None = None
    quantity: str = "throughput"
    stderr: np.ndarray | None = None

    def __post_init__(self):
        ratio = np.asarray(self.ratio)
        n = ratio.shape[0] if ratio.ndim == 1 else -1
        if n < 1:
            raise invalid("ratio", self.ratio, "a non-empty 1-d array of integers")
        for name, top in (("ratio", MAX_RATIO), ("batch_size", MAX_BATCH_SIZE)):
            a = np.asarray(getattr(self, name), dtype=float)
            if a.shape != (n,):
                raise invalid(name, a.shape, f"an array of shape ({n},) like ratio")
            bad = ~np.isfinite(a) | (a < 1) | (a > top) | (a != np.round(a))
            if np.any(bad):
                i = int(np.argmax(bad))
                raise ValueError(f"{name}[{i}]={a[i]:g} is invalid: expected an integer in [1, {top}]")
            object.__setattr__(self, name, a.astype(np.int64))
        labels = tuple(self.workload)
        if len(labels) != n or not all(isinstance(w, str) for w in labels):
            raise ValueError(f"workload is invalid: expected {n} strings (one label per row)")
        object.__setattr__(self, "workload", labels)
        if self.quantity not in QUANTITIES:
            raise invalid("quantity", self.quantity, f"one of {', '.join(QUANTITIES)}")
        for name, positive in (("value", True), ("stderr", False)):
            raw = getattr(self, name)
            if raw is None:
                continue
            a = np.asarray(raw, dtype=float)
            if a.shape != (n,):
                raise invalid(name, a.shape, f"an array of shape ({n},) like ratio")
            bad = ~np.isfinite(a) | ((a <= 0) if positive else (a < 0))
            if np.any(bad):
                i = int(np.argmax(bad))
                allowed = "a finite number > 0" if positive else "a finite number >= 0"
                raise ValueError(f"{name}[{i}]={a[i]!r} is invalid: expected {allowed}")
            object.__setattr__(self, name, a)
        if self.stderr is not None and self.value is None:
            raise ValueError("stderr is invalid without value: give the measured values too")

    def __len__(self) -> int:
        return len(self.ratio)

    def throughput(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The measured throughput per instance and its standard error (``None`` if not
        given), converted from ``step_time`` where needed (delta method:
        ``se_T = T se_tau / tau``). ``ValueError`` when the rows hold no values."""
        if self.value is None:
            raise ValueError("the observations hold no measured values (no throughput or step_time column)")
        if self.quantity == "throughput":
            return self.value, self.stderr
        thr = step_time_to_throughput(self.value, self.ratio, self.batch_size)
        return thr, None if self.stderr is None else thr * self.stderr / self.value

    def groups(self) -> list[tuple[str, int, np.ndarray]]:
        """``(workload label, batch size, row indices)`` of each configuration group, sorted."""
        keys = sorted({(w, int(b)) for w, b in zip(self.workload, self.batch_size)})
        labels = np.asarray(self.workload, dtype=object)
        return [(w, b, np.nonzero((labels == w) & (self.batch_size == b))[0]) for w, b in keys]

    def subset(self, rows) -> RatioSweep:
        """The rows ``rows`` (indices, in the given order)."""
        idx = np.asarray(rows, dtype=int)
        pick = lambda a: None if a is None else a[idx]
        return RatioSweep(
            ratio=self.ratio[idx],
            batch_size=self.batch_size[idx],
            workload=tuple(self.workload[i] for i in idx),
            value=pick(self.value),
            quantity=self.quantity,
            stderr=pick(self.stderr),
        )


def step_time_to_throughput(step_time, ratio, batch_size):
    """``r B / ((r + 1) step_time)``: tokens per time unit per instance (its own inverse)."""
    return np.asarray(ratio) * np.asarray(batch_size) / ((np.asarray(ratio) + 1.0) * np.asarray(step_time))


def read_ratio_sweep(path, *, require_values: bool = True) -> RatioSweep:
    """A [`RatioSweep`][afdjax.RatioSweep] from a CSV (or JSON Lines) file.

    Columns: ``ratio``, ``batch_size``, optionally ``workload`` (a ``--workload`` spec per
    row; quote it in a CSV when it holds commas), one of ``throughput`` or ``step_time``
    (required unless ``require_values=False``: rows to predict), optionally ``stderr``.
    Lines starting with ``#`` are comments. Raises ``ValueError`` naming the row and column
    of a bad cell, ``FileNotFoundError`` for a missing file.

    Arguments:
        path: the CSV or JSON Lines file.
        require_values: whether every row must carry ``throughput`` or ``step_time`` (``False``: rows to predict).

    Returns:
        a [`RatioSweep`][afdjax.RatioSweep].
    """
    p = resolve_file(path, "observations")
    columns, rows = read_records(p, "observations")
    missing = [c for c in ("ratio", "batch_size") if c not in columns]
    given = [q for q in QUANTITIES if q in columns]
    if not missing and len(given) == 0 and require_values:
        missing = ["throughput or step_time"]
    if missing:
        raise ValueError(
            f"observations file {str(p)!r}: missing column(s) {', '.join(missing)}; "
            f"columns are: {', '.join(columns) or '(none)'}"
        )
    if len(given) == 2:
        raise ValueError(
            f"observations file {str(p)!r}: has both throughput and step_time columns; give one of them "
            "(throughput = r B / ((r + 1) step_time))"
        )
    quantity = given[0] if given else "throughput"
    if not rows:
        raise ValueError(f"observations file {str(p)!r} has no rows")
    has_se = "stderr" in columns and bool(given)
    numeric = ["ratio", "batch_size"] + given + (["stderr"] if has_se else [])
    data: dict[str, list] = {k: [] for k in numeric}
    labels = []
    for i, row in enumerate(rows, 1):
        for k in numeric:
            cell = row.get(k)
            try:
                v = float(cell)
            except (TypeError, ValueError):
                raise ValueError(f"observations file {str(p)!r}: row {i}: {k}={cell!r} is not a number") from None
            if k in ("ratio", "batch_size"):
                try:
                    v = check_int(k, v, 1, MAX_RATIO if k == "ratio" else MAX_BATCH_SIZE)
                except ValueError as err:
                    raise ValueError(f"observations file {str(p)!r}: row {i}: {err}") from None
            elif not math.isfinite(v) or v < 0 or (v == 0 and k != "stderr"):
                allowed = "a finite number >= 0" if k == "stderr" else "a finite number > 0"
                raise ValueError(f"observations file {str(p)!r}: row {i}: {k}={cell!r} is invalid: expected {allowed}")
            data[k].append(v)
        label = row.get("workload")
        labels.append("" if label is None else str(label).strip())
    return RatioSweep(
        ratio=np.asarray(data["ratio"]),
        batch_size=np.asarray(data["batch_size"]),
        workload=tuple(labels),
        value=np.asarray(data[quantity]) if given else None,
        quantity=quantity,
        stderr=np.asarray(data["stderr"]) if has_se else None,
    )
