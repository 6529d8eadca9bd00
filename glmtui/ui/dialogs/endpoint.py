"""The download endpoint of one source (``e`` in the Models pane): a mirror's URL, or empty for the
public hub. Saved under ``[hub]`` in config.toml by the app; a variable set in the environment
(``HF_ENDPOINT`` / ``MODELSCOPE_ENDPOINT``) still wins, and the dialog says so."""

from __future__ import annotations

from typing import Iterable, Optional

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from glmtui.mirrors import ENDPOINT_SETTINGS, NAMES, PUBLIC, EndpointInUse, endpoint_problem


class EndpointModal(ModalScreen[Optional[str]]):
    """Returns the URL to save ("" for the public hub), or None when cancelled."""

    AUTO_FOCUS = "#endpoint"

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: EndpointInUse, **kwargs) -> None:
        super().__init__(**kwargs)
        self.current = current

    def compose(self) -> Iterable:
        source = self.current.source
        key, var = ENDPOINT_SETTINGS[source]
        with Vertical(classes="dialog"):
            yield Label(f"{NAMES[source]} download endpoint", classes="dialog-title")
            yield Input(self.current.saved, placeholder=f"{PUBLIC[source]} (empty: the public hub)", id="endpoint")
            note = Text(f"Saved as {key} under [hub] in config.toml.", style="dim")
            if self.current.set_by == var:
                note.append(f"\n{var}={self.current.url} is set in the environment and wins over it.",
                            style="yellow")
            yield Static(note, id="endpoint-note")
            yield Static(id="endpoint-problem")
            yield Static(Text("Enter saves · Esc cancels", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#endpoint-problem", Static).display = False

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        url = event.value.strip().rstrip("/")
        problem = endpoint_problem(url)
        if problem is not None:
            box = self.query_one("#endpoint-problem", Static)
            box.update(Text(f"✗ {problem}", style="bold red"))
            box.display = True
            return
        self.dismiss(url)

    def action_cancel(self) -> None:
        self.dismiss(None)
