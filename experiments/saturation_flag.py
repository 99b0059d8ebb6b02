"""Evidence for the open-loop saturation flag (``afdjax._serve._result``): per-replica
sums of runs at fractions of each ratio's saturated rate ``X_sat``, pooled in groups of
``n`` replicas as a run of ``n`` replicas would be, and the share of those runs that each
rule flags.

    PYTHONPATH=. python experiments/saturation_flag.py collect CASE STEPS REPLICAS
    PYTHONPATH=. python experiments/saturation_flag.py report [MARGIN]

Cases: ``test-poisson``, ``test-gamma3``, ``test-trace`` (the test suite's shape: B = 4,
ratios 1 and 3, the Azure conversation timestamps with Uniform lengths), ``azure`` (the
command line's default hardware, B = 64, the Azure conversation trace with its lengths,
ratios 1..4), ``test-kv`` (Poisson with a binding KV capacity of 250 tokens; its fractions
are of the unlimited ``X_sat``, above the KV-bound rate). ``report`` prints the pooled
``offered_load`` and ``full_fraction``, and the share of runs flagged by the rule (with
``SATURATION_MARGIN`` replaced by ``MARGIN`` if given) and by the previous growth rule.
Recorded: experiments/results/saturation_flag.txt (``test-*`` 300 and 3000 steps x 32
replicas, ``azure`` 300 and 2000 steps x 8 replicas and 20000 x 4).
"""

from __future__ import annotations

import glob
import os
import sys

import jax
import numpy as np

import afdjax
from afdjax._serve import TraceArrivals, load_arrival_trace, read_arrival_times, serve
from afdjax._serve import _result as result_module
from afdjax._serve import _serve as serve_module

OUT = os.environ.get("SAT_OUT", "/tmp/satdata")
FRACTIONS = [0.2, 0.5, 0.8, 0.9, 0.95, 1.05, 1.1, 1.2, 1.5, 3.0]
TEST_LAT = afdjax.LatencyModel(alpha_a=0.05, beta_a=5.0, alpha_f=0.5, beta_f=10.0, alpha_c=0.1, beta_c=2.0)
AZURE = "/work/shared/data/traces/AzureLLMInferenceTrace_conv.csv"


def case(name):
    kw = {}
    if name.startswith("test"):
        wl, lat, B, ratios = afdjax.Uniform(50, 150, 5, 15), TEST_LAT, 4, [1, 3]
        arr = {"test-poisson": "poisson", "test-gamma3": "gamma:cv=3", "test-kv": "poisson"}.get(name)
        if name == "test-trace":
            arr = TraceArrivals(read_arrival_times(AZURE))
        if name == "test-kv":
            kw["kv_capacity"] = 250.0
        req = wl
    else:
        from afdjax._specs import parse_hardware_spec

        lat, B, ratios = parse_hardware_spec("paper-910c"), 64, [1, 2, 3, 4]
        arr = load_arrival_trace(AZURE)
        wl, req = None, serve_module.request_workload(None, arr)
    return wl, lat, B, ratios, arr, req, kw


def collect(name, steps, reps):
    wl, lat, B, ratios, arr, req, kw = case(name)
    sim = afdjax.simulate(jax.random.key(99), req, lat, B, ratios, 4000, 8)
    r = np.asarray(ratios, float)
    x_sat = np.asarray(sim.throughput_per_instance) * (r + 1) / (r * float(req.mean_decode_steps()))
    captured = {}
    original = serve_module.aggregate

    def grab(st, *a, **k):
        captured["st"] = st
        return original(st, *a, **k)

    serve_module.aggregate = grab
    out = {}
    for i, ratio in enumerate(ratios):  # one rate grid per ratio (X_sat differs)
        serve(jax.random.key(7), wl, lat, B, [ratio], x_sat[i] * np.asarray(FRACTIONS), steps, reps, arrivals=arr, **kw)
        st = captured["st"]
        for f in st.__dataclass_fields__:
            v = np.asarray(getattr(st, f))
            if v.ndim == 3:
                out.setdefault(f, []).append(v[:, 0, :])
    np.savez(
        f"{OUT}/{name}_{steps}_{reps}.npz",
        ratios=r,
        x_sat=x_sat,
        batch=B,
        mean_decode=float(req.mean_decode_steps()),
        fractions=np.asarray(FRACTIONS),
        **{f: np.stack(v, axis=1) for f, v in out.items()},
    )


class Sums:
    """Stats-like view of a group of replicas (fields ``(n, ratios, rates)``)."""

    def __init__(self, d, idx):
        self.__dataclass_fields__ = {}
        for k in d.files:
            if d[k].ndim == 3:
                setattr(self, k, d[k][idx])
                self.__dataclass_fields__[k] = None


def flags(d, n, rule):
    """Share of the groups of ``n`` replicas that ``rule(st, ratios, rates)`` flags: ``(ratios, rates)``."""
    total = d["time"].shape[0]
    groups = [np.arange(g * n, (g + 1) * n) for g in range(total // n)]
    rates = d["x_sat"][:, None] * d["fractions"][None, :]
    return np.mean([rule(Sums(d, g), d["ratios"], rates) for g in groups], axis=0), len(groups)


def current_rule(d):
    def rule(st, ratios, rates):
        return np.asarray(result_module.saturation(st, ratios, rates, float(d["mean_decode"]))["saturated"])

    return rule


def growth_rule(st, ratios, rates):
    """The previous rule: growth in both halves above 2 % of the arrivals (or the queue full)."""
    a = st.arrivals.mean(axis=0)
    first = (st.mid_in_system - st.start_in_system).mean(axis=0)
    second = (st.end_in_system - st.mid_in_system).mean(axis=0)
    return np.any(st.cap_hit, axis=0) | ((first > 0.01 * a) & (second > 0.01 * a))


def report():
    print(f"SATURATION_MARGIN = {result_module.SATURATION_MARGIN}; flagged: the share of the runs flagged")
    for path in sorted(glob.glob(f"{OUT}/*.npz")):
        d = np.load(path)
        reps = d["time"].shape[0]
        fr = " ".join(f"{x:4.2f}" for x in d["fractions"])
        print(f"{os.path.basename(path)[:-4]} (E[D] = {float(d['mean_decode']):.4g}); X / X_sat = {fr}")
        everyone = Sums(d, np.arange(reps))
        rates = d["x_sat"][:, None] * d["fractions"][None, :]
        pooled = result_module.saturation(everyone, d["ratios"], rates, float(d["mean_decode"]))
        for i, r in enumerate(d["ratios"]):
            load = " ".join(f"{x:4.2f}" for x in pooled["offered_load"][i])
            full = " ".join(f"{x:4.2f}" for x in pooled["full_fraction"][i])
            print(f"  r = {int(r)}: offered_load {load}   full_fraction {full}")
        for n in sorted({1, min(4, reps)}):
            for label, rule in (("new", current_rule(d)), ("old", growth_rule)):
                share, groups = flags(d, n, rule)
                for i, r in enumerate(d["ratios"]):
                    print(
                        f"  {label} rule, {groups:2d} runs of {n} replicas, r = {int(r)}: flagged "
                        + " ".join(f"{s:4.2f}" for s in share[i])
                    )


if __name__ == "__main__":
    if sys.argv[1] == "collect":
        collect(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        if len(sys.argv) > 2:
            result_module.SATURATION_MARGIN = float(sys.argv[2])
        report()
