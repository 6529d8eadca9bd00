"""The schema and its migrations (keyed on ``PRAGMA user_version``), the search
index's tables, connection settings, and what is done to a file at every open
(migrate, build a missing index, mark dead "streaming" replies interrupted)."""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path
from typing import Callable, Optional

from glmtui.store.files import SetAside
from glmtui.store.records import now

SCHEMA_VERSION = 4

# A "streaming" message whose writer is still alive and flushed it this
# recently is left alone when another process opens the file.
STALE_STREAMING_S = 30.0

_OUR_TABLES = {"conversations", "messages"}


def exec_script(conn: sqlite3.Connection, script: str) -> None:
    """Run a script statement by statement inside the caller's transaction
    (``executescript`` would COMMIT it first)."""
    buf: list[str] = []
    for line in script.strip().splitlines():
        buf.append(line)
        joined = "\n".join(buf)
        if sqlite3.complete_statement(joined):
            conn.execute(joined)
            buf = []
    if "".join(buf).strip():
        raise ValueError("incomplete SQL statement in script")


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    exec_script(
        conn,
        """
        CREATE TABLE conversations (
            id            INTEGER PRIMARY KEY,
            title         TEXT NOT NULL,
            model         TEXT,
            system_prompt TEXT NOT NULL DEFAULT '',
            params        TEXT NOT NULL DEFAULT '{}',
            created_at    REAL NOT NULL,
            updated_at    REAL NOT NULL
        );
        CREATE INDEX conversations_by_updated ON conversations(updated_at DESC, id DESC);

        CREATE TABLE messages (
            id              INTEGER PRIMARY KEY,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            position        INTEGER NOT NULL,
            role            TEXT NOT NULL
                CHECK (role IN ('system', 'user', 'assistant', 'observation')),
            content         TEXT NOT NULL DEFAULT '',
            status          TEXT NOT NULL DEFAULT 'complete'
                CHECK (status IN ('complete', 'streaming', 'stopped', 'interrupted', 'error')),
            stats           TEXT,
            metadata        TEXT NOT NULL DEFAULT '',
            owner           TEXT,
            created_at      REAL NOT NULL,
            updated_at      REAL NOT NULL,
            UNIQUE (conversation_id, position)
        );
        CREATE INDEX messages_streaming ON messages(id) WHERE status = 'streaming';
        """
    )


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    # uid: the conversation's stable identity across machines (export/import
    # skips a conversation whose uid is already here). Every insert that gives
    # none (the app, salvage, older code paths) gets a random one.
    exec_script(
        conn,
        """
        ALTER TABLE conversations ADD COLUMN uid TEXT;
        UPDATE conversations SET uid = lower(hex(randomblob(16))) WHERE uid IS NULL;
        CREATE UNIQUE INDEX conversations_by_uid ON conversations(uid);
        CREATE TRIGGER conversations_uid_ai AFTER INSERT ON conversations WHEN new.uid IS NULL BEGIN
            UPDATE conversations SET uid = lower(hex(randomblob(16))) WHERE id = new.id;
        END;
        """
    )


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    # reasoning: a reasoning model's <think> text, kept apart from the answer (content), which is
    # what the search indexes and what goes back to the model. A column, not a key in stats: stats
    # is replaced whole by every flush, and the reasoning streams beside the answer.
    exec_script(conn, "ALTER TABLE messages ADD COLUMN reasoning TEXT NOT NULL DEFAULT '';")


def _migrate_3_to_4(conn: sqlite3.Connection) -> None:
    # kind: what the conversation is: "chat" (roles, replies), or "completion" (a base model's raw
    # continuation: its messages, in order, add up to the text). Listed and searched with the rest.
    exec_script(conn, "ALTER TABLE conversations ADD COLUMN kind TEXT NOT NULL DEFAULT 'chat';")


# MIGRATIONS[v] upgrades a database from schema version v to v + 1. Each runs
# inside the same BEGIN IMMEDIATE transaction that then sets user_version, so
# an upgrade is all-or-nothing. To change the schema: append a function, bump
# SCHEMA_VERSION, never edit an old entry.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_0_to_1, _migrate_1_to_2, _migrate_2_to_3,
                                                       _migrate_3_to_4]
assert len(MIGRATIONS) == SCHEMA_VERSION

# The index reads the content through a view that appends a newline, so a
# message ending in a two-character word still has a trigram that starts with
# it ("天气" + "\n"): two-character terms are then found through the trigrams
# they begin (see glmtui.store.search). Triggers must index exactly what the
# view shows, so that 'delete', 'rebuild' and 'integrity-check' agree.
_FTS_SCHEMA = """
CREATE VIEW messages_fts_src AS SELECT id, content || char(10) AS content FROM messages;
CREATE VIRTUAL TABLE messages_fts USING fts5(
    content, content='messages_fts_src', content_rowid='id', tokenize='trigram'
);
CREATE TRIGGER messages_fts_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content || char(10));
END;
CREATE TRIGGER messages_fts_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content)
    VALUES ('delete', old.id, old.content || char(10));
END;
CREATE TRIGGER messages_fts_au AFTER UPDATE OF content ON messages
WHEN old.content IS NOT new.content BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, content)
    VALUES ('delete', old.id, old.content || char(10));
    INSERT INTO messages_fts(rowid, content) VALUES (new.id, new.content || char(10));
END;
"""

_trigram_ok: Optional[bool] = None


def fts_available() -> bool:
    """Whether this Python's SQLite has FTS5 with the trigram tokenizer."""
    global _trigram_ok
    if _trigram_ok is None:
        try:
            probe = sqlite3.connect(":memory:")
            try:
                probe.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='trigram')")
                _trigram_ok = True
            finally:
                probe.close()
        except sqlite3.Error:
            _trigram_ok = False
    return _trigram_ok


def has_fts_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'").fetchone()
    return row is not None and fts_available()


def connect(path: Path, timeout: float) -> sqlite3.Connection:
    if not path.exists():
        # Create it ourselves so the mode is 0600 (SQLite gives -wal/-shm the
        # database file's permissions).
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        except FileExistsError:
            pass
    conn = sqlite3.connect(
        str(path), timeout=timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    except BaseException:
        conn.close()
        raise
    return conn


def check_version(conn: sqlite3.Connection) -> None:
    """Read-only checks before anything is written to the file."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version > SCHEMA_VERSION:
        raise SetAside(
            "newer",
            f"it was written by a newer glmtui (schema version {version}; "
            f"this version understands up to {SCHEMA_VERSION})",
        )
    if version == 0 and names:
        raise SetAside("foreign", "it is an SQLite database that glmtui did not create")
    if version > 0 and not _OUR_TABLES <= names:
        raise SetAside("corrupt", "its tables are missing")


def configure(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA cache_size = -16384")  # 16 MiB


def prepare(conn: sqlite3.Connection) -> None:
    """Migrate, make sure the search index exists, recover dead streaming replies."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
            if version > SCHEMA_VERSION:
                raise SetAside("newer", f"it was written by a newer glmtui (schema version {version})")
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    if fts_available() and conn.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'"
    ).fetchone() is None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'").fetchone() is None:
                exec_script(conn, _FTS_SCHEMA)
                conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    _recover_streaming(conn)


def owner_tag() -> str:
    """Who writes a streaming row: ``<pid>@<host>``."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _owner_alive(owner: Optional[str]) -> bool:
    """Whether another live process on this host wrote this streaming row."""
    if not owner or os.name == "nt":  # os.kill(pid, 0) would terminate on Windows
        return False
    pid_text, _, host = owner.partition("@")
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname() or pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _recover_streaming(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT id, owner, updated_at FROM messages WHERE status = 'streaming'").fetchall()
    if not rows:
        return
    t = now()
    dead = [
        (mid,)
        for mid, owner, updated in rows
        if not (_owner_alive(owner) and t - updated < STALE_STREAMING_S)
    ]
    if not dead:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            "UPDATE messages SET status = 'interrupted', owner = NULL"
            " WHERE id = ? AND status = 'streaming'",
            dead,
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
