"""History-store calls off the UI thread, in the order they were asked for.

One Textual thread worker at a time drains a queue of calls (FIFO: a message is saved before the update that
follows it, and a history reload sees every write asked for before it). Each call's result comes back to the UI
thread as an asyncio future: await it, or leave it (a streamed reply's periodic save). Store errors are shown
the way ``GlmApp.db`` shows them (once per message, the unsaved banner) and the future's result is then None.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable, Optional

from textual.app import App

_QUEUES: "weakref.WeakKeyDictionary[App, StoreCalls]" = weakref.WeakKeyDictionary()


class StoreCalls:
    """The queue of one app's store calls (see the module's docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._jobs: deque = deque()
        self._lock = threading.Lock()
        self._draining = False
        self._running = threading.Lock()  # held while a call runs

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future:
        """Run ``fn(*args, **kwargs)`` on the store's worker thread after every call asked for before it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        context = contextvars.copy_context()  # the UI's (the active app): the result is handled in it
        with self._lock:
            self._jobs.append((fn, args, kwargs, loop, future, context))
            start, self._draining = not self._draining, True
        if start:
            try:
                self.app.run_worker(self._drain, thread=True, group="glmtui-store", name="store calls",
                                    exit_on_error=False)
            except Exception:  # noqa: BLE001 - no workers any more (the app is closing): run them here
                self._drain()
        return future

    async def settled(self) -> None:
        """Wait until every call asked for so far has run and its result reached the UI thread."""
        await self.call(lambda: None)

    def flush(self, timeout: float) -> bool:
        """Run what is still queued, here if need be (at exit, before the store closes: a worker asked for just
        before the app quit may never start); False if it took longer than ``timeout``."""
        return self._drain(time.monotonic() + timeout)

    def _drain(self, deadline: Optional[float] = None) -> bool:
        """Run queued calls until none is left (True), or until ``deadline`` (False). One call runs at a time,
        whichever thread drains: the order stays the order asked."""
        while True:
            wait = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._running.acquire(timeout=wait):
                return False
            try:
                with self._lock:
                    if not self._jobs:
                        self._draining = False
                        return True
                    fn, args, kwargs, loop, future, context = self._jobs.popleft()
                result: Any = None
                error: Optional[BaseException] = None
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the UI thread, which decides
                    error = exc
            finally:
                self._running.release()
            try:
                loop.call_soon_threadsafe(self._settle, future, result, error, context=context)
            except RuntimeError:  # the event loop has closed: the app is gone
                pass

    def _settle(self, future: asyncio.Future, result: Any, error: Optional[BaseException]) -> None:
        """On the UI thread: the app's own error handling (notify once, unsaved banner), then the future."""

        def replay() -> Any:
            if error is not None:
                raise error
            return result

        try:
            value = self.app.db(replay)
        except BaseException as exc:  # noqa: BLE001 - not a store error: raised where the call is awaited
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(value)


def store_calls(app: Any) -> StoreCalls:
    """The app's queue of store calls (made on first use)."""
    queue = _QUEUES.get(app)
    if queue is None:
        queue = _QUEUES[app] = StoreCalls(app)
    return queue
