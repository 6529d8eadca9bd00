"""`glmtui history export/import` against the real SQLite store (GLMTUI_HOME per test)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from glmtui.cli import main
from glmtui.config import default_paths
from glmtui.store import HistoryStore
from glmtui.store import schema as store_schema


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GLMTUI_HOME", str(tmp_path / "home"))
    return tmp_path


def _open() -> HistoryStore:
    return HistoryStore.open(default_paths().history_db)


def _ms(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def _dump(store: HistoryStore) -> list[dict]:
    """Everything a conversation holds, comparable across stores (local ids left out)."""
    out = []
    # ordered at the millisecond the export keeps, so two conversations made in one ms sort alike on both sides
    for c in sorted(store.list_conversations(limit=1000), key=lambda c: (_ms(c.created_at), c.uid)):
        out.append({
            "uid": c.uid, "title": c.title, "model": c.model, "system_prompt": c.system_prompt,
            "params": c.params, "created_at": _ms(c.created_at), "updated_at": _ms(c.updated_at),
            "messages": [(m.role, m.content, m.status, m.metadata, m.stats, _ms(m.created_at))
                         for m in store.messages(c.id)],
        })
    return out


def _fill(store: HistoryStore) -> None:
    cid = store.create_conversation("天气 and code", model="chatglm3-6b", system_prompt="Be brief.",
                                    params={"temperature": 0.3, "top_p": 0.9})
    store.add_message(cid, "user", "北京的天气？\n\x1b[31mred\x1b[0m")
    store.add_message(cid, "assistant", "get_weather", metadata="get_weather")
    store.add_message(cid, "observation", '{"temp": 21}')
    store.add_message(cid, "assistant", "21 °C.", stats={
        "prompt_tokens": 31, "completion_tokens": 5, "ttft": 0.12, "tokens_per_s": 41.5, "total_s": 0.3,
        "finish_reason": "stop", "model": "chatglm3-6b", "mode": "bf16", "device": "cuda:0"})
    other = store.create_conversation("stopped one")
    store.add_message(other, "user", "count to 1000")
    store.add_message(other, "assistant", "1 2 3", status="stopped", stats={"completion_tokens": 3})
    store.create_conversation("empty")


def _run(*args: str) -> int:
    return main(["history", *args])


def test_round_trip_keeps_everything_and_adds_no_duplicates(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture) -> None:
    with _open() as s:
        _fill(s)
        original = _dump(s)
    out = home / "history.jsonl"
    assert _run("export", str(out)) == 0
    assert "Exported 3 conversations" in capsys.readouterr().err
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(json.loads(line)["glmtui_history"] == 1 for line in lines)
    first = json.loads(lines[0])
    assert first["messages"][3]["stats"]["tokens_per_s"] == 41.5 and first["messages"][1]["metadata"] == "get_weather"
    assert out.stat().st_mode & 0o077 == 0  # the history is private, so is its export

    assert _run("import", str(out)) == 0  # into the same history: all there already
    assert "Imported 0 conversations (3 already in the history, skipped)" in capsys.readouterr().err

    monkeypatch.setenv("GLMTUI_HOME", str(home / "other"))  # a fresh history on "another machine"
    assert _run("import", str(out)) == 0
    assert capsys.readouterr().err.strip() == "Imported 3 conversations."
    assert _run("import", str(out)) == 0
    assert "Imported 0 conversations (3 already" in capsys.readouterr().err
    with _open() as s:
        assert _dump(s) == original
    again = home / "again.jsonl"
    assert _run("export", str(again)) == 0
    assert again.read_text(encoding="utf-8") == out.read_text(encoding="utf-8")  # byte for byte


def test_conversation_keeps_its_id_when_continued(home: Path) -> None:
    with _open() as s:
        cid = s.create_conversation("grows")
        s.add_message(cid, "user", "one")
    out = home / "h.jsonl"
    assert _run("export", str(out)) == 0
    with _open() as s:
        s.add_message(cid, "assistant", "two")  # continued after the export
    assert _run("import", str(out)) == 0  # the older copy is not added beside it
    with _open() as s:
        assert s.count_conversations() == 1 and [m.content for m in s.messages(cid)] == ["one", "two"]


OPENAI_TOOLS = {
    "title": "Weather",
    "model": "gpt-x",
    "messages": [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"},
                                     {"type": "image_url", "image_url": {"url": "data:..."}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
        {"role": "assistant", "content": "It is 18 °C."},
    ],
}


def _convs(s: HistoryStore) -> dict[str, list[tuple]]:
    return {c.title: [(m.role, m.metadata, m.content) for m in s.messages(c.id)]
            for c in s.list_conversations(limit=100)}


def test_openai_style_files(home: Path) -> None:
    doc = home / "one.json"
    doc.write_text(json.dumps(OPENAI_TOOLS, indent=2), encoding="utf-8")
    bare = home / "bare.json"
    bare.write_text(json.dumps([{"role": "user", "content": "hello   there\nfriend"},
                                {"role": "assistant", "content": "hi"}]), encoding="utf-8")
    many = home / "many.jsonl"
    many.write_text("\n".join(json.dumps(c) for c in (
        {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "1"}]},
        [{"role": "user", "content": "second"}, {"role": "assistant", "content": "2"}],
    )) + "\n\n", encoding="utf-8")
    listed = home / "listed.json"
    listed.write_text(json.dumps([{"messages": [{"role": "user", "content": "third"}]},
                                  [{"role": "user", "content": "fourth"}]]), encoding="utf-8")
    for f in (doc, bare, many, listed):
        assert _run("import", str(f)) == 0, f
    with _open() as s:
        convs = _convs(s)
        weather = next(c for c in s.list_conversations() if c.title == "Weather")
        assert weather.system_prompt == "Use tools." and weather.model == "gpt-x"
    assert convs["Weather"] == [
        ("user", "", "Weather in Paris?"),
        ("assistant", "get_weather", "{\"city\": \"Paris\"}"),
        ("observation", "", "18 C"),
        ("assistant", "", "It is 18 °C."),
    ]
    assert convs["hello there friend"] == [("user", "", "hello   there\nfriend"), ("assistant", "", "hi")]
    assert set(convs) == {"Weather", "hello there friend", "first", "second", "third", "fourth"}
    for f in (doc, bare, many, listed):  # no id in these files: the content decides, so nothing doubles
        assert _run("import", str(f)) == 0
    with _open() as s:
        assert s.count_conversations() == 6


def test_chatglm3_history_formats(home: Path) -> None:
    # what ChatGLM3's model.chat / stream_chat return (and its demos keep): role dicts with metadata
    history = [
        {"role": "system", "content": "Answer the following questions as best as you can.",
         "tools": [{"name": "track", "parameters": {}}]},
        {"role": "user", "content": "帮我查询股票10111的价格"},
        {"role": "assistant", "metadata": "track", "content": " ```python\ntool_call(symbol='10111')\n```"},
        {"role": "observation", "content": "{\"price\": 12412}"},
        {"role": "assistant", "metadata": "", "content": "根据查询结果，股票10111的价格是12412。"},
    ]
    (home / "glm3.json").write_text(json.dumps(history, ensure_ascii=False), encoding="utf-8")
    (home / "state.json").write_text(json.dumps({"history": [{"role": "user", "content": "你好"},
                                                             {"role": "assistant", "content": "你好👋"}]}),
                                     encoding="utf-8")
    (home / "pairs.json").write_text(json.dumps([["今天天气怎么样", "晴。"], ["明天呢", None]]), encoding="utf-8")
    for name in ("glm3.json", "state.json", "pairs.json"):
        assert _run("import", str(home / name)) == 0, name
    with _open() as s:
        convs = _convs(s)
        stock = next(c for c in s.list_conversations() if c.title.startswith("帮我"))
        assert stock.system_prompt == "Answer the following questions as best as you can."
    assert convs["帮我查询股票10111的价格"] == [
        ("user", "", "帮我查询股票10111的价格"),
        ("assistant", "track", " ```python\ntool_call(symbol='10111')\n```"),
        ("observation", "", "{\"price\": 12412}"),
        ("assistant", "", "根据查询结果，股票10111的价格是12412。"),
    ]
    assert convs["你好"] == [("user", "", "你好"), ("assistant", "", "你好👋")]
    assert convs["今天天气怎么样"] == [("user", "", "今天天气怎么样"), ("assistant", "", "晴。"),
                                      ("user", "", "明天呢")]
    assert _run("import", str(home / "pairs.json")) == 0
    with _open() as s:
        assert s.count_conversations() == 3


@pytest.mark.parametrize("bad, where", [
    ("{not json", "line 3: not valid JSON"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "line 3: message 1: unknown role 'bot'"),
    ('{"glmtui_history": 2, "id": "x", "messages": []}', "line 3: written by a newer glmtui"),
    ('{"glmtui_history": 1, "messages": []}', "line 3: \"id\" must be a non-empty string"),
    ('42', "line 3: a JSON int, not a conversation"),
])
def test_a_bad_line_imports_nothing(home: Path, bad: str, where: str, capsys: pytest.CaptureFixture) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "fine"}]})
    f = home / "mixed.jsonl"
    f.write_text(f"{good}\n\n{bad}\n{good.replace('fine', 'also fine')}\n", encoding="utf-8")
    assert _run("import", str(f)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and where in err and "nothing was imported" in err, err
    assert err.startswith(f"glmtui history import: {f}: ")
    with _open() as s:
        assert s.count_conversations() == 0  # the good line before it is not kept either


def test_a_bad_json_document_names_its_line(home: Path, capsys: pytest.CaptureFixture) -> None:
    f = home / "doc.json"
    f.write_text('{\n  "messages": [\n    {"role": "user", "content": "x"},\n  ]\n}\n', encoding="utf-8")
    assert _run("import", str(f)) == 1
    assert "line 4: not valid JSON" in capsys.readouterr().err
    listed = home / "listed.json"
    listed.write_text(json.dumps([{"messages": []}, {"messages": [{"role": "user", "content": 5}]}]))
    assert _run("import", str(listed)) == 1
    assert "line 1: conversation 2: message 1: content must be text" in capsys.readouterr().err


def test_missing_file_and_unwritable_target(home: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run("import", str(home / "nope.jsonl")) == 1
    assert "cannot read" in capsys.readouterr().err
    assert _run("export", str(home / "no" / "such" / "dir.jsonl")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write" in err


def test_a_version_1_history_gets_stable_ids(home: Path) -> None:
    """A history written before ids existed (schema 1) is upgraded in place:
    every conversation gets a distinct id, kept from then on."""
    db = default_paths().history_db
    db.parent.mkdir(parents=True)
    raw = sqlite3.connect(db, isolation_level=None)
    store_schema.MIGRATIONS[0](raw)
    raw.execute("PRAGMA user_version = 1")
    for n in range(3):
        raw.execute("INSERT INTO conversations(title, created_at, updated_at) VALUES (?, ?, ?)", (f"old {n}", n, n))
    raw.close()
    with _open() as s:
        uids = [c.uid for c in s.list_conversations()]
    assert len(set(uids)) == 3 and all(uids)
    with _open() as s:
        assert [c.uid for c in s.list_conversations()] == uids
