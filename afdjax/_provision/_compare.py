"""Comparing simulated ratios: paired differences on common random numbers.

Every ratio of one [`simulate`][afdjax.simulate] run is simulated on the same random numbers
(the system with ratio ``r`` is the first ``r`` instances of each replica), so the
difference between two ratios is measured replica by replica and its standard error is
that of the paired differences, much smaller than two independent standard errors
combined. ``afdjax simulate`` and ``afdjax provision`` both report "the ratios within 2
standard errors of the best" with [`ratios_within_2_stderr`][afdjax.ratios_within_2_stderr] (one definition), and
the same warnings on what limits that answer (``range_warnings``,
``replica_warnings``, ``replica_note``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .._engine._config import MAX_RATIO
from .._validate import invalid


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """``throughput(ratios[i]) - throughput(ratios[j])`` over replicas (paired).

    Attributes:
        ratio: the ratio compared with (``ratios[j]``).
        difference: mean over replicas of the per-replica throughput difference
            (tokens per time unit per instance).
        stderr: its standard error (NaN with one replica).
        z: ``difference / stderr`` (``+-inf`` when the standard error is 0 and the
            difference is not, 0 for an exact tie, NaN with one replica when the difference
            is not 0: nothing can be told).

    """

    ratio: int
    difference: float
    stderr: float
    z: float

    def to_dict(self) -> dict:
        return {"ratio": self.ratio, "difference": self.difference, "stderr": self.stderr, "z": self.z}


def paired_difference(result, i: int, j: int) -> PairedDifference:
    """Paired (common random numbers) comparison of the ratios at indices ``i`` and ``j``
    of a [`SimulationResult`][afdjax.SimulationResult]: the difference of ``i`` over ``j``.

    Arguments:
        result: a [`SimulationResult`][afdjax.SimulationResult] with at least two replicas for a standard error.
        i: index into ``result.ratios`` of the first ratio.
        j: index of the ratio it is compared with.

    Returns:
        a [`PairedDifference`][afdjax.PairedDifference].
    """
    per = np.asarray(result.throughput_per_replica, dtype=float)
    d = per[:, i] - per[:, j]
    mean = float(np.mean(d))
    se = float(np.std(d, ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    if se > 0:
        z = mean / se
    elif math.isnan(se):  # one replica: no standard error, so no test
        z = 0.0 if mean == 0 else math.nan
    else:
        z = math.inf if mean > 0 else (0.0 if mean == 0 else -math.inf)
    return PairedDifference(ratio=int(np.asarray(result.ratios)[j]), difference=mean, stderr=se, z=z)


def ratios_within_2_stderr(result, best: int | None = None) -> list[int]:
    """The ratios whose throughput is within 2 paired standard errors of the best one
    (``z <= 2`` in [`paired_difference`][afdjax.paired_difference]), the best included, in the order of
    ``result.ratios``. ``best``: index of the best ratio (default: the highest simulated
    throughput per instance). With one replica no standard error exists: only exact
    ties with the best are kept.

    Arguments:
        result: a [`SimulationResult`][afdjax.SimulationResult].
        best: index of the best ratio (default: the highest simulated throughput per instance).

    Returns:
        the list of integer ratios.
    """
    ratios = np.asarray(result.ratios)
    if best is None:
        best = int(np.argmax(np.asarray(result.throughput_per_instance, dtype=float)))
    if not 0 <= best < len(ratios):
        raise invalid("best", best, f"an index in [0, {len(ratios) - 1}]")
    return [int(ratios[j]) for j in range(len(ratios)) if j == best or paired_difference(result, best, j).z <= 2]


def check_ratio_list(ratios) -> list[int]:
    """Ratios as a list of Python ints, refusing duplicates (``ValueError``); the other
    checks are [`simulate`][afdjax.simulate]'s."""
    try:
        values = [int(r) if float(r) == int(r) else r for r in np.atleast_1d(np.asarray(ratios)).tolist()]
    except (TypeError, ValueError, OverflowError):
        return ratios  # malformed: simulate says what is wrong
    seen, dups = set(), []
    for v in values:
        if v in seen and v not in dups:
            dups.append(v)
        seen.add(v)
    if dups:
        raise invalid(
            "ratios",
            ratios if isinstance(ratios, (list, tuple)) else values,
            f"distinct ratios (repeated: {', '.join(map(str, dups))})",
        )
    return values


def range_warnings(ratios: list[int], best: int, what: str) -> list[str]:
    """A warning when ``best`` (the ``what``, e.g. "best ratio") is the top or the bottom of
    the ratios simulated: the optimum may lie beyond the range, and how to widen it."""
    lo, hi = min(ratios), max(ratios)
    if len(ratios) < 2 or lo < best < hi:
        return []
    if best == hi:
        if hi >= MAX_RATIO:
            return [f"the {what} r = {best} is afdjax's largest ratio ({MAX_RATIO}): the optimum may lie beyond it"]
        return [
            f"the {what} r = {best} is the largest simulated: the optimum may lie beyond it; widen the range "
            f"(--ratios {lo}:{min(2 * hi, MAX_RATIO)}, ratios= in Python)"
        ]
    if lo > 1:
        return [
            f"the {what} r = {best} is the smallest simulated: the optimum may lie below it; widen the range "
            f"(--ratios 1:{hi}, ratios= in Python)"
        ]
    return []


def replica_warnings(num_replicas: int) -> list[str]:
    """A warning when standard errors cannot exist (fewer than 2 replicas)."""
    if num_replicas >= 2:
        return []
    return [
        "with one replica there are no standard errors (they need at least 2 replicas), so no ratio can be "
        "told apart from the best: use 2 or more replicas (--replicas)"
    ]


def replica_note(num_replicas: int) -> str | None:
    """A note when the paired comparison rests on 2 or 3 replicas (a weak test)."""
    if 2 <= num_replicas < 4:
        return (
            f"Note: {num_replicas} replicas give rough standard errors (few degrees of freedom), so the paired "
            "comparison is weak; 4 or more replicas (--replicas) make it reliable."
        )
    return None
