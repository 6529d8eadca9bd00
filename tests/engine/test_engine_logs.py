"""Where an engine process's stdout/stderr go (a log file of its own under the user's data folder, the newest
LOG_KEEP of them kept) and what its last error line tells when it crashes, on real EngineProcess children."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from engine_helpers import EventLog
from glmtui.engine.events import ChatMessage, EngineExited, Failed, GenerationParams, Loaded, Token
from glmtui.engine.process import LOG_KEEP, EngineProcess
from helpers import wait_until


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_an_engine_process_logs_under_the_data_folder_and_the_newest_logs_are_kept(isolated_home):
    logs = isolated_home / "data" / "logs"  # GLMTUI_HOME's data folder: where a user's data lives
    logs.mkdir(parents=True)
    now = time.time()
    old = []
    for n in range(LOG_KEEP + 5):  # earlier sessions' logs, the first the oldest
        path = logs / f"engine-20260101-000000-1-{n}.log"
        path.write_text(f"session {n}\n")
        os.utime(path, (now - 1000 + n, now - 1000 + n))
        old.append(path)
    other = logs / "notes.txt"  # not an engine log: left alone
    other.write_text("mine")

    engine = EngineProcess(keep_spare=False).start()  # no log_dir: the data folder's
    try:
        engine.prestart()  # a process started ahead of a load
        assert wait_until(lambda: engine.memory_report().pids, 30, "the engine process to start")
        pid = engine.memory_report().pids[0]
        kept = sorted(logs.glob("engine-*.log"))
        assert len(kept) == LOG_KEEP
        assert set(old[-(LOG_KEEP - 1):]) <= set(kept)  # the newest earlier logs, and this process's own
        assert not any(p.exists() for p in old[:-(LOG_KEEP - 1)])
        assert other.read_text() == "mine"
        assert (logs.stat().st_mode & 0o077) == 0  # private, as the history is
    finally:
        engine.shutdown()
    assert wait_until(lambda: gone(pid), 10, "the engine process to end")


@pytest.mark.slow
def test_a_segfault_mid_reply_names_the_signal_and_faulthandlers_line(chatty_chatglm3, tmp_path):
    log = EventLog()
    engine = EngineProcess(log, keep_spare=False, log_dir=tmp_path / "logs").start()
    try:
        loaded = log.wait(engine.load(str(chatty_chatglm3), "fp32"), timeout=180)
        assert isinstance(loaded, Loaded), loaded
        pid = engine.pid
        rid = engine.generate([ChatMessage("user", "hi")], GenerationParams(max_new_tokens=1500, temperature=0.0))
        wait_until(lambda: log.of(rid, Token), 60, "the reply's first tokens")
        os.kill(pid, signal.SIGSEGV)  # what a crashing kernel does to the process
        failed = log.wait(rid, timeout=30)
        assert isinstance(failed, Failed) and failed.interrupted, failed
        assert "killed by SIGSEGV" in failed.message
        assert "Fatal Python error: Segmentation fault" in failed.message  # the log's line, from faulthandler
        exited = wait_until(lambda: next((e for e in log.events if isinstance(e, EngineExited)), None), 10,
                            "the EngineExited event")
        assert exited.cause == "killed by SIGSEGV" and Path(exited.log_path).parent == tmp_path / "logs"
        assert gone(pid) and engine.model_info is None
    finally:
        engine.shutdown()
