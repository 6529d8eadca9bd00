"""How a history file becomes a usable connection: the repair loop (a bad file
is set aside and a new one started, with what a damaged one still held) and
the in-memory copy of a read-only file."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from glmtui.store import recovery
from glmtui.store.errors import HistoryError, is_corruption
from glmtui.store.files import (
    SetAside,
    chmod_private,
    clear_damage_note,
    damage_noted,
    read_header_problem,
    salvage_into,
    set_aside,
    set_aside_message,
)
from glmtui.store.schema import check_version, configure, connect, prepare


def open_repairing(
    path: Path, timeout: float, check_budget: float
) -> tuple[sqlite3.Connection, Optional[str], Optional[str]]:
    """A connection to *path* (created, migrated, checked), the warning for the
    user when a file was set aside or repaired, and a minor notice."""
    warnings: list[str] = []
    damaged: list[tuple[Path, str]] = []  # set-aside files to salvage from, and why
    notice = None
    for _attempt in range(3):
        try:
            problem = read_header_problem(path) or damage_noted(path)
            if problem:
                raise SetAside("corrupt", problem)
            if path.exists() and path.stat().st_size == 0:
                raise SetAside("empty", "it is empty (0 bytes)")
            conn = connect(path, timeout)
            try:
                check_version(conn)
                check = recovery.quick_check(conn, check_budget)
                if check.problem:
                    raise SetAside("corrupt", f"damaged pages: {check.problem}")
                if not check.complete:
                    notice = (
                        f"The chat history {path.name} is large: its damage check stopped after "
                        f"{check_budget:g} s with nothing found so far."
                    )
                configure(conn)
                prepare(conn)
            except BaseException:
                conn.close()
                raise
        except SetAside as aside:
            dest = set_aside(path, aside.kind)
            if aside.kind == "corrupt":
                damaged.append((dest, aside.reason))
            else:
                warnings.append(set_aside_message(path, aside, dest))
            continue
        except sqlite3.DatabaseError as err:
            if not is_corruption(err):
                raise
            damaged.append((set_aside(path, "corrupt"), str(err)))
            continue
        clear_damage_note(path)
        for dest, reason in damaged:
            warnings.append(salvage_into(conn, path, dest, reason))
        chmod_private(path)
        return conn, (" ".join(warnings) or None), notice
    raise HistoryError(f"Cannot create a usable chat history at {path}. " + " ".join(warnings))


def open_read_only(path: Path, mode: str) -> tuple[sqlite3.Connection, str]:
    """The file's conversations copied into memory (the file is never written),
    and what :attr:`HistoryStore.unsaved` tells the user."""
    mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        # immutable: SQLite creates nothing beside the file; a log with
        # commits in it needs mode=ro (and a -shm) to be read
        wal = path.with_name(path.name + "-wal")
        pending = wal.exists() and wal.stat().st_size > 0
        queries = ("mode=ro", "immutable=1") if pending else ("immutable=1",)
        for query in queries:
            src = sqlite3.connect(f"file:{quote(str(path))}?{query}", uri=True)
            try:
                src.backup(mem)
                break
            except sqlite3.OperationalError:
                if query == queries[-1]:
                    raise
            finally:
                src.close()
        mem.execute("PRAGMA foreign_keys=ON")
        check_version(mem)
        check = recovery.quick_check(mem, recovery.CHECK_BUDGET_S)
        if check.problem:
            raise sqlite3.DatabaseError(f"database disk image is malformed ({check.problem})")
        prepare(mem)
    except SetAside as aside:
        mem.close()
        raise HistoryError(f"The chat history {path} is read-only and cannot be used: {aside.reason}.") from aside
    except sqlite3.Error as err:
        mem.close()
        raise HistoryError(
            f"The chat history {path} is read-only (mode {mode}) and cannot be read: {err}."
        ) from err
    reason = (
        f"The history file is read-only (mode {mode}): its conversations are shown, but nothing "
        f"new is saved. To save again: chmod u+w {path}, then restart glmtui."
    )
    return mem, reason
