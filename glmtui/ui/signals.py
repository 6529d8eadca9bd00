"""SIGTERM / SIGHUP leave the TUI as Ctrl+Q does, and a watchdog that ends the process if it then hangs."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from typing import Callable

SIGNAL_EXIT_GRACE = 5.0  # seconds the process may take to end after a signal, once all is saved


def install_exit_on_signals(on_signal: Callable[[int], None]) -> None:
    """SIGTERM, and SIGHUP when an SSH session drops, call ``on_signal(signum)`` on the running loop.

    The default action would kill the process mid-reply with the latest
    seconds of the reply unsaved and the worker never told to stop.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            pass  # not the main thread (tests) or no such signal here


def start_exit_watchdog(code: int, grace: float = SIGNAL_EXIT_GRACE) -> None:
    """After a signal, everything is saved by now: leave within ``grace`` s whatever happens next.

    With the terminal gone (a dropped SSH session), Textual's driver.close() was seen blocked
    for good on its writer thread's queue (stack: App._shutdown -> LinuxDriver.close ->
    WriterThread.stop -> Queue.put), leaving a glmtui that never exits."""
    def leave() -> None:
        time.sleep(grace)
        os._exit(code)

    threading.Thread(target=leave, name="glmtui-exit-watchdog", daemon=True).start()
