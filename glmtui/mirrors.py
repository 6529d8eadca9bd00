"""The other download source, suggested when a download fails (Hugging Face <-> ModelScope).

Both hubs carry the catalogue's models; when one cannot be reached, does not
have the repo, or wants a login, the other often works (ModelScope is the
usual way from mainland China, Hugging Face elsewhere). ``other_source_hint``
gives the words to add to the one-line error: for ``glmtui pull`` a command
to run, for the TUI the key that switches the source. Errors the other hub
cannot help with (disk full, cancelled, a bug) get none.
"""

from __future__ import annotations

from typing import Optional

NAMES = {"hf": "Hugging Face", "modelscope": "ModelScope"}


def _helps(error: Optional[BaseException]) -> bool:
    from .hub.errors import AuthRequiredError, NetworkError, RepoNotFoundError

    return error is None or isinstance(error, (NetworkError, RepoNotFoundError, AuthRequiredError))


def other_source_hint(entry, source: str, error: Optional[BaseException] = None, *, ui: bool = False) -> str:
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
