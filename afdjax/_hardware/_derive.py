"""Latency coefficients from first principles: an accelerator spec and a model spec
([`derive_latency`][afdjax.derive_latency]; the report text is in ``afdjax._hardware._text``).

Roofline arithmetic, **per layer and in microseconds** (the unit ``paper-910c`` plausibly
uses), for the three stages of an rA-1F decode step (see ``afdjax._latency``):

* **attention** on one Attention instance of ``n_A`` devices holding ``T`` KV tokens:

  - ``alpha_a = max(kv_bytes / (n_A BW e_mem), attn_flops / (n_A P_kv e_cmp))`` per KV token
    (``P_kv``: peak FLOP/s at the KV cache's dtype, BF16 for a 2-byte cache).
    Decode attention reads each cached token once per step (``kv_bytes`` per token per
    layer: ``2 h_kv d_head`` elements for MHA/GQA, ``d_c + d_rope`` for MLA's compressed
    latent) and does ``attn_flops`` per cached token (``4 h_q d_head`` for MHA/GQA,
    ``2 h_q (2 d_c + d_rope)`` for MLA with absorbed up-projections: scores over
    ``d_c + d_rope``, values over ``d_c``). MLA is near the ridge point on every GPU here,
    GQA is far below it (memory bound).
  - ``beta_a = (W_attn + W_vocab / L) / (n_A BW e_mem) + overhead``: the attention
    projection weights of one layer are read once per step, plus the embedding and LM-head
    share of one layer (they run once per step on the Attention side; averaged over the
    ``L`` layers), plus a fixed kernel overhead. The projections' FLOPs (``2 W`` per slot)
    are not modelled: they hide under the weight read while ``B`` is below the ridge
    intensity ``P / BW`` (about 300 slots per byte of weight on H100), i.e. in decode.

* **FFN** on the aggregated ``r B`` tokens, FFN instance of ``n_F`` devices:

  - ``alpha_f = ffn_flops / (n_F P e_cmp)`` per token, ``ffn_flops`` = ``2 * 3 * d * I``
    per gated (SwiGLU) MLP; an MoE layer counts the ``k`` routed plus the shared experts
    and the router (``2 d E``). Models whose first layers are dense (DeepSeek-V3) are
    averaged over layers: the per-layer coefficient times ``L`` is the whole step.
  - ``beta_f = W_ffn / (n_F BW e_mem) + overhead``: the FFN weights of one layer (averaged
    over layers) are read once per step. For MoE **all experts** are counted: with ``N``
    tokens each touching ``k`` of ``E`` experts, the expected fraction of experts touched
    is ``1 - (1 - k/E)^N``, above 99 % from ``N = ln(0.01) / ln(1 - k/E)`` tokens (145 for
    DeepSeek-V3, 72 for Qwen3-235B-A22B); the aggregated ``r B`` batch is far larger.
  - The sum ``alpha x + beta`` is the linear stand-in for the roofline ``max``: exact at
    both ends, at most 2x too slow at the ridge.

* **communication**, one direction per layer (``t_C`` is the A->F dispatch; the F->A
  combine moves the same bytes the other way and takes the same time: the micro-batch
  pipeline runs both, the paper's idealised step overlaps them on full-duplex links), over
  the Attention instance's links:

  - ``alpha_c = f d b_act / (n_A link_BW e_net)`` per token of the instance's batch
    (``comm_scaling="batch"``: the Attention instance's own links are the bottleneck), with
    fan-out ``f = min(k, n_F)`` for an MoE layer (a token goes to the devices of its ``k``
    routed experts; shared experts are replicated on every FFN device) and ``f = 1`` for a
    dense layer, averaged over layers.
  - ``beta_c = link_latency``: the fixed latency of one transfer.
  - **scale-up domains**: ``link_BW`` is the scale-up (NVLink-class) bandwidth while the
    bundle's first Attention instance and the FFN instance fit in one domain
    (``n_A + n_F <= scale_up_domain``: 8 GPUs per HGX/DGX node, 72 per GB200 NVL72, 8,960
    per TPU v5p pod; see the accelerator presets), else the scale-out bandwidth per device
    (a 400 Gb/s NIC per GPU: 50 GB/s each way). Attention and FFN on different accelerators
    (heterogeneous AFD) never share a domain. Within a domain the note gives the largest
    ratio whose ``r`` Attention instances still fit; beyond it the bundle's far instances
    cross domains (the linear model keeps the in-domain link for every ``r``).

* **stage-time parts** (``stage_terms=True``, the default; see [`StageNoise`][afdjax.StageNoise] and
  friends): ``num_layers = L`` (a barrier per layer); for an MoE model
  ``ExpertRouting(E, k, ranks = min(n_F, E))`` (uniform popularity: the FFN time follows the
  busiest of the ``n_F`` expert-parallel ranks); with ``comm_scaling="batch"``
  ``Communication(alpha_link = f d b_act / (n_F link_BW_F e_net))``, the FFN's own links
  carrying the ``r B`` tokens of all its peers. No noise (it is measured, not derived).

Efficiencies default to ``memory_efficiency = 0.8``, ``compute_efficiency = 0.6``,
``network_efficiency = 0.8``: FlashMLA reaches 3000 GB/s of H800's 3.35 TB/s (0.90) in
memory-bound decode and 580 of 990 TFLOPS (0.59) compute-bound
(https://github.com/deepseek-ai/FlashMLA); DeepEP's normal kernels reach 153 of ~160 GB/s
NVLink and 43-58 of ~50 GB/s RDMA (https://github.com/deepseek-ai/DeepEP). Production
kernels over a whole layer are rarely that good, so memory is rounded down to 0.8.

Instance sizes: by default the Attention instance has the fewest devices (a power of two)
whose HBM holds its weights in at most half the HBM (the rest is KV cache), and the FFN
instance the fewest devices (a power of two) that hold all FFN weights in 90 % of the
HBM. Devices in an instance are assumed to split the work perfectly (tensor/expert
parallel: bandwidth and FLOP/s add up).

Assumptions that are not datasheet numbers (override them): ``kernel_overhead_us = 2``
per stage per layer, and the accelerators' ``interconnect_latency_us = 3`` per transfer.
"""

from __future__ import annotations

import dataclasses

from .._latency import COMM_SCALINGS, LatencyModel
from .._stage import Communication, ExpertRouting
from .._validate import check_choice, check_fraction, check_int, check_number, invalid
from ._deployment import Deployment
from ._devices import ACCELERATORS, DTYPE_BYTES, DTYPES, MODELS, TIME_UNIT, Accelerator, ModelSpec

DEFAULT_MEMORY_EFFICIENCY = 0.8
DEFAULT_COMPUTE_EFFICIENCY = 0.6
DEFAULT_NETWORK_EFFICIENCY = 0.8
DEFAULT_KERNEL_OVERHEAD_US = 2.0
ATTENTION_HBM_WEIGHT_FRACTION = 0.5
FFN_HBM_WEIGHT_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class CoefficientDerivation:
    """How one coefficient was computed: ``value_us`` (per layer), the formula in symbols
    and with the numbers substituted, and the regime (``memory``, ``compute``, ...)."""

    name: str
    value_us: float
    formula: str
    numbers: str
    bound: str


@dataclasses.dataclass(frozen=True)
class HardwareDerivation:
    """Result of [`derive_latency`][afdjax.derive_latency].

    Attributes:
        accelerator: the [`Accelerator`][afdjax.Accelerator] of the Attention instances.
        model: the [`ModelSpec`][afdjax.ModelSpec].
        dtype: the weight dtype used (``"bf16"`` or ``"fp8"``).
        memory_efficiency: ``e_mem``, the fraction of peak HBM bandwidth reached.
        compute_efficiency: ``e_cmp``, the fraction of peak FLOP/s reached.
        network_efficiency: ``e_net``, the fraction of link bandwidth reached.
        kernel_overhead_us: fixed overhead per stage (us).
        attention_devices: devices per Attention instance ``n_A``.
        ffn_devices: devices per FFN instance ``n_F``.
        latency: the [`LatencyModel`][afdjax.LatencyModel], microseconds per layer.
        coefficients: a ``CoefficientDerivation`` per coefficient name (formula and numbers).
        notes: assumptions and warnings (weights that do not fit, ...).

    Properties: ``num_layers`` (TPOT = ``num_layers`` x per-layer cycle time),
    ``kv_bytes_per_token`` (over all layers), ``hbm_capacity_bytes`` (one device),
    ``attention_weight_bytes`` (weights resident on one Attention instance: attention
    projections, embedding and LM head), ``ffn_weight_bytes`` and ``power_watts`` (one
    device, ``None`` if unknown).
    """

    accelerator: Accelerator
    model: ModelSpec
    dtype: str
    memory_efficiency: float
    compute_efficiency: float
    network_efficiency: float
    kernel_overhead_us: float
    attention_devices: int
    ffn_devices: int
    latency: LatencyModel
    coefficients: dict
    notes: tuple[str, ...]
    ffn_accelerator: Accelerator | None = None
    """The FFN instance's accelerator when it differs from the Attention one
    (heterogeneous AFD, ``ATTENTION_ACCEL/FFN_ACCEL:MODEL``); ``None``: the same."""

    @property
    def heterogeneous(self) -> bool:
        """Whether Attention and FFN run on different accelerators."""
        return self.ffn_accelerator is not None

    @property
    def ffn_power_watts(self) -> float | None:
        """Board power of one FFN device (W; the Attention device's when not heterogeneous)."""
        return (self.ffn_accelerator or self.accelerator).power_watts

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def kv_bytes_per_token(self) -> int:
        return self.model.kv_bytes_per_token

    @property
    def hbm_capacity_bytes(self) -> float:
        return self.accelerator.hbm_capacity_bytes

    @property
    def power_watts(self) -> float | None:
        return self.accelerator.power_watts

    @property
    def attention_weight_bytes(self) -> float:
        return (self.model.num_layers * self.model.attention_params_per_layer + self.model.vocab_params) * DTYPE_BYTES[
            self.dtype
        ]

    @property
    def ffn_weight_bytes(self) -> float:
        return self.model.ffn_params * DTYPE_BYTES[self.dtype]

    def deployment(self) -> Deployment:
        return Deployment(
            latency=self.latency,
            num_layers=self.num_layers,
            kv_bytes_per_token=self.kv_bytes_per_token,
            hbm_capacity_bytes=self.hbm_capacity_bytes,
            accelerator=self.accelerator.name + (f"/{self.ffn_accelerator.name}" if self.heterogeneous else ""),
            model=self.model.name,
            power_watts=self.power_watts,
            attention_devices=self.attention_devices,
            ffn_devices=self.ffn_devices,
            attention_weight_bytes=self.attention_weight_bytes,
            time_unit=TIME_UNIT,
            ffn_power_watts=self.ffn_power_watts if self.heterogeneous else None,
        )

    def format_text(self) -> str:
        """The derivation report of ``afdjax hardware``: every coefficient with its formula
        and the numbers substituted."""
        from ._text import format_derivation

        return format_derivation(self)

    def to_dict(self) -> dict:
        return {
            "accelerator": dataclasses.asdict(self.accelerator),
            **({"ffn_accelerator": dataclasses.asdict(self.ffn_accelerator)} if self.heterogeneous else {}),
            "model": dataclasses.asdict(self.model),
            "dtype": self.dtype,
            "memory_efficiency": self.memory_efficiency,
            "compute_efficiency": self.compute_efficiency,
            "network_efficiency": self.network_efficiency,
            "kernel_overhead_us": self.kernel_overhead_us,
            "time_unit": TIME_UNIT,
            "latency": self.latency.coefficients(),
            "comm_scaling": self.latency.comm_scaling,
            "coefficients": {k: dataclasses.asdict(v) for k, v in self.coefficients.items()},
            "deployment": self.deployment().to_dict(),
            "notes": list(self.notes),
        }

    def to_toml(self) -> str:
        """Hardware TOML with ``[latency]``, ``[model]``, ``[accelerator]`` and ``[deployment]``
        (read by ``--hardware FILE`` and [`load_deployment`][afdjax.load_deployment])."""
        from ._toml import derivation_to_toml

        return derivation_to_toml(self)


def _instance_devices(weight_bytes: float, capacity: float, fraction: float) -> int:
    n = 1
    while weight_bytes > fraction * n * capacity:
        n *= 2
    return n


def derive_latency(
    accelerator: Accelerator | str,
    model: ModelSpec | str,
    *,
    dtype: str | None = None,
    memory_efficiency: float = DEFAULT_MEMORY_EFFICIENCY,
    compute_efficiency: float = DEFAULT_COMPUTE_EFFICIENCY,
    network_efficiency: float = DEFAULT_NETWORK_EFFICIENCY,
    kernel_overhead_us: float = DEFAULT_KERNEL_OVERHEAD_US,
    attention_devices: int | None = None,
    ffn_devices: int | None = None,
    comm_scaling: str = "batch",
    ffn_accelerator: Accelerator | str | None = None,
    stage_terms: bool = True,
) -> HardwareDerivation:
    """Roofline latency coefficients (microseconds per layer) of ``model`` on ``accelerator``.

    Arguments:
        accelerator: an [`Accelerator`][afdjax.Accelerator] / [`ModelSpec`][afdjax.ModelSpec] or a preset
            name (``afdjax.ACCELERATORS``, ``afdjax.MODELS``).
        model: see ``accelerator``.
        dtype: weight and compute dtype, ``bf16`` or ``fp8`` (default: the model's
            ``weight_dtype``; ``fp8`` weights on an accelerator without FP8 fall back to ``bf16``
            with a note).
        memory_efficiency: fractions of
            the peak HBM bandwidth, FLOP/s and link bandwidth reached, in ``(0, 1]``.
        compute_efficiency: see ``memory_efficiency``.
        network_efficiency: see ``memory_efficiency``.
        kernel_overhead_us: fixed time added to ``beta_a`` and ``beta_f`` (``>= 0``).
        attention_devices: devices per Attention / FFN instance
            (default: the smallest power of two whose HBM holds the weights, see the module doc).
        ffn_devices: see ``attention_devices``.
        comm_scaling: ``batch`` (default; the Attention instance's links bound) or
            ``ratio_batch`` (the FFN instance's links bound: ``alpha_c`` uses ``n_F`` devices).
        ffn_accelerator: heterogeneous AFD: the FFN instance's accelerator (default: the
            same as ``accelerator``). The FFN coefficients, the FFN instance's size and, with
            ``ratio_batch``, the link bandwidth come from it; the attention coefficients, the KV
            capacity and the ``batch`` link from ``accelerator``. A dtype that one side lacks
            (FP8) falls back to BF16 on both.
        stage_terms: fill ``num_layers``, the MoE ``routing`` and the shared FFN link
            (``comm``) of the latency model (module docstring); ``False``: the six coefficients only.

    The formulas are in the module docstring; [`format_text`][afdjax.HardwareDerivation.format_text] shows
    them with the numbers.

    Examples:
        >>> d = afdjax.derive_latency("h100", "deepseek-v3")
        >>> d.attention_devices, d.ffn_devices, round(d.latency.coefficients()["beta_c"], 1)
        (1, 16, 3.0)
    """
    acc = _resolve(accelerator, ACCELERATORS, Accelerator, "accelerator")
    mod = _resolve(model, MODELS, ModelSpec, "model")
    acc_f = acc if ffn_accelerator is None else _resolve(ffn_accelerator, ACCELERATORS, Accelerator, "ffn_accelerator")
    notes: list[str] = []
    if dtype is None:
        dtype = mod.weight_dtype
        for a in dict.fromkeys((acc, acc_f)):
            if dtype == "fp8" and a.fp8_flops_per_s is None:
                notes.append(f"{a.name} has no FP8: {mod.name}'s FP8 weights are taken as BF16 (dtype=bf16)")
                dtype = "bf16"
    check_choice("dtype", dtype, DTYPES)
    acc.peak_flops_per_s(dtype)  # the dtype must exist on both sides
    peak = acc_f.peak_flops_per_s(dtype)
    for name, v in (
        ("memory_efficiency", memory_efficiency),
        ("compute_efficiency", compute_efficiency),
        ("network_efficiency", network_efficiency),
    ):
        check_fraction(name, v)
    check_number("kernel_overhead_us", kernel_overhead_us, strict=False)
    check_choice("comm_scaling", comm_scaling, COMM_SCALINGS)
    wb = DTYPE_BYTES[dtype]
    L = mod.num_layers
    attn_weights = (L * mod.attention_params_per_layer + mod.vocab_params) * wb
    ffn_weights = mod.ffn_params * wb
    cap = acc.hbm_capacity_bytes
    if acc_f is not acc:
        notes.append(f"heterogeneous AFD: Attention on {acc.name}, FFN on {acc_f.name}")
    if attention_devices is None:
        attention_devices = _instance_devices(attn_weights, cap, ATTENTION_HBM_WEIGHT_FRACTION)
    else:
        check_int("attention_devices", attention_devices, 1)
    if ffn_devices is None:
        ffn_devices = _instance_devices(ffn_weights, acc_f.hbm_capacity_bytes, FFN_HBM_WEIGHT_FRACTION)
    else:
        check_int("ffn_devices", ffn_devices, 1)
    na, nf = attention_devices, ffn_devices
    for side, w, n, c in (("Attention", attn_weights, na, cap), ("FFN", ffn_weights, nf, acc_f.hbm_capacity_bytes)):
        if w > n * c:
            notes.append(f"the {side} instance's weights ({w / 1e9:.4g} GB) exceed its HBM ({n} x {c / 1e9:.4g} GB)")

    bw, mem_e, cmp_e, net_e = acc.hbm_bandwidth_bytes_per_s, memory_efficiency, compute_efficiency, network_efficiency
    us = 1e6
    coeffs: dict[str, CoefficientDerivation] = {}

    # attention, per KV token
    kvb, aflops = mod.kv_bytes_per_token_per_layer, mod.attention_flops_per_kv_token
    # the attention core runs at the KV cache's dtype (BF16 KV: BF16 tensor FLOP/s)
    kv_dtype = "fp8" if mod.kv_bytes == 1 and acc.fp8_flops_per_s is not None else "bf16"
    peak_a = acc.peak_flops_per_s(kv_dtype)
    t_mem = kvb / (na * bw * mem_e) * us
    t_cmp = aflops / (na * peak_a * cmp_e) * us
    coeffs["alpha_a"] = CoefficientDerivation(
        "alpha_a",
        max(t_mem, t_cmp),
        "max(kv_bytes / (n_A BW e_mem), attn_flops / (n_A P_kv e_cmp)) per KV token (P_kv: peak at the KV dtype)",
        f"max({kvb} B / ({na} x {bw:.4g} B/s x {mem_e:g}), {aflops} FLOP / ({na} x {peak_a:.4g} FLOP/s x {cmp_e:g})) "
        f"= max({t_mem:.4g}, {t_cmp:.4g}) us",
        "memory" if t_mem >= t_cmp else "compute",
    )
    wa = mod.attention_params_per_layer * wb
    wv = mod.vocab_params * wb / L
    t = (wa + wv) / (na * bw * mem_e) * us
    coeffs["beta_a"] = CoefficientDerivation(
        "beta_a",
        t + kernel_overhead_us,
        "(W_attn + W_vocab / L) / (n_A BW e_mem) + overhead",
        f"({wa:.4g} B + {wv:.4g} B) / ({na} x {bw:.4g} B/s x {mem_e:g}) + {kernel_overhead_us:g} us "
        f"= {t:.4g} + {kernel_overhead_us:g} us",
        "memory (weights)",
    )
    # FFN, per token of the aggregated batch (averaged over dense and MoE layers)
    fflops = (mod.num_dense_layers * mod.dense_ffn_flops_per_token + mod.num_moe_layers * mod.moe_flops_per_token) / L
    t = fflops / (nf * peak * cmp_e) * us
    coeffs["alpha_f"] = CoefficientDerivation(
        "alpha_f",
        t,
        "ffn_flops / (n_F P e_cmp) per token, ffn_flops averaged over layers",
        f"{fflops:.6g} FLOP / ({nf} x {peak:.4g} FLOP/s x {cmp_e:g}) = {t:.4g} us",
        "compute",
    )
    bw_f = acc_f.hbm_bandwidth_bytes_per_s
    wf = ffn_weights / L
    t = wf / (nf * bw_f * mem_e) * us
    touched = mod.experts_touched_99_tokens()
    coeffs["beta_f"] = CoefficientDerivation(
        "beta_f",
        t + kernel_overhead_us,
        "W_ffn / L / (n_F BW e_mem) + overhead" + (" (all experts touched)" if touched is not None else ""),
        f"{wf:.4g} B / ({nf} x {bw_f:.4g} B/s x {mem_e:g}) + {kernel_overhead_us:g} us "
        f"= {t:.4g} + {kernel_overhead_us:g} us",
        "memory (weights)",
    )
    if touched is not None:
        notes.append(
            f"beta_f reads all {mod.num_routed_experts} experts: 99 % are touched once the aggregated batch "
            f"r*B exceeds {touched:.0f} tokens (expected fraction 1 - (1 - k/E)^(rB))"
        )
    # communication, per token of one instance's batch
    fan_moe = min(mod.num_experts_per_token, nf) if mod.num_moe_layers else 0
    fanout = (mod.num_dense_layers * 1 + mod.num_moe_layers * fan_moe) / L
    link = _link_bandwidth(acc if comm_scaling == "batch" else acc_f, acc, acc_f, na, nf, notes)
    n_link = na if comm_scaling == "batch" else nf
    per_token = fanout * mod.hidden_size * mod.activation_bytes  # one direction (dispatch; combine is symmetric)
    t = per_token / (n_link * link * net_e) * us
    coeffs["alpha_c"] = CoefficientDerivation(
        "alpha_c",
        t,
        f"f d b_act / (n_{'A' if comm_scaling == 'batch' else 'F'} link_BW e_net) per token, one direction "
        "(A->F dispatch; F->A combine takes the same; fan-out f averaged over layers)",
        f"{fanout:.4g} x {mod.hidden_size} x {mod.activation_bytes} B / ({n_link} x {link:.4g} B/s x {net_e:g}) "
        f"= {t:.4g} us",
        "network",
    )
    lat = acc.interconnect_latency_us
    coeffs["beta_c"] = CoefficientDerivation(
        "beta_c", lat, "link_latency (one transfer)", f"{lat:g} us", "network latency"
    )
    notes.append(
        f"interconnect latency {lat:g} us per transfer and kernel overhead {kernel_overhead_us:g} us are "
        "assumptions, not datasheet numbers"
    )
    latency = LatencyModel(
        **{k: c.value_us for k, c in coeffs.items()},
        comm_scaling=comm_scaling,
        **(_stage_parts(mod, acc, acc_f, na, nf, per_token, net_e, comm_scaling, notes) if stage_terms else {}),
    )
    return HardwareDerivation(
        accelerator=acc,
        model=mod,
        dtype=dtype,
        memory_efficiency=float(mem_e),
        compute_efficiency=float(cmp_e),
        network_efficiency=float(net_e),
        kernel_overhead_us=float(kernel_overhead_us),
        attention_devices=na,
        ffn_devices=nf,
        latency=latency,
        coefficients=coeffs,
        notes=tuple(notes),
        ffn_accelerator=None if acc_f is acc else acc_f,
    )


def _link_bandwidth(side: Accelerator, acc: Accelerator, acc_f: Accelerator, na: int, nf: int, notes: list) -> float:
    """The A<->F link bandwidth per device of ``side``: scale-up while one Attention instance
    and the FFN instance fit in one scale-up domain, else scale-out (module docstring)."""
    domain = side.scale_up_domain
    spans = acc_f is not acc or (domain is not None and na + nf > domain)
    if not spans:
        if domain is not None:
            notes.append(
                f"A<->F over the scale-up link: the FFN ({nf}) and up to {(domain - nf) // na} Attention "
                f"instance(s) of {na} device(s) fit in one {domain}-device domain"
            )
        return side.interconnect_bandwidth_bytes_per_s
    why = "on different accelerators" if acc_f is not acc else f"{na} + {nf} devices > one {domain}-device domain"
    if side.scale_out_bandwidth_bytes_per_s is None:
        notes.append(
            f"A<->F crosses scale-up domains ({why}) but {side.name} has no scale-out bandwidth: scale-up used"
        )
        return side.interconnect_bandwidth_bytes_per_s
    bw = side.scale_out_bandwidth_bytes_per_s
    notes.append(f"A<->F crosses scale-up domains ({why}): scale-out {bw / 1e9:g} GB/s per device each way")
    return bw


def _stage_parts(mod, acc, acc_f, na, nf, per_token, net_e, comm_scaling, notes) -> dict:
    """``num_layers``, ``routing`` and ``comm`` of the derived latency model (module docstring)."""
    parts: dict = {"num_layers": mod.num_layers}
    if mod.num_moe_layers:
        ranks = min(nf, mod.num_routed_experts)
        parts["routing"] = ExpertRouting(mod.num_routed_experts, mod.num_experts_per_token, ranks)
        notes.append(
            f"routing: {mod.num_routed_experts} experts, top-{mod.num_experts_per_token}, {ranks} expert-parallel "
            "rank(s), uniform popularity (the FFN time follows the busiest rank)"
        )
    if comm_scaling == "batch":
        link_f = _link_bandwidth(acc_f, acc, acc_f, na, nf, [])
        alpha_link = per_token / (nf * link_f * net_e) * 1e6
        parts["comm"] = Communication(alpha_link=alpha_link)
        notes.append(f"shared FFN link: alpha_link = f d b_act / (n_F link_BW_F e_net) = {alpha_link:.4g} us per token")
    return parts


def _resolve(value, presets, cls, what):
    """An instance as is, or a preset by name. Spec strings with overrides or TOML files are
    read by [`parse_accelerator_spec`][afdjax.parse_accelerator_spec] /
    [`parse_model_spec`][afdjax.parse_model_spec]."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, str):
        raise invalid(what, value, f"a {cls.__name__} or a preset name ({', '.join(presets)})")
    if value not in presets:
        raise ValueError(
            f"unknown {what} {value!r}; available: {', '.join(presets)} (for NAME,field=value,... or a "
            f"TOML file, pass parse_{what}_spec(...))"
        )
    return presets[value]
