"""Conversations as plain data: the dict of one conversation (the JSON export),
the JSON Lines history (``glmtui history export``/``import``, one conversation a
line, schema in README "History exchange"), and the rows an imported one becomes."""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterator, Mapping, Sequence

from glmtui.store.formats import HISTORY_VERSION, FormatError, conversations_from_value
from glmtui.store.records import (
    CONV_COLS,
    KINDS,
    MSG_COLS,
    Conversation,
    StoredMessage,
    check_role,
    check_status,
    conversation_from_row,
    dumps,
    inserted_id,
    iso,
    message_from_row,
    now,
    parse_ts,
)

EXPORT_FORMAT = "glmtui-conversation"


def conversation_dict(conv: Conversation, msgs: Sequence[StoredMessage]) -> dict:
    """One conversation as plain data (the shape :func:`insert_conversations` reads)."""
    return {
        "format": EXPORT_FORMAT,
        "version": 1,
        "id": conv.id,
        "title": conv.title,
        "model": conv.model,
        "system_prompt": conv.system_prompt,
        "params": conv.params,
        "created_at": iso(conv.created_at),
        "updated_at": iso(conv.updated_at),
        **({"kind": conv.kind} if conv.kind != "chat" else {}),
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "metadata": m.metadata,
                "stats": m.stats,
                "created_at": iso(m.created_at),
                **({"reasoning": m.reasoning} if m.reasoning else {}),
            }
            for m in msgs
        ],
    }


def insert_conversations(conn: sqlite3.Connection, batch: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert each conversation of *batch* (inside the caller's transaction); their new ids."""
    t = now()
    ids = []
    for data in batch:
        created = parse_ts(data.get("created_at"), t)
        cur = conn.execute(
            "INSERT INTO conversations(title, model, system_prompt, params, created_at, updated_at, uid, kind)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(data.get("title") or ""),
                data.get("model"),
                str(data.get("system_prompt") or ""),
                dumps(dict(data.get("params") or {})),
                created,
                parse_ts(data.get("updated_at"), created),
                data.get("uid"),  # None: the schema's trigger gives it a random one
                data.get("kind") if data.get("kind") in KINDS else "chat",
            ),
        )
        cid = inserted_id(cur)
        rows = []
        for pos, m in enumerate(data.get("messages") or ()):
            role = m.get("role", "user")
            check_role(role)
            status = m.get("status") or "complete"
            if status == "streaming":
                status = "interrupted"
            check_status(status)
            ts = parse_ts(m.get("created_at"), created)
            stats = m.get("stats")
            rows.append(
                (
                    cid,
                    pos,
                    role,
                    str(m.get("content") or ""),
                    status,
                    None if stats is None else dumps(stats),
                    str(m.get("metadata") or ""),
                    ts,
                    ts,
                    str(m.get("reasoning") or ""),
                )
            )
        conn.executemany(
            "INSERT INTO messages(conversation_id, position, role, content, status, stats,"
            " metadata, created_at, updated_at, reasoning) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        ids.append(cid)
    return ids


# ------------------------------------------------------------ the history file


class ExchangeError(ValueError):
    """A history file that cannot be imported; ``str(err)`` is one line naming where."""


def history_record(conv: Conversation, msgs: Sequence[StoredMessage]) -> dict:
    """One line of the JSON Lines history."""
    return {
        "glmtui_history": HISTORY_VERSION,
        "id": conv.uid,
        "title": conv.title,
        "model": conv.model,
        "system_prompt": conv.system_prompt,
        "params": conv.params,
        "created_at": iso(conv.created_at, "milliseconds"),
        "updated_at": iso(conv.updated_at, "milliseconds"),
        **({"kind": conv.kind} if conv.kind != "chat" else {}),  # "completion": completion mode's text
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "metadata": m.metadata,
                "status": m.status,
                "created_at": iso(m.created_at, "milliseconds"),
                "stats": m.stats,
                **({"reasoning": m.reasoning} if m.reasoning else {}),  # a reasoning model's <think> text
            }
            for m in msgs
        ],
    }


def history_lines(conn: sqlite3.Connection) -> Iterator[str]:
    """Every conversation, oldest first, as JSON Lines (each with its newline).
    The caller holds the store's lock and one read transaction."""
    convs = [conversation_from_row(r) for r in conn.execute(
        f"SELECT {CONV_COLS} FROM conversations ORDER BY created_at, id").fetchall()]
    for conv in convs:
        msgs = [message_from_row(r) for r in conn.execute(
            f"SELECT {MSG_COLS} FROM messages WHERE conversation_id = ? ORDER BY position", (conv.id,))]
        yield json.dumps(history_record(conv, msgs), ensure_ascii=False, separators=(",", ":")) + "\n"


def read_history(text: str) -> list[dict]:
    """The conversations in a history file's *text*: JSON Lines (one
    conversation a line; blank lines skipped) or one JSON document. Raises
    :class:`ExchangeError` naming the line (and, in a document, the item)."""
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise ExchangeError("the file is empty")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        if not _looks_like_lines(text, err):
            raise ExchangeError(f"line {err.lineno}: not valid JSON ({err.msg})") from None
    else:
        first = next(n for n, line in enumerate(text.splitlines(), 1) if line.strip())
        try:
            return conversations_from_value(document)
        except FormatError as err:
            raise ExchangeError(f"line {first}: {err}") from None
    out: list[dict] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out += conversations_from_value(json.loads(line))
        except json.JSONDecodeError as err:
            raise ExchangeError(f"line {n}: not valid JSON ({err.msg})") from None
        except FormatError as err:
            raise ExchangeError(f"line {n}: {err}") from None
    return out


def _looks_like_lines(text: str, err: json.JSONDecodeError) -> bool:
    """Whether a file that is not one JSON document is JSON Lines: JSON
    followed by more of it, or a first line that is JSON on its own."""
    if err.msg == "Extra data":
        return True
    first = next(line for line in text.splitlines() if line.strip())
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


def import_new(conn: sqlite3.Connection, conversations: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """Insert the conversations whose uid is not in the store yet (inside the
    caller's transaction); (added, skipped as already present)."""
    seen: set[str] = set()
    new = []
    for conv in conversations:
        uid = conv["uid"]
        if uid in seen or conn.execute("SELECT 1 FROM conversations WHERE uid = ?", (uid,)).fetchone():
            continue
        seen.add(uid)
        new.append(conv)
    insert_conversations(conn, new)
    return len(new), len(conversations) - len(new)
