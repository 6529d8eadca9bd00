"""The engine -> UI bridge: GlmApp's half that takes the engine's events (on the engine's thread) to the UI.

The listener only posts: an :class:`EngineEvent` per event, and tokens coalesced into a buffer
with at most one :class:`TokensReady` queued. The model's events go to the ModelController, a
generation's to the chat and an open completion view.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Optional

from textual.message import Message

from glmtui.engine.events import Failed, Finished, Loaded, Started, Token

from .app_base import AppBase
from .compat import paint_updated_lines_only


class EngineEvent(Message):
    def __init__(self, event: Any) -> None:
        super().__init__()
        self.event = event


STREAM_FRAME = 0.1  # seconds between re-renders of a streaming reply, at the least
STREAM_FRAME_MAX = 0.25  # ... and at the most
# The share of a core the UI thread may use while a reply streams before its frames are spaced out (up to
# STREAM_FRAME_MAX): every frame lays out and paints in Python, and that CPU time is taken from the model's process.
STREAM_UI_SHARE = 0.1


def warm_reply_imports() -> None:
    """Import what the first reply's widgets need (Markdown, markdown-it: tens of ms of CPU).

    The first frame leaves them out (startup); run on a thread of its own once a model is loaded, so the
    first reply's mount, between Enter and its first token on screen, does not pay for them."""
    try:
        from textual.widgets.markdown import MarkdownStream  # noqa: F401 - imported to be cached, not used

        from . import copying, reply_markdown  # noqa: F401 - imported to be cached, not used
    except Exception:  # noqa: BLE001 - the first reply imports them again and shows what is wrong
        pass


class TokensReady(Message):
    """Streamed text is waiting in the app's token buffer (at most one of these is queued)."""


class EngineBridge(AppBase):
    """GlmApp's engine side: the listener, the token buffer, and where each event goes."""

    def _init_bridge(self) -> None:
        # A streamed frame repaints the reply's last lines (and the meter's tick its line): Textual rendered
        # every widget around them whole for it (the UI's CPU per token is taken from the model's core)
        paint_updated_lines_only()
        # Tokens from the worker wait here until the UI takes them all at once.
        self._token_lock = threading.Lock()
        self._token_buffer: list[tuple[tuple[int, bool], list[str]]] = []  # (request id, reasoning): texts
        self._tokens_posted = False
        self._frame_clock = (0.0, 0.0)  # (monotonic, this thread's CPU time) at the last streamed frame
        self._final_waiter: Optional[tuple[int, list, threading.Event]] = None
        self._reply_imports_warmed = False

    def warm_reply_imports(self) -> None:
        """Start warm_reply_imports on a thread, once (any thread: a model loaded, or the app idle after its first
        frame, before a stored conversation is opened)."""
        with self._token_lock:
            if self._reply_imports_warmed:
                return
            self._reply_imports_warmed = True
        threading.Thread(target=warm_reply_imports, name="glmtui-warm-imports", daemon=True).start()

    def _cancel_and_wait(self, request_id: int, timeout: float) -> Optional[Finished]:
        """Cancel a generation and wait (at most ``timeout`` s) for its Finished: quitting mid-reply."""
        waiter: tuple[int, list, threading.Event] = (request_id, [], threading.Event())
        self._final_waiter = waiter
        try:
            self.engine.cancel(request_id)
            waiter[2].wait(timeout)
        except Exception:  # noqa: BLE001 - an engine already gone
            pass
        finally:
            self._final_waiter = None
        return next((e for e in waiter[1] if isinstance(e, Finished)), None)

    def _engine_listener(self, event: Any) -> None:
        """Called on the worker thread: hand over, never block.

        Tokens are coalesced: they go into a buffer and at most one
        TokensReady message is queued at a time, so while the UI renders,
        later tokens pile up and are written in one go. One message and one
        Markdown write per token made the UI's share of the GIL slow the
        model itself (bench/bench_stream.py: 0.55 of plain generate).
        """
        waiter = self._final_waiter
        if waiter is not None and isinstance(event, (Finished, Failed)) and event.request_id == waiter[0]:
            waiter[1].append(event)
            waiter[2].set()
        self.model.engine_thread_event(event)  # the memory baseline of a load
        if isinstance(event, Loaded):  # a reply can be sent from now on: its widgets' imports, ahead of it
            self.warm_reply_imports()
        if isinstance(event, Token):
            with self._token_lock:
                run = (event.request_id, event.reasoning)  # a reasoning model's <think> text never joins its answer
                if self._token_buffer and self._token_buffer[-1][0] == run:
                    self._token_buffer[-1][1].append(event.text)
                else:
                    self._token_buffer.append((run, [event.text]))
                if self._tokens_posted:
                    return
                self._tokens_posted = True
            self.post_message(TokensReady())
            return
        self.post_message(EngineEvent(event))

    async def on_tokens_ready(self, message: TokensReady) -> None:
        await self._write_buffered_tokens()
        # Hold further TokensReady back for a frame: tokens pile up meanwhile and the
        # reply is re-rendered at most 1 / STREAM_FRAME times a second instead of once per token.
        # The event loop's own timer: a Textual Timer (a task of its own) cost ~0.13 ms of CPU a frame.
        asyncio.get_running_loop().call_later(self._next_frame(), self._release_tokens)

    def _next_frame(self) -> float:
        """Seconds until the next streamed frame: STREAM_FRAME, or longer when the UI thread spent more than
        STREAM_UI_SHARE of the last frame's time on the CPU (everything it did: layout, paint, meters, keys)."""
        now, cpu = time.monotonic(), time.thread_time()
        last_at, last_cpu = self._frame_clock
        self._frame_clock = (now, cpu)
        if now - last_at > 4 * STREAM_FRAME_MAX:  # a reply's first frame: nothing to go by
            return STREAM_FRAME
        return min(STREAM_FRAME_MAX, max(STREAM_FRAME, (cpu - last_cpu) / STREAM_UI_SHARE))

    async def _write_buffered_tokens(self) -> None:
        with self._token_lock:
            batch, self._token_buffer = self._token_buffer, []
        for (request_id, reasoning), parts in batch:
            await self._generation_event(Token(request_id, "".join(parts), reasoning=reasoning))

    async def _generation_event(self, event: Any) -> None:
        """A generation's event to the chat and to an open completion view (each takes its own requests)."""
        await self.chat_pane.on_generation_event(event)
        for screen in self.completion_screens():
            await screen.on_generation_event(event)

    def _release_tokens(self) -> None:
        with self._token_lock:
            pending = bool(self._token_buffer)
            self._tokens_posted = pending
        if pending:
            self.post_message(TokensReady())

    async def on_engine_event(self, message: EngineEvent) -> None:
        event = message.event
        if isinstance(event, (Finished, Failed)):
            await self._write_buffered_tokens()  # the reply's last tokens come before its end
        if isinstance(event, (Started, Token, Finished)):
            await self._generation_event(event)
        elif not self.model.handle(event) and isinstance(event, Failed):
            # a generation of ours; others (the --api server's clients) report to their clients
            await self._generation_event(event)
