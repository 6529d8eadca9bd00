"""Downloader: one model into its own folder -- list, plan, check the space, fetch what is
missing (resuming what is there), verify, mark complete. Safe to share between threads.

The rooms it drives: :mod:`.sources` (listing and requests per hub), :mod:`.plan` (what to
fetch, what is on disk, lock and completion marker), :mod:`.transfer` (the bytes of one file),
:mod:`.endpoints` (which hub URL), :mod:`.progress` (reports).
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any, Optional, Union

from ..catalog import COMPLETE_MARKER, PARTIAL_DIR, CatalogEntry, UnknownModelError, read_marker, resolve
from .endpoints import resolve_endpoint
from .errors import (
    CorruptFileError,
    DownloadCancelled,
    DownloadError,
    NotEnoughSpaceError,
    disk_error,
    gb,
    nearest_existing,
)
from .plan import (
    LOCK_FILE,
    STATE_FILE,
    DownloadPlan,
    atomic_write_json,
    free_bytes,
    make_plan,
    marker_matches,
    on_disk,
    try_lock,
    write_marker,
)
from .progress import Meter, ProgressCallback
from .sources import Backend, RemoteFile, check_source, open_backend
from .transfer import CancelWatch, fetch_file


def _default_models_dir() -> Path:
    from ..config import default_paths

    return default_paths().models_dir


class Downloader:
    """Downloads one model at a time into its own folder; safe to share between threads.

    ``token``: None uses the usual place (``HF_TOKEN``/``hf auth login``,
    ``MODELSCOPE_API_TOKEN``), False sends none, a string is used as is.
    ``hf_endpoint``/``modelscope_endpoint``: the hub to use; see :meth:`endpoint`
    for the defaults.  ``config_file``: where ``[hub]`` is read (default: glmtui's).
    """

    def __init__(
        self,
        models_dir: Optional[Union[str, os.PathLike]] = None,
        *,
        token: Union[str, bool, None] = None,
        hf_endpoint: Optional[str] = None,
        modelscope_endpoint: Optional[str] = None,
        config_file: Optional[Union[str, os.PathLike]] = None,
        progress_interval: float = 0.1,
        max_retries: int = 5,
        retry_backoff: float = 1.0,
    ):
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.token = token
        self.hf_endpoint = hf_endpoint
        self.modelscope_endpoint = modelscope_endpoint
        self.config_file = Path(config_file) if config_file is not None else None
        self.progress_interval = progress_interval
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff

    @property
    def _retry(self) -> dict:
        return {"max_retries": self.max_retries, "retry_backoff": self.retry_backoff}

    # -- targets

    def endpoint(self, source: str) -> tuple[str, str]:
        """(URL of the hub for ``source``, where that is set, in words), read now: the
        argument given to this Downloader, else ``HF_ENDPOINT``/``MODELSCOPE_ENDPOINT``,
        else ``hf_endpoint``/``modelscope_endpoint`` under ``[hub]`` in config.toml,
        else the public hub. Raises :class:`DownloadError` for a value that is not a URL."""
        explicit = self.hf_endpoint if source == "hf" else self.modelscope_endpoint
        return resolve_endpoint(source, explicit, self.config_file)

    def _backend(self, source: str) -> Backend:
        check_source(source)
        endpoint, hint = self.endpoint(source)
        return open_backend(source, endpoint, hint, self.token)

    def target(self, entry_or_repo: Union[CatalogEntry, str], source: str = "hf",
               dest_dir: Optional[Union[str, os.PathLike]] = None) -> tuple[CatalogEntry, str, Path]:
        """(entry, repo id on ``source``, destination folder) for a download."""
        check_source(source)
        if isinstance(entry_or_repo, CatalogEntry):
            entry = entry_or_repo
        else:
            try:
                entry = resolve(entry_or_repo, source=source)
            except UnknownModelError as e:
                raise DownloadError(str(e)) from e
        if entry.local_path is not None and not (entry.hf_repo or entry.modelscope_repo):
            raise DownloadError(f"{entry.local_path} is a local folder: there is nothing to download")
        try:
            repo = entry.repo_for(source)
        except ValueError as e:
            raise DownloadError(str(e)) from e
        if dest_dir is not None:
            dest = Path(dest_dir)
        else:
            dest = (self.models_dir or _default_models_dir()) / entry.dirname
        return entry, repo, dest

    # -- planning

    def plan(self, entry_or_repo: Union[CatalogEntry, str], dest_dir: Optional[Union[str, os.PathLike]] = None, *,
             source: str = "hf", revision: Optional[str] = None) -> DownloadPlan:
        """List the repo and choose the files; writes nothing to disk."""
        _entry, repo, dest = self.target(entry_or_repo, source, dest_dir)
        backend = self._backend(source)
        try:
            plan = make_plan(backend, repo, revision, dest, threading.Event(), **self._retry)
        finally:
            backend.close()
        plan.present_bytes = on_disk(plan, threading.Event(), dry=True)[0]
        return plan

    # -- download

    def download(
        self,
        entry_or_repo: Union[CatalogEntry, str],
        dest_dir: Optional[Union[str, os.PathLike]] = None,
        *,
        source: str = "hf",
        revision: Optional[str] = None,
        on_progress: Optional[ProgressCallback] = None,
        cancel: Optional[threading.Event] = None,
    ) -> Path:
        """Download (or resume, or update) a model; returns its folder once complete and verified.

        ``dest_dir`` is the model's own folder (default ``<models_dir>/<org>--<name>``).
        Raises a :class:`DownloadError` subclass; a cancel raises :class:`DownloadCancelled`.
        """
        cancel = cancel or threading.Event()
        _entry, repo, dest = self.target(entry_or_repo, source, dest_dir)
        backend = self._backend(source)
        try:
            return self._download(backend, repo, dest, revision, on_progress, cancel)
        finally:
            backend.close()

    def _download(self, backend: Backend, repo: str, dest: Path, revision: Optional[str],
                  on_progress: Optional[ProgressCallback], cancel: threading.Event) -> Path:
        meter = Meter(on_progress, 0, 0, self.progress_interval)
        meter.emit("listing")
        plan = make_plan(backend, repo, revision, dest, cancel, **self._retry)
        meter.total = plan.total_bytes
        meter.files_total = len(plan.files)
        if cancel.is_set():
            raise DownloadCancelled("download cancelled")

        marker = read_marker(dest)
        if marker is not None and marker_matches(marker, plan):
            meter.done = meter.total
            meter.files_done = meter.files_total
            meter.emit("done")
            return dest

        present, todo = on_disk(plan, cancel, dry=True)
        need = plan.total_bytes - present
        free = free_bytes(dest)
        if need > free:
            raise NotEnoughSpaceError(
                f"{repo} needs {gb(need)} more, {gb(free)} free at {nearest_existing(dest)}"
                if present else f"{repo} needs {gb(need)}, {gb(free)} free at {nearest_existing(dest)}"
            )

        partial = dest / PARTIAL_DIR
        try:
            partial.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise disk_error(e, dest) from e
        lock = try_lock(partial / LOCK_FILE, repo)
        watch = CancelWatch(cancel)
        try:
            if marker is not None:
                (dest / COMPLETE_MARKER).unlink(missing_ok=True)  # being updated: not usable meanwhile
            present, todo = on_disk(plan, cancel, meter=meter)
            state: dict[str, Any] = {
                "source": plan.source, "repo": plan.repo_id, "revision": plan.revision, "endpoint": plan.endpoint,
                "files": {rf.path: dict(rf.identity(), done=rf not in todo) for rf in plan.files},
            }
            atomic_write_json(partial / STATE_FILE, state)
            meter.done = present
            meter.files_done = len(plan.files) - len(todo)
            meter.emit()
            corrupt: list[tuple[str, str]] = []
            for rf in todo:
                if cancel.is_set():
                    raise DownloadCancelled("download cancelled")
                meter.current = rf.path
                meter.emit()
                try:
                    self._download_file(backend, plan, rf, meter, cancel, watch)
                except CorruptFileError as e:
                    corrupt.append((rf.path, str(e)))
                    continue
                state["files"][rf.path]["done"] = True
                atomic_write_json(partial / STATE_FILE, state)
                meter.files_done += 1
                meter.emit()
            if corrupt:
                names = [c[0] for c in corrupt]
                raise CorruptFileError(
                    f"{repo}: {len(corrupt)} file(s) did not match the hub's listing and were removed: "
                    + "; ".join(c[1] for c in corrupt) + ". The rest is kept: download again to fetch them.",
                    names,
                )
            write_marker(plan, marker)
        except OSError as e:
            raise disk_error(e, dest) from e
        finally:
            watch.close()
            lock.release()
        shutil.rmtree(partial, ignore_errors=True)
        meter.current = None
        meter.done = meter.total
        meter.emit("done")
        return dest

    def _download_file(self, backend: Backend, plan: DownloadPlan, rf: RemoteFile, meter: Meter,
                       cancel: threading.Event, watch: CancelWatch) -> None:
        dest = plan.dest
        final = dest / rf.path
        part = dest / PARTIAL_DIR / (rf.path + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        final.parent.mkdir(parents=True, exist_ok=True)

        if rf.path in plan.prefetched:
            data = plan.prefetched[rf.path]
            with open(part, "wb") as f:
                f.write(data)
            meter.add(len(data))
            os.replace(part, final)
            return

        fetch_file(backend, plan.repo_id, plan.revision, rf, part, final, meter, cancel, watch, **self._retry)


def download(
    entry_or_repo: Union[CatalogEntry, str],
    dest_dir: Optional[Union[str, os.PathLike]] = None,
    *,
    source: str = "hf",
    revision: Optional[str] = None,
    models_dir: Optional[Union[str, os.PathLike]] = None,
    token: Union[str, bool, None] = None,
    on_progress: Optional[ProgressCallback] = None,
    cancel: Optional[threading.Event] = None,
) -> Path:
    """Download a model (see :meth:`Downloader.download`)."""
    return Downloader(models_dir, token=token).download(
        entry_or_repo, dest_dir, source=source, revision=revision, on_progress=on_progress, cancel=cancel
    )
