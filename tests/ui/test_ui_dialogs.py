"""The load dialog (Ctrl+L: the engine choice where vLLM can run, the fit check) and the settings
dialog's thinking switch (Ctrl+O), on tiny real models and the real worker.

vLLM: the opt-in peer venv (.cache/peer/venv, `bash dev.sh bench peer`) where it exists; a real
interpreter without vLLM for the case where it is not offered (no fake vLLM)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from textual.widgets import RadioButton, Static

from glmtui.config import default_paths
from glmtui.engine.choose import SwitchingEngine
from glmtui.monitor import History, HostSnapshot, MonitorSnapshot
from glmtui.ui.app import GlmApp
from glmtui.ui.modals import LoadModal, SettingsModal
from helpers import GREEDY, FrozenSampler, host_only_snapshot, send, wait_for

PEER_PYTHON = Path(__file__).resolve().parents[2] / ".cache" / "peer" / "venv" / "bin" / "python"
GiB = 2**30


pytestmark = pytest.mark.usefixtures("in_process_engine")  # the model in a thread (conftest)


def vllm_python_in_config(python: str) -> None:
    config = default_paths().config_file
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[vllm]\npython = "{python}"\n')


def ram_snapshot(available: int) -> MonitorSnapshot:
    base = host_only_snapshot()
    host = HostSnapshot(ram_total=32 * GiB, ram_used=32 * GiB - available, ram_available=available,
                        process_rss=512 * 2**20, cpu_percent=12.0, process_cpu_percent=3.0)
    return MonitorSnapshot(timestamp=0.0, nvml_state="no_gpu", message=base.message, driver_version=None,
                           gpus=(), host=host, torch=None, history=History(timestamps=(0.0,)))


# ---------------------------------------------------------------- load dialog: the engine


async def test_vllm_is_not_offered_where_it_cannot_run(quiet_sampler, isolated_home):
    vllm_python_in_config(sys.executable)  # a real interpreter, without vLLM
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        assert isinstance(app.engine, SwitchingEngine) and app.engine.wanted == "transformers"
        await pilot.press("ctrl+l")
        dialog = app.screen
        assert isinstance(dialog, LoadModal)
        await wait_for(pilot, lambda: dialog.engine_note, what="the vLLM check")
        assert "vLLM is not installed" in dialog.engine_note
        assert not dialog.query_one("#engine-row").display and dialog.chosen_engine() is None


@pytest.mark.slow  # starts vLLM's server
@pytest.mark.skipif(not PEER_PYTHON.exists(), reason="the peer venv with vLLM is not installed (dev.sh bench peer)")
async def test_choosing_vllm_loads_through_the_managed_server(native_glm, quiet_sampler, isolated_home):
    """The dialog offers vLLM where [vllm] python has it; choosing it starts vLLM's server for the
    model, as `glmtui --engine vllm` does (the test stops once the server process runs)."""
    from glmtui.engine.managed import ManagedServer

    vllm_python_in_config(str(PEER_PYTHON))
    app = GlmApp(mode="bf16", device="cpu", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+l")
        dialog = app.screen
        await wait_for(pilot, lambda: dialog.query_one("#engine-row").display, timeout=60, what="vLLM offered")
        assert dialog.query_one("#engine-transformers", RadioButton).value  # the current engine is chosen
        dialog.query_one("#engine-vllm", RadioButton).value = True
        dialog.query_one("#spec").value = str(native_glm)
        dialog.query_one("#spec").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is not dialog, what="the dialog to close")
        assert app.engine.kind == "vllm" and isinstance(app.engine.current, ManagedServer)
        await wait_for(pilot, lambda: app.engine.current.server_pids(), timeout=60, what="vLLM's server process")
        plan = app.engine.current._plan  # private: what it was started with
        assert plan is not None and plan.argv[0] == str(PEER_PYTHON) and str(native_glm) in plan.argv
        assert app.model.load_stage is not None  # loading: its health is being awaited


# ---------------------------------------------------------------- load dialog: the fit check


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
async def test_a_load_that_would_not_fit_is_refused_until_confirmed(native_glm, isolated_home):
    app = GlmApp(mode="fp32", default_params=GREEDY, sampler=FrozenSampler(ram_snapshot(1024)))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.monitor_pane.snapshot is not None, what="the monitor")
        await pilot.press("ctrl+l")
        dialog = app.screen
        dialog.query_one("#spec").value = str(native_glm)
        dialog.query_one("#device").value = "cpu"
        dialog.query_one("#spec").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is dialog and app.model.load_stage is None and app.loaded is None
        refusal = str(dialog.query_one("#load-error", Static).content)
        assert f"{native_glm.name} in fp32 would not fit: needs" in refusal
        assert "only 1.0 KiB available RAM" in refusal and "Enter again loads it anyway" in refusal
        await pilot.press("enter")  # the same load again: confirmed
        await wait_for(pilot, lambda: app.loaded is not None, timeout=120, what="the confirmed load")
        assert app.loaded.mode == "fp32"


@pytest.mark.slow  # a model load; the refusal test above loads through the dialog too
async def test_a_load_that_fits_goes_at_once(native_glm, isolated_home):
    app = GlmApp(mode="fp32", default_params=GREEDY, sampler=FrozenSampler(ram_snapshot(64 * GiB)))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.monitor_pane.snapshot is not None, what="the monitor")
        await pilot.press("ctrl+l")
        dialog = app.screen
        dialog.query_one("#spec").value = str(native_glm)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.loaded is not None, timeout=120, what="the load")


# ---------------------------------------------------------------- settings dialog: thinking


@pytest.mark.slow  # a model load and two replies
async def test_thinking_off_for_a_conversation(inside_dir, quiet_sampler, isolated_home):
    """The tiny GLM-Z1's prompt opens <think>: its replies start as reasoning; thinking off in Ctrl+O
    closes the block in the prompt, the reply has none, and the choice is kept with the conversation."""
    app = GlmApp(model=str(inside_dir), mode="fp32", default_params={"temperature": 0.0, "max_new_tokens": 12},
                 sampler=quiet_sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, timeout=120, what="load")
        chat = app.chat_pane
        first = await send(pilot, app, "hello")
        assert first.reasoning  # the template's default: thinking

        await pilot.press("ctrl+o")
        dialog = app.screen
        assert isinstance(dialog, SettingsModal)
        select = dialog.query_one("#param-thinking")
        assert select.value == "default"
        select.value = "off"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, SettingsModal), what="the dialog to close")
        assert chat.generation_params().thinking is False

        second = await send(pilot, app, "hello")
        assert second.reasoning == "" and second.text.strip()
        cid = chat.conversation_id
        await wait_for(pilot, lambda: app.store.get_conversation(cid).params.get("thinking") is False,
                       what="the choice stored")
        assert await chat.show_conversation(None) and await chat.show_conversation(cid)
        assert chat.generation_params().thinking is False  # reopened: still off

        await pilot.press("ctrl+o")
        assert app.screen.query_one("#param-thinking").value == "off"


@pytest.mark.slow  # a model load
async def test_no_thinking_choice_for_a_template_without_the_switch(native_glm, quiet_sampler, isolated_home):
    app = GlmApp(model=str(native_glm), mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, timeout=120, what="load")
        await pilot.press("ctrl+o")
        assert isinstance(app.screen, SettingsModal)
        assert not app.screen.query("#param-thinking")
