"""Which library runs int8/int4 where: torchao on capable CUDA GPUs, bitsandbytes elsewhere."""

from __future__ import annotations

import pytest

from glmtui.engine import compiled
from glmtui.engine.quant_backends import BITSANDBYTES, TORCHAO, choose, quantization_config


def test_16_bit_modes_have_no_quantizer():
    assert choose("bf16", "cuda", torchao="0.18.0", capability=(9, 0)) is None


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_the_cpu_keeps_bitsandbytes(mode, monkeypatch):
    monkeypatch.delenv("GLMTUI_QUANT_BACKEND", raising=False)
    choice = choose(mode, "cpu", torchao="0.18.0", capability=None)
    assert choice.backend == BITSANDBYTES and "CUDA" in choice.reason


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_recent_gpu_with_torchao_gets_torchao(mode, monkeypatch):
    monkeypatch.delenv("GLMTUI_QUANT_BACKEND", raising=False)
    choice = choose(mode, "cuda:0", torchao="0.18.0", capability=(9, 0))
    assert choice.backend == TORCHAO and mode in choice.reason and "0.18.0" in choice.reason
    assert compiled.wanted(None, "cuda:0", mode, choice.backend)
    assert not compiled.wanted(None, "cuda:0", mode, BITSANDBYTES)


def test_without_torchao_or_on_an_old_gpu_bitsandbytes_stays(monkeypatch):
    monkeypatch.delenv("GLMTUI_QUANT_BACKEND", raising=False)
    missing = choose("int8", "cuda", torchao=None, capability=(9, 0))
    assert missing.backend == BITSANDBYTES and "not installed" in missing.reason
    old = choose("int4", "cuda", torchao="0.18.0", capability=(7, 5))
    assert old.backend == BITSANDBYTES and "sm_75" in old.reason
    assert choose("int8", "cuda", torchao="0.18.0", capability=(7, 5)).backend == TORCHAO


def test_the_environment_overrides_the_choice(monkeypatch):
    monkeypatch.setenv("GLMTUI_QUANT_BACKEND", "bitsandbytes")
    assert choose("int4", "cuda", torchao="0.18.0", capability=(9, 0)).backend == BITSANDBYTES
    monkeypatch.setenv("GLMTUI_QUANT_BACKEND", "torchao")
    assert choose("int4", "cuda", torchao="0.18.0", capability=(7, 5)).backend == TORCHAO


def test_bitsandbytes_configs():
    import torch

    choice = choose("int4", "cpu", torchao=None, capability=None, override="")
    four = quantization_config(choice, "int4", torch.bfloat16, ["lm_head"])
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.llm_int8_skip_modules == ["lm_head"]
    assert quantization_config(choice, "int8", torch.float16).load_in_8bit


def test_torchao_int8_weight_only_loads_and_generates_on_the_cpu(native_glm):
    """The config the GPU path uses, on the CPU (where torchao's int8 weight-only runs too)."""
    pytest.importorskip("torchao")
    import torch
    from transformers import AutoModelForCausalLM

    from glmtui.engine.memory import measured_footprint_bytes
    from glmtui.engine.quant_backends import Choice

    config = quantization_config(Choice(TORCHAO, ""), "int8", torch.bfloat16)
    plain = AutoModelForCausalLM.from_pretrained(str(native_glm), dtype=torch.bfloat16)
    quant = AutoModelForCausalLM.from_pretrained(str(native_glm), dtype=torch.bfloat16, quantization_config=config,
                                                 device_map="cpu")
    assert measured_footprint_bytes(quant) < measured_footprint_bytes(plain)
    ids = torch.tensor([[5, 6, 7, 8]])
    out = quant.generate(ids, max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(ids))
    assert out.shape[1] == 8


def test_a_quantized_load_names_the_library_that_quantized_it(chatglm3_dir):
    """The UI says which backend a mode uses: the load's notes and LoadedModel.quant_backend carry the choice."""
    from glmtui.engine.loading import load_model

    loaded = load_model(chatglm3_dir, "int8", "cpu")
    assert loaded.quant_backend == "bitsandbytes"
    assert any(note.startswith("bitsandbytes: torchao's fast kernels are CUDA kernels") for note in loaded.notes)
    assert load_model(chatglm3_dir, "fp32", "cpu").quant_backend is None
