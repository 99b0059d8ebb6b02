"""``afdjax serve`` and ``afdjax capacity`` (in process), and the planning arithmetic."""

from __future__ import annotations

import json

import pytest

from afdjax._cli import main
from afdjax._serve import CapacityResult, plan

HW = "alpha_a=0.05,beta_a=5,alpha_f=0.5,beta_f=10,alpha_c=0.1,beta_c=2"
WL = "uniform:prefill=50..150,decode=5..15"
SHARED = ["--workload", WL, "--hardware", HW, "--batch-size", "4", "--ratios", "1,3", "--steps", "3000"]
SHARED += ["--replicas", "8", "--seed", "1"]
SMALL = ["--workload", WL, "--hardware", HW, "--batch-size", "2", "--steps", "300", "--replicas", "2"]
KEYS = (
    "ratios",
    "throughput_per_instance",
    "stderr",
    "goodput_per_instance",
    "tpot_mean",
    "tpot_p99",
    "ttft_mean",
    "ttft_p99",
    "mean_queue_length",
    "mean_occupied_slots",
    "mean_sojourn_time",
    "arrival_rate_total",
    "saturated",
    "settings",
)


def test_serve_json(capsys, tmp_path):
    """The shapes of tests/test_serve.py (the compiled program is shared through the cache):
    nested lists per ratio over the three rates; one rate gives a value per ratio."""
    plot = tmp_path / "s.png"
    argv = ["serve", *SHARED, "--arrival-rate", "0.002,0.008,0.011", "--slo-tpot", "16", "--json"]
    assert main([*argv, "--plot", str(plot), "--prefill-beta", "3", "--slo-ttft", "40"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(KEYS) <= set(out)
    assert out["ratios"] == [1, 3] and out["arrival_rates"] == [0.002, 0.008, 0.011]
    assert out["arrival_rate_total"][1] == pytest.approx([0.006, 0.024, 0.033])
    assert all(isinstance(s, bool) for row in out["saturated"] for s in row)
    assert all(x > 0 for row in out["throughput_per_instance"] for x in row)
    assert out["settings"]["slo_tpot"] == 16.0 and out["settings"]["policy"] == "balanced"
    assert out["settings"]["batch_size"] == 4 and out["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["serve", *SHARED, "--arrival-rate", "0.002,0.008,0.0111"]) == 0  # the text table
    text = capsys.readouterr().out
    assert "arrival rate 0.0111 per Attention instance" in text and "TPOT p99" in text


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--arrival-rate", "0"], "--arrival-rate must be > 0, got 0"),
        (["--arrival-rate", "-2"], "--arrival-rate must be > 0, got -2"),
        (["--arrival-rate", "0.01", "--slo-tpot", "0"], "--slo-tpot must be > 0, got 0"),
        (["--arrival-rate", "0.01", "--slo-ttft", "0"], "--slo-ttft must be > 0, got 0"),
        (["--arrival-rate", "0.01", "--kv-capacity-gb", "1"], "--kv-capacity-gb needs --kv-bytes-per-token"),
        (["--arrival-rate", "0.01", "--arrivals", "weibull"], "--arrivals 'weibull' is invalid"),
        (["--arrival-rate", "0.01", "--arrivals", "gamma:cv=x"], "--arrivals 'gamma:cv=x' is malformed"),
        (["--arrival-rate", "0.01", "--arrivals", "gamma:cv=0"], "--arrivals gamma:cv 0.0 is invalid"),
        (["--arrival-rate", "0.01", "--arrivals", "trace"], "--arrivals trace replays the timestamps"),
    ],
)
def test_serve_bad_input(capsys, extra, fragment):
    assert main(["serve", *SMALL, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("afdjax: error: ") and fragment in err and err.count("\n") == 1


def test_trace_without_timestamps_and_empty_trace(capsys, tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("ContextTokens,GeneratedTokens\n10,2\n20,3\n")
    assert main(["serve", *SMALL, "--arrival-rate", "0.01", "--arrivals", f"trace:{p}"]) == 2
    assert "has no timestamps" in capsys.readouterr().err
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    assert main(["serve", *SMALL, "--arrival-rate", "0.01", "--workload", f"trace:{p}", "--arrivals", "trace"]) == 2
    assert "no records" in capsys.readouterr().err


def _cap(rates, sat_thr):
    n = len(rates)
    return CapacityResult(
        ratios=[1, 2, 4][:n],
        capacity_rate=rates,
        capacity_rate_total=[x * r for x, r in zip(rates, [1, 2, 4], strict=False)],
        saturated_rate=[1.0] * n,
        saturated_throughput_per_instance=sat_thr,
        saturated_stderr=[0.0] * n,
        kv_stability_rate=None,
        kv_simulated_rate=None,
        throughput_at_capacity=[0.0] * n,
        goodput_at_capacity=[0.0] * n,
        tpot_p99_at_capacity=[0.0] * n,
        ttft_p99_at_capacity=[0.0] * n,
        limited_by=["tpot"] * n,
        settings={},
    )


def test_plan_minimises_instances_and_cost():
    cap = _cap([0.5, 0.3, 0.1], [1.0, 2.0, 3.0])  # bundle capacities 0.5, 0.6, 0.4
    p = plan(cap, 3.0)
    assert p.bundles == [6, 5, 8] and p.instances == [12, 15, 40]
    assert (p.best_ratio, p.best_bundles, p.best_instances) == (1, 6, 12)
    assert p.saturated_optimum_ratio == 4  # the closed-loop optimum points elsewhere
    q = plan(cap, 3.0, price_attention=1.0, price_ffn=10.0)  # an expensive FFN favours large r
    assert q.cost == [66.0, 60.0, 112.0] and q.best_ratio == 2 and q.objective == "cost"
    none = plan(_cap([0.0], [1.0]), 1.0)
    assert none.best_ratio is None and none.bundles == [None]
    with pytest.raises(ValueError, match="total_rate=0.0 is invalid"):
        plan(cap, 0.0)
    assert plan(cap, 0.6).best_instances == 3  # one r = 2 bundle carries exactly 0.6
