"""The text report of ``afdjax compare`` (numbers from ``_compare.compare``)."""

from __future__ import annotations

from .._validate import format_number


def _gb(value) -> str:
    return "no limit" if value is None else f"{format_number(value / 1e9, '.4g')} GB"


def _sim(side: dict) -> str:
    sim = side.get("simulated")
    if not sim:
        return ""
    return (
        f"; simulated {format_number(sim['throughput_per_device'], ',.0f')} "
        f"± {format_number(2 * sim['stderr'], ',.0f')} (2 s.e.), TPOT {format_number(sim['tpot_ms'], '.3g')} ms"
    )


def comparison_text(comparison) -> str:
    """AFD against co-located on the same devices: both configurations, the gain and
    its four factors (what ``afdjax compare`` prints)."""
    a, c, g, s = comparison.afd, comparison.colocated, comparison.gain, comparison.settings
    target = "none" if s["tpot_target_ms"] is None else f"{format_number(s['tpot_target_ms'], 'g')} ms (mean)"
    lines = [
        f"AFD or co-located? {s['hardware']}, {s['devices']} devices, workload {s['workload']}, TPOT target {target}",
        "",
        f"AFD         {a['ratio']}A-1F (r = {a['ratio']}; {a['attention_devices']} + {a['ffn_devices']} devices per "
        f"Attention + FFN instance), {a['bundles']} bundle(s) of {a['bundle_devices']} devices "
        f"({a['devices_used']} used), B = {a['batch_size']} slots per Attention instance "
        f"(at most {a['max_batch_size']}: KV capacity {_gb(a['kv_capacity_bytes'])})"
        + (f", a pipeline of {a['micro_batches']} micro-batches" if a.get("micro_batches") else ", ideal overlap"),
        f"            {format_number(a['throughput_per_device'], ',.0f')} tokens/s per device, "
        f"TPOT {format_number(a['tpot_ms'], '.3g')} ms (closed form){_sim(a)}",
        f"co-located  EP groups of {c['ranks_per_group']} rank(s) x {c['devices_per_rank']} device(s), "
        f"{c['groups']} group(s) ({c['devices_used']} used), B = {c['batch_size']} slots per rank "
        f"(at most {c['max_batch_size']}: KV capacity {_gb(c['kv_capacity_bytes'])} after the expert share), "
        f"{'two-batch overlap' if c['overlap'] else 'no overlap'}",
        f"            {format_number(c['throughput_per_device'], ',.0f')} tokens/s per device, "
        f"TPOT {format_number(c['tpot_ms'], '.3g')} ms (closed form){_sim(c)}",
        "",
        f"gain (AFD / co-located, per device): {format_number(g['ratio'], '.3f')}x"
        + (f" (simulated {format_number(g['simulated_ratio'], '.3f')}x)" if "simulated_ratio" in g else ""),
        f"  = batch expansion {format_number(g['batch_expansion'], '.3f')}"
        f" x FFN-instance tax {format_number(g['ffn_instance_tax'], '.3f')}"
        f" x step-time ratio {format_number(g['step_time_ratio'], '.3f')}"
        f" x device use {format_number(g['device_use_ratio'], '.3f')}",
        "",
        "Closed form: Gaussian barrier E[tau]; TPOT = layers x E[tau]; tokens/s per device of the devices given "
        "(idle ones included).",
        f"verdict: {'AFD' if g['ratio'] > 1 else 'co-located'} serves more tokens per device on this hardware.",
    ]
    return "\n".join(lines)
