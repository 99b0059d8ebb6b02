"""afdjax hardware: latency coefficients from specs (roofline), deployment TOML, CLI; and a tiny
``afdjax profile`` run end to end.

The preset coefficients are recomputed here by hand from the cited spec numbers, typed in
again below from the datasheets and the Hugging Face ``config.json`` files (not read from
afdjax), with the arithmetic written out independently of ``afdjax._hardware``.
"""

import json
import math

import numpy as np
import pytest

import afdjax
from afdjax._cli._main import main
from afdjax._specs import latency_to_toml, parse_hardware_spec

# ---------------------------------------------------------------- spec numbers, typed from the sources
# (HBM bytes, HBM B/s, dense BF16 FLOP/s, dense FP8 FLOP/s or None, link B/s per direction, W)
SPECS = {
    # https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM): 80 GB, 3.35 TB/s, BF16 1,979 and FP8
    # 3,958 TFLOPS "with sparsity" (dense = half), NVLink 900 GB/s, up to 700 W
    "h100": (80e9, 3.35e12, 1979e12 / 2, 3958e12 / 2, 900e9 / 2, 700),
    # https://www.nvidia.com/en-us/data-center/h200/: 141 GB, 4.8 TB/s, same tensor cores and NVLink as H100
    "h200": (141e9, 4.8e12, 1979e12 / 2, 3958e12 / 2, 900e9 / 2, 700),
    # https://www.nvidia.com/en-us/data-center/a100/ (80GB SXM): 2,039 GB/s, BF16 312 TFLOPS, NVLink 600 GB/s, 400 W
    "a100": (80e9, 2039e9, 312e12, None, 600e9 / 2, 400),
    # https://www.nvidia.com/en-us/data-center/dgx-b200/: 8 GPUs, 1,440 GB, 64 TB/s, FP8 72 PFLOPS (sparse),
    # NVLink 14.4 TB/s; BF16 2.25 PFLOPS dense and 1,000 W: https://glennklockwood.com/garden/processors/B200
    "b200": (1440e9 / 8, 64e12 / 8, 2.25e15, 72e15 / 8 / 2, 14.4e12 / 8 / 2, 1000),
    # https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html: 192 GB, 5.3 TB/s,
    # FP16/BF16 1,307.4 TFLOPS, FP8 2,614.9 TFLOPS, 7 Infinity Fabric links of 128 GB/s, 750 W
    "mi300x": (192e9, 5.3e12, 1307.4e12, 2614.9e12, 7 * 128e9 / 2, 750),
    # https://cloud.google.com/tpu/docs/v5p: 95 GB HBM2e, 2,765 GB/s, 459 BF16 TFLOPS, ICI 4,800 Gbps per chip
    "tpu-v5p": (95e9, 2765e9, 459e12, None, 4800e9 / 8 / 2, None),
}

# Hugging Face config.json (URLs in afdjax.MODELS[...].sources)
CONFIGS = {
    "deepseek-v3": dict(
        num_hidden_layers=61,
        hidden_size=7168,
        vocab_size=129280,
        num_attention_heads=128,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        intermediate_size=18432,
        first_k_dense_replace=3,
        n_routed_experts=256,
        num_experts_per_tok=8,
        moe_intermediate_size=2048,
        n_shared_experts=1,
        weight_bytes=1,  # FP8 e4m3 release
    ),
    "qwen3-235b-a22b": dict(
        num_hidden_layers=94,
        hidden_size=4096,
        vocab_size=151936,
        num_attention_heads=64,
        num_key_value_heads=4,
        head_dim=128,
        num_experts=128,
        num_experts_per_tok=8,
        moe_intermediate_size=1536,
        weight_bytes=2,
    ),
    "llama-3.1-70b": dict(
        num_hidden_layers=80,
        hidden_size=8192,
        vocab_size=128256,
        num_attention_heads=64,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=28672,
        weight_bytes=2,
    ),
}

E_MEM, E_CMP, E_NET, OVERHEAD_US, LINK_LATENCY_US = 0.8, 0.6, 0.8, 2.0, 3.0


def hand_model_numbers(name):
    """(layers, hidden, KV bytes/token/layer, attention FLOPs per KV token, attention weight elements per
    layer, vocab elements, FFN weight elements over all layers, FFN FLOPs/token averaged over layers,
    fan-out per layer summed over layers (before the min with the FFN device count), k, weight bytes)."""
    c = CONFIGS[name]
    L, d, V = c["num_hidden_layers"], c["hidden_size"], c["vocab_size"]
    h = c["num_attention_heads"]
    if name == "deepseek-v3":
        kv = (512 + 64) * 2  # latent + rope key, BF16
        attn_flops = 2 * h * 576 + 2 * h * 512  # scores over 576, values over 512, x 2 FLOP per MAC
        wq = d * 1536 + 1536 * h * (128 + 64)
        wkv = d * 576 + 512 * h * (128 + 128)
        wo = h * 128 * d
        attn_w = wq + wkv + wo
        expert = 3 * d * 2048
        moe_layer = 257 * expert + d * 256
        dense_layer = 3 * d * 18432
        ffn_w = 3 * dense_layer + 58 * moe_layer
        ffn_flops = (3 * 2 * dense_layer + 58 * 2 * (9 * expert + d * 256)) / 61
        return L, d, kv, attn_flops, attn_w, 2 * V * d, ffn_w, ffn_flops, (3, 58), 8, 1
    kvh, hd = c["num_key_value_heads"], c["head_dim"]
    kv = 2 * kvh * hd * 2
    attn_flops = 4 * h * hd
    attn_w = d * h * hd * 2 + 2 * d * kvh * hd
    if name == "qwen3-235b-a22b":
        expert = 3 * d * 1536
        moe_layer = 128 * expert + d * 128
        return L, d, kv, attn_flops, attn_w, 2 * V * d, L * moe_layer, 2 * (8 * expert + d * 128), (0, L), 8, 2
    dense_layer = 3 * d * 28672
    return L, d, kv, attn_flops, attn_w, 2 * V * d, L * dense_layer, 2 * dense_layer, (L, 0), 0, 2


def hand_coefficients(acc, name):
    hbm, bw, bf16, fp8, link, _ = SPECS[acc]
    L, d, kv, attn_flops, attn_w, vocab, ffn_w, ffn_flops, (n_dense, n_moe), k, wbytes = hand_model_numbers(name)
    if wbytes == 1 and fp8 is None:  # FP8 weights on a chip without FP8 run as BF16
        wbytes = 2
    peak = fp8 if wbytes == 1 else bf16
    attn_bytes = (L * attn_w + vocab) * wbytes
    n_a = 1
    while attn_bytes > 0.5 * n_a * hbm:
        n_a *= 2
    n_f = 1
    while ffn_w * wbytes > 0.9 * n_f * hbm:
        n_f *= 2
    alpha_a = max(kv / (n_a * bw * E_MEM), attn_flops / (n_a * bf16 * E_CMP)) * 1e6
    beta_a = (attn_w * wbytes + vocab * wbytes / L) / (n_a * bw * E_MEM) * 1e6 + OVERHEAD_US
    alpha_f = ffn_flops / (n_f * peak * E_CMP) * 1e6
    beta_f = ffn_w * wbytes / L / (n_f * bw * E_MEM) * 1e6 + OVERHEAD_US
    fan = (n_dense * 1 + n_moe * min(k, n_f)) / L
    if n_a + n_f > 8 and acc != "tpu-v5p":  # A<->F leaves the 8-GPU node: one 400 (A100: 200) Gb/s NIC per GPU
        link = 25e9 if acc == "a100" else 50e9
    alpha_c = fan * d * 2 / (n_a * link * E_NET) * 1e6  # one direction: d activations of 2 bytes to f devices
    beta_c = LINK_LATENCY_US
    return dict(alpha_a=alpha_a, beta_a=beta_a, alpha_f=alpha_f, beta_f=beta_f, alpha_c=alpha_c, beta_c=beta_c), (
        n_a,
        n_f,
    )


def test_preset_sets():
    assert set(afdjax.ACCELERATORS) == set(SPECS)
    assert set(afdjax.MODELS) == set(CONFIGS)
    for preset in list(afdjax.ACCELERATORS.values()) + list(afdjax.MODELS.values()):
        assert preset.sources and all(s.startswith("https://") for s in preset.sources)


@pytest.mark.parametrize("acc", sorted(SPECS))
def test_accelerator_presets_match_the_datasheets(acc):
    a = afdjax.ACCELERATORS[acc]
    hbm, bw, bf16, fp8, link, watts = SPECS[acc]
    np.testing.assert_allclose(
        [a.hbm_capacity_bytes, a.hbm_bandwidth_bytes_per_s, a.bf16_flops_per_s, a.interconnect_bandwidth_bytes_per_s],
        [hbm, bw, bf16, link],
        rtol=1e-3,
    )
    assert (a.fp8_flops_per_s is None) == (fp8 is None)
    if fp8 is not None:
        assert a.fp8_flops_per_s == pytest.approx(fp8, rel=1e-3)
    assert a.power_watts == watts


@pytest.mark.parametrize("acc", sorted(SPECS))
@pytest.mark.parametrize("model", sorted(CONFIGS))
def test_preset_coefficients_by_hand(acc, model):
    expected, (n_a, n_f) = hand_coefficients(acc, model)
    d = afdjax.derive_latency(acc, model)
    assert (d.attention_devices, d.ffn_devices) == (n_a, n_f)
    got = d.latency.coefficients()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-6), name
    L, _, kv, *_ = hand_model_numbers(model)
    assert d.num_layers == L and d.kv_bytes_per_token == kv * L


def test_h100_deepseek_v3_written_out():
    """The headline case with every number substituted by hand."""
    d = afdjax.derive_latency("h100", "deepseek-v3")
    c = d.latency.coefficients()
    # MLA: 1152 B per token per layer at 3.35e12 * 0.8 B/s = 0.4299 ns; 278,528 FLOP at 989.5e12 * 0.6 = 0.4691 ns
    assert c["alpha_a"] == pytest.approx(278528 / (989.5e12 * 0.6) * 1e6, rel=1e-6)
    assert d.coefficients["alpha_a"].bound == "compute"  # MLA decode is compute bound (FlashMLA's finding)
    # attention weights 187,105,280 FP8 bytes per layer + 2 * 129280 * 7168 / 61 vocab bytes
    assert c["beta_a"] == pytest.approx((187105280 + 2 * 129280 * 7168 / 61) / (3.35e12 * 0.8) * 1e6 + 2, rel=1e-6)
    # 657.8 GB of FFN weights need 16 H100 (9.1 x 72 GB -> next power of two)
    assert d.ffn_devices == 16 and d.attention_devices == 1
    assert d.kv_bytes_per_token == 70272
    assert afdjax.MODELS["deepseek-v3"].experts_touched_99_tokens() == pytest.approx(
        math.log(0.01) / math.log(1 - 8 / 256)
    )


def test_derive_options_scale_as_the_formulas_say():
    base = afdjax.derive_latency("h100", "llama-3.1-70b").latency.coefficients()
    half = afdjax.derive_latency("h100", "llama-3.1-70b", memory_efficiency=0.4).latency.coefficients()
    assert half["alpha_a"] == pytest.approx(2 * base["alpha_a"])  # GQA: memory bound
    assert half["beta_f"] - 2 == pytest.approx(2 * (base["beta_f"] - 2))
    assert half["alpha_f"] == pytest.approx(base["alpha_f"])
    more = afdjax.derive_latency("h100", "llama-3.1-70b", ffn_devices=8).latency.coefficients()
    assert more["alpha_f"] == pytest.approx(base["alpha_f"] / 4)  # default is 2 devices
    bf16 = afdjax.derive_latency("h100", "deepseek-v3", dtype="bf16")
    assert bf16.ffn_devices == 32 and bf16.dtype == "bf16"
    a100 = afdjax.derive_latency("a100", "deepseek-v3")
    assert a100.dtype == "bf16" and any("no FP8" in n for n in a100.notes)


def test_custom_specs_override_and_toml(tmp_path):
    acc = afdjax.parse_accelerator_spec("h100,hbm_bandwidth_bytes_per_s=1.675e12,power_watts=350")
    assert acc.hbm_bandwidth_bytes_per_s == 1.675e12 and acc.power_watts == 350.0 and acc.name == "h100"
    slow = afdjax.derive_latency(acc, "llama-3.1-70b").latency.coefficients()["alpha_a"]
    assert slow == pytest.approx(2 * afdjax.derive_latency("h100", "llama-3.1-70b").latency.coefficients()["alpha_a"])
    f = tmp_path / "chip.toml"
    f.write_text('[accelerator]\nbase = "h100"\nname = "h100-half"\nhbm_capacity_bytes = 40e9\n')
    assert afdjax.parse_accelerator_spec(str(f)).hbm_capacity_bytes == 40e9
    m = tmp_path / "m.toml"
    m.write_text(
        '[model]\nnum_layers = 2\nhidden_size = 64\nvocab_size = 100\nattention = "gqa"\nnum_attention_heads = 4\n'
        "num_kv_heads = 2\nhead_dim = 16\nintermediate_size = 128\nnum_dense_layers = 2\n"
    )
    spec = afdjax.parse_model_spec(str(m))
    assert spec.name == "m" and spec.kv_bytes_per_token == 2 * (2 * 2 * 16 * 2)
    d = afdjax.derive_latency(afdjax.parse_accelerator_spec(str(f)), spec)
    assert d.latency.coefficients()["alpha_f"] == pytest.approx(2 * 3 * 64 * 128 / (989.5e12 * 0.6) * 1e6, rel=1e-6)


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: afdjax.derive_latency("h100", "deepseek-v3", memory_efficiency=0), "memory_efficiency=0 is invalid"),
        (
            lambda: afdjax.derive_latency("h100", "deepseek-v3", compute_efficiency=1.5),
            "expected a finite number in (0, 1]",
        ),
        (lambda: afdjax.derive_latency("h100", "deepseek-v3", dtype="fp4"), "dtype='fp4' is invalid: expected one of"),
        (lambda: afdjax.derive_latency("a100", "llama-3.1-70b", dtype="fp8"), "not supported by accelerator 'a100'"),
        (lambda: afdjax.derive_latency("h900", "deepseek-v3"), "unknown accelerator 'h900'; available: h100"),
        (lambda: afdjax.derive_latency("h100", "gpt-9"), "unknown model 'gpt-9'; available: deepseek-v3"),
        (lambda: afdjax.derive_latency("h100", "deepseek-v3", ffn_devices=0), "ffn_devices=0 is invalid"),
        (lambda: afdjax.derive_latency("h100", "deepseek-v3", kernel_overhead_us=-1), "kernel_overhead_us=-1"),
        (lambda: afdjax.parse_accelerator_spec("h100,warp_speed=9"), "unknown accelerator field 'warp_speed'"),
        (lambda: afdjax.parse_accelerator_spec("h100,hbm_capacity_bytes=lots"), "hbm_capacity_bytes='lots' is not"),
        (lambda: afdjax.parse_model_spec("llama-3.1-70b,num_layers=0"), "num_layers=0 is invalid"),
        (lambda: afdjax.parse_model_spec("llama-3.1-70b,num_kv_heads=5"), "not a multiple of num_kv_heads=5"),
        (lambda: parse_hardware_spec("h100:deepseek-v3,turbo=1"), "unknown option 'turbo'; allowed: dtype"),
        (lambda: parse_hardware_spec("h100"), "names an accelerator; give ACCELERATOR:MODEL"),
        (lambda: afdjax.load_deployment(3), "spec=3 is invalid"),
        (lambda: afdjax.derive_latency("h100,power_watts=350", "deepseek-v3"), "pass parse_accelerator_spec"),
        (lambda: afdjax.derive_latency(3, "deepseek-v3"), "accelerator=3 is invalid: expected a Accelerator"),
        (lambda: afdjax.parse_model_spec("llama-3.1-70b,num_layers=2.5"), "num_layers='2.5' is not an integer"),
        (
            lambda: afdjax.Deployment(
                afdjax.LatencyModel.from_preset("paper-910c"), hbm_capacity_bytes=1.0, attention_weight_bytes=0.0
            ).kv_capacity_bytes(1.0),
            "reserve_fraction=1.0",
        ),
    ],
)
def test_validation_errors(call, fragment):
    with pytest.raises(ValueError) as err:
        call()
    assert fragment in str(err.value)


def test_model_spec_stores_integer_fields_as_int():
    m = afdjax.ModelSpec(
        "tiny",
        num_layers=2.0,
        hidden_size=64,
        vocab_size=100,
        attention="gqa",
        num_attention_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        num_dense_layers=2,
    )
    assert type(m.num_layers) is int and m.num_layers == 2


def test_hardware_numerics_import_neither_traces_nor_specs():
    """_hardware sits below the grammar: it must not import afdjax._data or afdjax._specs (the
    layer test cannot see this: _data and _hardware share a layer)."""
    import ast
    import pathlib

    root = pathlib.Path(afdjax.__file__).parent / "_hardware"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                assert (node.module or "").split(".")[0] not in ("_data", "_specs"), f"{path.name}: {node.module}"


# ---------------------------------------------------------------- TOML and Deployment
def test_accelerator_model_spec_everywhere():
    d = afdjax.derive_latency("h200", "qwen3-235b-a22b", dtype="bf16", ffn_devices=8)
    lat = parse_hardware_spec("h200:qwen3-235b-a22b,dtype=bf16,ffn_devices=8")
    assert lat.coefficients() == d.latency.coefficients()
    dep = afdjax.load_deployment("h200:qwen3-235b-a22b")
    assert dep.num_layers == 94 and dep.kv_bytes_per_token == 94 * 2 * 4 * 128 * 2
    assert dep.hbm_capacity_bytes == 141e9 and dep.power_watts == 700 and dep.time_unit == "us per layer"
    assert dep.accelerator == "h200" and dep.model == "qwen3-235b-a22b"


def test_toml_round_trip(tmp_path):
    d = afdjax.derive_latency("mi300x", "deepseek-v3", network_efficiency=0.5)
    f = tmp_path / "hw.toml"
    f.write_text(d.to_toml())
    assert parse_hardware_spec(str(f)).coefficients() == d.latency.coefficients()
    dep = afdjax.load_deployment(str(f))
    assert dep == d.deployment()
    assert dep.kv_bytes_per_token == 61 * 1152 and dep.hbm_capacity_bytes == 192e9 and dep.power_watts == 750
    assert dep.attention_devices == 1 and dep.ffn_devices == 4
    assert dep.kv_capacity_bytes() == pytest.approx(192e9 - d.attention_weight_bytes)
    # a Deployment written by hand and read back
    again = tmp_path / "again.toml"
    again.write_text(afdjax.deployment_to_toml(dep, description="copy"))
    assert afdjax.load_deployment(str(again)) == dep


def test_sections_accepted_and_other_specs(tmp_path, paper_latency):
    f = tmp_path / "hand.toml"
    f.write_text(
        latency_to_toml(paper_latency)
        + '\n[model]\nname = "dsv3"\nnum_layers = 61\nkv_bytes_per_token = 70272\n'
        + '\n[accelerator]\nname = "ascend-910c"\nhbm_capacity_gb = 128\n'
    )
    assert parse_hardware_spec(str(f)).coefficients() == paper_latency.coefficients()
    dep = afdjax.load_deployment(str(f))
    assert (dep.num_layers, dep.kv_bytes_per_token, dep.hbm_capacity_bytes, dep.power_watts) == (61, 70272, 128e9, None)
    plain = tmp_path / "plain.toml"
    plain.write_text(latency_to_toml(paper_latency))
    assert afdjax.load_deployment(str(plain)) == afdjax.Deployment(latency=parse_hardware_spec(str(plain)))
    paper = afdjax.load_deployment("paper-910c")
    assert paper.num_layers == 61 and paper.kv_bytes_per_token == 70272 and paper.hbm_capacity_bytes is None
    inline = afdjax.load_deployment("alpha_a=1,beta_a=2,alpha_f=3,beta_f=4,alpha_c=5,beta_c=6")
    assert inline.num_layers is None and inline.kv_bytes_per_token is None
    bad = tmp_path / "bad.toml"
    bad.write_text(latency_to_toml(paper_latency) + '\n[model]\nnum_layers = "many"\n')
    with pytest.raises(ValueError, match=r"\[model\] num_layers='many' is invalid: expected an integer"):
        afdjax.load_deployment(str(bad))
    parse_hardware_spec(str(bad))  # the latency reader ignores the other sections


# ---------------------------------------------------------------- CLI
def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_hardware_text_json_and_toml(capsys, tmp_path):
    out_toml = tmp_path / "hw.toml"
    code, out, err = run(capsys, "hardware", "--accelerator", "h100", "--model", "deepseek-v3", "--out", str(out_toml))
    assert code == 0, err
    for fragment in ("alpha_a", "beta_f", "max(", "W_ffn", "https://www.nvidia.com/en-us/data-center/h100/"):
        assert fragment in out
    code, out, err = run(
        capsys, "hardware", "--accelerator", "b200", "--model", "llama-3.1-70b", "--json", "--memory-efficiency", "0.7"
    )
    assert code == 0, err
    data = json.loads(out)
    expected = afdjax.derive_latency("b200", "llama-3.1-70b", memory_efficiency=0.7).latency.coefficients()
    assert data["latency"] == expected and data["deployment"]["num_layers"] == 80
    code, out, err = run(
        capsys,
        "simulate",
        "--hardware",
        str(out_toml),
        "--batch-size",
        "32",
        "--ratios",
        "1:3",
        "--steps",
        "200",
        "--replicas",
        "2",
        "--json",
    )
    assert code == 0, err
    assert (
        json.loads(out)["settings"]["latency_coefficients"]
        == afdjax.derive_latency("h100", "deepseek-v3").latency.coefficients()
    )
    code, out, err = run(
        capsys,
        "simulate",
        "--hardware",
        "h100:deepseek-v3",
        "--batch-size",
        "32",
        "--ratios",
        "1:3",
        "--steps",
        "200",
        "--replicas",
        "2",
        "--json",
    )
    assert code == 0, err


def test_cli_hardware_list(capsys):
    code, out, _ = run(capsys, "hardware", "--list")
    assert code == 0
    for preset in list(afdjax.ACCELERATORS.values()) + list(afdjax.MODELS.values()):
        assert preset.name in out and all(s in out for s in preset.sources)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["hardware", "--accelerator", "h900"], "unknown accelerator 'h900'"),
        (["hardware", "--memory-efficiency", "2"], "--memory-efficiency must be in (0, 1]"),
        (["hardware", "--accelerator", "a100", "--dtype", "fp8"], "not supported by accelerator 'a100'"),
        (["hardware", "--model", "deepseek-v3,num_layers=x"], "num_layers='x' is not an integer"),
        (["hardware", "--out", "/no/such/dir/hw.toml"], "does not exist"),
        (["simulate", "--hardware", "h100:gpt-9"], "unknown model 'gpt-9'"),
        (["profile", "--kv-lengths", "1,2"], "at least 3"),
        (["profile", "--comm", "defaults"], "needs defaults=SPEC"),
    ],
)
def test_cli_bad_input_one_line_exit_2(capsys, argv, fragment):
    code, _, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("afdjax: error:") and fragment in lines[0], err
    assert "Traceback" not in err


# ---------------------------------------------------------------- profile
TINY = dict(
    scale=1 / 64,
    batch_size=2,
    kv_lengths=[32, 64, 96],
    ffn_batches=[8, 16, 24],
    comm_batches=[8, 16, 24],
    repeats=3,
    min_sample_s=0.0005,
)


@pytest.mark.filterwarnings("ignore::UserWarning")  # a tiny noisy fit may hit the >= 0 bound
@pytest.mark.slow  # 17 s; the stages against naive references, the fit and the TOML round trip are tested apart
def test_profile_tiny_end_to_end(tmp_path):
    r = afdjax.profile_hardware("deepseek-v3", **TINY)
    assert set(r.measurements) == {"attention", "ffn", "comm"}
    for stage, (sizes, med, samples) in r.measurements.items():
        assert len(sizes) == 3 and np.all(med > 0) and samples.shape == (3, 3)
        assert len(r.held_out[stage]) == 1 and r.held_out[stage][0] == sizes[1]
        assert np.all(np.isfinite(r.held_out_relative_error[stage]))
    np.testing.assert_array_equal(r.measurements["attention"][0], [64, 128, 192])  # T = B * length
    assert r.model.hidden_size < 7168 and r.model.attention == "mla" and "host" in r.comm_source
    f = tmp_path / "measured.toml"
    f.write_text(r.to_toml())
    lat = parse_hardware_spec(str(f))
    assert lat.coefficients() == r.latency.coefficients()
    dep = afdjax.load_deployment(str(f))
    assert dep.num_layers == 61 and dep.kv_bytes_per_token == r.model.kv_bytes_per_token
    # the fit used exactly the sizes that were not held out
    fit = r.fit.stages["ffn"]
    np.testing.assert_array_equal(fit.x, [8, 24])
    json.dumps(r.to_dict())
    assert "held-out" in r.format_text()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.slow  # a second end-to-end profile (dense GQA)
def test_profile_dense_gqa_keeps_comm_defaults(tmp_path, capsys, paper_latency):
    r = afdjax.profile_hardware("llama-3.1-70b", comm="defaults", defaults="paper-910c", **TINY)
    assert "comm" not in r.measurements and r.fit.stages["comm"].source == "defaults"
    c = r.latency.coefficients()
    assert (c["alpha_c"], c["beta_c"]) == (paper_latency.coefficients()["alpha_c"], 20.0)
    assert "defaults (paper-910c)" in r.to_toml()
    out = tmp_path / "p.toml"
    code, text, err = run(
        capsys,
        "profile",
        "--model",
        "llama-3.1-70b",
        "--scale",
        str(1 / 64),
        "--batch-size",
        "2",
        "--kv-lengths",
        "32,64,96",
        "--ffn-batches",
        "8,16,24",
        "--repeats",
        "2",
        "--json",
        "--comm",
        "defaults",
        "--defaults",
        "paper-910c",
        "--out",
        str(out),
    )
    assert code == 0, err
    data = json.loads(text)
    assert data["toml"] == str(out) and parse_hardware_spec(str(out)).coefficients() == data["latency"]


def test_profile_bad_arguments():
    with pytest.raises(ValueError, match="scale=2 is invalid"):
        afdjax.profile_hardware(scale=2)
    with pytest.raises(ValueError, match="comm='device' needs at least 2 devices"):
        afdjax.profile_hardware(comm="device", **TINY)
    with pytest.raises(ValueError, match="quantile=1.5 is invalid"):
        afdjax.profile_hardware(quantile=1.5, **TINY)


@pytest.mark.slow
def test_default_profile_acceptance():
    """Issue 5 acceptance: the default profile finishes in under 2 minutes on the CPU and predicts the
    held-out sizes within 15 %."""
    r = afdjax.profile_hardware()
    assert r.wall_s < 120
    assert r.max_held_out_error() < 0.15, r.format_text()


# ---------------------------------------------------------------- profiled layers against NumPy references
def _np(x):
    return np.asarray(x, dtype=np.float64)


def _softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _silu(x):
    return x / (1 + np.exp(-x))


@pytest.mark.parametrize("model", ["llama-3.1-70b", "deepseek-v3"])
def test_profiled_attention_matches_a_naive_reference(model):
    """GQA: per-head loop over query heads; MLA: the *non-absorbed* form (keys and values
    expanded from the latent per head), which the absorbed kernel must equal."""
    import jax

    from afdjax._profile._layers import attention_fn, attention_inputs, scale_model

    shape = scale_model(afdjax.MODELS[model], 1 / 32)
    x, w, cache = attention_inputs(shape, 3, 5, np.float64, jax.random.key(1))
    got = _np(jax.jit(attention_fn(shape))(x, w, cache))
    x, w, cache = _np(x), {k: _np(v) for k, v in w.items()}, {k: _np(v) for k, v in cache.items()}
    b, h = x.shape[0], shape.num_attention_heads
    if shape.attention == "gqa":
        hd, group = shape.head_dim, h // shape.num_kv_heads
        q = (x @ w["wq"]).reshape(b, h, hd)
        out = np.zeros((b, h, hd))
        for i in range(b):
            for j in range(h):
                kv = j // group
                p = _softmax(cache["k"][i, :, kv, :] @ q[i, j] / math.sqrt(hd))
                out[i, j] = p @ cache["v"][i, :, kv, :]
        want = out.reshape(b, h * hd) @ w["wo"]
    else:
        c, nope, rope = shape.kv_lora_rank, shape.qk_nope_head_dim, shape.qk_rope_head_dim
        q = np.einsum("br,rhe->bhe", x @ w["wqa"], w["wqb"])
        latent = cache["latent"]
        k_nope = np.einsum("blc,hnc->blhn", latent[..., :c], w["wuk"])  # expanded keys
        v = np.einsum("blc,hcv->blhv", latent[..., :c], w["wuv"])
        s = np.einsum("bhn,blhn->bhl", q[..., :nope], k_nope) + np.einsum(
            "bhr,blr->bhl", q[..., nope:], latent[..., c:]
        )
        p = _softmax(s / math.sqrt(nope + rope))
        want = np.einsum("bhl,blhv->bhv", p, v).reshape(b, -1) @ w["wo"]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_profiled_moe_matches_a_per_token_reference(monkeypatch):
    """Both grouped matmuls (ragged_dot, capacity buffers with room for every token) equal a
    per-token loop over its top-k experts plus the shared expert."""
    import jax

    import afdjax._profile._layers as prof

    shape = prof.scale_model(afdjax.MODELS["deepseek-v3"], 1 / 16)
    shape = __import__("dataclasses").replace(shape, num_experts_per_token=3)
    x, w = prof.ffn_inputs(shape, 11, np.float64, jax.random.key(2))
    xn, wn = _np(x), {k: _np(v) for k, v in w.items()}
    want = np.zeros_like(xn)
    for t in range(xn.shape[0]):
        probs = _softmax(xn[t] @ wn["router"])
        for e in np.argsort(-probs)[:3]:
            want[t] += probs[e] * ((_silu(xn[t] @ wn["wg"][e]) * (xn[t] @ wn["wu"][e])) @ wn["wd"][e])
        want[t] += (_silu(xn[t] @ wn["sg"]) * (xn[t] @ wn["su"])) @ wn["sd"]
    got = _np(jax.jit(prof.ffn_fn(shape, "ragged_dot"))(x, w))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    monkeypatch.setattr(prof, "MOE_CAPACITY_FACTOR", float(shape.num_routed_experts))  # room for all tokens
    got = _np(jax.jit(prof.ffn_fn(shape, "capacity"))(x, w))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.slow  # a subprocess with two host devices; the single-device profile runs by default
def test_profile_device_to_device_with_two_host_devices(tmp_path):
    """With two devices the communication stage is a device-to-device copy (two XLA host
    devices in a subprocess, since the device count is fixed at JAX start-up)."""
    import os
    import subprocess
    import sys

    code = (
        "import afdjax, json; r = afdjax.profile_hardware('llama-3.1-70b', scale=1/64, batch_size=2, "
        "kv_lengths=[16, 32, 48], ffn_batches=[8, 16, 24], comm_batches=[64, 128, 192], repeats=2, "
        "min_sample_s=0.0005); print(json.dumps([r.comm_source, list(map(float, r.measurements['comm'][1]))]))"
    )
    repo = str(__import__("pathlib").Path(__file__).resolve().parent.parent)
    paths = [repo, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join(paths),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    source, times = json.loads(proc.stdout.strip().splitlines()[-1])
    assert source.startswith("device-to-device") and all(t > 0 for t in times)
