"""Model downloads from Hugging Face and ModelScope, with progress, cancel and resume.

No UI imports and no torch here. The UI drives a :class:`DownloadQueue` (one background
thread, downloads one after another) and shows the :class:`DownloadProgress` it reports;
``glmtui pull`` calls :func:`pull_cli`. The rooms:

  errors      DownloadError and its kinds; pieces of the one-line messages
  selection   which files of a repo a load needs
  sources/    one backend per hub (hf: huggingface_hub; modelscope: its HTTP API)
  endpoints   which hub URL (argument, environment, config.toml, public hub)
  net         HTTP client, timeouts, connection failures in words
  transfer    the bytes of one file: Range resume, hashing, cancel
  plan        what to fetch, what is on disk, the partial folder's lock, the completion marker
  progress    DownloadProgress and the meter that reports it
  downloader  Downloader: one model, from listing to completion marker
  queue       DownloadQueue and its DownloadJob snapshots
  pull        the Rich ``glmtui pull`` command
"""

from __future__ import annotations

from .downloader import Downloader, download
from .endpoints import HUB_TABLE
from .errors import (
    AuthRequiredError,
    CorruptFileError,
    DiskFullError,
    DownloadBusyError,
    DownloadCancelled,
    DownloadError,
    NetworkError,
    NotEnoughSpaceError,
    NoUsableWeightsError,
    RepoNotFoundError,
    human_bytes,
)
from .plan import DownloadPlan
from .progress import DownloadProgress, ProgressCallback
from .pull import pull_cli
from .queue import DownloadJob, DownloadQueue, JobState
from .selection import narrow_by_index, select_files
from .sources import (
    HF_DEFAULT_REVISION,
    MODELSCOPE_DEFAULT_ENDPOINT,
    MODELSCOPE_DEFAULT_REVISION,
    SOURCES,
    RemoteFile,
    Source,
)

__all__ = [
    "AuthRequiredError", "CorruptFileError", "DiskFullError", "DownloadBusyError", "DownloadCancelled",
    "DownloadError", "NetworkError", "NotEnoughSpaceError", "NoUsableWeightsError", "RepoNotFoundError",
    "Downloader", "DownloadJob", "DownloadPlan", "DownloadProgress", "DownloadQueue", "JobState",
    "ProgressCallback", "RemoteFile", "Source", "SOURCES", "HUB_TABLE", "HF_DEFAULT_REVISION",
    "MODELSCOPE_DEFAULT_ENDPOINT", "MODELSCOPE_DEFAULT_REVISION",
    "download", "human_bytes", "narrow_by_index", "pull_cli", "select_files",
]
