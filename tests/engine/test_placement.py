"""Placement: where a model's layers went (GPU n / CPU / disk) and the balanced max_memory for
``--device auto`` over several GPUs, checked with fake GPU capacities through accelerate's own
device-map planner on a meta-device model."""

from __future__ import annotations

import pytest

from glmtui.engine.placement import Placement, balanced_max_memory, placement_from_map, placement_of

GiB = 2**30
MiB = 2**20


def _meta_glm(layers: int = 12):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, GlmConfig

    cfg = GlmConfig(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64, pad_token_id=0)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return model, sum(p.numel() * 2 for p in model.parameters()), 1000 * 256 * 2


def _plan(model, max_memory):
    from accelerate.utils import infer_auto_device_map

    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=model._no_split_modules)


def test_balanced_max_memory_spreads_layers_by_free_memory():
    model, weights, largest = _meta_glm()
    largest = max(largest, weights // 12)
    reserve = 700 * MiB
    # GPU 0 has twice GPU 1's free memory (beyond its reserve), together 1.5x the weights
    free = [reserve + weights, reserve + weights // 2]
    mm = balanced_max_memory(free, weights, per_gpu_reserve=reserve, cpu_bytes=8 * GiB, largest_module_bytes=largest)
    usable = [int(weights / 1.1), int(weights / 2 / 1.1)]
    assert mm[0] <= usable[0] and mm[1] <= usable[1] and mm["cpu"] == 8 * GiB
    assert mm[0] + mm[1] >= weights
    placed = placement_from_map(_plan(model, mm), 12)
    assert not placed.offloaded, placed.summary()
    on0, on1 = placed.layers_on("cuda:0"), placed.layers_on("cuda:1")
    assert on0 + on1 == 12 and on0 > on1 >= 3  # about 2:1, as their free memory
    # the default (every GPU's whole free memory) would fill GPU 0 first and leave GPU 1 almost idle
    greedy = placement_from_map(_plan(model, {0: free[0] - reserve, 1: free[1] - reserve, "cpu": 8 * GiB}), 12)
    assert greedy.layers_on("cuda:0") > on0


def test_balanced_max_memory_when_the_gpus_are_too_small():
    model, weights, largest = _meta_glm()
    reserve = 700 * MiB
    free = [reserve + weights // 3, reserve + weights // 4, reserve // 2]  # GPU 2: less than its reserve
    mm = balanced_max_memory(free, weights, per_gpu_reserve=reserve, cpu_bytes=8 * GiB, largest_module_bytes=largest)
    assert mm[2] == 0
    assert mm[0] == int((weights // 3) / 1.1) and mm[1] == int((weights // 4) / 1.1)  # filled to usable
    placed = placement_from_map(_plan(model, mm), 12)
    assert placed.offloaded == ("cpu",) and placed.layers_on("cpu") >= 5
    assert "OFFLOADED" in placed.summary() and "on cpu" in placed.summary()
    # no room for offload (quantized modes): no "cpu" entry at all
    assert "cpu" not in balanced_max_memory(free, weights, per_gpu_reserve=reserve)


def test_placement_from_device_maps():
    p = placement_from_map({"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 0, "model.layers.2": 1,
                            "model.layers.3": "cpu", "model.layers.4": "disk", "model.norm": "cpu", "lm_head": "cpu"})
    assert p.runs == (("cuda:0", 0, 1), ("cuda:1", 2, 2), ("cpu", 3, 3), ("disk", 4, 4))
    assert p.offloaded == ("cpu", "disk")
    assert p.summary().startswith("layers 0-1 on cuda:0, 2 on cuda:1, 3 on cpu, 4 on disk — OFFLOADED: 2 of 5")
    whole = placement_from_map({"": 0}, layer_count=40)
    assert whole.summary() == "all 40 layers on cuda:0" and not whole.offloaded
    assert placement_from_map({"": "cpu"}, 4).offloaded == ()  # CPU only is not offload
    assert Placement(()).summary() == "placement unknown"


def test_placement_of_a_loaded_model(native_glm):
    pytest.importorskip("torch")
    from glmtui.engine.loading import load_model

    loaded = load_model(native_glm, "fp32", "cpu")
    assert loaded.placement.summary() == "all 2 layers on cpu"
    assert dict(loaded.placement.bytes_per_device)["cpu"] == loaded.footprint_bytes
    assert not any("OFFLOADED" in n for n in loaded.notes)
    # a dispatched model: its hf_device_map wins over the parameters' devices
    loaded.model.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu",
                                  "lm_head": "cpu"}
    p = placement_of(loaded.model)
    assert p.runs == (("cuda:0", 0, 0), ("cpu", 1, 1)) and p.offloaded == ("cpu",)
