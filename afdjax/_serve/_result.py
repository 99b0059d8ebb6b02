"""The results of an open-loop run: :class:`ServeResult`, the pooling of the replicas'
sums into it (:func:`aggregate`, host side) and the saturation flag (:func:`saturation`)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import numpy as np

from ._kernel import Stats, histogram_edges

SATURATION_MARGIN = 0.03
"""A rate is flagged saturated when its offered load exceeds the full bundle's service rate
by more than this fraction (``offered_load > 1 + SATURATION_MARGIN``), or when the queue
reached its capacity (see :func:`saturation`). The margin keeps the estimate's noise (a few
per cent in a one-replica run of a few hundred steps) off the stable side.

Measured (``experiments/saturation_flag.py``, experiments/results/saturation_flag.txt):
runs at fractions of the saturated rate ``X_sat``, one replica each and pooled by four;
Poisson, gamma ``cv = 3`` and Azure-trace arrivals at ``B = 4`` (300 and 3000 steps, 32
runs) and the Azure conversation trace with its lengths at ``B = 64`` (300 and 2000
steps, 8 runs; 20000 steps, 4 runs: every one right at 0.95 and at 1.05). No run at 0.8
``X_sat`` or below is flagged (the previous growth rule: up to 38 % at 0.2 ``X_sat``);
at 1.2 ``X_sat`` and above every run is, but one of 8 one-replica 300-step Azure runs for
``r = 1`` and for ``r = 2`` (the growth rule: 50-100 %).
Between, at 0.95: at most 3 % of the ``B = 4`` runs and 12 % of the one-replica 300-step
Azure runs; at 1.1: all the ``B = 4`` runs but 6 % of the short one-replica trace ones,
75-88 % of the one-replica 2000-step Azure runs and 38-62 % of the 300-step ones (their
windows of a few hundred heavy-tailed requests are lighter or heavier than the trace).
With a binding KV capacity (Poisson, ``B = 4``) the load is measured as well: runs at a
load of 0.65 are never flagged, at 0.97-0.99 up to 22 % of the short one-replica runs,
at 1.08-1.10 94 % of those and all the others. Margins 0, 0.02 and 0.05 were compared: 0
flags more stable runs at 0.95, 0.05 misses more at 1.05-1.1."""

QUANTILE_LEVELS = (0.5, 0.9, 0.99)


class ServeResult(eqx.Module):
    """Open-loop results per ratio and arrival rate (arrays ``(ratios, rates)`` unless noted).

    Times are in the latency coefficients' time unit, rates per that unit. Request
    quantities (TPOT, TTFT, sojourn, goodput) are over the requests that finished in the
    measured steps; time averages (queue, slots, KV load, utilisation) over the measured
    time, idle periods included. ``*_stderr``: standard errors across replicas (NaN with one).

    When ``saturated`` is True the queue grows without bound at that rate (its
    ``offered_load``, the arrivals over what the full bundle serves, is above 1): throughput
    is then the bundle's saturated throughput, and the latency figures only describe the
    finite run (they grow with its length), not a steady state.

    Attributes:
        stderr: standard error of ``throughput_per_instance``.
        goodput_stderr: of ``goodput_per_instance``.
        tpot_mean_stderr: of ``tpot_mean``.
        tpot_quantile_stderr: of ``tpot_quantiles``.
        ttft_mean_stderr: of ``ttft_mean``.
        ttft_quantiles: ``(ratios, rates, levels)`` quantiles of TTFT over requests.
        ttft_quantile_stderr: of ``ttft_quantiles``.
        mean_queue_length_stderr: of ``mean_queue_length``.
        mean_in_system_stderr: of ``mean_in_system``.
        mean_sojourn_time_stderr: of ``mean_sojourn_time``.
        utilisation_ffn: busy fraction of the FFN.
        utilisation_comm: busy fraction of the links.
        quantile_levels: the quantile levels (static).
        batch_size: slots per Attention instance (static).
        num_steps: measured steps (static).
        num_replicas: replicas (static).
        settings: the inputs (static).
    """

    ratios: np.ndarray
    """``(ratios,)`` A/F ratios ``r``."""
    arrival_rates: np.ndarray
    """``(rates,)`` arrival rate ``X`` per Attention instance."""
    arrival_rate_total: jax.Array
    """The bundle's arrival rate ``r X``."""
    throughput_per_instance: jax.Array
    """Tokens per time unit per instance (``r + 1`` instances)."""
    stderr: jax.Array
    goodput_per_instance: jax.Array
    """Tokens per time unit per instance of the requests that met both targets: the
    throughput times the share of the finished requests' tokens that met them (so never
    above the throughput, and equal to it without targets). Counting the finished requests'
    whole lengths instead would add the tokens they emitted before the measured window
    and miss those of the requests still running at its end, which can exceed the
    throughput in a finite run."""
    goodput_stderr: jax.Array
    tpot_mean: jax.Array
    """Mean over requests of the mean step time over their decode steps."""
    tpot_mean_stderr: jax.Array
    tpot_quantiles: jax.Array
    """``(ratios, rates, levels)`` quantiles of TPOT over requests (levels ``quantile_levels``),
    from a log-spaced histogram of ``num_bins`` bins over ``[c / 1e3, 1e3 c]`` (``c`` the
    full-batch step time; TTFT over ``[c / 1e3, 1e7 c]``): resolution one bin, 0.34 % (TTFT
    0.56 %) with 4096 bins; standard errors by the jackknife over replicas."""
    tpot_quantile_stderr: jax.Array
    ttft_mean: jax.Array
    """Mean TTFT: queue wait + ``prefill_alpha P + prefill_beta``."""
    ttft_mean_stderr: jax.Array
    ttft_quantiles: jax.Array
    ttft_quantile_stderr: jax.Array
    mean_queue_length: jax.Array
    """Time-average requests waiting in the bundle's queue."""
    mean_queue_length_stderr: jax.Array
    mean_in_system: jax.Array
    """Time-average requests in the bundle (queue + slots)."""
    mean_in_system_stderr: jax.Array
    mean_occupied_slots: jax.Array
    """Time-average occupied slots per Attention instance (of ``batch_size``)."""
    mean_kv_load: jax.Array
    """Time-average KV tokens per Attention instance."""
    mean_sojourn_time: jax.Array
    """Mean time from arrival to the end of the last decode step (prefill not included)."""
    mean_sojourn_time_stderr: jax.Array
    utilisation_attention: jax.Array
    """Busy fraction of time, mean over the Attention instances."""
    utilisation_ffn: jax.Array
    utilisation_comm: jax.Array
    idle_fraction: jax.Array
    """Fraction of time the bundle held no request."""
    completed: jax.Array
    """Requests finished in the measured steps (all replicas)."""
    rejected: jax.Array
    """Requests refused because their prefill exceeds the KV capacity (all replicas)."""
    queue_growth: jax.Array
    """Growth of the requests in the bundle over the measured window per arrival in it
    (means over replicas): about ``1 - 1 / offered_load`` when saturated, noise around 0
    when stable (a diagnostic; the flag does not use it)."""
    full_fraction: jax.Array
    """Fraction of the measured time during which a request waited after the step's
    admission (no slot free, or the head of the queue did not fit in the KV capacity):
    the bundle served at its full rate. Near 1 when saturated."""
    offered_load: jax.Array
    """The load ``rho``: arrivals per time unit ``r X`` (less the share refused) over the
    full bundle's service rate ``mu``, the requests per time unit it completes while full
    (tokens per time unit in the ``full_fraction`` steps over the mean decode length
    ``E[D]``). Stable below 1, saturated above; NaN where the bundle was never full
    (far from saturation)."""
    saturated: jax.Array
    """bool: the queue grows without bound: ``offered_load > 1 + SATURATION_MARGIN`` or the
    queue reached its capacity (see :func:`saturation`)."""
    quantile_levels: tuple = eqx.field(static=True, default=QUANTILE_LEVELS)
    batch_size: int = eqx.field(static=True, default=0)
    num_steps: int = eqx.field(static=True, default=0)
    num_replicas: int = eqx.field(static=True, default=0)
    settings: dict = eqx.field(static=True, default_factory=dict)

    def _level(self, q):
        return self.quantile_levels.index(q)

    @property
    def tpot_p99(self):
        return self.tpot_quantiles[..., self._level(0.99)]

    @property
    def ttft_p99(self):
        return self.ttft_quantiles[..., self._level(0.99)]

    @property
    def tpot_p99_stderr(self):
        return self.tpot_quantile_stderr[..., self._level(0.99)]

    @property
    def ttft_p99_stderr(self):
        return self.ttft_quantile_stderr[..., self._level(0.99)]


def _mean_se(x):
    """Mean and standard error over axis 0 (NaN with one replica)."""
    n = x.shape[0]
    mean = np.mean(x, axis=0)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, np.std(x, axis=0, ddof=1) / math.sqrt(n)


def _jackknife_se(hist, total, log_lo, dlog, levels):
    """Jackknife standard error over replicas of the pooled-histogram quantiles (the pooled
    quantile of a heavy tail is driven by a few replicas: the spread of the per-replica
    quantiles understates its error). NaN with one replica."""
    n = hist.shape[0]
    if n < 2:
        return np.full(hist_quantiles(total, log_lo, dlog, levels).shape, np.nan)
    return jackknife(np.stack([hist_quantiles(total - hist[i], log_lo, dlog, levels) for i in range(n)]))


def jackknife(loo):
    """The jackknife standard error from the leave-one-out estimates ``loo`` (replicas on
    the first axis); NaN with one replica."""
    n = loo.shape[0]
    if n < 2:
        return np.full(loo.shape[1:], np.nan)
    return np.sqrt((n - 1) / n * np.sum((loo - loo.mean(axis=0)) ** 2, axis=0))


def _div(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def _share(good, done):
    """The share of the finished tokens that met the targets (0 where none finished)."""
    return np.minimum(np.nan_to_num(_div(good, done), nan=0.0), 1.0)


POOLED_SUMS = ("time", "tokens", "good_tokens", "done_tokens", "done", "tpot_sum", "ttft_sum", "sojourn_sum", "queue")
"""The sums :func:`pooled_quantities` needs: :class:`Stats` fields and ``queue`` (the queue
area, ``queue_area + arrival_area`` of each replica)."""


def pooled_quantities(s: dict, inst) -> dict:
    """Throughput, goodput, mean TPOT, TTFT and sojourn time and mean queue length from the
    sums ``s`` (:data:`POOLED_SUMS`, float64, any leading axes: one replica's, or summed
    over replicas for the pooled ratio estimates) and the instances ``r + 1``."""
    thr = s["tokens"] / s["time"] / inst
    return {
        "throughput_per_instance": thr,
        "goodput_per_instance": thr * _share(s["good_tokens"], s["done_tokens"]),
        "tpot_mean": _div(s["tpot_sum"], s["done"]),
        "ttft_mean": _div(s["ttft_sum"], s["done"]),
        "mean_sojourn_time": _div(s["sojourn_sum"], s["done"]),
        "mean_queue_length": s["queue"] / s["time"],
    }


_STDERR_NAMES = {"throughput_per_instance": "stderr", "goodput_per_instance": "goodput_stderr"}


def hist_quantiles(hist, log_lo, dlog, levels):
    """Quantiles of log-binned counts ``(..., nb + 2)`` (underflow, bins, overflow),
    interpolated log-linearly inside the bin: ``(..., len(levels))``; NaN without counts."""
    h = np.asarray(hist, dtype=np.float64)
    nb = h.shape[-1] - 2
    total = h.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(h, axis=-1) / np.where(total > 0, total, 1.0)
    out = []
    for q in levels:
        b = np.clip(np.sum(cdf < q, axis=-1), 0, nb + 1)  # first bin with cdf >= q
        prev = np.where(b > 0, np.take_along_axis(cdf, np.maximum(b - 1, 0)[..., None], -1)[..., 0], 0.0)
        hb = np.take_along_axis(h, b[..., None], -1)[..., 0] / np.where(total[..., 0] > 0, total[..., 0], 1.0)
        frac = np.clip(np.nan_to_num(_div(q - prev, hb), nan=0.5), 0.0, 1.0)
        log_v = log_lo + (np.clip(b, 1, nb) - 1 + frac) * dlog
        v = np.where(b == 0, np.exp(log_lo), np.where(b == nb + 1, np.exp(log_lo + nb * dlog), np.exp(log_v)))
        out.append(np.where(total[..., 0] > 0, v, np.nan))
    return np.stack(out, axis=-1)


def aggregate(
    st: Stats, ratios, rates, scale, num_bins: int, levels=QUANTILE_LEVELS, mean_decode: float | None = None
) -> dict:
    """Pool the stacked per-replica :class:`Stats` ``(replicas, ratios, rates)`` into the
    fields of :class:`ServeResult` (a dict of NumPy arrays; host side). ``mean_decode``:
    the workload's ``E[D]`` (see :func:`saturation`)."""
    st = jax.tree_util.tree_map(lambda x: np.asarray(x), st)
    f = {name: np.asarray(getattr(st, name), dtype=np.float64) for name in st.__dataclass_fields__}
    ratios = np.asarray(ratios, dtype=np.float64)
    rates = np.asarray(rates, dtype=np.float64)
    r = ratios[None, :, None]
    inst = r + 1.0
    time = f["time"]
    f["queue"] = queue = f["queue_area"] + f["arrival_area"]
    system = queue + f["occupied_area"]
    per = {_STDERR_NAMES.get(q, f"{q}_stderr"): x for q, x in pooled_quantities(f, inst).items()}
    per["mean_in_system_stderr"] = system / time
    out = {name: _mean_se(x)[1] for name, x in per.items()}
    # pooled ratio estimates (every time unit, every request weighs the same)
    T = time.sum(axis=0)
    out.update(pooled_quantities({k: f[k].sum(axis=0) for k in POOLED_SUMS}, inst[0]))
    out["mean_in_system"] = system.sum(axis=0) / T
    out["mean_occupied_slots"] = f["occupied_area"].sum(axis=0) / T / r[0]
    out["mean_kv_load"] = f["kv_area"].sum(axis=0) / T
    out["utilisation_attention"] = f["attention_busy"].sum(axis=0) / T
    out["utilisation_ffn"] = f["ffn_busy"].sum(axis=0) / T
    out["utilisation_comm"] = f["comm_busy"].sum(axis=0) / T
    out["idle_fraction"] = f["idle"].sum(axis=0) / T
    out["completed"] = st.done.sum(axis=0)
    out["rejected"] = st.rejected.sum(axis=0)
    (tl, td), (wl, wd) = histogram_edges(float(scale), num_bins)
    for name, hist, lo, d in (("tpot", st.tpot_hist, tl, td), ("ttft", st.ttft_hist, wl, wd)):
        total = hist.sum(axis=0)
        out[f"{name}_quantiles"] = hist_quantiles(total, float(lo), d, levels)
        out[f"{name}_quantile_stderr"] = _jackknife_se(hist, total, float(lo), d, levels)
    out.update(saturation(st, ratios, rates, mean_decode))
    out["arrival_rate_total"] = ratios[:, None] * rates[None, :]
    return out


def saturation(st: Stats, ratios, rates, mean_decode: float | None = None) -> dict:
    """The saturation flag and its diagnostics (``queue_growth``, ``full_fraction``,
    ``offered_load``, ``saturated``) from stacked per-replica sums (host side).

    A queue is unstable when requests arrive faster than the bundle can serve them at its
    best, that is while full: ``rho = lambda / mu > 1`` with ``lambda = r X`` and ``mu``
    the completions per time unit of a full bundle. The run measures ``mu`` as the tokens
    per time unit emitted during the steps after whose admission a request still waited
    (every slot taken, or the KV capacity binding), divided by the mean decode length
    ``E[D]`` (``mean_decode``, the workload's; without it, the finished requests' mean).
    Both are averages over many steps with little noise (the step time of a full bundle
    varies little), and ``lambda`` and ``E[D]`` are known, so ``rho`` is estimated within
    a few per cent from a few hundred steps and one replica, whatever the arrival process
    (about 10 % where a trace replay's heavy-tailed lengths make a short window's requests
    lighter or heavier than the trace's).

    Rules based on the growth of the requests in the bundle failed both ways: the growth
    of a stable queue is its fluctuation, with no scale known in advance (the previous
    rule, growth in both halves above 2 % of the arrivals, flagged stable light-load trace
    replays with a few dozen arrivals), and the growth of a saturated one competes with
    the arrivals' noise (bursty arrivals or a trace replay; a rule of three standard errors
    over replicas missed clearly saturated trace replays). Measured in
    ``experiments/saturation_flag.py``.

    Where the bundle was never full the load is NaN and the rate not saturated. A trace
    replay is judged at its mean rate: a burst inside a short window fills the queue
    without the rate being unstable. Refused requests (``P`` above the KV capacity) are
    taken off the arrivals.
    """
    f = {name: np.asarray(getattr(st, name), dtype=np.float64) for name in st.__dataclass_fields__}
    ratios = np.asarray(ratios, dtype=np.float64)
    rates = np.asarray(rates, dtype=np.float64)
    out = {}
    growth = f["end_in_system"] - f["start_in_system"]
    out["queue_growth"] = _div(growth.mean(axis=0), f["arrivals"].mean(axis=0))
    T = f["time"].sum(axis=0)
    full = f["blocked_time"].sum(axis=0)
    out["full_fraction"] = _div(full, T)
    if mean_decode is None:
        mean_decode = _div(f["done_tokens"].sum(axis=0), f["done"].sum(axis=0))
    mu = _div(f["blocked_tokens"].sum(axis=0), full) / mean_decode  # requests per time unit, full
    admitted = 1.0 - np.nan_to_num(_div(f["rejected"].sum(axis=0), f["arrivals"].sum(axis=0)), nan=0.0)
    out["offered_load"] = _div(ratios[:, None] * rates * admitted, mu)  # rates (rates,) or (ratios, rates)
    over = np.nan_to_num(out["offered_load"], nan=0.0) > 1.0 + SATURATION_MARGIN
    out["saturated"] = np.any(np.asarray(st.cap_hit), axis=0) | over
    return out


def to_host(result: ServeResult) -> ServeResult:
    """Every array leaf as a NumPy array (for reports)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x) if isinstance(x, jax.Array) else x, result)
