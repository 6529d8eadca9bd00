"""ExactCounts: the exact memory figures of model folders, counted by engine/predict.py in a subprocess.

One count runs at a time, on a daemon thread of its own (not a Textual worker: those run in the
event loop's default executor, which the end of ``App.run`` waits for, so quitting waited for a
running count). A newer request replaces one still waiting; ``cancel``/``close`` end a running
predictor process at once. Results arrive through ``arrived()``, called on the counting thread.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Optional

from glmtui.engine import memory

Key = tuple[str, str]  # (resolved folder, "cuda" / "cpu")
PREDICTOR_MODULE = "glmtui.engine.predict"


def count_key(folder: str | Path, device: str) -> Key:
    return (str(Path(folder).resolve()), "cuda" if str(device).startswith("cuda") else "cpu")


class ExactCounts:
    def __init__(self, arrived: Callable[[], object]) -> None:
        self._arrived = arrived
        self.results: dict[Key, memory.ExactResult] = {}
        self._asked: set[Key] = set()  # running, waiting or done
        self._pending: Optional[Key] = None
        self._running: Optional[Key] = None
        self._generation = 0  # bumped by cancel: a count started before it is dropped
        self._closed = False
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: Optional[threading.Thread] = None

    def result(self, folder: str | Path, device: str) -> Optional[memory.ExactResult]:
        """The count for ``folder`` on ``device`` when it has arrived; else None, and it is asked for."""
        key = count_key(folder, device)
        with self._lock:
            found = self.results.get(key)
            if found is None and key not in self._asked and not self._closed:
                self._asked.add(key)
                if self._pending is not None:  # replaced before it ran: asked again when next shown
                    self._asked.discard(self._pending)
                self._pending = key
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="glmtui-exact-count", daemon=True)
                    self._thread.start()
                self._wake.notify()
        return found

    def deliver(self, key: Key, result: memory.ExactResult) -> None:
        """Keep ``result`` for ``key`` and tell the app (the counting thread, or a caller with a result)."""
        with self._lock:
            if self._closed:
                return
            self.results[key] = result
            self._asked.add(key)
        self._arrived()

    def cancel(self) -> None:
        """Drop the waiting count and end a running predictor now; both are asked again when next shown."""
        with self._lock:
            self._generation += 1
            for key in (self._pending, self._running):
                if key is not None and key not in self.results:
                    self._asked.discard(key)
            self._pending = None
            running = self._running is not None
        if running:
            kill_predictors()

    def close(self) -> None:
        """Quitting: nothing more is counted or delivered; a running predictor ends at once."""
        with self._lock:
            self._closed = True
            self._wake.notify()
        self.cancel()

    @property
    def busy(self) -> bool:
        return self._running is not None

    def _run(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._closed or self._pending is None:
                    return
                key: Key = self._pending
                self._pending, self._running, generation = None, key, self._generation
            try:
                result = memory.predict_exact_subprocess(key[0], key[1])
            except Exception as exc:  # noqa: BLE001 - it should not raise; if it does, the estimate stays
                result = memory.ExactResult({}, f"exact count failed: {type(exc).__name__}: {exc}")
            with self._lock:
                self._running = None
                dropped = generation != self._generation
            if not dropped:
                self.deliver(key, result)


def kill_predictors() -> None:
    """End this process's predictor subprocesses (engine/predict.py runs them through subprocess.run)."""
    try:
        import psutil

        children = psutil.Process(os.getpid()).children()
    except Exception:  # noqa: BLE001 - psutil missing or the process table unreadable: they end on their own
        return
    for child in children:
        try:
            if PREDICTOR_MODULE in child.cmdline():
                child.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass
