"""What every hub backend provides: the listing of a repo (:class:`RemoteFile`), the request for
one file's bytes, and its errors mapped to :mod:`..errors` with one-line messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .. import net
from ..errors import DownloadError, NetworkError


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo listing: its size and hash (sha256 for LFS files and on ModelScope,
    the git blob sha1 for small files on Hugging Face)."""

    path: str
    size: Optional[int]
    sha256: Optional[str] = None
    git_sha1: Optional[str] = None

    def identity(self) -> dict:
        return {"size": self.size, "sha256": self.sha256, "git_sha1": self.git_sha1}


class Backend:
    source: str
    endpoint: str
    endpoint_hint: str  # what to check when the hub cannot be reached (names where the endpoint is set)
    client: Any
    timeout: Any  # the client library's Timeout, for every request

    def list_files(self, repo: str, revision: Optional[str]) -> tuple[str, list[RemoteFile]]:
        """(the commit or revision listed, its files)."""
        raise NotImplementedError

    def file_request(self, repo: str, revision: str, rf: RemoteFile) -> tuple[str, dict]:
        """(URL, headers) to GET the bytes of ``rf``."""
        raise NotImplementedError

    def raise_for_status(self, response: Any, repo: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def map_error(self, exc: BaseException, repo: str) -> Optional[DownloadError]:
        """A transport failure (connect, timeout, dropped) as a NetworkError; None for anything else."""
        lib = net.http_lib()
        if isinstance(exc, lib.ConnectTimeout):
            return NetworkError(f"cannot reach {self.endpoint}: no answer within {self.timeout.connect:g} s; "
                                f"{self.endpoint_hint}")
        if isinstance(exc, lib.TimeoutException):
            return NetworkError(f"{self.endpoint} stopped answering ({str(exc) or type(exc).__name__}); "
                                f"{self.endpoint_hint}")
        if isinstance(exc, lib.TransportError):
            return NetworkError(f"cannot reach {self.endpoint}: {net.connect_failure(exc, self.endpoint)}; "
                                f"{self.endpoint_hint}")
        return None
