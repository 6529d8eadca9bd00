"""Where glmtui keeps its files, and reading one table of its config.toml.

Paths come from platformdirs; ``GLMTUI_HOME`` overrides all of them with one
folder (tests and portable installs use it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "glmtui"


@dataclass(frozen=True)
class Paths:
    data_dir: Path
    config_dir: Path
    cache_dir: Path

    @property
    def history_db(self) -> Path:
        return self.data_dir / "history.sqlite3"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"


def default_paths() -> Paths:
    home = os.environ.get("GLMTUI_HOME")
    if home:
        base = Path(home)
        return Paths(base / "data", base / "config", base / "cache")
    import platformdirs

    return Paths(
        Path(platformdirs.user_data_dir(APP_NAME)),
        Path(platformdirs.user_config_dir(APP_NAME)),
        Path(platformdirs.user_cache_dir(APP_NAME)),
    )


def ensure_private_dir(path: Path) -> Path:
    """Create a folder readable by the user only (history and config are private)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.chmod(path, 0o700)
    except OSError:
        pass
    return path


def read_table(config_file: Path, name: str) -> dict:
    """The ``[name]`` table of ``config_file``; {} when the file or the table is missing
    or the file cannot be parsed (the app warns about an unreadable file at start)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(config_file, "rb") as fh:
            table = tomllib.load(fh).get(name)
    except (OSError, ValueError):
        return {}
    return dict(table) if isinstance(table, dict) else {}
