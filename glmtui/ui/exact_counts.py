"""ExactCounts: the exact memory figures of model folders, counted by engine/predict.py in a subprocess.

One count runs at a time, on a daemon thread of its own (not a Textual worker: those run in the
event loop's default executor, which the end of ``App.run`` waits for, so quitting waited for a
running count). A newer request replaces one still waiting; ``cancel``/``close`` end a running
predictor process at once. Results arrive through ``arrived()``, called on the counting thread.

Counts nobody waits for yet (the local models the Models pane lists, a model just downloaded) queue
with :meth:`background`: they run one at a time, at low priority, only while nothing is asked for
and ``idle()`` says so (no load running), so that the next ask is answered from the store.
"""

from __future__ import annotations

import collections
import logging
import threading
from pathlib import Path
from typing import Callable, Iterable, Optional

from glmtui.engine import exact_cache, memory

Key = tuple[str, str]  # (resolved folder, "cuda" / "cpu")
PREDICTOR_MODULE = exact_cache.PREDICTOR_MODULE
IDLE_POLL = 1.0  # seconds between looks at idle() while background counts wait
ASKED_TIMEOUT = 120.0  # seconds a count someone waits for may take
BACKGROUND_TIMEOUT = 900.0  # at low priority on a busy machine a count takes minutes; nobody waits for it
log = logging.getLogger(__name__)


def count_key(folder: str | Path, device: str) -> Key:
    return (str(Path(folder).resolve()), "cuda" if str(device).startswith("cuda") else "cpu")


class ExactCounts:
    def __init__(self, arrived: Callable[[], object], idle: Callable[[], bool] = lambda: True) -> None:
        self._arrived = arrived
        self._idle = idle
        self.results: dict[Key, memory.ExactResult] = {}
        self._asked: set[Key] = set()  # running, waiting or done
        self._pending: Optional[Key] = None
        self._background: collections.deque[Key] = collections.deque()
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
            if found is None and key in self._background:  # queued in the background: wanted now
                self._background.remove(key)
                self._asked.discard(key)
            if found is None and key not in self._asked and not self._closed:
                self._asked.add(key)
                if self._pending is not None:  # replaced before it ran: asked again when next shown
                    self._asked.discard(self._pending)
                self._pending = key
                self._start()
        return found

    def background(self, folders: Iterable[str | Path], device: str, first: bool = False) -> None:
        """Count ``folders`` when nothing else is asked and ``idle()`` (in order; ``first``: before those
        already queued, e.g. a model just downloaded). Folders counted, asked or queued are skipped."""
        with self._lock:
            if self._closed:
                return
            keys = [count_key(f, device) for f in folders]
            keys = [k for k in dict.fromkeys(keys) if k not in self._asked and k not in self._background]
            if first:
                self._background.extendleft(reversed(keys))
            else:
                self._background.extend(keys)
            if keys:
                self._start()

    def _start(self) -> None:
        """The counting thread, started once; woken (the lock is held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="glmtui-exact-count", daemon=True)
            self._thread.start()
        self._wake.notify()

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

    @property
    def queued(self) -> tuple[Key, ...]:
        """The background counts still to run."""
        with self._lock:
            return tuple(self._background)

    def _may_background(self) -> bool:
        try:
            return bool(self._idle())
        except Exception:  # noqa: BLE001 - a question about the app's state: wait and ask again
            return False

    def _next(self) -> Optional[tuple[Key, bool, int]]:
        """(the next key, whether it is a background count, the generation), or None when closed."""
        with self._lock:
            while not self._closed:
                if self._pending is not None:
                    key, background = self._pending, False
                    self._pending = None
                elif self._background and self._may_background():
                    key, background = self._background.popleft(), True
                    self._asked.add(key)
                else:
                    self._wake.wait(IDLE_POLL if self._background else None)
                    continue
                self._running = key
                return key, background, self._generation
        return None

    def _run(self) -> None:
        while True:
            found = self._next()
            if found is None:
                return
            key, background, generation = found
            try:
                # a background count runs at low priority; one from the store starts no process at all
                result = memory.predict_exact_subprocess(key[0], key[1], low_priority=background,
                                                         timeout=BACKGROUND_TIMEOUT if background else ASKED_TIMEOUT,
                                                         start_launcher=True)
            except Exception as exc:  # noqa: BLE001 - it should not raise; if it does, the estimate stays
                result = memory.ExactResult({}, f"exact count failed: {type(exc).__name__}: {exc}")
            if background and result.error and not result.unknown_architecture:
                log.info("background exact count of %s failed: %s", key[0], result.error)
            with self._lock:
                self._running = None
                dropped = generation != self._generation
            if not dropped:
                self.deliver(key, result)


def kill_predictors() -> None:
    """End this process's predictor subprocesses (the counts it is waiting for; detached ones outlive it)."""
    exact_cache.end_predictors()
