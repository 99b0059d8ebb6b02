"""Text of a profile: the ``afdjax profile`` report and the hardware TOML with its provenance."""

from __future__ import annotations

import numpy as np

from .._hardware import Deployment, deployment_to_toml
from .._validate import format_number
from ._holdout import HOLDOUT_EVERY


def format_profile(result) -> str:
    """The report of [`format_text`][afdjax.ProfileResult.format_text]."""
    r = result
    m = r.model
    lines = [
        f"afdjax profile   {r.base_model} scaled by {r.scale:g}   on {r.device}   dtype {r.dtype}",
        f"  shape: d={m.hidden_size}, attention {m.attention} ({m.num_attention_heads} heads, "
        + (
            f"{m.num_kv_heads} KV heads of {m.head_dim}"
            if m.attention == "gqa"
            else f"latent {m.kv_lora_rank}+{m.qk_rope_head_dim}"
        )
        + "), FFN "
        + (
            f"MoE {m.num_experts_per_token}/{m.num_routed_experts} experts of {m.moe_intermediate_size}"
            f"{f' + {m.num_shared_experts} shared' if m.num_shared_experts else ''} ({r.grouped_matmul})"
            if m.num_moe_layers
            else f"dense {m.intermediate_size}"
        ),
        f"  attention: B = {r.batch_size} slots; communication: {r.comm_source}",
        *(
            [f"  FFN: one MoE layer is timed; the model's {m.num_dense_layers} dense layers are not profiled"]
            if m.num_moe_layers and m.num_dense_layers
            else []
        ),
        (
            f"  times in microseconds per layer of this shape; quantile {r.settings['quantile']:g} of "
            f"{r.settings['repeats']} round-robin samples; every {HOLDOUT_EVERY}rd size held out; "
            f"wall time {r.wall_s:.1f} s"
        ),
        "",
        f"  {'coefficient':<12}{'fitted':>13}",
    ]
    for k, v in r.latency.coefficients().items():
        lines.append(f"  {k:<12}{v:>13.6g}")
    lines += [
        "",
        (f"  {'stage':<11}{'fit rows':>9}{'R^2':>10}{'max rel resid':>15}{'held out':>10}{'max |held-out err|':>20}"),
    ]
    for stage in ("attention", "ffn", "comm"):
        fit = r.fit.stages[stage]
        if fit.source != "fit":
            lines.append(f"  {stage:<11}   kept from defaults")
            continue
        q = fit.quality()
        err = r.held_out_relative_error.get(stage, np.zeros(0))
        he = f"{100 * np.abs(err).max():.2f}%" if len(err) else "-"
        lines.append(
            f"  {stage:<11}{q['rows']:>9}{q['r_squared']:>10.5f}{100 * q['max_relative_residual']:>14.2f}%"
            f"{len(err):>10}{he:>20}"
        )
    lines += ["", "  held-out sizes (measured us -> predicted us, error):"]
    for stage, errs in r.held_out_relative_error.items():
        sizes, med, _ = r.measurements[stage]
        lookup = dict(zip(map(int, sizes), med))
        parts = []
        for x, e in zip(r.held_out[stage], errs):
            meas = lookup[int(x)]
            parts.append(f"{int(x)}: {meas:.4g} -> {meas * (1 + e):.4g} ({format_number(float(100 * e), '+.1f')}%)")
        lines.append(f"    {stage}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def profile_toml(result) -> str:
    """Hardware TOML (``--hardware FILE``): fitted ``[latency]`` plus ``[model]`` with the
    profiled shape's layer count and KV bytes per token, and a header with the provenance."""
    r = result
    head = [
        f"Latency coefficients measured by afdjax profile on {r.device} ({r.dtype}), microseconds per layer",
        f"of {r.base_model} scaled by {r.scale:g} (d={r.model.hidden_size}); attention B={r.batch_size}.",
        f"communication: {r.comm_source}.",
        f"max |held-out relative error| = {100 * r.max_held_out_error():.2f}%",
    ]
    for stage in ("attention", "ffn", "comm"):
        fit = r.fit.stages[stage]
        if fit.source != "fit":
            head.append(f"{stage}: kept from defaults")
            continue
        q = fit.quality()
        err = r.held_out_relative_error.get(stage, np.zeros(0))
        head.append(
            f"{stage}: {q['rows']} fitted sizes, R^2 = {q['r_squared']:.5f}, max relative residual "
            f"{100 * q['max_relative_residual']:.2f}%, {len(err)} held out, max |error| "
            f"{100 * np.abs(err).max() if len(err) else float('nan'):.2f}%"
        )
    dep = Deployment(
        latency=r.latency,
        num_layers=r.model.num_layers,
        kv_bytes_per_token=r.model.kv_bytes_per_token,
        model=r.model.name,
        accelerator=r.device,
        time_unit="us per layer",
    )
    return deployment_to_toml(dep, "\n".join(head), extra_deployment={"comm_source": r.comm_source})
