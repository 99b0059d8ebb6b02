"""The afdjax command line: output formats, plots and one-line errors with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from afdjax._cli._main import main, parse_ratios

SMALL = ["--batch-size", "32", "--ratios", "1:6", "--steps", "300", "--replicas", "4"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_ratios():
    assert parse_ratios("1:4") == [1, 2, 3, 4]
    assert parse_ratios("2:10:4") == [2, 6, 10]
    assert parse_ratios("8,1,4") == [1, 4, 8]


def test_simulate_json(capsys):
    code, out, err = run(capsys, "simulate", *SMALL, "--json", "--seed", "3")
    assert code == 0, err
    data = json.loads(out)
    for key in (
        "ratios",
        "throughput_per_instance",
        "stderr",
        "attention_idle_fraction",
        "ffn_idle_fraction",
        "mean_cycle_time",
        "best_ratio",
        "settings",
    ):
        assert key in data
    assert data["ratios"] == [1, 2, 3, 4, 5, 6]
    thr = np.array(data["throughput_per_instance"])
    assert data["best_ratio"] == data["ratios"][int(np.argmax(thr))]
    s = data["settings"]
    assert s["batch_size"] == 32 and s["steps"] == 300 and s["replicas"] == 4 and s["seed"] == 3
    assert s["latency_coefficients"]["alpha_f"] == 0.083
    # consistency of the printed numbers: thr * (r + 1) * mean cycle = r * B
    r = np.array(data["ratios"])
    np.testing.assert_allclose(thr * (r + 1) * np.array(data["mean_cycle_time"]), r * 32, rtol=1e-5)


def test_simulate_table_and_plot(capsys, tmp_path):
    png = tmp_path / "curve.png"
    code, out, err = run(capsys, "simulate", *SMALL, "--plot", str(png), "--workload", "trace:azure-code")
    assert code == 0, err
    assert "Simulated throughput peaks at r =" in out and "<- best" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_paper_baseline_peak_is_reported(capsys):
    code, out, err = run(capsys, "simulate", "--steps", "2000", "--replicas", "8", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["best_ratio"] in (9, 10, 11)
    code, out, _ = run(capsys, "simulate", "--steps", "2000", "--replicas", "8")
    assert f"Simulated throughput peaks at r = {data['best_ratio']}" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--hardware", "h900"], "unknown hardware preset 'h900'"),
        (["--workload", "trace:/no/such/file.csv"], "does not exist"),
        (["--workload", "geometric:mu_p=100"], "missing mu_d"),
        (["--workload", "geometric:mu_p=-5,mu_d=3"], "must be >= 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--ratios", "5:1"], "empty range"),
        (["--ratios", "a:b"], "malformed"),
        (["--ratios", "0:3"], "must be >= 1"),
        (["--ratios", "1,1"], "--ratios '1,1' repeats 1: give each ratio once"),
        (["--ratios", "3,1,3,2,1"], "repeats 1, 3"),
        (["--steps", "many"], "not an integer"),
        (["--plot", "/no/such/dir/x.png"], "does not exist"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, fragment):
    code, _, err = run(capsys, "simulate", *SMALL, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("afdjax: error:") and fragment in lines[0]
    assert "Traceback" not in err


def test_bad_trace_lengths(capsys, tmp_path):
    f = tmp_path / "neg.csv"
    f.write_text("ContextTokens,GeneratedTokens\n10,5\n-3,4\n")
    code, _, err = run(capsys, "simulate", *SMALL, "--workload", f"trace:{f}")
    assert code == 2 and "ContextTokens in record 2 is -3" in err and len(err.strip().splitlines()) == 1


def test_console_script_error_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "afdjax._cli", "simulate", "--hardware", "nonexistent-preset"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "afdjax: error: unknown hardware preset 'nonexistent-preset'; available: paper-910c "
        "(or a TOML file, or inline alpha_a=..,beta_a=..,alpha_f=..,beta_f=..,alpha_c=..,beta_c=..)"
    ]
