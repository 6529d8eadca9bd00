"""glmtui.store against real SQLite files (no mocks)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from glmtui import store as store_mod
from glmtui.store import HistoryError, HistoryStore
from glmtui.store import recovery as store_recovery
from glmtui.store import schema as store_schema
from glmtui.store import search as store_search

REPO = Path(__file__).resolve().parents[2]


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _wait_line(proc: subprocess.Popen, expected: str, timeout: float = 30.0) -> None:
    line = proc.stdout.readline()  # the child prints once it is ready
    assert line.strip() == expected, (line, proc.stderr.read() if proc.poll() is not None else "")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "history.sqlite3"


@pytest.fixture
def store(db: Path):
    s = HistoryStore.open(db)
    yield s
    s.close()


def _aside_files(db: Path, kind: str) -> list[Path]:
    return sorted(p for p in db.parent.iterdir()
                  if p.name.startswith(f"{db.name}.{kind}-") and not p.name.endswith(("-wal", "-shm")))


# ------------------------------------------------------------------ basics


def test_round_trip_survives_reopen(db: Path) -> None:
    s = HistoryStore.open(db)
    assert s.warning is None
    cid = s.create_conversation(
        "First chat", model="chatglm3-6b", system_prompt="Be brief.", params={"temperature": 0.7, "top_p": 0.9}
    )
    u = s.add_message(cid, "user", "What is 2+2?")
    stats = {"prompt_tokens": 12, "completion_tokens": 3, "ttft": 0.25, "tokens_per_s": 41.5, "finish_reason": "stop"}
    a = s.add_message(cid, "assistant", "4", stats=stats)
    o = s.add_message(cid, "observation", '{"ok": true}', metadata="calculator")
    s.close()

    s = HistoryStore.open(db)
    conv = s.get_conversation(cid)
    assert conv is not None
    assert (conv.title, conv.model, conv.system_prompt) == ("First chat", "chatglm3-6b", "Be brief.")
    assert conv.params == {"temperature": 0.7, "top_p": 0.9}
    assert conv.created_at <= conv.updated_at
    msgs = s.messages(cid)
    assert [m.id for m in msgs] == [u, a, o]
    assert [m.role for m in msgs] == ["user", "assistant", "observation"]
    assert [m.position for m in msgs] == [0, 1, 2]
    assert msgs[1].content == "4" and msgs[1].stats == stats and msgs[1].status == "complete"
    assert msgs[2].metadata == "calculator"
    assert s.get_message(a) == msgs[1]
    assert s.get_conversation(cid + 100) is None
    with pytest.raises(KeyError):
        s.add_message(cid + 100, "user", "x")
    with pytest.raises(ValueError):
        s.add_message(cid, "robot", "x")
    s.close()


def test_list_conversations_newest_first_and_paged(store: HistoryStore) -> None:
    ids = [store.create_conversation(f"c{i}") for i in range(5)]
    time.sleep(0.01)
    store.add_message(ids[1], "user", "bump")  # activity makes it the newest
    listed = [c.id for c in store.list_conversations()]
    assert listed == [ids[1], ids[4], ids[3], ids[2], ids[0]]
    assert [c.id for c in store.list_conversations(limit=2, offset=1)] == [ids[4], ids[3]]
    assert store.count_conversations() == 5


def test_rename_and_update_settings(store: HistoryStore) -> None:
    cid = store.create_conversation("old", model="m1", params={"a": 1})
    store.rename(cid, "new title")
    store.update_settings(cid, system_prompt="sys", params={"temperature": 0.1})
    c = store.get_conversation(cid)
    assert (c.title, c.system_prompt, c.params, c.model) == ("new title", "sys", {"temperature": 0.1}, "m1")
    store.update_settings(cid, model="glm-4-9b-chat")
    assert store.get_conversation(cid).model == "glm-4-9b-chat"
    assert store.get_conversation(cid).system_prompt == "sys"
    with pytest.raises(KeyError):
        store.rename(cid + 1, "nope")


def test_delete_conversation_and_messages(store: HistoryStore) -> None:
    keep = store.create_conversation("keep")
    gone = store.create_conversation("gone")
    store.add_message(keep, "user", "alpha keepword")
    store.add_message(gone, "user", "alpha goneword")
    assert store.delete_conversation(gone) is True
    assert store.delete_conversation(gone) is False
    assert store.get_conversation(gone) is None
    assert store.messages(gone) == []
    assert [h.conversation_id for h in store.search("alpha")] == [keep]
    assert store.search("goneword") == []

    u1 = store.add_message(keep, "assistant", "reply one")
    u2 = store.add_message(keep, "user", "second question")
    a2 = store.add_message(keep, "assistant", "second reply")
    # regenerate: the last assistant reply goes, only if it is the last message
    assert store.delete_last_assistant(keep) == a2
    assert store.delete_last_assistant(keep) is None  # last is now the user's
    # edit-and-resend: the edited message and everything after it
    assert store.delete_message(u1, and_following=True) == 2
    assert [m.content for m in store.messages(keep)] == ["alpha keepword"]
    assert store.delete_message(u2) == 0
    nxt = store.add_message(keep, "user", "again")
    assert store.messages(keep)[-1].id == nxt
    assert store.integrity_check() == ["ok"]


# --------------------------------------------------------------- streaming


def test_streaming_flush_then_reopen_marks_interrupted(db: Path) -> None:
    s = HistoryStore.open(db)
    cid = s.create_conversation("stream")
    s.add_message(cid, "user", "tell me a story")
    mid = s.add_message(cid, "assistant", "", status="streaming")
    s.update_message(mid, content="Once upon", status="streaming")
    s.update_message(mid, content="Once upon a time", status="streaming")
    done = s.add_message(cid, "assistant", "finished", status="stopped")
    # no close(): as if the process died
    s2 = HistoryStore.open(db)
    m = s2.get_message(mid)
    assert (m.status, m.content) == ("interrupted", "Once upon a time")
    assert s2.get_message(done).status == "stopped"
    assert [x.status for x in s2.messages(cid)] == ["complete", "interrupted", "stopped"]
    s2.close()
    s.close()


def test_killed_writer_process_is_recovered_but_live_one_is_not(db: Path) -> None:
    HistoryStore.open(db).close()
    child = _python(
        """
        import sys, time
        from glmtui.store import HistoryStore
        s = HistoryStore.open(sys.argv[1])
        cid = s.create_conversation("child")
        mid = s.add_message(cid, "assistant", "", status="streaming")
        s.update_message(mid, content="partial reply 半句", status="streaming")
        print(mid, flush=True)
        time.sleep(60)
        """,
        str(db),
    )
    try:
        mid = int(child.stdout.readline())
        s = HistoryStore.open(db)
        # the writer is alive and flushed recently: its reply is left alone
        assert s.get_message(mid).status == "streaming"
        s.close()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    s = HistoryStore.open(db)
    m = s.get_message(mid)
    assert (m.status, m.content) == ("interrupted", "partial reply 半句")
    s.close()


# ------------------------------------------------------------------ search


def _seed_search(s: HistoryStore) -> dict:
    a = s.create_conversation("Cooking notes")
    b = s.create_conversation("北京之旅")
    ids = {
        "en": s.add_message(a, "user", "How long should I boil an egg for a soft yolk?"),
        "en2": s.add_message(a, "assistant", "About six minutes.\nThen cool the Egg in ice water."),
        "zh": s.add_message(b, "user", "请介绍一下北京的天气和美食。"),
        "zh2": s.add_message(b, "assistant", "北京春天多风，秋天最舒服。烤鸭是北京的代表美食"),
        "panda": s.add_message(b, "user", "熊猫"),  # a whole message shorter than a trigram
        "ai": s.add_message(a, "user", "Ask the AI, or ask a chef"),
    }
    ids["a"], ids["b"] = a, b
    return ids


@pytest.mark.parametrize("use_fts", [True, False], ids=["fts5", "substring-scan"])
def test_search_english_and_chinese(db: Path, use_fts: bool) -> None:
    if use_fts:
        assert store_mod.fts_available(), "this SQLite lacks FTS5 trigram; the FTS path is untested"
    s = HistoryStore.open(db, use_fts=use_fts)
    assert s.full_text is use_fts
    ids = _seed_search(s)

    assert [h.message_id for h in s.search("熊猫")] == [ids["panda"]]
    assert [h.message_id for h in s.search("ai")] == [ids["ai"]]
    assert "«AI»" in s.search("ai")[0].snippet
    assert [h.message_id for h in s.search("东西")] == []
    hits = s.search("EGG")  # case-insensitive, newest first
    assert [h.message_id for h in hits] == [ids["en2"], ids["en"]]
    assert all(h.conversation_id == ids["a"] and h.title == "Cooking notes" for h in hits)
    assert "«Egg»" in hits[0].snippet and "«egg»" in hits[1].snippet
    assert "\n" not in hits[0].snippet

    assert [h.message_id for h in s.search("soft yolk")] == [ids["en"]]  # both terms
    assert [h.message_id for h in s.search('"soft yolk"')] == [ids["en"]]  # phrase
    assert s.search('"yolk soft"') == []
    assert s.search("egg camel") == []

    # two-character Chinese words (shorter than a trigram) and longer ones
    hits = s.search("美食")  # ends zh2 with no punctuation after it
    assert [h.message_id for h in hits] == [ids["zh2"], ids["zh"]]
    assert "«美食»" in hits[0].snippet
    assert [h.message_id for h in s.search("烤鸭")] == [ids["zh2"]]
    assert [h.message_id for h in s.search("秋天最舒服")] == [ids["zh2"]]
    assert [h.message_id for h in s.search("天气 美食")] == [ids["zh"]]
    assert "«秋天最舒服»" in s.search("秋天最舒服")[0].snippet
    # a title hit comes first, without a message id
    hits = s.search("北京之旅")
    assert hits[0].message_id is None and hits[0].conversation_id == ids["b"]
    assert [h.message_id for h in s.search("北京", limit=2)] == [None, ids["zh2"]]

    # edits and deletes reach the index
    s.update_message(ids["zh2"], content="上海的小笼包很好吃")
    assert [h.message_id for h in s.search("烤鸭")] == []
    assert [h.message_id for h in s.search("小笼包")] == [ids["zh2"]]
    s.delete_message(ids["zh2"])
    assert s.search("小笼包") == []
    assert s.search("") == [] and s.search("   ") == []
    assert s.search('100% "a_b"') == []  # LIKE wildcards are literal
    assert [h.message_id for h in s.search("OL")] == [ids["en2"], ids["en"]]  # 2 characters
    assert [h.message_id for h in s.search("ch")] == [ids["ai"]]
    assert [h.message_id for h in s.search("猫")] == [ids["panda"]]
    assert s.integrity_check() == ["ok"]
    s.close()


# ------------------------------------------------------------------ export


def test_export_markdown_and_json(store: HistoryStore, tmp_path: Path) -> None:
    cid = store.create_conversation("导出 test", model="chatglm3-6b", system_prompt="You are helpful.",
                                    params={"temperature": 0.5})
    store.add_message(cid, "user", "你好")
    store.add_message(
        cid, "assistant", "Hello! 你好！",
        stats={"completion_tokens": 5, "tokens_per_s": 12.34, "ttft": 0.5, "finish_reason": "stop"}
    )
    store.add_message(cid, "assistant", "cut sh", status="stopped")

    md = store.export_markdown(cid)
    assert md.startswith("# 导出 test\n")
    assert "- Model: chatglm3-6b" in md and "temperature=0.5" in md
    assert "## System prompt\n\nYou are helpful." in md
    assert md.index("### User\n\n你好") < md.index("### Assistant\n\nHello! 你好！") < md.index("cut sh")
    assert "12.3 tokens/s" in md and "stopped before the end" in md

    text = store.export_json(cid)
    data = json.loads(text)
    assert "你好" in text  # not \u-escaped
    assert data["format"] == "glmtui-conversation" and data["title"] == "导出 test"
    assert data["params"] == {"temperature": 0.5} and data["system_prompt"] == "You are helpful."
    assert [(m["role"], m["content"], m["status"]) for m in data["messages"]] == [
        ("user", "你好", "complete"),
        ("assistant", "Hello! 你好！", "complete"),
        ("assistant", "cut sh", "stopped"),
    ]
    assert data["messages"][1]["stats"]["completion_tokens"] == 5

    out = tmp_path / "conv.json"
    store.export_json(cid, out)
    assert json.loads(out.read_text(encoding="utf-8")) == data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    store.export_markdown(cid, tmp_path / "conv.md")
    assert (tmp_path / "conv.md").read_text(encoding="utf-8") == md

    new = store.import_conversation(text)
    assert new != cid
    again = json.loads(store.export_json(new))
    for key in ("title", "model", "system_prompt", "params", "messages", "created_at"):
        assert again[key] == data[key]
    with pytest.raises(KeyError):
        store.export_markdown(cid + 999)


def test_export_files_never_replace_earlier_ones(store: HistoryStore, tmp_path: Path) -> None:
    cid = store.create_conversation("My chat / 你好?")
    store.add_message(cid, "user", "first")
    folder = tmp_path / "exports"
    md, js = store.export_files(cid, folder)
    assert (md.name, js.name) == (f"my-chat-你好-{cid}.md", f"my-chat-你好-{cid}.json")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(md.stat().st_mode) == 0o600
    first = (md.read_bytes(), js.read_bytes())
    store.add_message(cid, "assistant", "second")
    md2, js2 = store.export_files(cid, folder)
    assert (md2.name, js2.name) == (f"my-chat-你好-{cid}-2.md", f"my-chat-你好-{cid}-2.json")
    assert (md.read_bytes(), js.read_bytes()) == first  # the earlier export is untouched
    assert "second" in md2.read_text(encoding="utf-8")
    (folder / f"my-chat-你好-{cid}-3.json").write_text("someone else's")  # a pair never splits
    md4, js4 = store.export_files(cid, folder)
    assert (md4.stem, js4.stem) == (f"my-chat-你好-{cid}-4",) * 2
    assert not (folder / f"my-chat-你好-{cid}-3.md").exists()
    with pytest.raises(HistoryError, match="Cannot write the export"):
        store.export_files(cid, md)  # a file where the folder should be


def test_markdown_export_escapes_control_characters(store: HistoryStore) -> None:
    nasty = "red \x1b[31mtext\x1b[0m bell\x07 nul\x00 csi\x9b2J del\x7f\r\nnext\tline\r"
    cid = store.create_conversation("title\x1b]0;pwned\x07\nsecond line", model="m\x1b[2J")
    store.add_message(cid, "user", nasty)
    store.add_message(cid, "assistant", "ok", status="error", stats={"error": "boom\x1b[5m"})
    md = store.export_markdown(cid)
    assert not any(ch in md for ch in "\x00\x07\x1b\x7f\x9b\r")
    assert "red \\x1b[31mtext\\x1b[0m bell\\x07 nul\\x00 csi\\x9b2J del\\x7f\nnext\tline\\x0d" in md
    assert md.startswith("# title\\x1b]0;pwned\\x07 second line\n")
    assert "- Model: m\\x1b[2J" in md and "boom\\x1b[5m" in md
    data = json.loads(store.export_json(cid))  # JSON keeps every character
    assert data["messages"][0]["content"] == nasty and data["title"] == "title\x1b]0;pwned\x07\nsecond line"


# ------------------------------------------------------------ bad files


def test_corrupt_file_is_set_aside(db: Path) -> None:
    db.parent.mkdir(parents=True)
    junk = os.urandom(64 * 1024)
    db.write_bytes(junk)
    s = HistoryStore.open(db)
    assert s.warning and "could not be read" in s.warning
    aside = _aside_files(db, "corrupt")
    assert len(aside) == 1 and aside[0].read_bytes() == junk
    assert str(aside[0]) in s.warning
    cid = s.create_conversation("fresh")
    s.close()
    s = HistoryStore.open(db)
    assert s.warning is None and s.get_conversation(cid).title == "fresh"
    s.close()


def test_truncated_database_is_set_aside(db: Path) -> None:
    s = HistoryStore.open(db)
    cid = s.create_conversation("big")
    for i in range(300):
        s.add_message(cid, "user", f"message {i} " + "lorem ipsum " * 40)
    s.close()
    assert not db.with_name(db.name + "-wal").exists()  # checkpointed on close
    full = db.read_bytes()
    db.write_bytes(full[: len(full) // 2])
    s = HistoryStore.open(db)
    assert s.warning and "the file is truncated (" in s.warning
    aside = _aside_files(db, "corrupt")
    assert len(aside) == 1 and aside[0].read_bytes() == full[: len(full) // 2]
    # what the first half still holds is copied into the new file
    assert [c.title for c in s.list_conversations()] == ["big"]
    kept = s.messages(cid)
    assert 50 < len(kept) < 300 and kept[0].content.startswith("message 0 ")
    assert f"{len(kept)} messages were recovered" in s.warning and str(aside[0]) in s.warning
    s.add_message(s.create_conversation("new"), "user", "works")
    assert s.integrity_check() == ["ok"]
    s.close()


def test_newer_schema_is_left_untouched(db: Path) -> None:
    db.parent.mkdir(parents=True)
    raw = sqlite3.connect(db)
    raw.execute("CREATE TABLE future(x)")
    raw.execute("INSERT INTO future VALUES ('keep me')")
    raw.execute("PRAGMA user_version = 99")
    raw.commit()
    raw.close()
    before = db.read_bytes()
    s = HistoryStore.open(db)
    assert s.warning and "newer glmtui" in s.warning and "99" in s.warning
    aside = _aside_files(db, "newer")
    assert len(aside) == 1 and aside[0].read_bytes() == before  # byte for byte
    assert str(aside[0]) in s.warning
    s.create_conversation("new")
    s.close()
    raw = sqlite3.connect(aside[0])
    assert raw.execute("SELECT x FROM future").fetchall() == [("keep me",)]
    raw.close()


def test_foreign_sqlite_file_is_set_aside(db: Path) -> None:
    db.parent.mkdir(parents=True)
    raw = sqlite3.connect(db)
    raw.execute("CREATE TABLE notes(x)")
    raw.commit()
    raw.close()
    s = HistoryStore.open(db)
    assert s.warning and len(_aside_files(db, "foreign")) == 1
    s.close()


# ------------------------------------------------ damaged pages, salvage

N_CONV, N_MSG = 40, 6


def _build_history(db: Path) -> None:
    """A real history of 40 conversations x 6 messages (70-odd 4 KiB pages)."""
    s = HistoryStore.open(db)
    for c in range(N_CONV):
        cid = s.create_conversation(f"conversation {c}", model="tiny")
        for m in range(N_MSG):
            role = "user" if m % 2 == 0 else "assistant"
            s.add_message(cid, role, f"needle{c}x{m} 天气 " + "lorem ipsum dolor " * 20)
    s.close()
    assert not db.with_name(db.name + "-wal").exists()  # checkpointed on close


def _pages(db: Path, pattern: str) -> list[int]:
    data = db.read_bytes()
    page_size = int.from_bytes(data[16:18], "big")
    count = len(data) // page_size
    if pattern == "page 2":
        return [2]
    if pattern == "pages 10-12":
        return [10, 11, 12]
    if pattern == "last 3 pages":
        return [count - 2, count - 1, count]
    raw = sqlite3.connect(db)  # "a messages leaf": one in the middle of the messages table
    try:
        leaves = [r[0] for r in raw.execute(
            "SELECT pageno FROM dbstat WHERE name = 'messages' AND pagetype = 'leaf' ORDER BY pageno")]
    except sqlite3.OperationalError:
        pytest.skip("this SQLite has no dbstat table")
    finally:
        raw.close()
    return [leaves[len(leaves) // 2]]


def _damage(db: Path, pages: list[int], seed: int = 7) -> bytes:
    """Overwrite whole pages with random bytes (the header on page 1 stays intact)."""
    import random

    data = bytearray(db.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    rnd = random.Random(seed)
    for page in pages:
        data[(page - 1) * page_size : page * page_size] = bytes(rnd.randrange(256) for _ in range(page_size))
    db.write_bytes(bytes(data))
    return bytes(data)


def _working_recover() -> bool:
    """Whether an installed sqlite3 shell can run .recover (some builds lack the page access it needs)."""
    import shutil
    import tempfile

    cli = shutil.which("sqlite3")
    if not cli:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "p.sqlite3"
        sqlite3.connect(probe).execute("CREATE TABLE t(x)").connection.close()
        return subprocess.run([cli, str(probe), ".recover"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.parametrize("salvager", ["row reads", "sqlite3 shell"])
@pytest.mark.parametrize("pattern", ["page 2", "pages 10-12", "last 3 pages", "a messages leaf"])
def test_damaged_pages_are_set_aside_and_salvaged(db: Path, pattern: str, salvager: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    if salvager == "row reads":
        monkeypatch.setattr(store_recovery, "sqlite3_cli", lambda: None)
    elif not _working_recover():
        pytest.skip("no sqlite3 shell with a working .recover here")
    _build_history(db)
    raw = sqlite3.connect(db)
    uids = dict(raw.execute("SELECT id, uid FROM conversations").fetchall())
    raw.close()
    damaged = _damage(db, _pages(db, pattern))

    s = HistoryStore.open(db)
    aside = _aside_files(db, "corrupt")
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept byte for byte
    assert s.warning and "was damaged" in s.warning and str(aside[0]) in s.warning
    convs = s.list_conversations(limit=100)
    msgs = [m for c in convs for m in s.messages(c.id)]
    assert len(convs) >= N_CONV - 2  # most conversations are back...
    assert len(msgs) >= 0.8 * N_CONV * N_MSG  # ...with most of their messages
    assert f"{len(convs)} conversations" in s.warning and f"{len(msgs)} messages were recovered" in s.warning
    if pattern == "page 2":  # the conversations' own rows were there: their messages keep them apart
        assert len(convs) == N_CONV and "lost their title" in s.warning
        assert all(c.title.startswith("Recovered conversation: needle") for c in convs)
    if pattern == "a messages leaf":
        assert len(msgs) < N_CONV * N_MSG  # the unreadable page is skipped, the rest is read
    # a conversation whose own row was read keeps its stable id (history import skips on it)
    kept = [c for c in convs if not c.title.startswith("Recovered conversation")]
    assert all(c.uid == uids[c.id] for c in kept) and all(c.uid for c in convs)
    if pattern != "page 2":
        assert kept
    # the search index is rebuilt: substring and two-character (Chinese) terms
    some = msgs[len(msgs) // 2]
    needle = some.content.split()[0]
    assert [h.message_id for h in s.search(needle) if h.message_id] == [some.id]
    assert len([h for h in s.search("天气", limit=1000) if h.message_id]) == len(msgs)
    assert s.integrity_check() == ["ok"]
    cid = s.create_conversation("after the repair")
    s.add_message(cid, "user", "saved again")
    s.close()

    s = HistoryStore.open(db)  # the repaired file opens cleanly and keeps new writes
    assert s.warning is None and len(_aside_files(db, "corrupt")) == 1
    assert s.count_conversations() == len(convs) + 1
    assert [m.content for m in s.messages(cid)] == ["saved again"]
    assert [h.conversation_id for h in s.search("saved again")] == [cid]
    s.close()


def test_damage_met_in_use_is_repaired_at_the_next_open(db: Path) -> None:
    """A check cut short by its time budget misses the damage; the query that
    meets it leaves a note, and the next start repairs the file."""
    _build_history(db)
    _damage(db, _pages(db, "a messages leaf"))
    s = HistoryStore.open(db, check_budget=0)
    assert s.warning is None and s.notice and "damage check stopped after 0 s" in s.notice
    with pytest.raises(HistoryError, match=r"is damaged \(.*restart glmtui to repair it"):
        for conv in s.list_conversations(limit=100):
            s.messages(conv.id)
    with pytest.raises(HistoryError, match="is damaged") as err:  # a failed write says why, not "cannot rollback"
        for conv in s.list_conversations(limit=100):
            s.delete_conversation(conv.id)
    assert "rollback" not in str(err.value) and s.unsaved == str(err.value)
    deleted = N_CONV - s.count_conversations()  # those before the damaged page
    s.close()
    in_use = db.read_bytes()

    s = HistoryStore.open(db, check_budget=0)
    aside = _aside_files(db, "corrupt")
    assert len(aside) == 1 and aside[0].read_bytes() == in_use
    assert s.warning and "while using it" in s.warning and "were recovered" in s.warning
    assert not db.with_name(db.name + ".damaged").exists()
    assert s.count_conversations() == N_CONV - deleted
    s.close()


def test_quick_check_is_bounded_in_time(db: Path) -> None:
    _build_history(db)
    conn = sqlite3.connect(db)
    assert store_recovery.quick_check(conn, budget_s=0) == store_recovery.CheckResult(None, False)
    assert store_recovery.quick_check(conn, budget_s=30) == store_recovery.CheckResult(None, True)
    conn.close()


def test_empty_file_is_explained_and_set_aside(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"")
    s = HistoryStore.open(db)
    aside = _aside_files(db, "empty")
    assert len(aside) == 1 and aside[0].stat().st_size == 0
    assert s.warning and "was empty (0 bytes)" in s.warning and str(aside[0]) in s.warning
    assert s.unsaved is None
    cid = s.create_conversation("new")
    s.close()
    s = HistoryStore.open(db)
    assert s.warning is None and s.get_conversation(cid).title == "new"
    s.close()


_READ_ONLY_CHILD = """
import os, sys
from glmtui.store import HistoryStore
os.setgid(65534); os.setuid(65534)
s = HistoryStore.open(sys.argv[1])
print(s.in_memory, [c.title for c in s.list_conversations()])
print(s.unsaved)
"""


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_read_only_file_is_shown_but_never_written(db: Path) -> None:
    s = HistoryStore.open(db)
    cid = s.create_conversation("old chat")
    s.add_message(cid, "user", "天气 today")
    s.close()
    os.chmod(db, 0o400)
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    files = sorted(p.name for p in db.parent.iterdir())

    s = HistoryStore.open(db)  # as root too: the mode says the user does not want it written
    assert s.in_memory and s.warning is None
    assert s.unsaved and "read-only (mode 0400)" in s.unsaved and "chmod u+w" in s.unsaved
    assert [c.title for c in s.list_conversations()] == ["old chat"]
    assert [h.conversation_id for h in s.search("天气")] == [cid]
    s.add_message(s.create_conversation("not saved"), "user", "only in memory")
    assert s.count_conversations() == 2
    s.close()
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in db.parent.iterdir()) == files

    if os.geteuid() == 0:  # the same for a user without write permission (pytest's tmp is root's only)
        import shutil
        import tempfile

        base = Path(tempfile.mkdtemp(prefix="glmtui-ro-file-"))
        try:
            shutil.copy2(db, base / db.name)
            for p in (base, base / db.name):
                os.chown(p, 65534, 65534)
            out, err = _python(_READ_ONLY_CHILD, str(base / db.name)).communicate(timeout=60)
            assert out.splitlines()[:1] == ["True ['old chat']"], (out, err)
            assert "read-only (mode 0400)" in out.splitlines()[1]
            assert sorted(p.name for p in base.iterdir()) == [db.name]
        finally:
            shutil.rmtree(base, ignore_errors=True)
    os.chmod(db, 0o600)
    s = HistoryStore.open(db)
    assert s.unsaved is None and not s.in_memory and s.count_conversations() == 1
    s.close()


def test_failed_writes_are_reported_until_one_succeeds(db: Path) -> None:
    s = HistoryStore.open(db, timeout=0.5)
    cid = s.create_conversation("c")
    assert s.unsaved is None
    holder = _python(_HOLD_LOCK, str(db), "immediate")
    try:
        _wait_line(holder, "locked")
        with pytest.raises(HistoryError, match="locked by another program") as err:
            s.add_message(cid, "user", "blocked")
        assert s.unsaved == str(err.value)
        s.messages(cid)  # a read does not end it
        assert s.unsaved == str(err.value)
    finally:
        holder.communicate("\n", timeout=30)
    s.add_message(cid, "user", "after release")
    assert s.unsaved is None
    s.close()
    mem = HistoryStore.open_memory(reason="Cannot open it.")
    assert mem.unsaved == "Cannot open it."
    mem.add_message(mem.create_conversation("m"), "user", "x")
    assert mem.unsaved == "Cannot open it."  # memory is never saved
    mem.close()


def test_migration_mechanism_upgrades_in_place(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = HistoryStore.open(db)
    cid = s.create_conversation("v1 data")
    s.add_message(cid, "user", "survives the upgrade")
    s.close()

    def add_pinned(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")

    newer = store_schema.SCHEMA_VERSION + 1
    monkeypatch.setattr(store_schema, "SCHEMA_VERSION", newer)
    monkeypatch.setattr(store_schema, "MIGRATIONS", [*store_schema.MIGRATIONS, add_pinned])
    s = HistoryStore.open(db)
    assert s.warning is None
    assert s.messages(cid)[0].content == "survives the upgrade"
    s.close()
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == newer
    assert raw.execute("SELECT pinned FROM conversations").fetchall() == [(0,)]
    raw.close()


# --------------------------------------------------- locks and permissions

_HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive":
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("INSERT INTO conversations(title, created_at, updated_at) VALUES ('x', 0, 0)")
    conn.execute("COMMIT")  # exclusive locking mode keeps the lock after commit
else:
    conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.close()
"""


def test_exclusively_locked_database_gives_clear_error(db: Path) -> None:
    HistoryStore.open(db).close()
    holder = _python(_HOLD_LOCK, str(db), "exclusive")
    try:
        _wait_line(holder, "locked")
        t0 = time.monotonic()
        with pytest.raises(HistoryError, match="locked by another program"):
            HistoryStore.open(db, timeout=0.5)
        assert time.monotonic() - t0 >= 0.4  # it waited busy_timeout first
    finally:
        holder.communicate("\n", timeout=30)
    s = HistoryStore.open(db)
    assert s.warning is None and s.count_conversations() == 1
    s.close()


_HOLD_OPEN_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)  # what any glmtui (older ones too) holds while it opens the file
print("locked", flush=True)
sys.stdin.readline()
os.close(fd)
"""


@pytest.mark.skipif(os.name == "nt", reason="flock")
def test_open_waits_for_the_open_lock_then_errors(db: Path) -> None:
    """Opening is serialised by a lock on <file>.lock: while another process
    holds it, open waits *timeout* seconds, then says the history is locked;
    once it is released, open goes ahead. The lock file is private."""
    HistoryStore.open(db).close()
    lock = db.with_name(db.name + ".lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    holder = _python(_HOLD_OPEN_LOCK, str(lock))
    try:
        _wait_line(holder, "locked")
        t0 = time.monotonic()
        with pytest.raises(HistoryError, match="locked by another program"):
            HistoryStore.open(db, timeout=0.5)
        assert time.monotonic() - t0 >= 0.45
        opened: list[HistoryStore] = []
        waiter = threading.Thread(target=lambda: opened.append(HistoryStore.open(db, timeout=30)))
        waiter.start()
        time.sleep(0.2)
        assert not opened  # still waiting for the lock
    finally:
        holder.communicate("\n", timeout=30)
    waiter.join(30)
    assert len(opened) == 1 and opened[0].warning is None
    opened[0].close()


def test_write_locked_database_waits_then_errors(db: Path) -> None:
    s = HistoryStore.open(db, timeout=0.5)
    cid = s.create_conversation("c")
    holder = _python(_HOLD_LOCK, str(db), "immediate")
    try:
        _wait_line(holder, "locked")
        assert s.get_conversation(cid).title == "c"  # readers are not blocked (WAL)
        with pytest.raises(HistoryError, match="locked by another program"):
            s.add_message(cid, "user", "blocked")
    finally:
        holder.communicate("\n", timeout=30)
    s.add_message(cid, "user", "after release")  # the store is still usable
    assert [m.content for m in s.messages(cid)] == ["after release"]
    s.close()


_DROP_PRIVILEGES = """
import os, sys, fcntl, glmtui.config
from glmtui.store import HistoryStore, HistoryError
os.setgid(65534); os.setuid(65534)  # everything is imported: drop root, chmod now binds
for name in ("new.sqlite3", "existing.sqlite3"):
    try:
        HistoryStore.open(os.path.join(sys.argv[1], name), timeout=0.5)
        print("opened", name)
    except HistoryError as err:
        print("error", name, err)
"""


def _read_only_folder_as_unprivileged_child() -> None:
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="glmtui-ro-"))
    try:
        ro = base / "ro"
        ro.mkdir()
        HistoryStore.open(ro / "existing.sqlite3").close()
        for p in [base, *base.rglob("*")]:
            os.chown(p, 65534, 65534)
        os.chmod(ro, 0o500)
        out, err = _python(_DROP_PRIVILEGES, str(ro)).communicate(timeout=60)
        lines = out.splitlines()
        assert len(lines) == 2, (out, err)
        for line in lines:
            assert line.startswith("error ") and "Cannot write the chat history" in line, line
            assert "read-only" in line, line
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unwritable_location_raises_history_error(tmp_path: Path) -> None:
    if os.name != "nt" and os.geteuid() == 0:
        # root ignores chmod: use a "folder" that is a regular file instead
        blocker = tmp_path / "data"
        blocker.write_text("not a folder")
        with pytest.raises(HistoryError, match=r"Cannot (open|write) the chat history"):
            HistoryStore.open(blocker / "history.sqlite3")
        with pytest.raises(HistoryError, match="not usable"):
            HistoryStore.open(blocker / "sub" / "history.sqlite3")
        _read_only_folder_as_unprivileged_child()
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        os.chmod(ro, 0o500)
        try:
            with pytest.raises(HistoryError, match=r"Cannot (open|write) the chat history"):
                HistoryStore.open(ro / "history.sqlite3")
        finally:
            os.chmod(ro, 0o700)
    mem = HistoryStore.open_memory()  # what the UI falls back to
    assert mem.in_memory and mem.path is None
    cid = mem.create_conversation("in memory")
    mem.add_message(cid, "user", "临时对话")
    assert [h.message_id for h in mem.search("对话")] == [1]
    mem.close()
    with pytest.raises(HistoryError, match="closed"):
        mem.list_conversations()


@pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")
def test_files_are_private(db: Path) -> None:
    old = os.umask(0o022)
    try:
        s = HistoryStore.open(db)
        s.add_message(s.create_conversation("c"), "user", "secret")
        assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            assert p.exists(), p
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        s.close()
    finally:
        os.umask(old)


# ------------------------------------------------------------- concurrency

_WRITER = """
import sys
from glmtui.store import HistoryStore
path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = HistoryStore.open(path, timeout=30)
shared = None
while shared is None:
    convs = [c for c in s.list_conversations(limit=10) if c.title == "shared"]
    shared = convs[0].id if convs else None
    if shared is None:
        import time; time.sleep(0.01)
mine = s.create_conversation(tag)
for i in range(n):
    s.add_message(shared, "user", f"{tag} shared {i}")
    mid = s.add_message(mine, "assistant", "", status="streaming")
    s.update_message(mid, content=f"{tag} own {i}", status="complete")
s.close()
print("done", flush=True)
"""


@pytest.mark.slow  # two writer subprocesses
def test_two_processes_write_concurrently(db: Path) -> None:
    n = 150
    # both children and this process race to create the file from nothing
    procs = [_python(_WRITER, str(db), tag, str(n)) for tag in ("A", "B")]
    with HistoryStore.open(db, timeout=30) as s:
        s.create_conversation("shared")
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and out.strip() == "done", err

    s = HistoryStore.open(db)
    assert s.warning is None
    assert s.integrity_check() == ["ok"]
    convs = {c.title: c.id for c in s.list_conversations()}
    assert set(convs) == {"shared", "A", "B"}
    shared_msgs = s.messages(convs["shared"])
    assert len(shared_msgs) == 2 * n
    assert [m.position for m in shared_msgs] == list(range(2 * n))
    for tag in ("A", "B"):
        assert sorted(m.content for m in shared_msgs if m.content.startswith(tag)) == sorted(
            f"{tag} shared {i}" for i in range(n)
        )
        own = s.messages(convs[tag])
        assert [m.content for m in own] == [f"{tag} own {i}" for i in range(n)]
        assert all(m.status == "complete" for m in own)
    assert len(s.search("shared 149")) == 2
    s.close()


def test_threads_share_one_store(store: HistoryStore) -> None:
    cid = store.create_conversation("threads")
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(50):
                store.add_message(cid, "user", f"t{k} {i}")
                store.search(f"t{k}")
                store.list_conversations()
        except BaseException as err:  # noqa: BLE001 - reported below  # pragma: no cover
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    msgs = store.messages(cid)
    assert len(msgs) == 200 and [m.position for m in msgs] == list(range(200))


def test_search_index_is_built_for_an_old_file_without_one(db: Path) -> None:
    s = HistoryStore.open(db)
    cid = s.create_conversation("c")
    mid = s.add_message(cid, "user", "索引稍后建立 indexed later")
    s.close()
    raw = sqlite3.connect(db)  # as if written where FTS5 was missing
    raw.executescript(
        "DROP TRIGGER messages_fts_ai; DROP TRIGGER messages_fts_ad; DROP TRIGGER messages_fts_au;"
        "DROP TABLE messages_fts; DROP VIEW messages_fts_src;"
    )
    raw.close()
    s = HistoryStore.open(db)
    assert s.full_text
    assert [h.message_id for h in s.search("later")] == [mid]
    assert [h.message_id for h in s.search("索引")] == [mid]
    assert s.integrity_check() == ["ok"]
    s.close()


def test_common_two_character_term_falls_back_to_scan(store: HistoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    cid = store.create_conversation("c")
    ids = [store.add_message(cid, "user", f"模型{ch}很好") for ch in "甲乙丙"]
    store.add_message(cid, "user", "无关")
    assert [h.message_id for h in store.search("模型")] == ids[::-1]
    monkeypatch.setattr(store_search, "_BIGRAM_MAX_TOKENS", 2)  # three distinct trigrams: too many
    assert [h.message_id for h in store.search("模型")] == ids[::-1]
    assert [h.message_id for h in store.search("模型 乙很好")] == [ids[1]]
