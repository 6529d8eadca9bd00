"""The command palette's entries: every action with its title, help and key (or "palette only")."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from textual.app import App, SystemCommand
from textual.binding import Binding

# (action, title, help) for the command palette; keys are added from the app's BINDINGS
COMMAND_LIST = (
    ("stop", "Stop reply", "Stop the reply being written; the partial text is kept, marked stopped"),
    ("regenerate", "Regenerate", "Write the last reply again"),
    ("edit_last", "Edit last prompt", "Put the last prompt back in the input to edit and resend"),
    ("new_chat", "New chat", "Start an empty conversation"),
    ("completion_mode", "Completion mode", "Continue raw text with the model (base models open in it; "
     "Ctrl+G continues, Ctrl+R regenerates, Ctrl+E edits the prompt, Esc back)"),
    ("next_pane", "Switch pane", "Chat → History → Models → Monitor"),
    ("search", "Search history", "Full-text search over every conversation"),
    ("rename", "Rename conversation", "Rename the current (or highlighted) conversation"),
    ("delete_conversation", "Delete conversation", "Delete the current (or highlighted) conversation, after asking"),
    ("export", "Export conversation", "Write Markdown and JSON copies to the data folder"),
    ("settings", "Chat settings", "System prompt, temperature, top-p, max new tokens, repetition penalty"),
    ("load", "Load model", "Load a model folder or catalogue model, in a quantization mode, on a device"),
    ("unload", "Unload model", "Free the loaded model's memory"),
    ("reload", "Reload model", "Load the last model again, in the same mode (after the engine process ended)"),
    ("kill_engine", "Kill engine process", "End the model's process at once (a hung engine); the reply so far is kept"),
    ("quantization", "Change quantization", "bf16 / fp16 / fp32 / int8 / int4, with predicted memory"),
    ("download_model", "Download model", "Download the model highlighted in Models"),
    ("cancel_download", "Cancel download", "Cancel the highlighted model's download"),
    ("toggle_download_source", "Switch download source", "Download from Hugging Face or ModelScope"),
    ("set_download_endpoint", "Download endpoint", "The current source's URL: a mirror, or empty for the "
     "public hub (saved under [hub] in config.toml)"),
    ("toggle_engine_log", "Engine log", "Show or hide the last lines of the engine process's log under Models"),
    ("cycle_mode", "Switch mode: Chat / Tool / Code", "Tool: the model may call tools (built-ins and "
     "~/.config/glmtui/tools/*.json); Code: it may run Python in a kernel; each call after you confirm"),
    ("restart_kernel", "Restart code kernel", "A fresh Jupyter kernel for Code mode (variables are lost)"),
    ("toggle_auto_tools", "Auto-run built-in tools", "Run the built-in tools (time, arithmetic, units) "
     "without asking; on/off, saved"),
    ("toggle_mouse", "Release the mouse", "Let the terminal select and copy text itself (over SSH too); "
     "again gives the mouse back to glmtui"),
)

# keys bound by a pane's list rather than the app
PANE_KEYS = {"download_model": "d in Models", "cancel_download": "x in Models",
             "toggle_download_source": "s in Models", "set_download_endpoint": "e in Models",
             "toggle_engine_log": "l in Models"}


def system_commands(app: App, textual_commands: Iterable[SystemCommand]) -> Iterator[SystemCommand]:
    """glmtui's commands, Doctor, then Textual's own (``textual_commands``), each with its key."""
    keys: dict[str, str] = {}
    for binding in app.BINDINGS:
        if isinstance(binding, Binding):
            keys.setdefault(binding.action, app.get_key_display(binding))
    for action, pane_key in PANE_KEYS.items():
        keys.setdefault(action, pane_key)
    for action in ("completion_mode", "restart_kernel", "toggle_auto_tools"):
        keys.setdefault(action, "palette only")
    for action, title, help_text in COMMAND_LIST:
        key = keys.get(action)
        yield SystemCommand(title, f"{help_text}  [{key}]" if key else help_text, _runner(app, action))
    from .doctor import DoctorScreen  # `glmtui doctor` as a screen

    yield SystemCommand("Doctor", "Check the driver, torch build, quantizers, disk, hubs and history  "
                        "[palette only]", lambda: app.push_screen(DoctorScreen.for_app(app)))
    # Textual's own commands: the key where glmtui binds one, else say there is none
    textual_keys = {"Theme": keys.get("change_theme"), "Quit": keys.get("quit")}
    for command in textual_commands:
        shown = textual_keys.get(command.title) or "palette only"
        yield command._replace(help=f"{command.help}  [{shown}]")


def _runner(app: App, action: str) -> Callable[[], Any]:
    async def run() -> None:
        await app.run_action(action)

    return run
