"""Fitting the stage-latency coefficients to step-latency observations (``afdjax._fit._latency``).

Synthetic observations are generated here with NumPy from known coefficients (the
``paper-910c`` preset, arXiv 2601.21351), independently of the library. References:
``numpy.linalg.lstsq`` (l2), ``scipy.optimize.minimize`` on the Huber objective written here
(huber), ``scipy.stats.t`` (interval quantile) and the true coefficients (coverage).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from afdjax._data import DATA_DIR
from afdjax._fit._latency import (
    LatencyFitWarning,
    LatencyObservations,
    _example_observations_csv,
    _t_quantile,
    _weighted_median,
    fit_latency,
    read_latency_observations,
)
from afdjax._latency import PRESETS, LatencyModel
from afdjax._specs import parse_hardware_spec

TRUE = PRESETS["paper-910c"]
STAGE_NAMES = {"attention": ("alpha_a", "beta_a"), "ffn": ("alpha_f", "beta_f"), "comm": ("alpha_c", "beta_c")}
COVERAGE_SEEDS = range(30)


def synthetic_columns(seed, n=60, outlier_fraction=0.0, comm_scaling="batch", noise_fraction=0.02, truth=TRUE):
    """A benchmark-like sweep: B uniform on 16..512, r on 1..16, mean KV tokens per slot on
    [100, 1000). Gaussian noise with standard deviation ``noise_fraction`` times the stage's
    mean time; a fraction of measurements (per stage) multiplied by U(1.5, 3) (stragglers)."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(16, 513, size=n).astype(float)
    ratio = rng.integers(1, 17, size=n).astype(float)
    tokens = np.round(batch * rng.uniform(100, 1000, size=n))
    comm_x = batch if comm_scaling == "batch" else ratio * batch
    true = {
        "attention_time": truth["alpha_a"] * tokens + truth["beta_a"],
        "ffn_time": truth["alpha_f"] * ratio * batch + truth["beta_f"],
        "comm_time": truth["alpha_c"] * comm_x + truth["beta_c"],
    }
    columns = dict(attention_tokens=tokens, batch_size=batch, ratio=ratio)
    for name, t in true.items():
        y = t + noise_fraction * t.mean() * rng.normal(size=n)
        if outlier_fraction:
            hit = rng.uniform(size=n) < outlier_fraction
            y = np.where(hit, y * rng.uniform(1.5, 3.0, size=n), y)
        columns[name] = y
    return columns


def stage_xy(columns, stage, comm_scaling="batch"):
    if stage == "attention":
        x = columns["attention_tokens"]
    elif stage == "ffn" or comm_scaling == "ratio_batch":
        x = columns["ratio"] * columns["batch_size"]
    else:
        x = columns["batch_size"]
    return np.asarray(x, float), np.asarray(columns[f"{stage}_time"], float)


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- 1. parameter recovery
@pytest.mark.slow  # coverage over 30 seeds: a statistical repeat
@pytest.mark.parametrize("variant", ["gaussian", "outliers"])
def test_intervals_cover_the_true_coefficients(variant):
    """Acceptance: over 30 seeds the 95 % intervals (bootstrap and sandwich) contain the
    true coefficient in >= 90 % of seeds, for each coefficient; and they are not inflated:
    the mean standard error matches the spread of the estimates across seeds."""
    outliers = 0.05 if variant == "outliers" else 0.0
    hits = {"bootstrap": dict.fromkeys(TRUE, 0), "sandwich": dict.fromkeys(TRUE, 0)}
    estimates = {k: [] for k in TRUE}
    boot_se = {k: [] for k in TRUE}
    for seed in COVERAGE_SEEDS:
        fit = fit_latency(synthetic_columns(seed, outlier_fraction=outliers), seed=seed)
        assert fit.intervals == fit.bootstrap_intervals
        coefficients = fit.latency.coefficients()
        for name, truth in TRUE.items():
            for method, intervals in (("bootstrap", fit.bootstrap_intervals), ("sandwich", fit.sandwich_intervals)):
                lo, hi = intervals[name]
                assert 0 <= lo <= coefficients[name] <= hi
                hits[method][name] += lo <= truth <= hi
            estimates[name].append(coefficients[name])
            boot_se[name].append(fit.bootstrap_standard_errors[name])
    n = len(COVERAGE_SEEDS)
    coverage = {m: {k: v / n for k, v in h.items()} for m, h in hits.items()}
    print(f"\ncoverage ({variant}, {n} seeds):", json.dumps(coverage))
    for method in hits:
        for name in TRUE:
            assert coverage[method][name] >= 0.9, (method, name, coverage[method][name])
    if variant == "gaussian":  # honest widths: se / sd near 1 (sd from 30 seeds is good to about 15 %)
        for name in TRUE:
            ratio = np.mean(boot_se[name]) / np.std(estimates[name], ddof=1)
            assert 0.6 < ratio < 1.6, (name, ratio)


# ---------------------------------------------------------------- 2. l2 exact, huber robust
def test_l2_equals_numpy_lstsq():
    columns = synthetic_columns(101)
    fit = fit_latency(columns, loss="l2")
    for stage, (alpha, beta) in STAGE_NAMES.items():
        x, y = stage_xy(columns, stage)
        (a, b), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)
        np.testing.assert_allclose(fit.stages[stage].estimate, (a, b), rtol=1e-8)
        coefficients = fit.latency.coefficients()
        np.testing.assert_allclose([coefficients[alpha], coefficients[beta]], [a, b], rtol=1e-8)
        # fit quality from its definition
        r = y - a * x - b
        q = fit.stages[stage].quality()
        assert q["rows"] == x.size
        np.testing.assert_allclose(q["r_squared"], 1 - np.sum(r**2) / np.sum((y - y.mean()) ** 2), rtol=1e-10)
        np.testing.assert_allclose(q["residual_std"], np.sqrt(np.sum(r**2) / (x.size - 2)), rtol=1e-10)
        np.testing.assert_allclose(q["max_relative_residual"], np.max(np.abs(r) / y), rtol=1e-10)


def _huber_reference(x, y):
    """Huber fit written independently: delta = 1.345 * 1.4826 * MAD of the OLS residuals,
    objective minimised by scipy (BFGS on standardised coordinates, then Nelder-Mead polish)."""
    (a0, b0), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)
    r = y - a0 * x - b0
    delta = 1.345 * 1.482602218505602 * np.median(np.abs(r - np.median(r)))
    sx, sy = x.std(), y.std()

    def objective(c):
        res = (y - (c[0] * sy / sx) * x - c[1] * sy) / sy
        d = delta / sy
        return np.mean(np.where(np.abs(res) <= d, 0.5 * res**2, d * (np.abs(res) - 0.5 * d)))

    c = scipy.optimize.minimize(objective, [a0 * sx / sy, b0 / sy], method="BFGS", options=dict(gtol=1e-12)).x
    c = scipy.optimize.minimize(objective, c, method="Nelder-Mead", options=dict(xatol=1e-13, fatol=1e-16)).x
    return np.array([c[0] * sy / sx, c[1] * sy]), delta


@pytest.mark.slow  # 7 s; the L2 fit is checked against numpy.linalg.lstsq by default
def test_huber_matches_an_independent_minimisation():
    columns = synthetic_columns(7, outlier_fraction=0.05)
    fit = fit_latency(columns)
    for stage in STAGE_NAMES:
        x, y = stage_xy(columns, stage)
        expected, delta = _huber_reference(x, y)
        np.testing.assert_allclose(fit.stages[stage].huber_delta, delta, rtol=1e-10)
        np.testing.assert_allclose(fit.stages[stage].estimate, expected, rtol=1e-6)
        assert fit.stages[stage].num_downweighted == np.sum(np.abs(y - expected[0] * x - expected[1]) > delta)


def test_huber_resists_gross_outliers_where_l2_does_not():
    """5 % of measurements x U(1.5, 3): Huber stays within a few (sandwich) standard
    errors of the truth, least squares is pulled many standard errors away."""
    huber_z, l2_z = [], []
    for seed in range(200, 208):
        columns = synthetic_columns(seed, outlier_fraction=0.05)
        huber = fit_latency(columns)
        l2 = fit_latency(columns, loss="l2")
        h, q = huber.latency.coefficients(), l2.latency.coefficients()
        se = huber.standard_errors
        huber_z.append([(h[k] - TRUE[k]) / se[k] for k in TRUE])
        l2_z.append([(q[k] - TRUE[k]) / se[k] for k in TRUE])
    huber_rms = np.sqrt(np.mean(np.square(huber_z), axis=0))
    l2_rms = np.sqrt(np.mean(np.square(l2_z), axis=0))
    print("\nrms error in Huber standard errors: huber", huber_rms.round(2), "l2", l2_rms.round(2))
    assert np.all(huber_rms < 2.0), huber_rms
    assert np.all(np.max(np.abs(huber_z), axis=0) < 4.0)
    # the intercepts and the attention / FFN slopes are pulled far; everything further than Huber
    assert np.all(l2_rms > 2 * huber_rms), (l2_rms, huber_rms)
    assert np.all(l2_rms[[0, 1, 2, 3, 5]] > 4.0), l2_rms


# ---------------------------------------------------------------- 3. TOML round trip
@pytest.mark.parametrize("comm_scaling", ["batch", "ratio_batch"])
def test_toml_round_trip(tmp_path, comm_scaling):
    fit = fit_latency(synthetic_columns(3, comm_scaling=comm_scaling), comm_scaling=comm_scaling)
    text = fit.to_toml()
    path = tmp_path / "x.toml"
    path.write_text(text)
    back = parse_hardware_spec(str(path))
    assert back.comm_scaling == comm_scaling
    assert back.coefficients() == fit.latency.coefficients()
    assert "60 rows" in text and "loss: huber" in text and "R^2" in text and "alpha_c in [" in text


def test_toml_header_records_file_and_defaults(tmp_path):
    columns = synthetic_columns(4)
    rows = [
        (int(t), int(b), int(r), f"{a:.4f}", f"{f:.4f}")
        for t, b, r, a, f in zip(
            *(columns[k] for k in ("attention_tokens", "batch_size", "ratio", "attention_time", "ffn_time"))
        )
    ]
    path = write_csv(
        tmp_path / "bench.csv", ["attention_tokens", "batch_size", "ratio", "attention_time", "ffn_time"], rows
    )
    with pytest.raises(ValueError, match="no comm observations"):
        fit_latency(path)
    preset = LatencyModel.from_preset("paper-910c")
    fit = fit_latency(path, defaults=preset)
    assert fit.latency.coefficients()["alpha_c"] == TRUE["alpha_c"]
    assert fit.latency.coefficients()["beta_c"] == TRUE["beta_c"]
    assert all(math.isnan(v) for v in fit.intervals["alpha_c"])
    assert any("comm: no observations" in note for note in fit.notes)
    assert "kept from defaults" in fit.format_text()
    text = fit.to_toml()
    assert "observations: bench.csv, 60 rows, sha256" in text and "comm: no observations, kept from defaults" in text
    assert str(tmp_path) not in text  # the file name only: the TOML does not depend on where it ran
    (tmp_path / "hw.toml").write_text(text)
    assert parse_hardware_spec(str(tmp_path / "hw.toml")).coefficients() == fit.latency.coefficients()
    d = fit.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["stages"]["comm"]["source"] == "defaults" and d["intervals"]["alpha_c"] is None
    with pytest.raises(ValueError, match="comm_scaling"):
        fit_latency(path, defaults=LatencyModel.from_preset("paper-910c", comm_scaling="ratio_batch"))


# ---------------------------------------------------------------- 4. validation
def test_validation_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_latency_observations(tmp_path / "nope.csv")
    header = ["attention_tokens", "batch_size", "ratio", "attention_time", "ffn_time", "comm_time"]
    good = [[1000, 32, 1, 52, 103, 21], [2000, 64, 2, 53, 110, 21.5], [3000, 128, 4, 55, 140, 23]]
    assert read_latency_observations(write_csv(tmp_path / "ok.csv", header, good), comm_scaling="batch").num_rows == 3

    p = write_csv(tmp_path / "m.csv", header[1:], [row[1:] for row in good])
    with pytest.raises(ValueError, match=r"m\.csv: no column 'attention_tokens' \(needed for attention_time\)"):
        read_latency_observations(p)
    p = write_csv(tmp_path / "t.csv", ["attention_tokens", "batch_size"], [[1, 2]])
    with pytest.raises(ValueError, match="none of the time columns"):
        read_latency_observations(p)
    for bad, message in (
        ("abc", "is not a number"),
        ("-3", "is negative"),
        ("inf", "is not finite"),
        ("nan", "is not finite"),
    ):
        rows = [list(r) for r in good]
        rows[2][4] = bad
        p = write_csv(tmp_path / "b.csv", header, rows)
        with pytest.raises(ValueError, match=rf"b\.csv: row 3, column ffn_time: '{bad}' {message}"):
            read_latency_observations(p)
    rows = [list(r) for r in good]
    rows[1][1] = 0
    with pytest.raises(ValueError, match=r"row 2, column batch_size: '0' must be > 0"):
        read_latency_observations(write_csv(tmp_path / "z.csv", header, rows))
    rows = [list(r) for r in good]
    rows[1][0] = ""
    with pytest.raises(ValueError, match="row 2, column attention_tokens: empty, but attention_time is given"):
        read_latency_observations(write_csv(tmp_path / "e.csv", header, rows))
    rows = [list(r) for r in good]
    rows[0][0] = rows[1][0] = rows[2][0] = 1000
    with pytest.raises(ValueError, match=r"column attention_time: 3 row\(s\) but only 1 distinct value"):
        read_latency_observations(write_csv(tmp_path / "d.csv", header, rows))
    # JSON Lines: null = not measured; the same checks and row numbers
    p = tmp_path / "o.jsonl"
    p.write_text(
        '{"attention_tokens": 10, "attention_time": 1.0}\n\n'
        '{"attention_tokens": 20, "attention_time": 2.0, "ffn_time": null}\n'
        '{"attention_tokens": 30, "attention_time": "x"}\n'
    )
    with pytest.raises(ValueError, match=r"o\.jsonl: row 3, column attention_time: 'x' is not a number"):
        read_latency_observations(p)
    # values that are not strings are shown as numbers; a time column left empty needs no x column
    with pytest.raises(ValueError, match=r"<arrays>: row 2, column comm_time: -1.5 is negative"):
        LatencyObservations.from_columns({"batch_size": [32, 64], "comm_time": [20.0, -1.5]})
    obs = LatencyObservations.from_columns(
        {"attention_tokens": [1, 2], "attention_time": [1.0, 2.0], "ffn_time": [None, None]}
    )
    assert np.isnan(obs.ffn_time).all()
    # fit arguments
    p = write_csv(tmp_path / "ok.csv", header, good)
    for kwargs, match in (
        (dict(loss="l1"), "loss='l1'"),
        (dict(comm_scaling="rB"), "comm_scaling='rB'"),
        (dict(n_bootstrap=5), "n_bootstrap=5"),
        (dict(defaults=3.0), "defaults=3.0"),
    ):
        with pytest.raises(ValueError, match=match):
            fit_latency(p, **kwargs)


def test_empty_cells_comments_and_default_ratio(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(
        "# a comment line\n"
        "attention_tokens,batch_size,attention_time,ffn_time,comm_time,note\n"
        "1000,32,51.6,,,warm-up\n"
        "# another\n"
        "2000,64,53.3,105.3,21.4,\n"
        ",128,,110.6,22.8,\n"
    )
    obs = read_latency_observations(p)
    np.testing.assert_array_equal(obs.ratio, [1, 1, 1])  # no ratio column: r = 1
    x, y = obs.stage_data("attention")
    np.testing.assert_array_equal(x, [1000, 2000])
    x, y = obs.stage_data("ffn")
    np.testing.assert_array_equal(x, [64, 128])
    np.testing.assert_array_equal(y, [105.3, 110.6])
    # with a ratio column, rows giving ffn_time must fill it
    p.write_text("batch_size,ratio,ffn_time\n32,1,100\n64,,105\n")
    with pytest.raises(ValueError, match="row 2, column ratio: empty, but ffn_time is given"):
        read_latency_observations(p)


def test_fewer_than_three_rows_leaves_intervals_undefined():
    fit = fit_latency(
        {"attention_tokens": [1000.0, 2000.0], "attention_time": [52.0, 53.5]},
        loss="l2",
        defaults=LatencyModel.from_preset("paper-910c"),
    )
    np.testing.assert_allclose(fit.stages["attention"].estimate, [0.0015, 50.5], rtol=1e-12)
    assert all(math.isnan(v) for v in fit.intervals["alpha_a"] + fit.sandwich_intervals["beta_a"])
    assert any("only 2 rows" in note for note in fit.notes)


# ---------------------------------------------------------------- 5. comm scalings
def test_both_comm_scalings():
    batch_data = synthetic_columns(11, comm_scaling="batch")
    ratio_data = synthetic_columns(11, comm_scaling="ratio_batch")
    right_b = fit_latency(batch_data, comm_scaling="batch", loss="l2")
    right_r = fit_latency(ratio_data, comm_scaling="ratio_batch", loss="l2")
    wrong = fit_latency(ratio_data, comm_scaling="batch", loss="l2")
    assert right_b.latency.comm_scaling == "batch" and right_r.latency.comm_scaling == "ratio_batch"
    for fit in (right_b, right_r):
        for name in ("alpha_c", "beta_c"):
            lo, hi = fit.intervals[name]
            assert lo <= TRUE[name] <= hi
        assert fit.stages["comm"].r_squared > 0.9
    assert wrong.stages["comm"].r_squared < 0.5
    # the fitted model's comm_time is the fitted line in the right x
    r, b = ratio_data["ratio"], ratio_data["batch_size"]
    np.testing.assert_allclose(np.asarray(right_r.latency.comm_time(r, b)), right_r.stages["comm"].fitted, rtol=1e-12)
    # attention and FFN do not depend on the comm scaling
    for name in ("alpha_a", "beta_a", "alpha_f", "beta_f"):
        assert right_r.latency.coefficients()[name] == wrong.latency.coefficients()[name]
    # identifiability depends on the scaling: constant B, varying r
    constant_b = {"batch_size": [64.0] * 4, "ratio": [1.0, 2.0, 4.0, 8.0], "comm_time": [22.0, 23.5, 26.0, 31.5]}
    obs = LatencyObservations.from_columns(constant_b)
    with pytest.raises(ValueError, match="distinct value"):
        obs.check_identifiable("batch")
    obs.check_identifiable("ratio_batch")


# ---------------------------------------------------------------- non-negativity
def test_negative_unconstrained_estimate_is_refitted_on_the_bound():
    rng = np.random.default_rng(5)
    x = rng.uniform(1000, 5000, 60)
    y = 0.01 * x - 8.0 + rng.normal(size=60)  # true intercept < 0: the bound is active
    columns = {"attention_tokens": x, "attention_time": y}
    defaults = LatencyModel.from_preset("paper-910c")
    with pytest.warns(LatencyFitWarning, match=r"unconstrained l2 fit has beta_a = -[0-9.]+ < 0; refitted"):
        fit = fit_latency(columns, loss="l2", defaults=defaults)
    assert fit.stages["attention"].at_bound == ("beta_a",)
    np.testing.assert_allclose(fit.stages["attention"].estimate, [np.sum(x * y) / np.sum(x * x), 0.0], rtol=1e-10)
    with pytest.warns(LatencyFitWarning, match="beta_a"):
        fit = fit_latency(columns, loss="huber", defaults=defaults)
    a, b = fit.stages["attention"].estimate
    assert b == 0.0 and fit.intervals["beta_a"][0] == 0.0
    delta = fit.stages["attention"].huber_delta

    def objective(slope):
        r = y - slope * x
        return np.sum(np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta)))

    ref = scipy.optimize.minimize_scalar(objective, bracket=(0.005, 0.01), tol=1e-12).x
    np.testing.assert_allclose(a, ref, rtol=1e-7)
    assert any("beta_a" in note for note in fit.notes) and "at the >= 0 bound" in fit.format_text()


# ---------------------------------------------------------------- helpers and outputs
def test_t_quantile_and_weighted_median():
    for dof, rtol in (
        (1, 1e-12),
        (2, 1e-12),
        (3, 1.3e-3),
        (4, 3.5e-4),
        (5, 1.2e-4),
        (10, 1e-5),
        (58, 1e-8),
        (1000, 1e-12),
    ):
        np.testing.assert_allclose(_t_quantile(0.975, dof), scipy.stats.t.ppf(0.975, dof), rtol=rtol)
    rng = np.random.default_rng(0)
    for n in (5, 6, 11):
        values = rng.normal(size=n)
        counts = rng.integers(0, 4, size=n).astype(float)
        counts[0] += 1
        expected = np.median(np.repeat(values, counts.astype(int)))
        np.testing.assert_allclose(float(_weighted_median(values, counts)), expected, rtol=1e-12)


def test_bootstrap_is_seeded():
    columns = synthetic_columns(21)
    a = fit_latency(columns, seed=1)
    b = fit_latency(columns, seed=1)
    c = fit_latency(columns, seed=2)
    assert a.bootstrap_intervals == b.bootstrap_intervals
    assert a.bootstrap_intervals != c.bootstrap_intervals
    assert a.latency.coefficients() == c.latency.coefficients()
    assert a.stages["ffn"].bootstrap_replicates.shape == (200, 2)


def test_bundled_example_is_the_documented_synthetic_process(tmp_path):
    path = DATA_DIR / "example_step_latency.csv"
    text = path.read_text()
    assert text == _example_observations_csv(seed=0)
    assert text.startswith("# SYNTHETIC")
    fit = fit_latency(path)
    assert fit.num_rows == 64 and fit.stages["comm"].num_rows == 48
    for name, truth in TRUE.items():
        lo, hi = fit.intervals[name]
        assert lo <= truth <= hi, (name, lo, truth, hi)
    d = fit.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["source"].endswith("example_step_latency.csv") and d["rows"] == 64 and d["loss"] == "huber"
    assert set(d["intervals"]) == set(TRUE) and d["interval_method"] == "bootstrap"
    out = fit.plot_residuals(tmp_path / "residuals.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError):
        fit.plot_residuals(tmp_path / "missing" / "r.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the example fits without hitting the bound
        fit_latency(path, n_bootstrap=0, loss="l2")


@pytest.mark.slow  # bootstrap chunking at several chunk sizes
def test_bootstrap_chunks_and_bound():
    """Replicates do not depend on how they are chunked (chunks whose lines are all feasible
    skip the face problems), and every replicate satisfies a, b >= 0."""
    import jax
    import jax.numpy as jnp

    from afdjax._fit._latency import _fit_replicates, _padded_size

    rng = np.random.default_rng(8)
    n = 60
    x = rng.uniform(1000, 5000, n)
    y = 0.01 * x + 0.5 + 2.0 * rng.normal(size=n)  # intercept near 0: the bound binds in some replicates
    xp, yp = np.zeros(_padded_size(n)), np.zeros(_padded_size(n))
    xp[:n], yp[:n] = x, y
    runs = [
        jax.device_get(
            _fit_replicates(
                jnp.asarray(xp), jnp.asarray(yp), n, jax.random.key(3), huber=True, n_bootstrap=200, chunk=c
            )
        )
        for c in (201, 16)
    ]
    np.testing.assert_allclose(runs[0]["estimate"], runs[1]["estimate"], rtol=1e-9, atol=1e-12)
    estimate, free = runs[0]["estimate"], runs[0]["unconstrained"]
    assert estimate.shape == (201, 2) and np.all(estimate >= 0)
    feasible = np.all(free >= 0, axis=1)
    assert 0.05 < np.mean(~feasible) < 0.95, np.mean(~feasible)
    np.testing.assert_array_equal(estimate[feasible], free[feasible])
    assert np.all(estimate[~feasible, 1] == 0)  # a negative intercept: refitted through the origin
