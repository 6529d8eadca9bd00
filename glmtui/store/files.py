"""The history file on disk: cheap checks of its header, set-aside (rename,
never delete), the note left when damage is met in use, read-only detection,
the lock that serialises opening between processes, the private file writes,
and the messages that tell the user about each."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Iterator, Optional

from filelock import FileLock, Timeout

from glmtui.store import recovery

_SQLITE_MAGIC = b"SQLite format 3\x00"


class SetAside(Exception):
    """The file must be moved aside (kind: corrupt, newer, foreign or empty)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def read_header_problem(path: Path) -> Optional[str]:
    """Cheap checks on the file itself: None when it looks like an intact SQLite file."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None  # SQLite treats an empty file as an empty database
    with open(path, "rb") as fh:
        header = fh.read(100)
    if len(header) < 100 or header[:16] != _SQLITE_MAGIC:
        return "the file is not an SQLite database"
    page_size = int.from_bytes(header[16:18], "big")
    if page_size == 1:
        page_size = 65536
    change_counter = header[24:28]
    page_count = int.from_bytes(header[28:32], "big")
    valid_for = header[92:96]
    wal = path.with_name(path.name + "-wal")
    wal_pending = wal.exists() and wal.stat().st_size > 0
    # The in-header page count is authoritative when it was written by the same
    # transaction as the change counter. With a pending WAL a crash may have
    # left a half-done checkpoint that SQLite will redo, so do not judge then.
    if page_count and valid_for == change_counter and not wal_pending:
        if size < page_count * page_size:
            return f"the file is truncated ({size} of {page_count * page_size} bytes)"
    return None


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".damaged")


def damage_noted(path: Path) -> Optional[str]:
    """Why a query found *path* damaged in an earlier session (None: it did not)."""
    marker = _marker(path)
    if not marker.exists() or not path.exists():
        return None
    try:
        text = marker.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return f"glmtui found it damaged while using it ({text or 'database disk image is malformed'})"


def note_damage(path: Path, err: BaseException) -> None:
    """Remember damage met in use, so the next open repairs the file even when
    its time-bounded check would not reach the damaged pages."""
    try:
        write_private(_marker(path), f"{err}\n")
    except OSError:
        pass


def clear_damage_note(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_marker(path))


def read_only_mode(path: Path) -> Optional[str]:
    """The file's mode (e.g. "0400") when glmtui must not write it: no write
    permission for its owner (also binding for root, who could write anyway),
    or none for this user. None when it is writable or missing."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    if not mode & stat.S_IWUSR or not os.access(path, os.W_OK):
        return f"{mode:04o}"
    return None


def chmod_private(path: Path) -> None:
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if p.exists() and (p.stat().st_mode & 0o077):
                os.chmod(p, 0o600)
        except OSError:
            pass


def set_aside(path: Path, kind: str) -> Path:
    """Rename *path* (and its -wal/-shm) to ``<name>.<kind>-<timestamp>``; never delete."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(f"{path.name}.{kind}-{stamp}")
    n = 1
    while dest.exists() or dest.with_name(dest.name + "-wal").exists():
        dest = path.with_name(f"{path.name}.{kind}-{stamp}-{n}")
        n += 1
    os.rename(path, dest)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            try:
                os.rename(side, dest.with_name(dest.name + suffix))
            except OSError:
                pass
    return dest


@contextlib.contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[None]:
    """Serialise open/repair between processes (a second glmtui must not set
    aside the fresh file the first one just created): an exclusive lock on
    ``<file>.lock`` (created 0600), waited for up to *timeout* seconds (at
    least 0.1), after which SQLite's "database is locked" error is raised."""
    lock_path = path.with_name(path.name + ".lock")
    if not path.parent.is_dir():  # FileLock would try to create it: fail as opening the file would
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(lock_path))
    lock = FileLock(lock_path, timeout=max(timeout, 0.1), mode=0o600)
    try:
        lock.acquire(poll_interval=0.02)
    except Timeout:
        raise sqlite3.OperationalError("database is locked (open lock held)") from None
    try:
        yield
    finally:
        lock.release()


def set_aside_message(path: Path, aside: SetAside, dest: Path) -> str:
    if aside.kind == "newer":
        return (
            f"The chat history {path.name} was not opened: {aside.reason}. It was moved, "
            f"untouched, to {dest} and a new history was started; a newer glmtui can open it."
        )
    if aside.kind == "foreign":
        return (
            f"{path} was not a glmtui history ({aside.reason}). It was moved to {dest} "
            "and a new history was started."
        )
    if aside.kind == "empty":
        return (
            f"The chat history {path} was empty (0 bytes), so it held no conversations; if you had "
            f"some, something outside glmtui emptied the file (a full disk, an interrupted copy): "
            f"restore it from a backup. The empty file was kept as {dest} and a new history was started."
        )
    return (
        f"The chat history {path.name} could not be read ({aside.reason}). It was kept as "
        f"{dest} and a new, empty history was started."
    )


def salvage_into(conn: sqlite3.Connection, path: Path, dest: Path, reason: str) -> str:
    """Copy what the set-aside *dest* still holds into the new file; the message for the user."""
    try:
        got = recovery.salvage(dest, conn)
    except (sqlite3.Error, OSError) as err:
        got, reason = None, f"{reason}; copying from it failed: {err}"
    if got is None or (got.conversations == 0 and got.messages == 0):
        return set_aside_message(path, SetAside("corrupt", reason), dest)
    untitled = f" ({got.untitled} of them lost their title)" if got.untitled else ""
    return (
        f"The chat history {path.name} was damaged ({reason}). {got.conversations} "
        f"conversation{'s' if got.conversations != 1 else ''}{untitled} and {got.messages} "
        f"message{'s' if got.messages != 1 else ''} were recovered into a new history; "
        f"the original is kept, unchanged, as {dest}."
    )


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
