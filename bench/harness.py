"""Instrumentation shared by the UI benchmarks (bench_stream, bench_long_reply)."""

from __future__ import annotations

import time
from typing import Callable, Optional


async def type_prompt(pilot, chat, text: str) -> None:
    """Put ``text`` in the chat prompt and focus it, ready for Enter."""
    chat.input.load_text(text)
    chat.input.focus()
    await pilot.pause()


def hook_generation_events(chat, before: Optional[Callable] = None, after: Optional[Callable] = None) -> None:
    """Call ``before(event, now)`` / ``after(event, now)`` around this chat pane's handling of each
    generation event (the hook is on the instance only: the app itself is unchanged)."""
    handled = chat.on_generation_event

    async def on_generation_event(event) -> None:
        if before is not None:
            before(event, time.perf_counter())
        await handled(event)
        if after is not None:
            after(event, time.perf_counter())

    chat.on_generation_event = on_generation_event


async def end_run(pilot, app) -> None:
    """Stop the app's monitor sampling before the panes are torn down, and let queued samples drain."""
    app._monitor_stop.set()
    await pilot.pause(0.2)
