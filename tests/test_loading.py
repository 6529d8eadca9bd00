"""Loading real tiny checkpoints: ChatGLM3 layout -> native GLM, modes, and bad folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import tiny_models
from chatglm3_reference import chatglm3_logits
from glmtui.engine.events import ChatMessage
from glmtui.engine.loading import ModelLoadError, load_model, mode_support


def _logits(loaded, ids):
    with torch.no_grad():
        return loaded.model(torch.tensor([ids])).logits[0].float()


def test_chatglm3_layout_gives_identical_logits_to_native_save(chatglm3_pair):
    layout, native = chatglm3_pair
    a = load_model(layout, "fp32")
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(native, dtype=torch.float32)
    ids = a.chat_format.encode_conversation([ChatMessage("user", "你好，hello world")])
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
    assert torch.equal(_logits(a, ids), expected)


def test_chatglm3_mapping_matches_chatglm3_math(chatglm3_dir):
    """Our mapped model agrees with an independent implementation of ChatGLM3's forward."""
    config = json.loads((chatglm3_dir / "config.json").read_text())
    tensors = {}
    for shard in sorted(chatglm3_dir.glob("pytorch_model-*.bin")):
        tensors.update(torch.load(shard, weights_only=True))
    loaded = load_model(chatglm3_dir, "fp32")
    ids = loaded.chat_format.encode_conversation(
        [ChatMessage("system", "You are helpful."), ChatMessage("user", "The GPU has 24 GiB")]
    )
    ours = _logits(loaded, ids)
    theirs = chatglm3_logits(tensors, config, ids)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_rope_ratio_of_32k_model_is_honoured(tmp_path):
    folder = tiny_models.build_chatglm3(tmp_path / "c32k", rope_ratio=50.0)
    config = json.loads((folder / "config.json").read_text())
    tensors = {}
    for shard in folder.glob("pytorch_model-*.bin"):
        tensors.update(torch.load(shard, weights_only=True))
    loaded = load_model(folder, "fp32")
    assert loaded.model.config.rope_parameters["rope_theta"] == 500000.0
    ids = loaded.chat_format.encode_conversation([ChatMessage("user", "a long context " * 8)])
    assert torch.allclose(_logits(loaded, ids), chatglm3_logits(tensors, config, ids), atol=1e-4)


def test_safetensors_shards_load_like_pickle_shards(tmp_path, chatglm3_dir):
    st = tiny_models.build_chatglm3(tmp_path / "st", fmt="safetensors", shards=3)
    a, b = load_model(chatglm3_dir, "fp32"), load_model(st, "fp32")
    ids = a.chat_format.encode_conversation([ChatMessage("user", "hi")])
    assert torch.equal(_logits(a, ids), _logits(b, ids))  # same seed -> same weights


def test_pickle_shards_are_read_with_weights_only(tmp_path, chatglm3_dir):
    """A shard that would run code when unpickled is refused, and nothing runs."""
    folder = tmp_path / "evil"
    shutil.copytree(chatglm3_dir, folder)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    shard = sorted(folder.glob("pytorch_model-*.bin"))[0]
    state = torch.load(shard, weights_only=True)
    state["evil"] = Exploit()
    torch.save(state, shard)
    with pytest.raises(ModelLoadError, match="contains code .*refused for safety") as failure:
        load_model(folder, "fp32")
    assert not marker.exists()
    # Not mistaken for damage, and torch's advice to turn the safety off is never passed on.
    assert "corrupt" not in str(failure.value) and "weights_only" not in str(failure.value)


@pytest.mark.parametrize("mode", ["bf16", "fp16", "fp32", "int8", "int4"])
def test_every_mode_loads_generates_and_reports_footprint(chatglm3_dir, mode):
    loaded = load_model(chatglm3_dir, mode)
    assert loaded.footprint_bytes > 0
    ids = loaded.chat_format.encode_conversation([ChatMessage("user", "hello")])
    with torch.no_grad():
        out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(ids)


def test_quantized_modes_are_smaller(models_root):
    folder = tiny_models.build_native_glm(models_root / "wider", hidden=256, layers=4, heads=8, kv_heads=2,
                                          head_dim=32, ffn=512)
    sizes = {mode: load_model(folder, mode).footprint_bytes for mode in ("fp32", "bf16", "int8", "int4")}
    assert sizes["fp32"] > sizes["bf16"] > sizes["int8"] > sizes["int4"], sizes


def test_unknown_mode_is_refused_before_loading(chatglm3_dir):
    assert "unknown quantization mode" in mode_support("int3", "cpu")
    with pytest.raises(ModelLoadError, match="unknown quantization mode"):
        load_model(chatglm3_dir, "int3")


def test_cuda_requested_without_gpu_says_why(chatglm3_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model(chatglm3_dir, "bf16", device="cuda")


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope", "fp32")


def test_folder_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path / "empty", "fp32")


def test_missing_shard_is_named(tmp_path, chatglm3_dir):
    folder = _copy(chatglm3_dir, tmp_path / "partial")
    (folder / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"missing weight shard\(s\) pytorch_model-00002-of-00002.bin"):
        load_model(folder, "fp32")


def test_truncated_shard(tmp_path, chatglm3_dir):
    folder = _copy(chatglm3_dir, tmp_path / "trunc")
    shard = folder / "pytorch_model-00001-of-00002.bin"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(folder, "fp32")


def test_truncated_native_safetensors(tmp_path, native_glm):
    folder = _copy(native_glm, tmp_path / "trunc-native")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModelLoadError):
        load_model(folder, "fp32")


def test_unreadable_config(tmp_path, chatglm3_dir):
    folder = _copy(chatglm3_dir, tmp_path / "badjson")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="config.json .* cannot be read"):
        load_model(folder, "fp32")


def test_config_that_does_not_match_weights(tmp_path, chatglm3_dir):
    folder = _copy(chatglm3_dir, tmp_path / "mismatch")
    config = json.loads((folder / "config.json").read_text())
    config["kv_channels"] = 32
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="does not match"):
        load_model(folder, "fp32")


def test_native_config_that_does_not_match_weights(tmp_path, native_glm):
    folder = _copy(native_glm, tmp_path / "mismatch-native")
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    # The tensor and both shapes are named (not transformers' "look at the above report!").
    with pytest.raises(ModelLoadError, match=r"model.embed_tokens.weight is \[\d+, 64\] in the weight files but "
                                             r"\[\d+, 96\] per config.json") as failure:
        load_model(folder, "fp32")
    assert "above report" not in str(failure.value)


def test_unknown_architecture_never_runs_remote_code(tmp_path, native_glm):
    folder = _copy(native_glm, tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "my_custom_lm"
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.MyLM"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (folder / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(ModelLoadError, match="unknown architecture 'my_custom_lm'.*never runs"):
        load_model(folder, "fp32")
    assert not marker.exists()


def test_tokenizer_that_does_not_match(tmp_path, chatglm3_dir):
    folder = _copy(chatglm3_dir, tmp_path / "bigtok")
    tiny_models.train_sentencepiece(folder, vocab_size=900)  # more pieces than the model's vocabulary
    with pytest.raises(ModelLoadError, match="does not belong to these weights"):
        load_model(folder, "fp32")


def test_missing_tokenizer_model(tmp_path, chatglm3_dir):
    folder = _copy(chatglm3_dir, tmp_path / "notok")
    (folder / "tokenizer.model").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer.model"):
        load_model(folder, "fp32")
