"""The co-located step model ``Colocated`` (issue 15) against independent references.

* an independent NumPy reference: the loads from ``reference_sim`` (its own random
  numbers), the co-located step time written out here from the model's statement
  (per-rank attention, barrier across the ranks, the FFN share, dispatch and combine);
  the engine and the reference agree within 3 combined standard errors;
* zero variance (every request one step long: constant loads): the simulation equals
  the closed form exactly, mean field and Gaussian barrier alike;
* hand-computed stage times, the expected maximum of normals, bad input.

Shapes are shared between tests (B = 16, ranks 1..6, 300 steps, 4 replicas).
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from afdjax import Colocated, Geometric, LatencyModel, simulate
from afdjax._step import colocated_throughput_per_device, expected_max_normal

try:
    from reference_sim import _instance_loads
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests.reference_sim import _instance_loads

B, RANKS, STEPS, REPLICAS = 16, [1, 2, 3, 6], 300, 4
COEFS = dict(alpha_a=0.01, beta_a=20.0, alpha_f=0.5, beta_f=60.0, alpha_c=0.4, beta_c=3.0)
N_F, N_A = 4, 2
# explicit buffer sizes: the zero-variance run (one-step requests) shares the compiled program
SIZES = dict(chunk_steps=100, requests_per_chunk=101, replica_batch_size=REPLICAS)


def _reference(loads, coefs, ranks, n_f, n_a, overlap, comm_scaling="batch"):
    """Per-replica co-located throughput per device from KV loads ``(R, N_max, G, K)``."""
    R, _, G, K = loads.shape
    sizes = [len(range(g, B, G)) for g in range(G)]
    a_c = coefs["alpha_c"] * (n_f / n_a if comm_scaling == "ratio_batch" else 1.0)
    out = np.empty((R, len(ranks)))
    for i, n in enumerate(ranks):
        attention = coefs["alpha_a"] * loads[:, :n] + coefs["beta_a"]  # (R, n, G, K)
        slowest = attention.max(axis=1)  # (R, G, K): the barrier across the ranks
        compute = np.zeros((R, K))
        transfers = 0.0
        for g in range(G):
            ffn = n_f / n_a * (coefs["alpha_f"] * sizes[g] + coefs["beta_f"] / n)
            one_way = (1 - 1 / n) * a_c * sizes[g] + (coefs["beta_c"] if n > 1 else 0.0)
            compute += slowest[:, g] + ffn
            transfers += 2 * one_way
        tau = np.maximum(compute, transfers) if overlap else compute + transfers
        out[:, i] = B * K / (n_a * tau.sum(axis=1))
    return out


def _engine_per_device(result, model):
    n = np.asarray(result.ratios, dtype=float)
    scale = (n + 1) / n / model.attention_devices
    return np.asarray(result.throughput_per_instance) * scale, np.asarray(result.stderr) * scale


# (overlap, comm_scaling): two compilations, shared with the zero-variance test; the overlap
# case is slow (its step times are checked by hand without the engine by default)
CASES = [(False, "batch"), pytest.param(True, "ratio_batch", marks=pytest.mark.slow)]


@pytest.mark.parametrize("overlap, comm_scaling", CASES)
def test_engine_matches_numpy_reference(overlap, comm_scaling):
    workload = Geometric(100, 60)
    latency = LatencyModel(**COEFS, comm_scaling=comm_scaling)
    model = Colocated(ffn_devices=N_F, attention_devices=N_A, overlap=overlap)
    result = simulate(jax.random.key(3), workload, latency, B, RANKS, STEPS, REPLICAS, step_model=model, **SIZES)
    mine, mine_se = _engine_per_device(result, model)
    groups = 2 if overlap else 1
    loads = _instance_loads(
        np.random.default_rng(11),
        dict(kind="geometric", mu_p=100.0, mu_d=60.0),
        B,
        max(RANKS),
        STEPS,
        8,
        "stationary",
        0,
        groups,
    )
    per_rep = _reference(loads, COEFS, RANKS, N_F, N_A, overlap, comm_scaling)
    ref, ref_se = per_rep.mean(axis=0), per_rep.std(axis=0, ddof=1) / math.sqrt(per_rep.shape[0])
    bound = 3 * np.sqrt(mine_se**2 + ref_se**2)
    assert np.all(np.abs(mine - ref) <= bound), (mine, ref, bound)
    # the closed-form Gaussian barrier is close (one batch: exact in expectation for normal loads)
    closed = B / (N_A * np.asarray(model.barrier_cycle_time(workload, latency, B, np.asarray(RANKS, float))))
    np.testing.assert_allclose(closed, ref, rtol=0.01)
    # power: a reference without the FFN's weight reads is told apart
    ffn_only = _reference(loads, dict(COEFS, beta_f=0.0), RANKS, N_F, N_A, overlap, comm_scaling).mean(axis=0)
    assert np.all(np.abs(ffn_only - mine) > bound)


@pytest.mark.parametrize("overlap, comm_scaling", CASES)
def test_zero_variance_equals_closed_form_exactly(overlap, comm_scaling):
    workload = Geometric(300.0, 0.0)  # every request one step, constant prefill: slot variance 0
    latency = LatencyModel(**COEFS, comm_scaling=comm_scaling)
    model = Colocated(ffn_devices=N_F, attention_devices=N_A, overlap=overlap)
    result = simulate(jax.random.key(0), workload, latency, B, RANKS, STEPS, REPLICAS, step_model=model, **SIZES)
    n = np.asarray(RANKS, dtype=float)
    mean_field = np.asarray(model.cycle_time(workload, latency, B, n))
    barrier = np.asarray(model.barrier_cycle_time(workload, latency, B, n))
    np.testing.assert_allclose(np.asarray(result.mean_cycle_time), mean_field, rtol=1e-12)
    np.testing.assert_allclose(barrier, mean_field, rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(result.throughput_per_instance),
        np.asarray(model.throughput(workload, latency, B, n)),
        rtol=1e-12,
    )
    # by hand, one batch: t_A + (n_F/n_A)(a_f B + b_f/N) + 2 ((1 - 1/N) a_c' B + b_c [N > 1])
    t_a = COEFS["alpha_a"] * B * 300 + COEFS["beta_a"]
    ffn = N_F / N_A * (COEFS["alpha_f"] * B + COEFS["beta_f"] / n)
    a_c = COEFS["alpha_c"] * (N_F / N_A if comm_scaling == "ratio_batch" else 1.0)
    comm = (1 - 1 / n) * a_c * B + np.where(n > 1, COEFS["beta_c"], 0.0)
    if not overlap:
        np.testing.assert_allclose(mean_field, t_a + ffn + 2 * comm, rtol=1e-12)
    else:
        t_a2 = COEFS["alpha_a"] * B / 2 * 300 + COEFS["beta_a"]
        ffn2 = N_F / N_A * (COEFS["alpha_f"] * B / 2 + COEFS["beta_f"] / n)
        comm2 = (1 - 1 / n) * a_c * B / 2 + np.where(n > 1, COEFS["beta_c"], 0.0)
        np.testing.assert_allclose(mean_field, np.maximum(2 * (t_a2 + ffn2), 4 * comm2), rtol=1e-12)
    per_device = np.asarray(colocated_throughput_per_device(model, mean_field, B))
    np.testing.assert_allclose(per_device, B / (N_A * mean_field), rtol=1e-12)


@pytest.mark.parametrize("overlap", [False, True])
def test_step_times_by_hand(overlap):
    """The engine-side timing of one chunk against the formula, from random group loads
    (no engine run): the barrier per micro-batch across the first N ranks."""
    latency = LatencyModel(**COEFS, comm_scaling="ratio_batch")
    model = Colocated(ffn_devices=N_F, attention_devices=N_A, overlap=overlap)
    G, n_max, L = model.slot_groups(), 5, 7
    loads = np.random.default_rng(2).uniform(500, 3000, (n_max, G, L))
    constants = model.constants(Geometric(100, 60), latency, B, n_max)
    _, times = model.step_times(constants, model.initial_state(n_max, float), jax.numpy.asarray(loads), latency)
    per_group = COEFS["alpha_a"] * loads + COEFS["beta_a"]
    a_c = COEFS["alpha_c"] * N_F / N_A
    sizes = [B / G] * G
    for n in range(1, n_max + 1):
        compute = sum(
            per_group[:n, g].max(axis=0) + N_F / N_A * (COEFS["alpha_f"] * sizes[g] + COEFS["beta_f"] / n)
            for g in range(G)
        )
        comm = sum(2 * ((1 - 1 / n) * a_c * sizes[g] + (COEFS["beta_c"] if n > 1 else 0.0)) for g in range(G))
        expect = np.maximum(compute, comm) if overlap else compute + comm
        np.testing.assert_allclose(np.asarray(times.cycle_time)[n - 1], expect, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(times.attention_busy), per_group.sum(axis=1), rtol=1e-12)


def test_expected_max_normal():
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((100_000, 8)).max(axis=1)
    assert float(expected_max_normal(1.0)) == pytest.approx(0.0, abs=1e-10)
    assert float(expected_max_normal(2.0)) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-9)
    assert float(expected_max_normal(8.0)) == pytest.approx(draws.mean(), abs=4 * draws.std() / math.sqrt(len(draws)))


def test_ratio_optima_and_describe():
    workload, latency = Geometric(100, 60), LatencyModel(**COEFS)
    model = Colocated(ffn_devices=N_F, attention_devices=N_A)
    opt = model.ratio_optima(workload, latency, B, 24)
    grid = np.arange(1, 25, dtype=float)
    per_device = B / (N_A * np.asarray(model.barrier_cycle_time(workload, latency, B, grid)))
    assert opt["ratio_barrier"] == int(np.argmax(per_device)) + 1
    assert "co-located" in model.describe() and "no overlap" in model.describe()
    assert model.micro_batches is None and Colocated(overlap=True).micro_batches == 2


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(ffn_devices=0), "ffn_devices=0 is invalid"),
        (dict(attention_devices=1.5), "attention_devices=1.5 is invalid"),
        (dict(overlap="yes"), "overlap='yes' is invalid"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        Colocated(**kwargs)


def test_overlap_needs_two_slots():
    with pytest.raises(ValueError, match="batch_size=1 is invalid with overlap=True"):
        simulate(
            jax.random.key(0),
            Geometric(10, 10),
            LatencyModel(**COEFS),
            1,
            [1],
            10,
            2,
            step_model=Colocated(overlap=True),
        )
