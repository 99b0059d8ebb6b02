"""Inputs that parse but cannot work, and output paths, are refused before any work
(issue 11, items 3, 4 and 6): exit code 2, one line on stderr, and no simulation started.

"No simulation started" is checked structurally: the engine's entry points (and the
profiler's) are replaced by functions that fail the test if called. The library raises
``ValueError`` for the same inputs."""

from __future__ import annotations

import inspect
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import afdjax
import afdjax._step as step
import afdjax._theory as theory
from afdjax._cli._main import main
from afdjax._engine import _sizing
from afdjax._engine._config import MAX_RATIO
from afdjax._provision._compare import range_warnings, replica_note
from afdjax._validate import format_number, invalid

REPO = pathlib.Path(__file__).resolve().parent.parent
ZERO_HW = "alpha_a=0,beta_a=0,alpha_f=0,beta_f=0,alpha_c=0,beta_c=0"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TINY = ["--batch-size", "8", "--ratios", "1:3", "--steps", "20"]


def _started(*args, **kwargs):
    raise AssertionError("a simulation (or profile) started before the input was refused")


@pytest.fixture
def no_work(monkeypatch):
    """Every path into the engine or the profiler fails the test."""
    import afdjax._engine as engine
    import afdjax._engine._simulate as engine_simulate
    import afdjax._profile as profile
    import afdjax._provision._constraints as constraints
    import afdjax._provision._report as report

    for module, name in (
        (engine, "simulate"),
        (engine_simulate, "run_engine"),
        (report, "simulate"),
        (constraints, "simulate"),
        (profile, "profile_hardware"),
    ):
        monkeypatch.setattr(module, name, _started)


def refused(capsys, argv) -> str:
    """Run the CLI in-process; assert exit code 2 and exactly one line on stderr; return it."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("afdjax: error: "), err
    return lines[0]


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no file can be created in: mode 0o500, or /proc when running as root
    (root ignores permission bits)."""
    if IS_ROOT:
        yield pathlib.Path("/proc")
        return
    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o500)
    yield d
    d.chmod(0o700)


# ----------------------------------------------------------------------------- item 3
@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["simulate", "--hardware", ZERO_HW], "with all six zero every step takes no time"),
        (["provision", "--hardware", ZERO_HW], "with all six zero every step takes no time"),
        (["simulate", "--steps", "3000000000"], "--steps must be <= 2147483647"),
        (["simulate", "--replicas", "2147483648"], "--replicas must be <= 2147483647"),
        (["provision", "--warmup", "3000000000"], "--warmup must be <= 2147483647"),
        (["simulate", "--seed", "4294967296"], "--seed must be <= 2147483647"),
        (["simulate", "--steps", "2147483647", "--ratios", "1:2"], "--steps 2147483647 with --warmup 0 is invalid"),
        (["simulate", "--ratios", "1:65536"], f"--ratios '1:65536': ratios must be <= {MAX_RATIO}, got HI=65536"),
        (["provision", "--ratios", "4000,5000"], f"ratios must be <= {MAX_RATIO}, got 5000"),
        (["simulate", "--ratios", "1:99999999999999"], f"ratios must be <= {MAX_RATIO}"),
        (["simulate", "--batch-size", "70000"], "--batch-size must be <= 65536"),
        (["provision", "--batch-sizes", "x2:1024:32"], "x2:LO:HI needs LO <= HI, got LO=1024 above HI=32"),
        (["provision", "--batch-sizes", "x2:0:32"], "x2:LO:HI needs LO >= 1, got LO=0"),
        (["provision", "--batch-sizes", "64:32:8"], "empty range: LO=64 is above HI=32"),
        (["provision", "--batch-sizes", "64,100000"], "batch sizes must be in 1..65536, got 100000"),
        (["simulate", "--micro-batches", "300"], "--micro-batches 300 is invalid"),
        (
            ["provision", "--kv-overflow-prob", "2", "--kv-capacity-gb", "60", "--hardware", "h100:deepseek-v3"],
            "--kv-overflow-prob must be a probability in [0, 1), got 2",
        ),
        (["hardware", "--kernel-overhead-us", "-1"], "--kernel-overhead-us -1.0 is invalid"),
    ],
)
def test_inputs_that_cannot_work_are_refused_first(capsys, no_work, argv, fragment):
    line = refused(capsys, argv)
    assert fragment in line
    assert "_" not in line.split("error: ", 1)[1].split(" ")[0]  # an option, not a library name, comes first


@pytest.mark.parametrize(
    "argv, advice",
    [
        (["simulate", "--replicas", "10000000"], "lower --replicas"),
        (["provision", "--replicas", "10000000"], "lower --replicas"),
        (["provision", "--batch-sizes", "64,256", "--replicas", "10000000"], "lower --replicas"),
        (["verify", "--replicas", "10000000"], "lower --replicas"),
        (["simulate", "--ratios", "1:4096", "--batch-size", "4096"], "lower the largest of --ratios or --batch-size"),
    ],
)
def test_runs_beyond_memory_are_refused_with_the_numbers(capsys, no_work, monkeypatch, tmp_path, argv, advice):
    monkeypatch.setattr(_sizing, "available_memory", lambda: (8 * 10**9, "memory of the test"))
    if argv[0] == "verify":
        argv = [*argv, "--out", str(tmp_path / "v")]
    line = refused(capsys, argv)
    assert "the simulation needs about " in line and " GB of memory, more than the 8 GB memory of the test" in line
    assert advice in line
    assert not (tmp_path / "v").exists()


def test_memory_estimate_and_library_refusal(monkeypatch):
    wl = afdjax.Geometric(100.0, 500.0)
    cfg = dict(max_ratio=32, batch_size=256, num_steps=4000, warmup_steps=0, num_replicas=10**7, num_bins=4096)
    monkeypatch.setattr(_sizing, "available_memory", lambda: (8 * 10**9, "memory of the test"))
    with pytest.raises(ValueError, match=r"needs about 5,4\d\d GB .* lower num_replicas") as err:
        _sizing.plan_sizes(wl, cfg)
    assert err.value.estimate.statistics == 10**7 * _sizing.statistics_bytes(32, 4096)
    assert _sizing.plan_sizes(wl, dict(cfg, num_replicas=8))["replica_batch_size"] >= 1  # the default run fits
    with pytest.raises(ValueError, match=f"expected ratios <= {MAX_RATIO}"):
        _sizing.plan_sizes(wl, dict(cfg, max_ratio=MAX_RATIO + 1, num_replicas=2))
    with pytest.raises(ValueError, match="num_steps=2147483647 with warmup_steps=5 is invalid"):
        _sizing.plan_sizes(wl, dict(cfg, num_steps=2**31 - 1, warmup_steps=5, num_replicas=2))
    lat = afdjax.LatencyModel.from_preset("paper-910c")
    with pytest.raises(ValueError, match="lower num_replicas"):  # before anything is compiled
        afdjax.simulate(jax.random.key(0), wl, lat, 256, [1], 10, 10**7)


def test_machine_memory_is_known_on_this_machine():
    total, where = _sizing.available_memory()
    assert total is not None and total > 10**8 and "memory" in where


# ----------------------------------------------------------------------------- item 3, library
def test_all_zero_latency_model_is_refused():
    names = ("alpha_a", "beta_a", "alpha_f", "beta_f", "alpha_c", "beta_c")
    with pytest.raises(ValueError, match="alpha_a = beta_a = alpha_f = beta_f = alpha_c = beta_c = 0"):
        afdjax.LatencyModel(**{n: 0.0 for n in names})
    with pytest.raises(ValueError, match=r"= 0 at index \(1,\)"):  # one all-zero element of a batch
        afdjax.LatencyModel(**dict({n: 0.0 for n in names}, beta_f=np.array([1.0, 0.0])))
    for n in names:  # any one coefficient > 0 makes a step take time
        afdjax.LatencyModel(**dict({m: 0.0 for m in names}, **{n: 1.0}))
    with pytest.raises(ValueError, match="hardware spec .* all six zero"):
        afdjax.parse_hardware_spec(ZERO_HW)


def _theory_functions():
    """Every public function of afdjax._theory and afdjax._step (the pipeline's closed
    forms) that takes a batch size."""
    for module in (theory, step):
        for name in sorted(vars(module)):
            fn = getattr(module, name)
            if not name.startswith("_") and inspect.isfunction(fn) and "batch_size" in inspect.signature(fn).parameters:
                yield name, fn


def test_every_theory_function_refuses_batch_size_at_most_zero():
    wl, lat = afdjax.Geometric(100.0, 500.0), afdjax.LatencyModel.from_preset("paper-910c")
    values = dict(
        workload=wl,
        latency=lat,
        ratio=4.0,
        max_ratio=8,
        cycle_time=300.0,
        micro_batches=2,
        attention_cost=1.0,
        ffn_cost=2.0,
        step_model=afdjax.Colocated(),
        mu=100.0,  # stage_layer_time's attention-time moments
        s=10.0,
    )
    checked = []
    for name, fn in _theory_functions():
        params = inspect.signature(fn).parameters
        for b in (0, -1, 0.0, -2.5):
            args = {p: (b if p == "batch_size" else values[p]) for p in params if p in values or p == "batch_size"}
            with pytest.raises(ValueError, match=r"batch_size=.* is invalid: expected a finite number > 0"):
                fn(**args)
        checked.append(name)
    for name in (
        "mean_field_optimum",
        "mean_field_integer_ratio",
        "barrier_optimum",
        "mean_field_throughput",
        "pipeline_cycle_time",
        "pipeline_barrier_throughput",
        "cost_optimum",
        "cost_objective",
        "colocated_throughput_per_device",
    ):
        assert name in checked


# ----------------------------------------------------------------------------- item 4
def test_output_paths_are_checked_before_any_work(capsys, no_work, tmp_path, read_only_dir):
    ro = str(read_only_dir / "x.png")
    missing = str(tmp_path / "no-such-folder" / "x.png")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        (["simulate", *TINY, "--plot", ro], "cannot write --plot"),
        (["simulate", *TINY, "--plot", missing], "does not exist"),
        (["simulate", *TINY, "--plot", str(tmp_path)], "it is a folder"),
        (["provision", *TINY, "--plot", ro], "cannot write --plot"),
        (["provision", *TINY, "--tpot-ms", "50", "--hardware", "h100:deepseek-v3", "--plot", ro], "--plot"),
        (["verify", "--steps", "20", "--out", str(a_file)], "it exists and is not a folder"),
        (["verify", "--steps", "20", "--out", str(read_only_dir / "new" / "deeper")], "cannot create --out"),
        (["fit", "latency", "--observations", "afdjax/data/example_step_latency.csv", "--out", ro], "--out"),
        (["fit", "latency", "--observations", "afdjax/data/example_step_latency.csv", "--plot", ro], "--plot"),
        (["fit", "throughput", "--observations", "nonexistent.csv", "--out", ro], "cannot write --out"),
        (["hardware", "--out", ro], "cannot write --out"),
        (["profile", "--out", ro], "cannot write --out"),
        (["profile", "--plot", str(a_file / "x.png")], "is not a folder"),
    ]
    for argv, fragment in cases:
        line = refused(capsys, argv)
        assert fragment in line, (argv, line)
    assert a_file.read_text() == "x"


@pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions")
def test_a_read_only_existing_file_is_refused(capsys, no_work, tmp_path):
    f = tmp_path / "hw.toml"
    f.write_text("old")
    f.chmod(0o400)
    assert "the file exists and is not writable" in refused(capsys, ["hardware", "--out", str(f)])
    assert f.read_text() == "old"


def test_check_output_dir_for_the_sweep(tmp_path, read_only_dir):
    from afdjax._cli._errors import CliError
    from afdjax._cli._files import check_output_dir

    check_output_dir(str(tmp_path))  # an existing writable folder
    check_output_dir(str(tmp_path / "a" / "b"))  # created later with its parents
    assert not (tmp_path / "a").exists()  # checking creates nothing
    (tmp_path / "f").write_text("")
    for path, fragment in (
        (tmp_path / "f", "exists and is not a folder"),
        (tmp_path / "f" / "sub", "is not a folder"),
        (read_only_dir / "sweep-out", "not writable"),
        ("", "needs a folder path"),
    ):
        with pytest.raises(CliError, match=fragment):
            check_output_dir(str(path))
    if not IS_ROOT:
        with pytest.raises(CliError, match="the folder is not writable"):
            check_output_dir(str(read_only_dir))


def _subprocess(args, cwd):
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, "-m", "afdjax._cli", *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


def test_process_refuses_a_read_only_plot_path(tmp_path, read_only_dir):
    """As a process: exit code 2, one line, no traceback, nothing written."""
    proc = _subprocess(["simulate", *TINY, "--plot", str(read_only_dir / "x.png")], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "cannot write --plot" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- item 6
def test_replicas_one_and_the_edge_of_the_range(capsys):
    """One replica: no standard errors, so no 'within 2 standard errors' sentence; the best
    ratio at the top of the range: a warning that says how to widen it (text and JSON)."""
    code = main(["simulate", *TINY, "--replicas", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "No other ratio is within 2" not in out and "+- nan tokens" not in out
    assert "they need at least 2 replicas" in out
    assert "is the largest simulated: the optimum may lie beyond it; widen the range (--ratios 1:6" in out
    code = main(["simulate", *TINY, "--replicas", "1", "--json"])
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert any("--ratios 1:6" in w for w in data["warnings"]) and any("2 replicas" in w for w in data["warnings"])
    assert err.count("afdjax: warning:") == 2
    assert "3 replicas give rough standard errors" in replica_note(3)
    assert replica_note(1) is None and replica_note(4) is None
    assert range_warnings([5, 6, 7], 5, "best ratio") == [
        "the best ratio r = 5 is the smallest simulated: the optimum may lie below it; widen the range "
        "(--ratios 1:7, ratios= in Python)"
    ]
    assert range_warnings([1, 2, 3], 2, "best ratio") == [] and range_warnings([1, 2, 3], 1, "best ratio") == []


def _provision_report(replicas: int):
    """A small provision report built by hand (the text logic, without a simulation)."""
    from afdjax._provision._report import ProvisionReport, _provision_warnings

    nan = float("nan")
    se = nan if replicas < 2 else 0.01
    table = [
        dict(
            ratio=r,
            mean_field=0.1 * r,
            barrier=0.1 * r,
            simulated=0.1 * r,
            stderr=se,
            rel_err_mean_field=-1e-6,
            rel_err_barrier=-4e-5,
            attention_idle_fraction=0.0,
            ffn_idle_fraction=0.5,
        )
        for r in (1, 2, 3)
    ]
    nb = dict(ratio=2, difference=0.1, stderr=se, z=nan if replicas < 2 else 10.0)
    return ProvisionReport(
        settings=dict(workload="w", hardware="h", batch_size=8, steps=20, replicas=replicas, seed=0),
        theta=600.0,
        slot_variance=250000.0,
        mean_field=dict(r_attention=9.6, r_communication=-3.5, r_peak=2.2, r_star=9.6, regime="attention", ratio=3),
        barrier=dict(ratio=3, r_continuous=3.0),
        simulated=dict(
            ratio=3, throughput=0.3, stderr=se, neighbours=[nb], distinguishable=replicas >= 2, within_2_stderr=[3]
        ),
        table=table,
        errors=dict(
            max_abs_rel_err_mean_field=1e-6,
            worst_ratio_mean_field=1,
            max_abs_rel_err_barrier=4e-5,
            worst_ratio_barrier=1,
            loss_mean_field=0.0,
            loss_barrier=0.0,
            rel_gap_r_star=2.2,
        ),
        idle_crossing=None,
        warnings=_provision_warnings([1, 2, 3], 3, 9.6, replicas),
    )


def test_provision_text_with_one_replica_has_no_standard_errors():
    one = _provision_report(1).format_text()
    head = one.split("Per ratio")[0]
    assert "distinguishable" not in one and "z = " not in one and "+- nan" not in head
    assert "better by 0.1 (no standard error: it needs at least 2 replicas)" in one
    assert "within 2 paired standard errors" not in one and "they need at least 2 replicas" in one
    assert "-0.00%" not in one and "  0.00%" in one  # rel. errors of -1e-6 and -4e-5 print as 0.00%
    assert "is the largest simulated: the optimum may lie beyond it; widen the range (--ratios 1:6" in one
    four = _provision_report(4).format_text()
    assert "NOT distinguishable" not in four and "z = 10.0): distinguishable" in four
    assert "within 2 paired standard errors of the best: none" in four and "replicas give rough" not in four
    assert "2 replicas give rough standard errors" in _provision_report(2).format_text()


def test_provision_warns_when_r_star_lies_beyond_the_range():
    from afdjax._provision._report import _provision_warnings

    assert _provision_warnings([1, 2, 3, 4], 3, 9.6, 4) == [
        "the mean-field optimum r* = 9.6 lies beyond the largest ratio simulated (4): the closed-form integer "
        "choices are capped there; widen the range (--ratios 1:15)"
    ]
    assert _provision_warnings(list(range(1, 33)), 10, 9.6, 4) == []
    assert "r* = +inf" in _provision_warnings(list(range(1, 33)), 10, math.inf, 4)[0]


@pytest.mark.slow
def test_provision_cli_with_one_replica(capsys):
    code = main(["provision", *TINY, "--replicas", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "distinguishable" not in out and "z = inf" not in out and "+- nan" not in out.split("Per ratio")[0]
    assert "it needs at least 2 replicas" in out


def test_binary_trace_names_the_file(capsys, tmp_path):
    blob = tmp_path / "trace.csv"
    blob.write_bytes(bytes([0x41, 0x0A, 0xDB, 0xFF, 0x00, 0x13]))
    for argv in (["fit", "workload", "--trace", str(blob)], ["simulate", "--workload", f"trace:{blob}"]):
        line = refused(capsys, argv)
        assert f"trace file {str(blob)!r} is not a text CSV or JSON Lines trace (byte 0xdb at offset 2" in line
    nul = tmp_path / "nul.jsonl"
    nul.write_bytes(b"{}\x00\n")
    with pytest.raises(ValueError, match="nul.jsonl' is not a text CSV or JSON Lines trace .*NUL"):
        afdjax.load_trace(str(nul))


def test_a_trace_path_with_a_comma_is_quoted(capsys, tmp_path):
    path = tmp_path / "requests,2024.csv"
    path.write_text("ContextTokens,GeneratedTokens\n10,3\n20,5\n30,2\n")
    for spec in (
        f'trace:"{path}"',
        f"trace:'{path}',tokens_per_step=1",
        f'trace:"{path}",prefill=ContextTokens,decode=GeneratedTokens',
    ):
        wl = afdjax.parse_workload_spec(spec)
        assert float(wl.mean_decode_steps()) == pytest.approx(10 / 3)
    with pytest.raises(ValueError, match=r"got '2024.csv'; a file path in a spec ends at the first comma; quote"):
        afdjax.parse_workload_spec(f"trace:{path}")
    with pytest.raises(ValueError, match="no closing"):
        afdjax.parse_workload_spec(f'trace:"{path}')
    with pytest.raises(ValueError, match="expected a comma after the quoted path"):
        afdjax.parse_workload_spec(f'trace:"{path}"x')


def test_messages_show_plain_numbers_and_option_names(capsys, no_work):
    assert str(invalid("mu_p", jnp.asarray(-1.0), "a number >= 0")) == "mu_p=-1.0 is invalid: expected a number >= 0"
    assert "Array" not in str(invalid("x", np.array([1.0, 2.0]), "y")) and "[1.0, 2.0]" in str(
        invalid("x", np.array([1.0, 2.0]), "y")
    )
    with pytest.raises(ValueError, match=r"^mu_p=-1.0 is invalid"):
        afdjax.Geometric(jnp.asarray(-1.0), 5.0)
    line = refused(capsys, ["provision", "--batch-sizes", "16,32", "--micro-batches", "24"])
    assert "--micro-batches 24 is invalid" in line and "micro_batches" not in line


@pytest.mark.parametrize(
    "value, spec, text",
    [
        (-0.0001, ".3f", "0.000"),
        (-0.0, ".2f", "0.00"),
        (-0.00004, ">7.2%", "  0.00%"),
        (-0.04, "+.1f", "+0.0"),
        (-0.05, ".1f", "-0.1"),
        (-1e-9, ".3g", "-1e-09"),
        (-0.000001, ".2e", "-1.00e-06"),
        (np.float32(-1e-7), ">9.3f", "    0.000"),
        (-math.inf, ".2f", "-inf"),
        (-3, "d", "-3"),
    ],
)
def test_no_negative_zero(value, spec, text):
    assert format_number(value, spec) == text


def test_docs_name_files_that_exist_and_no_paper_md():
    hits = [p for p in (REPO / "afdjax").rglob("*.py") if "PAPER.md" in p.read_text()]
    assert not hits, hits
    readme = (REPO / "README.md").read_text()
    assert "--observations afdjax/data/example_step_latency.csv" in readme and "steps.csv" not in readme
    assert (REPO / "afdjax" / "data" / "example_step_latency.csv").is_file()
    assert "sweep-out/" in (REPO / ".gitignore").read_text().splitlines()


def test_parser_limits_are_the_library_limits():
    """The parser repeats three library constants (so that it needs no JAX import)."""
    from afdjax._cli import _parser
    from afdjax._engine._config import MAX_INDEX
    from afdjax._validate import INT32_MAX

    assert (_parser.INT32_MAX, _parser.MAX_RATIO, _parser.MAX_BATCH_SIZE) == (INT32_MAX, MAX_RATIO, MAX_INDEX)
