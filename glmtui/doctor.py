"""``glmtui doctor``: the deployment checks, each with a verdict and a one-line fix.

Checks: the NVIDIA driver (NVML), the torch build against the driver, the GPUs'
compute capability against the quantization backends, bitsandbytes / torchao,
transformers against what each catalogue model needs, free disk in the model
folder, the hubs (Hugging Face, a configured mirror, ModelScope) and write
access to the history folder.

A verdict is "ok", "warn" (works, but not as well as it could) or "fail"
(something the user asked for, or glmtui itself, cannot work); the command
exits 1 when any check fails. torch and the quantizers are inspected in a
child interpreter with a time limit, so a broken or hanging install becomes a
verdict instead of crashing the doctor (or the TUI that shows it). No torch
import in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from .config import Paths, default_paths, read_table

VERDICTS = ("ok", "warn", "fail")
PROBE_MARK = "GLMTUI-DOCTOR "
DEFAULT_TIMEOUT = 60.0  # importing torch on a loaded machine takes seconds; a broken CUDA init can hang
NET_TIMEOUT = 3.0
HF_PUBLIC = "https://huggingface.co"
MODELSCOPE_PUBLIC = "https://modelscope.cn"
TRANSFORMERS_TESTED = ">=5.24,<6"  # as pyproject.toml
#: bitsandbytes' int8 tensor-core path needs 7.5 (bitsandbytes/cuda_specs.py ``has_imma``);
#: torch.cuda.is_bf16_supported() is native from major 8.
INT8_TENSOR_CORES = (7, 5)
BF16_NATIVE = (8, 0)
#: transformers' model package each architecture loads into (ChatGLM3 is converted to GlmForCausalLM).
ARCH_PACKAGE = {
    "GlmForCausalLM": "glm",
    "ChatGLMModel": "glm",
    "ChatGLMForConditionalGeneration": "glm",
    "Glm4ForCausalLM": "glm4",
    "Glm4MoeForCausalLM": "glm4_moe",
    "Glm4MoeLiteForCausalLM": "glm4_moe_lite",
    "GlmMoeDsaForCausalLM": "glm_moe_dsa",
}
_AUTO: Any = object()


@dataclass(frozen=True)
class Check:
    key: str
    title: str
    verdict: str  # "ok" | "warn" | "fail"
    detail: str  # what was found, one line
    fix: str = ""  # what to do, one line ("" when nothing to do)


@dataclass(frozen=True)
class Request:
    """What the user asked for: a failing check about these makes the exit code non-zero."""

    device: str = "auto"
    mode: Optional[str] = None
    model: Optional[str] = None

    @property
    def wants_cuda(self) -> bool:
        return self.device.startswith("cuda")


# ------------------------------------------------------------------ facts: NVML


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


def nvml_facts(nvml: Any = _AUTO) -> DriverFacts:
    """The driver and its GPUs through NVML (``nvml``: the pynvml module, a fake in tests, None: missing)."""
    if nvml is _AUTO:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except Exception:  # noqa: BLE001
            nvml = None
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
        except Exception:  # noqa: BLE001
            pass
        gpus = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                capability: Optional[tuple[int, int]] = (int(major), int(minor))
            except Exception:  # noqa: BLE001
                capability = None
            gpus.append(GpuFacts(i, _text(nvml.nvmlDeviceGetName(handle)), capability))
    except Exception as exc:  # noqa: BLE001
        return DriverFacts("error", f"{type(exc).__name__}: {_text(exc)}")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
    if not gpus:
        return DriverFacts("no_gpu", "the driver reports 0 devices", version, cuda)
    return DriverFacts("ok", "", version, cuda, tuple(gpus))


# ------------------------------------------------------------------ facts: child interpreters

TORCH_PROBE = r"""
import json, sys, warnings
out = {}
try:
    import torch
except BaseException as e:
    out["import_error"] = (type(e).__name__ + ": " + str(e)).splitlines()[0][:300]
else:
    out["version"] = str(torch.__version__)
    out["cuda"] = torch.version.cuda
    out["hip"] = getattr(torch.version, "hip", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out["available"] = bool(torch.cuda.is_available())
            out["count"] = int(torch.cuda.device_count()) if out["available"] else 0
            out["capabilities"] = [list(torch.cuda.get_device_capability(i)) for i in range(out["count"])]
        except Exception as e:
            out["available"] = False
            out["cuda_error"] = (type(e).__name__ + ": " + str(e)).splitlines()[0][:300]
    if caught and not out.get("cuda_error"):
        out["cuda_error"] = str(caught[0].message).strip().splitlines()[0][:300]
print(MARK + json.dumps(out), flush=True)
"""

QUANT_PROBE = r"""
import json, importlib.metadata as md
out = {}
for name in ("bitsandbytes", "torchao"):
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        out[name] = {"installed": False}
        continue
    try:
        __import__(name)
        out[name] = {"installed": True, "version": version}
    except BaseException as e:
        out[name] = {"installed": True, "version": version,
                     "error": (type(e).__name__ + ": " + str(e)).splitlines()[0][:300]}
print(MARK + json.dumps(out), flush=True)
"""


def run_probe(code: str, *, python: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT,
              env: Optional[dict] = None) -> tuple[Optional[dict], Optional[str]]:
    """(the probe's JSON, None) or (None, why it gave none): run in a fresh interpreter, in a
    session of its own so a timeout ends it and anything it started."""
    argv = [python or sys.executable, "-c", f"MARK = {PROBE_MARK!r}\n" + code]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="replace", env=env, start_new_session=True)
    except OSError as exc:
        return None, f"cannot start {argv[0]}: {exc}"
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.communicate()
        return None, f"no answer within {timeout:g} s (a hanging import or CUDA initialisation)"
    for line in reversed(out.splitlines()):
        if line.startswith(PROBE_MARK):
            try:
                return json.loads(line[len(PROBE_MARK):]), None
            except ValueError:
                break
    if proc.returncode and proc.returncode < 0:
        try:
            why = f"killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            why = f"killed by signal {-proc.returncode}"
    else:
        why = f"exit code {proc.returncode}"
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    return None, f"{why}: {lines[-1][:300]}" if lines else why


# ------------------------------------------------------------------ checks


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
                         f"torch {version} is a CPU-only build, but --device {request.device} asks for CUDA", cuda_wheel)
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
        return Check("torch", title, verdict, f"torch {version} built for CUDA {built}, but CUDA is unusable: {why}", fix)
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


def check_quantizers(probe: Optional[dict], problem: Optional[str], request: Request) -> list[Check]:
    wants_bnb = request.mode in ("int8", "int4")
    if probe is None:
        verdict = "fail" if wants_bnb else "warn"
        return [Check("bitsandbytes", "bitsandbytes", verdict, f"could not be inspected: {problem}",
                      "pip install --force-reinstall bitsandbytes")]
    bnb = probe.get("bitsandbytes") or {}
    needed = f" (--mode {request.mode} needs it)" if wants_bnb else ": int8/int4 unavailable"
    if not bnb.get("installed"):
        out = [Check("bitsandbytes", "bitsandbytes", "fail" if wants_bnb else "warn", f"not installed{needed}",
                     "pip install bitsandbytes")]
    elif bnb.get("error"):
        out = [Check("bitsandbytes", "bitsandbytes", "fail" if wants_bnb else "warn",
                     f"{bnb.get('version')} cannot be imported: {bnb['error']}{needed}",
                     "pip install --force-reinstall bitsandbytes (a build matching torch's CUDA)")]
    else:
        out = [Check("bitsandbytes", "bitsandbytes", "ok", f"bitsandbytes {bnb.get('version')} imports (int8, int4)")]
    tao = probe.get("torchao") or {}
    if not tao.get("installed"):
        out.append(Check("torchao", "torchao", "ok", "not installed (optional: glmtui quantizes with bitsandbytes)"))
    elif tao.get("error"):
        out.append(Check("torchao", "torchao", "warn", f"{tao.get('version')} cannot be imported: {tao['error']}",
                         "pip install torchao matching this torch, or pip uninstall torchao"))
    else:
        out.append(Check("torchao", "torchao", "ok", f"torchao {tao.get('version')} imports"))
    return out


def _transformers_facts() -> tuple[Optional[str], Optional[Path]]:
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


def _model_architectures(request: Request) -> tuple[list[tuple[str, str]], Optional[str]]:
    """[(model name, architecture)] for the catalogue, and the asked model's name when it is one of them."""
    from . import catalog

    rows = [(e.name, getattr(e, "architecture", None) or "GlmForCausalLM") for e in catalog.entries()]
    asked = None
    if request.model:
        try:
            entry = catalog.resolve(request.model)
        except Exception:  # noqa: BLE001 - an unknown name is the load's message, not ours
            return rows, None
        if entry.local_path is not None:
            config = catalog._read_json(entry.local_path / "config.json") or {}
            archs = config.get("architectures") or []
            arch = archs[0] if archs and isinstance(archs[0], str) else None
            if arch:
                rows.append((entry.name, arch))
                asked = entry.name
        elif entry.in_catalog:
            asked = entry.name
    return rows, asked


def check_transformers(request: Request, facts: Optional[tuple[Optional[str], Optional[Path]]] = None) -> Check:
    title = "transformers"
    version, folder = facts if facts is not None else _transformers_facts()
    if version is None:
        return Check("transformers", title, "fail", "transformers is not installed",
                     f"pip install 'transformers{TRANSFORMERS_TESTED}'")
    rows, asked = _model_architectures(request)
    missing = [(name, arch) for name, arch in rows
               if arch in ARCH_PACKAGE and (folder is None or not (folder / "models" / ARCH_PACKAGE[arch]).is_dir())]
    unknown = [(name, arch) for name, arch in rows if arch not in ARCH_PACKAGE and name == asked]
    try:
        from packaging.specifiers import SpecifierSet

        tested = SpecifierSet(TRANSFORMERS_TESTED).contains(version, prereleases=True)
    except Exception:  # noqa: BLE001 - packaging missing or an odd version string
        tested = True
    if missing:
        names = ", ".join(f"{n} ({a})" for n, a in missing)
        verdict = "fail" if asked and any(n == asked for n, _ in missing) else "warn"
        return Check("transformers", title, verdict, f"transformers {version} lacks the classes for: {names}",
                     f"pip install -U 'transformers{TRANSFORMERS_TESTED}'")
    if unknown:
        return Check("transformers", title, "warn",
                     f"transformers {version}; {unknown[0][0]} is a {unknown[0][1]}, which glmtui does not know",
                     "use a GLM model (GlmForCausalLM, Glm4ForCausalLM) or a catalogue model")
    if not tested:
        return Check("transformers", title, "warn",
                     f"transformers {version}: glmtui is tested with {TRANSFORMERS_TESTED}; every catalogue model's "
                     "class is present", f"pip install 'transformers{TRANSFORMERS_TESTED}'")
    return Check("transformers", title, "ok", f"transformers {version}: every catalogue model's class is present")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_disk(paths: Paths, request: Request, disk_usage=shutil.disk_usage) -> Check:
    from . import catalog

    title = "disk (models)"
    folder = paths.models_dir
    try:
        free = disk_usage(_existing(folder)).free
    except OSError as exc:
        return Check("disk", title, "warn", f"cannot read the free space of {folder}: {exc}",
                     "check the folder (GLMTUI_HOME moves it)")
    pending = []
    for entry in catalog.entries():
        if entry.download_bytes and not catalog.local_status(entry, folder).complete:
            pending.append(entry)
    asked = None
    if request.model:
        try:
            asked = catalog.resolve(request.model)
        except Exception:  # noqa: BLE001
            asked = None
    where = f"{_gb(free)} free in {folder}"
    if asked is not None and asked in pending and asked.download_bytes > free:
        return Check("disk", title, "fail", f"{where}: {asked.name} needs {_gb(asked.download_bytes)}",
                     "free space, or move the models: set GLMTUI_HOME to a larger disk")
    if not pending:
        return Check("disk", title, "ok", f"{where}; every catalogue model is downloaded")
    too_big = sorted((e for e in pending if e.download_bytes > free), key=lambda e: e.download_bytes)
    if len(too_big) == len(pending):
        return Check("disk", title, "warn",
                     f"{where}: too little for any catalogue model (the smallest, {too_big[0].name}, needs "
                     f"{_gb(too_big[0].download_bytes)})", "free space, or set GLMTUI_HOME to a larger disk")
    if too_big:  # the big MoE models need hundreds of GB: fine not to have room for them
        names = ", ".join(e.name for e in too_big[:4]) + (", …" if len(too_big) > 4 else "")
        return Check("disk", title, "ok", f"{where}: room for {len(pending) - len(too_big)} of the "
                                          f"{len(pending)} catalogue models not downloaded (not {names})")
    return Check("disk", title, "ok", f"{where}: room for every catalogue model")


def hub_endpoints(config_file: Path, env: Optional[dict] = None) -> list[tuple[str, str, str, str]]:
    """[(key, title, url, where it is set)]: the configured Hugging Face mirror (if any), Hugging Face,
    ModelScope; the same precedence as downloads (the variable, then [hub] in config.toml)."""
    env = os.environ if env is None else env
    table = read_table(config_file, "hub")
    out = []
    hf_where = "HF_ENDPOINT" if env.get("HF_ENDPOINT") else f"hf_endpoint under [hub] in {config_file}"
    mirror = (env.get("HF_ENDPOINT") or str(table.get("hf_endpoint") or "")).strip().rstrip("/")
    if mirror and mirror != HF_PUBLIC:
        out.append(("hub_mirror", "Hugging Face mirror", mirror, hf_where))
    out.append(("hub_hf", "Hugging Face", HF_PUBLIC, "the public hub"))
    ms_where = ("MODELSCOPE_ENDPOINT" if env.get("MODELSCOPE_ENDPOINT")
                else f"modelscope_endpoint under [hub] in {config_file}")
    ms = (env.get("MODELSCOPE_ENDPOINT") or str(table.get("modelscope_endpoint") or "")).strip().rstrip("/")
    out.append(("hub_modelscope", "ModelScope", ms or MODELSCOPE_PUBLIC, ms_where if ms else "the public hub"))
    return out


def _why_unreachable(exc: BaseException, timeout: float) -> str:
    import httpx

    text = str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g} s"
    if "Connection refused" in text or "[Errno 111]" in text:
        return "connection refused"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text \
            or "nodename nor servname" in text or "getaddrinfo" in text:
        return "the name does not resolve (no network, or no DNS)"
    return text.splitlines()[0] if text else type(exc).__name__


def check_hub(key: str, title: str, url: str, where: str, mirrored: bool, timeout: float = NET_TIMEOUT) -> Check:
    import httpx

    started = time.monotonic()
    try:
        response = httpx.get(url + "/", timeout=timeout, follow_redirects=False)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        why = _why_unreachable(exc, timeout)
        if key == "hub_mirror":
            fix = f"check the mirror's URL in {where}"
        elif key == "hub_hf":
            fix = ("nothing to do: downloads use the mirror" if mirrored else
                   "use a mirror (HF_ENDPOINT or hf_endpoint under [hub] in config.toml) or ModelScope "
                   "(glmtui pull --source modelscope)")
        else:
            fix = "check the network, MODELSCOPE_ENDPOINT, or download from Hugging Face (--source hf)"
        verdict = "ok" if key == "hub_hf" and mirrored else "warn"
        return Check(key, title, verdict, f"{url} unreachable: {why}", "" if verdict == "ok" else fix)
    seconds = time.monotonic() - started
    return Check(key, title, "ok", f"{url} answers (HTTP {response.status_code}, {seconds:.2f} s; set by {where})")


def check_history(paths: Paths) -> Check:
    title = "history folder"
    db = paths.history_db
    folder = db.parent
    fix_mode = f"chmod u+w {db}"
    if db.exists():
        try:
            mode = stat.S_IMODE(db.stat().st_mode)
        except OSError as exc:
            return Check("history", title, "fail", f"cannot read {db}: {exc}", f"check {folder}")
        if not mode & stat.S_IWUSR:  # the store keeps such a file read-only, even for root
            return Check("history", title, "fail",
                         f"{db} is read-only (mode {mode:04o}): chats are not saved", fix_mode)
    target = folder if folder.exists() else _existing(folder)
    if not target.is_dir():
        return Check("history", title, "fail", f"{target} is not a folder: chats are not saved",
                     f"move {target} away (glmtui creates {folder})")
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".glmtui-doctor-"):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return Check("history", title, "fail", f"cannot write in {target} ({reason}): chats are not saved",
                     f"chown/chmod u+w {target}, or set GLMTUI_HOME to a folder you own")
    note = "" if folder.exists() else f" (created on first start under {target})"
    return Check("history", title, "ok", f"{folder} is writable{note}")


# ------------------------------------------------------------------ all together


def run_checks(request: Request = Request(), *, paths: Optional[Paths] = None, nvml: Any = _AUTO,
               python: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT, net_timeout: float = NET_TIMEOUT,
               env: Optional[dict] = None) -> list[Check]:
    """Every check, in a fixed order; the slow ones (child interpreters, network) run in parallel."""
    paths = paths or default_paths()
    hubs = hub_endpoints(paths.config_file, env)
    mirrored = any(k == "hub_mirror" for k, *_ in hubs)
    with ThreadPoolExecutor(max_workers=2 + len(hubs)) as pool:
        torch_future = pool.submit(run_probe, TORCH_PROBE, python=python, timeout=timeout, env=env)
        quant_future = pool.submit(run_probe, QUANT_PROBE, python=python, timeout=timeout, env=env)
        hub_futures = [pool.submit(check_hub, key, title, url, where, mirrored, net_timeout)
                       for key, title, url, where in hubs]
        driver = nvml_facts(nvml)
        local = [check_transformers(request), check_disk(paths, request), check_history(paths)]
        torch_probe, torch_problem = torch_future.result()
        quant_probe, quant_problem = quant_future.result()
        hub_checks = [f.result() for f in hub_futures]
    return [
        check_driver(driver, request),
        check_torch(torch_probe, torch_problem, driver, request),
        check_capability(driver, torch_probe, request),
        *check_quantizers(quant_probe, quant_problem, request),
        local[0],
        local[1],
        *hub_checks,
        local[2],
    ]


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.verdict == "fail" for c in checks) else 0


def summary(checks: list[Check]) -> str:
    fails = sum(c.verdict == "fail" for c in checks)
    warns = sum(c.verdict == "warn" for c in checks)
    if fails:
        return f"{fails} failed, {warns} warning{'s' if warns != 1 else ''}: see the fixes above"
    if warns:
        return f"everything needed works; {warns} warning{'s' if warns != 1 else ''}"
    return "everything checked works"


def format_text(checks: list[Check]) -> str:
    width = max(len(c.title) for c in checks) if checks else 0
    lines = []
    for c in checks:
        lines.append(f"{c.verdict:<4}  {c.title:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    lines.append(summary(checks))
    return "\n".join(lines)


def to_json(checks: list[Check]) -> dict:
    return {"checks": [asdict(c) for c in checks], "exit_code": exit_code(checks), "summary": summary(checks)}


def run_doctor(args) -> int:
    request = Request(device=getattr(args, "device", None) or "auto", mode=getattr(args, "mode", None),
                      model=getattr(args, "model", None))
    checks = run_checks(request, timeout=float(getattr(args, "timeout", None) or DEFAULT_TIMEOUT))
    if getattr(args, "json", False):
        print(json.dumps(to_json(checks), ensure_ascii=False, indent=2))
    else:
        print(format_text(checks))
    return exit_code(checks)
