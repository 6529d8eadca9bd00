"""Exact predictions for the front ends, without torch in their process.

The exact prediction (engine/predict.py) builds the model on the meta device, which needs
torch and transformers: seconds of imports.  Front ends get it from a short-lived
subprocess (:func:`predict_exact_subprocess`), and every exact result is kept in
``<cache>/predictions/`` keyed by the config's content, the transformers version, device,
context and batch, so a model seen once is answered at once afterwards (``glmtui fit``, the
Models pane and the load checks share it).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

from .memory import MemoryPrediction, read_config

__all__ = [
    "ExactResult",
    "prediction_from_dict",
    "cache_key",
    "cached_exact",
    "store_exact",
    "result_to_json",
    "predict_exact_subprocess",
]


@dataclass(frozen=True)
class ExactResult:
    """Exact predictions, or why there are none.

    ``unknown_architecture``: transformers has no model for the config: predict nothing.
    Otherwise an ``error`` means the exact count could not be had (the caller may fall back
    to the hand formula, marked as an estimate)."""

    predictions: dict[str, MemoryPrediction]
    error: Optional[str] = None
    unknown_architecture: bool = False


def prediction_from_dict(data: Mapping[str, Any]) -> MemoryPrediction:
    names = {f.name for f in fields(MemoryPrediction)}
    kw = {k: v for k, v in data.items() if k in names}
    kw["notes"] = tuple(kw.get("notes") or ())
    return MemoryPrediction(**kw)


def _transformers_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "none"


def cache_key(cfg: Mapping[str, Any], device: str, context_len: Optional[int], batch: int = 1) -> str:
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    blob = json.dumps({"config": cfg, "transformers": _transformers_version(), "device": dev,
                       "context": context_len, "batch": batch, "v": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _cache_dir() -> Path:
    from ..config import default_paths

    return default_paths().cache_dir / "predictions"


def cached_exact(cfg: Mapping[str, Any], device: str, context_len: Optional[int],
                 batch: int = 1) -> Optional[ExactResult]:
    """A stored exact result for this config, or None."""
    try:
        data = json.loads((_cache_dir() / f"{cache_key(cfg, device, context_len, batch)}.json").read_text("utf-8"))
        return _result_from_json(data)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def store_exact(cfg: Mapping[str, Any], device: str, context_len: Optional[int], result: ExactResult,
                batch: int = 1) -> None:
    """Keep an exact result (not a failure: it may be transient) for the next asker; best effort."""
    if not result.predictions and not result.unknown_architecture:
        return
    try:
        folder = _cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{cache_key(cfg, device, context_len, batch)}.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result_to_json(result)), "utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def result_to_json(result: ExactResult) -> dict[str, Any]:
    if result.predictions:
        return {"predictions": {m: asdict(p) for m, p in result.predictions.items()}}
    return {"error": result.error or "no prediction", "unknown_architecture": result.unknown_architecture}


def _result_from_json(data: Mapping[str, Any]) -> ExactResult:
    if "predictions" in data:
        return ExactResult({m: prediction_from_dict(p) for m, p in data["predictions"].items()})
    return ExactResult({}, str(data.get("error") or "no prediction"), bool(data.get("unknown_architecture")))


_memo: dict[tuple[str, float, str, Optional[int]], ExactResult] = {}
_memo_lock = threading.Lock()


def predict_exact_subprocess(
    model_dir: str | os.PathLike[str],
    device: str = "cuda",
    context_len: Optional[int] = None,
    timeout: float = 120.0,
) -> ExactResult:
    """The exact prediction for ``model_dir`` from ``python -m glmtui.engine.predict`` (torch stays
    out of this process).  Blocks for the subprocess on a cache miss: call it off the UI thread.
    Never raises: a failure is ``ExactResult({}, error)``."""
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    try:
        cfg = read_config(model_dir)
        stamp = os.stat(os.path.join(os.fspath(model_dir), "config.json")).st_mtime
    except (OSError, ValueError) as exc:
        return ExactResult({}, f"config.json cannot be read: {exc}")
    memo_key = (os.path.realpath(os.fspath(model_dir)), stamp, dev, context_len)
    with _memo_lock:
        if memo_key in _memo:
            return _memo[memo_key]
    result = cached_exact(cfg, dev, context_len)
    if result is None:
        cmd = [sys.executable, "-m", "glmtui.engine.predict", os.fspath(model_dir), "--device", dev, "--json"]
        if context_len:
            cmd += ["--context", str(int(context_len))]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            result = _result_from_json(json.loads(lines[-1])) if lines else ExactResult(
                {}, f"the predictor exited with code {done.returncode}")
        except subprocess.TimeoutExpired:
            result = ExactResult({}, f"the exact count took over {timeout:.0f} s")
        except (OSError, ValueError) as exc:
            result = ExactResult({}, f"the predictor could not run: {exc}")
    if result.predictions or result.unknown_architecture:
        with _memo_lock:
            _memo[memo_key] = result
    return result
