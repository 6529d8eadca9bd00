"""Widgets render what they are given and hand back what the user chose (the house rule "widgets render and
forward, controllers decide"): each is mounted in a bare Textual App, which has no engine, endpoint, model
controller or decode speed for a widget to reach for, and does its job with what it was given."""

from __future__ import annotations

from textual.app import App
from textual.widgets import Static

from glmtui.engine.events import Finished, Loaded
from glmtui.ui.dialogs.load import LoadModal
from glmtui.ui.monitor import DecodeSpeed, MonitorPane
from helpers import host_only_snapshot, wait_for

OFFLOADED = Loaded(request_id=1, model_name="tiny", model_path="/models/tiny", mode="bf16", device="cuda:0",
                   footprint_bytes=2**20, load_seconds=0.1, context_length=64,
                   layer_devices=(("cuda:0", 0, 5), ("cpu", 6, 7)), offloaded=("cpu",))


def body_text(pane: MonitorPane) -> str:
    content = pane.query_one("#monitor-body", Static).content
    return "\n".join(r.plain for r in getattr(content, "renderables", ()))


async def test_the_monitor_says_the_decode_speed_it_is_given():
    speed = DecodeSpeed()
    speed.note(OFFLOADED)
    speed.note(Finished(request_id=2, text="eleven toks", prompt_tokens=3, completion_tokens=11,
                        time_to_first_token=0.1, tokens_per_second=4.0, total_seconds=2.6, finish_reason="stop"))

    class Bare(App):
        def compose(self):
            yield MonitorPane(speed, id="monitor")

    app = Bare()
    async with app.run_test(size=(100, 30)) as pilot:
        pane = app.query_one(MonitorPane)
        await wait_for(pilot, lambda: pane.on_screen, what="the monitor shown")
        pane.show(host_only_snapshot())
        pane.show_placement(OFFLOADED)
        await pilot.pause()
        assert "2 of 8 layers on cpu" in body_text(pane) and "decoding 4.0 tok/s" in body_text(pane)


async def test_the_load_dialog_checks_with_what_it_is_given_and_returns_the_engine_chosen():
    asked: list[tuple[str, str, str]] = []
    results: list = []

    def fit_check(spec: str, mode: str, device: str) -> str:
        asked.append((spec, mode, device))
        return "tiny in fp32 would not fit: a test says so"

    class Bare(App):
        def on_mount(self) -> None:
            self.push_screen(LoadModal("some/model", "fp32", ("fp32", "int8"), device="cpu", engine_kind="vllm",
                                       fit_check=fit_check), results.append)

    app = Bare()
    async with app.run_test(size=(100, 30)) as pilot:
        dialog = app.screen
        assert isinstance(dialog, LoadModal)
        # the engine the next load runs on is vLLM: the choice is shown, whether or not vLLM runs here
        await wait_for(pilot, lambda: dialog.query_one("#engine-row").display, what="the engine choice")
        await pilot.press("enter")
        assert asked == [("some/model", "fp32", "cpu")]
        assert "would not fit: a test says so" in str(dialog.query_one("#load-error", Static).content)
        await pilot.press("enter")  # again: loads it anyway
        await wait_for(pilot, lambda: results, what="the dialog's answer")
    assert results == [("some/model", "fp32", "cpu", "vllm")]
