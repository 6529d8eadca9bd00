"""After an unload the Models pane says whether memory came back, or how much stayed behind and why."""

from __future__ import annotations

import time

import pytest

import tiny_models
from glmtui.monitor import Sampler
from glmtui.ui.app import GlmApp
from glmtui.ui.unload_note import UNLOAD_MARGIN, unload_memory_note

MiB = 2**20


def test_note_when_memory_came_back():
    note = unload_memory_note("RAM", 400 * MiB, 410 * MiB)
    assert note.startswith("RAM back to within 64")


def test_note_names_the_cuda_context_when_gpu_memory_stays():
    note = unload_memory_note("GPU", 0, 520 * MiB, torch_reserved=68 * MiB)
    assert "520" in note and "stayed behind" in note and "CUDA context" in note and "68" in note


def test_no_note_without_a_figure():
    assert unload_memory_note("GPU", None, 5) is None


@pytest.fixture(scope="module")
def sizeable_model(tmp_path_factory):
    # ~360 MiB in fp32 on disk, ~180 MiB once converted to bf16: resident memory visibly moves
    return tiny_models.build_native_glm(tmp_path_factory.mktemp("sizeable") / "glm-1024", hidden=1024, layers=8,
                                        heads=16, kv_heads=2, head_dim=64, ffn=3072)


@pytest.mark.slow
async def test_load_unload_cycle_shows_memory_moving(sizeable_model):
    sampler = Sampler(interval=0.25)
    app = GlmApp(mode="fp32", sampler=sampler)
    async with app.run_test(size=(160, 48)) as pilot:
        async def until(condition, what, timeout=120.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                await pilot.pause(0.1)
                if condition():
                    return
            raise AssertionError(f"timed out: {what}")

        await until(lambda: app.monitor_pane.snapshot is not None, "a first sample")
        rss_before = app.monitor_pane.snapshot.host.process_rss
        app.request_load(str(sizeable_model), "bf16")  # converted from the fp32 file: really allocated
        await until(lambda: app.loaded is not None, "the load")
        await until(lambda: app.monitor_pane.snapshot.host.process_rss - rss_before > 120 * MiB,
                    "resident memory to rise with the model")
        app.request_load(str(sizeable_model), "int4")  # a quantization switch: a fresh engine process
        await until(lambda: app.loaded is not None and app.loaded.mode == "int4", "the switch")
        app.action_unload() if hasattr(app, "action_unload") else app.engine.unload()
        await until(lambda: app.loaded is None, "the unload")
        await until(lambda: app.model.unloaded_note and ("back to within" in app.model.unloaded_note
                                                   or "stayed behind" in app.model.unloaded_note),
                    "the memory note")
        note = app.model.unloaded_note
        # the model ran in engine processes (the default), all ended: glmtui's memory (the TUI and its engine
        # processes) is back to its figure before the load, within issue 13's 16 MiB (an in-process model left
        # ~400 MiB behind)
        assert note.startswith("RAM back to within"), note
        rss_after = app.monitor_pane.snapshot.host.process_rss
        assert rss_after - rss_before <= min(UNLOAD_MARGIN, 16 * MiB), (rss_before, rss_after)
