"""Independent NumPy reference simulator for rA-1F Attention-FFN disaggregated decode.

This module is a *test oracle*: it deliberately shares no code with the library
under test. It is written for clarity rather than speed: an explicit Python loop
over decode steps, vectorised only over (replicas, instances, slots).

Model summary
-------------
* ``r`` Attention instances share one FFN instance; each Attention instance has
  ``B`` slots and every slot emits one token per step.
* A request has prefill length ``P >= 0`` and decode length ``D >= 1``. It
  occupies a slot for ``D`` consecutive steps; at its i-th step (i = 0..D-1) the
  slot's load is ``P + i``. After the step with ``i = D-1`` the slot holds a fresh
  request (index 0) at the very next step (saturated continuous batching).
* Instance load ``T_j(k) = sum_slots (P + i)``.
* ``t_A(T) = alpha_a*T + beta_a``, ``t_F = alpha_f*r*B + beta_f``,
  ``t_C = alpha_c*B + beta_c`` ("batch") or ``alpha_c*r*B + beta_c`` ("ratio_batch").
* ``tau_r(k) = max(max_{j<r} t_A(T_j(k)), t_C, t_F)``.
* Common random numbers: ``r_max`` instances are simulated once per replica;
  the system with ratio ``r`` consists of instances ``0..r-1``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["simulate_reference", "simulate_reference_pipeline", "stationary_theta_and_variance"]


# ---------------------------------------------------------------------------
# Workload sampling
# ---------------------------------------------------------------------------


def _draw_prefill_geometric(rng, workload, n):
    """Fresh prefill lengths for a Geometric workload (continuous, not rounded)."""
    mu_p = float(workload["mu_p"])
    kind = workload.get("prefill", "constant")
    if kind == "constant":
        return np.full(n, mu_p, dtype=np.float64)
    if kind == "exponential":
        if mu_p == 0.0:
            return np.zeros(n, dtype=np.float64)
        return rng.exponential(mu_p, size=n)
    if kind == "lognormal":
        if mu_p == 0.0:
            return np.zeros(n, dtype=np.float64)
        sigma = float(workload.get("prefill_sigma", 1.0))
        # mean of exp(N(m, s^2)) is exp(m + s^2/2) = mu_p
        return rng.lognormal(np.log(mu_p) - 0.5 * sigma**2, sigma, size=n)
    raise ValueError(f"unknown prefill distribution {kind!r}")


def _termination_prob(workload):
    # D ~ Geometric(p) on {1,2,...} with mean 1/p = 1 + mu_d.
    return 1.0 / (1.0 + float(workload["mu_d"]))


def _draw_fresh(rng, workload, n):
    """``n`` fresh requests: (P, D) arrays, P float64, D int64 (>= 1)."""
    kind = workload["kind"]
    if kind == "geometric":
        p = _termination_prob(workload)
        d = rng.geometric(p, size=n).astype(np.int64)  # support {1, 2, ...}
        pre = _draw_prefill_geometric(rng, workload, n)
        return pre, d
    if kind == "empirical":
        prefill = np.asarray(workload["prefill"], dtype=np.float64)
        decode = np.asarray(workload["decode"], dtype=np.int64)
        rows = rng.integers(0, len(decode), size=n)  # uniform, with replacement
        return prefill[rows].copy(), decode[rows].copy()
    raise ValueError(f"unknown workload kind {kind!r}")


def _draw_stationary(rng, workload, n):
    """``n`` slots in the stationary (length-biased) state: (P, D, index)."""
    kind = workload["kind"]
    if kind == "geometric":
        p = _termination_prob(workload)
        # index a ~ p (1-p)^a on {0,1,...}; remaining D - a ~ Geometric(p) on {1,...}.
        a = rng.geometric(p, size=n).astype(np.int64) - 1
        remaining = rng.geometric(p, size=n).astype(np.int64)
        pre = _draw_prefill_geometric(rng, workload, n)
        return pre, a + remaining, a
    if kind == "empirical":
        prefill = np.asarray(workload["prefill"], dtype=np.float64)
        decode = np.asarray(workload["decode"], dtype=np.int64)
        weights = decode / decode.sum()  # length-biased row choice
        rows = rng.choice(len(decode), size=n, p=weights)
        d = decode[rows].copy()
        idx = np.floor(rng.random(n) * d).astype(np.int64)  # uniform on {0..d-1}
        idx = np.minimum(idx, d - 1)
        return prefill[rows].copy(), d, idx
    raise ValueError(f"unknown workload kind {kind!r}")


def _validate_workload(workload):
    if workload["kind"] == "geometric":
        if float(workload["mu_d"]) < 0 or float(workload["mu_p"]) < 0:
            raise ValueError("mu_p and mu_d must be >= 0")
    elif workload["kind"] == "empirical":
        decode = np.asarray(workload["decode"])
        prefill = np.asarray(workload["prefill"])
        if decode.shape != prefill.shape or decode.ndim != 1 or decode.size == 0:
            raise ValueError("empirical prefill/decode must be equal-length 1-D arrays")
        if np.any(decode < 1) or np.any(prefill < 0):
            raise ValueError("need decode >= 1 and prefill >= 0")
    else:
        raise ValueError(f"unknown workload kind {workload['kind']!r}")


# ---------------------------------------------------------------------------
# Simulator
# ---------------------------------------------------------------------------


def simulate_reference(
    rng: np.random.Generator,
    workload: dict,
    latency: dict,
    batch_size: int,
    ratios,
    num_steps: int,
    num_replicas: int,
    start: str = "stationary",
    warmup_steps: int = 0,
) -> dict:
    """Simulate the rA-1F decode system step by step.

    Returns a dict of NumPy arrays (indexed like ``ratios`` where applicable):

    ``ratios``                   (n,) int
    ``throughput_per_instance``  (n,) ratio estimator r*B*K*R / ((r+1) * sum_i S_i)
    ``stderr``                   (n,) delta-method stderr (nan if R < 2)
    ``throughput_per_replica``   (R, n) r*B*K / ((r+1) * S_i)
    ``mean_cycle_time``          (n,) sum tau / (R*K)
    ``attention_idle_fraction``  (n,)
    ``ffn_idle_fraction``        (n,)
    ``mean_slot_load``           scalar, mean of T_j(k)/B over replicas, steps, r_max instances
    ``cycle_times``              (R, n, K) tau_r(k)
    ``instance_loads``           (R, r_max, K) T_j(k) for measured steps (extra, for tests)
    ``slot_load_per_replica``    (R,) per-replica mean slot load (extra, for tests)

    where ``S_i = sum_k tau_r(k)`` in replica ``i``.
    """
    _validate_workload(workload)
    ratios = np.atleast_1d(np.asarray(ratios, dtype=np.int64))
    if np.any(ratios < 1):
        raise ValueError("ratios must be >= 1")
    B = int(batch_size)
    K = int(num_steps)
    R = int(num_replicas)
    W = int(warmup_steps)
    if B < 1 or K < 1 or R < 1 or W < 0:
        raise ValueError("need batch_size, num_steps, num_replicas >= 1, warmup_steps >= 0")
    r_max = int(ratios.max())
    loads = _instance_loads(rng, workload, B, r_max, K, R, start, W, groups=1)[:, :, 0, :]
    return _barrier_metrics(loads, latency, B, ratios, K, R)


def _instance_loads(rng, workload, B, r_max, K, R, start, W, groups):
    """KV loads ``(R, r_max, groups, K)`` of the measured steps: slot ``s`` counts in group
    ``s % groups``. The random draws do not depend on ``groups``."""
    shape = (R, r_max, B)
    n_slots = R * r_max * B

    # ---- initial state of every slot: prefill P, decode length D, index i ----
    if start == "stationary":
        pre, dec, idx = _draw_stationary(rng, workload, n_slots)
    elif start == "cold":
        pre, dec = _draw_fresh(rng, workload, n_slots)
        idx = np.zeros(n_slots, dtype=np.int64)
    else:
        raise ValueError(f"unknown start {start!r}")
    pre = pre.reshape(shape)
    dec = dec.reshape(shape)
    idx = idx.reshape(shape)

    # ---- per-step loop ----
    loads = np.empty((R, r_max, groups, K), dtype=np.float64)
    for step in range(W + K):
        # load of every slot at this step, summed over the slots of each group of each instance
        if step >= W:
            for g in range(groups):
                loads[:, :, g, step - W] = (pre + idx)[:, :, g::groups].sum(axis=2)
        # advance: every slot emits one token
        idx = idx + 1
        done = idx >= dec  # request finished after index D-1
        n_done = int(done.sum())
        if n_done:
            new_pre, new_dec = _draw_fresh(rng, workload, n_done)
            pre[done] = new_pre
            dec[done] = new_dec
            idx[done] = 0
    return loads


def _barrier_metrics(loads, latency, B, ratios, K, R):
    # ---- metrics ----
    a_a, b_a = float(latency["alpha_a"]), float(latency["beta_a"])
    a_f, b_f = float(latency["alpha_f"]), float(latency["beta_f"])
    a_c, b_c = float(latency["alpha_c"]), float(latency["beta_c"])
    comm_scaling = latency.get("comm_scaling", "batch")
    if comm_scaling not in ("batch", "ratio_batch"):
        raise ValueError(f"unknown comm_scaling {comm_scaling!r}")

    t_attn = a_a * loads + b_a  # (R, r_max, K)

    n = len(ratios)
    cycle_times = np.empty((R, n, K), dtype=np.float64)
    thr = np.empty(n)
    stderr = np.empty(n)
    thr_rep = np.empty((R, n))
    mean_tau = np.empty(n)
    attn_idle = np.empty(n)
    ffn_idle = np.empty(n)
    for m, r in enumerate(ratios):
        r = int(r)
        t_f = a_f * r * B + b_f
        t_c = a_c * B + b_c if comm_scaling == "batch" else a_c * r * B + b_c
        tau = np.maximum(t_attn[:, :r, :].max(axis=1), max(t_c, t_f))  # (R, K)
        cycle_times[:, m, :] = tau

        S = tau.sum(axis=1)  # (R,) sum of cycle times per replica
        S_total = S.sum()
        thr[m] = r * B * K * R / ((r + 1) * S_total)
        thr_rep[:, m] = r * B * K / ((r + 1) * S)
        if R >= 2:
            stderr[m] = thr[m] * np.std(S, ddof=1) / (np.mean(S) * np.sqrt(R))
        else:
            stderr[m] = np.nan
        mean_tau[m] = S_total / (R * K)
        attn_idle[m] = 1.0 - t_attn[:, :r, :].sum() / (r * S_total)
        ffn_idle[m] = 1.0 - R * K * t_f / S_total

    return {
        "ratios": ratios,
        "throughput_per_instance": thr,
        "stderr": stderr,
        "throughput_per_replica": thr_rep,
        "mean_cycle_time": mean_tau,
        "attention_idle_fraction": attn_idle,
        "ffn_idle_fraction": ffn_idle,
        "mean_slot_load": float(loads.mean() / B),
        "cycle_times": cycle_times,
        "instance_loads": loads,
        "slot_load_per_replica": loads.mean(axis=(1, 2)) / B,
    }


# ---------------------------------------------------------------------------
# Micro-batch pipeline
# ---------------------------------------------------------------------------


def simulate_reference_pipeline(
    rng: np.random.Generator,
    workload: dict,
    latency: dict,
    batch_size: int,
    ratios,
    num_steps: int,
    num_replicas: int,
    micro_batches: int,
    start: str = "stationary",
    warmup_steps: int = 0,
    loads=None,
) -> dict:
    """The rA-1F process with ``micro_batches`` micro-batches per Attention instance.

    Loads per (instance, group) come from the same per-step slot loop as
    :func:`simulate_reference` (slot ``s`` in group ``s % m``); each ratio's pipeline is
    then run by the event-driven simulator of ``reference_pipeline`` from time 0
    (warm-up steps included). ``loads`` (``(R, r_max, m, W + K)``) may be given instead
    of drawing them. Step ``k`` takes ``C(k) - C(k-1)``, ``C(k)`` the end of the last F->A
    transfer of step ``k``.

    Returns ``throughput_per_instance``, ``stderr``, ``throughput_per_replica``,
    ``mean_cycle_time``, ``attention_idle_fraction``, ``ffn_idle_fraction``,
    ``cycle_times`` ``(R, n, K)``, ``elapsed`` ``(R, n)``, ``group_loads`` and
    ``instance_loads`` ``(R, r_max, K)`` (measured steps).
    """
    try:
        from reference_pipeline import simulate_pipeline_events
    except ImportError:  # pragma: no cover
        from tests.reference_pipeline import simulate_pipeline_events

    ratios = np.atleast_1d(np.asarray(ratios, dtype=np.int64))
    B, K, R, W, m = int(batch_size), int(num_steps), int(num_replicas), int(warmup_steps), int(micro_batches)
    r_max = int(ratios.max())
    if loads is None:
        _validate_workload(workload)
        loads = _instance_loads(rng, workload, B, r_max, W + K, R, start, 0, groups=m)
    sizes = np.array([len(range(g, B, m)) for g in range(m)], dtype=np.float64)  # slots per group
    a_a, b_a = float(latency["alpha_a"]), float(latency["beta_a"])
    a_f, b_f = float(latency["alpha_f"]), float(latency["beta_f"])
    a_c, b_c = float(latency["alpha_c"]), float(latency["beta_c"])
    ratio_batch = latency.get("comm_scaling", "batch") == "ratio_batch"
    t_attn = a_a * loads + b_a  # (R, r_max, m, W + K)
    n = len(ratios)
    cycle = np.empty((R, n, K))
    busy_attn = np.empty((R, n))
    t_ffn_step = np.empty(n)
    for i, r in enumerate(ratios):
        r = int(r)
        t_f = a_f * r * sizes + b_f
        t_c = a_c * (r * sizes if ratio_batch else sizes) + b_c
        t_ffn_step[i] = t_f.sum()
        for rep in range(R):
            att = np.transpose(t_attn[rep, :r], (2, 0, 1))  # (W + K, r, m)
            ev = simulate_pipeline_events(att, np.tile(t_c, (W + K, 1)), np.tile(t_f, (W + K, 1)))
            done = ev["f2a_end"][:, -1]
            before = np.concatenate([[0.0], done])[W : W + K]
            cycle[rep, i] = done[W:] - before
            busy_attn[rep, i] = att[W:].sum()
    elapsed = cycle.sum(axis=2)  # (R, n)
    tokens = ratios * B * K
    thr = tokens * R / ((ratios + 1) * elapsed.sum(axis=0))
    per = tokens[None, :] / ((ratios + 1)[None, :] * elapsed)
    stderr = thr * np.std(elapsed, axis=0, ddof=1) / (np.mean(elapsed, axis=0) * np.sqrt(R)) if R > 1 else np.nan
    return {
        "ratios": ratios,
        "throughput_per_instance": thr,
        "stderr": stderr,
        "throughput_per_replica": per,
        "mean_cycle_time": elapsed.sum(axis=0) / (R * K),
        "attention_idle_fraction": 1.0 - busy_attn.sum(axis=0) / (ratios * elapsed.sum(axis=0)),
        "ffn_idle_fraction": 1.0 - R * K * t_ffn_step / elapsed.sum(axis=0),
        "cycle_times": cycle,
        "elapsed": elapsed,
        "group_loads": loads,
        "instance_loads": loads[..., W:].sum(axis=2),
    }


# ---------------------------------------------------------------------------
# Analytic helper
# ---------------------------------------------------------------------------


def stationary_theta_and_variance(prefill, decode):
    """Plug-in stationary mean and variance of a single slot's load.

    In the stationary state a slot holds row j with probability D_j / sum(D) at an
    index uniform on {0..D_j-1}, so its load is P_j + i. Hence

        theta   = sum_j (D_j P_j + D_j(D_j-1)/2) / sum_j D_j
        sigma^2 = sum_j (D_j P_j^2 + P_j D_j(D_j-1) + D_j(D_j-1)(2D_j-1)/6) / sum_j D_j
                  - theta^2
    """
    P = np.asarray(prefill, dtype=np.float64)
    D = np.asarray(decode, dtype=np.float64)
    total = D.sum()
    theta = np.sum(D * P + D * (D - 1) / 2) / total
    second = np.sum(D * P**2 + P * D * (D - 1) + D * (D - 1) * (2 * D - 1) / 6) / total
    return float(theta), float(second - theta**2)
