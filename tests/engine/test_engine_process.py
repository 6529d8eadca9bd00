"""EngineProcess on real tiny models: the engine in a child process, its faults, its end.

One engine (and so one stream of processes) serves the module's tests in order:
each spawn imports torch, which takes seconds on this machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import Pipe
from pathlib import Path

import psutil
import pytest

from engine_helpers import EventLog, start_worker
from glmtui.engine.api import Engine
from glmtui.engine.child import Outbox
from glmtui.engine.events import (
    ChatMessage,
    EngineExited,
    EngineUnresponsive,
    Failed,
    Finished,
    GenerationParams,
    Loaded,
    Token,
    Unloaded,
)
from glmtui.engine.process import EngineProcess, last_error_line
from glmtui.engine.remote import RemoteEngine
from glmtui.engine.worker import InferenceWorker
from helpers import wait_until
from terminals import Terminal

ROOT = Path(__file__).resolve().parents[2]
GREEDY = GenerationParams(max_new_tokens=40, temperature=0.0)
LONG_ENOUGH = GenerationParams(max_new_tokens=300, temperature=0.0)  # some CPU ticks of work
LONG = GenerationParams(max_new_tokens=1500, temperature=0.0)  # the chatty model runs to the limit
HELLO = [ChatMessage("user", "你好")]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


class FirstToken:
    """A sink that notes when a request's first Token arrives."""

    def __init__(self):
        self.seen = threading.Event()

    def __call__(self, event):
        if isinstance(event, Token):
            self.seen.set()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    log = EventLog()
    # fresh interpreters, never forks of the launcher: the path a GPU build of torch takes (test_launcher.py: forks)
    eng = EngineProcess(log, log_dir=tmp_path_factory.mktemp("engine-logs"), ping_interval=0.3, hang_after=4.0,
                        use_launcher=False).start()
    yield eng, log
    pids = eng.memory_report().pids
    eng.shutdown()
    assert all(wait_until(lambda pid=pid: gone(pid), 5.0) for pid in pids)


def load(eng, log, path, mode="fp32") -> Loaded:
    event = log.wait(eng.load(str(path), mode), timeout=180)
    assert isinstance(event, Loaded), event
    return event


# ------------------------------------------------------------------ no engine process needed


def test_front_end_modules_do_not_import_torch():
    code = ("import sys, glmtui.engine.api, glmtui.engine.process, glmtui.engine.child, glmtui.engine.worker; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_all_three_engines_satisfy_the_protocol():
    for made in (InferenceWorker(), EngineProcess(), RemoteEngine("http://127.0.0.1:9", autoconnect=False)):
        assert isinstance(made, Engine), type(made).__name__
        assert made.memory_report() is not None


def test_outbox_coalesces_a_token_run_in_order_and_exactly():
    ours, theirs = Pipe()
    box = Outbox(theirs, interval=60.0, max_tokens=5)
    for i in range(12):
        box.put(Token(1, f"t{i} "))
    box.put(Token(2, "other"))  # another request's token ends the first run
    box.put(Finished(2, "other", 1, 1, None, None, 0.0, "stop"))  # any other event flushes first
    received = [ours.recv() for _ in range(6)]  # a request's first token goes at once
    assert received[:4] == [Token(1, "t0 "), Token(1, "t1 t2 t3 t4 t5 "), Token(1, "t6 t7 t8 t9 t10 "),
                            Token(1, "t11 ")]
    assert received[4:] == [Token(2, "other"), Finished(2, "other", 1, 1, None, None, 0.0, "stop")]
    assert not ours.poll(0.1)


def test_outbox_sends_a_waiting_token_run_after_the_interval():
    ours, theirs = Pipe()
    box = Outbox(theirs, interval=0.05, max_tokens=1000)
    box.put(Token(7, "a"))  # the first, at once
    box.put(Token(7, "b"))
    box.put(Token(7, "c"))
    assert ours.poll(5.0) and ours.recv() == Token(7, "a")
    assert ours.poll(5.0), "the flusher never sent the waiting tokens"
    assert ours.recv() == Token(7, "bc")


def test_last_error_line_picks_the_fault_not_the_traceback_frames():
    log = "started\nFatal Python error: Aborted\n\nThread 0x1 (most recent call first):\n  File \"x.py\", line 3 in f\n"
    assert last_error_line(log) == "Fatal Python error: Aborted"
    assert last_error_line("loading\nValueError: bad shard\n") == "ValueError: bad shard"
    assert last_error_line("all fine\n") == ""


# ------------------------------------------------------------------ through one engine process (in order)


@pytest.mark.slow
def test_generation_through_the_process_equals_the_in_process_worker(engine, chatty_chatglm3):
    eng, log = engine
    loaded = load(eng, log, chatty_chatglm3)
    assert loaded.mode == "fp32" and eng.model_info.name == loaded.model_name and eng.state == "ready"
    child = eng.pid
    assert child is not None and child != os.getpid()
    report = eng.memory_report()
    assert child in report.pids and report.host_rss_bytes > 50 * 2**20  # torch and the model live there

    rid = eng.generate(HELLO, GREEDY)
    done = log.wait(rid)
    assert isinstance(done, Finished), done
    assert "".join(t.text for t in log.of(rid, Token)) == done.text  # coalescing loses and reorders nothing
    assert done.completion_tokens == GREEDY.max_new_tokens

    worker, wlog = start_worker()
    try:
        assert isinstance(wlog.wait(worker.load(str(chatty_chatglm3), "fp32")), Loaded)
        alone = wlog.wait(worker.generate(HELLO, GREEDY))
    finally:
        worker.shutdown()
    assert done.text == alone.text


def thread_policies(pid: int) -> dict[int, tuple[int, int]]:
    """{thread id: (scheduling policy, CPU ticks used)} of a process."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            found[int(tid)] = (os.sched_getscheduler(int(tid)), int(fields[11]) + int(fields[12]))
        except (OSError, IndexError):
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_a_spare_imports_on_idle_cpu_time_and_then_generates_at_normal_priority(engine, chatty_chatglm3):
    eng, log = engine
    # a load takes any spare the test before left (it may have finished its imports by now); the spare
    # watched here is the one started after this load
    load(eng, log, chatty_chatglm3)
    assert wait_until(lambda: eng._spare is not None, 30)  # started once the engine has been idle a second
    spare = eng._spare
    idle_seen = wait_until(lambda: spare.ready.is_set()
                           or any(p == os.SCHED_IDLE for p, _ in thread_policies(spare.pid).values()), 60,
                           "the spare's import thread at SCHED_IDLE, or its imports done", interval=0.005)
    assert idle_seen and not spare.ready.is_set(), "the spare imported at normal priority"
    assert spare.ready.wait(120)


@pytest.mark.slow
def test_a_quantization_switch_ends_the_old_process_before_the_new_load(engine, chatty_chatglm3):
    eng, log = engine
    old = eng.pid
    spare = eng._spare
    alive_when_loaded = []

    def note(event):
        if isinstance(event, Loaded):
            alive_when_loaded.append(not gone(old))

    rid = eng.load(str(chatty_chatglm3), "bf16", sink=note)
    assert isinstance(log.wait(rid, timeout=180), Loaded)
    assert wait_until(lambda: alive_when_loaded, 5) and alive_when_loaded == [False]  # the sink runs after the log
    assert eng.pid not in (None, old) and eng.model_info.mode == "bf16"
    assert eng.pid == spare.pid  # the spare, ready, took the load
    linux = sys.platform.startswith("linux")
    before = thread_policies(eng.pid) if linux else {}
    assert isinstance(log.wait(eng.generate(HELLO, LONG_ENOUGH)), Finished)
    if linux:  # the threads that did the work run at normal priority
        after = thread_policies(eng.pid)
        worked = {tid: policy for tid, (policy, ticks) in after.items() if ticks > before.get(tid, (0, 0))[1]}
        assert worked and os.SCHED_IDLE not in worked.values(), (before, after)


@pytest.mark.slow  # an engine process imports torch (tests/ui/test_ui_chat.py runs one in the fast loop)
def test_cancel_stops_a_reply_promptly(engine, chatty_chatglm3):
    eng, log = engine
    if eng.model_info is None:  # run on its own (-k): the tests before it leave a model loaded
        load(eng, log, chatty_chatglm3)
    first = FirstToken()
    rid = eng.generate(HELLO, LONG, sink=first)
    assert first.seen.wait(60)
    sent = time.perf_counter()
    eng.cancel(rid)
    done = log.wait(rid, timeout=30)
    latency = time.perf_counter() - sent
    print(f"cancel latency through the process: {latency * 1000:.1f} ms")
    assert isinstance(done, Finished) and done.finish_reason == "cancelled"
    assert done.completion_tokens < LONG.max_new_tokens
    assert latency < 2.0
    assert eng.state == "ready"


def _die_mid_reply(eng, log, sig) -> tuple[Failed, EngineExited]:
    pid = eng.pid
    first = FirstToken()
    rid = eng.generate(HELLO, LONG, sink=first)
    assert first.seen.wait(60)
    os.kill(pid, sig)
    failed = log.wait(rid, timeout=30)
    assert isinstance(failed, Failed), failed
    assert wait_until(lambda: any(isinstance(e, EngineExited) for e in log.events[-5:]), 10)
    exited = [e for e in log.events if isinstance(e, EngineExited)][-1]
    assert gone(pid) and eng.pid is None and eng.model_info is None and eng.state == "empty"
    return failed, exited


@pytest.mark.slow
def test_kill_9_mid_reply_is_reported_and_a_reload_works(engine, chatty_chatglm3):
    eng, log = engine
    failed, exited = _die_mid_reply(eng, log, signal.SIGKILL)
    assert failed.interrupted and failed.during == "generate"
    assert "SIGKILL" in failed.message and exited.cause.startswith("killed by SIGKILL")
    # nothing loaded now: a reply (an agent's next turn, say) fails at once, naming why
    refused = log.wait(eng.generate(HELLO, GREEDY))
    assert refused.message.startswith("no model is loaded: the engine process ended (killed by SIGKILL")
    assert refused.message.endswith("— load it again")
    load(eng, log, chatty_chatglm3)
    assert isinstance(log.wait(eng.generate(HELLO, GREEDY)), Finished)


@pytest.mark.slow
def test_an_abort_in_the_engine_names_the_signal_and_the_log_line(engine, chatty_chatglm3):
    eng, log = engine
    failed, exited = _die_mid_reply(eng, log, signal.SIGABRT)
    # faulthandler dumps the stack, then re-raises: the status is SIGABRT (SIGSEGV should the dump itself crash)
    assert re.search(r"killed by SIG(ABRT|SEGV)", failed.message), failed.message
    assert "Fatal Python error: Aborted" in failed.message
    assert "Fatal Python error: Aborted" in exited.log_tail and Path(exited.log_path).is_file()
    load(eng, log, chatty_chatglm3)


@pytest.mark.slow
def test_a_stopped_engine_is_reported_unresponsive_and_can_be_killed(engine, chatty_chatglm3):
    eng, log = engine
    pid = eng.pid
    before = len(log.events)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: any(isinstance(e, EngineUnresponsive) and e.seconds > 0 for e in log.events[before:]),
                        30)
        os.kill(pid, signal.SIGCONT)
        assert wait_until(lambda: isinstance(log.events[-1], EngineUnresponsive) and log.events[-1].seconds == 0.0, 30)
        os.kill(pid, signal.SIGSTOP)
        assert eng.kill("stopped by the user: it was hung")
    finally:
        os.kill(pid, signal.SIGCONT) if not gone(pid) else None
    assert wait_until(lambda: isinstance(log.events[-1], EngineExited), 10)
    assert log.events[-1].cause == "stopped by the user: it was hung" and gone(pid)
    load(eng, log, chatty_chatglm3)


@pytest.mark.slow
def test_unload_ends_the_processes_and_a_failed_load_leaves_none(engine, tmp_path):
    eng, log = engine
    pid = eng.pid
    assert wait_until(lambda: len(eng.memory_report().pids) == 2, 60)  # the spare, started while idle
    pids = eng.memory_report().pids
    event = log.wait(eng.unload())
    assert isinstance(event, Unloaded) and event.model_name
    assert gone(pid)  # before Unloaded was delivered: its memory is back
    assert wait_until(lambda: all(gone(p) for p in pids), 10) and eng.memory_report().pids == ()
    assert eng.state == "empty" and eng.model_info is None

    missing = log.wait(eng.load(str(tmp_path / "no-such-model"), "int4"), timeout=120)
    assert isinstance(missing, Failed) and missing.during == "load"
    assert wait_until(lambda: eng.memory_report().pids == (), 30)  # nothing loaded: nothing kept
    assert eng.state == "empty"

    # int4 was asked for: from now on a spare imports bitsandbytes in advance, on idle CPU time
    eng.prestart()
    assert wait_until(lambda: eng._spare is not None, 10)
    assert psutil.Process(eng._spare.pid).cmdline()[-1] == "idle,quantizers"


# ------------------------------------------------------------------ the front end as a process of its own

FRONT_END = """
import json, queue, sys, time
from glmtui.engine.events import ChatMessage, Finished, GenerationParams, Loaded, Token
from glmtui.engine.process import EngineProcess

events = queue.Queue()
engine = EngineProcess(events.put, keep_spare=False).start()
engine.load(sys.argv[1], "fp32")
while not isinstance(event := events.get(timeout=180), Loaded):
    pass
engine.generate([ChatMessage("user", "hi")], GenerationParams(max_new_tokens=5000, temperature=0.0))
while not isinstance(event := events.get(timeout=60), Token):
    pass
print(json.dumps({"engine": engine.pid, "modules": [m for m in ("torch", "transformers") if m in sys.modules]}),
      flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_the_engine_dies_with_its_front_end_which_never_imports_torch(chatty_chatglm3, tmp_path):
    front = subprocess.Popen([sys.executable, "-c", FRONT_END, str(chatty_chatglm3)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = front.stdout.readline()
        assert line, front.stderr.read()
        seen = json.loads(line)
        assert seen["modules"] == []  # after a load and mid-reply
        child = seen["engine"]
        assert not gone(child)
        front.kill()  # SIGKILL: no cleanup of its own runs
        front.wait(10)
        killed = time.monotonic()
        wait_until(lambda: gone(child), 2.0, "the engine to end with its front end", interval=0.02)
        print(f"engine gone {time.monotonic() - killed:.3f} s after its front end was killed")
    finally:
        if front.poll() is None:
            front.kill()


# ------------------------------------------------------------------ glmtui chat over the engine process

LINE_CHAT = """
import io, json, sys
from argparse import Namespace
import glmtui.cli
from glmtui.linechat import run_line_chat

args = Namespace(model=sys.argv[1], endpoint=None, temperature=0.0, top_p=0.8, max_new_tokens=8, system="",
                 device=None, mode=None)
out, err = io.StringIO(), io.StringIO()
code = run_line_chat(args, stdin=io.StringIO("hi"), stdout=out, stderr=err)
print(json.dumps({"code": code, "answer": out.getvalue(), "log": err.getvalue(),
                  "modules": [m for m in ("torch", "transformers") if m in sys.modules]}))
"""


@pytest.mark.slow
def test_line_chat_runs_the_model_in_an_engine_process(chatty_chatglm3):
    run = subprocess.run([sys.executable, "-c", LINE_CHAT, str(chatty_chatglm3)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["code"] == 0 and seen["answer"].strip(), seen
    assert "(fp32 on cpu)" in seen["log"]  # the default mode, decided by the engine on this CPU machine
    assert seen["modules"] == []


@pytest.mark.slow
def test_interactive_chat_loads_again_after_the_engine_is_killed(chatty_chatglm3):
    name = chatty_chatglm3.name
    term = Terminal([sys.executable, "-m", "glmtui.cli", "chat", "--model", str(chatty_chatglm3),
                     "--temperature", "0", "--max-new-tokens", "1500"])
    try:
        term.read_until(b"User: ", timeout=180)
        first = [c.pid for c in psutil.Process(term.proc.pid).children()]
        assert len(first) == 1
        term.type("hello")
        term.read_until(f"{name}: ".encode())
        term.wait_output(16)  # a few tokens in
        os.kill(first[0], signal.SIGKILL)
        seen = term.read_until(b"User: ", timeout=180)
        assert b"[error: the engine process ended (killed by SIGKILL" in seen
        second = [c.pid for c in psutil.Process(term.proc.pid).children()]
        assert len(second) == 1 and second != first  # loaded again, in a fresh process

        term.type("hello again")
        term.read_until(f"{name}: ".encode())
        term.wait_output(16)
        term.proc.send_signal(signal.SIGINT)  # Ctrl-C stops the reply; the engine lives on
        assert b"[stopped]" in term.read_until(b"User: ", timeout=30)
        assert not gone(second[0])
        term.type("stop")
        assert term.proc.wait(30) == 0
        assert wait_until(lambda: gone(second[0]), 5)
    finally:
        term.close()
