"""What the store hands out (frozen records), the rows they are read from, and the
small conversions (JSON columns, timestamps) that every part of the store shares."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

ROLES = ("system", "user", "assistant", "observation")
STATUSES = ("complete", "streaming", "stopped", "interrupted", "error")
KINDS = ("chat", "completion")  # a conversation's kind (schema 4 on)


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model: Optional[str]
    system_prompt: str
    params: dict = field(hash=False)
    created_at: float  # unix seconds
    updated_at: float
    uid: Optional[str] = None  # stable identity across machines (export/import); None only before schema 2
    kind: str = "chat"  # "chat", or "completion" (raw continuation: the messages add up to the text)


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
    reasoning: str = ""  # a reasoning model's <think> text (schema 3 on); ``content`` is the answer alone


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    title: str
    message_id: Optional[int]  # None: the conversation title matched
    role: Optional[str]
    snippet: str
    created_at: float


CONV_COLS = "id, title, model, system_prompt, params, created_at, updated_at, uid, kind"
MSG_COLS = "id, conversation_id, position, role, content, status, stats, metadata, created_at, updated_at, reasoning"


def now() -> float:
    return time.time()


def iso(ts: float, timespec: str = "seconds") -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec=timespec)


def parse_ts(value: Any, default: float) -> float:
    """Unix seconds from a number or an ISO 8601 text (``Z`` allowed); *default* if neither."""
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


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def inserted_id(cur: sqlite3.Cursor) -> int:
    """The rowid an INSERT on ``cur`` just gave (sqlite3 types it Optional: None only before any INSERT)."""
    rowid = cur.lastrowid
    if rowid is None:
        raise sqlite3.InterfaceError("no row was inserted")
    return rowid


def loads(text: Optional[str]) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def conversation_from_row(row: tuple) -> Conversation:
    params = loads(row[4])
    return Conversation(
        id=row[0],
        title=row[1],
        model=row[2],
        system_prompt=row[3],
        params=params if isinstance(params, dict) else {},
        created_at=row[5],
        updated_at=row[6],
        uid=row[7],
        kind=row[8] if len(row) > 8 and row[8] in KINDS else "chat",
    )


def message_from_row(row: tuple) -> StoredMessage:
    stats = loads(row[6])
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
        reasoning=row[10] or "",
    )


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")


def check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
