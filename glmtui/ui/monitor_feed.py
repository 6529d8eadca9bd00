"""The monitor's feed: its sampling thread started, each snapshot shown, and handed to the ModelController."""

from __future__ import annotations

from typing import Any

from textual.app import ScreenStackError
from textual.css.query import NoMatches

from .app_base import AppBase
from .sampling import MonitorUpdate, start_sampling


class MonitorFeed(AppBase):
    def _start_monitor(self) -> None:
        if self.sampler is None:
            from glmtui.monitor import Sampler

            self.sampler = Sampler(self.monitor_interval or 1.0)
        track = getattr(self.sampler, "track_engine", None)
        if track is not None:  # the engine's processes are glmtui's own rows and figures
            track(self.model.engine_pids)
        interval = self.monitor_interval or getattr(self.sampler, "interval", 1.0) or 1.0
        start_sampling(self.sampler, interval, self.post_message, self._monitor_stop)

    def on_monitor_update(self, message: MonitorUpdate) -> None:
        try:
            if self._monitor_stop.is_set() or not self.screen.is_mounted:
                return  # a sample still queued while the app shuts down: the panes are gone
        except ScreenStackError:  # the same, once the screens are gone
            return
        try:
            first = self.monitor_pane.snapshot is None
        except NoMatches:
            return
        try:
            self.monitor_pane.show(message.snapshot)
        except NoMatches:  # its body is already gone (the app is closing)
            return
        if first:
            self.models_pane.refresh_detail()
        self.model.monitor_sample(message.snapshot)

    def _latest_snapshot(self) -> Any:
        try:
            return self.monitor_pane.snapshot
        except (NoMatches, ScreenStackError):
            return None
