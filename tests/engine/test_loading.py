"""Loading real tiny checkpoints: ChatGLM3 layout -> native GLM, modes, and bad folders."""

from __future__ import annotations

import json
import re
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


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bf16", "fp16", "fp32", "int8", "int4"])
def test_every_mode_loads_generates_and_reports_footprint(chatglm3_dir, mode):
    loaded = load_model(chatglm3_dir, mode)
    assert loaded.footprint_bytes > 0
    ids = loaded.chat_format.encode_conversation([ChatMessage("user", "hello")])
    with torch.no_grad():
        out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(ids)


@pytest.mark.slow
def test_quantized_modes_are_smaller(tmp_path):
    folder = tiny_models.build_native_glm(tmp_path / "wider", hidden=256, layers=4, heads=8, kv_heads=2,
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


@pytest.mark.parametrize("model, key, value, match", [
    ("chatglm3_dir", "kv_channels", 32, "does not match"),
    # native: the tensor and both shapes are named (not transformers' "look at the above report!")
    ("native_glm", "hidden_size", 96,
     r"model.embed_tokens.weight is \[\d+, 64\] in the weight files but \[\d+, 96\] per config.json"),
])
def test_config_that_does_not_match_weights(tmp_path, request, model, key, value, match):
    folder = _copy(request.getfixturevalue(model), tmp_path / "mismatch")
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=match) as failure:
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


# ---------------------------------------------------------------- config.json against the weights (issue 12, item 4)


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _rewrite_bin_shards(folder: Path, edit) -> None:
    for shard in sorted(folder.glob("pytorch_model-*.bin")):
        state = torch.load(shard, weights_only=True)
        edit(state)
        torch.save(state, shard)


def _rewrite_safetensors(path: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    edit(state)
    save_file(state, str(path), metadata={"format": "pt"})


def test_chatglm3_missing_tensor_is_refused_and_named(tmp_path, chatglm3_dir):
    folder = _copy(chatglm3_dir, tmp_path / "holed")
    name = "transformer.encoder.layers.1.mlp.dense_4h_to_h.weight"
    _rewrite_bin_shards(folder, lambda state: state.pop(name, None))
    with pytest.raises(ModelLoadError, match=rf"missing from the weight files: {re.escape(name)}"):
        load_model(folder, "fp32")


@pytest.mark.parametrize("edit,refusal", [
    pytest.param({"num_layers": 3}, r"config.json says 3 layers, the weight files hold 2; .*"
                                    r"transformer\.encoder\.layers\.2\.input_layernorm\.weight", id="more-layers"),
    pytest.param({"num_layers": 1}, r"says 1 layers, the weight files hold 2; .*in the weight files that "
                                    r"config.json has no place for: transformer\.encoder\.layers\.1\.",
                 id="fewer-layers"),
    # more query rows than the files hold: the fused QKV tensor and both shapes are named
    pytest.param({"num_attention_heads": 8}, r"transformer\.encoder\.layers\.0\.self_attention\.query_key_value\."
                                             r"\w+ is \[\d+(, 64)?\] in the weight files; config.json implies",
                 id="fused-qkv-rows"),
])
def test_chatglm3_config_that_disagrees_with_the_weights_is_refused_and_named(tmp_path, chatglm3_dir, edit, refusal):
    folder = _copy(chatglm3_dir, tmp_path / "edited")
    _edit_config(folder, **edit)
    with pytest.raises(ModelLoadError, match=refusal):
        load_model(folder, "fp32")


def test_native_missing_tensor_is_refused_and_named(tmp_path, native_glm):
    folder = _copy(native_glm, tmp_path / "holed-native")
    name = "model.layers.1.self_attn.o_proj.weight"
    _rewrite_safetensors(folder / "model.safetensors", lambda state: state.pop(name))
    with pytest.raises(ModelLoadError, match=rf"1 tensor\(s\) missing from the weight files: {re.escape(name)}\."):
        load_model(folder, "fp32")


def test_native_extra_tensor_is_refused_and_named(tmp_path, native_glm):
    folder = _copy(native_glm, tmp_path / "extra-native")
    name = "model.layers.0.mlp.spare_proj.weight"
    _rewrite_safetensors(folder / "model.safetensors", lambda state: state.__setitem__(name, torch.zeros(4, 4)))
    with pytest.raises(ModelLoadError,
                       match=rf"in the weight files that config.json has no place for: {re.escape(name)}"):
        load_model(folder, "fp32")


def test_native_config_with_more_layers_than_the_weights(tmp_path, native_glm):
    folder = _copy(native_glm, tmp_path / "three-native")
    _edit_config(folder, num_hidden_layers=3)
    with pytest.raises(ModelLoadError,
                       match=r"config.json says 3 layers, the weight files hold 2; .*model\.layers\.2\."):
        load_model(folder, "fp32")


def test_tied_embeddings_are_not_reported_missing(tmp_path):
    folder = tiny_models.build_native_glm(tmp_path / "tied", tied=True)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        assert "lm_head.weight" not in handle.keys()  # saved once, as the embeddings
    loaded = load_model(folder, "fp32")
    model = loaded.model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


_FAST_FAILURE = """
import json, resource, sys, time
from glmtui.engine.loading import ModelLoadError, load_model
import transformers.models.glm.modeling_glm  # imported before the clock starts, as a second load would find it
for folder in sys.argv[1:]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    try:
        load_model(folder, "fp32")
        message = None
    except ModelLoadError as exc:
        message = str(exc)
    print(json.dumps({"folder": folder, "message": message, "seconds": time.perf_counter() - started,
                      "grew_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}), flush=True)
"""


@pytest.mark.slow
def test_a_million_layers_fail_at_once_without_allocating(tmp_path, chatglm3_dir, native_glm):
    """Before the fix this load grew memory for minutes; a child process keeps a regression from hanging
    pytest. Both layouts are tried in one child (its imports are most of the time)."""
    import subprocess
    import sys

    chatglm3 = _copy(chatglm3_dir, tmp_path / "million-chatglm3")
    _edit_config(chatglm3, num_layers=1000000)
    native = _copy(native_glm, tmp_path / "million-native")
    _edit_config(native, num_hidden_layers=1000000)
    child = subprocess.run([sys.executable, "-c", _FAST_FAILURE, str(chatglm3), str(native)], capture_output=True,
                           text=True, timeout=240, cwd=Path(__file__).resolve().parents[2])
    assert child.returncode == 0, child.stderr[-2000:]
    results = [json.loads(line) for line in child.stdout.splitlines() if line.startswith('{"folder"')]
    assert [r["folder"] for r in results] == [str(chatglm3), str(native)], child.stdout
    for result in results:
        assert result["message"] and "config.json does not match the weights" in result["message"], result
        assert result["seconds"] < 5.0, result
        assert result["grew_kib"] < 200 * 1024, result


def test_weights_beyond_the_machines_memory_are_refused_before_loading(native_glm):
    from glmtui.engine import checks

    config = json.loads((native_glm / "config.json").read_text())
    checks.check_fits_machine(config, "fp32", "cpu")  # the tiny model fits this machine
    huge = dict(config, hidden_size=65536, intermediate_size=262144, num_hidden_layers=400, head_dim=1024,
                num_attention_heads=64, num_key_value_heads=64)
    with pytest.raises(checks.CheckFailed, match=r"weights alone need [\d.]+ GiB, more than the [\d.]+ GiB of RAM "
                                                 r"and swap this machine has\. Try int8 or int4"):
        checks.check_fits_machine(huge, "fp32", "cpu")


# ---------------------------------------------------------------- messages that leaked library advice (item 5)


def test_llama_model_type_on_chatglm3_files_says_what_glmtui_supports(tmp_path, chatglm3_dir):
    from transformers import AutoTokenizer

    from glmtui.engine.checks import plain_error

    folder = _copy(chatglm3_dir, tmp_path / "llama")
    _edit_config(folder, model_type="llama")
    with pytest.raises(ModelLoadError,
                       match=r"ChatGLM3's layout .* model_type 'llama'.* model_type \"chatglm\"") as failure:
        load_model(folder, "fp32")
    assert "trust_remote_code" not in str(failure.value)
    # Whatever path reaches transformers' own advice, it is translated: glmtui has no such option.
    with pytest.raises(Exception) as library:
        AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    assert "trust_remote_code" in str(library.value)
    translated = plain_error(str(library.value))
    assert "trust_remote_code" not in translated and "never runs" in translated and "chatglm" in translated


# ---------------------------------------------------------------- pickles (item 6)


def test_plain_pickle_with_objects_is_refused_for_safety_not_called_corrupt(tmp_path, chatglm3_dir):
    import pickle

    folder = _copy(chatglm3_dir, tmp_path / "plainpickle")
    shard = sorted(folder.glob("pytorch_model-*.bin"))[0]
    shard.write_bytes(pickle.dumps({"config": {"a": 1}, "weights": object()}, protocol=4))
    with pytest.raises(ModelLoadError, match="refused for safety") as failure:
        load_model(folder, "fp32")
    assert "corrupt" not in str(failure.value) and "weights_only" not in str(failure.value)


def test_legacy_pickle_format_loads(tmp_path, chatglm3_dir):
    """Pre-zip torch.save files cannot be memory-mapped; they were refused as corrupt."""
    folder = _copy(chatglm3_dir, tmp_path / "legacy")
    for shard in sorted(folder.glob("pytorch_model-*.bin")):
        torch.save(torch.load(shard, weights_only=True), shard, _use_new_zipfile_serialization=False)
    a, b = load_model(chatglm3_dir, "fp32"), load_model(folder, "fp32")
    ids = a.chat_format.encode_conversation([ChatMessage("user", "hi")])
    assert torch.equal(_logits(a, ids), _logits(b, ids))


# ---------------------------------------------------------------- int4 on CPU (item 7)


@pytest.mark.slow  # builds, quantizes and runs a model (test_worker's int4 test stays fast)
def test_int4_on_cpu_keeps_unsupported_widths_in_16bit_and_generates(tmp_path):
    # ffn 120: down_proj's input (120) is not a multiple of 64, gate_up's output (240) not of 32.
    folder = tiny_models.build_native_glm(tmp_path / "odd-ffn", ffn=120)
    loaded = load_model(folder, "int4")
    assert loaded.notes and "4 of 12 Linear layers stay bf16" in loaded.notes[0], loaded.notes
    assert "mlp.gate_up_proj in 2 layers" in loaded.notes[0] and "mlp.down_proj in 2 layers" in loaded.notes[0]
    layers = loaded.model.model.layers
    assert type(layers[0].mlp.down_proj) is torch.nn.Linear  # left in 16-bit
    assert type(layers[0].self_attn.q_proj).__name__ == "Linear4bit"  # the rest quantized
    ids = loaded.chat_format.encode_conversation([ChatMessage("user", "hello")])
    with torch.no_grad():
        out = loaded.model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
    assert out.shape[1] > len(ids)


@pytest.mark.slow  # builds and quantizes a model
def test_int4_on_cpu_refuses_a_model_it_cannot_quantize_at_all(tmp_path):
    folder = tiny_models.build_native_glm(tmp_path / "odd-hidden", hidden=80)  # every Linear has an 80-wide side
    with pytest.raises(ModelLoadError, match="int4 on CPU cannot quantize any layer .* Choose int8 or bf16"):
        load_model(folder, "int4")


# ---------------------------------------------------------------- weight files changed on disk (item 8)


_FILES_CHANGE_UNDER_A_LOADED_MODEL = """
import os, sys, torch
from pathlib import Path
from glmtui.engine.events import ChatMessage
from glmtui.engine.loading import load_model, weight_files
for name, folder in zip(sys.argv[1::2], map(Path, sys.argv[2::2])):
    loaded = load_model(folder, "fp32")
    ids = torch.tensor([loaded.chat_format.encode_conversation([ChatMessage("user", "hello there")])])
    def outputs():
        with torch.no_grad():
            return loaded.model(ids).logits, loaded.model.generate(ids, max_new_tokens=6, do_sample=False)
    logits, generated = outputs()
    files = weight_files(folder)[1]
    for path in files:  # overwritten in place with garbage
        with open(path, "r+b") as f:
            f.write(b"\\xff" * path.stat().st_size)
    overwritten = outputs()
    for path in files:  # truncated: a page of a mapped file past its end is SIGBUS
        os.truncate(path, 0)
    truncated = outputs()
    for change, (l, g) in (("overwritten", overwritten), ("truncated", truncated)):
        print(name, change, torch.equal(l, logits) and torch.equal(g, generated), flush=True)
"""


@pytest.mark.slow  # a child process that loads three models
def test_loaded_fp32_model_survives_its_files_changing(tmp_path, chatglm3_dir, native_glm):
    """Each layout in turn, in one child (its torch import paid once): native safetensors, ChatGLM3 .bin shards,
    ChatGLM3 safetensors. A layout read through a mapping of its files dies of SIGBUS (-7) or answers otherwise."""
    import subprocess
    import sys

    layouts = {
        "native-safetensors": _copy(native_glm, tmp_path / "native"),
        "chatglm3-bin": _copy(chatglm3_dir, tmp_path / "chatglm3"),
        "chatglm3-safetensors": tiny_models.build_chatglm3(tmp_path / "st", fmt="safetensors"),
    }
    argv = [str(part) for name, folder in layouts.items() for part in (name, folder)]
    child = subprocess.run([sys.executable, "-c", _FILES_CHANGE_UNDER_A_LOADED_MODEL, *argv],
                           capture_output=True, text=True, timeout=360, cwd=Path(__file__).resolve().parents[2])
    assert child.returncode == 0, (child.returncode, child.stdout, child.stderr[-2000:])  # -7: SIGBUS
    expected = [f"{name} {change} True" for name in layouts for change in ("overwritten", "truncated")]
    assert child.stdout.splitlines() == expected, child.stdout


def test_rotary_buffers_that_older_checkpoints_saved_are_not_unexpected(tmp_path, native_glm):
    """transformers drops per-layer rotary_emb.inv_freq of old checkpoints: the check accepts what it accepts."""
    folder = _copy(native_glm, tmp_path / "old-inv-freq")
    _rewrite_safetensors(folder / "model.safetensors",
                         lambda state: state.__setitem__("model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(4)))
    load_model(folder, "fp32")


def test_native_pickle_checkpoint_loads_like_safetensors(tmp_path, native_glm):
    from safetensors.torch import load_file

    folder = _copy(native_glm, tmp_path / "native-bin")
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    a, b = load_model(native_glm, "fp32"), load_model(folder, "fp32")
    ids = a.chat_format.encode_conversation([ChatMessage("user", "hi")])
    assert torch.equal(_logits(a, ids), _logits(b, ids))
