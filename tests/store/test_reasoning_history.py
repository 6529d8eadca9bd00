"""A reasoning model's <think> text in the history (its own column, schema 3), its export and import,
and in `glmtui chat` (dimmed before the answer on a terminal, never on a pipe)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from engine_helpers import start_worker
from glmtui.cli import main
from glmtui.config import default_paths
from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded
from glmtui.store import HistoryStore
from glmtui.store import recovery as store_recovery
from glmtui.store import schema as store_schema
from glmtui.store.export import render_markdown
from terminals import CHAT, Terminal, answer_line

THOUGHT = "The user greets me.\nI should greet back."


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _store() -> HistoryStore:
    return HistoryStore.open(default_paths().history_db)


def test_a_schema_2_history_is_migrated_and_keeps_reasoning_apart(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    raw = sqlite3.connect(db, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    for step in store_schema.MIGRATIONS[:2]:
        step(raw)
    raw.execute("PRAGMA user_version = 2")
    raw.execute("COMMIT")
    raw.execute("INSERT INTO conversations(title, created_at, updated_at) VALUES ('old', 1, 1)")
    raw.execute("INSERT INTO messages(conversation_id, position, role, content, created_at, updated_at)"
                " VALUES (1, 0, 'assistant', 'old answer', 1, 1)")
    raw.close()

    s = HistoryStore.open(db)
    try:
        assert s.warning is None
        old = s.messages(1)[0]
        assert (old.content, old.reasoning) == ("old answer", "")
        mid = s.add_message(1, "assistant", "", status="streaming", reasoning="I am thin")
        s.update_message(mid, content="Hello!", status="complete", reasoning=THOUGHT, stats={"completion_tokens": 9})
        new = s.get_message(mid)
        assert (new.content, new.reasoning, new.stats) == ("Hello!", THOUGHT, {"completion_tokens": 9})
        s.update_message(mid, stats={"completion_tokens": 10})  # other updates leave it alone
        assert s.get_message(mid).reasoning == THOUGHT
        # the search finds answers, not reasoning
        assert s.search("greet") == [] and s.search("Hello")
    finally:
        s.close()
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == store_schema.SCHEMA_VERSION >= 3


def test_history_export_and_import_carry_the_reasoning(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _store() as s:
        cid = s.create_conversation("hi")
        s.add_message(cid, "user", "hello")
        s.add_message(cid, "assistant", "Hello!", reasoning=THOUGHT)
        s.add_message(cid, "user", "again")
        s.add_message(cid, "assistant", "Hi again.")
        markdown = render_markdown(s.to_dict(cid))
    out = home / "h.jsonl"
    assert main(["history", "export", str(out)]) == 0
    messages = json.loads(out.read_text(encoding="utf-8"))["messages"]
    assert messages[1]["reasoning"] == THOUGHT and messages[1]["content"] == "Hello!"
    assert "reasoning" not in messages[3]  # a reply without reasoning: the record is as before
    assert "> The user greets me.\n> I should greet back.\n\nHello!" in markdown

    monkeypatch.setenv("GLMTUI_HOME", str(home / "elsewhere"))
    assert main(["history", "import", str(out)]) == 0
    with _store() as s:
        [conv] = s.list_conversations()
        got = s.messages(conv.id)
        assert [(m.content, m.reasoning) for m in got] == [("hello", ""), ("Hello!", THOUGHT), ("again", ""),
                                                           ("Hi again.", "")]


def test_openai_style_messages_import_reasoning_content(home: Path) -> None:
    file = home.parent / "openai.json"
    file.write_text(json.dumps({"messages": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "reasoning_content": "two and two"},
    ]}))
    assert main(["history", "import", str(file)]) == 0
    with _store() as s:
        [conv] = s.list_conversations()
        assert [(m.content, m.reasoning) for m in s.messages(conv.id)] == [("2+2?", ""), ("4", "two and two")]


def test_salvage_keeps_the_reasoning(tmp_path: Path) -> None:
    source = tmp_path / "old.sqlite3"
    s = HistoryStore.open(source)
    cid = s.create_conversation("c")
    s.add_message(cid, "assistant", "answer", reasoning=THOUGHT)
    s.close()
    target = HistoryStore.open(tmp_path / "new.sqlite3")
    target.close()
    conn = sqlite3.connect(tmp_path / "new.sqlite3", isolation_level=None)
    store_recovery.salvage(source, conn, cli=lambda: None)
    conn.close()
    s = HistoryStore.open(tmp_path / "new.sqlite3")
    try:
        assert [(m.content, m.reasoning) for m in s.messages(cid)] == [("answer", THOUGHT)]
    finally:
        s.close()


# ---------------------------------------------------------------- glmtui chat


@pytest.fixture(scope="module")
def inside_reply(inside_dir):
    """What the tiny model (its prompt opens <think>) answers greedily: reasoning, then maybe an answer."""
    w, log = start_worker()
    try:
        assert isinstance(log.wait(w.load(str(inside_dir), "fp32")), Loaded)
        done = log.wait(w.generate([ChatMessage("user", "hello")], GenerationParams(12, 0.0)))
        assert isinstance(done, Finished) and done.reasoning.strip()
        return done
    finally:
        w.shutdown()


@pytest.mark.slow
def test_piped_chat_prints_only_the_answer_of_a_reasoning_model(inside_dir, inside_reply):
    run = subprocess.run(CHAT + ["--model", str(inside_dir), "--temperature", "0", "--max-new-tokens", "12"],
                         input=b"hello\n", capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode() == answer_line(inside_reply.text)
    assert inside_reply.reasoning.strip()[:8] not in run.stdout.decode()


@pytest.mark.slow
def test_interactive_chat_shows_the_reasoning_dimmed_before_the_answer(inside_dir, inside_reply):
    term = Terminal(CHAT + ["--model", str(inside_dir), "--temperature", "0", "--max-new-tokens", "12"])
    try:
        term.read_until(b"User: ", timeout=300)
        term.type("hello")
        shown = term.read_until(b"User: ").decode(errors="replace").replace("\r\n", "\n")
        dimmed = "\x1b[2m" + inside_reply.reasoning + "\x1b[0m"
        assert dimmed in shown
        if inside_reply.text:
            assert shown.index(dimmed) < shown.index(inside_reply.text.strip())
        term.type("stop")
        assert term.proc.wait(30) == 0
    finally:
        term.close()
