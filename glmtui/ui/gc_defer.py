"""No full garbage collection while a reply streams (the chat defers it and resumes it once idle)."""

from __future__ import annotations

import gc

_deferrals = 0
_saved_thresholds = (700, 10, 10)


def defer_full_collections() -> None:
    """No full (oldest-generation) garbage collection until the matching :func:`resume_full_collections`.

    A full collection walks every tracked object of the process (~630,000 after a 10,000-token reply,
    plus the cyclic garbage Textual leaves per frame) and stops the UI thread for 0.25-0.6 s; a streamed
    reply allocates enough to start one every ~2 s (29 in a paced 10k reply, 12 s of the UI thread and
    every keystroke maximum). Young generations are still collected; what survived them is collected
    in one pass after the reply (Textual pauses collection the same way while it animates a scroll,
    ``App.PAUSE_GC_ON_SCROLL``); ChatPane resumes them once the user stops typing after the reply."""
    global _deferrals, _saved_thresholds
    _deferrals += 1
    if _deferrals == 1:
        _saved_thresholds = gc.get_threshold()
        young, middle, _ = _saved_thresholds
        gc.set_threshold(young, middle, 2**31 - 1)


def resume_full_collections() -> None:
    global _deferrals
    if _deferrals > 0:
        _deferrals -= 1
        if _deferrals == 0:
            gc.set_threshold(*_saved_thresholds)
