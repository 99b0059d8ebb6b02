"""Is AFD worth it? The best rA-1F configuration against the best co-located one on the
same devices ([`compare`][afdjax.compare]; the text is in ``_text``, the plot in ``_plots``).

Both sides use the same workload, the same latency coefficients (an ``ACCELERATOR:MODEL``
derivation, [`derive_latency`][afdjax.derive_latency]: microseconds per layer) and the same memory:

* **AFD**: bundles of ``r`` Attention instances (``n_A`` devices each) and one FFN
  instance (``n_F`` devices), ``floor(devices / (r n_A + n_F))`` of them; the step is the
  paper's barrier step ([`Barrier`][afdjax.Barrier]) or an explicit micro-batch pipeline
  ([`Pipeline`][afdjax.Pipeline], ``afd_step_model``). An Attention instance holds no FFN
  weights: its KV capacity is ``n_A HBM - W_attn`` (``kv_capacity_bytes="auto"``) or the
  number given.
* heterogeneous AFD (``ATTENTION_ACCEL/FFN_ACCEL:MODEL``): the co-located side runs on
  the Attention accelerator (its FFN coefficients re-derived for it); equal device counts.
* **co-located** ([`Colocated`][afdjax.Colocated]): expert-parallel groups of ``g`` ranks
  (``n_A`` devices each, attention data-parallel), ``floor(devices / (g n_A))`` groups;
  every rank also holds ``1/g`` of the FFN weights, so its KV capacity is the AFD one
  minus ``W_ffn / g``. With and without (ideal) two-batch overlap, the better of the two
  (overlap hides the all-to-all but pays the fixed costs once per micro-batch).

For every ratio (group size) and batch size the **closed form** is evaluated: the mean
step time ``E[tau]`` of the Gaussian barrier (AFD: ``E[max(t_F, t_C, mu_A + s M_r)]``;
co-located: ``mu_A + s E[M_g]`` per micro-batch). The batch size per Attention instance
(rank) is at most the largest ``B`` whose KV load stays below the capacity with
probability ``1 - kv_overflow_tolerance`` (Gaussian stationary load, as ``provision``).
Throughput counts output tokens per second per device of the ``devices`` given (idle
devices included): ``tokens/s = slots / (num_layers E[tau])``. A TPOT target applies to
the mean TPOT ``num_layers E[tau]``. The two best configurations are then simulated
([`simulate`][afdjax.simulate], ``num_steps`` x ``num_replicas``; ``num_steps=0`` skips it).

The gain (AFD over co-located, per device) is the product of four factors:
``B_AFD / B_co`` (batch expansion: attention devices hold no expert weights) x
``r n_A / (r n_A + n_F)`` (the FFN-instance tax: devices that hold no KV cache) x
``E[tau_co] / E[tau_AFD]`` (the step-time ratio) x ``used_AFD / used_co`` (devices left idle
by the packing of bundles or groups).
"""

from __future__ import annotations

import dataclasses
import math
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from .._engine import simulate
from .._hardware import HardwareDerivation, derive_latency
from .._json import jsonable
from .._latency import COEFFICIENT_NAMES, LatencyModel
from .._specs import derive_from_spec, is_accelerator_model_spec
from .._step import Barrier, Colocated, Pipeline, StepModel
from .._validate import check_int, check_number, filter_jit, invalid
from .._workload import Workload

BATCH_GRID_POINTS = 48
"""Batch sizes tried per side on a geometric grid (refined to every integer near the best)."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The result of [`compare`][afdjax.compare] (``to_dict()`` is ``afdjax compare --json``).

    Attributes:
        afd: the best configuration of each side (a dict: its shape,
            ``batch_size``, ``cycle_time_us`` (per layer), ``tpot_ms`` (mean),
            ``throughput_per_device`` (output tokens/s per device of ``devices``), and
            ``simulated`` (the same from [`simulate`][afdjax.simulate], with standard errors) unless
            skipped).
        colocated: see ``afd``.
        gain: ``ratio`` (AFD over co-located, closed form; ``simulated_ratio`` too) and
            its factors ``batch_expansion``, ``ffn_instance_tax``, ``step_time_ratio``,
            ``device_use_ratio`` (their product is ``ratio``).
        curve: per ratio ``r``, the best AFD throughput per device over the batch sizes
            (``None`` where nothing is feasible), the same per device used, and its batch size,
            for the plot.
        settings: the inputs.

    """

    afd: dict
    colocated: dict
    gain: dict
    curve: dict
    settings: dict

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))

    def format_text(self) -> str:
        """The report that ``afdjax compare`` prints."""
        from ._text import comparison_text

        return comparison_text(self)

    def plot(self, path, title: str | None = None):
        """PNG: AFD throughput per device against r, the co-located level as a line."""
        from ._plots import comparison_plot

        return comparison_plot(self, path, title=title)


def _resolve_hardware(hardware) -> HardwareDerivation:
    if isinstance(hardware, HardwareDerivation):
        return _without_stage_parts(hardware)
    if isinstance(hardware, str) and is_accelerator_model_spec(hardware):
        return _without_stage_parts(derive_from_spec(hardware))
    raise invalid(
        "hardware",
        hardware,
        "an ACCELERATOR:MODEL spec (e.g. h100:deepseek-v3) or a HardwareDerivation: the comparison needs "
        "HBM capacity and weight sizes",
    )


def _max_batch(theta: float, variance: float, capacity_tokens: float | None, tolerance: float, top: int) -> int:
    """Largest ``B <= top`` with ``P(KV load > capacity) <= tolerance`` under the Gaussian
    stationary load ``N(B theta, B sigma^2)`` (``top`` without a capacity; 0 if none fits)."""
    if capacity_tokens is None:
        return top
    if capacity_tokens <= 0:
        return 0
    z = statistics.NormalDist().inv_cdf(1.0 - tolerance) if tolerance > 0 else math.inf
    b = np.arange(1, top + 1, dtype=float)
    sd = np.sqrt(b * max(variance, 0.0))
    load = b * theta + (np.where(sd > 0, z * sd, 0.0) if math.isfinite(z) else np.where(sd > 0, np.inf, 0.0))
    fits = np.nonzero(load <= capacity_tokens)[0]
    return int(fits[-1] + 1) if len(fits) else 0


def _batch_grid(top: int, minimum: int) -> np.ndarray:
    grid = np.unique(np.round(np.geomspace(1, max(top, 1), BATCH_GRID_POINTS)).astype(int))
    return grid[(grid >= minimum) & (grid <= top)]


@filter_jit
def _afd_cycle(step_model, workload, latency, batch, ratio):
    return step_model.barrier_cycle_time(workload, latency, batch, ratio)


def _colocated_cycle(model, workload, latency, batch, ranks):
    return model.barrier_cycle_time(workload, latency, batch, ranks)


def _bucket(n: int) -> int:
    """Padded length of an axis (a power of two, at least 16): calls with similar grids share
    one compiled program."""
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def _on_grid(cycle, batches, shapes) -> np.ndarray:
    """``cycle(B, shape)`` on the grid ``batches x shapes`` (1-D each), as ``(len(batches),
    len(shapes))`` floats; both axes padded (with their last value) to ``_bucket`` sizes."""
    batches, shapes = np.atleast_1d(batches), np.atleast_1d(shapes)
    b = np.pad(batches, (0, _bucket(len(batches)) - len(batches)), mode="edge").astype(float)
    x = np.pad(shapes, (0, _bucket(len(shapes)) - len(shapes)), mode="edge").astype(float)
    out = np.asarray(cycle(b[:, None], x[None, :]), dtype=float)
    return out[: len(batches), : len(shapes)]


def _best_cell(values, feasible):
    """``(i, j)`` of the largest feasible value, or ``None``."""
    masked = np.where(feasible, values, -np.inf)
    if not np.any(np.isfinite(masked)):
        return None
    return np.unravel_index(int(np.argmax(masked)), masked.shape)


def _refine(cycle, shape_value, batch_top, grid, i, feasible_tpot, throughput):
    """Every integer batch size between the grid neighbours of ``grid[i]`` at one shape."""
    lo = grid[i - 1] if i > 0 else grid[i]
    hi = grid[i + 1] if i + 1 < len(grid) else grid[i]
    batches = np.arange(lo, min(hi, batch_top) + 1)
    tau = _on_grid(cycle, batches, shape_value)[:, 0]
    thr = throughput(batches, tau)
    ok = feasible_tpot(tau)
    k = int(np.argmax(np.where(ok, thr, -np.inf)))
    return int(batches[k]), float(tau[k]), float(thr[k])


def compare(
    workload: Workload,
    hardware,
    devices: int,
    *,
    kv_capacity_bytes: float | str | None = "auto",
    tpot_ms: float | None = None,
    kv_overflow_tolerance: float = 1e-3,
    max_batch_size: int = 4096,
    colocated_overlap: bool | None = None,
    num_steps: int = 400,
    num_replicas: int = 4,
    key: jax.Array | None = None,
    ratios=None,
    group_sizes=None,
    afd_step_model: StepModel | None = None,
) -> Comparison:
    """The best AFD configuration (ratio, batch, bundles) against the best co-located one
    (expert-parallel group size, batch) on the same ``devices`` (module docstring).

    Arguments:
        workload: a [`Workload`][afdjax.Workload].
        hardware: an ``ACCELERATOR:MODEL[,option=value]`` spec or a
            [`HardwareDerivation`][afdjax.HardwareDerivation] (its ``attention_devices`` and ``ffn_devices``
            are the instance sizes).
        devices: accelerators available (an integer, at least one AFD bundle).
        kv_capacity_bytes: KV bytes of one Attention instance, ``"auto"`` (HBM minus the
            attention weights; the default) or ``None`` (no memory limit on either side).
        tpot_ms: mean time-per-output-token target (ms) both sides must meet.
        kv_overflow_tolerance: allowed probability that an instance's KV load exceeds
            its capacity (default ``1e-3``).
        max_batch_size: largest slots per Attention instance or rank considered.
        colocated_overlap: two-batch overlap on the co-located side (``True``), none
            (``False``), or the better of the two (``None``, the default).
        num_steps: measured steps of the simulation of the two best configurations
            (``num_steps=0``: closed form only).
        num_replicas: replicas of that simulation.
        key: its PRNG key (default ``jax.random.key(0)``).
        ratios: restrict the AFD ratios ``r`` and the co-located
            expert-parallel group sizes (ranks) considered, e.g. to evaluate one published
            layout (default: every one that fits the devices).
        group_sizes: see ``ratios``.
        afd_step_model: the AFD step, [`Barrier`][afdjax.Barrier] (the paper's ideal
            overlap, default) or [`Pipeline`][afdjax.Pipeline] ``(m)`` (explicit micro-batch
            pipeline; its closed form is the Gaussian approximation of its period).

    Returns:
        a [`Comparison`][afdjax.Comparison]. Raises ``ValueError`` naming the argument: fewer
        devices than one bundle, a hardware spec without memory data, or a ``tpot_ms`` that
        no configuration of one side meets (the fastest TPOT is given).
    """
    if not isinstance(workload, Workload):
        raise invalid("workload", workload, "an afdjax Workload")
    hw = _resolve_hardware(hardware)
    devices = check_int("devices", devices, 1)
    max_batch_size = check_int("max_batch_size", max_batch_size, 1, 2**16)
    tol = kv_overflow_tolerance
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
        raise invalid("kv_overflow_tolerance", tol, "a probability in [0, 1)")
    if tpot_ms is not None:
        tpot_ms = check_number("tpot_ms", tpot_ms)
    num_steps = check_int("num_steps", num_steps, 0)
    num_replicas = check_int("num_replicas", num_replicas, 1)
    n_a, n_f, lat, layers = hw.attention_devices, hw.ffn_devices, hw.latency, hw.num_layers
    bundle_min = n_a + n_f
    if devices < bundle_min:
        raise invalid(
            "devices", devices, f"at least one AFD bundle: {bundle_min} devices ({n_a} Attention + {n_f} FFN)"
        )
    if isinstance(kv_capacity_bytes, str):
        if kv_capacity_bytes != "auto":
            raise invalid("kv_capacity_bytes", kv_capacity_bytes, "a number of bytes, 'auto' or None")
        afd_capacity = n_a * hw.hbm_capacity_bytes - hw.attention_weight_bytes
    else:
        afd_capacity = None if kv_capacity_bytes is None else check_number("kv_capacity_bytes", kv_capacity_bytes)
    theta, variance = float(workload.theta()), float(workload.slot_variance())
    kv_token = float(hw.kv_bytes_per_token)
    us_to_s = 1e-6

    def capacity_tokens(bytes_):
        return None if bytes_ is None else bytes_ / kv_token

    # ---------------------------------------------------------------- AFD grid
    afd_step = Barrier() if afd_step_model is None else afd_step_model
    if not isinstance(afd_step, (Barrier, Pipeline)):
        raise invalid("afd_step_model", afd_step, "Barrier() or Pipeline(m)")
    ratios = _restrict("ratios", ratios, (devices - n_f) // n_a)
    afd_top = _max_batch(theta, variance, capacity_tokens(afd_capacity), kv_overflow_tolerance, max_batch_size)
    if afd_top < 1:
        raise invalid("kv_capacity_bytes", kv_capacity_bytes, "room for at least one slot on an Attention instance")
    bundles = devices // (ratios * n_a + n_f)
    least_afd = afd_step.micro_batches or 1
    if afd_top < least_afd:
        raise invalid("afd_step_model", afd_step, f"at most {afd_top} micro-batches (the KV room for slots)")
    afd_grid = _batch_grid(afd_top, least_afd)

    def afd_cycle(b, r):
        return _afd_cycle(afd_step, workload, lat, jnp.asarray(b, float), jnp.asarray(r, float))

    tau_afd = _on_grid(afd_cycle, afd_grid, ratios)

    def afd_thr(b, tau, r):
        return (devices // (r * n_a + n_f)) * r * b / (layers * tau * us_to_s) / devices

    def tpot_of(tau):
        return layers * tau / 1000.0

    def meets(tau):
        return np.ones(np.shape(tau), bool) if tpot_ms is None else tpot_of(tau) <= tpot_ms

    thr_afd = afd_thr(afd_grid[:, None], tau_afd, ratios[None, :])
    ok_afd = meets(tau_afd)
    cell = _best_cell(thr_afd, ok_afd)
    if cell is None:
        _no_tpot("AFD", tpot_of(np.min(tau_afd)), tpot_ms)
    i, j = cell
    r_best = int(ratios[j])
    b_afd, t_afd, v_afd = _refine(
        lambda b, r: afd_cycle(b, r), float(r_best), afd_top, afd_grid, i, meets, lambda b, t: afd_thr(b, t, r_best)
    )
    curve_thr = np.where(ok_afd, thr_afd, -np.inf)
    best_b_per_r = np.argmax(curve_thr, axis=0)
    curve = {
        "ratios": ratios.tolist(),
        "afd_throughput_per_device": [
            float(curve_thr[k, c]) if np.isfinite(curve_thr[k, c]) else None for c, k in enumerate(best_b_per_r)
        ],
        "afd_throughput_per_used_device": [
            float(curve_thr[k, c] * devices / (bundles[c] * (ratios[c] * n_a + n_f)))
            if np.isfinite(curve_thr[k, c])
            else None
            for c, k in enumerate(best_b_per_r)
        ],
        "afd_batch_size": [
            int(afd_grid[k]) if np.isfinite(curve_thr[k, c]) else None for c, k in enumerate(best_b_per_r)
        ],
    }

    # ---------------------------------------------------------------- co-located grid
    co_hw = _colocated_hardware(hw)
    co_lat, co_f = co_hw.latency, co_hw.ffn_devices
    if co_hw is not hw and kv_capacity_bytes == "auto":
        afd_capacity = n_a * co_hw.hbm_capacity_bytes - co_hw.attention_weight_bytes
    ranks_total = devices // n_a
    groups = _restrict("group_sizes", group_sizes, ranks_total)
    expert_share = co_hw.ffn_weight_bytes / groups  # bytes of FFN weights per rank
    tops = np.array(
        [
            _max_batch(
                theta,
                variance,
                None if afd_capacity is None else capacity_tokens(afd_capacity - share),
                kv_overflow_tolerance,
                max_batch_size,
            )
            for share in expert_share
        ]
    )
    if np.all(tops < 1):
        raise invalid(
            "devices",
            devices,
            f"enough devices for a co-located group to hold the FFN weights ({co_hw.ffn_weight_bytes / 1e9:.4g} GB) "
            "and some KV cache",
        )

    def co_thr(b, tau, g):
        return (ranks_total // g) * g * b / (n_a * layers * tau * us_to_s) / devices

    options = [False, True] if colocated_overlap is None else [bool(colocated_overlap)]
    found = [
        _colocated_search(
            Colocated(ffn_devices=co_f, attention_devices=n_a, overlap=o),
            workload,
            co_lat,
            groups,
            tops,
            meets,
            co_thr,
        )
        for o in options
    ]
    found = [f for f in found if f is not None]
    if not found:
        fastest = min(
            _fastest(Colocated(ffn_devices=co_f, attention_devices=n_a, overlap=o), workload, co_lat, groups, tops)
            for o in options
        )
        _no_tpot("co-located", tpot_of(fastest), tpot_ms)
    model, g_best, j, b_co, t_co, v_co = max(found, key=lambda f: f[-1])
    colocated_overlap = model.overlap

    # ---------------------------------------------------------------- report
    afd_bundles = devices // (r_best * n_a + n_f)
    co_groups = ranks_total // g_best
    afd = {
        "ratio": r_best,
        "batch_size": b_afd,
        "attention_devices": n_a,
        "ffn_devices": n_f,
        "bundle_devices": r_best * n_a + n_f,
        "bundles": afd_bundles,
        "devices_used": afd_bundles * (r_best * n_a + n_f),
        "max_batch_size": afd_top,
        "kv_capacity_bytes": n_a * hw.hbm_capacity_bytes - hw.attention_weight_bytes
        if kv_capacity_bytes == "auto"
        else afd_capacity,
        "accelerator": hw.deployment().accelerator,
        "cycle_time_us": t_afd,
        "tpot_ms": float(tpot_of(t_afd)),
        "throughput_per_device": v_afd,
        "throughput_per_used_device": v_afd * devices / (afd_bundles * (r_best * n_a + n_f)),
        "step_model": afd_step.describe(),
        "micro_batches": afd_step.micro_batches,
    }
    colocated = {
        "ranks_per_group": g_best,
        "batch_size": b_co,
        "devices_per_rank": n_a,
        "group_devices": g_best * n_a,
        "groups": co_groups,
        "devices_used": co_groups * g_best * n_a,
        "max_batch_size": int(tops[j]),
        "kv_capacity_bytes": None if afd_capacity is None else afd_capacity - co_hw.ffn_weight_bytes / g_best,
        "accelerator": co_hw.accelerator.name,
        "overlap": colocated_overlap,
        "cycle_time_us": t_co,
        "tpot_ms": float(tpot_of(t_co)),
        "throughput_per_device": v_co,
        "throughput_per_used_device": v_co * devices / (co_groups * g_best * n_a),
        "step_model": model.describe(),
    }
    factors = {
        "batch_expansion": b_afd / b_co,
        "ffn_instance_tax": r_best * n_a / (r_best * n_a + n_f),
        "step_time_ratio": t_co / t_afd,
        "device_use_ratio": afd["devices_used"] / colocated["devices_used"],
    }
    gain = {"ratio": v_afd / v_co, **factors}
    if num_steps:
        key = jax.random.key(0) if key is None else key
        afd["simulated"] = _simulated(key, workload, lat, b_afd, r_best, afd_step, num_steps, num_replicas, afd, layers)
        colocated["simulated"] = _simulated(
            key, workload, co_lat, b_co, g_best, model, num_steps, num_replicas, colocated, layers
        )
        gain["simulated_ratio"] = (
            afd["simulated"]["throughput_per_device"] / colocated["simulated"]["throughput_per_device"]
        )
    settings = {
        "workload": workload.describe(),
        "hardware": f"{hw.deployment().accelerator}:{hw.model.name}",
        "devices": devices,
        "kv_capacity": kv_capacity_bytes if isinstance(kv_capacity_bytes, str) else afd_capacity,
        "kv_overflow_tolerance": kv_overflow_tolerance,
        "tpot_target_ms": tpot_ms,
        "max_batch_size": max_batch_size,
        "num_layers": layers,
        "latency_coefficients": lat.coefficients(),
        "ffn_weight_bytes": hw.ffn_weight_bytes,
        "attention_weight_bytes": hw.attention_weight_bytes,
        "steps": num_steps,
        "replicas": num_replicas,
    }
    return Comparison(afd=afd, colocated=colocated, gain=gain, curve=curve, settings=settings)


def _colocated_search(model, workload, latency, groups, tops, meets, throughput):
    """Best ``(model, group size, its index, B, E[tau], throughput)`` of one co-located step
    model over the groups and batch sizes, or ``None`` if no cell meets the TPOT target."""
    least = 2 if model.overlap else 1
    if np.all(tops < least):
        return None
    grid = _batch_grid(int(tops.max()), least)
    tau = _on_grid(lambda b, g: _colocated_cycle(model, workload, latency, b, g), grid, groups)
    thr = throughput(grid[:, None], tau, groups[None, :])
    cell = _best_cell(thr, meets(tau) & (grid[:, None] <= tops[None, :]))
    if cell is None:
        return None
    i, j = cell
    g = int(groups[j])
    b, t, v = _refine(
        lambda b, n: _colocated_cycle(model, workload, latency, b, n),
        float(g),
        int(tops[j]),
        grid,
        i,
        meets,
        lambda b, t: throughput(b, t, g),
    )
    return model, g, int(j), b, t, v


def _fastest(model, workload, latency, groups, tops) -> float:
    """The shortest ``E[tau]`` (one slot per rank) of the group sizes with room for a slot."""
    fits = groups[tops >= (2 if model.overlap else 1)]
    if len(fits) == 0:
        return np.inf
    least = np.array([2 if model.overlap else 1])
    return float(np.min(_on_grid(lambda b, g: _colocated_cycle(model, workload, latency, b, g), least, fits)))


def _restrict(name: str, values, top: int) -> np.ndarray:
    """``1..top``, or the given integers (each in ``1..top``: they must fit the devices)."""
    if values is None:
        return np.arange(1, top + 1)
    chosen = sorted({int(v) for v in np.atleast_1d(values)})
    if not chosen or chosen[0] < 1 or chosen[-1] > top or any(v != int(v) for v in np.atleast_1d(values)):
        raise invalid(name, values, f"integers in 1..{top} (what fits the devices)")
    return np.asarray(chosen)


def _without_stage_parts(hw: HardwareDerivation, keep_comm: bool = True) -> HardwareDerivation:
    """``hw`` without the random stage-time parts of issue 13 (``num_layers``, noise,
    routing): the co-located step models none of them, so both designs go without. The
    AFD side keeps its ``comm`` part (``keep_comm``): the FFN instance's shared link, which
    ``r`` Attention instances load with ``r B`` tokens, is AFD's own cost (a co-located rank
    exchanges its dispatch and combine over its own links)."""
    lat = hw.latency
    comm = lat.comm if keep_comm else None
    plain = LatencyModel(**{k: getattr(lat, k) for k in COEFFICIENT_NAMES}, comm_scaling=lat.comm_scaling, comm=comm)
    return dataclasses.replace(hw, latency=plain)


def _colocated_hardware(hw: HardwareDerivation) -> HardwareDerivation:
    """The co-located side's hardware: ``hw`` itself, or for heterogeneous AFD the same
    derivation with the FFN on the Attention accelerator (a co-located rank runs both)."""
    if not hw.heterogeneous:
        return _without_stage_parts(hw, keep_comm=False)
    return derive_latency(
        hw.accelerator,
        hw.model,
        dtype=hw.dtype,
        memory_efficiency=hw.memory_efficiency,
        compute_efficiency=hw.compute_efficiency,
        network_efficiency=hw.network_efficiency,
        kernel_overhead_us=hw.kernel_overhead_us,
        attention_devices=hw.attention_devices,
        comm_scaling=hw.latency.comm_scaling,
        stage_terms=False,
    )


def _no_tpot(side: str, fastest_ms: float, target: float):
    raise ValueError(
        f"tpot_ms={target:g} is invalid: no {side} configuration meets it (the fastest mean TPOT is "
        f"{fastest_ms:.4g} ms); expected a target of at least that"
    )


def _simulated(key, workload, latency, batch, shape, step_model, steps, replicas, best, layers) -> dict:
    """Simulated throughput per device and TPOT of one configuration (the closed form's
    device count and packing; the engine's mean step time and its relative error)."""
    result = simulate(key, workload, latency, batch, [shape], steps, replicas, step_model=step_model)
    tau = float(np.asarray(result.mean_cycle_time)[0])
    thr = float(np.asarray(result.throughput_per_instance)[0])
    rel = float(np.asarray(result.stderr)[0]) / thr if thr > 0 else math.nan
    per_device = best["throughput_per_device"] * best["cycle_time_us"] / tau
    return {
        "cycle_time_us": tau,
        "tpot_ms": layers * tau / 1000.0,
        "throughput_per_device": per_device,
        "stderr": per_device * rel,
    }
