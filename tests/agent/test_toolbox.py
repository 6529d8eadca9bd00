"""Tools: built-ins (time, arithmetic without eval, units), user tool files, schema checks, commands."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from glmtui.agent.builtin_tools import MAX_INT_BITS, ToolError, calculate, convert_units, current_time
from glmtui.agent.capture import CappedText, human_bytes
from glmtui.agent.toolbox import Toolbox, schema_problem
from glmtui.config import default_paths

# ------------------------------------------------------------------ arithmetic


@pytest.mark.parametrize("expression, expected", [
    ("(2 + 3) * 4 ** 2 / 7", (2 + 3) * 4 ** 2 / 7),
    ("-7 // 2 + 7 % 3", -7 // 2 + 7 % 3),
    ("2 ** -2", 0.25),
    ("10 ** 300", 10 ** 300),
    ("1.5e3 - +2", 1498.0),
])
def test_calculate(expression, expected):
    assert calculate(expression)["result"] == expected


@pytest.mark.parametrize("expression, why", [
    ("__import__('os').system('touch /tmp/pwned')", "only numbers"),
    ("(1).__class__", "only numbers"),
    ("x + 1", "only numbers"),
    ("True + 1", "only numbers"),
    ("'a' * 3", "only numbers"),
    ("[1] * 3", "only numbers"),
    ("1 << 1000", "only numbers"),
    ("1 / 0", "division by zero"),
    ("2 ** 100000", "too large"),
    ("9 ** 9 ** 9", "too large"),
    ("(10 ** 1000) * (10 ** 1000)", "too large"),
    ("10.0 ** 400", "too large"),
    ("1e308 * 10", "finite"),
    ("(-8) ** 0.5", "not a real number"),
    ("1 +", "not an arithmetic"),
    ("(" * 400 + "1" + ")" * 400, "nested too deeply|longer"),
    ("1" * 600, "longer than"),
])
def test_calculate_refuses_without_running_anything(expression, why):
    started = time.perf_counter()
    with pytest.raises(ToolError, match=why):
        calculate(expression)
    assert time.perf_counter() - started < 2  # caps are checked before computing


def test_calculate_result_size_cap():
    big = 2 ** (MAX_INT_BITS - 2)
    assert calculate(f"2 ** {MAX_INT_BITS - 2} + 1")["result"] == big + 1
    assert calculate(f"2 ** {MAX_INT_BITS - 2} * 2")["result"] == big * 2
    with pytest.raises(ToolError, match="too large"):
        calculate(f"2 ** {MAX_INT_BITS - 2} * 16")
    with pytest.raises(ToolError, match="too large"):
        calculate(f"2 ** {MAX_INT_BITS - 1} + 2 ** {MAX_INT_BITS - 1}")  # one bit over, found after adding


# ------------------------------------------------------------------ time and units


def test_current_time_in_a_zone():
    value = current_time("Asia/Shanghai")
    moment = datetime.fromisoformat(value["datetime"])
    assert moment.utcoffset() == datetime.now(ZoneInfo("Asia/Shanghai")).utcoffset()
    assert abs((moment - datetime.now(ZoneInfo("UTC"))).total_seconds()) < 5
    assert datetime.fromisoformat(current_time()["datetime"]).tzinfo is not None
    with pytest.raises(ToolError, match="unknown time zone"):
        current_time("Mars/Olympus")
    with pytest.raises(ToolError, match="unknown time zone"):
        current_time("../../etc/passwd")


@pytest.mark.parametrize("value, source, target, expected", [
    (1, "km", "mi", 1000 / 1609.344),
    (100, "C", "F", 212.0),
    (32, "fahrenheit", "celsius", 0.0),
    (0, "K", "C", -273.15),
    (1, "GiB", "MB", 1024 ** 3 / 1e6),
    (8, "bit", "B", 1.0),
    (1, "lb", "kg", 0.45359237),
    (12, "inches", "ft", 1.0),
])
def test_convert_units(value, source, target, expected):
    assert convert_units(value, source, target)["result"] == pytest.approx(expected)


@pytest.mark.parametrize("args, why", [
    ((1, "km", "kg"), "cannot convert length"),
    ((1, "km", "parsec"), "unknown unit"),
    ((-300, "C", "K"), "absolute zero"),
])
def test_convert_units_refusals(args, why):
    with pytest.raises(ToolError, match=why):
        convert_units(*args)


# ------------------------------------------------------------------ schema checks


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "unit": {"type": "string", "enum": ["C", "F"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["city"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("arguments, problem", [
    ({"city": "Paris"}, None),
    ({"city": "Paris", "days": 3, "unit": "C", "tags": ["a"]}, None),
    ({}, "lacks the required 'city'"),
    ({"city": 3}, "'city' should be string"),
    ({"city": "P", "days": 2.5}, "'days' should be integer"),
    ({"city": "P", "days": True}, "'days' should be integer"),
    ({"city": "P", "unit": "K"}, "one of"),
    ({"city": "P", "tags": ["a", 1]}, r"tags'\[1\] should be string"),
    ({"city": "P", "extra": 1}, "unknown keys"),
])
def test_schema_problem(arguments, problem):
    found = schema_problem(arguments, SCHEMA)
    if problem is None:
        assert found is None
    else:
        assert found and __import__("re").search(problem, found), found


# ------------------------------------------------------------------ user tools


def _tools_dir():
    folder = default_paths().config_dir / "tools"
    folder.mkdir(parents=True)
    return folder


ECHO = [sys.executable, "-c", "import json,sys; a=json.load(sys.stdin); print('weather in', a['city'])"]


def test_user_tools_load_and_bad_files_are_reported(isolated_home):
    folder = _tools_dir()
    (folder / "weather.json").write_text(json.dumps({
        "type": "function",
        "function": {"name": "weather", "description": "Weather", "parameters": SCHEMA},
        "command": ECHO,
    }))
    (folder / "notes.json").write_text(json.dumps({"name": "lookup", "description": "declared only"}))
    (folder / "broken.json").write_text("{not json")
    (folder / "badname.json").write_text(json.dumps({"name": "rm -rf /"}))
    (folder / "badcommand.json").write_text(json.dumps({"name": "x", "command": "rm -rf /"}))
    (folder / "clash.json").write_text(json.dumps({"name": "calculate"}))
    box = Toolbox.load()
    assert {"current_time", "calculate", "convert_units", "weather", "lookup"} == set(box.tools)
    assert box.tools["weather"].runnable and not box.tools["lookup"].runnable
    assert box.tools["calculate"].builtin and not box.tools["weather"].builtin
    problems = "\n".join(box.problems)
    assert "broken.json: not JSON" in problems
    assert "badname.json" in problems and "badcommand.json" in problems
    assert "clash.json: 'calculate' is already defined by a built-in" in problems
    assert [s["name"] for s in box.schemas()][:3] == ["current_time", "calculate", "convert_units"]
    result = box.run("weather", {"city": "Paris"})
    assert result.ok and result.text.strip() == "weather in Paris"


@pytest.mark.parametrize("name, arguments, why", [
    ("rm", {}, "no tool named 'rm'"),
    ("calculate", "2+2", "not a JSON object"),
    ("calculate", {}, "lacks the required 'expression'"),
    ("calculate", {"expression": 4}, "should be string"),
    ("convert_units", {"value": "1", "from_unit": "m", "to_unit": "ft"}, "should be number"),
    ("current_time", {"zone": "UTC"}, "unexpected keyword"),
])
def test_malformed_calls_are_never_run(name, arguments, why):
    result = Toolbox.load().run(name, arguments)
    assert result.kind == "malformed" and why in result.text and "not run" in result.text


def test_builtin_errors_are_results():
    result = Toolbox.load().run("calculate", {"expression": "1/0"})
    assert result.kind == "error" and "division by zero" in result.text
    assert json.loads(Toolbox.load().run("calculate", {"expression": "6*7"}).text)["result"] == 42


def _command_tool(folder, name, code, **extra):
    (folder / f"{name}.json").write_text(json.dumps({"name": name, "command": [sys.executable, "-c", code], **extra}))


def test_command_timeout_output_cap_and_failures(isolated_home):
    folder = _tools_dir()
    _command_tool(folder, "forever", "import time\nwhile True: time.sleep(0.1)", timeout=1)
    _command_tool(folder, "flood", "import sys\nfor _ in range(161): sys.stdout.write('x' * 65536)")
    _command_tool(folder, "fails", "import sys; print('bad input'); sys.exit(3)")
    (folder / "missing.json").write_text(json.dumps({"name": "missing", "command": ["/nonexistent/prog"]}))
    box = Toolbox.load()
    started = time.perf_counter()
    result = box.run("forever", {})
    assert result.kind == "error" and "no result within 1 s" in result.text
    assert time.perf_counter() - started < 15
    flood = box.run("flood", {})
    assert flood.ok and flood.text.startswith("x" * 1000)
    assert flood.text.endswith("… 10 MB more not shown") and len(flood.text) < 70_000
    failed = box.run("fails", {})
    assert failed.kind == "error" and "exit code 3" in failed.text and "bad input" in failed.text
    missing = box.run("missing", {})
    assert missing.kind == "error" and "cannot start" in missing.text


def test_capped_text_keeps_whole_characters():
    capped = CappedText(limit=10)
    capped.add("好" * 5)  # 15 bytes
    capped.add("more")
    assert capped.text == "好" * 3 and capped.dropped == 6 + 4
    assert capped.render() == "好好好\n… 10 bytes more not shown"
    assert human_bytes(100 * 1024 * 1024) == "100 MB"
