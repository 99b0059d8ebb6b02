"""Trace loading, workload/hardware spec parsing and the hardware TOML round trip."""

import csv
import json

import numpy as np
import pytest

import afdjax
from afdjax._specs import parse_hardware_spec, parse_workload_spec


def _azure_columns(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return (
        np.array([float(r["ContextTokens"]) for r in rows]),
        np.array([float(r["GeneratedTokens"]) for r in rows]),
    )


@pytest.mark.parametrize("name", ["azure-code", "azure-conv", "mooncake-conv"])
def test_bundled_traces_load_with_independent_parse(name):
    path = afdjax.bundled_trace_path(name)
    if path.suffix == ".csv":
        p, d = _azure_columns(path)
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        p = np.array([r["input_length"] for r in rows], float)
        d = np.array([r["output_length"] for r in rows], float)
    w = afdjax.load_trace(name)
    np.testing.assert_array_equal(np.asarray(w.prefill_tokens), p)
    np.testing.assert_array_equal(np.asarray(w.decode_steps), d)
    # plug-in theta, computed here independently
    theta = np.sum(d * p + d * (d - 1) / 2) / np.sum(d)
    np.testing.assert_allclose(float(w.theta()), theta, rtol=1e-12)


def test_bundled_trace_record_counts():
    counts = {"azure-code": 8819, "azure-conv": 19366, "mooncake-conv": 12031}
    for name, n in counts.items():
        assert afdjax.load_trace(name).num_requests == n


def test_tokens_per_step_mapping(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("a,b\n10,1\n20,4\n30,5\n")
    w = afdjax.load_trace(f, prefill_column="a", decode_column="b", tokens_per_step=2)
    np.testing.assert_array_equal(np.asarray(w.decode_steps), [1, 2, 3])  # ceil(n / 2)
    with pytest.raises(ValueError, match="tokens_per_step"):
        afdjax.load_trace(f, prefill_column="a", decode_column="b", tokens_per_step=0)


def test_generic_jsonl_with_named_columns(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"p": 5, "d": 3}\n\n{"p": 0, "d": 1}\n')
    w = parse_workload_spec(f"trace:{f},prefill=p,decode=d")
    np.testing.assert_array_equal(np.asarray(w.prefill_tokens), [5, 0])
    np.testing.assert_array_equal(np.asarray(w.decode_steps), [3, 1])


@pytest.mark.parametrize(
    "content, match",
    [
        ("ContextTokens,GeneratedTokens\n10,0\n", "GeneratedTokens in record 1"),
        ("ContextTokens,GeneratedTokens\n-1,5\n", "ContextTokens in record 1"),
        ("ContextTokens,GeneratedTokens\n10,5\n10,abc\n", "record 2.*not a number"),
        ("ContextTokens,GeneratedTokens\n10,2.5\n", "not an integer"),
        ("ContextTokens,GeneratedTokens\n10,nan\n", "not finite"),
        ("x,y\n1,2\n", "cannot tell which columns"),
        ("ContextTokens,GeneratedTokens\n", "no records"),
    ],
)
def test_bad_trace_content(tmp_path, content, match):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    with pytest.raises(ValueError, match=match):
        afdjax.load_trace(f)


def test_missing_trace_and_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        afdjax.load_trace(tmp_path / "nope.csv")
    f = tmp_path / "t.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no column 'zz'"):
        afdjax.load_trace(f, prefill_column="a", decode_column="zz")
    with pytest.raises(ValueError, match="name both"):
        afdjax.load_trace(f, prefill_column="a")
    g = tmp_path / "t.jsonl"
    g.write_text("{not json}\n")
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        afdjax.load_trace(g)


def test_geometric_spec():
    w = parse_workload_spec("geometric:mu_p=100,mu_d=500,prefill=lognormal,sigma=0.5")
    assert isinstance(w, afdjax.Geometric)
    assert float(w.mu_p) == 100 and float(w.mu_d) == 500 and w.prefill == "lognormal"
    assert float(w.prefill_sigma) == 0.5
    assert parse_workload_spec("geometric:mu_p=1,mu_d=2").prefill == "constant"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("poisson:mu=1", "malformed workload spec"),
        ("geometric:mu_p=100", "missing mu_d"),
        ("geometric:mu_p=-1,mu_d=5", "mu_p=-1 must be >= 0"),
        ("geometric:mu_p=abc,mu_d=5", "mu_p='abc' is not a number"),
        ("geometric:mu_p=1,mu_d=5,prefill=weibull", "prefill='weibull'"),
        ("geometric:mu_p=1,mu_d=5,foo=2", "unknown key"),
        ("geometric:mu_p=1,mu_d", "expected key=value"),
        ("trace:", "missing trace path"),
        ("trace:azure-conv,tokens_per_step=0", "tokens_per_step"),
        ("trace:azure-conv,column=3", "unknown key"),
    ],
)
def test_bad_workload_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_workload_spec(spec)


def test_hardware_specs_and_toml_roundtrip(tmp_path):
    base = parse_hardware_spec("paper-910c")
    assert base.coefficients() == afdjax.PRESETS["paper-910c"]
    over = parse_hardware_spec("paper-910c,comm_scaling=ratio_batch,alpha_c=0.03")
    c = over.coefficients()
    assert over.comm_scaling == "ratio_batch" and c["alpha_c"] == 0.03 and c["beta_a"] == 50.0
    inline = parse_hardware_spec("alpha_a=1,beta_a=2,alpha_f=3,beta_f=4,alpha_c=5,beta_c=6")
    assert inline.coefficients() == dict(alpha_a=1, beta_a=2, alpha_f=3, beta_f=4, alpha_c=5, beta_c=6)
    f = tmp_path / "hw.toml"
    f.write_text(afdjax.latency_to_toml(over, description="test\nsecond line"))
    back = parse_hardware_spec(str(f))
    assert back.coefficients() == over.coefficients() and back.comm_scaling == "ratio_batch"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("h900", "unknown hardware preset 'h900'; available: paper-910c"),
        ("alpha_a=1,beta_a=2", "missing coefficient"),
        ("alpha_a=1,beta_a=2,alpha_f=3,beta_f=4,alpha_c=5,beta_c=-6", "beta_c=-6.0 is invalid"),
        ("paper-910c,gamma=1", "unknown key 'gamma'"),
        ("paper-910c,comm_scaling=sometimes", "comm_scaling='sometimes'"),
        ("missing.toml", "does not exist"),
    ],
)
def test_bad_hardware_specs(spec, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        parse_hardware_spec(spec)


def test_bad_toml(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[latency\nalpha_a = 1\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        parse_hardware_spec(str(f))
    f.write_text('[latency]\nalpha_a = "fast"\nbeta_a=1\nalpha_f=1\nbeta_f=1\nalpha_c=1\nbeta_c=1\n')
    with pytest.raises(ValueError, match="alpha_a='fast' is not a number"):
        parse_hardware_spec(str(f))


def test_read_toml_is_the_one_toml_reader(tmp_path):
    """Every TOML file (hardware, accelerator/model, sweep grid) goes through read_toml: one wording."""
    from afdjax._specs import read_toml

    with pytest.raises(FileNotFoundError, match="grid file '.*nope.toml' does not exist"):
        read_toml(tmp_path / "nope.toml", "grid")
    with pytest.raises(ValueError, match="hardware path '.*' is not a file"):
        read_toml(tmp_path, "hardware")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00[latency]")
    for call in (
        lambda: read_toml(binary, "hardware"),
        lambda: parse_hardware_spec(str(binary)),
        lambda: afdjax.load_grid(binary),
    ):
        with pytest.raises(ValueError, match="binary.toml' is not UTF-8 text"):
            call()
    bad = tmp_path / "chip.toml"
    bad.write_text("[accelerator\n")
    with pytest.raises(ValueError, match="accelerator file '.*chip.toml' is not valid TOML"):
        afdjax.parse_accelerator_spec(str(bad))
    good = tmp_path / "good.toml"
    good.write_text('[a]\nx = 1.5\ny = "z"\n')
    assert read_toml(str(good), "test") == {"a": {"x": 1.5, "y": "z"}}


def test_tokens_per_step_accepts_integer_valued_numbers_only(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("a,b\n0,3\n1,4\n")
    steps = afdjax.load_trace(f, prefill_column="a", decode_column="b", tokens_per_step=2.0).decode_steps
    np.testing.assert_array_equal(np.asarray(steps), [2, 2])
    for bad in (1.5, True, "2"):
        with pytest.raises(ValueError, match="tokens_per_step=.* is invalid: expected an integer >= 1"):
            afdjax.load_trace(f, prefill_column="a", decode_column="b", tokens_per_step=bad)
