"""Capture the outputs that a refactor must not change (``tests/test_golden.py``).

Run from the repository root to (re)write the saved file; only do this on a commit whose
numbers are known good, and say in the commit why they changed:

    python tests/golden/capture.py            # writes tests/golden/golden.json

Float64 cases run in this process (``JAX_ENABLE_X64=1``); the CLI cases run in a child
process in float32 (the CLI's default dtype). Only the public API and the CLI are used,
so the script runs unchanged across internal reorganisations.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
GOLDEN = HERE / "golden.json"

# CLI commands in float32. Pipeline runs give --warmup explicitly: the default warm-up of
# pipelined runs changed on purpose (issue 10: the pipeline fill is excluded by default).
CLI_CASES = {
    "simulate_baseline": ["simulate", "--ratios", "1:16", "--steps", "400", "--replicas", "4", "--seed", "1", "--json"],
    "simulate_trace_pipeline": [
        "simulate",
        "--workload",
        "trace:azure-conv",
        "--micro-batches",
        "2",
        "--batch-size",
        "64",
        "--ratios",
        "1:12",
        "--steps",
        "400",
        "--replicas",
        "4",
        "--warmup",
        "50",
        "--seed",
        "2",
        "--json",
    ],
    "provision_trace": [
        "provision",
        "--workload",
        "trace:mooncake-conv",
        "--batch-size",
        "64",
        "--ratios",
        "1:24",
        "--steps",
        "400",
        "--replicas",
        "4",
        "--seed",
        "3",
        "--json",
    ],
    "provision_constrained": [
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
        "--warmup",
        "50",
        "--ratios",
        "1:16",
        "--steps",
        "300",
        "--replicas",
        "4",
        "--json",
    ],
}


def _cli_outputs() -> dict:
    code = (
        "import contextlib, io, json, sys\n"
        "from afdjax._cli import main\n"
        "cases = json.loads(sys.argv[1]); out = {}\n"
        "for name, argv in cases.items():\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        rc = main(argv)\n"
        "    assert rc == 0, (name, rc)\n"
        "    data = json.loads(buf.getvalue())\n"
        "    data.get('settings', {}).pop('afdjax_version', None)\n"
        "    out[name] = data\n"
        "print(json.dumps(out))\n"
    )
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(CLI_CASES)],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parent.parent,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _f(x):
    import numpy as np

    return np.asarray(x, dtype=float).tolist()


def _inputs():
    import afdjax

    lat = afdjax.LatencyModel.from_preset("paper-910c")
    geo = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
    logn = afdjax.Geometric(mu_p=300.0, mu_d=200.0, prefill="lognormal", prefill_sigma=1.0)
    trace = afdjax.load_trace("azure-conv")
    return lat, geo, logn, trace


def _closed_forms() -> dict:
    import jax.numpy as jnp

    import afdjax

    lat, geo, logn, trace = _inputs()
    out = {}
    mf = afdjax.mean_field_optimum(geo, lat, 256)
    out["mean_field_optimum"] = {
        k: _f(getattr(mf, k)) for k in ("r_star", "r_attention", "r_communication", "r_peak", "regime")
    }
    out["mean_field_integer_ratio"] = _f(afdjax.mean_field_integer_ratio(geo, lat, 256))
    bo = afdjax.barrier_optimum(trace, lat, 128, max_ratio=40)
    out["barrier_optimum"] = {k: _f(getattr(bo, k)) for k in ("ratio", "throughput")}
    r = jnp.arange(1.0, 21.0)
    out["barrier_throughput"] = _f(afdjax.barrier_throughput(logn, lat, 64, r))
    out["pipeline_throughput"] = _f(afdjax.pipeline_throughput(geo, lat, 256, r, 2))
    out["pipeline_barrier_throughput"] = _f(afdjax.pipeline_barrier_throughput(geo, lat, 256, r, 3))
    out["theta"] = [_f(w.theta()) for w in (geo, logn, trace)]
    out["slot_variance"] = [_f(w.slot_variance()) for w in (geo, logn, trace)]
    out["derive_latency"] = afdjax.derive_latency("h100", "deepseek-v3").latency.coefficients()
    return out


def _simulations() -> dict:
    import jax

    import afdjax

    lat, geo, logn, trace = _inputs()
    out = {}
    key = jax.random.key(7)
    for name, kwargs in {
        "simulate_geometric": dict(workload=geo, batch_size=32, ratios=range(1, 13)),
        "simulate_lognormal_cold": dict(workload=logn, batch_size=16, ratios=[1, 3, 8], start="cold", warmup_steps=30),
        "simulate_trace_pipeline": dict(
            workload=trace, batch_size=24, ratios=range(1, 9), micro_batches=3, warmup_steps=40
        ),
    }.items():
        res = afdjax.simulate(key, latency=lat, num_steps=300, num_replicas=3, **kwargs)
        out[name] = res.to_dict()
    with contextlib.redirect_stdout(io.StringIO()):
        rep = afdjax.provision(jax.random.key(5), trace, lat, 64, ratios=range(1, 17), num_steps=300, num_replicas=4)
    out["provision"] = json.loads(json.dumps(rep.to_dict()))
    return out


def _gradients() -> dict:
    import jax

    import afdjax

    lat, geo, logn, _ = _inputs()
    out = {}
    g = afdjax.throughput_gradients(jax.random.key(3), geo, lat, 64, 9.0, num_steps=300, num_replicas=4)
    out["throughput_gradients"] = jax.tree_util.tree_map(
        _f,
        {
            "value": g.value,
            "stderr": g.stderr,
            "latency": g.latency.coefficients(),
            "workload": {k: getattr(g.workload, k) for k in ("mu_p", "mu_d")},
            "ratio": g.ratio,
        },
    )
    buffers = afdjax.plan_buffers(logn, 32, 8, 300, 3)
    out["expected_throughput"] = _f(
        afdjax.expected_throughput(
            jax.random.key(4), logn, lat, 32, 5.5, num_steps=300, num_replicas=3, max_ratio=8, **buffers
        )
    )
    return out


def _fits() -> dict:
    import afdjax

    out = {}
    fit = afdjax.fit_trace("azure-conv")
    out["fit_trace"] = json.loads(json.dumps(fit.to_dict()))
    lat_fit = afdjax.fit_latency(
        str(pathlib.Path(afdjax.__file__).parent / "data" / "example_step_latency.csv"), n_bootstrap=20, seed=1
    )
    out["fit_latency"] = json.loads(json.dumps(lat_fit.to_dict()))
    return out


PYTHON_GROUPS = {"closed_forms": _closed_forms, "simulations": _simulations, "gradients": _gradients, "fits": _fits}
"""The float64 cases in groups (each group's keys are its own), so a test can run them apart."""


def python_outputs(groups=None) -> dict:
    """Float64 results of public Python calls (call with x64 enabled): every group, or the
    named ones."""
    import jax.numpy as jnp

    import afdjax

    assert jnp.zeros(()).dtype == jnp.float64, "enable x64 first"
    out = {}
    for name in groups or PYTHON_GROUPS:
        out.update(PYTHON_GROUPS[name]())
    root = str(pathlib.Path(afdjax.__file__).resolve().parent.parent)
    return json.loads(json.dumps(out).replace(root, "<repo>"))


def capture() -> dict:
    return {"cli_float32": _cli_outputs(), "python_float64": python_outputs()}


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_enable_x64", True)
    data = capture()
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
