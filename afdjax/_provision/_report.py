"""``provision``: the three answers to "which r?" (mean field, barrier, Monte Carlo), side by side.

Host-side assembly around the pure functions of ``_theory`` and ``_engine``; the
numbers are computed by those, this module compares them (paired comparisons:
``_compare``). The report's text is in ``_text``, its figure in ``_plots``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from .._engine import simulate
from .._engine._config import MAX_RATIO
from .._json import jsonable
from .._latency import LatencyModel
from .._step import as_step_model
from .._theory import mean_field_optimum
from .._validate import invalid
from .._workload import Workload
from ._compare import (
    check_ratio_list,
    paired_difference,
    range_warnings,
    ratios_within_2_stderr,
    replica_warnings,
)


def default_ratio_range(workload: Workload, latency: LatencyModel, batch_size: int) -> list[int]:
    """``1..max(32, ceil(1.5 r*))``: wide enough to show the optimum and the fall beyond it
    (at most ``1..MAX_RATIO``, afdjax's largest ratio, 4096).

    Arguments:
        workload: the [`Workload`][afdjax.Workload].
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units).
        batch_size: slots ``B`` per Attention instance.

    Returns:
        the list of integer ratios ``[1, 2, ..., max(32, ceil(1.5 r*))]``.

    Examples:
        >>> workload = afdjax.Geometric(mu_p=100.0, mu_d=500.0)
        >>> latency = afdjax.LatencyModel.from_preset("paper-910c")
        >>> afdjax.default_ratio_range(workload, latency, 256)[-1]  # max(32, ceil(1.5 r*))
        32
    """
    r_star = float(mean_field_optimum(workload, latency, batch_size).r_star)
    top = 32 if not math.isfinite(r_star) else max(32, math.ceil(1.5 * r_star))
    return list(range(1, min(top, MAX_RATIO) + 1))


def _crossing(ratios: np.ndarray, a: np.ndarray, f: np.ndarray) -> float | None:
    """First r (linear interpolation) where attention idle rises to meet FFN idle."""
    d = a - f
    for i in range(1, len(ratios)):
        if d[i - 1] < 0 <= d[i]:
            t = -d[i - 1] / (d[i] - d[i - 1])
            return float(ratios[i - 1] + t * (ratios[i] - ratios[i - 1]))
    return None


@dataclasses.dataclass
class ProvisionReport:
    """Everything ``afdjax provision`` prints. Throughputs are tokens per time unit per instance.

    Attributes:
        settings: the inputs (workload, hardware, batch size, ratios, steps, replicas, seed, ...).
        theta: stationary mean KV tokens per slot (tokens).
        slot_variance: their variance (tokens^2).
        mean_field: ``r_star``, ``regime``, ``r_attention``, ``r_communication``, ``r_peak`` and the
            integer ``ratio`` of the mean field.
        barrier: the barrier-refined optimum (``ratio``, ``r_continuous``, ``throughput``).
        simulated: the simulated best ratio, its throughput, paired comparisons with its
            neighbours and the ratios within 2 standard errors.
        table: one row per ratio: ``ratio``, ``mean_field``, ``barrier``, ``simulated``,
            ``stderr``, relative errors and idle fractions.
        errors: the worst relative error of each model and the throughput lost by following it.
        idle_crossing: the ratio where the Attention and FFN idle fractions cross (``None``: none).
    """

    settings: dict
    theta: float
    slot_variance: float
    mean_field: dict
    barrier: dict
    simulated: dict
    table: list[dict]
    errors: dict
    idle_crossing: float | None
    warnings: list[str] = dataclasses.field(default_factory=list)
    """Sentences on what limits the answer: an optimum at the edge of the ratios
    simulated (or beyond them), no standard errors with one replica."""

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (non-finite numbers become None), with ``warnings``
        when there are any (``afdjax provision --json`` also prints them on stderr)."""

        out = jsonable(
            {
                "theta": self.theta,
                "slot_variance": self.slot_variance,
                "slot_std": math.sqrt(max(self.slot_variance, 0.0)),
                "r_star": self.mean_field["r_star"],
                "regime": self.mean_field["regime"],
                "r_attention": self.mean_field["r_attention"],
                "r_communication": self.mean_field["r_communication"],
                "r_peak": self.mean_field["r_peak"],
                "ratio_mean_field": self.mean_field["ratio"],
                "ratio_barrier": self.barrier["ratio"],
                "r_barrier_continuous": self.barrier["r_continuous"],
                "ratio_simulated": self.simulated["ratio"],
                "simulated": self.simulated,
                "idle_crossing": self.idle_crossing,
                "errors": self.errors,
                "table": self.table,
                "settings": self.settings,
            }
        )
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    # ------------------------------------------------------------------ typed views
    @property
    def ratio_simulated(self) -> int:
        """The simulated best ratio (``simulated["ratio"]``)."""
        return self.simulated["ratio"]

    @property
    def ratio_mean_field(self) -> int:
        """The mean-field integer recommendation (``mean_field["ratio"]``)."""
        return self.mean_field["ratio"]

    @property
    def ratio_barrier(self) -> int:
        """The barrier model's integer recommendation (``barrier["ratio"]``)."""
        return self.barrier["ratio"]

    @property
    def r_star(self) -> float:
        """The paper's continuous mean-field optimum r* (``mean_field["r_star"]``)."""
        return self.mean_field["r_star"]

    @property
    def ratios_within_2_stderr(self) -> list[int]:
        """Ratios within 2 paired standard errors of the simulated best (``simulated["within_2_stderr"]``)."""
        return self.simulated["within_2_stderr"]

    @property
    def ratios(self) -> list[int]:
        """The simulated ratios, in table order."""
        return [row["ratio"] for row in self.table]

    def column(self, name: str) -> np.ndarray:
        """One column of the per-ratio table as an array (``"simulated"``, ``"mean_field"``,
        ``"barrier"``, ``"stderr"``, ``"attention_idle_fraction"``, ...)."""
        if not self.table or name not in self.table[0]:
            allowed = ", ".join(self.table[0]) if self.table else "none"
            raise invalid("name", name, f"one of {allowed}")
        return np.array([row[name] for row in self.table], dtype=float)

    # ------------------------------------------------------------------ text and plot
    def format_text(self, max_rows: int = 40) -> str:
        """The report as text (what ``afdjax provision`` prints); at most ``max_rows``
        rows of the per-ratio table (around the recommendations)."""
        from ._text import provision_text

        return provision_text(self, max_rows)

    def plot(self, path, title: str | None = None):
        """PNG: mean-field, barrier and simulated throughput against r, and idle fractions."""
        from ._plots import provision_plot

        return provision_plot(self, path, title)


def provision(
    key: jax.Array,
    workload: Workload,
    latency: LatencyModel,
    batch_size: int,
    ratios=None,
    num_steps: int = 4000,
    num_replicas: int = 16,
    *,
    settings: dict | None = None,
    micro_batches: int | None = None,
    step_model=None,
    **simulate_kwargs,
) -> ProvisionReport:
    """Answer "which r?" three ways and compare them.

    Runs [`simulate`][afdjax.simulate] over ``ratios`` (default [`default_ratio_range`][afdjax.default_ratio_range])
    and evaluates the mean-field and barrier models at the same ratios.

    With ``micro_batches=m`` the simulation runs the micro-batch pipeline and the theory
    curves follow it: the mean-field curve is [`pipeline_throughput`][afdjax.pipeline_throughput] (the
    pipeline period at mean loads) and the barrier curve
    [`pipeline_barrier_throughput`][afdjax.pipeline_barrier_throughput], an *approximation* (per-micro-batch
    attention time replaced by the Gaussian expected maximum over ``r`` instances). Their
    integer recommendations are the argmax of these curves over ``1..max(ratios)``; the
    reported ``r_star`` stays the paper's idealised closed form, and
    ``mean_field["r_star_pipeline"]`` is the continuous argmax of the pipeline mean-field
    curve (1/64 grid, at most ``max(ratios)``). ``step_model=`` (a
    [`StepModel`][afdjax.StepModel]) is the general spelling: its closed forms give the curves.

    Arguments:
        key: a JAX PRNG key (``jax.random.key(seed)``).
        workload: the [`Workload`][afdjax.Workload].
        latency: the [`LatencyModel`][afdjax.LatencyModel] (coefficients in time units).
        batch_size: slots ``B`` per Attention instance.
        ratios: the integer ratios simulated (default [`default_ratio_range`][afdjax.default_ratio_range]).
        num_steps: measured steps per replica (default 4000).
        num_replicas: independent replicas (default 16).
        settings: extra entries for the report's ``settings`` (what the command line was given).
        micro_batches: ``None`` (the paper's idealised step) or ``m``, the micro-batch pipeline.
        step_model: a [`StepModel`][afdjax.StepModel], the general spelling of ``micro_batches``.
        **simulate_kwargs: further keyword arguments of [`simulate`][afdjax.simulate].

    Returns:
        a [`ProvisionReport`][afdjax.ProvisionReport] (``.format_text()``, ``.to_dict()``, ``.plot(path)``).

    Examples:
        >>> report = afdjax.provision(jax.random.key(0), workload, latency, 256)  # doctest: +SKIP
        >>> print(report.format_text())  # what `afdjax provision` prints  # doctest: +SKIP
    """
    if ratios is None:
        ratios = default_ratio_range(workload, latency, batch_size)
    check_ratio_list(ratios)
    model = as_step_model(step_model, micro_batches)
    result = simulate(
        key, workload, latency, batch_size, ratios, num_steps, num_replicas, step_model=model, **simulate_kwargs
    )
    r = np.asarray(result.ratios)
    rf = jnp.asarray(r, dtype=jnp.zeros(()).dtype)
    mf_curve = np.asarray(jax.vmap(lambda x: model.throughput(workload, latency, batch_size, x))(rf))
    br_curve = np.asarray(jax.vmap(lambda x: model.barrier_throughput(workload, latency, batch_size, x))(rf))
    sim = np.asarray(result.throughput_per_instance, dtype=float)
    se = np.asarray(result.stderr, dtype=float)
    att = np.asarray(result.attention_idle_fraction, dtype=float)
    ffn = np.asarray(result.ffn_idle_fraction, dtype=float)

    opt = mean_field_optimum(workload, latency, batch_size)
    max_r = int(r.max())
    optima = model.ratio_optima(workload, latency, batch_size, max_r)
    mf_ratio, bopt_ratio = optima["ratio_mean_field"], optima["ratio_barrier"]
    bopt_continuous = optima["r_barrier_continuous"]
    best = int(np.argmax(sim))
    neighbours = [paired_difference(result, best, j).to_dict() for j in (best - 1, best + 1) if 0 <= j < len(r)]
    within = ratios_within_2_stderr(result, best)
    rel_mf = mf_curve / sim - 1.0
    rel_br = br_curve / sim - 1.0

    def sim_at(ratio: int) -> float:
        idx = np.nonzero(r == ratio)[0]
        return float(sim[idx[0]]) if len(idx) else float("nan")

    table = [
        dict(
            ratio=int(r[i]),
            mean_field=float(mf_curve[i]),
            barrier=float(br_curve[i]),
            simulated=float(sim[i]),
            stderr=float(se[i]),
            rel_err_mean_field=float(rel_mf[i]),
            rel_err_barrier=float(rel_br[i]),
            attention_idle_fraction=float(att[i]),
            ffn_idle_fraction=float(ffn[i]),
        )
        for i in range(len(r))
    ]
    i_mf, i_br = int(np.argmax(np.abs(rel_mf))), int(np.argmax(np.abs(rel_br)))
    errors = dict(
        max_abs_rel_err_mean_field=float(np.abs(rel_mf[i_mf])),
        worst_ratio_mean_field=int(r[i_mf]),
        max_abs_rel_err_barrier=float(np.abs(rel_br[i_br])),
        worst_ratio_barrier=int(r[i_br]),
        loss_mean_field=1.0 - sim_at(mf_ratio) / sim[best],
        loss_barrier=1.0 - sim_at(bopt_ratio) / sim[best],
        rel_gap_r_star=(float(opt.r_star) - int(r[best])) / int(r[best]),
    )
    base_settings = dict(workload=workload.describe(), hardware="custom", seed=None)
    return ProvisionReport(
        settings=dict(
            base_settings,
            **(settings or {}),
            batch_size=int(batch_size),
            steps=int(num_steps),
            replicas=int(num_replicas),
            latency_coefficients=latency.coefficients(),
            comm_scaling=latency.comm_scaling,
            micro_batches=result.micro_batches,
        ),
        theta=float(workload.theta()),
        slot_variance=float(workload.slot_variance()),
        mean_field=dict(
            r_attention=float(opt.r_attention),
            r_communication=float(opt.r_communication),
            r_peak=float(opt.r_peak),
            r_star=float(opt.r_star),
            regime=opt.regime_name,
            ratio=mf_ratio,
            **optima["mean_field_extra"],
        ),
        barrier=dict(ratio=bopt_ratio, r_continuous=bopt_continuous),
        simulated=dict(
            ratio=int(r[best]),
            throughput=float(sim[best]),
            stderr=float(se[best]),
            neighbours=neighbours,
            distinguishable=bool(all(abs(nb["z"]) > 2 for nb in neighbours)),
            within_2_stderr=within,
        ),
        table=table,
        errors=errors,
        idle_crossing=_crossing(r, att, ffn),
        warnings=_provision_warnings([int(x) for x in r], int(r[best]), float(opt.r_star), int(num_replicas)),
    )


def _provision_warnings(ratios: list[int], best: int, r_star: float, num_replicas: int) -> list[str]:
    """The simulated best at an edge of the range, the mean-field r* beyond it, one replica."""
    out = range_warnings(ratios, best, "simulated best ratio")
    if r_star > max(ratios) and not out:
        shown = "+inf" if math.isinf(r_star) else f"{r_star:.4g}"
        wider = max(2 * max(ratios), math.ceil(1.5 * r_star) if math.isfinite(r_star) else 0)
        out.append(
            f"the mean-field optimum r* = {shown} lies beyond the largest ratio simulated ({max(ratios)}): "
            f"the closed-form integer choices are capped there; widen the range (--ratios 1:{min(wider, MAX_RATIO)})"
        )
    return out + replica_warnings(num_replicas)
