"""Provisioning under constraints (KV capacity, TPOT, cost): ``afdjax._provision._constraints``.

References: exact zero-variance systems (every number is known by hand), SciPy's normal
tail for the Gaussian KV-overflow probability, and hand arithmetic for the costs.
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from scipy import stats

import afdjax
from afdjax import Empirical, Geometric, LatencyModel
from afdjax._provision._constraints import (
    Constraints,
    Costs,
    evaluate_cells,
    kv_overflow_probability_gaussian,
    provision_constrained,
)

# Zero-variance system: every request has D = 1 and prefill P, so each instance holds
# exactly B * P tokens at every step and every step time is known in closed form.
P = 300.0
LAT = dict(alpha_a=0.002, beta_a=40.0, alpha_f=0.08, beta_f=100.0, alpha_c=0.01, beta_c=10.0)


def _tau(B, r, lat=LAT):
    t_a = lat["alpha_a"] * B * P + lat["beta_a"]
    t_f = lat["alpha_f"] * r * B + lat["beta_f"]
    t_c = lat["alpha_c"] * B + lat["beta_c"]
    return max(t_a, t_f, t_c)


def _zv():
    return Empirical([P], [1])


@pytest.mark.parametrize("B,cap_sigmas", [(64, -1.0), (256, 0.0), (256, 2.5), (1024, 4.0)])
def test_gaussian_overflow_matches_scipy(B, cap_sigmas):
    wl = Geometric(mu_p=120.0, mu_d=400.0, prefill="lognormal", prefill_sigma=0.8)
    mean = B * float(wl.theta())
    sd = math.sqrt(B * float(wl.slot_variance()))
    cap = mean + cap_sigmas * sd
    expected = stats.norm.sf(cap, loc=mean, scale=sd)
    assert kv_overflow_probability_gaussian(wl, B, cap) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_gaussian_overflow_zero_variance_is_a_step():
    B = 32
    assert kv_overflow_probability_gaussian(_zv(), B, B * P - 1) == 1.0
    assert kv_overflow_probability_gaussian(_zv(), B, B * P + 1) == 0.0


def test_zero_variance_cells_by_hand():
    B, ratios, layers, unit_us = 64, [1, 2, 4, 8, 12], 61, 1.0
    res = afdjax.simulate(jax.random.key(0), _zv(), LatencyModel(**LAT), B, ratios, 30, 2)  # shapes shared below
    kv_bytes = 70_272.0
    cons = Constraints(
        kv_capacity_bytes=(B * P - 0.5) * kv_bytes,  # just below the load: always overflows
        kv_bytes_per_token=kv_bytes,
        tpot_target_ms=1e9,
        num_layers=layers,
        time_unit_us=unit_us,
    )
    costs = Costs(attention_price_per_hour=2.0, ffn_price_per_hour=3.5, attention_power_w=700.0, ffn_power_w=1000.0)
    rows = evaluate_cells(res, _zv(), cons, costs, "per_dollar")
    for row, r in zip(rows, ratios):
        tau = _tau(B, r)
        per_instance = r * B / ((r + 1) * tau)
        tokens_per_s = r * B / (layers * tau) * 1e6 / unit_us  # output tokens: one per num_layers steps
        assert row["throughput_per_instance"] == pytest.approx(per_instance, rel=1e-10)
        assert row["bundle_tokens_per_s"] == pytest.approx(tokens_per_s, rel=1e-10)
        assert row["tokens_per_dollar"] == pytest.approx(tokens_per_s * 3600 / (2.0 * r + 3.5), rel=1e-10)
        assert row["tokens_per_joule"] == pytest.approx(tokens_per_s / (700.0 * r + 1000.0), rel=1e-10)
        assert row["objective"] == row["tokens_per_dollar"]
        assert row["tpot_mean_ms"] == pytest.approx(layers * tau / 1000, rel=1e-10)
        assert row["tpot_p99_ms"] == pytest.approx(layers * tau / 1000, rel=1e-6)
        assert row["kv_overflow_simulated"] == 1.0 and row["kv_overflow_gaussian"] == 1.0
        assert row["violated"] == ["kv"] and not row["feasible"]
    # capacity just above the load: never overflows
    cons2 = Constraints(kv_capacity_bytes=(B * P + 0.5) * kv_bytes, kv_bytes_per_token=kv_bytes)
    rows2 = evaluate_cells(res, _zv(), cons2, Costs(), "per_instance")
    assert all(row["kv_overflow_simulated"] == 0.0 and row["feasible"] for row in rows2)


def test_tpot_binds_and_kv_limits_batch_size():
    """FFN-bound zero-variance grid: the cycle time grows with r, so a TPOT target caps r;
    a KV capacity between B = 128 and B = 256 rules out the larger batch."""
    lat = dict(LAT, alpha_a=0.0005, beta_a=10.0)  # attention small: FFN-bound from r = 2 on
    layers, target_ms = 10, None
    batch_sizes, ratios = [64, 128, 256], list(range(1, 13))  # the shapes of the tests below (one compilation)
    # target: TPOT of (B = 128, r = 9) exactly representable between r = 9 and r = 10
    target_ms = layers * 0.5 * (_tau(128, 9, lat) + _tau(128, 10, lat)) / 1000
    kv_bytes = 1000.0
    cons = Constraints(
        kv_capacity_bytes=200 * P * kv_bytes,
        kv_bytes_per_token=kv_bytes,
        tpot_target_ms=target_ms,
        tpot_statistic="mean",
        num_layers=layers,
    )
    report = provision_constrained(
        jax.random.key(1), _zv(), LatencyModel(**lat), batch_sizes, ratios, 30, 2, constraints=cons
    )
    # by hand: feasible = B <= 128 (KV) and layers * tau <= target (TPOT); maximise per-instance throughput
    best, best_val = None, -1.0
    for B in batch_sizes:
        if B * P > 200 * P:
            continue
        for r in ratios:
            tau = _tau(B, r, lat)
            if layers * tau / 1000 <= target_ms:
                val = r * B / ((r + 1) * tau)
                if val > best_val:
                    best, best_val = (B, r), val
    rec = report.recommendation
    assert (rec["batch_size"], rec["ratio"]) == best
    assert rec["objective"] == pytest.approx(best_val, rel=1e-10)
    assert report.per_batch[2]["best"] is None  # B = 256 violates the KV capacity at every r
    assert "kv" in report.per_batch[2]["note"].lower() or "KV" in report.per_batch[2]["note"]
    assert report.binding["constraint"]  # something binds: the unconstrained peak is excluded
    unc = report.binding["unconstrained_best"]
    vals = {(B, r): r * B / ((r + 1) * _tau(B, r, lat)) for B in batch_sizes for r in ratios}
    assert (unc["batch_size"], unc["ratio"]) == max(vals, key=vals.get)

    # binding: the best cell that relaxing one constraint alone would admit, by hand
    def violated(B, r):
        v = []
        if B * P > 200 * P:
            v.append("kv")
        if layers * _tau(B, r, lat) / 1000 > target_ms:
            v.append("tpot")
        return v

    for name in ("kv", "tpot"):
        alone = {k: val for k, val in vals.items() if violated(*k) == [name] and val > best_val}
        if alone:
            top = max(alone, key=alone.get)
            relax = report.binding["relaxations"][name]
            assert (relax["batch_size"], relax["ratio"]) == top
            assert relax["gain"] == pytest.approx(alone[top] / best_val - 1, rel=1e-9)
        else:
            assert name not in report.binding["relaxations"]
    assert set(report.binding["constraint"]) == set(report.binding["relaxations"])
    # text, JSON and plot
    text = report.format_text()
    assert f"Recommendation: B = {best[0]}, r = {best[1]}" in text and "Binding constraint:" in text
    d = report.to_dict()
    assert d["recommendation"]["ratio"] == best[1] and len(d["cells"]) == len(batch_sizes) * len(ratios)


def test_no_constraints_recommends_the_peak(tmp_path):
    report = provision_constrained(
        jax.random.key(0),
        _zv(),
        LatencyModel(**LAT),
        [128],
        list(range(1, 13)),
        30,
        2,
        costs=Costs(attention_price_per_hour=1.0, ffn_price_per_hour=4.0),
        objective="per_dollar",
    )
    vals = {r: (r * 128 / _tau(128, r)) * 3600e6 / (r * 1.0 + 4.0) for r in range(1, 13)}
    assert report.recommendation["ratio"] == max(vals, key=vals.get)
    assert report.binding["constraint"] == []
    path = report.plot(tmp_path / "region.png")
    assert path.stat().st_size > 1000


def test_nothing_feasible_is_reported():
    cons = Constraints(tpot_target_ms=1e-6, num_layers=61)
    report = provision_constrained(
        jax.random.key(0), _zv(), LatencyModel(**LAT), [64], list(range(1, 13)), 30, 2, constraints=cons
    )
    assert report.recommendation is None
    assert "TPOT" in report.binding["text"]
    assert "No (B, r)" in report.format_text()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kv_capacity_bytes=-1.0, kv_bytes_per_token=1.0), "kv_capacity_bytes"),
        (dict(kv_capacity_bytes=1e9), "kv_bytes_per_token"),
        (dict(tpot_target_ms=50.0), "num_layers"),
        (dict(tpot_target_ms=50.0, num_layers=0), "num_layers"),
        (dict(kv_overflow_tolerance=1.5), "kv_overflow_tolerance"),
        (dict(tpot_statistic="p50"), "tpot_statistic"),
        (dict(time_unit_us=0.0), "time_unit_us"),
    ],
)
def test_constraints_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Constraints(**kwargs)


def test_costs_and_objective_validation():
    with pytest.raises(ValueError, match="attention_price_per_hour"):
        Costs(attention_price_per_hour=1.0)
    with pytest.raises(ValueError, match="attention_power_w=-3.0"):
        Costs(attention_power_w=-3.0, ffn_power_w=1.0)
    with pytest.raises(ValueError, match="both be 0"):
        Costs(attention_power_w=0.0, ffn_power_w=0.0)
    lat = LatencyModel(**LAT)
    with pytest.raises(ValueError, match="objective"):
        provision_constrained(jax.random.key(0), _zv(), lat, [64], [1], 10, 2, objective="per_token")
    with pytest.raises(ValueError, match="prices"):
        provision_constrained(jax.random.key(0), _zv(), lat, [64], [1], 10, 2, objective="per_dollar")
    with pytest.raises(ValueError, match="batch_sizes"):
        provision_constrained(jax.random.key(0), _zv(), lat, [0, 64], [1], 10, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(attention_power_w=True, ffn_power_w=1.0),
        dict(attention_power_w=700.0, ffn_power_w=False),
        dict(attention_price_per_hour=np.bool_(True), ffn_price_per_hour=2.0),
    ],
)
def test_boolean_costs_are_refused(kwargs):
    name = next(k for k, v in kwargs.items() if isinstance(v, (bool, np.bool_)))
    with pytest.raises(ValueError, match=f"{name}=(np.)?True|{name}=(np.)?False"):
        Costs(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kv_capacity_bytes=True, kv_bytes_per_token=1.0),
        dict(tpot_target_ms=True, num_layers=2),
        dict(num_layers=True),
    ],
)
def test_boolean_constraints_are_refused(kwargs):
    with pytest.raises(ValueError, match="is invalid"):
        Constraints(**kwargs)


def test_duplicate_ratios_are_refused():
    lat = LatencyModel(**LAT)
    with pytest.raises(ValueError, match=r"ratios=\[1, 2, 2\] is invalid: expected distinct ratios \(repeated: 2\)"):
        provision_constrained(jax.random.key(0), _zv(), lat, [64], [1, 2, 2], 10, 2)
    with pytest.raises(ValueError, match="repeated: 3"):
        afdjax.provision(jax.random.key(0), _zv(), lat, 64, np.array([3, 1, 3]), 10, 2)


def test_deployment_decisions_by_hand():
    """Automatic KV capacity and per-instance power: HBM x devices - weights, devices x board power."""
    dep = afdjax.load_deployment("h100:deepseek-v3")
    by_hand = dep.attention_devices * dep.hbm_capacity_bytes - dep.attention_weight_bytes
    assert afdjax.deployment_kv_capacity_bytes(dep) == pytest.approx(by_hand, rel=1e-15)
    assert afdjax.deployment_instance_power_w(dep) == (700.0 * dep.attention_devices, 700.0 * dep.ffn_devices)
    cons = Constraints.for_deployment(dep, kv_capacity_bytes="auto", tpot_target_ms=50.0)
    assert cons.kv_capacity_bytes == pytest.approx(by_hand, rel=1e-15)
    assert cons.kv_bytes_per_token == dep.kv_bytes_per_token and cons.num_layers == dep.num_layers == 61
    assert Constraints.for_deployment(dep, num_layers=3, kv_bytes_per_token=10.0).num_layers == 3
    costs = Costs.for_deployment(dep, attention_price_per_hour=1.0, ffn_price_per_hour=2.0)
    assert (costs.attention_power_w, costs.ffn_power_w) == (700.0 * dep.attention_devices, 700.0 * dep.ffn_devices)
    assert Costs.for_deployment(dep, attention_power_w=1.0, ffn_power_w=2.0).ffn_power_w == 2.0
    paper = afdjax.load_deployment("paper-910c")
    with pytest.raises(ValueError, match="does not give HBM capacity"):
        Constraints.for_deployment(paper, kv_capacity_bytes="auto")
    with pytest.raises(ValueError, match="kv_capacity_bytes='lots' is invalid"):
        Constraints.for_deployment(dep, kv_capacity_bytes="lots")
    assert afdjax.deployment_instance_power_w(paper) is None
    assert Costs.for_deployment(paper).attention_power_w is None


def _column_ends(header: str, labels) -> list[int]:
    ends, start = [], 0
    for label in labels:
        i = header.index(label, start)
        ends.append(i + len(label))
        start = ends[-1]
    return ends


@pytest.mark.parametrize("with_kv", [False, True])
def test_constrained_table_columns_are_aligned(with_kv):
    """Every value of the per-batch-size table ends under its header, with or without a KV
    capacity (missing values print '-', right-aligned like the numbers)."""
    kv = dict(kv_capacity_bytes=200 * P * 1000.0, kv_bytes_per_token=1000.0) if with_kv else {}
    cons = Constraints(**kv)
    report = provision_constrained(  # the shapes of test_tpot_binds_and_kv_limits_batch_size
        jax.random.key(0), _zv(), LatencyModel(**LAT), [64, 128, 256], list(range(1, 13)), 30, 2, constraints=cons
    )
    lines = report.format_text().splitlines()
    h = next(i for i, line in enumerate(lines) if line.lstrip().startswith("B "))
    header = lines[h]
    labels = ["B", "KV load mean", "P(KV>cap) sim", "Gaussian", "best r", "objective", "TPOT mean", "TPOT p99"]
    ends = _column_ends(header, labels)
    rows = lines[h + 2 : h + 5]
    assert len(rows) == 3
    for row in rows:
        for end in ends:
            assert row[end - 1] != " " and row[end] == " ", (row, end)
            # the cell is exactly the column's width: blank just before it
        assert row[ends[-1] : ends[-1] + 2] == "  "
    if with_kv:  # B = 256 overflows: no best ratio; the dashes are aligned too
        assert rows[2].split()[4:8] == ["-", "-", "-", "-"]
    else:
        assert rows[0].split()[2:4] == ["-", "-"]
