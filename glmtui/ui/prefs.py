"""UI preferences (the ``[ui]`` table of config.toml) and theme files.

Preferences are small: the chosen theme and the last quantization mode. The
``[ui]`` table is rewritten in place; every other table of the file (other
parts of glmtui keep their settings there) is left exactly as it was.
``save_table`` does the same for another table (the Models pane's hub endpoints
under ``[hub]``).

Themes are TOML files, one theme each::

    name = "glm-ink"          # defaults to the file name
    dark = true
    primary = "#4C7DFF"       # any field of textual.theme.Theme
    [variables]               # optional Textual design variables
    "footer-key-foreground" = "#FFB454"

They are read from the package (``glmtui/themes/*.toml``, shipped as package
data; the top-level ``themes/`` folder of the repository is a symlink to it)
and then from ``<config dir>/themes/*.toml``, where users drop their own: a
user file with the same name overrides a shipped one.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Optional

from glmtui.config import ensure_private_dir, read_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None  # (mypy: tomli is untyped here, see pyproject)

PACKAGE_THEMES = Path(__file__).resolve().parent.parent / "themes"
DEFAULT_THEME = "glm-ink"
UI_TABLE = "ui"


def _load_toml(path: Path) -> dict:
    if tomllib is None:
        raise ValueError("reading TOML needs Python 3.11 or the tomli package")
    with open(path, "rb") as fh:
        return tomllib.load(fh)


# ------------------------------------------------------------------ prefs


def load_prefs(config_file: Path) -> tuple[dict, Optional[str]]:
    """The ``[ui]`` table, and a warning when the file could not be read."""
    try:
        data = _load_toml(config_file)
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        return {}, f"settings file {config_file} could not be read ({exc}); using defaults"
    ui = data.get(UI_TABLE)
    return (dict(ui) if isinstance(ui, dict) else {}), None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def save_prefs(config_file: Path, values: dict) -> None:
    """Merge ``values`` into the ``[ui]`` table of ``config_file`` (created if missing)."""
    save_table(config_file, UI_TABLE, values)


def save_table(config_file: Path, table: str, values: dict) -> None:
    """Merge ``values`` into the ``[table]`` table of ``config_file`` (a None value removes its key);
    the other tables are kept line for line."""
    try:
        text = config_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    current = read_table(config_file, table) if text else {}
    merged = {**current, **values}
    lines = text.splitlines()
    out: list[str] = []
    in_table = False
    for line in lines:
        m = _HEADER.match(line)
        if m:
            in_table = m.group(1).strip().strip('"') == table
            if in_table:
                continue
        if not in_table:
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    if out:
        out.append("")
    out.append(f"[{table}]")
    for key, value in merged.items():
        if value is None:
            continue
        name = key if _KEY.match(key) else _toml_value(key)
        out.append(f"{name} = {_toml_value(value)}")
    if not config_file.parent.exists():
        ensure_private_dir(config_file.parent)
    tmp = config_file.with_name(config_file.name + ".tmp")
    # Readable by the user only, from the first byte written.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(out) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, config_file)


# ------------------------------------------------------------------ themes


def theme_from_dict(data: dict, default_name: str):
    """A textual Theme from a parsed theme file (ValueError when it is not one)."""
    from textual.theme import Theme

    allowed = {f.name for f in fields(Theme)}
    kwargs = {k: v for k, v in data.items() if k in allowed}
    kwargs.setdefault("name", default_name)
    if "primary" not in kwargs:
        raise ValueError("a theme needs at least a 'primary' colour")
    variables = kwargs.get("variables")
    if variables is not None and not isinstance(variables, dict):
        raise ValueError("'variables' must be a table")
    kwargs["variables"] = {str(k): str(v) for k, v in (variables or {}).items()}
    theme = Theme(**kwargs)
    theme.to_color_system()  # validates the colours
    return theme


def theme_dirs(config_dir: Optional[Path]) -> list[Path]:
    dirs = [PACKAGE_THEMES]
    if config_dir is not None:
        dirs.append(Path(config_dir) / "themes")
    return dirs


def load_themes(dirs: Iterable[Path]) -> tuple[list, list[str]]:
    """(themes, problems): every readable theme file in ``dirs``, later dirs winning."""
    found: dict[str, Any] = {}
    problems: list[str] = []
    for folder in dirs:
        try:
            files = sorted(Path(folder).glob("*.toml"))
        except OSError:
            continue
        for path in files:
            try:
                theme = theme_from_dict(_load_toml(path), path.stem)
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the app
                problems.append(f"theme {path.name}: {exc}")
                continue
            found[theme.name] = theme
    return list(found.values()), problems
