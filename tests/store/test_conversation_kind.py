"""A conversation's kind (schema 4): "chat" or "completion" (completion mode's text), through the
migration, listing, search, export/import and salvage, on the real SQLite file."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from glmtui.cli import main
from glmtui.config import default_paths
from glmtui.store import HistoryStore
from glmtui.store import recovery as store_recovery
from glmtui.store import schema as store_schema


def test_a_schema_3_history_is_migrated_and_its_conversations_are_chats(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    for step in store_schema.MIGRATIONS[:3]:
        step(raw)
    raw.execute("PRAGMA user_version = 3")
    raw.execute("COMMIT")
    raw.execute("INSERT INTO conversations(title, created_at, updated_at) VALUES ('old', 1, 1)")
    raw.close()
    s = HistoryStore.open(db)
    try:
        assert s.warning is None
        assert s.get_conversation(1).kind == "chat"
        cid = s.create_conversation("Once upon a time", "m", kind="completion")
        s.add_message(cid, "user", "Once upon a time")
        s.add_message(cid, "assistant", " there was a dragon")
        assert [(c.title, c.kind) for c in s.list_conversations()] == [("Once upon a time", "completion"),
                                                                        ("old", "chat")]
        assert [h.conversation_id for h in s.search("dragon")] == [cid]
        with pytest.raises(ValueError):
            s.create_conversation("x", kind="poem")
    finally:
        s.close()
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == store_schema.SCHEMA_VERSION >= 4


def test_the_kind_goes_through_export_import_and_salvage(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "home"))
    first = default_paths().history_db
    with HistoryStore.open(first) as s:
        cid = s.create_conversation("text", kind="completion")
        s.add_message(cid, "user", "The sea")
        s.add_message(cid, "assistant", " was calm")
        chat = s.create_conversation("chat")
        assert s.to_dict(cid)["kind"] == "completion" and "kind" not in s.to_dict(chat)
    out = tmp_path / "h.jsonl"
    assert main(["history", "export", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line.get("kind") for line in lines] == ["completion", None]
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "elsewhere"))
    assert main(["history", "import", str(out)]) == 0
    with HistoryStore.open(default_paths().history_db) as s:
        assert sorted((c.title, c.kind) for c in s.list_conversations()) == [("chat", "chat"), ("text", "completion")]

    target = tmp_path / "new.sqlite3"
    HistoryStore.open(target).close()
    conn = sqlite3.connect(target, isolation_level=None)
    store_recovery.salvage(first, conn, cli=lambda: None)
    conn.close()
    with HistoryStore.open(target) as s:
        assert sorted((c.title, c.kind) for c in s.list_conversations()) == [("chat", "chat"), ("text", "completion")]
