"""The store's one exception and the user-facing sentence for each SQLite or OS failure."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Optional

_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class HistoryError(Exception):
    """A history operation failed; ``str(err)`` is meant for the user."""


def _error_code(err: sqlite3.Error) -> Optional[int]:
    code = getattr(err, "sqlite_errorcode", None)  # Python >= 3.11
    return None if code is None else code & 0xFF


def is_corruption(err: BaseException) -> bool:
    if not isinstance(err, sqlite3.DatabaseError):
        return False
    code = _error_code(err)
    if code is not None:
        return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(err).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def describe(err: BaseException, path: Optional[Path], timeout: float) -> str:
    """One sentence for the user about *err*, met while using the history at *path*."""
    where = f"the chat history at {path}" if path else "the in-memory chat history"
    text = str(err)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return (
            f"Cannot use {where}: the database is locked by another program "
            f"(waited {timeout:g} s). Close the other program or try again."
        )
    if isinstance(err, PermissionError) or "readonly" in low or "read-only" in low:
        return f"Cannot write {where}: its folder or file is read-only ({text})."
    if "unable to open" in low or isinstance(err, (FileNotFoundError, NotADirectoryError)):
        return f"Cannot open {where}: the file or its folder is not usable ({text})."
    if "disk is full" in low or "disk full" in low:
        return f"Cannot write {where}: the disk is full."
    if is_corruption(err):
        return (
            f"The chat history at {path} is damaged ({text}); restart glmtui to repair it "
            "(the damaged file is kept)."
        )
    return f"Chat history error ({where}): {text}"
