"""Exact predictions for the front ends, without torch in their process.

The exact prediction (engine/predict.py) builds the model on the meta device, which needs
torch and transformers: seconds of imports.  What that count finds does not depend on the
context (count_facts.py: each mode's weights, the KV cache's bytes per token), so it is kept
in ``<cache>/predictions/`` keyed by the config's content, the transformers version and the
device kind; any context and batch is then answered from it at once, torch-free (``glmtui fit``,
the Models pane and the load checks share it).  A config never counted is counted by a
short-lived subprocess (:func:`predict_exact_subprocess`; :func:`count_in_background` for
counts nobody waits for: at low priority, detached).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional

from .count_facts import CountFacts, predictions
from .memory import MemoryPrediction, read_config

__all__ = [
    "ExactResult",
    "prediction_from_dict",
    "cache_key",
    "cached_count",
    "cached_exact",
    "store_count",
    "store_unknown",
    "result_to_json",
    "predict_exact_subprocess",
    "count_in_background",
]

log = logging.getLogger(__name__)
PREDICTOR_MODULE = "glmtui.engine.predict"
LOW_PRIORITY = 10  # niceness of a count nobody waits for


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


@functools.lru_cache(maxsize=1)
def _transformers_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return "none"


def cache_key(cfg: Mapping[str, Any], device: str) -> str:
    """The stored count's name: the config's content, the transformers version, the device kind (not
    the context or batch: those are worked out from the count)."""
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    blob = json.dumps({"config": cfg, "transformers": _transformers_version(), "device": dev, "v": 2},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _cache_dir() -> Path:
    from ..config import default_paths

    return default_paths().cache_dir / "predictions"


def cached_count(cfg: Mapping[str, Any], device: str) -> Optional[CountFacts | ExactResult]:
    """The stored count for this config on ``device``: its facts, an ExactResult saying transformers
    does not know the architecture, or None (never counted)."""
    try:
        data = json.loads((_cache_dir() / f"{cache_key(cfg, device)}.json").read_text("utf-8"))
        if data.get("unknown_architecture"):
            return ExactResult({}, str(data.get("error") or "unknown architecture: no prediction"), True)
        return CountFacts.from_json(data["facts"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def cached_exact(cfg: Mapping[str, Any], device: str, context_len: Optional[int],
                 batch: int = 1) -> Optional[ExactResult]:
    """The exact result at ``context_len`` x ``batch`` from the stored count, or None (never counted)."""
    found = cached_count(cfg, device)
    if found is None or isinstance(found, ExactResult):
        return found
    try:
        return ExactResult(predictions(found, context_len, batch))
    except (KeyError, ValueError, TypeError):  # a stored record this code cannot use: count again
        return None


def _store(cfg: Mapping[str, Any], device: str, record: Mapping[str, Any]) -> None:
    try:
        folder = _cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{cache_key(cfg, device)}.json"
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps(record), "utf-8")
        os.replace(tmp, path)
    except OSError:
        pass


def store_count(cfg: Mapping[str, Any], device: str, facts: CountFacts) -> None:
    """Keep a count's facts for the next asker, whatever its context; best effort."""
    _store(cfg, device, {"facts": facts.to_json()})


def store_unknown(cfg: Mapping[str, Any], device: str, error: str) -> None:
    """Keep that transformers does not know this architecture (a failure of another kind is not kept:
    it may be transient)."""
    _store(cfg, device, {"unknown_architecture": True, "error": error})


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


def _predictor_command(model_dir: str | os.PathLike[str], device: str, context_len: Optional[int]) -> list[str]:
    cmd = [sys.executable, "-m", PREDICTOR_MODULE, os.fspath(model_dir), "--device", device, "--json"]
    if context_len:
        cmd += ["--context", str(int(context_len))]
    return cmd


def _lower_priority(pid: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, pid, LOW_PRIORITY)
    except (AttributeError, OSError):  # not on this platform, or the process is gone already
        pass


def _start_predictor(cmd: list[str], low_priority: bool, **popen: Any) -> Any:
    """Start the counting subprocess (the one place one starts: tests watch it). A count whose output is
    read here is a fork of the launcher when it is ready (no imports to pay: launcher.py), else a fresh
    interpreter; a detached one (``start_new_session``) outlives this process, so it is always fresh."""
    proc: Any = None
    if popen.get("stdout") == subprocess.PIPE and not popen.get("start_new_session"):
        proc = _launched_predictor(cmd, LOW_PRIORITY if low_priority else 0)
    if proc is None:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **popen)
        if low_priority:
            _lower_priority(proc.pid)
    if not popen.get("start_new_session"):  # a detached count outlives this process: not ours to end
        with _memo_lock:
            _running.add(proc)
    return proc


_running: set[Any] = set()  # the predictors this process started and reads (end_predictors ends them)


def end_predictors() -> None:
    """Kill the counts this process is waiting for (at quit: a count must not outlive its front end)."""
    with _memo_lock:
        running = list(_running)
    for proc in running:
        if proc.poll() is None:
            try:
                proc.kill()
            except OSError:  # already gone
                pass


class _LaunchedPredictor:
    """A predictor forked by the launcher, read like ``Popen.communicate`` (its stderr is not kept)."""

    def __init__(self, proc: Any, out_fd: int):
        self.proc, self.pid, self._out = proc, proc.pid, out_fd

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def kill(self) -> None:
        self.proc.kill()

    def communicate(self, timeout: Optional[float] = None) -> tuple[str, str]:
        import selectors

        deadline = None if timeout is None else time.monotonic() + timeout
        chunks = []
        with selectors.DefaultSelector() as selector:
            selector.register(self._out, selectors.EVENT_READ)
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired("predictor", timeout or 0.0)
                if not selector.select(left):
                    continue
                chunk = os.read(self._out, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        os.close(self._out)
        self.proc.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
        return b"".join(chunks).decode("utf-8", "replace"), ""


def _launched_predictor(cmd: list[str], nice: int) -> Optional[_LaunchedPredictor]:
    from . import launcher

    shared = launcher.shared()
    if not shared.ready_now():
        return None
    read_fd, write_fd = os.pipe()
    null_fd = os.open(os.devnull, os.O_WRONLY)
    try:
        proc = shared.spawn(f"{PREDICTOR_MODULE}:main", cmd[3:], {1: write_fd, 2: null_fd}, new_session=False,
                            nice=nice)
    except OSError:
        os.close(read_fd)
        return None
    finally:
        os.close(write_fd)
        os.close(null_fd)
    return _LaunchedPredictor(proc, read_fd)


def predict_exact_subprocess(
    model_dir: str | os.PathLike[str],
    device: str = "cuda",
    context_len: Optional[int] = None,
    timeout: float = 120.0,
    low_priority: bool = False,
    start_launcher: bool = False,
) -> ExactResult:
    """The exact prediction for ``model_dir``: from the stored count when there is one, else from
    ``python -m glmtui.engine.predict`` (torch stays out of this process; it stores the count).
    Blocks for the subprocess on a cache miss: call it off the UI thread.  Never raises: a failure
    is ``ExactResult({}, error)``.  ``start_launcher``: when a process must run, start the launcher too
    (a front end that counts again and again, the TUI: its next counts are forks)."""
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
        if start_launcher:  # a front end that counts again and again: the next counts are forks (launcher.py)
            from . import launcher

            launcher.shared().start()
        result = _run_predictor(_predictor_command(model_dir, dev, context_len), timeout, low_priority)
    if result.predictions or result.unknown_architecture:
        with _memo_lock:
            _memo[memo_key] = result
    return result


def _run_predictor(cmd: list[str], timeout: float, low_priority: bool) -> ExactResult:
    try:
        proc = _start_predictor(cmd, low_priority, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        return ExactResult({}, f"the predictor could not run: {exc}")
    try:
        out, _err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return ExactResult({}, f"the exact count took over {timeout:.0f} s")
    finally:
        with _memo_lock:
            _running.discard(proc)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    try:
        return _result_from_json(json.loads(lines[-1])) if lines else ExactResult(
            {}, f"the predictor exited with code {proc.returncode}")
    except (ValueError, TypeError, KeyError) as exc:
        return ExactResult({}, f"the predictor's answer cannot be read: {exc}")


def count_in_background(model_dir: str | os.PathLike[str], device: str = "cuda") -> Optional[subprocess.Popen]:
    """Start counting ``model_dir`` for the store and return at once (after a download: ``glmtui fit`` and
    the Models pane then answer from the store).  The count runs detached, at low priority, its output
    in ``<cache>/predictions/count.log``; a config already counted starts nothing (None).  Never raises:
    a failure is logged."""
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    try:
        cfg = read_config(model_dir)
    except (OSError, ValueError) as exc:
        log.info("no exact count for %s: config.json cannot be read: %s", model_dir, exc)
        return None
    if cached_count(cfg, dev) is not None:
        return None
    try:
        folder = _cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "count.log", "a", encoding="utf-8") as log_file:
            log_file.write(f"counting {os.fspath(model_dir)} ({dev})\n")
            log_file.flush()
            return _start_predictor(_predictor_command(model_dir, dev, None), True, stdout=subprocess.DEVNULL,
                                    stderr=log_file, start_new_session=True)
    except OSError as exc:
        log.info("the exact count of %s could not start: %s", model_dir, exc)
        return None
