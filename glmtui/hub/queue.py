"""DownloadQueue: downloads one after another on a background thread, reported as
:class:`DownloadJob` snapshots (what the Models pane shows)."""

from __future__ import annotations

import collections
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Optional, Union

from ..catalog import CatalogEntry
from .downloader import Downloader
from .errors import DownloadCancelled, DownloadError
from .progress import DownloadProgress

JobState = Literal["queued", "running", "done", "failed", "cancelled"]


@dataclass(frozen=True)
class DownloadJob:
    """A snapshot of one queued download (the queue hands out copies, never live objects)."""

    id: int
    label: str
    repo_id: str
    source: str
    dest: Path
    state: JobState
    progress: Optional[DownloadProgress] = None
    error: Optional[str] = None
    error_type: Optional[str] = None
    path: Optional[Path] = None

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


class DownloadQueue:
    """Runs downloads one after another in a background thread.

    ``on_update(job)`` is called from that thread with a :class:`DownloadJob`
    snapshot on every state change and progress report (a Textual app forwards
    it with ``call_from_thread``/``post_message``).
    """

    def __init__(self, downloader: Optional[Downloader] = None,
                 on_update: Optional[Callable[[DownloadJob], None]] = None):
        self.downloader = downloader or Downloader()
        self.on_update = on_update
        self._lock = threading.Condition()
        self._jobs: dict[int, DownloadJob] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._args: dict[int, tuple] = {}
        self._pending: collections.deque[int] = collections.deque()
        self._next_id = 1
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    def submit(self, entry_or_repo: Union[CatalogEntry, str], *, source: str = "hf",
               dest_dir: Optional[Union[str, os.PathLike]] = None, revision: Optional[str] = None) -> DownloadJob:
        """Queue a download; a model already queued or running is not queued twice."""
        entry, repo, dest = self.downloader.target(entry_or_repo, source, dest_dir)
        with self._lock:
            if self._closed:
                raise RuntimeError("the download queue is closed")
            for job in self._jobs.values():
                if job.dest == dest and not job.finished:
                    return job
            job = DownloadJob(self._next_id, entry.name, repo, source, dest, "queued")
            self._next_id += 1
            self._jobs[job.id] = job
            self._cancels[job.id] = threading.Event()
            self._args[job.id] = (entry, source, dest, revision)
            self._pending.append(job.id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="glmtui-downloads", daemon=True)
                self._thread.start()
            self._lock.notify_all()
        self._notify(job)
        return job

    def cancel(self, job_id: int) -> bool:
        """Cancel a queued or running job; False if it already finished (or is unknown)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.finished:
                return False
            self._cancels[job_id].set()
            if job.state == "queued":
                self._pending.remove(job_id)
                job = self._set(job_id, state="cancelled", error="cancelled before it started",
                                error_type="DownloadCancelled")
            else:
                job = None
        if job is not None:
            self._notify(job)
        return True

    def jobs(self) -> list[DownloadJob]:
        with self._lock:
            return list(self._jobs.values())

    def get(self, job_id: int) -> Optional[DownloadJob]:
        with self._lock:
            return self._jobs.get(job_id)

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until every job has finished; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: all(j.finished for j in self._jobs.values()), timeout)

    def close(self, cancel: bool = True, timeout: Optional[float] = 5.0) -> None:
        """Stop taking jobs; cancel the running/queued ones (default) and wait for the thread."""
        with self._lock:
            self._closed = True
            ids = [j.id for j in self._jobs.values() if not j.finished]
            thread = self._thread
            self._lock.notify_all()
        if cancel:
            for job_id in ids:
                self.cancel(job_id)
        if thread is not None:
            thread.join(timeout)

    # -- worker

    def _set(self, job_id: int, **changes) -> DownloadJob:
        job = replace(self._jobs[job_id], **changes)
        self._jobs[job_id] = job
        self._lock.notify_all()
        return job

    def _notify(self, job: DownloadJob) -> None:
        if self.on_update is not None:
            try:
                self.on_update(job)
            except Exception:  # noqa: BLE001 - a UI callback must not kill the queue
                pass

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                job_id = self._pending.popleft()
                entry, source, dest, revision = self._args[job_id]
                cancel = self._cancels[job_id]
                job = self._set(job_id, state="running")
            self._notify(job)

            def progress(p: DownloadProgress, job_id=job_id) -> None:
                with self._lock:
                    snap = self._set(job_id, progress=p)
                self._notify(snap)

            try:
                path = self.downloader.download(entry, dest, source=source, revision=revision,
                                                on_progress=progress, cancel=cancel)
                changes = dict(state="done", path=path)
            except DownloadCancelled as e:
                changes = dict(state="cancelled", error=str(e), error_type=type(e).__name__)
            except DownloadError as e:
                changes = dict(state="failed", error=str(e), error_type=type(e).__name__)
            except Exception as e:  # noqa: BLE001 - report, keep the queue alive
                changes = dict(state="failed", error=f"{type(e).__name__}: {e}", error_type=type(e).__name__)
            with self._lock:
                job = self._set(job_id, **changes)
            self._notify(job)
