"""The monitor's samples while a reply streams: one that keeps the body's height repaints it without a
layout of the screen, and a hidden monitor is not re-rendered until it is shown again (with the latest)."""

from __future__ import annotations

import dataclasses

from textual.app import App
from textual.widgets import Static

from glmtui.ui.monitor import MonitorPane
from helpers import count_layouts, host_only_snapshot, wait_for

GiB = 2**30


class MonitorApp(App):
    def compose(self):
        yield MonitorPane(id="monitor")


def body_text(pane: MonitorPane) -> str:
    content = pane.query_one("#monitor-body", Static).content
    return "\n".join(r.plain for r in getattr(content, "renderables", ()))


def sample(used_gib: int):
    snapshot = host_only_snapshot()
    return dataclasses.replace(snapshot, host=dataclasses.replace(snapshot.host, ram_used=used_gib * GiB))


async def test_a_sample_of_the_same_height_repaints_without_a_layout_and_a_hidden_monitor_waits():
    app = MonitorApp()
    async with app.run_test(size=(60, 30)) as pilot:
        pane = app.query_one(MonitorPane)
        await wait_for(pilot, lambda: pane.on_screen, what="the monitor shown")
        pane.show(sample(12))
        await pilot.pause()
        assert "used 12.0/32.0 GiB" in body_text(pane)
        layouts = count_layouts(app.screen)
        for used in (13, 14, 15):  # a sample a second: same lines, other figures
            pane.show(sample(used))
            await pilot.pause()
            assert f"used {used}.0/32.0 GiB" in body_text(pane)
        assert layouts == [], "samples that keep the body's height lay nothing out"

        pane.display = False  # the medium layout's other pane
        await wait_for(pilot, lambda: not pane.on_screen, what="the monitor hidden")
        shown = body_text(pane)
        pane.show(sample(20))
        await pilot.pause()
        assert body_text(pane) == shown and pane.snapshot.host.ram_used == 20 * GiB  # kept, not rendered
        pane.display = True
        await wait_for(pilot, lambda: "used 20.0/32.0 GiB" in body_text(pane), what="the latest sample once shown")
