"""ModelScope over its HTTP file API: ``/api/v1/models/{id}/repo/files`` lists,
``/api/v1/models/{id}/repo?Revision=&FilePath=`` fetches; the token comes from ``MODELSCOPE_API_TOKEN``.

The ``modelscope`` client is not used: it adds requests/cryptography and a second download
engine for no gain here.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Union
from urllib.parse import quote

from .. import net
from ..errors import AuthRequiredError, DownloadError, RepoNotFoundError, token_hint
from .base import Backend, RemoteFile

MODELSCOPE_DEFAULT_ENDPOINT = "https://modelscope.cn"
MODELSCOPE_DEFAULT_REVISION = "master"


class ModelScopeBackend(Backend):
    source = "modelscope"

    def __init__(self, endpoint: str, endpoint_hint: str, token: Union[str, bool, None]):
        self.endpoint = endpoint
        self.endpoint_hint = endpoint_hint
        if token is None:
            token = os.environ.get("MODELSCOPE_API_TOKEN") or None
        self.token = token if isinstance(token, str) else None
        lib = net.http_lib()
        self.client = lib.Client(follow_redirects=True, timeout=None)
        self.timeout = net.http_timeout()

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
        except Exception as e:  # a transport failure is mapped; anything else is a bug, raised as is
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
            return AuthRequiredError(f"{where}: access denied ({msg}); {token_hint('modelscope')}")
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
        except Exception:  # noqa: BLE001 - an error body that is not JSON: the status alone makes the message
            body = {}
        if status in (401, 403, 404):
            raise self._business_error(body, repo, status)
        raise DownloadError(f"{repo} on {self.endpoint}: HTTP {status} ({body.get('Message', '')})".rstrip(" ()"))
