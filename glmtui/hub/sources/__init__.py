"""The hubs glmtui downloads from: one backend per source, each listing a repo and naming
the request for each file's bytes (the bytes themselves are read by :mod:`..transfer`)."""

from __future__ import annotations

from typing import Literal, Union

from .base import Backend, RemoteFile
from .hf import HF_DEFAULT_REVISION, HFBackend, hf_constants
from .modelscope import MODELSCOPE_DEFAULT_ENDPOINT, MODELSCOPE_DEFAULT_REVISION, ModelScopeBackend

Source = Literal["hf", "modelscope"]
SOURCES = ("hf", "modelscope")

__all__ = [
    "Backend", "RemoteFile", "HFBackend", "ModelScopeBackend", "Source", "SOURCES", "check_source", "open_backend",
    "hf_constants", "HF_DEFAULT_REVISION", "MODELSCOPE_DEFAULT_ENDPOINT", "MODELSCOPE_DEFAULT_REVISION",
]


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r} (use 'hf' or 'modelscope')")


def open_backend(source: str, endpoint: str, endpoint_hint: str, token: Union[str, bool, None]) -> Backend:
    """The backend for ``source`` at ``endpoint``; close it when done."""
    check_source(source)
    if source == "hf":
        return HFBackend(endpoint, endpoint_hint, token)
    return ModelScopeBackend(endpoint, endpoint_hint, token)
