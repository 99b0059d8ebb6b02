"""afdjax.predict / afdjax predict (issue 13, scope 5): rows in file order, standard errors,
the recommended ratio and the probability that each ratio is the best one.

Shares the compiled simulation of tests/test_calibrate.py (same workloads, B, ratios,
steps, replicas and parameter names)."""

import json

import jax
import numpy as np
import pytest

import afdjax
from afdjax._cli._main import main
from afdjax._fit._calibrate_params import default_fit
from afdjax._fit._calibrate_text import calibration_toml
from afdjax._fit._predict import CalibratedModel, predict

try:
    from test_calibrate import REPLICAS, RMAX, SPECS, STEPS, TRUTH, B, synthetic_sweep, truth_latency, workloads
except ImportError:  # pragma: no cover - if tests/ becomes a package
    from tests.test_calibrate import REPLICAS, RMAX, SPECS, STEPS, TRUTH, B, synthetic_sweep, truth_latency, workloads

NAMES = default_fit(truth_latency())
DRAWS = 16


def calibrated(scale: float = 0.01) -> CalibratedModel:
    """The truth with a diagonal covariance of the log parameters (sd ``scale``; the
    communication coefficients not identified)."""
    cov = np.diag([scale**2] * len(NAMES))
    for i, name in enumerate(NAMES):
        if name in ("alpha_c", "beta_c"):
            cov[i, i] = np.inf
    return CalibratedModel(truth_latency(), NAMES, cov)


@pytest.fixture(scope="module")
def rows():
    return synthetic_sweep(21)


@pytest.fixture(scope="module")
def prediction(rows):
    return predict(
        calibrated(),
        rows,
        workloads(),
        key=jax.random.key(3),
        num_steps=STEPS,
        num_replicas=REPLICAS,
        posterior_draws=DRAWS,
    )


def test_rows_in_order_with_errors(prediction, rows):
    assert prediction.calibrated and prediction.posterior_draws == DRAWS
    assert len(prediction.step_time) == len(rows)
    assert np.allclose(prediction.throughput * prediction.step_time * (rows.ratio + 1), rows.ratio * B)
    assert np.all(prediction.throughput_stderr >= prediction.monte_carlo_stderr)
    assert np.any(prediction.throughput_stderr > 1.5 * prediction.monte_carlo_stderr)  # the calibration part
    assert np.allclose(
        prediction.step_time_stderr / prediction.step_time, prediction.throughput_stderr / prediction.throughput
    )
    # the truth predicts its own (independently simulated) measurements
    assert np.max(np.abs(prediction.step_time / rows.value - 1)) < 0.03


def test_recommended_ratio_and_best_probability(prediction):
    by_label = {g.workload: g for g in prediction.groups}
    assert set(by_label) == set(SPECS)
    for g in prediction.groups:
        assert g.batch_size == B and list(g.ratios) == list(range(1, RMAX + 1))
        assert g.recommended_ratio == int(np.argmax(g.throughput)) + 1
        assert g.best_ratio_probability.sum() == pytest.approx(1.0)
        assert np.all(g.best_ratio_probability * DRAWS == np.round(g.best_ratio_probability * DRAWS))
    # long context: the attention-bound throughput per instance still grows at r = 6
    assert by_label[SPECS[1]].recommended_ratio == RMAX
    assert by_label[SPECS[1]].best_ratio_probability[RMAX - 1] == 1.0


def test_plain_latency_model_has_no_probability(rows):
    plain = predict(
        CalibratedModel(truth_latency(), NAMES),
        rows,
        workloads(),
        key=jax.random.key(3),
        num_steps=STEPS,
        num_replicas=REPLICAS,
    )
    assert not plain.calibrated and plain.posterior_draws == 0
    assert all(g.best_ratio_probability is None for g in plain.groups)
    assert np.array_equal(plain.throughput_stderr, plain.monte_carlo_stderr)
    with pytest.raises(
        ValueError, match="model=.* is invalid: expected a LatencyModel, a Calibration or a CalibratedModel"
    ):
        predict("paper-910c", rows, workloads(), key=jax.random.key(0))


def _toml(model: CalibratedModel) -> str:
    class Fit:  # what calibration_toml reads from a Calibration
        names = model.names
        x = np.log([float(TRUTH.get(n, 0.1)) for n in model.names])
        covariance = model.covariance
        not_identified = ("alpha_c", "beta_c")
        observations = type("O", (), {"quantity": "step_time", "__len__": lambda self: 12})()
        step_model = None
        latency = model.latency

    return afdjax.latency_to_toml(model.latency) + calibration_toml(Fit)


def test_cli_predict_json_keys_and_row_order(capsys, tmp_path, rows, prediction):
    toml, obs = tmp_path / "cal.toml", tmp_path / "rows.csv"
    toml.write_text(_toml(calibrated()))
    lines = ["ratio,batch_size,workload"] + [
        f'{r},{b},"{w}"' for r, b, w in zip(rows.ratio, rows.batch_size, rows.workload)
    ]
    obs.write_text("\n".join(lines) + "\n")
    argv = ["predict", "--hardware", str(toml), "--observations", str(obs), "--steps", str(STEPS)]
    code = main(argv + ["--replicas", str(REPLICAS), "--seed", "3", "--posterior-draws", str(DRAWS), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert set(data) == {"rows", "groups", "calibrated", "posterior_draws"} and data["calibrated"] is True
    assert [(row["ratio"], row["workload"]) for row in data["rows"]] == list(zip(rows.ratio.tolist(), rows.workload))
    keys = {"step_time", "step_time_stderr", "throughput_per_instance", "throughput_per_instance_stderr"}
    assert all(keys <= set(row) for row in data["rows"])
    # the TOML's calibration reproduces the Python prediction (same key, same covariance)
    assert [row["step_time"] for row in data["rows"]] == pytest.approx(prediction.step_time.tolist(), rel=1e-9)
    group = data["groups"][1]
    assert group["workload"] == SPECS[1] and group["recommended_ratio"] == RMAX
    assert set(group["best_ratio_probability"]) == {str(r) for r in range(1, RMAX + 1)}


@pytest.mark.parametrize(
    "toml_text, fragment",
    [
        ("[calibration]\nparameters = []\ncovariance_log = []\n", "[calibration] parameters must be a non-empty list"),
        ('[calibration]\nparameters = ["alpha_a"]\ncovariance_log = [[1.0, 2.0]]\n', "must be a 1 x 1 array"),
        ('[calibration]\nparameters = ["alpha_q"]\ncovariance_log = [[1.0]]\n', "fit=['alpha_q'] is invalid"),
    ],
)
def test_cli_predict_errors_one_line(capsys, tmp_path, toml_text, fragment):
    toml, obs = tmp_path / "cal.toml", tmp_path / "rows.csv"
    toml.write_text(afdjax.latency_to_toml(afdjax.LatencyModel(**TRUTH)) + toml_text)
    obs.write_text("ratio,batch_size\n1,32\n")
    code = main(["predict", "--hardware", str(toml), "--observations", str(obs)])
    _out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
