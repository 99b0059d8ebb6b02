"""provision / verify: the report's numbers against independent computations."""

import json
import math

import jax
import numpy as np
import pytest

import afdjax
from afdjax._cli._main import main
from afdjax._provision._text import _explain
from afdjax._provision._verify import PAPER_CONFIGS, run_verification

PAPER = dict(alpha_a=0.00165, beta_a=50.0, alpha_f=0.083, beta_f=100.0, alpha_c=0.022, beta_c=20.0)


def hand_r_star(mu_p, mu_d, B):
    """The paper's mean-field optimum, written out by hand (v1 communication)."""
    t_a = PAPER["alpha_a"] * B * (mu_p + mu_d) + PAPER["beta_a"]
    t_c = PAPER["alpha_c"] * B + PAPER["beta_c"]
    r_a = (t_a - PAPER["beta_f"]) / (PAPER["alpha_f"] * B)
    r_c = (t_c - PAPER["beta_f"]) / (PAPER["alpha_f"] * B)
    r_peak = math.sqrt(PAPER["beta_f"] / (PAPER["alpha_f"] * B))
    return max(r_a, r_c, r_peak)


@pytest.fixture(scope="module")
def baseline_report():
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    return afdjax.provision(jax.random.key(0), afdjax.Geometric(100.0, 500.0), lat, 256, range(1, 33), 3000, 12)


def test_report_numbers_are_consistent(baseline_report):
    rep = baseline_report
    d = rep.to_dict()
    for k in (
        "theta",
        "slot_variance",
        "r_star",
        "regime",
        "ratio_mean_field",
        "ratio_barrier",
        "ratio_simulated",
        "table",
    ):
        assert k in d
    assert d["theta"] == pytest.approx(600.0)
    assert d["r_star"] == pytest.approx(hand_r_star(100, 500, 256), rel=1e-6)
    assert d["regime"] == "attention"
    sim = np.array([row["simulated"] for row in d["table"]])
    assert d["ratio_simulated"] == d["table"][int(np.argmax(sim))]["ratio"]
    assert d["ratio_simulated"] in (9, 10, 11)
    for row in d["table"]:
        assert {"ratio", "mean_field", "barrier", "simulated", "stderr"} <= set(row)
        assert row["rel_err_mean_field"] == pytest.approx(row["mean_field"] / row["simulated"] - 1, abs=1e-12)
    # the integer mean-field choice is the better neighbour of r* under the mean field
    mf = {row["ratio"]: row["mean_field"] for row in d["table"]}
    lo, hi = math.floor(d["r_star"]), math.ceil(d["r_star"])
    assert d["ratio_mean_field"] == (hi if mf[hi] > mf[lo] else lo)
    # loss of following the mean field, recomputed
    best = max(sim)
    assert d["errors"]["loss_mean_field"] == pytest.approx(1 - mf_sim(d, d["ratio_mean_field"]) / best)
    # the simulated best is compared with its neighbours on paired differences
    assert [nb["ratio"] for nb in d["simulated"]["neighbours"]] == [d["ratio_simulated"] - 1, d["ratio_simulated"] + 1]


def mf_sim(d, ratio):
    return next(row["simulated"] for row in d["table"] if row["ratio"] == ratio)


def test_paired_stderr_is_smaller_than_unpaired(baseline_report):
    """Common random numbers: the neighbour comparison is sharper than two independent s.e."""
    d = baseline_report.to_dict()
    i = d["ratio_simulated"] - 1
    for nb in d["simulated"]["neighbours"]:
        j = nb["ratio"] - 1
        unpaired = math.hypot(d["table"][i]["stderr"], d["table"][j]["stderr"])
        assert nb["stderr"] < unpaired


def test_barrier_within_two_percent_on_baseline(baseline_report):
    for row in baseline_report.table:
        assert abs(row["rel_err_barrier"]) <= 0.02 + 3 * row["stderr"] / row["simulated"], row


def test_idle_crossing_near_r_star(baseline_report):
    # attention idle rises and FFN idle falls through zero near r_A: they cross between 9 and 10.5
    assert 9.0 <= baseline_report.idle_crossing <= 10.5


@pytest.fixture(scope="module")
def paper_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify")
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    summary = run_verification(lat, out_dir=out, num_steps=2000, num_replicas=8, include_traces=False, progress=False)
    return out, summary


@pytest.mark.slow  # six paper configurations, 2000 steps x 8 replicas each
def test_paper_configurations(paper_study):
    out, summary = paper_study
    rows = summary["rows"]
    assert len(rows) == 6
    for row, (_, label, mu_p, mu_d, B, _, formula) in zip(rows, PAPER_CONFIGS):
        assert row["label"] == label
        # the report's mean-field r* against the paper's formula, to 1e-3 relative
        assert row["r_star"] == pytest.approx(hand_r_star(mu_p, mu_d, B), rel=1e-3)
        assert row["r_star"] == pytest.approx(formula, abs=0.006)  # arXiv 2601.21351 prints 2 decimals
        # the paper's claim: simulated integer optimum within 10 % of r*, or explained
        if not row["within_10_percent"]:
            assert "cannot be met" in _explain(row) or "moving the optimum" in _explain(row)
        assert row["barrier_exceptions"] == []
    md = (out / "verification.md").read_text()
    assert "| batch | B=128, mu_p=100, mu_d=500 |" in md and "## Findings" in md
    data = json.loads((out / "verification.json").read_text())
    assert data["rows"][1]["ratio_simulated"] == rows[1]["ratio_simulated"]
    for name in ("rstar_vs_batch.png", "rstar_vs_context.png", "idle_fractions.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # 9 s; provision's JSON is compared with saved output in test_golden.py by default
def test_provision_cli_json_and_plot(capsys, tmp_path):
    png = tmp_path / "p.png"
    code = main(
        [
            "provision",
            "--steps",
            "1000",
            "--replicas",
            "4",
            "--batch-size",
            "64",
            "--ratios",
            "1:12",
            "--json",
            "--plot",
            str(png),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(out)
    assert d["settings"]["batch_size"] == 64 and len(d["table"]) == 12
    assert d["r_star"] == pytest.approx(hand_r_star(100, 500, 64), rel=1e-6)
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # a trace provision through the CLI; test_cli covers the text
def test_provision_cli_text_on_trace(capsys):
    code = main(["provision", "--workload", "trace:azure-conv", "--steps", "800", "--replicas", "4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Recommendation: r =" in out and "theta (stationary mean KV tokens per slot)" in out
    assert "ratios 1..34" in out  # default range 1..max(32, ceil(1.5 r*)); r* = 22.03 -> 34


def test_provision_cli_errors(capsys):
    assert main(["provision", "--ratios", "0:4"]) == 2
    assert "ratios must be >= 1" in capsys.readouterr().err
    assert main(["verify", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_ratio_ranges_are_compact():
    from afdjax._provision._text import _ranges

    assert _ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
    assert _ranges([4]) == "4"
    assert _ranges(list(range(17, 195))) == "17-194"


def test_report_typed_views(baseline_report):
    rep = baseline_report
    assert rep.ratio_simulated == rep.simulated["ratio"] == rep.to_dict()["ratio_simulated"]
    assert rep.ratio_mean_field == rep.mean_field["ratio"] and rep.ratio_barrier == rep.barrier["ratio"]
    assert rep.r_star == rep.mean_field["r_star"] and rep.ratios == list(range(1, 33))
    assert rep.ratios_within_2_stderr == rep.simulated["within_2_stderr"]
    np.testing.assert_array_equal(rep.column("simulated"), [row["simulated"] for row in rep.table])
    with pytest.raises(ValueError, match="name='nope' is invalid"):
        rep.column("nope")


def test_within_2_stderr_is_a_paired_t_statistic(baseline_report):
    """The ratios within 2 standard errors of the best: paired t statistic <= 2 (SciPy's
    ttest_rel on the per-replica throughputs, an independent computation)."""
    from scipy import stats

    lat = afdjax.LatencyModel.from_preset("paper-910c")
    res = afdjax.simulate(jax.random.key(0), afdjax.Geometric(100.0, 500.0), lat, 256, range(1, 33), 3000, 12)
    per = np.asarray(res.throughput_per_replica, dtype=float)
    best = int(np.argmax(np.asarray(res.throughput_per_instance)))
    expected = [best + 1] + [
        j + 1 for j in range(per.shape[1]) if j != best and stats.ttest_rel(per[:, best], per[:, j]).statistic <= 2
    ]
    assert afdjax.ratios_within_2_stderr(res) == sorted(expected)
    # provision and the simulate report use the same definition on the same run
    assert baseline_report.simulated["within_2_stderr"] == sorted(expected)
    report = afdjax.simulation_report(res, afdjax.Geometric(100.0, 500.0), lat)
    assert report.within_2_stderr == sorted(expected) and report.best_ratio == baseline_report.ratio_simulated
    nb = afdjax.paired_difference(res, best, best + 1)
    assert nb.z == pytest.approx(stats.ttest_rel(per[:, best], per[:, best + 1]).statistic, rel=1e-9)


def test_simulation_report_is_the_cli_json(capsys):
    argv = ["simulate", "--batch-size", "32", "--ratios", "1:6", "--steps", "300", "--replicas", "4", "--seed", "3"]
    assert main([*argv, "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    wl, lat = afdjax.Geometric(100.0, 500.0), afdjax.LatencyModel.from_preset("paper-910c")
    res = afdjax.simulate(jax.random.key(3), wl, lat, 32, range(1, 7), 300, 4)
    settings = {
        k: cli["settings"][k] for k in ("workload", "hardware", "seed", "start", "warmup_steps", "afdjax_version")
    }
    report = afdjax.simulation_report(res, wl, lat, settings=settings)
    assert report.to_dict() == cli
    assert report.best_ratio == cli["best_ratio"] and report.theta == pytest.approx(600.0)
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == report.format_text()


def test_simulation_report_warnings():
    wl, lat = afdjax.Geometric(100.0, 500.0), afdjax.LatencyModel.from_preset("paper-910c")
    res = afdjax.simulate(jax.random.key(0), wl, lat, 32, [1, 2, 3], 100, 1)
    report = afdjax.simulation_report(res, wl, lat)
    assert report.best_ratio == 3 and len(report.warnings) == 2
    assert "largest simulated" in report.warnings[0] and "one replica" in report.warnings[1]
    text = report.format_text()
    assert "Warning: with one replica" in text and "No other ratio" not in text
    assert report.settings["hardware"] == "custom" and report.settings["replicas"] == 1
