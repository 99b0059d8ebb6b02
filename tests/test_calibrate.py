"""afdjax.calibrate / afdjax fit throughput on measured ratio sweeps (issue 13, scope 5).

Every default test here and in test_predict.py shares one compiled simulation: two Fixed
workloads, B = 32, ratios 1..6, 300 steps x 4 replicas, the default fitted names."""

import json

import jax
import numpy as np
import pytest

import afdjax
from afdjax._cli._main import main
from afdjax._fit._calibrate import calibrate
from afdjax._fit._calibrate_params import default_fit
from afdjax._fit._predict import CalibratedModel, predict
from afdjax._fit._sweep_data import RatioSweep, read_ratio_sweep, step_time_to_throughput

STEPS, REPLICAS, B, RMAX = 300, 4, 32, 6
SPECS = ("fixed:prefill=1000,decode=100", "fixed:prefill=3000,decode=100")
TRUTH = dict(alpha_a=0.0015, beta_a=20.0, alpha_f=0.1, beta_f=60.0, alpha_c=0.001, beta_c=5.0)
TRUTH_CV = 0.1


def workloads():
    return {SPECS[0]: afdjax.Fixed(1000.0, 100), SPECS[1]: afdjax.Fixed(3000.0, 100)}


def truth_latency(cv=TRUTH_CV):
    return afdjax.LatencyModel(**TRUTH, noise=afdjax.StageNoise(attention_cv=cv))


def synthetic_sweep(seed: int, steps: int = STEPS, replicas: int = REPLICAS) -> RatioSweep:
    """Measured step times of both workloads at ratios 1..6 (the truth simulated at ``seed``,
    by default with the fits' own simulation, so that it is compiled once), with their
    standard errors; row order interleaves the workloads."""
    labels, ratios = [], []
    for r in range(1, RMAX + 1):
        for spec in SPECS:
            labels.append(spec)
            ratios.append(r)
    rows = RatioSweep(ratio=np.asarray(ratios), batch_size=np.full(len(ratios), B), workload=tuple(labels))
    truth = CalibratedModel(truth_latency(), default_fit(truth_latency()))  # the fits' names: one compilation
    pred = predict(truth, rows, workloads(), key=jax.random.key(seed), num_steps=steps, num_replicas=replicas)
    return RatioSweep(
        ratio=rows.ratio,
        batch_size=rows.batch_size,
        workload=rows.workload,
        value=pred.step_time,
        quantity="step_time",
        stderr=pred.step_time_stderr,
    )


@pytest.fixture(scope="module")
def sweep():
    return synthetic_sweep(11)


@pytest.fixture(scope="module")
def fitted(sweep):
    return calibrate(sweep, workloads(), key=jax.random.key(1), num_steps=STEPS, num_replicas=REPLICAS, folds=3)


def test_recovers_known_parameters(fitted):
    assert fitted.names == ("alpha_a", "beta_a", "alpha_f", "beta_f", "alpha_c", "beta_c", "attention_cv")
    # communication never bounds a step here: the data cannot move it
    assert fitted.not_identified == ("alpha_c", "beta_c")
    truth = dict(TRUTH, attention_cv=TRUTH_CV)
    for name in ("alpha_a", "beta_a", "alpha_f", "beta_f", "attention_cv"):
        lo, hi = fitted.interval[name]
        assert lo < fitted.estimate[name] < hi
        assert abs(fitted.estimate[name] / truth[name] - 1) < 0.1, (name, fitted.estimate[name])
    assert fitted.interval["beta_c"] == (0.0, float("inf"))
    assert fitted.max_abs_rel_residual < 0.02
    assert np.allclose(
        fitted.predicted_step_time,
        step_time_to_throughput(fitted.predicted_throughput, fitted.observations.ratio, B),
    )


def test_folds_predict_every_row_once(fitted, sweep):
    held = fitted.held_out
    assert held.method == "folds" and held.folds == 3
    assert sorted(held.rows.tolist()) == list(range(len(sweep)))
    assert np.array_equal(held.observed, sweep.value[held.rows])
    assert 0 < held.rms_relative_error <= held.max_abs_relative_error < 0.2


def test_throughput_column_gives_the_same_fit(fitted, sweep):
    thr, se = sweep.throughput()
    as_thr = RatioSweep(sweep.ratio, sweep.batch_size, sweep.workload, value=thr, quantity="throughput", stderr=se)
    other = calibrate(as_thr, workloads(), key=jax.random.key(1), num_steps=STEPS, num_replicas=REPLICAS)
    for name in fitted.names:
        assert other.estimate[name] == pytest.approx(fitted.estimate[name], rel=1e-6)
    assert np.allclose(other.predicted, fitted.predicted_throughput, rtol=1e-9)


def test_holdout_fraction_and_given_start(sweep):
    start = afdjax.LatencyModel(**{k: v * 1.3 for k, v in TRUTH.items()}, noise=afdjax.StageNoise(attention_cv=0.2))
    fit = calibrate(
        sweep, workloads(), start, key=jax.random.key(1), num_steps=STEPS, num_replicas=REPLICAS, holdout=0.25
    )
    assert fit.held_out.method == "holdout" and len(fit.held_out.rows) == 3
    assert fit.start["alpha_a"] == pytest.approx(1.3 * TRUTH["alpha_a"]) and fit.start["attention_cv"] == 0.2
    assert fit.latency.beta_c == pytest.approx(1.3 * TRUTH["beta_c"])  # not identified: held at the given start
    assert abs(fit.estimate["alpha_f"] / TRUTH["alpha_f"] - 1) < 0.1


def _write_csv(path, sweep, column="step_time"):
    lines = ["# measured sweep (synthetic)", f"ratio,batch_size,workload,{column},stderr"]
    thr, se = sweep.throughput()
    values, errors = (sweep.value, sweep.stderr) if column == "step_time" else (thr, se)
    for r, b, w, v, s in zip(sweep.ratio, sweep.batch_size, sweep.workload, values, errors):
        lines.append(f'{r},{b},"{w}",{float(v)!r},{float(s)!r}')
    path.write_text("\n".join(lines) + "\n")


def test_read_ratio_sweep_keeps_rows_and_labels(tmp_path, sweep):
    f = tmp_path / "obs.csv"
    _write_csv(f, sweep)
    back = read_ratio_sweep(f)
    assert back.quantity == "step_time" and back.workload == sweep.workload
    assert np.array_equal(back.ratio, sweep.ratio) and np.array_equal(back.value, sweep.value)
    assert [(w, b, list(i)) for w, b, i in back.groups()] == [
        (SPECS[0], B, list(range(0, 12, 2))),
        (SPECS[1], B, list(range(1, 12, 2))),
    ]


def test_cli_fit_json_and_toml(capsys, tmp_path, sweep, fitted):
    f, toml = tmp_path / "obs.csv", tmp_path / "cal.toml"
    _write_csv(f, sweep)
    argv = ["fit", "throughput", "--observations", str(f), "--steps", str(STEPS), "--replicas", str(REPLICAS)]
    code = main(argv + ["--seed", "0", "--holdout", "0.25", "--out", str(toml), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert set(data) >= {"parameters", "not_identified", "rows", "held_out", "max_abs_rel_residual", "toml"}
    assert data["quantity"] == "step_time" and data["not_identified"] == ["alpha_c", "beta_c"]
    assert [(row["ratio"], row["workload"]) for row in data["rows"]] == list(zip(sweep.ratio.tolist(), SPECS * RMAX))
    assert data["parameters"]["attention_cv"]["identified"] is True
    text = toml.read_text()
    assert "[latency]" in text and "[calibration]" in text and "covariance_log" in text
    assert afdjax.parse_hardware_spec(str(toml)).coefficients()["alpha_a"] == pytest.approx(
        data["parameters"]["alpha_a"]["estimate"]
    )
    # afdjax predict reads the calibration back (attention_cv from its [calibration] table): with the
    # same key and sizes it reproduces the fit's own predictions
    argv = ["predict", "--hardware", str(toml), "--observations", str(f), "--steps", str(STEPS)]
    code = main(argv + ["--replicas", str(REPLICAS), "--seed", "0", "--posterior-draws", "4", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    predicted = json.loads(out)
    assert predicted["calibrated"] is True and predicted["posterior_draws"] == 4
    assert [r["step_time"] for r in predicted["rows"]] == pytest.approx(
        [r["step_time"] for r in data["rows"]], rel=1e-9
    )


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("ratio,batch_size\n1,32\n", "missing column(s) throughput or step_time"),
        ("ratio,throughput\n1,0.5\n", "missing column(s) batch_size"),
        ("ratio,batch_size,throughput,step_time\n1,32,0.5,10\n", "has both throughput and step_time"),
        ("ratio,batch_size,step_time\n1,32,10\n2.5,32,11\n", "row 2: ratio=2.5 is invalid"),
        ("ratio,batch_size,step_time\n1,32,x\n", "row 1: step_time='x' is not a number"),
        ("ratio,batch_size,step_time\n1,32,-1\n", "row 1: step_time='-1' is invalid"),
    ],
)
def test_bad_observation_files(tmp_path, content, fragment):
    f = tmp_path / "obs.csv"
    f.write_text(content)
    with pytest.raises(ValueError, match=None) as err:
        read_ratio_sweep(f)
    assert fragment in str(err.value)


def test_library_errors_name_the_argument(sweep):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="give at most one of them"):
        calibrate(sweep, workloads(), key=key, holdout=0.2, folds=3)
    with pytest.raises(ValueError, match=r"fit=\('alpha_x',\) is invalid: expected distinct names from alpha_a"):
        calibrate(sweep, workloads(), fit=("alpha_x",), key=key)
    with pytest.raises(ValueError, match="routing_skew"):  # only with an ExpertRouting model
        calibrate(sweep, workloads(), fit=("routing_skew",), key=key)
    with pytest.raises(ValueError, match="has no Workload for the observations' label"):
        calibrate(sweep, {SPECS[0]: afdjax.Fixed(1000.0, 100)}, key=key)
    with pytest.raises(ValueError, match=r"holdout=1.0 is invalid"):
        calibrate(sweep, workloads(), key=key, holdout=1.0)
    with pytest.raises(ValueError, match=r"folds=13 is invalid: expected an integer in \[2, 12\]"):
        calibrate(sweep, workloads(), key=key, folds=13)
    with pytest.raises(ValueError, match=r"ratio\[0\]=0 is invalid"):
        RatioSweep(ratio=np.array([0, 1]), batch_size=np.array([1, 1]), workload=("", ""))


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--holdout", "1.5"], "--holdout must be a fraction in (0, 1)"),
        (["--holdout", "0.2", "--folds", "3"], "not allowed with argument"),
        (["--folds", "1"], "--folds must be >= 2"),
        (["--fit", "alpha_x"], "fit=('alpha_x',) is invalid"),
    ],
)
def test_cli_errors_one_line(capsys, tmp_path, extra, fragment):
    f = tmp_path / "obs.csv"
    f.write_text("ratio,batch_size,step_time\n1,32,10\n2,32,11\n3,32,12\n")
    code = main(["fit", "throughput", "--observations", str(f)] + extra)
    _out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert lines[0].startswith("afdjax: error: ")


@pytest.mark.slow
def test_fixed_parameters_and_the_fit_without_noise(sweep):
    """A subset fitted, the rest held at the given values; without attention_cv the
    deterministic stage times cannot follow the rise of the step time with r."""
    start = afdjax.LatencyModel(**{k: v * 1.3 for k, v in TRUTH.items()})
    fit = calibrate(
        sweep, workloads(), start, ("alpha_a", "beta_a", "alpha_f", "beta_f"), key=jax.random.key(1), num_steps=STEPS
    )
    assert fit.latency.beta_c == pytest.approx(1.3 * TRUTH["beta_c"]) and fit.latency.noise is None
    assert fit.max_abs_rel_residual > 0.02


@pytest.mark.slow
def test_interval_coverage_over_seeds():
    """95 % intervals of the identified parameters cover the truth at about the nominal rate
    (40 synthetic sweeps; experiments/calibration_coverage.py prints the table)."""
    names = ("alpha_a", "beta_a", "alpha_f", "beta_f", "attention_cv")
    truth = dict(TRUTH, attention_cv=TRUTH_CV)
    hits = {n: 0 for n in names}
    seeds = range(100, 140)
    for seed in seeds:
        fit = calibrate(synthetic_sweep(seed), workloads(), key=jax.random.key(seed + 1000), num_steps=1000)
        for n in names:
            lo, hi = fit.interval[n]
            hits[n] += lo <= truth[n] <= hi
    rates = {n: hits[n] / len(seeds) for n in names}
    assert all(v >= 0.8 for v in rates.values()), rates
