"""Latency coefficients from first principles: an accelerator spec and a model spec.

Roofline arithmetic, **per layer and in microseconds** (the unit ``paper-910c`` plausibly
uses), for the three stages of an rA-1F decode step (see :mod:`afdjax._latency`):

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
import math
import tomllib
from pathlib import Path

from .._latency import COMM_SCALINGS, PRESETS as LATENCY_PRESETS, LatencyModel

DTYPES = ("bf16", "fp8")
"""Weight / compute dtypes: ``bf16`` (also FP16; 2 bytes) and ``fp8`` (1 byte)."""
DTYPE_BYTES = {"bf16": 2, "fp8": 1}
ATTENTION_KINDS = ("gqa", "mla")
TIME_UNIT = "us per layer"

DEFAULT_MEMORY_EFFICIENCY = 0.8
DEFAULT_COMPUTE_EFFICIENCY = 0.6
DEFAULT_NETWORK_EFFICIENCY = 0.8
DEFAULT_KERNEL_OVERHEAD_US = 2.0
ATTENTION_HBM_WEIGHT_FRACTION = 0.5
FFN_HBM_WEIGHT_FRACTION = 0.9


# ============================================================================ validation helpers
def _check_name(what, name):
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what}: name={name!r} is invalid: expected a non-empty string")


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; expected one of {', '.join(allowed)}")


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} is invalid: expected a finite number > 0")


def _check_nonnegative(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} is invalid: expected a finite number >= 0")


def _check_fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value <= 1):
        raise ValueError(f"{name}={value!r} is invalid: expected a number in (0, 1]")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid: expected an integer >= {minimum}")


# ============================================================================ specs
@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One accelerator device (all rates per device, SI units).

    - ``hbm_capacity_bytes``: HBM capacity.
    - ``hbm_bandwidth_bytes_per_s``: peak HBM bandwidth.
    - ``bf16_flops_per_s``: peak dense (not sparse) BF16/FP16 tensor FLOP/s.
    - ``fp8_flops_per_s``: peak dense FP8 tensor FLOP/s, ``None`` if unsupported.
    - ``interconnect_bandwidth_bytes_per_s``: scale-up link bandwidth per direction
      (NVLink "900 GB/s" is 450 GB/s each way).
    - ``interconnect_latency_us``: fixed latency of one transfer (an assumption).
    - ``power_watts``: board power (TDP/TBP), ``None`` if not published.
    - ``sources``: public URLs for the numbers.
    """

    name: str
    hbm_capacity_bytes: float
    hbm_bandwidth_bytes_per_s: float
    bf16_flops_per_s: float
    fp8_flops_per_s: float | None
    interconnect_bandwidth_bytes_per_s: float
    interconnect_latency_us: float = 3.0
    power_watts: float | None = None
    description: str = ""
    sources: tuple[str, ...] = ()

    def __post_init__(self):
        _check_name("Accelerator", self.name)
        for f in ("hbm_capacity_bytes", "hbm_bandwidth_bytes_per_s", "bf16_flops_per_s",
                  "interconnect_bandwidth_bytes_per_s"):
            _check_positive(f"Accelerator {self.name!r}: {f}", getattr(self, f))
        _check_nonnegative(f"Accelerator {self.name!r}: interconnect_latency_us", self.interconnect_latency_us)
        for f in ("fp8_flops_per_s", "power_watts"):
            if getattr(self, f) is not None:
                _check_positive(f"Accelerator {self.name!r}: {f}", getattr(self, f))

    def peak_flops_per_s(self, dtype: str) -> float:
        """Peak dense FLOP/s at ``dtype`` (``bf16`` or ``fp8``)."""
        _check_choice("dtype", dtype, DTYPES)
        if dtype == "fp8":
            if self.fp8_flops_per_s is None:
                raise ValueError(f"dtype='fp8' is not supported by accelerator {self.name!r}; allowed: bf16")
            return self.fp8_flops_per_s
        return self.bf16_flops_per_s


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer (per-layer shapes as in its ``config.json``).

    - ``num_layers``, ``hidden_size`` (``d``), ``vocab_size``.
    - ``attention``: ``"gqa"`` (MHA is GQA with ``num_kv_heads == num_attention_heads``)
      or ``"mla"`` (multi-head latent attention, DeepSeek-V2/V3).
    - GQA: ``num_attention_heads``, ``num_kv_heads``, ``head_dim``.
    - MLA: ``num_attention_heads``, ``q_lora_rank`` (0: no query compression),
      ``kv_lora_rank`` (``d_c``), ``qk_nope_head_dim``, ``qk_rope_head_dim``, ``v_head_dim``.
    - Dense FFN (gated, 3 matrices): ``intermediate_size``; ``num_dense_layers`` layers
      use it (all layers for a dense model, the first 3 of DeepSeek-V3).
    - MoE layers (the other layers): ``num_routed_experts`` (``E``),
      ``num_experts_per_token`` (``k``), ``moe_intermediate_size``, ``num_shared_experts``.
    - ``weight_dtype`` (``bf16``/``fp8``), ``kv_bytes`` and ``activation_bytes`` per element.
    """

    name: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    attention: str
    num_attention_heads: int
    num_kv_heads: int = 0
    head_dim: int = 0
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    intermediate_size: int = 0
    num_dense_layers: int = 0
    num_routed_experts: int = 0
    num_experts_per_token: int = 0
    moe_intermediate_size: int = 0
    num_shared_experts: int = 0
    weight_dtype: str = "bf16"
    kv_bytes: int = 2
    activation_bytes: int = 2
    tie_word_embeddings: bool = False
    description: str = ""
    sources: tuple[str, ...] = ()

    def __post_init__(self):
        _check_name("ModelSpec", self.name)
        where = f"ModelSpec {self.name!r}"
        _check_choice(f"{where}: attention", self.attention, ATTENTION_KINDS)
        _check_choice(f"{where}: weight_dtype", self.weight_dtype, DTYPES)
        for f in ("num_layers", "hidden_size", "vocab_size", "num_attention_heads", "kv_bytes", "activation_bytes"):
            _check_int(f"{where}: {f}", getattr(self, f), 1)
        for f in ("num_kv_heads", "head_dim", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                  "v_head_dim", "intermediate_size", "num_dense_layers", "num_routed_experts",
                  "num_experts_per_token", "moe_intermediate_size", "num_shared_experts"):
            _check_int(f"{where}: {f}", getattr(self, f), 0)
        if self.attention == "gqa":
            for f in ("num_kv_heads", "head_dim"):
                _check_int(f"{where}: {f} (needed for attention='gqa')", getattr(self, f), 1)
            if self.num_attention_heads % self.num_kv_heads:
                raise ValueError(f"{where}: num_attention_heads={self.num_attention_heads} is not a multiple of "
                                 f"num_kv_heads={self.num_kv_heads}")
        else:
            for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                _check_int(f"{where}: {f} (needed for attention='mla')", getattr(self, f), 1)
        if self.num_dense_layers > self.num_layers:
            raise ValueError(f"{where}: num_dense_layers={self.num_dense_layers} exceeds num_layers={self.num_layers}")
        if self.num_dense_layers:
            _check_int(f"{where}: intermediate_size (needed for dense layers)", self.intermediate_size, 1)
        if self.num_moe_layers:
            for f in ("num_routed_experts", "num_experts_per_token", "moe_intermediate_size"):
                _check_int(f"{where}: {f} (needed for the {self.num_moe_layers} MoE layers)", getattr(self, f), 1)
            if self.num_experts_per_token > self.num_routed_experts:
                raise ValueError(f"{where}: num_experts_per_token={self.num_experts_per_token} exceeds "
                                 f"num_routed_experts={self.num_routed_experts}")

    # ---------------------------------------------------------------- derived counts
    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers

    @property
    def kv_elements_per_token_per_layer(self) -> int:
        """Cached elements per token per layer: ``2 h_kv d_head`` (K and V) or ``d_c + d_rope`` (MLA)."""
        if self.attention == "gqa":
            return 2 * self.num_kv_heads * self.head_dim
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def kv_bytes_per_token_per_layer(self) -> int:
        return self.kv_elements_per_token_per_layer * self.kv_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token over all layers."""
        return self.kv_bytes_per_token_per_layer * self.num_layers

    @property
    def attention_flops_per_kv_token(self) -> int:
        """FLOPs per cached token per layer for one decode query (score and value products)."""
        if self.attention == "gqa":
            return 2 * 2 * self.num_attention_heads * self.head_dim
        return 2 * self.num_attention_heads * (2 * self.kv_lora_rank + self.qk_rope_head_dim)

    @property
    def attention_params_per_layer(self) -> int:
        """Attention projection weights of one layer (norms ignored)."""
        d, h = self.hidden_size, self.num_attention_heads
        if self.attention == "gqa":
            q = h * self.head_dim
            return d * q + 2 * d * self.num_kv_heads * self.head_dim + q * d
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        if self.q_lora_rank:
            q = d * self.q_lora_rank + self.q_lora_rank * h * qk
        else:
            q = d * h * qk
        kv = d * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank * h * (
            self.qk_nope_head_dim + self.v_head_dim
        )
        return q + kv + h * self.v_head_dim * d

    @property
    def vocab_params(self) -> int:
        """Embedding plus LM head (one matrix if tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def dense_ffn_params_per_layer(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def moe_params_per_layer(self) -> int:
        """All routed and shared experts plus the router of one MoE layer."""
        experts = (self.num_routed_experts + self.num_shared_experts) * 3 * self.hidden_size * self.moe_intermediate_size
        return experts + self.hidden_size * self.num_routed_experts

    @property
    def ffn_params(self) -> int:
        """FFN weights over all layers."""
        return self.num_dense_layers * self.dense_ffn_params_per_layer + self.num_moe_layers * self.moe_params_per_layer

    @property
    def dense_ffn_flops_per_token(self) -> int:
        return 2 * self.dense_ffn_params_per_layer

    @property
    def moe_flops_per_token(self) -> int:
        """Active path of one MoE layer: ``k`` routed + shared experts and the router."""
        active = (self.num_experts_per_token + self.num_shared_experts) * 3 * self.hidden_size * self.moe_intermediate_size
        return 2 * (active + self.hidden_size * self.num_routed_experts)

    @property
    def total_params(self) -> int:
        return self.num_layers * self.attention_params_per_layer + self.vocab_params + self.ffn_params

    def experts_touched_99_tokens(self) -> float | None:
        """Tokens after which 99 % of the routed experts are touched in expectation."""
        if not self.num_moe_layers:
            return None
        p = self.num_experts_per_token / self.num_routed_experts
        return math.inf if p == 0 else (0.0 if p >= 1 else math.log(0.01) / math.log1p(-p))


# ============================================================================ presets
_NV_H100 = "https://www.nvidia.com/en-us/data-center/h100/"
_NV_H200 = "https://www.nvidia.com/en-us/data-center/h200/"
_NV_A100 = "https://www.nvidia.com/en-us/data-center/a100/"
_NV_DGX_B200 = "https://www.nvidia.com/en-us/data-center/dgx-b200/"
_B200_PER_GPU = "https://glennklockwood.com/garden/processors/B200"
_AMD_MI300X = "https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html"
_TPU_V5P = "https://cloud.google.com/tpu/docs/v5p"

ACCELERATORS: dict[str, Accelerator] = {
    "h100": Accelerator(
        "h100", 80e9, 3.35e12, 989.5e12, 1979e12, 450e9, power_watts=700.0,
        description="NVIDIA H100 SXM5 80 GB: HBM3 3.35 TB/s; BF16 1,979 / FP8 3,958 TFLOPS with sparsity "
        "(half dense); NVLink 900 GB/s (450 GB/s each way); up to 700 W",
        sources=(_NV_H100,),
    ),
    "h200": Accelerator(
        "h200", 141e9, 4.8e12, 989.5e12, 1979e12, 450e9, power_watts=700.0,
        description="NVIDIA H200 SXM 141 GB: HBM3e 4.8 TB/s; BF16 1,979 / FP8 3,958 TFLOPS with sparsity "
        "(half dense); NVLink 900 GB/s (450 GB/s each way); up to 700 W",
        sources=(_NV_H200,),
    ),
    "a100": Accelerator(
        "a100", 80e9, 2.039e12, 312e12, None, 300e9, power_watts=400.0,
        description="NVIDIA A100 80 GB SXM: HBM2e 2,039 GB/s; BF16 312 TFLOPS dense (624 sparse), no FP8; "
        "NVLink 600 GB/s (300 GB/s each way); 400 W",
        sources=(_NV_A100,),
    ),
    "b200": Accelerator(
        "b200", 180e9, 8e12, 2.25e15, 4.5e15, 900e9, power_watts=1000.0,
        description="NVIDIA B200 (HGX/DGX B200, per GPU = system / 8): 1,440 GB and 64 TB/s HBM3e per 8 GPUs; "
        "FP8 72 PFLOPS sparse per 8 GPUs (4.5 PFLOPS dense per GPU), BF16 2.25 PFLOPS dense; NVLink 5 "
        "14.4 TB/s per 8 GPUs (1.8 TB/s per GPU, 900 GB/s each way); 1,000 W",
        sources=(_NV_DGX_B200, _B200_PER_GPU),
    ),
    "mi300x": Accelerator(
        "mi300x", 192e9, 5.3e12, 1307.4e12, 2614.9e12, 448e9, power_watts=750.0,
        description="AMD Instinct MI300X: 192 GB HBM3, 5.3 TB/s; FP16/BF16 1,307.4 TFLOPS and FP8 2,614.9 "
        "TFLOPS dense; Infinity Fabric 7 links x 128 GB/s = 896 GB/s (448 GB/s each way); 750 W",
        sources=(_AMD_MI300X,),
    ),
    "tpu-v5p": Accelerator(
        "tpu-v5p", 95e9, 2.765e12, 459e12, None, 300e9, power_watts=None,
        description="Google Cloud TPU v5p chip: 95 GB HBM2e, 2,765 GB/s; BF16 459 TFLOPS (INT8 918 TOPS, "
        "no FP8); ICI 4,800 Gb/s per chip = 600 GB/s (300 GB/s each way); power not published",
        sources=(_TPU_V5P,),
    ),
}
"""Accelerator presets; every number is from the URLs in ``sources``."""

_HF_DSV3 = "https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json"
_HF_QWEN3 = "https://huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json"
_HF_LLAMA = "https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json"

MODELS: dict[str, ModelSpec] = {
    "deepseek-v3": ModelSpec(
        "deepseek-v3", num_layers=61, hidden_size=7168, vocab_size=129280, attention="mla",
        num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, intermediate_size=18432, num_dense_layers=3,
        num_routed_experts=256, num_experts_per_token=8, moe_intermediate_size=2048, num_shared_experts=1,
        weight_dtype="fp8", kv_bytes=2, activation_bytes=2,
        description="DeepSeek-V3 (671B total, 37B active): MLA, first_k_dense_replace=3, 256 routed + 1 shared "
        "experts, top-8; released FP8 (e4m3) weights; BF16 latent KV cache",
        sources=(_HF_DSV3,),
    ),
    "qwen3-235b-a22b": ModelSpec(
        "qwen3-235b-a22b", num_layers=94, hidden_size=4096, vocab_size=151936, attention="gqa",
        num_attention_heads=64, num_kv_heads=4, head_dim=128, num_dense_layers=0,
        num_routed_experts=128, num_experts_per_token=8, moe_intermediate_size=1536, num_shared_experts=0,
        weight_dtype="bf16", kv_bytes=2, activation_bytes=2,
        description="Qwen3-235B-A22B: GQA 64 query / 4 KV heads of 128, every layer MoE (128 experts, top-8, "
        "no shared expert); BF16",
        sources=(_HF_QWEN3,),
    ),
    "llama-3.1-70b": ModelSpec(
        "llama-3.1-70b", num_layers=80, hidden_size=8192, vocab_size=128256, attention="gqa",
        num_attention_heads=64, num_kv_heads=8, head_dim=128, intermediate_size=28672, num_dense_layers=80,
        weight_dtype="bf16", kv_bytes=2, activation_bytes=2,
        description="Llama-3.1-70B: dense, GQA 64 query / 8 KV heads of 128, SwiGLU 28672; BF16",
        sources=(_HF_LLAMA,),
    ),
}
"""Model presets; shapes from the Hugging Face ``config.json`` in ``sources``."""

# The paper preset is DeepSeek-V3 on Ascend 910C (arXiv 2601.21351): its model is known.
LATENCY_PRESET_MODELS = {"paper-910c": "deepseek-v3"}


# ============================================================================ derivation
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
    """Result of :func:`derive_latency`.

    - ``latency``: the :class:`LatencyModel`, microseconds per layer.
    - ``num_layers``: decoder layers (TPOT = ``num_layers`` x per-layer cycle time).
    - ``kv_bytes_per_token``: KV-cache bytes per token over all layers.
    - ``hbm_capacity_bytes``: HBM of one device; ``attention_devices`` / ``ffn_devices``
      devices per Attention / FFN instance.
    - ``attention_weight_bytes``: weights resident on one Attention instance (all layers'
      attention projections, embedding and LM head); ``ffn_weight_bytes`` on the FFN instance.
    - ``power_watts``: board power of one device (``None`` if unknown).
    - ``coefficients``: a :class:`CoefficientDerivation` per coefficient name.
    - ``notes``: assumptions and warnings (weights that do not fit, ...).
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

    def deployment(self) -> "Deployment":
        return Deployment(
            latency=self.latency,
            num_layers=self.num_layers,
            kv_bytes_per_token=self.kv_bytes_per_token,
            hbm_capacity_bytes=self.hbm_capacity_bytes,
            accelerator=self.accelerator.name,
            model=self.model.name,
            power_watts=self.power_watts,
            attention_devices=self.attention_devices,
            ffn_devices=self.ffn_devices,
            attention_weight_bytes=self.attention_weight_bytes,
            time_unit=TIME_UNIT,
        )

    def format_text(self) -> str:
        a, m = self.accelerator, self.model
        lines = [
            f"afdjax hardware   {a.name}:{m.name}   dtype {self.dtype}   (microseconds per layer)",
            f"  accelerator  {a.description or a.name}",
            f"               sources: {', '.join(a.sources) or 'custom'}",
            f"  model        {m.description or m.name}",
            f"               sources: {', '.join(m.sources) or 'custom'}",
            f"  efficiencies memory {self.memory_efficiency:g}, compute {self.compute_efficiency:g}, "
            f"network {self.network_efficiency:g}; kernel overhead {self.kernel_overhead_us:g} us per stage",
            f"  instances    Attention: {self.attention_devices} device(s), FFN: {self.ffn_devices} device(s)",
            f"  model facts  {m.num_layers} layers, KV {m.kv_bytes_per_token_per_layer} B/token/layer "
            f"({m.kv_bytes_per_token} B/token), weights: attention side {self.attention_weight_bytes / 1e9:.4g} GB, "
            f"FFN side {self.ffn_weight_bytes / 1e9:.4g} GB",
            "",
        ]
        for name, c in self.coefficients.items():
            lines.append(f"  {name:<8} = {c.value_us:.6g} us   [{c.bound}]")
            lines.append(f"             {c.formula}")
            lines.append(f"             {c.numbers}")
        if self.notes:
            lines += ["", "Notes"] + [f"  - {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        return dict(
            accelerator=dataclasses.asdict(self.accelerator),
            model=dataclasses.asdict(self.model),
            dtype=self.dtype,
            memory_efficiency=self.memory_efficiency,
            compute_efficiency=self.compute_efficiency,
            network_efficiency=self.network_efficiency,
            kernel_overhead_us=self.kernel_overhead_us,
            time_unit=TIME_UNIT,
            latency=self.latency.coefficients(),
            comm_scaling=self.latency.comm_scaling,
            coefficients={k: dataclasses.asdict(v) for k, v in self.coefficients.items()},
            deployment=self.deployment().to_dict(),
            notes=list(self.notes),
        )

    def to_toml(self) -> str:
        """Hardware TOML with ``[latency]``, ``[model]``, ``[accelerator]`` and ``[deployment]``
        (read by ``--hardware FILE`` and :func:`load_deployment`)."""
        head = [f"Latency coefficients derived from specs by afdjax hardware ({self.accelerator.name}:{self.model.name}, "
                f"dtype {self.dtype}), microseconds per layer."]
        head += [f"{k} = {c.value_us:.6g}: {c.formula} = {c.numbers}" for k, c in self.coefficients.items()]
        head += [f"source: {s}" for s in self.accelerator.sources + self.model.sources]
        return _deployment_toml(self.latency, self.deployment(), "\n".join(head),
                                extra_model=dict(weight_dtype=self.dtype),
                                extra_accelerator=dict(memory_efficiency=self.memory_efficiency,
                                                       compute_efficiency=self.compute_efficiency,
                                                       network_efficiency=self.network_efficiency))


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
) -> HardwareDerivation:
    """Roofline latency coefficients (microseconds per layer) of ``model`` on ``accelerator``.

    **Arguments:**

    - ``accelerator``, ``model``: an :class:`Accelerator` / :class:`ModelSpec` or a preset
      name (``afdjax.ACCELERATORS``, ``afdjax.MODELS``).
    - ``dtype``: weight and compute dtype, ``bf16`` or ``fp8`` (default: the model's
      ``weight_dtype``; ``fp8`` weights on an accelerator without FP8 fall back to ``bf16``
      with a note).
    - ``memory_efficiency``, ``compute_efficiency``, ``network_efficiency``: fractions of
      the peak HBM bandwidth, FLOP/s and link bandwidth reached, in ``(0, 1]``.
    - ``kernel_overhead_us``: fixed time added to ``beta_a`` and ``beta_f`` (``>= 0``).
    - ``attention_devices``, ``ffn_devices``: devices per Attention / FFN instance
      (default: the smallest power of two whose HBM holds the weights, see the module doc).
    - ``comm_scaling``: ``batch`` (default; the Attention instance's links bound) or
      ``ratio_batch`` (the FFN instance's links bound: ``alpha_c`` uses ``n_F`` devices).

    The formulas are in the module docstring; :meth:`HardwareDerivation.format_text` shows
    them with the numbers.
    """
    acc = _resolve(accelerator, ACCELERATORS, Accelerator, "accelerator")
    mod = _resolve(model, MODELS, ModelSpec, "model")
    notes: list[str] = []
    if dtype is None:
        dtype = mod.weight_dtype
        if dtype == "fp8" and acc.fp8_flops_per_s is None:
            notes.append(f"{acc.name} has no FP8: {mod.name}'s FP8 weights are taken as BF16 (dtype=bf16)")
            dtype = "bf16"
    _check_choice("dtype", dtype, DTYPES)
    peak = acc.peak_flops_per_s(dtype)
    for name, v in (("memory_efficiency", memory_efficiency), ("compute_efficiency", compute_efficiency),
                    ("network_efficiency", network_efficiency)):
        _check_fraction(name, v)
    _check_nonnegative("kernel_overhead_us", kernel_overhead_us)
    _check_choice("comm_scaling", comm_scaling, COMM_SCALINGS)
    wb = DTYPE_BYTES[dtype]
    L = mod.num_layers
    attn_weights = (L * mod.attention_params_per_layer + mod.vocab_params) * wb
    ffn_weights = mod.ffn_params * wb
    cap = acc.hbm_capacity_bytes
    if attention_devices is None:
        attention_devices = _instance_devices(attn_weights, cap, ATTENTION_HBM_WEIGHT_FRACTION)
    else:
        _check_int("attention_devices", attention_devices, 1)
    if ffn_devices is None:
        ffn_devices = _instance_devices(ffn_weights, cap, FFN_HBM_WEIGHT_FRACTION)
    else:
        _check_int("ffn_devices", ffn_devices, 1)
    na, nf = attention_devices, ffn_devices
    for side, w, n in (("Attention", attn_weights, na), ("FFN", ffn_weights, nf)):
        if w > n * cap:
            notes.append(f"the {side} instance's weights ({w / 1e9:.4g} GB) exceed its HBM ({n} x {cap / 1e9:.4g} GB)")

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
        "alpha_a", max(t_mem, t_cmp),
        "max(kv_bytes / (n_A BW e_mem), attn_flops / (n_A P_kv e_cmp)) per KV token (P_kv: peak at the KV dtype)",
        f"max({kvb} B / ({na} x {bw:.4g} B/s x {mem_e:g}), {aflops} FLOP / ({na} x {peak_a:.4g} FLOP/s x {cmp_e:g})) "
        f"= max({t_mem:.4g}, {t_cmp:.4g}) us",
        "memory" if t_mem >= t_cmp else "compute",
    )
    wa = mod.attention_params_per_layer * wb
    wv = mod.vocab_params * wb / L
    t = (wa + wv) / (na * bw * mem_e) * us
    coeffs["beta_a"] = CoefficientDerivation(
        "beta_a", t + kernel_overhead_us,
        "(W_attn + W_vocab / L) / (n_A BW e_mem) + overhead",
        f"({wa:.4g} B + {wv:.4g} B) / ({na} x {bw:.4g} B/s x {mem_e:g}) + {kernel_overhead_us:g} us "
        f"= {t:.4g} + {kernel_overhead_us:g} us",
        "memory (weights)",
    )
    # FFN, per token of the aggregated batch (averaged over dense and MoE layers)
    fflops = (mod.num_dense_layers * mod.dense_ffn_flops_per_token + mod.num_moe_layers * mod.moe_flops_per_token) / L
    t = fflops / (nf * peak * cmp_e) * us
    coeffs["alpha_f"] = CoefficientDerivation(
        "alpha_f", t,
        "ffn_flops / (n_F P e_cmp) per token, ffn_flops averaged over layers",
        f"{fflops:.6g} FLOP / ({nf} x {peak:.4g} FLOP/s x {cmp_e:g}) = {t:.4g} us",
        "compute",
    )
    wf = ffn_weights / L
    t = wf / (nf * bw * mem_e) * us
    touched = mod.experts_touched_99_tokens()
    coeffs["beta_f"] = CoefficientDerivation(
        "beta_f", t + kernel_overhead_us,
        "W_ffn / L / (n_F BW e_mem) + overhead" + (" (all experts touched)" if touched is not None else ""),
        f"{wf:.4g} B / ({nf} x {bw:.4g} B/s x {mem_e:g}) + {kernel_overhead_us:g} us = {t:.4g} + {kernel_overhead_us:g} us",
        "memory (weights)",
    )
    if touched is not None:
        notes.append(f"beta_f reads all {mod.num_routed_experts} experts: 99 % are touched once the aggregated batch "
                     f"r*B exceeds {touched:.0f} tokens (expected fraction 1 - (1 - k/E)^(rB))")
    # communication, per token of one instance's batch
    fan_moe = min(mod.num_experts_per_token, nf) if mod.num_moe_layers else 0
    fanout = (mod.num_dense_layers * 1 + mod.num_moe_layers * fan_moe) / L
    link = acc.interconnect_bandwidth_bytes_per_s
    n_link = na if comm_scaling == "batch" else nf
    per_token = fanout * mod.hidden_size * mod.activation_bytes  # one direction (dispatch; combine is symmetric)
    t = per_token / (n_link * link * net_e) * us
    coeffs["alpha_c"] = CoefficientDerivation(
        "alpha_c", t,
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
    notes.append(f"interconnect latency {lat:g} us per transfer and kernel overhead {kernel_overhead_us:g} us are "
                 "assumptions, not datasheet numbers")
    latency = LatencyModel(**{k: c.value_us for k, c in coeffs.items()}, comm_scaling=comm_scaling)
    return HardwareDerivation(
        accelerator=acc, model=mod, dtype=dtype, memory_efficiency=float(mem_e), compute_efficiency=float(cmp_e),
        network_efficiency=float(net_e), kernel_overhead_us=float(kernel_overhead_us),
        attention_devices=na, ffn_devices=nf, latency=latency, coefficients=coeffs, notes=tuple(notes),
    )


def _resolve(value, presets, cls, what):
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        return _parse_spec(value, presets, cls, what)
    raise ValueError(f"{what}={value!r} is invalid: expected a {cls.__name__} or a preset name "
                     f"({', '.join(presets)})")


# ============================================================================ custom specs
_ACCEL_TABLE, _MODEL_TABLE = "accelerator", "model"


def _coerce(cls, name: str, key: str, value, where: str):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields or key in ("description",):
        allowed = [f for f in fields if f not in ("name", "description", "sources")]
        raise ValueError(f"{where}: unknown {name} field {key!r}; allowed: {', '.join(allowed)}")
    kind = fields[key].type
    if key == "sources":
        return tuple(value) if isinstance(value, (list, tuple)) else (str(value),)
    if isinstance(value, str):
        text = value.strip()
        if "int" in str(kind) and "float" not in str(kind):
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"{where}: {key}={value!r} is not an integer") from None
        if "float" in str(kind):
            if text.lower() in ("none", "null", ""):
                return None
            try:
                return float(text)
            except ValueError:
                raise ValueError(f"{where}: {key}={value!r} is not a number") from None
        if "bool" in str(kind):
            if text.lower() not in ("true", "false"):
                raise ValueError(f"{where}: {key}={value!r} is not true or false")
            return text.lower() == "true"
        return text
    if "float" in str(kind) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _parse_spec(text: str, presets: dict, cls, what: str):
    """``NAME``, ``NAME,key=value,...`` (override preset fields) or a TOML file with a
    ``[accelerator]`` / ``[model]`` table (full spec, or ``base = "NAME"`` plus fields)."""
    spec = text.strip()
    head, _, rest = spec.partition(",")
    head = head.strip()
    table_name = _ACCEL_TABLE if cls is Accelerator else _MODEL_TABLE
    if head.lower().endswith(".toml"):
        p = Path(head).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{what} file {head!r} does not exist")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{what} file {head!r} is not valid TOML: {err}") from None
        table = data.get(table_name)
        if not isinstance(table, dict):
            raise ValueError(f"{what} file {head!r}: no [{table_name}] table")
        table = dict(table)
        base = table.pop("base", None)
        where = f"{what} file {head!r}"
        values = {} if base is None else dataclasses.asdict(_parse_spec(str(base), presets, cls, what))
        if base is None and "name" not in table:
            table["name"] = p.stem
        for k, v in table.items():
            values[k] = v if k == "name" else _coerce(cls, what, k, v, where)
        if rest.strip():
            values.update(_overrides(rest, cls, what, f"{what} spec {text!r}"))
    else:
        if head not in presets:
            raise ValueError(f"unknown {what} {head!r}; available: {', '.join(presets)} "
                             f"(or NAME,field=value,... or a TOML file with a [{table_name}] table)")
        values = dataclasses.asdict(presets[head])
        over = _overrides(rest, cls, what, f"{what} spec {text!r}")
        if over:
            values.update(over)
            values["sources"] = tuple(values["sources"]) + (f"overridden: {', '.join(sorted(over))}",)
    values["sources"] = tuple(values.get("sources", ()))
    try:
        return cls(**values)
    except TypeError as err:
        raise ValueError(f"{what} spec {text!r}: {err}") from None


def _overrides(text: str, cls, what: str, where: str) -> dict:
    out = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"{where}: expected field=value items after the name, got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        if k == "name":
            out[k] = v
            continue
        out[k] = _coerce(cls, what, k, v, where)
    return out


def parse_accelerator_spec(text: str) -> Accelerator:
    """An :class:`Accelerator` from ``NAME``, ``NAME,field=value,...`` or ``FILE.toml``."""
    return _parse_spec(text, ACCELERATORS, Accelerator, "accelerator")


def parse_model_spec(text: str) -> ModelSpec:
    """A :class:`ModelSpec` from ``NAME``, ``NAME,field=value,...`` or ``FILE.toml``."""
    return _parse_spec(text, MODELS, ModelSpec, "model")


_DERIVE_OPTIONS = {
    "dtype": str, "memory_efficiency": float, "compute_efficiency": float, "network_efficiency": float,
    "kernel_overhead_us": float, "attention_devices": int, "ffn_devices": int, "comm_scaling": str,
}


def derive_from_spec(spec: str) -> HardwareDerivation:
    """``ACCELERATOR:MODEL[,option=value,...]`` (options: the keyword arguments of
    :func:`derive_latency`), e.g. ``h100:deepseek-v3,dtype=bf16,ffn_devices=32``."""
    accel, sep, rest = spec.strip().partition(":")
    if not sep:
        raise ValueError(f"hardware spec {spec!r}: expected ACCELERATOR:MODEL")
    model, _, options = rest.partition(",")
    kwargs = {}
    for item in options.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"hardware spec {spec!r}: expected option=value after ACCELERATOR:MODEL, got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        if k not in _DERIVE_OPTIONS:
            raise ValueError(f"hardware spec {spec!r}: unknown option {k!r}; allowed: {', '.join(_DERIVE_OPTIONS)}")
        try:
            kwargs[k] = _DERIVE_OPTIONS[k](v)
        except ValueError:
            raise ValueError(f"hardware spec {spec!r}: {k}={v!r} is not a valid {_DERIVE_OPTIONS[k].__name__}") from None
    return derive_latency(parse_accelerator_spec(accel), parse_model_spec(model), **kwargs)


def is_accelerator_model_spec(text: str) -> bool:
    """True for ``ACCELERATOR:MODEL[,...]`` (a colon before any comma or ``=``, not a file)."""
    head = text.strip().split(",", 1)[0]
    return ":" in head and "=" not in head and not head.lower().endswith(".toml") and not Path(head).is_file()


# ============================================================================ deployment
@dataclasses.dataclass(frozen=True)
class Deployment:
    """What afdjax knows about a hardware spec, beyond the latency coefficients.

    Every field other than ``latency`` is ``None`` when the spec does not say.

    - ``latency``: the :class:`LatencyModel` (its unit is ``time_unit``).
    - ``num_layers``: decoder layers; with per-layer coefficients the time per output
      token is ``num_layers * E[tau]`` (TPOT, in the coefficients' unit).
    - ``kv_bytes_per_token``: KV-cache bytes per token **over all layers** (bytes); an
      Attention instance with ``K`` bytes free for KV cache holds ``K / kv_bytes_per_token``
      tokens, i.e. ``B * theta <= K / kv_bytes_per_token``.
    - ``hbm_capacity_bytes``: HBM of **one device** (bytes).
    - ``accelerator``, ``model``: names.
    - ``power_watts``: board power of one device (W).
    - ``attention_devices``, ``ffn_devices``: devices per Attention / FFN instance.
    - ``attention_weight_bytes``: weights resident on one Attention instance, all layers
      (bytes); see :meth:`kv_capacity_bytes`.
    - ``time_unit``: unit of the coefficients, e.g. ``"us per layer"``.
    """

    latency: LatencyModel
    num_layers: int | None = None
    kv_bytes_per_token: float | None = None
    hbm_capacity_bytes: float | None = None
    accelerator: str | None = None
    model: str | None = None
    power_watts: float | None = None
    attention_devices: int | None = None
    ffn_devices: int | None = None
    attention_weight_bytes: float | None = None
    time_unit: str | None = None

    def kv_capacity_bytes(self, reserve_fraction: float = 0.0) -> float | None:
        """HBM left for KV cache on one Attention instance:
        ``attention_devices * hbm_capacity_bytes * (1 - reserve_fraction) - attention_weight_bytes``
        (bytes, ``None`` if any input is unknown; ``attention_devices`` defaults to 1)."""
        if self.hbm_capacity_bytes is None or self.attention_weight_bytes is None:
            return None
        if not (0 <= reserve_fraction < 1):
            raise ValueError(f"reserve_fraction={reserve_fraction!r} is invalid: expected a number in [0, 1)")
        n = self.attention_devices or 1
        return n * self.hbm_capacity_bytes * (1 - reserve_fraction) - self.attention_weight_bytes

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "latency"}
        out["latency"] = self.latency.coefficients()
        out["comm_scaling"] = self.latency.comm_scaling
        return out


_MODEL_KEYS = {"name": str, "num_layers": int, "kv_bytes_per_token": (int, float)}
_ACCEL_KEYS = {"name": str, "hbm_capacity_bytes": (int, float), "hbm_capacity_gb": (int, float),
               "power_watts": (int, float)}
_DEPLOY_KEYS = {"attention_devices": int, "ffn_devices": int, "attention_weight_bytes": (int, float), "time_unit": str}


def _toml_value(v) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _deployment_toml(latency: LatencyModel, dep: Deployment, description: str | None = None,
                     extra_model=None, extra_accelerator=None, extra_deployment=None) -> str:
    from .._data._io import latency_to_toml

    text = latency_to_toml(latency, description=description)
    if dep.time_unit:
        text += f"units = {_toml_value(dep.time_unit)}\n"
    sections = {
        "model": dict(name=dep.model, num_layers=dep.num_layers, kv_bytes_per_token=dep.kv_bytes_per_token,
                      **(extra_model or {})),
        "accelerator": dict(name=dep.accelerator, hbm_capacity_bytes=dep.hbm_capacity_bytes,
                            power_watts=dep.power_watts, **(extra_accelerator or {})),
        "deployment": dict(attention_devices=dep.attention_devices, ffn_devices=dep.ffn_devices,
                           attention_weight_bytes=dep.attention_weight_bytes, **(extra_deployment or {})),
    }
    for section, values in sections.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            text += f"\n[{section}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items())
    return text


def deployment_to_toml(deployment: Deployment, description: str | None = None) -> str:
    """TOML text for a :class:`Deployment` (read back by :func:`load_deployment`)."""
    return _deployment_toml(deployment.latency, deployment, description)


def _read_section(data: dict, section: str, keys: dict, where: str) -> dict:
    table = data.get(section)
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise ValueError(f"{where}: [{section}] must be a table")
    out = {}
    for k, kind in keys.items():
        if k not in table:
            continue
        v = table[k]
        ok = isinstance(v, kind) and not isinstance(v, bool)
        if not ok:
            want = "a string" if kind is str else ("an integer" if kind is int else "a number")
            raise ValueError(f"{where}: [{section}] {k}={v!r} is invalid: expected {want}")
        if kind is not str and (not math.isfinite(v) or v < (1 if kind is int else 0)):
            raise ValueError(f"{where}: [{section}] {k}={v!r} is invalid: expected "
                             f"{'an integer >= 1' if kind is int else 'a finite number >= 0'}")
        out[k] = v
    return out


def load_deployment(spec: str) -> Deployment:
    """A :class:`Deployment` from any ``--hardware`` spec.

    - ``ACCELERATOR:MODEL[,option=value,...]``: derived by :func:`derive_latency`
      (everything known);
    - a TOML file: ``[latency]`` plus the optional ``[model]`` (``name``, ``num_layers``,
      ``kv_bytes_per_token`` over all layers), ``[accelerator]`` (``name``,
      ``hbm_capacity_bytes`` or ``hbm_capacity_gb`` (1e9 bytes), ``power_watts``) and
      ``[deployment]`` (``attention_devices``, ``ffn_devices``, ``attention_weight_bytes``)
      tables, and ``units`` in ``[latency]``;
    - a latency preset (``paper-910c``: DeepSeek-V3 layers and KV bytes, nothing about
      the accelerator) or inline coefficients (only ``latency`` known).
    """
    from .._data._io import parse_hardware_spec

    if not isinstance(spec, str):
        raise ValueError(f"spec={spec!r} is invalid: expected a hardware spec string")
    if is_accelerator_model_spec(spec):
        return derive_from_spec(spec).deployment()
    latency = parse_hardware_spec(spec)
    head = spec.strip().split(",", 1)[0].strip()
    p = Path(head).expanduser()
    if head and "=" not in head and (head.lower().endswith(".toml") or p.is_file()):
        data = tomllib.loads(p.read_text(encoding="utf-8"))
        where = f"hardware file {head!r}"
        model = _read_section(data, "model", _MODEL_KEYS, where)
        accel = _read_section(data, "accelerator", _ACCEL_KEYS, where)
        dep = _read_section(data, "deployment", _DEPLOY_KEYS, where)
        if "hbm_capacity_bytes" in accel and "hbm_capacity_gb" in accel:
            raise ValueError(f"{where}: [accelerator] gives both hbm_capacity_bytes and hbm_capacity_gb; give one")
        hbm = accel.get("hbm_capacity_bytes", accel["hbm_capacity_gb"] * 1e9 if "hbm_capacity_gb" in accel else None)
        units = data.get("latency", {}).get("units") if isinstance(data.get("latency"), dict) else None
        return Deployment(
            latency=latency,
            num_layers=model.get("num_layers"),
            kv_bytes_per_token=model.get("kv_bytes_per_token"),
            hbm_capacity_bytes=None if hbm is None else float(hbm),
            accelerator=accel.get("name"),
            model=model.get("name"),
            power_watts=None if "power_watts" not in accel else float(accel["power_watts"]),
            attention_devices=dep.get("attention_devices"),
            ffn_devices=dep.get("ffn_devices"),
            attention_weight_bytes=dep.get("attention_weight_bytes"),
            time_unit=units if isinstance(units, str) else dep.get("time_unit"),
        )
    if head in LATENCY_PRESETS and head in LATENCY_PRESET_MODELS:
        m = MODELS[LATENCY_PRESET_MODELS[head]]
        return Deployment(latency=latency, num_layers=m.num_layers, kv_bytes_per_token=m.kv_bytes_per_token,
                          model=m.name, accelerator="ascend-910c" if head == "paper-910c" else None,
                          time_unit="unstated (plausibly us per layer)")
    return Deployment(latency=latency)


def format_presets() -> str:
    """The accelerator and model presets with their sources (``afdjax hardware --list``)."""
    lines = ["Accelerators (per device; FLOP/s dense; link bandwidth per direction)", ""]
    lines.append(f"  {'name':<9}{'HBM GB':>8}{'HBM TB/s':>10}{'BF16 TF':>9}{'FP8 TF':>9}{'link GB/s':>11}{'W':>7}")
    for a in ACCELERATORS.values():
        fp8 = f"{a.fp8_flops_per_s / 1e12:.6g}" if a.fp8_flops_per_s else "-"
        pw = f"{a.power_watts:g}" if a.power_watts else "-"
        lines.append(f"  {a.name:<9}{a.hbm_capacity_bytes / 1e9:>8g}{a.hbm_bandwidth_bytes_per_s / 1e12:>10g}"
                     f"{a.bf16_flops_per_s / 1e12:>9g}{fp8:>9}{a.interconnect_bandwidth_bytes_per_s / 1e9:>11g}{pw:>7}")
        lines.append(f"  {'':<9}{', '.join(a.sources)}")
    lines += ["", "Models", ""]
    lines.append(f"  {'name':<17}{'layers':>7}{'hidden':>7}{'attn':>5}{'KV B/tok/layer':>16}{'experts':>9}{'weights':>8}")
    for m in MODELS.values():
        experts = f"{m.num_experts_per_token}/{m.num_routed_experts}" if m.num_moe_layers else "dense"
        lines.append(f"  {m.name:<17}{m.num_layers:>7}{m.hidden_size:>7}{m.attention:>5}"
                     f"{m.kv_bytes_per_token_per_layer:>16}{experts:>9}{m.weight_dtype:>8}")
        lines.append(f"  {'':<17}{', '.join(m.sources)}")
    lines += ["", "Latency presets: " + ", ".join(LATENCY_PRESETS) + " (arXiv 2601.21351)",
              "Use --hardware ACCELERATOR:MODEL anywhere, e.g. --hardware h100:deepseek-v3"]
    return "\n".join(lines) + "\n"
