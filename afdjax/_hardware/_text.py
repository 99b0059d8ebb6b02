"""Text reports of the hardware subpackage: the preset table (``afdjax hardware --list``) and the
derivation report (``afdjax hardware``)."""

from __future__ import annotations

from .._latency import PRESETS as LATENCY_PRESETS
from ._devices import ACCELERATORS, MODELS


def format_presets() -> str:
    """The accelerator and model presets with their sources (``afdjax hardware --list``)."""
    lines = ["Accelerators (per device; FLOP/s dense; link bandwidth per direction)", ""]
    lines.append(f"  {'name':<9}{'HBM GB':>8}{'HBM TB/s':>10}{'BF16 TF':>9}{'FP8 TF':>9}{'link GB/s':>11}{'W':>7}")
    for a in ACCELERATORS.values():
        fp8 = f"{a.fp8_flops_per_s / 1e12:.6g}" if a.fp8_flops_per_s else "-"
        pw = f"{a.power_watts:g}" if a.power_watts else "-"
        lines.append(
            f"  {a.name:<9}{a.hbm_capacity_bytes / 1e9:>8g}{a.hbm_bandwidth_bytes_per_s / 1e12:>10g}"
            f"{a.bf16_flops_per_s / 1e12:>9g}{fp8:>9}{a.interconnect_bandwidth_bytes_per_s / 1e9:>11g}{pw:>7}"
        )
        lines.append(f"  {'':<9}{', '.join(a.sources)}")
    lines += ["", "Models", ""]
    lines.append(
        f"  {'name':<17}{'layers':>7}{'hidden':>7}{'attn':>5}{'KV B/tok/layer':>16}{'experts':>9}{'weights':>8}"
    )
    for m in MODELS.values():
        experts = f"{m.num_experts_per_token}/{m.num_routed_experts}" if m.num_moe_layers else "dense"
        lines.append(
            f"  {m.name:<17}{m.num_layers:>7}{m.hidden_size:>7}{m.attention:>5}"
            f"{m.kv_bytes_per_token_per_layer:>16}{experts:>9}{m.weight_dtype:>8}"
        )
        lines.append(f"  {'':<17}{', '.join(m.sources)}")
    lines += [
        "",
        "Latency presets: " + ", ".join(LATENCY_PRESETS) + " (arXiv 2601.21351)",
        "Use --hardware ACCELERATOR:MODEL anywhere, e.g. --hardware h100:deepseek-v3",
    ]
    return "\n".join(lines) + "\n"


def format_derivation(derivation) -> str:
    """The report of [`format_text`][afdjax.HardwareDerivation.format_text]: the accelerator, model, efficiencies and
    instance sizes, then each coefficient (microseconds per layer) with its formula and numbers."""
    d = derivation
    a, m = d.accelerator, d.model
    lines = [
        f"afdjax hardware   {a.name}:{m.name}   dtype {d.dtype}   (microseconds per layer)",
        f"  accelerator  {a.description or a.name}",
        f"               sources: {', '.join(a.sources) or 'custom'}",
        f"  model        {m.description or m.name}",
        f"               sources: {', '.join(m.sources) or 'custom'}",
        (
            f"  efficiencies memory {d.memory_efficiency:g}, compute {d.compute_efficiency:g}, "
            f"network {d.network_efficiency:g}; kernel overhead {d.kernel_overhead_us:g} us per stage"
        ),
        f"  instances    Attention: {d.attention_devices} device(s), FFN: {d.ffn_devices} device(s)",
        (
            f"  model facts  {m.num_layers} layers, KV {m.kv_bytes_per_token_per_layer} B/token/layer "
            f"({m.kv_bytes_per_token} B/token), weights: attention side {d.attention_weight_bytes / 1e9:.4g} GB, "
            f"FFN side {d.ffn_weight_bytes / 1e9:.4g} GB"
        ),
        "",
    ]
    for name, c in d.coefficients.items():
        lines.append(f"  {name:<8} = {c.value_us:.6g} us   [{c.bound}]")
        lines.append(f"             {c.formula}")
        lines.append(f"             {c.numbers}")
    if d.notes:
        lines += ["", "Notes"] + [f"  - {n}" for n in d.notes]
    return "\n".join(lines) + "\n"
