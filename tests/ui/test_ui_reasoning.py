"""The TUI on the tiny GLM-Z1 (its prompt opens <think>): the reasoning streams into a dimmed block
above the answer, folds when the answer starts, t on the selected reply opens it, and it is kept."""

from __future__ import annotations

import pytest

from glmtui.ui.app import GlmApp
from glmtui.ui.reasoning import ReasoningBlock
from helpers import screen_text, wait_for

#: prompts whose greedy reply on the tiny model closes its block and goes on (the first that does is used)
PROMPTS = ("question 11", "question 13", "question 18", "question 30")


@pytest.fixture(autouse=True)
def in_process_engine(monkeypatch):
    monkeypatch.setattr(GlmApp, "LOCAL_ENGINE", "thread")


@pytest.mark.slow
async def test_reasoning_streams_open_then_folds_and_t_toggles_it(inside_dir, quiet_sampler, isolated_home,
                                                                   monkeypatch):
    states: list[tuple[bool, bool]] = []  # (streaming, folded) at every render of a block
    render = ReasoningBlock._render_all

    def recording(self):
        states.append((self.streaming, self.folded))
        render(self)

    monkeypatch.setattr(ReasoningBlock, "_render_all", recording)
    app = GlmApp(model=str(inside_dir), mode="fp32", default_params={"temperature": 0.0, "max_new_tokens": 30},
                 sampler=quiet_sampler)
    async with app.run_test(size=(100, 40)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="load")
        chat = app.chat_pane
        for prompt in PROMPTS:
            states.clear()
            assert await chat.send(prompt)
            await wait_for(pilot, lambda: chat.active is None, what="reply end")
            widget = chat.turns[-1].widget
            if widget.text.strip():
                break
        assert widget.reasoning and widget.text.strip(), "no prompt made the tiny model close its block"
        block = widget.reasoning_block
        assert (True, False) in states  # shown open while it streamed
        assert block.folded and not block.streaming and states[-1] == (False, True)  # folded once the answer began
        await pilot.pause()
        assert "▸ Reasoning" in screen_text(app)
        assert not block.query_one(".reasoning-body").display

        # stored apart from the answer
        messages = app.store.messages(chat.conversation_id)
        assert (messages[-1].content, messages[-1].reasoning) == (widget.text, widget.reasoning)
        # only the answer goes back to the model
        assert all(m.content != widget.reasoning for m in chat._conversation_messages())

        # t on the selected reply opens it in full, t again folds it
        chat.input.focus()
        await pilot.press("ctrl+up")
        await pilot.pause()
        assert chat.messages_view.selected is widget
        await pilot.press("t")
        await pilot.pause()
        assert not block.folded and block.query_one(".reasoning-body").display
        assert "▾ Reasoning" in screen_text(app)
        await pilot.press("t")
        await pilot.pause()
        assert block.folded

        # the conversation opened again from the history: the reasoning is there, folded
        cid = chat.conversation_id
        assert await chat.show_conversation(None)
        assert await chat.show_conversation(cid)
        await pilot.pause()
        again = chat.turns[-1].widget
        assert again.reasoning == widget.reasoning and again.reasoning_block.folded


@pytest.mark.slow
async def test_a_reply_cut_off_while_thinking_keeps_its_reasoning_open(inside_dir, quiet_sampler,
                                                                        isolated_home):
    app = GlmApp(model=str(inside_dir), mode="fp32", default_params={"temperature": 0.0, "max_new_tokens": 6},
                 sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="load")
        chat = app.chat_pane
        assert await chat.send("hello")
        await wait_for(pilot, lambda: chat.active is None, what="reply end")
        widget = chat.turns[-1].widget
        assert widget.reasoning and not widget.text  # 6 tokens: still thinking
        await pilot.pause()
        block = widget.reasoning_block
        assert not block.folded and block.query_one(".reasoning-body").display
