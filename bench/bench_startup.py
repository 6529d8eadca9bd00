"""Benchmark 3: startup — process start to the first painted screen, and the UI's import cost.

The installed ``glmtui`` runs in a real pseudo-terminal (100x30); the clock
stops when its first full frame (the footer's key hints) has been written.
Baselines measured in the same run: a bare ``python -c pass`` and an empty
Textual app painting its first frame in the same terminal, so the ratio shows
what glmtui adds on top of Textual itself. Also checks that importing the UI
does not import torch. Target: first screen < 1 s here.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EMPTY_APP = """
from textual.app import App
from textual.widgets import Footer, Header, Static
class Empty(App):
    BINDINGS = [("ctrl+q", "quit", "Quit")]
    def compose(self):
        yield Header(); yield Static("hello"); yield Footer()
Empty().run()
"""


def time_to_marker(argv: list[str], marker: bytes, env: dict, timeout: float = 30.0) -> float:
    """Seconds from spawning ``argv`` in a 100x30 pty until ``marker`` appears in its output."""
    import fcntl
    import termios

    pid, fd = pty.fork()
    if pid == 0:  # child
        os.execvpe(argv[0], argv, env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    start = time.perf_counter()
    seen = b""
    elapsed = None
    try:
        while time.perf_counter() - start < timeout:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
                if marker in seen:
                    elapsed = time.perf_counter() - start
                    break
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
    if elapsed is None:
        raise RuntimeError(f"{argv[0]} never showed {marker!r}; last output: {seen[-400:]!r}")
    return elapsed


def main() -> int:
    runs = int(os.environ.get("BENCH_RUNS", "5"))
    glmtui = shutil.which("glmtui") or str(Path(sys.executable).parent / "glmtui")
    home = tempfile.mkdtemp(prefix="glmtui-bench-")
    env = dict(os.environ, GLMTUI_HOME=home, TERM="xterm-256color", COLUMNS="100", LINES="30")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(EMPTY_APP)
        empty_app = f.name

    def median(fn) -> float:
        return statistics.median(fn() for _ in range(runs))

    bare = median(lambda: _time_process([sys.executable, "-c", "pass"]))
    textual_first = median(lambda: time_to_marker([sys.executable, empty_app], b"Quit", env))
    glmtui_first = median(lambda: time_to_marker([glmtui], b"Quit", env))
    import_ui = median(lambda: _time_process([sys.executable, "-c", "import glmtui.ui.app"]))
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, glmtui.cli, glmtui.ui.app; print(','.join(m for m in ('torch','transformers') if m in sys.modules))"],
        capture_output=True, text=True,
    ).stdout.strip()
    os.unlink(empty_app)
    shutil.rmtree(home, ignore_errors=True)
    print(f"runs: {runs} (medians)")
    print(f"python -c pass                      {bare * 1000:7.0f} ms")
    print(f"import glmtui.ui.app (process)      {import_ui * 1000:7.0f} ms   x{import_ui / bare:.2f} of bare python")
    print(f"empty Textual app, first frame      {textual_first * 1000:7.0f} ms")
    print(f"glmtui, first frame                 {glmtui_first * 1000:7.0f} ms   x{glmtui_first / textual_first:.2f} of the empty Textual app")
    print(f"torch/transformers imported by the UI: {heavy or 'none'}")
    print(f"target first screen < 1 s: {'met' if glmtui_first < 1.0 else 'NOT met'}")
    return 0


def _time_process(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
