"""The API server's front door: Host check, API key, and a cap on the body bytes read.

``RequestGuard`` is a pure ASGI middleware that runs before FastAPI sees a request:

* Host: a browser page on ``evil.example`` whose DNS name is re-pointed at
  127.0.0.1 (DNS rebinding) can reach a loopback server, but its requests carry
  ``Host: evil.example``. Only the names in ``HostPolicy`` are answered.
* API key: ``Authorization: Bearer <key>`` on every path but the open ones.
* Body: the bytes actually received are counted (a chunked body has no
  Content-Length to check), and the request is refused with 413 as soon as the
  cap is passed, without buffering beyond it.

Nothing here imports FastAPI; starlette's JSONResponse is imported when used.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Iterable, Optional

LOCAL_NAMES = ("localhost",)


def error_body(message: str, type: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _ip(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def host_name(header: str) -> str:
    """The host part of a Host header, lower-cased.

    ``[::1]:8000`` -> ``::1``, ``Example.COM.:80`` -> ``example.com``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        header = header.partition(":")[0]
    return header.rstrip(".")


class HostPolicy:
    """Which ``Host`` headers a server bound to ``bound_host`` answers.

    Always: ``localhost`` and loopback addresses (any port, so an SSH tunnel's
    local port works), the bound address, and every name in ``allowed``
    (``*`` accepts any Host). A server bound to every interface (``0.0.0.0``,
    ``::``) also accepts any IP address: a page's origin can only be an IP
    literal if it really is served from that address, so IP literals cannot
    be a DNS-rebinding attack; host *names* (``myserver.lan``) must be listed.
    A request with no Host header (HTTP/1.0, not a browser) is accepted.
    """

    def __init__(self, bound_host: str = "127.0.0.1", allowed: Iterable[str] = ()):
        self.any_host = False
        self.names = set(LOCAL_NAMES)
        for name in allowed:
            name = name.strip()
            if name == "*":
                self.any_host = True
            elif name:
                self.names.add(host_name(name))
        bound = host_name(bound_host or "0.0.0.0")
        bound_ip = _ip(bound)
        self.wildcard = bound in ("", "0.0.0.0", "::")
        self.bound_ip = None if self.wildcard else bound_ip
        if bound_ip is None and not self.wildcard:
            self.names.add(bound)  # bound by name ("myhost"): that name is fine

    def allows(self, header: Optional[str]) -> bool:
        if self.any_host or header is None:
            return True
        name = host_name(header)
        if name in self.names:
            return True
        ip = _ip(name)
        if ip is None:
            return False
        return ip.is_loopback or self.wildcard or ip == self.bound_ip


def key_matches(authorization: str, api_key: Optional[str]) -> bool:
    """Whether an ``Authorization`` header value carries ``api_key`` as a bearer token (constant time)."""
    if not api_key:
        return False
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), api_key.encode())


def _header(scope, name: bytes) -> Optional[str]:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    pass


async def read_capped(receive, limit: int) -> bytes:
    """The whole request body; raises _TooLarge once more than ``limit`` bytes arrived, _Gone on disconnect."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone()
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise _TooLarge()
        if body:
            chunks.append(body)
        if not message.get("more_body", False):
            return b"".join(chunks)


class RequestGuard:
    """Pure ASGI middleware: Host check, API key (all paths but ``open_paths``), body cap.

    The body is read here, up to ``max_body`` bytes, and handed to the app as
    one message; later ``receive()`` calls (disconnect detection while a reply
    streams) go straight to the server.
    """

    def __init__(self, app, api_key: Optional[str], max_body: int, hosts: Optional[HostPolicy] = None,
                 open_paths: tuple = ("/health",)):
        self.app = app
        self.api_key = api_key or None
        self.max_body = max_body
        self.hosts = hosts or HostPolicy()
        self.open_paths = open_paths

    async def _refuse(self, scope, receive, send, status: int, body: dict, headers: Optional[dict] = None):
        from starlette.responses import JSONResponse

        await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = _header(scope, b"host")
        if not self.hosts.allows(host):
            name = host_name(host or "")
            message = (f"this server does not answer for the host {name!r}; "
                       f"start it with --allow-host {name} to accept that name")
            return await self._refuse(scope, receive, send, 400,
                                      error_body(message, "invalid_request_error", None, "host_not_allowed"))
        if self.api_key is not None and scope.get("path") not in self.open_paths:
            given = _header(scope, b"authorization") or ""
            if not key_matches(given, self.api_key):
                message = "missing API key: send 'Authorization: Bearer <key>'" if not given else "incorrect API key"
                return await self._refuse(scope, receive, send, 401,
                                          error_body(message, "invalid_request_error", None, "invalid_api_key"),
                                          {"WWW-Authenticate": "Bearer"})
        too_large = error_body(f"the request body is over the limit of {self.max_body} bytes",
                               "invalid_request_error", None, "request_too_large")
        # "Connection: close": the server stops reading the rest rather than draining it
        close = {"Connection": "close"}
        length = _header(scope, b"content-length") or ""
        if length.isdigit() and int(length) > self.max_body:
            return await self._refuse(scope, receive, send, 413, too_large, close)
        try:
            body = await read_capped(receive, self.max_body)
        except _TooLarge:
            return await self._refuse(scope, receive, send, 413, too_large, close)
        except _Gone:
            return None  # nobody to answer
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
