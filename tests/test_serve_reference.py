"""An independent per-step NumPy reference of afdjax's open-loop serving process (issue 14).

Written from the process's statement, not from the engine's code: plain Python lists, its
own random numbers (NumPy), one step at a time. The default admission policy: at the start
of each step, the requests that arrived at or before it are admitted in arrival order while
a slot is free, each to the instance with the most free slots, ties to the smaller KV load,
then the lower index; with a KV capacity only where its prefill fits (head-of-line wait);
a request whose prefill exceeds the capacity is refused. The step is
``max(max_j alpha_a T_j + beta_a, alpha_f n + beta_f, alpha_c n / r + beta_c)`` over the
``n`` occupied slots (``comm_scaling="batch"``); an empty bundle idles until the next arrival.
"""

from __future__ import annotations

import collections
import math

import numpy as np


def run_bundle(
    rng,
    r: int,
    B: int,
    rate: float,
    steps: int,
    warmup: int,
    coef: dict,
    draw_lengths,
    draw_gap,
    kv_capacity: float = math.inf,
    prefill_alpha: float = 0.0,
    prefill_beta: float = 0.0,
    slo_ttft: float = math.inf,
    slo_tpot: float = math.inf,
):
    """One replica of one bundle; a dict of its measured sums and its requests' lists.

    ``draw_lengths(rng, n) -> (P, D)`` of request ``n``; ``draw_gap(rng, n)`` the unit gap
    before request ``n`` (mean 1), scaled here by ``1 / (r rate)``."""
    lam = r * rate
    t = 0.0
    n_next = 0
    next_arr = draw_gap(rng, 0) / lam
    queue = collections.deque()  # (arrival, P, D)
    inst = [[] for _ in range(r)]  # each: list of [P, D, done steps, arrival, wait, tsum]
    out = dict(time=0.0, tokens=0.0, good=0.0, queue_area=0.0, system_area=0.0, done=0, sojourn=0.0, idle=0.0)
    tpot, ttft = [], []
    for k in range(warmup + steps):
        meas = warmup <= k
        occupied = sum(len(s) for s in inst)
        idle = 0.0
        if occupied == 0 and not queue:
            idle = max(next_arr - t, 0.0)
            t += idle
        while next_arr <= t:
            p, d = draw_lengths(rng, n_next)
            queue.append((next_arr, p, d))
            if meas:
                out["queue_area"] += t - next_arr
                out["system_area"] += t - next_arr
            n_next += 1
            next_arr += draw_gap(rng, n_next) / lam
        # admission
        load = [sum(q[0] + q[2] for q in s) for s in inst]
        while queue and any(len(s) < B for s in inst):
            a, p, d = queue[0]
            if p > kv_capacity:
                queue.popleft()
                continue
            elig = [j for j in range(r) if len(inst[j]) < B and load[j] + p <= kv_capacity]
            if not elig:
                break
            j = max(elig, key=lambda j: (B - len(inst[j]), -load[j], -j))
            queue.popleft()
            inst[j].append([p, d, 0, a, t - a, 0.0])
            load[j] += p
        n = sum(len(s) for s in inst)
        if n > 0:
            ta = max(coef["alpha_a"] * load[j] + coef["beta_a"] for j in range(r))
            tf = coef["alpha_f"] * n + coef["beta_f"]
            tc = coef["alpha_c"] * n / r + coef["beta_c"]
            tau = max(ta, tf, tc)
        else:
            tau = 0.0
        if meas:
            out["time"] += idle + tau
            out["idle"] += idle
            out["tokens"] += n
            out["queue_area"] += len(queue) * tau
            out["system_area"] += (len(queue) + n) * tau
        for j in range(r):
            keep = []
            for q in inst[j]:
                q[2] += 1
                q[5] += tau
                if q[2] >= q[1]:
                    if meas:
                        tp = q[5] / q[1]
                        tt = q[4] + prefill_alpha * q[0] + prefill_beta
                        tpot.append(tp)
                        ttft.append(tt)
                        out["done"] += 1
                        out["sojourn"] += t + tau - q[3]
                        if tp <= slo_tpot and tt <= slo_ttft:
                            out["good"] += q[1]
                else:
                    keep.append(q)
            inst[j] = keep
        t += tau
    out["tpot"] = np.asarray(tpot)
    out["ttft"] = np.asarray(ttft)
    return out


def summarise(runs, r: int) -> dict:
    """``{name: (estimate, standard error)}`` over replicas ``runs`` (pooled estimates,
    standard errors from the spread of the per-replica ones; the p99's by the jackknife)."""

    def pooled(num, den):
        return sum(num) / sum(den)

    def se(values):
        values = np.asarray(values, dtype=float)
        return float(np.std(values, ddof=1) / math.sqrt(len(values)))

    T = [x["time"] for x in runs]
    out = {}
    out["throughput_per_instance"] = (
        pooled([x["tokens"] for x in runs], T) / (r + 1),
        se([x["tokens"] / x["time"] / (r + 1) for x in runs]),
    )
    out["goodput_per_instance"] = (
        pooled([x["good"] for x in runs], T) / (r + 1),
        se([x["good"] / x["time"] / (r + 1) for x in runs]),
    )
    out["mean_queue_length"] = (
        pooled([x["queue_area"] for x in runs], T),
        se([x["queue_area"] / x["time"] for x in runs]),
    )
    out["mean_in_system"] = (
        pooled([x["system_area"] for x in runs], T),
        se([x["system_area"] / x["time"] for x in runs]),
    )
    done = [x["done"] for x in runs]
    out["mean_sojourn_time"] = (
        pooled([x["sojourn"] for x in runs], done),
        se([x["sojourn"] / x["done"] for x in runs]),
    )
    for name in ("tpot", "ttft"):
        allv = np.concatenate([x[name] for x in runs])
        out[f"{name}_mean"] = (float(np.mean(allv)), se([np.mean(x[name]) for x in runs]))
        n = len(runs)  # jackknife over replicas: the pooled quantile leaving one replica out
        loo = [np.quantile(np.concatenate([x[name] for j, x in enumerate(runs) if j != i]), 0.99) for i in range(n)]
        jack = math.sqrt((n - 1) / n * float(np.sum((np.asarray(loo) - np.mean(loo)) ** 2)))
        out[f"{name}_p99"] = (float(np.quantile(allv, 0.99)), jack)
    return out
