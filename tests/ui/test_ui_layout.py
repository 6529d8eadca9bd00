"""Layout by width, pane keys, the footer, the palette and the load dialog, driven through Pilot.

Keys "that arrive together" are posted to the driver in one go, as a terminal delivers
them from one read; Pilot.press waits for each key to be handled before the next.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from textual import events

from glmtui.config import default_paths
from glmtui.devices import device_problem, normalize_device
from glmtui.store import HistoryStore
from glmtui.ui.app import GlmApp
from glmtui.ui.compat import FooterKey
from glmtui.ui.footer import QuickFooter
from glmtui.ui.modals import LoadModal
from glmtui.ui.panebar import PANES
from helpers import screen_text, type_text, wait_for

SIZES = [(80, 24), (100, 30), (120, 40), (130, 40), (160, 48), (200, 50)]


def burst(app, *keys: str, gap: float = 0.0):
    """Post keys to the driver without waiting for the app to handle them (one terminal read)."""

    async def send() -> None:
        for i, key in enumerate(keys):
            if i and gap:
                await asyncio.sleep(gap)
            event = events.Key(key, key if len(key) == 1 else None)
            event.set_sender(app)
            app._driver.send_message(event)

    return send()


def seed(titles_and_texts) -> list[int]:
    store = HistoryStore.open(default_paths().history_db)
    try:
        ids = []
        for title, text in titles_and_texts:
            cid = store.create_conversation(title, "tiny", "", {})
            store.add_message(cid, "user", text)
            ids.append(cid)
        return ids
    finally:
        store.close()


# ---------------------------------------------------------------- layout by width


@pytest.mark.slow
async def test_the_chat_keeps_most_of_the_width_at_every_size(quiet_sampler):
    """The chat's width never drops as the terminal widens; where side panes show, the chat keeps
    at least 60% of the width (it was 44 columns at 120, narrower than the 80 of an 80-column terminal)."""
    widths = []
    for size in SIZES:
        app = GlmApp(mode="fp32", sampler=quiet_sampler)
        async with app.run_test(size=size) as pilot:
            chat = app.query_one("#chat")
            await wait_for(pilot, lambda chat=chat: chat.region.width > 0, timeout=10, what="the first layout")
            await pilot.pause()
            sides = [app.query_one(f"#{pane}") for pane in ("history", "side")]
            shown = [side for side in sides if side.display and side.region.width]
            widths.append(chat.region.width)
            if shown:
                assert chat.region.width >= 0.6 * size[0], (size, chat.region.width)
                assert chat.region.width + sum(s.region.width for s in shown) == size[0]
            else:
                assert chat.region.width == size[0], size
            if size[0] >= 160:
                assert shown, f"no side pane at {size}"
            if size[0] >= 200:
                assert len(shown) == 2 and "Host RAM" in screen_text(app)
    assert widths == sorted(widths), list(zip(SIZES, widths, strict=False))  # (a message: never raises)


@pytest.mark.slow
async def test_the_medium_layout_shows_the_pane_f2_chose_beside_the_chat(quiet_sampler):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause()
        assert app.screen.has_class("-medium")
        history, side, chat = (app.query_one(f"#{p}") for p in ("history", "side", "chat"))
        assert history.display and not side.display
        await pilot.press("f2", "f2")  # models
        await pilot.pause()
        assert app.current_pane == "models" and side.display and not history.display
        assert app.query_one("#models").display and not app.query_one("#monitor").display
        assert chat.display and chat.region.width == 130
        await pilot.press("f2", "f2")  # monitor, chat: the side keeps the monitor
        await pilot.pause()
        assert app.current_pane == "chat" and app.focused is app.chat_pane.input
        assert app.query_one("#monitor").display and "Host RAM" in screen_text(app)


# ---------------------------------------------------------------- pane keys


@pytest.mark.slow
@pytest.mark.parametrize("size", [(80, 24), (160, 48), (200, 50)])
async def test_f2_presses_that_arrive_together_each_move_a_pane(quiet_sampler, size):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        await pilot.press("f2", "f2")
        assert app.current_pane == "models"
        for count, gap in [(2, 0.0), (2, 0.002), (3, 0.0), (2, 0.01), (2, 0.03), (3, 0.005), (2, 0.0), (2, 0.06)]:
            want = PANES[(PANES.index(app.current_pane) + count) % len(PANES)]
            await burst(app, *["f2"] * count, gap=gap)
            await wait_for(pilot, lambda want=want: app.current_pane == want, timeout=10,
                           what=f"{count} F2 presses {gap} s apart to reach {want} (at {app.current_pane})")
            await pilot.pause(0.15)  # no late focus event takes it elsewhere
            assert app.current_pane == want
            assert app._in_pane(app.focused, want), (want, app.focused)


@pytest.mark.slow
async def test_ctrl_f_then_down_moves_into_the_results(quiet_sampler):
    first, story, _ = seed([("weather today", "is it raining?"), ("a short story", "tell me a story"),
                            ("more weather", "and tomorrow?")])
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        chat = app.chat_pane
        await pilot.press("ctrl+f", *"story", "down", "enter")
        await wait_for(pilot, lambda: chat.conversation_id == story, timeout=10, what="the search result to open")
        assert app.current_pane == "chat"

        # typed fast, Ctrl+F and the search arrive together: the letters reach the search box
        app.history_pane.search_input.value = ""
        await burst(app, "ctrl+f", *"raining")
        await wait_for(pilot, lambda: app.history_pane.search_input.value == "raining", timeout=10,
                       what=f"the search text (the prompt got {app.chat_pane.input.text!r})")
        assert app.chat_pane.input.text == ""
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: chat.conversation_id == first, timeout=10, what="the second search to open")

        # Up from the first result goes back to the search box, Down returns
        await pilot.press("ctrl+f")
        app.history_pane.search_input.value = "weather"
        results = app.history_pane.option_list
        # the search runs off the UI thread: Down before its results arrive stays in the box (failed under load)
        await wait_for(pilot, lambda: results.option_count == 2, timeout=10, what="the two weather results")
        await pilot.press("down")
        assert app.focused is results and results.highlighted == 0 and results.option_count == 2
        await pilot.press("up")
        assert app.focused is app.history_pane.search_input
        await pilot.press("down", "down")
        assert app.focused is results and results.highlighted == 1


# ---------------------------------------------------------------- footer and palette


def footer_line(app) -> str:
    return screen_text(app).split("\n")[-1]


def footer_labels(app) -> list[str]:
    keys = [k for k in app.query_one(QuickFooter).query(FooterKey) if not k.has_class("-command-palette")]
    return [f"{k.key_display} {k.description}" for k in keys]


def _footer_drawn(app) -> bool:
    """The bottom line shows the footer's keys as they are now, then the palette key."""
    labels, line = footer_labels(app), footer_line(app)
    return bool(labels) and "▏" in line and line.split("▏")[0].strip() == " ".join(labels)


async def _footer_settled(pilot, app, width: int) -> str:
    await wait_for(pilot, lambda: _footer_drawn(app), timeout=10,
                   what=lambda: f"the footer; line: {footer_line(app)!r}")
    line = footer_line(app)
    assert len(line) == width
    return line


@pytest.mark.parametrize("width", [80, 100])
async def test_the_footer_shows_whole_keys_and_keeps_load_quant_unload(quiet_sampler, width):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(width, 30)) as pilot:
        line = await _footer_settled(pilot, app, width)
        keys, palette = line.split("▏")
        assert palette.strip() == "^p palette"
        labels = footer_labels(app)
        assert " ".join(labels) == keys.strip(), (labels, line)  # every key whole, none cut at the edge
        for label in ("⏎ Send", "esc Stop", "f2 Pane", "^l Load", "f8 Quant", "f9 Unload"):
            assert label in labels, (label, line)


@pytest.mark.slow
async def test_the_footer_refits_when_the_terminal_is_resized(quiet_sampler):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(200, 30)) as pilot:
        wide = await _footer_settled(pilot, app, 200)
        assert "^r Regenerate" in wide and "f5 Export" in wide
        await pilot.resize_terminal(80, 30)
        await wait_for(pilot, lambda: "f5 Export" not in footer_line(app), timeout=10, what="the footer to refit")
        line = await _footer_settled(pilot, app, 80)
        assert " ".join(footer_labels(app)) == line.split("▏")[0].strip() and "^l Load" in line


async def test_every_palette_command_shows_its_key(quiet_sampler):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        commands = {c.title: c.help for c in app.get_system_commands(app.screen)}
        for title, help_text in commands.items():
            assert help_text.endswith("]") and "  [" in help_text, (title, help_text)
        assert commands["Theme"].endswith("[^t]") and commands["Quit"].endswith("[^q]")
        assert commands["Switch download source"].endswith("[s in Models]")


# ---------------------------------------------------------------- device


@pytest.mark.parametrize("text,ok", [("auto", True), ("cpu", True), ("cuda", True), ("cuda:1", True),
                                     ("CUDA:0 ", True), ("", True), ("banana", False), ("gpu", False),
                                     ("cuda1", False), ("cuda:x", False), ("0", False)])
def test_device_names(text, ok):
    assert (device_problem(text) is None) == ok, device_problem(text)
    if ok:
        assert normalize_device(text) == (text.strip().lower() or "auto")
    else:
        assert text.strip() in device_problem(text) and "cuda:N" in device_problem(text)


@pytest.mark.parametrize("argv", [["--device", "banana"], ["chat", "--device", "banana", "-m", "/nonexistent"],
                                  ["serve", "--device", "gpu", "-m", "/nonexistent", "--port", "1"]])
def test_a_bad_device_is_refused_at_the_command_line_in_one_line(argv, tmp_path):
    out = subprocess.run([sys.executable, "-m", "glmtui.cli", *argv], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device" in lines[0] and "cuda:N" in lines[0], out.stderr
    assert argv[argv.index("--device") + 1] in lines[0]


@pytest.mark.slow
async def test_the_load_dialog_sets_the_device(native_glm, quiet_sampler):
    app = GlmApp(mode="fp32", device="auto", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+l")
        dialog = app.screen
        assert isinstance(dialog, LoadModal)
        dialog.query_one("#spec").value = str(native_glm)
        device = dialog.query_one("#device")
        assert device.value == "auto"
        device.value = "banana"
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is dialog, "a bad device must not close the dialog"
        assert "banana" in str(dialog.query_one("#load-error").render())
        assert app.focused is device and app.loaded is None
        device.value = "cpu"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.loaded is not None, what="load on the chosen device")
        assert app.device == "cpu" and app.loaded.device == "cpu"


# ---------------------------------------------------------------- load dialog: path box


async def test_shift_tab_back_to_the_path_keeps_it(quiet_sampler, tmp_path):
    spec = str(tmp_path / "some-model")
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    app.model.last_spec = spec
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+l")
        box = app.screen.query_one("#spec")
        await pilot.press("x")  # focus on opening does not select the path either
        assert box.value == spec + "x"
        await pilot.press("tab")  # nothing to complete: moves on
        assert app.focused is app.screen.query_one("#mode")
        await pilot.press("shift+tab", "y")
        assert app.focused is box
        assert box.value == spec + "xy" and box.cursor_position == len(box.value)


@pytest.mark.slow
async def test_tab_completes_folders_in_the_load_dialog(quiet_sampler, tmp_path):
    root = tmp_path / "models"
    for name in ("alpha-one", "alpha-two", "beta", ".hidden"):
        (root / name).mkdir(parents=True)
    (root / "beta" / "config.json").write_text("{}")
    (root / "beta" / "sub").mkdir()
    (root / "alpha-file").write_text("not a folder")
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+l")
        dialog = app.screen
        box, modes, candidates = (dialog.query_one(f"#{i}") for i in ("spec", "mode", "spec-candidates"))

        async def typed(text: str) -> None:
            box.value = ""
            await type_text(pilot, text)

        await typed(f"{tmp_path}/mod")
        await pilot.press("tab")  # one match: completed with its slash
        assert box.value == f"{root}/" and app.focused is box
        await pilot.press("tab")  # several: the list, the text unchanged (no common prefix beyond "")
        assert box.value == f"{root}/" and app.focused is box
        assert candidates.display
        listed = str(candidates.render())
        assert "alpha-one/" in listed and "beta/" in listed and ".hidden" not in listed and "alpha-file" not in listed
        await type_text(pilot, "al")
        assert not candidates.display  # typing clears the list
        await pilot.press("tab")  # the common prefix, and the two that share it
        assert box.value == f"{root}/alpha-" and app.focused is box
        assert "alpha-one/" in str(candidates.render()) and "beta/" not in str(candidates.render())
        await pilot.press("tab")  # listed already, nothing more to complete: moves on
        assert app.focused is modes

        await pilot.press("shift+tab")
        await typed(f"{root}/b")
        await pilot.press("tab")
        assert box.value == f"{root}/beta/"
        await pilot.press("tab")  # a model folder is complete: moves on, not into its sub-folder
        assert app.focused is modes and box.value == f"{root}/beta/"

        await pilot.press("shift+tab")
        await typed("chatglm3-6b")  # a catalogue key: Tab moves on
        await pilot.press("tab")
        assert app.focused is modes and box.value == "chatglm3-6b"
