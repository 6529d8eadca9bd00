"""HistoryStore, the one public class of the history (kept whole past 400 lines: one cohesive interface).

Conversation history in SQLite (standard library only; no UI, no torch).

One file holds every conversation, written as it happens: the chat pane adds
the user's message, adds an empty assistant message with status
``"streaming"``, and calls :meth:`HistoryStore.update_message` every couple of
seconds with the partial reply, then once more with the final text, status
and stats. A killed process therefore loses at most the last flush interval;
on the next open, replies left in ``"streaming"`` are kept and marked
``"interrupted"`` (unless their writer is another live glmtui process that
flushed within :data:`glmtui.store.schema.STALE_STREAMING_S`).

Robustness rules:

* WAL journal, ``busy_timeout`` and ``BEGIN IMMEDIATE`` for every write, so
  two glmtui processes can share one file without "database is locked"
  crashes (a writer waits up to *timeout* seconds, then gets a clear
  :class:`HistoryError`).
* ``PRAGMA user_version`` is the schema version; :mod:`glmtui.store.schema`
  upgrades older files in one transaction. A file from a *newer* glmtui, a
  corrupt or truncated file, or an SQLite file that is not ours is never
  modified or deleted: it is renamed aside (``history.sqlite3.newer-<timestamp>``,
  ``.corrupt-<timestamp>``, ``.foreign-<timestamp>``, ``.empty-<timestamp>``,
  with its ``-wal``/``-shm`` companions), a new file is started and
  :attr:`HistoryStore.warning` says so (:mod:`glmtui.store.opening`).
* Damage a successful open does not reveal is looked for with a time-bounded
  ``PRAGMA quick_check`` (and remembered in ``<file>.damaged`` when a query
  meets it later, so the next start repairs it). A damaged file is set aside
  and everything still readable in it is copied into the new one
  (:mod:`glmtui.store.recovery`).
* A history file without write permission is not written to: its content is
  loaded into memory and :attr:`HistoryStore.unsaved` says chats are not saved.
* An unwritable folder or a database locked by another program raises
  :class:`HistoryError`; the UI can then fall back to
  :meth:`HistoryStore.open_memory`. :attr:`HistoryStore.unsaved` also reports
  writes that fail while the store is in use, until one succeeds again.
* Files are created ``0600`` and a missing folder ``0700``. Opening is
  serialised between processes by a lock on ``<file>.lock``. What is done
  to the file itself (set-aside, notes, locks) is in :mod:`glmtui.store.files`.

Search (:mod:`glmtui.store.search`) uses an FTS5 index with the ``trigram``
tokenizer, so Chinese works without word segmentation.

Thread safety: one connection (``check_same_thread=False``) guarded by a lock,
so the UI thread and thread workers can share one store.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, TextIO, Union

from glmtui.store import export, recovery
from glmtui.store.errors import HistoryError, describe, is_corruption
from glmtui.store.exchange import conversation_dict, history_lines, import_new, insert_conversations, read_history
from glmtui.store.files import file_lock, note_damage, read_only_mode, write_private
from glmtui.store.opening import open_read_only, open_repairing
from glmtui.store.records import (
    CONV_COLS,
    MSG_COLS,
    Conversation,
    SearchHit,
    StoredMessage,
    check_kind,
    check_role,
    check_status,
    conversation_from_row,
    dumps,
    inserted_id,
    message_from_row,
    now,
)
from glmtui.store.schema import has_fts_table, owner_tag, prepare
from glmtui.store.search import Searcher

PathLike = Union[str, "os.PathLike[str]"]


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
        self._owner = owner_tag()
        self._searcher = Searcher(use_fts and has_fts_table(conn))

    # ---------------------------------------------------------------- open

    @classmethod
    def open(
        cls,
        path: PathLike,
        *,
        timeout: float = 5.0,
        use_fts: bool = True,
        check_budget: float = recovery.CHECK_BUDGET_S,
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
                conn, reason = open_read_only(path, mode)
                return cls(conn, None, timeout=0.0, use_fts=use_fts, unsaved=reason)
            if not path.parent.exists():
                from glmtui.config import ensure_private_dir

                ensure_private_dir(path.parent)
            with file_lock(path, timeout):
                conn, warning, notice = open_repairing(path, timeout, check_budget)
        except HistoryError:
            raise
        except (sqlite3.Error, OSError) as err:
            raise HistoryError(describe(err, path, timeout)) from err
        return cls(conn, path, timeout=timeout, warning=warning, notice=notice, use_fts=use_fts)

    @classmethod
    def open_memory(cls, *, reason: Optional[str] = None, use_fts: bool = True) -> "HistoryStore":
        """A private, non-persistent store (fallback when the file cannot be
        used); *reason* is what :attr:`unsaved` tells the user."""
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys=ON")
        prepare(conn)
        return cls(conn, None, timeout=0.0, use_fts=use_fts,
                   unsaved=reason or "The chat history is kept in memory only, until glmtui closes.")

    # ------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise HistoryError("The chat history is closed.")
            try:
                yield self._conn
            except sqlite3.Error as err:
                if self.path is not None and is_corruption(err):
                    note_damage(self.path, err)
                raise HistoryError(describe(err, self.path, self.timeout)) from err

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
        return self._searcher.fts

    # -------------------------------------------------------- conversations

    def create_conversation(
        self,
        title: str,
        model: Optional[str] = None,
        system_prompt: str = "",
        params: Optional[Mapping[str, Any]] = None,
        kind: str = "chat",
    ) -> int:
        """A new conversation; ``kind``: "chat", or "completion" (completion mode's text)."""
        check_kind(kind)
        t = now()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO conversations(title, model, system_prompt, params, created_at, updated_at, kind)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (title, model, system_prompt or "", dumps(dict(params or {})), t, t, kind),
            )
            return inserted_id(cur)

    def get_conversation(self, conversation_id: int) -> Optional[Conversation]:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {CONV_COLS} FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        return conversation_from_row(row) if row else None

    def list_conversations(self, limit: int = 50, offset: int = 0) -> list[Conversation]:
        """Most recently updated first."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {CONV_COLS} FROM conversations ORDER BY updated_at DESC, id DESC"
                " LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
        return [conversation_from_row(r) for r in rows]

    def count_conversations(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM conversations").fetchone()[0])

    def rename(self, conversation_id: int, title: str) -> None:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE conversations SET title = ?, updated_at = ? WHERE id = ?",
                (title, now(), conversation_id),
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
        sets: list[str] = []
        args: list[Any] = []
        if system_prompt is not None:
            sets.append("system_prompt = ?")
            args.append(system_prompt)
        if params is not None:
            sets.append("params = ?")
            args.append(dumps(dict(params)))
        if model is not HistoryStore._UNSET:
            sets.append("model = ?")
            args.append(model)
        sets.append("updated_at = ?")
        args.append(now())
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
                f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? ORDER BY position",
                (conversation_id,),
            ).fetchall()
        return [message_from_row(r) for r in rows]

    def get_message(self, message_id: int) -> Optional[StoredMessage]:
        with self._read() as conn:
            row = conn.execute(f"SELECT {MSG_COLS} FROM messages WHERE id = ?", (message_id,)).fetchone()
        return message_from_row(row) if row else None

    def add_message(
        self,
        conversation_id: int,
        role: str,
        content: str,
        status: str = "complete",
        stats: Optional[Mapping[str, Any]] = None,
        metadata: str = "",
        reasoning: str = "",
    ) -> int:
        """Append a message; returns its id.

        *stats* is a JSON-able dict, by convention with ``prompt_tokens``,
        ``completion_tokens``, ``ttft`` (seconds), ``tokens_per_s`` and
        ``finish_reason``. *reasoning*: a reasoning model's <think> text (the answer is *content*).
        """
        check_role(role)
        check_status(status)
        t = now()
        owner = self._owner if status == "streaming" else None
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)).fetchone() is None:
                raise KeyError(conversation_id)
            cur = conn.execute(
                "INSERT INTO messages(conversation_id, position, role, content, status, stats,"
                " metadata, owner, created_at, updated_at, reasoning)"
                " VALUES (?, (SELECT coalesce(max(position), -1) + 1 FROM messages"
                "             WHERE conversation_id = ?), ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    conversation_id,
                    role,
                    content,
                    status,
                    None if stats is None else dumps(dict(stats)),
                    metadata or "",
                    owner,
                    t,
                    t,
                    reasoning or "",
                ),
            )
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (t, conversation_id))
            return inserted_id(cur)

    def update_message(
        self,
        message_id: int,
        content: Optional[str] = None,
        status: Optional[str] = None,
        stats: Optional[Mapping[str, Any]] = None,
        reasoning: Optional[str] = None,
    ) -> None:
        """Flush a streaming reply (``status="streaming"``) or finish it.

        Only what is given changes; *stats* replaces the stored dict.
        """
        if status is not None:
            check_status(status)
        t = now()
        sets: list[str] = ["updated_at = ?"]
        args: list[Any] = [t]
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
            args.append(dumps(dict(stats)))
        if reasoning is not None:
            sets.append("reasoning = ?")
            args.append(reasoning)
        with self._write() as conn:
            row = conn.execute(
                "SELECT conversation_id FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:
                raise KeyError(message_id)
            conn.execute(f"UPDATE messages SET {', '.join(sets)} WHERE id = ?", (*args, message_id))
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (t, row[0]))

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
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now(), row[0]))
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
            conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now(), conversation_id))
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
        with self._read() as conn:
            return self._searcher.search(conn, query, limit, marks)

    # --------------------------------------------------------------- export

    def to_dict(self, conversation_id: int) -> dict:
        """The conversation as plain data (the shape :meth:`import_conversation` reads)."""
        with self._read():  # one consistent snapshot under the lock
            conv = self.get_conversation(conversation_id)
            if conv is None:
                raise KeyError(conversation_id)
            msgs = self.messages(conversation_id)
        return conversation_dict(conv, msgs)

    def export_json(self, conversation_id: int, path: Optional[PathLike] = None) -> str:
        text = json.dumps(self.to_dict(conversation_id), ensure_ascii=False, indent=2) + "\n"
        if path is not None:
            write_private(Path(path), text)
        return text

    def export_markdown(self, conversation_id: int, path: Optional[PathLike] = None) -> str:
        """Markdown for reading (control characters shown as escapes, see :mod:`glmtui.store.export`)."""
        text = export.render_markdown(self.to_dict(conversation_id))
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
            md, js = export.create_new(folder, f"{export.slug(conv.title)}-{conversation_id}", (".md", ".json"))
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

    def _import_batch(self, batch: list[Mapping[str, Any]]) -> list[int]:
        with self._write() as conn:
            return insert_conversations(conn, batch)

    # ------------------------------------------------------ history exchange

    def export_history(self, out: TextIO) -> int:
        """Write every conversation to *out* as JSON Lines (one consistent
        snapshot; see :mod:`glmtui.store.exchange`); returns how many."""
        count = 0
        with self._read() as conn:
            conn.execute("BEGIN")  # one read transaction: a concurrent writer cannot split a line's view
            try:
                for line in history_lines(conn):
                    out.write(line)
                    count += 1
            finally:
                conn.execute("COMMIT")
        return count

    def import_history(self, text: str) -> tuple[int, int]:
        """Import a history file's *text* (see :mod:`glmtui.store.formats`) in
        one transaction: a conversation whose id is already here is skipped.
        Returns (added, skipped); raises :class:`ExchangeError` (nothing imported)."""
        conversations = read_history(text)
        with self._write() as conn:
            return import_new(conn, conversations)

    # ----------------------------------------------------------- diagnostics

    def integrity_check(self) -> list[str]:
        """Full ``PRAGMA integrity_check`` (slow on big files: run it in a worker).
        Returns ``["ok"]`` when healthy."""
        with self._read() as conn:
            result = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            if self._searcher.fts and result == ["ok"]:
                try:
                    conn.execute("INSERT INTO messages_fts(messages_fts, rank) VALUES ('integrity-check', 1)")
                except sqlite3.DatabaseError as err:
                    result = [f"full-text index: {err}"]
        return result
