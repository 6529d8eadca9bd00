"""The chat's Tool and Code modes driven by Textual's Pilot. The model's text is scripted (what a real
ChatGLM3 would say is what the behaviour depends on): encoded and streamed with the tiny ChatGLM3's
tokenizer, its prompts built by the real ChatGLM3Format. Parser, toolbox, Jupyter kernel, dialog,
chat pane and history file are the real ones."""

from __future__ import annotations

import json
import sys

import pytest

from agent_helpers import ScriptedModel, block, call, chatglm3_prompt, tiny_png
from glmtui.engine.prompts import ChatGLM3Format
from glmtui.engine.tools import TOOL_SYSTEM_PROMPT
from glmtui.ui.agent_view import CallMessage, ToolConfirmModal, execution_allowed
from glmtui.ui.app import GlmApp
from helpers import notifications, screen_text, type_text, wait_for


@pytest.fixture(autouse=True)
def in_process_engine(monkeypatch):
    monkeypatch.setattr(GlmApp, "LOCAL_ENGINE", "thread")


@pytest.fixture(scope="module")
def glm3(chatglm3_dir):
    return ChatGLM3Format(chatglm3_dir / "tokenizer.model")


def make_app():
    return GlmApp(sampler=None, monitor_interval=5.0)


async def ask(pilot, app, text):
    chat = app.chat_pane
    chat.input.focus()
    await type_text(pilot, text)
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.agent.busy or chat.turns, what="send")


async def answer_dialog(pilot, app, key):
    await wait_for(pilot, lambda: isinstance(app.screen, ToolConfirmModal), what="confirmation dialog")
    dialog = app.screen
    await pilot.press(key)
    return dialog


async def done(pilot, app):
    await wait_for(pilot, lambda: not app.agent.busy, what="the turns to end")
    await pilot.pause()


def saved(app):
    cid = app.chat_pane.conversation_id
    return app.store.get_conversation(cid), [(m.role, m.metadata, m.content) for m in app.store.messages(cid)]


def calls(app):
    return [t.widget for t in app.chat_pane.turns if isinstance(t.widget, CallMessage) and t.widget.has_class("-call")]


@pytest.mark.slow
async def test_tool_mode_confirm_deny_and_malformed_calls(glm3):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f10")
        assert app.agent.mode == "tool" and "Tool mode" in screen_text(app)
        model = app.agent.controller.source = ScriptedModel(glm3, [
            call("calculate", expression="(2 + 3) * 4"), "The answer is 20.",  # confirmed
            call("current_time", timezone="UTC"), "I was not allowed to look.",  # declined
            'calculate\n{"expression": }', "nosuch\n```python\ntool_call(x=1)\n```", "Sorry.",  # malformed
        ])
        await ask(pilot, app, "What is (2+3)*4?")
        dialog = await answer_dialog(pilot, app, "y")
        shown = dialog.action_shown
        assert shown.name == "calculate" and shown.arguments == {"expression": "(2 + 3) * 4"}
        await done(pilot, app)
        conv, messages = saved(app)
        assert conv.system_prompt == TOOL_SYSTEM_PROMPT
        observation = messages[2][2]
        assert json.loads(observation)["result"] == 20
        assert messages == [("user", "", "What is (2+3)*4?"),
                            ("assistant", "calculate", '```python\ntool_call(expression="(2 + 3) * 4")\n```'),
                            ("observation", "", observation), ("assistant", "", "The answer is 20.")]
        # the result went back as <|observation|> after the call, as ChatGLM3 lays it out
        assert model.prompts[1] == chatglm3_prompt(glm3, [
            ("system", "", TOOL_SYSTEM_PROMPT), ("user", "", "What is (2+3)*4?"),
            ("assistant", "calculate", '```python\ntool_call(expression="(2 + 3) * 4")\n```'),
            ("observation", "", observation)], app.agent.controller.toolbox.schemas())
        [first] = calls(app)
        assert first.outcome == "ran" and "calculate" in first.speaker
        assert "writing" not in screen_text(app)  # the status bar knows the turns ended
        assert [t.role for t in app.chat_pane.turns] == ["user", "assistant", "observation", "assistant"]

        # declined: nothing runs, the model is told, the conversation goes on
        await ask(pilot, app, "What time is it?")
        await answer_dialog(pilot, app, "n")
        await done(pilot, app)
        assert calls(app)[-1].outcome == "declined"
        _, messages = saved(app)
        assert messages[-2][0] == "observation" and "declined" in messages[-2][2]
        assert messages[-1] == ("assistant", "", "I was not allowed to look.")
        # the next prompt carried the whole conversation (the first exchange too)
        assert model.prompts[2][:len(model.prompts[1]) - 1] == model.prompts[1][:-1]

        # malformed: arguments that are not JSON, an unknown tool: shown as such, never asked, never run
        await ask(pilot, app, "Break it")
        await done(pilot, app)
        assert not isinstance(app.screen, ToolConfirmModal)
        assert [c.outcome for c in calls(app)[-2:]] == ["malformed", "malformed"]
        _, messages = saved(app)
        observations = [m[2] for m in messages if m[0] == "observation"][-2:]
        assert "malformed call to calculate" in observations[0] and "it was not run" in observations[0]
        assert "nosuch" in observations[1] and "calculate" in observations[1]  # names the tools there are
        assert messages[-1] == ("assistant", "", "Sorry.")
        assert "malformed" in screen_text(app)


@pytest.mark.slow
async def test_code_mode_runs_blocks_in_a_real_kernel_with_a_timeout(glm3):
    pytest.importorskip("ipykernel", reason="the code interpreter needs ipykernel")
    png = tiny_png()
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f10", "f10")
        assert app.agent.mode == "code" and "Code mode" in screen_text(app)
        controller = app.agent.controller
        controller.interpreter_timeout = 3
        controller.get_interpreter().interrupt_grace = 2
        controller.source = ScriptedModel(glm3, [
            block("x = 6 * 7\nprint('x is', x)"),
            block(f"from IPython.display import Image, display\ndisplay(Image(data=bytes.fromhex('{png.hex()}')))"),
            "x is 42, and a picture.",
            block("while True: pass"), "It took too long.",
        ])
        await ask(pilot, app, "Compute and draw")
        dialog = await answer_dialog(pilot, app, "a")  # this block, and every later one of this session
        assert dialog.action_shown.code == "x = 6 * 7\nprint('x is', x)"
        await done(pilot, app)
        conv, messages = saved(app)
        assert conv.system_prompt.startswith("You are an intelligent AI assistant, named ChatGLM3")
        assert [(m[0], m[1]) for m in messages] == [("user", ""), ("assistant", "interpreter"), ("observation", ""),
                                                    ("assistant", "interpreter"), ("observation", ""),
                                                    ("assistant", "")]
        assert messages[2][2] == "```result\nx is 42\n```"
        assert messages[4][2] == "```result\n【image】\n```"
        [image] = list(controller.interpreter.workdir.glob("*.png"))
        assert image.read_bytes() == png
        results = [t for t in app.chat_pane.turns if t.role == "observation"]
        assert str(image) in results[1].widget.text  # shown as a link with its path
        assert [c.outcome for c in calls(app)] == ["ran", "ran"]

        # a block that never ends is interrupted at the timeout; no dialog (allowed for the session)
        pid = controller.interpreter.pid
        await ask(pilot, app, "Loop")
        await done(pilot, app)
        _, messages = saved(app)
        assert "no result within 3 s" in messages[-2][2] and messages[-1][2] == "It took too long."

        # the palette's restart gives a fresh kernel
        await app.run_action("restart_kernel")
        await wait_for(pilot, lambda: controller.interpreter.pid not in (None, pid), timeout=60, what="restart")


@pytest.mark.slow  # over ~1.5 s quiet
async def test_nothing_runs_when_served_to_other_machines(glm3, monkeypatch):
    assert execution_allowed({}) and execution_allowed({"GLMTUI_WEB_HOST": "127.0.0.1"})
    assert not execution_allowed({"GLMTUI_WEB_HOST": "0.0.0.0"})
    monkeypatch.setenv("GLMTUI_WEB_HOST", "0.0.0.0")
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f10")
        app.agent.controller.source = ScriptedModel(glm3, [call("calculate", expression="1+1"), "Cannot."])
        await ask(pilot, app, "1+1?")
        await done(pilot, app)
        assert not isinstance(app.screen, ToolConfirmModal)
        assert calls(app)[-1].outcome == "blocked"
        _, messages = saved(app)
        assert "not run" in messages[2][2] and messages[-1][2] == "Cannot."


@pytest.mark.slow  # over ~1.5 s quiet
async def test_stop_ends_the_turns_and_keeps_what_was_said(glm3):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f10")
        app.agent.controller.source = ScriptedModel(glm3, [call("calculate", expression="2*2"), "never said"])
        await ask(pilot, app, "2*2?")
        await wait_for(pilot, lambda: isinstance(app.screen, ToolConfirmModal), what="dialog")
        app.agent.stop()  # Esc in the dialog declines; stopping from elsewhere (the app closing) too
        await done(pilot, app)
        assert not isinstance(app.screen, ToolConfirmModal)  # the dialog went with the send
        _, messages = saved(app)
        assert [m[0] for m in messages] == ["user", "assistant", "observation"]
        assert "declined" in messages[2][2]


@pytest.mark.slow
async def test_tool_mode_through_the_engine_streams_and_esc_stops(chatty_chatglm3):
    """Without a script: the tiny model (it never stops on its own) writes through the engine with the
    tools in its prompt; Esc cancels the generation and what was written is kept, marked stopped."""
    app = GlmApp(model=str(chatty_chatglm3), mode="fp32", sampler=None, monitor_interval=5.0,
                 default_params={"temperature": 0.0, "max_new_tokens": 5000})
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.loaded is not None, what="model load")
        await pilot.press("f10")
        await ask(pilot, app, "hi")
        chat = app.chat_pane
        await wait_for(pilot, lambda: len(chat.turns) == 2 and len(chat.turns[1].widget.text) > 20, what="text")
        assert "writing" in screen_text(app)
        await pilot.press("escape")
        await done(pilot, app)
        _, messages = saved(app)
        assert [m[0] for m in messages] == ["user", "assistant"]
        stored = app.store.messages(chat.conversation_id)[1]
        assert stored.status == "stopped" and len(stored.content) > 20
        assert app.engine.state != "generating"


async def test_builtins_auto_run_once_the_user_says_so(glm3):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await app.run_action("toggle_auto_tools")
        assert "auto_run_builtin_tools = true" in app.paths.config_file.read_text()
        await pilot.press("f10")
        app.agent.controller.source = ScriptedModel(glm3, [call("convert_units", value=100, from_unit="C",
                                                                to_unit="F"), "212 F."])
        await ask(pilot, app, "100 C in F?")
        await done(pilot, app)
        assert calls(app)[-1].outcome == "ran"  # no dialog was needed
        _, messages = saved(app)
        assert json.loads(messages[2][2])["result"] == pytest.approx(212.0)
    again = make_app()  # the setting is kept
    try:
        assert again.agent.controller.auto_run_builtins
    finally:
        again.store.close()


@pytest.mark.slow  # over ~1.5 s quiet
async def test_a_saved_tool_conversation_opens_with_its_calls_and_results(glm3):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f10")
        app.agent.controller.auto_run_builtins = True
        app.agent.controller.source = ScriptedModel(glm3, [call("calculate", expression="3*3"), "Nine."])
        await ask(pilot, app, "3*3?")
        await done(pilot, app)
        cid = app.chat_pane.conversation_id
        await app.run_action("new_chat")
        assert app.chat_pane.turns == []
        app.history_pane.post_message(app.history_pane.Open(cid))
        await wait_for(pilot, lambda: app.chat_pane.conversation_id == cid, what="reopened")
        await pilot.pause()
        chat = app.chat_pane
        assert [t.role for t in chat.turns] == ["user", "assistant", "observation", "assistant"]
        assert chat.turns[1].widget.has_class("-call") and "calculate" in chat.turns[1].widget.speaker
        assert '"result": 9' in chat.turns[2].widget.text and chat.turns[2].content.startswith("{")
        # continued in Tool mode, the model sees the earlier call and result with their roles
        app.agent.controller.source = model = ScriptedModel(glm3, ["Still nine."])
        await ask(pilot, app, "Sure?")
        await done(pilot, app)
        messages = [(m.role, m.metadata) for m in app.store.messages(cid)]
        assert messages == [("user", ""), ("assistant", "calculate"), ("observation", ""), ("assistant", ""),
                            ("user", ""), ("assistant", "")]
        obs = app.store.messages(cid)[2].content
        assert model.prompts[0] == chatglm3_prompt(glm3, [
            ("system", "", TOOL_SYSTEM_PROMPT), ("user", "", "3*3?"),
            ("assistant", "calculate", '```python\ntool_call(expression="3*3")\n```'),
            ("observation", "", obs), ("assistant", "", "Nine."), ("user", "", "Sure?")],
            app.agent.controller.toolbox.schemas())


def head(widget) -> str:
    return widget._head().plain  # private: the message's own head line, as drawn


@pytest.mark.slow
async def test_code_mode_bad_input_is_shown_as_what_it_is_and_saved(glm3, isolated_home):
    """100 MB of printing, a kernel that dies and a block that never ends: each call says how it ended,
    each result is saved, nothing hangs; the time limit comes from config.toml's [ui] interpreter_timeout."""
    pytest.importorskip("ipykernel", reason="the code interpreter needs ipykernel")
    config = isolated_home / "config" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[ui]\ninterpreter_timeout = 2\n")
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        controller = app.agent.controller
        assert controller.interpreter_timeout == 2
        await pilot.press("f10", "f10")
        assert "timeout 2 s" in " ".join(notifications(app))
        controller.get_interpreter().interrupt_grace = 2
        controller.source = ScriptedModel(glm3, [
            block("print('x' * (100 * 1024 * 1024))"),
            block("1 / 0"),
            block("import os\nos._exit(3)"),
            block("while True: pass"),
            "Done.",
        ])
        await ask(pilot, app, "Misbehave")
        await answer_dialog(pilot, app, "a")
        await done(pilot, app)
        assert [c.outcome for c in calls(app)] == ["ran", "raised", "died", "timeout"]
        heads = [head(c) for c in calls(app)]
        assert "✓ ran" in heads[0] and "raised an error" in heads[1] and "the kernel died" in heads[2]
        assert "time limit" in heads[3]
        _, messages = saved(app)
        results = [m[2] for m in messages if m[0] == "observation"]
        assert "MB more not shown" in results[0] and len(results[0]) < 70_000
        assert "ZeroDivisionError" in results[1]
        assert "the kernel died (exit code 3)" in results[2]
        assert "no result within 2 s" in results[3]
        assert messages[-1] == ("assistant", "", "Done.")
        # the kernel works in <data>/interpreter, a private folder
        workdir = controller.interpreter.workdir
        assert workdir == app.paths.data_dir / "interpreter" and workdir.stat().st_mode & 0o077 == 0


async def test_a_bad_interpreter_timeout_setting_is_reported_and_the_default_kept(isolated_home):
    config = isolated_home / "config" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[ui]\ninterpreter_timeout = "soon"\n')
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f10", "f10")  # Code mode, where it counts
        assert app.agent.controller.interpreter_timeout == 60
        assert any("interpreter_timeout" in n and "60 s" in n for n in notifications(app))


@pytest.mark.slow  # over ~1.5 s quiet
async def test_a_tool_that_fails_is_shown_as_failed(glm3, isolated_home):
    tools = isolated_home / "config" / "tools"
    tools.mkdir(parents=True)
    (tools / "flaky.json").write_text(json.dumps({
        "type": "function", "command": [sys.executable, "-c", "import sys; print('no luck'); sys.exit(2)"],
        "function": {"name": "flaky", "description": "fails", "parameters": {"type": "object", "properties": {}}}}))
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("f10")
        app.agent.controller.source = ScriptedModel(glm3, [call("flaky"), "It failed."])
        await ask(pilot, app, "Try it")
        await answer_dialog(pilot, app, "y")
        await done(pilot, app)
        [flaky] = calls(app)
        assert flaky.outcome == "failed" and "the tool failed" in head(flaky)
        _, messages = saved(app)
        assert messages[2][0] == "observation" and "exit code 2" in messages[2][2] and "no luck" in messages[2][2]
        assert messages[-1] == ("assistant", "", "It failed.")
