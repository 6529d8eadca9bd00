"""The bytes of one file: streamed over HTTP into ``<file>.part``, resumed with ``Range`` after a
dropped connection (within the call) or a cancel or crash (by the next download), hashed as they
arrive, and moved into place only when size and hash match the listing. A cancel shuts the socket
being read, so it takes effect at once even on a stalled link.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any, Optional

from . import net
from .errors import CorruptFileError, DownloadCancelled, DownloadError, NetworkError, human_bytes
from .progress import Meter
from .sources import Backend, RemoteFile


class Hasher:
    """The hash the listing gives for ``rf`` (sha256, else the git blob sha1), fed as bytes arrive."""

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
        """None when the bytes match the listing, else what differs, in words."""
        listed_sha256, listed_sha1 = self.rf.sha256 or "", self.rf.git_sha1 or ""  # set when hashed
        if self.sha256 is not None and self.sha256.hexdigest() != listed_sha256.lower():
            return f"sha256 {self.sha256.hexdigest()[:12]}… != listed {listed_sha256[:12]}…"
        if self.sha1 is not None and self.sha1.hexdigest() != listed_sha1.lower():
            return f"git sha1 {self.sha1.hexdigest()[:12]}… != listed {listed_sha1[:12]}…"
        return None


def hash_file(path: Path, rf: RemoteFile, cancel: threading.Event, limit: Optional[int] = None) -> Hasher:
    """A Hasher fed with the first ``limit`` bytes (default all) of ``path``."""
    h = Hasher(rf)
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


def matching_local_bytes(path: Path, rf: RemoteFile) -> Optional[bytes]:
    """The content of a small local file if it matches the listing (size and hash), else None."""
    try:
        if not path.is_file() or path.stat().st_size != rf.size or rf.size > (16 << 20):
            return None
        data = path.read_bytes()
    except (OSError, TypeError):
        return None
    h = Hasher(rf)
    h.update(data)
    if (h.sha256 is None and h.sha1 is None) or h.mismatch():
        return None
    return data


class CancelWatch:
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
            except Exception:  # noqa: BLE001 - best effort: without the socket a cancel waits for the next chunk
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


def fetch_small(backend: Backend, repo: str, revision: str, rf: RemoteFile, cancel: threading.Event, *,
                max_retries: int, retry_backoff: float) -> bytes:
    """The whole (small) file in memory, checked against the listing: a weight index, read while planning."""
    url, headers = backend.file_request(repo, revision, rf)
    for attempt in range(max_retries + 1):
        try:
            r = backend.client.get(url, headers=headers, timeout=backend.timeout)
            break
        except Exception as e:  # a transport failure is retried; anything else is raised as is
            mapped = backend.map_error(e, repo)
            if mapped is None:
                raise
            if attempt == max_retries:
                raise mapped from e
            if cancel.wait(retry_backoff):
                raise DownloadCancelled("download cancelled") from None
    backend.raise_for_status(r, repo)
    data = r.content
    h = Hasher(rf)
    h.update(data)
    bad = h.mismatch() or (
        f"{len(data)} bytes != listed {rf.size}" if rf.size is not None and len(data) != rf.size else None)
    if bad:
        raise CorruptFileError(f"{rf.path} of {repo} is corrupt: {bad}", [rf.path])
    return data


def fetch_file(backend: Backend, repo: str, revision: str, rf: RemoteFile, part: Path, final: Path,
               meter: Meter, cancel: threading.Event, watch: CancelWatch, *,
               max_retries: int, retry_backoff: float) -> None:
    """Stream ``rf`` into ``part`` (continuing what it holds), verify it, move it to ``final``.

    A dropped connection is resumed from the last byte (``max_retries`` failures in a row without
    a byte, with backoff); a file that does not match the listing is removed (CorruptFileError).
    """
    have = part.stat().st_size if part.exists() else 0
    hasher = hash_file(part, rf, cancel) if have else Hasher(rf)
    url, headers = backend.file_request(repo, revision, rf)
    lib = net.http_lib()
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
                        and "authorization" not in req and backend.source == "hf":
                    refreshed = True  # an expired signed CDN url: ask the hub for a fresh one
                    url, headers = backend.file_request(repo, revision, rf)
                    continue
                if r.status_code == 416 and have:
                    # the partial file is not a prefix of this file: start it over
                    part.unlink(missing_ok=True)
                    meter.add(-have, transferred=False)
                    have, hasher = 0, Hasher(rf)
                    failures += 1
                    if failures > max_retries:
                        raise NetworkError(f"{rf.path}: the server keeps refusing the download range")
                    continue
                backend.raise_for_status(r, repo)
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
            if failures > max_retries:
                raise NetworkError(
                    f"{rf.path}: the connection to {backend.endpoint} kept failing ({e}); "
                    f"{human_bytes(have)} of it is kept, download again to resume"
                ) from e
            if cancel.wait(retry_backoff * (2 ** max(0, failures - 1)) if failures else 0.05):
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
