"""The TUI driven by Textual's Pilot on tiny real models, with the real worker and a real history file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from glmtui.config import default_paths
from glmtui.monitor import GpuHistory, GpuProcess, GpuSnapshot, History, HostSnapshot, MonitorSnapshot
from glmtui.store import HistoryStore
from glmtui.ui import prefs
from glmtui.ui.app import GlmApp
from glmtui.ui.chat_text import visible
from glmtui.ui.modals import ConfirmModal, ModeModal, SettingsModal, TextModal
from glmtui.ui.monitor import fmt_bytes, render_snapshot, sparkline
from glmtui.ui.store_calls import store_calls
from helpers import (
    GREEDY,
    GiB,
    host_only_snapshot,
    notifications,
    palette_first,
    screen_text,
    send,
    stored,
    type_text,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("in_process_engine")  # the model in a thread (conftest)


# ---------------------------------------------------------------- a whole session


@pytest.mark.slow
async def test_whole_session_on_a_tiny_model(chatty_chatglm3, quiet_sampler, isolated_home):
    # A model that never stops early: the "long reply" below really is long (it streams for seconds).
    chatglm3_dir = chatty_chatglm3
    app = GlmApp(model=str(chatglm3_dir), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        assert app.loaded.mode == "fp32"
        assert chatglm3_dir.name in screen_text(app)
        chat = app.chat_pane

        # settings modal: system prompt and parameters for this conversation
        await pilot.press("ctrl+o")
        assert isinstance(app.screen, SettingsModal)
        app.screen.query_one("#system-prompt").load_text("You are terse.")
        tokens = app.screen.query_one("#param-max_new_tokens")
        tokens.value = "20"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert not isinstance(app.screen, SettingsModal)
        assert chat.system_prompt == "You are terse." and chat.params["max_new_tokens"] == 20

        # two turns, streamed
        first = await send(pilot, app, "hello there")
        assert first.status == "complete" and first.text
        assert first.stats["completion_tokens"] == 20 and first.stats["tokens_per_s"] > 0
        assert "20 tokens" in str(first.query_one(".msg-meta").render())
        second = await send(pilot, app, "你好世界")
        assert second.status == "complete"
        cid = chat.conversation_id
        conv, msgs = stored(cid, app)
        assert conv.system_prompt == "You are terse." and conv.params["max_new_tokens"] == 20
        assert [(m.role, m.status) for m in msgs] == [("user", "complete"), ("assistant", "complete")] * 2
        assert msgs[1].content == first.text and msgs[3].content == second.text
        assert msgs[3].stats["completion_tokens"] == 20

        # a long reply: flushed to the store while streaming, then stopped with Esc
        chat.apply_settings("You are terse.", {"max_new_tokens": 2000})
        chat.input.focus()
        await type_text(pilot, "tell me a long story")
        await pilot.press("enter")
        await wait_for(pilot, lambda: chat.active is not None and chat.active.text, what="first token")
        mid = chat.active.message_id
        await wait_for(pilot, lambda: (stored(cid, app)[1][-1].content != ""), timeout=10, what="a streaming flush")
        flushed = stored(cid, app)[1][-1]
        assert flushed.id == mid and flushed.status == "streaming"
        await pilot.press("escape")
        await wait_for(pilot, lambda: chat.active is None, what="stop")
        stopped = chat.turns[-1].widget
        assert stopped.status == "stopped" and stopped.text
        assert "stopped" in str(stopped.query_one(".msg-head").render())
        last = stored(cid, app)[1][-1]
        assert last.status == "stopped" and last.content == stopped.text
        assert last.stats["finish_reason"] == "cancelled"

        # regenerate the stopped reply
        chat.apply_settings("You are terse.", {"max_new_tokens": 20})
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: chat.active is None and chat.turns[-1].status != "streaming", what="regenerate")
        assert len(chat.turns) == 6 and chat.turns[-1].status == "complete"
        msgs = stored(cid, app)[1]
        assert len(msgs) == 6 and msgs[-1].status == "complete" and msgs[-1].stats["finish_reason"] == "length"

        # edit and resend the last prompt: the exchange stays until the edited prompt is sent
        await pilot.press("ctrl+e")
        assert chat.input.text == "tell me a long story" and len(chat.turns) == 6
        assert len(stored(cid, app)[1]) == 6
        chat.input.clear()
        await type_text(pilot, "a short story")
        await pilot.press("enter")
        await wait_for(pilot, lambda: chat.active is None and chat.turns[-1].status == "complete", what="resend")
        msgs = stored(cid, app)[1]
        assert [m.content for m in msgs if m.role == "user"] == ["hello there", "你好世界", "a short story"]

        # a second conversation
        await pilot.press("ctrl+n")
        assert chat.conversation_id is None and not chat.turns
        await send(pilot, app, "weather 天气 today")
        other = chat.conversation_id
        assert other != cid

        # search finds the first conversation; Enter opens it
        await pilot.press("ctrl+f")
        assert app.focused.id == "search"
        await type_text(pilot, "short story")
        await pilot.press("enter")
        history = app.history_pane
        await wait_for(pilot, lambda: app.focused is history.option_list, what="the search results")
        assert history.option_list.option_count >= 1
        assert app.focused is history.option_list
        await pilot.press("enter")
        await wait_for(pilot, lambda: chat.conversation_id == cid, what="open from search")
        assert [t.role for t in chat.turns] == ["user", "assistant"] * 3

        # rename the open conversation
        await pilot.press("f3")
        assert isinstance(app.screen, TextModal)
        app.screen.query_one("#value").value = ""
        await type_text(pilot, "Renamed chat")
        await pilot.press("enter")
        await wait_for(pilot, lambda: chat.title == "Renamed chat", what="the rename (saved off the UI thread)")
        assert stored(cid, app)[0].title == "Renamed chat"

        # export: Markdown and JSON in the data folder, paths told to the user
        await pilot.press("f5")
        exports = default_paths().data_dir / "exports"
        md, js = exports / f"renamed-chat-{cid}.md", exports / f"renamed-chat-{cid}.json"
        await wait_for(pilot, lambda: any(str(md) in n and str(js) in n for n in notifications(app)), what="export")
        assert md.read_text(encoding="utf-8").startswith("# Renamed chat")
        data = json.loads(js.read_text(encoding="utf-8"))
        assert data["title"] == "Renamed chat" and len(data["messages"]) == 6
        first = md.read_bytes()
        await pilot.press("f5")  # a second export never replaces the first
        md2, js2 = exports / f"renamed-chat-{cid}-2.md", exports / f"renamed-chat-{cid}-2.json"
        await wait_for(pilot, lambda: any(str(md2) in n and str(js2) in n for n in notifications(app)), what="export")
        assert md.read_bytes() == first and md2.read_bytes() == first and js2.exists()

        # delete the other conversation from the history list, after confirming
        await pilot.press("ctrl+f")
        app.history_pane.search_input.value = ""
        listed = app.history_pane.option_list
        await wait_for(pilot, lambda: any(listed.get_option_at_index(i).id == f"conv:{other}"
                                          for i in range(listed.option_count)), 10, "the whole history list back")
        await store_calls(app).settled()
        app.history_pane.option_list.focus()
        options = app.history_pane.option_list
        ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
        app.history_pane.option_list.highlighted = ids.index(f"conv:{other}")
        await pilot.press("f4")
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("n")
        assert stored(other, app)[0] is not None
        await pilot.press("f4")
        await pilot.press("y")
        await wait_for(pilot, lambda: stored(other, app)[0] is None, what="the delete (off the UI thread)")
        assert stored(cid, app)[0] is not None
        await store_calls(app).settled()
        assert app.history_pane.option_list.option_count == 1

    # restart on the same GLMTUI_HOME: the conversation is there and continues
    app2 = GlmApp(model=str(chatglm3_dir), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app2.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app2.loaded is not None, what="model load after restart")
        history = app2.history_pane
        assert history.option_list.option_count == 1
        history.option_list.focus()
        await pilot.press("enter")
        chat = app2.chat_pane
        # the turns are mounted after the conversation is set (its messages come off the UI thread)
        await wait_for(pilot, lambda: chat.conversation_id == cid and len(chat.turns) == 6, what="reopen, 6 turns")
        assert chat.title == "Renamed chat" and chat.system_prompt == "You are terse."
        await send(pilot, app2, "and then?")
        msgs = stored(cid, app2)[1]
        assert len(msgs) == 8 and msgs[-2].content == "and then?" and msgs[-1].status == "complete"


# ---------------------------------------------------------------- errors


@pytest.mark.slow
async def test_loading_a_missing_folder_shows_a_message(tmp_path, quiet_sampler):
    missing = tmp_path / "no-such-model"
    app = GlmApp(model=str(missing), mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: any("not found" in n for n in notifications(app)), what="load error")
        assert app.loaded is None
        assert "Traceback" not in "".join(notifications(app))
        assert "not found" in (app.model.last_error or "")
        # still alive and usable
        await pilot.press("ctrl+n")
        await pilot.press("f2")
        assert app.current_pane == "history"
        await type_text(pilot, "x")
        assert app.is_running


async def test_unknown_model_and_sending_without_a_model(quiet_sampler):
    app = GlmApp(model="no-such-catalogue-key", mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: any("unknown model" in n for n in notifications(app)), what="resolve error")
        app.chat_pane.input.focus()
        await type_text(pilot, "hi")
        await pilot.press("enter")
        await pilot.pause()
        assert any("No model loaded" in n for n in notifications(app))
        assert app.chat_pane.input.text == "hi" and not app.chat_pane.turns


async def test_corrupt_history_is_set_aside_and_reported(isolated_home, quiet_sampler):
    db = default_paths().history_db
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database" * 100)
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await store_calls(app).settled()  # the store opens on a thread: what it found is told once it is open
        await pilot.pause()  # the notifications posted
        assert any("corrupt" in n.lower() or "not an sqlite" in n.lower() for n in notifications(app))
        assert not app.store.in_memory
        assert app.is_running
    kept = [p for p in db.parent.iterdir() if p.name.startswith("history.sqlite3.corrupt-")]
    assert kept and kept[0].read_bytes() == b"this is not a database" * 100


def _block_the_data_folder() -> None:
    """A file where the data folder should be: no history file can be opened, chats stay in memory."""
    data_dir = default_paths().data_dir
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.write_text("a file where the data folder should be")


async def test_unusable_history_falls_back_to_memory(isolated_home, quiet_sampler):
    _block_the_data_folder()
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await store_calls(app).settled()  # the store opens on a thread: what it found is told once it is open
        await pilot.pause()  # the notifications posted, the status line repainted
        assert app.store.in_memory
        assert any("memory" in n for n in notifications(app))
        assert "history in memory only" in screen_text(app)


# ---------------------------------------------------------------- models


@pytest.mark.slow
async def test_unload_and_switch_quantization(native_glm, quiet_sampler):
    pytest.importorskip("bitsandbytes")
    app = GlmApp(model=str(native_glm), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(200, 50)) as pilot:  # wide: the Models pane shows beside the chat
        await wait_for(pilot, lambda: app.loaded is not None, what="load")
        fp32_bytes = app.loaded.footprint_bytes
        await pilot.press("f8")
        assert isinstance(app.screen, ModeModal)
        options = app.screen.query_one("#modes")
        options.highlighted = [options.get_option_at_index(i).id for i in range(options.option_count)].index("int8")
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.loaded is not None and app.loaded.mode == "int8", what="int8 reload")
        assert app.loaded.footprint_bytes < fp32_bytes
        reply = await send(pilot, app, "hi")
        assert reply.status == "complete"
        await pilot.press("f9")
        await wait_for(pilot, lambda: app.loaded is None, what="unload")
        assert "No model loaded" in screen_text(app)
    assert prefs.load_prefs(default_paths().config_file)[0]["mode"] == "int8"


@pytest.mark.slow
async def test_load_modal_loads_a_folder(native_glm, quiet_sampler, monkeypatch):
    from glmtui.ui.model_controller import ModelController

    stages = []
    original = ModelController.set_stage

    def record(self, stage, fraction=None):
        stages.append(stage)
        original(self, stage, fraction)

    monkeypatch.setattr(ModelController, "set_stage", record)
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+l")
        app.screen.query_one("#spec").value = str(native_glm)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.loaded is not None, what="load from modal")
        assert app.loaded.model_name == native_glm.name
        assert stages[0] == "queued" and len([st for st in stages if st]) >= 3  # the worker's stages were shown
        await pilot.press("f2", "f2")
        assert app.current_pane == "models"
        assert native_glm.name in screen_text(app)


# ---------------------------------------------------------------- layout, keys, themes


@pytest.mark.slow
async def test_narrow_layout_switches_panes(quiet_sampler):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.screen.has_class("-narrow")
        seen = []
        for _ in range(4):
            shown = app.current_pane if app.current_pane in ("chat", "history") else "side"
            seen.append((app.current_pane, app.query_one(f"#{shown}").display))
            await pilot.press("f2")
        assert [p for p, _ in seen] == ["chat", "history", "models", "monitor"] and all(d for _, d in seen)
        assert app.current_pane == "chat"
        assert not app.query_one("#history").display
        text = screen_text(app)
        assert "Send" in text and "Stop" in text  # the footer
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(200, 50)) as pilot:  # three columns from 200 (tests/ui/test_ui_layout.py)
        await pilot.pause()
        assert app.screen.has_class("-wide")
        assert all(app.query_one(f"#{p}").display for p in ("history", "chat", "side"))
        assert "Host RAM" in screen_text(app)


@pytest.mark.slow
async def test_command_palette_lists_every_action(quiet_sampler):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        titles = {c.title: c.help for c in app.get_system_commands(app.screen)}
        for title in ("Stop reply", "Regenerate", "Edit last prompt", "New chat", "Switch pane", "Search history",
                      "Rename conversation", "Delete conversation", "Export conversation", "Chat settings",
                      "Load model", "Unload model", "Change quantization", "Download model", "Theme", "Quit"):
            assert title in titles, title
        assert "^r" in titles["Regenerate"] or "ctrl+r" in titles["Regenerate"].lower()
        await pilot.press("ctrl+p")
        await pilot.pause()
        await type_text(pilot, "new chat")
        await wait_for(pilot, lambda: "new chat" in palette_first(app).lower(), 10, "the palette to list New chat")
        await pilot.press("enter")
        await pilot.pause()
        assert app.chat_pane.conversation_id is None


@pytest.mark.slow
async def test_themes_are_registered_and_remembered(isolated_home, quiet_sampler):
    user_themes = default_paths().config_dir / "themes"
    user_themes.mkdir(parents=True)
    (user_themes / "mine.toml").write_text('name = "my-own"\nprimary = "#ff00ff"\ndark = false\n')
    (user_themes / "broken.toml").write_text("primary = [not toml")
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert app.theme == "glm-ink"
        assert {"glm-ink", "glm-paper", "my-own", "textual-dark"} <= set(app.available_themes)
        assert any("broken.toml" in n for n in notifications(app))
        app.theme = "glm-paper"
        await pilot.pause()
    assert prefs.load_prefs(default_paths().config_file)[0]["theme"] == "glm-paper"
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert app.theme == "glm-paper"


def test_prefs_keep_other_tables(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = 8000\n\n[ui]\ntheme = "old"\nextra = 1\n\n[models]\ndir = "/x"\n')
    prefs.save_prefs(config, {"theme": "glm-paper", "mode": "int4"})
    import tomllib

    data = tomllib.loads(config.read_text())
    assert data["server"] == {"port": 8000} and data["models"] == {"dir": "/x"}
    assert data["ui"] == {"theme": "glm-paper", "extra": 1, "mode": "int4"}


def test_shipped_theme_files_are_valid():
    themes, problems = prefs.load_themes([prefs.PACKAGE_THEMES])
    assert not problems
    assert {t.name for t in themes} >= {"glm-ink", "glm-paper"}
    top_level = Path(__file__).resolve().parents[2] / "themes"
    assert {p.name for p in top_level.glob("*.toml")} == {p.name for p in prefs.PACKAGE_THEMES.glob("*.toml")}


# ---------------------------------------------------------------- monitor rendering


def _plain(snapshot, width=60) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, color_system=None, file=open(os.devnull, "w"))
    console.print(render_snapshot(snapshot, width))
    return console.export_text()


def test_monitor_renders_gpu_rows_with_na_lost_and_self_marker():
    me = os.getpid()
    gpu = GpuSnapshot(
        index=0, state="ok", name="NVIDIA H100 80GB HBM3", memory_used=20 * GiB, memory_total=80 * GiB,
        memory_free=60 * GiB, utilization_gpu=55, temperature_c=None, power_w=None,
        processes=(GpuProcess(me, 12 * GiB, "compute", "python", True),
                   GpuProcess(4242, 8 * GiB, "compute", "vllm", False)),
    )
    lost = GpuSnapshot(index=1, state="lost")
    snap = MonitorSnapshot(
        timestamp=0.0, nvml_state="ok", message=None, driver_version="550.1", gpus=(gpu, lost),
        host=HostSnapshot(ram_total=64 * GiB, ram_used=10 * GiB, ram_available=50 * GiB, process_rss=GiB),
        torch=None,
        history=History(timestamps=(0.0, 1.0), ram_used=(GiB, GiB), process_rss=(GiB, GiB),
                        gpus=(GpuHistory(0, (10 * GiB, 20 * GiB), (10, 55)),
                              GpuHistory(1, (None, None), (None, None)))),
    )
    text = _plain(snap)
    assert "GPU0 NVIDIA H100 80GB HBM3" in text and "20.0/80.0 GiB" in text and "util 55%" in text
    assert "n/a" in text  # temperature and power unsupported
    assert "GPU1" in text and "lost" in text
    assert f"▶ {me:>7}" in text and "← glmtui" in text and "vllm" in text
    assert "Host RAM 10.0/64.0 GiB" in text  # compact host line when there is a GPU


def test_monitor_without_gpu_shows_host_memory_prominently():
    text = _plain(host_only_snapshot())
    assert "no NVIDIA GPU" in text
    assert "used 12.0/32.0 GiB" in text and "glmtui RSS 512 MiB" in text
    assert fmt_bytes(None) == "n/a" and fmt_bytes(1536) == "1.5 KiB"
    assert sparkline([0, 50, 100], 3, 100) == "▁▅█" and sparkline([None], 2) == "  "


def test_control_characters_are_made_visible():
    assert visible("a\x1b[31mb\x07\tc\n") == "a␛[31mb␇\tc\n"
    assert visible("x\u202ey\u200bz\x9b") == "xyz\ufffd"


# ---------------------------------------------------------------- responsiveness


@pytest.mark.slow
def test_first_screen_is_painted_before_torch_is_imported(tmp_path):
    script = textwrap.dedent(
        """
        import asyncio, sys
        from glmtui.ui.app import GlmApp

        async def main():
            app = GlmApp(mode="fp32")
            async with app.run_test(size=(80, 24)) as pilot:
                await pilot.pause()
                painted = "Ask anything" in "".join(
                    seg.text for strip in app.screen._compositor.render_strips() for seg in strip)
                print("painted", painted, "torch", "torch" in sys.modules, "transformers" in sys.modules)

        asyncio.run(main())
        """
    )
    env = dict(os.environ, GLMTUI_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert "painted True torch False False" in out.stdout, out.stdout + out.stderr


# ---------------------------------------------------------------- downloads


@pytest.mark.slow  # a download, a resume and a load (tests/hub/test_hub.py downloads in the fast loop)
async def test_download_cancel_resume_and_load_from_the_models_pane(fake_hub, quiet_sampler):
    app = GlmApp(mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(160, 48)) as pilot:
        models = app.models_pane
        ol = models.option_list
        ol.focus()
        ol.highlighted = [ol.get_option_at_index(i).id for i in range(ol.option_count)].index("cat:glm-edge-1.5b-chat")
        await pilot.pause()
        assert "not downloaded" in screen_text(app)

        fake_hub.slow = (2048, 0.05)  # slow enough to cancel mid-way
        await pilot.press("d")
        await wait_for(pilot, lambda: any(j.progress and j.progress.bytes_done > 0 for j in app.model.jobs.values()),
                       what="download progress")
        assert app.query_one("#download-bar").display
        assert "downloading" in screen_text(app) or "running" in screen_text(app)
        await pilot.press("x")
        await wait_for(pilot, lambda: all(j.finished for j in app.model.jobs.values()), what="cancel")
        assert [j.state for j in app.model.jobs.values()] == ["cancelled"]

        fake_hub.slow = None
        await pilot.press("d")
        await wait_for(pilot, lambda: any(j.state == "done" for j in app.model.jobs.values()), what="download")
        await pilot.pause()
        row = models.highlighted_row()
        assert row.status.state == "complete" and row.status.verified
        assert any("downloaded to" in n for n in notifications(app))

        await pilot.press("enter")  # load it
        await wait_for(pilot, lambda: app.loaded is not None, what="load of the download")
        assert app.loaded.model_path == str(row.folder)
        reply = await send(pilot, app, "hi")
        assert reply.status == "complete"


@pytest.mark.slow
async def test_quitting_mid_reply_keeps_it_marked_stopped(chatglm3_dir, quiet_sampler):
    app = GlmApp(model=str(chatglm3_dir), mode="fp32", default_params={"temperature": 0.0, "max_new_tokens": 4000},
                 sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="load")
        chat = app.chat_pane
        assert await chat.send("tell me a long story")  # what Enter does, without waiting for the app to idle
        assert chat.active is not None
        cid = chat.conversation_id
        await pilot.press("ctrl+q")
    store = HistoryStore.open(default_paths().history_db)
    try:
        reply = store.messages(cid)[-1]
    finally:
        store.close()
    assert reply.role == "assistant" and reply.status == "stopped"


# ---------------------------------------------------------------- --endpoint


@pytest.mark.slow
async def test_endpoint_mode_chats_through_an_openai_server(native_glm, quiet_sampler):
    pytest.importorskip("fastapi")
    from engine_helpers import start_worker
    from glmtui.server import ServerThread, create_app

    worker, log = start_worker()
    assert log.wait(worker.load(str(native_glm), "fp32")).__class__.__name__ == "Loaded"
    server = ServerThread(create_app(worker, "tiny")).start()
    try:
        app = GlmApp(endpoint=server.url, default_params=GREEDY, sampler=quiet_sampler)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.loaded is not None, what="connect")
            assert app.loaded.mode == "remote"
            assert server.url in screen_text(app)
            reply = await send(pilot, app, "hello over http")
            assert reply.status == "complete" and reply.text
            assert reply.stats["completion_tokens"] > 0
            await pilot.press("f8")
            assert any("server" in n for n in notifications(app))
        assert prefs.load_prefs(default_paths().config_file)[0].get("mode") is None
    finally:
        server.stop()
        worker.shutdown()


async def test_api_flag_serves_the_same_engine(quiet_sampler):
    pytest.importorskip("fastapi")
    import httpx

    app = GlmApp(mode="fp32", api=True, api_port=0, sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: any("OpenAI-compatible API on" in n for n in notifications(app)),
                       timeout=30, what="the API server")
        url = app._api_server.url
        assert any(f"{url}/v1" in n for n in notifications(app))
        async with httpx.AsyncClient() as client:
            health = await client.get(f"{url}/health")
        assert health.status_code == 503 and health.json()  # served, and says no model is loaded yet
    assert not app._api_server._thread.is_alive()


@pytest.mark.slow
async def test_chinese_text_renders_and_wraps_at_80_columns(isolated_home, quiet_sampler):
    long_reply = "量化把模型权重从十六位浮点数压缩成八位或四位整数，显存占用大约减半或减到四分之一。" * 3
    store = HistoryStore.open(default_paths().history_db)
    cid = store.create_conversation("中文", None)
    store.add_message(cid, "user", "请用中文解释量化")
    store.add_message(cid, "assistant", long_reply)
    store.close()
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f2")
        assert app.focused is app.history_pane.option_list
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.chat_pane.conversation_id == cid, what="open")
        await pilot.pause()
        from rich.cells import cell_len

        lines = screen_text(app).splitlines()
        assert all(cell_len(line) <= 80 for line in lines)
        body = [line for line in lines if "量化" in line or "显存" in line or "整数" in line]
        assert len(body) >= 3  # one paragraph, wrapped over several rows
        assert "请用中文解释量化" in screen_text(app)


# ---------------------------------------------------------------- keys while a reply streams


@pytest.mark.slow
async def test_keys_typed_during_a_streaming_reply_apply_in_order(chatty_chatglm3, quiet_sampler):
    """Every key reaches the prompt in the order typed while a reply streams, TextArea bindings
    (backspace, ctrl+w, ctrl+u, arrows, end) included: they used to run only when the key had
    bubbled back through the chat pane (busy with tokens) to the App's queue, after later letters."""
    from textual import events

    app = GlmApp(model=str(chatty_chatglm3), mode="fp32",
                 default_params={"temperature": 0.0, "max_new_tokens": 100_000}, sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        chat = app.chat_pane
        chat.input.focus()
        await pilot.pause()
        import gc

        thresholds = gc.get_threshold()
        assert await chat.send("tell me a long story")  # what Enter does, without waiting for idle
        await wait_for(pilot, lambda: len(chat.active.text) > 20 if chat.active else False, what="streaming")
        assert gc.get_threshold()[2] > 10**9, "no full collection while a reply streams"

        typed = ["x", "y", "ctrl+u", "h", "e", "l", "p", "backspace", "l", "o", "space", "w", "r", "o", "l", "d",
                 "ctrl+w", "w", "o", "r", "l", "d", "left", "left", "left", "left", "left", "b", "i", "g", "space",
                 "end", "!"]
        expected = "hello big world!"
        driver = app._driver
        for key in typed:  # faster than the app handles them, as the terminal driver delivers them
            char = " " if key == "space" else key if len(key) == 1 else None
            event = events.Key(key, char)
            event.set_sender(app)
            driver.send_message(event)
        await wait_for(pilot, lambda: chat.input.text == expected, 10, lambda: f"{expected!r}, not {chat.input.text!r}")
        await pilot.pause()  # nothing still queued changes it
        assert chat.input.text == expected
        assert chat.active is not None, "the reply must still be streaming while the keys are typed"

        escape = events.Key("escape", None)  # an App binding still works from the prompt
        escape.set_sender(app)
        driver.send_message(escape)
        await wait_for(pilot, lambda: chat.active is None, what="the reply to stop")
        # the turn's status is set once its final render is done, just after ``active`` is cleared
        await wait_for(pilot, lambda: chat.turns[-1].status == "stopped", what="the turn marked stopped")
        assert chat.input.text == expected
        await wait_for(pilot, lambda: gc.get_threshold() == thresholds, what="full collections to resume when idle")


def _rendered(widget, depth: int = 0) -> list:
    """What a Markdown shows, block by block (table cells as their text, whatever widget holds them)."""
    from textual.widgets import Static

    if isinstance(widget, Static) and type(widget).__name__ in ("Static", "MarkdownTableCellContents"):
        return [(depth, "cell", str(widget.render()))]
    out = [(depth, type(widget).__name__, getattr(widget, "code", None), str(getattr(widget, "_content", "")),
            getattr(widget, "source_range", None) if depth == 1 else None)]
    for child in widget.children:
        out += _rendered(child, depth + 1)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("text", [
    "# Title\n\nPara one\nstill para\n===\n\n- a\n- b\n\n  more b\n\n> quote\nlazy\n\n"
    "```python\nx = 1\n\n\ny = 2\n```\n",
    "Intro\n\n| name | link |\n|---|---|\n| a | [x](http://a.example) |\n| b | plain |\n\n"
    "After.\n\n| t | u |\n|---|---|\n| 1 | 2 |\n",
    "Text\n\n<div>\nhtml\n</div>\n",  # the last paragraph turns into an HTML block (no widget)
    "See [the doc][ref].\n\n[ref]: https://example.com\n",  # a later reference changes an earlier link
    "Unclosed fence\n\n```js\nlet a = 1;\n",
])
async def test_a_streamed_reply_ends_as_a_full_render_would(text):
    """The end of a streamed reply keeps the blocks the stream rendered and rebuilds only what differs:
    the result must be what a whole-document Markdown.update shows."""
    import random

    from textual.app import App
    from textual.containers import VerticalScroll
    from textual.widgets import Markdown

    from glmtui.ui.reply_markdown import complete_stream

    class Two(App):
        def compose(self):
            with VerticalScroll():
                yield Markdown(id="streamed")
                yield Markdown(id="full")

    for seed in range(3):
        app = Two()
        async with app.run_test(size=(100, 40)) as pilot:
            streamed, full = app.query_one("#streamed", Markdown), app.query_one("#full", Markdown)
            stream = Markdown.get_stream(streamed)
            rng, i = random.Random(seed), 0
            while i < len(text):
                n = rng.randint(1, 12)
                await stream.write(text[i:i + n])
                i += n
                if rng.random() < 0.2:
                    await pilot.pause(0.01)
            await stream.stop()
            await complete_stream(streamed, text)
            await full.update(text)
            await pilot.pause()
            assert streamed.source == text
            assert _rendered(streamed) == _rendered(full)
            if "](" in text:  # rows a table gained while streaming are plain Statics: links would not respond
                from textual.widgets import Static

                from glmtui.ui.compat import MarkdownTable

                table = streamed.query(MarkdownTable).first()
                assert all(type(cell) is not Static for cell in table.query(Static))


@pytest.mark.slow
async def test_a_long_streaming_reply_hides_its_off_screen_blocks_without_moving_anything():
    """While the view follows a streaming reply, blocks far above its end are hidden (display: none) and the
    Markdown's top padding takes their height: the screen, every shown block's place and the scroll height
    must be what they are with every block shown; scrolling up shows them all again."""
    from textual.app import App
    from textual.containers import VerticalScroll
    from textual.widgets import Markdown

    from glmtui.ui.reply_markdown import ReplyMarkdown

    parts = []
    for i in range(60):
        kind = i % 5
        if kind == 0:
            parts.append(f"## Section {i}\n\n")
        elif kind == 1:
            parts.append(f"Paragraph {i} with **bold** and `code` words " * 3 + "\n\n")
        elif kind == 2:
            parts.append("".join(f"- item {i}.{j} of a list\n" for j in range(3)) + "\n")
        elif kind == 3:
            parts.append(f"```python\nx = {i}\nprint(x)\n```\n\n")
        else:
            parts.append(f"| a | b |\n|---|---|\n| {i} | [link](http://{i}.example) |\n\n")
    text = "".join(parts)

    class One(App):
        CSS = "ReplyMarkdown { padding: 0 1; border-left: outer red; }"

        def compose(self):
            with VerticalScroll(id="view"):
                yield ReplyMarkdown()

    app = One()
    async with app.run_test(size=(80, 20)) as pilot:
        view = app.query_one("#view", VerticalScroll)
        view.anchor()
        markdown = app.query_one(ReplyMarkdown)
        markdown.follow(view)
        stream = Markdown.get_stream(markdown)
        compared = 0
        for i in range(0, len(text), 40):
            await stream.write(text[i:i + 40])
            await pilot.pause()
            if i % 800 == 0 and markdown._frozen:
                await pilot.pause(0.05)
                shown = [block for block in markdown.children if block.display]
                before = (app.export_screenshot(), view.virtual_size, view.scroll_y, [b.region for b in shown])
                markdown.follow(None)  # thaws
                await pilot.pause(0.05)
                assert all(block.display for block in markdown.children)
                assert (app.export_screenshot(), view.virtual_size, view.scroll_y, [b.region for b in shown]) == before
                markdown.follow(view)
                compared += 1
        await stream.stop()
        await pilot.pause(0.05)
        assert compared >= 2
        assert len(markdown._frozen) >= 20
        view.scroll_home(animate=False)  # the user scrolls up: everything shows again
        await pilot.pause(0.05)
        assert not markdown._frozen and all(block.display for block in markdown.children)
        assert markdown.source == text


def test_full_collections_are_deferred_and_resumed_in_pairs():
    import gc

    from glmtui.ui.gc_defer import defer_full_collections, resume_full_collections

    before = gc.get_threshold()
    defer_full_collections()
    defer_full_collections()
    assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] > 10**9
    resume_full_collections()
    assert gc.get_threshold()[2] > 10**9
    resume_full_collections()
    resume_full_collections()  # unmatched: no effect
    assert gc.get_threshold() == before


@pytest.mark.slow
async def test_footer_keys_follow_a_reply_in_place(chatty_chatglm3, quiet_sampler):
    """Esc Stop is enabled and Ctrl+R / Ctrl+E disabled while a reply streams, and back after it; the
    footer's keys are the same widgets throughout (no recompose at the start and end of each reply),
    and they always match what a freshly composed Footer shows."""
    from textual.widgets import Footer

    from glmtui.ui.compat import FooterKey

    def footer_keys():
        footer = app.query_one(Footer)
        keys = [k for k in footer.query(FooterKey) if not k.has_class("-command-palette")]
        return [(k.key, k.description, k.has_class("-disabled"), k._disabled) for k in keys], [id(k) for k in keys]

    def composed_keys():  # what Footer.compose builds from the screen's bindings now: one key per action
        keys: dict = {}
        for _node, binding, enabled, _tooltip in app.screen.active_bindings.values():
            if binding.show and binding.action not in keys:
                keys[binding.action] = (binding.key, binding.description, not enabled, not enabled)
        return list(keys.values())

    app = GlmApp(model=str(chatty_chatglm3), mode="fp32",
                 default_params={"temperature": 0.0, "max_new_tokens": 100_000}, sampler=quiet_sampler)
    async with app.run_test(size=(200, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        await pilot.pause(0.3)
        before, widgets = footer_keys()
        assert before == composed_keys()
        assert ("escape", "Stop", True, True) in before  # nothing to stop yet

        chat = app.chat_pane
        assert await chat.send("tell me a long story")
        await wait_for(pilot, lambda: chat.active is not None and len(chat.active.text) > 5, what="streaming")
        await pilot.pause(0.3)
        during, widgets_during = footer_keys()
        assert ("escape", "Stop", False, False) in during
        assert ("ctrl+r", "Regenerate", True, True) in during
        assert during == composed_keys()
        assert widgets_during == widgets, "the footer was rebuilt"

        await pilot.press("escape")
        await wait_for(pilot, lambda: chat.active is None, what="the reply to stop")
        await pilot.pause(0.3)
        after, widgets_after = footer_keys()
        assert ("escape", "Stop", True, True) in after
        assert ("ctrl+r", "Regenerate", False, False) in after
        assert after == composed_keys()
        assert widgets_after == widgets


@pytest.mark.slow
async def test_keys_typed_right_after_enter_are_kept(chatglm3_dir, quiet_sampler):
    """Enter, then the next question's first letters at once (as a terminal delivers a fast typist's keys):
    the letters stay in the prompt. The prompt used to be cleared when the send finished, wiping them."""
    from textual import events

    app = GlmApp(model=str(chatglm3_dir), mode="fp32", default_params={"temperature": 0.0, "max_new_tokens": 4},
                 sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        chat = app.chat_pane
        chat.input.load_text("first question")
        chat.input.focus()
        await pilot.pause()
        driver = app._driver
        for key in ["enter", "n", "e", "x", "t"]:
            event = events.Key(key, "\r" if key == "enter" else key)
            event.set_sender(app)
            driver.send_message(event)
        await wait_for(pilot, lambda: chat.active is None and len(chat.turns) == 2, what="the reply")
        await pilot.pause(0.2)
        assert chat.turns[0].content == "first question"
        assert chat.input.text == "next"

        # a refused send (no model) keeps the text, in front of what was typed since
        chat.input.load_text("second")
        app.model.loaded = None  # as after an unload: sending is refused
        for key in ["enter", "!"]:
            event = events.Key(key, "\r" if key == "enter" else key)
            event.set_sender(app)
            driver.send_message(event)
        await wait_for(pilot, lambda: chat.input.text == "second!", what="the refused text back")
        assert len(chat.turns) == 2


def _add_conversations(count: int) -> None:
    """``count`` empty conversations in the (isolated) history, before the app starts."""
    store = HistoryStore.open(default_paths().history_db)
    try:
        for i in range(count):
            store.create_conversation(f"conversation {i}", "tiny", "", {})
    finally:
        store.close()


@pytest.mark.slow
async def test_a_long_history_list_is_not_repainted_by_a_streaming_reply(chatty_chatglm3, quiet_sampler):
    """With more conversations than the history pane shows, each screen layout used to hand the list a
    different virtual height than its own and refresh its scrollbar (~2 ms a frame, every frame of a reply).
    The list must still scroll over all its rows."""
    from textual.screen import Screen
    from textual.scrollbar import ScrollBar
    from textual.widget import Widget

    _add_conversations(80)

    # the reply is stopped once it has made 20 layouts (the assertions need 15 and more than 12): a fixed length
    # gave ~20 on an idle machine and 13 on a loaded one, and 1500 tokens cost 60 CPU-s
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32",
                 default_params={"temperature": 0.0, "max_new_tokens": 1500}, sampler=quiet_sampler)
    counts = {"layouts": 0, "scrollbar": 0}
    refresh, refresh_layout = Widget.refresh, Screen._refresh_layout

    def counting_refresh(self, *args, **kwargs):
        if isinstance(self, ScrollBar) and self.parent is not None and self.parent.id == "conversations":
            counts["scrollbar"] += 1
        return refresh(self, *args, **kwargs)

    def counting_layout(self, *args, **kwargs):
        counts["layouts"] += 1
        return refresh_layout(self, *args, **kwargs)

    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        await pilot.pause(0.3)
        conversations = app.query_one("#conversations")
        assert conversations.max_scroll_y > 0, "the list must overflow for this test"
        chat = app.chat_pane
        chat.input.load_text("tell me a story")
        chat.input.focus()
        Widget.refresh, Screen._refresh_layout = counting_refresh, counting_layout
        try:
            await pilot.press("enter")
            await wait_for(pilot, lambda: counts["layouts"] >= 20 or chat.active is None, timeout=120,
                           what="20 layouts of the streaming reply")
            if chat.active is not None:
                await pilot.press("escape")
            await wait_for(pilot, lambda: chat.active is None and len(chat.turns) == 2, what="the reply")
        finally:
            Widget.refresh, Screen._refresh_layout = refresh, refresh_layout
        assert counts["layouts"] >= 15, counts
        # reloading the list for the new conversation refreshes it a few times; the reply's frames do not
        assert counts["scrollbar"] <= 12 < counts["layouts"], counts

        await store_calls(app).settled()
        rows = conversations.option_count
        assert rows == 81 and conversations.virtual_size.height >= rows
        conversations.focus()
        await pilot.press("end")  # the last row: the list scrolls all the way down
        await pilot.pause(0.2)
        assert conversations.highlighted == rows - 1
        assert conversations.scroll_y == conversations.max_scroll_y > 0


@pytest.mark.slow
async def test_the_history_list_is_rebuilt_only_when_it_changes(chatglm3_dir, quiet_sampler):
    """Each reply reloads the history list at its start and end; with hundreds of conversations a rebuild
    costs 30-70 ms of the UI thread during the prefill. A reply in the conversation already on top changes
    nothing in the list: no rebuild. A new conversation, a rename or a search still rebuild it."""
    from glmtui.ui.history import ConversationList

    _add_conversations(30)
    rebuilds = []
    clear_options = ConversationList.clear_options

    def counting_clear(self):
        rebuilds.append(self.option_count)
        return clear_options(self)

    app = GlmApp(model=str(chatglm3_dir), mode="fp32", default_params={"temperature": 0.0, "max_new_tokens": 8},
                 sampler=quiet_sampler)
    ConversationList.clear_options = counting_clear
    try:
        async with app.run_test(size=(160, 40)) as pilot:
            await wait_for(pilot, lambda: app.loaded is not None, what="model load")
            chat = app.chat_pane
            conversations = app.query_one("#conversations", ConversationList)
            assert await chat.send("first question")  # a new conversation: the list gains a row
            await wait_for(pilot, lambda: chat.active is None, what="the first reply")
            await store_calls(app).settled()
            assert conversations.option_count == 31
            assert "first question" in str(conversations.get_option_at_index(0).prompt)
            before = len(rebuilds)
            assert before >= 1
            assert await chat.send("second question")  # same conversation, already on top
            await wait_for(pilot, lambda: chat.active is None and len(chat.turns) == 4, what="the second reply")
            await store_calls(app).settled()
            assert len(rebuilds) == before, "an unchanged list was rebuilt"
            app.history_pane.query_text = "conversation 7"
            app.history_pane.reload()
            await store_calls(app).settled()
            assert len(rebuilds) == before + 1
            assert conversations.option_count >= 1
    finally:
        ConversationList.clear_options = clear_options


# ------------------------------------------------ chats that are not being saved


def _banner(app):
    from glmtui.ui.banner import UnsavedBanner

    return app.query_one("#unsaved", UnsavedBanner)


async def test_banner_stays_while_the_history_is_in_memory(quiet_sampler):
    _block_the_data_folder()
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await store_calls(app).settled()  # the store opens on a thread: the banner comes once it is open
        await pilot.pause()
        banner = _banner(app)
        assert banner.display and banner.region.height >= 1
        text = screen_text(app)
        assert "Chats are not being saved." in text and "kept in memory" in text
        app.clear_notifications()  # toasts go; the banner stays
        await pilot.pause(0.3)
        assert banner.display and "Chats are not being saved." in screen_text(app)


async def test_banner_for_a_read_only_history_file(quiet_sampler):
    _add_conversations(2)
    db = default_paths().history_db
    os.chmod(db, 0o400)
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await store_calls(app).settled()  # the store opens on a thread: the banner comes once it is open
        await pilot.pause()
        assert _banner(app).display and "read-only (mode 0400)" in screen_text(app)
        assert app.history_pane.option_list.option_count == 2  # its conversations are shown


@pytest.mark.slow
async def test_banner_while_writes_fail_during_a_chat(chatglm3_dir, quiet_sampler):
    """Writes that start failing mid-chat (here: the connection turned read-only, as on a file
    system remounted read-only) show the banner until a write succeeds again."""
    app = GlmApp(model=str(chatglm3_dir), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        banner = _banner(app)
        await send(pilot, app, "first")
        cid = app.chat_pane.conversation_id
        assert not banner.display and len(stored(cid, app)[1]) == 2

        app.store._conn.execute("PRAGMA query_only = 1")  # private: every write now fails
        await send(pilot, app, "second")
        assert banner.display
        text = screen_text(app)
        assert "Chats are not being saved." in text and "read-only" in text
        assert len(stored(cid, app)[1]) == 2  # indeed not saved

        app.store._conn.execute("PRAGMA query_only = 0")  # private: writes allowed again
        await send(pilot, app, "third")
        assert not banner.display and "Chats are not being saved." not in screen_text(app)
        assert [m.content for m in stored(cid, app)[1] if m.role == "user"] == ["first", "third"]


async def test_a_history_with_damaged_pages_is_repaired_at_start(quiet_sampler):
    """Page 2 (the conversations' table) overwritten: glmtui used to open it, show 0 conversations and
    save nothing; now the file is set aside and its messages come back, searchable."""
    import random

    db = default_paths().history_db
    store = HistoryStore.open(db)
    for c in range(12):
        cid = store.create_conversation(f"conversation {c}")
        for m in range(4):
            store.add_message(cid, "user" if m % 2 == 0 else "assistant", f"topic{c} " + "lorem ipsum " * 30)
    store.close()
    data = bytearray(db.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    data[page_size : 2 * page_size] = random.Random(3).randbytes(page_size)
    db.write_bytes(bytes(data))
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await store_calls(app).settled()  # the store opens on a thread: what it found is told once it is open
        await pilot.pause()  # the notifications posted
        assert any("12 conversations" in n and "48 messages were recovered" in n and ".corrupt-" in n
                   for n in notifications(app))
        assert app.history_pane.option_list.option_count == 12 and not _banner(app).display
        assert [h.conversation_id for h in app.store.search("topic7") if h.message_id] == [8] * 4
        assert app.store.create_conversation("saved again") == 13
    kept = [p for p in db.parent.iterdir()
            if p.name.startswith("history.sqlite3.corrupt-") and not p.name.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and kept[0].read_bytes() == bytes(data)


# ---------------------------------------------------------------- Ctrl+E, context limit, empty and quit replies


@pytest.fixture(scope="module")
def silent_glm(native_glm, tmp_path_factory):
    """The tiny native GLM with its final norm zeroed: every logit is 0, greedy picks token 0, its
    end-of-text: every reply is empty."""
    import shutil

    from safetensors.torch import load_file, save_file

    dest = tmp_path_factory.mktemp("silent") / "tiny-glm-silent"
    shutil.copytree(native_glm, dest)
    weights = dest / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["model.norm.weight"].zero_()
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return dest


def _rows(app, cid):
    return [(m.id, m.role, m.content, m.status) for m in app.store.messages(cid)]


@pytest.mark.slow
async def test_edit_last_keeps_the_exchange_until_the_edit_is_sent(chatglm3_dir, quiet_sampler):
    app = GlmApp(model=str(chatglm3_dir), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        chat = app.chat_pane
        await send(pilot, app, "hello there")
        cid = chat.conversation_id
        before = _rows(app, cid)
        assert [r[1] for r in before] == ["user", "assistant"]

        # Ctrl+E then Esc then Ctrl+N: nothing is lost, and the prompt box has its draft back
        await type_text(pilot, "a draft")
        await pilot.press("ctrl+e")
        assert _rows(app, cid) == before
        assert chat.input.text == "hello there" and chat.editing is not None
        assert len(chat.turns) == 2 and all(t.widget.display for t in chat.turns)
        assert "editing the last prompt" in screen_text(app)
        await pilot.press("escape")
        assert chat.editing is None and chat.input.text == "a draft"
        assert "editing the last prompt" not in screen_text(app)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert chat.conversation_id is None
        assert _rows(app, cid) == before

        # back in the conversation: an edit that is sent replaces the exchange, in the file too
        assert await chat.show_conversation(cid)
        assert [t.content for t in chat.turns][0] == "hello there"
        chat.input.clear()
        await pilot.press("ctrl+e")
        chat.input.clear()
        await type_text(pilot, "hello again")
        await pilot.press("enter")
        await wait_for(pilot, lambda: chat.active is None and chat.turns[-1].status == "complete", what="resend")
        after = _rows(app, cid)
        assert [(r[1], r[2]) for r in after][0] == ("user", "hello again") and len(after) == 2
        assert after[1][3] == "complete" and not {r[0] for r in before} & {r[0] for r in after}
        assert [t.content for t in chat.turns][0] == "hello again" and len(chat.turns) == 2
        assert len(chat.messages_view.query(".message")) == 2  # the old exchange's widgets are gone


@pytest.mark.slow
async def test_an_edit_or_regenerate_that_fails_to_start_keeps_the_original(short_context_chatty, quiet_sampler):
    app = GlmApp(model=str(short_context_chatty), mode="fp32",
                 default_params={"temperature": 0.0, "max_new_tokens": 8}, sampler=quiet_sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        chat = app.chat_pane
        await send(pilot, app, "hi")
        cid = chat.conversation_id
        before = _rows(app, cid)
        shown = [(t.role, t.content) for t in chat.turns]

        # the engine refuses the edited prompt (longer than the model's 64-token context)
        await pilot.press("ctrl+e")
        chat.input.load_text("tell me a story " * 20)
        await pilot.press("enter")
        await wait_for(pilot, lambda: any("longer than the model's context" in n for n in notifications(app)),
                       what="the refusal")
        await wait_for(pilot, lambda: chat.active is None, what="the refusal handled")
        assert _rows(app, cid) == before
        assert [(t.role, t.content) for t in chat.turns] == shown
        assert all(t.widget.display for t in chat.turns) and len(chat.messages_view.query(".message")) == 2
        assert chat.input.text == ("tell me a story " * 20).rstrip() and chat.editing is not None
        await pilot.press("escape")  # what the box held before Ctrl+E: nothing
        assert chat.input.text == "" and chat.editing is None

        # a regenerate the engine refuses (invalid parameters) keeps the reply
        chat.apply_settings("", {"repetition_penalty": 0.001})
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: any("invalid parameters" in n for n in notifications(app)), what="refusal")
        await wait_for(pilot, lambda: chat.active is None, what="the refusal handled")
        assert _rows(app, cid) == before and [(t.role, t.content) for t in chat.turns] == shown
        chat.apply_settings("", {"repetition_penalty": 1.0})

        # no model loaded: the resend does not start and nothing changes
        await pilot.press("f9")
        await wait_for(pilot, lambda: app.loaded is None, what="unload")
        chat.input.focus()
        await pilot.press("ctrl+e")
        chat.input.clear()
        await type_text(pilot, "other")
        await pilot.press("enter")
        await pilot.pause()
        assert any("No model loaded" in n for n in notifications(app))
        assert _rows(app, cid) == before and chat.input.text == "other"
        assert [(t.role, t.content) for t in chat.turns] == shown


@pytest.mark.slow
async def test_a_reply_cut_by_the_context_says_so(short_context_chatty, quiet_sampler):
    app = GlmApp(model=str(short_context_chatty), mode="fp32",
                 default_params={"temperature": 0.0, "max_new_tokens": 512}, sampler=quiet_sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        assert app.loaded.context_length == 64
        chat = app.chat_pane
        reply = await send(pilot, app, "hi")
        stats = reply.stats
        assert stats["finish_reason"] == "length" and stats["prompt_tokens"] + stats["completion_tokens"] == 64
        meta = str(reply.query_one(".msg-meta").render())
        assert "reached the model's context (64 tokens)" in meta and "max new tokens" not in meta
        assert app.store.messages(chat.conversation_id)[-1].stats["context_limit"] == 64

        # max new tokens reached well inside the context: said as such
        await pilot.press("ctrl+n")
        chat.apply_settings("", {"max_new_tokens": 5})
        reply = await send(pilot, app, "hi")
        assert reply.stats["completion_tokens"] == 5 and "context_limit" not in reply.stats
        assert "hit max new tokens" in str(reply.query_one(".msg-meta").render())


@pytest.mark.slow
async def test_an_empty_reply_says_so(silent_glm, quiet_sampler):
    app = GlmApp(model=str(silent_glm), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        reply = await send(pilot, app, "hi")
        assert reply.status == "complete" and reply.text == ""
        assert "(empty reply)" in screen_text(app)
        cid = app.chat_pane.conversation_id
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert "(empty reply)" not in screen_text(app)
        assert await app.chat_pane.show_conversation(cid)  # reopened from the history file
        await pilot.pause()
        assert "(empty reply)" in screen_text(app)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl+q", "SIGTERM"])
async def test_a_reply_cut_by_quitting_keeps_its_token_count(chatty_chatglm3, quiet_sampler, how):
    import signal

    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", default_params={"temperature": 0.0, "max_new_tokens": 4000},
                 sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="load")
        chat = app.chat_pane
        assert await chat.send("tell me a long story")
        await wait_for(pilot, lambda: chat.active is not None and chat.active.text, what="the first tokens")
        cid = chat.conversation_id
        if how == "ctrl+q":
            await pilot.press("ctrl+q")
        else:
            app._exit_on_signal(signal.SIGTERM)  # what the installed handler does on SIGTERM
            await pilot.pause()
    store = HistoryStore.open(default_paths().history_db)
    try:
        reply = store.messages(cid)[-1]
    finally:
        store.close()
    assert reply.status == ("stopped" if how == "ctrl+q" else "interrupted") and reply.content
    assert isinstance(reply.stats.get("completion_tokens"), int) and reply.stats["completion_tokens"] > 0
    assert reply.stats["prompt_tokens"] > 0 and reply.stats["finish_reason"] == "cancelled"


# ---------------------------------------------------------------- predicted next to measured; units; local folders


def _static_text(widget) -> str:
    return str(widget.content)


@pytest.mark.slow
async def test_after_a_load_the_prediction_sits_next_to_the_measurement(chatglm3_dir, quiet_sampler):
    from textual.widgets import Static

    from glmtui.engine import memory

    app = GlmApp(model=str(chatglm3_dir), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        pred = memory.predict_for_dir(chatglm3_dir, ("fp32",), device="cpu")["fp32"]
        info = _static_text(app.models_pane.query_one("#loaded-info", Static))
        assert (f"predicted {fmt_bytes(pred.total_bytes)} = {fmt_bytes(pred.weight_bytes)} weights + "
                f"{fmt_bytes(pred.kv_cache_bytes)} KV cache + {fmt_bytes(pred.overhead_bytes)} overhead") in info
        ratio = app.loaded.footprint_bytes / pred.weight_bytes
        assert 0.95 < ratio < 1.05  # the weight formula is exact for this architecture
        assert f"measured {fmt_bytes(app.loaded.footprint_bytes)} of weights = {ratio:.2f}× predicted" in info
        assert "KV cache at the model's whole context, 2,048 tokens" in info
        # a 5 MiB model: activations and KV cache outweigh its weights, and the pane says so
        assert pred.kv_cache_bytes + pred.overhead_bytes > pred.weight_bytes
        assert "fixed costs outweigh this model's weights" in info

        # F8: int8 predicted above fp32 for this model, and why
        await pilot.press("f8")
        assert isinstance(app.screen, ModeModal)
        preds = memory.predict_for_dir(chatglm3_dir, device="cpu")
        assert preds["int8"].total_bytes > preds["fp32"].total_bytes
        note = app.screen.note
        assert "KV cache at the model's whole context, 2,048 tokens" in note
        assert "fixed costs outweigh" in note and "int8" in note and "more than fp32" in note
        await pilot.press("escape")


def test_a_long_context_model_is_predicted_at_a_stated_context():
    from glmtui.engine import memory
    from glmtui.ui.models import prediction_notes

    config = {"model_type": "chatglm", "hidden_size": 4096, "num_attention_heads": 32, "multi_query_attention": True,
              "multi_query_group_num": 2, "num_layers": 28, "ffn_hidden_size": 13696, "kv_channels": 128,
              "padded_vocab_size": 65024, "seq_length": 32768, "add_qkv_bias": True}
    preds = memory.predict_all(config, device="cuda")
    bf16 = preds["bf16"]
    assert bf16.context_len == memory.DEFAULT_CONTEXT_CAP == 8192 and bf16.model_context == 32768
    whole = bf16.kv_bytes_at(32768)
    assert whole == 4 * bf16.kv_cache_bytes
    notes = prediction_notes(preds)
    assert notes[0] == f"KV cache at 8,192 tokens of context; the model's whole 32,768 would take {fmt_bytes(whole)}"
    assert not any("fixed costs" in n for n in notes)  # a 6B model: the weights dominate


@pytest.mark.slow
async def test_models_pane_uses_binary_units_and_a_local_folder_has_no_hub_lines(native_glm, quiet_sampler):
    from textual.widgets import Static

    app = GlmApp(model=str(native_glm), mode="fp32", default_params=GREEDY, sampler=quiet_sampler)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        models = app.models_pane
        ol = models.option_list
        ids = [ol.get_option_at_index(i).id for i in range(ol.option_count)]
        rows_text = "\n".join(str(ol.get_option_at_index(i).prompt) for i in range(ol.option_count))
        assert " GB" not in rows_text and "GiB" in rows_text  # catalogue download sizes, binary like the rest

        ol.highlighted = ids.index(f"dir:{native_glm.resolve()}")
        await pilot.pause()
        detail = _static_text(models.query_one("#model-detail", Static))
        assert "downloads from" not in detail and "d download" not in detail
        assert f"local folder {native_glm.resolve()}" in detail

        ol.highlighted = ids.index("cat:chatglm3-6b")
        await pilot.pause()
        detail = _static_text(models.query_one("#model-detail", Static))
        assert "downloads from Hugging Face" in detail and " GB" not in detail


def test_download_progress_is_in_binary_units():
    from types import SimpleNamespace

    from glmtui.ui.models import ModelsPane

    progress = SimpleNamespace(phase="downloading", bytes_done=3 * 2**30, bytes_total=12 * 2**30,
                               fraction=0.25, speed_bps=40 * 2**20)
    text = ModelsPane.describe_job(SimpleNamespace(state="running", progress=progress))
    assert text == "downloading 3.0/12.0 GiB (25%) · 40.0 MiB/s"


def test_unload_note_compares_with_the_figure_after_the_imports():
    from glmtui.ui.unload_note import unload_memory_note

    MiB = 2**20
    note = unload_memory_note("RAM", 50 * MiB, 440 * MiB, after_imports=430 * MiB)
    assert note.startswith("RAM back to within 64.0 MiB of its figure after the engine's imports (440 MiB)")
    assert "torch and transformers, imported by the first load, hold 380 MiB" in note
    note = unload_memory_note("RAM", 50 * MiB, 600 * MiB, after_imports=430 * MiB)
    assert note.startswith("170 MiB of RAM stayed behind after unload") and "hold 380 MiB" in note


@pytest.mark.slow
def test_unload_after_the_first_load_names_the_imports(chatglm3_dir, tmp_path):
    """A fresh process (torch not imported yet): the first load imports it, and the note after the
    unload compares with the figure after those imports instead of blaming the allocator for them."""
    script = textwrap.dedent(
        """
        import asyncio, sys, time
        from glmtui.monitor import Sampler
        from glmtui.ui.app import GlmApp

        async def main(model):
            app = GlmApp(mode="fp32", sampler=Sampler(interval=0.25))
            async with app.run_test(size=(160, 48)) as pilot:
                async def until(condition, what, timeout=240.0):
                    end = time.monotonic() + timeout
                    while time.monotonic() < end:
                        await pilot.pause(0.1)
                        if condition():
                            return
                    raise SystemExit(f"timed out waiting for {what}: {app.model.last_error}")

                await until(lambda: app.monitor_pane.snapshot is not None, "a sample")
                print("torch before", "torch" in sys.modules)
                app.request_load(model, "fp32")
                await until(lambda: app.loaded is not None, "the load")
                app.action_unload()
                await until(lambda: app.loaded is None, "the unload")
                await until(lambda: app.model.unloaded_note and ("back to" in app.model.unloaded_note
                                                           or "stayed behind" in app.model.unloaded_note), "the note")
                print("torch after", "torch" in sys.modules)
                print("NOTE", app.model.unloaded_note)

        asyncio.run(main(sys.argv[1]))
        """
    )
    env = dict(os.environ, GLMTUI_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", script, str(chatglm3_dir)], capture_output=True, text=True,
                         env=env, timeout=400)
    assert "torch before False" in out.stdout, out.stdout + out.stderr[-2000:]
    note = next(line for line in out.stdout.splitlines() if line.startswith("NOTE ")).removeprefix("NOTE ")
    if "torch after True" in out.stdout:  # the model ran in this process: its imports are named apart
        assert "imported by the first load, hold" in note, note
        assert note.startswith("RAM back to within 64.0 MiB of its figure after the engine's imports"), note
