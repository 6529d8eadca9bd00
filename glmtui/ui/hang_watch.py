"""HangWatch: an engine stuck mid-reply while its process still answers pings (no Textual).

The engine process's main thread answers pings even when its generation thread is stuck (in a CUDA
kernel, a deadlock), so the ping alone misses that hang. This one is told apart from a long prefill
by the device: while a reply is being generated, nothing has come from the engine for
``silent_after`` seconds AND the engine's device was idle in the last ``idle_samples`` monitor
samples (NVML utilization 0 % of its GPU; on the CPU its process's CPU use about 0).
The engine's events come in on its thread (``event``), the monitor's samples on the UI thread (``check``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from glmtui.engine.events import EngineExited, EngineUnresponsive, Failed, Finished, Started

DEFAULT_SILENT_AFTER = 30.0  # seconds without an event while generating
CPU_IDLE_PERCENT = 1.0  # an engine process below this share of one core does no work
SETTING = "hang_after"  # seconds, under [ui] in config.toml


def silence_setting(prefs: dict) -> tuple[float, str]:
    """``hang_after`` (seconds, 5-3600) from config.toml's ``[ui]``, 30 by default; and why a bad value was
    not used ("" when none)."""
    value = prefs.get(SETTING)
    if value is None:
        return DEFAULT_SILENT_AFTER, ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 5 <= value <= 3600:
        return DEFAULT_SILENT_AFTER, (f"{SETTING} = {value!r} in config.toml is not seconds between 5 and 3600; "
                                      f"a silent engine is reported after {DEFAULT_SILENT_AFTER:g} s")
    return float(value), ""


def device_idle(snapshot: Any, device: str) -> Optional[bool]:
    """Whether the engine's device did no work in ``snapshot``; None when the snapshot cannot tell.

    ``device`` is the loaded model's ("cuda:1", "cpu"). On a GPU: the GPUs NVML lists the engine's
    process on, else the one of that index (CUDA's order may differ from NVML's: the listing comes first)."""
    if snapshot is None:
        return None
    if device.startswith("cuda"):
        if not snapshot.has_gpu:
            return None
        gpus = [g for g in snapshot.gpus if any(p.is_engine for p in g.processes or ())]
        if not gpus:
            index = int(device.partition(":")[2] or 0) if device.partition(":")[2].isdigit() else 0
            gpus = [g for g in snapshot.gpus if g.index == index]
        utils = [g.utilization_gpu for g in gpus]
        if not utils or any(u is None for u in utils):
            return None
        return all(u == 0 for u in utils)
    cpu = snapshot.host.engine_cpu_percent  # None: no engine process (the model runs in this one, or remotely)
    return None if cpu is None else cpu < CPU_IDLE_PERCENT


class HangWatch:
    def __init__(self, silent_after: float = DEFAULT_SILENT_AFTER, *, idle_samples: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.silent_after = silent_after
        self.idle_samples = idle_samples
        self._clock = clock
        self._lock = threading.Lock()
        self._running: set[int] = set()  # generations started and not ended
        self._last_event = clock()
        self._idle_run = 0  # consecutive samples with the device idle
        self._reported_at: Optional[float] = None  # the last event's time when a hang was reported

    def event(self, event: Any) -> None:
        """An engine event (on the engine's thread): a generation starts or ends; anything from it is activity."""
        if isinstance(event, EngineUnresponsive):  # the front end's own words, not the engine's
            return
        with self._lock:
            if isinstance(event, EngineExited):
                self._running.clear()
                return
            self._last_event = self._clock()
            if isinstance(event, Started):
                self._running.add(event.request_id)
            elif isinstance(event, (Finished, Failed)):
                self._running.discard(event.request_id)

    def check(self, snapshot: Any, device: str) -> Optional[tuple[float, str]]:
        """A monitor sample: (seconds silent, the cause) when a hang starts; (0.0, "") when a reported one
        ended (an event came, or nothing is generated any more); None when nothing changed."""
        idle = device_idle(snapshot, device)
        with self._lock:
            now = self._clock()
            self._idle_run = self._idle_run + 1 if idle else 0
            if self._reported_at is not None:
                if self._last_event != self._reported_at or not self._running:
                    self._reported_at = None
                    return 0.0, ""
                return None
            silent = now - self._last_event
            if not self._running or silent < self.silent_after or self._idle_run < self.idle_samples:
                return None
            self._reported_at = self._last_event
        where = "the GPU" if device.startswith("cuda") else "the engine's CPU"
        return silent, (f"no token for {silent:.0f} s and {where} idle: the engine may be hung — "
                        "it can be killed and the model reloaded")
