"""The decoder layers that [`profile_hardware`][afdjax.profile_hardware] times, as plain JAX functions of a
[`ModelSpec`][afdjax.ModelSpec]'s shape (see ``afdjax._profile._profile`` for what is timed),
and ``scale_model``, which shrinks a model's widths for a quick profile.

* attention: ``B`` decode slots, each with ``L`` cached tokens, one new query per slot. GQA:
  K and V of ``h_kv`` heads, queries grouped ``h_q / h_kv`` per KV head. MLA: the compressed
  latent cache (``d_c + d_rope`` per token) with absorbed up-projections, as in DeepSeek's
  decode;
* FFN: the gated (SwiGLU) MLP of a dense model, or one MoE layer (router, top-``k``, tokens
  grouped by expert, expert matmuls, combine, shared experts). The grouped matmul is
  ``jax.lax.ragged_dot`` (``grouped="ragged_dot"``) or per-expert buffers of capacity
  ``ceil(MOE_CAPACITY_FACTOR N k / E)`` multiplied with one batched einsum
  (``grouped="capacity"``, GShard-style; overflow is dropped).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from .._hardware import ModelSpec
from .._validate import check_fraction

MOE_CAPACITY_FACTOR = 1.25


def _scaled(value: int, scale: float, minimum: int = 1, multiple: int = 1) -> int:
    if value == 0:
        return 0
    v = max(minimum, round(value * scale / multiple) * multiple)
    return v


def scale_model(model: ModelSpec, scale: float, hidden_size: int | None = None) -> ModelSpec:
    """``model`` with widths, head counts and expert counts multiplied by ``scale`` (rounded,
    at least 1; hidden size a multiple of 16; ``num_kv_heads`` kept a divisor of the
    query heads). ``hidden_size`` overrides the scaled hidden size."""
    check_fraction("scale", scale)
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
    fields = {
        "name": f"{m.name}@{scale:g}" + (f",d={hidden_size}" if hidden_size else ""),
        "hidden_size": hidden_size or _scaled(m.hidden_size, scale, minimum=16, multiple=16),
        "vocab_size": _scaled(m.vocab_size, scale),
        "num_attention_heads": heads,
        "num_kv_heads": kv_heads,
        "head_dim": _scaled(m.head_dim, scale, minimum=8) if m.attention == "gqa" else 0,
        "q_lora_rank": _scaled(m.q_lora_rank, scale, minimum=8),
        "kv_lora_rank": _scaled(m.kv_lora_rank, scale, minimum=8),
        "qk_nope_head_dim": _scaled(m.qk_nope_head_dim, scale, minimum=4),
        "qk_rope_head_dim": _scaled(m.qk_rope_head_dim, scale, minimum=4),
        "v_head_dim": _scaled(m.v_head_dim, scale, minimum=4),
        "intermediate_size": _scaled(m.intermediate_size, scale, minimum=8),
        "num_routed_experts": experts if m.num_moe_layers else 0,
        "num_experts_per_token": k if m.num_moe_layers else 0,
        "moe_intermediate_size": _scaled(m.moe_intermediate_size, scale, minimum=8),
        "description": f"{m.name} scaled by {scale:g} for profiling",
        "sources": m.sources,
    }
    return dataclasses.replace(m, **fields)


# ---------------------------------------------------------------------------- layers
def _init(key, shape, dtype, fan_in):
    return (jax.random.normal(key, shape, dtype=jnp.float32) / math.sqrt(fan_in)).astype(dtype)


def attention_inputs(model: ModelSpec, batch: int, length: int, dtype, key):
    """Random ``(x [batch, d], weights, cache)`` for ``attention_fn``: ``length`` cached
    tokens per slot; weights scaled by ``1 / sqrt(fan_in)``."""
    d, h = model.hidden_size, model.num_attention_heads
    ks = iter(jax.random.split(key, 12))
    x = _init(next(ks), (batch, d), dtype, 1)
    if model.attention == "gqa":
        hd, hkv = model.head_dim, model.num_kv_heads
        weights = {
            "wq": _init(next(ks), (d, h * hd), dtype, d),
            "wk": _init(next(ks), (d, hkv * hd), dtype, d),
            "wv": _init(next(ks), (d, hkv * hd), dtype, d),
            "wo": _init(next(ks), (h * hd, d), dtype, h * hd),
        }
        cache = {
            "k": _init(next(ks), (batch, length, hkv, hd), dtype, 1),
            "v": _init(next(ks), (batch, length, hkv, hd), dtype, 1),
        }
    else:
        c, rope, nope, v = model.kv_lora_rank, model.qk_rope_head_dim, model.qk_nope_head_dim, model.v_head_dim
        q_rank = model.q_lora_rank or d
        weights = {
            "wqa": _init(next(ks), (d, q_rank), dtype, d),
            "wqb": _init(next(ks), (q_rank, h, nope + rope), dtype, q_rank),
            "wkva": _init(next(ks), (d, c + rope), dtype, d),
            "wuk": _init(next(ks), (h, nope, c), dtype, nope),
            "wuv": _init(next(ks), (h, c, v), dtype, c),
            "wo": _init(next(ks), (h * v, d), dtype, h * v),
        }
        cache = {"latent": _init(next(ks), (batch, length, c + rope), dtype, 1)}
    return x, weights, cache


def _at_least_f32(dtype):
    """Softmax and router precision: float32 for bfloat16 inputs, the input dtype otherwise."""
    return jnp.promote_types(dtype, jnp.float32)


def attention_fn(model: ModelSpec):
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


def ffn_inputs(model: ModelSpec, tokens: int, dtype, key):
    """Random ``(x [tokens, d], weights)`` for ``ffn_fn`` (all experts for an MoE model)."""
    d = model.hidden_size
    ks = iter(jax.random.split(key, 10))
    x = _init(next(ks), (tokens, d), dtype, 1)
    if not model.num_moe_layers:
        i = model.intermediate_size
        return x, {
            "wg": _init(next(ks), (d, i), dtype, d),
            "wu": _init(next(ks), (d, i), dtype, d),
            "wd": _init(next(ks), (i, d), dtype, i),
        }
    e, i = model.num_routed_experts, model.moe_intermediate_size
    w = {
        "router": _init(next(ks), (d, e), dtype, d),
        "wg": _init(next(ks), (e, d, i), dtype, d),
        "wu": _init(next(ks), (e, d, i), dtype, d),
        "wd": _init(next(ks), (e, i, d), dtype, i),
    }
    if model.num_shared_experts:
        si = model.num_shared_experts * i
        w.update(
            sg=_init(next(ks), (d, si), dtype, d),
            su=_init(next(ks), (d, si), dtype, d),
            sd=_init(next(ks), (si, d), dtype, si),
        )
    return x, w


def ffn_fn(model: ModelSpec, grouped: str):
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
