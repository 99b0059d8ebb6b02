"""Accelerator and model specifications, and their presets (numbers with public sources).

Plain frozen dataclasses, validated on construction; the roofline arithmetic that turns them
into latency coefficients is in ``afdjax._hardware._derive``, the string and TOML grammar
that builds them from user input in ``afdjax._specs``.
"""

from __future__ import annotations

import dataclasses
import math

from .._validate import check_choice, check_int, check_name, check_number

DTYPES = ("bf16", "fp8")
"""Weight / compute dtypes: ``bf16`` (also FP16; 2 bytes) and ``fp8`` (1 byte)."""
DTYPE_BYTES = {"bf16": 2, "fp8": 1}
ATTENTION_KINDS = ("gqa", "mla")
TIME_UNIT = "us per layer"


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One accelerator device (all rates per device, SI units).

    Attributes:
        name: the preset's name (``"h100"``).
        hbm_capacity_bytes: HBM capacity (bytes).
        hbm_bandwidth_bytes_per_s: peak HBM bandwidth (bytes/s).
        bf16_flops_per_s: peak dense (not sparse) BF16/FP16 tensor FLOP/s.
        fp8_flops_per_s: peak dense FP8 tensor FLOP/s, ``None`` if unsupported.
        interconnect_bandwidth_bytes_per_s: scale-up link bandwidth per direction (bytes/s;
            NVLink "900 GB/s" is 450 GB/s each way).
        interconnect_latency_us: fixed latency of one transfer (us; an assumption).
        power_watts: board power (TDP/TBP, W), ``None`` if not published.
        description: one line for listings.
        sources: public URLs for the numbers.
        scale_up_domain: devices in one scale-up (NVLink-class) domain, e.g. 8 for an
            HGX/DGX H100 node, 72 for a GB200 NVL72 rack, 384 for a CloudMatrix384 of Ascend 910C
            (``None``: unknown, treated as unbounded).
        scale_out_bandwidth_bytes_per_s: the network bandwidth per device per direction
            between scale-up domains (bytes/s; a 400 Gb/s NIC per GPU is 50 GB/s each way;
            ``None``: unknown).
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
    scale_up_domain: int | None = None
    scale_out_bandwidth_bytes_per_s: float | None = None

    def __post_init__(self):
        check_name("Accelerator", self.name)
        for f in (
            "hbm_capacity_bytes",
            "hbm_bandwidth_bytes_per_s",
            "bf16_flops_per_s",
            "interconnect_bandwidth_bytes_per_s",
        ):
            check_number(f"Accelerator {self.name!r}: {f}", getattr(self, f))
        check_number(f"Accelerator {self.name!r}: interconnect_latency_us", self.interconnect_latency_us, strict=False)
        for f in ("fp8_flops_per_s", "power_watts", "scale_out_bandwidth_bytes_per_s"):
            if getattr(self, f) is not None:
                check_number(f"Accelerator {self.name!r}: {f}", getattr(self, f))
        if self.scale_up_domain is not None:
            check_int(f"Accelerator {self.name!r}: scale_up_domain", self.scale_up_domain, 1)

    def peak_flops_per_s(self, dtype: str) -> float:
        """Peak dense FLOP/s at ``dtype`` (``bf16`` or ``fp8``)."""
        check_choice("dtype", dtype, DTYPES)
        if dtype == "fp8":
            if self.fp8_flops_per_s is None:
                raise ValueError(f"dtype='fp8' is not supported by accelerator {self.name!r}; allowed: bf16")
            return self.fp8_flops_per_s
        return self.bf16_flops_per_s


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer (per-layer shapes as in its ``config.json``).

    Attributes:
        name: the preset's name (``"deepseek-v3"``).
        num_layers: decoder layers.
        hidden_size: ``d``.
        vocab_size: vocabulary size (embedding and LM head rows).
        attention: ``"gqa"`` (MHA is GQA with ``num_kv_heads == num_attention_heads``)
            or ``"mla"`` (multi-head latent attention, DeepSeek-V2/V3).
        num_attention_heads: query heads (GQA and MLA).
        num_kv_heads: GQA: key/value heads.
        head_dim: GQA: dimension of one head.
        q_lora_rank: MLA: query compression rank (0: no query compression).
        kv_lora_rank: MLA: the latent KV dimension ``d_c``.
        qk_nope_head_dim: MLA: the non-rotary part of a query/key head.
        qk_rope_head_dim: MLA: the rotary part ``d_rope``.
        v_head_dim: MLA: the value head dimension.
        intermediate_size: dense FFN (gated, 3 matrices) width.
        num_dense_layers: layers with the dense FFN (all layers for a dense model, the
            first 3 of DeepSeek-V3); the other layers are MoE.
        num_routed_experts: MoE: routed experts ``E``.
        num_experts_per_token: MoE: experts per token ``k``.
        moe_intermediate_size: MoE: one expert's width.
        num_shared_experts: MoE: shared experts every token passes.
        weight_dtype: ``"bf16"`` or ``"fp8"``.
        kv_bytes: bytes per KV-cache element.
        activation_bytes: bytes per activation element sent between instances.
        tie_word_embeddings: the LM head shares the embedding matrix.
        description: one line for listings.
        sources: public URLs (``config.json``).
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
        check_name("ModelSpec", self.name)
        where = f"ModelSpec {self.name!r}"
        check_choice(f"{where}: attention", self.attention, ATTENTION_KINDS)
        check_choice(f"{where}: weight_dtype", self.weight_dtype, DTYPES)
        # an integer-valued float (61.0 from a TOML file or a computation) is stored as an int
        for f in ("num_layers", "hidden_size", "vocab_size", "num_attention_heads", "kv_bytes", "activation_bytes"):
            object.__setattr__(self, f, check_int(f"{where}: {f}", getattr(self, f), 1))
        for f in (
            "num_kv_heads",
            "head_dim",
            "q_lora_rank",
            "kv_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
            "intermediate_size",
            "num_dense_layers",
            "num_routed_experts",
            "num_experts_per_token",
            "moe_intermediate_size",
            "num_shared_experts",
        ):
            object.__setattr__(self, f, check_int(f"{where}: {f}", getattr(self, f), 0))
        if self.attention == "gqa":
            for f in ("num_kv_heads", "head_dim"):
                check_int(f"{where}: {f} (needed for attention='gqa')", getattr(self, f), 1)
            if self.num_attention_heads % self.num_kv_heads:
                raise ValueError(
                    f"{where}: num_attention_heads={self.num_attention_heads} is not a multiple of "
                    f"num_kv_heads={self.num_kv_heads}"
                )
        else:
            for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                check_int(f"{where}: {f} (needed for attention='mla')", getattr(self, f), 1)
        if self.num_dense_layers > self.num_layers:
            raise ValueError(f"{where}: num_dense_layers={self.num_dense_layers} exceeds num_layers={self.num_layers}")
        if self.num_dense_layers:
            check_int(f"{where}: intermediate_size (needed for dense layers)", self.intermediate_size, 1)
        if self.num_moe_layers:
            for f in ("num_routed_experts", "num_experts_per_token", "moe_intermediate_size"):
                check_int(f"{where}: {f} (needed for the {self.num_moe_layers} MoE layers)", getattr(self, f), 1)
            if self.num_experts_per_token > self.num_routed_experts:
                raise ValueError(
                    f"{where}: num_experts_per_token={self.num_experts_per_token} exceeds "
                    f"num_routed_experts={self.num_routed_experts}"
                )

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
        expert = 3 * self.hidden_size * self.moe_intermediate_size
        experts = (self.num_routed_experts + self.num_shared_experts) * expert
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
        expert = 3 * self.hidden_size * self.moe_intermediate_size
        active = (self.num_experts_per_token + self.num_shared_experts) * expert
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
# Scale-up domains and scale-out NICs (one NIC per GPU): DGX H100/H200/B200 have 8 GPUs on
# NVLink/NVSwitch and 8 ConnectX-7 400 Gb/s ports (50 GB/s each way per GPU), DGX A100 8 GPUs
# and 8 ConnectX-6 200 Gb/s (25 GB/s); an MI300X platform 8 GPUs on Infinity Fabric (a 400 Gb/s
# NIC per GPU assumed, as in the DGX); a TPU v5p pod 8,960 chips on ICI. For reference (no
# preset): a GB200 NVL72 rack is one 72-GPU NVLink domain, a CloudMatrix384 384 Ascend 910C
# on one UB network (an Atlas 800 node: 8 910C, 16 dies).
_NV_DGX_H100 = "https://www.nvidia.com/en-us/data-center/dgx-h100/"
_NV_DGX_H200 = "https://www.nvidia.com/en-us/data-center/dgx-h200/"
_NV_DGX_A100 = "https://www.nvidia.com/en-us/data-center/dgx-a100/"
_NIC_400G, _NIC_200G = 50e9, 25e9

ACCELERATORS: dict[str, Accelerator] = {
    "h100": Accelerator(
        "h100",
        80e9,
        3.35e12,
        989.5e12,
        1979e12,
        450e9,
        power_watts=700.0,
        description="NVIDIA H100 SXM5 80 GB: HBM3 3.35 TB/s; BF16 1,979 / FP8 3,958 TFLOPS with sparsity "
        "(half dense); NVLink 900 GB/s (450 GB/s each way); up to 700 W",
        sources=(_NV_H100, _NV_DGX_H100),
        scale_up_domain=8,
        scale_out_bandwidth_bytes_per_s=_NIC_400G,
    ),
    "h200": Accelerator(
        "h200",
        141e9,
        4.8e12,
        989.5e12,
        1979e12,
        450e9,
        power_watts=700.0,
        description="NVIDIA H200 SXM 141 GB: HBM3e 4.8 TB/s; BF16 1,979 / FP8 3,958 TFLOPS with sparsity "
        "(half dense); NVLink 900 GB/s (450 GB/s each way); up to 700 W",
        sources=(_NV_H200, _NV_DGX_H200),
        scale_up_domain=8,
        scale_out_bandwidth_bytes_per_s=_NIC_400G,
    ),
    "a100": Accelerator(
        "a100",
        80e9,
        2.039e12,
        312e12,
        None,
        300e9,
        power_watts=400.0,
        description="NVIDIA A100 80 GB SXM: HBM2e 2,039 GB/s; BF16 312 TFLOPS dense (624 sparse), no FP8; "
        "NVLink 600 GB/s (300 GB/s each way); 400 W",
        sources=(_NV_A100, _NV_DGX_A100),
        scale_up_domain=8,
        scale_out_bandwidth_bytes_per_s=_NIC_200G,
    ),
    "b200": Accelerator(
        "b200",
        180e9,
        8e12,
        2.25e15,
        4.5e15,
        900e9,
        power_watts=1000.0,
        description="NVIDIA B200 (HGX/DGX B200, per GPU = system / 8): 1,440 GB and 64 TB/s HBM3e per 8 GPUs; "
        "FP8 72 PFLOPS sparse per 8 GPUs (4.5 PFLOPS dense per GPU), BF16 2.25 PFLOPS dense; NVLink 5 "
        "14.4 TB/s per 8 GPUs (1.8 TB/s per GPU, 900 GB/s each way); 1,000 W",
        sources=(_NV_DGX_B200, _B200_PER_GPU),
        scale_up_domain=8,
        scale_out_bandwidth_bytes_per_s=_NIC_400G,
    ),
    "mi300x": Accelerator(
        "mi300x",
        192e9,
        5.3e12,
        1307.4e12,
        2614.9e12,
        448e9,
        power_watts=750.0,
        description="AMD Instinct MI300X: 192 GB HBM3, 5.3 TB/s; FP16/BF16 1,307.4 TFLOPS and FP8 2,614.9 "
        "TFLOPS dense; Infinity Fabric 7 links x 128 GB/s = 896 GB/s (448 GB/s each way); 750 W",
        sources=(_AMD_MI300X,),
        scale_up_domain=8,
        scale_out_bandwidth_bytes_per_s=_NIC_400G,
    ),
    "tpu-v5p": Accelerator(
        "tpu-v5p",
        95e9,
        2.765e12,
        459e12,
        None,
        300e9,
        power_watts=None,
        description="Google Cloud TPU v5p chip: 95 GB HBM2e, 2,765 GB/s; BF16 459 TFLOPS (INT8 918 TOPS, "
        "no FP8); ICI 4,800 Gb/s per chip = 600 GB/s (300 GB/s each way); power not published",
        sources=(_TPU_V5P,),
        scale_up_domain=8960,
    ),
}
"""Accelerator presets; every number is from the URLs in ``sources``."""

_HF_DSV3 = "https://huggingface.co/deepseek-ai/DeepSeek-V3/blob/main/config.json"
_HF_QWEN3 = "https://huggingface.co/Qwen/Qwen3-235B-A22B/blob/main/config.json"
_HF_LLAMA = "https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json"

MODELS: dict[str, ModelSpec] = {
    "deepseek-v3": ModelSpec(
        "deepseek-v3",
        num_layers=61,
        hidden_size=7168,
        vocab_size=129280,
        attention="mla",
        num_attention_heads=128,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        intermediate_size=18432,
        num_dense_layers=3,
        num_routed_experts=256,
        num_experts_per_token=8,
        moe_intermediate_size=2048,
        num_shared_experts=1,
        weight_dtype="fp8",
        kv_bytes=2,
        activation_bytes=2,
        description="DeepSeek-V3 (671B total, 37B active): MLA, first_k_dense_replace=3, 256 routed + 1 shared "
        "experts, top-8; released FP8 (e4m3) weights; BF16 latent KV cache",
        sources=(_HF_DSV3,),
    ),
    "qwen3-235b-a22b": ModelSpec(
        "qwen3-235b-a22b",
        num_layers=94,
        hidden_size=4096,
        vocab_size=151936,
        attention="gqa",
        num_attention_heads=64,
        num_kv_heads=4,
        head_dim=128,
        num_dense_layers=0,
        num_routed_experts=128,
        num_experts_per_token=8,
        moe_intermediate_size=1536,
        num_shared_experts=0,
        weight_dtype="bf16",
        kv_bytes=2,
        activation_bytes=2,
        description="Qwen3-235B-A22B: GQA 64 query / 4 KV heads of 128, every layer MoE (128 experts, top-8, "
        "no shared expert); BF16",
        sources=(_HF_QWEN3,),
    ),
    "llama-3.1-70b": ModelSpec(
        "llama-3.1-70b",
        num_layers=80,
        hidden_size=8192,
        vocab_size=128256,
        attention="gqa",
        num_attention_heads=64,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=28672,
        num_dense_layers=80,
        weight_dtype="bf16",
        kv_bytes=2,
        activation_bytes=2,
        description="Llama-3.1-70B: dense, GQA 64 query / 8 KV heads of 128, SwiGLU 28672; BF16",
        sources=(_HF_LLAMA,),
    ),
}
"""Model presets; shapes from the Hugging Face ``config.json`` in ``sources``."""

# The paper preset is DeepSeek-V3 on Ascend 910C (arXiv 2601.21351): its model is known.
LATENCY_PRESET_MODELS = {"paper-910c": "deepseek-v3"}
