"""Latency coefficients from measurement: time real JAX decode layers on this device.

:func:`profile_hardware` builds one decoder layer of a model's shape (a preset from
``afdjax.MODELS`` scaled down by ``scale``, or any :class:`~afdjax.ModelSpec`), times

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
to :func:`afdjax.fit_latency` (Huber). The result reports R^2 and the largest relative
residual per stage, and the relative error of the fitted line at each held-out size.

Times and coefficients are in **microseconds per layer of the profiled shape** on this
device. A scaled-down shape runs fast on a CPU, but its coefficients describe the scaled
model, not the full one.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from .._hardware._core import MODELS, ModelSpec, _check_choice, _check_int, parse_model_spec

COMM_MODES = ("auto", "device", "host", "defaults")
HOLDOUT_EVERY = 3
MOE_CAPACITY_FACTOR = 1.25

CPU_DEFAULTS = dict(scale=1 / 16, batch_size=16, kv_lengths=None,  # set from CPU_KV_CACHE_BYTES
                    ffn_batches=tuple(range(96, 672 + 1, 48)), comm_batches=tuple(range(32, 512 + 1, 32)),
                    repeats=21, min_sample_s=0.003)
CPU_KV_CACHE_BYTES = 2048 * 16 * 36 * 4
"""Largest KV cache of the default CPU attention grid (4.5 MiB: DeepSeek-V3 / 16, B = 16, 2048
tokens per slot); larger caches took 25-60 % more time per token on the 2-core machine."""
ACCEL_DEFAULTS = dict(scale=0.5, batch_size=32, kv_lengths=tuple(range(512, 8192 + 1, 512)),
                      ffn_batches=tuple(range(128, 2048 + 1, 128)), comm_batches=tuple(range(128, 2048 + 1, 128)),
                      repeats=9, min_sample_s=0.002)


# ============================================================================ shapes
def _scaled(value: int, scale: float, minimum: int = 1, multiple: int = 1) -> int:
    if value == 0:
        return 0
    v = max(minimum, int(round(value * scale / multiple)) * multiple)
    return v


def scale_model(model: ModelSpec, scale: float, hidden_size: int | None = None) -> ModelSpec:
    """``model`` with widths, head counts and expert counts multiplied by ``scale`` (rounded,
    at least 1; hidden size a multiple of 16; ``num_kv_heads`` kept a divisor of the
    query heads). ``hidden_size`` overrides the scaled hidden size."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0 < scale <= 1):
        raise ValueError(f"scale={scale!r} is invalid: expected a number in (0, 1]")
    if scale == 1 and hidden_size is None:
        return model
    m = model
    heads = _scaled(m.num_attention_heads, scale)
    kv_heads = 0
    if m.attention == "gqa":
        kv_heads = _scaled(m.num_kv_heads, scale)
        while heads % kv_heads:
            kv_heads -= 1
    experts = _scaled(m.num_routed_experts, scale, minimum=2)
    k = min(_scaled(m.num_experts_per_token, scale), experts)
    fields = dict(
        name=f"{m.name}@{scale:g}" + (f",d={hidden_size}" if hidden_size else ""),
        hidden_size=hidden_size or _scaled(m.hidden_size, scale, minimum=16, multiple=16),
        vocab_size=_scaled(m.vocab_size, scale),
        num_attention_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=_scaled(m.head_dim, scale, minimum=8) if m.attention == "gqa" else 0,
        q_lora_rank=_scaled(m.q_lora_rank, scale, minimum=8),
        kv_lora_rank=_scaled(m.kv_lora_rank, scale, minimum=8),
        qk_nope_head_dim=_scaled(m.qk_nope_head_dim, scale, minimum=4),
        qk_rope_head_dim=_scaled(m.qk_rope_head_dim, scale, minimum=4),
        v_head_dim=_scaled(m.v_head_dim, scale, minimum=4),
        intermediate_size=_scaled(m.intermediate_size, scale, minimum=8),
        num_routed_experts=experts if m.num_moe_layers else 0,
        num_experts_per_token=k if m.num_moe_layers else 0,
        moe_intermediate_size=_scaled(m.moe_intermediate_size, scale, minimum=8),
        description=f"{m.name} scaled by {scale:g} for profiling",
        sources=m.sources,
    )
    return dataclasses.replace(m, **fields)


# ============================================================================ layers
def _init(key, shape, dtype, fan_in):
    return (jax.random.normal(key, shape, dtype=jnp.float32) / math.sqrt(fan_in)).astype(dtype)


def _attention_inputs(model: ModelSpec, batch: int, length: int, dtype, key):
    d, h = model.hidden_size, model.num_attention_heads
    ks = iter(jax.random.split(key, 12))
    x = _init(next(ks), (batch, d), dtype, 1)
    if model.attention == "gqa":
        hd, hkv = model.head_dim, model.num_kv_heads
        weights = dict(
            wq=_init(next(ks), (d, h * hd), dtype, d),
            wk=_init(next(ks), (d, hkv * hd), dtype, d),
            wv=_init(next(ks), (d, hkv * hd), dtype, d),
            wo=_init(next(ks), (h * hd, d), dtype, h * hd),
        )
        cache = dict(k=_init(next(ks), (batch, length, hkv, hd), dtype, 1),
                     v=_init(next(ks), (batch, length, hkv, hd), dtype, 1))
    else:
        c, rope, nope, v = model.kv_lora_rank, model.qk_rope_head_dim, model.qk_nope_head_dim, model.v_head_dim
        q_rank = model.q_lora_rank or d
        weights = dict(
            wqa=_init(next(ks), (d, q_rank), dtype, d),
            wqb=_init(next(ks), (q_rank, h, nope + rope), dtype, q_rank),
            wkva=_init(next(ks), (d, c + rope), dtype, d),
            wuk=_init(next(ks), (h, nope, c), dtype, nope),
            wuv=_init(next(ks), (h, c, v), dtype, c),
            wo=_init(next(ks), (h * v, d), dtype, h * v),
        )
        cache = dict(latent=_init(next(ks), (batch, length, c + rope), dtype, 1))
    return x, weights, cache


def _at_least_f32(dtype):
    """Softmax and router precision: float32 for bfloat16 inputs, the input dtype otherwise."""
    return jnp.promote_types(dtype, jnp.float32)


def _attention_fn(model: ModelSpec):
    """One decode attention layer: ``(x [B, d], weights, cache) -> [B, d]``."""
    if model.attention == "gqa":
        h, hkv, hd = model.num_attention_heads, model.num_kv_heads, model.head_dim

        def layer(x, w, cache):
            b = x.shape[0]
            q = (x @ w["wq"]).reshape(b, hkv, h // hkv, hd)
            k_new, v_new = x @ w["wk"], x @ w["wv"]  # the new token's K/V (appended outside the kernel)
            s = jnp.einsum("bgqd,blgd->bgql", q, cache["k"]) / math.sqrt(hd)
            p = jax.nn.softmax(s.astype(_at_least_f32(x.dtype)), axis=-1).astype(x.dtype)
            o = jnp.einsum("bgql,blgd->bgqd", p, cache["v"]).reshape(b, h * hd)
            return o @ w["wo"] + 0 * (k_new.sum() + v_new.sum())

        return layer
    h, c, rope, nope = model.num_attention_heads, model.kv_lora_rank, model.qk_rope_head_dim, model.qk_nope_head_dim

    def layer(x, w, cache):
        b = x.shape[0]
        q = jnp.einsum("br,rhe->bhe", x @ w["wqa"], w["wqb"])
        q_latent = jnp.einsum("bhn,hnc->bhc", q[..., :nope], w["wuk"])  # absorbed W_UK
        q_full = jnp.concatenate([q_latent, q[..., nope:]], axis=-1)
        new = x @ w["wkva"]  # the new token's latent (appended outside the kernel)
        s = jnp.einsum("bhe,ble->bhl", q_full, cache["latent"]) / math.sqrt(nope + rope)
        p = jax.nn.softmax(s.astype(_at_least_f32(x.dtype)), axis=-1).astype(x.dtype)
        o_latent = jnp.einsum("bhl,blc->bhc", p, cache["latent"][..., :c])
        o = jnp.einsum("bhc,hcv->bhv", o_latent, w["wuv"]).reshape(b, -1)
        return o @ w["wo"] + 0 * new.sum()

    return layer


def _ffn_inputs(model: ModelSpec, tokens: int, dtype, key):
    d = model.hidden_size
    ks = iter(jax.random.split(key, 10))
    x = _init(next(ks), (tokens, d), dtype, 1)
    if not model.num_moe_layers:
        i = model.intermediate_size
        return x, dict(wg=_init(next(ks), (d, i), dtype, d), wu=_init(next(ks), (d, i), dtype, d),
                       wd=_init(next(ks), (i, d), dtype, i))
    e, i = model.num_routed_experts, model.moe_intermediate_size
    w = dict(
        router=_init(next(ks), (d, e), dtype, d),
        wg=_init(next(ks), (e, d, i), dtype, d),
        wu=_init(next(ks), (e, d, i), dtype, d),
        wd=_init(next(ks), (e, i, d), dtype, i),
    )
    if model.num_shared_experts:
        si = model.num_shared_experts * i
        w.update(sg=_init(next(ks), (d, si), dtype, d), su=_init(next(ks), (d, si), dtype, d),
                 sd=_init(next(ks), (si, d), dtype, si))
    return x, w


def _ffn_fn(model: ModelSpec, grouped: str):
    """One FFN / MoE layer: ``(x [N, d], weights) -> [N, d]``; ``grouped`` is
    ``"ragged_dot"`` or ``"capacity"`` (see the module docstring)."""
    if not model.num_moe_layers:
        def dense(x, w):
            return (jax.nn.silu(x @ w["wg"]) * (x @ w["wu"])) @ w["wd"]

        return dense
    e, k = model.num_routed_experts, model.num_experts_per_token

    def moe(x, w):
        n, d = x.shape
        logits = (x @ w["router"]).astype(_at_least_f32(x.dtype))
        gate, expert = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)  # [N, k]
        flat_expert = expert.reshape(-1)
        flat_gate = gate.reshape(-1).astype(x.dtype)
        token = jnp.repeat(jnp.arange(n), k)
        if grouped == "ragged_dot":
            order = jnp.argsort(flat_expert)
            xs = x[token[order]]
            sizes = jnp.bincount(flat_expert, length=e).astype(jnp.int32)
            hidden = jax.nn.silu(jax.lax.ragged_dot(xs, w["wg"], sizes)) * jax.lax.ragged_dot(xs, w["wu"], sizes)
            ys = jax.lax.ragged_dot(hidden, w["wd"], sizes) * flat_gate[order][:, None]
            y = jnp.zeros_like(x).at[token[order]].add(ys)
        else:
            cap = max(1, math.ceil(MOE_CAPACITY_FACTOR * n * k / e))
            onehot = jax.nn.one_hot(flat_expert, e, dtype=jnp.int32)
            pos = jnp.take_along_axis(jnp.cumsum(onehot, axis=0), flat_expert[:, None], axis=1)[:, 0] - 1
            keep = pos < cap
            slot = jnp.where(keep, pos, cap)  # out of range: dropped by the scatter
            buf = jnp.zeros((e, cap, d), x.dtype).at[flat_expert, slot].set(x[token], mode="drop")
            hidden = jax.nn.silu(jnp.einsum("ecd,edi->eci", buf, w["wg"])) * jnp.einsum("ecd,edi->eci", buf, w["wu"])
            out = jnp.einsum("eci,eid->ecd", hidden, w["wd"])
            ys = out[flat_expert, jnp.minimum(slot, cap - 1)] * (flat_gate * keep)[:, None]
            y = ys.reshape(n, k, d).sum(axis=1)
        if "sg" in w:
            y = y + (jax.nn.silu(x @ w["sg"]) * (x @ w["su"])) @ w["sd"]
        return y

    return moe


# ============================================================================ timing
@dataclasses.dataclass
class _Timed:
    stage: str
    size: int  # x of the stage: T (attention), N (FFN), B (comm)
    call: object  # zero-argument callable that runs once and blocks
    number: int = 1
    samples_s: list = dataclasses.field(default_factory=list)


def _calibrate(item: _Timed, min_sample_s: float) -> None:
    for _ in range(2):  # warm-up (first call may touch fresh memory)
        item.call()
    t0 = time.perf_counter()
    item.call()
    once = max(time.perf_counter() - t0, 1e-7)
    item.number = max(1, min(1000, math.ceil(min_sample_s / once)))


def _sample(item: _Timed) -> None:
    item.call()  # untimed: the previous item left the caches and thread pool in another state
    t0 = time.perf_counter()
    for _ in range(item.number):
        item.call()
    item.samples_s.append((time.perf_counter() - t0) / item.number)


def _compiled_call(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()

    def call():
        jax.block_until_ready(compiled(*args))

    return call


def _aligned_empty(shape, dtype, align: int = 64) -> np.ndarray:
    """A host array whose data starts on an ``align``-byte boundary. ``device_put`` takes a
    slower path for misaligned host buffers, and NumPy's alignment varies with the size:
    without this the transfer time jumps 2.5x between neighbouring sizes."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(n + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + n].view(dtype).reshape(shape)


def _host_roundtrip_call(host: np.ndarray, device):
    back = _aligned_empty(host.shape, host.dtype)

    def call():
        on_device = jax.device_put(host, device, may_alias=False)  # a real copy, never a zero-copy view
        on_device.block_until_ready()
        np.copyto(back, np.asarray(on_device))  # device -> preallocated host buffer

    return call


def _device_roundtrip_call(x, there, back):
    def call():
        y = jax.device_put(x, there)
        y.block_until_ready()
        jax.device_put(y, back).block_until_ready()

    return call


# ============================================================================ result
@dataclasses.dataclass(frozen=True)
class ProfileResult:
    """Result of :func:`profile_hardware`.

    - ``model``: the profiled :class:`~afdjax.ModelSpec` (after scaling); ``base_model``
      the name it was scaled from; ``scale``; ``batch_size`` (attention slots).
    - ``measurements``: ``{stage: (sizes, median_us, all_samples_us)}``: sizes ``T``
      (attention KV tokens), ``N`` (FFN batch) or ``B`` (comm tokens); medians in us.
    - ``held_out``: ``{stage: sizes}`` not used in the fit.
    - ``fit``: the :class:`~afdjax.LatencyFit` of the other sizes; ``latency`` its model.
    - ``held_out_relative_error``: ``{stage: array of (predicted - measured) / measured}``.
    - ``comm_source``: ``"device-to-device copy"``, ``"host<->device transfer"`` or
      ``"defaults (SPEC)"``.
    - ``device``: the JAX device description; ``dtype``; ``grouped_matmul``; ``wall_s``.
    """

    model: ModelSpec
    base_model: str
    scale: float
    batch_size: int
    dtype: str
    device: str
    grouped_matmul: str
    comm_source: str
    measurements: dict
    held_out: dict
    fit: object
    held_out_relative_error: dict
    wall_s: float
    settings: dict

    @property
    def latency(self):
        return self.fit.latency

    def max_held_out_error(self) -> float:
        """Largest ``|relative error|`` over all held-out sizes of the measured stages."""
        errs = [np.abs(e).max() for e in self.held_out_relative_error.values() if len(e)]
        return float(max(errs)) if errs else math.nan

    def to_dict(self) -> dict:
        from .._json import jsonable

        return jsonable(dict(
            model=dataclasses.asdict(self.model),
            base_model=self.base_model,
            scale=self.scale,
            batch_size=self.batch_size,
            dtype=self.dtype,
            device=self.device,
            grouped_matmul=self.grouped_matmul,
            comm_source=self.comm_source,
            time_unit="us per layer of the profiled shape",
            latency=self.latency.coefficients(),
            measurements={s: dict(sizes=list(map(int, v[0])), median_us=list(v[1]),
                                  held_out=[int(x) in set(map(int, self.held_out[s])) for x in v[0]])
                          for s, v in self.measurements.items()},
            fit_quality={s: self.fit.stages[s].quality() for s in self.fit.stages if self.fit.stages[s].source == "fit"},
            held_out_relative_error={s: list(v) for s, v in self.held_out_relative_error.items()},
            max_held_out_relative_error=self.max_held_out_error(),
            wall_s=self.wall_s,
            settings=self.settings,
        ))

    def format_text(self) -> str:
        m = self.model
        lines = [
            f"afdjax profile   {self.base_model} scaled by {self.scale:g}   on {self.device}   dtype {self.dtype}",
            f"  shape: d={m.hidden_size}, attention {m.attention} ({m.num_attention_heads} heads, "
            + (f"{m.num_kv_heads} KV heads of {m.head_dim}" if m.attention == "gqa"
               else f"latent {m.kv_lora_rank}+{m.qk_rope_head_dim}")
            + "), FFN "
            + (f"MoE {m.num_experts_per_token}/{m.num_routed_experts} experts of {m.moe_intermediate_size}"
               f"{f' + {m.num_shared_experts} shared' if m.num_shared_experts else ''} ({self.grouped_matmul})"
               if m.num_moe_layers else f"dense {m.intermediate_size}"),
            f"  attention: B = {self.batch_size} slots; communication: {self.comm_source}",
            *([f"  FFN: one MoE layer is timed; the model's {m.num_dense_layers} dense layers are not profiled"]
              if m.num_moe_layers and m.num_dense_layers else []),
            f"  times in microseconds per layer of this shape; quantile {self.settings['quantile']:g} of "
            f"{self.settings['repeats']} round-robin samples; every {HOLDOUT_EVERY}rd size held out; wall time {self.wall_s:.1f} s",
            "",
            f"  {'coefficient':<12}{'fitted':>13}",
        ]
        for k, v in self.latency.coefficients().items():
            lines.append(f"  {k:<12}{v:>13.6g}")
        lines += ["", f"  {'stage':<11}{'fit rows':>9}{'R^2':>10}{'max rel resid':>15}{'held out':>10}"
                  f"{'max |held-out err|':>20}"]
        for stage in ("attention", "ffn", "comm"):
            fit = self.fit.stages[stage]
            if fit.source != "fit":
                lines.append(f"  {stage:<11}   kept from defaults")
                continue
            q = fit.quality()
            err = self.held_out_relative_error.get(stage, np.zeros(0))
            he = f"{100 * np.abs(err).max():.2f}%" if len(err) else "-"
            lines.append(f"  {stage:<11}{q['rows']:>9}{q['r_squared']:>10.5f}{100 * q['max_relative_residual']:>14.2f}%"
                         f"{len(err):>10}{he:>20}")
        lines += ["", "  held-out sizes (measured us -> predicted us, error):"]
        for stage, errs in self.held_out_relative_error.items():
            sizes, med, _ = self.measurements[stage]
            lookup = dict(zip(map(int, sizes), med))
            parts = []
            for x, e in zip(self.held_out[stage], errs):
                meas = lookup[int(x)]
                parts.append(f"{int(x)}: {meas:.4g} -> {meas * (1 + e):.4g} ({100 * e:+.1f}%)")
            lines.append(f"    {stage}: " + "; ".join(parts))
        return "\n".join(lines) + "\n"

    def plot(self, path) -> "Path":
        """Write a PNG: per measured stage, the measured times (fitted sizes as dots, held-out
        sizes as squares) with the fitted line (top), and the relative residuals
        ``(fit - measured) / measured`` in percent with the 15 % band (bottom)."""
        from pathlib import Path

        from .._plot import pyplot

        path = Path(path)
        if path.parent and not path.parent.exists():
            raise FileNotFoundError(f"cannot write plot {str(path)!r}: folder {str(path.parent)!r} does not exist")
        plt = pyplot()
        stages = list(self.measurements)
        fig, axes = plt.subplots(2, len(stages), figsize=(4.2 * len(stages), 6.2), squeeze=False,
                                 gridspec_kw=dict(height_ratios=[2, 1]))
        labels = dict(attention="KV tokens T", ffn="FFN batch N (tokens)", comm="tokens B")
        lat = self.latency
        for col, stage in enumerate(stages):
            sizes, med, _ = self.measurements[stage]
            hold = np.arange(len(sizes)) % HOLDOUT_EVERY == 1
            if stage == "attention":
                line = lambda x: lat.alpha_a * x + lat.beta_a  # noqa: E731
            elif stage == "ffn":
                line = lambda x: lat.alpha_f * x + lat.beta_f  # noqa: E731
            else:
                line = lambda x: lat.alpha_c * x + lat.beta_c  # noqa: E731
            fitted = np.array([float(line(x)) for x in sizes])
            top, bottom = axes[0, col], axes[1, col]
            top.plot(sizes[~hold], med[~hold], "o", ms=4, color="C0", label="measured, fitted")
            top.plot(sizes[hold], med[hold], "s", ms=5, mfc="none", color="C3", label="measured, held out")
            grid = np.linspace(0, sizes.max(), 100)
            top.plot(grid, [float(line(x)) for x in grid], "-", color="C1", label="fit")
            top.set_title(f"{stage} (us per layer)", fontsize=10)
            top.grid(alpha=0.3)
            top.legend(fontsize=8, loc="upper left")
            rel = 100 * (fitted - med) / med
            bottom.axhline(0, color="C1", lw=1)
            for s_ in (-15, 15):
                bottom.axhline(s_, color="C3", ls="--", lw=0.8)
            bottom.plot(sizes[~hold], rel[~hold], "o", ms=4, color="C0")
            bottom.plot(sizes[hold], rel[hold], "s", ms=5, mfc="none", color="C3")
            bottom.set_xlabel(labels[stage])
            bottom.set_ylabel("(fit - measured) / measured, %")
            bottom.grid(alpha=0.3)
        fig.suptitle(f"afdjax profile: {self.base_model} x {self.scale:g} on {self.device}, {self.dtype}", fontsize=11)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def to_toml(self) -> str:
        """Hardware TOML (``--hardware FILE``): fitted ``[latency]`` plus ``[model]`` with the
        profiled shape's layer count and KV bytes per token, and a header with the provenance."""
        from .._hardware._core import Deployment, _deployment_toml

        head = [
            f"Latency coefficients measured by afdjax profile on {self.device} ({self.dtype}), microseconds per layer",
            f"of {self.base_model} scaled by {self.scale:g} (d={self.model.hidden_size}); attention B={self.batch_size}.",
            f"communication: {self.comm_source}.",
            f"max |held-out relative error| = {100 * self.max_held_out_error():.2f}%",
        ]
        for stage in ("attention", "ffn", "comm"):
            fit = self.fit.stages[stage]
            if fit.source != "fit":
                head.append(f"{stage}: kept from defaults")
                continue
            q = fit.quality()
            err = self.held_out_relative_error.get(stage, np.zeros(0))
            head.append(f"{stage}: {q['rows']} fitted sizes, R^2 = {q['r_squared']:.5f}, max relative residual "
                        f"{100 * q['max_relative_residual']:.2f}%, {len(err)} held out, max |error| "
                        f"{100 * np.abs(err).max() if len(err) else float('nan'):.2f}%")
        dep = Deployment(latency=self.latency, num_layers=self.model.num_layers,
                         kv_bytes_per_token=self.model.kv_bytes_per_token, model=self.model.name,
                         accelerator=self.device, time_unit="us per layer")
        return _deployment_toml(self.latency, dep, "\n".join(head),
                                extra_deployment=dict(comm_source=self.comm_source))


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

    **Arguments:**

    - ``model``: a preset name (``afdjax.MODELS``), a model spec string or a ``ModelSpec``.
    - ``scale``: width scale in ``(0, 1]`` (default 1/16 on CPU, 0.5 on GPU/TPU);
      ``hidden_size`` overrides the scaled hidden size.
    - ``batch_size``: decode slots ``B`` of the attention runs (default 8 on CPU, 32 else).
    - ``kv_lengths``: KV tokens per slot (>= 3 sizes); ``T = B * length``.
    - ``ffn_batches``: FFN batch sizes ``N`` (>= 3); ``comm_batches``: tokens ``B`` of the
      communication runs.
    - ``repeats``: round-robin samples per size; ``min_sample_s``: the shortest sample
      (calls are repeated within a sample to reach it); ``quantile``: which quantile of a
      size's samples is its time (default 0.25, the lower quartile; 0.5 is the median).
    - ``comm``: ``auto`` (``device`` with two or more devices, else ``host``), ``device``,
      ``host`` or ``defaults`` (keep ``alpha_c, beta_c`` of ``defaults``, a hardware spec
      string or ``LatencyModel``, which must then be given).
    - ``dtype``: ``float32`` (default on CPU) or ``bfloat16`` (default elsewhere).
    - ``grouped_matmul``: ``ragged_dot`` (default on GPU/TPU) or ``capacity`` (default on CPU).
    - ``seed``: seed of the random inputs; ``n_bootstrap``: bootstrap replicates of the fit
      (0 or >= 20); ``progress``: show a ``tqdm`` bar.

    **Returns:** a :class:`ProfileResult`.
    """
    from .._fit._latency import LatencyObservations, fit_latency
    from .._data._io import parse_hardware_spec
    from .._latency import LatencyModel

    t_start = time.perf_counter()
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    base = MODELS[model] if isinstance(model, str) and model in MODELS else (
        model if isinstance(model, ModelSpec) else None)
    if base is None:
        if not isinstance(model, str):
            raise ValueError(f"model={model!r} is invalid: expected a ModelSpec or a preset name ({', '.join(MODELS)})")
        base = parse_model_spec(model)
    d = CPU_DEFAULTS if on_cpu else ACCEL_DEFAULTS
    scale = d["scale"] if scale is None else scale
    if hidden_size is not None:
        _check_int("hidden_size", hidden_size, 16)
    shape = scale_model(base, scale, hidden_size)
    batch_size = d["batch_size"] if batch_size is None else batch_size
    _check_int("batch_size", batch_size, 1)
    ffn_batches = _grid("ffn_batches", d["ffn_batches"] if ffn_batches is None else ffn_batches)
    comm_batches = _grid("comm_batches", d["comm_batches"] if comm_batches is None else comm_batches)
    repeats = d["repeats"] if repeats is None else repeats
    _check_int("repeats", repeats, 1)
    min_sample_s = d["min_sample_s"] if min_sample_s is None else min_sample_s
    if isinstance(min_sample_s, bool) or not isinstance(min_sample_s, (int, float)) or min_sample_s < 0:
        raise ValueError(f"min_sample_s={min_sample_s!r} is invalid: expected a number >= 0")
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not (0 <= quantile <= 1):
        raise ValueError(f"quantile={quantile!r} is invalid: expected a number in [0, 1] (0.5: median)")
    _check_choice("comm", comm, COMM_MODES)
    dtype = ("float32" if on_cpu else "bfloat16") if dtype is None else dtype
    _check_choice("dtype", dtype, ("float32", "bfloat16"))
    if kv_lengths is None and on_cpu:
        # the CPU grid is set in bytes: the per-token time changes regime once the cache leaves
        # a cache level, so every model's largest cache is the size measured linear for the default
        itemsize = jnp.dtype(dtype).itemsize
        per_slot = shape.kv_elements_per_token_per_layer * itemsize * batch_size
        top = max(64, int(CPU_KV_CACHE_BYTES // per_slot) // 16 * 16)
        kv_lengths = sorted({max(8, int(round(top * (1 + 3 * i / 14) / 4 / 8)) * 8) for i in range(15)})
    kv_lengths = _grid("kv_lengths", d["kv_lengths"] if kv_lengths is None else kv_lengths)
    grouped_matmul = ("capacity" if on_cpu else "ragged_dot") if grouped_matmul is None else grouped_matmul
    _check_choice("grouped_matmul", grouped_matmul, ("capacity", "ragged_dot"))
    _check_int("seed", seed, 0)
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

    items: list[_Timed] = []
    attn = _attention_fn(shape)
    for i, length in enumerate(kv_lengths):
        x, w, cache = _attention_inputs(shape, batch_size, length, jdtype, jax.random.fold_in(key, i))
        items.append(_Timed("attention", batch_size * length, _compiled_call(attn, x, w, cache)))
    ffn = _ffn_fn(shape, grouped_matmul)
    ffn_key = jax.random.fold_in(key, 10_000)
    for i, n in enumerate(ffn_batches):
        # one weight set for all sizes, so that only the batch changes
        x, w = _ffn_inputs(shape, n, jdtype, ffn_key)
        items.append(_Timed("ffn", n, _compiled_call(ffn, x, w)))
    fanout = shape.num_experts_per_token if shape.num_moe_layers else 1  # one copy per routed expert
    comm_source = None
    if comm != "defaults":
        width = fanout * shape.hidden_size
        rng = np.random.default_rng(seed)
        for n in comm_batches:
            host = _aligned_empty((n, width), jdtype)
            host[...] = rng.standard_normal((n, width)).astype(jdtype)
            if comm == "host":
                items.append(_Timed("comm", n, _host_roundtrip_call(host, devices[0])))
            else:
                on0 = jax.device_put(host, devices[0])
                items.append(_Timed("comm", n, _device_roundtrip_call(on0, devices[1], devices[0])))
        comm_source = ("device-to-device copy (device 0 -> 1 -> 0)" if comm == "device"
                       else "host<->device transfer (host -> device -> host; a stand-in for the A<->F link)")
    else:
        comm_source = f"defaults ({defaults if isinstance(defaults, str) else 'given LatencyModel'})"

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items) * (repeats + 1), desc="afdjax profile", unit="run", leave=False)
    for item in items:
        _calibrate(item, min_sample_s)
        if bar is not None:
            bar.update(1)
    order = np.random.default_rng(seed)
    for _ in range(repeats):
        for index in order.permutation(len(items)):  # a fresh order each round: no size always follows another
            _sample(items[index])
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    measurements, held_out, columns = {}, {}, {c: [] for c in ("attention_tokens", "batch_size", "attention_time",
                                                               "ffn_time", "comm_time")}
    for stage in ("attention", "ffn", "comm"):
        stage_items = [it for it in items if it.stage == stage]
        if not stage_items:
            continue
        sizes = np.array([it.size for it in stage_items], dtype=np.float64)
        samples = np.array([it.samples_s for it in stage_items]) * 1e6
        med = np.quantile(samples, quantile, axis=1)
        measurements[stage] = (sizes, med, samples)
        hold = np.arange(len(sizes)) % HOLDOUT_EVERY == 1
        held_out[stage] = sizes[hold]
        for x, y in zip(sizes[~hold], med[~hold]):
            row = dict(attention_tokens=None, batch_size=None, attention_time=None, ffn_time=None, comm_time=None)
            if stage == "attention":
                row.update(attention_tokens=x, attention_time=y)
            else:
                row.update(batch_size=x, **{f"{stage}_time": y})
            for c in columns:
                columns[c].append(row[c])
    obs = LatencyObservations.from_columns(columns, source=f"afdjax profile ({device.platform})")
    fit = fit_latency(obs, n_bootstrap=n_bootstrap, defaults=defaults_model)
    errors = {}
    lat = fit.latency
    for stage, (sizes, med, _) in measurements.items():
        hold = np.arange(len(sizes)) % HOLDOUT_EVERY == 1
        xs = sizes[hold]
        if stage == "attention":
            pred = np.array([float(lat.attention_time(x)) for x in xs])
        elif stage == "ffn":
            pred = np.array([float(lat.ffn_time(1.0, x)) for x in xs])
        else:
            pred = np.array([float(lat.comm_time(1.0, x)) for x in xs])
        errors[stage] = (pred - med[hold]) / med[hold]
    settings = dict(kv_lengths=kv_lengths, ffn_batches=ffn_batches, comm_batches=comm_batches, repeats=repeats,
                    quantile=quantile,
                    min_sample_s=min_sample_s, seed=seed, comm=comm, n_bootstrap=n_bootstrap,
                    calls_per_sample={f"{it.stage}:{it.size}": it.number for it in items})
    return ProfileResult(
        model=shape, base_model=base.name, scale=float(scale), batch_size=batch_size, dtype=dtype,
        device=f"{device.platform}:{getattr(device, 'device_kind', '')}".rstrip(":"), grouped_matmul=grouped_matmul,
        comm_source=comm_source, measurements=measurements, held_out=held_out, fit=fit,
        held_out_relative_error=errors, wall_s=time.perf_counter() - t_start, settings=settings,
    )
