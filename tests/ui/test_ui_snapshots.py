"""Snapshot tests of the TUI at 80x24, 160x48 and 200x50 (pytest-textual-snapshot).

Deterministic by construction: the monitor gets a frozen sampler (fixed GPU
and host numbers, fixed history), the mode is given, the history is seeded
with fixed text and stats, and no model or clock appears on screen.
Update with ``pytest tests/ui/test_ui_snapshots.py --snapshot-update`` and look
at the SVGs in tests/ui/__snapshots__/ before committing them.
"""

from __future__ import annotations

import pytest

from glmtui.config import default_paths
from glmtui.monitor import (
    GpuHistory,
    GpuProcess,
    GpuSnapshot,
    History,
    HostSnapshot,
    MonitorSnapshot,
    TorchDeviceMemory,
)
from glmtui.store import HistoryStore
from glmtui.ui.app import GlmApp
from helpers import FrozenSampler, wait_for

GiB = 2**30
MiB = 2**20

ANSWER = """## 量化（quantization）

量化把模型权重从 16 位浮点数压缩成 8 位或 4 位整数，显存占用大约减半或减到四分之一，而回答质量通常只下降一点点。

- **int8**：LLM.int8，几乎无损
- **int4**：NF4，更省显存

```python
glmtui --model chatglm3-6b --mode int4
```
"""


def host_snapshot() -> MonitorSnapshot:
    ram = tuple(int((8 + (i % 7) * 0.5) * GiB) for i in range(40))
    rss = tuple(int((300 + i * 10) * MiB) for i in range(40))
    return MonitorSnapshot(
        timestamp=0.0,
        nvml_state="no_gpu",
        message="no NVIDIA GPU (driver not loaded): host view only",
        driver_version=None,
        gpus=(),
        host=HostSnapshot(ram_total=32 * GiB, ram_used=ram[-1], ram_available=20 * GiB, process_rss=rss[-1],
                          cpu_percent=14.0, process_cpu_percent=7.0),
        torch=None,
        history=History(timestamps=tuple(float(i) for i in range(40)), ram_used=ram, process_rss=rss),
    )


def gpu_snapshot() -> MonitorSnapshot:
    mem = tuple(int((2 + min(i, 20) * 0.6) * GiB) for i in range(40))
    util = tuple((i * 17) % 100 for i in range(40))
    gpu = GpuSnapshot(
        index=0, state="ok", name="NVIDIA H100 80GB HBM3", memory_used=mem[-1], memory_total=80 * GiB,
        memory_free=80 * GiB - mem[-1], memory_reserved=512 * MiB, memory_api="v2", utilization_gpu=util[-1],
        utilization_memory=30, temperature_c=54, power_w=187.0, power_limit_w=700.0,
        processes=(GpuProcess(4242, 13 * GiB, "compute", "python3", True),
                   GpuProcess(777, 600 * MiB, "compute", "Xorg", False)),
    )
    lost = GpuSnapshot(index=1, state="lost", errors=("GPU is lost",))
    return MonitorSnapshot(
        timestamp=0.0, nvml_state="ok", message=None, driver_version="550.54.15", gpus=(gpu, lost),
        host=HostSnapshot(ram_total=256 * GiB, ram_used=40 * GiB, ram_available=210 * GiB, process_rss=2 * GiB,
                          cpu_percent=9.0, process_cpu_percent=4.0),
        torch=(TorchDeviceMemory(device=0, allocated=12 * GiB, reserved=13 * GiB),),
        history=History(timestamps=tuple(float(i) for i in range(40)), ram_used=(40 * GiB,) * 40,
                        process_rss=(2 * GiB,) * 40,
                        gpus=(GpuHistory(0, mem, util), GpuHistory(1, (None,) * 40, (None,) * 40))),
    )


@pytest.fixture
def seeded_history(isolated_home):
    store = HistoryStore.open(default_paths().history_db)
    cid = store.create_conversation("量化是什么？", "chatglm3-6b", "", {"temperature": 0.8, "max_new_tokens": 512})
    store.add_message(cid, "user", "用中文解释一下量化（quantization），并给一个命令行例子。")
    store.add_message(cid, "assistant", ANSWER, "complete",
                      {"prompt_tokens": 31, "completion_tokens": 118, "ttft": 0.21, "tokens_per_s": 38.5,
                       "finish_reason": "stop"})
    store.add_message(cid, "user", "And int4 on a 12 GB card?")
    store.add_message(cid, "assistant", "Yes: int4 needs about 5.5 GB, so it fits with room for", "stopped",
                      {"prompt_tokens": 160, "completion_tokens": 14, "ttft": 0.18, "tokens_per_s": 40.2,
                       "finish_reason": "cancelled"})
    store.close()
    return cid


def make_app(snapshot: MonitorSnapshot) -> GlmApp:
    return GlmApp(mode="fp32", sampler=FrozenSampler(snapshot))


def steady(run_before):
    """Run the scene, then stop every cursor blinking (a blink phase would make the SVG flaky)."""

    async def run(pilot) -> None:
        await run_before(pilot)
        for screen in pilot.app.screen_stack:
            for widget in screen.query("Input, TextArea"):
                widget.cursor_blink = False
        await pilot.pause()

    return run


async def settle(pilot) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.monitor_pane.snapshot is not None, 10, "the first monitor sample")
    await pilot.pause()
    app.chat_pane.messages_view.scroll_end(animate=False)
    await pilot.pause()


async def open_first_conversation(pilot) -> None:
    app = pilot.app
    app.current_pane = "history"  # what F2 does (at 80 columns the list is on its own pane)
    await pilot.pause()
    # the list is read off the UI thread once the store is open: wait for its rows before choosing one
    await wait_for(pilot, lambda: app.history_pane.option_list.option_count > 0, 10, "the history list")
    app.history_pane.option_list.focus()
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.chat_pane.turns, 10, "the conversation's messages")
    await settle(pilot)


@pytest.mark.slow
def test_chat_80x24(snap_compare, seeded_history):
    assert snap_compare(make_app(host_snapshot()), terminal_size=(80, 24), run_before=steady(open_first_conversation))


def test_empty_80x24(snap_compare):
    assert snap_compare(make_app(host_snapshot()), terminal_size=(80, 24), run_before=steady(settle))


def test_monitor_no_gpu_80x24(snap_compare):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f2", "f2", "f2")
        await pilot.pause()

    assert snap_compare(make_app(host_snapshot()), terminal_size=(80, 24), run_before=steady(run_before))


def test_models_80x24(snap_compare):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f2", "f2")
        await pilot.pause()

    assert snap_compare(make_app(host_snapshot()), terminal_size=(80, 24), run_before=steady(run_before))


@pytest.mark.slow
def test_medium_160x48_with_gpu(snap_compare, seeded_history):
    """From 140 columns: the chat and one side column, here the monitor (F2 chose it last)."""
    async def run_before(pilot):
        await open_first_conversation(pilot)
        await pilot.press("f2", "f2", "f2")  # history -> models -> monitor -> chat
        await settle(pilot)

    assert snap_compare(make_app(gpu_snapshot()), terminal_size=(160, 48), run_before=steady(run_before))


@pytest.mark.slow
def test_wide_200x50_with_gpu(snap_compare, seeded_history):
    """From 200 columns: history | chat | monitor + models."""
    async def run_before(pilot):
        await open_first_conversation(pilot)
        pilot.app.chat_pane.input.focus()
        await pilot.pause()

    assert snap_compare(make_app(gpu_snapshot()), terminal_size=(200, 50), run_before=steady(run_before))


@pytest.mark.slow
def test_delete_confirmation_80x24(snap_compare, seeded_history):
    async def run_before(pilot):
        await open_first_conversation(pilot)
        await pilot.press("f4")
        await pilot.pause()

    assert snap_compare(make_app(host_snapshot()), terminal_size=(80, 24), run_before=steady(run_before))
