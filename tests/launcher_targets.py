"""What the launcher's tests ask it to run in a fork (importable from the project root: tests.launcher_targets)."""

from __future__ import annotations

import json
import os
import sys
import time


def show(args: list[str]) -> None:
    """Print what the child became: its arguments, glmtui's home, folder, parent, niceness, session, descriptors."""
    print(json.dumps({"args": args, "home": os.environ.get("GLMTUI_HOME"), "cwd": os.getcwd(), "ppid": os.getppid(),
                      "nice": os.nice(0), "leader": os.getsid(0) == os.getpid(),
                      "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
                      "torch": "torch" in sys.modules}), flush=True)


def exit_with(args: list[str]) -> None:
    sys.exit(int(args[0]))


def hang(args: list[str]) -> None:
    while True:
        time.sleep(1)
