"""Ctrl+O: a conversation's system prompt and generation parameters, and the thinking switch of a
reasoning model whose template has one (GenerationParams.thinking; engine/reasoning.py applies it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

from rich.text import Text
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, TextArea

from glmtui.engine.api import MODES
from glmtui.engine.events import GenerationParams

# the thinking choice as shown -> GenerationParams.thinking (None: the template's own default)
THINKING = (("the model's default", "default", None), ("on: think first", "on", True),
            ("off: answer at once", "off", False))


def loaded_thinking_switch(app: Any) -> bool:
    """Whether the model loaded in ``app`` has a template that reads ``enable_thinking``.

    A local load's folder is read (engine/template_files.py); a server's template (--endpoint) is not
    visible from here, so it is not offered there."""
    from glmtui.engine.template_files import has_thinking_switch

    loaded = getattr(app, "loaded", None)
    if loaded is None or loaded.mode not in MODES:
        return False
    folder = Path(loaded.model_path)
    if not folder.is_dir():  # the managed vLLM engine reports its server: the folder is the last local load's
        last = getattr(getattr(app, "model", None), "last_load", None)
        if last is None:
            return False
        folder = Path(last[0])
    return has_thinking_switch(folder)


class SettingsModal(ModalScreen[Optional[tuple[str, dict]]]):
    """Per-conversation system prompt and generation parameters; ``thinking_switch`` adds the thinking choice.
    ``system_prompt`` None: a completion's parameters (no system turn, so no field for one)."""

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

    def __init__(self, system_prompt: Optional[str], params: GenerationParams, *, thinking_switch: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.system_prompt = system_prompt
        self.params = params
        self.thinking_switch = thinking_switch

    def compose(self) -> Iterable:
        with Vertical(classes="dialog settings"):
            if self.system_prompt is None:  # a completion: raw text, no system turn
                yield Label("Completion settings (this text)", classes="dialog-title")
            else:
                yield Label("Chat settings (this conversation)", classes="dialog-title")
                yield Label("System prompt (Tab moves on)")
                yield TextArea(self.system_prompt, id="system-prompt", soft_wrap=True, show_line_numbers=False,
                               tab_behavior="focus", compact=True, placeholder="(none)")
            for key, label, _cast, _lo, _hi in self.FIELDS:
                with Horizontal(classes="field"):
                    yield Label(label)
                    yield Input(str(getattr(self.params, key)), id=f"param-{key}", compact=True)
            if self.thinking_switch:
                current = next(v for _shown, v, value in THINKING if value == self.params.thinking)
                with Horizontal(classes="field"):
                    yield Label("Thinking (reasoning model)")
                    yield Select([(shown, v) for shown, v, _value in THINKING], value=current, allow_blank=False,
                                 id="param-thinking", compact=True)
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
        if self.thinking_switch:
            chosen = self.query_one("#param-thinking", Select).value
            values["thinking"] = next(value for _shown, v, value in THINKING if v == chosen)
        prompt = self.query_one("#system-prompt", TextArea).text if self.system_prompt is not None else ""
        self.dismiss((prompt, values))

    def _error(self, message: str) -> None:
        self.query_one("#settings-error", Static).update(Text(message, style="bold red"))

    def action_cancel(self) -> None:
        self.dismiss(None)
