"""bitsandbytes and torchao against the backend each int8/int4 load would use here.

The engine picks the library per mode and device (glmtui.engine.quant_backends.choose: torchao's weight-only
kernels on CUDA where installed, int4 from sm_80; bitsandbytes on the CPU, older GPUs and without torchao). A
missing or broken library is a fail only when the mode asked for would use it on the device asked for; one the
engine would not use here is at most a warning.
"""

from __future__ import annotations

from typing import Optional

from ..engine.quant_backends import BITSANDBYTES, TORCHAO, choose
from .facts import DriverFacts
from .verdicts import Check, Request

QUANT_MODES = ("int8", "int4")


def load_target(request: Request, driver: Optional[DriverFacts], torch_probe: Optional[dict]
                ) -> tuple[str, Optional[tuple[int, int]]]:
    """("cuda" or "cpu": where a load runs, that GPU's compute capability or None). ``auto`` is CUDA where
    torch can use it, as the engine decides."""
    if request.device == "cpu" or (request.device == "auto" and not (torch_probe or {}).get("available")):
        return "cpu", None
    index = int(request.device.split(":", 1)[1]) if request.device.startswith("cuda:") else 0
    if driver is not None and driver.state == "ok":
        for gpu in driver.gpus:
            if gpu.index == index and gpu.capability is not None:
                major, minor = gpu.capability
                return "cuda", (major, minor)
    capabilities = (torch_probe or {}).get("capabilities") or []
    if index < len(capabilities):
        major, minor = capabilities[index][:2]
        return "cuda", (int(major), int(minor))
    return "cuda", None


def check_quantizers(probe: Optional[dict], problem: Optional[str], request: Request,
                     driver: Optional[DriverFacts] = None, torch_probe: Optional[dict] = None) -> list[Check]:
    asked = request.mode if request.mode in QUANT_MODES else None
    if probe is None:
        verdict = "fail" if asked else "warn"
        return [Check("bitsandbytes", "bitsandbytes", verdict, f"could not be inspected: {problem}",
                      "pip install --force-reinstall bitsandbytes")]
    bnb = probe.get("bitsandbytes") or {}
    tao = probe.get("torchao") or {}
    device, capability = load_target(request, driver, torch_probe)
    where = "on this GPU" if device == "cuda" else "on the CPU"
    torchao = tao.get("version") if tao.get("installed") else None
    backend = {m: _backend(m, device, torchao, capability) for m in QUANT_MODES}
    return [_bitsandbytes(bnb, asked, [m for m in QUANT_MODES if backend[m] == BITSANDBYTES], where),
            _torchao(tao, asked, [m for m in QUANT_MODES if backend[m] == TORCHAO], device, where)]


def _backend(mode: str, device: str, torchao: Optional[str], capability: Optional[tuple[int, int]]) -> str:
    choice = choose(mode, device, torchao=torchao, capability=capability)
    return choice.backend if choice is not None else BITSANDBYTES  # None only for 16/32-bit modes


def _needed(asked: Optional[str], modes: list[str], where: str) -> str:
    if asked in modes:
        return f" (--mode {asked} needs it {where})"
    return f": {'/'.join(modes)} unavailable {where}"


def _bitsandbytes(bnb: dict, asked: Optional[str], modes: list[str], where: str) -> Check:
    title = "bitsandbytes"
    verdict = "fail" if asked in modes else "warn"
    if not bnb.get("installed"):
        if not modes:
            return Check("bitsandbytes", title, "ok", f"not installed; not needed {where}: torchao runs int8 and int4")
        return Check("bitsandbytes", title, verdict, f"not installed{_needed(asked, modes, where)}",
                     "pip install bitsandbytes")
    if bnb.get("error"):
        if not modes:
            return Check("bitsandbytes", title, "ok", f"{bnb.get('version')} cannot be imported ({bnb['error']}); "
                         f"not needed {where}: torchao runs int8 and int4")
        return Check("bitsandbytes", title, verdict,
                     f"{bnb.get('version')} cannot be imported: {bnb['error']}{_needed(asked, modes, where)}",
                     "pip install --force-reinstall bitsandbytes (a build matching torch's CUDA)")
    runs = f"runs {', '.join(modes)} {where}" if modes else f"not used {where} (torchao runs int8 and int4)"
    return Check("bitsandbytes", title, "ok", f"bitsandbytes {bnb.get('version')} imports; {runs}")


def _torchao(tao: dict, asked: Optional[str], modes: list[str], device: str, where: str) -> Check:
    title = "torchao"
    if not tao.get("installed"):
        if device == "cuda":  # works through bitsandbytes, more slowly: a warning
            return Check("torchao", title, "warn", "not installed: int8/int4 run through bitsandbytes on this GPU "
                         "(slower decoding)", "pip install torchao (a build matching this torch)")
        return Check("torchao", title, "ok", "not installed (optional: its fast kernels are CUDA kernels; "
                     "bitsandbytes quantizes on the CPU)")
    if tao.get("error"):
        verdict = "fail" if asked in modes else ("warn" if modes else "ok")
        needed = _needed(asked, modes, where) if modes else f"; not used {where}"
        return Check("torchao", title, verdict, f"{tao.get('version')} cannot be imported: {tao['error']}{needed}",
                     "pip install torchao matching this torch, or pip uninstall torchao (bitsandbytes is then used), "
                     "or set GLMTUI_QUANT_BACKEND=bitsandbytes")
    runs = f"runs {', '.join(modes)} {where}" if modes else f"not used {where}"
    return Check("torchao", title, "ok", f"torchao {tao.get('version')} imports; {runs}")
