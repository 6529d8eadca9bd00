"""The live meter under a streaming reply: prefill, tokens so far, tok/s, the context in use.

The state (:class:`ReplyMeterState`) takes the reply's events as they come and costs nothing
per token; the widget (:class:`ReplyMeter`) repaints itself from it on a timer at most
:data:`METER_HZ` times a second, never with a layout (its size is fixed): a long reply's
frames are not slowed by the meter.

Token counts: the engine's Token events carry text, not counts (the engine process merges a
run of tokens into one), so the count while streaming is estimated from the characters with
the ratio the last finished reply of the same model had (characters per token); it is shown
with "≈". The reply's footer then shows the engine's exact figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from rich.text import Text
from textual.timer import Timer
from textual.widget import Widget

METER_HZ = 4.0
MIN_RATE_SPAN = 0.05  # seconds of decode below which no rate is shown (two batches a few ms apart)
DEFAULT_CHARS_PER_TOKEN = 3.0  # before a reply of this model has finished (English ~4, Chinese ~1.5)
BAR_CELLS = 12


@dataclass
class ReplyMeterState:
    """One reply's figures so far; times are ``time.monotonic()``."""

    sent_at: float
    context_length: Optional[int] = None
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    started_at: Optional[float] = None  # the engine's Started: the prompt is tokenized, prefill runs
    prompt_tokens: Optional[int] = None
    cached_tokens: int = 0
    first_at: Optional[float] = None  # the first text arrived
    last_at: Optional[float] = None
    chars: int = 0
    chars_at_first: int = 0

    def started(self, prompt_tokens: int, cached_tokens: int = 0, now: Optional[float] = None) -> None:
        self.started_at = time.monotonic() if now is None else now
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = cached_tokens

    def text(self, fragment: str, now: Optional[float] = None) -> None:
        if not fragment:
            return
        now = time.monotonic() if now is None else now
        if self.first_at is None:
            self.first_at = now
            self.chars_at_first = len(fragment)
        self.last_at = now
        self.chars += len(fragment)

    @property
    def tokens(self) -> int:
        """Tokens written so far (estimated from the characters)."""
        if not self.chars:
            return 0
        return max(1, round(self.chars / self.chars_per_token))

    @property
    def rate(self) -> Optional[float]:
        """Tokens per second of decode since the first text; None over less than MIN_RATE_SPAN."""
        if self.first_at is None or self.last_at is None:
            return None
        span = self.last_at - self.first_at
        if span < MIN_RATE_SPAN:
            return None
        return (self.chars - self.chars_at_first) / self.chars_per_token / span

    @property
    def context_used(self) -> Optional[int]:
        if self.prompt_tokens is None:
            return None
        return self.prompt_tokens + self.tokens

    def describe(self, now: Optional[float] = None) -> Text:
        now = time.monotonic() if now is None else now
        line = Text()
        if self.first_at is None:
            if self.started_at is None:
                line.append(f"◌ waiting for the model {now - self.sent_at:.1f} s", style="yellow")
                return line
            line.append(f"◌ prefill {now - self.started_at:.1f} s", style="bold yellow")
            line.append(f" · {self.prompt_tokens:,} prompt tokens")
            if self.cached_tokens:
                line.append(f" ({self.cached_tokens:,} reused)", style="dim")
        else:
            line.append(f"● ≈{self.tokens:,} tokens", style="bold")
            rate = self.rate
            line.append(f" · {'≈%.1f' % rate if rate is not None else '…'} tok/s")
        used = self.context_used
        if used is not None:
            line.append("  context ")
            if self.context_length:
                line.append_text(context_bar(used, self.context_length))
                line.append(f" {used:,} / {self.context_length:,}")
            else:
                line.append(f"{used:,} tokens")
        return line


def context_bar(used: int, total: int, cells: int = BAR_CELLS) -> Text:
    """▕█████░░░░░░░▏ with eighths: the share of the context in use (red from 90%)."""
    share = max(0.0, min(1.0, used / total)) if total > 0 else 0.0
    eighths = round(share * cells * 8)
    full, part = divmod(eighths, 8)
    body = "█" * full + (" ▏▎▍▌▋▊▉"[part] if part and full < cells else "")
    style = "red" if share >= 0.9 else "yellow" if share >= 0.75 else "green"
    bar = Text("▕", style="dim")
    bar.append(body.ljust(cells, " "), style=f"{style} on grey23")
    bar.append("▏", style="dim")
    return bar


class ReplyMeter(Widget):
    """One line between the conversation and the prompt, shown while a reply is on its way."""

    DEFAULT_CSS = """
    ReplyMeter {
        display: none;
        height: 1;
        padding: 0 1;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    ReplyMeter.-shown { display: block; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.state: Optional[ReplyMeterState] = None
        self._timer: Optional[Timer] = None

    def start(self, state: ReplyMeterState) -> None:
        self.state = state
        self.add_class("-shown")
        if self._timer is None:
            self._timer = self.set_interval(1.0 / METER_HZ, self.refresh)
        self.refresh()

    def stop(self) -> None:
        """Hide; the last state stays readable (tests, the next reply's calibration)."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self.remove_class("-shown")

    def render(self) -> Text:
        return self.state.describe() if self.state is not None else Text()
