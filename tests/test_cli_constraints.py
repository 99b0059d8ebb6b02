"""``afdjax provision`` with constraints and costs: the operator's command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

import afdjax
from afdjax._cli._main import main, parse_batch_sizes
from afdjax._provision._constraints import kv_overflow_probability_gaussian

SMALL = ["--steps", "300", "--replicas", "4", "--ratios", "1:16"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_batch_sizes():
    assert parse_batch_sizes("256,64,128") == [64, 128, 256]
    assert parse_batch_sizes("x2:32:256") == [32, 64, 128, 256]
    assert parse_batch_sizes("64:256:64") == [64, 128, 192, 256]


def test_acceptance_command_gives_a_recommendation(capsys):
    """The issue's command (with a smaller Monte Carlo): a recommendation and its binding constraint."""
    code, out, err = run(
        capsys,
        "provision",
        "--hardware",
        "h100:deepseek-v3",
        "--batch-size",
        "128",
        "--kv-capacity-gb",
        "60",
        "--tpot-ms",
        "50",
        "--micro-batches",
        "2",
        *SMALL,
    )
    assert code == 0, err
    assert "Recommendation: B = 128, r = " in out
    assert "Binding constraint:" in out
    assert "60 GB" in out and "TPOT p99 <= 50 ms" in out and "2 micro-batches" in out


@pytest.mark.slow  # long run; the default suite covers the path with a smaller case
def test_joint_choice_json_is_consistent(capsys, tmp_path):
    png = tmp_path / "region.png"
    code, out, err = run(
        capsys,
        "provision",
        "--hardware",
        "h100:deepseek-v3",
        "--workload",
        "trace:azure-conv",
        "--batch-sizes",
        "x2:64:1024",
        "--kv-capacity-gb",
        "auto",
        "--tpot-ms",
        "50",
        "--objective",
        "per-joule",
        *SMALL,
        "--json",
        "--plot",
        str(png),
    )
    assert code == 0, err
    data = json.loads(out)
    assert png.stat().st_size > 1000 and data["plot"] == str(png)
    dep = afdjax.load_deployment("h100:deepseek-v3")
    cap_tokens = dep.kv_capacity_bytes() / dep.kv_bytes_per_token
    assert data["kv_capacity_tokens"] == pytest.approx(cap_tokens)
    wl = afdjax.load_trace("azure-conv")
    cells = data["cells"]
    assert {c["batch_size"] for c in cells} == {64, 128, 256, 512, 1024}
    for c in cells:
        # Gaussian column recomputed independently; feasibility = every limit met
        assert c["kv_overflow_gaussian"] == pytest.approx(
            kv_overflow_probability_gaussian(wl, c["batch_size"], cap_tokens), rel=1e-9, abs=1e-300
        )
        ok = c["kv_overflow_simulated"] <= 1e-3 and c["tpot_p99_ms"] <= 50
        assert c["feasible"] == ok
        # per joule: bundle tokens/s over (r x attention power + FFN power) from the deployment
        power = c["ratio"] * dep.power_watts * dep.attention_devices + dep.power_watts * dep.ffn_devices
        assert c["tokens_per_joule"] == pytest.approx(c["bundle_tokens_per_s"] / power, rel=1e-12)
    feasible = [c for c in cells if c["feasible"]]
    best = max(feasible, key=lambda c: c["tokens_per_joule"])
    rec = data["recommendation"]
    assert (rec["batch_size"], rec["ratio"]) == (best["batch_size"], best["ratio"])
    assert data["objective"] == "per_joule"


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--tpot-ms", "50", "--hardware", "alpha_a=0.001,beta_a=50,alpha_f=0.08,beta_f=100,alpha_c=0.02,beta_c=20"],
            "--tpot-ms needs the number of layers",
        ),
        (["--kv-capacity-gb", "lots", "--hardware", "h100:deepseek-v3"], "--kv-capacity-gb 'lots' is not a number"),
        (["--kv-capacity-gb", "-3", "--hardware", "h100:deepseek-v3"], "--kv-capacity-gb must be > 0"),
        (["--kv-capacity-gb", "auto"], "does not give HBM capacity"),
        (["--objective", "per-dollar"], "--objective per-dollar needs --price-attention and --price-ffn"),
        (["--price-attention", "2.0"], "give both --price-attention and --price-ffn"),
        (["--batch-sizes", "64,abc"], "--batch-sizes '64,abc' is malformed"),
        (["--tpot-ms", "0"], "--tpot-ms must be > 0"),
        (
            ["--kv-overflow-prob", "1.5", "--kv-capacity-gb", "60", "--hardware", "h100:deepseek-v3"],
            "--kv-overflow-prob must be a probability in [0, 1), got 1.5",
        ),
        (["--batch-sizes", "16,32", "--micro-batches", "24"], "--micro-batches 24 is invalid"),
    ],
)
def test_constraint_errors_are_one_line(capsys, argv, message):
    code, _, err = run(capsys, "provision", *argv, *SMALL)
    assert code == 2
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.slow  # the per-dollar and per-joule arithmetic is checked in-process by test_constraints.py
def test_per_dollar_prices_by_hand(capsys):
    code, out, err = run(
        capsys,
        "provision",
        "--batch-size",
        "64",
        "--objective",
        "per-dollar",
        "--price-attention",
        "2.5",
        "--price-ffn",
        "9",
        *SMALL,
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    for c in data["cells"]:
        assert c["tokens_per_dollar"] == pytest.approx(
            c["bundle_tokens_per_s"] * 3600 / (2.5 * c["ratio"] + 9), rel=1e-12
        )
        # paper-910c is DeepSeek-V3: 61 layer-steps per output token, coefficients in us
        assert c["bundle_tokens_per_s"] == pytest.approx(
            (c["ratio"] + 1) * c["throughput_per_instance"] * 1e6 / 61, rel=1e-12
        )
    values = [c["tokens_per_dollar"] for c in data["cells"]]
    assert data["recommendation"]["ratio"] == data["cells"][int(np.argmax(values))]["ratio"]


@pytest.mark.slow  # a fresh `python -m afdjax._cli` process; test_cli_signals.py starts the CLI that way by default
def test_installed_script_runs_the_acceptance_command():
    """As a user types it, through the console script's module entry point, in a fresh process."""
    cmd = [
        sys.executable,
        "-m",
        "afdjax._cli",
        "provision",
        "--hardware",
        "h100:deepseek-v3",
        "--batch-size",
        "128",
        "--kv-capacity-gb",
        "60",
        "--tpot-ms",
        "50",
        "--micro-batches",
        "2",
        *SMALL,  # the shapes of the in-process run above: its programs come from the shared compilation cache
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Recommendation: B = 128" in proc.stdout and "Binding constraint:" in proc.stdout
