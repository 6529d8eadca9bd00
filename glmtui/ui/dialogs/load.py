"""Ctrl+L: load a model — a folder (Tab completes), a catalogue key or a downloaded hub id, a mode, a
device and, where vLLM can run, the engine (glmtui's own or the managed vLLM server, as `--engine`).

A load that would not fit the free memory is refused with the reason, as Enter under Models does
(the same figures: ui/figures.py); Enter again loads it anyway. The app gives the dialog what it shows and
checks (the engine that loads next, the fit check) and does what it returns (the engine chosen, the load).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Optional

from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList, RadioButton, RadioSet, Static
from textual.widgets.option_list import Option

from glmtui import catalog
from glmtui.devices import device_problem, normalize_device

CANDIDATES_SHOWN = 12  # folder names listed under the load dialog's path
ENGINE_LABELS = {"transformers": "glmtui (transformers)", "vllm": "vLLM (managed server)"}


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
    if not text or not (catalog.looks_like_path(text) or "/" in text):
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


class LoadModal(ModalScreen[Optional[tuple[str, str, Optional[str], Optional[str]]]]):
    """Load a model: a folder, a catalogue key or a downloaded hub id, a mode and a device.

    Returns (spec, mode, device, engine); device is None where the dialog has no device field
    (a remote endpoint decides where its model runs). Where the app's engine can switch
    (engine/choose.SwitchingEngine: ``engine_kind`` is the one the next load runs on) and vLLM
    can run, the engine is chosen here too; else engine is None. ``fit_check(spec, mode, device)``:
    why that load would not fit, or None.
    """

    AUTO_FOCUS = "*"

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    DEFAULT_CSS = """
    LoadModal #engine-row { height: auto; margin-top: 1; display: none; }
    LoadModal #engine { layout: horizontal; width: 1fr; }
    LoadModal #engine RadioButton { margin-right: 2; }
    """

    def __init__(self, spec: str, mode: str, modes: Iterable[str], device: Optional[str] = None,
                 engine_kind: Optional[str] = None,
                 fit_check: Optional[Callable[[str, str, str], Optional[str]]] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.engine_kind = engine_kind
        self.fit_check = fit_check
        self.spec = spec
        self.mode = mode
        self.modes = tuple(modes)
        self.device = device
        self.armed: Optional[tuple] = None  # a load refused as too big once: the same one again goes ahead
        self.engine_note = ""  # why vLLM is not offered (shown nowhere; for tests and the curious)

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
            with Horizontal(id="engine-row", classes="field"):
                yield Label("Engine")
                current = self.engine_kind or "transformers"
                yield RadioSet(*[RadioButton(label, value=kind == current, id=f"engine-{kind}")
                                 for kind, label in ENGINE_LABELS.items()], id="engine", compact=True)
            yield Static(id="load-error")
            yield Static(Text("Enter loads · Tab completes a folder, then moves on · Esc cancels", style="dim"))

    def on_mount(self) -> None:
        ol = self.query_one("#mode", OptionList)
        if self.mode in self.modes:
            ol.highlighted = self.modes.index(self.mode)
        self.query_one("#spec", Input).focus()
        if self.device is not None and self.engine_kind is not None:
            self._check_vllm()

    # -------------------------------------------------------------- the engine choice

    @work(thread=True, exit_on_error=False)
    def _check_vllm(self) -> None:
        """Whether vLLM can run (an interpreter is run once: off the UI thread)."""
        from glmtui.engine.choose import vllm_offered

        offered, why = vllm_offered()
        try:
            self.app.call_from_thread(self._engines_known, offered, why)
        except RuntimeError:  # the app has ended meanwhile
            pass

    def _engines_known(self, offered: bool, why: str) -> None:
        self.engine_note = why
        if self.is_attached and (offered or self.engine_kind == "vllm"):
            self.query_one("#engine-row").display = True

    def chosen_engine(self) -> Optional[str]:
        if not self.query_one("#engine-row").display:
            return None
        pressed = self.query_one("#engine", RadioSet).pressed_button
        return (pressed.id or "").removeprefix("engine-") if pressed is not None else None

    # -------------------------------------------------------------- the rest

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
        error = self.query_one("#load-error", Static)
        if self.device is not None:
            field = self.query_one("#device", Input)
            problem = device_problem(field.value)
            if problem:
                error.update(Text(problem, style="bold red"))
                field.focus()
                return
            device = normalize_device(field.value)
        engine = self.chosen_engine()
        load = (spec, mode, device, engine)
        check = self.fit_check if self.device is not None else None  # an endpoint's server: its own memory
        too_big = check(spec, mode, device or "auto") if check is not None else None
        if too_big and self.armed != load:
            self.armed = load  # refused: the reason, and Enter again to go ahead
            text = Text(f"✗ {too_big}", style="bold red")
            text.append("\nEnter again loads it anyway · another mode or Esc does not", style="bold")
            error.update(text)
            return
        self.dismiss((spec, mode, device, engine))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self._submit()

    def action_cancel(self) -> None:
        self.dismiss(None)
