"""Latency coefficients from measurement: time real JAX decode layers on this device.

[`profile_hardware`][afdjax.profile_hardware] builds one decoder layer of a model's shape (a preset from
``afdjax.MODELS`` scaled down by ``scale``, or any [`ModelSpec`][afdjax.ModelSpec]), times

* **attention** (``t_A`` against ``T = B L`` KV tokens): ``B`` decode slots, each with
  ``L`` cached tokens, one new query per slot: the query/key/value projections of the new
  token, scores and softmax over the cache and the output projection. GQA: K and V of
  ``h_kv`` heads, queries grouped ``h_q / h_kv`` per KV head. MLA: the compressed latent
  cache (``d_c + d_rope`` per token) with absorbed up-projections, as in DeepSeek's decode;
* **FFN** (``t_F`` against the batch ``N``): the gated (SwiGLU) MLP of a dense model, or
  for an MoE model one MoE layer: router, top-``k``, tokens grouped by expert and the
  expert matmuls, combine, plus the shared experts (a model with both, like DeepSeek-V3,
  has its MoE layer timed; its few dense layers are not). On GPU/TPU the grouped matmul is
  ``jax.lax.ragged_dot``; on CPU, where ``ragged_dot`` lowers to a dense masked product
  (about ``E`` times the work), tokens are scattered into per-expert buffers of capacity
  ``ceil(1.25 N k / E)`` (GShard-style; overflow is dropped) and multiplied with one
  batched einsum;
* **communication** (``t_C`` against ``B``): activations of ``B`` tokens (``f d`` elements
  each, ``f`` the MoE fan-out) sent and returned. With two or more devices this is a
  device-to-device copy there and back; with one it is a host->device->host round trip
  (a stand-in, say so when you use it); or ``comm="defaults"`` keeps ``alpha_c, beta_c``
  from a given hardware spec.

**Timing.** Every shape is jitted and compiled ahead of time (``jit(...).lower().compile()``)
and called through the compiled executable, so nothing recompiles inside the timed loop;
inputs are created on the device before timing; each call ends with
``block_until_ready``. After two warm-up calls, the number of calls per sample is chosen
so that a sample lasts at least ``min_sample_s``; each sample is preceded by one untimed
call (the previous size left caches and threads in another state: without it the first
size of each stage came out 2x slow). Samples are taken in ``repeats`` rounds over all
sizes, in a fresh random order each round, so a burst of load from other processes hits
every size alike,
and a low quantile of each size's samples is kept (default 0.25, the lower quartile).
Interference from other processes only ever adds time, so on a shared machine a low
quantile estimates the undisturbed time far better than the median: with two other
processes on a 2-core CPU, the median of 15 samples varied by 2x between neighbouring
sizes (sample CV 0.4-1.4). On a dedicated accelerator the two agree; pass
``quantile=0.5`` for the median.

**Fit and validation.** Every third size (indices 1, 4, 7, ...) is held out; the rest go
to [`fit_latency`][afdjax.fit_latency] (Huber). The result reports R^2 and the largest relative
residual per stage, and the relative error of the fitted line at each held-out size.

Times and coefficients are in **microseconds per layer of the profiled shape** on this
device. A scaled-down shape runs fast on a CPU, but its coefficients describe the scaled
model, not the full one.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from .._fit._latency import LatencyObservations, fit_latency
from .._hardware import MODELS, ModelSpec
from .._latency import LatencyModel
from .._specs import parse_hardware_spec, parse_model_spec
from .._validate import check_choice, check_int, check_number
from ._holdout import held_out_mask
from ._layers import attention_fn, attention_inputs, ffn_fn, ffn_inputs, scale_model
from ._result import ProfileResult
from ._timing import Timed, aligned_empty, calibrate, compiled_call, device_roundtrip_call, host_roundtrip_call, sample

COMM_MODES = ("auto", "device", "host", "defaults")

CPU_DEFAULTS = {
    "scale": 1 / 16,
    "batch_size": 16,
    "kv_lengths": None,  # set from CPU_KV_CACHE_BYTES
    "ffn_batches": tuple(range(96, 672 + 1, 48)),
    "comm_batches": tuple(range(32, 512 + 1, 32)),
    "repeats": 21,
    "min_sample_s": 0.003,
}
CPU_KV_CACHE_BYTES = 2048 * 16 * 36 * 4
"""Largest KV cache of the default CPU attention grid (4.5 MiB: DeepSeek-V3 / 16, B = 16, 2048
tokens per slot); larger caches took 25-60 % more time per token on the 2-core machine."""
ACCEL_DEFAULTS = {
    "scale": 0.5,
    "batch_size": 32,
    "kv_lengths": tuple(range(512, 8192 + 1, 512)),
    "ffn_batches": tuple(range(128, 2048 + 1, 128)),
    "comm_batches": tuple(range(128, 2048 + 1, 128)),
    "repeats": 9,
    "min_sample_s": 0.002,
}


# ============================================================================ entry point
def _grid(name, values, minimum=1):
    values = [int(v) for v in values]
    if len(values) < 3:
        raise ValueError(f"{name}={values!r} is invalid: expected at least 3 sizes (2 to fit, 1 held out)")
    if min(values) < minimum or len(set(values)) != len(values):
        raise ValueError(f"{name}={values!r} is invalid: expected distinct integers >= {minimum}")
    return sorted(values)


def profile_hardware(
    model: ModelSpec | str = "deepseek-v3",
    *,
    scale: float | None = None,
    hidden_size: int | None = None,
    batch_size: int | None = None,
    kv_lengths=None,
    ffn_batches=None,
    comm_batches=None,
    repeats: int | None = None,
    min_sample_s: float | None = None,
    quantile: float = 0.25,
    comm: str = "auto",
    defaults=None,
    dtype: str | None = None,
    grouped_matmul: str | None = None,
    seed: int = 0,
    n_bootstrap: int = 0,
    progress: bool = False,
):
    """Measure decode attention, FFN and communication times on the default JAX device and
    fit the six latency coefficients (microseconds per layer of the profiled shape).

    Arguments:
        model: a preset name (``afdjax.MODELS``), a model spec string or a ``ModelSpec``.
        scale: width scale in ``(0, 1]`` (default 1/16 on CPU, 0.5 on GPU/TPU).
        hidden_size: overrides the scaled hidden size.
        batch_size: decode slots ``B`` of the attention runs (default 8 on CPU, 32 else).
        kv_lengths: KV tokens per slot (>= 3 sizes); ``T = B * length``.
        ffn_batches: FFN batch sizes ``N`` (>= 3).
        comm_batches: tokens ``B`` of the communication runs.
        repeats: round-robin samples per size.
        min_sample_s: the shortest sample (s; calls are repeated within a sample to reach it).
        quantile: which quantile of a size's samples is its time (default 0.25, the lower
            quartile; 0.5 is the median).
        comm: ``auto`` (``device`` with two or more devices, else ``host``), ``device``,
            ``host`` or ``defaults`` (keep ``alpha_c, beta_c`` of ``defaults``, a hardware spec
            string or ``LatencyModel``, which must then be given).
        defaults: the hardware spec or [`LatencyModel`][afdjax.LatencyModel] for ``comm="defaults"``.
        dtype: ``float32`` (default on CPU) or ``bfloat16`` (default elsewhere).
        grouped_matmul: ``ragged_dot`` (default on GPU/TPU) or ``capacity`` (default on CPU).
        seed: seed of the random inputs.
        n_bootstrap: bootstrap replicates of the fit (0 or >= 20).
        progress: show a ``tqdm`` bar.

    Returns:
        a [`ProfileResult`][afdjax.ProfileResult].
    """
    t_start = time.perf_counter()
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    base = (
        MODELS[model]
        if isinstance(model, str) and model in MODELS
        else (model if isinstance(model, ModelSpec) else None)
    )
    if base is None:
        if not isinstance(model, str):
            raise ValueError(f"model={model!r} is invalid: expected a ModelSpec or a preset name ({', '.join(MODELS)})")
        base = parse_model_spec(model)
    d = CPU_DEFAULTS if on_cpu else ACCEL_DEFAULTS
    scale = d["scale"] if scale is None else scale
    if hidden_size is not None:
        hidden_size = check_int("hidden_size", hidden_size, 16)
    shape = scale_model(base, scale, hidden_size)
    batch_size = d["batch_size"] if batch_size is None else batch_size
    batch_size = check_int("batch_size", batch_size, 1)
    ffn_batches = _grid("ffn_batches", d["ffn_batches"] if ffn_batches is None else ffn_batches)
    comm_batches = _grid("comm_batches", d["comm_batches"] if comm_batches is None else comm_batches)
    repeats = d["repeats"] if repeats is None else repeats
    repeats = check_int("repeats", repeats, 1)
    min_sample_s = d["min_sample_s"] if min_sample_s is None else min_sample_s
    check_number("min_sample_s", min_sample_s, strict=False)
    check_number("quantile", quantile, strict=False, maximum=1.0)  # 0.5: the median
    check_choice("comm", comm, COMM_MODES)
    dtype = ("float32" if on_cpu else "bfloat16") if dtype is None else dtype
    check_choice("dtype", dtype, ("float32", "bfloat16"))
    if kv_lengths is None and on_cpu:
        # the CPU grid is set in bytes: the per-token time changes regime once the cache leaves
        # a cache level, so every model's largest cache is the size measured linear for the default
        itemsize = jnp.dtype(dtype).itemsize
        per_slot = shape.kv_elements_per_token_per_layer * itemsize * batch_size
        top = max(64, int(CPU_KV_CACHE_BYTES // per_slot) // 16 * 16)
        kv_lengths = sorted({max(8, round(top * (1 + 3 * i / 14) / 4 / 8) * 8) for i in range(15)})
    kv_lengths = _grid("kv_lengths", d["kv_lengths"] if kv_lengths is None else kv_lengths)
    grouped_matmul = ("capacity" if on_cpu else "ragged_dot") if grouped_matmul is None else grouped_matmul
    check_choice("grouped_matmul", grouped_matmul, ("capacity", "ragged_dot"))
    seed = check_int("seed", seed, 0)
    defaults_model = None
    if comm == "defaults":
        if defaults is None:
            raise ValueError("comm='defaults' needs defaults=SPEC (a hardware spec whose alpha_c, beta_c are kept)")
        defaults_model = defaults if isinstance(defaults, LatencyModel) else parse_hardware_spec(str(defaults))
    devices = jax.devices()
    if comm == "auto":
        comm = "device" if len(devices) > 1 else "host"
    if comm == "device" and len(devices) < 2:
        raise ValueError(f"comm='device' needs at least 2 devices, found {len(devices)}; allowed here: host, defaults")
    jdtype = jnp.dtype(dtype)
    key = jax.random.key(seed)

    items: list[Timed] = []
    attn = attention_fn(shape)
    for i, length in enumerate(kv_lengths):
        x, w, cache = attention_inputs(shape, batch_size, length, jdtype, jax.random.fold_in(key, i))
        items.append(Timed("attention", batch_size * length, compiled_call(attn, x, w, cache)))
    ffn = ffn_fn(shape, grouped_matmul)
    ffn_key = jax.random.fold_in(key, 10_000)
    for n in ffn_batches:
        # one weight set for all sizes, so that only the batch changes
        x, w = ffn_inputs(shape, n, jdtype, ffn_key)
        items.append(Timed("ffn", n, compiled_call(ffn, x, w)))
    fanout = shape.num_experts_per_token if shape.num_moe_layers else 1  # one copy per routed expert
    comm_source = None
    if comm != "defaults":
        width = fanout * shape.hidden_size
        rng = np.random.default_rng(seed)
        for n in comm_batches:
            host = aligned_empty((n, width), jdtype)
            host[...] = rng.standard_normal((n, width)).astype(jdtype)
            if comm == "host":
                items.append(Timed("comm", n, host_roundtrip_call(host, devices[0])))
            else:
                on0 = jax.device_put(host, devices[0])
                items.append(Timed("comm", n, device_roundtrip_call(on0, devices[1], devices[0])))
        comm_source = (
            "device-to-device copy (device 0 -> 1 -> 0)"
            if comm == "device"
            else "host<->device transfer (host -> device -> host; a stand-in for the A<->F link)"
        )
    else:
        comm_source = f"defaults ({defaults if isinstance(defaults, str) else 'given LatencyModel'})"

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items) * (repeats + 1), desc="afdjax profile", unit="run", leave=False)
    for item in items:
        calibrate(item, min_sample_s)
        if bar is not None:
            bar.update(1)
    order = np.random.default_rng(seed)
    for _ in range(repeats):
        for index in order.permutation(len(items)):  # a fresh order each round: no size always follows another
            sample(items[index])
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    measurements, held_out, columns = (
        {},
        {},
        {c: [] for c in ("attention_tokens", "batch_size", "attention_time", "ffn_time", "comm_time")},
    )
    for stage in ("attention", "ffn", "comm"):
        stage_items = [it for it in items if it.stage == stage]
        if not stage_items:
            continue
        sizes = np.array([it.size for it in stage_items], dtype=np.float64)
        samples = np.array([it.samples_s for it in stage_items]) * 1e6
        med = np.quantile(samples, quantile, axis=1)
        measurements[stage] = (sizes, med, samples)
        hold = held_out_mask(len(sizes))
        held_out[stage] = sizes[hold]
        for x, y in zip(sizes[~hold], med[~hold]):
            row = dict.fromkeys(columns)
            if stage == "attention":
                row.update(attention_tokens=x, attention_time=y)
            else:
                row.update(batch_size=x, **{f"{stage}_time": y})
            for c, values in columns.items():
                values.append(row[c])
    obs = LatencyObservations.from_columns(columns, source=f"afdjax profile ({device.platform})")
    fit = fit_latency(obs, n_bootstrap=n_bootstrap, defaults=defaults_model)
    errors = {}
    lat = fit.latency
    for stage, (sizes, med, _) in measurements.items():
        hold = held_out_mask(len(sizes))
        xs = sizes[hold]
        if stage == "attention":
            pred = np.array([float(lat.attention_time(x)) for x in xs])
        elif stage == "ffn":
            pred = np.array([float(lat.ffn_time(1.0, x)) for x in xs])
        else:
            pred = np.array([float(lat.comm_time(1.0, x)) for x in xs])
        errors[stage] = (pred - med[hold]) / med[hold]
    settings = {
        "kv_lengths": kv_lengths,
        "ffn_batches": ffn_batches,
        "comm_batches": comm_batches,
        "repeats": repeats,
        "quantile": quantile,
        "min_sample_s": min_sample_s,
        "seed": seed,
        "comm": comm,
        "n_bootstrap": n_bootstrap,
        "calls_per_sample": {f"{it.stage}:{it.size}": it.number for it in items},
    }
    return ProfileResult(
        model=shape,
        base_model=base.name,
        scale=float(scale),
        batch_size=batch_size,
        dtype=dtype,
        device=f"{device.platform}:{getattr(device, 'device_kind', '')}".rstrip(":"),
        grouped_matmul=grouped_matmul,
        comm_source=comm_source,
        measurements=measurements,
        held_out=held_out,
        fit=fit,
        held_out_relative_error=errors,
        wall_s=time.perf_counter() - t_start,
        settings=settings,
    )
