"""What a download that did not finish raises, and the pieces of its one-line messages.

Every error is a :class:`DownloadError` whose text is meant for the user as is.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Iterable


class DownloadError(Exception):
    """A download that did not finish; the message is meant for the user."""


class RepoNotFoundError(DownloadError):
    """The repo (or revision) does not exist on the hub (HTTP 404)."""


class AuthRequiredError(DownloadError):
    """The repo is gated or private: a token (with access) is needed (HTTP 401/403)."""


class NetworkError(DownloadError):
    """The hub could not be reached, or the connection kept dropping."""


class NotEnoughSpaceError(DownloadError):
    """Not enough free disk space for what is left to download."""


class DiskFullError(NotEnoughSpaceError):
    """The disk filled up while writing (partial files are kept for a resume)."""


class CorruptFileError(DownloadError):
    """A file's size or hash did not match the hub's listing; the bad file was removed."""

    def __init__(self, message: str, files: Iterable[str] = ()):
        super().__init__(message)
        self.files = tuple(files)


class NoUsableWeightsError(DownloadError):
    """The repo has no weights glmtui can load (no safetensors, no pytorch_model*.bin)."""


class DownloadBusyError(DownloadError):
    """Another download (in this or another process) is writing the same model folder."""


class DownloadCancelled(DownloadError):
    """The download was cancelled; what was fetched is kept and a new download resumes it."""


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def gb(n: int) -> str:
    """Sizes in the "needs X GB, Y GB free" message (MB below 0.1 GB, so small needs don't read 0.00 GB)."""
    if n < 100e6:
        return human_bytes(n)
    return f"{n / 1e9:.2f} GB" if n < 10e9 else f"{n / 1e9:.1f} GB"


def token_hint(source: str) -> str:
    if source == "hf":
        return "set HF_TOKEN or run `hf auth login` with a token that has access"
    return "set MODELSCOPE_API_TOKEN to a token that has access"


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists: the place a disk message can name."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def disk_error(e: OSError, dest: Path) -> DownloadError:
    if e.errno == errno.ENOSPC:
        return DiskFullError(f"the disk at {nearest_existing(dest)} is full; partial files are kept, "
                             "free some space and download again to resume")
    return DownloadError(f"cannot write {dest}: {e.strerror or e}")
