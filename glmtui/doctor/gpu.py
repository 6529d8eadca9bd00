"""The checks of the GPU stack: the NVIDIA driver, the torch build against it, compute capability against the
quantization modes (bitsandbytes / torchao: quant.py)."""

from __future__ import annotations

from typing import Optional

from .facts import DriverFacts, GpuFacts
from .verdicts import Check, Request

#: bitsandbytes' int8 tensor-core path needs 7.5 (bitsandbytes/cuda_specs.py ``has_imma``);
#: torch.cuda.is_bf16_supported() is native from major 8.
INT8_TENSOR_CORES = (7, 5)
BF16_NATIVE = (8, 0)


def check_driver(driver: DriverFacts, request: Request) -> Check:
    title = "NVIDIA driver"
    if driver.state == "ok":
        cuda = f" (CUDA {driver.cuda_version[0]}.{driver.cuda_version[1]})" if driver.cuda_version else ""
        names = ", ".join(f"GPU{g.index} {g.name}" for g in driver.gpus)
        return Check("driver", title, "ok", f"driver {driver.driver_version}{cuda}; {names}")
    verdict = "fail" if request.wants_cuda else ("ok" if request.device == "cpu" else "warn")
    asked = f" (--device {request.device} asks for one)" if request.wants_cuda else ": models run on the CPU"
    if verdict == "ok":
        return Check("driver", title, "ok", f"no NVIDIA GPU ({driver.message}): not needed for --device cpu")
    if driver.state == "no_library":
        return Check("driver", title, verdict, f"cannot ask NVML: {driver.message}{asked}",
                     "pip install nvidia-ml-py")
    if driver.state == "no_gpu":
        return Check("driver", title, verdict, f"no NVIDIA GPU found ({driver.message}){asked}",
                     "install the NVIDIA driver (nvidia-smi must list the GPU); in a container, run it with --gpus all")
    return Check("driver", title, verdict, f"NVML failed: {driver.message}{asked}",
                 "check nvidia-smi; reload the driver or reboot after a driver update")


def _cu_tag(driver: DriverFacts) -> str:
    if driver.cuda_version:
        major, minor = driver.cuda_version
        return f" at or below the driver's CUDA {major}.{minor} (cu{major}{minor} or older)"
    return ""


def _version_tuple(text: Optional[str]) -> Optional[tuple[int, int]]:
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except (TypeError, ValueError):
        return None


def check_torch(probe: Optional[dict], problem: Optional[str], driver: DriverFacts, request: Request) -> Check:
    title = "torch build"
    reinstall = "reinstall torch in this environment: pip install --force-reinstall torch"
    if probe is None:
        return Check("torch", title, "fail", f"torch could not be inspected: {problem}", reinstall)
    if probe.get("import_error"):
        return Check("torch", title, "fail", f"torch cannot be imported: {probe['import_error']}", reinstall)
    version = probe.get("version", "?")
    gpu = driver.state == "ok" and bool(driver.gpus)
    cuda_wheel = ("pip install torch --index-url https://download.pytorch.org/whl/cuXYZ with a CUDA version"
                  + (_cu_tag(driver) or " the driver supports"))
    if not probe.get("cuda") and not probe.get("hip"):
        if request.wants_cuda:
            return Check("torch", title, "fail",
                         f"torch {version} is a CPU-only build, but --device {request.device} asks for CUDA",
                         cuda_wheel)
        if gpu:
            return Check("torch", title, "warn",
                         f"torch {version} is a CPU-only build while an NVIDIA GPU is present: models run on the CPU",
                         cuda_wheel)
        return Check("torch", title, "ok", f"torch {version} (CPU build; no NVIDIA GPU here)")
    built = probe.get("cuda") or f"ROCm {probe.get('hip')}"
    if not probe.get("available"):
        why = probe.get("cuda_error") or "torch.cuda.is_available() is False"
        verdict = "fail" if request.wants_cuda else "warn"
        torch_cuda, driver_cuda = _version_tuple(probe.get("cuda")), driver.cuda_version
        if not gpu:
            fix = "install the NVIDIA driver, or use --device cpu"
        elif torch_cuda and driver_cuda and torch_cuda > driver_cuda:
            fix = (f"update the NVIDIA driver to one for CUDA {probe.get('cuda')}, or install a torch wheel"
                   + _cu_tag(driver))
        else:
            fix = "check CUDA_VISIBLE_DEVICES and nvidia-smi; in a container, run it with --gpus all"
        return Check("torch", title, verdict,
                     f"torch {version} built for CUDA {built}, but CUDA is unusable: {why}", fix)
    count = int(probe.get("count") or 0)
    if request.device.startswith("cuda:"):
        index = int(request.device.split(":", 1)[1])
        if index >= count:
            return Check("torch", title, "fail",
                         f"--device {request.device}, but torch sees {count} GPU{'s' if count != 1 else ''}",
                         f"use cuda:0..cuda:{count - 1}, or check CUDA_VISIBLE_DEVICES")
    detail = f"torch {version}, CUDA {built}, {count} GPU{'s' if count != 1 else ''} visible"
    torch_cuda = _version_tuple(probe.get("cuda"))
    if torch_cuda and driver.cuda_version and torch_cuda > driver.cuda_version:
        return Check("torch", title, "warn",
                     f"{detail}; built for a newer CUDA than the driver's "
                     f"{driver.cuda_version[0]}.{driver.cuda_version[1]} (minor-version compatibility: "
                     "kernels that need JIT compilation can fail)",
                     "update the NVIDIA driver, or install a torch wheel" + _cu_tag(driver))
    return Check("torch", title, "ok", detail)


def check_capability(driver: DriverFacts, torch_probe: Optional[dict], request: Request) -> Check:
    title = "GPU vs quantization"
    gpus = list(driver.gpus) if driver.state == "ok" else []
    if not gpus and torch_probe and torch_probe.get("capabilities"):
        gpus = [GpuFacts(i, f"GPU{i}", tuple(cc)) for i, cc in enumerate(torch_probe["capabilities"])]
    if not gpus:
        return Check("capability", title, "ok",
                     "no GPU: CPU modes only (fp32, bf16; int8/int4 through bitsandbytes' CPU kernels)")
    notes, fixes = [], []
    for g in gpus:
        if g.capability is None:
            continue
        cc = f"{g.capability[0]}.{g.capability[1]}"
        if g.capability < INT8_TENSOR_CORES:
            notes.append(f"GPU{g.index} (sm {cc}): int8 has no tensor-core path below 7.5 (slow 8-bit matmul)")
            fixes.append("prefer int4 or fp16")
        if g.capability < BF16_NATIVE:
            notes.append(f"GPU{g.index} (sm {cc}): bf16 is not native below 8.0")
            fixes.append("use --mode fp16")
    if notes:
        return Check("capability", title, "warn", "; ".join(notes), " or ".join(dict.fromkeys(fixes)))
    ccs = ", ".join(f"GPU{g.index} sm {g.capability[0]}.{g.capability[1]}" for g in gpus if g.capability)
    return Check("capability", title, "ok", f"{ccs or 'capability unknown'}: bf16, fp16, int8, int4 all native")

