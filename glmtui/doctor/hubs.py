"""The hubs downloads use (a configured Hugging Face mirror, Hugging Face, ModelScope): which, and whether each
answers."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from ..config import read_table
from .verdicts import Check

NET_TIMEOUT = 3.0
HF_PUBLIC = "https://huggingface.co"
MODELSCOPE_PUBLIC = "https://modelscope.cn"


def hub_endpoints(config_file: Path, env: Optional[dict] = None) -> list[tuple[str, str, str, str]]:
    """[(key, title, url, where it is set)]: the configured Hugging Face mirror (if any), Hugging Face,
    ModelScope; the same precedence as downloads (the variable, then [hub] in config.toml)."""
    env = dict(os.environ) if env is None else env
    table = read_table(config_file, "hub")
    out = []
    hf_where = "HF_ENDPOINT" if env.get("HF_ENDPOINT") else f"hf_endpoint under [hub] in {config_file}"
    mirror = (env.get("HF_ENDPOINT") or str(table.get("hf_endpoint") or "")).strip().rstrip("/")
    if mirror and mirror != HF_PUBLIC:
        out.append(("hub_mirror", "Hugging Face mirror", mirror, hf_where))
    out.append(("hub_hf", "Hugging Face", HF_PUBLIC, "the public hub"))
    ms_where = ("MODELSCOPE_ENDPOINT" if env.get("MODELSCOPE_ENDPOINT")
                else f"modelscope_endpoint under [hub] in {config_file}")
    ms = (env.get("MODELSCOPE_ENDPOINT") or str(table.get("modelscope_endpoint") or "")).strip().rstrip("/")
    out.append(("hub_modelscope", "ModelScope", ms or MODELSCOPE_PUBLIC, ms_where if ms else "the public hub"))
    return out


def _why_unreachable(exc: BaseException, timeout: float) -> str:
    import httpx

    text = str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer within {timeout:g} s"
    if "Connection refused" in text or "[Errno 111]" in text:
        return "connection refused"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text \
            or "nodename nor servname" in text or "getaddrinfo" in text:
        return "the name does not resolve (no network, or no DNS)"
    return text.splitlines()[0] if text else type(exc).__name__


def check_hub(key: str, title: str, url: str, where: str, mirrored: bool, timeout: float = NET_TIMEOUT) -> Check:
    import httpx

    started = time.monotonic()
    try:
        response = httpx.get(url + "/", timeout=timeout, follow_redirects=False)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        why = _why_unreachable(exc, timeout)
        if key == "hub_mirror":
            fix = f"check the mirror's URL in {where}"
        elif key == "hub_hf":
            fix = ("nothing to do: downloads use the mirror" if mirrored else
                   "use a mirror (HF_ENDPOINT or hf_endpoint under [hub] in config.toml) or ModelScope "
                   "(glmtui pull --source modelscope)")
        else:
            fix = "check the network, MODELSCOPE_ENDPOINT, or download from Hugging Face (--source hf)"
        verdict = "ok" if key == "hub_hf" and mirrored else "warn"
        return Check(key, title, verdict, f"{url} unreachable: {why}", "" if verdict == "ok" else fix)
    seconds = time.monotonic() - started
    return Check(key, title, "ok", f"{url} answers (HTTP {response.status_code}, {seconds:.2f} s; set by {where})")
