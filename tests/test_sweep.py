"""afdjax.sweep: grid parsing, equality with afdjax.simulate, chunking and device
independence, resume after SIGKILL / SIGINT, refusal of mismatched grids, the CLI.
(The folder's lock and several processes sharing a folder: test_sweep_concurrency.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import jax
import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT

import afdjax
import afdjax._sweep._core
from afdjax._cli._main import main
from afdjax._sweep._core import MANIFEST

RATIOS = {"start": 1, "stop": 6, "step": 1}


def small_grid(**settings):
    """12 points in 2 groups (constant / lognormal prefill), r = 1..6."""
    return {
        "settings": {"steps": 200, "replicas": 2, "ratios": RATIOS, "seed": 3} | settings,
        "grid": {
            "batch_size": 16,
            "workload": {"mu_p": 100, "mu_d": [20, 80, 200], "prefill": ["constant", "lognormal"], "sigma": 0.5},
            "hardware": {"preset": "paper-910c", "alpha_a": [0.001, 0.002]},
        },
    }


def toml_text(grid: dict) -> str:
    """The small grids above as TOML (tomllib has no writer; enough for these tests)."""

    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v)

    lines = ["[settings]"] + [f"{k} = {value(v)}" for k, v in grid["settings"].items()]
    lines.append("[grid]")
    lines += [f"{k} = {value(v)}" for k, v in grid["grid"].items() if k not in ("workload", "hardware")]
    for name in ("workload", "hardware"):
        blocks = grid["grid"][name]
        for block in blocks if isinstance(blocks, list) else [blocks]:
            lines.append(f"[[grid.{name}]]")
            lines += [f"{k} = {value(v)}" for k, v in block.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted, unchunked sweep of ``small_grid()`` (in-process, float64)."""
    out = tmp_path_factory.mktemp("reference")
    summary = afdjax.sweep(small_grid(), out, progress=False)
    assert summary.complete and summary.points_computed == 12 and summary.chunks_written == 2  # one per group
    return afdjax.read_sweep(out)


def assert_same(a: pd.DataFrame, b: pd.DataFrame):
    """Equal columns and labels; equal numbers to float64 rounding. (XLA compiles a chunk of
    one point, where vmap's axis has size 1, slightly differently from wider chunks: the
    results then differ in the last bits, about 1e-16 relative.)"""
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    floats = [c for c in a.columns if a[c].dtype == np.float64 and c not in afdjax._sweep._core.WORKLOAD_FLOATS]
    pd.testing.assert_frame_equal(a.drop(columns=floats), b.drop(columns=floats), check_exact=True)
    for c in floats:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        ref = b["throughput_per_instance" if c == "stderr" else c].to_numpy()
        scale = np.nanmax(np.abs(ref)) if np.isfinite(ref).any() else 0.0
        scale = 1.0 if c.endswith("_fraction") else scale  # 1 - busy/elapsed: absolute rounding
        np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-13 * scale, err_msg=c)


def test_points_equal_simulate(reference, paper_latency):
    df = reference
    assert len(df) == 12 * 6 and df["point"].nunique() == 12
    assert list(df.groupby("point").size().unique()) == [6]
    checked = 0
    for (prefill, mu_d, alpha_a), rows in df.groupby(["prefill", "mu_d", "alpha_a"]):
        if mu_d == 80:  # keep the number of simulate compilations small
            continue
        sigma = rows["prefill_sigma"].iloc[0]
        workload = afdjax.Geometric(100.0, mu_d, prefill=prefill, prefill_sigma=1.0 if np.isnan(sigma) else sigma)
        latency = afdjax.LatencyModel(**(paper_latency.coefficients() | {"alpha_a": alpha_a}))
        res = afdjax.simulate(jax.random.key(3), workload, latency, 16, range(1, 7), 200, 2)
        # Buffer sizes follow the group's worst case (smallest mu_d), so sums are cut into
        # different step chunks than in a direct call: equal to float64 rounding.
        np.testing.assert_allclose(rows["throughput_per_instance"], res.throughput_per_instance, rtol=1e-12)
        np.testing.assert_allclose(rows["stderr"], res.stderr, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(rows["attention_idle_fraction"], res.attention_idle_fraction, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(rows["ffn_idle_fraction"], res.ffn_idle_fraction, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(rows["mean_cycle_time"], res.mean_cycle_time, rtol=1e-12)
        np.testing.assert_allclose(rows["cycle_time_p99"], np.asarray(res.cycle_time_quantiles)[:, 2], rtol=1e-9)
        assert (rows["best_ratio"] == res.best_ratio()).all()
        assert rows["is_best"].sum() == 1 and rows.loc[rows["is_best"], "ratio"].item() == res.best_ratio()
        assert (rows["theta_tokens"] == 100.0 + mu_d).all()
        checked += 1
    assert checked == 8


@pytest.mark.slow  # chunk sizes 1..all; test_points_equal_simulate checks the chunked sweep
def test_chunked_equals_unchunked(reference, tmp_path):
    summary = afdjax.sweep(small_grid(), tmp_path, progress=False, max_chunk_points=1)
    assert summary.chunks_written == 12
    assert_same(afdjax.read_sweep(tmp_path), reference)
    # A different memory budget (another chunk size) and pandas' one-liner read.
    other = tmp_path / "budget"
    afdjax.sweep(small_grid(), other, progress=False, memory_budget_bytes=8 * 2**20, max_chunk_points=5)
    assert_same(pd.read_parquet(other).sort_values(["point", "ratio"]), reference)


def test_independent_keys_use_fold_in(tmp_path, paper_latency):
    grid = small_grid(common_random_numbers=False)
    grid["grid"]["workload"] = {"mu_p": 100, "mu_d": 20}
    afdjax.sweep(grid, tmp_path, progress=False)
    df = afdjax.read_sweep(tmp_path)
    manifest = afdjax.read_manifest(tmp_path)
    assert manifest["key"]["common_random_numbers"] is False
    rows = df[df["point"] == 1]
    latency = afdjax.LatencyModel(**(paper_latency.coefficients() | {"alpha_a": 0.002}))
    key = jax.random.fold_in(jax.random.key(3), 1)
    res = afdjax.simulate(key, afdjax.Geometric(100.0, 20.0), latency, 16, range(1, 7), 200, 2)
    np.testing.assert_allclose(rows["throughput_per_instance"], res.throughput_per_instance, rtol=1e-12)


def _subprocess_env(**extra):
    env = dict(os.environ, JAX_ENABLE_X64="1", PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return env | extra


@pytest.mark.slow  # a subprocess with four host devices; the single-device sweep runs by default
def test_four_devices_equal_one(reference, tmp_path):
    script = textwrap.dedent(
        """
        import json, sys
        import jax
        import afdjax, afdjax._sweep._core as sw
        assert len(jax.devices()) == 4, jax.devices()
        seen = []
        make = sw._make_chunk_fn
        def spy(*a, **k):
            fn = make(*a, **k)
            def call(*args):
                out, covered = fn(*args)
                seen.append(len(covered.sharding.device_set))
                return out, covered
            return call
        sw._make_chunk_fn = spy
        grid = json.loads(sys.argv[1])
        s = afdjax.sweep(grid, sys.argv[2], progress=False, max_chunk_points=4)
        assert s.num_devices == 4 and s.complete
        assert seen and set(seen) == {4}, seen
        """
    )
    env = _subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(small_grid()), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(afdjax.read_sweep(tmp_path), reference)


def _interrupt_and_resume(reference, tmp_path, sig):
    grid_file = tmp_path / "grid.toml"
    grid = small_grid(steps=3000)
    grid_file.write_text(toml_text(grid))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "afdjax._cli",
        "sweep",
        "--grid",
        str(grid_file),
        "--out",
        str(out),
        "--max-chunk-points",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list(out.glob("chunk-*.parquet")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "run the same command again to resume" in err
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("chunk-*.parquet")}
    assert 1 <= len(finished) < 12, "the sweep finished before it could be interrupted"
    # A partial write left behind by a killed run is never read as a result.
    leftover = out / ".chunk-g0001-000000011-n000001.parquet.tmp-1"
    leftover.write_bytes(b"PAR1 partial")
    # ...written by the run that ended, so older than the next run's lock (file times can be
    # coarser than the few milliseconds between this line and the resume's lock)
    old = time.time_ns() - 10**9
    os.utime(leftover, ns=(old, old))
    partial = pd.read_parquet(out)
    assert partial["point"].nunique() == len(finished)
    # The same sweep (float64, in-process) resumes it: finished chunks are kept as they are.
    # A killed run leaves its lock file behind; its flock went with the process, so the
    # lock is stale and taken over, with a warning.
    stale = (out / "_lock.0").exists()
    assert stale or sig != signal.SIGKILL
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = afdjax.sweep(grid_file, out, progress=False)
    took_over = [w for w in caught if "took over the stale lock" in str(w.message)]
    assert len(took_over) == int(stale), [str(w.message) for w in caught]
    if stale:
        assert f"left by process {proc.pid} on host " in str(took_over[0].message)
    assert not list(out.glob("_lock.*"))
    assert summary.points_skipped == len(finished) and summary.points_computed == 12 - len(finished)
    assert summary.complete
    for name, mtime in finished.items():
        assert (out / name).stat().st_mtime_ns == mtime
    assert not list(out.glob(".chunk-*"))
    resumed = afdjax.read_sweep(out)
    uninterrupted = tmp_path / "uninterrupted"
    afdjax.sweep(grid_file, uninterrupted, progress=False)
    assert_same(resumed, afdjax.read_sweep(uninterrupted))
    # Steps differ from the reference grid, the rest of the layout is the same.
    assert (resumed["point"].to_numpy() == reference["point"].to_numpy()).all()


def test_resume_after_sigkill(reference, tmp_path):
    _interrupt_and_resume(reference, tmp_path, signal.SIGKILL)


@pytest.mark.slow  # test_resume_after_sigkill above is the default check (tests/test_cli_signals.py: SIGINT, slow)
def test_resume_after_sigint(reference, tmp_path):
    _interrupt_and_resume(reference, tmp_path, signal.SIGINT)


def test_processes_share_the_points(reference, tmp_path):
    """The multi-host split: process p of n takes the points whose id is p modulo n."""
    first = afdjax.sweep(small_grid(), tmp_path, progress=False, process_index=1, process_count=3)
    assert first.points_computed == 4 and not first.complete
    assert set(pd.read_parquet(tmp_path)["point"]) == {1, 4, 7, 10}
    second = afdjax.sweep(small_grid(), tmp_path, progress=False, process_index=0, process_count=2)
    assert second.points_computed == 4 and second.points_skipped == 2  # 4 and 10 were done
    rest = afdjax.sweep(small_grid(), tmp_path, progress=False)
    assert rest.points_computed == 12 - 4 - 4 and rest.complete
    assert_same(afdjax.read_sweep(tmp_path), reference)


def test_mismatched_grid_is_refused(tmp_path):
    grid = small_grid()
    grid["grid"]["workload"] = {"mu_p": 100, "mu_d": 20}
    afdjax.sweep(grid, tmp_path, progress=False)
    before = sorted(p.name for p in tmp_path.iterdir())
    changed = json.loads(json.dumps(grid))
    changed["grid"]["hardware"]["alpha_a"] = [0.001, 0.003]
    with pytest.raises(ValueError, match="holds a different sweep .*grid"):
        afdjax.sweep(changed, tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds a different sweep .*settings"):
        afdjax.sweep(grid | {"settings": grid["settings"] | {"replicas": 3}}, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    summary = afdjax.sweep(changed, tmp_path, progress=False, overwrite=True)
    assert summary.points_computed == 2
    assert set(afdjax.read_sweep(tmp_path)["alpha_a"]) == {0.001, 0.003}
    # Chunk files whose manifest is gone are not adopted.
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(ValueError, match="holds chunk files but no _manifest.json"):
        afdjax.sweep(changed, tmp_path, progress=False)
    # A folder that is not a sweep is left alone.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and is not an afdjax sweep"):
        afdjax.sweep(grid, other, progress=False)


def _with(path: str, value):
    grid = small_grid()
    *parents, last = path.split(".")
    table = grid
    for p in parents:
        table = table[p]
    table[last] = value
    return grid


@pytest.mark.parametrize(
    "grid, message",
    [
        (_with("grid.workload.mu_q", 1), r"unknown key 'mu_q'; allowed: kind, mu_p, mu_d, prefill, sigma"),
        (_with("grid.workload.mu_d", -5), r"mu_d=-5 is invalid: expected a finite number >= 0"),
        (
            _with("grid.workload.prefill", "gamma"),
            r"prefill='gamma' is invalid: expected one of constant, exponential, lognormal",
        ),
        (_with("grid.workload.kind", "poisson"), r"kind='poisson' is invalid: expected one of geometric, trace, spec"),
        (
            _with("grid.workload.mu_d", {"start": 1, "stop": 5}),
            r"mu_d=.* is not a valid range: expected \{start, stop, num",
        ),
        (
            _with("grid.workload.mu_d", {"start": 1, "stop": 5, "num": 3, "spacing": "cubic"}),
            r"spacing='cubic' is invalid: expected linear or log",
        ),
        (_with("grid.batch_size", [16, 2.5]), r"batch_size=2.5 is invalid: expected an integer >= 1"),
        (_with("grid.micro_batches", [0]), r"micro_batches=0 is invalid: expected an integer >= 1"),
        (
            _with("grid.micro_batches", [4096]),
            r"micro_batches=4096 is invalid with batch_size=.*: expected micro_batches <= every batch_size",
        ),
        (_with("grid.hardware.preset", "h100"), r"preset='h100' is invalid: expected one of paper-910c"),
        (_with("grid.hardware.alpha_f", "fast"), r"alpha_f='fast' is invalid: expected a finite number >= 0"),
        (
            _with("grid.hardware.comm_scaling", "ratio"),
            r"comm_scaling='ratio' is invalid: expected one of batch, ratio_batch",
        ),
        (_with("settings.start", "warm"), r"start='warm' is invalid: expected one of stationary, cold"),
        (_with("settings.stepz", 10), r"\[settings\]: unknown key 'stepz'; allowed: steps, replicas"),
        (
            _with("settings.quantile_levels", [0.5, 1.5]),
            r"quantile_levels=\[0.5, 1.5\] is invalid: expected a list of levels in \(0, 1\)",
        ),
        ({"grid": {"workload": {"mu_p": 1, "mu_d": 1}}}, r"\[grid\] is missing 'hardware'"),
        (_with("grid.hardware", {"alpha_a": 0.001}), r"missing coefficient 'beta_a'"),
    ],
)
def test_bad_grids_raise_value_errors(grid, message):
    with pytest.raises(ValueError, match=message):
        afdjax.load_grid(grid)


def test_grid_schema_expansion(tmp_path):
    example = afdjax.load_grid(REPO_ROOT / "experiments" / "sweep_example.toml")
    # (2 families x 2 mu_p x 3 mu_d + 1 trace) x 4 alpha_a x 2 batch sizes
    assert example.num_points == 104
    assert len(example.groups) == 6
    grid = small_grid()
    grid["grid"]["workload"] = [
        {
            "mu_p": {"start": 50, "stop": 150, "step": 50},
            "mu_d": {"start": 10, "stop": 1000, "num": 3, "spacing": "log"},
        },
        {"kind": "spec", "spec": ["geometric:mu_p=5,mu_d=10,prefill=exponential"]},
    ]
    grid["grid"]["micro_batches"] = [1]
    g = afdjax.load_grid(grid)
    assert g.num_points == (3 * 3 + 1) * 2
    np.testing.assert_allclose(np.unique(g.groups[0].floats["mu_d"]), [10, 100, 1000])
    np.testing.assert_allclose(np.unique(g.groups[0].floats["mu_p"]), [50, 100, 150])
    assert all(grp.micro_batches == 1 for grp in g.groups)


@pytest.mark.slow  # pipelined and trace sweeps; test_points_equal_simulate covers the sweep
def test_micro_batches_and_traces_run(tmp_path):
    """micro_batches is a static axis (one group per value) that reaches the engine's
    pipeline; trace workloads are shared, unbatched leaves."""
    grid = small_grid()
    grid["settings"]["steps"] = 100
    grid["grid"]["workload"] = {"kind": "trace", "trace": "azure-conv"}
    grid["grid"]["hardware"]["alpha_a"] = 0.002
    grid["grid"]["micro_batches"] = [1, 2]
    afdjax.sweep(grid, tmp_path, progress=False)
    df = afdjax.read_sweep(tmp_path)
    assert set(df["micro_batches"]) == {1, 2} and (df["workload"] == "trace:azure-conv").all()
    wl = afdjax.load_trace("azure-conv")
    latency = afdjax.LatencyModel(**(afdjax.PRESETS["paper-910c"] | {"alpha_a": 0.002}))
    for m in (1, 2):
        res = afdjax.simulate(jax.random.key(3), wl, latency, 16, range(1, 7), 100, 2, micro_batches=m)
        part = df[df["micro_batches"] == m]
        np.testing.assert_allclose(part["throughput_per_instance"], res.throughput_per_instance, rtol=1e-12)
        np.testing.assert_allclose(
            part["pipeline_bubble_fraction"], res.pipeline_bubble_fraction, rtol=1e-9, atol=1e-12
        )
        np.testing.assert_allclose(part["kv_load_max_tokens"], float(res.kv_load_max_tokens), rtol=1e-12)
    np.testing.assert_allclose(df["theta_tokens"], float(wl.theta()))


def test_cli_summary_json_and_errors(tmp_path, capsys):
    grid = small_grid()
    grid["grid"]["workload"] = {"mu_p": 100, "mu_d": 20}
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text(toml_text(grid))
    out = tmp_path / "out"
    assert main(["sweep", "--grid", str(grid_file), "--out", str(out)]) == 0
    text, err = capsys.readouterr()
    assert err == ""  # no progress bar when stderr is not a terminal
    assert "2 points computed, 0 already done, 2 in the grid (complete)" in text and str(out) in text
    assert main(["sweep", "--grid", str(grid_file), "--out", str(out), "--json", "--memory-budget-mb", "64"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["points_skipped"] == 2 and data["points_computed"] == 0 and data["complete"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["grid_hash"] == data["grid_hash"] and manifest["identity"]["settings"]["seed"] == 3
    assert manifest["afdjax_version"] == afdjax.__version__
    bad = tmp_path / "bad.toml"
    for text in ("[grid]\nbatch_size = 0\n", "[grid\n", toml_text(_with("grid.workload.mu_q", 1))):
        bad.write_text(text)
        assert main(["sweep", "--grid", str(bad), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("afdjax: error: ") and err.count("\n") == 1, err
    grid_file.write_text(toml_text(small_grid()))
    assert main(["sweep", "--grid", str(grid_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds a different sweep" in err and err.count("\n") == 1
    assert main(["sweep", "--grid", str(tmp_path / "missing.toml"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    # An --out that cannot be created: one line, exit code 2, before any simulation.
    grid_file.write_text(toml_text(grid))
    assert main(["sweep", "--grid", str(grid_file), "--out", str(bad / "sub")]) == 2
    assert capsys.readouterr().err == (
        f"afdjax: error: cannot create --out {str(bad / 'sub')!r}: {str(bad)!r} is not a folder\n"
    )
    with pytest.raises(ValueError, match=r"output folder '.*sub' cannot be created: Not a directory"):
        afdjax.sweep(grid, bad / "sub")  # the library's own check


def test_chunk_size_follows_the_memory_budget():
    from afdjax._sweep._core import _group_sizes

    grid = afdjax.load_grid(small_grid())
    group, settings = grid.groups[0], grid.settings
    sizes = {}
    for budget_mib in (2, 4, 8, 64):
        _, _, chunk, per_point = _group_sizes(group, settings, budget_mib * 2**20, 2, 4096)
        assert chunk % 2 == 0 and (chunk * per_point <= budget_mib * 2**20 or chunk == 2)
        sizes[budget_mib] = chunk
    assert sizes[2] <= sizes[4] <= sizes[8] <= sizes[64] == 6  # the group (6 points) fits
    big = afdjax.load_grid(_with("grid.batch_size", 4096))
    with pytest.warns(RuntimeWarning, match="one point of group 0 .* needs about"):
        _, _, chunk, _ = _group_sizes(big.groups[0], big.settings, 2**20, 1, None)
    assert chunk == 1


def test_read_sweep_names_the_pandas_extra(tmp_path, monkeypatch):
    """Without pandas (not a dependency of a plain install) read_sweep says which extra to install."""
    monkeypatch.setitem(sys.modules, "pandas", None)  # "import pandas" now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'afdjax\[pandas\]'"):
        afdjax.read_sweep(tmp_path)


def test_grid_limit_is_the_engines():
    import afdjax._engine
    import afdjax._sweep._grid

    assert afdjax._sweep._grid.MAX_INDEX is afdjax._engine.MAX_INDEX
