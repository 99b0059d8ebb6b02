"""afdjax fit workload | latency | throughput from the command line."""

import json

import numpy as np
import pytest

from afdjax._cli._main import main
from afdjax._data import DATA_DIR
from afdjax._specs import parse_hardware_spec


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow  # fit_latency and its bootstrap are tested in-process in test_fit_latency.py
def test_fit_latency_writes_usable_toml(capsys, tmp_path):
    toml = tmp_path / "hw.toml"
    code, out, err = run(
        capsys,
        "fit",
        "latency",
        "--observations",
        str(DATA_DIR / "example_step_latency.csv"),
        "--bootstrap",
        "20",
        "--out",
        str(toml),
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    lat = parse_hardware_spec(str(toml))
    coeffs = lat.coefficients()
    # the example data are synthetic around paper-910c: the fit lands near it
    assert coeffs["alpha_a"] == pytest.approx(0.00165, rel=0.05)
    assert coeffs["alpha_f"] == pytest.approx(0.083, rel=0.05)
    assert "toml" in data
    # and the TOML drives a simulation
    code, out, err = run(
        capsys,
        "simulate",
        "--hardware",
        str(toml),
        "--batch-size",
        "32",
        "--ratios",
        "1:3",
        "--steps",
        "100",
        "--replicas",
        "2",
        "--json",
    )
    assert code == 0, err


def test_fit_workload_on_a_small_trace(capsys, tmp_path):
    rng = np.random.default_rng(0)
    d = rng.geometric(0.02, 3000)
    p = rng.gamma(2.0, 300.0, 3000).round()
    f = tmp_path / "t.csv"
    f.write_text("ContextTokens,GeneratedTokens\n" + "\n".join(f"{int(a)},{int(b)}" for a, b in zip(p, d)) + "\n")
    code, out, err = run(
        capsys,
        "fit",
        "workload",
        "--trace",
        str(f),
        "--family",
        "geometric,negative_binomial",
        "--prefill-family",
        "gamma",
        "--json",
    )
    assert code == 0, err
    data = json.loads(out)
    text = json.dumps(data)
    assert "geometric" in text and "theta" in text


@pytest.mark.slow  # test_calibrate.py runs `afdjax fit throughput --observations` end to end by default
def test_fit_throughput_small(capsys, tmp_path):
    f = tmp_path / "obs.csv"
    # two batch sizes, several ratios: values near the paper baseline model
    rows = ["batch_size,ratio,throughput,stderr"]
    for b, r, t in [
        (128, 2, 0.468),
        (128, 4, 0.550),
        (128, 8, 0.591),
        (128, 12, 0.520),
        (256, 2, 0.549),
        (256, 4, 0.646),
        (256, 8, 0.706),
        (256, 12, 0.663),
    ]:
        rows.append(f"{b},{r},{t},0.004")
    f.write_text("\n".join(rows) + "\n")
    toml = tmp_path / "cal.toml"
    code, out, err = run(
        capsys, "fit", "throughput", "--observations", str(f), "--steps", "100", "--replicas", "2", "--out", str(toml)
    )
    assert code == 0, err
    assert "95% interval" in out
    assert parse_hardware_spec(str(toml)).coefficients()["alpha_a"] > 0


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["fit"], "choose what to fit"),
        (["fit", "latency", "--observations", "/no/such.csv"], "does not exist"),
        (["fit", "workload", "--trace", "/no/such.csv"], "does not exist"),
        (["fit", "throughput", "--observations", "/no/such.csv"], "does not exist"),
        (["fit", "workload", "--trace", "azure-code", "--family", "weibull"], "weibull"),
    ],
)
def test_fit_errors_one_line(capsys, argv, fragment):
    code, _out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err
