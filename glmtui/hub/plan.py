"""A download's plan and its traces on disk: which files at which commit, what is already there,
the partial folder's state and lock, and the completion marker that makes a model usable.

Files are streamed into ``<model>/.glmtui-partial/<file>.part`` (with ``state.json`` naming what
each part is of); the model is marked usable (``.glmtui-complete``, with the file list) only when
all files are in place and verified. Nothing outside the model's own folder is written.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ..catalog import COMPLETE_MARKER, PARTIAL_DIR, _read_json, read_marker
from .errors import DownloadBusyError, DownloadError, NoUsableWeightsError, nearest_existing
from .progress import Meter
from .selection import INDEXES, narrow_by_index, select_files
from .sources import Backend, RemoteFile
from .transfer import fetch_small, hash_file, matching_local_bytes

STATE_FILE = "state.json"
LOCK_FILE = "lock"


@dataclass
class DownloadPlan:
    """What a download will fetch (see :meth:`Downloader.plan`)."""

    source: str
    repo_id: str
    revision: str
    endpoint: str
    dest: Path
    files: list[RemoteFile]
    weight_format: str
    present_bytes: int = 0
    prefetched: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def needed_bytes(self) -> int:
        return max(0, self.total_bytes - self.present_bytes)


def safe_relpath(name: str) -> str:
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DownloadError(f"refusing a file name that would leave the model folder: {name!r}")
    return "/".join(parts)


def make_plan(backend: Backend, repo: str, revision: Optional[str], dest: Path, cancel: threading.Event, *,
              max_retries: int, retry_backoff: float) -> DownloadPlan:
    """List the repo and choose its files; a weight index is read (from disk when it matches) to
    keep only the shards it names."""
    commit, listing = backend.list_files(repo, revision)
    by_name = {f.path: f for f in listing}
    try:
        names, fmt = select_files(by_name)
    except NoUsableWeightsError as e:
        raise NoUsableWeightsError(f"{repo}: {e}") from None
    prefetched: dict[str, bytes] = {}
    for index_name in INDEXES:
        if index_name in names:
            data = matching_local_bytes(dest / index_name, by_name[index_name])
            if data is None:
                data = fetch_small(backend, repo, commit, by_name[index_name], cancel,
                                   max_retries=max_retries, retry_backoff=retry_backoff)
            prefetched[index_name] = data
            names = narrow_by_index(names, index_name, data)
    files = [replace(by_name[n], path=safe_relpath(n)) for n in names]
    return DownloadPlan(backend.source, repo, commit, backend.endpoint, dest, files, fmt, prefetched=prefetched)


def on_disk(plan: DownloadPlan, cancel: threading.Event, dry: bool = False,
            meter: Optional[Meter] = None) -> tuple[int, list[RemoteFile]]:
    """(bytes already present, files still to fetch). Unless ``dry``, drops stale partial files
    and hashes final files the state or marker does not vouch for."""
    dest = plan.dest
    partial = dest / PARTIAL_DIR
    state = _read_json(partial / STATE_FILE) or {}
    state_files = state.get("files", {}) if state.get("repo") == plan.repo_id else {}
    marker = read_marker(dest) or {}
    marker_files = marker.get("files", {}) if marker.get("repo") == plan.repo_id else {}
    present = 0
    todo = []
    for rf in plan.files:
        ident = rf.identity()
        final = dest / rf.path
        recorded = state_files.get(rf.path) or marker_files.get(rf.path) or {}
        if final.is_file() and (rf.size is None or final.stat().st_size == rf.size):
            known_good = recorded.get("done", True) and all(recorded.get(k) == ident[k] for k in ident)
            if not known_good and not dry:
                if meter is not None:
                    meter.current = rf.path
                    meter.emit("verifying")
                known_good = hash_file(final, rf, cancel).mismatch() is None
            if known_good:
                present += rf.size or 0
                continue
        part = partial / (rf.path + ".part")
        if part.is_file():
            rec = state_files.get(rf.path) or {}
            same = all(rec.get(k) == ident[k] for k in ident)
            if same and (rf.size is None or part.stat().st_size <= rf.size):
                present += part.stat().st_size
            elif not dry:
                part.unlink()
        todo.append(rf)
    return present, todo


def marker_matches(marker: dict, plan: DownloadPlan) -> bool:
    """Whether the completion marker describes exactly this plan's files, all in place."""
    if marker.get("repo") != plan.repo_id or marker.get("source") != plan.source:
        return False
    files = marker.get("files", {})
    if set(files) != {rf.path for rf in plan.files}:
        return False
    for rf in plan.files:
        rec = files[rf.path]
        if any(rec.get(k) != v for k, v in rf.identity().items()):
            return False
        p = plan.dest / rf.path
        if not p.is_file() or (rf.size is not None and p.stat().st_size != rf.size):
            return False
    return True


def write_marker(plan: DownloadPlan, old_marker: Optional[dict]) -> None:
    """Mark the model usable; files of the previous version (named by ``old_marker``) are removed."""
    dest = plan.dest
    wanted = {rf.path for rf in plan.files}
    for name in (old_marker or {}).get("files", {}):
        if name not in wanted:  # a file of the previous version of this model: ours to remove
            try:
                (dest / safe_relpath(name)).unlink(missing_ok=True)
            except (OSError, DownloadError):
                pass
    atomic_write_json(dest / COMPLETE_MARKER, {
        "source": plan.source,
        "repo": plan.repo_id,
        "revision": plan.revision,
        "endpoint": plan.endpoint,
        "weight_format": plan.weight_format,
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {rf.path: rf.identity() for rf in plan.files},
    })


def atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(nearest_existing(path)).free


def try_lock(path: Path, repo: str) -> Any:
    """The partial folder's lock, held for the whole download (across threads and processes);
    DownloadBusyError if another download holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise DownloadBusyError(f"{repo} is already being downloaded into {path.parent.parent}") from None
    return lock
