"""A fake NVML at the hardware edge: pynvml's function names and exception classes, backed by a dict per GPU."""

from __future__ import annotations

import types
from collections import Counter

GiB = 1 << 30
MiB = 1 << 20


class NVMLError(Exception):
    pass


def _err(name: str) -> type[NVMLError]:
    return type(name, (NVMLError,), {})


class FakeNVML(types.SimpleNamespace):
    """Same function names / exception classes as pynvml, backed by a dict per GPU."""

    def __init__(self, gpus: list[dict], *, init_error: type[Exception] | None = None, v2: bool = True):
        super().__init__()
        self.NVMLError = NVMLError
        for n in (
            "NotSupported",
            "GpuIsLost",
            "LibraryNotFound",
            "DriverNotLoaded",
            "FunctionNotFound",
            "NoPermission",
            "Unknown",
            "ArgumentVersionMismatch",
        ):
            setattr(self, f"NVMLError_{n}", _err(f"NVMLError_{n}"))
        self.nvmlMemory_v2 = 0x2000028
        self.NVML_TEMPERATURE_GPU = 0
        self.gpus = gpus
        self.init_error = init_error
        self.v2 = v2
        self.calls: Counter[str] = Counter()
        self.handles_made: list[object] = []

    # helpers -------------------------------------------------------------------
    def _gpu(self, h: object, metric: str):
        g = self.gpus[h.index]  # type: ignore[attr-defined]  # a handle made by this fake
        if g.get("lost"):
            raise self.NVMLError_GpuIsLost("GPU is lost")
        v = g.get(metric)
        if isinstance(v, type) and issubclass(v, Exception):
            raise v(metric)
        return v

    # pynvml surface ---------------------------------------------------------------
    def nvmlInit(self):
        self.calls["init"] += 1
        if self.init_error is not None:
            raise self.init_error("init failed")

    def nvmlShutdown(self):
        self.calls["shutdown"] += 1

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        self.calls["handle"] += 1
        h = types.SimpleNamespace(index=i)
        self.handles_made.append(h)
        return h

    def nvmlDeviceGetName(self, h):
        return self._gpu(h, "name")

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        self.calls["mem_v2" if version else "mem_v1"] += 1
        used_v1, total = self._gpu(h, "used_v1"), self._gpu(h, "total")
        if version:
            if not self.v2:
                raise self.NVMLError_FunctionNotFound("nvmlDeviceGetMemoryInfo_v2")
            used, reserved = self._gpu(h, "used_v2"), used_v1 - self._gpu(h, "used_v2")
            return types.SimpleNamespace(total=total, reserved=reserved, free=total - used_v1, used=used)
        return types.SimpleNamespace(total=total, free=total - used_v1, used=used_v1)

    def nvmlDeviceGetUtilizationRates(self, h):
        u = self._gpu(h, "util")
        return types.SimpleNamespace(gpu=u, memory=u // 2)

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return self._gpu(h, "temp")

    def nvmlDeviceGetPowerUsage(self, h):
        return self._gpu(h, "power_mw")

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return self._gpu(h, "limit_mw")

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h):
        self.calls["compute_v3"] += 1
        if self._gpu(h, "no_v3"):
            raise self.NVMLError_FunctionNotFound("v3")
        return [types.SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._gpu(h, "compute") or []]

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h):
        self.calls["compute_v2"] += 1
        return [types.SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._gpu(h, "compute") or []]

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, h):
        return [types.SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._gpu(h, "graphics") or []]

    def nvmlSystemGetProcessName(self, pid):
        return f"/usr/bin/proc{pid}".encode()


def gpu(**over) -> dict:
    base = dict(
        name="NVIDIA GeForce RTX 4090",
        total=24 * GiB,
        used_v1=3 * GiB,
        used_v2=2 * GiB,  # v2 excludes driver-reserved memory
        util=37,
        temp=55,
        power_mw=123_456,
        limit_mw=450_000,
        compute=[],
        graphics=[],
    )
    base.update(over)
    return base
