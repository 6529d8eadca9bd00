"""The remote server's own figures in the monitor pane (``glmtui --endpoint URL``).

vLLM and SGLang publish Prometheus ``/metrics``: KV-cache usage, running and
waiting requests, generation throughput (glmtui.remote_metrics reads them).
This widget polls that every 2 s on a thread worker and shows one line under
the local NVML view; it stays hidden without an endpoint, and while the server
has no /metrics (404), cannot be reached, or publishes neither family.
"""

from __future__ import annotations

import threading
from typing import Optional

from rich.text import Text
from textual.widgets import Static

from glmtui.remote_metrics import POLL_INTERVAL, EngineFigures, MetricsPoller

from .monitor import bar, fmt_num


def render_figures(figures: EngineFigures, width: int) -> Text:
    line = Text(f"{figures.server} ", style="bold")
    if figures.kv_cache_usage is not None:
        line.append(f"KV {figures.kv_cache_usage * 100:.0f}% ")
        line.append_text(bar(figures.kv_cache_usage, max(4, min(12, width - 40))))
    line.append(f" · run {fmt_num(figures.running)} · wait {fmt_num(figures.waiting)}")
    line.append(f" · {fmt_num(figures.throughput, ' tok/s')}" if figures.throughput is not None else " · n/a tok/s")
    return line


class RemoteMetricsView(Static):
    """Hidden until the endpoint's /metrics gives vLLM or SGLang figures."""

    DEFAULT_CSS = "RemoteMetricsView { height: auto; }"

    def __init__(self, interval: float = POLL_INTERVAL, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.interval = interval
        self.figures: Optional[EngineFigures] = None
        self._stop = threading.Event()

    def on_mount(self) -> None:
        self.display = False
        engine = getattr(self.app, "engine", None)
        # --endpoint, or an engine that runs a server of its own (--engine vllm: known once it has started)
        if not getattr(self.app, "endpoint", None) and not hasattr(engine, "endpoint"):
            return
        self.run_worker(self._poll, thread=True, exclusive=True, name="remote-metrics")

    def _endpoint(self) -> Optional[str]:
        return getattr(self.app, "endpoint", None) or getattr(getattr(self.app, "engine", None), "endpoint", None)

    def _poll(self) -> None:
        poller: Optional[MetricsPoller] = None
        try:
            while not self._stop.is_set():
                endpoint = self._endpoint()
                if poller is not None and poller.endpoint != endpoint:
                    poller.close()
                    poller = None
                if poller is None and endpoint:
                    api_key = getattr(getattr(self.app, "engine", None), "api_key", None)
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
