"""The remote server's own figures in the monitor pane (``glmtui --endpoint URL``).

vLLM and SGLang publish Prometheus ``/metrics``: KV-cache usage, running and
waiting requests, generation throughput (glmtui.remote_metrics reads them).
This widget polls that every 2 s on a thread worker and shows one line under
the local NVML view; it stays hidden without an endpoint, and while the server
has no /metrics (404), cannot be reached, or publishes neither family. Which
server (if any) is the app's to say: ``metrics_server``, given at construction.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Any, Callable, Optional

from rich.text import Text
from textual.widgets import Static

from glmtui.remote_metrics import POLL_INTERVAL, EngineFigures, MetricsPoller

from .monitor import bar, fmt_num

# The server whose /metrics are shown, asked before each poll: its URL (None while not known: a managed server
# before it has started) and its API key
MetricsServer = Callable[[], tuple[Optional[str], Optional[str]]]


def metrics_server(endpoint: Optional[str], engine: Any) -> Optional[MetricsServer]:
    """--endpoint, or an engine that runs a server of its own (--engine vllm: known once it has started);
    None: no server to poll."""
    if not endpoint and not hasattr(engine, "endpoint"):
        return None
    return lambda: (endpoint or getattr(engine, "endpoint", None), getattr(engine, "api_key", None))


def render_figures(figures: EngineFigures, width: int) -> Text:
    line = Text(f"{figures.server} ", style="bold")
    if figures.kv_cache_usage is not None:
        line.append(f"KV {figures.kv_cache_usage * 100:.0f}% ")
        line.append_text(bar(figures.kv_cache_usage, max(4, min(12, width - 40))))
    line.append(f" · run {fmt_num(figures.running)} · wait {fmt_num(figures.waiting)}")
    line.append(f" · {fmt_num(figures.throughput, ' tok/s')}" if figures.throughput is not None else " · n/a tok/s")
    return line


class RemoteMetricsView(Static):
    """Hidden until the ``server``'s /metrics give vLLM or SGLang figures (no server: never shown)."""

    DEFAULT_CSS = "RemoteMetricsView { height: auto; }"

    def __init__(self, server: Optional[MetricsServer] = None, interval: float = POLL_INTERVAL, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.server = server
        self.interval = interval
        self.figures: Optional[EngineFigures] = None
        self._stop = threading.Event()

    def on_mount(self) -> None:
        self.display = False
        if self.server is not None:
            self.run_worker(partial(self._poll, self.server), thread=True, exclusive=True, name="remote-metrics")

    def _poll(self, server: MetricsServer) -> None:
        poller: Optional[MetricsPoller] = None
        try:
            while not self._stop.is_set():
                endpoint, api_key = server()
                if poller is not None and poller.endpoint != endpoint:
                    poller.close()
                    poller = None
                if poller is None and endpoint:
                    poller = MetricsPoller(endpoint, api_key=api_key)
                figures = poller.poll() if poller is not None else None
                try:
                    self.app.call_from_thread(self._show, figures)
                except RuntimeError:  # the app is closing
                    return
                self._stop.wait(self.interval)
        finally:
            if poller is not None:
                poller.close()

    def _show(self, figures: Optional[EngineFigures]) -> None:
        self.figures = figures
        self.display = figures is not None
        if figures is not None:
            self.update(render_figures(figures, self.size.width or 60))

    def on_unmount(self) -> None:
        self._stop.set()
