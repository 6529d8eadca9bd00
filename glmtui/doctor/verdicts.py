"""A doctor check's verdict and what the user asked for (which decides whether a failure fails the command)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

VERDICTS = ("ok", "warn", "fail")


@dataclass(frozen=True)
class Check:
    key: str
    title: str
    verdict: str  # "ok" | "warn" | "fail"
    detail: str  # what was found, one line
    fix: str = ""  # what to do, one line ("" when nothing to do)


@dataclass(frozen=True)
class Request:
    """What the user asked for: a failing check about these makes the exit code non-zero."""

    device: str = "auto"
    mode: Optional[str] = None
    model: Optional[str] = None

    @property
    def wants_cuda(self) -> bool:
        return self.device.startswith("cuda")
