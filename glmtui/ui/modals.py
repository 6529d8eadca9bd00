"""Modal dialogs: confirm, rename, chat settings, load a model (with folder completion), quantization."""

from __future__ import annotations

import os
from typing import Iterable, Optional

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from glmtui import catalog
from glmtui.devices import device_problem, normalize_device
from glmtui.engine.events import GenerationParams

CANDIDATES_SHOWN = 12  # folder names listed under the load dialog's path


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


class SettingsModal(ModalScreen[Optional[tuple[str, dict]]]):
    """Per-conversation system prompt and generation parameters."""

    AUTO_FOCUS = "*"

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    FIELDS = (
        ("temperature", "Temperature (0 = greedy)", float, 0.0, 5.0),
        ("top_p", "Top-p", float, 0.0, 1.0),
        ("max_new_tokens", "Max new tokens", int, 1, 1_000_000),
        ("repetition_penalty", "Repetition penalty", float, 0.5, 5.0),
    )

    def __init__(self, system_prompt: str, params: GenerationParams, **kwargs) -> None:
        super().__init__(**kwargs)
        self.system_prompt = system_prompt
        self.params = params

    def compose(self) -> Iterable:
        with Vertical(classes="dialog settings"):
            yield Label("Chat settings (this conversation)", classes="dialog-title")
            yield Label("System prompt (Tab moves on)")
            yield TextArea(self.system_prompt, id="system-prompt", soft_wrap=True, show_line_numbers=False,
                           tab_behavior="focus", compact=True, placeholder="(none)")
            for key, label, _cast, _lo, _hi in self.FIELDS:
                with Horizontal(classes="field"):
                    yield Label(label)
                    yield Input(str(getattr(self.params, key)), id=f"param-{key}", compact=True)
            yield Static(id="settings-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (Ctrl+S)", variant="primary", id="save", compact=True)
                yield Button("Cancel (Esc)", id="cancel", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_save()

    def action_save(self) -> None:
        values: dict = {}
        for key, label, cast, lo, hi in self.FIELDS:
            raw = self.query_one(f"#param-{key}", Input).value.strip()
            try:
                value = cast(raw)
            except ValueError:
                self._error(f"{label}: “{raw}” is not a {'whole ' if cast is int else ''}number")
                return
            if not lo <= value <= hi:
                self._error(f"{label} must be between {lo} and {hi}")
                return
            values[key] = value
        self.dismiss((self.query_one("#system-prompt", TextArea).text, values))

    def _error(self, message: str) -> None:
        self.query_one("#settings-error", Static).update(Text(message, style="bold red"))

    def action_cancel(self) -> None:
        self.dismiss(None)


class PathInput(Input):
    """The load dialog's model box. Tab completes folder names as a shell does; focus keeps the
    text and puts the cursor at its end (select-all on focus let the next key wipe a path)."""

    BINDINGS = [Binding("tab", "complete", "Complete", show=False)]

    class Candidates(Message):
        """Folders that match what was typed (empty: nothing to list)."""

        def __init__(self, names: list[str]) -> None:
            super().__init__()
            self.names = names

    _listed_for: Optional[str] = None  # the text whose candidates are shown (set before Input's own __init__)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, select_on_focus=False, **kwargs)

    def on_focus(self) -> None:  # before Input's own focus handler, which leaves the cursor alone
        self.cursor_position = len(self.value)

    def action_complete(self) -> None:
        """Complete the folder name; with nothing (more) to complete, Tab moves on as usual."""
        completed, names = complete_folder(self.value)
        if completed != self.value:
            self.value = completed
            self.cursor_position = len(completed)
        elif not names or self._listed_for == self.value:
            self.screen.focus_next()
            return
        self._listed_for = self.value if names else None
        self.post_message(self.Candidates(names))

    def watch_value(self, value: str) -> None:  # after Input's own watcher
        if value != self._listed_for and self._listed_for is not None:
            self._listed_for = None
            self.post_message(self.Candidates([]))


def complete_folder(text: str) -> tuple[str, list[str]]:
    """Shell-like completion of a folder path: (the text completed to the folders' common
    prefix, the matching folder names when more than one matches). A model folder (it
    has a config.json) is complete as typed; hidden folders are offered only after a dot."""
    if not text or not (catalog._looks_like_path(text) or "/" in text):  # noqa: SLF001 - the catalogue's rule
        return text, []
    expanded = os.path.expanduser(text)
    if os.path.isfile(os.path.join(expanded, "config.json")):
        return text, []
    head, tail = os.path.split(expanded)
    try:
        with os.scandir(head or ".") as entries:
            names = sorted(e.name for e in entries if e.name.startswith(tail) and e.is_dir()
                           and (tail.startswith(".") or not e.name.startswith(".")))
    except OSError:
        return text, []
    if not names:
        return text, []
    stem = text[: len(text) - len(tail)]
    if len(names) == 1:
        return stem + names[0] + "/", []
    return stem + os.path.commonprefix(names), names


class LoadModal(ModalScreen[Optional[tuple[str, str, Optional[str]]]]):
    """Load a model: a folder, a catalogue key or a downloaded hub id, a mode and a device.

    Returns (spec, mode, device); device is None where the dialog has no device field
    (a remote endpoint decides where its model runs).
    """

    AUTO_FOCUS = "*"

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, spec: str, mode: str, modes: Iterable[str], device: Optional[str] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.mode = mode
        self.modes = tuple(modes)
        self.device = device

    def compose(self) -> Iterable:
        with Vertical(classes="dialog load"):
            yield Label("Load a model", classes="dialog-title")
            yield PathInput(self.spec, placeholder="model folder, catalogue key (chatglm3-6b) or org/name", id="spec")
            yield Static(id="spec-candidates")
            yield Label("Quantization")
            options = [Option(m, id=m) for m in self.modes]
            yield OptionList(*options, id="mode")
            if self.device is not None:
                with Horizontal(classes="field"):
                    yield Label("Device (auto, cpu, cuda:N)")
                    yield Input(self.device, id="device", compact=True)
            yield Static(id="load-error")
            yield Static(Text("Enter loads · Tab completes a folder, then moves on · Esc cancels", style="dim"))

    def on_mount(self) -> None:
        ol = self.query_one("#mode", OptionList)
        if self.mode in self.modes:
            ol.highlighted = self.modes.index(self.mode)
        self.query_one("#spec", Input).focus()

    def on_path_input_candidates(self, message: PathInput.Candidates) -> None:
        shown = message.names[:CANDIDATES_SHOWN]
        more = len(message.names) - len(shown)
        text = Text("  ".join(f"{name}/" for name in shown) + (f"  … {more} more" if more > 0 else ""), style="dim")
        box = self.query_one("#spec-candidates", Static)
        box.update(text)
        box.display = bool(message.names)

    def _submit(self) -> None:
        spec = self.query_one("#spec", Input).value.strip()
        ol = self.query_one("#mode", OptionList)
        mode = self.modes[ol.highlighted] if ol.highlighted is not None else self.mode
        if not spec:
            self.dismiss(None)
            return
        device = None
        if self.device is not None:
            field = self.query_one("#device", Input)
            problem = device_problem(field.value)
            if problem:
                self.query_one("#load-error", Static).update(Text(problem, style="bold red"))
                field.focus()
                return
            device = normalize_device(field.value)
        self.dismiss((spec, mode, device))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self._submit()

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

    def __init__(self, current: str, rows: list[tuple[str, Text]] = (), note: str = "",
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
