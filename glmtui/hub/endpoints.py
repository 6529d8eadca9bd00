"""Which hub URL a download uses, read at each download: the argument (``glmtui pull --endpoint``),
else ``HF_ENDPOINT``/``MODELSCOPE_ENDPOINT``, else ``hf_endpoint``/``modelscope_endpoint`` under
``[hub]`` in config.toml, else the public hub.

huggingface_hub reads its own ``constants.ENDPOINT`` once, at import, so every call to it is
given the endpoint chosen here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from .errors import DownloadError
from .sources import MODELSCOPE_DEFAULT_ENDPOINT, hf_constants

HUB_TABLE = "hub"  # the [hub] table of config.toml: hf_endpoint, modelscope_endpoint


def resolve_endpoint(source: str, explicit: Optional[str], config_file: Optional[Path]) -> tuple[str, str]:
    """(URL of the hub for ``source``, where that is set, in words: the hint of a "cannot reach"
    message). ``config_file`` None is glmtui's. Raises :class:`DownloadError` for a value that is not a URL."""
    from ..config import read_table

    key, var = ("hf_endpoint", "HF_ENDPOINT") if source == "hf" else ("modelscope_endpoint", "MODELSCOPE_ENDPOINT")
    if config_file is None:
        from ..config import default_paths

        config_file = default_paths().config_file
    candidates = (
        (explicit, "the endpoint argument (--endpoint)"),
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
    default = hf_constants().ENDPOINT if source == "hf" else MODELSCOPE_DEFAULT_ENDPOINT
    return default.rstrip("/"), (f"check the network, or use a mirror (glmtui pull --endpoint, {var}, "
                                 f"or {key} under [{HUB_TABLE}] in config.toml)")
