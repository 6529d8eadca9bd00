"""Widgets render what they are given and hand back what the user chose (the house rule "widgets render and
forward, controllers decide"): each is mounted in a bare Textual App, which has no engine, endpoint, model
controller or decode speed for a widget to reach for, and does its job with what it was given."""

from __future__ import annotations

from textual.app import App
from textual.widgets import Static

from glmtui.ui.dialogs.load import LoadModal
from helpers import wait_for


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
