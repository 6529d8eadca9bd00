"""What the doctor reads from the machine without importing torch: the NVIDIA driver and its GPUs (NVML), and
the installed transformers (version and package folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

AUTO: Any = object()  # "find pynvml yourself" (tests pass a fake module, or None for "not installed")


@dataclass(frozen=True)
class GpuFacts:
    index: int
    name: str
    capability: Optional[tuple[int, int]]


@dataclass(frozen=True)
class DriverFacts:
    state: str  # "ok" | "no_library" | "no_gpu" | "error"
    message: str = ""
    driver_version: Optional[str] = None
    cuda_version: Optional[tuple[int, int]] = None  # the newest CUDA the driver supports
    gpus: tuple[GpuFacts, ...] = ()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def nvml_facts(nvml: Any = AUTO) -> DriverFacts:
    """The driver and its GPUs through NVML (``nvml``: the pynvml module, a fake in tests, None: missing)."""
    if nvml is AUTO:
        try:
            import pynvml  # nvidia-ml-py
        except Exception:  # noqa: BLE001 - a missing or broken library is a verdict
            pynvml = None
        nvml = pynvml
    if nvml is None:
        return DriverFacts("no_library", "nvidia-ml-py is not installed")
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - no library / no driver / no GPU
        names = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded", "NVMLError_GpuNotFound")
        kinds = tuple(c for c in (getattr(nvml, n, None) for n in names) if isinstance(c, type))
        state = "no_gpu" if isinstance(exc, kinds + (OSError,)) else "error"
        return DriverFacts(state, _text(exc) or type(exc).__name__)
    try:
        version = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = None
        try:
            raw = int(nvml.nvmlSystemGetCudaDriverVersion())  # e.g. 12040 for CUDA 12.4
            cuda = (raw // 1000, (raw % 1000) // 10)
        except Exception:  # noqa: BLE001 - a driver without the call: CUDA version unknown
            pass
        gpus = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                capability: Optional[tuple[int, int]] = (int(major), int(minor))
            except Exception:  # noqa: BLE001 - not every GPU reports it
                capability = None
            gpus.append(GpuFacts(i, _text(nvml.nvmlDeviceGetName(handle)), capability))
    except Exception as exc:  # noqa: BLE001 - the check reports it, never a crash
        return DriverFacts("error", f"{type(exc).__name__}: {_text(exc)}")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting NVML down is best effort
            pass
    if not gpus:
        return DriverFacts("no_gpu", "the driver reports 0 devices", version, cuda)
    return DriverFacts("ok", "", version, cuda, tuple(gpus))


def transformers_facts() -> tuple[Optional[str], Optional[Path]]:
    """(installed version, package folder) without importing transformers."""
    import importlib.metadata
    import importlib.util

    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None, None
    try:
        spec = importlib.util.find_spec("transformers")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return version, (Path(locations[0]) if locations else None)
