"""What a streamed reply costs the UI thread: at most one Markdown render of the reply per frame, and frames
spaced out while they cost the UI thread more than its share of a core."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from textual.widgets import Markdown

from glmtui.ui.app import GlmApp
from glmtui.ui.bridge import STREAM_FRAME, STREAM_FRAME_MAX, STREAM_UI_SHARE, EngineBridge
from helpers import send, wait_for


@pytest.mark.slow
async def test_a_reply_is_rendered_at_most_once_a_frame(chatty_chatglm3, quiet_sampler, monkeypatch):
    appends = []
    append = Markdown.append  # the reply's ReplyMarkdown appends through it

    def counted(self, markdown):
        appends.append(len(markdown))
        return append(self, markdown)

    monkeypatch.setattr(Markdown, "append", counted)
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", local_engine="thread", sampler=quiet_sampler,
                 default_params={"temperature": 0.0, "max_new_tokens": 300})
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        started = time.monotonic()
        reply = await send(pilot, app, "tell me a long story")
        seconds = time.monotonic() - started
        assert reply.stats["completion_tokens"] == 300
        # one Markdown parse and layout per frame, however many tokens arrived in it (vs one per token)
        assert 1 <= len(appends) <= seconds / STREAM_FRAME + 2, (len(appends), seconds)


def test_frames_are_spaced_out_while_they_cost_the_ui_thread_more_than_its_share():
    bridge = SimpleNamespace(_frame_clock=(0.0, 0.0))
    assert EngineBridge._next_frame(bridge) == STREAM_FRAME  # a reply's first frame
    busy = time.thread_time() + 2 * STREAM_FRAME_MAX * STREAM_UI_SHARE
    while time.thread_time() < busy:  # a frame that took twice the UI's share of the longest interval
        pass
    assert EngineBridge._next_frame(bridge) == STREAM_FRAME_MAX
    assert EngineBridge._next_frame(bridge) == STREAM_FRAME  # a cheap frame: back to the shortest interval
