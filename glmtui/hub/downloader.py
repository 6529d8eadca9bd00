"""Model downloads: Hugging Face and ModelScope, with progress, cancel and resume.

No UI imports and no torch here.  The UI drives a :class:`DownloadQueue` (one
background thread, downloads one after another) and shows the
:class:`DownloadProgress` it reports; ``glmtui pull`` calls :func:`pull_cli`.

What gets downloaded: only what a load needs -- config and generation config,
tokenizer files (``tokenizer.json``/``tokenizer.model``/``*.tiktoken``, special
tokens, chat template) and the weights in ONE format (``*.safetensors`` when the
repo has them, else ``pytorch_model*.bin``; with an index, only the shards it
names).  ``*.py`` remote code is never downloaded.

How: the repo listing gives each file's size and hash (sha256 for LFS files, the
git blob sha1 for small ones on Hugging Face, sha256 for all on ModelScope).
Files are streamed into ``<model>/.glmtui-partial/<file>.part`` and resumed from
there with HTTP ``Range`` after a cancel, a crash or a dropped connection; a
file is moved into place only when its size and hash match, and the model is
marked usable (``.glmtui-complete``, with the file list) only when all are.
Nothing outside the model's own folder is written.

Hugging Face: the listing, file URLs, headers and errors come from
``huggingface_hub`` (``HfApi.model_info``/``list_repo_tree``,
``get_hf_file_metadata`` -- the same calls ``snapshot_download`` makes).  The bytes are fetched
here rather than with ``hf_hub_download``, because huggingface_hub >= 2 writes
each attempt to a process-unique temp file that it deletes on failure: it
retries a dropped connection inside one call, but a cancel or a crash starts
the file over.  ``HF_HUB_DISABLE_XET=1`` is set: xet transfers can't go through
a plain mirror, and the plain ``/resolve`` download works everywhere.

ModelScope: its HTTP file API is spoken directly (``/api/v1/models/{id}/repo/files``
to list, ``/api/v1/models/{id}/repo?Revision=&FilePath=`` to fetch), with the
token from ``MODELSCOPE_API_TOKEN``; the ``modelscope`` client adds
requests/cryptography and a second download engine for no gain here.

Endpoints (see :meth:`Downloader.endpoint`), read at each download: the
``hf_endpoint``/``modelscope_endpoint`` argument (``glmtui pull --endpoint``),
else ``HF_ENDPOINT``/``MODELSCOPE_ENDPOINT``, else ``hf_endpoint``/
``modelscope_endpoint`` under ``[hub]`` in config.toml, else the public hub.
Every huggingface_hub call is given the endpoint explicitly: its own
``constants.ENDPOINT`` is read once, when it is imported.  Connecting is
bounded by :data:`CONNECT_TIMEOUT`, so no network fails within seconds.
"""

from __future__ import annotations

import collections
import errno
import fnmatch
import hashlib
import json
import os
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional, Union
from urllib.parse import quote, urlsplit

from ..catalog import (
    COMPLETE_MARKER,
    PARTIAL_DIR,
    CatalogEntry,
    UnknownModelError,
    _read_json,
    read_marker,
    resolve,
)

# Must be set before huggingface_hub reads its constants (at its import).
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

Source = Literal["hf", "modelscope"]
SOURCES = ("hf", "modelscope")
MODELSCOPE_DEFAULT_ENDPOINT = "https://modelscope.cn"
HF_DEFAULT_REVISION = "main"
MODELSCOPE_DEFAULT_REVISION = "master"

HUB_TABLE = "hub"  # the [hub] table of config.toml: hf_endpoint, modelscope_endpoint
CONNECT_TIMEOUT = 5.0  # seconds to open a connection to a hub
READ_TIMEOUT = 20.0  # seconds without a byte before a transfer counts as dropped (HF: or HF_HUB_DOWNLOAD_TIMEOUT)

STATE_FILE = "state.json"
LOCK_FILE = "lock"


# ------------------------------------------------------------------ errors


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


# ------------------------------------------------------------------ data


@dataclass(frozen=True)
class DownloadProgress:
    """A progress report. ``bytes_done`` counts bytes already on disk from earlier
    attempts too, so it starts where a resumed download stands and ends at
    ``bytes_total``; ``speed_bps`` counts this attempt's transfer only (a moving
    average over the last few seconds)."""

    bytes_done: int
    bytes_total: int
    speed_bps: float
    eta_s: Optional[float]
    current_file: Optional[str]
    files_done: int
    files_total: int
    phase: Literal["listing", "downloading", "verifying", "done"] = "downloading"

    @property
    def fraction(self) -> float:
        return 1.0 if self.bytes_total <= 0 else min(1.0, self.bytes_done / self.bytes_total)


ProgressCallback = Callable[[DownloadProgress], None]


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: Optional[int]
    sha256: Optional[str] = None
    git_sha1: Optional[str] = None

    def identity(self) -> dict:
        return {"size": self.size, "sha256": self.sha256, "git_sha1": self.git_sha1}


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


def human_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _gb(n: int) -> str:
    """Sizes in the "needs X GB, Y GB free" message (MB below 0.1 GB, so small needs don't read 0.00 GB)."""
    if n < 100e6:
        return human_bytes(n)
    return f"{n / 1e9:.2f} GB" if n < 10e9 else f"{n / 1e9:.1f} GB"


# ------------------------------------------------------------------ which files


_NEEDED_PATTERNS = (
    "config*.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "*.tiktoken",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
)
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"
_BIN_RE = re.compile(r"^pytorch_model.*\.bin$")


def select_files(names: Iterable[str]) -> tuple[list[str], str]:
    """The files of a repo listing that a load needs, and the weight format.

    Top-level files only; never ``*.py``.  Weights: ``*.safetensors`` (+ index)
    when present, else ``pytorch_model*.bin`` (+ index).  Raises
    :class:`NoUsableWeightsError` when there are neither.
    """
    top = [n for n in names if "/" not in n and not n.endswith(".py")]
    safetensors = [n for n in top if n.endswith(".safetensors")]
    bins = [n for n in top if _BIN_RE.match(n)]
    if safetensors:
        fmt, weights = "safetensors", safetensors + [n for n in top if n == _SAFETENSORS_INDEX]
    elif bins:
        fmt, weights = "bin", bins + [n for n in top if n == _BIN_INDEX]
    else:
        raise NoUsableWeightsError(
            "the repo has no *.safetensors or pytorch_model*.bin weights "
            "(GGUF, ONNX or remote-code-only repos are not supported)"
        )
    weight_set = set(weights)
    others = [
        n for n in top if n not in weight_set and n not in (_SAFETENSORS_INDEX, _BIN_INDEX)
        and any(fnmatch.fnmatchcase(n, p) for p in _NEEDED_PATTERNS)
    ]
    return sorted(others) + sorted(weights), fmt


def narrow_by_index(files: list[str], index_name: str, index_bytes: bytes) -> list[str]:
    """Keep only the shards the index names (repos sometimes carry stray weight files)."""
    try:
        weight_map = json.loads(index_bytes.decode("utf-8")).get("weight_map") or {}
    except (ValueError, AttributeError) as e:
        raise CorruptFileError(f"{index_name} is not valid JSON: {e}", [index_name]) from e
    shards = set(weight_map.values())
    missing = shards - set(files)
    if missing:
        raise CorruptFileError(f"{index_name} names shards the repo does not have: {sorted(missing)}", [index_name])
    is_shard = (lambda n: n.endswith(".safetensors")) if index_name == _SAFETENSORS_INDEX else _BIN_RE.match
    return [n for n in files if not is_shard(n) or n in shards]


# ------------------------------------------------------------------ http helpers


def _http_lib():
    """httpx2: the HTTP client of huggingface_hub 2.x, whose session and exceptions glmtui shares."""
    import httpx2

    return httpx2


def _hf_constants():
    """huggingface_hub's settings. A submodule: huggingface_hub >= 2 does not expose its
    submodules as lazy attributes of the package, so ``huggingface_hub.constants`` fails."""
    from huggingface_hub import constants

    return constants


def _http_timeout(read: float = READ_TIMEOUT):
    return _http_lib().Timeout(read, connect=CONNECT_TIMEOUT)


def _connect_failure(exc: BaseException, endpoint: str) -> str:
    """Why a connection to ``endpoint`` failed, in words (DNS, refused, unreachable...)."""
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, socket.gaierror):
            break
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        e = e.__cause__ or e.__context__
    text = str(exc)
    host = urlsplit(endpoint).hostname or endpoint
    if isinstance(e, socket.gaierror) or "Name or service not known" in text or "nodename nor servname" in text \
            or "getaddrinfo failed" in text or "Temporary failure in name resolution" in text:
        return f"the name {host} does not resolve (no network, or no DNS)"
    if "Connection refused" in text or "[Errno 111]" in text:
        return "connection refused"
    if "unreachable" in text.lower():
        return "the network is unreachable"
    return text or type(exc).__name__


def _origin(url: str) -> tuple:
    p = urlsplit(url)
    return (p.scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(p.scheme, 0))


class _Hasher:
    def __init__(self, rf: RemoteFile):
        self.rf = rf
        self.sha256 = hashlib.sha256() if rf.sha256 else None
        self.sha1 = None
        if rf.git_sha1 and not rf.sha256 and rf.size is not None:
            self.sha1 = hashlib.sha1(f"blob {rf.size}\0".encode())

    def update(self, data: bytes) -> None:
        if self.sha256 is not None:
            self.sha256.update(data)
        if self.sha1 is not None:
            self.sha1.update(data)

    def mismatch(self) -> Optional[str]:
        if self.sha256 is not None and self.sha256.hexdigest() != self.rf.sha256.lower():
            return f"sha256 {self.sha256.hexdigest()[:12]}… != listed {self.rf.sha256[:12]}…"
        if self.sha1 is not None and self.sha1.hexdigest() != self.rf.git_sha1.lower():
            return f"git sha1 {self.sha1.hexdigest()[:12]}… != listed {self.rf.git_sha1[:12]}…"
        return None


def _hash_file(path: Path, rf: RemoteFile, cancel: threading.Event, limit: Optional[int] = None) -> _Hasher:
    h = _Hasher(rf)
    if h.sha256 is None and h.sha1 is None:
        return h
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            if cancel.is_set():
                raise DownloadCancelled("download cancelled")
            block = f.read(4 << 20 if left is None else min(4 << 20, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h


class _CancelWatch:
    """Shuts the socket of the response being read when ``cancel`` is set, so a
    cancel takes effect at once even while a read is blocked on a stalled link."""

    def __init__(self, cancel: threading.Event):
        self._cancel = cancel
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="glmtui-download-cancel", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._cancel.wait(0.1):
                self._shutdown()
                return

    def _shutdown(self) -> None:
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def attach(self, response: Any) -> None:
        stream = getattr(response, "extensions", {}).get("network_stream")
        sock = None
        if stream is not None and hasattr(stream, "get_extra_info"):
            try:
                sock = stream.get_extra_info("socket")
            except Exception:  # noqa: BLE001 - best effort
                sock = None
        with self._lock:
            self._sock = sock
        if self._cancel.is_set():
            self._shutdown()

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def close(self) -> None:
        self._stop.set()
        self.detach()


class _Meter:
    """Turns byte counts into throttled DownloadProgress reports."""

    def __init__(self, cb: Optional[ProgressCallback], total: int, files_total: int, interval: float):
        self.cb = cb
        self.total = total
        self.files_total = files_total
        self.interval = interval
        self.done = 0
        self.files_done = 0
        self.current: Optional[str] = None
        self._samples: collections.deque = collections.deque()
        self._transferred = 0
        self._last_emit = 0.0
        self._last_done = -1

    def speed(self) -> float:
        now = time.monotonic()
        self._samples.append((now, self._transferred))
        while len(self._samples) > 2 and now - self._samples[0][0] > 5.0:
            self._samples.popleft()
        t0, b0 = self._samples[0]
        return (self._transferred - b0) / (now - t0) if now - t0 > 0.2 else 0.0

    def add(self, n: int, transferred: bool = True) -> None:
        self.done += n
        if transferred:
            self._transferred += n
        if time.monotonic() - self._last_emit >= self.interval:
            self.emit()

    def emit(self, phase: str = "downloading", force: bool = False) -> None:
        if self.cb is None:
            return
        self._last_emit = time.monotonic()
        speed = self.speed()
        left = max(0, self.total - self.done)
        eta = 0.0 if left == 0 else (left / speed if speed > 0 else None)
        self.cb(
            DownloadProgress(
                bytes_done=min(self.done, self.total) if self.total else self.done,
                bytes_total=self.total,
                speed_bps=speed,
                eta_s=eta,
                current_file=self.current,
                files_done=self.files_done,
                files_total=self.files_total,
                phase=phase,  # type: ignore[arg-type]
            )
        )


# ------------------------------------------------------------------ backends


class _Backend:
    source: str
    endpoint: str
    endpoint_hint: str  # what to check when the hub cannot be reached (names where the endpoint is set)
    client: Any
    timeout: Any  # the client library's Timeout, for every request

    def list_files(self, repo: str, revision: Optional[str]) -> tuple[str, list[RemoteFile]]:
        raise NotImplementedError

    def file_request(self, repo: str, revision: str, rf: RemoteFile) -> tuple[str, dict]:
        raise NotImplementedError

    def raise_for_status(self, response: Any, repo: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def map_error(self, exc: BaseException, repo: str) -> Optional[DownloadError]:
        lib = _http_lib()
        if isinstance(exc, lib.ConnectTimeout):
            return NetworkError(f"cannot reach {self.endpoint}: no answer within {CONNECT_TIMEOUT:g} s; "
                                f"{self.endpoint_hint}")
        if isinstance(exc, lib.TimeoutException):
            return NetworkError(f"{self.endpoint} stopped answering ({str(exc) or type(exc).__name__}); "
                                f"{self.endpoint_hint}")
        if isinstance(exc, lib.TransportError):
            return NetworkError(f"cannot reach {self.endpoint}: {_connect_failure(exc, self.endpoint)}; "
                                f"{self.endpoint_hint}")
        return None


def _token_hint(source: str) -> str:
    if source == "hf":
        return "set HF_TOKEN or run `hf auth login` with a token that has access"
    return "set MODELSCOPE_API_TOKEN to a token that has access"


class _HFBackend(_Backend):
    source = "hf"

    def __init__(self, endpoint: str, endpoint_hint: str, token: Union[str, bool, None]):
        self.endpoint = endpoint
        self.endpoint_hint = endpoint_hint
        self.token = token
        from huggingface_hub.utils import get_session

        self.client = get_session()
        self.timeout = _http_timeout(max(READ_TIMEOUT, float(_hf_constants().HF_HUB_DOWNLOAD_TIMEOUT)))

    def list_files(self, repo: str, revision: Optional[str]) -> tuple[str, list[RemoteFile]]:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoFile

        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            info = api.model_info(repo, revision=revision or HF_DEFAULT_REVISION, timeout=self.timeout)
            commit = info.sha or revision or HF_DEFAULT_REVISION
            files = []
            for f in api.list_repo_tree(repo, recursive=True, revision=commit):
                if not isinstance(f, RepoFile):
                    continue
                if f.lfs is not None:
                    files.append(RemoteFile(f.path, f.lfs.size, sha256=f.lfs.sha256))
                else:
                    files.append(RemoteFile(f.path, f.size, git_sha1=f.blob_id))
        except Exception as e:  # noqa: BLE001 - mapped below
            raise self._mapped(e, repo) from e
        return commit, files

    def file_request(self, repo: str, revision: str, rf: RemoteFile) -> tuple[str, dict]:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(repo, rf.path, revision=revision, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint, timeout=self.timeout)
        except Exception as e:  # noqa: BLE001
            raise self._mapped(e, repo, rf.path) from e
        headers = build_hf_headers(token=self.token)
        headers["Accept-Encoding"] = "identity"
        location = meta.location or url
        if _origin(location) != _origin(url):
            # a signed CDN url: the token stays on the hub
            headers.pop("authorization", None)
            headers.pop("Authorization", None)
        return location, headers

    def raise_for_status(self, response: Any, repo: str) -> None:
        if response.status_code < 400:
            return
        from huggingface_hub.utils import hf_raise_for_status

        try:
            response.read()
        except Exception:  # noqa: BLE001
            pass
        try:
            hf_raise_for_status(response)
        except Exception as e:  # noqa: BLE001
            raise self._mapped(e, repo) from e

    def _mapped(self, e: BaseException, repo: str, path: Optional[str] = None) -> BaseException:
        mapped = self.map_error(e, repo)
        if mapped is not None:
            return mapped
        from huggingface_hub import errors as hf_errors

        where = f"{repo} on {self.endpoint}"
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, hf_errors.OfflineModeIsEnabled):
            return NetworkError(f"cannot download {repo}: offline mode is on (HF_HUB_OFFLINE=1)")
        if isinstance(e, hf_errors.GatedRepoError):
            if status == 403:
                return AuthRequiredError(
                    f"{where} is gated and your token has no access yet: request access on "
                    f"{self.endpoint}/{repo}, then retry ({_token_hint('hf')})"
                )
            return AuthRequiredError(
                f"{where} is gated: accept its terms on {self.endpoint}/{repo} and use a token "
                f"({_token_hint('hf')})"
            )
        if isinstance(e, hf_errors.RevisionNotFoundError):
            return RepoNotFoundError(f"{where}: revision not found")
        if isinstance(e, hf_errors.RemoteEntryNotFoundError):
            return DownloadError(f"{where}: the listing has {path or 'a file'} but the hub has no such file")
        if isinstance(e, hf_errors.RepositoryNotFoundError):
            if status in (401, 403):
                return AuthRequiredError(
                    f"{where} was not found, or it is private or gated and needs a token ({_token_hint('hf')})"
                )
            return RepoNotFoundError(f"{where} was not found (check the model id)")
        if status in (401, 403):
            return AuthRequiredError(f"{where}: access denied (HTTP {status}); {_token_hint('hf')}")
        if status == 404:
            return RepoNotFoundError(f"{where}: not found (HTTP 404)")
        if isinstance(e, hf_errors.HfHubHTTPError):
            return DownloadError(f"{where}: the hub answered HTTP {status}: {str(e).splitlines()[0]}")
        if isinstance(e, (OSError, ValueError)):
            return DownloadError(f"{where}: {e}")
        return e


class _ModelScopeBackend(_Backend):
    source = "modelscope"

    def __init__(self, endpoint: str, endpoint_hint: str, token: Union[str, bool, None]):
        self.endpoint = endpoint
        self.endpoint_hint = endpoint_hint
        if token is None:
            token = os.environ.get("MODELSCOPE_API_TOKEN") or None
        self.token = token if isinstance(token, str) else None
        lib = _http_lib()
        self.client = lib.Client(follow_redirects=True, timeout=None)
        self.timeout = _http_timeout()

    def close(self) -> None:
        self.client.close()

    def _headers(self) -> dict:
        headers = {"User-Agent": "glmtui", "Accept-Encoding": "identity"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
            headers["Cookie"] = f"m_session_id={self.token}"
        return headers

    def list_files(self, repo: str, revision: Optional[str]) -> tuple[str, list[RemoteFile]]:
        revision = revision or MODELSCOPE_DEFAULT_REVISION
        url = f"{self.endpoint}/api/v1/models/{repo}/repo/files"
        try:
            r = self.client.get(
                url, params={"Revision": revision, "Recursive": "True"}, headers=self._headers(), timeout=self.timeout
            )
        except Exception as e:  # noqa: BLE001
            raise (self.map_error(e, repo) or e) from e
        self.raise_for_status(r, repo)
        try:
            body = r.json()
        except ValueError as e:
            raise DownloadError(f"{self.endpoint} answered the file listing of {repo} with something not JSON") from e
        if isinstance(body, dict) and body.get("Success") is False:
            raise self._business_error(body, repo)
        data = body.get("Data", body) if isinstance(body, dict) else body
        if isinstance(data, dict):
            entries = data.get("Files") or data.get("files") or []
        else:
            entries = data if isinstance(data, list) else []
        files = []
        for f in entries:
            if (f.get("Type") or f.get("type") or "blob") == "tree":
                continue
            path = f.get("Path") or f.get("path") or f.get("Name")
            if not path:
                continue
            size = f.get("Size", f.get("size"))
            sha = f.get("Sha256") or f.get("sha256") or None
            files.append(RemoteFile(path, int(size) if size is not None else None, sha256=sha))
        return revision, files

    def file_request(self, repo: str, revision: str, rf: RemoteFile) -> tuple[str, dict]:
        url = (
            f"{self.endpoint}/api/v1/models/{repo}/repo"
            f"?Revision={quote(revision, safe='')}&FilePath={quote(rf.path, safe='')}"
        )
        return url, self._headers()

    def _business_error(self, body: dict, repo: str, status: Optional[int] = None) -> DownloadError:
        msg = body.get("Message") or body.get("message") or "error"
        where = f"{repo} on {self.endpoint}"
        if status in (401, 403):
            return AuthRequiredError(f"{where}: access denied ({msg}); {_token_hint('modelscope')}")
        if status == 404 or status is None:
            return RepoNotFoundError(f"{where} was not found ({msg})")
        return DownloadError(f"{where}: HTTP {status} ({msg})")

    def raise_for_status(self, response: Any, repo: str) -> None:
        status = response.status_code
        if status < 400:
            return
        try:
            response.read()
            body = response.json()
            if not isinstance(body, dict):
                body = {}
        except Exception:  # noqa: BLE001
            body = {}
        if status in (401, 403, 404):
            raise self._business_error(body, repo, status)
        raise DownloadError(f"{repo} on {self.endpoint}: HTTP {status} ({body.get('Message', '')})".rstrip(" ()"))


# ------------------------------------------------------------------ downloader


def _default_models_dir() -> Path:
    from ..config import default_paths

    return default_paths().models_dir


def _atomic_write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _free_bytes(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _safe_relpath(name: str) -> str:
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DownloadError(f"refusing a file name that would leave the model folder: {name!r}")
    return "/".join(parts)


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

    # -- targets

    def endpoint(self, source: str) -> tuple[str, str]:
        """(URL of the hub for ``source``, where that is set, in words), read now: the
        argument given to this Downloader, else ``HF_ENDPOINT``/``MODELSCOPE_ENDPOINT``,
        else ``hf_endpoint``/``modelscope_endpoint`` under ``[hub]`` in config.toml,
        else the public hub. Raises :class:`DownloadError` for a value that is not a URL."""
        from ..config import read_table

        key, var = ("hf_endpoint", "HF_ENDPOINT") if source == "hf" else ("modelscope_endpoint", "MODELSCOPE_ENDPOINT")
        config_file = self.config_file
        if config_file is None:
            from ..config import default_paths

            config_file = default_paths().config_file
        candidates = (
            (self.hf_endpoint if source == "hf" else self.modelscope_endpoint, "the endpoint argument (--endpoint)"),
            (os.environ.get(var), var),
            (read_table(config_file, HUB_TABLE).get(key), f"{key} under [{HUB_TABLE}] in {config_file}"),
        )
        for value, where in candidates:
            if value:
                url = str(value).strip().rstrip("/")
                p = urlsplit(url)
                if p.scheme not in ("http", "https") or not p.hostname:
                    raise DownloadError(f"{where} is not an http(s) URL: {value!r}")
                return url, f"check the network and {where}"
        default = _hf_constants().ENDPOINT if source == "hf" else MODELSCOPE_DEFAULT_ENDPOINT
        return default.rstrip("/"), (f"check the network, or use a mirror (glmtui pull --endpoint, {var}, "
                                     f"or {key} under [{HUB_TABLE}] in config.toml)")

    def _backend(self, source: str) -> _Backend:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r} (use 'hf' or 'modelscope')")
        endpoint, hint = self.endpoint(source)
        if source == "hf":
            return _HFBackend(endpoint, hint, self.token)
        return _ModelScopeBackend(endpoint, hint, self.token)

    def target(self, entry_or_repo: Union[CatalogEntry, str], source: str = "hf",
               dest_dir: Optional[Union[str, os.PathLike]] = None) -> tuple[CatalogEntry, str, Path]:
        """(entry, repo id on ``source``, destination folder) for a download."""
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r} (use 'hf' or 'modelscope')")
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
            plan = self._plan(backend, repo, revision, dest, threading.Event())
        finally:
            backend.close()
        plan.present_bytes = self._inspect(plan, threading.Event(), dry=True)[0]
        return plan

    def _plan(self, backend: _Backend, repo: str, revision: Optional[str], dest: Path,
              cancel: threading.Event) -> DownloadPlan:
        commit, listing = backend.list_files(repo, revision)
        by_name = {f.path: f for f in listing}
        try:
            names, fmt = select_files(by_name)
        except NoUsableWeightsError as e:
            raise NoUsableWeightsError(f"{repo}: {e}") from None
        prefetched: dict[str, bytes] = {}
        for index_name in (_SAFETENSORS_INDEX, _BIN_INDEX):
            if index_name in names:
                data = _matching_local_bytes(dest / index_name, by_name[index_name])
                if data is None:
                    data = self._fetch_small(backend, repo, commit, by_name[index_name], cancel)
                prefetched[index_name] = data
                names = narrow_by_index(names, index_name, data)
        files = [replace(by_name[n], path=_safe_relpath(n)) for n in names]
        return DownloadPlan(backend.source, repo, commit, backend.endpoint, dest, files, fmt, prefetched=prefetched)

    def _fetch_small(self, backend: _Backend, repo: str, revision: str, rf: RemoteFile,
                     cancel: threading.Event) -> bytes:
        url, headers = backend.file_request(repo, revision, rf)
        for attempt in range(self.max_retries + 1):
            try:
                r = backend.client.get(url, headers=headers, timeout=backend.timeout)
                break
            except Exception as e:  # noqa: BLE001
                mapped = backend.map_error(e, repo)
                if mapped is None:
                    raise
                if attempt == self.max_retries:
                    raise mapped from e
                if cancel.wait(self.retry_backoff):
                    raise DownloadCancelled("download cancelled") from None
        backend.raise_for_status(r, repo)
        data = r.content
        h = _Hasher(rf)
        h.update(data)
        bad = h.mismatch() or (
            f"{len(data)} bytes != listed {rf.size}" if rf.size is not None and len(data) != rf.size else None)
        if bad:
            raise CorruptFileError(f"{rf.path} of {repo} is corrupt: {bad}", [rf.path])
        return data

    # -- what is on disk

    def _inspect(self, plan: DownloadPlan, cancel: threading.Event, dry: bool = False,
                 meter: Optional[_Meter] = None) -> tuple[int, list[RemoteFile]]:
        """(bytes already present, files still to fetch). Unless ``dry``, drops stale partial files."""
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
                    known_good = _hash_file(final, rf, cancel).mismatch() is None
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

    def _download(self, backend: _Backend, repo: str, dest: Path, revision: Optional[str],
                  on_progress: Optional[ProgressCallback], cancel: threading.Event) -> Path:
        meter = _Meter(on_progress, 0, 0, self.progress_interval)
        meter.emit("listing")
        plan = self._plan(backend, repo, revision, dest, cancel)
        meter.total = plan.total_bytes
        meter.files_total = len(plan.files)
        if cancel.is_set():
            raise DownloadCancelled("download cancelled")

        marker = read_marker(dest)
        if marker is not None and self._marker_matches(marker, plan):
            meter.done = meter.total
            meter.files_done = meter.files_total
            meter.emit("done")
            return dest

        present, todo = self._inspect(plan, cancel, dry=True)
        need = plan.total_bytes - present
        free = _free_bytes(dest)
        if need > free:
            raise NotEnoughSpaceError(
                f"{repo} needs {_gb(need)} more, {_gb(free)} free at {_nearest_existing(dest)}"
                if present else f"{repo} needs {_gb(need)}, {_gb(free)} free at {_nearest_existing(dest)}"
            )

        partial = dest / PARTIAL_DIR
        try:
            partial.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _disk_error(e, dest) from e
        lock = _try_lock(partial / LOCK_FILE, repo)
        watch = _CancelWatch(cancel)
        try:
            if marker is not None:
                (dest / COMPLETE_MARKER).unlink(missing_ok=True)  # being updated: not usable meanwhile
            present, todo = self._inspect(plan, cancel, meter=meter)
            state = {
                "source": plan.source, "repo": plan.repo_id, "revision": plan.revision, "endpoint": plan.endpoint,
                "files": {rf.path: dict(rf.identity(), done=rf not in todo) for rf in plan.files},
            }
            _atomic_write_json(partial / STATE_FILE, state)
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
                _atomic_write_json(partial / STATE_FILE, state)
                meter.files_done += 1
                meter.emit()
            if corrupt:
                names = [c[0] for c in corrupt]
                raise CorruptFileError(
                    f"{repo}: {len(corrupt)} file(s) did not match the hub's listing and were removed: "
                    + "; ".join(c[1] for c in corrupt) + ". The rest is kept: download again to fetch them.",
                    names,
                )
            self._finish(plan, marker)
        except OSError as e:
            raise _disk_error(e, dest) from e
        finally:
            watch.close()
            lock.release()
        shutil.rmtree(partial, ignore_errors=True)
        meter.current = None
        meter.done = meter.total
        meter.emit("done")
        return dest

    @staticmethod
    def _marker_matches(marker: dict, plan: DownloadPlan) -> bool:
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

    def _finish(self, plan: DownloadPlan, old_marker: Optional[dict]) -> None:
        dest = plan.dest
        wanted = {rf.path for rf in plan.files}
        for name in (old_marker or {}).get("files", {}):
            if name not in wanted:  # a file of the previous version of this model: ours to remove
                try:
                    (dest / _safe_relpath(name)).unlink(missing_ok=True)
                except (OSError, DownloadError):
                    pass
        _atomic_write_json(dest / COMPLETE_MARKER, {
            "source": plan.source,
            "repo": plan.repo_id,
            "revision": plan.revision,
            "endpoint": plan.endpoint,
            "weight_format": plan.weight_format,
            "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {rf.path: rf.identity() for rf in plan.files},
        })

    def _download_file(self, backend: _Backend, plan: DownloadPlan, rf: RemoteFile, meter: _Meter,
                       cancel: threading.Event, watch: _CancelWatch) -> None:
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

        have = part.stat().st_size if part.exists() else 0
        hasher = _hash_file(part, rf, cancel) if have else _Hasher(rf)
        url, headers = backend.file_request(plan.repo_id, plan.revision, rf)
        lib = _http_lib()
        failures = 0
        refreshed = False
        while rf.size is None or have < rf.size:
            if cancel.is_set():
                raise DownloadCancelled("download cancelled")
            req = dict(headers)
            if have:
                req["Range"] = f"bytes={have}-"
            got = 0
            try:
                with backend.client.stream("GET", url, headers=req, timeout=backend.timeout) as r:
                    if r.status_code in (401, 403, 410) and not refreshed and "Authorization" not in req \
                            and "authorization" not in req and plan.source == "hf":
                        refreshed = True  # an expired signed CDN url: ask the hub for a fresh one
                        url, headers = backend.file_request(plan.repo_id, plan.revision, rf)
                        continue
                    if r.status_code == 416 and have:
                        # the partial file is not a prefix of this file: start it over
                        part.unlink(missing_ok=True)
                        meter.add(-have, transferred=False)
                        have, hasher = 0, _Hasher(rf)
                        failures += 1
                        if failures > self.max_retries:
                            raise NetworkError(f"{rf.path}: the server keeps refusing the download range")
                        continue
                    backend.raise_for_status(r, plan.repo_id)
                    skip = 0
                    if have and r.status_code == 206:
                        m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
                        if not m or int(m.group(1)) != have:
                            raise NetworkError(f"{rf.path}: the server answered a resume with the wrong range")
                    elif have:
                        skip = have  # Range ignored: the whole file again; drop what we have
                    watch.attach(r)
                    with open(part, "ab") as f:
                        for chunk in r.iter_bytes():
                            if cancel.is_set():
                                raise DownloadCancelled("download cancelled")
                            if skip:
                                n = min(skip, len(chunk))
                                skip -= n
                                chunk = chunk[n:]
                                if not chunk:
                                    continue
                            if rf.size is not None and have + len(chunk) > rf.size:
                                f.close()
                                part.unlink(missing_ok=True)
                                raise CorruptFileError(
                                    f"{rf.path}: the server sent more than the listed {rf.size} bytes", [rf.path])
                            f.write(chunk)
                            hasher.update(chunk)
                            have += len(chunk)
                            got += len(chunk)
                            meter.add(len(chunk))
                    watch.detach()
                if rf.size is None:
                    break
                if have < rf.size:
                    raise lib.RemoteProtocolError(f"connection closed after {have} of {rf.size} bytes")
            except DownloadError:
                raise
            except lib.TransportError as e:
                watch.detach()
                if cancel.is_set():
                    raise DownloadCancelled("download cancelled") from None
                failures = 0 if got else failures + 1
                if failures > self.max_retries:
                    raise NetworkError(
                        f"{rf.path}: the connection to {backend.endpoint} kept failing ({e}); "
                        f"{human_bytes(have)} of it is kept, download again to resume"
                    ) from e
                if cancel.wait(self.retry_backoff * (2 ** max(0, failures - 1)) if failures else 0.05):
                    raise DownloadCancelled("download cancelled") from None
        meter.emit()
        bad = None
        if rf.size is not None and have != rf.size:
            bad = f"{have} bytes != listed {rf.size}"
        bad = bad or hasher.mismatch()
        if bad:
            part.unlink(missing_ok=True)
            raise CorruptFileError(f"{rf.path}: {bad}", [rf.path])
        os.replace(part, final)


def _matching_local_bytes(path: Path, rf: RemoteFile) -> Optional[bytes]:
    """The content of a small local file if it matches the listing (size and hash), else None."""
    try:
        if not path.is_file() or path.stat().st_size != rf.size or rf.size > (16 << 20):
            return None
        data = path.read_bytes()
    except (OSError, TypeError):
        return None
    h = _Hasher(rf)
    h.update(data)
    if (h.sha256 is None and h.sha1 is None) or h.mismatch():
        return None
    return data


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _disk_error(e: OSError, dest: Path) -> DownloadError:
    if e.errno == errno.ENOSPC:
        return DiskFullError(f"the disk at {_nearest_existing(dest)} is full; partial files are kept, "
                             "free some space and download again to resume")
    return DownloadError(f"cannot write {dest}: {e.strerror or e}")


class _NoLock:
    def release(self) -> None:
        pass


def _try_lock(path: Path, repo: str):
    try:
        from filelock import FileLock, Timeout
    except ImportError:  # pragma: no cover - filelock comes with huggingface_hub
        return _NoLock()
    lock = FileLock(str(path), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise DownloadBusyError(f"{repo} is already being downloaded into {path.parent.parent}") from None
    return lock


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


# ------------------------------------------------------------------ queue


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


# ------------------------------------------------------------------ glmtui pull


def pull_cli(argv: Optional[list[str]] = None) -> int:
    """``glmtui pull MODEL [--source hf|modelscope]``: download with a progress bar. Returns the exit code."""
    import argparse

    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    parser = argparse.ArgumentParser(prog="glmtui pull", description="Download a model for glmtui.")
    parser.add_argument("model", help="catalogue key (e.g. chatglm3-6b) or hub id (org/name)")
    parser.add_argument("--source", choices=SOURCES, default="hf", help="hub to download from (default: hf)")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: the main branch)")
    parser.add_argument("--models-dir", default=None, help="where models are kept (default: glmtui's data dir)")
    parser.add_argument("--token", default=None, help="hub token (default: HF_TOKEN / MODELSCOPE_API_TOKEN)")
    parser.add_argument("--endpoint", default=None, metavar="URL",
                        help="hub or mirror URL (default: HF_ENDPOINT / MODELSCOPE_ENDPOINT, "
                             f"else hf_endpoint / modelscope_endpoint under [{HUB_TABLE}] in config.toml)")
    args = parser.parse_args(argv)

    console = Console(stderr=True)

    def say(label: str, text: str) -> None:
        # one line however long (soft_wrap), and the message printed as is, not as markup
        console.print(label, escape(text), soft_wrap=True)

    endpoint = {"hf_endpoint" if args.source == "hf" else "modelscope_endpoint": args.endpoint}
    downloader = Downloader(args.models_dir, token=args.token, **endpoint)
    try:
        _entry, repo, dest = downloader.target(args.model, args.source)
    except DownloadError as e:
        say("[red]error:[/red]", str(e))
        return 2
    cancel = threading.Event()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[files]}"),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"{repo}: listing", total=None, files="")

        def on_progress(p: DownloadProgress) -> None:
            what = p.current_file or ("done" if p.phase == "done" else p.phase)
            bar.update(task, total=p.bytes_total or None, completed=p.bytes_done,
                       description=f"{repo}: {what}", files=f"{p.files_done}/{p.files_total} files")

        try:
            path = downloader.download(_entry, dest, source=args.source, revision=args.revision,
                                       on_progress=on_progress, cancel=cancel)
            failure = None
        except KeyboardInterrupt:
            cancel.set()
            failure = ("[yellow]cancelled:[/yellow]", "what was downloaded is kept; run the same command to resume", 130)
        except DownloadCancelled:
            failure = ("[yellow]cancelled:[/yellow]", "run the same command to resume", 130)
        except DownloadError as e:
            failure = ("[red]error:[/red]", str(e), 1)
        except Exception as e:  # noqa: BLE001 - a bug: one line, not a traceback
            failure = ("[red]error:[/red]", f"unexpected {type(e).__name__}: {e} (a glmtui bug: please report it)", 1)
    if failure is not None:
        say(failure[0], failure[1])
        return failure[2]
    say("[green]ready:[/green]", str(path))
    return 0
