"""Helpers every room's tests share: a free port, waiting on a condition, a frozen monitor sampler, Pilot utilities.

Waits poll with a pause between checks (never a hot spin) and fail with what they waited for; their deadline is
wall-clock time, so a loaded machine gets the time it was given and no more.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, TypeVar

from glmtui.monitor import History, HostSnapshot, MonitorSnapshot

T = TypeVar("T")
GiB = 2**30
MiB = 2**20
#: greedy and short: replies that are the same on every run
GREEDY = {"temperature": 0.0, "max_new_tokens": 24}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; closed again before returning)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _timeout_message(timeout: float, what: str | Callable[[], str]) -> str:
    return f"timed out after {timeout:g} s waiting for {what() if callable(what) else what}"


def _checks(condition: Callable[[], T], timeout: float, what: str | Callable[[], str],
            interval: float) -> Generator[None, None, T]:
    """The loop both waits share: checks ``condition``, yields where the caller pauses ``interval`` seconds,
    returns its first truthy value; AssertionError naming ``what`` once ``timeout`` has passed."""
    assert interval > 0, "a wait pauses between checks"
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_message(timeout, what))
        yield


def wait_until(condition: Callable[[], T], timeout: float = 30.0, what: str | Callable[[], str] = "condition",
               interval: float = 0.05) -> T:
    """condition()'s first truthy value, checked every ``interval`` seconds; AssertionError naming ``what``
    (a string, or a function that describes the state at the timeout) when ``timeout`` passes first."""
    checks = _checks(condition, timeout, what, interval)
    try:
        while True:
            next(checks)
            time.sleep(interval)
    except StopIteration as done:
        return done.value


async def wait_until_async(condition: Callable[[], T], timeout: float = 30.0,
                           what: str | Callable[[], str] = "condition", interval: float = 0.05,
                           pause: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> T:
    """wait_until on an event loop: ``await pause(interval)`` between checks (asyncio.sleep, or a Pilot's pause)."""
    checks = _checks(condition, timeout, what, interval)
    try:
        while True:
            next(checks)
            await pause(interval)
    except StopIteration as done:
        return done.value


async def wait_for(pilot, condition: Callable[[], T], timeout: float = 60.0,
                   what: str | Callable[[], str] = "condition", interval: float = 0.05) -> T:
    """wait_until for a Textual app under Pilot: the app runs (and repaints) between checks."""
    return await wait_until_async(condition, timeout, what, interval, pause=pilot.pause)


# The wait of a TUI script run as `python -c` (the app in a process of its own, no pytest there): put in
# front of the script, which then waits with `await until(pilot, condition, what)`.
SCRIPT_UNTIL = """
async def until(pilot, condition, what, timeout=240.0):
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        await pilot.pause(0.1)
    raise SystemExit(f"timed out waiting for {what}")
"""


def wait_http_ok(url: str, proc=None, timeout: float = 120.0, output: Callable[[], str] | None = None) -> None:
    """Until GET ``url`` answers 200 (a server process is up); fails at once, with ``output()``, if ``proc``
    (a Popen) exits first."""
    import httpx

    def ok() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}): {output() if output else ''}")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ok, timeout, lambda: f"{url} to answer 200: {output() if output else ''}", interval=0.3)


# ------------------------------------------------------------------ the monitor without hardware


class FrozenSampler:
    """A monitor sampler that always returns one snapshot (the app's monitor shows fixed figures)."""

    interval = 1.0

    def __init__(self, snapshot: MonitorSnapshot) -> None:
        self.snapshot = snapshot

    def sample(self) -> MonitorSnapshot:
        return self.snapshot


def host_only_snapshot() -> MonitorSnapshot:
    """A machine without an NVIDIA GPU: 32 GiB of RAM, 12 GiB used."""
    return MonitorSnapshot(
        timestamp=0.0,
        nvml_state="no_gpu",
        message="no NVIDIA GPU (NVML Shared Library Not Found): host view only",
        driver_version=None,
        gpus=(),
        host=HostSnapshot(ram_total=32 * GiB, ram_used=12 * GiB, ram_available=19 * GiB,
                          process_rss=512 * MiB, cpu_percent=12.0, process_cpu_percent=3.0),
        torch=None,
        history=History(timestamps=(0.0, 1.0, 2.0), ram_used=(10 * GiB, 11 * GiB, 12 * GiB),
                        process_rss=(400 * MiB, 450 * MiB, 512 * MiB)),
    )


# ------------------------------------------------------------------ driving the TUI under Pilot


async def type_text(pilot, text: str) -> None:
    for ch in text:
        await pilot.press("space" if ch == " " else ch)


def palette_first(app) -> str:
    """The first result listed by the open command palette, as text ("" while it lists none)."""
    from textual.command import CommandList, CommandPalette

    if not isinstance(app.screen, CommandPalette):
        return ""
    results = app.screen.query_one(CommandList)
    return str(results.get_option_at_index(0).prompt) if results.option_count else ""


def count_layouts(screen) -> list[int]:
    """A list that gains an entry each time ``screen`` lays itself out (Textual's private
    ``Screen._refresh_layout``, wrapped on this one screen object)."""
    layout = screen._refresh_layout
    layouts: list[int] = []

    def counted(*args, **kwargs):
        layouts.append(1)
        return layout(*args, **kwargs)

    screen._refresh_layout = counted
    return layouts


def notifications(app) -> list[str]:
    return [n.message for n in app._notifications]


def screen_text(app) -> str:
    """The screen as last composited, as plain text."""
    strips = app.screen._compositor.render_strips()
    return "\n".join("".join(seg.text for seg in strip) for strip in strips)


def stored(conversation_id: int, app):
    """What the app's own history file holds (through its connection: a second
    store opened in this process would mark the streaming row interrupted)."""
    return app.store.get_conversation(conversation_id), app.store.messages(conversation_id)


async def send(pilot, app, text: str):
    """Types ``text`` into the chat, presses Enter and waits for the reply to end; returns its widget."""
    chat = app.chat_pane
    chat.input.focus()
    await type_text(pilot, text)
    await pilot.press("enter")
    await wait_for(pilot, lambda: chat.active is not None or (chat.turns and chat.turns[-1].role == "assistant"),
                   what="reply start")
    await wait_for(pilot, lambda: chat.active is None, what="reply end")
    return chat.turns[-1].widget
