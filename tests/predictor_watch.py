"""Watching glmtui's exact-count predictor subprocesses start (engine/exact_cache.py's one place that starts
them): a test wraps the real start, so the subprocess still runs, and reads what started and how."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

from glmtui.engine import exact_cache


@dataclass(frozen=True)
class Start:
    cmd: list[str]
    low_priority: bool
    nice: int  # the process's niceness once started (-1: it was gone already)
    running: int  # predictor processes of this test's process running at that moment, this one included


def running_predictors() -> list[psutil.Process]:
    """Fresh interpreters found by their command line, and forks of the launcher (whose command line is the
    launcher's) from exact_cache's own list of the counts it reads."""
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            if exact_cache.PREDICTOR_MODULE in " ".join(child.cmdline()):
                found[child.pid] = child
        except psutil.Error:
            pass
    for proc in list(exact_cache._running):
        if proc.poll() is None and proc.pid not in found:
            try:
                found[proc.pid] = psutil.Process(proc.pid)
            except psutil.Error:
                pass
    return list(found.values())


def end_running_predictors(timeout: float = 10.0, keep: frozenset[int] = frozenset()) -> list[str]:
    """End the predictor processes of this test's process that still run, but those in ``keep`` (pids that ran
    before: another test's); their command lines.  A background count a test started and does not wait for
    outlives the test, and pytest too (it is detached)."""
    found = [proc for proc in running_predictors() if proc.pid not in keep]
    names = []
    for proc in found:
        try:
            names.append(" ".join(proc.cmdline()))
            proc.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(found, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    return names


TEST_NICENESS = 1  # a count at niceness 10 barely runs while a loaded test machine is busy: 1 still shows it is set


def watch_predictor_starts(monkeypatch) -> list[Start]:
    """The list every predictor start is appended to (the memo of earlier answers cleared); a low-priority
    count gets niceness TEST_NICENESS."""
    monkeypatch.setattr(exact_cache, "LOW_PRIORITY", TEST_NICENESS)
    starts: list[Start] = []
    real = exact_cache._start_predictor

    def watched(cmd, low_priority, **popen):
        proc = real(cmd, low_priority, **popen)
        try:
            nice = psutil.Process(proc.pid).nice()
        except psutil.Error:
            nice = -1
        # this one counted as running whether or not /proc already shows its command line to psutil (under load
        # it once did not: "running 0" for a predictor that had just started)
        others = [p for p in running_predictors() if p.pid != proc.pid]
        starts.append(Start(list(cmd), low_priority, nice, 1 + len(others)))
        return proc

    monkeypatch.setattr(exact_cache, "_start_predictor", watched)
    monkeypatch.setattr(exact_cache, "_memo", {})
    return starts
