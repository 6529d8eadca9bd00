"""The TUI over its default engine, an EngineProcess, on tiny real models: the model runs in a
process of its own, the TUI survives that process's death, hang and log.

Each app spawns engine processes (each imports torch: seconds), so the tests here are few and
each covers a whole story.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from glmtui.engine.process import EngineProcess
from glmtui.ui.app import GlmApp
from helpers import (
    SCRIPT_UNTIL,
    FrozenSampler,
    host_only_snapshot,
    screen_text,
    send,
    type_text,
    wait_for,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
LOAD_TIMEOUT = 240.0  # a fresh process imports torch on a loaded 2-core machine


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ the TUI's own process keeps no torch

FRONT_END = SCRIPT_UNTIL + textwrap.dedent(
    """
    import asyncio, json, os, sys
    import httpx
    from glmtui.ui.app import GlmApp

    async def main(model):
        app = GlmApp(model=model, mode="fp32", default_params={"temperature": 0.0, "max_new_tokens": 8},
                     api=True, api_port=0)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.loaded is not None and app._api_server is not None,
                        "the load and the API")
            chat = app.chat_pane
            chat.input.focus()
            for ch in "hi":
                await pilot.press(ch)
            await pilot.press("enter")
            await until(pilot, lambda: chat.turns and chat.turns[-1].role == "assistant" and chat.active is None,
                        "a reply")
            reply = chat.turns[-1]
            async with httpx.AsyncClient(timeout=120) as client:  # --api serves the same engine process
                answer = await client.post(f"{app._api_server.url}/v1/chat/completions", json={
                    "model": "glmtui", "max_tokens": 4, "temperature": 0,
                    "messages": [{"role": "user", "content": "hello"}]})
            print("RESULT " + json.dumps({
                "engine": type(app.engine.current).__name__, "engine_pid": app.engine.pid, "pid": os.getpid(),
                "reply": [reply.status, reply.content], "api": answer.status_code,
                "api_text": answer.json()["choices"][0]["message"]["content"] if answer.status_code == 200 else "",
                "modules": [m for m in ("torch", "transformers") if m in sys.modules]}), flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.slow
def test_the_tui_runs_its_model_in_an_engine_process_and_never_imports_torch(chatglm3_dir, tmp_path):
    env = dict(os.environ, GLMTUI_HOME=str(tmp_path / "home"))
    run = subprocess.run([sys.executable, "-c", FRONT_END, str(chatglm3_dir)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, run.stdout[-2000:] + run.stderr[-3000:]
    seen = json.loads(line.removeprefix("RESULT "))
    assert seen["engine"] == "EngineProcess"
    assert seen["engine_pid"] not in (None, seen["pid"])
    assert seen["reply"][0] == "complete" and seen["reply"][1]
    assert seen["api"] == 200 and seen["api_text"]
    assert seen["modules"] == []  # after a load, a reply and an API request


# ------------------------------------------------------------------ the engine dies, or hangs, under a reply

LONG = {"temperature": 0.0, "max_new_tokens": 1500}  # the chatty model writes until the limit


@pytest.fixture
def quiet_sampler():
    return FrozenSampler(host_only_snapshot())


async def start_reply(pilot, app, text: str):
    """Send ``text`` and return once the reply has shown some text (it is still being written)."""
    chat = app.chat_pane
    chat.input.focus()
    await type_text(pilot, text)
    await pilot.press("enter")
    await wait_for(pilot, lambda: chat.active is not None and chat.active.text, timeout=120, what="first tokens")
    return chat.active


async def interrupted_by(pilot, app, sig: int):
    """Kill the engine's process with ``sig`` mid-reply; the reply's turn once the app has taken the death in."""
    chat = app.chat_pane
    active = await start_reply(pilot, app, "tell me a story")
    pid = app.engine.pid
    assert pid is not None and pid != os.getpid()
    os.kill(pid, sig)
    await wait_for(pilot, lambda: chat.active is None and app.engine_notice.kind == "exited", timeout=60,
                   what="the engine's death to reach the UI")
    assert gone(pid) and app.loaded is None
    turn = next(t for t in chat.turns if t.widget is active.widget)
    return turn, active.message_id


async def hung_then_killed(pilot, app, engine, active, while_hung):
    """Stop the engine's process mid-reply (SIGSTOP: no token, no answer to pings, no CPU used); once the app
    shows it unresponsive, ``await while_hung()`` checks what is shown, then F7 kills it; the reply ends interrupted."""
    chat = app.chat_pane
    pid = engine.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await wait_for(pilot, lambda: app.engine_notice.kind == "unresponsive", timeout=60, what="the hang")
        await while_hung()
        assert chat.active is active  # the reply waits, its text kept
        await pilot.press("f7")
        await wait_for(pilot, lambda: app.engine_notice.kind == "exited", timeout=30, what="the kill")
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGCONT)
    assert gone(pid)
    turn = chat.turns[-1]
    assert turn.status == "interrupted" and turn.content == active.text and turn.content
    assert "stopped from glmtui (F7)" in turn.stats["error"]


async def reload_and_reply(pilot, app) -> None:
    await pilot.press("f6")  # the key the notice names
    await wait_for(pilot, lambda: app.loaded is not None, timeout=LOAD_TIMEOUT, what="the reload")
    assert app.engine_notice.kind is None and not app.engine_notice.display


@pytest.mark.slow
async def test_the_tui_survives_the_engine_being_killed_or_aborting_mid_reply(chatty_chatglm3, quiet_sampler):
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", default_params=LONG, sampler=quiet_sampler)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, timeout=LOAD_TIMEOUT, what="model load")
        assert isinstance(app.engine.current, EngineProcess)  # the default for a local model
        chat = app.chat_pane

        # kill -9: the reply so far is kept, marked interrupted, in the chat and in the history file
        turn, message_id = await interrupted_by(pilot, app, signal.SIGKILL)
        assert turn.status == "interrupted" and turn.content
        assert "killed by SIGKILL" in turn.stats["error"]
        saved = next(m for m in app.store.messages(chat.conversation_id) if m.id == message_id)
        assert (saved.status, saved.content) == ("interrupted", turn.content)
        assert "killed by SIGKILL" in saved.stats["error"]
        screen = screen_text(app)
        assert "interrupted (the engine process ended)" in screen
        notice = str(app.engine_notice.message)
        assert "killed by SIGKILL" in notice and f"F6 loads {chatty_chatglm3.name} (fp32) again" in notice
        assert "killed by SIGKILL" in screen and "F6 loads" in screen  # on screen, not only in a toast

        # reload with the key the notice named; a new reply streams in the same conversation
        await reload_and_reply(pilot, app)
        # os.abort (SIGABRT) in the engine: faulthandler's line from its log names the fault
        turn, _ = await interrupted_by(pilot, app, signal.SIGABRT)
        assert turn.status == "interrupted"
        assert "Fatal Python error: Aborted" in turn.stats["error"]
        assert "Fatal Python error: Aborted" in str(app.engine_notice.message)
        # the Models pane shows the log's last lines: the fault, in the log of the process that had it
        await pilot.press("f2", "f2")  # chat -> history -> models
        await wait_for(pilot, lambda: app.focused is app.models_pane.option_list, what="the models list")
        box = app.models_pane.query_one("#engine-log")
        assert not box.display
        await pilot.press("l")
        await wait_for(pilot, lambda: box.display and "Fatal Python error: Aborted" in screen_text(app),
                       what="the engine log on screen")
        assert str(app.engine.last_exit.log_path) in str(box.render())
        await pilot.press("l")
        await wait_for(pilot, lambda: not box.display, what="the log to hide")

        await reload_and_reply(pilot, app)
        chat.apply_settings("", {"max_new_tokens": 8})
        reply = await send(pilot, app, "and now?")
        assert reply.status == "complete" and reply.text
        await wait_for(pilot, lambda: [t.status for t in chat.turns if t.role == "assistant"]
                       == ["interrupted", "interrupted", "complete"], what="the turns' statuses")


@pytest.mark.slow
async def test_a_hung_engine_is_shown_until_it_is_killed_from_the_tui(chatty_chatglm3, tmp_path):
    from fake_nvml import FakeNVML, gpu
    from glmtui.monitor import Sampler

    fake = FakeNVML([gpu()])  # NVML faked at the hardware edge; the host figures are real
    engine = EngineProcess(keep_spare=False, ping_interval=0.3, hang_after=2.0, log_dir=tmp_path / "logs")
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", default_params=LONG, sampler=Sampler(0.25, nvml=fake),
                 engine=engine)
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, timeout=LOAD_TIMEOUT, what="model load")

        # the monitor counts the engine's process as glmtui's own: its GPU row, its resident memory
        fake.gpus[0]["compute"] = [(engine.pid, 700 * 2**20), (4242, 100 * 2**20)]

        def engine_seen() -> bool:
            snap = app.monitor_pane.snapshot
            rows = {p.pid: p for p in snap.gpus[0].processes or ()} if snap is not None and snap.gpus else {}
            return (engine.pid in rows and rows[engine.pid].is_engine and not rows[4242].is_self
                    and snap.host.engine_pids == (engine.pid,) and snap.host.engine_rss > 50 * 2**20)

        await wait_for(pilot, engine_seen, timeout=30, what="the engine in the monitor")
        assert app.model.own_memory() == ("GPU", 700 * 2**20)  # what the unload note compares
        active = await start_reply(pilot, app, "tell me a story")

        async def shown_until_killed() -> None:
            await pilot.pause(3.0)  # it stays (no toast that times out)
            assert app.engine_notice.kind == "unresponsive" and "F7 kills it" in screen_text(app)

        await hung_then_killed(pilot, app, engine, active, shown_until_killed)
        assert "stopped from glmtui (F7)" in str(app.engine_notice.message)


@pytest.mark.slow
async def test_a_reply_gone_silent_on_an_idle_engine_is_shown_until_it_is_killed(chatty_chatglm3, tmp_path):
    """The hang the ping misses (the child's main thread still answers while its generation is stuck): no
    token for hang_after seconds while the engine's CPU is idle. Pings are left out (answered too late to
    count), so only this watch can name it."""
    from fake_nvml import FakeNVML, gpu
    from glmtui.monitor import Sampler

    engine = EngineProcess(keep_spare=False, ping_interval=0.3, hang_after=10_000.0, log_dir=tmp_path / "logs")
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", default_params=LONG,
                 sampler=Sampler(0.25, nvml=FakeNVML([gpu()])), engine=engine)
    app.model.hang.silent_after = 3.0
    async with app.run_test(size=(160, 48)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, timeout=LOAD_TIMEOUT, what="model load")
        active = await start_reply(pilot, app, "tell me a story")
        assert app.engine_notice.kind is None  # tokens coming: no hang

        async def named_as_silent() -> None:
            shown = screen_text(app)
            assert "and the engine's CPU idle" in shown and "F7 kills it" in shown
            assert re.search(r"no token for \d+ s", str(app.model.notice.message))

        await hung_then_killed(pilot, app, engine, active, named_as_silent)


# ------------------------------------------------------------------ the monitor counts the engine as glmtui's own

BUSY_ENGINE = "x = bytearray(160 * 2**20)\nwhile True:\n    x[0] = (x[0] + 1) % 256\n"  # resident, on a CPU


def test_the_sampler_counts_engine_processes_as_glmtuis_own():
    from fake_nvml import FakeNVML, gpu
    from glmtui.monitor import Sampler
    from glmtui.ui.monitor import render_snapshot

    MiB = 2**20
    engine = subprocess.Popen([sys.executable, "-c", BUSY_ENGINE])
    try:
        me = os.getpid()
        fake = FakeNVML([gpu(compute=[(me, 300 * MiB), (engine.pid, 900 * MiB), (4242, 500 * MiB)])])
        sampler = Sampler(nvml=fake, engine_pids=lambda: (me, engine.pid))  # the front end's own pid is left out
        first = sampler.sample()
        busy = psutil.Process(engine.pid)
        wait_until(lambda: busy.memory_info().rss >= 150 * MiB and busy.cpu_times().user >= 0.3, 30,
                   "the busy engine's 160 MiB written and some CPU time used", interval=0.1)
        snap = sampler.sample()
        row = {p.pid: p for p in snap.gpus[0].processes}
        assert row[engine.pid].is_self and row[engine.pid].is_engine
        assert row[me].is_self and not row[me].is_engine and not row[4242].is_self
        assert snap.gpus[0].self_used_bytes == 1200 * MiB  # glmtui's own: the front end and its engine
        host = snap.host
        assert host.engine_pids == (engine.pid,) and first.host.engine_pids == (engine.pid,)
        assert host.engine_rss >= 150 * MiB
        assert host.process_rss >= host.engine_rss + 20 * MiB  # this process counted too
        assert host.engine_cpu_percent > 5.0 and host.process_cpu_percent >= host.engine_cpu_percent

        text = "\n".join(line.plain for line in render_snapshot(snap, 60).renderables)
        assert f"{engine.pid} proc{engine.pid}" in text and "← glmtui engine" in text
        cpu_only = Sampler(nvml=None, engine_pids=lambda: [engine.pid])
        cpu_only.sample()
        text = "\n".join(line.plain for line in render_snapshot(cpu_only.sample(), 60).renderables)
        assert re.search(r"engine \d+(\.\d)? MiB · CPU \d+% · UI", text), text
    finally:
        engine.kill()
        engine.wait()
    assert sampler.sample().host.engine_pids == ()  # it ended: no longer counted


# ------------------------------------------------------------------ leaving after a signal

STUCK_EXIT = textwrap.dedent(
    """
    import asyncio, signal, sys, time
    sys.path[:0] = ["tests"]
    from helpers import FrozenSampler, host_only_snapshot
    from glmtui.ui.app import GlmApp

    async def main():
        app = GlmApp(mode="fp32", sampler=FrozenSampler(host_only_snapshot()))
        app.exit_watchdog = True  # as run_app sets it
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            app._driver.close = lambda: time.sleep(600)  # as seen with the terminal gone: close() never returns
            print("signalled", flush=True)
            app._exit_on_signal(signal.SIGHUP)
            await pilot.pause(0.1)  # leaving the block shuts the app down: Unmount, then driver.close()

    asyncio.run(main())
    """
)


@pytest.mark.slow  # runs glmtui in a subprocess
def test_after_a_signal_glmtui_leaves_even_when_the_terminal_driver_hangs(tmp_path):
    env = dict(os.environ, GLMTUI_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen([sys.executable, "-c", STUCK_EXIT], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "signalled", proc.stderr.read()
        signalled = time.monotonic()
        code = proc.wait(60)
        assert code == 128 + signal.SIGHUP
        print(f"left {time.monotonic() - signalled:.1f} s after the signal")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
