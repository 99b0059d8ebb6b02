"""``afdjax compare`` and :func:`afdjax._compare.compare` (issue 15): AFD against co-located
serving on the same devices.

The choice is checked against a brute force written here from the model's statement
(zero-variance workload: every step time is a closed form by hand; every ratio, group
size and integer batch size). Closed form only (``num_steps=0``) in the default suite;
the simulated variant is slow-marked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from afdjax import Colocated, Geometric, LatencyModel, Pipeline, derive_latency, pipeline_barrier_cycle_time
from afdjax._cli import main
from afdjax._compare import compare

HW = derive_latency("h100", "deepseek-v3")
DEVICES = 40


def _brute_force(hw, workload, devices, tpot_ms=None, top=4096):
    """Best throughput per device (tokens/s) of each side for a zero-variance workload
    (co-located: the better of two-batch overlap and none)."""
    c = hw.latency.coefficients()
    link = 0.0 if hw.latency.comm is None else float(hw.latency.comm.alpha_link)
    theta, L, n_a, n_f = float(workload.theta()), hw.num_layers, hw.attention_devices, hw.ffn_devices
    cap = n_a * hw.hbm_capacity_bytes - hw.attention_weight_bytes  # KV bytes of an Attention instance
    B = np.arange(1, top + 1, dtype=float)[:, None]

    def ok(tau):
        return np.ones_like(tau, bool) if tpot_ms is None else L * tau / 1000 <= tpot_ms

    r = np.arange(1, (devices - n_f) // n_a + 1)[None, :]
    tau = np.maximum.reduce(
        [
            c["alpha_a"] * B * theta + c["beta_a"] + 0 * r,
            c["alpha_f"] * r * B + c["beta_f"],
            c["alpha_c"] * B + c["beta_c"] + 0 * r,
            link * r * B,  # the FFN instance's shared link receives r B tokens
        ]
    )
    thr = (devices // (r * n_a + n_f)) * r * B / (L * tau * 1e-6) / devices
    fits = B * theta * hw.kv_bytes_per_token <= cap
    afd = np.max(np.where(ok(tau) & fits, thr, -np.inf))
    g = np.arange(1, devices // n_a + 1)[None, :]
    co = -np.inf
    for overlap in (False, True):
        halves = [np.floor((B - k + 1) / 2) for k in range(2)] if overlap else [B]
        compute = sum(
            c["alpha_a"] * h * theta + c["beta_a"] + n_f / n_a * (c["alpha_f"] * h + c["beta_f"] / g) for h in halves
        )
        comm = sum(2 * ((1 - 1 / g) * c["alpha_c"] * h + np.where(g > 1, c["beta_c"], 0.0)) for h in halves)
        tau_c = np.maximum(compute, comm) if overlap else compute + comm
        thr_c = (devices // n_a // g) * g * B / (n_a * L * tau_c * 1e-6) / devices
        fits_c = B * theta * hw.kv_bytes_per_token <= cap - hw.ffn_weight_bytes / g
        if overlap:
            fits_c &= B >= 2
        co = max(co, np.max(np.where(ok(tau_c) & fits_c, thr_c, -np.inf)))
    return afd, co


@pytest.mark.parametrize("tpot_ms", [None, 40.0])
def test_choice_matches_brute_force(tpot_ms):
    workload = Geometric(700.0, 0.0)  # zero slot variance: the closed forms are exact
    result = compare(workload, HW, DEVICES, tpot_ms=tpot_ms, num_steps=0)
    afd, co = _brute_force(HW, workload, DEVICES, tpot_ms)
    assert result.afd["throughput_per_device"] == pytest.approx(afd, rel=1e-5)
    assert result.colocated["throughput_per_device"] == pytest.approx(co, rel=1e-5)
    g = result.gain
    assert g["ratio"] == pytest.approx(afd / co, rel=1e-5)
    product = g["batch_expansion"] * g["ffn_instance_tax"] * g["step_time_ratio"] * g["device_use_ratio"]
    assert product == pytest.approx(g["ratio"], rel=1e-9)
    for side in (result.afd, result.colocated):
        assert side["batch_size"] <= side["max_batch_size"]
        assert side["devices_used"] <= DEVICES
        if tpot_ms is not None:
            assert side["tpot_ms"] <= tpot_ms
    # the AFD shape: bundles of r Attention + one FFN instance fill at most the devices
    a = result.afd
    assert a["bundles"] == DEVICES // (a["ratio"] * a["attention_devices"] + a["ffn_devices"])
    # the co-located rank holds its expert share: less KV room than an Attention instance
    assert result.colocated["kv_capacity_bytes"] < a["kv_capacity_bytes"]
    curve = result.curve
    assert len(curve["ratios"]) == (DEVICES - HW.ffn_devices) // HW.attention_devices
    assert max(v for v in curve["afd_throughput_per_device"] if v is not None) <= a["throughput_per_device"] + 1e-6


def test_bad_input_names_the_argument():
    w = Geometric(100.0, 500.0)
    with pytest.raises(ValueError, match=r"devices=16 is invalid: expected at least one AFD bundle: 17 devices"):
        compare(w, HW, 16, num_steps=0)
    with pytest.raises(ValueError, match=r"tpot_ms=1 is invalid: no AFD configuration meets it \(the fastest"):
        compare(w, HW, DEVICES, tpot_ms=1.0, num_steps=0)
    with pytest.raises(ValueError, match=r"hardware='paper-910c' is invalid: expected an ACCELERATOR:MODEL spec"):
        compare(w, "paper-910c", DEVICES, num_steps=0)
    with pytest.raises(ValueError, match=r"unknown accelerator 'h999'"):
        compare(w, "h999:deepseek-v3", DEVICES, num_steps=0)
    with pytest.raises(ValueError, match=r"kv_capacity_bytes='lots' is invalid"):
        compare(w, HW, DEVICES, kv_capacity_bytes="lots", num_steps=0)
    with pytest.raises(ValueError, match=r"ratios=\[99\] is invalid: expected integers in 1..24"):
        compare(w, HW, DEVICES, ratios=[99], num_steps=0)
    one = compare(w, HW, DEVICES, ratios=[3], group_sizes=[16], colocated_overlap=False, num_steps=0)
    assert (one.afd["ratio"], one.colocated["ranks_per_group"], one.colocated["overlap"]) == (3, 16, False)
    assert one.colocated["groups"] == DEVICES // 16 and one.afd["bundles"] == DEVICES // 19
    # the AFD side as an explicit pipeline: its closed form is the pipeline's Gaussian period
    piped = compare(w, HW, DEVICES, ratios=[3], group_sizes=[16], afd_step_model=Pipeline(2), num_steps=0)
    a = piped.afd
    assert a["micro_batches"] == 2 and "pipeline of 2 micro-batches" in piped.format_text()
    # compare leaves out the stage-time parts (noise, routing, comm) the preset fills: the
    # co-located step models none of them, so both designs go without
    six = LatencyModel(**HW.latency.coefficients(), comm_scaling=HW.latency.comm_scaling)
    expect = float(pipeline_barrier_cycle_time(w, six, a["batch_size"], 3.0, 2))
    assert a["cycle_time_us"] == pytest.approx(expect, rel=1e-6)
    with pytest.raises(ValueError, match=r"afd_step_model=.* is invalid: expected Barrier\(\) or Pipeline\(m\)"):
        compare(w, HW, DEVICES, afd_step_model=Colocated(), num_steps=0)


def test_cli_json_and_plot(tmp_path, capsys):
    plot = tmp_path / "compare.png"
    args = ["compare", "--devices", str(DEVICES), "--steps", "0", "--tpot-ms", "60", "--json", "--plot", str(plot)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for side, shape in (("afd", "ratio"), ("colocated", "ranks_per_group")):
        assert {shape, "batch_size", "throughput_per_device", "tpot_ms"} <= set(out[side])
        assert out[side]["tpot_ms"] <= 60
    assert {"ratio", "batch_expansion", "ffn_instance_tax", "step_time_ratio"} <= set(out["gain"])
    assert out["settings"]["devices"] == DEVICES and out["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["compare", "--devices", str(DEVICES), "--steps", "0"]) == 0
    text = capsys.readouterr().out
    assert "gain (AFD / co-located, per device)" in text and "batch expansion" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--devices", "4"], "afdjax: error: --devices 4 is invalid: expected at least one AFD bundle: 17 devices"),
        (["--hardware", "h999:deepseek-v3"], "afdjax: error: unknown accelerator 'h999'"),
        (["--hardware", "h100:llama-9"], "afdjax: error: unknown model 'llama-9'"),
        (["--tpot-ms", "2"], "afdjax: error: --tpot-ms 2 is invalid: no AFD configuration meets it"),
    ],
)
def test_cli_errors_are_one_line(args, message, capsys):
    assert main(["compare", "--steps", "0", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err and "Traceback" not in err


@pytest.mark.slow
def test_simulated_configurations_agree_with_closed_form():
    result = compare(Geometric(100.0, 500.0), HW, DEVICES, num_steps=200, num_replicas=2)
    for side in (result.afd, result.colocated):
        sim = side["simulated"]
        assert sim["throughput_per_device"] == pytest.approx(side["throughput_per_device"], rel=0.02)
    assert result.gain["simulated_ratio"] == pytest.approx(result.gain["ratio"], rel=0.03)


def test_heterogeneous_hardware_spec(tmp_path):
    """``ATTENTION_ACCEL/FFN_ACCEL:MODEL``: attention coefficients and KV room from the first,
    FFN coefficients, FFN instance size and power from the second."""
    from afdjax import deployment_instance_power_w, load_deployment
    from afdjax._specs import derive_from_spec

    mixed = derive_from_spec("h200/b200:deepseek-v3")
    attention, ffn = derive_latency("h200", "deepseek-v3"), derive_latency("b200", "deepseek-v3")
    got = mixed.latency.coefficients()
    for name in ("alpha_a", "beta_a", "alpha_c"):
        assert got[name] == attention.latency.coefficients()[name]
    for name in ("alpha_f", "beta_f"):
        assert got[name] == ffn.latency.coefficients()[name]
    assert mixed.ffn_devices == ffn.ffn_devices and mixed.attention_devices == attention.attention_devices
    assert mixed.heterogeneous and not attention.heterogeneous
    assert any("heterogeneous AFD: Attention on h200, FFN on b200" in n for n in mixed.notes)
    dep = load_deployment("h200/b200:deepseek-v3")
    assert dep.accelerator == "h200/b200" and dep.kv_capacity_bytes() == attention.deployment().kv_capacity_bytes()
    assert deployment_instance_power_w(dep) == (700.0 * dep.attention_devices, 1000.0 * dep.ffn_devices)
    assert "ffn_power_watts" not in load_deployment("h100:deepseek-v3").to_dict()
    toml = tmp_path / "mixed.toml"  # the TOML round trip keeps the FFN device's power
    toml.write_text(mixed.to_toml())
    assert deployment_instance_power_w(load_deployment(str(toml))) == (700.0, 1000.0 * dep.ffn_devices)
    assert "ffn_power_watts" not in HW.to_toml()
    assert derive_from_spec("h100/h100:deepseek-v3").latency.coefficients() == HW.latency.coefficients()
    # compare: the co-located side runs on the Attention accelerator
    result = compare(Geometric(100.0, 500.0), mixed, DEVICES, num_steps=0)
    assert result.afd["accelerator"] == "h200/b200" and result.colocated["accelerator"] == "h200"
    with pytest.raises(ValueError, match=r"unknown accelerator 'b999'"):
        compare(Geometric(100.0, 500.0), "h200/b999:deepseek-v3", DEVICES, num_steps=0)
