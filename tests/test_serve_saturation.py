"""The open-loop saturation flag (issue 14): ``saturated`` is the offered load against the
full bundle's service rate (``afdjax._serve._result.saturation``), checked on synthetic sums
and on runs.

The default run reuses the compiled shape of tests/test_serve.py (``B = 4``, ratios
``[1, 3]``, 3000 steps x 8 replicas, three rates); the statistical test across arrival
processes, run lengths and replica counts, and the Azure trace replay at the command
line's defaults, are ``slow``.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest
from test_serve import LAT, PREFILL_BETA, RATIOS, REPLICAS, STEPS, WORKLOAD, B

import afdjax
from afdjax._serve import TraceArrivals, format_serve, load_arrival_trace, read_arrival_times, serve, serve_dict
from afdjax._serve._kernel import Stats
from afdjax._serve._result import SATURATION_MARGIN, saturation


def _sums(replicas=2, **values):
    """Stats ``(replicas, 1 ratio, 1 rate)``: zeros but for ``values`` (per replica)."""
    shape = (replicas, 1, 1)
    fields = {}
    for name in Stats.__dataclass_fields__:
        v = np.asarray(values.get(name, 0.0), dtype=bool if name == "cap_hit" else float)
        fields[name] = np.broadcast_to(v.reshape(v.shape + (1, 1)) if v.ndim else v, shape)
    return Stats(**fields)


def _load(st, ratio, rate, mean_decode=10.0):
    return {k: np.asarray(v)[0, 0].item() for k, v in saturation(st, [ratio], [rate], mean_decode).items()}


def test_offered_load_arithmetic_and_margin():
    # a full bundle emitting 1.2 tokens per time unit with E[D] = 10 serves 0.12 requests per
    # time unit: r X = 3 x 0.04 = 0.12 is a load of exactly 1
    full = dict(time=1000.0, blocked_time=500.0, blocked_tokens=600.0, arrivals=100.0)
    out = _load(_sums(**full), 3, 0.04)
    assert out["offered_load"] == pytest.approx(1.0, rel=1e-12) and out["full_fraction"] == 0.5
    assert not out["saturated"]
    for load, flagged in ((1.0 + SATURATION_MARGIN * 0.9, False), (1.0 + SATURATION_MARGIN * 1.1, True)):
        assert _load(_sums(**full), 3, 0.04 * load)["saturated"] is flagged
    # refused requests do not load the bundle
    half = _load(_sums(**full, rejected=50.0), 3, 0.08)
    assert half["offered_load"] == pytest.approx(1.0, rel=1e-12)
    # without E[D] the finished requests' mean length stands in: 20 here, a load of 2
    st = _sums(**full, done=30.0, done_tokens=600.0)
    assert _load(st, 3, 0.04, mean_decode=None)["offered_load"] == pytest.approx(2.0)
    # the growth of the requests in the bundle per arrival (means over replicas)
    st = _sums(**full, start_in_system=[10.0, 20.0], end_in_system=[30.0, 20.0])
    assert _load(st, 3, 0.04)["queue_growth"] == pytest.approx(0.1)


def test_never_full_is_not_saturated_whatever_the_growth():
    """A bundle never full has no measured service rate: not saturated, however much the
    requests in it grew (a burst at the end of a light-load trace window); a full queue
    ring always is."""
    st = _sums(time=1000.0, arrivals=20.0, start_in_system=[0.0, 1.0], mid_in_system=5.0, end_in_system=12.0)
    out = _load(st, 1, 0.02)
    assert math.isnan(out["offered_load"]) and out["full_fraction"] == 0.0 and not out["saturated"]
    assert out["queue_growth"] > 0.5
    assert _load(_sums(time=1000.0, cap_hit=[False, True]), 1, 0.02)["saturated"]


@pytest.fixture(scope="module")
def loads():
    # rates per Attention instance: light (about 0.27 and 0.29 of the saturated rates
    # X_sat = 0.0154 and 0.0140 of r = 1 and 3), 1.2 and 1.3 X_sat, and 3.2 and 3.6 X_sat
    return serve(
        jax.random.key(1), WORKLOAD, LAT, B, RATIOS, [0.0042, 0.0185, 0.05], STEPS, REPLICAS, prefill_beta=PREFILL_BETA
    )


def test_light_load_and_overload_in_the_test_shape(loads):
    sat = np.asarray(loads.saturated)
    assert not np.any(sat[:, 0]) and np.all(sat[:, 1:])
    full = np.asarray(loads.full_fraction)
    assert np.all(full[:, 0] < 0.02) and np.all(full[:, 1:] > 0.98)
    load = np.asarray(loads.offered_load)
    assert np.all(np.nan_to_num(load[:, 0]) < 0.4)
    r = np.asarray(RATIOS, float)[:, None]
    x = np.asarray(loads.arrival_rates)[None, 1:]
    # full all the time: the service rate is the run's throughput, so the load is
    # r X E[D] / ((r + 1) throughput) (E[D] = 10)
    via_throughput = r * x * 10.0 / ((r + 1) * np.asarray(loads.throughput_per_instance)[:, 1:])
    np.testing.assert_allclose(load[:, 1:], via_throughput, rtol=0.01)
    np.testing.assert_allclose(load[:, 1], [1.2, 1.32], rtol=0.04)  # X_sat from simulate (8 x 4000 steps)
    # the requests in the bundle grow by the arrivals the full bundle cannot serve: 1 - 1 / load of them
    # (at 3 X_sat the queue ring fills and the arrivals pause)
    np.testing.assert_allclose(np.asarray(loads.queue_growth)[:, 1], 1 - 1 / load[:, 1], atol=0.03)


def test_load_in_the_reports(loads):
    d = serve_dict(loads)
    assert d["offered_load"][0][0] is None or d["offered_load"][0][0] < 0.4
    assert d["saturated"] == [[False, True, True], [False, True, True]]
    assert d["full_fraction"][1][2] > 0.98
    text = format_serve(loads)
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["1"], ["3"])]
    assert [row[-1] for row in rows] == ["no", "no", "yes", "yes", "yes", "yes"]
    assert rows[2][-2] == f"{float(np.asarray(loads.offered_load)[0, 1]):.3g}"
    assert "load: arrivals over the full bundle's service rate, above 1.03)" in text


# ------------------------------------------------------------------------- slow
@functools.lru_cache
def _x_sat(ratio):
    sim = afdjax.simulate(jax.random.key(99), WORKLOAD, LAT, B, [ratio], 4000, 8)
    return float(sim.throughput_per_instance[0]) * (ratio + 1) / (ratio * 10.0)


@pytest.mark.slow  # 4 compiled programs per arrival process and length: 3.5 min in all (2-core CPU)
@pytest.mark.parametrize("arrivals", ["poisson", "gamma:cv=3", "trace"])
@pytest.mark.parametrize("steps", [300, 3000])
def test_light_never_and_overload_always_flagged(azure_conv_path, arrivals, steps):
    """Every run at 0.2 and 0.5 X_sat is unflagged and every run at 1.2 and 3 X_sat flagged,
    with one replica (four seeds) or four, short and long, Poisson, bursty (gamma, cv = 3)
    and the Azure conversation trace's timestamps."""
    if arrivals == "trace":
        arrivals = TraceArrivals(read_arrival_times(azure_conv_path))
    fractions = np.asarray([0.2, 0.5, 1.2, 3.0])
    for ratio in RATIOS:
        rates = _x_sat(ratio) * fractions
        for replicas, seeds in ((1, range(4)), (4, range(1))):
            for seed in seeds:
                res = serve(jax.random.key(seed), WORKLOAD, LAT, B, [ratio], rates, steps, replicas, arrivals=arrivals)
                got = np.asarray(res.saturated)[0].tolist()
                assert got == [False, False, True, True], (ratio, replicas, seed, np.asarray(res.offered_load)[0])


@pytest.mark.slow  # B = 64, the command line's default hardware
def test_azure_trace_replay_light_load_not_flagged_overload_flagged(azure_conv_path):
    """The case the previous rule got wrong: the Azure conversation trace (its lengths) at
    ``afdjax serve``'s defaults, a light load (occupied slots 2-3 of 64, never full; the
    previous rule flagged 0-2 of 8 seeds per ratio by the noise of a few dozen arrivals)
    and about 1.5 X_sat."""
    from afdjax._specs import parse_hardware_spec

    arrivals = load_arrival_trace(azure_conv_path)
    lat = parse_hardware_spec("paper-910c")
    res = serve(jax.random.key(0), None, lat, 64, [1, 2, 3, 4], [1e-4, 0.0025], 2000, 2, arrivals=arrivals)
    sat = np.asarray(res.saturated)
    assert not np.any(sat[:, 0]) and np.all(sat[:, 1]), np.asarray(res.offered_load)
    assert np.all(np.asarray(res.full_fraction)[:, 0] == 0.0)


def test_capacity_never_accepts_a_rate_at_or_above_the_saturated_bound():
    """A short run near the bound may not flag saturation (the 3 % margin); the capacity
    search still stops at ``X_sat``, the saturated throughput's bound."""
    from types import SimpleNamespace

    from afdjax._serve._capacity import _largest

    rates = np.array([0.5, 0.9, 1.0, 1.05])
    res = SimpleNamespace(
        arrival_rates=rates,
        saturated=np.zeros((1, 4), bool),
        tpot_p99=np.ones((1, 4)),
        ttft_p99=np.ones((1, 4)),
    )
    assert _largest(res, 0, None, None, 1.0) == (1, "saturation")
    assert _largest(res, 0, None, None, 2.0) == (3, "none")
    assert _largest(res, 0, 0.5, None, 2.0) == (-1, "tpot")
    res.saturated[0, 1] = True
    assert _largest(res, 0, None, None, 2.0) == (0, "saturation")
