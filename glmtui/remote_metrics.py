"""A remote engine's own figures from its Prometheus ``/metrics`` (vLLM, SGLang).

``parse_exposition`` reads the Prometheus text exposition format (``# HELP`` /
``# TYPE`` comments, ``name{label="value",...} value [timestamp]`` samples);
``engine_figures`` picks what the monitor shows: KV-cache usage, running and
waiting requests, generation throughput. vLLM names: ``vllm:kv_cache_usage_perc``
(``vllm:gpu_cache_usage_perc`` before it), ``vllm:num_requests_running``,
``vllm:num_requests_waiting``, the counter ``vllm:generation_tokens_total``
(throughput = its increase between two samples / the seconds between them).
SGLang (``--enable-metrics``): ``sglang:token_usage``, ``sglang:num_running_reqs``,
``sglang:num_queue_reqs``, ``sglang:gen_throughput``. Names written with ``_``
for ``:`` are read too (Prometheus clients that escape the colon).

``MetricsPoller`` fetches ``<server root>/metrics`` (the endpoint without ``/v1``);
a server without one (404, or a text with neither family) gives ``None``: the
monitor then shows nothing. No torch, no UI.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Optional
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import httpx

POLL_INTERVAL = 2.0

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})?\s+(\S+)(?:\s+(-?\d+))?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


def _value(text: str) -> Optional[float]:
    special = {"+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}
    if text in special:
        return special[text]
    try:
        return float(text)
    except ValueError:
        return None


def _labels(text: str) -> Optional[tuple[tuple[str, str], ...]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if match is None:
            return None
        value = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], match.group(2))
        out.append((match.group(1), value))
        pos = match.end()
    return tuple(out)


def parse_exposition(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition; comments and malformed lines are skipped."""
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = _labels(match.group(2) or "")
        value = _value(match.group(3))
        if labels is None or value is None:
            continue
        samples.append(Sample(match.group(1), labels, value))
    return samples


@dataclass(frozen=True)
class EngineFigures:
    """One reading of a server's figures; None where the server does not say."""

    server: str  # "vLLM" | "SGLang"
    timestamp: float
    kv_cache_usage: Optional[float] = None  # 0..1
    running: Optional[int] = None
    waiting: Optional[int] = None
    throughput: Optional[float] = None  # generated tokens/s
    generation_tokens: Optional[float] = None  # vLLM's counter, for the next throughput


def _values(samples: Iterable[Sample], *names: str) -> list[float]:
    """Values of the first of ``names`` that has samples (each also with ':' written as '_')."""
    samples = list(samples)
    for name in names:
        for spelling in (name, name.replace(":", "_")):
            found = [s.value for s in samples if s.name == spelling and not math.isnan(s.value)]
            if found:
                return found
    return []


def _total(values: list[float]) -> Optional[float]:
    return sum(values) if values else None


def _count(values: list[float]) -> Optional[int]:
    return int(round(sum(values))) if values else None


def engine_figures(text: str, timestamp: float, previous: Optional[EngineFigures] = None) -> Optional[EngineFigures]:
    """The figures in a /metrics text, or None when it is neither vLLM's nor SGLang's.

    Several engines (data parallel) or ranks: requests and tokens add up, the
    KV-cache usage is the fullest one (the one that refuses work first)."""
    samples = parse_exposition(text)
    names = {s.name for s in samples}
    if any(n.startswith(("vllm:", "vllm_")) for n in names):
        kv = _values(samples, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
        tokens = _total(_values(samples, "vllm:generation_tokens_total"))
        throughput = None
        if tokens is not None and previous is not None and previous.generation_tokens is not None:
            seconds = timestamp - previous.timestamp
            if seconds > 0 and tokens >= previous.generation_tokens:  # a restarted server resets the counter
                throughput = (tokens - previous.generation_tokens) / seconds
        return EngineFigures("vLLM", timestamp, max(kv) if kv else None,
                             _count(_values(samples, "vllm:num_requests_running")),
                             _count(_values(samples, "vllm:num_requests_waiting")), throughput, tokens)
    if any(n.startswith(("sglang:", "sglang_")) for n in names):
        kv = _values(samples, "sglang:token_usage")
        return EngineFigures("SGLang", timestamp, max(kv) if kv else None,
                             _count(_values(samples, "sglang:num_running_reqs")),
                             _count(_values(samples, "sglang:num_queue_reqs")),
                             _total(_values(samples, "sglang:gen_throughput")))
    return None


def metrics_url(endpoint: str) -> str:
    """``http://host:port/v1`` (or without /v1) -> ``http://host:port/metrics``."""
    endpoint = endpoint.strip()
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    parts = urlsplit(endpoint.rstrip("/"))
    path = parts.path
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path.rstrip("/") + "/metrics", "", ""))


class MetricsPoller:
    """``poll()`` -> the server's figures now, or None (no /metrics, unreachable, not vLLM/SGLang).

    Call from one thread (the monitor's); it keeps the previous reading for vLLM's throughput.
    ``get``: an ``httpx.Client``-like ``get(url, timeout=...)``; the default makes one client."""

    def __init__(self, endpoint: str, api_key: Optional[str] = None, timeout: float = 1.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.url = metrics_url(endpoint)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = timeout
        self._clock = clock
        self._client: Optional[httpx.Client] = None
        self._previous: Optional[EngineFigures] = None
        self.missing = False  # the server answered 404: it has no /metrics

    def poll(self) -> Optional[EngineFigures]:
        import httpx

        if self._client is None:
            host = (urlsplit(self.url).hostname or "").lower()
            loopback = host in ("localhost", "::1") or host.startswith("127.")
            # like RemoteEngine: a proxy from the environment for remote servers, never for loopback
            self._client = httpx.Client(timeout=self._timeout, trust_env=not loopback, headers=self._headers)
        try:
            response = self._client.get(self.url)
        except (httpx.HTTPError, OSError):
            return None
        self.missing = response.status_code == 404
        if response.status_code != 200:
            return None
        figures = engine_figures(response.text, self._clock(), self._previous)
        if figures is not None:
            self._previous = figures
        return figures

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
