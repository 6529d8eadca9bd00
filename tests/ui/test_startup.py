"""Startup: what the TUI does before its first frame (issue 13: the first painted frame in under 1 s).

Guards the cuts made: modules the first frame does not need are not imported with the app; the theme and the
width classes are in place before the panes are styled (set later, every widget was styled again); the footer
builds its keys once however many binding changes arrive at start; the monitor's sampling starts after the first
frame. The screen once settled is the snapshot tests' (tests/ui/test_ui_snapshots.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any, Callable, TypeVar

from textual.css.stylesheet import Stylesheet
from textual.widgets import Footer

from glmtui.config import default_paths
from glmtui.store import HistoryStore
from glmtui.ui import bridge, prefs
from glmtui.ui.app import GlmApp
from glmtui.ui.compat import FooterKey
from glmtui.ui.exact_counts import ExactCounts
from glmtui.ui.history import HistoryPane
from helpers import wait_for

T = TypeVar("T")

# Imported with the first reply, copy, dialog or completion view shown, never for the empty chat of the first frame
LAZY = ("textual.widgets._markdown", "markdown_it", "pygments", "glmtui.ui.reply_markdown", "glmtui.ui.copying",
        "glmtui.ui.completion", "glmtui.ui.modals", "glmtui.ui.dialogs.load", "glmtui.ui.dialogs.settings",
        "glmtui.ui.dialogs.endpoint")


def calls_of(monkeypatch, owner: type, name: str, note: Callable[..., Any] = lambda *args: args) -> list:
    """What ``note(*args)`` says of each call of ``owner.name``, noted before the method runs (it still runs)."""
    calls: list = []
    method = getattr(owner, name)

    def recording(*args, **kwargs):
        calls.append(note(*args, **kwargs))
        return method(*args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return calls


def seen_at_mount(monkeypatch, look: Callable[[], T]) -> list[T]:
    """What ``look()`` sees each time GlmApp's on_mount has returned (before the first frame)."""
    seen: list[T] = []
    mount = GlmApp.on_mount

    def recording_mount(self: GlmApp) -> None:
        mount(self)
        seen.append(look())

    monkeypatch.setattr(GlmApp, "on_mount", recording_mount)
    return seen


def test_importing_the_app_leaves_out_what_the_first_frame_does_not_need():
    code = "import sys, glmtui.cli, glmtui.ui.app; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "glmtui.ui.app" in loaded
    assert [m for m in LAZY if m in loaded] == []


async def test_the_saved_theme_and_the_width_classes_come_before_the_panes_are_styled(quiet_sampler, monkeypatch):
    prefs.save_prefs(default_paths().config_file, {"theme": "nord"})
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    # a CSS re-parse (a theme change) once panes exist re-styles all of them
    reparsed_with_panes = calls_of(monkeypatch, Stylesheet, "reparse",
                                   lambda sheet, *rest, **kw: len(app.query(HistoryPane)) if app.screen_stack else 0)
    classes_at_mount: list[set[str]] = []
    mounted = HistoryPane.on_mount

    def recording_mount(pane: HistoryPane) -> None:  # Textual passes a handler the arguments it names
        classes_at_mount.append(set(pane.screen.classes))
        mounted(pane)

    monkeypatch.setattr(HistoryPane, "on_mount", recording_mount)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.query(FooterKey), timeout=20, what="the footer's keys")
        assert app.theme == "nord"
        assert app.screen.has_class("-narrow")
    assert [n for n in reparsed_with_panes if n] == []
    assert len(classes_at_mount) == 1 and "-narrow" in classes_at_mount[0], classes_at_mount


async def test_the_footer_builds_its_keys_once_at_start(quiet_sampler, monkeypatch):
    rebuilds: list[int] = []
    rebuild = Footer.recompose

    async def counting(footer: Footer) -> None:
        rebuilds.append(len(footer.children))
        await rebuild(footer)

    monkeypatch.setattr(Footer, "recompose", counting)
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.query(FooterKey), timeout=20, what="the footer's keys")
        for _ in range(5):  # the binding changes of the first focus and resize, handled
            await pilot.pause()
        assert rebuilds == [0], rebuilds  # built once, from nothing; later changes only set enabled states
        assert any(key.action in ("quit", "app.quit") for key in app.query(FooterKey))


async def test_the_monitor_starts_sampling_after_the_first_frame(quiet_sampler, monkeypatch):
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    sampling_at_mount = seen_at_mount(monkeypatch,
                                      lambda: any(t.name == "glmtui-monitor" for t in threading.enumerate()))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.monitor_pane.snapshot is not None, timeout=20, what="the first sample")
        app._monitor_stop.set()
    assert sampling_at_mount == [False]


async def test_the_history_list_is_read_after_the_first_frame(quiet_sampler, monkeypatch):
    store = HistoryStore.open(default_paths().history_db)
    try:
        for i in range(3):
            store.create_conversation(f"conversation {i}", "tiny", "", {})
    finally:
        store.close()
    reloads = calls_of(monkeypatch, HistoryPane, "reload")
    reads_at_mount = seen_at_mount(monkeypatch, lambda: len(reloads))
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.history_pane.option_list.option_count == 3, timeout=20,
                       what="the history's rows")
    assert reads_at_mount == [0]


async def test_a_reply_widgets_imports_are_warmed_after_the_first_frame_without_a_model(quiet_sampler, monkeypatch):
    warmed: list[str] = []
    monkeypatch.setattr(bridge, "warm_reply_imports", lambda: warmed.append(threading.current_thread().name))
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        assert warmed == []  # not before the first frame
        await wait_for(pilot, lambda: warmed, timeout=20, what="the reply widgets' imports, warmed")
        app._monitor_stop.set()
    assert warmed == ["glmtui-warm-imports"]  # once, on a thread of its own


async def test_the_local_models_are_counted_after_the_first_frame(native_glm, quiet_sampler, monkeypatch):
    models_dir = default_paths().models_dir
    models_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(native_glm, models_dir / native_glm.name)
    asked = calls_of(monkeypatch, ExactCounts, "background", lambda counts, folders, *rest, **kw: list(folders))
    asked_at_mount = seen_at_mount(monkeypatch, lambda: len(asked))
    app = GlmApp(mode="fp32", sampler=quiet_sampler)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: asked, timeout=20, what="the background count asked for")
        app._monitor_stop.set()
    assert asked_at_mount == [0]
    assert [os.path.basename(str(f)) for f in asked[0]] == [native_glm.name]
