"""OrderedCalls: history calls run in the order they were asked for, whatever order their tasks start in."""

from __future__ import annotations

import asyncio

from glmtui.ui.chat_store import OrderedCalls


async def run_in_thread(call):
    return await asyncio.to_thread(call)


async def test_a_call_awaited_at_once_runs_after_the_background_calls_asked_for_before_it():
    calls = OrderedCalls(run_in_thread)
    ran: list[str] = []
    for n in range(3):  # a streaming reply's flushes: nobody waits for them
        calls.background(ran.append, f"flush {n}")
    # the reply's final save, awaited straight away: its task would otherwise reach a lock before theirs
    await calls.call(ran.append, "final")
    await calls.settled()
    assert ran == ["flush 0", "flush 1", "flush 2", "final"]


async def test_a_failing_call_does_not_stop_the_ones_after_it():
    async def run_store(call):
        try:
            return await asyncio.to_thread(call)
        except RuntimeError:
            return None  # the pane reports it and answers None

    calls = OrderedCalls(run_store)

    def broken():
        raise RuntimeError("disk full")

    calls.background(broken)
    assert await calls.call(lambda: "after") == "after"
