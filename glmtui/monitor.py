"""GPU (NVML) and host (psutil) sampling into plain, frozen snapshot dataclasses.
Kept whole past 400 lines: one class, the sampler, with its NVML and psutil reads.

No UI imports and no torch import here.  The UI owns the polling thread and calls
:meth:`Sampler.sample` every :attr:`Sampler.interval` seconds (or hands
:meth:`Sampler.run` to a Textual thread worker).  ``sample()`` never raises:

* ``nvidia-ml-py`` missing          -> ``nvml_state == "no_library"`` + one-line hint
* no driver / no GPU / no libnvidia-ml -> ``nvml_state == "no_gpu"``, host view only
* NVML init failed otherwise          -> ``nvml_state == "error"``
* a metric NotSupported (or any other NVML error on that metric) -> ``None`` ("n/a");
  errors other than NotSupported are also listed in ``GpuSnapshot.errors``
* ``NVMLError_GpuIsLost``              -> that GPU's ``state == "lost"``, others sampled

NVML is initialised once (on the first ``sample()``, i.e. in the polling thread) and
device handles are acquired once and cached: re-acquiring them every tick is what
made ``gpustat -i`` burn CPU.  GPUs hot-plugged after the first sample are not seen.

Process marking: a GPU process is ``is_self`` when it is one of glmtui's: this
process (``os.getpid()``) or one of its engine processes (the pids the
``engine_pids`` callable gives; those are also ``is_engine``). The host figures
(``process_rss``, ``process_cpu_percent``) add the engine processes to this one,
and give them apart too. Inside containers NVML reports *host* PIDs, so the match
can fail there (and no process will be marked); the torch figures
(``MonitorSnapshot.torch``) still describe this process because they come from
torch itself.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import threading
import time
from typing import Any, Callable

from . import monitor_data
from .monitor_data import (
    GpuHistory,
    GpuProcess,
    GpuSnapshot,
    History,
    HostSnapshot,
    MonitorSnapshot,
    TorchDeviceMemory,
)

# the snapshots are re-exported: front ends import them from here, next to the Sampler
__all__ = ["DEFAULT_INTERVAL", "MIN_INTERVAL", "HISTORY_LEN", "NVML_HINT", "Sampler", "clamp_interval",
           *monitor_data.__all__]

DEFAULT_INTERVAL = 1.0
MIN_INTERVAL = 0.25
HISTORY_LEN = 120
NVML_HINT = "GPU monitoring unavailable: install nvidia-ml-py (pip install nvidia-ml-py) / no NVIDIA driver"

_AUTO: Any = object()  # sentinel: "import pynvml yourself"


def clamp_interval(seconds: float) -> float:
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return DEFAULT_INTERVAL
    if math.isnan(s):
        return DEFAULT_INTERVAL
    return max(MIN_INTERVAL, s)


# --------------------------------------------------------------------------- sampler


class _GpuLost(Exception):
    pass


def _text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


class Sampler:
    """Samples NVML + psutil; call :meth:`sample` from one polling thread.

    ``nvml``: the pynvml module (default: ``import pynvml`` on first sample); pass a
    fake for tests, or ``None`` to behave as if nvidia-ml-py were not installed.
    """

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        *,
        nvml: Any = _AUTO,
        history_len: int = HISTORY_LEN,
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
        engine_pids: Callable[[], Any] | None = None,
    ) -> None:
        self._interval = clamp_interval(interval)
        self._engine_pids_fn = engine_pids
        self._engine_pids: frozenset[int] = frozenset()
        self._engine_procs: dict[int, Any] = {}  # pid -> psutil.Process (kept: cpu_percent counts from the last call)
        self._nvml_arg = nvml
        self._pid = os.getpid() if pid is None else pid
        self._clock = clock
        self._lock = threading.RLock()
        self._history_len = max(1, int(history_len))

        self._nvml: Any = None
        self._initialised = False
        self._state = "no_gpu"
        self._message: str | None = None
        self._driver: str | None = None
        self._handles: list[Any] = []  # None where acquisition failed (lost)
        self._mem_v2: dict[int, bool] = {}
        self._proc_fns: dict[str, Callable[..., Any] | None] = {}
        self._proc_names: dict[int, str | None] = {}

        self._psutil: Any = None
        self._proc: Any = None

        n = self._history_len
        self._ts: collections.deque[float] = collections.deque(maxlen=n)
        self._ram: collections.deque[int | None] = collections.deque(maxlen=n)
        self._rss: collections.deque[int | None] = collections.deque(maxlen=n)
        self._gpu_mem: dict[int, collections.deque[int | None]] = {}
        self._gpu_util: dict[int, collections.deque[int | None]] = {}

    # ---- interval -----------------------------------------------------------------
    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        self._interval = clamp_interval(seconds)

    @property
    def history_len(self) -> int:
        return self._history_len

    def track_engine(self, engine_pids: Callable[[], Any] | None) -> None:
        """Count these processes (a callable giving glmtui's engine pids now) as glmtui's own."""
        with self._lock:
            self._engine_pids_fn = engine_pids

    def _read_engine_pids(self) -> frozenset[int]:
        fn = self._engine_pids_fn
        if fn is None:
            return frozenset()
        try:
            return frozenset(int(p) for p in fn() or () if int(p) != self._pid)
        except Exception:  # noqa: BLE001 - an engine's report must not stop the monitor
            return frozenset()

    # ---- lifecycle ----------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._initialised and self._state == "ok" and self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception:  # noqa: BLE001 - a dying NVML: closing goes on
                    pass
            self._initialised = False
            self._handles = []

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, on_snapshot: Callable[[MonitorSnapshot], None], stop: threading.Event) -> None:
        """Polling loop for a thread worker: sample, hand over, wait; until ``stop`` is set."""
        while not stop.is_set():
            t0 = time.monotonic()
            on_snapshot(self.sample())
            stop.wait(max(0.0, self._interval - (time.monotonic() - t0)))

    # ---- NVML plumbing ------------------------------------------------------------
    def _is(self, exc: BaseException, *names: str) -> bool:
        for n in names:
            cls = getattr(self._nvml, n, None)
            if isinstance(cls, type) and isinstance(exc, cls):
                return True
        return False

    def _nvml_error(self) -> type[BaseException]:
        cls = getattr(self._nvml, "NVMLError", None)
        return cls if isinstance(cls, type) else Exception

    def _init_nvml(self) -> None:
        self._initialised = True
        nvml: Any = self._nvml_arg
        if nvml is _AUTO:
            try:
                import pynvml  # nvidia-ml-py

                nvml = pynvml
            except ImportError:  # not installed: the hint below says which package
                nvml = None
        if nvml is None:
            self._state, self._message = "no_library", NVML_HINT
            return
        self._nvml = nvml
        try:
            nvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - classified below
            if self._is(
                e,
                "NVMLError_LibraryNotFound",
                "NVMLError_DriverNotLoaded",
                "NVMLError_GpuNotFound",
                "NVMLError_FunctionNotFound",
                "NVMLError_NotFound",
            ) or isinstance(e, OSError):
                self._state = "no_gpu"
                self._message = f"no NVIDIA GPU ({_text(e)}): host view only"
            else:
                self._state = "error"
                self._message = f"NVML init failed: {type(e).__name__}: {e}"
            return
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as e:  # noqa: BLE001 - a row state, never a crash
            self._state, self._message = "error", f"NVML device count failed: {e}"
            return
        if count <= 0:
            self._state, self._message = "no_gpu", "no NVIDIA GPU (driver reports 0 devices): host view only"
            return
        try:
            self._driver = _text(nvml.nvmlSystemGetDriverVersion())
        except Exception:  # noqa: BLE001 - no driver version: the row shows none
            self._driver = None
        self._handles = [self._acquire(i) for i in range(count)]
        for i in range(count):
            self._gpu_mem[i] = collections.deque([None] * len(self._ts), maxlen=self._history_len)
            self._gpu_util[i] = collections.deque([None] * len(self._ts), maxlen=self._history_len)
        self._state, self._message = "ok", None

    def _acquire(self, index: int) -> Any:
        try:
            return self._nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # noqa: BLE001 - a GPU NVML cannot open gets no handle
            return None

    def _call(self, errors: list[str], metric: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except self._nvml_error() as e:
            if self._is(e, "NVMLError_GpuIsLost"):
                raise _GpuLost from e
            if not self._is(e, "NVMLError_NotSupported"):
                errors.append(f"{metric}: {_text(e) or type(e).__name__}")
            return None
        except Exception as e:  # noqa: BLE001 - a binding bug must not kill the monitor
            errors.append(f"{metric}: {type(e).__name__}: {e}")
            return None

    def _memory(self, index: int, h: Any, errors: list[str]) -> tuple[Any, str | None]:
        nvml = self._nvml
        v2 = getattr(nvml, "nvmlMemory_v2", None)
        if v2 is not None and self._mem_v2.get(index, True):
            try:
                m = nvml.nvmlDeviceGetMemoryInfo(h, version=v2)
                self._mem_v2[index] = True
                return m, "v2"
            except self._nvml_error() as e:
                if self._is(e, "NVMLError_GpuIsLost"):
                    raise _GpuLost from e
                if self._is(
                    e, "NVMLError_FunctionNotFound", "NVMLError_NotSupported", "NVMLError_ArgumentVersionMismatch"
                ):
                    self._mem_v2[index] = False  # old driver: use v1 from now on
            except TypeError:  # old binding without the version argument
                self._mem_v2[index] = False
            except Exception:  # noqa: BLE001 - v2 failing any other way: fall back to v1 this time
                pass
        m = self._call(errors, "memory", nvml.nvmlDeviceGetMemoryInfo, h)
        return m, ("v1" if m is not None else None)

    def _proc_list(self, kind: str, h: Any, errors: list[str]) -> list[Any] | None:
        base = f"nvmlDeviceGet{kind}RunningProcesses"
        nvml = self._nvml
        if kind in self._proc_fns:
            fn = self._proc_fns[kind]
            if fn is None:
                return None
            return self._call(errors, f"{kind.lower()} processes", fn, h)
        for suffix in ("_v3", "_v2", ""):
            fn = getattr(nvml, base + suffix, None)
            if fn is None:
                continue
            try:
                res = fn(h)
            except self._nvml_error() as e:
                if self._is(e, "NVMLError_GpuIsLost"):
                    raise _GpuLost from e
                if self._is(e, "NVMLError_FunctionNotFound", "NVMLError_ArgumentVersionMismatch"):
                    continue  # older driver: try the next version
                self._proc_fns[kind] = fn
                if not self._is(e, "NVMLError_NotSupported"):
                    errors.append(f"{kind.lower()} processes: {_text(e)}")
                return None
            except Exception as e:  # noqa: BLE001 - a row note, never a crash
                errors.append(f"{kind.lower()} processes: {type(e).__name__}: {e}")
                continue
            self._proc_fns[kind] = fn
            return list(res or [])
        self._proc_fns[kind] = None
        return None

    def _proc_name(self, pid: int) -> str | None:
        if pid in self._proc_names:
            return self._proc_names[pid]
        fn = getattr(self._nvml, "nvmlSystemGetProcessName", None)
        name = None
        if fn is not None:
            try:
                name = _text(fn(pid))
            except Exception:  # noqa: BLE001 - a process name is a nicety, never a crash
                name = None
        if name:
            name = os.path.basename(name.strip()) or name
        self._proc_names[pid] = name
        return name

    def _processes(self, h: Any, errors: list[str]) -> tuple[GpuProcess, ...] | None:
        compute = self._proc_list("Compute", h, errors)
        graphics = self._proc_list("Graphics", h, errors)
        if compute is None and graphics is None:
            return None
        merged: dict[int, list[Any]] = {}
        for kind, plist in (("compute", compute or []), ("graphics", graphics or [])):
            for p in plist:
                pid = int(getattr(p, "pid", -1))
                used = getattr(p, "usedGpuMemory", None)
                used = int(used) if isinstance(used, (int, float)) and used >= 0 else None
                entry = merged.setdefault(pid, [None, []])
                if used is not None:
                    entry[0] = used if entry[0] is None else max(entry[0], used)
                if kind not in entry[1]:
                    entry[1].append(kind)
        out = [
            GpuProcess(
                pid=pid,
                used_bytes=used,
                kind="+".join(kinds),
                name=self._proc_name(pid),
                is_self=(pid == self._pid or pid in self._engine_pids),
                is_engine=pid in self._engine_pids,
            )
            for pid, (used, kinds) in merged.items()
        ]
        out.sort(key=lambda p: (-(p.used_bytes or 0), p.pid))
        return tuple(out)

    def _sample_gpu(self, index: int) -> GpuSnapshot:
        nvml = self._nvml
        h = self._handles[index]
        if h is None:  # acquisition failed earlier (lost GPU): retry, cheaply
            h = self._handles[index] = self._acquire(index)
            if h is None:
                return GpuSnapshot(index=index, state="lost")
        errors: list[str] = []
        try:
            name = _text(self._call(errors, "name", nvml.nvmlDeviceGetName, h))
            mem, api = self._memory(index, h, errors)
            util = self._call(errors, "utilization", nvml.nvmlDeviceGetUtilizationRates, h)
            temp = self._call(
                errors, "temperature", nvml.nvmlDeviceGetTemperature, h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
            )
            power = self._call(errors, "power", nvml.nvmlDeviceGetPowerUsage, h)
            limit = self._call(errors, "power limit", nvml.nvmlDeviceGetEnforcedPowerLimit, h)
            procs = self._processes(h, errors)
        except _GpuLost:
            return GpuSnapshot(index=index, state="lost", errors=("GPU is lost",))

        def num(obj: Any, attr: str) -> int | None:
            v = getattr(obj, attr, None) if obj is not None else None
            return int(v) if isinstance(v, (int, float)) else None

        return GpuSnapshot(
            index=index,
            state="ok",
            name=name,
            memory_used=num(mem, "used"),
            memory_total=num(mem, "total"),
            memory_free=num(mem, "free"),
            memory_reserved=num(mem, "reserved") if api == "v2" else None,
            memory_api=api,
            utilization_gpu=num(util, "gpu"),
            utilization_memory=num(util, "memory"),
            temperature_c=int(temp) if isinstance(temp, (int, float)) else None,
            power_w=power / 1000.0 if isinstance(power, (int, float)) else None,
            power_limit_w=limit / 1000.0 if isinstance(limit, (int, float)) else None,
            processes=procs,
            errors=tuple(errors),
        )

    # ---- host / torch ---------------------------------------------------------------
    def _sample_host(self) -> HostSnapshot:
        try:
            if self._psutil is None:
                import psutil

                self._psutil = psutil
                self._proc = psutil.Process(self._pid)
                self._proc.cpu_percent(None)  # prime the counters
                psutil.cpu_percent(None)
            ps = self._psutil
            vm = ps.virtual_memory()
            rss = int(self._proc.memory_info().rss)
            cpu = float(self._proc.cpu_percent(None))
            engine_rss, engine_cpu = self._sample_engine()
            pids = tuple(sorted(self._engine_procs))
            return HostSnapshot(
                ram_total=int(vm.total),
                ram_used=int(vm.used),
                ram_available=int(vm.available),
                process_rss=rss + (engine_rss or 0),
                cpu_percent=float(ps.cpu_percent(None)),
                process_cpu_percent=cpu + (engine_cpu or 0.0),
                engine_pids=pids,
                engine_rss=engine_rss,
                engine_cpu_percent=engine_cpu,
            )
        except Exception as e:  # noqa: BLE001 - the host row shows it
            return HostSnapshot(error=f"{type(e).__name__}: {e}")

    def _sample_engine(self) -> tuple[int | None, float | None]:
        """(resident bytes, CPU percent) of the engine processes together; (None, None) without any.

        A process seen for the first time adds its memory and 0 % CPU (psutil counts CPU time
        from the previous call on the same Process object)."""
        ps = self._psutil
        for pid in list(self._engine_procs):
            if pid not in self._engine_pids:
                del self._engine_procs[pid]
        rss, cpu = 0, 0.0
        for pid in self._engine_pids:
            try:
                proc = self._engine_procs.get(pid)
                if proc is None:
                    proc = self._engine_procs[pid] = ps.Process(pid)
                    proc.cpu_percent(None)
                else:
                    cpu += float(proc.cpu_percent(None))
                rss += int(proc.memory_info().rss)
            except Exception:  # noqa: BLE001 - it ended meanwhile
                self._engine_procs.pop(pid, None)
        if not self._engine_procs:
            return None, None
        return rss, cpu

    @staticmethod
    def _sample_torch() -> tuple[TorchDeviceMemory, ...] | None:
        torch = sys.modules.get("torch")  # never import it here
        if torch is None:
            return None
        try:
            cuda = torch.cuda
            if not cuda.is_initialized():
                return None
            return tuple(
                TorchDeviceMemory(device=i, allocated=int(cuda.memory_allocated(i)),
                                  reserved=int(cuda.memory_reserved(i)))
                for i in range(cuda.device_count())
            )
        except Exception:  # noqa: BLE001 - torch's figures are a nicety, never a crash
            return None

    # ---- public -----------------------------------------------------------------------
    def sample(self) -> MonitorSnapshot:
        """One tick: NVML (if any), host, torch; appends to the history. Never raises."""
        with self._lock:
            try:
                if not self._initialised:
                    self._init_nvml()
                self._engine_pids = self._read_engine_pids()
                gpus: tuple[GpuSnapshot, ...] = ()
                if self._state == "ok":
                    gpus = tuple(self._sample_gpu(i) for i in range(len(self._handles)))
                host = self._sample_host()
                torch_mem = self._sample_torch()
                now = self._clock()
                self._record(now, host, gpus)
                return MonitorSnapshot(
                    timestamp=now,
                    nvml_state=self._state,
                    message=self._message,
                    driver_version=self._driver,
                    gpus=gpus,
                    host=host,
                    torch=torch_mem,
                    history=self._history_locked(),
                )
            except Exception as e:  # noqa: BLE001 - last line of defence
                return MonitorSnapshot(
                    timestamp=time.time(),
                    nvml_state="error",
                    message=f"monitor failed: {type(e).__name__}: {e}",
                    driver_version=None,
                    gpus=(),
                    host=HostSnapshot(error="not sampled"),
                    torch=None,
                    history=History(),
                )

    def history(self) -> History:
        with self._lock:
            return self._history_locked()

    def _record(self, now: float, host: HostSnapshot, gpus: tuple[GpuSnapshot, ...]) -> None:
        self._ts.append(now)
        self._ram.append(host.ram_used)
        self._rss.append(host.process_rss)
        by_index = {g.index: g for g in gpus}
        for i in self._gpu_mem:
            g = by_index.get(i)
            self._gpu_mem[i].append(g.memory_used if g else None)
            self._gpu_util[i].append(g.utilization_gpu if g else None)

    def _history_locked(self) -> History:
        return History(
            timestamps=tuple(self._ts),
            ram_used=tuple(self._ram),
            process_rss=tuple(self._rss),
            gpus=tuple(
                GpuHistory(index=i, memory_used=tuple(self._gpu_mem[i]), utilization=tuple(self._gpu_util[i]))
                for i in sorted(self._gpu_mem)
            ),
        )
