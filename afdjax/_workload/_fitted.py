"""A workload of one decode family and one prefill family, independent of each other.

[`to_workload`][afdjax.WorkloadFit.to_workload] builds one from a trace's fits, so the fitted
distributions can be simulated and fed to the closed forms, ``provision`` and ``sweep``.

**The P-D correlation is dropped.** ``P`` and ``D`` are drawn independently, while a
trace (and [`Empirical`][afdjax.Empirical], which resamples its rows whole) may pair long
prompts with long or short outputs. ``theta`` then differs from the trace's paired
plug-in by the correlation term that ``WorkloadFit.correlation_relative_gap`` reports.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from .._random import uniform_open as _uniform_open
from ._base import Workload, show_float
from ._decode import MAX_TABLE_TRUNCATION, DecodeDistribution, GeometricDecode, GeometricMixtureDecode
from ._prefill import PrefillDistribution


def _family_text(model) -> str:
    params = ",".join(f"{name}={show_float(getattr(model, name))}" for name in model.param_names)
    shift = getattr(model, "shift", None)
    if shift is not None:
        params += f",shift={show_float(shift)}"
    return f"{model.family}({params})"


class FittedWorkload(Workload):
    """Requests with ``D ~ decode`` and ``P ~ prefill`` drawn independently.

    Arguments:
        decode: a decode family (``GeometricDecode``, ``NegativeBinomialDecode``,
            ``LogNormalDecode``, ``GeometricMixtureDecode``), steps ``>= 1``.
        prefill: a prefill family (``ExponentialPrefill``, ``GammaPrefill``,
            ``LogNormalPrefill``), tokens ``P = X - shift``.

    ``theta`` and ``slot_variance`` are exact (``independent_load_moments`` from the
    decode raw moments and the prefill mean and variance; the discretised lognormal's
    moments are sums over 65,536 steps plus an analytic tail, see ``LogNormalDecode``).
    Sampling is described in ``afdjax._workload._decode`` and
    ``afdjax._workload._prefill``: exact for the geometric and its mixture, and for the
    lognormal's fresh draws; an inverse-CDF table of 65,536 steps otherwise, whose
    truncated mass must be below ``MAX_TABLE_TRUNCATION`` (checked when the parameters
    are concrete).

    The two lengths are independent: the P-D correlation of a trace, which
    [`Empirical`][afdjax.Empirical] keeps, is ignored.

    The family parameters are array leaves (pathwise gradients for the prefill, score
    function for the decode steps, as for [`Geometric`][afdjax.Geometric]).
    """

    decode: DecodeDistribution
    prefill: PrefillDistribution

    def __check_init__(self):
        if not isinstance(self.decode, DecodeDistribution):
            raise ValueError(
                f"decode={self.decode!r} is invalid: expected a decode family such as GeometricDecode or "
                "LogNormalDecode"
            )
        if not isinstance(self.prefill, PrefillDistribution):
            raise ValueError(
                f"prefill={self.prefill!r} is invalid: expected a prefill family such as GammaPrefill or "
                "LogNormalPrefill"
            )
        if isinstance(self.decode, (GeometricDecode, GeometricMixtureDecode)):
            return
        try:
            truncated = float(self.decode.table_truncation(size_biased=True))
        except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
            return  # traced parameters: checked where concrete
        if not (math.isfinite(truncated) and truncated <= MAX_TABLE_TRUNCATION):
            raise ValueError(
                f"decode={_family_text(self.decode)} is invalid: its stationary (length-biased) law puts "
                f"{truncated:.3g} of its mass beyond 65536 steps, the sampling table; expected at most "
                f"{MAX_TABLE_TRUNCATION:g} (a lighter tail, or a shorter mean)"
            )

    def describe(self) -> str:
        return f"fitted:decode={_family_text(self.decode)},prefill={_family_text(self.prefill)}"

    def _fresh(self, bits_d, bits_p):
        return self.prefill._sample(_uniform_open(bits_p)), self.decode._sample(_uniform_open(bits_d))

    def _stationary(self, bits):
        decode, index = self.decode._sample_stationary(bits[0], bits[1], bits[3])
        return self.prefill._sample(_uniform_open(bits[2])), decode, index

    def _decode_log_prob(self, decode):
        return self.decode.log_pmf(decode)

    def _stationary_log_prob(self, decode, index):
        return self.decode._stationary_log_prob(decode)

    def _decode_jump_weight(self, decode):
        return self.decode._jump_weight(decode)

    def _stationary_jump_weights(self, bits, decode, index):
        return self.decode._stationary_jump_weights(bits[0], bits[1], bits[3], decode, index)

    def _decode_log_mgf_neg(self, t):
        return np.asarray(self.decode._log_mgf_neg(t), dtype=np.float64)

    def _moments(self):
        return self._independent_moments(self.prefill.mean(), self.prefill.variance(), self.decode.raw_moments())

    def theta(self):
        return self._moments()[0]

    def slot_variance(self):
        return self._moments()[1]

    def mean_decode_steps(self):
        return self.decode.mean()
