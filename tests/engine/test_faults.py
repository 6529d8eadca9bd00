"""Faults while a reply streams, in a real terminal: kill -9, SIGHUP (SSH dropped), SIGTERM.

The installed ``glmtui`` runs in tmux on a tiny real model that is slow
enough (hidden 512, 8 layers) for a reply to stream for several seconds. The
history database is read directly with sqlite3 while the app runs, so the
test sees exactly what the app wrote, not what a later open repairs.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import uuid

import psutil
import pytest

import tiny_models
from glmtui.store import HistoryStore
from helpers import wait_until
from terminals import TMUX, Tmux, glmtui_command

pytestmark = [pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)"), pytest.mark.slow]


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    return tiny_models.build_chatglm3(tmp_path_factory.mktemp("slow") / "slow-chatglm3", hidden=512, layers=8,
                                      heads=8, kv_heads=2, head_dim=64, ffn=1536, never_stop=True)


def _rows(db):
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute("SELECT role, status, content FROM messages ORDER BY id").fetchall()


def _start_streaming(slow_model, tmp_path):
    """glmtui in tmux, mid-way through a long reply that has been flushed at least once."""
    home = tmp_path / "home"
    tmux = Tmux(tmp_path / "tmux.sock", f"glmtui-{uuid.uuid4().hex[:8]}")
    command = (f"env -u COLUMNS -u LINES GLMTUI_HOME={home} TERM=xterm-256color "
               f"{glmtui_command()} --model {slow_model} --mode fp32 --device cpu")
    tmux.run("-f", "/dev/null", "new-session", "-d", "-s", tmux.name, "-x", "100", "-y", "30", command)
    try:
        return _stream_until_flushed(tmux, slow_model, home)
    except BaseException:
        tmux.run("kill-server", check=False)  # never leave a glmtui behind
        raise


def _stream_until_flushed(tmux, slow_model, home):
    pid = int(tmux.run("list-panes", "-t", tmux.name, "-F", "#{pane_pid}").split()[0])
    tmux.wait_for(lambda s: f"● {slow_model.name} fp32 cpu" in s, 120, "the model to load")
    tmux.run("send-keys", "-t", tmux.name, "-l", "Tell me a very long story")
    tmux.run("send-keys", "-t", tmux.name, "Enter")
    db = home / "data" / "history.sqlite3"
    seen: list = []

    def flushed() -> bool:
        seen[:] = _rows(db) if db.exists() else []
        return any(r[0] == "assistant" and r[1] == "streaming" and len(r[2]) > 20 for r in seen)

    wait_until(flushed, 60, lambda: f"a streaming reply flushed; rows: {seen}\n{tmux.capture()}", interval=0.3)
    return tmux, pid, db, list(seen)


def _wait_gone(pid: int, timeout: float) -> bool:
    try:
        psutil.Process(pid).wait(timeout)
        return True
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False


def test_kill_9_mid_reply_keeps_everything_up_to_the_last_flush(slow_model, tmp_path):
    tmux, pid, db, flushed = _start_streaming(slow_model, tmp_path)
    try:
        os.kill(pid, signal.SIGKILL)
        assert _wait_gone(pid, 10)
        partial = [r for r in flushed if r[0] == "assistant"][-1][2]
        store = HistoryStore.open(db)  # what the next glmtui start does
        try:
            conversation = store.list_conversations()[0]
            messages = store.messages(conversation.id)
        finally:
            store.close()
        assert [m.role for m in messages] == ["user", "assistant"]
        assert messages[0].content == "Tell me a very long story"
        assert messages[1].status == "interrupted"
        assert messages[1].content.startswith(partial)  # at least what was flushed
    finally:
        tmux.run("kill-server", check=False)


@pytest.mark.parametrize("how", ["sighup", "sigterm"])
def test_hangup_and_terminate_flush_the_reply_and_exit_cleanly(slow_model, tmp_path, how):
    tmux, pid, db, flushed = _start_streaming(slow_model, tmp_path)
    try:
        if how == "sighup":
            tmux.run("kill-server")  # the terminal goes away: the app gets SIGHUP
        else:
            os.kill(pid, signal.SIGTERM)
        assert _wait_gone(pid, 20), "glmtui did not exit after the signal"
        rows = _rows(db)
        assistant = [r for r in rows if r[0] == "assistant"][-1]
        # Written by the app itself on the way out, not repaired by a later open:
        assert assistant[1] == "interrupted", rows
        partial = [r for r in flushed if r[0] == "assistant"][-1][2]
        assert assistant[2].startswith(partial) and len(assistant[2]) >= len(partial)
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        tmux.run("kill-server", check=False)
