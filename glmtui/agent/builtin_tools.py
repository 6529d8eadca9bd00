"""Built-in tools that cannot harm the machine: the time, arithmetic, unit conversion.

They read nothing from disk or network and write nothing. Arithmetic walks the
parsed expression itself (numbers and + - * / // % ** only) with caps on the
size of numbers, so no expression can run code or exhaust memory; ``eval`` is
never used.
"""

from __future__ import annotations

import ast
import math
import operator
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any, Callable


class ToolError(ValueError):
    """A tool could not do what it was asked (shown to the model as the result)."""


# ------------------------------------------------------------------ time


def current_time(timezone: str = "") -> dict:
    """The current date and time in an IANA zone ("Europe/Paris", "UTC"); local time when empty."""
    if timezone:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            hint = "use an IANA name such as 'Europe/Paris' or 'UTC'"
            raise ToolError(f"unknown time zone {timezone!r} ({hint})") from None
        now = datetime.now(zone)
    else:
        now = datetime.now(dt_timezone.utc).astimezone()
    return {
        "datetime": now.isoformat(timespec="seconds"),
        "timezone": timezone or (now.tzname() or "local"),
        "weekday": now.strftime("%A"),
    }


# ------------------------------------------------------------------ arithmetic

MAX_EXPRESSION_CHARS = 500
MAX_INT_BITS = 4096  # about 1,233 decimal digits
MAX_EXPONENT = 10_000

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _bits(value) -> int:
    return abs(value).bit_length() if isinstance(value, int) else 0


def _check_size(left, op, right) -> None:
    """Refuse before computing what would be too large to hold or print."""
    if isinstance(op, ast.Pow):
        if abs(right) > MAX_EXPONENT:
            raise ToolError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
        # The power has at least (bits - 1) * exponent + 1 bits and at most twice that.
        if isinstance(left, int) and isinstance(right, int) and right > 0 and (_bits(left) - 1) * right >= MAX_INT_BITS:
            raise ToolError("the result would be too large")
    elif isinstance(op, ast.Mult) and _bits(left) + _bits(right) > MAX_INT_BITS + 1:
        raise ToolError("the result would be too large")


def _evaluate(node):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        _check_size(left, node.op, right)
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large for a floating-point number") from None
        if isinstance(value, complex):
            raise ToolError("the result is not a real number")
        if _bits(value) > MAX_INT_BITS:
            raise ToolError("the result would be too large")
        return value
    what = type(node).__name__
    raise ToolError(f"only numbers, parentheses and + - * / // % ** are allowed (found {what})")


def calculate(expression: str) -> dict:
    """The value of an arithmetic expression such as ``(2 + 3) * 4 ** 2 / 7``."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        value = _evaluate(tree)
    except SyntaxError:
        raise ToolError("not an arithmetic expression") from None
    except (RecursionError, MemoryError):
        raise ToolError("the expression is nested too deeply") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    return {"expression": expression, "result": value}


# ------------------------------------------------------------------ units

# Factors to the base unit of each quantity (metre, kilogram, byte).
_LINEAR = {
    "length": {
        "m": 1.0, "km": 1000.0, "cm": 0.01, "mm": 0.001, "um": 1e-6, "nm": 1e-9,
        "mi": 1609.344, "yd": 0.9144, "ft": 0.3048, "in": 0.0254, "nmi": 1852.0,
    },
    "mass": {
        "kg": 1.0, "g": 0.001, "mg": 1e-6, "t": 1000.0,
        "lb": 0.45359237, "oz": 0.028349523125, "st": 6.35029318,
    },
    "data": {
        "bit": 0.125, "B": 1.0, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15,
        "KiB": 1024.0, "MiB": 1024.0**2, "GiB": 1024.0**3, "TiB": 1024.0**4, "PiB": 1024.0**5,
    },
}
_ALIASES = {
    "meter": "m", "metre": "m", "meters": "m", "metres": "m", "kilometer": "km", "kilometre": "km",
    "kilometers": "km", "centimeter": "cm", "millimeter": "mm", "mile": "mi", "miles": "mi", "yard": "yd",
    "yards": "yd", "foot": "ft", "feet": "ft", "inch": "in", "inches": "in", "μm": "um",
    "kilogram": "kg", "kilograms": "kg", "gram": "g", "grams": "g", "tonne": "t", "pound": "lb", "pounds": "lb",
    "lbs": "lb", "ounce": "oz", "ounces": "oz", "stone": "st",
    "byte": "B", "bytes": "B", "bits": "bit", "KB": "kB",
    "celsius": "C", "°C": "C", "fahrenheit": "F", "°F": "F", "kelvin": "K",
}
_TEMPERATURE = ("C", "F", "K")


def _unit(name: str) -> tuple[str, str]:
    """(quantity, canonical unit name) for a unit as a user or model writes it."""
    raw = name.strip()
    for candidate in (raw, _ALIASES.get(raw), _ALIASES.get(raw.lower())):
        if not candidate:
            continue
        if candidate in _TEMPERATURE:
            return "temperature", candidate
        for quantity, table in _LINEAR.items():
            if candidate in table:
                return quantity, candidate
    lowered = {u.lower(): (q, u) for q, table in _LINEAR.items() for u in table if q != "data"}
    if raw.lower() in lowered:
        return lowered[raw.lower()]
    if raw.upper() in _TEMPERATURE:
        return "temperature", raw.upper()
    raise ToolError(f"unknown unit {name!r}")


def _to_kelvin(value: float, unit: str) -> float:
    return {"C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15, "K": value}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"C": value - 273.15, "F": (value - 273.15) * 9 / 5 + 32, "K": value}[unit]


def convert_units(value: float, from_unit: str, to_unit: str) -> dict:
    """``value`` in ``from_unit`` expressed in ``to_unit`` (length, mass, temperature, data sizes)."""
    source_quantity, source = _unit(from_unit)
    target_quantity, target = _unit(to_unit)
    if source_quantity != target_quantity:
        raise ToolError(f"cannot convert {source_quantity} ({from_unit}) to {target_quantity} ({to_unit})")
    if not math.isfinite(value):
        raise ToolError("the value is not a finite number")
    if source_quantity == "temperature":
        kelvin = _to_kelvin(value, source)
        if kelvin < 0:
            raise ToolError("the temperature is below absolute zero")
        result = _from_kelvin(kelvin, target)
    else:
        table = _LINEAR[source_quantity]
        result = value * table[source] / table[target]
    return {"value": value, "from": source, "to": target, "result": round(result, 12)}


# name -> (function, description, JSON Schema of its arguments)
BUILTINS: dict[str, tuple[Callable[..., dict], str, dict]] = {
    "current_time": (
        current_time,
        "Get the current date and time, in a given IANA time zone or the machine's local time.",
        {
            "type": "object",
            "properties": {"timezone": {"type": "string", "description": "IANA name, e.g. 'Asia/Shanghai'; "
                                                                          "empty for local time"}},
            "required": [],
        },
    ),
    "calculate": (
        calculate,
        "Evaluate an arithmetic expression with numbers, parentheses and + - * / // % **.",
        {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. '(2 + 3) * 4 ** 2'"}},
            "required": ["expression"],
        },
    ),
    "convert_units": (
        convert_units,
        "Convert a value between units of length, mass, temperature (C, F, K) or data size (B, kB, MiB...).",
        {
            "type": "object",
            "properties": {
                "value": {"type": "number"},
                "from_unit": {"type": "string", "description": "e.g. 'km', 'lb', 'F', 'GiB'"},
                "to_unit": {"type": "string"},
            },
            "required": ["value", "from_unit", "to_unit"],
        },
    ),
}
