"""glmtui.engine.memory: exact parameter counts against real transformers models,
predicted bytes against measured storages, and the ChatGLM3-6B figures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from glmtui.engine import exact_cache, memory
from glmtui.engine.memory import (
    MODES,
    arch_from_config,
    count_params,
    fit,
    measured_footprint_bytes,
    predict,
    predict_all,
    predict_for_dir,
)

GB = 10**9

CHATGLM3_6B = {  # THUDM/chatglm3-6b config.json (architecture fields)
    "model_type": "chatglm",
    "hidden_size": 4096,
    "num_layers": 28,
    "ffn_hidden_size": 13696,
    "num_attention_heads": 32,
    "multi_query_attention": True,
    "multi_query_group_num": 2,
    "kv_channels": 128,
    "padded_vocab_size": 65024,
    "seq_length": 8192,
    "add_qkv_bias": True,
    "add_bias_linear": False,
    "post_layer_norm": True,
    "rmsnorm": True,
    "layernorm_epsilon": 1e-5,
    "torch_dtype": "float16",
}

TINY = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _tiny_glm(cls_name: str = "GlmForCausalLM", **over):
    transformers = pytest.importorskip("transformers")
    cfg_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))
    cfg = cfg_cls(**{**TINY, **over})
    return getattr(transformers, cls_name)(cfg)


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are yielded once


@pytest.mark.slow
@pytest.mark.parametrize(
    "over",
    [
        {},
        {"attention_bias": False},
        {"tie_word_embeddings": True},
        {"num_key_value_heads": 4, "head_dim": 24},  # MHA, head_dim * heads != hidden
    ],
)
@pytest.mark.parametrize("cls_name", ["GlmForCausalLM", "Glm4ForCausalLM"])
def test_exact_param_count_matches_transformers(cls_name, over):
    model = _tiny_glm(cls_name, **over)
    arch = arch_from_config(model.config.to_dict())
    assert arch.family == ("glm4" if cls_name.startswith("Glm4") else "glm") and arch.exact
    assert arch.params == _numel(model)
    assert count_params(model.config) == _numel(model)  # a config object works too


def test_chatglm_config_counts_like_equivalent_glm():
    glm = {
        "model_type": "glm",
        "vocab_size": 1024,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "attention_bias": True,
        "tie_word_embeddings": False,
    }
    chatglm = {
        "model_type": "chatglm",
        "padded_vocab_size": 1024,
        "hidden_size": 64,
        "ffn_hidden_size": 160,
        "num_layers": 3,
        "num_attention_heads": 4,
        "multi_query_attention": True,
        "multi_query_group_num": 2,
        "kv_channels": 16,
        "add_qkv_bias": True,
        "add_bias_linear": False,
        "seq_length": 512,
    }
    assert count_params(chatglm) == count_params(glm) == _numel(_tiny_glm(**{"attention_bias": True}))
    a = arch_from_config(chatglm)
    assert (a.num_kv_heads, a.head_dim, a.max_context) == (2, 16, 512)
    # no multi-query attention: every head has its own k/v
    mha = arch_from_config({**chatglm, "multi_query_attention": False})
    assert mha.num_kv_heads == 4


@pytest.mark.parametrize("mode,dtype_name", [("bf16", "bfloat16"), ("fp32", "float32"), ("fp16", "float16")])
def test_measured_tiny_footprint_matches_prediction(mode, dtype_name):
    torch = pytest.importorskip("torch")
    for over in ({}, {"tie_word_embeddings": True}):
        model = _tiny_glm(**over).to(getattr(torch, dtype_name))
        measured = measured_footprint_bytes(model)
        predicted = predict(model.config.to_dict(), mode, device="cpu").weight_bytes
        assert abs(measured - predicted) / measured < 0.10
        # the only unpredicted bytes are the rotary inv_freq buffers (fp32)
        assert 0 <= measured - predicted <= 2 * TINY["head_dim"] * 4


def test_measured_footprint_counts_shared_storage_once():
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(100, 100, bias=False)
    mod = torch.nn.Module()
    mod.a, mod.b = lin, torch.nn.Linear(100, 100, bias=False)
    mod.b.weight = lin.weight  # tied
    mod.register_buffer("view", lin.weight.data[:10])  # a view of the same storage
    assert measured_footprint_bytes(mod) == 100 * 100 * 4


@pytest.fixture(scope="module")
def saved_tiny_512(tmp_path_factory):
    """A tiny GLM (hidden 512, 8 layers) saved in bf16, as the engine would find it."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = _tiny_glm(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=64,
    ).to(torch.bfloat16)
    d = tmp_path_factory.mktemp("tiny512")
    model.save_pretrained(d)
    return d, measured_footprint_bytes(model)


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode,kwargs",
    [
        ("int8", {"load_in_8bit": True}),
        ("int4", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}),
        ("int4-dq", {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}),
    ],
)
def test_bitsandbytes_on_cpu_matches_prediction(saved_tiny_512, mode, kwargs):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig, GlmForCausalLM

    d, bf16_bytes = saved_tiny_512
    model = GlmForCausalLM.from_pretrained(d, device_map="cpu", quantization_config=BitsAndBytesConfig(**kwargs))
    measured = measured_footprint_bytes(model)
    dq = mode.endswith("-dq")
    pred = predict_for_dir(d, device="cpu", nonquant_dtype="bf16", double_quant=dq)[mode.split("-")[0]]
    assert abs(measured - pred.weight_bytes) / measured < 0.10, (mode, measured, pred.weight_bytes)
    assert abs(bf16_bytes - predict_for_dir(d, device="cpu")["bf16"].weight_bytes) / bf16_bytes < 0.01
    assert measured < bf16_bytes * (0.6 if mode == "int8" else 0.4)


def test_chatglm3_6b_against_official_figures():
    a = arch_from_config(CHATGLM3_6B)
    assert a.params == 6_243_584_000  # 6.24B
    p = predict_all(a, context_len=2048, nonquant_dtype="fp16")
    assert p["fp16"].weight_bytes == 2 * a.params  # ~12.5 GB
    assert 12.4 * GB < p["fp16"].weight_bytes < 12.6 * GB
    assert p["bf16"].total_bytes == p["fp16"].total_bytes
    assert p["fp32"].weight_bytes == 4 * a.params
    # ChatGLM2-6B README (same architecture): fp16 ~13 GB, int8 ~8 GB, int4 ~5.5 GB.  Its int8
    # used its own kernels; bitsandbytes' LLM.int8 needs more at prefill (measured on an H100:
    # 9.27 GB for this shape), so int8 gets a looser bound.
    for mode, official, tol in (("fp16", 13.1, 0.10), ("int8", 8.2, 0.15), ("int4", 5.5, 0.10)):
        assert abs(p[mode].total_bytes / GB - official) / official < tol, (mode, p[mode].total_bytes / GB)
    # the H100 measurement (whole process, NVML) for 2048 + 16 tokens, bf16 non-quantized parts
    h100 = predict_all(a, context_len=2064, nonquant_dtype="bf16")
    for mode, measured in (("bf16", 13.65), ("int8", 9.27), ("int4", 5.72)):
        assert abs(h100[mode].total_bytes / GB - measured) / measured < 0.05, (mode, h100[mode].total_bytes / GB)
    assert p["int4"].weight_bytes < p["int8"].weight_bytes < p["fp16"].weight_bytes
    for m in MODES:
        q = p[m]
        assert q.total_bytes == q.weight_bytes + q.kv_cache_bytes + q.overhead_bytes
        assert q.exact and q.params == a.params and q.device == "cuda"


def test_kv_cache_formula():
    a = arch_from_config(CHATGLM3_6B)
    p = predict(a, "bf16", context_len=8192, batch=3)
    assert p.kv_cache_bytes == 2 * 28 * 2 * 128 * 8192 * 3 * 2
    assert predict(a, "fp32", context_len=8192).kv_cache_bytes == 2 * 28 * 2 * 128 * 8192 * 4
    # default context: the model's, capped
    assert predict(a, "bf16").context_len == 8192
    big = arch_from_config({**CHATGLM3_6B, "seq_length": 131072})
    assert predict(big, "bf16").context_len == memory.DEFAULT_CONTEXT_CAP
    # no CUDA context on CPU
    assert predict(a, "bf16", device="cpu").overhead_bytes < predict(a, "bf16", device="cuda").overhead_bytes


def test_nonquant_dtype_parameter():
    a = arch_from_config(CHATGLM3_6B)
    lo = predict(a, "int4", nonquant_dtype="bf16").weight_bytes
    hi = predict(a, "int4", nonquant_dtype="fp32").weight_bytes
    assert hi - lo == 2 * (a.embed_params + a.lm_head_params + a.norm_params + a.bias_params)
    with pytest.raises(ValueError):
        predict(a, "int4", nonquant_dtype="int3")
    with pytest.raises(ValueError):
        predict(a, "int2")


def test_generic_fallback_and_config_dir(tmp_path):
    llama = {
        "model_type": "llama",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "vocab_size": 100,
        "tie_word_embeddings": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(llama))
    preds = predict_for_dir(tmp_path)
    assert set(preds) == set(MODES)
    p = preds["bf16"]
    assert not p.exact and p.notes
    # embed + 2 layers x (4 x 64x64 attention + 3 x 64x128 MLP + 2 norms) + final norm
    assert p.params == 100 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


def test_fit_verdicts():
    G = 2**30
    assert fit(10 * G, 16 * G, "cuda").verdict == "fits"
    v = fit(15 * G, 16 * G, "cuda", mode="bf16")
    assert v.verdict == "tight" and "bf16" in v.reason
    assert fit(17 * G, 16 * G, "cuda").verdict == "won't fit"
    assert "short" in fit(17 * G, 16 * G, "cuda").reason
    v = fit(10 * G, 32 * G, "cpu", mode="int4")
    assert v.verdict == "CPU only" and "CPU" in v.reason
    assert fit(40 * G, 32 * G, "cpu").verdict == "won't fit"
    assert fit(1, None, "cuda").verdict == "unknown"
    assert fit(10 * G, 16 * G, "cuda:1").verdict == "fits"


def test_moved_names_still_importable_from_memory():
    """footprint.py and exact_cache.py hold what memory.py used to; its names still resolve, and
    exact_cache imported first (it imports memory) does not trip over a circular import."""
    code = ("import glmtui.engine.exact_cache as e, glmtui.engine.footprint as f, glmtui.engine.memory as m; "
            "assert m.ExactResult is e.ExactResult and m.predict_exact_subprocess is e.predict_exact_subprocess; "
            "assert m.measured_footprint_bytes is f.measured_footprint_bytes; "
            "from glmtui.engine.memory import cached_exact; assert cached_exact is e.cached_exact; "
            "import sys; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError):
        memory.no_such_name  # noqa: B018 - the attribute read is the test


def test_import_is_cheap():
    code = "import sys, glmtui.engine.memory; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- exact prediction (meta device)

import tiny_models  # noqa: E402  (tests/ is on sys.path through conftest)

LOAD_MODES = ("bf16", "fp16", "fp32", "int8", "int4")


@pytest.fixture(scope="module")
def tiny_arch_dirs(tmp_path_factory):
    """One folder per architecture in tests/tiny_models.py."""
    root = tmp_path_factory.mktemp("arch")
    return {name: build(root / name) for name, build in tiny_models.ARCHITECTURES.items()}


def _measured_weights(folder, mode):
    """Unique storages of the model as glmtui's loader loads it on CPU."""
    from glmtui.engine import loading

    try:
        loaded = loading.load_model(folder, mode, "cpu")
        return loaded.footprint_bytes, loaded.model
    except loading.ModelLoadError as exc:
        # GLM-4.7-Flash's MLA feeds 4-D latents to kv_b_proj: bitsandbytes' LLM.int8 on CPU
        # loads it but cannot compute (glmtui refuses at the first forward).  The bytes it
        # stored are still what is predicted: load without that forward.
        assert mode == "int8" and "cannot compute" in str(exc), exc
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, **loading._load_kwargs(mode, "cpu"))
        return measured_footprint_bytes(model), model


@pytest.mark.slow
@pytest.mark.parametrize("mode", LOAD_MODES)
@pytest.mark.parametrize("arch", list(tiny_models.ARCHITECTURES))
def test_exact_weights_match_measured(tiny_arch_dirs, arch, mode):
    torch = pytest.importorskip("torch")
    if mode in ("int8", "int4"):
        pytest.importorskip("bitsandbytes")
    from glmtui.engine import predict

    folder = tiny_arch_dirs[arch]
    pred = predict.predict_dir(folder, (mode,), device="cpu")[mode]
    measured, model = _measured_weights(folder, mode)
    assert pred.source == "meta" and pred.exact
    assert abs(pred.weight_bytes / measured - 1.0) <= 0.01, (arch, mode, pred.weight_bytes, measured)
    assert pred.params == sum(p.numel() for p in model.parameters()) or mode in ("int8", "int4")
    if mode in ("bf16", "fp32"):
        # KV cache per token: what a real transformers cache holds after a 10-token prefill
        with torch.no_grad():
            cache = model(torch.arange(3, 13).unsqueeze(0), use_cache=True).past_key_values
        held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        assert pred.kv_bytes_per_token == held // 10, (arch, pred.kv_bytes_per_token, held)
        assert pred.kv_cache_bytes == pred.kv_bytes_per_token * pred.context_len


def test_exact_kv_cache_by_attention_kind():
    """GQA: kv heads x head_dim x 2 per layer; MLA (GLM-4.7-Flash): the compressed latent
    kv_lora_rank + qk_rope_head_dim, not per-head keys and values."""
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    glm4 = {"model_type": "glm4", "vocab_size": 1000, "hidden_size": 256, "intermediate_size": 512,
            "num_hidden_layers": 5, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32,
            "pad_token_id": 0}
    p = predict.predict_config(glm4, ("bf16", "fp32"), device="cpu", context_len=100)
    assert p["bf16"].kv_bytes_per_token == 2 * 32 * 2 * 5 * 2
    assert p["fp32"].kv_bytes_per_token == 2 * 32 * 2 * 5 * 4
    flash = {"model_type": "glm4_moe_lite", "num_hidden_layers": 4, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
             "n_routed_experts": 4, "vocab_size": 1000}
    q = predict.predict_config(flash, ("bf16",), device="cuda", context_len=1000)["bf16"]
    assert q.kv_bytes_per_token == (512 + 64) * 4 * 2
    assert q.kv_cache_bytes == q.kv_bytes_per_token * 1000


def test_exact_glm_family_sizes():
    """Real shapes (transformers' defaults for these classes are GLM-4.7-Flash's and GLM-4.5-Air's):
    the parameter counts the model cards give, and bitsandbytes leaving MoE experts in 16-bit."""
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    flash = predict.predict_config({"model_type": "glm4_moe_lite"}, ("bf16", "int4"), device="cuda")
    assert 29.5e9 < flash["bf16"].params < 30.5e9  # "30B-A3B"
    assert flash["bf16"].kv_bytes_per_token == (512 + 64) * 47 * 2
    # experts are 3-D tensors, not nn.Linear: int4 saves little, and says why
    assert flash["int4"].weight_bytes > 0.9 * flash["bf16"].weight_bytes
    assert any("experts" in n for n in flash["int4"].notes)
    z1 = {"model_type": "glm4", "vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 13696,
          "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
          "attention_bias": True, "max_position_embeddings": 32768}
    z = predict.predict_config(z1, ("bf16", "int4"), device="cuda")
    assert 9.3e9 < z["bf16"].params < 9.5e9
    assert z["int4"].weight_bytes < 0.4 * z["bf16"].weight_bytes and not z["int4"].notes


def test_exact_matches_hand_formula_for_chatglm3():
    """The formula path knows ChatGLM3-6B to the byte (checked on an H100); the meta count agrees."""
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    exact = predict.predict_config(CHATGLM3_6B, device="cuda", context_len=2048)
    formula = predict_all(CHATGLM3_6B, context_len=2048, device="cuda")
    for mode in ("bf16", "fp16", "fp32", "int8", "int4"):
        # the meta count adds the rotary inv_freq buffers (fp32) the formula ignores
        assert 0 <= exact[mode].weight_bytes - formula[mode].weight_bytes <= 2 * 64 * 4, mode
        assert exact[mode].kv_cache_bytes == formula[mode].kv_cache_bytes
    assert exact["bf16"].params == formula["bf16"].params


@pytest.mark.slow
def test_unknown_architecture_predicts_nothing(tmp_path):
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    with pytest.raises(predict.UnknownArchitecture, match="llama3000"):
        predict.predict_config({"model_type": "llama3000", "hidden_size": 64})
    r = predict.exact_result({"model_type": "llama3000"}, use_cache=False)
    assert r.unknown_architecture and not r.predictions and "no prediction" in r.error
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama3000", "auto_map": {}}))
    done = subprocess.run([sys.executable, "-m", "glmtui.engine.predict", str(tmp_path), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["unknown_architecture"] and "own code" in data["error"]


@pytest.mark.slow
def test_exact_prediction_from_a_subprocess_and_the_cache(tiny_arch_dirs):
    """The front end's path: no torch in this process; the second ask is answered from the cache."""
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    folder = tiny_arch_dirs["glm4-moe-lite"]
    r = memory.predict_exact_subprocess(folder, "cpu", context_len=300)
    assert r.error is None, r.error
    local = predict.predict_dir(folder, device="cpu", context_len=300)
    assert set(r.predictions) == set(MODES)
    for mode in MODES:
        assert r.predictions[mode] == local[mode]
    assert memory.cached_exact(memory.read_config(folder), "cpu", 300) is not None
    exact_cache._memo.clear()
    started = __import__("time").perf_counter()
    again = memory.predict_exact_subprocess(folder, "cpu", context_len=300)
    assert again.predictions == r.predictions
    assert __import__("time").perf_counter() - started < 1.0  # no subprocess: the stored result
    # an unreadable config.json: one line, no exception
    bad = folder.parent / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert "cannot be read" in memory.predict_exact_subprocess(bad, "cpu").error


@pytest.mark.slow  # two counts in a predictor subprocess that imports torch
def test_a_gpu_ask_to_the_predictor_stores_the_cpu_figures_too(tiny_arch_dirs):
    """The pane's predictor asked for "cuda" counts the CPU from the same build and stores it, so that
    `glmtui fit` on a GPU machine (it needs both) is answered from the store."""
    pytest.importorskip("transformers")
    from glmtui.engine import predict

    folder = tiny_arch_dirs["glm4-thinking"]
    cfg = memory.read_config(folder)
    assert exact_cache.cached_exact(cfg, "cpu", 200) is None
    r = exact_cache.predict_exact_subprocess(folder, "cuda", context_len=200)
    assert r.error is None and r.predictions["bf16"].device == "cuda"
    stored = exact_cache.cached_exact(cfg, "cpu", 200)
    assert stored is not None and stored.predictions == predict.predict_config(cfg, device="cpu", context_len=200)
