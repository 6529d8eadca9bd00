"""Small modal dialogs: confirm, rename, quantization. The load and settings dialogs live in ui/dialogs/
(re-exported here)."""

from __future__ import annotations

from typing import Iterable, Optional

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from .dialogs.load import CANDIDATES_SHOWN, LoadModal, PathInput, complete_folder
from .dialogs.settings import SettingsModal

__all__ = ["CANDIDATES_SHOWN", "ConfirmModal", "LoadModal", "ModeModal", "PathInput", "SettingsModal", "TextModal",
           "complete_folder"]


class ConfirmModal(ModalScreen[bool]):
    """Yes/no; Y confirms, N or Esc cancels."""

    AUTO_FOCUS = "#no"

    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str, yes: str = "Delete", **kwargs) -> None:
        super().__init__(**kwargs)
        self.question = question
        self.yes = yes

    def compose(self) -> Iterable:
        with Vertical(classes="dialog"):
            yield Static(Text(self.question), classes="dialog-text")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("Cancel (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class TextModal(ModalScreen[Optional[str]]):
    """One line of text (rename); Enter saves, Esc cancels."""

    AUTO_FOCUS = "*"

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = "", placeholder: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.title_text = title
        self.value = value
        self.placeholder = placeholder

    def compose(self) -> Iterable:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Input(self.value, placeholder=self.placeholder, id="value")
            yield Static(Text("Enter saves · Esc cancels", style="dim"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ModeModal(ModalScreen[Optional[str]]):
    """Choose a quantization mode; rows carry predicted memory and fit verdicts.

    ``choices()`` returns (rows, note, refusals): a prompt per mode, what the figures
    assume, and {mode: reason} for the modes that would not fit.  It is asked again by
    :meth:`refresh_figures` (the exact figures arrive after the dialog opened).  Choosing a
    refused mode shows the reason and does nothing; Enter on it again chooses it anyway.
    """

    AUTO_FOCUS = "*"

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: str, rows: Iterable[tuple[str, Text]] = (), note: str = "",
                 refusals: Optional[dict[str, str]] = None, *, choices=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.current = current
        self.choices = choices
        if choices is not None:
            rows, note, refusals = choices()
        self.rows = list(rows)
        self.note = note
        self.refusals = dict(refusals or {})
        self.armed: Optional[str] = None  # a refused mode chosen once: Enter again confirms it
        self._composed = False

    def compose(self) -> Iterable:
        with Vertical(classes="dialog"):
            yield Label("Quantization", classes="dialog-title")
            yield OptionList(*[Option(prompt, id=mode) for mode, prompt in self.rows], id="modes")
            yield Static(Text(self.note, style="dim"), id="modes-note")
            yield Static(id="mode-refusal")
            yield Static(Text("Enter chooses (reloads a loaded model) · Esc cancels", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#modes-note", Static).display = bool(self.note)
        self.query_one("#mode-refusal", Static).display = False
        ol = self.query_one("#modes", OptionList)
        ids = [m for m, _ in self.rows]
        if self.current in ids:
            ol.highlighted = ids.index(self.current)
        ol.focus()
        self._composed = True
        self.refresh_figures()  # figures that arrived between the dialog's creation and now

    def refresh_figures(self) -> None:
        """Ask ``choices`` again (the exact figures came in) and show them in place."""
        if self.choices is None or not self._composed:
            return  # on_mount asks once its widgets are there
        rows, note, refusals = self.choices()
        ol = self.query_one("#modes", OptionList)
        for mode, prompt in rows:
            try:
                ol.replace_option_prompt(mode, prompt)
            except Exception:  # noqa: BLE001 - a mode the list does not have: nothing to replace
                pass
        self.rows, self.note, self.refusals = list(rows), note, dict(refusals)
        box = self.query_one("#modes-note", Static)
        box.update(Text(note, style="dim"))
        box.display = bool(note)
        if self.armed is not None and self.armed not in self.refusals:
            self._disarm()
        elif self.armed is not None:
            self._show_refusal(self.armed)

    def _show_refusal(self, mode: str) -> None:
        text = Text("✗ ", style="bold red")
        text.append(f"{mode} would not fit: {self.refusals[mode]}", style="bold red")
        text.append("\nEnter again loads it anyway · another mode or Esc does not", style="bold")
        box = self.query_one("#mode-refusal", Static)
        box.update(text)
        box.display = True

    def _disarm(self) -> None:
        self.armed = None
        self.query_one("#mode-refusal", Static).display = False

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        if self.armed is not None and event.option.id != self.armed:
            self._disarm()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        mode = event.option.id
        if mode in self.refusals and self.armed != mode:
            self.armed = mode  # refused: the reason, and a second press to go ahead
            self._show_refusal(mode)
            return
        self.dismiss(mode)

    def action_cancel(self) -> None:
        self.dismiss(None)
