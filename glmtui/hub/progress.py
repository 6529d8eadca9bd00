"""Progress of a download: the report callers see, and the meter that turns byte counts into reports."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Callable, Literal, Optional

Phase = Literal["listing", "downloading", "verifying", "done"]


@dataclass(frozen=True)
class DownloadProgress:
    """A progress report. ``bytes_done`` counts bytes already on disk from earlier
    attempts too, so it starts where a resumed download stands and ends at
    ``bytes_total``; ``speed_bps`` counts this attempt's transfer only (a moving
    average over the last few seconds)."""

    bytes_done: int
    bytes_total: int
    speed_bps: float
    eta_s: Optional[float]
    current_file: Optional[str]
    files_done: int
    files_total: int
    phase: Phase = "downloading"

    @property
    def fraction(self) -> float:
        return 1.0 if self.bytes_total <= 0 else min(1.0, self.bytes_done / self.bytes_total)


ProgressCallback = Callable[[DownloadProgress], None]


class Meter:
    """Turns byte counts into throttled DownloadProgress reports."""

    def __init__(self, cb: Optional[ProgressCallback], total: int, files_total: int, interval: float):
        self.cb = cb
        self.total = total
        self.files_total = files_total
        self.interval = interval
        self.done = 0
        self.files_done = 0
        self.current: Optional[str] = None
        self._samples: collections.deque = collections.deque()
        self._transferred = 0
        self._last_emit = 0.0

    def speed(self) -> float:
        now = time.monotonic()
        self._samples.append((now, self._transferred))
        while len(self._samples) > 2 and now - self._samples[0][0] > 5.0:
            self._samples.popleft()
        t0, b0 = self._samples[0]
        return (self._transferred - b0) / (now - t0) if now - t0 > 0.2 else 0.0

    def add(self, n: int, transferred: bool = True) -> None:
        self.done += n
        if transferred:
            self._transferred += n
        if time.monotonic() - self._last_emit >= self.interval:
            self.emit()

    def emit(self, phase: Phase = "downloading") -> None:
        if self.cb is None:
            return
        self._last_emit = time.monotonic()
        speed = self.speed()
        left = max(0, self.total - self.done)
        eta = 0.0 if left == 0 else (left / speed if speed > 0 else None)
        self.cb(
            DownloadProgress(
                bytes_done=min(self.done, self.total) if self.total else self.done,
                bytes_total=self.total,
                speed_bps=speed,
                eta_s=eta,
                current_file=self.current,
                files_done=self.files_done,
                files_total=self.files_total,
                phase=phase,
            )
        )
