"""Driving the real InferenceWorker from tests: collect events, wait for an outcome."""

from __future__ import annotations

import threading

from glmtui.engine.events import Failed, Finished, Loaded, Unloaded
from glmtui.engine.worker import InferenceWorker

FINAL = (Failed, Finished, Loaded, Unloaded)


class EventLog:
    def __init__(self):
        self.events = []
        self._final = {}  # request id -> its final event, so waiting stays O(1) per token
        self._cond = threading.Condition()

    def __call__(self, event):
        with self._cond:
            self.events.append(event)
            if isinstance(event, FINAL):
                self._final[event.request_id] = event
                self._cond.notify_all()

    def of(self, request_id, kind=None):
        return [e for e in self.events if e.request_id == request_id and (kind is None or isinstance(e, kind))]

    def wait(self, request_id, timeout=120.0):
        """The request's final event (Loaded, Unloaded, Finished or Failed)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: request_id in self._final, timeout)
        assert ok, f"request {request_id} did not finish in {timeout}s; events: {self.of(request_id)}"
        return self._final[request_id]


def start_worker():
    log = EventLog()
    return InferenceWorker(log).start(), log
