"""What the benchmarks share: the UI benches' instrumentation, equal-work models, alternating rounds,
per-round spreads and the machine's load before and after a run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional


async def type_prompt(pilot, chat, text: str) -> None:
    """Put ``text`` in the chat prompt and focus it, ready for Enter."""
    chat.input.load_text(text)
    chat.input.focus()
    await pilot.pause()


def hook_generation_events(chat, before: Optional[Callable] = None, after: Optional[Callable] = None) -> None:
    """Call ``before(event, now)`` / ``after(event, now)`` around this chat pane's handling of each
    generation event (the hook is on the instance only: the app itself is unchanged)."""
    handled = chat.on_generation_event

    async def on_generation_event(event) -> None:
        if before is not None:
            before(event, time.perf_counter())
        await handled(event)
        if after is not None:
            after(event, time.perf_counter())

    chat.on_generation_event = on_generation_event


async def end_run(pilot, app) -> None:
    """Stop the app's monitor sampling before the panes are torn down, and let queued samples drain."""
    app._monitor_stop.set()
    await pilot.pause(0.2)


# ---------------------------------------------------------------- fair comparisons


def spread(values) -> str:
    """``median (min-max)`` of a list of per-round figures."""
    import statistics

    values = list(values)
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def alternating(rounds: int, ways) -> list[tuple]:
    """The order of the ways in each round: forward in even rounds, backward in odd ones, so that neither
    side always runs first (warm caches, thermal state, a background job starting) ."""
    ways = tuple(ways)
    return [ways if r % 2 == 0 else ways[::-1] for r in range(rounds)]


class LoadWatch:
    """The machine's load before and after a benchmark, so a run under load is marked as such.

    Busy is the share of all CPUs in use over one idle second measured here (nothing of the bench runs
    then), plus the 1-minute load average. A run is marked under load when either sample found more than
    ``BUSY_LIMIT`` of the CPUs busy with other work.
    """

    BUSY_LIMIT = 20.0  # percent of all CPUs

    def __init__(self) -> None:
        self.samples: list[tuple[str, float, float]] = []

    def sample(self, when: str) -> str:
        import os

        import psutil

        busy = psutil.cpu_percent(interval=1.0)
        load1 = os.getloadavg()[0]
        self.samples.append((when, busy, load1))
        return f"machine load {when}: CPUs {busy:.0f}% busy over 1 s, load average {load1:.2f} ({os.cpu_count()} CPUs)"

    @property
    def under_load(self) -> bool:
        return any(busy > self.BUSY_LIMIT for _, busy, _ in self.samples)

    def verdict(self) -> str:
        if self.under_load:
            return "RUN UNDER LOAD: other work used the CPUs (see the load lines); figures are not comparable"
        return "machine quiet before and after the run"


def build_nonstop_glm(dest: Path, hidden: int, layers: int, context: int = 4096) -> Path:
    """A random native GLM whose greedy replies never stop early: the stop tokens' ``lm_head`` rows are
    zeroed (their logit is 0, which never wins the argmax over hundreds of random logits), so every
    greedy reply runs to max new tokens whatever the prompt, the mode or the model's size — equal work
    on every side of a comparison without forcing it with ``min_new_tokens``."""
    import json

    from safetensors.torch import load_file, save_file

    import tiny_models

    folder = tiny_models.build_native_glm(
        dest, hidden=hidden, layers=layers, heads=hidden // 64, kv_heads=2, head_dim=64, ffn=hidden * 3,
        context=context,
    )
    stops = json.loads((folder / "config.json").read_text())["eos_token_id"]
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    state["lm_head.weight"][stops] = 0.0
    save_file(state, str(weights), metadata={"format": "pt"})
    return folder
