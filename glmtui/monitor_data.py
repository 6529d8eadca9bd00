"""The monitor's frozen snapshots: what glmtui/monitor.py's Sampler produces and the UI draws.

Plain dataclasses, no NVML, psutil, torch or UI imports; ``glmtui.monitor`` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "GpuProcess",
    "GpuSnapshot",
    "TorchDeviceMemory",
    "HostSnapshot",
    "GpuHistory",
    "History",
    "MonitorSnapshot",
]


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int | None  # None: NVML cannot tell (WDDM, no permission)
    kind: str  # "compute", "graphics" or "compute+graphics"
    name: str | None  # from NVML; None when unavailable
    is_self: bool  # one of glmtui's processes: this one or an engine process (can fail in containers: host PIDs)
    is_engine: bool = False  # one of glmtui's engine processes (the model's, a spare)


@dataclass(frozen=True)
class GpuSnapshot:
    index: int
    state: str  # "ok" | "lost"
    name: str | None = None
    memory_used: int | None = None  # bytes (NVML v2 "used": excludes driver-reserved memory)
    memory_total: int | None = None
    memory_free: int | None = None
    memory_reserved: int | None = None  # v2 only
    memory_api: str | None = None  # "v2" | "v1"
    utilization_gpu: int | None = None  # percent
    utilization_memory: int | None = None  # percent
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    processes: tuple[GpuProcess, ...] | None = None  # None: not available
    errors: tuple[str, ...] = ()  # "metric: error" for failures other than NotSupported

    @property
    def memory_fraction(self) -> float | None:
        if self.memory_used is None or not self.memory_total:
            return None
        return self.memory_used / self.memory_total

    @property
    def self_used_bytes(self) -> int | None:
        """GPU memory NVML attributes to glmtui's processes (None if not found/unknown)."""
        if not self.processes:
            return None
        found = [p.used_bytes for p in self.processes if p.is_self and p.used_bytes is not None]
        return sum(found) if found else None


@dataclass(frozen=True)
class TorchDeviceMemory:
    """torch's caching-allocator view of this process on one CUDA device (torch index,
    which follows CUDA_VISIBLE_DEVICES and need not equal the NVML index)."""

    device: int
    allocated: int
    reserved: int


@dataclass(frozen=True)
class HostSnapshot:
    ram_total: int | None = None
    ram_used: int | None = None  # psutil's "used" (total - free - buffers/cache on Linux)
    ram_available: int | None = None
    process_rss: int | None = None  # glmtui's processes together: this one and its engine processes
    cpu_percent: float | None = None  # system-wide, since the previous sample
    process_cpu_percent: float | None = None  # glmtui's processes together, since the previous sample
    error: str | None = None
    engine_pids: tuple[int, ...] = ()  # glmtui's engine processes (none when the model runs in this one)
    engine_rss: int | None = None  # of those alone (None without any)
    engine_cpu_percent: float | None = None


@dataclass(frozen=True)
class GpuHistory:
    index: int
    memory_used: tuple[int | None, ...]
    utilization: tuple[int | None, ...]


@dataclass(frozen=True)
class History:
    """Ring-buffer contents, oldest first; all series are aligned with ``timestamps``
    (a GPU without data for a tick has ``None`` there)."""

    timestamps: tuple[float, ...] = ()
    ram_used: tuple[int | None, ...] = ()
    process_rss: tuple[int | None, ...] = ()
    gpus: tuple[GpuHistory, ...] = ()

    def gpu(self, index: int) -> GpuHistory | None:
        for g in self.gpus:
            if g.index == index:
                return g
        return None


@dataclass(frozen=True)
class MonitorSnapshot:
    timestamp: float
    nvml_state: str  # "ok" | "no_gpu" | "no_library" | "error"
    message: str | None  # one line for the UI when nvml_state != "ok"
    driver_version: str | None
    gpus: tuple[GpuSnapshot, ...]
    host: HostSnapshot
    torch: tuple[TorchDeviceMemory, ...] | None  # None: torch not imported / CUDA not initialised
    history: History

    @property
    def has_gpu(self) -> bool:
        return self.nvml_state == "ok" and bool(self.gpus)
