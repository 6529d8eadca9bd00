"""Real terminals for the front ends: a detached tmux session for the TUI, a pseudo-terminal for `glmtui chat`."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import wait_until

TMUX = shutil.which("tmux")
CHAT = [sys.executable, "-m", "glmtui.cli", "chat"]


def glmtui_command() -> str:
    """The installed ``glmtui`` command (the venv's own first); skips the test when there is none."""
    local = Path(sys.executable).parent / "glmtui"
    found = str(local) if local.exists() else shutil.which("glmtui")
    if found is None:
        pytest.skip("the glmtui command is not installed (pip install -e .)")
    return found


class Tmux:
    """One tmux session on its own socket; the screen is read back with capture-pane."""

    def __init__(self, socket: Path, name: str) -> None:
        self.socket = str(socket)
        self.name = name

    def run(self, *args: str, check: bool = True) -> str:
        assert TMUX is not None, "tmux is not installed"
        out = subprocess.run([TMUX, "-S", self.socket, *args], capture_output=True, text=True, timeout=30)
        if check and out.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def capture(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name)

    def wait_for(self, predicate, timeout: float, what: str) -> str:
        """The first screen that satisfies predicate(screen); fails with the last screen seen."""
        seen = [""]

        def ready() -> bool:
            seen[0] = self.capture()
            return predicate(seen[0])

        wait_until(ready, timeout, lambda: f"{what}; screen:\n{seen[0]}", interval=0.25)
        return seen[0]

    def alive(self) -> bool:
        assert TMUX is not None, "tmux is not installed"
        return subprocess.run([TMUX, "-S", self.socket, "has-session", "-t", self.name],
                              capture_output=True).returncode == 0


class Terminal:
    """`glmtui chat` (or any argv) on a pseudo-terminal."""

    def __init__(self, argv) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE, close_fds=True)
        os.close(slave)
        self.buffer = b""

    def _read_while(self, waiting, timeout: float, what) -> None:
        deadline = time.monotonic() + timeout
        while waiting():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what()} in {self.buffer[-500:]!r}")
            ready, _, _ = select.select([self.master], [], [], 0.1)  # blocks until output (or 0.1 s)
            if ready:
                try:
                    self.buffer += os.read(self.master, 65536)
                except OSError:
                    break

    def read_until(self, marker: bytes, timeout: float = 60.0) -> bytes:
        """Everything up to and including ``marker``; the rest stays buffered for the next read."""
        self._read_while(lambda: marker not in self.buffer, timeout, lambda: f"no {marker!r}")
        at = self.buffer.index(marker) + len(marker)
        seen, self.buffer = self.buffer[:at], self.buffer[at:]
        return seen

    def wait_output(self, count: int, timeout: float = 60.0) -> None:
        """Until at least ``count`` bytes arrived since the last read_until (a reply is that far in)."""
        self._read_while(lambda: len(self.buffer) < count, timeout, lambda: f"fewer than {count} bytes")

    def type(self, line: str) -> None:
        os.write(self.master, (line + "\n").encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.master)


def answer_line(text: str) -> str:
    """A reply as a pipe prints it: no leading newlines, one newline at the end."""
    text = text.lstrip("\n")
    return text if text.endswith("\n") else text + "\n"
