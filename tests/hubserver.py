"""A fake model hub on 127.0.0.1 for download tests: Hugging Face and ModelScope.

It speaks the endpoints the real clients call (checked against
huggingface_hub 2.4's ``HfApi.model_info``/``list_repo_tree``,
``get_hf_file_metadata`` and ``snapshot_download``, and against
modelscope_hub 0.5's ``repo/files`` listing and ``repo?FilePath=`` download):

Hugging Face
  GET  /api/models/{repo}[/revision/{rev}]   repo info: sha, gated, siblings (+ size/blobId/lfs with ?blobs=true)
  GET  /api/models/{repo}/tree/{rev}[/{dir}] listing: type, oid (git blob sha1), size, path,
       lfs {oid=sha256,size,pointerSize}
  HEAD|GET /{repo}/resolve/{rev}/{file}      X-Repo-Commit, ETag (blob sha1), Content-Length; LFS files
                                             answer 302 to the "CDN" (a second port = another origin) with
                                             X-Linked-Etag (sha256) and X-Linked-Size, as the real hub does
  HEAD|GET /cdn/{sha256}                     the CDN: the bytes, with Range (206/416)
  errors: 404 + X-Error-Code RepoNotFound / RevisionNotFound / EntryNotFound; 401 (no token) or
  403 (token without access) + X-Error-Code GatedRepo for gated repos; 401 RepoNotFound for private ones.

ModelScope
  GET /api/v1/models/{repo}/repo/files?Revision=&Recursive=
      {"Code":200,"Data":{"Files":[{Name,Path,Type,Size,Sha256,IsLFS,Revision}]},"Success":true}
  GET /api/v1/models/{repo}/repo?Revision=&FilePath=          the bytes, with Range (LFS files: 302 to the CDN,
                                                               as ModelScope redirects them to object storage)
  GET /api/v1/models/{repo}/revisions, GET /api/v1/models/{repo}
  errors: 404 / 401 / 403 with {"Code":..,"Message":..,"Success":false}.  Tokens: Bearer header or m_session_id cookie.

Faults (per repo file path): ``drops[path] = [n1, n2, ...]`` closes the connection
of the next requests for that file after n1, n2... body bytes (one per request);
``drop_always[path] = n`` does it to every request; ``corrupt`` serves wrong bytes
of the right length; ``slow = (chunk, delay)`` trickles every body;
``ignore_range`` answers 200 to Range requests; ``stall_listing = seconds`` holds every repo
listing (HF tree, ModelScope repo/files) that long before answering (a hub that stopped answering);
``tree_page_size = n`` pages the HF tree listing with ``Link: <...&cursor=>; rel="next"``.
Every request is logged in ``requests`` (method, path, file, range, status, body bytes sent, auth, port).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".model", ".tiktoken", ".gguf", ".pt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (
        "version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n"
    ).encode()


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    sha: str
    gated: bool = False
    private: bool = False
    lfs: set[str] = field(default_factory=set)

    def is_lfs(self, path: str) -> bool:
        return path in self.lfs


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: dict
    server: str  # "hub" or "cdn"
    repo: Optional[str] = None
    file: Optional[str] = None
    range: Optional[str] = None
    authorization: Optional[str] = None
    cookie: Optional[str] = None
    status: int = 0
    sent: int = 0


class FakeHub:
    """Start with ``with FakeHub() as hub:`` (or start()/stop()); ``hub.url`` is the endpoint."""

    def __init__(self, tokens: tuple[str, ...] = ("hf_test_token",), cdn: bool = True):
        self.repos: dict[str, FakeRepo] = {}
        self.tokens = set(tokens)
        self.use_cdn = cdn
        self.requests: list[LoggedRequest] = []
        self.drops: dict[str, list[int]] = {}
        self.drop_always: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.slow: Optional[tuple[int, float]] = None
        self.ignore_range = False
        self.stall_listing = 0.0
        self.tree_page_size = 0  # > 0: the HF tree listing comes in pages of this many entries
        self._stopping = threading.Event()  # ends stalls when the hub stops
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self.url = ""
        self.cdn_url = ""

    # -- repos

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, gated: bool = False, private: bool = False,
                 lfs: Optional[set[str]] = None) -> FakeRepo:
        if lfs is None:
            lfs = {p for p in files if p.endswith(LFS_SUFFIXES) or p == "tokenizer.json"}
        digests = b"".join(k.encode() + hashlib.sha1(v).digest() for k, v in sorted(files.items()))
        sha = hashlib.sha1(repo_id.encode() + digests).hexdigest()
        repo = FakeRepo(repo_id, dict(files), sha, gated=gated, private=private, lfs=set(lfs))
        self.repos[repo_id] = repo
        return repo

    def add_folder(self, repo_id: str, folder: Path, extra: Optional[dict[str, bytes]] = None, **kw) -> FakeRepo:
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
        files.update(extra or {})
        return self.add_repo(repo_id, files, **kw)

    def total_bytes(self, repo_id: str, names) -> int:
        return sum(len(self.repos[repo_id].files[n]) for n in names)

    # -- log helpers

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def file_requests(self, method: str = "GET") -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.requests if r.file is not None and r.method == method]

    def bytes_served(self) -> int:
        with self._lock:
            return sum(r.sent for r in self.requests if r.file is not None)

    def _log(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    # -- lifecycle

    def start(self) -> "FakeHub":
        hub = self

        def make(kind: str) -> ThreadingHTTPServer:
            class Handler(_Handler):
                fake = hub
                server_kind = kind

            srv = _QuietServer(("127.0.0.1", 0), Handler)
            srv.daemon_threads = True
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                             name=f"fakehub-{kind}").start()
            self._servers.append(srv)
            return srv

        main = make("hub")
        self.url = f"http://127.0.0.1:{main.server_address[1]}"
        cdn = make("cdn")
        self.cdn_url = f"http://127.0.0.1:{cdn.server_address[1]}"
        return self

    def stop(self) -> None:
        self._stopping.set()
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers.clear()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- auth

    def _token(self, headers) -> Optional[str]:
        auth = headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        for part in (headers.get("Cookie") or "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == "m_session_id":
                return v
        return None


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub
    server_kind: str

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing

    def _entry(self) -> LoggedRequest:
        parts = urlsplit(self.path)
        e = LoggedRequest(
            method=self.command,
            path=unquote(parts.path),
            query={k: v[0] for k, v in parse_qs(parts.query).items()},
            server=self.server_kind,
            range=self.headers.get("Range"),
            authorization=self.headers.get("Authorization"),
            cookie=self.headers.get("Cookie"),
        )
        self.fake._log(e)  # logged on arrival, so the log is in request order; status/sent filled in later
        return e

    def _send(self, e: LoggedRequest, status: int, body: bytes = b"", headers: Optional[dict] = None,
              content_type: str = "application/json") -> None:
        e.status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            e.sent = len(body) if e.file else 0

    def _json(self, e: LoggedRequest, status: int, data, headers: Optional[dict] = None) -> None:
        self._send(e, status, json.dumps(data).encode(), headers)

    def _hf_error(self, e: LoggedRequest, status: int, code: str, message: str, extra: Optional[dict] = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        headers.update(extra or {})
        self._json(e, status, {"error": message}, headers)

    def _ms_error(self, e: LoggedRequest, status: int, code: int, message: str) -> None:
        self._json(e, status, {"Code": code, "Message": message, "RequestId": uuid.uuid4().hex, "Success": False})

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        e = self._entry()
        try:
            if self.server_kind == "cdn":
                return self._cdn(e)
            p = e.path
            if p.startswith("/api/v1/models/"):
                return self._modelscope(e, p[len("/api/v1/models/"):])
            if p.startswith("/api/models/"):
                return self._hf_api(e, p[len("/api/models/"):])
            if "/resolve/" in p:
                return self._hf_resolve(e, p)
            self._hf_error(e, 404, "NotFound", "Not found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- access

    def _repo_access(self, repo: FakeRepo) -> Optional[int]:
        """None if allowed, else the HTTP status to answer (401 without a token, 403 with a wrong one)."""
        if not (repo.gated or repo.private):
            return None
        token = self.fake._token(self.headers)
        if token in self.fake.tokens:
            return None
        return 403 if token else 401

    def _stall(self) -> None:
        if self.fake.stall_listing:
            self.fake._stopping.wait(self.fake.stall_listing)

    # -- Hugging Face

    def _hf_api(self, e: LoggedRequest, rest: str) -> None:
        parts = rest.split("/")
        if len(parts) < 2:
            return self._hf_error(e, 404, "RepoNotFound", "Repository not found")
        repo_id = "/".join(parts[:2])
        e.repo = repo_id
        repo = self.fake.repos.get(repo_id)
        if repo is None or (repo.private and self._repo_access(repo)):
            return self._hf_error(e, 401 if repo is not None else 404, "RepoNotFound", "Repository not found")
        tail = parts[2:]
        if not tail or tail[0] == "revision":
            rev = unquote(tail[1]) if len(tail) > 1 else "main"
            if rev not in ("main", repo.sha):
                return self._hf_error(e, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            blobs = e.query.get("blobs") in ("true", "True", "1")
            siblings = []
            for path, data in sorted(repo.files.items()):
                s: dict = {"rfilename": path}
                if blobs:
                    s["size"] = len(data)
                    s["blobId"] = git_blob_sha1(lfs_pointer(data) if repo.is_lfs(path) else data)
                    if repo.is_lfs(path):
                        s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                    "pointerSize": len(lfs_pointer(data))}
                siblings.append(s)
            return self._json(e, 200, {
                "_id": repo.sha[:24], "id": repo.repo_id, "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": repo.sha,
                "lastModified": "2024-01-01T00:00:00.000Z", "createdAt": "2024-01-01T00:00:00.000Z",
                "private": repo.private, "gated": "manual" if repo.gated else False, "disabled": False,
                "downloads": 0, "likes": 0, "library_name": "transformers", "tags": ["transformers"],
                "pipeline_tag": "text-generation", "siblings": siblings,
                "usedStorage": sum(len(d) for d in repo.files.values()),
            })
        if tail[0] == "tree" and len(tail) >= 2:
            self._stall()
            rev = unquote(tail[1])
            if rev not in ("main", repo.sha):
                return self._hf_error(e, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            prefix = "/".join(tail[2:])
            recursive = e.query.get("recursive") in ("true", "True", "1")
            out, dirs = [], set()
            for path, data in sorted(repo.files.items()):
                if prefix and not path.startswith(prefix + "/"):
                    continue
                rel = path[len(prefix) + 1:] if prefix else path
                if "/" in rel and not recursive:
                    d = (prefix + "/" if prefix else "") + rel.split("/")[0]
                    if d not in dirs:
                        dirs.add(d)
                        out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                    "path": d})
                    continue
                item = {"type": "file", "size": len(data), "path": path}
                if repo.is_lfs(path):
                    pointer = lfs_pointer(data)
                    item["oid"] = git_blob_sha1(pointer)
                    item["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                   "pointerSize": len(pointer)}
                else:
                    item["oid"] = git_blob_sha1(data)
                out.append(item)
            size = self.fake.tree_page_size
            if not size:
                return self._json(e, 200, out)
            start = int(e.query.get("cursor", 0))  # pages as the real hub gives them: a Link to the next one
            headers = {}
            if start + size < len(out):
                query = "&".join(f"{k}={quote(v, safe='')}" for k, v in e.query.items() if k != "cursor")
                headers["Link"] = f'<{self.fake.url}{quote(e.path)}?{query}&cursor={start + size}>; rel="next"'
            return self._json(e, 200, out[start:start + size], headers)
        return self._hf_error(e, 404, "NotFound", "Not found")

    def _hf_resolve(self, e: LoggedRequest, p: str) -> None:
        head, _, rest = p.lstrip("/").partition("/resolve/")
        repo_id = head
        rev, _, path = rest.partition("/")
        rev = unquote(rev)
        e.repo, e.file = repo_id, path
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            e.file = None
            return self._hf_error(e, 404, "RepoNotFound", "Repository not found")
        denied = self._repo_access(repo)
        if denied:
            e.file = None
            if repo.private:
                return self._hf_error(e, 401, "RepoNotFound", "Repository not found")
            return self._hf_error(
                e, denied, "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                "to access it. Please log in." if denied == 401 else
                f"Access to model {repo_id} is restricted and you are not in the authorized list.")
        if rev not in ("main", repo.sha):
            e.file = None
            return self._hf_error(e, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if path not in repo.files:
            e.file = None
            return self._hf_error(e, 404, "EntryNotFound", f"{path} does not exist on \"{rev}\"",
                                  {"X-Repo-Commit": repo.sha})
        data = repo.files[path]
        common = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if repo.is_lfs(path):
            sha256 = hashlib.sha256(data).hexdigest()
            common.update({"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data)), "ETag": f'"{sha256}"'})
            if self.fake.use_cdn:
                location = (f"{self.fake.cdn_url}/cdn/{sha256}"
                            f"?repo={quote(repo_id, safe='')}&file={quote(path, safe='')}")
                common["Location"] = location
                e.sent = 0
                return self._send(e, 302, b"", common)
        else:
            common["ETag"] = f'"{git_blob_sha1(data)}"'
        self._serve_bytes(e, repo, path, data, common)

    def _cdn(self, e: LoggedRequest) -> None:
        sha256 = e.path.rsplit("/", 1)[-1]
        repo = self.fake.repos.get(e.query.get("repo", ""))
        path = e.query.get("file", "")
        if repo is None or path not in repo.files or hashlib.sha256(repo.files[path]).hexdigest() != sha256:
            return self._send(e, 404, b"<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
        e.repo, e.file = repo.repo_id, path
        self._serve_bytes(e, repo, path, repo.files[path], {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"})

    # -- ModelScope

    def _modelscope(self, e: LoggedRequest, rest: str) -> None:
        parts = rest.split("/")
        repo_id = "/".join(parts[:2])
        e.repo = repo_id
        repo = self.fake.repos.get(repo_id)
        if len(parts) < 2 or repo is None:
            return self._ms_error(e, 404, 10010205, f"model {repo_id} not found")
        denied = self._repo_access(repo)
        if denied:
            return self._ms_error(e, denied, 10010103 if denied == 401 else 10010104,
                                  "login required" if denied == 401 else "no permission to access this model")
        tail = parts[2:]
        rev = e.query.get("Revision", "master")
        if tail and rev not in ("master", repo.sha):
            return self._ms_error(e, 404, 10010206, f"revision {rev} not found")
        if not tail:
            owner, name = repo_id.split("/")[0], repo_id.split("/")[1]
            return self._json(e, 200, {"Code": 200, "Data": {"Name": name, "Path": owner, "ModelType": ["glm"]},
                                       "Success": True})
        if tail == ["revisions"]:
            return self._json(e, 200, {"Code": 200, "Data": {"RevisionMap": {
                "Branches": [{"Revision": "master", "CreatedAt": 1700000000}], "Tags": []}}, "Success": True})
        if tail == ["repo", "files"]:
            self._stall()
            files = []
            for path, data in sorted(repo.files.items()):
                files.append({
                    "Name": path.rsplit("/", 1)[-1], "Path": path, "Type": "blob", "Size": len(data),
                    "Sha256": hashlib.sha256(data).hexdigest(), "IsLFS": repo.is_lfs(path),
                    "Revision": repo.sha, "Mode": "33188", "CommitMessage": "upload", "CommittedDate": 1700000000,
                })
            return self._json(e, 200, {"Code": 200, "Data": {"Files": files, "LatestCommitter": None},
                                       "Message": "success", "RequestId": uuid.uuid4().hex, "Success": True})
        if tail == ["repo"]:
            path = e.query.get("FilePath", "")
            e.file = path
            if path not in repo.files:
                e.file = None
                return self._ms_error(e, 404, 10010207, f"file {path} not found")
            data = repo.files[path]
            if repo.is_lfs(path) and self.fake.use_cdn:  # LFS blobs are redirected to object storage
                sha256 = hashlib.sha256(data).hexdigest()
                location = (f"{self.fake.cdn_url}/cdn/{sha256}"
                            f"?repo={quote(repo_id, safe='')}&file={quote(path, safe='')}")
                return self._send(e, 302, b"", {"Location": location})
            return self._serve_bytes(e, repo, path, data, {"Accept-Ranges": "bytes",
                                                           "Content-Disposition": f'attachment; filename="{path}"'})
        return self._ms_error(e, 404, 10010200, "not found")

    # -- bytes, with Range and faults

    def _serve_bytes(self, e: LoggedRequest, repo: FakeRepo, path: str, data: bytes, headers: dict) -> None:
        fake = self.fake
        if path in fake.corrupt:
            data = bytes(b ^ 0x5A for b in data)
        total = len(data)
        start, end = 0, total - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and not fake.ignore_range and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            start = int(a) if a else 0
            end = min(int(b), total - 1) if b else total - 1
            if start >= total:
                return self._send(e, 416, b"", {"Content-Range": f"bytes */{total}"})
            status = 206
            headers = dict(headers, **{"Content-Range": f"bytes {start}-{end}/{total}"})
        body = data[start:end + 1]
        e.status = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        drop_at = None
        with fake._lock:
            if fake.drops.get(path):
                drop_at = fake.drops[path].pop(0)
            elif path in fake.drop_always:
                drop_at = fake.drop_always[path]
        chunk, delay = fake.slow or (64 * 1024, 0.0)
        sent = 0
        try:
            while sent < len(body):
                n = min(chunk, len(body) - sent)
                if drop_at is not None:
                    n = min(n, drop_at - sent)
                    if n <= 0:
                        break
                self.wfile.write(body[sent:sent + n])
                self.wfile.flush()
                sent += n
                e.sent = sent
                if delay:
                    time.sleep(delay)
        except (BrokenPipeError, ConnectionResetError, OSError):
            drop_at = drop_at if drop_at is not None else sent
        e.sent = sent
        if drop_at is not None and sent < len(body):
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ------------------------------------------------------------------ the tiny model


CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

SENTENCES = [
    "Hello world, this is a tiny GLM model served by a fake hub.",
    "The quick brown fox jumps over the lazy dog.",
    "GLM models run locally in a terminal user interface.",
    "Downloads resume after a dropped connection or a cancel.",
]


def point_hubs_at(fake: "FakeHub", monkeypatch, scratch: Path, via: str = "env") -> None:
    """Send every Hugging Face / ModelScope call of this test to ``fake``, with no token and no telemetry.

    ``via="env"``: HF_ENDPOINT / MODELSCOPE_ENDPOINT, and huggingface_hub's constants
    (read from HF_ENDPOINT once, at its import) patched to match.
    ``via="config"``: the way a user who never set HF_ENDPOINT would: no *_ENDPOINT
    variable, huggingface_hub's endpoint constants left at their defaults
    (https://huggingface.co), and the fake hub named under [hub] in glmtui's
    config.toml (GLMTUI_HOME is a temporary folder in every test).
    Either way huggingface_hub's token files, telemetry and "agent harness"
    registry (fetched from its endpoint for the user agent, cached under
    HF_HOME) are kept away from the real ones.
    """
    import huggingface_hub.constants as hfc

    if via == "env":
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", fake.url)
        monkeypatch.setattr(hfc, "ENDPOINT", fake.url)
        monkeypatch.setattr(hfc, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}")
    elif via == "config":
        from glmtui.config import default_paths, ensure_private_dir

        monkeypatch.delenv("HF_ENDPOINT", raising=False)
        monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
        config_file = default_paths().config_file
        ensure_private_dir(config_file.parent)
        old = config_file.read_text(encoding="utf-8") if config_file.exists() else ""
        assert "[hub]" not in old, "point_hubs_at(via='config') writes the [hub] table itself"
        config_file.write_text(f'{old}\n[hub]\nhf_endpoint = "{fake.url}"\nmodelscope_endpoint = "{fake.url}"\n',
                               encoding="utf-8")
    else:
        raise ValueError(f"via must be 'env' or 'config', not {via!r}")
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hfc, "HF_TOKEN_PATH", str(scratch / "no-hf-token"))
    monkeypatch.setattr(hfc, "HF_STORED_TOKENS_PATH", str(scratch / "no-hf-tokens"))
    monkeypatch.setattr(hfc, "HF_HUB_DISABLE_TELEMETRY", True)
    if hasattr(hfc, "AGENT_HARNESSES_PATH"):
        monkeypatch.setattr(hfc, "AGENT_HARNESSES_PATH", str(scratch / "agent_harnesses.json"))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)


def build_tiny_model(dest: Path, seed: int = 0) -> Path:
    """A tiny real GlmForCausalLM (hidden 64, 2 layers, 4 heads, 2 kv heads, head_dim 16) with a
    BPE tokenizer and a chat template, saved as 3 safetensors shards + index."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GlmConfig, GlmForCausalLM, PreTrainedTokenizerFast

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dest)

    config = GlmConfig(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = GlmForCausalLM(config)
    model.save_pretrained(dest, safe_serialization=True, max_shard_size="200KB")
    return dest


def repo_extras(model_dir: Path) -> dict[str, bytes]:
    """Files a real repo carries that a load must NOT download: remote code, the same
    weights as a pickle, a stray weight file the index does not name, docs."""
    import io

    import torch
    from safetensors.torch import load_file

    state = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(shard))
    buf = io.BytesIO()
    torch.save(state, buf)
    return {
        "modeling_x.py": b"raise RuntimeError('remote code must never be downloaded or run')\n",
        "pytorch_model.bin": buf.getvalue(),
        "model-old-unused.safetensors": b"\0" * 4096,
        "README.md": b"# tiny\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "onnx/model.onnx": b"\1" * 1000,
    }
