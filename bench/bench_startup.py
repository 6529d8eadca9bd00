"""Benchmark 3: startup — process start to the first painted screen, and the UI's import cost.

The installed ``glmtui`` runs in a real pseudo-terminal (100x30); the clock
stops when its first full frame (the footer's key hints) has been written.
Baselines measured in the same run: a bare ``python -c pass`` and an empty
Textual app painting its first frame in the same terminal, so the ratio shows
what glmtui adds on top of Textual itself. Three homes, in alternating rounds:
an empty one (a first run), and a populated one — 500 conversations of 10
messages, a remembered quantization mode and theme, a model folder on disk —
started warm, and started after dropping the OS page cache where the machine
allows it (root and a writable /proc/sys/vm/drop_caches; said when not). Also
checks that importing the UI does not import torch. Target: first screen < 1 s.

Bytecode: every process runs with its compiled modules kept in a cache of the run's own (filled by one
untimed start of each kind first), as an installed glmtui has them (pip compiles them). With
PYTHONDONTWRITEBYTECODE set, as in this project's shells, an editable install otherwise compiles every
glmtui module at every start — or not, wherever someone's __pycache__ happens to be fresh.
BENCH_BYTECODE=off runs the children in this shell's environment as it is instead.
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


def populate_home(home: Path, conversations: int = 500, messages: int = 10) -> None:
    """A user's second start: history, a remembered mode and theme, a model folder on disk."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    os.environ["GLMTUI_HOME"] = str(home)
    from glmtui.config import default_paths
    from glmtui.store import HistoryStore
    from glmtui.ui import prefs

    paths = default_paths()
    store = HistoryStore.open(paths.history_db)
    try:
        for i in range(conversations):
            cid = store.create_conversation(f"conversation {i} about GPUs and memory", "tiny-glm", "", {})
            for j in range(messages):
                role = "user" if j % 2 == 0 else "assistant"
                store.add_message(cid, role, f"message {j} of conversation {i}: " + "some words " * 40)
    finally:
        store.close()
    prefs.save_prefs(paths.config_file, {"mode": "bf16", "theme": "textual-dark"})
    import tiny_models

    tiny_models.build_native_glm(paths.models_dir / "tiny-glm")


def drop_caches() -> str | None:
    """Empty the OS page cache; None when done, else why it could not be."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import LoadWatch, alternating

    runs = int(os.environ.get("BENCH_RUNS", "5"))
    glmtui = shutil.which("glmtui") or str(Path(sys.executable).parent / "glmtui")
    empty_home = tempfile.mkdtemp(prefix="glmtui-bench-")
    full_home = Path(tempfile.mkdtemp(prefix="glmtui-bench-full-"))
    watch = LoadWatch()
    print(watch.sample("before"), flush=True)
    populate_home(full_home)

    bytecode = bytecode_env()

    def env_for(home) -> dict:
        return dict(bytecode, GLMTUI_HOME=str(home), TERM="xterm-256color", COLUMNS="100", LINES="30")

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(EMPTY_APP)
        empty_app = f.name

    cold_refused = drop_caches()
    ways = {
        "textual": lambda: time_to_marker([sys.executable, empty_app], b"Quit", env_for(empty_home)),
        "empty": lambda: time_to_marker([glmtui], b"Quit", env_for(empty_home)),
        "populated": lambda: time_to_marker([glmtui], b"Quit", env_for(full_home)),
    }
    if cold_refused is None:
        ways["cold"] = lambda: (drop_caches(), time_to_marker([glmtui], b"Quit", env_for(full_home)))[1]
    times: dict[str, list[float]] = {w: [] for w in ways}
    for way in ways:  # untimed: fills the bytecode cache (and the page cache)
        ways[way]()
    for order in alternating(runs, list(ways)):
        for way in order:
            times[way].append(ways[way]())

    def median(fn) -> float:
        return statistics.median(fn() for _ in range(runs))

    bare = median(lambda: _time_process([sys.executable, "-c", "pass"], bytecode))
    import_ui = median(lambda: _time_process([sys.executable, "-c", "import glmtui.ui.app"], bytecode))
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys, glmtui.cli, glmtui.ui.app; "
         "print(','.join(m for m in ('torch','transformers') if m in sys.modules))"],
        capture_output=True, text=True,
    ).stdout.strip()
    os.unlink(empty_app)
    shutil.rmtree(empty_home, ignore_errors=True)
    shutil.rmtree(full_home, ignore_errors=True)
    if bytecode is not os.environ:
        shutil.rmtree(bytecode["PYTHONPYCACHEPREFIX"], ignore_errors=True)

    def fmt(way: str) -> str:
        t = times[way]
        return f"{statistics.median(t) * 1000:7.0f} ms ({min(t) * 1000:.0f}-{max(t) * 1000:.0f})"

    textual_first = statistics.median(times["textual"])
    print(f"runs: {runs} alternating rounds (medians, min-max); bytecode: "
          + ("cached (in a folder of this run's own), as installed" if bytecode is not os.environ else
             f"this shell's (BENCH_BYTECODE=off; PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE')})"))
    print(f"python -c pass                          {bare * 1000:7.0f} ms")
    print(f"import glmtui.ui.app (process)          {import_ui * 1000:7.0f} ms   "
          f"x{import_ui / bare:.2f} of bare python")
    print(f"empty Textual app, first frame          {fmt('textual')}")
    for way, label in (("empty", "glmtui, empty home (first run)"), ("populated", "glmtui, 500 conversations, warm"),
                       ("cold", "glmtui, 500 conversations, cold cache")):
        if way in times:
            ratio = statistics.median(times[way]) / textual_first
            print(f"{label:39} {fmt(way)}   x{ratio:.2f} of the empty Textual app")
    if cold_refused is not None:
        print(f"cold OS cache: not measured — dropping the page cache was refused here ({cold_refused})")
    print(f"torch/transformers imported by the UI: {heavy or 'none'}")
    print(watch.sample("after"))
    print(watch.verdict())
    worst = max(statistics.median(t) for w, t in times.items() if w != "textual")
    print(f"\nHEADLINE first screen, slowest home {worst * 1000:.0f} ms "
          f"(x{worst / textual_first:.2f} of an empty Textual app; target < 1 s: {'met' if worst < 1.0 else 'NOT met'})"
          f"{' [under load]' if watch.under_load else ''}")
    return 0


def bytecode_env():
    """The children's environment: their bytecode cached in a folder of this run's own (see the docstring),
    or, with BENCH_BYTECODE=off, this shell's environment itself."""
    if os.environ.get("BENCH_BYTECODE", "").lower() in ("off", "0", "no"):
        return os.environ
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="glmtui-bench-pyc-")
    return env


def _time_process(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
