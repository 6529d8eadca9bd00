"""The doctor screen: ``glmtui doctor``'s checks inside the TUI (opened from the command palette).

The checks start child interpreters and touch the network, so they run on a
thread worker; the screen shows "checking…" until they are back, then one
line per check (verdict, what was found, the fix). ``r`` runs them again,
Esc closes. Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from rich.console import Group
from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from glmtui.doctor import Check, Request, run_checks, summary

STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def render_checks(checks: Optional[list[Check]]) -> Group:
    if checks is None:
        return Group(Text("checking… (torch is inspected in a separate process: a few seconds)", style="dim"))
    lines: list[Text] = []
    for c in checks:
        line = Text(f"{c.verdict:<4} ", style=STYLES.get(c.verdict, ""))
        line.append(f"{c.title}: ", style="bold")
        line.append(c.detail)
        lines.append(line)
        if c.fix:
            lines.append(Text(f"     fix: {c.fix}", style="dim"))
    fails = any(c.verdict == "fail" for c in checks)
    lines.append(Text(summary(checks), style="bold red" if fails else "bold"))
    return Group(*lines)


class DoctorScreen(ModalScreen):
    """``request``: what the app was started with (device, mode); ``options`` go to run_checks."""

    DEFAULT_CSS = """
    DoctorScreen { align: center middle; }
    DoctorScreen > #doctor-box { width: 90%; height: 80%; border: round $accent; padding: 0 1; }
    DoctorScreen #doctor-scroll { height: 1fr; }
    DoctorScreen #doctor-hint { height: 1; color: $text-muted; }
    """
    BINDINGS = [Binding("escape", "close", "Close"), Binding("r", "rerun", "Run again")]

    def __init__(self, request: Request = Request(), **options: Any) -> None:
        super().__init__()
        self.request = request
        self.options = options
        self.checks: Optional[list[Check]] = None
        self.running = False

    @classmethod
    def for_app(cls, app: Any) -> "DoctorScreen":
        """The checks for what the app runs: its device and mode (an endpoint's server decides both)."""
        if getattr(app, "endpoint", None):
            return cls(Request())
        return cls(Request(device=getattr(app, "device", "auto") or "auto", mode=getattr(app, "mode", None)))

    def compose(self) -> Iterable:
        with Vertical(id="doctor-box") as box:
            box.border_title = "Doctor"
            with VerticalScroll(id="doctor-scroll"):
                yield Static(render_checks(None), id="doctor-body")
            yield Static("r run again · Esc close", id="doctor-hint")

    def on_mount(self) -> None:
        self.action_rerun()

    def action_rerun(self) -> None:
        if self.running:
            return
        self.running = True
        self.checks = None
        self.query_one("#doctor-body", Static).update(render_checks(None))
        self.run_worker(self._check, thread=True, exclusive=True, name="doctor")

    def _check(self) -> None:
        try:
            checks = run_checks(self.request, **self.options)
        except Exception as exc:  # noqa: BLE001 - a bug in a check is a line, not a crash
            checks = [Check("doctor", "doctor", "fail", f"the checks stopped: {type(exc).__name__}: {exc}")]
        try:
            self.app.call_from_thread(self._show, checks)
        except RuntimeError:  # the app closed meanwhile
            pass

    def _show(self, checks: list[Check]) -> None:
        self.running = False
        if not self.is_attached:
            return
        self.checks = checks
        self.query_one("#doctor-body", Static).update(render_checks(checks))

    def action_close(self) -> None:
        self.dismiss()
