"""The installed ``glmtui`` in a real terminal: a detached tmux session at 100x30.

Loads a tiny real model with ``--model``, types a question, presses Enter and
reads the screen back with ``capture-pane``. Skipped only when tmux is not
installed. ``GLMTUI_SAVE_SCREEN=1`` also writes the captured screen to
docs/screen.txt.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import pytest

from terminals import TMUX, Tmux, glmtui_command

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")
ROOT = Path(__file__).resolve().parents[2]


def _settings_typed(screen: str) -> bool:
    """The dialog shows temperature 0 and 16 new tokens, and the system prompt stayed empty."""
    lines = screen.splitlines()
    rows = [i for i, line in enumerate(lines) if "System prompt (Tab moves on)" in line]
    system = lines[rows[0] + 1].replace("█", "").strip() if rows and rows[0] + 1 < len(lines) else "?"
    return (system in ("", "(none)") and re.search(r"Temperature \(0 = greedy\) +0 ", screen) is not None
            and re.search(r"Max new tokens +16 ", screen) is not None)


def _type_settings(tmux: Tmux) -> None:
    """Ctrl+O, then system prompt -> temperature 0 -> top-p -> max new tokens 16, checked on the screen.
    On a loaded machine the first keys can arrive before the dialog has taken focus; then the dialog
    is cancelled and the keys are typed again, later (three tries)."""
    for attempt in range(3):
        tmux.run("send-keys", "-t", tmux.name, "C-o")
        tmux.wait_for(lambda s: "Chat settings" in s, 20, "the settings dialog")
        time.sleep(0.5 * (attempt + 1))  # let the dialog take focus before typing into it
        for keys in (["Tab"], ["C-u"], ["-l", "0"], ["Tab", "Tab"], ["C-u"], ["-l", "16"]):
            tmux.run("send-keys", "-t", tmux.name, *keys)
            time.sleep(0.2)
        try:
            tmux.wait_for(_settings_typed, 10, "temperature 0 and 16 new tokens typed")
            return
        except AssertionError:
            if attempt == 2:
                raise
        tmux.run("send-keys", "-t", tmux.name, "Escape")
        tmux.wait_for(lambda s: "Chat settings" not in s, 20, "the settings dialog to close")


@pytest.mark.slow
def test_glmtui_in_tmux_loads_a_model_and_answers(chatglm3_dir, tmp_path):
    glmtui = glmtui_command()
    home = tmp_path / "home"
    tmux = Tmux(tmp_path / "tmux.sock", f"glmtui-{uuid.uuid4().hex[:8]}")
    command = (
        f"env -u COLUMNS -u LINES GLMTUI_HOME={home} TERM=xterm-256color COLORTERM=truecolor "
        f"{glmtui} --model {chatglm3_dir} --mode fp32 --device cpu"
    )
    tmux.run("-f", "/dev/null", "new-session", "-d", "-s", tmux.name, "-x", "100", "-y", "30", command)
    try:
        model = chatglm3_dir.name
        tmux.wait_for(lambda s: f"● {model} fp32 cpu" in s, 120, "the model to load")
        # short replies keep the test quick: temperature 0 (greedy: the same reply every run), 16 new tokens
        _type_settings(tmux)
        tmux.run("send-keys", "-t", tmux.name, "C-s")
        tmux.wait_for(lambda s: "T 0 · top-p 0.8 · max 16" in s, 20, "the new settings in the chat header")

        tmux.run("send-keys", "-t", tmux.name, "-l", "What is GLM?")
        tmux.run("send-keys", "-t", tmux.name, "Enter")
        tmux.wait_for(lambda s: "tokens · TTFT" in s and "tok/s" in s, 120, "the reply and its stats")
        # the toasts ("Model loaded", "Settings saved") time out and uncover the reply
        screen = tmux.wait_for(lambda s: "Model loaded" not in s and "Settings saved" not in s, 20, "toasts to go")
        lines = screen.splitlines()
        assert len(lines) == 30 and max(len(line) for line in lines) <= 100
        assert "You" in screen and "What is GLM?" in screen  # the prompt in the reply area
        assert model in screen  # the reply's header names the model
        assert "TTFT" in screen and "prompt" in screen
        footer = lines[-1]
        # the footer at 100 columns: whole keys only (it was cut as "^f Sea▏"), Load/Quant/Unload kept
        assert "⏎ Send" in footer and "^l Load" in footer and "f8 Quant" in footer and "f9 Unload" in footer
        keys, _, palette = footer.partition("▏")
        assert palette.strip() == "^p palette" and keys.rstrip().endswith(("Quant", "Unload", "Load", "Search"))
        assert "Chat" in lines[0] and "History" in lines[0]  # the pane bar at 100 columns
        if os.environ.get("GLMTUI_SAVE_SCREEN"):
            (ROOT / "docs" / "screen.txt").write_text(screen, encoding="utf-8")

        tmux.run("send-keys", "-t", tmux.name, "C-q")
        deadline = time.monotonic() + 20
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not tmux.alive(), "glmtui did not quit on Ctrl+Q"
    finally:
        tmux.run("kill-server", check=False)
