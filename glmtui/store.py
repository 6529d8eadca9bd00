"""Conversation history in SQLite (standard library only; no UI, no torch).

One file holds every conversation, written as it happens: the chat pane adds
the user's message, adds an empty assistant message with status
``"streaming"``, and calls :meth:`HistoryStore.update_message` every couple of
seconds with the partial reply, then once more with the final text, status
and stats. A killed process therefore loses at most the last flush interval;
on the next open, replies left in ``"streaming"`` are kept and marked
``"interrupted"`` (unless their writer is another live glmtui process that
flushed within :data:`STALE_STREAMING_S`).

Robustness rules:

* WAL journal, ``busy_timeout`` and ``BEGIN IMMEDIATE`` for every write, so
  two glmtui processes can share one file without "database is locked"
  crashes (a writer waits up to *timeout* seconds, then gets a clear
  :class:`HistoryError`).
* ``PRAGMA user_version`` is the schema version; :data:`MIGRATIONS` upgrades
  older files in one transaction. A file from a *newer* glmtui, a corrupt or
  truncated file, or an SQLite file that is not ours is never modified or
  deleted: it is renamed aside (``history.sqlite3.newer-<timestamp>``,
  ``.corrupt-<timestamp>``, ``.foreign-<timestamp>``, ``.empty-<timestamp>``,
  with its ``-wal``/``-shm`` companions), a new file is started and
  :attr:`HistoryStore.warning` says so.
* Damage a successful open does not reveal is looked for with a time-bounded
  ``PRAGMA quick_check`` (and remembered in ``<file>.damaged`` when a query
  meets it later, so the next start repairs it). A damaged file is set aside
  and everything still readable in it is copied into the new one
  (:mod:`glmtui.store_recovery`).
* A history file without write permission is not written to: its content is
  loaded into memory and :attr:`HistoryStore.unsaved` says chats are not saved.
* An unwritable folder or a database locked by another program raises
  :class:`HistoryError`; the UI can then fall back to
  :meth:`HistoryStore.open_memory`. :attr:`HistoryStore.unsaved` also reports
  writes that fail while the store is in use, until one succeeds again.
* Files are created ``0600`` and a missing folder ``0700``. Opening is
  serialised between processes by ``flock`` on ``<file>.lock``. What is done
  to the file itself (set-aside, notes, locks) is in :mod:`glmtui.store_files`.

Search uses an FTS5 index with the ``trigram`` tokenizer (substring matching,
so Chinese works without word segmentation). Two-character terms — most Chinese
words — are shorter than a trigram: they are looked up as the OR of the indexed
trigrams that begin with them (the index sees each message with a newline
appended, so a word at the very end still begins one). One-character terms,
and everything when FTS5/trigram is missing, use a substring scan (newest
messages first, stopping at the limit; a rare term reads the whole table).

Thread safety: one connection (``check_same_thread=False``) guarded by a lock,
so the UI thread and thread workers can share one store.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union
from urllib.parse import quote

from glmtui import store_export, store_recovery
from glmtui.store_files import (
    chmod_private,
    clear_damage_note,
    damage_noted,
    file_lock,
    note_damage,
    read_header_problem,
    read_only_mode,
    salvage_into,
    set_aside,
    set_aside_message,
    SetAside,
    write_private,
)

__all__ = [
    "SCHEMA_VERSION",
    "ROLES",
    "STATUSES",
    "HistoryError",
    "Conversation",
    "StoredMessage",
    "SearchHit",
    "HistoryStore",
]

SCHEMA_VERSION = 1
ROLES = ("system", "user", "assistant", "observation")
STATUSES = ("complete", "streaming", "stopped", "interrupted", "error")
EXPORT_FORMAT = "glmtui-conversation"

# A "streaming" message whose writer is still alive and flushed it this
# recently is left alone when another process opens the file.
STALE_STREAMING_S = 30.0

_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

PathLike = Union[str, "os.PathLike[str]"]


class HistoryError(Exception):
    """A history operation failed; ``str(err)`` is meant for the user."""


# ----------------------------------------------------------------- records


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model: Optional[str]
    system_prompt: str
    params: dict = field(hash=False)
    created_at: float  # unix seconds
    updated_at: float


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation_id: int
    position: int  # ordering index within the conversation (gaps after deletes)
    role: str
    content: str
    status: str
    stats: Optional[dict] = field(hash=False)
    metadata: str  # ChatGLM3 metadata line (tool name); usually ""
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    title: str
    message_id: Optional[int]  # None: the conversation title matched
    role: Optional[str]
    snippet: str
    created_at: float


# ------------------------------------------------------------------ schema


def _exec_script(conn: sqlite3.Connection, script: str) -> None:
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
    _exec_script(
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


# MIGRATIONS[v] upgrades a database from schema version v to v + 1. Each runs
# inside the same BEGIN IMMEDIATE transaction that then sets user_version, so
# an upgrade is all-or-nothing. To change the schema: append a function, bump
# SCHEMA_VERSION, never edit an old entry.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_0_to_1]
assert len(MIGRATIONS) == SCHEMA_VERSION

# The index reads the content through a view that appends a newline, so a
# message ending in a two-character word still has a trigram that starts with
# it ("天气" + "\n"): two-character terms are then found through the trigrams
# they begin (see HistoryStore._bigram_match). Triggers must index exactly what
# the view shows, so that 'delete', 'rebuild' and 'integrity-check' agree.
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

# A two-character term whose trigrams are more varied than this is common
# enough for the newest-first scan to find a page of hits quickly.
_BIGRAM_MAX_TOKENS = 256

_OUR_TABLES = {"conversations", "messages"}

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


# ----------------------------------------------------------------- helpers


def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _parse_ts(value: Any, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return float(value)
    try:
        text = str(value)
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    except ValueError:
        return default


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(text: Optional[str]) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _owner_tag() -> str:
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


def _error_code(err: sqlite3.Error) -> Optional[int]:
    code = getattr(err, "sqlite_errorcode", None)  # Python >= 3.11
    return None if code is None else code & 0xFF


def _is_corruption(err: BaseException) -> bool:
    if not isinstance(err, sqlite3.DatabaseError):
        return False
    code = _error_code(err)
    if code is not None:
        return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(err).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def _describe(err: BaseException, path: Optional[Path], timeout: float) -> str:
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
    if _is_corruption(err):
        return (
            f"The chat history at {path} is damaged ({text}); restart glmtui to repair it "
            "(the damaged file is kept)."
        )
    return f"Chat history error ({where}): {text}"


_TERM_RE = re.compile(r'"([^"]+)"|(\S+)')


def _split_terms(query: str) -> list[str]:
    terms = []
    for quoted, bare in _TERM_RE.findall(query):
        term = (quoted or bare).strip()
        if term:
            terms.append(term)
    return terms


def _fts_phrase(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _like_escape(term: str) -> str:
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _has_ascii_letter(term: str) -> bool:
    return any("a" <= ch.lower() <= "z" for ch in term)


def _substring_condition(column: str, term: str) -> tuple[str, str]:
    # instr() is a plain memcmp scan; LIKE is needed only for ASCII case folding.
    if _has_ascii_letter(term):
        return f"{column} LIKE ? ESCAPE '\\'", _like_escape(term)
    return f"instr({column}, ?) > 0", term


def _make_snippet(text: str, terms: Sequence[str], marks: tuple[str, str], width: int = 64) -> str:
    """A snippet around the first match of any term (used where FTS5 has none)."""
    low = text.lower()
    best = -1
    best_len = 0
    for term in terms:
        i = low.find(term.lower())
        if i >= 0 and (best < 0 or i < best):
            best, best_len = i, len(term)
    if best < 0:
        piece = text[:width]
        return piece.replace("\n", " ") + ("…" if len(text) > width else "")
    start = max(0, best - width // 2)
    end = min(len(text), best + best_len + width // 2)
    out = text[start:best] + marks[0] + text[best : best + best_len] + marks[1] + text[best + best_len : end]
    out = out.replace("\n", " ")
    return ("…" if start > 0 else "") + out + ("…" if end < len(text) else "")


# ------------------------------------------------------------------- store

_CONV_COLS = "id, title, model, system_prompt, params, created_at, updated_at"
_MSG_COLS = (
    "id, conversation_id, position, role, content, status, stats, metadata, created_at, updated_at"
)


def _conv(row: tuple) -> Conversation:
    params = _loads(row[4])
    return Conversation(
        id=row[0],
        title=row[1],
        model=row[2],
        system_prompt=row[3],
        params=params if isinstance(params, dict) else {},
        created_at=row[5],
        updated_at=row[6],
    )


def _msg(row: tuple) -> StoredMessage:
    stats = _loads(row[6])
    return StoredMessage(
        id=row[0],
        conversation_id=row[1],
        position=row[2],
        role=row[3],
        content=row[4],
        status=row[5],
        stats=stats if isinstance(stats, dict) else None,
        metadata=row[7],
        created_at=row[8],
        updated_at=row[9],
    )


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")


class HistoryStore:
    """Conversation history. Create with :meth:`open` or :meth:`open_memory`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Optional[Path],
        *,
        timeout: float,
        warning: Optional[str] = None,
        notice: Optional[str] = None,
        unsaved: Optional[str] = None,
        use_fts: bool = True,
    ) -> None:
        self._conn: Optional[sqlite3.Connection] = conn
        self.path = path
        self.timeout = timeout
        #: Human-readable note for the UI when a bad file was set aside or repaired (else None).
        self.warning = warning
        #: Minor note for the UI (the check at open was cut short), else None.
        self.notice = notice
        self._unsaved = unsaved  # why nothing is ever saved (memory store, read-only file)
        self._write_problem: Optional[str] = None  # the last write failed, and why
        self._lock = threading.RLock()
        self._owner = _owner_tag()
        self._fts = use_fts and _has_fts_table(conn)
        self._vocab = False

    # ---------------------------------------------------------------- open

    @classmethod
    def open(
        cls,
        path: PathLike,
        *,
        timeout: float = 5.0,
        use_fts: bool = True,
        check_budget: float = store_recovery.CHECK_BUDGET_S,
    ) -> "HistoryStore":
        """Open (or create) the history file at *path*.

        Raises :class:`HistoryError` when the folder is not writable or the
        file stays locked by another program for *timeout* seconds. A corrupt,
        truncated, empty, foreign or newer-schema file is renamed aside and a
        new one started (with what a damaged file still held); :attr:`warning`
        then describes what happened. A file without write permission is read
        into memory (:attr:`unsaved` says so). *check_budget* bounds the
        damage check in seconds. ``use_fts=False`` forces the substring-scan
        search (diagnostics, tests).
        """
        path = Path(path)
        try:
            mode = read_only_mode(path)
            if mode is not None:
                return cls._open_read_only(path, mode, use_fts)
            if not path.parent.exists():
                from glmtui.config import ensure_private_dir

                ensure_private_dir(path.parent)
            with file_lock(path, timeout):
                conn, warning, notice = cls._open_repairing(path, timeout, check_budget)
        except HistoryError:
            raise
        except (sqlite3.Error, OSError) as err:
            raise HistoryError(_describe(err, path, timeout)) from err
        return cls(conn, path, timeout=timeout, warning=warning, notice=notice, use_fts=use_fts)

    @classmethod
    def open_memory(cls, *, reason: Optional[str] = None, use_fts: bool = True) -> "HistoryStore":
        """A private, non-persistent store (fallback when the file cannot be
        used); *reason* is what :attr:`unsaved` tells the user."""
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys=ON")
        _prepare(conn)
        return cls(conn, None, timeout=0.0, use_fts=use_fts,
                   unsaved=reason or "The chat history is kept in memory only, until glmtui closes.")

    @classmethod
    def _open_read_only(cls, path: Path, mode: str, use_fts: bool) -> "HistoryStore":
        """The file's conversations, copied into memory; the file is never written."""
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
            _check_version(mem)
            check = store_recovery.quick_check(mem, store_recovery.CHECK_BUDGET_S)
            if check.problem:
                raise sqlite3.DatabaseError(f"database disk image is malformed ({check.problem})")
            _prepare(mem)
        except SetAside as aside:
            mem.close()
            raise HistoryError(f"The chat history {path} is read-only and cannot be used: {aside.reason}.")
        except sqlite3.Error as err:
            mem.close()
            raise HistoryError(
                f"The chat history {path} is read-only (mode {mode}) and cannot be read: {err}."
            ) from err
        reason = (
            f"The history file is read-only (mode {mode}): its conversations are shown, but nothing "
            f"new is saved. To save again: chmod u+w {path}, then restart glmtui."
        )
        return cls(mem, None, timeout=0.0, use_fts=use_fts, unsaved=reason)

    @classmethod
    def _open_repairing(
        cls, path: Path, timeout: float, check_budget: float
    ) -> tuple[sqlite3.Connection, Optional[str], Optional[str]]:
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
                conn = _connect(path, timeout)
                try:
                    _check_version(conn)
                    check = store_recovery.quick_check(conn, check_budget)
                    if check.problem:
                        raise SetAside("corrupt", f"damaged pages: {check.problem}")
                    if not check.complete:
                        notice = (
                            f"The chat history {path.name} is large: its damage check stopped after "
                            f"{check_budget:g} s with nothing found so far."
                        )
                    _configure(conn)
                    _prepare(conn)
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
                if not _is_corruption(err):
                    raise
                damaged.append((set_aside(path, "corrupt"), str(err)))
                continue
            clear_damage_note(path)
            for dest, reason in damaged:
                warnings.append(salvage_into(conn, path, dest, reason))
            chmod_private(path)
            return conn, (" ".join(warnings) or None), notice
        raise HistoryError(f"Cannot create a usable chat history at {path}. " + " ".join(warnings))

    # ------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise HistoryError("The chat history is closed.")
            try:
                yield self._conn
            except sqlite3.Error as err:
                if self.path is not None and _is_corruption(err):
                    note_damage(self.path, err)
                raise HistoryError(_describe(err, self.path, self.timeout)) from err

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            with self._read() as conn:
                # IMMEDIATE takes the write lock up front, so busy_timeout applies;
                # a deferred read-then-write could fail with SQLITE_BUSY at once.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    # SQLite has already rolled back after some errors (disk full, corruption)
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
        except HistoryError as err:
            if self._conn is not None:
                self._write_problem = str(err)
            raise
        self._write_problem = None

    @property
    def unsaved(self) -> Optional[str]:
        """Why chats are not being saved right now (None: they are): a store
        in memory, a read-only file, or the last write failed."""
        return self._unsaved or self._write_problem

    def close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:  # bounded, and never a long wait on exit
                self._conn.execute("PRAGMA busy_timeout = 100")
                self._conn.execute("PRAGMA analysis_limit = 400")
                self._conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "HistoryStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def in_memory(self) -> bool:
        return self.path is None

    @property
    def full_text(self) -> bool:
        """True when searches use the FTS5 trigram index."""
        return self._fts

    # -------------------------------------------------------- conversations

    def create_conversation(
        self,
        title: str,
        model: Optional[str] = None,
        system_prompt: str = "",
        params: Optional[Mapping[str, Any]] = None,
    ) -> int:
        now = _now()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO conversations(title, model, system_prompt, params, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (title, model, system_prompt or "", _dumps(dict(params or {})), now, now),
            )
            return int(cur.lastrowid)

    def get_conversation(self, conversation_id: int) -> Optional[Conversation]:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_CONV_COLS} FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        return _conv(row) if row else None

    def list_conversations(self, limit: int = 50, offset: int = 0) -> list[Conversation]:
        """Most recently updated first."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_CONV_COLS} FROM conversations ORDER BY updated_at DESC, id DESC"
                " LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [_conv(r) for r in rows]

    def count_conversations(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM conversations").fetchone()[0])

    def rename(self, conversation_id: int, title: str) -> None:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE conversations SET title = ?, updated_at = ? WHERE id = ?",
                (title, _now(), conversation_id),
            )
            if cur.rowcount == 0:
                raise KeyError(conversation_id)

    _UNSET: Any = object()

    def update_settings(
        self,
        conversation_id: int,
        *,
        system_prompt: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        model: Any = _UNSET,
    ) -> None:
        """Change what is given; ``params`` replaces the whole dict; ``model=None`` clears it."""
        sets, args = [], []
        if system_prompt is not None:
            sets.append("system_prompt = ?")
            args.append(system_prompt)
        if params is not None:
            sets.append("params = ?")
            args.append(_dumps(dict(params)))
        if model is not HistoryStore._UNSET:
            sets.append("model = ?")
            args.append(model)
        sets.append("updated_at = ?")
        args.append(_now())
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE conversations SET {', '.join(sets)} WHERE id = ?", (*args, conversation_id)
            )
            if cur.rowcount == 0:
                raise KeyError(conversation_id)

    def delete_conversation(self, conversation_id: int) -> bool:
        """Delete a conversation and its messages; False if it did not exist."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
            return cur.rowcount > 0

    # ------------------------------------------------------------- messages

    def messages(self, conversation_id: int) -> list[StoredMessage]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE conversation_id = ? ORDER BY position",
                (conversation_id,),
            ).fetchall()
        return [_msg(r) for r in rows]

    def get_message(self, message_id: int) -> Optional[StoredMessage]:
        with self._read() as conn:
            row = conn.execute(f"SELECT {_MSG_COLS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        return _msg(row) if row else None

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        status: str = "complete",
        stats: Optional[Mapping[str, Any]] = None,
        metadata: str = "",
    ) -> int:
        """Append a message; returns its id.

        *stats* is a JSON-able dict, by convention with ``prompt_tokens``,
        ``completion_tokens``, ``ttft`` (seconds), ``tokens_per_s`` and
        ``finish_reason``.
        """
        _check_role(role)
        _check_status(status)
        now = _now()
        owner = self._owner if status == "streaming" else None
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
                raise KeyError(conversation_id)
            cur = conn.execute(
                "INSERT INTO messages(conversation_id, position, role, content, status, stats,"
                " metadata, owner, created_at, updated_at)"
                " VALUES (?, (SELECT coalesce(max(position), -1) + 1 FROM messages"
                "             WHERE conversation_id = ?), ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    conversation_id,
                    role,
                    content,
                    status,
                    None if stats is None else _dumps(dict(stats)),
                    metadata or "",
                    owner,
                    now,
                    now,
                ),
            )
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conversation_id))
            return int(cur.lastrowid)

    def update_message(
        self,
        message_id: int,
        content: Optional[str] = None,
        status: Optional[str] = None,
        stats: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Flush a streaming reply (``status="streaming"``) or finish it.

        Only what is given changes; *stats* replaces the stored dict.
        """
        if status is not None:
            _check_status(status)
        now = _now()
        sets, args = ["updated_at = ?"], [now]
        if content is not None:
            sets.append("content = ?")
            args.append(content)
        if status is not None:
            sets.append("status = ?")
            args.append(status)
            sets.append("owner = ?")
            args.append(self._owner if status == "streaming" else None)
        if stats is not None:
            sets.append("stats = ?")
            args.append(_dumps(dict(stats)))
        with self._write() as conn:
            row = conn.execute(
                "SELECT conversation_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                raise KeyError(message_id)
            conn.execute(f"UPDATE messages SET {', '.join(sets)} WHERE id = ?", (*args, message_id))
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, row[0]))

    def delete_message(self, message_id: int, *, and_following: bool = False) -> int:
        """Delete one message, or (``and_following``) it and every later one in
        its conversation — edit-and-resend. Returns how many were deleted."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT conversation_id, position FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                return 0
            if and_following:
                cur = conn.execute(
                    "DELETE FROM messages WHERE conversation_id = ? AND position >= ?", row
                )
            else:
                cur = conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (_now(), row[0]))
            return cur.rowcount

    def delete_last_assistant(self, conversation_id: int) -> Optional[int]:
        """For regenerate: delete the last message if it is an assistant reply.
        Returns its id, or None when the last message is not an assistant's."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT id, role FROM messages WHERE conversation_id = ? ORDER BY position DESC LIMIT 1",
                (conversation_id,),
            ).fetchone()
            if row is None or row[1] != "assistant":
                return None
            conn.execute("DELETE FROM messages WHERE id = ?", (row[0],))
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (_now(), conversation_id))
            return int(row[0])

    # --------------------------------------------------------------- search

    def search(
        self, query: str, limit: int = 50, *, marks: tuple[str, str] = ("«", "»")
    ) -> list[SearchHit]:
        """Find messages (and titles) containing every term of *query*.

        Terms are whitespace-separated substrings, case-insensitive for ASCII;
        ``"two words"`` is one term. Title matches come first (message_id
        None), then messages newest first. The snippet wraps matches in *marks*.
        """
        terms = _split_terms(query)
        if not terms or limit <= 0:
            return []
        hits: list[SearchHit] = []
        with self._read() as conn:
            conds, args = [], []
            for t in terms:
                cond, arg = _substring_condition("title", t)
                conds.append(cond)
                args.append(arg)
            for cid, title, created in conn.execute(
                f"SELECT id, title, created_at FROM conversations WHERE {' AND '.join(conds)}"
                " ORDER BY updated_at DESC, id DESC LIMIT ?",
                (*args, limit),
            ):
                hits.append(SearchHit(cid, title, None, None, _make_snippet(title, terms, marks), created))
            remaining = limit - len(hits)
            if remaining <= 0:
                return hits
            rows = self._search_messages(conn, terms, remaining, marks)
        for cid, title, mid, role, snip, created, content in rows:
            if not snip or marks[0] not in snip:
                snip = _make_snippet(content, terms, marks)
            else:
                snip = snip.replace("\n", " ").strip()
            hits.append(SearchHit(cid, title, mid, role, snip, created))
        return hits

    def _search_messages(
        self, conn: sqlite3.Connection, terms: list[str], limit: int, marks: tuple[str, str]
    ) -> list[tuple]:
        match_parts: list[str] = []
        scan_terms: list[str] = []
        all_long = True
        for t in terms:
            if self._fts and len(t) >= 3:
                match_parts.append(_fts_phrase(t))
                continue
            all_long = False
            tokens = self._bigram_tokens(conn, t) if self._fts and len(t) == 2 else None
            if tokens is None:
                scan_terms.append(t)
            elif not tokens:
                return []  # no trigram starts with it: it occurs nowhere
            else:
                match_parts.append("(" + " OR ".join(_fts_phrase(tok) for tok in tokens) + ")")
        conds, args = [], []
        for t in scan_terms:
            cond, arg = _substring_condition("m.content", t)
            conds.append(cond)
            args.append(arg)
        if match_parts:
            extra = "".join(f" AND {c}" for c in conds)
            snippet = "snippet(messages_fts, 0, ?, ?, '…', 24)" if all_long else "NULL"
            snippet_args = [marks[0], marks[1]] if all_long else []
            return conn.execute(
                f"SELECT m.conversation_id, c.title, m.id, m.role, {snippet}, m.created_at, m.content"
                " FROM messages_fts"
                " JOIN messages m ON m.id = messages_fts.rowid"
                " JOIN conversations c ON c.id = m.conversation_id"
                f" WHERE messages_fts MATCH ?{extra}"
                " ORDER BY messages_fts.rowid DESC LIMIT ?",
                (*snippet_args, " AND ".join(match_parts), *args, limit),
            ).fetchall()
        # Newest first, stopping at the limit: quick for frequent terms; a rare
        # one-character term (or any term without FTS5) reads every message.
        return conn.execute(
            "SELECT m.conversation_id, c.title, m.id, m.role, NULL, m.created_at, m.content"
            " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            f" WHERE {' AND '.join(conds)} ORDER BY m.id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()

    def _bigram_tokens(self, conn: sqlite3.Connection, term: str) -> Optional[list[str]]:
        """The indexed trigrams that begin with two-character *term* (every
        occurrence begins one, thanks to the newline the index appends), or
        None when there are too many to be worth an OR query."""
        if not self._vocab:
            conn.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS temp.messages_fts_vocab"
                " USING fts5vocab(main, messages_fts, row)"
            )
            self._vocab = True
        lo = term.lower()
        nxt = min(ord(lo[-1]) + 1, 0x10FFFF)
        if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be encoded
            nxt = 0xE000
        hi = lo[:-1] + chr(nxt)
        rows = conn.execute(
            "SELECT term FROM temp.messages_fts_vocab WHERE term >= ? AND term < ? LIMIT ?",
            (lo, hi, _BIGRAM_MAX_TOKENS + 1),
        ).fetchall()
        if len(rows) > _BIGRAM_MAX_TOKENS:
            return None
        return [r[0] for r in rows]

    # --------------------------------------------------------------- export

    def to_dict(self, conversation_id: int) -> dict:
        """The conversation as plain data (the shape :meth:`import_conversation` reads)."""
        with self._read():  # one consistent snapshot under the lock
            conv = self.get_conversation(conversation_id)
            if conv is None:
                raise KeyError(conversation_id)
            msgs = self.messages(conversation_id)
        return {
            "format": EXPORT_FORMAT,
            "version": 1,
            "id": conv.id,
            "title": conv.title,
            "model": conv.model,
            "system_prompt": conv.system_prompt,
            "params": conv.params,
            "created_at": _iso(conv.created_at),
            "updated_at": _iso(conv.updated_at),
            "messages": [
                {
                    "role": m.role,
                    "content": m.content,
                    "status": m.status,
                    "metadata": m.metadata,
                    "stats": m.stats,
                    "created_at": _iso(m.created_at),
                }
                for m in msgs
            ],
        }

    def export_json(self, conversation_id: int, path: Optional[PathLike] = None) -> str:
        text = json.dumps(self.to_dict(conversation_id), ensure_ascii=False, indent=2) + "\n"
        if path is not None:
            write_private(Path(path), text)
        return text

    def export_markdown(self, conversation_id: int, path: Optional[PathLike] = None) -> str:
        """Markdown for reading (control characters shown as escapes, see :mod:`glmtui.store_export`)."""
        text = store_export.render_markdown(self.to_dict(conversation_id))
        if path is not None:
            write_private(Path(path), text)
        return text

    def export_files(self, conversation_id: int, folder: PathLike) -> tuple[Path, Path]:
        """Write ``<title>-<id>.md`` and ``.json`` into *folder* (created private);
        an earlier export is never replaced: the next one is ``<title>-<id>-2``, and so on."""
        from glmtui.config import ensure_private_dir

        conv = self.get_conversation(conversation_id)
        if conv is None:
            raise KeyError(conversation_id)
        md_text = self.export_markdown(conversation_id)
        json_text = self.export_json(conversation_id)
        folder = Path(folder)
        try:
            ensure_private_dir(folder)
            md, js = store_export.create_new(folder, f"{store_export.slug(conv.title)}-{conversation_id}", (".md", ".json"))
            write_private(md, md_text)
            write_private(js, json_text)
        except OSError as err:
            raise HistoryError(f"Cannot write the export in {folder}: {err.strerror or err}.") from err
        return md, js

    # --------------------------------------------------------------- import

    def import_conversation(self, data: Union[Mapping[str, Any], str]) -> int:
        """Add a conversation from :meth:`export_json` output (text or dict); returns the new id."""
        return self.import_many([data])[0]

    def import_many(
        self, items: Iterable[Union[Mapping[str, Any], str]], *, batch_size: int = 200
    ) -> list[int]:
        """Bulk import (a transaction per *batch_size* conversations)."""
        ids: list[int] = []
        batch: list[Mapping[str, Any]] = []
        for item in items:
            batch.append(json.loads(item) if isinstance(item, str) else item)
            if len(batch) >= batch_size:
                ids += self._import_batch(batch)
                batch = []
        if batch:
            ids += self._import_batch(batch)
        return ids

    def _import_batch(self, batch: Sequence[Mapping[str, Any]]) -> list[int]:
        now = _now()
        ids = []
        with self._write() as conn:
            for data in batch:
                created = _parse_ts(data.get("created_at"), now)
                cur = conn.execute(
                    "INSERT INTO conversations(title, model, system_prompt, params, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        str(data.get("title") or ""),
                        data.get("model"),
                        str(data.get("system_prompt") or ""),
                        _dumps(dict(data.get("params") or {})),
                        created,
                        _parse_ts(data.get("updated_at"), created),
                    ),
                )
                cid = int(cur.lastrowid)
                rows = []
                for pos, m in enumerate(data.get("messages") or ()):
                    role = m.get("role", "user")
                    _check_role(role)
                    status = m.get("status") or "complete"
                    if status == "streaming":
                        status = "interrupted"
                    _check_status(status)
                    ts = _parse_ts(m.get("created_at"), created)
                    stats = m.get("stats")
                    rows.append(
                        (
                            cid,
                            pos,
                            role,
                            str(m.get("content") or ""),
                            status,
                            None if stats is None else _dumps(stats),
                            str(m.get("metadata") or ""),
                            ts,
                            ts,
                        )
                    )
                conn.executemany(
                    "INSERT INTO messages(conversation_id, position, role, content, status, stats,"
                    " metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                ids.append(cid)
        return ids

    # ----------------------------------------------------------- diagnostics

    def integrity_check(self) -> list[str]:
        """Full ``PRAGMA integrity_check`` (slow on big files: run it in a worker).
        Returns ``["ok"]`` when healthy."""
        with self._read() as conn:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            if self._fts and result == ["ok"]:
                try:
                    conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
                except sqlite3.DatabaseError as err:
                    result = [f"full-text index: {err}"]
        return result


# ------------------------------------------------------------ open helpers


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
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


def _check_version(conn: sqlite3.Connection) -> None:
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


def _configure(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA cache_size = -16384")  # 16 MiB


def _has_fts_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages_fts'").fetchone()
    return row is not None and fts_available()


def _prepare(conn: sqlite3.Connection) -> None:
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
                _exec_script(conn, _FTS_SCHEMA)
                conn.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    _recover_streaming(conn)




def _recover_streaming(conn: sqlite3.Connection) -> None:
    rows = conn.execute("SELECT id, owner, updated_at FROM messages WHERE status = 'streaming'").fetchall()
    if not rows:
        return
    now = _now()
    dead = [
        (mid,)
        for mid, owner, updated in rows
        if not (_owner_alive(owner) and now - updated < STALE_STREAMING_S)
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
