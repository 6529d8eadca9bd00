"""How glmtui starts vLLM for a model and mode (the launch itself runs in the opt-in peer tests)."""

from __future__ import annotations

import json
import sys

import pytest

from glmtui.engine.vllm import (
    GPU_QUANTIZATION,
    gpu_memory_utilization,
    model_context,
    plan_vllm,
    vllm_mode_args,
    vllm_python,
)

GIB = 1 << 30


def test_modes_map_to_dtypes_and_in_flight_quantizers():
    assert vllm_mode_args("bf16", "cuda")[0] == ["--dtype", "bfloat16"]
    assert vllm_mode_args("auto", "cpu")[0] == ["--dtype", "bfloat16"]
    assert vllm_mode_args("fp32", "cpu")[0] == ["--dtype", "float32"]
    args, notes = vllm_mode_args("int4", "cuda")
    assert args[:2] == ["--quantization", GPU_QUANTIZATION["int4"]] and notes
    with pytest.raises(ValueError, match="CPU build cannot quantize to int8"):
        vllm_mode_args("int8", "cpu")


def test_gpu_share_comes_from_the_prediction_not_vllms_default():
    assert gpu_memory_utilization(12 * GIB, 80 * GIB) == pytest.approx(13 / 80, abs=1e-3)
    assert gpu_memory_utilization(200 * GIB, 80 * GIB) == 0.95
    assert gpu_memory_utilization(0, 80 * GIB) >= 0.05


def test_plan_for_a_native_folder_on_a_gpu(native_glm, tmp_path):
    plan = plan_vllm(str(native_glm), "bf16", "cuda", python=sys.executable, cache_dir=tmp_path,
                     gpu_total_bytes=80 * GIB, context=2048, port=8123)
    argv = list(plan.argv)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == str(native_glm)
    assert argv[argv.index("--port") + 1] == "8123" and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--max-model-len") + 1] == "2048"
    share = float(argv[argv.index("--gpu-memory-utilization") + 1])
    assert 0.05 <= share < 0.1  # a tiny model: about the 1 GiB headroom of 80 GiB
    assert plan.prepare is None and plan.device == "cuda" and plan.mode == "bf16"


def test_plan_on_cpu_sizes_the_kv_cache_from_the_environment(native_glm, tmp_path):
    plan = plan_vllm(str(native_glm), "auto", "cpu", python=sys.executable, cache_dir=tmp_path)
    assert plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1" and "--gpu-memory-utilization" not in plan.argv
    assert plan.mode == "bf16" and plan.device == "cpu"


def test_a_chatglm3_folder_is_served_from_a_converted_copy(chatglm3_dir, tmp_path):
    plan = plan_vllm(str(chatglm3_dir), "bf16", "cpu", python=sys.executable, cache_dir=tmp_path)
    model = plan.argv[list(plan.argv).index("--model") + 1]
    assert model.startswith(str(tmp_path / "native")) and plan.prepare is not None


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        plan_vllm(str(tmp_path), "bf16", "cpu", python=sys.executable, cache_dir=tmp_path)


def test_an_interpreter_without_vllm_says_how_to_get_it(tmp_path):
    python, why = vllm_python(sys.executable)  # the test venv has no vLLM
    assert python is None and "vLLM is not installed" in why and "[vllm]" in why
    python, why = vllm_python(str(tmp_path / "nope"))
    assert python is None and "not an executable" in why


def test_the_context_never_exceeds_the_models_own(native_glm, chatglm3_dir, tmp_path):
    """vLLM refuses a --max-model-len above config.json's (the tiny models have 2,048 tokens): the
    default 8,192 is cut to it silently, a longer one asked for with a note."""
    own = json.loads((native_glm / "config.json").read_text())["max_position_embeddings"]
    assert own < 8192
    plan = plan_vllm(str(native_glm), "bf16", "cpu", python=sys.executable, cache_dir=tmp_path)
    assert plan.argv[plan.argv.index("--max-model-len") + 1] == str(own) and not plan.notes
    plan = plan_vllm(str(native_glm), "bf16", "cpu", python=sys.executable, cache_dir=tmp_path, context=own * 3)
    assert plan.argv[plan.argv.index("--max-model-len") + 1] == str(own)
    assert any(f"the model's {own:,}" in note for note in plan.notes)
    assert model_context(chatglm3_dir) == json.loads((chatglm3_dir / "config.json").read_text())["seq_length"]


def test_gpu_total_comes_from_nvml_and_is_none_without_a_gpu_or_the_library(monkeypatch):
    from fake_nvml import FakeNVML, gpu
    from glmtui.engine.vllm_engine import gpu_total_bytes

    assert gpu_total_bytes("cpu") is None
    fake = FakeNVML([gpu(), gpu(total=80 * GIB)])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert gpu_total_bytes("cuda:1") == 80 * GIB and fake.calls["shutdown"] == 1
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML([gpu()], init_error=fake.NVMLError_DriverNotLoaded))
    assert gpu_total_bytes("cuda") is None  # no driver: vLLM runs its CPU build's way
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    assert gpu_total_bytes("auto") is None
