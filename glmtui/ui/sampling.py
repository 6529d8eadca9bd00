"""The monitor's sampling thread: a snapshot every interval, posted to the app as MonitorUpdate."""

from __future__ import annotations

import threading
from typing import Any, Callable

from textual.message import Message


class MonitorUpdate(Message):
    def __init__(self, snapshot: Any) -> None:
        super().__init__()
        self.snapshot = snapshot


def start_sampling(sampler: Any, interval: float, post: Callable[[Message], Any], stop: threading.Event) -> None:
    """Sample on a daemon thread until ``stop`` is set (at most every 0.25 s), then close the sampler."""

    def poll() -> None:
        while not stop.is_set():
            try:
                snapshot = sampler.sample()
            except Exception:  # noqa: BLE001 - sample() should never raise; keep going anyway
                snapshot = None
            if snapshot is not None and not stop.is_set():
                post(MonitorUpdate(snapshot))
            stop.wait(max(0.25, interval))
        close = getattr(sampler, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001 - closing: best effort
                pass

    threading.Thread(target=poll, name="glmtui-monitor", daemon=True).start()
