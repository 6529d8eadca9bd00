"""Hugging Face: repo info, the file listing, file URLs, headers and errors through ``huggingface_hub``
(the calls ``snapshot_download`` makes); every request is given the endpoint and a bounded timeout.

The bytes are fetched by :mod:`..transfer` rather than with ``hf_hub_download``: huggingface_hub
>= 2 writes each attempt to a process-unique temp file that it deletes on failure, so a cancel or
a crash starts the file over.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional, Union
from urllib.parse import quote

from .. import net
from ..errors import AuthRequiredError, DownloadError, NetworkError, RepoNotFoundError, token_hint
from .base import Backend, RemoteFile

# Set when glmtui.hub is imported, before huggingface_hub reads its constants (at its import, which
# glmtui does lazily): xet transfers can't go through a plain mirror; the plain /resolve download works everywhere.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")

HF_DEFAULT_REVISION = "main"


def hf_constants() -> Any:
    """huggingface_hub's settings. A submodule: huggingface_hub >= 2 does not expose its
    submodules as lazy attributes of the package, so ``huggingface_hub.constants`` fails."""
    from huggingface_hub import constants

    return constants


class HFBackend(Backend):
    source = "hf"

    def __init__(self, endpoint: str, endpoint_hint: str, token: Union[str, bool, None]):
        self.endpoint = endpoint
        self.endpoint_hint = endpoint_hint
        self.token = token
        from huggingface_hub.utils import get_session

        self.client = get_session()
        self.timeout = net.http_timeout(max(net.READ_TIMEOUT, float(hf_constants().HF_HUB_DOWNLOAD_TIMEOUT)))

    def list_files(self, repo: str, revision: Optional[str]) -> tuple[str, list[RemoteFile]]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token)
        try:
            info = api.model_info(repo, revision=revision or HF_DEFAULT_REVISION, timeout=self.timeout)
            commit = info.sha or revision or HF_DEFAULT_REVISION
            files = []
            for f in self._tree(repo, commit):
                if f.lfs is not None:
                    files.append(RemoteFile(f.path, f.lfs.size, sha256=f.lfs.sha256))
                else:
                    files.append(RemoteFile(f.path, f.size, git_sha1=f.blob_id))
        except Exception as e:  # every failure is mapped to a DownloadError in _mapped
            raise self._mapped(e, repo) from e
        return commit, files

    def _tree(self, repo: str, commit: str) -> Iterator[Any]:
        """The files of ``repo`` at ``commit``: the tree API that ``HfApi.list_repo_tree`` calls, page
        by page, with its retries of dropped connections and 429/5xx answers. Asked here because
        ``list_repo_tree`` passes no timeout: a hub that stopped answering hung the download. Here a
        read that waits ``self.timeout`` ends the listing (not retried: that would multiply the wait)."""
        from huggingface_hub.hf_api import RepoFile
        from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff

        lib = net.http_lib()
        url: Optional[str] = f"{self.endpoint}/api/models/{repo}/tree/{quote(commit, safe='')}"
        params: Optional[dict] = {"recursive": True, "expand": False}
        headers = build_hf_headers(token=self.token)
        while url:
            r = http_backoff("GET", url, params=params, headers=headers, timeout=self.timeout,
                             retry_on_exceptions=(lib.NetworkError, lib.RemoteProtocolError))
            hf_raise_for_status(r)
            for item in r.json():
                if item.get("type") == "file":
                    yield RepoFile(**item)
            url, params = r.links.get("next", {}).get("url"), None  # the next link carries the query

    def file_request(self, repo: str, revision: str, rf: RemoteFile) -> tuple[str, dict]:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        url = hf_hub_url(repo, rf.path, revision=revision, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint, timeout=self.timeout)
        except Exception as e:  # every failure is mapped to a DownloadError in _mapped
            raise self._mapped(e, repo, rf.path) from e
        headers = build_hf_headers(token=self.token)
        headers["Accept-Encoding"] = "identity"
        location = meta.location or url
        if net.origin(location) != net.origin(url):
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
        except Exception:  # noqa: BLE001 - the body only adds detail to the error raised next
            pass
        try:
            hf_raise_for_status(response)
        except Exception as e:  # every failure is mapped to a DownloadError in _mapped
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
                    f"{self.endpoint}/{repo}, then retry ({token_hint('hf')})"
                )
            return AuthRequiredError(
                f"{where} is gated: accept its terms on {self.endpoint}/{repo} and use a token "
                f"({token_hint('hf')})"
            )
        if isinstance(e, hf_errors.RevisionNotFoundError):
            return RepoNotFoundError(f"{where}: revision not found")
        if isinstance(e, hf_errors.RemoteEntryNotFoundError):
            return DownloadError(f"{where}: the listing has {path or 'a file'} but the hub has no such file")
        if isinstance(e, hf_errors.RepositoryNotFoundError):
            if status in (401, 403):
                return AuthRequiredError(
                    f"{where} was not found, or it is private or gated and needs a token ({token_hint('hf')})"
                )
            return RepoNotFoundError(f"{where} was not found (check the model id)")
        if status in (401, 403):
            return AuthRequiredError(f"{where}: access denied (HTTP {status}); {token_hint('hf')}")
        if status == 404:
            return RepoNotFoundError(f"{where}: not found (HTTP 404)")
        if isinstance(e, hf_errors.HfHubHTTPError):
            return DownloadError(f"{where}: the hub answered HTTP {status}: {str(e).splitlines()[0]}")
        if isinstance(e, (OSError, ValueError)):
            return DownloadError(f"{where}: {e}")
        return e
