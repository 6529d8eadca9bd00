"""What the user typed as a model -> the folder to load: one rule for the TUI, `glmtui chat` and `serve`.

A path (``/x``, ``./x``, ``~/x``) or an existing folder is loaded as it is (a
missing folder is handed to the engine, whose message says what is wrong); a
catalogue key or hub id is the catalogue's folder under the models folder, and
must have been downloaded. No torch; the catalogue is imported when used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

NOT_DOWNLOADED_HINT = "run `glmtui pull {key}`"


@dataclass(frozen=True)
class ResolvedModel:
    folder: Optional[str]  # None: nothing to load (``problem`` says why)
    name: str  # what to show: the catalogue's name, or the folder's
    key: str  # the id a server serves it as: the catalogue key, or the folder's name
    problem: Optional[str] = None


def resolve_model(spec: str, models_dir: Optional[os.PathLike] = None,
                  hint: str = NOT_DOWNLOADED_HINT) -> ResolvedModel:
    """The folder for ``spec``; ``hint`` (with ``{key}``) ends the message for a model not downloaded."""
    from . import catalog

    spec = spec.strip()
    folder = Path(spec).expanduser()
    if spec and (folder.is_dir() or catalog.looks_like_path(spec)):
        path = folder.resolve() if folder.exists() else folder
        name = path.name or spec
        return ResolvedModel(str(path), name, name)
    try:
        entry = catalog.resolve(spec)
    except catalog.UnknownModelError as exc:
        return ResolvedModel(None, spec, spec, str(exc))
    if models_dir is None:
        from .config import default_paths

        models_dir = default_paths().models_dir
    target = entry.model_dir(models_dir)
    if not target.is_dir():
        return ResolvedModel(None, entry.name, entry.key,
                             f"{entry.name} is not downloaded: {hint.format(key=entry.key)}")
    return ResolvedModel(str(target), entry.name, entry.key)
