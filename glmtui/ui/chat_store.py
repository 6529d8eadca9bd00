"""A chat session's history calls (no Textual): one at a time, in the order asked, each run off the UI
thread by the ``run_store`` the pane hands over (ui/store_calls.py there, a thread in tests).

Calls nobody waits for (the streaming reply's flush, deletes, settings) keep their place in the order;
the ones that must not be lost run at the end if the event loop never got to them. Once the session
saved its reply on exit (:meth:`OrderedCalls.close`), calls still queued are dropped: an older flush
must not overwrite what was saved last."""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from typing import Any, Awaitable, Callable, Optional

RunStore = Callable[[Callable[[], Any]], Awaitable[Any]]
"""Runs one history call off the UI thread; returns its value, or None once a failure was reported."""


class OrderedCalls:
    def __init__(self, run_store: RunStore) -> None:
        self.run_store = run_store
        self._tail: Optional[asyncio.Future] = None  # done when the last call asked for has ended
        self._gate = threading.Lock()  # a call on its thread vs. close()
        self._closed = False
        self._tasks: set[asyncio.Task] = set()
        self._must_run: dict[int, Callable[[], Any]] = {}  # background calls not run yet that must not be lost
        self._next = 0

    def call(self, fn: Callable, *args: Any, **kwargs: Any) -> "asyncio.Task[Any]":
        """Run ``fn(*args, **kwargs)`` after every call asked for before it; await it for its value (None on
        failure). Its place is taken here, when asked: a lock taken inside the task would order calls by when
        their tasks first ran, and a reply's final save could then run before a flush asked for earlier."""
        previous, done = self._tail, asyncio.get_running_loop().create_future()
        self._tail = done

        async def in_turn() -> Any:
            try:
                if previous is not None:
                    await previous
                return await self.run_store(partial(self._gated, fn, *args, **kwargs))
            finally:
                done.set_result(None)

        return asyncio.ensure_future(in_turn())

    def _gated(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        with self._gate:
            return None if self._closed else fn(*args, **kwargs)

    def background(self, fn: Callable, *args: Any, must_run: bool = False, **kwargs: Any) -> None:
        """A call nobody waits for. ``must_run``: if it has not run when the pane goes, :meth:`run_left_over`
        runs it then (a stale flush is just dropped)."""
        call = partial(fn, *args, **kwargs)
        if must_run:
            key = self._next = self._next + 1
            self._must_run[key] = call
            call = partial(self._run_once, key)
        task = self.call(call)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _run_once(self, key: int) -> Any:
        call = self._must_run.pop(key, None)  # under the gate: never run twice
        return call() if call is not None else None

    def run_left_over(self) -> None:
        """Run, here and now, the must-run calls that have not run (the pane is going away: the event loop
        will not run them). On the UI thread, at the end only."""
        with self._gate:
            for key in sorted(self._must_run):
                self._must_run.pop(key)()

    def close(self, last: Callable[[], None]) -> None:
        """Run ``last`` (the final save) and drop every call still queued or on its way."""
        self.run_left_over()
        with self._gate:
            self._closed = True
            last()

    async def settled(self) -> None:
        """Wait for every call asked for so far (tests; nothing in the app waits on it)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._tail is not None:
            await self._tail
