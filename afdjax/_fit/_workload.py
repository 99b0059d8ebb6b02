"""Maximum-likelihood fits of request-length distributions, and the load they imply.

A request trace gives pairs ``(P_j, D_j)``: prefill tokens ``P >= 0`` and decode steps
``D >= 1`` (one output token per step, see :func:`afdjax.load_trace`). This module fits
parametric families to each margin, scores them (log-likelihood, AIC, BIC,
Kolmogorov-Smirnov distance) and compares the stationary per-slot load ``theta`` of the
fitted model with the trace's own plug-in value (arXiv 2601.21351 section 2).

Decode families (support ``{1, 2, ...}``)
-----------------------------------------
* ``geometric`` -- ``P(D=d) = p (1-p)^(d-1)``, the paper's v1 model (``mu_D = (1-p)/p``
  is the stationary mean decode index, one less than ``E[D] = 1/p``).
* ``negative_binomial`` -- ``D = 1 + K`` with ``K ~ NB(n, p)`` failures before the
  ``n``-th success (``n > 0`` real; ``n = 1`` is the geometric).
* ``lognormal`` -- discretised: ``D = ceil(X)``, ``X ~ LogNormal(mu, sigma)``, so
  ``P(D=d) = F(d) - F(d-1)`` for ``d >= 2`` and ``P(D=1) = F(1)``.
* ``geometric_mixture`` -- ``weight * Geometric(p1) + (1 - weight) * Geometric(p2)``
  with the label fixed by ``p1 >= p2`` (component 1 is the short one).

Prefill families (continuous)
-----------------------------
Token counts are treated as continuous. Because a prompt may be empty (``P = 0``) and
the lognormal and gamma densities need a positive argument, every prefill family models
``X = P + prefill_shift`` (default ``prefill_shift = 1`` token) and the reported
distribution of ``P`` is that of ``X - prefill_shift``: ``E[P] = E[X] - shift``,
``Var P = Var X``. The parameters reported are those of ``X``. With
``prefill_shift = 0`` the families model ``P`` itself (then ``P`` must be ``> 0``). The
shift moves mass ``F_X(shift)`` below ``P = 0``; for prompts of hundreds of tokens it
is negligible.

* ``exponential`` -- ``X ~ Exp(mean = scale)`` (the 1-parameter special case of gamma),
* ``gamma`` -- ``X ~ Gamma(shape, scale)``,
* ``lognormal`` -- ``X ~ LogNormal(mu, sigma)``.

Estimation
----------
Closed-form MLEs are used where they exist (geometric ``p = 1 / mean(D)``, exponential
``scale = mean(X)``, lognormal prefill ``mu, sigma`` = mean and population standard
deviation of ``log X``). The other families minimise the mean negative log-likelihood
with the fitters' one L-BFGS loop (``optax.lbfgs``, zoom line search,
:func:`afdjax._fit._lbfgs.lbfgs_minimise`) under ``jax.jit`` over an unconstrained
parametrisation (logits for probabilities and weights, logs for positive parameters),
from moment-matched starting values (the mixture also from a split at the median; the
better optimum wins). The data enter as distinct values with counts, zero-padded so that
data of similar size share one compilation.

Uncertainty: the observed Fisher information is ``jax.hessian`` of the total negative
log-likelihood with respect to the unconstrained parameters ``u`` at the optimum;
``Cov(u) = H^-1`` and the natural parameters get ``Cov = J Cov(u) J^T`` (delta method,
``J = d natural / d u``). Standard errors and the symmetric Wald intervals
``estimate +- 1.96 se`` are reported **for the natural parameters** (``p``, ``n``,
``mu``, ``sigma``, ...). Where the Hessian is not positive definite (e.g. a mixture
whose components coincide) they are NaN.

Run with ``jax.config.update("jax_enable_x64", True)``: in float32 the fits run, but
the gradient tolerance is 1e-4 instead of 1e-9, some optimised fits stop at the
iteration limit (``converged`` is then False) and the Hessians are noisy.

Each family compiles once per padded data length (4096, 16384, ... distinct values), a
second or two on a CPU; later fits of that family reuse the compilation.

Load implied by a fit
---------------------
The stationary slot is length-biased (arXiv 2601.21351 section 2): a slot holds request ``j``
with probability proportional to ``D_j``, at an index uniform in ``[0, D_j)``. With ``P``
independent of ``D`` this gives

    theta = E[P] + E[D (D - 1)] / (2 E[D]),
    sigma^2 = (E[D] E[P^2] + E[P] E[D (D-1)] + E[D (D-1)(2D-1)] / 6) / E[D] - theta^2.

The second term of ``theta`` is the stationary mean decode index (``(1-p)/p`` for the
geometric). It is compared with the trace's paired plug-in
``theta_np = sum(D P + D (D-1)/2) / sum(D)`` (which keeps any P-D correlation) and with
``theta_independent_np = mean(P) + sum(D (D-1)/2) / sum(D)`` (the plug-in after
breaking the pairing): ``theta_independent_np - theta_np`` is the part of a gap that no
fit of the two margins can close, ``theta_fit - theta_independent_np`` the part due to
the fitted families (``WorkloadFit.theta_gap_parts`` splits it into the prefill mean
and the decode index). Both family terms are tail-sensitive: ``E[D(D-1)]/(2E[D])``
weighs a request by ``D^2``, so a trace whose longest requests carry most of
``sum D(D-1)/2`` (``plugin["decode_top1_share"]``), or a trace capped at a maximum
length that a fitted family extrapolates beyond (``FamilyFit.truncated_load_term``),
can give a ``theta_fit`` off by a few percent even from the family with the best AIC.

The families are model inputs (:mod:`afdjax._workload._decode`,
:mod:`afdjax._workload._prefill`); :meth:`WorkloadFit.to_workload` turns a fitted pair into
a :class:`~afdjax.FittedWorkload` that ``simulate``, the closed forms, ``provision`` and
``sweep`` accept. That workload draws ``P`` and ``D`` independently: the P-D correlation
of the trace (kept by :class:`~afdjax.Empirical`) is not in it.

Module layout: the fitting engine is :mod:`afdjax._fit._workload_engine`, the text report
:mod:`afdjax._fit._workload_text`.

Usage::

    fit = fit_trace("azure-conv")                  # or fit_workload(prefill, decode)
    print(fit.format_text())
    fit.best_decode, fit.theta_fit, fit.theta_np   # 'lognormal', 1384.4, 1226.5
    fit.decode["geometric"].ci95["p"]              # (0.00467, 0.00480)
    workload = fit.to_workload()                   # best families by AIC, simulatable
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from .._data import read_trace
from .._json import jsonable
from .._validate import check_int
from .._workload import (  # the families, for callers that import them from here
    LOGNORMAL_SUM_TERMS,
    DecodeDistribution,
    ExponentialPrefill,
    FittedWorkload,
    GammaPrefill,
    GeometricDecode,
    GeometricMixtureDecode,
    LogNormalDecode,
    LogNormalPrefill,
    NegativeBinomialDecode,
    PrefillDistribution,
    independent_load_moments,
)
from ._workload_engine import (
    DECODE_CLASSES,
    DECODE_FIT_FAMILIES,
    PREFILL_CLASSES,
    PREFILL_FIT_FAMILIES,
    Z95,
    FamilyFit,
    _check_decode,
    _check_families,
    _check_family,
    _check_max_iter,
    _check_prefill,
    _check_shift,
    _fit_family,
    fit_decode,
    fit_prefill,
)

__all__ = [
    "DECODE_CLASSES",
    "DECODE_FIT_FAMILIES",
    "LOGNORMAL_SUM_TERMS",
    "PREFILL_CLASSES",
    "PREFILL_FIT_FAMILIES",
    "Z95",
    "DecodeDistribution",
    "ExponentialPrefill",
    "FamilyFit",
    "GammaPrefill",
    "GeometricDecode",
    "GeometricMixtureDecode",
    "LogNormalDecode",
    "LogNormalPrefill",
    "NegativeBinomialDecode",
    "PrefillDistribution",
    "WorkloadFit",
    "fit_decode",
    "fit_prefill",
    "fit_trace",
    "fit_workload",
    "model_slot_variance",
    "model_theta",
]


# ============================================================================ load
def model_theta(decode_model: DecodeDistribution, prefill_model: PrefillDistribution) -> jax.Array:
    """``theta = E[P] + E[D (D-1)] / (2 E[D])`` (tokens) for ``P`` independent of ``D``.

    Pure JAX (differentiable in both models' parameters).
    """
    return prefill_model.mean() + decode_model.stationary_mean_index()


def _slot_variance(decode_moments, mean_p, second_p):
    return independent_load_moments(mean_p, second_p, decode_moments)[1]


def model_slot_variance(decode_model: DecodeDistribution, prefill_model: PrefillDistribution) -> jax.Array:
    """Stationary per-slot load variance (tokens^2) for ``P`` independent of ``D``.

    ``(E[D] E[P^2] + E[P] E[D(D-1)] + E[D(D-1)(2D-1)]/6) / E[D] - theta^2`` (arXiv 2601.21351
    section 2 with the expectations factorised). Pure JAX.
    """
    return _slot_variance(decode_model.raw_moments(), prefill_model.mean(), prefill_model.second_moment())


def _plugin(prefill: np.ndarray, decode: np.ndarray) -> dict:
    """Nonparametric plug-ins (float64): paired and with the P-D pairing broken."""
    p, d = prefill.astype(np.float64), decode.astype(np.float64)
    sum_d = d.sum()
    pairs = d * (d - 1) / 2
    theta = np.sum(d * p + pairs) / sum_d
    second = np.sum(d * p**2 + p * d * (d - 1) + d * (d - 1) * (2 * d - 1) / 6) / sum_d
    index = np.sum(pairs) / sum_d
    mean_p = p.mean()
    theta_ind = mean_p + index
    var_ind = _slot_variance((d.mean(), np.mean(d**2), np.mean(d**3)), mean_p, np.mean(p**2))
    top = max(1, math.ceil(0.01 * d.size))
    top_share = np.sort(pairs)[-top:].sum() / pairs.sum() if pairs.sum() > 0 else float("nan")
    return {
        "theta_np": float(theta),
        "slot_variance_np": float(second - theta**2),
        "theta_independent_np": float(theta_ind),
        "slot_variance_independent_np": float(var_ind),
        "mean_prefill_np": float(mean_p),
        "mean_decode_np": float(d.mean()),
        "stationary_mean_index_np": float(index),
        "correlation_pd": float(np.corrcoef(p, d)[0, 1]) if p.std() > 0 and d.std() > 0 else float("nan"),
        "max_decode": float(d.max()),
        "max_prefill": float(p.max()),
        "decode_top1_share": float(top_share),
    }


@dataclasses.dataclass(frozen=True)
class WorkloadFit:
    """Fits of both margins of a trace and the stationary load they imply (tokens).

    Attributes:
        decode: ``{family: FamilyFit}`` of the decode lengths.
        prefill: ``{family: FamilyFit}`` of the prefill lengths.
        best_decode: the lowest-AIC decode family.
        best_prefill: the lowest-AIC prefill family.
        theta_fit: ``theta`` of the best pair, ``P`` independent of ``D`` (tokens).
        theta_fit_stderr: its delta-method standard error (the margins fitted independently).
        slot_variance_fit: the slot variance of the best pair (tokens^2).
        theta_np: the paired plug-in ``theta`` of the trace (keeps the P-D correlation).
        slot_variance_np: the paired plug-in slot variance.
        theta_independent_np: the plug-in ``theta`` with the pairing broken.
        slot_variance_independent_np: the plug-in slot variance with the pairing broken.
        plugin: trace summaries: means, ``stationary_mean_index_np``, ``correlation_pd``,
            ``max_decode``, ``max_prefill``, ``decode_top1_share`` (share of ``sum D(D-1)/2``
            held by the 1 % longest requests).
        prefill_shift: the shift of the prefill families (tokens).
        num_requests: rows fitted.
        source: the trace's label.

    The relative gap ``theta_relative_gap = theta_fit / theta_np - 1`` splits exactly
    (see ``theta_gap_parts``) into the P-D correlation, the prefill family's mean
    and the decode family's stationary mean index.
    """

    decode: dict
    prefill: dict
    best_decode: str
    best_prefill: str
    theta_fit: float
    theta_fit_stderr: float
    slot_variance_fit: float
    theta_np: float
    slot_variance_np: float
    theta_independent_np: float
    slot_variance_independent_np: float
    plugin: dict
    prefill_shift: float
    num_requests: int
    source: str | None = None

    @property
    def theta_relative_gap(self) -> float:
        """``theta_fit / theta_np - 1``."""
        return self.theta_fit / self.theta_np - 1

    @property
    def correlation_relative_gap(self) -> float:
        """``theta_independent_np / theta_np - 1``: the P-D correlation, which no fit of the margins reproduces."""
        return self.theta_independent_np / self.theta_np - 1

    @property
    def fit_relative_gap(self) -> float:
        """``theta_fit / theta_independent_np - 1``: what the fitted families add."""
        return self.theta_fit / self.theta_independent_np - 1

    @property
    def theta_gap_parts(self) -> dict:
        """``theta_fit - theta_np`` (tokens) as the exact sum of three parts.

        ``correlation = theta_independent_np - theta_np``,
        ``prefill_family = E_fit[P] - mean(P)``,
        ``decode_family = E_fit[D(D-1)]/(2 E_fit[D]) - sum D(D-1)/2 / sum D``.
        """
        return {
            "correlation": self.theta_independent_np - self.theta_np,
            "prefill_family": self.prefill[self.best_prefill].mean - self.plugin["mean_prefill_np"],
            "decode_family": self.decode[self.best_decode].load_term - self.plugin["stationary_mean_index_np"],
        }

    def theta_for(self, decode_family: str, prefill_family: str) -> float:
        """``theta`` (tokens) of any fitted pair, ``P`` independent of ``D``."""
        d = self.decode[_check_family("decode_family", decode_family, tuple(self.decode))]
        p = self.prefill[_check_family("prefill_family", prefill_family, tuple(self.prefill))]
        return p.mean + d.load_term

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (non-finite numbers become None)."""
        return jsonable(
            {
                "source": self.source,
                "num_requests": self.num_requests,
                "prefill_shift": self.prefill_shift,
                "best_decode": self.best_decode,
                "best_prefill": self.best_prefill,
                "decode": {k: v.to_dict() for k, v in self.decode.items()},
                "prefill": {k: v.to_dict() for k, v in self.prefill.items()},
                "theta_fit": self.theta_fit,
                "theta_fit_stderr": self.theta_fit_stderr,
                "slot_variance_fit": self.slot_variance_fit,
                "theta_np": self.theta_np,
                "slot_variance_np": self.slot_variance_np,
                "theta_independent_np": self.theta_independent_np,
                "slot_variance_independent_np": self.slot_variance_independent_np,
                "theta_relative_gap": self.theta_relative_gap,
                "correlation_relative_gap": self.correlation_relative_gap,
                "fit_relative_gap": self.fit_relative_gap,
                "theta_gap_parts": self.theta_gap_parts,
                "theta_by_pair": {f"{d}+{p}": self.theta_for(d, p) for d in self.decode for p in self.prefill},
                "plugin": self.plugin,
            }
        )

    def to_workload(self, decode_family: str | None = None, prefill_family: str | None = None) -> FittedWorkload:
        """The fitted pair as a simulatable [`FittedWorkload`][afdjax.FittedWorkload].

        **Arguments:** ``decode_family``, ``prefill_family``: fitted family names (default:
        ``best_decode`` and ``best_prefill``, the lowest AIC of each margin).

        ``theta()`` of the result is ``theta_for`` of the pair (the families' closed
        form). ``P`` and ``D`` are drawn independently: the trace's P-D correlation (see
        ``correlation_relative_gap``), which [`Empirical`][afdjax.Empirical] keeps, is
        ignored.
        """
        d = self.best_decode if decode_family is None else decode_family
        p = self.best_prefill if prefill_family is None else prefill_family
        d = _check_family("decode_family", d, tuple(self.decode))
        p = _check_family("prefill_family", p, tuple(self.prefill))
        return FittedWorkload(self.decode[d].model, self.prefill[p].model)

    def format_text(self) -> str:
        """A readable report: a table per margin, then the load comparison."""
        from ._workload_text import format_workload_fit

        return format_workload_fit(self)


def fit_workload(
    prefill,
    decode,
    decode_families=DECODE_FIT_FAMILIES,
    prefill_families=PREFILL_FIT_FAMILIES,
    *,
    prefill_shift: float = 1.0,
    source: str | None = None,
    max_iter: int = 500,
) -> WorkloadFit:
    """Fit decode and prefill length families to a trace and compare the load they imply.

    Arguments:
        prefill: shape ``(n,)``, prompt tokens per request, ``>= 0``.
        decode: shape ``(n,)``, integer decode steps per request, ``>= 1``.
        decode_families: names from [`DECODE_FIT_FAMILIES`][afdjax.DECODE_FIT_FAMILIES] (default: all).
        prefill_families: names from [`PREFILL_FIT_FAMILIES`][afdjax.PREFILL_FIT_FAMILIES] (default: all).
        prefill_shift: the prefill families model ``P + prefill_shift`` (tokens).
        source: a label for reports (e.g. the trace name).
        max_iter: L-BFGS iteration limit per family.

    Returns:
        a [`WorkloadFit`][afdjax.WorkloadFit]. The best pair (lowest AIC per margin) gives
        ``theta_fit``, compared with the trace plug-ins ``theta_np`` and
        ``theta_independent_np``.
    """
    decode_families = _check_families("decode_families", decode_families, DECODE_FIT_FAMILIES)
    prefill_families = _check_families("prefill_families", prefill_families, PREFILL_FIT_FAMILIES)
    shift = _check_shift(prefill_shift)
    max_iter = _check_max_iter(max_iter)
    p = _check_prefill(prefill, shift)
    d = _check_decode(decode)
    if p.shape != d.shape:
        raise ValueError(f"prefill and decode must have equal lengths; got {p.size} and {d.size}")
    decode_fits = {f: _fit_family("decode", DECODE_CLASSES[f], d, 0.0, True, max_iter) for f in decode_families}
    prefill_fits = {
        f: _fit_family("prefill", PREFILL_CLASSES[f], p + shift, shift, True, max_iter) for f in prefill_families
    }

    def aic(fit: FamilyFit) -> float:  # a failed fit (NaN) never wins
        return fit.aic if math.isfinite(fit.aic) else math.inf

    best_d = min(decode_fits, key=lambda f: aic(decode_fits[f]))
    best_p = min(prefill_fits, key=lambda f: aic(prefill_fits[f]))
    fd, fp = decode_fits[best_d], prefill_fits[best_p]
    var = (
        fd.load_term_grad @ fd.unconstrained_covariance @ fd.load_term_grad
        + fp.load_term_grad @ fp.unconstrained_covariance @ fp.load_term_grad
    )
    plugin = _plugin(p, d)
    return WorkloadFit(
        decode=decode_fits,
        prefill=prefill_fits,
        best_decode=best_d,
        best_prefill=best_p,
        theta_fit=fp.mean + fd.load_term,
        theta_fit_stderr=float(math.sqrt(var)) if var >= 0 else float("nan"),
        slot_variance_fit=float(_slot_variance(fd.moments, fp.moments[0], fp.moments[1])),
        theta_np=plugin["theta_np"],
        slot_variance_np=plugin["slot_variance_np"],
        theta_independent_np=plugin["theta_independent_np"],
        slot_variance_independent_np=plugin["slot_variance_independent_np"],
        plugin=plugin,
        prefill_shift=shift,
        num_requests=int(d.size),
        source=source,
    )


def fit_trace(
    path_or_name,
    *,
    prefill_column: str | None = None,
    decode_column: str | None = None,
    tokens_per_step: int = 1,
    **kwargs,
) -> WorkloadFit:
    """[`fit_workload`][afdjax.fit_workload] on a trace file or a bundled trace name (``azure-conv``, ...).

    Columns are read with [`read_trace`][afdjax.read_trace]; a request of ``n`` output tokens
    holds its slot for ``ceil(n / tokens_per_step)`` steps (as in
    [`load_trace`][afdjax.load_trace]). Other keyword arguments go to [`fit_workload`][afdjax.fit_workload];
    ``source`` defaults to ``path_or_name``.

    Arguments:
        path_or_name: a CSV / JSON Lines trace or a bundled name ([`BUNDLED_TRACES`][afdjax.BUNDLED_TRACES]).
        prefill_column: the prompt-token column (default: the Azure or Mooncake name).
        decode_column: the output-token column (default: the Azure or Mooncake name).
        tokens_per_step: output tokens per decode step (default 1).
        **kwargs: keyword arguments of [`fit_workload`][afdjax.fit_workload].

    Returns:
        a [`WorkloadFit`][afdjax.WorkloadFit].
    """
    tokens_per_step = check_int("tokens_per_step", tokens_per_step, 1)
    prefill, output = read_trace(path_or_name, prefill_column, decode_column)
    decode = np.ceil(output / int(tokens_per_step))
    kwargs.setdefault("source", os.fspath(path_or_name))
    return fit_workload(prefill, decode, **kwargs)
