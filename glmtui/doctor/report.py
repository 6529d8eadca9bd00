"""`glmtui doctor` on the command line: the verdicts as aligned text or JSON, and the exit code."""

from __future__ import annotations

import json
from dataclasses import asdict

from .probes import DEFAULT_TIMEOUT
from .runner import run_checks
from .verdicts import Check, Request


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.verdict == "fail" for c in checks) else 0


def summary(checks: list[Check]) -> str:
    fails = sum(c.verdict == "fail" for c in checks)
    warns = sum(c.verdict == "warn" for c in checks)
    if fails:
        return f"{fails} failed, {warns} warning{'s' if warns != 1 else ''}: see the fixes above"
    if warns:
        return f"everything needed works; {warns} warning{'s' if warns != 1 else ''}"
    return "everything checked works"


def format_text(checks: list[Check]) -> str:
    width = max(len(c.title) for c in checks) if checks else 0
    lines = []
    for c in checks:
        lines.append(f"{c.verdict:<4}  {c.title:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    lines.append(summary(checks))
    return "\n".join(lines)


def to_json(checks: list[Check]) -> dict:
    return {"checks": [asdict(c) for c in checks], "exit_code": exit_code(checks), "summary": summary(checks)}


def run_doctor(args) -> int:
    request = Request(device=getattr(args, "device", None) or "auto", mode=getattr(args, "mode", None),
                      model=getattr(args, "model", None))
    checks = run_checks(request, timeout=float(getattr(args, "timeout", None) or DEFAULT_TIMEOUT))
    if getattr(args, "json", False):
        print(json.dumps(to_json(checks), ensure_ascii=False, indent=2))
    else:
        print(format_text(checks))
    return exit_code(checks)
