"""Step-latency observations for :func:`afdjax.fit_latency`: reading and validation (host side).

The file format is described in :mod:`afdjax._fit._latency`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping

import numpy as np

from .._data import read_records, resolve_file
from .._latency import COMM_SCALINGS, PRESETS

STAGES = ("attention", "ffn", "comm")
LOSSES = ("huber", "l2")
TIME_COLUMNS = {"attention": "attention_time", "ffn": "ffn_time", "comm": "comm_time"}
STAGE_COEFFICIENTS = {"attention": ("alpha_a", "beta_a"), "ffn": ("alpha_f", "beta_f"), "comm": ("alpha_c", "beta_c")}
OBSERVATION_COLUMNS = ("attention_tokens", "batch_size", "ratio", "attention_time", "ffn_time", "comm_time")


@dataclasses.dataclass(frozen=True)
class LatencyObservations:
    """Validated step-latency measurements (float64 NumPy arrays of shape ``(n_rows,)``).

    Times are NaN where a row did not measure that stage. ``attention_tokens`` and
    ``batch_size`` are NaN only in rows that do not need them; ``ratio`` is 1 where the
    column was absent. Build with :func:`read_latency_observations` or
    :meth:`from_columns`.
    """

    attention_tokens: np.ndarray
    batch_size: np.ndarray
    ratio: np.ndarray
    attention_time: np.ndarray
    ffn_time: np.ndarray
    comm_time: np.ndarray
    source: str = "<arrays>"
    sha256: str | None = None

    @property
    def num_rows(self) -> int:
        return int(self.attention_tokens.shape[0])

    @classmethod
    def from_columns(cls, columns: Mapping, source: str = "<arrays>") -> LatencyObservations:
        """From a mapping of column name to a sequence of values (``None``, NaN or ``""``
        marks an empty cell), validated like a file; rows are numbered from 1."""
        if not isinstance(columns, Mapping):
            raise ValueError(
                f"observations must be a path, a mapping of columns or LatencyObservations, got {columns!r}"
            )
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{source}: columns have different lengths: {lengths}")
        n = next(iter(lengths.values()), 0)
        rows = [{name: _cell(columns[name][i]) for name in columns} for i in range(n)]
        return _observations_from_rows(list(columns), rows, source)

    def stage_data(self, stage: str, comm_scaling: str = "batch") -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the rows that measured ``stage``: ``x`` is ``T`` (attention), ``r*B``
        (FFN), ``B`` or ``r*B`` (comm, by ``comm_scaling``); ``y`` the measured time."""
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r} is not allowed; expected one of {', '.join(STAGES)}")
        _check_comm_scaling(comm_scaling)
        y = getattr(self, TIME_COLUMNS[stage])
        rows = ~np.isnan(y)
        if stage == "attention":
            x = self.attention_tokens
        elif stage == "ffn" or comm_scaling == "ratio_batch":
            x = self.ratio * self.batch_size
        else:
            x = self.batch_size
        return x[rows], y[rows]

    def check_identifiable(self, comm_scaling: str | None = None) -> None:
        """``ValueError`` unless every measured stage has at least 2 distinct ``x`` values
        (the comm stage is checked only when ``comm_scaling`` is given)."""
        for stage in STAGES:
            if stage == "comm" and comm_scaling is None:
                continue
            x, y = self.stage_data(stage, comm_scaling or "batch")
            distinct = np.unique(x).size
            if y.size and distinct < 2:
                what = {
                    "attention": "attention_tokens",
                    "ffn": "ratio * batch_size",
                    "comm": "batch_size" if comm_scaling == "batch" else "ratio * batch_size",
                }[stage]
                raise ValueError(
                    f"{self.source}: column {TIME_COLUMNS[stage]}: {y.size} row(s) but only {distinct} distinct "
                    f"value(s) of {what}; a straight line needs at least 2 distinct values"
                )


def _cell(value):
    if value is None:
        return None
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return None  # NaN in an array means "not measured"
    return value


def _check_comm_scaling(comm_scaling) -> None:
    if comm_scaling not in COMM_SCALINGS:
        raise ValueError(f"comm_scaling={comm_scaling!r} is not allowed; expected one of {', '.join(COMM_SCALINGS)}")


def _observations_from_rows(columns: list[str], rows: list[dict], source: str, sha256: str | None = None):
    if not rows:
        raise ValueError(f"{source}: no data rows")
    time_columns = [c for c in TIME_COLUMNS.values() if c in columns]
    if not time_columns:
        raise ValueError(
            f"{source}: none of the time columns {', '.join(TIME_COLUMNS.values())} is present "
            f"(columns: {', '.join(columns) or 'none'})"
        )
    needs = {"attention_time": ("attention_tokens",), "ffn_time": ("batch_size",), "comm_time": ("batch_size",)}
    n = len(rows)
    values = {name: np.full(n, np.nan) for name in OBSERVATION_COLUMNS}
    for i, row in enumerate(rows):
        for name in OBSERVATION_COLUMNS:
            if name not in columns:
                continue
            raw = row.get(name)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                continue
            where = f"{source}: row {i + 1}, column {name}"
            shown = repr(raw) if isinstance(raw, str) else str(raw)
            if isinstance(raw, (bool, np.bool_)) or not isinstance(raw, (str, int, float, np.integer, np.floating)):
                raise ValueError(f"{where}: {shown} is not a number")
            try:
                v = float(raw)
            except ValueError:
                raise ValueError(f"{where}: {shown} is not a number") from None
            if not math.isfinite(v):
                raise ValueError(f"{where}: {shown} is not finite")
            if name in ("batch_size", "ratio"):
                if v <= 0:
                    raise ValueError(f"{where}: {shown} must be > 0")
            elif v < 0:
                raise ValueError(f"{where}: {shown} is negative; times and token counts must be >= 0")
            values[name][i] = v
    for t in time_columns:  # an x column is required once a row gives the time that needs it
        if np.isnan(values[t]).all():
            continue
        for x in needs[t]:
            if x not in columns:
                raise ValueError(f"{source}: no column {x!r} (needed for {t}); columns are: {', '.join(columns)}")
    for i in range(n):
        for t in time_columns:
            if np.isnan(values[t][i]):
                continue
            required = needs[t] + (("ratio",) if t != "attention_time" and "ratio" in columns else ())
            for x in required:
                if np.isnan(values[x][i]):
                    raise ValueError(f"{source}: row {i + 1}, column {x}: empty, but {t} is given in this row")
    if "ratio" not in columns:
        values["ratio"] = np.ones(n)
    if all(np.isnan(values[t]).all() for t in time_columns):
        raise ValueError(f"{source}: every cell of {', '.join(time_columns)} is empty: nothing to fit")
    return LatencyObservations(**values, source=source, sha256=sha256)


def read_latency_observations(path, comm_scaling: str | None = None) -> LatencyObservations:
    """Read and validate step-latency observations from a CSV or JSON Lines file.

    See the module documentation for the columns. Raises ``FileNotFoundError`` for a missing
    file and ``ValueError`` naming the file, the row (1-based) and the column for a missing
    column, a non-numeric, non-finite or negative value, or a stage whose rows hold fewer
    than 2 distinct ``x`` values (the comm stage only when ``comm_scaling`` is given, as its
    ``x`` is ``B`` or ``r*B`` by scaling).

    Arguments:
        path: the CSV or JSON Lines file.
        comm_scaling: ``"batch"`` or ``"ratio_batch"`` to check the comm stage's ``x`` values (``None``: not checked).

    Returns:
        the validated observations (columns as arrays).
    """
    p = resolve_file(path, "observations")
    columns, rows = read_records(p)
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    obs = _observations_from_rows(columns, rows, str(p), sha256=digest)
    if comm_scaling is not None:
        _check_comm_scaling(comm_scaling)
    obs.check_identifiable(comm_scaling)
    return obs


# ====================================================================== bundled example
def _example_observations_csv(seed: int = 0) -> str:
    """The text of ``afdjax/data/example_step_latency.csv``: SYNTHETIC data, not measured.

    Process (NumPy ``default_rng(seed)``, 64 rows): ``B`` uniform on {64, 128, 256, 512},
    ``r`` uniform on {1, 2, 4, 8}, mean KV tokens per slot uniform on [100, 1000) and
    ``T = round(B * that)``; times from the ``paper-910c`` preset (``comm_scaling="batch"``)
    plus Gaussian noise of standard deviation ``1 + 2 %`` of the true time; 4 % of the
    measurements (independently per stage) are multiplied by a factor uniform on [1.5, 3)
    (straggling steps); ``comm_time`` is left empty in every fourth row. Times are rounded to
    0.01. Regenerate with::

        python -c "from afdjax._fit._latency_observations import _example_observations_csv as f; print(f(), end='')" \\
            > afdjax/data/example_step_latency.csv
    """
    rng = np.random.default_rng(seed)
    p = PRESETS["paper-910c"]
    n = 64
    batch = rng.choice([64, 128, 256, 512], size=n)
    ratio = rng.choice([1, 2, 4, 8], size=n)
    tokens = np.round(batch * rng.uniform(100, 1000, size=n)).astype(int)
    true = {
        "attention_time": p["alpha_a"] * tokens + p["beta_a"],
        "ffn_time": p["alpha_f"] * ratio * batch + p["beta_f"],
        "comm_time": p["alpha_c"] * batch + p["beta_c"],
    }
    measured = {}
    for name, t in true.items():
        y = t + rng.normal(size=n) * (1.0 + 0.02 * t)
        spikes = rng.uniform(size=n) < 0.04
        y = np.where(spikes, y * rng.uniform(1.5, 3.0, size=n), y)
        measured[name] = np.round(y, 2)
    lines = [
        "# SYNTHETIC step-latency observations for afdjax fit latency (not measured on hardware).",
        "# Generated by afdjax._fit_latency._example_observations_csv(seed=0): paper-910c coefficients",
        "# (alpha_a=0.00165 beta_a=50 alpha_f=0.083 beta_f=100 alpha_c=0.022 beta_c=20, comm_scaling=batch),",
        "# Gaussian noise sd = 1 + 2% of the time, 4% straggler spikes (x1.5-3), comm_time empty in every 4th row.",
        "attention_tokens,batch_size,ratio,attention_time,ffn_time,comm_time",
    ]
    for i in range(n):
        comm = "" if i % 4 == 3 else f"{measured['comm_time'][i]:.2f}"
        lines.append(
            f"{tokens[i]},{batch[i]},{ratio[i]},{measured['attention_time'][i]:.2f},{measured['ffn_time'][i]:.2f},{comm}"
        )
    return "\n".join(lines) + "\n"
