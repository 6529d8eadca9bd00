"""The other download source, suggested when a download fails (Hugging Face <-> ModelScope).

Both hubs carry the catalogue's models; when one cannot be reached, does not
have the repo, or wants a login, the other often works (ModelScope is the
usual way from mainland China, Hugging Face elsewhere). ``other_source_hint``
gives the words to add to the one-line error: for ``glmtui pull`` a command
to run, for the TUI the key that switches the source. Errors the other hub
cannot help with (disk full, cancelled, a bug) get none.

``endpoint_in_use`` says which URL each source downloads from and who set it
(the Models pane shows it; ``e`` there edits ``[hub]`` in config.toml).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union
from urllib.parse import urlsplit

NAMES = {"hf": "Hugging Face", "modelscope": "ModelScope"}
PUBLIC = {"hf": "https://huggingface.co", "modelscope": "https://modelscope.cn"}
#: per source: (the key under [hub] in config.toml, the environment variable); as glmtui.hub.endpoints
ENDPOINT_SETTINGS = {"hf": ("hf_endpoint", "HF_ENDPOINT"), "modelscope": ("modelscope_endpoint", "MODELSCOPE_ENDPOINT")}


def _helps(error: Union[BaseException, str, None]) -> bool:
    """Whether the other hub may work after ``error`` (an exception, or its class name as a
    DownloadJob keeps it)."""
    from .hub import errors

    helpful = (errors.NetworkError, errors.RepoNotFoundError, errors.AuthRequiredError)
    if isinstance(error, str):
        cls = getattr(errors, error, None)
        return isinstance(cls, type) and issubclass(cls, helpful)
    return error is None or isinstance(error, helpful)


def other_source_hint(entry, source: str, error: Union[BaseException, str, None] = None, *,
                      ui: bool = False) -> str:
    """'' or ' — or download it from ModelScope: glmtui pull KEY --source modelscope' (``ui``: the key)."""
    other = "modelscope" if source == "hf" else "hf"
    repo = getattr(entry, "modelscope_repo" if other == "modelscope" else "hf_repo", None)
    if not repo or not _helps(error):
        return ""
    if ui:
        return f" — or switch to {NAMES[other]} (s in Models) and download again"
    spec = entry.key if getattr(entry, "in_catalog", False) else repo
    return f" — or download it from {NAMES[other]}: glmtui pull {spec} --source {other}"


def remembered_source(config_file=None) -> Optional[str]:
    """The source the Models pane last chose (``download_source`` under [ui] in config.toml), so
    ``glmtui pull`` without ``--source`` downloads from where the TUI does; None when unset."""
    from .config import default_paths, read_table

    value = read_table(config_file or default_paths().config_file, "ui").get("download_source")
    return value if value in NAMES else None


@dataclass(frozen=True)
class EndpointInUse:
    """The hub URL downloads from ``source`` use now, and who set it."""

    source: str
    url: str
    set_by: str  # "" (the public hub), "HF_ENDPOINT" / "MODELSCOPE_ENDPOINT", or "config.toml"
    saved: str  # the value under [hub] in config.toml ("" when none): what the Models pane edits

    @property
    def label(self) -> str:
        """"Hugging Face https://hf-mirror.com (HF_ENDPOINT)" / "ModelScope https://modelscope.cn"."""
        return f"{NAMES[self.source]} {self.url}" + (f" ({self.set_by})" if self.set_by else "")


def endpoint_in_use(source: str, config_file: Optional[Path] = None,
                    environ: Optional[Mapping[str, str]] = None) -> EndpointInUse:
    """Which URL a download from ``source`` goes to: the variable, else [hub] in config.toml, else the
    public hub (the precedence of glmtui.hub.endpoints without a --endpoint argument)."""
    from .config import default_paths, read_table

    key, var = ENDPOINT_SETTINGS[source]
    environ = os.environ if environ is None else environ
    saved = str(read_table(config_file or default_paths().config_file, "hub").get(key) or "").strip().rstrip("/")
    from_env = str(environ.get(var) or "").strip().rstrip("/")
    if from_env:
        return EndpointInUse(source, from_env, var, saved)
    if saved:
        return EndpointInUse(source, saved, "config.toml", saved)
    return EndpointInUse(source, PUBLIC[source], "", saved)


def endpoint_problem(url: str) -> Optional[str]:
    """None for an http(s) URL with a host (or "" for the public hub), else why not, in words."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not an http(s) URL: {url!r}"
    return None

