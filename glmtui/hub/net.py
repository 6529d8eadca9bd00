"""HTTP plumbing shared by the sources and the transfer: the client library, the timeouts, origins,
and why a connection failed, in words.

The timeouts are read when a backend is made (tests lower them through this module).
"""

from __future__ import annotations

import socket
from typing import Any, Optional
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 5.0  # seconds to open a connection to a hub
READ_TIMEOUT = 20.0  # seconds without a byte before a transfer counts as dropped (HF: or HF_HUB_DOWNLOAD_TIMEOUT)


def http_lib() -> Any:
    """httpx2: the HTTP client of huggingface_hub 2.x, whose session and exceptions glmtui shares."""
    import httpx2

    return httpx2


def http_timeout(read: Optional[float] = None) -> Any:
    """The client library's Timeout for every request: ``read`` (default :data:`READ_TIMEOUT`)
    seconds without a byte, :data:`CONNECT_TIMEOUT` to connect."""
    return http_lib().Timeout(READ_TIMEOUT if read is None else read, connect=CONNECT_TIMEOUT)


def connect_failure(exc: BaseException, endpoint: str) -> str:
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


def origin(url: str) -> tuple:
    """(scheme, host, port) of ``url``: a token is sent only to the origin it belongs to."""
    p = urlsplit(url)
    return (p.scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(p.scheme, 0))
