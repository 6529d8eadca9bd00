"""``glmtui fit MODEL [--context N] [--json]``: will this model fit this machine, per mode?

MODEL is a folder, a catalogue key or a hub id.  Its ``config.json`` comes from the folder,
from the models folder when it is downloaded, else from the hub (that one file only, with
the hub's endpoint rules: ``--endpoint``, ``HF_ENDPOINT``/``MODELSCOPE_ENDPOINT``, config.toml).

Figures per mode: weights and KV cache counted exactly on a meta-device model
(engine/predict.py; torch is imported only when this config was never counted: the stored
count answers any --context, exact_cache.py), plus memory.py's stated overhead estimate.
Verdicts against what is *free* now: each GPU's NVML free memory (after other processes),
and host RAM available.  An architecture
transformers does not know: one line, no figures, exit 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from . import catalog
from .engine import memory

MODES = memory.MODES
CONNECT_TIMEOUT = 5.0  # seconds: a hub that cannot be reached is reported within seconds
READ_TIMEOUT = 10.0


class FitError(Exception):
    """A one-line reason ``glmtui fit`` cannot answer (exit 1)."""


# --------------------------------------------------------------------------- config.json


@dataclass(frozen=True)
class ModelConfig:
    name: str
    config: dict
    origin: str  # the folder or URL config.json came from


def _read_local(folder: Path, name: str) -> ModelConfig:
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FitError(f"{folder} has no config.json: not a model folder") from None
    except (OSError, ValueError) as exc:
        raise FitError(f"{path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise FitError(f"{path} is not a JSON object")
    return ModelConfig(name, data, str(folder))


def _hub_config_url(source: str, repo: str, endpoint: str) -> str:
    if source == "hf":
        return f"{endpoint}/{urllib.parse.quote(repo)}/resolve/main/config.json"
    return f"{endpoint}/api/v1/models/{urllib.parse.quote(repo)}/repo?Revision=master&FilePath=config.json"


def fetch_hub_config(repo: str, source: str = "hf", endpoint: Optional[str] = None,
                     config_file: Optional[Path] = None) -> ModelConfig:
    """config.json of ``repo`` on ``source``: that one file, nothing else is downloaded."""
    from .hub import DownloadError
    from .hub.endpoints import resolve_endpoint

    try:
        base, hint = resolve_endpoint(source, endpoint, config_file)
    except DownloadError as exc:
        raise FitError(str(exc)) from None
    url = _hub_config_url(source, repo, base)
    headers = {"User-Agent": "glmtui-fit"}
    token = os.environ.get("HF_TOKEN") if source == "hf" else os.environ.get("MODELSCOPE_API_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    where = "Hugging Face" if source == "hf" else "ModelScope"
    try:
        import socket

        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT) as response:
            sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
            if isinstance(sock, socket.socket):
                sock.settimeout(READ_TIMEOUT)
            body = response.read(4 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        code = exc.headers.get("X-Error-Code", "") if exc.headers else ""
        if exc.code == 404 and code == "EntryNotFound":
            raise FitError(f"{repo} on {where} ({base}) has no config.json") from None
        if exc.code == 404:
            raise FitError(f"no model {repo} on {where} ({base})") from None
        if exc.code in (401, 403):
            raise FitError(f"{repo} on {where} ({base}) needs access: gated or private "
                           f"(set {'HF_TOKEN' if source == 'hf' else 'MODELSCOPE_API_TOKEN'})") from None
        raise FitError(f"{where} ({base}) answered HTTP {exc.code} for {repo}'s config.json") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        from .hub.net import connect_failure

        text = "no answer within seconds" if isinstance(reason, TimeoutError) or "timed out" in str(reason) \
            else connect_failure(reason if isinstance(reason, BaseException) else exc, base)
        raise FitError(f"cannot reach {base}: {text}; {hint}") from None
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise FitError(f"{repo}'s config.json on {where} is not JSON") from None
    if source == "modelscope" and isinstance(data, dict) and data.get("Success") is False:
        raise FitError(f"no model {repo} on {where} ({base}): {data.get('Message') or 'not found'}")
    if not isinstance(data, dict):
        raise FitError(f"{repo}'s config.json on {where} is not a JSON object")
    return ModelConfig(repo, data, url)


def model_config(spec: str, source: Optional[str] = None, endpoint: Optional[str] = None,
                 models_dir: Optional[Path] = None) -> ModelConfig:
    """The config.json for what the user typed: a folder, a catalogue key or a hub id."""
    try:
        entry = catalog.resolve(spec, source or "hf")
    except catalog.UnknownModelError as exc:
        raise FitError(str(exc)) from None
    if entry.local_path is not None:
        return _read_local(entry.local_path, entry.name)
    if models_dir is None:
        from .config import default_paths

        models_dir = default_paths().models_dir
    try:
        folder = entry.model_dir(models_dir)
    except ValueError:
        folder = None
    if folder is not None and (folder / "config.json").is_file():
        return _read_local(folder, entry.name)
    if source is None:
        source = "hf" if entry.hf_repo else "modelscope"
    try:
        repo = entry.repo_for(source)
    except ValueError as exc:
        raise FitError(str(exc)) from None
    fetched = fetch_hub_config(repo, source, endpoint)
    return ModelConfig(entry.name if entry.in_catalog else repo, fetched.config, fetched.origin)


# --------------------------------------------------------------------------- the machine


@dataclass(frozen=True)
class GpuFree:
    index: int
    name: Optional[str]
    free: Optional[int]
    total: Optional[int]


@dataclass(frozen=True)
class Machine:
    gpus: tuple[GpuFree, ...]
    ram_available: Optional[int]
    ram_total: Optional[int]
    gpu_note: Optional[str] = None  # why no GPU is listed (no driver, no nvidia-ml-py)


def machine_memory(nvml: Any = None) -> Machine:
    """Free memory now: NVML per GPU (``nvml``: a pynvml module, or None to import it) and host RAM."""
    from . import monitor

    sampler = monitor.Sampler(nvml=nvml) if nvml is not None else monitor.Sampler()
    try:
        snap = sampler.sample()
    finally:
        sampler.close()
    gpus = tuple(GpuFree(g.index, g.name, g.memory_free, g.memory_total) for g in snap.gpus if g.state == "ok")
    return Machine(gpus, snap.host.ram_available, snap.host.ram_total, None if gpus else snap.message)


# --------------------------------------------------------------------------- the answer


@dataclass(frozen=True)
class ModeFit:
    mode: str
    gpu: Optional[memory.MemoryPrediction]  # on a CUDA device (None without a GPU)
    cpu: memory.MemoryPrediction
    gpu_verdicts: tuple[tuple[int, memory.FitVerdict], ...]  # per GPU index
    all_gpus: Optional[memory.FitVerdict]  # spread over every GPU (--device auto), when more than one
    cpu_verdict: memory.FitVerdict


@dataclass(frozen=True)
class FitReport:
    model: ModelConfig
    exact: bool  # False: the hand formula (an estimate) stood in
    note: Optional[str]  # why the figures are estimates
    machine: Machine
    modes: tuple[ModeFit, ...]


def _predictions(cfg: dict, devices: tuple[str, ...],
                 context: Optional[int]) -> dict[str, tuple[dict[str, memory.MemoryPrediction], Optional[str]]]:
    """{device: (exact predictions, None)} (stored results, else one meta-device count for every device
    the store lacks), or the formula with why the exact figures are missing."""
    results: dict[str, memory.ExactResult] = {}
    for dev in devices:
        hit = memory.cached_exact(cfg, dev, context)
        if hit is not None:
            results[dev] = hit
    missing = tuple(d for d in devices if d not in results)
    if missing:
        try:
            from .engine import predict
        except Exception as exc:  # noqa: BLE001 - no torch/transformers here: the formula stands in
            results.update({d: memory.ExactResult({}, f"exact count unavailable ({type(exc).__name__}: {exc})")
                            for d in missing})
        else:
            predict._quiet()
            results.update(predict.exact_results(cfg, missing, context))
    out: dict[str, tuple[dict[str, memory.MemoryPrediction], Optional[str]]] = {}
    for dev in devices:
        result = results[dev]
        if result.unknown_architecture:
            raise FitError(result.error or "unknown architecture: no prediction")
        if result.predictions:
            out[dev] = (result.predictions, None)
            continue
        try:
            out[dev] = (memory.predict_all(cfg, context_len=context, device=dev), result.error)
        except Exception:  # noqa: BLE001 - the formula cannot read it either
            raise FitError(result.error or "no prediction") from None
    return out


def fit_report(model: ModelConfig, machine: Machine, context: Optional[int] = None) -> FitReport:
    preds = _predictions(model.config, ("cpu", "cuda") if machine.gpus else ("cpu",), context)
    cpu_preds, note = preds["cpu"]
    gpu_preds: dict[str, memory.MemoryPrediction] = {}
    if machine.gpus:
        gpu_preds, gpu_note = preds["cuda"]
        note = note or gpu_note
    rows = []
    for mode in MODES:
        g = gpu_preds.get(mode)
        verdicts = tuple((gpu.index, memory.fit(g.total_bytes, gpu.free, "cuda", mode=mode)) for gpu in machine.gpus) \
            if g else ()
        spread = None
        frees = [x.free for x in machine.gpus if x.free is not None]
        if g and len(machine.gpus) > 1 and len(frees) == len(machine.gpus):
            # every GPU holds its layers plus its own CUDA context
            extra = (len(machine.gpus) - 1) * memory.CUDA_CONTEXT_BYTES
            spread = memory.fit(g.total_bytes + extra, sum(frees), "cuda", mode=mode)
        c = cpu_preds[mode]
        cpu_verdict = memory.fit(c.total_bytes, machine.ram_available, "cpu", mode=mode)
        rows.append(ModeFit(mode, g, c, verdicts, spread, cpu_verdict))
    return FitReport(model, note is None, note, machine, tuple(rows))


# --------------------------------------------------------------------------- output


def _gib(n: Optional[int]) -> str:
    if n is None:
        return "?"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def report_json(r: FitReport) -> dict:
    def pred(p: Optional[memory.MemoryPrediction]) -> Optional[dict]:
        if p is None:
            return None
        return {"weights": p.weight_bytes, "kv_cache": p.kv_cache_bytes, "overhead": p.overhead_bytes,
                "total": p.total_bytes, "context": p.context_len, "kv_bytes_per_token": p.kv_bytes_per_token,
                "params": p.params, "source": p.source, "notes": list(p.notes)}

    def verdict(v: Optional[memory.FitVerdict]) -> Optional[dict]:
        return None if v is None else {"verdict": v.verdict, "reason": v.reason}

    return {
        "model": r.model.name,
        "config": r.model.origin,
        "exact": r.exact,
        "note": r.note,
        "machine": {"gpus": [asdict(g) for g in r.machine.gpus], "ram_available": r.machine.ram_available,
                    "ram_total": r.machine.ram_total, "gpu_note": r.machine.gpu_note},
        "modes": {
            m.mode: {
                "gpu": pred(m.gpu),
                "cpu": pred(m.cpu),
                "gpu_verdicts": {str(i): verdict(v) for i, v in m.gpu_verdicts},
                "all_gpus": verdict(m.all_gpus),
                "cpu_verdict": verdict(m.cpu_verdict),
            }
            for m in r.modes
        },
    }


def report_text(r: FitReport) -> str:
    first = r.modes[0]
    p = first.gpu or first.cpu
    lines = [f"{r.model.name}  ({_count(p.params)} parameters; config.json from {r.model.origin})"]
    ctx = f"KV cache at {p.context_len:,} tokens of context"
    if p.model_context and p.model_context != p.context_len:
        ctx += f" (the model's own: {p.model_context:,}; --context N to change)"
    lines.append(ctx)
    lines.append("weights and KV cache exact (counted on a meta-device model); overhead estimated"
                 if r.exact else f"(estimate) hand formula: {r.note}")
    where = [f"GPU {g.index} {g.name or ''}: {_gib(g.free)} free of {_gib(g.total)}".replace("  ", " ")
             for g in r.machine.gpus]
    where.append(f"RAM: {_gib(r.machine.ram_available)} available of {_gib(r.machine.ram_total)}")
    lines.append("free now: " + "; ".join(where))
    if not r.machine.gpus and r.machine.gpu_note:
        lines.append(f"no GPU: {r.machine.gpu_note}")
    lines.append("")
    head = f"{'mode':5} {'weights':>11} {'KV cache':>11} {'overhead':>11} {'total':>11}  verdict"
    for label, use_gpu in (("on the GPU", True), ("on the CPU", False)):
        if use_gpu and not r.machine.gpus:
            continue
        lines.append(label)
        lines.append(head)
        for m in r.modes:
            q = m.gpu if use_gpu and m.gpu is not None else m.cpu
            if use_gpu:
                parts = [f"GPU {i}: {v.verdict}" for i, v in m.gpu_verdicts]
                if m.all_gpus is not None:
                    parts.append(f"all GPUs: {m.all_gpus.verdict}")
                verdict = ", ".join(parts)
            else:
                verdict = m.cpu_verdict.verdict
            lines.append(f"{m.mode:5} {_gib(q.weight_bytes):>11} {_gib(q.kv_cache_bytes):>11} "
                         f"{_gib(q.overhead_bytes):>11} {_gib(q.total_bytes):>11}  {verdict}")
        lines.append("")
    notes = []
    for m in r.modes:
        for n in (m.gpu or m.cpu).notes:
            if n not in notes:
                notes.append(n)
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines).rstrip()


def fit_command(args: argparse.Namespace, nvml: Any = None) -> int:
    """``glmtui fit`` (arguments from cli.py); ``nvml`` is for tests (a fake pynvml)."""
    try:
        if args.context is not None and args.context < 1:
            raise FitError("--context must be a positive number of tokens")
        model = model_config(args.model, args.source, args.endpoint)
        report = fit_report(model, machine_memory(nvml), args.context)
    except FitError as exc:
        print(f"glmtui fit: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report_json(report), indent=1))
    else:
        print(report_text(report))
    return 0
