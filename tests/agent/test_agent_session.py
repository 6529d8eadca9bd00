"""Tool and interpreter turns: the model's text is scripted, the rest is real.

The scripted model streams its text the way the engine does (encoded with the
tiny ChatGLM3 tokenizer, role tokens included, decoded incrementally), and its
prompts are built by the real ChatGLM3Format; they are checked against
ChatGLM3's own layout (PROMPT.md, build_chat_input). Tools, the interpreter's
kernel and the parser are the real ones.
"""

from __future__ import annotations

import json
import sys

import pytest

from agent_helpers import ScriptedModel, block, call, chatglm3_prompt, tiny_png
from glmtui.agent.session import (
    IMAGE_MARK,
    Action,
    AgentSession,
    EngineSource,
    GenerationFailed,
    interpreter_observation,
    is_loopback,
    parse_reply,
)
from glmtui.agent.toolbox import Toolbox
from glmtui.config import default_paths
from glmtui.engine.events import ChatMessage, GenerationParams
from glmtui.engine.prompts import ChatGLM3Format

try:
    from glmtui.engine.tools import TOOL_SYSTEM_PROMPT
except ImportError:
    from glmtui.server import TOOL_SYSTEM_PROMPT


@pytest.fixture(scope="module")
def glm3(chatglm3_dir):
    return ChatGLM3Format(chatglm3_dir / "tokenizer.model")


def never(action):
    raise AssertionError(f"confirm must not be asked: {action}")


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text, kind, name", [
    ("It is 4.", "answer", ""),
    ("Python\n```python\nprint(1)\n```", "answer", ""),  # one word on a line, then code: an answer
    (call("calculate", expression="2+2"), "tool_call", "calculate"),
    ('calculate\n{"expression": "2+2"}', "tool_call", "calculate"),
    ("Sure.<|assistant|>calculate\n```python\ntool_call(expression='1')\n```", "tool_call", "calculate"),
    ("interpreter\n```python\nprint(1)\n```", "interpreter", "interpreter"),
    ("interpreter\nprint(1)", "malformed", "interpreter"),
    ('calculate\n{"expression": }', "malformed", "calculate"),
    ("calculate\n```python\ntool_call(expression=open('/etc/passwd').read())\n```", "malformed", "calculate"),
])
def test_parse_reply(text, kind, name):
    reply = parse_reply(text, {"calculate"})
    assert (reply.kind, reply.name) == (kind, name)


# ------------------------------------------------------------------ tools


@pytest.mark.slow
def test_builtin_tool_call_runs_after_confirmation_and_feeds_an_observation(glm3):
    model = ScriptedModel(glm3, [call("calculate", expression="(2 + 3) * 4"), "The answer is 20."])
    asked: list[Action] = []
    saved: list[ChatMessage] = []
    session = AgentSession(model, Toolbox.load(), confirm=lambda a: asked.append(a) or True, on_message=saved.append)
    steps = session.send("What is (2+3)*4?")
    assert [s.outcome for s in steps] == ["ran", "answer"]
    assert [(a.name, a.arguments, a.builtin) for a in asked] == [("calculate", {"expression": "(2 + 3) * 4"}, True)]
    observation = steps[0].observation
    assert json.loads(observation)["result"] == 20
    tools = session.tools
    expected = chatglm3_prompt(glm3, [
        ("system", "", TOOL_SYSTEM_PROMPT),
        ("user", "", "What is (2+3)*4?"),
        ("assistant", "calculate", '```python\ntool_call(expression="(2 + 3) * 4")\n```'),
        ("observation", "", observation),
    ], tools)
    assert model.prompts[1] == expected
    assert saved == session.messages and session.messages[-1] == ChatMessage("assistant", "The answer is 20.")


def test_builtins_auto_run_when_allowed(glm3):
    model = ScriptedModel(glm3, [call("convert_units", value=100, from_unit="C", to_unit="F"), "212 F."])
    session = AgentSession(model, Toolbox.load(), confirm=never, auto_run_builtins=True)
    steps = session.send("100 C in F?")
    assert json.loads(steps[0].observation)["result"] == pytest.approx(212.0)


def test_text_before_a_tool_segment_is_kept_as_its_own_turn(glm3):
    reply = "Let me compute.<|assistant|>" + call("calculate", expression="6*7")
    model = ScriptedModel(glm3, [reply, "42."])
    session = AgentSession(model, Toolbox.load(), auto_run_builtins=True)
    session.send("6*7?")
    obs = session.messages[4].content
    assert model.prompts[1] == chatglm3_prompt(glm3, [
        ("system", "", TOOL_SYSTEM_PROMPT),
        ("user", "", "6*7?"),
        ("assistant", "", "Let me compute."),
        ("assistant", "calculate", '```python\ntool_call(expression="6*7")\n```'),
        ("observation", "", obs),
    ], session.tools)


def _user_tool(name, code=None, **schema):
    folder = default_paths().config_dir / "tools"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": name, "description": name, "parameters": schema or {"type": "object", "properties": {}}}
    if code is not None:
        spec["command"] = [sys.executable, "-c", code]
    (folder / f"{name}.json").write_text(json.dumps(spec))


CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_user_tools_always_ask_and_a_declined_call_does_not_run(glm3, isolated_home, tmp_path):
    marker = tmp_path / "ran"
    _user_tool("weather", f"open({str(marker)!r}, 'w').write('x'); print('sunny')", **CITY)
    model = ScriptedModel(glm3, [call("weather", city="Paris"), "I was not allowed to look.",
                                 call("weather", city="Rome"), "Sunny in Rome."])
    decisions = iter([False, True])
    session = AgentSession(model, Toolbox.load(), confirm=lambda a: next(decisions), auto_run_builtins=True)
    first = session.send("Weather in Paris?")
    assert first[0].outcome == "declined" and "declined" in first[0].observation and not marker.exists()
    second = session.send("And Rome?")
    assert second[0].outcome == "ran" and second[0].observation.strip() == "sunny" and marker.exists()


def test_declared_only_tool_takes_the_result_the_user_types(glm3, isolated_home):
    _user_tool("lookup", None, **CITY)
    model = ScriptedModel(glm3, [call("lookup", city="Oslo"), "Noted."])
    session = AgentSession(model, Toolbox.load(), confirm=lambda a: True,
                           ask_result=lambda a: f"population of {a.arguments['city']}: 700k")
    steps = session.send("Oslo?")
    assert steps[0].observation == "population of Oslo: 700k"


@pytest.mark.parametrize("reply, why", [
    (call("launch_missiles", target="moon"), "no tool named 'launch_missiles'"),
    ('weather\n{"city": "Paris",}', "neither a JSON object"),
    ("weather\n```python\ntool_call(city=__import__('os').system('touch /tmp/x'))\n```", "neither a JSON object"),
    (call("weather", city=7), "'city' should be string"),
    (call("weather"), "lacks the required 'city'"),
])
def test_malformed_calls_are_shown_and_never_run(glm3, isolated_home, tmp_path, reply, why):
    marker = tmp_path / "ran"
    _user_tool("weather", f"open({str(marker)!r}, 'w').write('x')", **CITY)
    model = ScriptedModel(glm3, [reply, "Sorry."])
    session = AgentSession(model, Toolbox.load(), confirm=never)
    steps = session.send("Weather?")
    assert steps[0].outcome == "malformed" and why in steps[0].observation and "not run" in steps[0].observation
    assert not marker.exists()
    # the call stays in the conversation as the model wrote it, followed by the observation
    assert session.messages[-3].role == "assistant" and session.messages[-2].role == "observation"
    assert steps[-1].outcome == "answer"


def test_nothing_runs_when_execution_is_not_allowed(glm3):
    model = ScriptedModel(glm3, [call("calculate", expression="1+1"), "ok"])
    session = AgentSession(model, Toolbox.load(), confirm=never, auto_run_builtins=True, execution_allowed=False)
    steps = session.send("1+1?")
    assert steps[0].outcome == "blocked" and "not run" in steps[0].observation


def test_a_model_that_keeps_calling_stops_after_max_steps(glm3):
    model = ScriptedModel(glm3, [call("calculate", expression="1")] * 10)
    session = AgentSession(model, Toolbox.load(), auto_run_builtins=True, max_steps=3)
    assert len(session.send("loop")) == 3


def test_a_failed_generation_ends_the_turn_and_keeps_the_conversation(glm3):
    model = ScriptedModel(glm3, [GenerationFailed("the engine process ended (killed by SIGKILL)")])
    saved = []
    session = AgentSession(model, Toolbox.load(), on_message=saved.append)
    steps = session.send("hi")
    assert steps[0].outcome == "error" and "SIGKILL" in steps[0].result
    assert saved[-1] == ChatMessage("user", "hi")


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")


# ------------------------------------------------------------------ interpreter


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    pytest.importorskip("ipykernel", reason="the interpreter tests need ipykernel (pip install ipykernel)")
    from glmtui.agent.interpreter import CodeInterpreter

    ci = CodeInterpreter(tmp_path_factory.mktemp("data") / "interpreter", timeout=30, interrupt_grace=3)
    yield ci
    ci.shutdown()


def test_interpreter_blocks_run_after_confirmation_and_return_results(glm3, kernel):
    png = tiny_png()
    model = ScriptedModel(glm3, [
        "I will compute it.<|assistant|>" + block("x = sum(range(10))\nprint('sum is', x)"),
        block(f"from IPython.display import Image, display\ndisplay(Image(data=bytes.fromhex('{png.hex()}')))"),
        "The sum is 45 and here is the image.",
    ])
    asked = []
    session = AgentSession(model, interpreter=kernel, confirm=lambda a: asked.append(a) or "always")
    steps = session.send("Sum 0..9 and draw")
    assert [s.outcome for s in steps] == ["ran", "ran", "answer"]
    assert len(asked) == 1 and asked[0].code == "x = sum(range(10))\nprint('sum is', x)"  # "always" for the rest
    assert steps[0].observation == "```result\nsum is 45\n```"
    assert steps[1].observation == f"```result\n{IMAGE_MARK}\n```"
    assert steps[1].result.images[0].read_bytes() == png
    assert model.prompts[1] == chatglm3_prompt(glm3, [
        ("system", "", session.messages[0].content),
        ("user", "", "Sum 0..9 and draw"),
        ("assistant", "", "I will compute it."),
        ("assistant", "interpreter", "```python\nx = sum(range(10))\nprint('sum is', x)\n```"),
        ("observation", "", "```result\nsum is 45\n```"),
    ])
    assert str(kernel.workdir) in session.messages[0].content


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
def test_interpreter_bad_input_is_shown_and_the_conversation_goes_on(glm3, kernel):
    model = ScriptedModel(glm3, [
        block("while True: pass"),
        block("print('y' * 200_000)"),
        block("import os\nos._exit(1)"),
        "interpreter\nprint('no fence')",
        "Done.",
    ])
    session = AgentSession(model, interpreter=kernel, allow_interpreter=True)
    kernel.timeout = 2
    try:
        steps = session.send("misbehave")
    finally:
        kernel.timeout = 30
    assert [s.outcome for s in steps] == ["ran", "ran", "ran", "malformed", "answer"]
    assert "stopped: no result within 2 s" in steps[0].observation
    assert steps[1].observation.endswith("more not shown\n```") and len(steps[1].observation) < 70_000
    assert "the kernel died (exit code 1)" in steps[2].observation
    assert "no code block" in steps[3].observation
    assert [m.role for m in session.messages].count("observation") == 4


@pytest.mark.slow  # over ~2 s on an idle machine: the fast loop keeps the room's other tests
def test_a_kernel_that_cannot_start_is_told_to_the_model_and_the_turn_goes_on(glm3, tmp_path, monkeypatch):
    """A broken kernel install (here: an ipykernel_launcher that exits at once, found first on PYTHONPATH):
    the block is not run, the model is told why, the conversation goes on; nothing waits forever."""
    pytest.importorskip("ipykernel", reason="the interpreter tests need ipykernel (pip install ipykernel)")
    from glmtui.agent.interpreter import CodeInterpreter

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ipykernel_launcher.py").write_text("import sys\nsys.exit('no kernel here')\n")
    monkeypatch.setenv("PYTHONPATH", str(broken))
    interpreter = CodeInterpreter(tmp_path / "interpreter", timeout=10)
    saved = []
    model = ScriptedModel(glm3, [block("print(1)"), "I could not run it."])
    session = AgentSession(model, interpreter=interpreter, allow_interpreter=True, on_message=saved.append)
    try:
        steps = session.send("run it")
    finally:
        interpreter.shutdown()
    assert [s.outcome for s in steps] == ["unavailable", "answer"]
    assert steps[0].observation.startswith("the code was not run: the kernel did not start")
    assert [m.role for m in saved] == ["system", "user", "assistant", "observation", "assistant"]


def test_interpreter_observation_layout():
    assert interpreter_observation("", ["a.png"]) == f"```result\n{IMAGE_MARK}\n```"
    assert interpreter_observation("1", []) == "```result\n1\n```"


# ------------------------------------------------------------------ a real engine as the source


@pytest.mark.slow
def test_engine_source_drives_the_tiny_model(chatglm3_dir):
    from engine_helpers import start_worker
    from glmtui.engine.events import Loaded

    worker, log = start_worker()
    try:
        assert isinstance(log.wait(worker.load(str(chatglm3_dir), "fp32")), Loaded)
        params = GenerationParams(max_new_tokens=6, temperature=0)
        streamed = []
        session = AgentSession(EngineSource(worker, params, timeout=120), Toolbox.load(), confirm=lambda a: False,
                               on_text=streamed.append, max_steps=1)
        steps = session.send("hi")
        assert len(steps) == 1 and session.messages[2].role == "assistant"
        # the same prompt sent directly: the session streamed exactly the model's reply
        direct = log.wait(worker.generate(session.messages[:2], params, tools=session.tools))
        assert "".join(streamed) == direct.text
    finally:
        worker.shutdown()
