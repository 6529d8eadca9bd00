"""Conversations as plain data: the dict of one conversation (the JSON export)
and the rows an imported one becomes."""

from __future__ import annotations

import sqlite3
from typing import Any, Mapping, Sequence

from glmtui.store.records import Conversation, StoredMessage, check_role, check_status, dumps, iso, now, parse_ts

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
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "metadata": m.metadata,
                "stats": m.stats,
                "created_at": iso(m.created_at),
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
            "INSERT INTO conversations(title, model, system_prompt, params, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                str(data.get("title") or ""),
                data.get("model"),
                str(data.get("system_prompt") or ""),
                dumps(dict(data.get("params") or {})),
                created,
                parse_ts(data.get("updated_at"), created),
            ),
        )
        cid = int(cur.lastrowid)
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
                )
            )
        conn.executemany(
            "INSERT INTO messages(conversation_id, position, role, content, status, stats,"
            " metadata, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        ids.append(cid)
    return ids
