"""Tests of afdjax.LatencyModel: preset values, stage times, validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import afdjax
from afdjax import LatencyModel

PAPER = dict(alpha_a=0.00165, beta_a=50.0, alpha_f=0.083, beta_f=100.0, alpha_c=0.022, beta_c=20.0)
NAMES = ("alpha_a", "beta_a", "alpha_f", "beta_f", "alpha_c", "beta_c")
COEF = dict(alpha_a=0.5, beta_a=3.0, alpha_f=0.25, beta_f=7.0, alpha_c=0.125, beta_c=2.0)


def test_paper_preset_values(paper_latency):
    # arXiv 2601.21351 section 4 (DeepSeek-V3 on Ascend 910C).
    assert afdjax.PRESETS["paper-910c"] == PAPER
    for name, value in PAPER.items():
        assert float(getattr(paper_latency, name)) == value
    assert paper_latency.comm_scaling == "batch"
    assert paper_latency.coefficients() == PAPER
    assert all(type(v) is float for v in paper_latency.coefficients().values())


def test_from_preset_comm_scaling_override():
    lat = LatencyModel.from_preset("paper-910c", comm_scaling="ratio_batch")
    assert lat.comm_scaling == "ratio_batch"
    assert lat.coefficients() == PAPER


@pytest.mark.parametrize("comm_scaling", ["batch", "ratio_batch"])
def test_stage_times(comm_scaling):
    lat = LatencyModel(**COEF, comm_scaling=comm_scaling)
    # attention: alpha_a T + beta_a (scalar and array)
    assert float(lat.attention_time(1000.0)) == 0.5 * 1000 + 3.0
    np.testing.assert_array_equal(np.asarray(lat.attention_time(jnp.array([0.0, 2.0, 8.0]))), [3.0, 4.0, 7.0])
    for r, B in [(1, 16), (3, 64), (7, 256)]:
        assert float(lat.ffn_time(r, B)) == 0.25 * r * B + 7.0
        tokens = B if comm_scaling == "batch" else r * B
        assert float(lat.comm_time(r, B)) == 0.125 * tokens + 2.0
    # real (continuous) ratio, vectorised over ratios
    ratios = jnp.array([1.0, 2.5, 4.0])
    np.testing.assert_allclose(np.asarray(lat.ffn_time(ratios, 8)), 0.25 * np.array([1, 2.5, 4]) * 8 + 7.0, rtol=1e-15)
    comm = np.asarray(lat.comm_time(ratios, 8))
    assert comm.shape == (3,)  # broadcasts like the ratio in both scalings
    expected = 0.125 * (8 if comm_scaling == "batch" else np.array([1, 2.5, 4]) * 8) + 2.0
    np.testing.assert_allclose(comm, expected, rtol=1e-15)


def test_paper_times(paper_latency):
    # B = 256, mu_p + mu_d = 600: t_A = 0.00165 * 256 * 600 + 50 = 303.44
    assert float(paper_latency.attention_time(256 * 600)) == pytest.approx(303.44, rel=1e-14)
    assert float(paper_latency.ffn_time(9, 256)) == pytest.approx(0.083 * 9 * 256 + 100, rel=1e-14)
    assert float(paper_latency.comm_time(32, 256)) == pytest.approx(0.022 * 256 + 20, rel=1e-14)


def test_stage_times_differentiable():
    lat = LatencyModel(**COEF, comm_scaling="ratio_batch")
    assert float(jax.grad(lambda r: lat.ffn_time(r, 16))(2.0)) == 0.25 * 16
    assert float(jax.grad(lambda r: lat.comm_time(r, 16))(2.0)) == 0.125 * 16
    g = jax.grad(lambda m: m.attention_time(100.0))(lat)
    assert float(g.alpha_a) == 100.0 and float(g.beta_a) == 1.0


def test_unknown_preset_lists_available():
    with pytest.raises(ValueError) as err:
        LatencyModel.from_preset("h100-imaginary")
    msg = str(err.value)
    assert "h100-imaginary" in msg
    for name in afdjax.PRESETS:
        assert name in msg


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [-1e-3, math.nan, math.inf])
def test_bad_coefficient_names_it(name, bad):
    with pytest.raises(ValueError, match=name):
        LatencyModel(**dict(COEF, **{name: bad}))


def test_zero_coefficients_allowed():
    lat = LatencyModel(**dict({n: 0.0 for n in NAMES}, beta_c=1.0))  # all six zero: refused
    assert float(lat.attention_time(10.0)) == 0.0


@pytest.mark.parametrize("bad", ["rB", "", "Batch"])
def test_bad_comm_scaling(bad):
    with pytest.raises(ValueError, match="comm_scaling"):
        LatencyModel(**COEF, comm_scaling=bad)
    with pytest.raises(ValueError, match="comm_scaling"):
        LatencyModel.from_preset("paper-910c", comm_scaling=bad)


def test_array_coefficients_are_checked_element_by_element():
    """Like a workload's parameters: a batch of coefficients is checked where it is concrete."""
    lat = LatencyModel(**dict(COEF, alpha_a=np.array([0.5, 0.0, 2.0])))
    assert np.asarray(lat.alpha_a).shape == (3,)
    with pytest.raises(ValueError, match=r"alpha_a=.* is invalid: expected a finite number >= 0"):
        LatencyModel(**dict(COEF, alpha_a=np.array([0.5, -1.0])))
    with pytest.raises(ValueError, match="beta_f=nan is invalid"):
        LatencyModel(**dict(COEF, beta_f=math.nan))
    # traced coefficients are not checked here (nothing concrete to check)
    out = jax.jit(lambda a: LatencyModel(**dict(COEF, alpha_a=a)).attention_time(2.0))(jnp.asarray(-1.0))
    assert float(out) == -2.0 + COEF["beta_a"]
